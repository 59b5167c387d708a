//! A meta group over mutual TLS (`sparefs meta --tls DIR`): three real
//! replicas elect a leader with every Raft message over TLS, answer a
//! client holding a certificate of the cluster CA, and answer nobody else:
//! not a plaintext client, not a certificate of another CA. A replica
//! given another replica's certificate refuses to start.

use sparefs_proto::msg::{Reply, Request};
use sparefs_tests::sparefs_bin;
use sparefs_wire::conn::{CallError, Conn};
use sparefs_wire::tls::{ClusterCa, Identity, Role, Tls};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Kills every process it holds when the test ends, passed or not.
struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn meta(id: u64) -> Identity {
    Identity {
        role: Role::Meta,
        id,
    }
}

fn spawn_meta(dir: &Path, id: u64, peers: &str, addr: &str, tls: &Path) -> Child {
    let log = std::fs::File::create(dir.join(format!("meta{id}.log"))).expect("log");
    Command::new(sparefs_bin())
        .args([
            "meta",
            "--id",
            &id.to_string(),
            "--listen",
            addr,
            "--peers",
            peers,
        ])
        .arg("--data")
        .arg(dir.join(format!("m{id}")))
        .arg("--tls")
        .arg(tls)
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn sparefs meta")
}

async fn status(addr: &str, tls: Option<&Tls>) -> Result<Reply, String> {
    let conn = Conn::open_with(addr, Duration::from_secs(2), tls)
        .await
        .map_err(|e| e.to_string())?;
    match conn.call(Request::Status, Duration::from_secs(2)).await {
        Ok(r) => Ok(r),
        Err(CallError::Rpc(e)) => Err(e.to_string()),
        Err(CallError::Transport(e)) => Err(e),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_meta_group_over_tls_serves_its_cluster_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = ClusterCa::create().expect("ca");
    let addrs: Vec<String> = (0..3)
        .map(|_| format!("127.0.0.1:{}", free_port()))
        .collect();
    let peers = (1..=3u64)
        .map(|id| format!("{id}={}", addrs[id as usize - 1]))
        .collect::<Vec<_>>()
        .join(",");
    let mut procs = Procs(Vec::new());
    for id in 1..=3u64 {
        let creds = dir.path().join(format!("tls{id}"));
        ca.issue(meta(id))
            .expect("cert")
            .save(&creds)
            .expect("save");
        procs.0.push(spawn_meta(
            dir.path(),
            id,
            &peers,
            &addrs[id as usize - 1],
            &creds,
        ));
    }
    let admin = Tls::new(&ca.issue(Identity::new(Role::Admin, 1)).expect("cert")).expect("tls");

    // Every replica answers over TLS and names the same leader.
    let start = Instant::now();
    let leaders = loop {
        let mut seen = Vec::new();
        for a in &addrs {
            if let Ok(Reply::Status(st)) = status(a, Some(&admin)).await {
                seen.push(st.leader);
            }
        }
        if seen.len() == 3 && seen[0].is_some() && seen.iter().all(|l| *l == seen[0]) {
            break seen;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no leader over TLS within 30 s (saw {seen:?}); meta1.log: {}",
            std::fs::read_to_string(dir.path().join("meta1.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(leaders[0].is_some());

    for a in &addrs {
        let started = Instant::now();
        let r = status(a, None).await;
        assert!(
            matches!(&r, Err(e) if e.contains("mutual TLS only")),
            "{a} answered a plaintext client, or did not say why not: {r:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "refused at once"
        );
    }
    // The command a user would run without --tls says why, at once.
    let started = Instant::now();
    let out = std::process::Command::new(sparefs_tests::sparefs_bin())
        .args(["status", "--meta", &addrs.join(",")])
        .env_remove("SPAREFS_TLS")
        .output()
        .expect("run sparefs status");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "status answered without TLS");
    assert!(said.contains("--tls DIR"), "no reason given: {said}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    let other = ClusterCa::create().expect("other ca");
    let stranger = Tls::new(&other.issue(meta(1)).expect("cert")).expect("tls");
    for a in &addrs {
        assert!(
            status(a, Some(&stranger)).await.is_err(),
            "{a} answered a certificate of another CA"
        );
    }

    // Replica 3's address with replica 2's certificate: refused at start.
    let wrong = dir.path().join("tls2");
    let out = Command::new(sparefs_bin())
        .args([
            "meta",
            "--id",
            "3",
            "--listen",
            "127.0.0.1:1",
            "--peers",
            &peers,
        ])
        .arg("--data")
        .arg(dir.path().join("wrong"))
        .arg("--tls")
        .arg(&wrong)
        .output()
        .expect("run sparefs meta");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("names meta 2, not meta 3"),
        "a replica started with another's certificate: {err}"
    );
}
