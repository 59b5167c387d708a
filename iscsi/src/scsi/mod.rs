//! The SCSI device model (SPC-4, SBC-3) of one logical unit: CDB decoding,
//! the command set, unit attentions and reservations. It knows nothing of
//! iSCSI: a task arrives with its CDB, the I_T nexus that sent it and the
//! data the initiator sent, and leaves with a status, sense data and the
//! data to return.

pub mod block;
pub mod info;
pub mod pr;
pub mod sense;

use crate::backend::{Backend, BackendError};
use crate::exports::LunRec;
use sense::{asc, key};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

pub const BLOCK_BYTES: u32 = 512;

/// Asymmetric access states (SPC-4 §5.15.2.4) this target uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum AccessState {
    ActiveOptimized,
    Standby,
    Transitioning,
}

impl AccessState {
    /// The code REPORT TARGET PORT GROUPS gives it.
    pub fn code(self) -> u8 {
        match self {
            AccessState::ActiveOptimized => 0x0,
            AccessState::Standby => 0x2,
            AccessState::Transitioning => 0xf,
        }
    }
}

/// The target port groups of a LU as this process presents them: its own
/// (one port per process: relative port = group) and every other target
/// process serving the LU, each with its state. The same layout on every
/// path; only `mine` differs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortGroups {
    pub mine: u16,
    /// Until when this process may serve I/O (its fence lease); `None`:
    /// not active.
    pub active_until: Option<std::time::Instant>,
    /// (group, state), sorted by group; includes `mine`.
    pub groups: Vec<(u16, AccessState)>,
}

impl PortGroups {
    /// One process, always active: a target without a meta (tests, a
    /// local file).
    pub fn alone(mine: u16) -> PortGroups {
        PortGroups {
            mine,
            active_until: None,
            groups: vec![(mine, AccessState::ActiveOptimized)],
        }
    }

    /// This port's state now: an active one whose lease ran out is in
    /// transition until the lease is renewed or lost.
    pub fn state(&self) -> AccessState {
        let mine = self
            .groups
            .iter()
            .find(|(g, _)| *g == self.mine)
            .map_or(AccessState::Standby, |(_, s)| *s);
        match (mine, self.active_until) {
            (AccessState::ActiveOptimized, Some(t)) if t <= std::time::Instant::now() => {
                AccessState::Transitioning
            }
            (s, _) => s,
        }
    }
}

/// A command's kind, for metrics.
fn command_kind(opcode: u8) -> &'static str {
    match opcode {
        0x08 | 0x28 | 0x88 | 0xa8 => "read",
        0x0a | 0x2a | 0x8a | 0xaa | 0x2e | 0x8e => "write",
        0x35 | 0x91 => "sync",
        0x42 => "unmap",
        0x41 | 0x93 => "write_same",
        0x89 => "compare_and_write",
        0x5e | 0x5f => "reservation",
        _ => "other",
    }
}

/// Commands a port in standby or transition still answers (SPC-4
/// §5.15.2.4.4 and .5: inquiry, reports, sense, mode and reservations),
/// and the capacity, so a multipath initiator can set up every path.
fn allowed_when_standby(cdb: &[u8]) -> bool {
    match cdb[0] {
        0x12 | 0xa0 | 0x03 | 0x1a | 0x5a | 0x15 | 0x55 | 0x5e | 0x5f | 0x25 | 0x4c | 0x4d => true,
        0x9e => cdb.len() >= 2 && cdb[1] & 0x1f == 0x10,
        0xa3 => cdb.len() >= 2 && matches!(cdb[1] & 0x1f, 0x0a | 0x0c),
        _ => false,
    }
}

/// The initiator port and target port a command came through (SPC-4
/// I_T nexus), as a string: reservations and unit attentions key on it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Nexus {
    /// `<initiator name>,i,0x<ISID>`
    pub initiator_port: String,
    /// `<target name>,t,0x<TPGT>`
    pub target_port: String,
}

impl Nexus {
    pub fn new(initiator: &str, isid: [u8; 6], target: &str, tpgt: u16) -> Nexus {
        let isid: String = isid.iter().map(|b| format!("{b:02x}")).collect();
        Nexus {
            initiator_port: format!("{initiator},i,0x{isid}"),
            target_port: format!("{target},t,0x{tpgt:04x}"),
        }
    }
    pub fn key(&self) -> String {
        format!("{}|{}", self.initiator_port, self.target_port)
    }
}

