//! Harness for cluster tests and benchmarks: starts real `sparefs meta`
//! processes on their own 127.0.0.x addresses with per-test directories and
//! log files, kills them (SIGKILL/SIGSTOP) on request, and stops every one
//! it started when dropped, even when a test fails.

pub mod data;
pub mod fsx;

use anyhow::Context;
use sparefs_client::MetaClient;
use sparefs_proto::msg::{ReplicaStatus, Role};
use sparefs_proto::namespace::Caller;
pub use sparefs_wire::tls::Role as TlsRole;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Calls `check` every `pause` until it answers `Ok`, and returns that with
/// the seconds it took; fails the test with the last `Err` (what it saw)
/// once `timeout` has passed.
pub async fn poll<T, F, Fut>(timeout: Duration, pause: Duration, mut check: F) -> (T, f64)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let start = Instant::now();
    loop {
        match check().await {
            Ok(v) => return (v, start.elapsed().as_secs_f64()),
            Err(seen) => assert!(start.elapsed() < timeout, "{seen}"),
        }
        tokio::time::sleep(pause).await;
    }
}

/// The `sparefs` binary: $SPAREFS_BIN, or beside the test executable's
/// directory (target/<profile>/sparefs).
pub fn sparefs_bin() -> PathBuf {
    if let Ok(p) = std::env::var("SPAREFS_BIN") {
        return p.into();
    }
    let exe = std::env::current_exe().expect("current exe");
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir.join("sparefs")
}

