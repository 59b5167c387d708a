//! `sparefs node`: chunkserver administration. `drain` moves every
//! fragment off a host (it gets no new ones meanwhile), `remove` forgets a
//! host once nothing lives on it, `undrain` takes it back into service.

use crate::{current_caller, split_addresses};
use sparefs_proto::namespace::{NsReply, ReadOp, WriteOp};
use sparefs_proto::{ChunkserverId, Errno};
use std::time::{Duration, Instant};

#[derive(clap::Subcommand)]
pub enum NodeCmd {
    /// List chunkservers.
    List,
    /// Move every fragment off chunkserver ID; with --wait, until done.
    Drain {
        id: u64,
        #[arg(long)]
        wait: bool,
    },
    /// Put a drained chunkserver back into service.
    Undrain { id: u64 },
    /// Forget chunkserver ID (refused while any fragment is on it).
    Remove { id: u64 },
}

pub async fn run(meta: &str, cmd: NodeCmd) -> anyhow::Result<i32> {
    let client = crate::meta_client(split_addresses(meta), current_caller());
    match cmd {
        NodeCmd::List => {
            let NsReply::Chunkservers(list) = client.read(ReadOp::ListChunkservers).await? else {
                anyhow::bail!("unexpected reply");
            };
            println!(
                "{:<4} {:<22} {:<6} {:>14} {:>14} DRAINING",
                "ID", "ADDRESS", "STATE", "CAPACITY", "USED"
            );
            for s in list {
                println!(
                    "{:<4} {:<22} {:<6} {:>14} {:>14} {}",
                    s.id.0,
                    s.address,
                    s.state.name(),
                    s.capacity_bytes,
                    s.used_bytes,
                    if s.draining { "yes" } else { "no" }
                );
            }
        }
        NodeCmd::Drain { id, wait } => {
            client
                .write(WriteOp::DrainChunkserver {
                    chunkserver: ChunkserverId(id),
                    drain: true,
                })
                .await?;
            println!("chunkserver {id} draining");
            if wait {
                let start = Instant::now();
                loop {
                    match client
                        .write(WriteOp::RemoveChunkserver {
                            chunkserver: ChunkserverId(id),
                        })
                        .await
                    {
                        Ok(_) => {
                            println!(
                                "chunkserver {id} drained in {:.1} s and removed",
                                start.elapsed().as_secs_f64()
                            );
                            break;
                        }
                        Err(e) if e.errno() == Errno::EBUSY => {
                            tokio::time::sleep(Duration::from_secs(1)).await
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
            }
        }
        NodeCmd::Undrain { id } => {
            client
                .write(WriteOp::DrainChunkserver {
                    chunkserver: ChunkserverId(id),
                    drain: false,
                })
                .await?;
        }
        NodeCmd::Remove { id } => {
            match client
                .write(WriteOp::RemoveChunkserver {
                    chunkserver: ChunkserverId(id),
                })
                .await
            {
                Ok(_) => println!("chunkserver {id} removed"),
                Err(e) if e.errno() == Errno::EBUSY => {
                    eprintln!(
                        "chunkserver {id} still holds fragments: `sparefs node drain {id}` first"
                    );
                    return Ok(1);
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(0)
}