/// One command for the device.
pub struct Task<'a> {
    pub cdb: &'a [u8],
    pub nexus: &'a Nexus,
    /// The bytes the initiator sent (at most its expected transfer length).
    pub data_out: Vec<u8>,
    /// How much the initiator will accept back.
    pub expected_in: u32,
    /// Every LUN of the target (REPORT LUNS).
    pub luns: &'a [u64],
}

/// A command's outcome.
#[derive(Debug, Default)]
pub struct Done {
    pub status: u8,
    pub sense: Vec<u8>,
    pub data_in: Vec<u8>,
    /// The bytes the CDB asked the initiator to send (for the residual).
    pub wanted_out: u32,
}

impl Done {
    pub fn good() -> Done {
        Done::default()
    }
    pub fn data(data: Vec<u8>) -> Done {
        Done {
            data_in: data,
            ..Done::default()
        }
    }
    pub fn check(k: u8, code: asc::Code) -> Done {
        Done {
            status: sense::CHECK_CONDITION,
            sense: sense::fixed(k, code),
            ..Done::default()
        }
    }
    pub fn illegal(code: asc::Code) -> Done {
        Done::check(key::ILLEGAL_REQUEST, code)
    }
    pub fn invalid_cdb() -> Done {
        Done::illegal(asc::INVALID_FIELD_IN_CDB)
    }
    pub fn conflict() -> Done {
        Done {
            status: sense::RESERVATION_CONFLICT,
            ..Done::default()
        }
    }
    pub fn from_backend(e: BackendError, writing: bool) -> Done {
        tracing::warn!("backend: {e}");
        match e {
            BackendError::NoSpace => Done::check(key::DATA_PROTECT, asc::SPACE_ALLOCATION_FAILED),
            BackendError::Fenced => Done::check(key::NOT_READY, asc::ALUA_TRANSITION),
            BackendError::Unavailable(_) => Done::check(key::NOT_READY, asc::COMMUNICATION_TIMEOUT),
            BackendError::Io(_) if writing => Done::check(key::MEDIUM_ERROR, asc::WRITE_ERROR),
            BackendError::Io(_) => Done::check(key::MEDIUM_ERROR, asc::UNRECOVERED_READ_ERROR),
        }
    }
}

/// One logical unit: its image, identity and the state SCSI keeps for it.
pub struct Lun {
    pub id: u64,
    pub rec: LunRec,
    pub backend: Arc<dyn Backend>,
    /// Held shared by writes, exclusively by COMPARE AND WRITE (atomic
    /// with respect to every other write of the LUN).
    pub atomic: tokio::sync::RwLock<()>,
    pub reservations: pr::Reservations,
    attentions: Mutex<HashMap<String, VecDeque<asc::Code>>>,
    /// SPC-2 RESERVE(6) holder (kept by this process; lost with it).
    pub legacy_holder: Mutex<Option<String>>,
    /// Write cache enable as MODE SELECT left it (reported; writes are
    /// buffered either way and SYNCHRONIZE CACHE makes them durable).
    pub wce: std::sync::atomic::AtomicBool,
    /// ALUA: this port's state and the others' (`failover` sets it).
    ports: Mutex<PortGroups>,
}

impl Lun {
    pub fn new(
        id: u64,
        rec: LunRec,
        backend: Arc<dyn Backend>,
        reservations: pr::Reservations,
    ) -> Lun {
        Lun {
            id,
            rec,
            backend,
            atomic: tokio::sync::RwLock::new(()),
            reservations,
            attentions: Mutex::new(HashMap::new()),
            legacy_holder: Mutex::new(None),
            wce: std::sync::atomic::AtomicBool::new(true),
            ports: Mutex::new(PortGroups::alone(1)),
        }
    }

    pub fn ports(&self) -> PortGroups {
        self.ports
            .lock()
            .map(|p| p.clone())
            .unwrap_or_else(|_| PortGroups::alone(1))
    }

    /// This port's state now (read on every command: no copy of the layout).
    pub fn access_state(&self) -> AccessState {
        self.ports
            .lock()
            .map(|p| p.state())
            .unwrap_or(AccessState::Transitioning)
    }

