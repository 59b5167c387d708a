//! Hostile clients against every daemon of a running cluster while a mount
//! keeps working: random bytes, oversized and truncated frames, forged Raft
//! messages (each one reaching a raft-rs abort or a log the replicas could
//! not apply before the guards), silent connections by the thousand. After
//! each barrage every daemon must still be alive, its memory must not have
//! grown by what the frames announced, and the mount must write and read.

use protobuf::Message as _;
use raft::prelude::{Entry, Message, MessageType};
use rand::{Rng, SeedableRng};
use sparefs_proto::limits::{FIRST_FRAME_TIMEOUT, FRAME_READ_TIMEOUT};
use sparefs_proto::msg::{Request, RequestFrame};
use sparefs_proto::ReplicaId;
use sparefs_tests::{fs_cluster, MetaCluster};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Resident memory of a process, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Every daemon: (name, address, pid).
fn daemons(c: &MetaCluster) -> Vec<(String, String, u32)> {
    let mut out = Vec::new();
    for (id, child) in &c.procs {
        out.push((format!("meta {id}"), c.address(*id), child.id()));
    }
    for (n, child) in &c.chunkservers {
        out.push((
            format!("chunkserver {n}"),
            c.chunkserver_address(*n),
            child.id(),
        ));
    }
    out
}

fn all_alive(c: &mut MetaCluster) {
    for (id, child) in c.procs.iter_mut() {
        assert!(
            matches!(child.try_wait(), Ok(None)),
            "meta {id} stopped: {}",
            c.dir.path().display()
        );
    }
    for (n, child) in c.chunkservers.iter_mut() {
        assert!(
            matches!(child.try_wait(), Ok(None)),
            "chunkserver {n} stopped"
        );
    }
}

/// Writes a file through the mount, syncs it, reads it back.
/// Three meta replicas, chunkservers and one mount that works, with room
/// for thousands of connections.
async fn working_cluster(tls: bool) -> (MetaCluster, PathBuf) {
    sparefs_wire::service::raise_descriptor_limit();
    let (c, dirs) = if tls {
        sparefs_tests::fs_cluster_tls(3, 1).await
    } else {
        fs_cluster(3, 1).await
    }
    .expect("cluster");
    let mnt = dirs[0].clone();
    mount_works(&mnt, "before");
    (c, mnt)
}

fn mount_works(dir: &Path, tag: &str) {
    let path = dir.join(format!("alive-{tag}"));
    let data: Vec<u8> = (0..300_000u32)
        .map(|i| (i % 251) as u8 ^ tag.len() as u8)
        .collect();
    let mut f = std::fs::File::create(&path).unwrap_or_else(|e| panic!("{tag}: create: {e}"));
    f.write_all(&data)
        .unwrap_or_else(|e| panic!("{tag}: write: {e}"));
    f.sync_all().unwrap_or_else(|e| panic!("{tag}: fsync: {e}"));
    drop(f);
    let back = std::fs::read(&path).unwrap_or_else(|e| panic!("{tag}: read: {e}"));
    assert!(back == data, "{tag}: read back other bytes");
}

fn connect(addr: &str) -> std::io::Result<TcpStream> {
    let addr: std::net::SocketAddr = addr.parse().expect("address");
    TcpStream::connect_timeout(&addr, Duration::from_secs(5))
}

/// Opens a connection and sends `bytes` on it.
fn send(addr: &str, bytes: &[u8]) -> TcpStream {
    let mut s = connect(addr).expect("connect");
    let _ = s.write_all(bytes);
    s
}

