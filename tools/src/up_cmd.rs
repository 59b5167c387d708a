//! `sparefs up`: the embedded default. Starts a local cluster over
//! directories under --data: meta replicas (127.0.0.11...) and chunkservers
//! (127.0.0.21...), each its own process on its own address, then mounts it
//! (a `sparefs mount` child), prints a line with `ready` once the mount is
//! usable, and on Ctrl-C or SIGTERM unmounts and stops everything it
//! started. A meta replica or chunkserver that dies (a crash, or `sparefs
//! chaos` pulling its power) is started again, like a host coming back;
//! cluster.json always names the current pids. Started again on the same
//! --data it comes back with the same files (every daemon reopens its
//! directory).

use crate::current_caller;
use anyhow::Context;
use serde_json::json;
use sparefs_client::MetaClient;
use sparefs_proto::layout::ChunkserverState;
use sparefs_proto::namespace::{NsReply, ReadOp};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct UpArgs {
    /// Where the cluster keeps its state (one directory per daemon).
    #[arg(long, default_value = "/var/lib/sparefs")]
    data: PathBuf,
    /// Where to mount the filesystem (default: DATA/mnt).
    #[arg(long)]
    mount: Option<PathBuf>,
    /// Meta replicas (1, 3 or 5).
    #[arg(long, default_value_t = 3)]
    metas: u32,
    /// Chunkservers, each over its own directory DATA/csN.
    #[arg(long, default_value_t = 3)]
    chunkservers: u32,
    /// Redundancy policy of the root directory (rep:N or ec:K+M).
    #[arg(long, default_value = "ec:2+1")]
    policy: String,
    /// Space limit of each chunkserver (bytes, K/M/G/T or %).
    #[arg(long, default_value = "100%")]
    limit: String,
    /// Space each chunkserver leaves free on the host filesystem.
    #[arg(long, default_value = "5%")]
    reserve: String,
    /// Port every daemon listens on, each on its own 127.0.0.x.
    #[arg(long, default_value_t = 7400)]
    port: u16,
    /// Seconds without a heartbeat before a chunkserver is `out` and its
    /// fragments are rebuilt elsewhere.
    #[arg(long, default_value_t = 300)]
    out_after: u64,
    /// Seconds new fragments are safe from garbage collection.
    #[arg(long, default_value_t = 600)]
    gc_grace: u64,
    /// Seconds between chunkserver inventory reports (garbage collection).
    #[arg(long, default_value_t = 60)]
    inventory_every: u64,
    /// Make a new cluster without TLS (anyone who reaches its ports is
    /// trusted; for measuring what TLS costs). By default every connection
    /// is mutual TLS with certificates under DATA/tls (docs/security.md).
    #[arg(long)]
    no_tls: bool,
    /// Port of the iSCSI target `up` starts on 127.0.0.1.
    #[arg(long, default_value_t = 3260)]
    iscsi_port: u16,
    /// Start no iSCSI target.
    #[arg(long)]
    no_iscsi: bool,
    /// Set by `run`: whether this cluster runs over TLS.
    #[arg(skip)]
    tls: bool,
}

impl UpArgs {
    /// `--tls DIR` for the daemon named `name` (see `up_tls`), if TLS.
    fn tls_args(&self, name: &str) -> Vec<String> {
        if !self.tls {
            return Vec::new();
        }
        let d = crate::up_tls::dir(&self.data, name);
        vec!["--tls".into(), d.display().to_string()]
    }
}

pub struct ClusterFile {
    pub meta: Vec<(u64, String, Option<u32>)>,
    pub chunkservers: Vec<(u64, String, Option<u32>)>,
    pub mount: Option<PathBuf>,
}

impl ClusterFile {
    pub fn meta_addresses(&self) -> Vec<String> {
        self.meta.iter().map(|(_, a, _)| a.clone()).collect()
    }
    pub fn pids(&self) -> BTreeMap<String, u32> {
        self.meta
            .iter()
            .chain(self.chunkservers.iter())
            .filter_map(|(_, a, p)| p.map(|p| (a.clone(), p)))
            .collect()
    }
}

