//! A target process (`sparefs iscsi serve`): the portal it listens on, the
//! exports it serves (read from the meta and refreshed, so every target
//! process of the cluster serves the same), its sessions, and the
//! heartbeat through which `sparefs iscsi list` and `status` see it.

use crate::backend::{Backend, ImageBackend};
use crate::exports::{self, TargetRec};
use crate::scsi::{pr::Reservations, Lun};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::{Notify, Semaphore};

/// Write data buffered for commands in flight, all sessions together.
pub const DATA_BUDGET_BYTES: usize = 512 * 1024 * 1024;
pub const REFRESH_EVERY: Duration = Duration::from_secs(2);
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(5);
/// A target whose heartbeat is older than this is shown as gone.
pub const HEARTBEAT_STALE_SECS: u64 = 30;

/// One IQN as this process serves it.
pub struct TargetView {
    pub rec: TargetRec,
    pub luns: BTreeMap<u64, Arc<Lun>>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SessionInfo {
    pub initiator: String,
    pub isid: String,
    pub target: String,
    pub tsih: u16,
    pub discovery: bool,
}

/// What a target process publishes about itself, under
/// `iscsi/state/target/<portal>`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Heartbeat {
    pub portal: String,
    pub pid: u32,
    pub host: String,
    pub updated_unix: u64,
    pub sessions: Vec<SessionInfo>,
}

struct SessionEntry {
    tsih: u16,
    info: SessionInfo,
    ended: Arc<Notify>,
}

pub struct Shared {
    pub meta: Option<Arc<sparefs_client::MetaClient>>,
    views: RwLock<HashMap<String, Arc<TargetView>>>,
    sessions: Mutex<HashMap<(String, [u8; 6]), SessionEntry>>,
    next_tsih: AtomicU16,
    pub data_budget: Arc<Semaphore>,
    pub portal: String,
}

impl Shared {
    pub fn new(meta: Option<Arc<sparefs_client::MetaClient>>, portal: String) -> Arc<Shared> {
        Arc::new(Shared {
            meta,
            views: RwLock::new(HashMap::new()),
            sessions: Mutex::new(HashMap::new()),
            next_tsih: AtomicU16::new(1),
            data_budget: Arc::new(Semaphore::new(DATA_BUDGET_BYTES / 1024)),
            portal,
        })
    }

    pub fn view(&self, iqn: &str) -> Option<Arc<TargetView>> {
        self.views.read().ok()?.get(iqn).cloned()
    }