/// Whether the server closes `s` before `deadline` (answers before the
/// close are read and ignored).
fn closed_by(mut s: TcpStream, deadline: Instant) -> bool {
    let mut buf = [0u8; 64];
    loop {
        // Past the deadline, one short look still tells an early close.
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(100));
        if s.set_read_timeout(Some(left)).is_err() {
            return false;
        }
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

fn frame(body: &RequestFrame) -> Vec<u8> {
    sparefs_wire::frame::encode(body).expect("encode")
}

/// A write nested a million levels deep (fenced commits inside fenced
/// commits, 3 MB): decoded naively, it overflows the daemon's stack.
fn deeply_nested_write() -> Vec<u8> {
    // Building, encoding and dropping it recurses here too: on a big stack.
    std::thread::Builder::new()
        .stack_size(1 << 30)
        .spawn(|| {
            let mut op = sparefs_proto::namespace::WriteOp::Sync;
            for _ in 0..1_000_000 {
                op = sparefs_proto::namespace::WriteOp::Fenced {
                    epoch: 1,
                    op: Box::new(op),
                };
            }
            frame(&RequestFrame {
                call: 1,
                body: Request::Write {
                    caller: sparefs_proto::namespace::Caller::ROOT,
                    id: sparefs_proto::RequestId {
                        client: sparefs_proto::ClientId(77),
                        seq: 1,
                        ack_below: 0,
                    },
                    op,
                },
            })
        })
        .expect("thread")
        .join()
        .expect("nested frame")
}

fn raft_frame(from: u64, m: &Message) -> Vec<u8> {
    frame(&RequestFrame {
        call: 0,
        body: Request::Raft {
            from: ReplicaId(from),
            msg: m.write_to_bytes().expect("encode raft"),
        },
    })
}

/// A Raft message of type `t` that claims to come from replica `from`.
fn forged(t: MessageType, to: u64, from: u64, term: u64) -> Message {
    let mut m = Message::default();
    m.set_msg_type(t);
    m.to = to;
    m.from = from;
    m.term = term;
    m
}

fn entry(index: u64, term: u64, data: &[u8]) -> Entry {
    let mut e = Entry::default();
    e.index = index;
    e.term = term;
    e.data = data.to_vec().into();
    e
}

/// Messages that each reached a raft-rs abort, or put bytes into the log
/// that no replica can apply, before the guards.
fn forged_raft(to: u64, from: u64, term: u64) -> Vec<Vec<u8>> {
    // A heartbeat committing past the log (raft-rs `commit_to` aborts).
    let mut hb = forged(MessageType::MsgHeartbeat, to, from, term);
    hb.commit = u64::MAX;
    // A proposal of bytes no replica can apply.
    let mut propose = forged(MessageType::MsgPropose, to, from, term);
    propose.entries = vec![entry(0, 0, b"not a command")].into();
    // An append rewriting committed entry 2 (`find_conflict` aborts).
    let mut append = forged(MessageType::MsgAppend, to, from, term);
    (append.index, append.log_term, append.commit) = (1, 1, u64::MAX);
    append.entries = vec![entry(2, term, b"rewrites a committed entry")].into();
    // An acknowledgement of entries the leader never had.
    let mut ack = forged(MessageType::MsgAppendResponse, to, from, term);
    ack.index = u64::MAX - 1;
    [hb, propose, append, ack]
        .iter()
        .map(|m| raft_frame(from, m))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_clients_stop_no_daemon_and_the_mount_keeps_working() {
    let (mut c, mnt) = working_cluster(false).await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);

    // At every daemon at once: random bytes, frames over the length limit,
    // and frames that announce 16 MiB and send five bytes.
    let mut open = Vec::new();
    for (name, addr, pid) in daemons(&c) {
        let before = rss(pid);
        let mut junk = Vec::new();
        for i in 0..20 {
            let len = rng.gen_range(1..2048);
            let bytes: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
            junk.push(send(&addr, &bytes));
            if i % 5 == 0 {
                junk.push(send(&addr, &u32::MAX.to_be_bytes()));
            }
        }
        for _ in 0..40 {
            let mut bytes = (16u32 * 1024 * 1024).to_be_bytes().to_vec();
            bytes.extend_from_slice(b"hello");
            junk.push(send(&addr, &bytes));
        }
        // A well-formed frame of a write nested a million levels deep.
        let _ = send(&addr, &deeply_nested_write());
        open.push((name, pid, before, junk));
    }
    let sent = Instant::now();
    std::thread::sleep(Duration::from_millis(500));
    for (name, pid, before, _) in &open {
        // The memory the truncated frames announced is never taken.
        let grown = rss(*pid).saturating_sub(*before);
        assert!(
            grown < 64 << 20,
            "{name}: junk and 40 truncated 16 MiB frames grew the daemon by {} MiB",
            grown >> 20
        );
    }
    all_alive(&mut c);
    mount_works(&mnt, "with-junk");
    // Each is closed: at once for bytes that cannot be a frame, within the
    // frame timeout for half-sent ones.
    let deadline = sent + FRAME_READ_TIMEOUT + Duration::from_secs(5);
    for (name, _, _, junk) in open {
        for (i, s) in junk.into_iter().enumerate() {
            assert!(
                closed_by(s, deadline),
                "{name}: junk connection {i} was kept open"
            );
        }
    }
    all_alive(&mut c);
    mount_works(&mnt, "after-junk");

    // Forged Raft messages at every replica, naming every other replica.
    let ids: Vec<u64> = c.procs.keys().copied().collect();
    for &to in &ids {
        for &from in ids.iter().filter(|&&f| f != to) {
            for bytes in forged_raft(to, from, 1_000_000) {
                let _ = send(&c.address(to), &bytes);
            }
        }
    }
    std::thread::sleep(Duration::from_secs(2));
    all_alive(&mut c);
    c.wait_leader(Duration::from_secs(30))
        .await
        .expect("a leader after forged messages");
    mount_works(&mnt, "after-forged-raft");

    // Thousands of silent connections at each daemon in turn: the daemon
    // keeps serving new and old clients, and closes the silent ones itself.
    let hard = sparefs_tests::open_file_limit();
    let idle = 10_000.min(hard.saturating_sub(2_000) as usize);
    eprintln!("{idle} silent connections per daemon (open-file limit {hard})");
    for (name, addr, pid) in daemons(&c) {
        let before = rss(pid);
        let sockets_before = sockets(pid);
        let started = Instant::now();
        let silent = open_silent(&addr, idle)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        eprintln!(
            "{name}: {idle} opened in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        mount_works(&mnt, &format!("with-silent-{name}"));
        let fresh = c.client();
        fresh
            .getattr(sparefs_proto::InodeId::ROOT)
            .await
            .unwrap_or_else(|e| panic!("{name}: a new client with {idle} silent connections: {e}"));
        let grown = rss(pid).saturating_sub(before);
        assert!(
            grown < 64 << 20,
            "{name}: {idle} silent connections grew the daemon by {} MiB",
            grown >> 20
        );
        all_alive(&mut c);
        // The daemon closes them once they have been silent for the
        // first-frame timeout (checked at one daemon of each kind: the
        // service loop is the same code). Counted on the daemon's side:
        // past loopback's accept queue, SYN cookies leave the client some
        // connections the daemon never saw.
        if name == "meta 1" || name == "chunkserver 1" {
            closes_silent(&name, pid, sockets_before, &silent);
        }
        drop(silent);
    }
    mount_works(&mnt, "after");
}

/// Opens `n` connections to `addr`, many at a time (one by one, loopback's
/// accept queue makes it take a minute), and says when each was open.
async fn open_silent(addr: &str, n: usize) -> Result<Vec<(TcpStream, Instant)>, String> {
    let addr: std::net::SocketAddr = addr.parse().map_err(|e| format!("{e}"))?;
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(512));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..n {
        let gate = gate.clone();
        tasks.spawn(async move {
            let _permit = gate.acquire_owned().await.map_err(|e| e.to_string())?;
            let s = tokio::time::timeout(
                Duration::from_secs(20),
                tokio::net::TcpStream::connect(addr),
            )
            .await
            .map_err(|_| "connect timed out".to_string())?
            .map_err(|e| format!("connect: {e}"))?;
            let s = s.into_std().map_err(|e| e.to_string())?;
            s.set_nonblocking(false).map_err(|e| e.to_string())?;
            Ok::<_, String>((s, Instant::now()))
        });
    }
    let mut out = Vec::with_capacity(n);
    while let Some(r) = tasks.join_next().await {
        out.push(r.map_err(|e| e.to_string())??);
    }
    out.sort_by_key(|(_, at)| *at);
    Ok(out)
}

/// Waits out the first-frame timeout after the last of `silent` opened,
/// then checks that daemon `pid` closed them (counted on its side: past
/// loopback's accept queue, SYN cookies leave the client connections the
/// daemon never saw).
fn closes_silent(name: &str, pid: u32, sockets_before: usize, silent: &[(TcpStream, Instant)]) {
    let last = silent.last().map_or_else(Instant::now, |(_, at)| *at);
    std::thread::sleep(
        (last + FIRST_FRAME_TIMEOUT + Duration::from_secs(3))
            .saturating_duration_since(Instant::now()),
    );
    let left = sockets(pid);
    assert!(
        left < sockets_before + 100,
        "{name}: {left} sockets open after the first-frame timeout ({sockets_before} before)"
    );
}

/// How many sockets a process has open.
fn sockets(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| {
                    std::fs::read_link(e.path())
                        .is_ok_and(|t| t.to_string_lossy().starts_with("socket:"))
                })
                .count()
        })
        .unwrap_or(0)
}

