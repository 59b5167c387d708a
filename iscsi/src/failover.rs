//! Failover between target processes: which one writes each image, and
//! how the others take over when it dies or is cut off.
//!
//! Every target process serves every export. Exactly one of them, the
//! holder of the image's writer fence in the meta (`WriteOp::TakeFence`),
//! is active/optimized for its LUNs; the others are standby (implicit
//! ALUA). Liveness is the target heartbeat record (`target::Heartbeat`),
//! renewed every `RENEW_EVERY`:
//! - the holder serves I/O only until `HOLD` after it *sent* its last
//!   successful renewal, then answers "in transition";
//! - a standby takes the fence (a compare-and-set that bumps the epoch)
//!   once the holder's record has not changed for `EXPIRE` as measured
//!   from when it first saw that version, which is after the holder sent
//!   it. `EXPIRE > HOLD`, so the old holder has stopped before anyone
//!   takes over, without comparing clocks of different hosts;
//! - whatever the old holder still had in flight is refused by the meta
//!   (its commits carry the old epoch), so nothing it acknowledged late
//!   lands after the takeover.
//!
//! Owns: the lease decisions and the ALUA layout each LUN presents. Must
//! not touch: SCSI semantics (`scsi`), the records' format (`target`).

use crate::scsi::{AccessState, Lun, PortGroups};
use crate::target::{Heartbeat, Shared};
use sparefs_client::ClientError;
use sparefs_proto::namespace::{NsReply, ReadOp, WriteOp};
use sparefs_proto::{Errno, InodeId};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often the heartbeat (the lease of every image held) is renewed.
pub const RENEW_EVERY: Duration = Duration::from_millis(500);
/// The holder serves I/O at most this long after sending its last
/// successful renewal (five renewals may fail in a row before it stops).
pub const HOLD: Duration = Duration::from_millis(2500);
/// A standby takes over once the holder's heartbeat has not changed for
/// this long (as it observed it).
pub const EXPIRE: Duration = Duration::from_millis(3000);
/// How long a target that stopped renewing is still listed as a standby
/// port group.
pub const LISTED_FOR: Duration = Duration::from_secs(30);
/// How recent the listing of heartbeats must be to declare a holder gone
/// (a process that could not look for a while knows nothing of renewals
/// made meanwhile).
pub const PEERS_FRESH: Duration = Duration::from_secs(1);
/// How often leases and fences are looked at.
pub const TICK: Duration = Duration::from_millis(250);
/// Longest a meta call of the loop may take: a cut-off process must keep
/// noticing that its lease runs out.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(1);

/// The fence holder name of a target process: its portal and the random
/// incarnation of this run (a restarted process is a new holder).
pub fn holder_name(portal: &str, incarnation: u64) -> String {
    format!("{portal}#{incarnation:016x}")
}

/// The portal of a fence holder name.
pub fn holder_portal(s: &str) -> Option<&str> {
    parse_holder(s).map(|(p, _)| p)
}

fn parse_holder(s: &str) -> Option<(&str, u64)> {
    let (portal, inc) = s.rsplit_once('#')?;
    Some((portal, u64::from_str_radix(inc, 16).ok()?))
}

/// What this process saw of every target heartbeat, and since when each
/// has not changed.
#[derive(Default)]
pub struct Peers {
    seen: HashMap<String, Seen>,
    /// When the records were last listed: a view older than
    /// `PEERS_FRESH` proves nobody dead (they may have renewed since).
    listed_at: Option<Instant>,
}

struct Seen {
    version: u64,
    since: Instant,
    hb: Heartbeat,
}

impl Peers {
    pub fn observe(&mut self, records: Vec<(u64, Heartbeat)>, now: Instant) {
        self.listed_at = Some(now);
        let mut next = HashMap::new();
        for (version, hb) in records {
            let since = match self.seen.get(&hb.portal) {
                Some(s) if s.version == version => s.since,
                _ => now,
            };
            next.insert(hb.portal.clone(), Seen { version, since, hb });
        }
        self.seen = next;
    }

