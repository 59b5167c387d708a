//! `--metrics ADDR` on every daemon: a meta replica, a chunkserver, a mount
//! and an iSCSI target each serve Prometheus text over HTTP; after real
//! work through them (a file written and synced through the mount, an
//! INQUIRY and a read to the target), each scrape parses line by line and
//! holds the series that work must have moved.

use sparefs_tests::{cluster_with, sparefs_bin};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A port free on 127.0.0.1 right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// `GET /metrics` on `addr`: the body, once it answers (up to 20 s).
fn scrape(addr: &str) -> String {
    let started = Instant::now();
    loop {
        let got = std::net::TcpStream::connect(addr).and_then(|mut s| {
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            write!(
                s,
                "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
            )?;
            let mut all = String::new();
            s.read_to_string(&mut all)?;
            Ok(all)
        });
        if let Ok(all) = got {
            if let Some((head, body)) = all.split_once("\r\n\r\n") {
                assert!(head.starts_with("HTTP/1.1 200"), "{head}");
                return body.to_string();
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no metrics on {addr}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The text format parsed: every sample by its full name with labels
/// (`name{a="b",...}` as written), each value a number. Comment lines must
/// be `# HELP` or `# TYPE`.
fn parse(text: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        if let Some(c) = line.strip_prefix('#') {
            let c = c.trim_start();
            assert!(
                c.starts_with("HELP") || c.starts_with("TYPE"),
                "comment line: {line}"
            );
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("a sample line");
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("a number in {line}"));
        let name = series.split('{').next().unwrap_or("");
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == ':'),
            "metric name in {line}"
        );
        out.insert(series.to_string(), value);
    }
    out
}

/// The sum of the samples of `name` whose labels contain every one of
/// `labels` (`key="value"`).
fn sum(samples: &BTreeMap<String, f64>, name: &str, labels: &[&str]) -> f64 {
    samples
        .iter()
        .filter(|(series, _)| {
            let (n, rest) = series.split_once('{').unwrap_or((series, ""));
            n == name && labels.iter().all(|l| rest.contains(l))
        })
        .map(|(_, v)| v)
        .sum()
}

struct Killed(Vec<Child>, Vec<std::path::PathBuf>);

impl Drop for Killed {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
        for m in &self.1 {
            let _ = Command::new("umount").arg("-l").arg(m).status();
        }
    }
}

