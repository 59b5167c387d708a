//! A fixed amount of namespace work against a running meta: `--ops` each of
//! creates, lookups and a mixed set (lookup, create, setattr, rename,
//! unlink), from one client, one request at a time. Made for counting the
//! instructions a meta spends per request (`bench/meta-instructions.sh`
//! runs the meta under callgrind): the same requests in the same order
//! every run, so two builds of the meta can be compared without the noise
//! of a shared machine's clock.

use clap::Parser;
use sparefs_client::MetaClient;
use sparefs_proto::namespace::{Caller, RenameMode, SetAttr, TimeSet};
use sparefs_proto::InodeId;
use std::time::Duration;

#[derive(Parser)]
struct Args {
    /// The meta's address (one replica).
    #[arg(long)]
    meta: String,
    /// Requests per kind.
    #[arg(long, default_value_t = 2000)]
    ops: u64,
    /// Name of the directory to work in (must not exist yet).
    #[arg(long, default_value = "meta-ops")]
    dir: String,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // Under valgrind the meta is ~50x slower than usual.
    let client = MetaClient::new(vec![args.meta.clone()], Caller::ROOT)
        .with_deadline(Duration::from_secs(120));
    let dir = client
        .mkdir(InodeId::ROOT, args.dir.as_bytes(), 0o755)
        .await?
        .ino;
    for i in 0..args.ops {
        client
            .create(dir, format!("f{i}").as_bytes(), 0o644, true)
            .await?;
    }
    for i in 0..args.ops {
        client.lookup(dir, format!("f{i}").as_bytes()).await?;
    }
    for i in 0..args.ops {
        match i % 5 {
            0 => {
                client.lookup(dir, format!("f{i}").as_bytes()).await?;
            }
            1 => {
                client
                    .create(dir, format!("m{i}").as_bytes(), 0o644, true)
                    .await?;
            }
            2 => {
                let now = SetAttr {
                    mtime: Some(TimeSet::Now),
                    ..Default::default()
                };
                client.setattr(dir, now).await?;
            }
            3 => {
                let (from, to) = (format!("m{}", i - 2), format!("n{i}"));
                client
                    .rename(
                        dir,
                        from.as_bytes(),
                        dir,
                        to.as_bytes(),
                        RenameMode::Replace,
                    )
                    .await?;
            }
            _ => {
                client.unlink(dir, format!("n{}", i - 1).as_bytes()).await?;
            }
        }
    }
    println!("meta-ops: {} requests", 3 * args.ops + 1);
    Ok(())
}
