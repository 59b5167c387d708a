//! The FUSE adapter (fuser) over the client library. It has no filesystem
//! semantics of its own: each callback turns its arguments into a client
//! call (metadata calls on fuser's own thread, bounded by the meta timeout;
//! data and lock calls on a tokio task, so a slow chunkserver or a held lock
//! never ties up fuser's threads), maps the error once (`errno`), and
//! replies.
//!
//! Owns: FUSE handle numbers (the open files behind them, and which
//! attributes answer a GETATTR, are the client's `OpenFiles` and `Attrs`),
//! open directories' pages (`dirs`), the xattr answers the kernel asks for
//! again and again (`xattrs`), conversion of attributes,
//! the caller's groups (read from /proc, since FUSE requests carry only uid,
//! gid and pid). Must not touch: the meta's rules (permissions are enforced
//! by the kernel with `default_permissions` and again by the meta),
//! fragments.

mod convert;
mod delegated;
mod dirs;
mod ops;
mod reply;
mod xattrs;

pub use ops::SpareFs;

use anyhow::Context;
use fuser::{Config, MountOption, SessionACL};
use std::path::Path;

/// Threads reading requests from the kernel. Metadata requests are served
/// on them (`meta_op!` in ops.rs), data and lock requests on the runtime.
const FUSER_THREADS: usize = 16;

pub struct MountConfig {
    pub meta: Vec<String>,
    /// How long an operation retries an unreachable cluster before EIO.
    pub timeout: std::time::Duration,
    pub allow_other: bool,
    /// Let the meta delegate directories made here (docs/delegation.md).
    pub delegations: bool,
    /// Mutual TLS with a certificate of the mount role.
    pub tls: Option<std::sync::Arc<sparefs_wire::tls::Tls>>,
}

/// Mounts and serves until unmounted (by `fusermount -u`/`umount`) or until
/// the returned session is dropped.
pub fn mount(
    config: MountConfig,
    mountpoint: &Path,
    runtime: tokio::runtime::Handle,
) -> anyhow::Result<fuser::BackgroundSession> {
    let fs = SpareFs::new(
        config.meta.clone(),
        config.timeout,
        config.delegations,
        config.tls.clone(),
        runtime,
    );
    let mut options = vec![
        MountOption::FSName(format!("sparefs:{}", config.meta.join(","))),
        MountOption::Subtype("sparefs".into()),
        MountOption::DefaultPermissions,
        MountOption::CUSTOM("max_read=1048576".into()),
    ];
    options.push(MountOption::RW);
    let mut cfg = Config::default();
    cfg.mount_options = options;
    cfg.acl = if config.allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    cfg.n_threads = Some(FUSER_THREADS);
    cfg.clone_fd = true;
    let notifier = fs.notifier.clone();
    let session = fuser::spawn_mount(fs, mountpoint, &cfg)
        .with_context(|| format!("mount sparefs on {}", mountpoint.display()))?;
    let _ = notifier.set(session.notifier());
    Ok(session)
}
