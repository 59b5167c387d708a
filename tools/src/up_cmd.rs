//! `sparefs up`: the embedded default. Starts a local meta group, each
//! replica its own process on its own 127.0.0.x address, over directories
//! under --data; prints `ready` once a leader serves; on Ctrl-C or SIGTERM
//! stops everything it started. Started again on the same --data it comes
//! back with the same state (the replicas reopen their directories).
//!
//! Chunkservers and the mount arrive with the data-path issue; until then
//! `up` runs the metadata service only and says so.

use crate::current_caller;
use anyhow::Context;
use serde_json::json;
use sparefs_client::MetaClient;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct UpArgs {
    /// Where the cluster keeps its state (one directory per daemon).
    #[arg(long, default_value = "/var/lib/sparefs")]
    data: PathBuf,
    /// Meta replicas (1, 3 or 5).
    #[arg(long, default_value_t = 3)]
    metas: u32,
    /// Port every meta replica listens on, each on its own 127.0.0.x.
    #[arg(long, default_value_t = 7400)]
    port: u16,
    /// Exit once ready, leaving the daemons running (for scripts).
    #[arg(long)]
    detach: bool,
}

pub struct ClusterFile {
    pub meta: Vec<(u64, String, Option<u32>)>,
}

impl ClusterFile {
    pub fn meta_addresses(&self) -> Vec<String> {
        self.meta.iter().map(|(_, a, _)| a.clone()).collect()
    }
    pub fn pids(&self) -> BTreeMap<String, u32> {
        self.meta.iter().filter_map(|(_, a, p)| p.map(|p| (a.clone(), p))).collect()
    }
}

pub fn read_cluster_file(dir: &Path) -> anyhow::Result<ClusterFile> {
    let path = dir.join("cluster.json");
    let text = std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("parse {}", path.display()))?;
    let mut meta = Vec::new();
    for m in v["meta"].as_array().map(|a| a.as_slice()).unwrap_or_default() {
        let id = m["id"].as_u64().context("cluster.json: meta id")?;
        let address = m["address"].as_str().context("cluster.json: meta address")?.to_string();
        meta.push((id, address, m["pid"].as_u64().map(|p| p as u32)));
    }
    Ok(ClusterFile { meta })
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

pub async fn run(args: UpArgs) -> anyhow::Result<i32> {
    anyhow::ensure!(matches!(args.metas, 1 | 3 | 5), "--metas must be 1, 3 or 5");
    std::fs::create_dir_all(&args.data).with_context(|| format!("create {}", args.data.display()))?;
    let exe = std::env::current_exe().context("find the sparefs binary")?;
    let peers: BTreeMap<u64, String> = (1..=args.metas as u64).map(|i| (i, format!("127.0.0.{}:{}", 10 + i, args.port))).collect();
    let peers_arg = peers.iter().map(|(i, a)| format!("{i}={a}")).collect::<Vec<_>>().join(",");
    let mut children = Vec::new();
    for (id, address) in &peers {
        let log = std::fs::File::create(args.data.join(format!("meta{id}.log")))?;
        let mut cmd = tokio::process::Command::new(&exe);
        cmd.args(["meta", "--id", &id.to_string(), "--listen", address, "--peers", &peers_arg, "--data"])
            .arg(args.data.join(format!("meta{id}")))
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);
        if !args.detach {
            die_with_parent(&mut cmd);
        }
        let child = cmd.spawn().with_context(|| format!("start meta replica {id}"))?;
        children.push((*id, address.clone(), child));
    }
    let file = json!({ "meta": children.iter().map(|(id, a, c)| json!({"id": id, "address": a, "pid": c.id()})).collect::<Vec<_>>() });
    std::fs::write(args.data.join("cluster.json"), serde_json::to_vec_pretty(&file)?)?;
    let addresses: Vec<String> = peers.values().cloned().collect();
    let client = MetaClient::new(addresses.clone(), current_caller()).with_deadline(Duration::from_secs(30));
    let start = Instant::now();
    client.getattr(sparefs_proto::InodeId::ROOT).await.context("wait for the meta group to elect a leader")?;
    println!(
        "sparefs ready: meta group of {} at {} (leader elected in {:.1}s); data in {}. Chunkservers and the mount are not built yet (issue 3).",
        args.metas,
        addresses.join(","),
        start.elapsed().as_secs_f64(),
        args.data.display()
    );
    println!("try: sparefs fs --meta {} ls /", addresses.join(","));
    if args.detach {
        for (_, _, c) in &mut children {
            // Leave them running: forget the handles without killing.
            let _ = c.id();
        }
        std::mem::forget(children);
        return Ok(0);
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let exited = async {
        loop {
            for (id, _, c) in children.iter_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    return (*id, status);
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    };
    let code = tokio::select! {
        _ = tokio::signal::ctrl_c() => 0,
        _ = term.recv() => 0,
        (id, status) = exited => {
            eprintln!("sparefs: meta replica {id} exited ({status}); see {}", args.data.join(format!("meta{id}.log")).display());
            1
        }
    };
    for (_, _, c) in children.iter_mut() {
        if let Some(pid) = c.id() {
            #[allow(unsafe_code)]
            // SAFETY: sending a signal to our own child process.
            unsafe {
                libc::kill(pid as i32, libc::SIGTERM);
            }
        }
    }
    for (_, _, c) in children.iter_mut() {
        let _ = tokio::time::timeout(Duration::from_secs(5), c.wait()).await;
        let _ = c.start_kill();
    }
    println!("sparefs: stopped");
    Ok(code)
}