    /// Sets the port groups; a change of the active group or of this
    /// port's state is announced to its nexuses (ASYMMETRIC ACCESS STATE
    /// CHANGED).
    pub fn set_ports(&self, next: PortGroups) {
        // Only a change of state is announced: which group is active, or
        // this port's own state; a standby group coming or going is not
        // (initiators would otherwise hear of every heartbeat hiccup).
        let key = |p: &PortGroups| {
            let active = p
                .groups
                .iter()
                .find(|(_, s)| *s == AccessState::ActiveOptimized)
                .map(|(g, _)| *g);
            let mine = p.groups.iter().find(|(g, _)| *g == p.mine).map(|(_, s)| *s);
            (active, mine)
        };
        let changed = match self.ports.lock() {
            Ok(mut p) => {
                let changed = key(&p) != key(&next);
                *p = next;
                changed
            }
            Err(_) => false,
        };
        if changed {
            self.attention_others(None, asc::ALUA_STATE_CHANGED);
        }
    }

    pub fn blocks(&self) -> u64 {
        self.backend.size() / BLOCK_BYTES as u64
    }

    /// A nexus that appeared (a login): it first hears of the reset.
    pub fn nexus_arrived(&self, n: &Nexus) {
        if let Ok(mut ua) = self.attentions.lock() {
            ua.insert(n.key(), VecDeque::from([asc::POWER_ON_RESET]));
        }
    }

    /// A nexus that went away: its SPC-2 reservation goes with it.
    pub fn nexus_gone(&self, n: &Nexus) {
        if let Ok(mut ua) = self.attentions.lock() {
            ua.remove(&n.key());
        }
        if let Ok(mut h) = self.legacy_holder.lock() {
            if h.as_deref() == Some(&n.key()) {
                *h = None;
            }
        }
    }

    /// Queues a unit attention for every nexus but `except`.
    pub fn attention_others(&self, except: Option<&Nexus>, code: asc::Code) {
        let skip = except.map(|n| n.key());
        self.attention_others_key(skip.as_deref(), code);
    }

    /// `attention_others` by nexus key.
    pub fn attention_others_key(&self, skip: Option<&str>, code: asc::Code) {
        if let Ok(mut ua) = self.attentions.lock() {
            for (k, q) in ua.iter_mut() {
                if Some(k.as_str()) != skip && q.len() < 16 && !q.contains(&code) {
                    q.push_back(code);
                }
            }
        }
    }

    pub fn attention_for(&self, nexus_key: &str, code: asc::Code) {
        if let Ok(mut ua) = self.attentions.lock() {
            if let Some(q) = ua.get_mut(nexus_key) {
                if q.len() < 16 && !q.contains(&code) {
                    q.push_back(code);
                }
            }
        }
    }

    fn take_attention(&self, n: &Nexus) -> Option<asc::Code> {
        self.attentions.lock().ok()?.get_mut(&n.key())?.pop_front()
    }

    /// LUN RESET: the SPC-2 reservation is cleared and every nexus, on
    /// every path, the one that asked included, hears of it (SAM-5 §6.6;
    /// libiscsi's MultipathIO.Reset checks every path).
    pub async fn reset(&self, _by: &Nexus) {
        if let Ok(mut h) = self.legacy_holder.lock() {
            *h = None;
        }
        self.announce(None, asc::BUS_DEVICE_RESET).await;
    }

    /// Notices a resize made elsewhere: initiators hear CAPACITY DATA HAS
    /// CHANGED (SBC-3 §4.9) and the new size serves from now on.
    pub async fn follow_size(&self, meta: &sparefs_client::MetaClient) {
        let Some(ino) = self.backend.ino() else {
            return;
        };
        let Ok(a) = meta.getattr(sparefs_proto::InodeId(ino)).await else {
            return;
        };
        if a.size != self.backend.size() {
            tracing::info!(
                "LUN {}: {} resized to {} bytes",
                self.id,
                self.rec.path,
                a.size
            );
            self.backend.resized(a.size).await;
            self.attention_others(None, asc::CAPACITY_CHANGED);
        }
    }

    /// Runs one command, timed in the process's metrics by kind.
    pub async fn execute(&self, t: Task<'_>) -> Done {
        let kind = command_kind(t.cdb[0]);
        let started = std::time::Instant::now();
        let done = self.execute_untimed(t).await;
        metrics::histogram!("sparefs_iscsi_command_seconds", "op" => kind)
            .record(started.elapsed().as_secs_f64());
        if done.status != 0 {
            metrics::counter!("sparefs_iscsi_command_failures_total", "op" => kind).increment(1);
        }
        done
    }

