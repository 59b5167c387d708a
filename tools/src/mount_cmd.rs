//! `sparefs mount` (foreground, or `--daemon` to detach) and the
//! `mount.sparefs` helper that mount(8) runs for `-t sparefs` and fstab.

use anyhow::Context;
use sparefs_wire::tls::{Role, Tls};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(clap::Args, Clone)]
pub struct MountArgs {
    #[arg(long, env = "SPAREFS_META")]
    pub meta: String,
    pub mountpoint: PathBuf,
    /// Detach once mounted.
    #[arg(long)]
    pub daemon: bool,
    /// Seconds an operation retries an unreachable cluster before EIO.
    #[arg(long, default_value_t = 30)]
    pub timeout: u64,
    /// Log file when detached.
    #[arg(long)]
    pub log: Option<PathBuf>,
    /// Never hold delegated directories: every namespace change goes to
    /// the meta as it happens (see docs/delegation.md).
    #[arg(long, env = "SPAREFS_NO_DELEGATIONS")]
    pub no_delegations: bool,
    /// Mount over a directory that is not empty (its contents are hidden
    /// while mounted).
    #[arg(long)]
    pub nonempty: bool,
    /// Serve Prometheus metrics over HTTP on this address.
    #[arg(long)]
    pub metrics: Option<String>,
    /// TLS credentials of the mount role (the global `--tls`, or the
    /// helper's `tls=DIR` option).
    #[arg(skip)]
    pub tls: Option<PathBuf>,
}

/// Refuses, with the reason, a mount that could not work or would hide
/// files: a mountpoint that is not a directory, a directory with contents
/// (unless `--nonempty`), a directory already mounted, or a cluster no meta
/// replica of which answers within `timeout`.
pub async fn check_before_mounting(args: &MountArgs, tls: Option<&Arc<Tls>>) -> anyhow::Result<()> {
    let at = &args.mountpoint;
    let meta = std::fs::metadata(at).with_context(|| format!("mountpoint {}", at.display()))?;
    anyhow::ensure!(
        meta.is_dir(),
        "mountpoint {} is not a directory",
        at.display()
    );
    anyhow::ensure!(
        !is_mounted(at),
        "{} is already a sparefs mount",
        at.display()
    );
    let mut entries = std::fs::read_dir(at).with_context(|| format!("read {}", at.display()))?;
    anyhow::ensure!(
        args.nonempty || entries.next().is_none(),
        "mountpoint {} is not empty (mounting would hide its files; --nonempty to mount anyway)",
        at.display()
    );
    let mut client = sparefs_client::MetaClient::new(
        crate::split_addresses(&args.meta),
        sparefs_proto::namespace::Caller::ROOT,
    );
    if let Some(tls) = tls {
        client = client.with_tls(tls.clone());
    }
    let wait = Duration::from_secs(args.timeout.clamp(1, 30));
    match tokio::time::timeout(wait, client.getattr(sparefs_proto::InodeId::ROOT)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => anyhow::bail!("no sparefs meta answers at {}: {e}", args.meta),
        Err(_) => anyhow::bail!(
            "no sparefs meta answered at {} within {} s",
            args.meta,
            wait.as_secs()
        ),
    }
}

/// Whether `mountpoint` is a sparefs mount now.
pub fn is_mounted(mountpoint: &Path) -> bool {
    let want = std::fs::canonicalize(mountpoint).unwrap_or_else(|_| mountpoint.to_path_buf());
    std::fs::read_to_string("/proc/self/mounts")
        .map(|m| {
            m.lines().any(|l| {
                let mut f = l.split_whitespace();
                let src = f.next().unwrap_or("");
                let dir = f.next().unwrap_or("");
                let ty = f.next().unwrap_or("");
                Path::new(dir) == want && (ty.contains("sparefs") || src.starts_with("sparefs:"))
            })
        })
        .unwrap_or(false)
}

