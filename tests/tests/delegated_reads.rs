//! A read that carries a mount's delegated changes to the meta lands whole
//! even when the task that made it is aborted, as read-ahead tasks are
//! when a directory is closed or a file changes. Before, the aborted read
//! dropped the batch mid-flight: the mount gave up every delegation
//! ("abandoned"), and a batch not yet sent was lost, though every change
//! in it had been answered. (Seen in the logs of a 1,000,000-operation fsx
//! run with `cp -r` and `rm -rf` beside it.)

use sparefs_client::deleg::Local;
use sparefs_client::MetaClient;
use sparefs_proto::namespace::{Caller, FileKind, ReadOp};
use sparefs_proto::InodeId;
use sparefs_tests::MetaCluster;
use std::sync::Arc;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aborted_read_loses_no_delegated_change() -> anyhow::Result<()> {
    let mut cluster = MetaCluster::start(1)?;
    cluster.wait_leader(Duration::from_secs(20)).await?;
    let addrs = cluster.addrs.values().cloned().collect();
    let meta = Arc::new(MetaClient::new(addrs, Caller::ROOT).with_delegations());
    let dir = meta.mkdir(InodeId::ROOT, b"d", 0o755).await?.ino;
    meta.delegate(InodeId::ROOT, b"d", dir).await?;
    let deleg = meta
        .delegations()
        .expect("a client with delegations")
        .clone();
    assert!(deleg.holds(dir), "the new directory was not delegated");
    // The lease a mount's keepalive loop keeps renewed.
    let sent = std::time::Instant::now();
    meta.keepalive(Vec::new()).await?;
    deleg.renewed(sent);
    let made = deleg.make(&Caller::ROOT, dir, b"f", FileKind::File, (0o644, 0), true);
    assert!(
        matches!(made, Local::Answer(Ok(_))),
        "create not answered here: {:?}",
        match made {
            Local::Answer(r) => format!("{:?}", r.map(|_| ())),
            Local::Remote => "remote".into(),
        }
    );

    // The meta stops answering, so the read that carries the create is
    // surely in flight when its task is aborted.
    cluster.signal(1, libc::SIGSTOP);
    let reader = {
        let meta = meta.clone();
        tokio::spawn(async move {
            let root = ReadOp::GetAttr { ino: InodeId::ROOT };
            meta.read_detached(Caller::ROOT, root).await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    reader.abort();
    cluster.signal(1, libc::SIGCONT);

    // Waits for the batch on its way, then sends anything left.
    meta.flush_delegated().await?;
    assert!(
        deleg.holds(dir),
        "the mount gave up its delegations: the batch was abandoned"
    );
    let lookup = ReadOp::Lookup {
        parent: dir,
        name: b"f".to_vec(),
    };
    meta.read_as(Caller::ROOT, lookup)
        .await
        .map_err(|e| anyhow::anyhow!("the meta does not know the create: {e}"))?;
    Ok(())
}