    async fn execute_untimed(&self, t: Task<'_>) -> Done {
        let op = t.cdb[0];
        // Unit attentions are reported by the first command of the nexus
        // that is not one of these (SPC-4 §5.14).
        if !matches!(op, 0x12 | 0xa0 | 0x03) {
            if let Some(code) = self.take_attention(t.nexus) {
                return Done::check(key::UNIT_ATTENTION, code);
            }
        }
        if !allowed_when_standby(t.cdb) {
            match self.access_state() {
                AccessState::ActiveOptimized => {}
                AccessState::Standby => return Done::check(key::NOT_READY, asc::ALUA_STANDBY),
                AccessState::Transitioning => {
                    return Done::check(key::NOT_READY, asc::ALUA_TRANSITION)
                }
            }
        }
        if let Some(d) = self.reservation_check(&t) {
            return d;
        }
        match op {
            0x00 => Done::good(),
            0x03 => info::request_sense(&t),
            0x12 => info::inquiry(self, &t),
            0x15 | 0x55 => info::mode_select(self, &t),
            0x1a | 0x5a => info::mode_sense(self, &t),
            0x16 => pr::reserve6(self, &t),
            0x17 => pr::release6(self, &t),
            0x1b => info::start_stop(&t),
            0x1e => info::prevent_allow(&t),
            0x25 => info::read_capacity10(self, &t),
            0x9e if t.cdb.len() >= 16 && t.cdb[1] & 0x1f == 0x10 => info::read_capacity16(self, &t),
            0x9e if t.cdb.len() >= 16 && t.cdb[1] & 0x1f == 0x12 => {
                block::get_lba_status(self, &t).await
            }
            0xa0 => info::report_luns(&t, t.luns),
            0xa3 if t.cdb[1] & 0x1f == 0x0c => info::report_opcodes(&t),
            0xa3 if t.cdb[1] & 0x1f == 0x0a => info::report_target_port_groups(self, &t),
            0x37 | 0xb7 => info::read_defect_data(&t),
            0x5e => pr::persistent_reserve_in(self, &t).await,
            0x5f => pr::persistent_reserve_out(self, &t).await,
            0x08 | 0x28 | 0xa8 | 0x88 => block::read(self, &t).await,
            0x0a | 0x2a | 0xaa | 0x8a => block::write(self, t).await,
            0x2e | 0xae | 0x8e => block::write(self, t).await,
            0x2f | 0xaf | 0x8f => block::verify(self, &t).await,
            0x89 => block::compare_and_write(self, t).await,
            0x8b => block::orwrite(self, t).await,
            0x34 | 0x90 => block::prefetch(self, &t),
            0x35 | 0x91 => block::synchronize_cache(self, &t).await,
            0x41 | 0x93 => block::write_same(self, t).await,
            0x42 => block::unmap(self, t).await,
            _ => Done::illegal(asc::INVALID_OPCODE),
        }
    }
}

/// Big-endian field readers over a CDB whose length the caller checked.
pub fn be16(b: &[u8], at: usize) -> u32 {
    u16::from_be_bytes([b[at], b[at + 1]]) as u32
}
pub fn be24(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([0, b[at], b[at + 1], b[at + 2]])
}
pub fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
pub fn be64(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(x)
}

/// The length a CDB of this opcode has (SAM-5 group codes).
pub fn cdb_len(opcode: u8) -> usize {
    match opcode >> 5 {
        0 => 6,
        1 | 2 => 10,
        4 => 16,
        5 => 12,
        _ => 16,
    }
}