pub fn read_cluster_file(dir: &Path) -> anyhow::Result<ClusterFile> {
    let path = dir.join("cluster.json");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("parse {}", path.display()))?;
    // Files from before the key are format 1.
    let format = v["format"].as_u64().unwrap_or(1).min(u32::MAX as u64) as u32;
    sparefs_proto::format::check_version(
        &path.display().to_string(),
        sparefs_proto::format::CLUSTER_FILE,
        format,
    )?;
    let list = |key: &str| -> anyhow::Result<Vec<(u64, String, Option<u32>)>> {
        let mut out = Vec::new();
        for m in v[key].as_array().map(|a| a.as_slice()).unwrap_or_default() {
            let id = m["id"]
                .as_u64()
                .with_context(|| format!("cluster.json: {key} id"))?;
            let address = m["address"]
                .as_str()
                .with_context(|| format!("cluster.json: {key} address"))?
                .to_string();
            out.push((id, address, m["pid"].as_u64().map(|p| p as u32)));
        }
        Ok(out)
    };
    Ok(ClusterFile {
        meta: list("meta")?,
        chunkservers: list("chunkservers")?,
        mount: v["mount"]["path"].as_str().map(PathBuf::from),
    })
}

#[allow(unsafe_code)]
fn die_with_parent(cmd: &mut tokio::process::Command) {
    // SAFETY: prctl is async-signal-safe and only sets a flag on the child,
    // so that a SIGKILLed `up` does not leave daemons behind.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    Meta,
    Chunkserver,
    Mount,
    Iscsi,
}

struct Daemon {
    what: String,
    log: PathBuf,
    child: tokio::process::Child,
    role: Role,
    id: u64,
    address: String,
    args: Vec<String>,
    /// When it was started again after dying (recent ones only).
    restarts: Vec<Instant>,
}

/// A daemon dying more often than this within `RESTART_WINDOW` is not
/// restarted again: `up` stops instead.
const RESTARTS_MAX: usize = 5;
const RESTART_WINDOW: Duration = Duration::from_secs(60);
const RESTART_PAUSE: Duration = Duration::from_secs(1);

fn write_cluster_file(data: &Path, daemons: &[Daemon], mountpoint: &Path) -> anyhow::Result<()> {
    let list = |role: Role| -> Vec<serde_json::Value> {
        daemons
            .iter()
            .filter(|d| d.role == role)
            .map(|d| json!({"id": d.id, "address": d.address, "pid": d.child.id()}))
            .collect()
    };
    let mount_pid = daemons
        .iter()
        .find(|d| d.role == Role::Mount)
        .and_then(|d| d.child.id());
    let iscsi = daemons
        .iter()
        .find(|d| d.role == Role::Iscsi)
        .map(|d| json!({"portal": d.address, "pid": d.child.id()}));
    let file = json!({
        "format": sparefs_proto::format::CLUSTER_FILE.1,
        "meta": list(Role::Meta),
        "chunkservers": list(Role::Chunkserver),
        "mount": {"path": mountpoint, "pid": mount_pid},
        "iscsi": iscsi,
    });
    // Written whole then renamed: readers never see half a file.
    let tmp = data.join("cluster.json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(&file)?)?;
    std::fs::rename(&tmp, data.join("cluster.json"))?;
    Ok(())
}

fn spawn(
    exe: &Path,
    (role, id, address): (Role, u64, String),
    args: &[String],
    log: PathBuf,
    what: String,
) -> anyhow::Result<Daemon> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)?;
    let mut cmd = tokio::process::Command::new(exe);
    cmd.args(args)
        .stdout(file.try_clone()?)
        .stderr(file)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    die_with_parent(&mut cmd);
    let child = cmd.spawn().with_context(|| format!("start {what}"))?;
    Ok(Daemon {
        what,
        log,
        child,
        role,
        id,
        address,
        args: args.to_vec(),
        restarts: Vec::new(),
    })
}

