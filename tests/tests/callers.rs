//! Mount certificates that limit whom a mount speaks for: a mount whose
//! certificate says `squash-root` acts for root as the anonymous user (it
//! cannot read another user's private file or write in root's directory,
//! and what it creates belongs to nobody), and one that says
//! `uids:1000-1999` believes only those uids. Real FUSE mounts over mutual
//! TLS; the test runs as root and switches uid for its processes.

use sparefs_tests::{fs_cluster_tls, who, TlsRole};
use sparefs_wire::tls::Callers;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

const NOBODY: u32 = 65534;

/// Runs `sh -c script` as `uid` (and the same gid); whether it succeeded.
fn as_user(uid: u32, script: &str) -> bool {
    Command::new("sh")
        .args(["-c", script])
        .uid(uid)
        .gid(uid)
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn denied<T: std::fmt::Debug>(what: &str, r: std::io::Result<T>) {
    let e = r.expect_err(what);
    assert!(
        matches!(e.raw_os_error(), Some(libc::EACCES) | Some(libc::EPERM)),
        "{what}: {e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mount_speaks_only_for_the_callers_its_certificate_names() -> anyhow::Result<()> {
    if unsafe_is_not_root() {
        eprintln!("skipped: needs root to switch uids");
        return Ok(());
    }
    let (mut c, mounts) = fs_cluster_tls(1, 1).await?;
    // Other users must reach the mount points in the test's directory.
    std::fs::set_permissions(c.dir.path(), std::fs::Permissions::from_mode(0o755))?;
    let full = &mounts[0];
    // Made through the mount whose certificate speaks for anyone.
    let public = full.join("public");
    std::fs::create_dir(&public)?;
    std::fs::set_permissions(&public, std::fs::Permissions::from_mode(0o777))?;
    let root_only = full.join("root-only");
    std::fs::create_dir(&root_only)?;
    std::fs::set_permissions(&root_only, std::fs::Permissions::from_mode(0o755))?;
    let secret = full.join("secret");
    std::fs::write(&secret, b"uid 1000's own")?;
    std::os::unix::fs::chown(&secret, Some(1000), Some(1000))?;
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600))?;

    // Mount 2 squashes root, mount 3 believes uids 1000-1999 only.
    let ca =
        c.ca.as_ref()
            .ok_or_else(|| anyhow::anyhow!("a TLS cluster"))?;
    for (n, callers) in [
        (2, Callers::SquashRoot),
        (
            3,
            Callers::Uids {
                first: 1000,
                last: 1999,
            },
        ),
    ] {
        let d = c.dir.path().join("tls").join(format!("mount{n}"));
        std::fs::create_dir_all(&d)?;
        ca.issue_for(who(TlsRole::Mount, n), callers)?.save(&d)?;
    }
    let squashed = c.spawn_mount(2, 10)?;
    let ranged = c.spawn_mount(3, 10)?;

    // Root through the squashing mount is nobody.
    denied(
        "root reads uid 1000's private file",
        std::fs::read(squashed.join("secret")),
    );
    denied(
        "root creates in root's directory",
        std::fs::write(squashed.join("root-only/x"), b"x"),
    );
    let made = squashed.join("public/by-root");
    let bytes: Vec<u8> = (0..3u32 << 20).map(|i| (i * 13 + i / 997) as u8).collect();
    std::fs::write(&made, &bytes)?;
    std::fs::File::open(&made)?.sync_all()?;
    let seen = std::fs::metadata(full.join("public/by-root"))?;
    assert_eq!(
        (seen.uid(), seen.gid()),
        (NOBODY, NOBODY),
        "owned by nobody"
    );
    assert_eq!(std::fs::read(full.join("public/by-root"))?, bytes);
    // Other users are believed.
    assert!(as_user(
        1000,
        &format!("cat {} >/dev/null", quoted(&squashed.join("secret")))
    ));

    // Through the ranged mount: root is nobody, 1000 is 1000, 2000 nobody.
    denied(
        "root reads through a uids:1000-1999 mount",
        std::fs::read(ranged.join("secret")),
    );
    assert!(as_user(
        1000,
        &format!("cat {} >/dev/null", quoted(&ranged.join("secret")))
    ));
    assert!(as_user(
        2000,
        &format!("echo x > {}", quoted(&ranged.join("public/by-2000")))
    ));
    let seen = std::fs::metadata(full.join("public/by-2000"))?;
    assert_eq!(seen.uid(), NOBODY, "uid 2000 is outside the range");
    assert!(as_user(
        1500,
        &format!("echo x > {}", quoted(&ranged.join("public/by-1500")))
    ));
    let seen = std::fs::metadata(full.join("public/by-1500"))?;
    assert_eq!(seen.uid(), 1500, "uid 1500 is inside the range");

    c.unmount(3);
    c.unmount(2);
    Ok(())
}

fn quoted(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', "'\\''"))
}

#[allow(unsafe_code)]
fn unsafe_is_not_root() -> bool {
    // SAFETY: geteuid cannot fail and touches no memory.
    unsafe { libc::geteuid() != 0 }
}
