//! Reservations: SPC-3 persistent reservations (PERSISTENT RESERVE IN/OUT),
//! kept in the meta as one configuration record per logical unit and
//! changed by compare-and-set, so every target process of the cluster sees
//! the same registrations and holder; and SPC-2 RESERVE/RELEASE(6), which
//! belong to one I_T nexus and so to the process that has it.

use super::sense::{asc, key};
use super::{be16, be32, be64, clip, Done, Lun, Task};
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex};

pub const REGISTRATIONS_MAX: usize = 128;

/// Reservation types (SPC-4 Table 212).
pub mod kind {
    pub const WRITE_EXCLUSIVE: u8 = 1;
    pub const EXCLUSIVE_ACCESS: u8 = 3;
    pub const WRITE_EXCLUSIVE_REGISTRANTS_ONLY: u8 = 5;
    pub const EXCLUSIVE_ACCESS_REGISTRANTS_ONLY: u8 = 6;
    pub const WRITE_EXCLUSIVE_ALL_REGISTRANTS: u8 = 7;
    pub const EXCLUSIVE_ACCESS_ALL_REGISTRANTS: u8 = 8;
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrState {
    pub generation: u32,
    /// I_T nexus key → reservation key.
    pub registrations: Vec<(String, u64)>,
    /// Holder nexus (any registrant for the all-registrants types) and type.
    pub reservation: Option<(String, u8)>,
    /// Unit attentions for every path (every target process delivers
    /// those of its own nexuses): the last `EVENTS_KEPT`, numbered.
    #[serde(default)]
    pub events: Vec<LuEvent>,
    #[serde(default)]
    pub event_seq: u64,
}

/// Events kept in the record: a target process more than this many
/// behind (it was away for long) misses the oldest, as an initiator
/// logging in later would.
pub const EVENTS_KEPT: usize = 64;

/// A unit attention every target process delivers to its nexuses: to
/// `to` only, or to every nexus but `except`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LuEvent {
    pub seq: u64,
    pub to: Option<String>,
    pub except: Option<String>,
    pub code: (u8, u8),
}

impl PrState {
    /// Records a unit attention for every path.
    pub fn announce(&mut self, to: Option<String>, except: Option<String>, code: asc::Code) {
        self.event_seq += 1;
        self.events.push(LuEvent {
            seq: self.event_seq,
            to,
            except,
            code,
        });
        let extra = self.events.len().saturating_sub(EVENTS_KEPT);
        self.events.drain(..extra);
    }
}

impl PrState {
    fn key_of(&self, nexus: &str) -> Option<u64> {
        self.registrations
            .iter()
            .find(|(n, _)| n == nexus)
            .map(|(_, k)| *k)
    }
    fn all_registrants(&self) -> bool {
        matches!(
            self.reservation,
            Some((
                _,
                kind::WRITE_EXCLUSIVE_ALL_REGISTRANTS | kind::EXCLUSIVE_ACCESS_ALL_REGISTRANTS
            ))
        )
    }
    /// Whether `nexus` holds the reservation.
    fn holds(&self, nexus: &str) -> bool {
        match &self.reservation {
            None => false,
            Some(_) if self.all_registrants() => self.key_of(nexus).is_some(),
            Some((h, _)) => h == nexus,
        }
    }
}

/// Where a LU's persistent reservation state lives and its cached copy.
pub struct Reservations {
    meta: Option<Arc<sparefs_client::MetaClient>>,
    key: Vec<u8>,
    cache: Mutex<PrState>,
    /// Serialises this process's changes (the meta's compare-and-set
    /// serialises them with other processes').
    changing: tokio::sync::Mutex<()>,
    /// The last event delivered here; `None` until the first read (a
    /// process starting does not replay old events).
    delivered: Mutex<Option<u64>>,
}

impl Reservations {
    /// Kept in the meta under `iscsi/state/pr/<naa>`.
    pub fn in_meta(meta: Arc<sparefs_client::MetaClient>, naa: u64) -> Reservations {
        let mut key = sparefs_proto::namespace::config::ISCSI_STATE.to_vec();
        key.extend_from_slice(format!("pr/{naa:016x}").as_bytes());
        Reservations {
            meta: Some(meta),
            key,
            cache: Mutex::new(PrState::default()),
            changing: tokio::sync::Mutex::new(()),
            delivered: Mutex::new(None),
        }
    }