async fn stop(daemons: &mut [Daemon]) {
    // Reverse order: the mount first (it flushes), then chunkservers, then metas.
    for d in daemons.iter_mut().rev() {
        if let Some(pid) = d.child.id() {
            #[allow(unsafe_code)]
            // SAFETY: sending a signal to our own child process.
            unsafe {
                libc::kill(pid as i32, libc::SIGTERM);
            }
        }
        if tokio::time::timeout(Duration::from_secs(10), d.child.wait())
            .await
            .is_err()
        {
            let _ = d.child.start_kill();
            let _ = d.child.wait().await;
        }
    }
}

pub async fn run(mut args: UpArgs) -> anyhow::Result<i32> {
    let policy = check_args(&args)?;
    let mountpoint = prepare_dirs(&args)?;
    // The logs and cluster.json, and the daemons' directories, are private.
    crate::private_files();
    args.tls = crate::up_tls::enabled(&args.data, args.no_tls)?;
    if args.tls {
        crate::up_tls::prepare(&args.data, args.metas, args.chunkservers)
            .context("make the cluster's TLS credentials")?;
    }
    let exe = std::env::current_exe().context("find the sparefs binary")?;
    let start = Instant::now();
    let mut daemons = Vec::new();
    if let Err(e) = start_cluster(&exe, &args, policy, &mountpoint, &mut daemons).await {
        stop(&mut daemons).await;
        return Err(e);
    }
    write_cluster_file(&args.data, &daemons, &mountpoint)?;
    println!(
        "sparefs ready: {} mounted ({} meta replicas, {} chunkservers, policy {policy}, {}) in {:.1}s; data in {}{}",
        mountpoint.display(),
        args.metas,
        args.chunkservers,
        if args.tls { "mutual TLS" } else { "plaintext" },
        start.elapsed().as_secs_f64(),
        args.data.display(),
        if args.no_iscsi {
            String::new()
        } else {
            format!("; iSCSI portal 127.0.0.1:{}", args.iscsi_port)
        }
    );
    println!("status: sparefs status --data {}", args.data.display());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let code = tokio::select! {
        _ = tokio::signal::ctrl_c() => 0,
        _ = term.recv() => 0,
        (what, log, status) = supervise(&exe, &args, &mountpoint, &mut daemons) => {
            eprintln!("sparefs: {what} exited ({status}) and keeps dying; see {}", log.display());
            1
        }
    };
    stop(&mut daemons).await;
    if crate::mount_cmd::is_mounted(&mountpoint) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&mountpoint)
            .status();
    }
    println!("sparefs: stopped");
    Ok(code)
}

/// Refuses arguments that cannot make a cluster; the root policy.
fn check_args(args: &UpArgs) -> anyhow::Result<sparefs_proto::layout::Policy> {
    anyhow::ensure!(matches!(args.metas, 1 | 3 | 5), "--metas must be 1, 3 or 5");
    anyhow::ensure!(
        (1..=200).contains(&args.chunkservers),
        "--chunkservers must be 1 to 200"
    );
    let policy: sparefs_proto::layout::Policy = args.policy.parse().map_err(anyhow::Error::msg)?;
    anyhow::ensure!(
        policy.width() <= args.chunkservers as usize,
        "policy {policy} needs {} chunkservers; --chunkservers is {}",
        policy.width(),
        args.chunkservers
    );
    anyhow::ensure!(
        !args.data.exists() || args.data.is_dir(),
        "--data {} is not a directory",
        args.data.display()
    );
    Ok(policy)
}

/// Creates the data directory and the mount point (not already mounted).
fn prepare_dirs(args: &UpArgs) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(&args.data)
        .with_context(|| format!("create {}", args.data.display()))?;
    let mountpoint = args.mount.clone().unwrap_or_else(|| args.data.join("mnt"));
    std::fs::create_dir_all(&mountpoint)
        .with_context(|| format!("create {}", mountpoint.display()))?;
    if crate::mount_cmd::is_mounted(&mountpoint) {
        anyhow::bail!(
            "{} is already a sparefs mount (is another `sparefs up` running?)",
            mountpoint.display()
        );
    }
    Ok(mountpoint)
}