/// Data an answer may return: at most the CDB's allocation length.
pub fn clip(mut data: Vec<u8>, alloc: u32) -> Vec<u8> {
    data.truncate(alloc as usize);
    data
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::FileBackend;
    use proptest::prelude::*;

    fn lun(dir: &std::path::Path) -> Lun {
        let b = FileBackend::create(&dir.join("lun.img"), 1 << 20).expect("backing file");
        let rec = LunRec {
            path: "/t.img".into(),
            ino: 0,
            read_only: false,
            naa: 0x3000_0000_0000_0001,
        };
        Lun::new(1, rec, Arc::new(b), pr::Reservations::local())
    }

    fn nexus(n: u8) -> Nexus {
        Nexus::new("iqn.i", [n; 6], "iqn.t", 1)
    }

    fn run(l: &Lun, who: &Nexus, cdb: &[u8], data: Vec<u8>) -> Done {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("rt");
        rt.block_on(l.execute(Task {
            cdb,
            nexus: who,
            data_out: data,
            expected_in: 1 << 20,
            luns: &[1],
        }))
    }

    fn write16(lba: u64, blocks: u32) -> Vec<u8> {
        let mut c = vec![0x8au8; 16];
        c[1] = 0;
        c[2..10].copy_from_slice(&lba.to_be_bytes());
        c[10..14].copy_from_slice(&blocks.to_be_bytes());
        c[14] = 0;
        c[15] = 0;
        c
    }

    #[test]
    fn write_read_compare_and_bounds() {
        let dir = tempfile::tempdir().expect("tmp");
        let l = lun(dir.path());
        let me = nexus(1);
        l.nexus_arrived(&me);
        // The first command hears of the reset; INQUIRY does not consume it.
        assert_eq!(
            run(&l, &me, &[0x12, 0, 0, 0, 96, 0], vec![]).status,
            sense::GOOD
        );
        let ua = run(&l, &me, &[0, 0, 0, 0, 0, 0], vec![]);
        assert_eq!(ua.sense[2], key::UNIT_ATTENTION);
        assert_eq!(
            run(&l, &me, &[0, 0, 0, 0, 0, 0], vec![]).status,
            sense::GOOD
        );
        let data = vec![0xabu8; 1024];
        assert_eq!(
            run(&l, &me, &write16(10, 2), data.clone()).status,
            sense::GOOD
        );
        let mut read = write16(10, 2);
        read[0] = 0x88;
        assert_eq!(run(&l, &me, &read, vec![]).data_in, data);
        // Past the end: LBA OUT OF RANGE.
        let beyond = run(&l, &me, &write16(2047, 2), vec![0; 1024]);
        assert_eq!((beyond.sense[12], beyond.sense[13]), asc::LBA_OUT_OF_RANGE);
        // COMPARE AND WRITE: a miscompare changes nothing.
        let mut caw = vec![0u8; 16];
        caw[0] = 0x89;
        caw[2..10].copy_from_slice(&10u64.to_be_bytes());
        caw[13] = 1;
        let mut bad = vec![0u8; 512];
        bad.extend(vec![1u8; 512]);
        assert_eq!(run(&l, &me, &caw, bad).sense[2], key::MISCOMPARE);
        let mut good = vec![0xabu8; 512];
        good.extend(vec![7u8; 512]);
        assert_eq!(run(&l, &me, &caw, good).status, sense::GOOD);
        let mut one = write16(10, 1);
        one[0] = 0x88;
        assert_eq!(run(&l, &me, &one, vec![]).data_in, vec![7u8; 512]);
    }

    #[test]
    fn reservation_holder_writes_others_conflict() {
        let dir = tempfile::tempdir().expect("tmp");
        let l = lun(dir.path());
        let (a, b) = (nexus(1), nexus(2));
        let prout = |sa: u8, kind: u8, key: u64, sakey: u64| {
            let mut c = vec![0x5fu8, sa, kind, 0, 0, 0, 0, 0, 24, 0];
            c[1] = sa;
            let mut p = vec![0u8; 24];
            p[0..8].copy_from_slice(&key.to_be_bytes());
            p[8..16].copy_from_slice(&sakey.to_be_bytes());
            (c, p)
        };
        let (c, p) = prout(0, 0, 0, 0xa);
        assert_eq!(run(&l, &a, &c, p).status, sense::GOOD);
        let (c, p) = prout(1, pr::kind::WRITE_EXCLUSIVE, 0xa, 0);
        assert_eq!(run(&l, &a, &c, p).status, sense::GOOD);
        assert_eq!(
            run(&l, &a, &write16(0, 1), vec![1; 512]).status,
            sense::GOOD
        );
        assert_eq!(
            run(&l, &b, &write16(0, 1), vec![2; 512]).status,
            sense::RESERVATION_CONFLICT
        );
        let mut read = write16(0, 1);
        read[0] = 0x88;
        assert_eq!(
            run(&l, &b, &read, vec![]).data_in,
            vec![1u8; 512],
            "reads pass under WRITE EXCLUSIVE"
        );
    }

    #[test]
    fn a_standby_port_answers_only_the_inquiry_set() {
        let dir = tempfile::tempdir().expect("tmp");
        let l = lun(dir.path());
        let me = nexus(1);
        l.nexus_arrived(&me);
        assert_eq!(
            run(&l, &me, &[0, 0, 0, 0, 0, 0], vec![]).sense[2],
            key::UNIT_ATTENTION
        );
        l.set_ports(PortGroups {
            mine: 2,
            active_until: None,
            groups: vec![(1, AccessState::ActiveOptimized), (2, AccessState::Standby)],
        });
        // The change is announced first.
        let ua = run(&l, &me, &[0, 0, 0, 0, 0, 0], vec![]);
        assert_eq!((ua.sense[12], ua.sense[13]), asc::ALUA_STATE_CHANGED);
        // TEST UNIT READY and I/O: NOT READY, standby.
        let tur = run(&l, &me, &[0, 0, 0, 0, 0, 0], vec![]);
        assert_eq!(tur.sense[2], key::NOT_READY);
        assert_eq!((tur.sense[12], tur.sense[13]), asc::ALUA_STANDBY);
        let mut read = write16(0, 1);
        read[0] = 0x88;
        assert_eq!(run(&l, &me, &read, vec![]).sense[2], key::NOT_READY);
        assert_eq!(
            run(&l, &me, &write16(0, 1), vec![0; 512]).sense[2],
            key::NOT_READY
        );
        // INQUIRY, capacity and the port groups still answer.
        assert_eq!(
            run(&l, &me, &[0x12, 0, 0, 0, 96, 0], vec![]).status,
            sense::GOOD
        );
        let rtpg = run(&l, &me, &[0xa3, 0x0a, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0], vec![]);
        assert_eq!(rtpg.status, sense::GOOD);
        // Two descriptors of 12 bytes: group 1 active/optimized, 2 standby.
        assert_eq!(rtpg.data_in.len(), 4 + 24);
        assert_eq!((rtpg.data_in[4] & 0x0f, rtpg.data_in[7]), (0x0, 1));
        assert_eq!((rtpg.data_in[16] & 0x0f, rtpg.data_in[19]), (0x2, 2));
        // Active again, with a lease that ran out: in transition.
        l.set_ports(PortGroups {
            mine: 2,
            active_until: Some(std::time::Instant::now()),
            groups: vec![(1, AccessState::Standby), (2, AccessState::ActiveOptimized)],
        });
        let _ = run(&l, &me, &[0, 0, 0, 0, 0, 0], vec![]);
        let tur = run(&l, &me, &[0, 0, 0, 0, 0, 0], vec![]);
        assert_eq!((tur.sense[12], tur.sense[13]), asc::ALUA_TRANSITION);
    }

    /// Opcodes the device implements, each with random CDB bytes and random
    /// data: no panic, and every failure carries sense data.
    const OPS: &[u8] = &[
        0x00, 0x03, 0x08, 0x0a, 0x12, 0x15, 0x16, 0x17, 0x1a, 0x1b, 0x1e, 0x25, 0x28, 0x2a, 0x2e,
        0x2f, 0x34, 0x35, 0x37, 0x41, 0x42, 0x55, 0x5a, 0x5e, 0x5f, 0x88, 0x89, 0x8a, 0x8b, 0x8e,
        0x8f, 0x90, 0x91, 0x93, 0x9e, 0xa0, 0xa3, 0xa8, 0xaa, 0xae, 0xaf, 0xb7, 0xff,
    ];

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]
        #[test]
        fn any_cdb_never_panics(op in proptest::sample::select(OPS), rest in proptest::collection::vec(any::<u8>(), 15),
                                len in 6usize..=16, data in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let dir = tempfile::tempdir().expect("tmp");
            let l = lun(dir.path());
            let mut cdb = vec![op];
            cdb.extend_from_slice(&rest);
            cdb.truncate(len.max(cdb_len(op)));
            let d = run(&l, &nexus(1), &cdb, data);
            if d.status == sense::CHECK_CONDITION {
                prop_assert!(d.sense.len() >= 14);
            }
        }
    }
}