    /// Kept in this process only (tests over a local file).
    pub fn local() -> Reservations {
        Reservations {
            meta: None,
            key: Vec::new(),
            cache: Mutex::new(PrState::default()),
            changing: tokio::sync::Mutex::new(()),
            delivered: Mutex::new(Some(0)),
        }
    }

    pub fn current(&self) -> PrState {
        self.cache.lock().map(|c| c.clone()).unwrap_or_default()
    }

    /// The events of `state` not delivered here yet; marks them delivered.
    fn undelivered(&self, state: &PrState) -> Vec<LuEvent> {
        let Ok(mut d) = self.delivered.lock() else {
            return Vec::new();
        };
        let out = match *d {
            None => Vec::new(),
            Some(last) => state
                .events
                .iter()
                .filter(|e| e.seq > last)
                .cloned()
                .collect(),
        };
        *d = Some(d.unwrap_or(0).max(state.event_seq));
        out
    }

    /// Reads the state from the meta into the cache.
    pub async fn refresh(&self) -> Result<(PrState, u64), String> {
        let Some(meta) = &self.meta else {
            return Ok((self.current(), 0));
        };
        let (state, version) = match crate::state::get(meta, &self.key).await? {
            Some(e) => (
                serde_json::from_slice(&e.value).map_err(|e| format!("reservation record: {e}"))?,
                e.version,
            ),
            None => (PrState::default(), 0),
        };
        if let Ok(mut c) = self.cache.lock() {
            *c = state.clone();
        }
        // Events from before this process first looked are not replayed.
        if let Ok(mut d) = self.delivered.lock() {
            d.get_or_insert(state.event_seq);
        }
        Ok((state, version))
    }

    /// Applies `change` to the current state and stores it, again from a
    /// fresh read if another process changed it meanwhile.
    async fn change<T>(
        &self,
        mut change: impl FnMut(&mut PrState) -> Result<T, Done>,
    ) -> Result<T, Done> {
        let _one = self.changing.lock().await;
        for _ in 0..8 {
            let (mut state, version) = self.refresh().await.map_err(|e| {
                tracing::warn!("reservations: {e}");
                Done::check(key::NOT_READY, asc::COMMUNICATION_TIMEOUT)
            })?;
            let out = change(&mut state)?;
            let Some(meta) = &self.meta else {
                if let Ok(mut c) = self.cache.lock() {
                    *c = state;
                }
                return Ok(out);
            };
            let value = serde_json::to_vec(&state)
                .map_err(|_| Done::illegal(asc::INTERNAL_TARGET_FAILURE))?;
            match crate::state::put(meta, &self.key, Some(version), Some(value)).await {
                Ok(_) => {
                    if let Ok(mut c) = self.cache.lock() {
                        *c = state;
                    }
                    return Ok(out);
                }
                Err(crate::state::PutError::Stale) => continue,
                Err(e) => {
                    tracing::warn!("reservations: {e}");
                    return Err(Done::check(key::NOT_READY, asc::COMMUNICATION_TIMEOUT));
                }
            }
        }
        Err(Done::check(key::NOT_READY, asc::COMMUNICATION_TIMEOUT))
    }
}

/// How a command fares under a reservation held by another nexus.
#[derive(PartialEq, Eq)]
enum Access {
    /// Never in conflict.
    Always,
    /// Reads the medium: refused under the exclusive-access types.
    Read,
    /// Changes the medium: refused under every type.
    Write,
}

fn access_of(cdb: &[u8]) -> Access {
    match cdb[0] {
        0x12 | 0xa0 | 0x03 | 0x25 | 0x5e | 0x5f | 0xa3 | 0x00 | 0x1e => Access::Always,
        0x9e => Access::Always,
        0x35 | 0x91 | 0x34 | 0x90 => Access::Read,
        0x08 | 0x28 | 0xa8 | 0x88 | 0x2f | 0xaf | 0x8f | 0x1a | 0x5a | 0x37 | 0xb7 => Access::Read,
        _ => Access::Write,
    }
}

