//! Roles over mutual TLS: a cluster whose every daemon, mount and client
//! holds a certificate of its CA, attacked by holders of certificates of
//! the wrong role. A mount's certificate cannot administer the cluster or
//! register as a chunkserver (which hands out the cluster key); a
//! chunkserver's cannot report for another chunkserver (the forged "lost
//! fragments" heartbeat that made a block unreadable) nor change the
//! namespace; a replica's cannot speak Raft as another replica; a mount's
//! cannot act as another mount's client (its client ids are its own). The file
//! written before reads back the same after every attempt.

use protobuf::Message as _;
use raft::prelude::{Message, MessageType};
use sparefs_client::ClientError;
use sparefs_proto::msg::{HeartbeatReport, Reply, Request};
use sparefs_proto::namespace::WriteOp;
use sparefs_proto::{BlockId, ReplicaId};
use sparefs_tests::{fs_cluster_tls, who, TlsRole};
use std::time::Duration;

fn forbidden<T: std::fmt::Debug>(what: &str, r: Result<T, ClientError>) {
    assert!(matches!(r, Err(ClientError::Forbidden(_))), "{what}: {r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_certificate_does_only_its_job() -> anyhow::Result<()> {
    let (c, mounts) = fs_cluster_tls(3, 1).await?;
    let bytes: Vec<u8> = (0..3u32 << 20).map(|i| (i * 7 + i / 4096) as u8).collect();
    let file = mounts[0].join("kept");
    std::fs::write(&file, &bytes)?;
    std::fs::File::open(&file)?.sync_all()?;
    let cs1 = c.chunkserver_id(1).await?;
    let cs2 = c.chunkserver_id(2).await?;

    // A mount's certificate.
    let mount = c.client_as(who(TlsRole::Mount, 9))?;
    forbidden(
        "a mount drains a chunkserver",
        mount
            .write(WriteOp::DrainChunkserver {
                chunkserver: cs1,
                drain: true,
            })
            .await,
    );
    forbidden(
        "a mount moves the leader",
        mount.transfer_leader(ReplicaId(1)).await,
    );
    forbidden(
        "a mount registers as a chunkserver",
        mount
            .write(WriteOp::RegisterChunkserver {
                address: "127.0.0.1:9".into(),
                capacity_bytes: 1 << 40,
                token: [0; 16],
            })
            .await,
    );
    let lost: Vec<(BlockId, u8)> = (1..=256)
        .flat_map(|b| (0..3).map(move |s| (BlockId(b), s)))
        .collect();
    let forged = |chunkserver| {
        let mut report = HeartbeatReport::usage(chunkserver, 1 << 30, 0, 0);
        report.lost = lost.clone();
        Request::Heartbeat(report)
    };
    forbidden(
        "a mount reports fragments lost",
        mount.call_leader(&forged(cs2)).await,
    );

    // A chunkserver's certificate: its own reports only, no namespace.
    let chunkserver = c.client_as(who(TlsRole::Chunkserver, 1))?;
    forbidden(
        "chunkserver 1 reports chunkserver 2's fragments lost",
        chunkserver.call_leader(&forged(cs2)).await,
    );
    let own = Request::Heartbeat(HeartbeatReport::usage(cs1, 1 << 30, 0, 0));
    let answer = chunkserver.call_leader(&own).await;
    assert!(
        matches!(answer, Ok(Reply::Tasks { .. })),
        "its own heartbeat: {answer:?}"
    );
    forbidden(
        "a chunkserver makes a directory",
        chunkserver
            .mkdir(sparefs_proto::InodeId::ROOT, b"by-a-chunkserver", 0o755)
            .await,
    );

    // A replica's certificate speaking Raft as another replica: a
    // heartbeat of a far higher term would depose the leader.
    let leader = c.wait_leader(Duration::from_secs(10)).await?;
    let term = c.status(leader).await.map(|s| s.term).unwrap_or(0);
    let other = (1..=3).find(|i| *i != leader).unwrap_or(1);
    let impostor = (1..=3).find(|i| *i != leader && *i != other).unwrap_or(1);
    let mut m = Message::default();
    m.set_msg_type(MessageType::MsgHeartbeat);
    (m.to, m.from, m.term) = (leader, other, term + 1000);
    let tls = c
        .tls_as(who(TlsRole::Meta, impostor))?
        .ok_or_else(|| anyhow::anyhow!("no TLS"))?;
    let conn =
        sparefs_wire::conn::Conn::open_with(&c.address(leader), Duration::from_secs(2), Some(&tls))
            .await?;
    let raft = Request::Raft {
        from: ReplicaId(other),
        msg: m.write_to_bytes()?,
    };
    let _ = conn.call(raft, Duration::from_secs(2)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = c.status(leader).await;
    assert!(
        after
            .as_ref()
            .is_some_and(|s| s.term == term && s.role == sparefs_proto::msg::Role::Leader),
        "replica {impostor}'s certificate deposed leader {leader} as replica {other}: {after:?}"
    );

    // A mount's certificate acting as another mount's client (its lock
    // lease, its delegations): refused, whichever id it guesses.
    let tls = c
        .tls_as(who(TlsRole::Mount, 9))?
        .ok_or_else(|| anyhow::anyhow!("no TLS"))?;
    let conn =
        sparefs_wire::conn::Conn::open_with(&c.address(leader), Duration::from_secs(2), Some(&tls))
            .await?;
    let victim = sparefs_proto::ClientId(who(TlsRole::Mount, 1).client_id(12345));
    let r = conn
        .call(
            Request::KeepAlive {
                client: victim,
                open: Vec::new(),
            },
            Duration::from_secs(2),
        )
        .await;
    assert!(
        matches!(
            r,
            Err(sparefs_wire::conn::CallError::Rpc(
                sparefs_proto::msg::RpcError::Forbidden(_)
            ))
        ),
        "mount 9 renewed mount 1's lease: {r:?}"
    );

    // Nothing of that changed the data (read again from the cluster, not
    // from the page cache), and no fragment was taken for lost.
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
    assert!(std::fs::read(&file)? == bytes, "the file changed");
    let (_, degraded, unreadable) = c.health().await?;
    assert_eq!((degraded, unreadable), (0, 0), "fragments taken for lost");
    Ok(())
}