/// Starts the meta group, then the chunkservers once it has a leader, sets
/// the root policy once they are up, then mounts. Every daemon started is
/// in `daemons`, also when this fails.
async fn start_cluster(
    exe: &Path,
    args: &UpArgs,
    policy: sparefs_proto::layout::Policy,
    mountpoint: &Path,
    daemons: &mut Vec<Daemon>,
) -> anyhow::Result<()> {
    let start = Instant::now();
    let peers: BTreeMap<u64, String> = (1..=args.metas as u64)
        .map(|i| (i, format!("127.0.0.{}:{}", 10 + i, args.port)))
        .collect();
    let meta_list = peers.values().cloned().collect::<Vec<_>>().join(",");
    start_metas(exe, args, &peers, daemons)?;
    let addresses: Vec<String> = peers.values().cloned().collect();
    let mut client =
        MetaClient::new(addresses, current_caller()).with_deadline(Duration::from_secs(30));
    if args.tls {
        let admin = crate::up_tls::dir(&args.data, "admin");
        client = client.with_tls(crate::load_tls(
            &admin,
            sparefs_wire::tls::Role::Admin,
            None,
        )?);
    }
    client
        .getattr(sparefs_proto::InodeId::ROOT)
        .await
        .context("wait for the meta group to elect a leader")?;
    start_chunkservers(exe, args, &meta_list, daemons)?;
    wait_for_chunkservers(&client, args.chunkservers as usize, start).await?;
    client
        .set_policy(sparefs_proto::InodeId::ROOT, policy)
        .await
        .context("set the root policy")?;
    let mut a = vec![
        "mount".into(),
        "--meta".into(),
        meta_list,
        mountpoint.display().to_string(),
    ];
    a.extend(args.tls_args("mount"));
    let d = spawn(
        exe,
        (Role::Mount, 0, String::new()),
        &a,
        args.data.join("mount.log"),
        "the mount".into(),
    )?;
    daemons.push(d);
    while !crate::mount_cmd::is_mounted(mountpoint) {
        anyhow::ensure!(
            start.elapsed() <= Duration::from_secs(90),
            "{} was not mounted; see {}",
            mountpoint.display(),
            args.data.join("mount.log").display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if !args.no_iscsi {
        start_iscsi(exe, args, &meta_list_of(args), daemons, start).await?;
    }
    Ok(())
}

fn meta_list_of(args: &UpArgs) -> String {
    (1..=args.metas as u64)
        .map(|i| format!("127.0.0.{}:{}", 10 + i, args.port))
        .collect::<Vec<_>>()
        .join(",")
}

/// The iSCSI target on 127.0.0.1:`--iscsi-port`, serving the cluster's
/// exports; returns once it accepts connections.
async fn start_iscsi(
    exe: &Path,
    args: &UpArgs,
    meta_list: &str,
    daemons: &mut Vec<Daemon>,
    start: Instant,
) -> anyhow::Result<()> {
    let portal = format!("127.0.0.1:{}", args.iscsi_port);
    let mut a = vec![
        "iscsi".into(),
        "serve".into(),
        "--meta".into(),
        meta_list.to_string(),
        "--listen".into(),
        portal.clone(),
    ];
    // `--tls` is a global flag: it goes before the subcommand.
    let mut full = args.tls_args("iscsi");
    full.append(&mut a);
    let d = spawn(
        exe,
        (Role::Iscsi, 1, portal.clone()),
        &full,
        args.data.join("iscsi.log"),
        "the iSCSI target".into(),
    )?;
    daemons.push(d);
    while tokio::net::TcpStream::connect(&portal).await.is_err() {
        anyhow::ensure!(
            start.elapsed() <= Duration::from_secs(90),
            "the iSCSI target did not listen on {portal}; see {}",
            args.data.join("iscsi.log").display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

fn start_metas(
    exe: &Path,
    args: &UpArgs,
    peers: &BTreeMap<u64, String>,
    daemons: &mut Vec<Daemon>,
) -> anyhow::Result<()> {
    let peers_arg = peers
        .iter()
        .map(|(i, a)| format!("{i}={a}"))
        .collect::<Vec<_>>()
        .join(",");
    for (id, address) in peers {
        let mut a = vec![
            "meta".into(),
            "--id".into(),
            id.to_string(),
            "--listen".into(),
            address.clone(),
            "--peers".into(),
            peers_arg.clone(),
            "--data".into(),
            args.data.join(format!("meta{id}")).display().to_string(),
            "--out-after".into(),
            args.out_after.to_string(),
            "--gc-grace".into(),
            args.gc_grace.to_string(),
        ];
        a.extend(args.tls_args(&format!("meta{id}")));
        let d = spawn(
            exe,
            (Role::Meta, *id, address.clone()),
            &a,
            args.data.join(format!("meta{id}.log")),
            format!("meta replica {id}"),
        )?;
        daemons.push(d);
    }
    Ok(())
}

fn start_chunkservers(
    exe: &Path,
    args: &UpArgs,
    meta_list: &str,
    daemons: &mut Vec<Daemon>,
) -> anyhow::Result<()> {
    for n in 1..=args.chunkservers as u64 {
        let address = format!("127.0.0.{}:{}", 20 + n, args.port);
        let mut a = vec![
            "chunkserver".into(),
            "--dir".into(),
            args.data.join(format!("cs{n}")).display().to_string(),
            "--limit".into(),
            args.limit.clone(),
            "--reserve".into(),
            args.reserve.clone(),
            "--meta".into(),
            meta_list.to_string(),
            "--listen".into(),
            address.clone(),
            "--inventory-every".into(),
            args.inventory_every.to_string(),
        ];
        a.extend(args.tls_args(&format!("cs{n}")));
        let d = spawn(
            exe,
            (Role::Chunkserver, n, address.clone()),
            &a,
            args.data.join(format!("cs{n}.log")),
            format!("chunkserver {n}"),
        )?;
        daemons.push(d);
    }
    Ok(())
}

/// Waits until `count` chunkservers have registered and are heartbeating.
async fn wait_for_chunkservers(
    client: &MetaClient,
    count: usize,
    start: Instant,
) -> anyhow::Result<()> {
    loop {
        if let Ok(NsReply::Chunkservers(list)) = client.read(ReadOp::ListChunkservers).await {
            let up = list
                .iter()
                .filter(|s| s.state == ChunkserverState::Up)
                .count();
            if up >= count {
                return Ok(());
            }
        }
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(60),
            "chunkservers did not come up within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Restarts a daemon that exits (a few times in `RESTART_WINDOW`); returns
/// when the mount exits or a daemon keeps dying: what, its log, its status.
async fn supervise(
    exe: &Path,
    args: &UpArgs,
    mountpoint: &Path,
    daemons: &mut [Daemon],
) -> (String, PathBuf, std::process::ExitStatus) {
    loop {
        let mut restarted = false;
        for d in daemons.iter_mut() {
            let Ok(Some(status)) = d.child.try_wait() else {
                continue;
            };
            d.restarts.retain(|t| t.elapsed() < RESTART_WINDOW);
            if d.role == Role::Mount || d.restarts.len() >= RESTARTS_MAX {
                return (d.what.clone(), d.log.clone(), status);
            }
            eprintln!("sparefs: {} exited ({status}); starting it again", d.what);
            tokio::time::sleep(RESTART_PAUSE).await;
            match spawn(
                exe,
                (d.role, d.id, d.address.clone()),
                &d.args,
                d.log.clone(),
                d.what.clone(),
            ) {
                Ok(mut fresh) => {
                    fresh.restarts = std::mem::take(&mut d.restarts);
                    fresh.restarts.push(Instant::now());
                    *d = fresh;
                    restarted = true;
                }
                Err(e) => {
                    eprintln!("sparefs: restart {}: {e:#}", d.what);
                    return (d.what.clone(), d.log.clone(), status);
                }
            }
        }
        if restarted {
            if let Err(e) = write_cluster_file(&args.data, daemons, mountpoint) {
                eprintln!("sparefs: update cluster.json: {e:#}");
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