    /// Whether the process named by `holder` may still be renewing its
    /// lease: yes unless a fresh listing shows it stopped (or restarted).
    pub fn alive(&self, holder: &str, now: Instant) -> bool {
        let Some((portal, incarnation)) = parse_holder(holder) else {
            return false;
        };
        if self
            .listed_at
            .is_none_or(|t| now.duration_since(t) > PEERS_FRESH)
        {
            return true;
        }
        self.seen.get(portal).is_some_and(|s| {
            s.hb.incarnation == incarnation && now.duration_since(s.since) < EXPIRE
        })
    }

    /// The holder's portal group and portal, while it lives.
    pub fn group_of(&self, holder: &str) -> Option<(u16, String)> {
        let (portal, _) = parse_holder(holder)?;
        self.seen
            .get(portal)
            .map(|s| (s.hb.group, s.hb.portal.clone()))
    }

    /// Groups of the target processes heard from lately (within
    /// `LISTED_FOR`, longer than `EXPIRE`: a late heartbeat does not make a
    /// group come and go in REPORT TARGET PORT GROUPS).
    pub fn live_groups(&self, now: Instant) -> Vec<u16> {
        let mut v: Vec<u16> = self
            .seen
            .values()
            .filter(|s| now.duration_since(s.since) < LISTED_FOR && s.hb.group != 0)
            .map(|s| s.hb.group)
            .collect();
        v.sort();
        v.dedup();
        v
    }
}

/// What to do about one image.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// This process holds the fence at this epoch and may serve I/O.
    Active(u64),
    /// This process holds the fence but cannot renew its lease: it stops
    /// serving until it can (nobody else may take over before `EXPIRE`).
    Lapsed,
    /// Another process holds it (its name), or nobody can take it now.
    Standby(Option<String>),
    /// The holder is gone: take the fence from epoch `expect`.
    Take { expect: u64 },
}

/// The decision for an image whose fence is (`epoch`, `holder`).
pub fn decide(
    epoch: u64,
    holder: &str,
    me: &str,
    fresh: bool,
    peers: &Peers,
    now: Instant,
) -> Decision {
    if epoch > 0 && holder == me {
        return if fresh {
            Decision::Active(epoch)
        } else {
            Decision::Lapsed
        };
    }
    if epoch > 0 && peers.alive(holder, now) {
        return Decision::Standby(Some(holder.to_string()));
    }
    if fresh {
        Decision::Take { expect: epoch }
    } else {
        Decision::Standby(None)
    }
}

/// The loop's memory between ticks.
#[derive(Default)]
pub struct Failover {
    peers: Peers,
    /// When the last successful renewal was sent (`renew`'s task sets it).
    renewed: Arc<std::sync::Mutex<Option<Instant>>>,
    /// Images this process activated, at which epoch.
    active: HashMap<u64, u64>,
}

/// Renews the heartbeat every `RENEW_EVERY`, on its own: a slow round of
/// the decisions (many images, a slow meta) never delays a renewal.
async fn renew(shared: Arc<Shared>, renewed: Arc<std::sync::Mutex<Option<Instant>>>) {
    loop {
        let sent = Instant::now();
        match bounded(shared.heartbeat()).await {
            Ok(()) => {
                if let Ok(mut r) = renewed.lock() {
                    *r = Some(sent);
                }
            }
            Err(e) => tracing::warn!("lease renewal: {e}"),
        }
        tokio::time::sleep(RENEW_EVERY.saturating_sub(sent.elapsed())).await;
    }
}

async fn bounded<T>(f: impl std::future::Future<Output = Result<T, String>>) -> Result<T, String> {
    tokio::time::timeout(CALL_TIMEOUT, f)
        .await
        .unwrap_or_else(|_| Err("the meta did not answer in time".into()))
}

/// An image's fence: (epoch, holder name); (0, "") if never taken.
pub async fn get_fence(
    meta: &sparefs_client::MetaClient,
    ino: u64,
) -> Result<(u64, String), String> {
    match meta.read(ReadOp::GetFence { ino: InodeId(ino) }).await {
        Ok(NsReply::Fence { epoch, holder }) => Ok((epoch, holder)),
        Ok(other) => Err(format!("unexpected answer to GetFence: {other:?}")),
        Err(e) => Err(format!("fence of inode {ino}: {e}")),
    }
}

