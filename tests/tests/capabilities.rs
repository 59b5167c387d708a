//! Capability misuse at a chunkserver, over TLS with a mount's own
//! certificate (so only the capability stands between it and the data): a
//! read capability used to write, a capability of one block used for
//! another, a capability with its expiry pushed out or its MAC forged, one
//! without this chunkserver's own MAC or with another's in its place, and
//! a fresh block's write capability used to overwrite a committed fragment.
//! Each is refused (`Denied`), the honest read is answered, and the file
//! reads back the same afterwards.

use sparefs_client::DataClient;
use sparefs_proto::layout::{Capability, Policy};
use sparefs_proto::msg::{Reply, Request, RpcError};
use sparefs_proto::namespace::{NsReply, ReadOp, WriteOp};
use sparefs_tests::data::{get, pattern, put};
use sparefs_tests::{fs_cluster_tls, who, TlsRole};
use sparefs_wire::conn::{CallError, Conn};
use std::sync::Arc;
use std::time::Duration;

fn denied(what: &str, r: Result<Reply, CallError>) {
    assert!(
        matches!(r, Err(CallError::Rpc(RpcError::Denied))),
        "{what}: {r:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunkserver_honours_only_the_capability_it_was_given() -> anyhow::Result<()> {
    let (c, _) = fs_cluster_tls(1, 0).await?;
    let mount = Arc::new(c.client_as(who(TlsRole::Mount, 5))?);
    let data = Arc::new(DataClient::new(mount.clone()));
    let bytes = pattern(6 << 20, 17);
    let ino = put(&data, "kept", &bytes).await?;
    let NsReply::Chunk {
        slices,
        capabilities,
    } = mount.read(ReadOp::ReadChunk { ino, index: 0 }).await?
    else {
        anyhow::bail!("not a chunk map");
    };
    let blocks: Vec<_> = slices.iter().flat_map(|s| s.blocks.clone()).collect();
    anyhow::ensure!(blocks.len() >= 2, "{} blocks", blocks.len());
    let (a, b) = (&blocks[0], &blocks[1]);
    let cap_of = |id| {
        capabilities
            .iter()
            .find(|c| c.block == id)
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("no capability for block {id}"))
    };
    let cap_a = cap_of(a.id)?;
    let NsReply::Chunkservers(servers) = mount.read(ReadOp::ListChunkservers).await? else {
        anyhow::bail!("not a chunkserver list");
    };
    let address = |id| {
        servers
            .iter()
            .find(|s| s.id == id)
            .map(|s| s.address.clone())
            .ok_or_else(|| anyhow::anyhow!("chunkserver {id:?} unknown"))
    };
    let tls = c
        .tls_as(who(TlsRole::Mount, 5))?
        .ok_or_else(|| anyhow::anyhow!("no TLS"))?;
    let holder_of_a = Conn::open_with(
        &address(a.fragments[0])?,
        Duration::from_secs(2),
        Some(&tls),
    )
    .await?;
    let get_a = |cap: Capability, block| Request::GetFragment {
        cap,
        block,
        index: a.slot(0),
        offset: 0,
        len: 4096,
        verify: true,
    };
    let t = Duration::from_secs(5);
    let put_a = |cap: Capability| Request::PutFragment {
        cap,
        block: a.id,
        index: a.slot(0),
        data: vec![0xee; 4096],
        table: Vec::new(),
    };

    // The honest read.
    let honest = holder_of_a.call(get_a(cap_a.clone(), a.id), t).await;
    assert!(
        matches!(honest, Ok(Reply::Bytes(ref b)) if b.len() == 4096),
        "{honest:?}"
    );

    // A read capability used to write over the fragment.
    denied(
        "a read capability writes",
        holder_of_a.call(put_a(cap_a.clone()), t).await,
    );
    // Block b's capability for block a (on a's chunkserver).
    denied(
        "another block's capability",
        holder_of_a.call(get_a(cap_of(b.id)?, a.id), t).await,
    );
    // Its expiry pushed out, or its MAC made up, or it claims to write.
    let mut later = cap_a.clone();
    later.expires += 1_000_000;
    denied(
        "a pushed-out expiry",
        holder_of_a.call(get_a(later, a.id), t).await,
    );
    let mut forged = cap_a.clone();
    for (_, mac) in &mut forged.macs {
        *mac = [7; 32];
    }
    denied(
        "a forged MAC",
        holder_of_a.call(get_a(forged, a.id), t).await,
    );
    // Scoped to each chunkserver: without the holder's own MAC, or with
    // another server's MAC under the holder's name, it is refused.
    let holder = a.fragments[0];
    let mut elsewhere = cap_a.clone();
    elsewhere.macs.retain(|(s, _)| *s != holder);
    anyhow::ensure!(!elsewhere.macs.is_empty(), "one MAC per holder");
    denied(
        "a capability for the other chunkservers only",
        holder_of_a.call(get_a(elsewhere.clone(), a.id), t).await,
    );
    let mut relabelled = elsewhere;
    relabelled.macs[0].0 = holder;
    denied(
        "another chunkserver's MAC under this one's name",
        holder_of_a.call(get_a(relabelled, a.id), t).await,
    );
    let mut promoted = cap_a.clone();
    promoted.write = true;
    denied(
        "a read capability promoted to write",
        holder_of_a.call(put_a(promoted), t).await,
    );

    // A genuine write capability, for a block of its own, used on a
    // committed block's fragment.
    let NsReply::Allocated {
        capabilities: fresh,
        ..
    } = mount
        .write(WriteOp::AllocateBlocks {
            count: 1,
            policy: Policy::Ec { data: 2, parity: 1 },
            placement: Vec::new(),
            exclude: Vec::new(),
            wanted: None,
        })
        .await?
    else {
        anyhow::bail!("not an allocation");
    };
    let write_cap = fresh
        .first()
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("no write capability"))?;
    denied(
        "a fresh block's write capability on a committed fragment",
        holder_of_a.call(put_a(write_cap), t).await,
    );

    // Nothing changed.
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
    assert!(get(&data, ino).await? == bytes, "the file changed");
    Ok(())
}