    /// Every target name and whether `initiator` may log in to it.
    pub fn target_names(&self, initiator: &str) -> Vec<(String, bool)> {
        let mut v: Vec<(String, bool)> = self
            .views
            .read()
            .map(|m| {
                m.values()
                    .map(|t| {
                        let ok = t.rec.initiators.is_empty()
                            || t.rec.initiators.iter().any(|i| i == initiator);
                        (t.rec.iqn.clone(), ok)
                    })
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// The images this process serves.
    pub fn open_inodes(&self) -> Vec<sparefs_proto::InodeId> {
        let mut v: Vec<sparefs_proto::InodeId> = self
            .views
            .read()
            .map(|m| {
                m.values()
                    .flat_map(|t| t.luns.values().filter_map(|l| l.backend.ino()))
                    .map(sparefs_proto::InodeId)
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v.dedup();
        v
    }

    pub fn new_tsih(&self) -> u16 {
        loop {
            let t = self.next_tsih.fetch_add(1, Ordering::Relaxed);
            if t != 0 {
                return t;
            }
        }
    }

    /// Registers a session; one with the same initiator port is ended
    /// (session reinstatement, RFC 7143 §6.3.5). Returns what ends this one.
    pub fn session_started(
        &self,
        key: (String, [u8; 6]),
        tsih: u16,
        target: &str,
        discovery: bool,
    ) -> Arc<Notify> {
        let ended = Arc::new(Notify::new());
        let info = SessionInfo {
            initiator: key.0.clone(),
            isid: key.1.iter().map(|b| format!("{b:02x}")).collect(),
            target: target.to_string(),
            tsih,
            discovery,
        };
        if let Ok(mut s) = self.sessions.lock() {
            if let Some(old) = s.insert(
                key,
                SessionEntry {
                    tsih,
                    info,
                    ended: ended.clone(),
                },
            ) {
                old.ended.notify_one();
            }
        }
        ended
    }

    pub fn session_ended(&self, key: &(String, [u8; 6]), tsih: u16) {
        if let Ok(mut s) = self.sessions.lock() {
            if s.get(key).is_some_and(|e| e.tsih == tsih) {
                s.remove(key);
            }
        }
    }

    pub fn sessions(&self) -> Vec<SessionInfo> {
        let mut v: Vec<SessionInfo> = self
            .sessions
            .lock()
            .map(|s| s.values().map(|e| e.info.clone()).collect())
            .unwrap_or_default();
        v.sort_by(|a, b| (&a.target, &a.initiator).cmp(&(&b.target, &b.initiator)));
        v
    }

    /// Serves `rec` over given backends (tests, and a target over local
    /// files): no meta involved.
    pub fn set_local(&self, rec: TargetRec, backends: BTreeMap<u64, Arc<dyn Backend>>) {
        let luns = rec
            .luns
            .iter()
            .filter_map(|(id, l)| {
                let b = backends.get(id)?.clone();
                Some((
                    *id,
                    Arc::new(Lun::new(*id, l.clone(), b, Reservations::local())),
                ))
            })
            .collect();
        if let Ok(mut v) = self.views.write() {
            v.insert(rec.iqn.clone(), Arc::new(TargetView { rec, luns }));
        }
    }

    /// Reads the exports from the meta and serves them: LUNs that did not
    /// change keep their open image and state; new ones are opened.
    pub async fn refresh(&self) -> Result<(), String> {
        let Some(meta) = &self.meta else {
            return Ok(());
        };
        let records = exports::load_all(meta).await?;
        let old = self.views.read().map(|v| v.clone()).unwrap_or_default();
        let mut next: HashMap<String, Arc<TargetView>> = HashMap::new();
        for (rec, _) in records {
            let mut luns = BTreeMap::new();
            for (id, l) in &rec.luns {
                let kept = old
                    .get(&rec.iqn)
                    .and_then(|v| v.luns.get(id))
                    .filter(|x| x.rec == *l)
                    .cloned();
                let lun = match kept {
                    Some(k) => {
                        if let Err(e) = k.reservations.refresh().await {
                            tracing::warn!("{} LUN {id}: reservations: {e}", rec.iqn);
                        }
                        k.follow_size(meta).await;
                        k
                    }
                    None => match ImageBackend::open(meta.clone(), l.ino).await {
                        Ok(b) => {
                            let r = Reservations::in_meta(meta.clone(), l.naa);
                            if let Err(e) = r.refresh().await {
                                tracing::warn!("{} LUN {id}: reservations: {e}", rec.iqn);
                            }
                            tracing::info!(
                                "serving {} LUN {id}: {} ({} bytes)",
                                rec.iqn,
                                l.path,
                                b.size()
                            );
                            Arc::new(Lun::new(*id, l.clone(), Arc::new(b), r))
                        }
                        Err(e) => {
                            tracing::warn!("{} LUN {id} ({}): {e}", rec.iqn, l.path);
                            continue;
                        }
                    },
                };
                luns.insert(*id, lun);
            }
            let unchanged = old
                .get(&rec.iqn)
                .is_some_and(|v| v.rec == rec && v.luns.len() == luns.len());
            let view = if unchanged {
                old.get(&rec.iqn).cloned()
            } else {
                None
            };
            next.insert(
                rec.iqn.clone(),
                view.unwrap_or_else(|| Arc::new(TargetView { rec, luns })),
            );
        }
        if let Ok(mut v) = self.views.write() {
            *v = next;
        }
        Ok(())
    }

    async fn heartbeat(&self) -> Result<(), String> {
        let Some(meta) = &self.meta else {
            return Ok(());
        };
        let hb = Heartbeat {
            portal: self.portal.clone(),
            pid: std::process::id(),
            host: hostname(),
            updated_unix: unix_now(),
            sessions: self.sessions(),
        };
        let value = serde_json::to_vec(&hb).map_err(|e| e.to_string())?;
        crate::state::put(meta, &heartbeat_key(&self.portal), None, Some(value))
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

pub fn heartbeat_key(portal: &str) -> Vec<u8> {
    let mut k = sparefs_proto::namespace::config::ISCSI_STATE.to_vec();
    k.extend_from_slice(b"target/");
    k.extend_from_slice(portal.as_bytes());
    k
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Every target process's last heartbeat.
pub async fn heartbeats(meta: &sparefs_client::MetaClient) -> Result<Vec<Heartbeat>, String> {
    let mut prefix = sparefs_proto::namespace::config::ISCSI_STATE.to_vec();
    prefix.extend_from_slice(b"target/");
    Ok(crate::state::list(meta, &prefix)
        .await?
        .into_iter()
        .filter_map(|e| serde_json::from_slice(&e.value).ok())
        .collect())
}

/// Accepts connections until the listener fails; refreshes exports and
/// publishes the heartbeat meanwhile.
pub async fn serve(shared: Arc<Shared>, listener: tokio::net::TcpListener) -> std::io::Result<()> {
    if shared.meta.is_some() {
        if let Err(e) = shared.refresh().await {
            tracing::warn!("exports: {e}");
        }
        let s = shared.clone();
        tokio::spawn(async move {
            let mut beat = tokio::time::Instant::now();
            loop {
                tokio::time::sleep(REFRESH_EVERY).await;
                if let Err(e) = s.refresh().await {
                    tracing::warn!("exports: {e}");
                }
                // The images served are open files of this client: the meta
                // keeps one unlinked meanwhile (through the mount, say) until
                // the target lets it go, as it does for a mount's files.
                if let Some(meta) = &s.meta {
                    if let Err(e) = meta.keepalive(s.open_inodes()).await {
                        tracing::warn!("keepalive: {e}");
                    }
                }
                if beat.elapsed() >= HEARTBEAT_EVERY {
                    beat = tokio::time::Instant::now();
                    if let Err(e) = s.heartbeat().await {
                        tracing::warn!("heartbeat: {e}");
                    }
                }
            }
        });
        if let Err(e) = shared.heartbeat().await {
            tracing::warn!("heartbeat: {e}");
        }
    }
    // Connections held at most (idle ones included): as many as the
    // open-file limit leaves room for, like every other daemon.
    sparefs_wire::service::raise_descriptor_limit();
    let cap = sparefs_wire::service::connections_max();
    let slots = Arc::new(Semaphore::new(cap));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // Out of descriptors and the like: wait, do not exit.
                tracing::warn!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!("{peer}: refused, {cap} connections open");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let local = stream
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_else(|_| shared.portal.clone());
        let s = shared.clone();
        tokio::spawn(async move {
            crate::session::serve(s, stream, local).await;
            drop(slot);
        });
    }
}