/// Runs `cmd` to its end and returns its standard output; a failure
/// fails the test with `what` and both outputs.
pub fn run_ok(cmd: &mut std::process::Command, what: &str) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A free port (probed on 127.0.0.1; every 127.0.0.x host uses it).
fn free_port() -> u16 {
    for _ in 0..100 {
        let port = 20_000 + rand::random::<u16>() % 30_000;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port found");
}

/// Whether `dir` is a sparefs FUSE mount now.
pub fn is_mounted(dir: &std::path::Path) -> bool {
    let want = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    std::fs::read_to_string("/proc/self/mounts")
        .map(|m| {
            m.lines().any(|l| {
                l.split_whitespace().nth(1).map(std::path::Path::new) == Some(want.as_path())
                    && l.starts_with("sparefs:")
            })
        })
        .unwrap_or(false)
}

/// Whom a certificate names.
pub fn who(role: TlsRole, id: u64) -> sparefs_wire::tls::Identity {
    sparefs_wire::tls::Identity { role, id }
}

/// A cluster with `metas` replicas, three chunkservers and `mounts` mounts.
pub async fn fs_cluster(metas: u64, mounts: u64) -> anyhow::Result<(MetaCluster, Vec<PathBuf>)> {
    fs_cluster_of(MetaCluster::start(metas)?, mounts).await
}

/// `fs_cluster` over mutual TLS.
pub async fn fs_cluster_tls(
    metas: u64,
    mounts: u64,
) -> anyhow::Result<(MetaCluster, Vec<PathBuf>)> {
    fs_cluster_of(MetaCluster::start_tls(metas)?, mounts).await
}

pub async fn fs_cluster_of(
    mut c: MetaCluster,
    mounts: u64,
) -> anyhow::Result<(MetaCluster, Vec<PathBuf>)> {
    c.wait_leader(Duration::from_secs(20)).await?;
    for n in 1..=3 {
        c.spawn_chunkserver(n, "2G")?;
    }
    c.wait_chunkservers(3, Duration::from_secs(20)).await?;
    let mut dirs = Vec::new();
    for n in 1..=mounts {
        dirs.push(c.spawn_mount(n, 10)?);
    }
    Ok((c, dirs))
}

/// A cluster for failure tests: `metas` replicas and `chunkservers`
/// chunkservers of `limit` each, started with extra arguments, all up.
pub async fn cluster_with(
    metas: u64,
    chunkservers: u64,
    limit: &str,
    meta_args: &[&str],
    chunkserver_args: &[&str],
) -> anyhow::Result<MetaCluster> {
    let mut c = MetaCluster::start_with_args(metas, 20_000, 2_000, meta_args)?;
    c.wait_leader(Duration::from_secs(20)).await?;
    c.chunkserver_args = chunkserver_args.iter().map(|a| a.to_string()).collect();
    for n in 1..=chunkservers {
        c.spawn_chunkserver(n, limit)?;
    }
    c.wait_chunkservers(chunkservers as usize, Duration::from_secs(20))
        .await?;
    Ok(c)
}

pub struct MetaCluster {
    pub dir: tempfile::TempDir,
    pub addrs: BTreeMap<u64, String>,
    pub procs: BTreeMap<u64, Child>,
    pub chunkservers: BTreeMap<u64, Child>,
    pub mounts: BTreeMap<u64, (Child, PathBuf)>,
    pub compact_after: u64,
    pub compact_keep: u64,
    /// Extra arguments for every meta replica and chunkserver started.
    pub meta_args: Vec<String>,
    pub chunkserver_args: Vec<String>,
    /// Replicas 1..=initial form the group at start; higher ids join later.
    initial: u64,
    /// The first three octets of every daemon's address (`127.0.H`, or a
    /// network a test built, see `start_tls_on`).
    net: String,
    /// Set: every daemon, mount and client of this cluster talks mutual
    /// TLS with certificates of this CA, kept under DIR/tls/NAME.
    pub ca: Option<sparefs_wire::tls::ClusterCa>,
}

impl MetaCluster {
    /// Starts `n` replicas of a new group.
    pub fn start(n: u64) -> anyhow::Result<MetaCluster> {
        Self::start_with(n, 20_000, 2_000)
    }

    pub fn start_with(
        n: u64,
        compact_after: u64,
        compact_keep: u64,
    ) -> anyhow::Result<MetaCluster> {
        Self::start_with_args(n, compact_after, compact_keep, &[])
    }

    /// Starts `n` replicas with extra `sparefs meta` arguments.
    pub fn start_with_args(
        n: u64,
        compact_after: u64,
        compact_keep: u64,
        meta_args: &[&str],
    ) -> anyhow::Result<MetaCluster> {
        Self::start_inner(n, compact_after, compact_keep, meta_args, false)
    }

    /// `start` with mutual TLS everywhere: a CA of its own, a certificate
    /// per daemon, mount and client (`tls_dir`).
    pub fn start_tls(n: u64) -> anyhow::Result<MetaCluster> {
        Self::start_inner(n, 20_000, 2_000, &[], true)
    }

    /// `start_tls` with every daemon on `NET.x` (three octets) instead of
    /// 127.0.H.x: addresses a test gave an interface of its own (network
    /// namespaces).
    pub fn start_tls_on(n: u64, net: &str) -> anyhow::Result<MetaCluster> {
        Self::start_net(n, 20_000, 2_000, &[], true, Some(net))
    }

    fn start_inner(
        n: u64,
        compact_after: u64,
        compact_keep: u64,
        meta_args: &[&str],
        tls: bool,
    ) -> anyhow::Result<MetaCluster> {
        Self::start_net(n, compact_after, compact_keep, meta_args, tls, None)
    }

    fn start_net(
        n: u64,
        compact_after: u64,
        compact_keep: u64,
        meta_args: &[&str],
        tls: bool,
        net: Option<&str>,
    ) -> anyhow::Result<MetaCluster> {
        let port = free_port();
        let net = match net {
            Some(n) => n.to_string(),
            None => format!("127.0.{}", 20 + (rand::random::<u8>() % 200)),
        };
        let addrs: BTreeMap<u64, String> =
            (1..=n).map(|i| (i, format!("{net}.{i}:{port}"))).collect();
        let ca = if tls {
            Some(sparefs_wire::tls::ClusterCa::create()?)
        } else {
            None
        };
        let mut c = MetaCluster {
            ca,
            dir: tempfile::tempdir()?,
            addrs,
            procs: BTreeMap::new(),
            chunkservers: BTreeMap::new(),
            mounts: BTreeMap::new(),
            compact_after,
            compact_keep,
            meta_args: meta_args.iter().map(|a| a.to_string()).collect(),
            chunkserver_args: Vec::new(),
            initial: n,
            net,
        };
        for id in 1..=n {
            c.spawn(id, false)?;
        }
        Ok(c)
    }

    pub fn address(&self, id: u64) -> String {
        self.addrs.get(&id).cloned().unwrap_or_else(|| {
            let port = self
                .addrs
                .values()
                .next()
                .and_then(|a| a.rsplit(':').next())
                .unwrap_or("0");
            format!("{}.{id}:{port}", self.net)
        })
    }

    /// The credentials of `who` (issued on first use) under DIR/tls/NAME,
    /// as `--tls DIR` arguments; none for a plaintext cluster.
    pub fn tls_args(&self, who: sparefs_wire::tls::Identity) -> anyhow::Result<Vec<String>> {
        let Some(d) = self.tls_dir(who)? else {
            return Ok(Vec::new());
        };
        Ok(vec!["--tls".into(), d.display().to_string()])
    }

    /// Where `who`'s credentials are (issued on first use), if TLS.
    pub fn tls_dir(&self, who: sparefs_wire::tls::Identity) -> anyhow::Result<Option<PathBuf>> {
        let Some(ca) = &self.ca else {
            return Ok(None);
        };
        let d = self
            .dir
            .path()
            .join("tls")
            .join(format!("{}{}", who.role.name(), who.id));
        if !d.join("key.pem").exists() {
            std::fs::create_dir_all(&d)?;
            ca.issue(who)?.save(&d)?;
        }
        Ok(Some(d))
    }

    /// `sparefs ARGS` as the cluster's admin (its certificate over TLS),
    /// which must succeed: its stdout.
    pub fn admin(&self, args: &[&str]) -> String {
        let mut cmd = Command::new(sparefs_bin());
        cmd.args(
            self.tls_args(who(TlsRole::Admin, 0))
                .expect("admin credentials"),
        )
        .args(args);
        run_ok(&mut cmd, &args.join(" "))
    }

    /// TLS ends for a test's own connections as `who`, if TLS.
    pub fn tls_as(
        &self,
        who: sparefs_wire::tls::Identity,
    ) -> anyhow::Result<Option<std::sync::Arc<sparefs_wire::tls::Tls>>> {
        let Some(d) = self.tls_dir(who)? else {
            return Ok(None);
        };
        let creds = sparefs_wire::tls::Credentials::load(&d)?;
        Ok(Some(std::sync::Arc::new(sparefs_wire::tls::Tls::new(
            &creds,
        )?)))
    }

    /// A client with `who`'s certificate (plaintext without TLS).
    pub fn client_as(&self, who: sparefs_wire::tls::Identity) -> anyhow::Result<MetaClient> {
        let c = MetaClient::new(self.addrs.values().cloned().collect(), Caller::ROOT);
        Ok(match self.tls_as(who)? {
            Some(tls) => c.with_tls(tls),
            None => c,
        })
    }

    pub fn data_dir(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("meta{id}"))
    }

    pub fn log_path(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("meta{id}.log"))
    }

    /// Starts (or restarts) replica `id`; `join` starts it empty, to be added.
    pub fn spawn(&mut self, id: u64, join: bool) -> anyhow::Result<()> {
        let address = self.address(id);
        self.addrs.insert(id, address.clone());
        let peers = self
            .addrs
            .iter()
            .filter(|(i, _)| join || **i <= self.initial)
            .map(|(i, a)| format!("{i}={a}"))
            .collect::<Vec<_>>()
            .join(",");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(id))?;
        let mut cmd = Command::new(sparefs_bin());
        cmd.args([
            "meta",
            "--id",
            &id.to_string(),
            "--listen",
            &address,
            "--data",
        ])
        .arg(self.data_dir(id))
        .args([
            "--compact-after",
            &self.compact_after.to_string(),
            "--compact-keep",
            &self.compact_keep.to_string(),
        ])
        .stdout(log.try_clone()?)
        .stderr(log)
        .stdin(Stdio::null());
        cmd.args(["--peers", &peers]);
        cmd.args(&self.meta_args);
        cmd.args(self.tls_args(who(TlsRole::Meta, id))?);
        if join {
            cmd.arg("--join");
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("spawn {}", sparefs_bin().display()))?;
        self.procs.insert(id, child);
        Ok(())
    }

    pub fn signal(&mut self, id: u64, sig: i32) {
        if let Some(c) = self.procs.get(&id) {
            #[allow(unsafe_code)]
            // SAFETY: signalling a child this harness started.
            unsafe {
                libc::kill(c.id() as i32, sig);
            }
        }
    }

    pub fn kill(&mut self, id: u64) {
        self.signal(id, libc::SIGCONT);
        self.signal(id, libc::SIGKILL);
        if let Some(mut c) = self.procs.remove(&id) {
            let _ = c.wait();
        }
    }

    pub fn pid(&self, id: u64) -> Option<u32> {
        self.procs.get(&id).map(|c| c.id())
    }

    pub fn meta_list(&self) -> String {
        self.addrs.values().cloned().collect::<Vec<_>>().join(",")
    }

    /// A client of this cluster (with the admin certificate over TLS).
    pub fn client(&self) -> MetaClient {
        let c = MetaClient::new(self.addrs.values().cloned().collect(), Caller::ROOT);
        match self.tls_as(who(TlsRole::Admin, 0)) {
            Ok(Some(tls)) => c.with_tls(tls),
            _ => c,
        }
    }

    pub async fn status(&self, id: u64) -> Option<ReplicaStatus> {
        let c = MetaClient::new(vec![], Caller::ROOT);
        let c = match self.tls_as(who(TlsRole::Admin, 0)) {
            Ok(Some(tls)) => c.with_tls(tls),
            _ => c,
        };
        c.status_of(&self.address(id)).await.ok()
    }

    /// Waits until some running replica is leader; returns its id.
    pub async fn wait_leader(&self, timeout: Duration) -> anyhow::Result<u64> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            for id in self.procs.keys() {
                if let Some(s) = self.status(*id).await {
                    if s.role == Role::Leader {
                        return Ok(*id);
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        anyhow::bail!("no leader within {timeout:?}")
    }

    pub fn log_tail(&self, id: u64) -> String {
        let text = std::fs::read_to_string(self.log_path(id)).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for MetaCluster {
    fn drop(&mut self) {
        let ids: Vec<u64> = self.procs.keys().copied().collect();
        for id in ids {
            self.kill(id);
        }
        let mounts: Vec<u64> = self.mounts.keys().copied().collect();
        for n in mounts {
            self.unmount(n);
        }
        for (_, mut c) in std::mem::take(&mut self.chunkservers) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl MetaCluster {
    pub fn chunkserver_address(&self, n: u64) -> String {
        let port = self
            .addrs
            .values()
            .next()
            .and_then(|a| a.rsplit(':').next())
            .unwrap_or("0")
            .to_string();
        format!("{}.{}:{port}", self.net, 100 + n)
    }

    pub fn chunkserver_dir(&self, n: u64) -> PathBuf {
        self.dir.path().join(format!("cs{n}"))
    }

    /// Starts (or restarts) chunkserver `n` with `--limit`.
    pub fn spawn_chunkserver(&mut self, n: u64, limit: &str) -> anyhow::Result<()> {
        self.spawn_chunkserver_with(n, limit, "0")
    }

    pub fn spawn_chunkserver_with(
        &mut self,
        n: u64,
        limit: &str,
        reserve: &str,
    ) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("cs{n}.log")))?;
        let child = Command::new(sparefs_bin())
            .args(["chunkserver", "--dir"])
            .arg(self.chunkserver_dir(n))
            .args([
                "--limit",
                limit,
                "--reserve",
                reserve,
                "--meta",
                &self.meta_list(),
                "--listen",
                &self.chunkserver_address(n),
            ])
            .args(&self.chunkserver_args)
            .args(self.tls_args(who(TlsRole::Chunkserver, n))?)
            .stdout(log.try_clone()?)
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()?;
        self.chunkservers.insert(n, child);
        Ok(())
    }

    /// Mounts the cluster at DIR/mntN with a `sparefs mount` process whose
    /// operations give up after `timeout_s`; waits until it is mounted.
    pub fn spawn_mount(&mut self, n: u64, timeout_s: u64) -> anyhow::Result<PathBuf> {
        let dir = self.dir.path().join(format!("mnt{n}"));
        std::fs::create_dir_all(&dir)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("mount{n}.log")))?;
        let child = Command::new(sparefs_bin())
            .args([
                "mount",
                "--meta",
                &self.meta_list(),
                "--timeout",
                &timeout_s.to_string(),
            ])
            .arg(&dir)
            .args(self.tls_args(who(TlsRole::Mount, n))?)
            .stdout(log.try_clone()?)
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()?;
        self.mounts.insert(n, (child, dir.clone()));
        let start = Instant::now();
        while !is_mounted(&dir) {
            anyhow::ensure!(
                start.elapsed() < Duration::from_secs(20),
                "{} not mounted",
                dir.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(dir)
    }

    /// SIGKILLs mount `n`'s process (a client dying) and detaches the dead mount.
    pub fn kill_mount(&mut self, n: u64) {
        if let Some((mut c, dir)) = self.mounts.remove(&n) {
            let _ = c.kill();
            let _ = c.wait();
            let _ = Command::new("umount").arg("-l").arg(&dir).status();
        }
    }

    /// Stops mount `n` (SIGTERM, then a lazy unmount if it lingers).
    pub fn unmount(&mut self, n: u64) {
        if let Some((mut c, dir)) = self.mounts.remove(&n) {
            #[allow(unsafe_code)]
            // SAFETY: signalling a child this harness started.
            unsafe {
                libc::kill(c.id() as i32, libc::SIGTERM);
            }
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(10) {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
            if is_mounted(&dir) {
                let _ = Command::new("umount").arg("-l").arg(&dir).status();
            }
        }
    }

    pub fn kill_chunkserver(&mut self, n: u64) {
        if let Some(mut c) = self.chunkservers.remove(&n) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGSTOPs or SIGCONTs chunkserver `n` (a hung host).
    pub fn signal_chunkserver(&self, n: u64, sig: i32) {
        if let Some(c) = self.chunkservers.get(&n) {
            #[allow(unsafe_code)]
            // SAFETY: signalling a child this harness started.
            unsafe {
                libc::kill(c.id() as i32, sig);
            }
        }
    }

    /// Bytes each chunkserver's fragment files take on disk, by number.
    pub fn chunkserver_usage(&self) -> BTreeMap<u64, u64> {
        let mut out = BTreeMap::new();
        for n in 1..=16 {
            let root = self.chunkserver_dir(n).join("fragments");
            if root.is_dir() {
                out.insert(n, dir_bytes(&root));
            }
        }
        out
    }

    /// The meta's id of chunkserver `n` (by its address).
    pub async fn chunkserver_id(&self, n: u64) -> anyhow::Result<sparefs_proto::ChunkserverId> {
        use sparefs_proto::namespace::{NsReply, ReadOp};
        let address = self.chunkserver_address(n);
        match self.client().read(ReadOp::ListChunkservers).await? {
            NsReply::Chunkservers(list) => list
                .iter()
                .find(|s| s.address == address)
                .map(|s| s.id)
                .ok_or_else(|| anyhow::anyhow!("chunkserver {n} ({address}) not registered")),
            other => anyhow::bail!("list reply {other:?}"),
        }
    }

    /// Block health (protected, degraded, unreadable) from the leader.
    pub async fn health(&self) -> anyhow::Result<(u64, u64, u64)> {
        use sparefs_proto::namespace::{NsReply, ReadOp};
        match self.client().read(ReadOp::Health).await? {
            NsReply::Health {
                protected,
                degraded,
                unreadable,
            } => Ok((protected, degraded, unreadable)),
            other => anyhow::bail!("health reply {other:?}"),
        }
    }

    /// Waits until every block is fully protected (no fragment lost, down
    /// or out, none below its policy); the seconds it took.
    pub async fn wait_protected(&self, timeout: Duration) -> anyhow::Result<f64> {
        let start = Instant::now();
        let mut last = (0, 0, 0);
        while start.elapsed() < timeout {
            if let Ok(h) = self.health().await {
                last = h;
                if h.1 == 0 && h.2 == 0 && h.0 > 0 {
                    return Ok(start.elapsed().as_secs_f64());
                }
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        anyhow::bail!(
            "not fully protected after {timeout:?}: (protected, degraded, unreadable) = {last:?}"
        )
    }

    /// Waits until chunkserver `n` is in `state` in the meta's view.
    pub async fn wait_chunkserver_state(
        &self,
        id: u64,
        state: sparefs_proto::layout::ChunkserverState,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        use sparefs_proto::namespace::{NsReply, ReadOp};
        let start = Instant::now();
        let mut seen = Vec::new();
        while start.elapsed() < timeout {
            if let Ok(NsReply::Chunkservers(list)) =
                self.client().read(ReadOp::ListChunkservers).await
            {
                if list.iter().any(|s| s.id.0 == id && s.state == state) {
                    return Ok(());
                }
                seen = list;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        anyhow::bail!("chunkserver {id} not {state:?} after {timeout:?}: {seen:?}")
    }

    /// Waits until `n` chunkservers are up in the meta's view.
    pub async fn wait_chunkservers(&self, n: usize, timeout: Duration) -> anyhow::Result<()> {
        use sparefs_proto::layout::ChunkserverState;
        use sparefs_proto::namespace::{NsReply, ReadOp};
        let client = self.client();
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Ok(NsReply::Chunkservers(list)) = client.read(ReadOp::ListChunkservers).await {
                if list
                    .iter()
                    .filter(|s| s.state == ChunkserverState::Up)
                    .count()
                    >= n
                {
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        anyhow::bail!("fewer than {n} chunkservers up after {timeout:?}")
    }
}

/// Bytes of the files under `dir`.
pub fn dir_bytes(dir: &std::path::Path) -> u64 {
    data::walk(dir)
        .iter()
        .filter_map(|p| p.metadata().ok())
        .map(|m| m.len())
        .sum()
}

/// This process's soft open-file limit (tests that open thousands of
/// connections raise it first with `raise_descriptor_limit`).
pub fn open_file_limit() -> u64 {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024)
}

/// `ip ARGS` (iproute2), quietly: whether it succeeded. For tests that
/// build network namespaces (root only).
pub fn ip(args: &[&str]) -> bool {
    std::process::Command::new("ip")
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `ip ARGS`, which must succeed.
pub fn ip_must(args: &[&str]) {
    assert!(ip(args), "ip {}", args.join(" "));
}

/// The numbers of a CUnit run's "tests" summary line (total, ran, passed,
/// failed, inactive), from iscsi-test-cu's output; panics without one.
pub fn cunit_tests_line(text: &str) -> Vec<u64> {
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with("tests"))
        .unwrap_or_else(|| panic!("no CUnit summary:\n{text}"));
    let n: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    assert!(n.len() >= 4, "summary {line:?}");
    n
}