impl Lun {
    /// RESERVATION CONFLICT if a reservation another nexus holds forbids
    /// this command.
    pub(super) fn reservation_check(&self, t: &Task<'_>) -> Option<Done> {
        let me = t.nexus.key();
        // SPC-2 reservation: every command of other nexuses but a few.
        if let Ok(h) = self.legacy_holder.lock() {
            if let Some(holder) = h.as_ref() {
                if *holder != me && !matches!(t.cdb[0], 0x12 | 0xa0 | 0x03 | 0x17 | 0x5e | 0xa3) {
                    return Some(Done::conflict());
                }
            }
        }
        let state = self.reservations.current();
        let (_, kind) = state.reservation.as_ref()?;
        if state.holds(&me) {
            return None;
        }
        let registered = state.key_of(&me).is_some();
        let access = access_of(t.cdb);
        let refused = match (*kind, access) {
            (_, Access::Always) => false,
            (kind::WRITE_EXCLUSIVE, a) => a == Access::Write,
            (kind::EXCLUSIVE_ACCESS, _) => true,
            (kind::WRITE_EXCLUSIVE_REGISTRANTS_ONLY | kind::WRITE_EXCLUSIVE_ALL_REGISTRANTS, a) => {
                !registered && a == Access::Write
            }
            (
                kind::EXCLUSIVE_ACCESS_REGISTRANTS_ONLY | kind::EXCLUSIVE_ACCESS_ALL_REGISTRANTS,
                _,
            ) => !registered,
            _ => false,
        };
        refused.then(Done::conflict)
    }
}

pub fn reserve6(lun: &Lun, t: &Task<'_>) -> Done {
    if !lun.reservations.current().registrations.is_empty() {
        return Done::conflict();
    }
    let me = t.nexus.key();
    match lun.legacy_holder.lock() {
        Ok(mut h) => match h.as_ref() {
            Some(holder) if *holder != me => Done::conflict(),
            _ => {
                *h = Some(me);
                Done::good()
            }
        },
        Err(_) => Done::illegal(asc::INTERNAL_TARGET_FAILURE),
    }
}

pub fn release6(lun: &Lun, t: &Task<'_>) -> Done {
    let me = t.nexus.key();
    if let Ok(mut h) = lun.legacy_holder.lock() {
        if h.as_deref() == Some(&me) {
            *h = None;
        }
    }
    Done::good()
}

pub async fn persistent_reserve_in(lun: &Lun, t: &Task<'_>) -> Done {
    if t.cdb.len() < 10 {
        return Done::invalid_cdb();
    }
    let sa = t.cdb[1] & 0x1f;
    let alloc = be16(t.cdb, 7);
    let state = match lun.reservations.refresh().await {
        Ok((s, _)) => s,
        Err(e) => {
            tracing::warn!("reservations: {e}");
            return Done::check(key::NOT_READY, asc::COMMUNICATION_TIMEOUT);
        }
    };
    let mut d = state.generation.to_be_bytes().to_vec();
    match sa {
        0 => {
            d.extend_from_slice(&((state.registrations.len() * 8) as u32).to_be_bytes());
            for (_, k) in &state.registrations {
                d.extend_from_slice(&k.to_be_bytes());
            }
        }
        1 => match &state.reservation {
            None => d.extend_from_slice(&0u32.to_be_bytes()),
            Some((holder, kind)) => {
                d.extend_from_slice(&16u32.to_be_bytes());
                let k = if state.all_registrants() {
                    0
                } else {
                    state.key_of(holder).unwrap_or(0)
                };
                d.extend_from_slice(&k.to_be_bytes());
                d.extend_from_slice(&[0, 0, 0, 0, 0, *kind & 0x0f, 0, 0]);
            }
        },
        2 => {
            d = vec![0, 8, 0x01 | 0x10, 0x80 | 0x01, 0xea, 0x01, 0, 0];
            // CRH, PTPL_C; TMV, PTPL_A; every type but the obsolete ones.
            d[2] = 0x10 | 0x01;
            d[3] = 0x80 | 0x01;
        }
        3 => {
            let mut body = Vec::new();
            for (n, k) in &state.registrations {
                let mut e = vec![0u8; 24];
                e[0..8].copy_from_slice(&k.to_be_bytes());
                if let Some((h, kind)) = &state.reservation {
                    if h == n || state.all_registrants() {
                        e[12] = 0x01; // R_HOLDER
                        e[13] = *kind & 0x0f;
                    }
                }
                let initiator = n.split('|').next().unwrap_or("");
                let mut tid = vec![0x40u8 | 0x05, 0, 0, 0]; // iSCSI, format 01b
                let mut name = initiator.as_bytes().to_vec();
                name.push(0);
                while !name.len().is_multiple_of(4) {
                    name.push(0);
                }
                tid[2..4].copy_from_slice(&(name.len() as u16).to_be_bytes());
                tid.extend(name);
                e[20..24].copy_from_slice(&(tid.len() as u32).to_be_bytes());
                e.extend(tid);
                body.extend(e);
            }
            d.extend_from_slice(&(body.len() as u32).to_be_bytes());
            d.extend(body);
        }
        _ => return Done::invalid_cdb(),
    }
    Done::data(clip(d, alloc))
}

