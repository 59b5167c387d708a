//! `sparefs cert`: a cluster's certificate authority and each process's
//! credentials, for clusters that `sparefs up` does not make (several
//! hosts), for mounts limited in the callers they speak for, and for
//! rotating keys (docs/security.md). The certificate logic is
//! `wire::tls`'s; this module reads arguments and files.

use anyhow::Context;
use clap::Subcommand;
use sparefs_wire::tls::{Callers, ClusterCa, Credentials, Identity, Role};
use std::path::{Path, PathBuf};

#[derive(Subcommand)]
pub enum CertCmd {
    /// Create a cluster CA in DIR (ca.pem to hand out, ca.key to keep
    /// secret: whoever holds it can add daemons).
    Ca { dir: PathBuf },
    /// Issue credentials for one process into OUT (ca.pem, cert.pem,
    /// key.pem, readable by the owner only). If OUT already holds
    /// credentials, the certificate and key are replaced and the CA is added
    /// to its trust list (rotation).
    Issue {
        /// meta, chunkserver, mount, admin or iscsi.
        role: String,
        /// The replica or chunkserver number; any number for the others.
        id: u64,
        /// The CA's directory (from `sparefs cert ca`).
        #[arg(long)]
        ca: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// Whom a mount or iSCSI certificate speaks for: any, squash-root
        /// (uid 0 becomes nobody), or uids:FIRST-LAST (others become nobody).
        #[arg(long, default_value = "any")]
        callers: String,
    },
    /// Add CAs to (--add) or remove them from (--remove) the trust list of
    /// the credentials in DIR; send the process SIGHUP to use it.
    Trust {
        dir: PathBuf,
        /// A PEM file of CA certificates to trust.
        #[arg(long)]
        add: Option<PathBuf>,
        /// A PEM file of CA certificates to trust no longer.
        #[arg(long)]
        remove: Option<PathBuf>,
    },
    /// Whom the credentials in DIR name, whom they speak for, until when,
    /// and how many CAs they trust.
    Show { dir: PathBuf },
}

pub fn run(cmd: CertCmd) -> anyhow::Result<i32> {
    match cmd {
        CertCmd::Ca { dir } => {
            anyhow::ensure!(
                !dir.join("ca.key").exists(),
                "{} already holds a CA",
                dir.display()
            );
            crate::up_tls::make_private_dir(&dir)?;
            ClusterCa::create()?
                .save(&dir)
                .with_context(|| format!("save the CA in {}", dir.display()))?;
            println!("a new cluster CA in {}", dir.display());
        }
        CertCmd::Issue {
            role,
            id,
            ca,
            out,
            callers,
        } => {
            let role = Role::parse(&role).with_context(|| {
                format!("{role:?} is no role: meta, chunkserver, mount, admin or iscsi")
            })?;
            let callers = Callers::parse(&callers).map_err(anyhow::Error::msg)?;
            anyhow::ensure!(
                callers == Callers::Any || matches!(role, Role::Mount | Role::Iscsi | Role::Admin),
                "only mount, iscsi and admin certificates speak for callers"
            );
            let who = Identity { role, id };
            let authority =
                ClusterCa::load(&ca).with_context(|| format!("load the CA in {}", ca.display()))?;
            let mut creds = authority.issue_for(who, callers)?;
            if out.join("ca.pem").exists() {
                let before = Credentials::load(&out)
                    .with_context(|| format!("the credentials in {}", out.display()))?;
                let mut trust = before.clone();
                trust.trust(authority.cert_pem())?;
                creds.ca_pem = trust.ca_pem;
            }
            crate::up_tls::make_private_dir(&out)?;
            creds
                .save(&out)
                .with_context(|| format!("save {who}'s credentials in {}", out.display()))?;
            println!("{who} (callers: {callers}) in {}", out.display());
        }
        CertCmd::Trust { dir, add, remove } => {
            anyhow::ensure!(
                add.is_some() || remove.is_some(),
                "say what to --add or --remove"
            );
            let mut creds = Credentials::load(&dir)
                .with_context(|| format!("the credentials in {}", dir.display()))?;
            if let Some(f) = add {
                let n = creds.trust(&read(&f)?)?;
                println!("trusting {n} more CA(s) from {}", f.display());
            }
            if let Some(f) = remove {
                let n = creds.distrust(&read(&f)?)?;
                println!("trusting {n} CA(s) from {} no longer", f.display());
            }
            creds
                .save(&dir)
                .with_context(|| format!("save the credentials in {}", dir.display()))?;
        }
        CertCmd::Show { dir } => {
            let creds = Credentials::load(&dir)
                .with_context(|| format!("the credentials in {}", dir.display()))?;
            let until = creds.not_after()?;
            let until = time::OffsetDateTime::from_unix_timestamp(until)
                .map(|t| t.date().to_string())
                .unwrap_or_else(|_| until.to_string());
            println!(
                "{}, callers {}, valid until {until}, trusting {} CA(s)",
                creds.identity()?,
                creds.callers()?,
                creds.trusted_cas()?
            );
        }
    }
    Ok(0)
}

fn read(f: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(f).with_context(|| format!("read {}", f.display()))
}