fn is_mounted(dir: &Path) -> bool {
    std::fs::read_to_string("/proc/mounts")
        .map(|m| {
            m.lines()
                .any(|l| l.split(' ').nth(1) == Some(dir.to_string_lossy().as_ref()))
        })
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread")]
async fn every_daemon_serves_metrics_that_move_with_work() {
    let meta_at = format!("127.0.0.1:{}", free_port());
    let mut c = cluster_with(1, 3, "2G", &["--metrics", &meta_at], &[])
        .await
        .expect("cluster");
    let mut spawned = Killed(Vec::new(), Vec::new());
    // A fourth chunkserver, with metrics.
    let cs_at = format!("127.0.0.1:{}", free_port());
    c.chunkserver_args = vec!["--metrics".into(), cs_at.clone()];
    c.spawn_chunkserver(4, "2G").expect("chunkserver 4");
    c.wait_chunkservers(4, Duration::from_secs(20))
        .await
        .expect("four chunkservers");
    // A mount with metrics, and a file written through it and synced.
    let mount_at = format!("127.0.0.1:{}", free_port());
    let mnt = c.dir.path().join("metrics-mnt");
    std::fs::create_dir_all(&mnt).expect("mountpoint");
    spawned.0.push(
        Command::new(sparefs_bin())
            .args(["mount", "--meta", &c.meta_list(), "--metrics", &mount_at])
            .arg(&mnt)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("sparefs mount"),
    );
    spawned.1.push(mnt.clone());
    let started = Instant::now();
    while !is_mounted(&mnt) {
        assert!(started.elapsed() < Duration::from_secs(20), "not mounted");
        std::thread::sleep(Duration::from_millis(50));
    }
    {
        let mut f = std::fs::File::create(mnt.join("m.bin")).expect("create");
        for i in 0..40u8 {
            f.write_all(&vec![i; 256 * 1024]).expect("write");
        }
        f.sync_all().expect("fsync");
    }
    assert_eq!(
        std::fs::read(mnt.join("m.bin")).expect("read back").len(),
        40 * 256 * 1024
    );
    // An iSCSI target serving a local file, asked an INQUIRY.
    let iscsi_at = format!("127.0.0.1:{}", free_port());
    let portal = format!("127.0.0.1:{}", free_port());
    let image = c.dir.path().join("local.img");
    spawned.0.push(
        Command::new(sparefs_bin())
            .args(["iscsi", "serve", "--listen", &portal, "--size", "64M"])
            .arg("--file")
            .arg(&image)
            .args(["--metrics", &iscsi_at])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("sparefs iscsi serve"),
    );
    let url = format!("iscsi://{portal}/iqn.2026-12.org.sparefs:default/1");
    let started = Instant::now();
    while !Command::new("iscsi-inq")
        .arg(&url)
        .output()
        .is_ok_and(|o| o.status.success())
    {
        assert!(started.elapsed() < Duration::from_secs(20), "no target");
        std::thread::sleep(Duration::from_millis(200));
    }

    let meta = parse(&scrape(&meta_at));
    assert!(sum(&meta, "sparefs_raft_term", &[]) >= 1.0, "{meta:?}");
    assert_eq!(sum(&meta, "sparefs_raft_is_leader", &[]), 1.0);
    assert!(sum(&meta, "sparefs_raft_applied_index", &[]) >= 1.0);
    assert!(
        sum(
            &meta,
            "sparefs_request_seconds_count",
            &["kind=\"Heartbeat\""]
        ) >= 1.0,
        "heartbeats served: {meta:?}"
    );
    let kinds = meta
        .iter()
        .filter(|(k, v)| k.starts_with("sparefs_request_seconds_count{") && **v >= 1.0)
        .count();
    assert!(
        kinds >= 4,
        "requests of several kinds, each timed: {meta:?}"
    );
    assert!(sum(&meta, "sparefs_repair_blocks_to_repair", &[]) >= 0.0);
    assert!(
        meta.keys().all(|k| k.contains("daemon=\"meta\"")),
        "labelled"
    );

    let cs = parse(&scrape(&cs_at));
    assert!(
        sum(&cs, "sparefs_chunkserver_capacity_bytes", &[]) > 0.0,
        "{cs:?}"
    );
    assert!(cs.contains_key("sparefs_chunkserver_fragments{daemon=\"chunkserver\"}"));

    let mount = parse(&scrape(&mount_at));
    assert!(
        sum(&mount, "sparefs_client_bytes_total", &["op=\"write\""]) >= (10 << 20) as f64,
        "{mount:?}"
    );
    assert!(
        sum(
            &mount,
            "sparefs_client_file_seconds_count",
            &["op=\"flush\""]
        ) >= 1.0
    );
    assert!(sum(&mount, "sparefs_client_meta_seconds_count", &[]) >= 1.0);

    let iscsi = parse(&scrape(&iscsi_at));
    assert!(
        sum(&iscsi, "sparefs_iscsi_command_seconds_count", &[]) >= 1.0,
        "{iscsi:?}"
    );
    // Every series the Grafana dashboard draws is one a daemon serves
    // (error counters appear with the first error).
    let dashboard = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/grafana-sparefs.json"),
    )
    .expect("packaging/grafana-sparefs.json");
    let served: Vec<&String> = [&meta, &cs, &mount, &iscsi]
        .iter()
        .flat_map(|m| m.keys())
        .collect();
    let mut drawn: Vec<String> = dashboard
        .split(|ch: char| !(ch.is_ascii_alphanumeric() || ch == '_'))
        .filter(|w| w.starts_with("sparefs_"))
        .map(|w| w.to_string())
        .collect();
    drawn.sort();
    drawn.dedup();
    for name in drawn {
        if name.ends_with("_errors_total") || name.ends_with("_failures_total") {
            continue;
        }
        assert!(
            served
                .iter()
                .any(|k| k.split('{').next() == Some(name.as_str())),
            "the dashboard draws {name}, which no daemon serves"
        );
    }
    drop(spawned);
}
