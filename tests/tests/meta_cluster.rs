//! Cluster tests of the metadata service: real `sparefs meta` processes over
//! TCP on loopback, killed with SIGKILL and stopped with SIGSTOP.

use sparefs_client::ClientError;
use sparefs_proto::msg::Role;
use sparefs_proto::namespace::{FileKind, WriteOp};
use sparefs_proto::{ChunkserverId, ClientId, Errno, InodeId, ReplicaId};
use sparefs_tests::MetaCluster;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn names(entries: &[sparefs_proto::namespace::DirEntry]) -> Vec<String> {
    entries
        .iter()
        .map(|e| String::from_utf8_lossy(&e.name).into_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_sigkill_loses_no_acknowledged_create_and_restart_keeps_state() {
    let mut cluster = MetaCluster::start(3).expect("start cluster");
    let leader = cluster
        .wait_leader(Duration::from_secs(15))
        .await
        .expect("leader");
    let client = Arc::new(cluster.client());
    let dir = client
        .mkdir(InodeId::ROOT, b"d", 0o755)
        .await
        .expect("mkdir")
        .ino;

    let acked = Arc::new(Mutex::new(Vec::<(String, Instant)>::new()));
    let errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop_at = Instant::now() + Duration::from_secs(6);
    let mut workers = Vec::new();
    for w in 0..8 {
        let (client, acked, errors) = (client.clone(), acked.clone(), errors.clone());
        workers.push(tokio::spawn(async move {
            let mut i = 0;
            while Instant::now() < stop_at {
                let name = format!("w{w}-{i}");
                match client.create(dir, name.as_bytes(), 0o644, true).await {
                    Ok(_) => acked.lock().expect("lock").push((name, Instant::now())),
                    Err(e) => errors.lock().expect("lock").push(format!("{name}: {e}")),
                }
                i += 1;
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let killed_at = Instant::now();
    cluster.kill(leader);
    for w in workers {
        w.await.expect("worker");
    }
    let errors = errors.lock().expect("lock").clone();
    assert!(errors.is_empty(), "applications saw errors: {errors:?}");
    let acked = acked.lock().expect("lock").clone();
    let before = acked.iter().filter(|(_, t)| *t < killed_at).count();
    let first_after = acked
        .iter()
        .filter(|(_, t)| *t >= killed_at)
        .map(|(_, t)| *t)
        .min()
        .expect("creates resumed after the kill");
    let failover = first_after.duration_since(killed_at);
    println!("failover: first acknowledged create {:.2}s after SIGKILL of the leader ({} creates before, {} after)", failover.as_secs_f64(), before, acked.len() - before);
    assert!(
        failover < Duration::from_secs(6),
        "failover took {failover:?}"
    );

    let check = |listed: Vec<String>| {
        let unique: BTreeSet<&String> = listed.iter().collect();
        assert_eq!(unique.len(), listed.len(), "a name is listed twice");
        for (name, _) in &acked {
            assert!(
                unique.contains(name),
                "acknowledged create {name} is missing"
            );
        }
        listed.len()
    };
    let n1 = check(names(&client.readdir(dir).await.expect("readdir")));

    // Restart every replica: the state comes back from disk.
    cluster
        .spawn(leader, false)
        .expect("restart killed replica");
    for id in [1, 2, 3] {
        cluster.kill(id);
    }
    for id in [1, 2, 3] {
        cluster.spawn(id, false).expect("restart");
    }
    cluster
        .wait_leader(Duration::from_secs(15))
        .await
        .expect("leader after full restart");
    let client = cluster.client();
    let n2 = check(names(
        &client.readdir(dir).await.expect("readdir after restart"),
    ));
    assert_eq!(n1, n2, "entries changed across a full restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minority_commits_nothing() {
    let mut cluster = MetaCluster::start(3).expect("start cluster");
    let leader = cluster
        .wait_leader(Duration::from_secs(15))
        .await
        .expect("leader");
    let client = cluster.client();
    client
        .mkdir(InodeId::ROOT, b"before", 0o755)
        .await
        .expect("mkdir");
    // Freeze the two followers: the leader alone is a minority.
    let followers: Vec<u64> = [1, 2, 3].into_iter().filter(|i| *i != leader).collect();
    for f in &followers {
        cluster.signal(*f, libc::SIGSTOP);
    }
    let commit_before = cluster.status(leader).await.expect("status").commit;
    let lonely = sparefs_client::MetaClient::new(
        vec![cluster.address(leader)],
        sparefs_proto::namespace::Caller::ROOT,
    )
    .with_deadline(Duration::from_secs(3));
    let r = lonely.mkdir(InodeId::ROOT, b"during", 0o755).await;
    assert!(r.is_err(), "a minority acknowledged a write: {r:?}");
    let s = cluster.status(leader).await.expect("status");
    assert_eq!(
        s.commit, commit_before,
        "the minority advanced its commit index"
    );
    assert_ne!(
        s.role,
        Role::Leader,
        "a leader cut off from its quorum kept leading (check_quorum)"
    );
    for f in &followers {
        cluster.signal(*f, libc::SIGCONT);
    }
    cluster
        .wait_leader(Duration::from_secs(15))
        .await
        .expect("leader after heal");
    client
        .mkdir(InodeId::ROOT, b"after", 0o755)
        .await
        .expect("mkdir after heal");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn added_replica_catches_up_by_snapshot_and_leads() {
    let mut cluster = MetaCluster::start_with(3, 100, 10).expect("start cluster");
    cluster
        .wait_leader(Duration::from_secs(15))
        .await
        .expect("leader");
    let client = cluster.client();
    for i in 0..400 {
        client
            .mkdir(InodeId::ROOT, format!("d{i}").as_bytes(), 0o755)
            .await
            .expect("mkdir");
    }
    cluster.spawn(4, true).expect("start replica 4");
    client
        .add_replica(ReplicaId(4), cluster.address(4))
        .await
        .expect("add replica 4");
    let start = Instant::now();
    loop {
        let leader = cluster
            .wait_leader(Duration::from_secs(5))
            .await
            .expect("leader");
        let lead = cluster.status(leader).await.expect("leader status");
        if let Some(s) = cluster.status(4).await {
            if s.applied >= lead.commit && s.applied > 400 {
                assert!(
                    s.first_log_index > 2,
                    "replica 4 replayed the log instead of installing a snapshot"
                );
                break;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "replica 4 did not catch up:\n{}\n---\n{}\n---\n{}",
            cluster.log_tail(4),
            cluster.log_tail(1),
            cluster.log_tail(2)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "replica 4 caught up in {:.2}s",
        start.elapsed().as_secs_f64()
    );
    client
        .transfer_leader(ReplicaId(4))
        .await
        .expect("transfer");
    let start = Instant::now();
    while cluster
        .wait_leader(Duration::from_secs(5))
        .await
        .expect("leader")
        != 4
    {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "replica 4 never became leader"
        );
        client
            .transfer_leader(ReplicaId(4))
            .await
            .expect("transfer");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let via4 = sparefs_client::MetaClient::new(
        vec![cluster.address(4)],
        sparefs_proto::namespace::Caller::ROOT,
    );
    let entries = via4
        .readdir(InodeId::ROOT)
        .await
        .expect("readdir via replica 4");
    assert_eq!(entries.len(), 400);
    via4.mkdir(InodeId::ROOT, b"from4", 0o755)
        .await
        .expect("write through the new leader");
    // Removing a replica shrinks the group; the rest keep serving.
    via4.remove_replica(ReplicaId(1))
        .await
        .expect("remove replica 1");
    cluster.kill(1);
    via4.mkdir(InodeId::ROOT, b"after-remove", 0o755)
        .await
        .expect("write after remove");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_clear_errors_and_closes_only_that_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let cluster = MetaCluster::start(1).expect("start");
    cluster
        .wait_leader(Duration::from_secs(15))
        .await
        .expect("leader");
    let client = cluster.client();
    for (name, want) in [
        (b"a/b".to_vec(), Errno::EINVAL),
        (b"a\0b".to_vec(), Errno::EINVAL),
        (Vec::new(), Errno::EINVAL),
        (vec![b'x'; 256], Errno::ENAMETOOLONG),
    ] {
        let e = client
            .mkdir(InodeId::ROOT, &name, 0o755)
            .await
            .expect_err("bad name accepted");
        assert_eq!(e.errno(), want, "name {:?}", String::from_utf8_lossy(&name));
    }
    client
        .mkdir(InodeId::ROOT, &[b'x'; 255], 0o755)
        .await
        .expect("255-byte name");
    assert_eq!(
        client
            .getattr(InodeId(999_999))
            .await
            .expect_err("unknown inode")
            .errno(),
        Errno::ENOENT
    );
    assert_eq!(
        client
            .mkdir(InodeId(999_999), b"x", 0o755)
            .await
            .expect_err("unknown parent")
            .errno(),
        Errno::ENOENT
    );

    // Garbage, an oversized frame, and a frame of the wrong shape each close
    // their own connection; the service keeps serving.
    let addr = cluster.address(1);
    for payload in [
        {
            let mut v = 8u32.to_be_bytes().to_vec();
            v.extend_from_slice(&[0xff; 8]);
            v
        },
        (64u32 * 1024 * 1024).to_be_bytes().to_vec(),
        {
            let body = postcard::to_stdvec(&(1u64, 99u32)).expect("encode");
            let mut v = (body.len() as u32).to_be_bytes().to_vec();
            v.extend_from_slice(&body);
            v
        },
    ] {
        let mut s = tokio::net::TcpStream::connect(&addr)
            .await
            .expect("connect");
        s.write_all(&payload).await.expect("write");
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("server closes promptly")
            .unwrap_or(0);
        assert_eq!(n, 0, "server answered garbage instead of closing");
    }
    let a = client
        .lookup(InodeId::ROOT, &[b'x'; 255])
        .await
        .expect("still serving");
    assert_eq!(a.kind, FileKind::Dir);
}

#[test]
fn missing_or_corrupt_state_is_refused() {
    let mut cluster = MetaCluster::start(1).expect("start");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(cluster.wait_leader(Duration::from_secs(15)))
        .expect("leader");
    cluster.kill(1);
    let run = |cluster: &MetaCluster| {
        let out = std::process::Command::new(sparefs_tests::sparefs_bin())
            .args([
                "meta",
                "--id",
                "1",
                "--listen",
                &cluster.address(1),
                "--peers",
                &format!("1={}", cluster.address(1)),
                "--data",
            ])
            .arg(cluster.data_dir(1))
            .output()
            .expect("run");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // The database deleted: refused, not restarted empty.
    std::fs::remove_dir_all(cluster.data_dir(1).join("db")).expect("remove db");
    let (ok, err) = run(&cluster);
    assert!(
        !ok && err.contains("missing"),
        "started without its database: {err}"
    );
    // The database corrupted: refused.
    std::fs::create_dir_all(cluster.data_dir(1).join("db")).expect("mkdir");
    std::fs::write(cluster.data_dir(1).join("db").join("CURRENT"), b"garbage\n").expect("write");
    let (ok, err) = run(&cluster);
    assert!(
        !ok && err.contains("refusing"),
        "started on a corrupt database: {err}"
    );
    // A foreign non-empty directory: refused.
    std::fs::remove_dir_all(cluster.data_dir(1)).expect("rm");
    std::fs::create_dir_all(cluster.data_dir(1)).expect("mkdir");
    std::fs::write(cluster.data_dir(1).join("precious.txt"), b"x").expect("write");
    let (ok, err) = run(&cluster);
    assert!(
        !ok && err.contains("not a sparefs meta replica"),
        "started in a foreign directory: {err}"
    );
    let _ = BTreeMap::<u8, u8>::new();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_heartbeats_and_placement() {
    use sparefs_proto::layout::{ChunkserverState, Policy};
    use sparefs_proto::namespace::{NsReply, ReadOp};
    let cluster = MetaCluster::start(3).expect("start");
    cluster
        .wait_leader(Duration::from_secs(15))
        .await
        .expect("leader");
    let client = cluster.client();
    let mut ids = Vec::new();
    for i in 0..4u8 {
        let op = WriteOp::RegisterChunkserver {
            address: format!("127.0.0.{}:9000", 100 + i),
            capacity_bytes: 1 << 30,
            token: [i; 16],
        };
        let reply = client.write(op.clone()).await.expect("register");
        let NsReply::Registered { id, .. } = reply else {
            panic!("unexpected reply: {reply:?}")
        };
        // Registering again with the same token keeps the id.
        let reply = client.write(op).await.expect("register again");
        let NsReply::Registered { id: again, .. } = reply else {
            panic!("unexpected reply: {reply:?}")
        };
        assert_eq!(id, again);
        ids.push(id);
    }
    // Three report in (every half second, as chunkservers do); the fourth
    // stays silent and so is down.
    let beating = {
        let client = cluster.client();
        let live: Vec<_> = ids.iter().take(3).copied().collect();
        tokio::spawn(async move {
            loop {
                for (n, id) in live.iter().enumerate() {
                    let _ = client.heartbeat(*id, 1 << 30, (n as u64) << 20, 0).await;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    };
    let beat = || async {
        for (n, id) in ids.iter().take(3).enumerate() {
            client
                .heartbeat(*id, 1 << 30, (n as u64) << 20, 0)
                .await
                .expect("heartbeat");
        }
    };
    beat().await;
    let reply = client.read(ReadOp::ListChunkservers).await.expect("list");
    let NsReply::Chunkservers(list) = reply else {
        panic!("unexpected reply: {reply:?}")
    };
    let states: BTreeMap<u64, ChunkserverState> = list.iter().map(|s| (s.id.0, s.state)).collect();
    assert_eq!(
        states
            .values()
            .filter(|s| **s == ChunkserverState::Up)
            .count(),
        3,
        "{states:?}"
    );
    assert_eq!(states[&ids[3].0], ChunkserverState::Down);
    let alloc = |policy, exclude| WriteOp::AllocateBlocks {
        count: 2,
        policy,
        placement: vec![],
        exclude,
        wanted: None,
    };
    beat().await;
    let reply = client
        .write(alloc(Policy::Ec { data: 2, parity: 1 }, vec![]))
        .await
        .expect("allocate");
    let NsReply::Allocated {
        ids: blocks,
        placement,
        capabilities,
        ..
    } = reply
    else {
        panic!("unexpected reply: {reply:?}")
    };
    assert_eq!(blocks.len(), 2);
    let reply = client
        .write(WriteOp::RegisterChunkserver {
            address: "127.0.0.100:9000".into(),
            capacity_bytes: 1 << 30,
            token: [0; 16],
        })
        .await
        .expect("re-register");
    let NsReply::Registered { id, key } = reply else {
        panic!("unexpected reply: {reply:?}")
    };
    let now = sparefs_proto::namespace::Time::now().secs as u64;
    for (b, cap) in blocks.iter().zip(&capabilities) {
        assert_eq!(
            cap.allows(&key, id, *b, true, now),
            placement.contains(&id),
            "write capability for {b} verifies with chunkserver {id}'s key exactly when \
             it is placed there ({placement:?})"
        );
        assert!(
            !cap.allows(&key, ChunkserverId(id.0 + 100), *b, true, now),
            "nor at a server it does not name"
        );
    }
    let distinct: BTreeSet<_> = placement.iter().collect();
    assert_eq!(
        distinct.len(),
        3,
        "fragments on distinct chunkservers: {placement:?}"
    );
    assert!(
        !placement.contains(&ids[3]),
        "a down chunkserver got a fragment"
    );
    // Too few servers up for the policy: a lower one that still survives
    // one more lost host.
    beat().await;
    let reply = client
        .write(alloc(Policy::Ec { data: 2, parity: 2 }, vec![]))
        .await
        .expect("4 fragments wanted, 3 servers up");
    let NsReply::Allocated {
        policy, placement, ..
    } = reply
    else {
        panic!("unexpected reply: {reply:?}")
    };
    assert_eq!(policy, Policy::Ec { data: 2, parity: 1 });
    assert_eq!(placement.len(), 3);
    beat().await;
    let reply = client
        .write(alloc(Policy::Ec { data: 2, parity: 1 }, vec![ids[0]]))
        .await
        .expect("one server excluded");
    let NsReply::Allocated {
        policy, placement, ..
    } = reply
    else {
        panic!("unexpected reply: {reply:?}")
    };
    assert_eq!(policy, Policy::Rep { copies: 2 });
    assert!(!placement.contains(&ids[0]), "{placement:?}");
    beat().await;
    let e = client
        .write(alloc(
            Policy::Ec { data: 2, parity: 1 },
            vec![ids[0], ids[1]],
        ))
        .await
        .expect_err("one host left: refused by default");
    assert_eq!(e.errno(), Errno::ENOSPC);
    let reply = client.read(ReadOp::StatFs).await.expect("statfs");
    let NsReply::StatFs(st) = reply else {
        panic!("unexpected reply: {reply:?}")
    };
    assert_eq!(st.capacity_bytes, 4 << 30);
    beating.abort();
}

/// Changes only the leader makes (garbage collection, repair commits, lease
/// expiry, the cluster key, orphan reaping) are refused when a client sends
/// them, whatever caller it claims; the same client's own changes still go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_only_changes_are_refused_from_the_network() {
    let cluster = MetaCluster::start(1).expect("start cluster");
    cluster
        .wait_leader(Duration::from_secs(15))
        .await
        .expect("leader");
    let client = cluster.client();
    let other = ClientId(42);
    for op in [
        WriteOp::PurgeDeleted,
        WriteOp::SetClusterKey { key: [7; 32] },
        WriteOp::ExpireClient { client: other },
        WriteOp::ReapOrphans {
            inos: vec![InodeId(2)],
        },
        // Behind (no) delegated changes, as their `then`.
        WriteOp::Delegated {
            ops: Vec::new(),
            then: Some(Box::new(WriteOp::PurgeDeleted)),
        },
    ] {
        let e = client
            .write(op.clone())
            .await
            .expect_err("a leader-only change from a client");
        assert!(
            matches!(e, ClientError::Rejected(_)),
            "{op:?} answered {e:?}, not a refusal"
        );
    }
    client
        .mkdir(InodeId::ROOT, b"still-works", 0o755)
        .await
        .expect("an ordinary change");
}