/// Over TLS: strangers (plaintext, another CA's certificate), half-sent
/// handshakes, truncated frames inside a good session, a flood of full
/// handshakes and thousands of connections that never start one, at every
/// daemon; each is refused or closed in time, memory stays bounded, the
/// group keeps its leader and the mount keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_strangers_and_slow_handshakes_stop_no_daemon() {
    use sparefs_tests::{who, TlsRole};
    use sparefs_wire::tls::{ClusterCa, Tls};
    use tokio::io::AsyncWriteExt;
    let (mut c, mnt) = working_cluster(true).await;
    let leader = c
        .wait_leader(Duration::from_secs(20))
        .await
        .expect("leader");
    let term = c.status(leader).await.expect("status").term;
    let ours = std::sync::Arc::new(
        c.tls_as(who(TlsRole::Mount, 77))
            .expect("credentials")
            .expect("TLS"),
    );
    let stranger = std::sync::Arc::new(
        Tls::new(
            &ClusterCa::create()
                .expect("ca")
                .issue(who(TlsRole::Admin, 0))
                .expect("cert"),
        )
        .expect("tls"),
    );

    for (name, addr, pid) in daemons(&c) {
        let before = rss(pid);
        // Half a ClientHello: a handshake record announcing 16 KiB, five
        // bytes of it sent.
        let mut half = vec![22u8, 3, 1, 0x40, 0];
        half.extend_from_slice(&[1, 0, 0x3f, 0xfc, 3]);
        let halves: Vec<TcpStream> = (0..50).map(|_| send(&addr, &half)).collect();
        let sent = Instant::now();
        // Another CA's certificate: no session.
        let tcp = tokio::net::TcpStream::connect(&addr)
            .await
            .expect("connect");
        assert!(
            stranger.connect(tcp).await.is_err(),
            "{name}: a certificate of another CA was accepted"
        );
        // Good sessions that announce 16 MiB frames and send five bytes.
        let mut truncated = Vec::new();
        for _ in 0..20 {
            let tcp = tokio::net::TcpStream::connect(&addr)
                .await
                .expect("connect");
            let (mut s, _) = ours.connect(tcp).await.expect("handshake");
            let mut bytes = (16u32 * 1024 * 1024).to_be_bytes().to_vec();
            bytes.extend_from_slice(b"hello");
            s.write_all(&bytes).await.expect("write");
            s.flush().await.expect("flush");
            truncated.push(s);
        }
        // A flood of full handshakes, 32 at a time, each closed at once.
        let started = Instant::now();
        let mut flood = tokio::task::JoinSet::new();
        let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(32));
        for _ in 0..1_000 {
            let (gate, tls, addr) = (gate.clone(), ours.clone(), addr.clone());
            flood.spawn(async move {
                let _p = gate.acquire_owned().await.ok()?;
                let tcp = tokio::net::TcpStream::connect(&addr).await.ok()?;
                tls.connect(tcp).await.ok().map(|_| ())
            });
        }
        let mut completed = 0;
        while let Some(r) = flood.join_next().await {
            completed += usize::from(matches!(r, Ok(Some(()))));
        }
        eprintln!(
            "{name}: {completed} of 1000 handshakes in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        all_alive(&mut c);
        mount_works(&mnt, &format!("tls-flood-{name}"));
        let grown = rss(pid).saturating_sub(before);
        assert!(
            grown < 64 << 20,
            "{name}: half handshakes, truncated frames and a handshake flood grew it by {} MiB",
            grown >> 20
        );
        // The half handshakes are closed within the first-frame timeout.
        let deadline = sent + FIRST_FRAME_TIMEOUT + Duration::from_secs(5);
        for (i, s) in halves.into_iter().enumerate() {
            assert!(
                closed_by(s, deadline),
                "{name}: half handshake {i} was kept open"
            );
        }
        drop(truncated);
    }
    // No election was forced by any of it.
    let after = c.status(leader).await.expect("status");
    assert_eq!(
        (after.term, after.role),
        (term, sparefs_proto::msg::Role::Leader),
        "the leader changed under the TLS barrage"
    );

    // Thousands of connections that never start a handshake, at one meta
    // and one chunkserver: closed by the daemon, which keeps serving.
    for (name, addr, pid) in daemons(&c)
        .into_iter()
        .filter(|(n, _, _)| n == "meta 1" || n == "chunkserver 1")
    {
        let sockets_before = sockets(pid);
        let silent = open_silent(&addr, 3_000)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        mount_works(&mnt, &format!("tls-silent-{name}"));
        closes_silent(&name, pid, sockets_before, &silent);
        drop(silent);
    }
    all_alive(&mut c);
    mount_works(&mnt, "tls-after");
}