pub async fn persistent_reserve_out(lun: &Lun, t: &Task<'_>) -> Done {
    if t.cdb.len() < 10 {
        return Done::invalid_cdb();
    }
    let len = be32(t.cdb, 5) as usize;
    let mut done = reserve_out(lun, t, len).await;
    done.wanted_out = len as u32;
    done
}

async fn reserve_out(lun: &Lun, t: &Task<'_>, len: usize) -> Done {
    let sa = t.cdb[1] & 0x1f;
    let scope = t.cdb[2] >> 4;
    let kind = t.cdb[2] & 0x0f;
    if sa >= 7 {
        // REGISTER AND MOVE is not supported.
        return Done::invalid_cdb();
    }
    if len != 24 {
        return Done::illegal(asc::PARAMETER_LIST_LENGTH_ERROR);
    }
    if t.data_out.len() < 24 {
        return Done::illegal(asc::PARAMETER_LIST_LENGTH_ERROR);
    }
    let p = &t.data_out[..24];
    let rkey = be64(p, 0);
    let sakey = be64(p, 8);
    let flags = p[20];
    if flags & 0x0c != 0 {
        // SPEC_I_PT, ALL_TG_PT: not supported.
        return Done::illegal(asc::INVALID_FIELD_IN_PARAMETER_LIST);
    }
    let valid_kind = matches!(kind, 1 | 3 | 5 | 6 | 7 | 8);
    if matches!(sa, 1 | 2 | 4 | 5) && (scope != 0 || !valid_kind) {
        return Done::invalid_cdb();
    }
    let me = t.nexus.key();
    // The unit attentions it causes travel with the change, to every path.
    let r = lun
        .reservations
        .change(|s| {
            let notices = apply_out(s, &me, sa, kind, rkey, sakey)?;
            for (nexus, code) in notices {
                match nexus {
                    Some(n) => s.announce(Some(n), None, code),
                    None => s.announce(None, Some(me.clone()), code),
                }
            }
            Ok(())
        })
        .await;
    match r {
        Ok(()) => {
            lun.deliver_events();
            Done::good()
        }
        Err(d) => d,
    }
}

impl Lun {
    /// Queues the unit attentions other paths (or this one) recorded.
    pub fn deliver_events(&self) {
        let state = self.reservations.current();
        for e in self.reservations.undelivered(&state) {
            match (&e.to, &e.except) {
                (Some(n), _) => self.attention_for(n, e.code),
                (None, except) => self.attention_others_key(except.as_deref(), e.code),
            }
        }
    }

    /// Reads the reservation state again and delivers its new events.
    pub async fn refresh_reservations(&self) -> Result<(), String> {
        self.reservations.refresh().await?;
        self.deliver_events();
        Ok(())
    }

