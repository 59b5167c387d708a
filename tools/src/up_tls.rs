//! The credentials of a `sparefs up` cluster, under DATA/tls: the cluster
//! CA (`ca/`, its key included: whoever holds it can add daemons), and one
//! directory per daemon with its certificate: `metaN`, `csN`, `mount`, and
//! `admin` for the commands run beside it (`sparefs status --data` finds
//! it). Made once; a later `up` on the same data issues only what is
//! missing (more chunkservers).
//!
//! A data directory made before TLS (it has a meta's directory and no
//! `tls`) stays plaintext: its chunkservers registered by token, and a
//! certificate would register them as new ones.

use anyhow::Context;
use sparefs_wire::tls::{ClusterCa, Credentials, Identity, Role};
use std::path::{Path, PathBuf};

/// Where `up` keeps the credentials of the daemon named `name`.
pub fn dir(data: &Path, name: &str) -> PathBuf {
    data.join("tls").join(name)
}

/// Whether the cluster in `data` runs over TLS: a new one does unless
/// `plaintext` asks otherwise; an existing one keeps what it was made with
/// (switching would register its chunkservers again as new ones).
pub fn enabled(data: &Path, plaintext: bool) -> anyhow::Result<bool> {
    let has_tls = data.join("tls").exists();
    let is_new = !data.join("meta1").exists();
    anyhow::ensure!(
        !(plaintext && has_tls),
        "{} was made with TLS; it cannot run plaintext",
        data.display()
    );
    Ok(has_tls || (is_new && !plaintext))
}

/// Creates the CA and every missing certificate for `metas` replicas and
/// `chunkservers` chunkservers, the mount and the admin.
pub fn prepare(data: &Path, metas: u32, chunkservers: u32) -> anyhow::Result<()> {
    let ca_dir = dir(data, "ca");
    let ca = if ca_dir.join("ca.key").exists() {
        ClusterCa::load(&ca_dir).with_context(|| format!("load the CA in {}", ca_dir.display()))?
    } else {
        let ca = ClusterCa::create()?;
        make_private_dir(&ca_dir)?;
        ca.save(&ca_dir)
            .with_context(|| format!("save the CA in {}", ca_dir.display()))?;
        ca
    };
    let mut wanted = vec![
        ("mount".to_string(), Identity::new(Role::Mount, 1)),
        ("admin".to_string(), Identity::new(Role::Admin, 0)),
        ("iscsi".to_string(), Identity::new(Role::Iscsi, 1)),
    ];
    for id in 1..=metas as u64 {
        wanted.push((
            format!("meta{id}"),
            Identity {
                role: Role::Meta,
                id,
            },
        ));
    }
    for id in 1..=chunkservers as u64 {
        let who = Identity {
            role: Role::Chunkserver,
            id,
        };
        wanted.push((format!("cs{id}"), who));
    }
    for (name, who) in wanted {
        let d = dir(data, &name);
        if d.join("key.pem").exists() {
            let have = Credentials::load(&d)?.identity()?;
            anyhow::ensure!(
                have == who,
                "{}: the certificate names {have}, not {who}",
                d.display()
            );
            continue;
        }
        make_private_dir(&d)?;
        ca.issue(who)?
            .save(&d)
            .with_context(|| format!("save {who}'s credentials in {}", d.display()))?;
    }
    Ok(())
}

pub(crate) fn make_private_dir(d: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(d).with_context(|| format!("create {}", d.display()))?;
    std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("make {} private", d.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_once_then_only_what_is_missing() {
        let data = tempfile::tempdir().expect("tmp");
        prepare(data.path(), 1, 1).expect("first");
        let cert = std::fs::read(dir(data.path(), "cs1").join("cert.pem")).expect("cs1");
        prepare(data.path(), 1, 2).expect("again, one more chunkserver");
        let again = std::fs::read(dir(data.path(), "cs1").join("cert.pem")).expect("cs1");
        assert_eq!(cert, again, "an existing certificate is kept");
        let cs2 = Credentials::load(&dir(data.path(), "cs2")).expect("cs2");
        assert_eq!(
            cs2.identity().expect("id"),
            Identity {
                role: Role::Chunkserver,
                id: 2
            }
        );
        assert!(enabled(data.path(), false).expect("tls"));
        assert!(enabled(data.path(), true).is_err(), "TLS cannot be dropped");
        let old = tempfile::tempdir().expect("tmp");
        assert!(!enabled(old.path(), true).expect("new, plaintext asked"));
        std::fs::create_dir(old.path().join("meta1")).expect("meta1");
        assert!(
            !enabled(old.path(), false).expect("old"),
            "a pre-TLS cluster stays plaintext"
        );
    }
}