pub async fn run(args: MountArgs) -> anyhow::Result<i32> {
    let tls = match &args.tls {
        Some(dir) => Some(crate::load_tls_reloading(dir, Role::Mount, None)?),
        None => None,
    };
    check_before_mounting(&args, tls.as_ref()).await?;
    if args.daemon {
        return detach(args).await;
    }
    crate::metrics_http::serve(args.metrics.as_deref(), "mount")?;
    let meta = crate::split_addresses(&args.meta);
    let session = sparefs_fs::mount(
        sparefs_fs::MountConfig {
            meta,
            timeout: Duration::from_secs(args.timeout),
            allow_other: nix_is_root(),
            delegations: !args.no_delegations,
            tls,
        },
        &args.mountpoint,
        tokio::runtime::Handle::current(),
    )?;
    tracing::info!(mountpoint = %args.mountpoint.display(), "mounted");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let gone = async {
        // Unmounted from outside (umount, fusermount -u): stop too.
        tokio::time::sleep(Duration::from_secs(1)).await;
        while is_mounted(&args.mountpoint) {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
        _ = gone => {
            tracing::info!("unmounted from outside");
            drop(session);
            return Ok(0);
        }
    }
    tracing::info!("unmounting");
    if let Err(e) = session.umount_and_join() {
        // Busy: detach lazily so the mount never outlives us.
        tracing::warn!("unmount: {e}; detaching lazily");
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&args.mountpoint)
            .status();
    }
    Ok(0)
}

fn nix_is_root() -> bool {
    crate::current_caller().uid == 0
}

#[allow(unsafe_code)]
async fn detach(args: MountArgs) -> anyhow::Result<i32> {
    let exe = std::env::current_exe().context("find the sparefs binary")?;
    let log = match &args.log {
        Some(p) => std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)?,
        None => std::fs::OpenOptions::new().write(true).open("/dev/null")?,
    };
    let mut cmd = std::process::Command::new(exe);
    cmd.args([
        "mount",
        "--meta",
        &args.meta,
        "--timeout",
        &args.timeout.to_string(),
    ])
    .arg(&args.mountpoint)
    .args(args.no_delegations.then_some("--no-delegations"))
    .args(args.nonempty.then_some("--nonempty"))
    .args(args.metrics.iter().flat_map(|m| ["--metrics", m.as_str()]))
    .args(
        args.tls
            .iter()
            .flat_map(|d| [std::ffi::OsStr::new("--tls"), d.as_os_str()]),
    )
    .stdin(std::process::Stdio::null())
    .stdout(log.try_clone()?)
    .stderr(log);
    // SAFETY: setsid is async-signal-safe; it detaches the child from our
    // terminal and session so it outlives this command.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = cmd.spawn().context("start the mount daemon")?;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        if is_mounted(&args.mountpoint) {
            return Ok(0);
        }
        if let Some(status) = child.try_wait()? {
            anyhow::bail!("the mount daemon exited ({status}) before mounting");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("{} was not mounted within 30 s", args.mountpoint.display())
}

/// `mount.sparefs SPEC DIR [-o OPTIONS] [-s] [-f] [-n] [-v]`, as mount(8)
/// calls it: SPEC is the meta address list; options `timeout=N`,
/// `log=PATH`, `tls=DIR` and `nodelegations` are understood, the generic ones (rw,
/// defaults, _netdev...) are accepted and ignored.
pub fn helper_args(argv: &[String]) -> anyhow::Result<MountArgs> {
    let mut positional = Vec::new();
    let mut timeout = 30;
    let mut log = None;
    let mut no_delegations = false;
    let mut nonempty = false;
    let mut tls = None;
    let mut metrics = None;
    let mut it = argv.iter().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "-o" => {
                let opts = it.next().context("-o needs options")?;
                for o in opts.split(',') {
                    if let Some(v) = o.strip_prefix("timeout=") {
                        timeout = v.parse().with_context(|| format!("bad timeout {v:?}"))?;
                    } else if let Some(v) = o.strip_prefix("log=") {
                        log = Some(PathBuf::from(v));
                    } else if o == "nodelegations" {
                        no_delegations = true;
                    } else if o == "nonempty" {
                        nonempty = true;
                    } else if let Some(v) = o.strip_prefix("tls=") {
                        tls = Some(PathBuf::from(v));
                    } else if let Some(v) = o.strip_prefix("metrics=") {
                        metrics = Some(v.to_string());
                    }
                }
            }
            "-s" | "-f" | "-n" | "-v" => {}
            other => positional.push(other.to_string()),
        }
    }
    anyhow::ensure!(
        positional.len() == 2,
        "usage: mount.sparefs META_ADDRS MOUNTPOINT [-o options]"
    );
    let meta = positional[0].trim_start_matches("sparefs:").to_string();
    Ok(MountArgs {
        meta,
        mountpoint: PathBuf::from(&positional[1]),
        daemon: true,
        timeout,
        log,
        no_delegations,
        nonempty,
        metrics,
        tls,
    })
}