    /// Records a unit attention for every nexus but `except` (`None`:
    /// every one), on every path, and delivers this process's share.
    pub async fn announce(&self, except: Option<&super::Nexus>, code: asc::Code) {
        let key = except.map(|n| n.key());
        let r = self
            .reservations
            .change(|s| {
                s.announce(None, key.clone(), code);
                Ok(())
            })
            .await;
        if r.is_err() {
            // The meta is away: at least the paths of this process hear it.
            self.attention_others(except, code);
        }
        self.deliver_events();
    }
}

type Notices = Vec<(Option<String>, asc::Code)>;

/// One PERSISTENT RESERVE OUT on the state (SPC-4 §5.13); the unit
/// attentions it causes (`None`: every other nexus).
fn apply_out(
    s: &mut PrState,
    me: &str,
    sa: u8,
    kind: u8,
    rkey: u64,
    sakey: u64,
) -> Result<Notices, Done> {
    let mine = s.key_of(me);
    let mut notices = Vec::new();
    match sa {
        // REGISTER, REGISTER AND IGNORE EXISTING KEY
        0 | 6 => {
            if sa == 0 && mine.unwrap_or(0) != rkey {
                return Err(Done::conflict());
            }
            if sakey == 0 {
                if mine.is_some() {
                    unregister(s, me, &mut notices);
                    s.generation = s.generation.wrapping_add(1);
                }
            } else {
                match s.registrations.iter_mut().find(|(n, _)| n == me) {
                    Some(r) => r.1 = sakey,
                    None => {
                        if s.registrations.len() >= REGISTRATIONS_MAX {
                            return Err(Done::illegal(asc::INSUFFICIENT_REGISTRATION_RESOURCES));
                        }
                        s.registrations.push((me.to_string(), sakey));
                    }
                }
                s.generation = s.generation.wrapping_add(1);
            }
        }
        // RESERVE
        1 => {
            if mine != Some(rkey) {
                return Err(Done::conflict());
            }
            match &s.reservation {
                None => s.reservation = Some((me.to_string(), kind)),
                Some((_, k)) if s.holds(me) && *k == kind => {}
                Some(_) => return Err(Done::conflict()),
            }
        }
        // RELEASE
        2 => {
            if mine != Some(rkey) {
                return Err(Done::conflict());
            }
            if let Some((_, k)) = s.reservation.clone() {
                if s.holds(me) {
                    if k != kind {
                        return Err(Done::illegal(asc::INVALID_RELEASE_OF_PR));
                    }
                    s.reservation = None;
                    if !matches!(k, kind::WRITE_EXCLUSIVE | kind::EXCLUSIVE_ACCESS) {
                        for (n, _) in s.registrations.iter().filter(|(n, _)| n != me) {
                            notices.push((Some(n.clone()), asc::RESERVATIONS_RELEASED));
                        }
                    }
                }
            }
        }
        // CLEAR
        3 => {
            if mine != Some(rkey) {
                return Err(Done::conflict());
            }
            for (n, _) in s.registrations.iter().filter(|(n, _)| n != me) {
                notices.push((Some(n.clone()), asc::RESERVATIONS_PREEMPTED));
            }
            s.registrations.clear();
            s.reservation = None;
            s.generation = s.generation.wrapping_add(1);
        }
        // PREEMPT, PREEMPT AND ABORT
        4 | 5 => {
            if mine != Some(rkey) {
                return Err(Done::conflict());
            }
            let holder_key = match &s.reservation {
                Some((h, _)) if !s.all_registrants() => s.key_of(h),
                _ => None,
            };
            if sakey == 0 {
                if !s.all_registrants() {
                    return Err(Done::illegal(asc::INVALID_FIELD_IN_PARAMETER_LIST));
                }
                // Everyone else goes; the reservation becomes the caller's.
                for (n, _) in s.registrations.iter().filter(|(n, _)| n != me) {
                    notices.push((Some(n.clone()), asc::REGISTRATIONS_PREEMPTED));
                }
                s.registrations.retain(|(n, _)| n == me);
                s.reservation = Some((me.to_string(), kind));
            } else {
                let victims: Vec<String> = s
                    .registrations
                    .iter()
                    .filter(|(_, k)| *k == sakey)
                    .map(|(n, _)| n.clone())
                    .collect();
                if victims.is_empty() {
                    return Err(Done::conflict());
                }
                for v in victims.iter().filter(|v| v.as_str() != me) {
                    notices.push((Some(v.clone()), asc::REGISTRATIONS_PREEMPTED));
                }
                s.registrations.retain(|(n, k)| *k != sakey || n == me);
                if holder_key == Some(sakey) || (s.all_registrants() && s.registrations.len() <= 1)
                {
                    s.reservation = Some((me.to_string(), kind));
                }
            }
            s.generation = s.generation.wrapping_add(1);
        }
        _ => return Err(Done::invalid_cdb()),
    }
    Ok(notices)
}

