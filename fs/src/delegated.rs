//! The mount's two background tasks for directories delegated to it
//! (docs/delegation.md): one sends the changes answered here once they have
//! waited `FLUSH_AFTER` (keeps inode numbers reserved, and gives everything
//! back when the mount holds as much as it may), one listens for the leader
//! asking for directories back and gives them back.

use sparefs_client::MetaClient;
use std::sync::Arc;
use std::time::Duration;

/// Pause after a failed call before trying again.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

pub async fn flush_loop(meta: Arc<MetaClient>) {
    let Some(d) = meta.delegations().cloned() else {
        return;
    };
    loop {
        let woken = d.wake.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        if let Err(e) = meta.reserve_inodes().await {
            tracing::warn!("reserve inode numbers: {e}");
            tokio::time::sleep(RETRY_PAUSE).await;
        }
        if d.full() {
            tracing::info!("holding as many names as a mount may: giving directories back");
            if let Err(e) = meta.give_back(&d.held()).await {
                tracing::warn!("give back delegated directories: {e}");
            }
        }
        match d.flush_due() {
            Ok(()) => {
                if let Err(e) = meta.flush_delegated().await {
                    tracing::warn!("send changes answered here: {e}");
                }
            }
            Err(Some(wait)) => tokio::time::sleep(wait).await,
            Err(None) => woken.await,
        }
    }
}

pub async fn recall_loop(meta: Arc<MetaClient>) {
    loop {
        match meta.wait_recall().await {
            Ok(dirs) if dirs.is_empty() => {}
            Ok(dirs) => {
                tracing::debug!("leader recalls {} delegated directories", dirs.len());
                if let Err(e) = meta.return_recalled(dirs).await {
                    tracing::warn!("give back recalled directories: {e}");
                }
            }
            Err(e) => {
                tracing::debug!("wait for recalls: {e}");
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        }
    }
}