/// `Ok(None)`: someone else took it first.
async fn take_fence(
    meta: &sparefs_client::MetaClient,
    ino: u64,
    expect: u64,
    me: &str,
) -> Result<Option<u64>, String> {
    let op = WriteOp::TakeFence {
        ino: InodeId(ino),
        expect,
        holder: me.to_string(),
    };
    match meta.write(op).await {
        Ok(NsReply::Fence { epoch, .. }) => Ok(Some(epoch)),
        Ok(other) => Err(format!("unexpected answer to TakeFence: {other:?}")),
        Err(ClientError::Errno(Errno::ESTALE)) => Ok(None),
        Err(e) => Err(format!("taking the fence of inode {ino}: {e}")),
    }
}

impl Failover {
    /// One round: renew, look at the others, decide for every image served.
    pub async fn tick(&mut self, shared: &Arc<Shared>) {
        let Some(meta) = shared.meta.clone() else {
            return;
        };
        match bounded(crate::target::heartbeats_versioned(&meta)).await {
            Ok(list) => {
                self.peers.observe(list, Instant::now());
                shared.set_peer_portals(
                    self.peers
                        .seen
                        .values()
                        .map(|s| (s.hb.group, s.hb.portal.clone()))
                        .collect(),
                );
            }
            Err(e) => tracing::warn!("target heartbeats: {e}"),
        }
        let me = shared.holder();
        let mine = shared.group();
        let mut by_image: BTreeMap<u64, Vec<Arc<Lun>>> = BTreeMap::new();
        for lun in shared.luns() {
            if let Some(ino) = lun.backend.ino() {
                by_image.entry(ino).or_default().push(lun);
            }
        }
        self.active.retain(|ino, _| by_image.contains_key(ino));
        for (ino, luns) in by_image {
            let renewed = self.renewed();
            let fresh = renewed.is_some_and(|t| Instant::now().duration_since(t) < HOLD);
            let (epoch, holder) = match bounded(get_fence(&meta, ino)).await {
                Ok(f) => f,
                Err(e) => {
                    // Unknown: an active LUN keeps serving only until its
                    // lease runs out (`active_until`).
                    tracing::warn!("{e}");
                    self.publish(&luns, mine, None, None);
                    continue;
                }
            };
            let decision = decide(epoch, &holder, &me, fresh, &self.peers, Instant::now());
            let decision = match decision {
                Decision::Take { expect } => {
                    match bounded(take_fence(&meta, ino, expect, &me)).await {
                        Ok(Some(e)) => {
                            tracing::info!(
                                "image inode {ino}: took over at epoch {e} (was {holder:?})"
                            );
                            Decision::Active(e)
                        }
                        Ok(None) => Decision::Standby(None),
                        Err(e) => {
                            tracing::warn!("{e}");
                            Decision::Standby(None)
                        }
                    }
                }
                d => d,
            };
            match decision {
                Decision::Active(e) => {
                    if self.active.get(&ino) != Some(&e) {
                        // Serving starts from what the meta has now.
                        let Some(first) = luns.first() else { continue };
                        match first.backend.activate(e).await {
                            Ok(()) => {
                                self.active.insert(ino, e);
                            }
                            Err(err) => {
                                tracing::warn!("image inode {ino}: activating: {err}");
                                self.publish(&luns, mine, None, None);
                                continue;
                            }
                        }
                    }
                    let until = self.renewed().map(|t| t + HOLD);
                    self.publish(&luns, mine, Some(mine), until);
                }
                Decision::Lapsed => {
                    self.publish(&luns, mine, Some(mine), Some(Instant::now()));
                }
                Decision::Standby(h) => {
                    self.active.remove(&ino);
                    let g = h.and_then(|h| self.peers.group_of(&h)).map(|(g, _)| g);
                    self.publish(&luns, mine, g, None);
                }
                Decision::Take { .. } => {}
            }
        }
    }

    fn renewed(&self) -> Option<Instant> {
        self.renewed.lock().ok().and_then(|r| *r)
    }