/// Removes `me`'s registration; a reservation it held goes with it
/// (for the all-registrants types, with the last registrant).
fn unregister(s: &mut PrState, me: &str, notices: &mut Notices) {
    let held = s.holds(me);
    let all = s.all_registrants();
    s.registrations.retain(|(n, _)| n != me);
    if held && (!all || s.registrations.is_empty()) {
        if let Some((_, k)) = s.reservation.take() {
            if matches!(
                k,
                kind::WRITE_EXCLUSIVE_REGISTRANTS_ONLY | kind::EXCLUSIVE_ACCESS_REGISTRANTS_ONLY
            ) {
                for (n, _) in &s.registrations {
                    notices.push((Some(n.clone()), asc::RESERVATIONS_RELEASED));
                }
            }
        }
    }
}

/// Registration and reservation rules, as a pure function of the state.
#[cfg(test)]
mod tests {
    use super::*;

    fn out(s: &mut PrState, me: &str, sa: u8, kind: u8, rkey: u64, sakey: u64) -> bool {
        apply_out(s, me, sa, kind, rkey, sakey).is_ok()
    }

    #[test]
    fn register_reserve_preempt() {
        let mut s = PrState::default();
        assert!(out(&mut s, "a", 0, 0, 0, 1));
        assert!(out(&mut s, "b", 0, 0, 0, 2));
        assert!(!out(&mut s, "b", 0, 0, 5, 3), "wrong key");
        assert!(out(&mut s, "a", 1, kind::WRITE_EXCLUSIVE, 1, 0));
        assert!(
            !out(&mut s, "b", 1, kind::WRITE_EXCLUSIVE, 2, 0),
            "held by a"
        );
        assert!(s.holds("a") && !s.holds("b"));
        // b preempts a: a's registration and reservation go.
        assert!(out(&mut s, "b", 4, kind::EXCLUSIVE_ACCESS, 2, 1));
        assert!(s.holds("b"));
        assert_eq!(s.key_of("a"), None);
        let g = s.generation;
        // Releasing with the wrong type is refused.
        assert!(!out(&mut s, "b", 2, kind::WRITE_EXCLUSIVE, 2, 0));
        assert!(out(&mut s, "b", 2, kind::EXCLUSIVE_ACCESS, 2, 0));
        assert_eq!(s.reservation, None);
        assert_eq!(s.generation, g, "release does not bump the generation");
        assert!(out(&mut s, "b", 3, 0, 2, 0));
        assert!(s.registrations.is_empty());
    }

    #[test]
    fn unregistering_holder_releases() {
        let mut s = PrState::default();
        assert!(out(&mut s, "a", 6, 0, 0, 9));
        assert!(out(
            &mut s,
            "a",
            1,
            kind::EXCLUSIVE_ACCESS_REGISTRANTS_ONLY,
            9,
            0
        ));
        assert!(out(&mut s, "a", 0, 0, 9, 0));
        assert_eq!(s.reservation, None);
    }

    #[test]
    fn all_registrants_hold_together() {
        let mut s = PrState::default();
        assert!(out(&mut s, "a", 0, 0, 0, 1));
        assert!(out(&mut s, "b", 0, 0, 0, 2));
        assert!(out(
            &mut s,
            "a",
            1,
            kind::WRITE_EXCLUSIVE_ALL_REGISTRANTS,
            1,
            0
        ));
        assert!(s.holds("b"));
        assert!(out(&mut s, "a", 0, 0, 1, 0));
        assert!(s.reservation.is_some(), "b still holds it");
        assert!(out(&mut s, "b", 0, 0, 2, 0));
        assert!(s.reservation.is_none());
    }
}
