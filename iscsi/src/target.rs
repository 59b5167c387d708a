//! A target process (`sparefs iscsi serve`): the portal it listens on, the
//! exports it serves (read from the meta and refreshed, so every target
//! process of the cluster serves the same), its sessions, and the
//! heartbeat through which `sparefs iscsi list` and `status` see it.

use crate::backend::{Backend, ImageBackend};
use crate::exports::{self, TargetRec};
use crate::scsi::{pr::Reservations, AccessState, Lun, PortGroups};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::{Notify, Semaphore};

/// Write data buffered for commands in flight, all sessions together.
pub const DATA_BUDGET_BYTES: usize = 512 * 1024 * 1024;
/// How often exports, reservations and sizes are read again.
pub const REFRESH_EVERY: Duration = Duration::from_secs(1);
/// A target whose heartbeat is older than this is shown as gone.
pub const HEARTBEAT_STALE_SECS: u64 = 10;

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
    /// Random per run: the fence holder name (`failover::holder_name`).
    #[serde(default)]
    pub incarnation: u64,
    /// Its target port group (ALUA) and portal group tag.
    #[serde(default)]
    pub group: u16,
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
    incarnation: u64,
    group: AtomicU16,
    /// Whether a login to a standby is sent to the active target.
    redirect: AtomicBool,
    /// Portal of every live target's group (from their heartbeats).
    peer_portals: Mutex<HashMap<u16, String>>,
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
            incarnation: rand::random::<u64>(),
            group: AtomicU16::new(1),
            redirect: AtomicBool::new(false),
            peer_portals: Mutex::new(HashMap::new()),
        })
    }

    /// This process's target port group (ALUA) and portal group tag.
    pub fn group(&self) -> u16 {
        self.group.load(Ordering::Relaxed)
    }

    pub fn set_group(&self, g: u16) {
        self.group.store(g, Ordering::Relaxed);
    }

    pub fn set_redirect(&self, on: bool) {
        self.redirect.store(on, Ordering::Relaxed);
    }

    /// This process's name as a fence holder.
    pub fn holder(&self) -> String {
        crate::failover::holder_name(&self.portal, self.incarnation)
    }

    pub fn set_peer_portals(&self, m: HashMap<u16, String>) {
        if let Ok(mut p) = self.peer_portals.lock() {
            *p = m;
        }
    }

    /// Every LUN of every target served.
    pub fn luns(&self) -> Vec<Arc<Lun>> {
        self.views
            .read()
            .map(|m| m.values().flat_map(|t| t.luns.values().cloned()).collect())
            .unwrap_or_default()
    }

    /// Where a login to `view` should go instead: the active target's
    /// portal, when redirection is on and this process is standby for
    /// every LUN of the target.
    pub fn redirect_for(&self, view: &TargetView) -> Option<String> {
        if !self.redirect.load(Ordering::Relaxed) {
            return None;
        }
        let mut active = None;
        for l in view.luns.values() {
            let p = l.ports();
            if p.state() == AccessState::ActiveOptimized {
                return None;
            }
            let a = p
                .groups
                .iter()
                .find(|(_, s)| *s == AccessState::ActiveOptimized)
                .map(|(g, _)| *g)?;
            active = Some(a);
        }
        let group = active?;
        let portal = self.peer_portals.lock().ok()?.get(&group).cloned()?;
        Some(format!("{portal},{group}"))
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
                let lun = Lun::new(*id, l.clone(), b, Reservations::local());
                lun.set_ports(PortGroups::alone(self.group()));
                Some((*id, Arc::new(lun)))
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
                        if let Err(e) = k.refresh_reservations().await {
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
                            let lun = Lun::new(*id, l.clone(), Arc::new(b), r);
                            // Standby until the failover loop decides.
                            lun.set_ports(PortGroups {
                                mine: self.group(),
                                active_until: None,
                                groups: vec![(self.group(), AccessState::Standby)],
                            });
                            Arc::new(lun)
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

    pub(crate) async fn heartbeat(&self) -> Result<(), String> {
        let Some(meta) = &self.meta else {
            return Ok(());
        };
        let hb = Heartbeat {
            portal: self.portal.clone(),
            pid: std::process::id(),
            host: hostname(),
            updated_unix: unix_now(),
            sessions: self.sessions(),
            incarnation: self.incarnation,
            group: self.group(),
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
    Ok(heartbeats_versioned(meta)
        .await?
        .into_iter()
        .map(|(_, h)| h)
        .collect())
}

/// Every target process's last heartbeat with its record's version (which
/// changes at every renewal).
pub async fn heartbeats_versioned(
    meta: &sparefs_client::MetaClient,
) -> Result<Vec<(u64, Heartbeat)>, String> {
    let mut prefix = sparefs_proto::namespace::config::ISCSI_STATE.to_vec();
    prefix.extend_from_slice(b"target/");
    Ok(crate::state::list(meta, &prefix)
        .await?
        .into_iter()
        .filter_map(|e| Some((e.version, serde_json::from_slice(&e.value).ok()?)))
        .collect())
}

fn group_key(group: u16) -> Vec<u8> {
    let mut k = sparefs_proto::namespace::config::ISCSI_STATE.to_vec();
    k.extend_from_slice(format!("group/{group:05}").as_bytes());
    k
}

/// The portal group of `portal`: the one it had before, or the lowest
/// free one, claimed by compare-and-set (`iscsi/state/group/<n>` holds the
/// portal) so two targets starting together never share one.
pub async fn claim_group(meta: &sparefs_client::MetaClient, portal: &str) -> Result<u16, String> {
    let mut prefix = sparefs_proto::namespace::config::ISCSI_STATE.to_vec();
    prefix.extend_from_slice(b"group/");
    for _ in 0..64 {
        let taken = crate::state::list(meta, &prefix).await?;
        if let Some(e) = taken.iter().find(|e| e.value == portal.as_bytes()) {
            let n = std::str::from_utf8(&e.key[prefix.len()..])
                .ok()
                .and_then(|s| s.parse::<u16>().ok());
            if let Some(n) = n {
                return Ok(n);
            }
        }
        let Some(free) = (1..=u16::MAX).find(|g| !taken.iter().any(|e| e.key == group_key(*g)))
        else {
            return Err("no free portal group".into());
        };
        match crate::state::put(
            meta,
            &group_key(free),
            Some(0),
            Some(portal.as_bytes().to_vec()),
        )
        .await
        {
            Ok(_) => return Ok(free),
            Err(crate::state::PutError::Stale) => continue,
            Err(e) => return Err(e.to_string()),
        }
    }
    Err("portal groups kept changing".into())
}

/// `claim_group` until the meta answers.
pub async fn claim_group_retrying(meta: &sparefs_client::MetaClient, portal: &str) -> u16 {
    loop {
        match claim_group(meta, portal).await {
            Ok(g) => return g,
            Err(e) => {
                tracing::warn!("portal group: {e}; trying again");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Accepts connections until the listener fails; refreshes exports and
/// publishes the heartbeat meanwhile.
pub async fn serve(shared: Arc<Shared>, listener: tokio::net::TcpListener) -> std::io::Result<()> {
    if shared.meta.is_some() {
        if let Err(e) = shared.refresh().await {
            tracing::warn!("exports: {e}");
        }
        tokio::spawn(crate::failover::run(shared.clone()));
        let s = shared.clone();
        tokio::spawn(async move {
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
            }
        });
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