    /// Sets every LUN of an image to the layout: `active` is the holder's
    /// group (if any live one holds it), every other live group standby.
    fn publish(&self, luns: &[Arc<Lun>], mine: u16, active: Option<u16>, until: Option<Instant>) {
        let mut groups: Vec<u16> = self.peers.live_groups(Instant::now());
        groups.push(mine);
        if let Some(a) = active {
            groups.push(a);
        }
        groups.sort();
        groups.dedup();
        let layout = PortGroups {
            mine,
            active_until: if active == Some(mine) { until } else { None },
            groups: groups
                .into_iter()
                .map(|g| {
                    let s = if Some(g) == active {
                        AccessState::ActiveOptimized
                    } else {
                        AccessState::Standby
                    };
                    (g, s)
                })
                .collect(),
        };
        for l in luns {
            l.set_ports(layout.clone());
        }
    }
}

/// Runs the loop until the process ends.
pub async fn run(shared: Arc<Shared>) {
    let mut f = Failover::default();
    tokio::spawn(renew(shared.clone(), f.renewed.clone()));
    loop {
        f.tick(&shared).await;
        tokio::time::sleep(TICK).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hb(portal: &str, incarnation: u64, group: u16) -> Heartbeat {
        Heartbeat {
            portal: portal.into(),
            pid: 1,
            host: "h".into(),
            updated_unix: 0,
            sessions: Vec::new(),
            incarnation,
            group,
        }
    }

    #[test]
    fn a_standby_takes_over_only_after_the_holder_stops_renewing() {
        let t0 = Instant::now();
        let mut peers = Peers::default();
        let a = holder_name("10.0.0.1:3260", 7);
        let b = holder_name("10.0.0.2:3260", 9);
        peers.observe(
            vec![
                (5, hb("10.0.0.1:3260", 7, 1)),
                (6, hb("10.0.0.2:3260", 9, 2)),
            ],
            t0,
        );
        // The holder renews: B stays standby.
        assert_eq!(
            decide(3, &a, &b, true, &peers, t0 + EXPIRE / 2),
            Decision::Standby(Some(a.clone()))
        );
        peers.observe(vec![(8, hb("10.0.0.1:3260", 7, 1))], t0 + EXPIRE / 2);
        assert_eq!(
            decide(3, &a, &b, true, &peers, t0 + EXPIRE),
            Decision::Standby(Some(a.clone()))
        );
        // No change for EXPIRE since B first saw version 8: take over.
        peers.observe(
            vec![(8, hb("10.0.0.1:3260", 7, 1))],
            t0 + EXPIRE / 2 + EXPIRE,
        );
        assert_eq!(
            decide(3, &a, &b, true, &peers, t0 + EXPIRE / 2 + EXPIRE),
            Decision::Take { expect: 3 }
        );
        // A standby that cannot renew its own lease takes nothing.
        assert_eq!(
            decide(3, &a, &b, false, &peers, t0 + EXPIRE / 2 + EXPIRE),
            Decision::Standby(None)
        );
        // Nor does one whose view of the others is old: the holder may
        // have renewed while it could not look.
        assert_eq!(
            decide(3, &a, &b, true, &peers, t0 + 10 * EXPIRE),
            Decision::Standby(Some(a.clone()))
        );
        // A restarted holder (new incarnation) is a new process: its old
        // fence is free at once.
        peers.observe(vec![(9, hb("10.0.0.1:3260", 8, 1))], t0 + 2 * EXPIRE);
        assert_eq!(
            decide(3, &a, &b, true, &peers, t0 + 2 * EXPIRE),
            Decision::Take { expect: 3 }
        );
        // The holder itself: active while it renews, lapsed otherwise.
        assert_eq!(decide(3, &a, &a, true, &peers, t0), Decision::Active(3));
        assert_eq!(decide(3, &a, &a, false, &peers, t0), Decision::Lapsed);
        // Never held: whoever can, takes it.
        assert_eq!(
            decide(0, "", &b, true, &peers, t0),
            Decision::Take { expect: 0 }
        );
    }

    #[test]
    fn the_holder_stops_before_anyone_may_take_over() {
        // The holder's deadline counts from sending its renewal; a standby
        // first sees that renewal later, and waits longer.
        assert!(HOLD < EXPIRE);
        assert!(RENEW_EVERY * 2 < HOLD, "one lost renewal is not a lapse");
    }
}
