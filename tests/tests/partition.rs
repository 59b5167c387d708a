//! A network partition with real namespaces (root only): one "host" (a
//! meta replica and a chunkserver) lives in its own network namespace,
//! joined to the others by a veth pair. Its link is cut (blackhole routes
//! both ways) while the majority keeps writing; a client on the cut-off
//! side cannot commit anything (no split brain); after the link heals the
//! host catches up and nothing written on either side is lost or doubled.

use sparefs_client::DataClient;
use sparefs_proto::namespace::{NsReply, ReadOp};
use sparefs_proto::InodeId;
use sparefs_tests::data::{get, pattern, put};
use sparefs_tests::{ip, ip_must as must, poll, sparefs_bin};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const NS: &str = "spf-part";
const ROOT_IF: &str = "spf-part0";
const NS_IF: &str = "spf-part1";
/// The cut-off host; the majority hosts are .1, .3, .4 on the root side.
const ISOLATED: &str = "10.77.0.2";

/// The namespace, the veth pair and the processes; all removed on drop.
struct Net {
    procs: Vec<(String, Child)>,
    dir: tempfile::TempDir,
}

impl Net {
    fn setup() -> Net {
        // Leftovers of an aborted run.
        ip(&["netns", "del", NS]);
        ip(&["link", "del", ROOT_IF]);
        ip(&["route", "del", "blackhole", &format!("{ISOLATED}/32")]);
        must(&["netns", "add", NS]);
        must(&[
            "link", "add", ROOT_IF, "type", "veth", "peer", "name", NS_IF,
        ]);
        must(&["link", "set", NS_IF, "netns", NS]);
        for a in ["10.77.0.1/24", "10.77.0.3/24", "10.77.0.4/24"] {
            must(&["addr", "add", a, "dev", ROOT_IF]);
        }
        must(&["link", "set", ROOT_IF, "up"]);
        must(&[
            "netns",
            "exec",
            NS,
            "ip",
            "addr",
            "add",
            "10.77.0.2/24",
            "dev",
            NS_IF,
        ]);
        must(&["netns", "exec", NS, "ip", "link", "set", NS_IF, "up"]);
        must(&["netns", "exec", NS, "ip", "link", "set", "lo", "up"]);
        Net {
            procs: Vec::new(),
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    /// Starts `sparefs ARGS` on the isolated host (inside the namespace)
    /// or on the root side.
    fn spawn(&mut self, name: &str, isolated: bool, args: &[String]) {
        let log = std::fs::File::create(self.dir.path().join(format!("{name}.log"))).expect("log");
        let mut cmd = if isolated {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", NS]).arg(sparefs_bin());
            c
        } else {
            Command::new(sparefs_bin())
        };
        let child = cmd
            .args(args)
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn");
        self.procs.push((name.to_string(), child));
    }

    /// Adds ("add") or removes ("del") blackhole routes both ways between
    /// the isolated host and the others.
    fn blackhole(&self, action: &str) {
        must(&["route", action, "blackhole", &format!("{ISOLATED}/32")]);
        for a in ["10.77.0.1", "10.77.0.3", "10.77.0.4"] {
            let to = format!("{a}/32");
            must(&["netns", "exec", NS, "ip", "route", action, "blackhole", &to]);
        }
    }

    fn cut(&self) {
        self.blackhole("add");
    }

    fn heal(&self) {
        self.blackhole("del");
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for (_, c) in self.procs.iter_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
        ip(&["netns", "del", NS]);
        ip(&["link", "del", ROOT_IF]);
    }
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cut_off_host_commits_nothing_and_catches_up() {
    if unsafe_uid() != 0 {
        println!("skipped: network namespaces need root");
        return;
    }
    let mut net = Net::setup();
    let port = 7470;
    let metas = [(1, ISOLATED), (2, "10.77.0.1"), (3, "10.77.0.3")];
    let peers = metas
        .iter()
        .map(|(i, a)| format!("{i}={a}:{port}"))
        .collect::<Vec<_>>()
        .join(",");
    let meta_list = metas
        .iter()
        .map(|(_, a)| format!("{a}:{port}"))
        .collect::<Vec<_>>()
        .join(",");
    for (id, addr) in metas {
        let data = net.dir.path().join(format!("meta{id}"));
        let mut args = s(&["meta", "--id", &id.to_string(), "--listen"]);
        args.push(format!("{addr}:{port}"));
        args.extend(s(&["--peers", &peers, "--data"]));
        args.push(data.display().to_string());
        net.spawn(&format!("meta{id}"), addr == ISOLATED, &args);
    }
    for (n, addr) in [
        (1, ISOLATED),
        (2, "10.77.0.1"),
        (3, "10.77.0.3"),
        (4, "10.77.0.4"),
    ] {
        let dir = net.dir.path().join(format!("cs{n}"));
        let mut args = s(&["chunkserver", "--dir"]);
        args.push(dir.display().to_string());
        args.extend(s(&[
            "--limit",
            "2G",
            "--reserve",
            "0",
            "--meta",
            &meta_list,
            "--listen",
        ]));
        args.push(format!("{addr}:{}", port + 1));
        net.spawn(&format!("cs{n}"), addr == ISOLATED, &args);
    }
    let majority: Vec<String> = metas[1..]
        .iter()
        .map(|(_, a)| format!("{a}:{port}"))
        .collect();
    let client = Arc::new(
        sparefs_client::MetaClient::new(majority.clone(), sparefs_proto::namespace::Caller::ROOT)
            .with_deadline(Duration::from_secs(30)),
    );
    wait_up(&client, 4).await;
    let data = Arc::new(DataClient::new(client.clone()));
    let before = pattern(20 << 20, 71);
    let ino_before = put(&data, "before", &before)
        .await
        .expect("write before the cut");

    net.cut();
    // The majority side goes on: a new leader if the cut-off replica led.
    let during = pattern(20 << 20, 72);
    let ino_during = put(&data, "during", &during)
        .await
        .expect("write during the cut");
    // A client on the cut-off side cannot commit anything.
    let lonely = Command::new("timeout")
        .args(["20", "ip", "netns", "exec", NS])
        .arg(sparefs_bin())
        .args([
            "fs",
            "--meta",
            &format!("{ISOLATED}:{port}"),
            "mkdir",
            "/split-brain",
        ])
        .output()
        .expect("client on the cut-off side");
    println!(
        "cut-off client: {} {}",
        lonely.status,
        String::from_utf8_lossy(&lonely.stderr).trim()
    );
    assert!(
        !lonely.status.success(),
        "a minority replica accepted a write"
    );

    net.heal();
    // The returning replica catches up to the leader's commit index.
    let (cl, leader_addr) = (&client, &majority[0]);
    let ((), secs) = poll(
        Duration::from_secs(60),
        Duration::from_millis(250),
        || async move {
            let leader = cl.status_of(leader_addr).await.ok();
            let iso = cl.status_of(&format!("{ISOLATED}:{port}")).await.ok();
            match (leader, iso) {
                (Some(l), Some(i)) if i.applied >= l.commit && i.term == l.term => Ok(()),
                _ => Err("the returning replica did not catch up".to_string()),
            }
        },
    )
    .await;
    println!("cut-off replica caught up in {secs:.1} s");
    wait_up(&client, 4).await;
    assert!(get(&data, ino_before).await.expect("read") == before);
    assert!(get(&data, ino_during).await.expect("read") == during);
    match client
        .read(ReadOp::Lookup {
            parent: InodeId::ROOT,
            name: b"split-brain".to_vec(),
        })
        .await
    {
        Err(e) => assert_eq!(e.errno(), sparefs_proto::Errno::ENOENT),
        Ok(r) => panic!("the minority's write exists: {r:?}"),
    }
    // Every replica answers the same namespace: read through the returned one.
    let iso_client = sparefs_client::MetaClient::new(
        vec![format!("{ISOLATED}:{port}")],
        sparefs_proto::namespace::Caller::ROOT,
    );
    let NsReply::Dir(entries) = iso_client
        .read(ReadOp::ReadDir {
            ino: InodeId::ROOT,
            after_cookie: 0,
            limit: 100,
        })
        .await
        .expect("readdir via the returned replica's leader")
    else {
        panic!("readdir")
    };
    let names: Vec<String> = entries
        .iter()
        .map(|e| String::from_utf8_lossy(&e.name).into_owned())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
}

async fn wait_up(client: &sparefs_client::MetaClient, n: usize) {
    let start = Instant::now();
    loop {
        if let Ok(NsReply::Chunkservers(list)) = client.read(ReadOp::ListChunkservers).await {
            if list
                .iter()
                .filter(|s| s.state == sparefs_proto::layout::ChunkserverState::Up)
                .count()
                >= n
            {
                return;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "chunkservers not up"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[allow(unsafe_code)]
fn unsafe_uid() -> u32 {
    // SAFETY: getuid has no preconditions.
    unsafe { libc::getuid() }
}
