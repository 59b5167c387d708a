//! One connection from login to logout: the login exchange, then the full
//! feature phase: CmdSN window, SCSI commands with their data (immediate,
//! unsolicited and R2T-solicited Data-Out; Data-In split at the
//! initiator's segment size and burst length), task management, text
//! (SendTargets), NOP and logout. One session has one connection
//! (MaxConnections=1), so commands arrive in CmdSN order.

use crate::login::{self, LoggedIn, Login, SessionType, Step};
use crate::params::{Params, CMD_WINDOW, OUR_MAX_RECV_DATA_SEGMENT};
use crate::pdu::{op, read_pdu, reject, Pdu, PduError, ReadLimits, RESERVED_TAG};
use crate::scsi::{self, Done, Lun, Nexus};
use crate::target::{Shared, TargetView};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, Notify};

/// A login must finish within this.
pub const LOGIN_TIMEOUT: Duration = Duration::from_secs(15);
/// Idle this long, the target pings; silent as long again, it hangs up.
pub const NOP_INTERVAL: Duration = Duration::from_secs(30);
/// Data-Out for a command must keep arriving within this.
pub const DATA_OUT_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest expected transfer a command may announce.
pub const TRANSFER_BYTES_MAX: u32 = 32 * 1024 * 1024;
/// Commands running per connection at most: the CmdSN window bounds the
/// others, this bounds immediate ones too (beyond it: TASK SET FULL).
pub const RUNNING_MAX: usize = 2 * CMD_WINDOW as usize;

/// The LUN field of a PDU (SAM-5 single level: peripheral or flat).
pub fn decode_lun(raw: u64) -> u64 {
    let b0 = (raw >> 56) as u8;
    let b1 = (raw >> 48) as u8;
    match b0 >> 6 {
        0 => b1 as u64 | (((b0 & 0x3f) as u64) << 8),
        1 => (((b0 & 0x3f) as u64) << 8) | b1 as u64,
        _ => u64::MAX,
    }
}

pub fn encode_lun(lun: u64) -> u64 {
    if lun < 256 {
        lun << 48
    } else {
        ((0x40 | ((lun >> 8) & 0x3f)) << 56) | ((lun & 0xff) << 48)
    }
}

fn serial_lt(a: u32, b: u32) -> bool {
    a != b && b.wrapping_sub(a) < 0x8000_0000
}

/// What the writer does with a PDU's StatSN field.
enum Stat {
    /// A response with status: takes the next StatSN.
    Next,
    /// Carries the current StatSN without using it (R2T, NOP-In ping).
    Current,
    /// No StatSN (Data-In without status).
    None,
}

/// The sending half of a connection: whoever answers writes, under this
/// lock, in the order StatSN is assigned (no writer task to hop through).
struct Writer {
    wr: Box<dyn AsyncWrite + Unpin + Send>,
    stat_sn: u32,
    closed: bool,
}

/// The CmdSN window of the session.
struct Window {
    exp: AtomicU32,
    inflight: AtomicU32,
    /// The MaxCmdSN last sent: commands are checked against what the
    /// initiator was told, not against a window that has since moved.
    advertised: AtomicU32,
}

impl Window {
    fn max(&self) -> u32 {
        let busy = self.inflight.load(Ordering::Relaxed).min(CMD_WINDOW - 1);
        self.exp
            .load(Ordering::Relaxed)
            .wrapping_add(CMD_WINDOW - 1 - busy)
    }
}

struct Running {
    lun: u64,
    data: Option<mpsc::Sender<Pdu>>,
    aborted: Arc<AtomicBool>,
    finished: Arc<Notify>,
}

/// What the commands of one connection share.
struct Conn {
    shared: Arc<Shared>,
    writer: tokio::sync::Mutex<Writer>,
    params: Params,
    nexus: Nexus,
    view: Option<Arc<TargetView>>,
    window: Window,
    running: Mutex<HashMap<u32, Running>>,
    next_ttt: AtomicU32,
    /// Set when the connection must end (a protocol violation in a
    /// command's data, a target reset).
    kill: Notify,
    killed: AtomicBool,
    local_portal: String,
    initiator: String,
}

impl Conn {
    async fn send(&self, pdu: Pdu, stat: Stat) {
        self.send_all(vec![(pdu, stat)]).await;
    }

    /// Sends PDUs back to back (a read's Data-In), flushed once.
    async fn send_all(&self, pdus: Vec<(Pdu, Stat)>) {
        let mut w = self.writer.lock().await;
        if w.closed {
            return;
        }
        let mut bytes = Vec::new();
        for (mut p, stat) in pdus {
            match stat {
                Stat::Next => {
                    p.set_u32(24, w.stat_sn);
                    w.stat_sn = w.stat_sn.wrapping_add(1);
                }
                Stat::Current => p.set_u32(24, w.stat_sn),
                Stat::None => {}
            }
            p.set_u32(28, self.window.exp.load(Ordering::Relaxed));
            let max = self.window.max();
            self.window.advertised.store(max, Ordering::Relaxed);
            p.set_u32(32, max);
            bytes.extend(p.encode(self.params.header_digest, self.params.data_digest));
        }
        let ok = w.wr.write_all(&bytes).await.is_ok() && w.wr.flush().await.is_ok();
        if !ok {
            w.closed = true;
            drop(w);
            self.die("write failed");
        }
    }

    /// Flushes and closes the sending half (after a logout response).
    async fn close(&self) {
        let mut w = self.writer.lock().await;
        if !w.closed {
            w.closed = true;
            let _ = w.wr.flush().await;
            let _ = w.wr.shutdown().await;
        }
    }

    fn die(&self, why: &str) {
        tracing::info!("{}: closing connection: {why}", self.nexus.initiator_port);
        self.killed.store(true, Ordering::Relaxed);
        self.kill.notify_one();
    }

    fn lun(&self, id: u64) -> Option<Arc<Lun>> {
        self.view.as_ref()?.luns.get(&id).cloned()
    }

    fn lun_ids(&self) -> Vec<u64> {
        self.view
            .as_ref()
            .map(|v| v.luns.keys().copied().collect())
            .unwrap_or_default()
    }
}

/// Serves one accepted connection to its end.
pub async fn serve<S>(shared: Arc<Shared>, stream: S, local_portal: String)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut rd, mut wr) = tokio::io::split(stream);
    let logged =
        match tokio::time::timeout(LOGIN_TIMEOUT, login_phase(&shared, &mut rd, &mut wr)).await {
            Ok(Some(l)) => l,
            Ok(None) => return,
            Err(_) => {
                tracing::debug!("login timed out");
                return;
            }
        };
    full_feature(shared, rd, wr, *logged, local_portal).await;
}

async fn login_phase<R, W>(shared: &Arc<Shared>, rd: &mut R, wr: &mut W) -> Option<Box<LoggedIn>>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut login = Login::new();
    let limits = ReadLimits {
        data_max: 64 * 1024,
        header_digest: false,
        data_digest: false,
    };
    loop {
        let req = match read_pdu(rd, limits).await {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!("login: {e}");
                return None;
            }
        };
        let step = login.step(&req, shared.as_ref(), &mut || shared.new_tsih());
        let (resp, done) = match step {
            Step::Continue(p) => (p, None),
            Step::Fail(p) => {
                let what = if p.bhs[36] == 1 {
                    "redirected"
                } else {
                    "refused"
                };
                tracing::info!(
                    "login {what} for {:?} to {:?}: status {:02x}{:02x}",
                    login.initiator,
                    login.target,
                    p.bhs[36],
                    p.bhs[37]
                );
                let _ = wr.write_all(&p.encode(false, false)).await;
                let _ = wr.flush().await;
                return None;
            }
            Step::Done(p, d) => (p, Some(d)),
        };
        if wr.write_all(&resp.encode(false, false)).await.is_err() {
            return None;
        }
        let _ = wr.flush().await;
        if let Some(d) = done {
            return Some(d);
        }
    }
}

async fn full_feature<R, W>(
    shared: Arc<Shared>,
    rd: R,
    wr: W,
    logged: LoggedIn,
    local_portal: String,
) where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let params = logged.params.clone();
    let target = logged.target.clone().unwrap_or_default();
    let nexus = Nexus::new(&logged.initiator, logged.isid, &target, shared.group());
    let view = if logged.kind == SessionType::Normal {
        shared.view(&target)
    } else {
        None
    };
    if logged.kind == SessionType::Normal && view.is_none() {
        return;
    }
    let conn = Arc::new(Conn {
        shared: shared.clone(),
        writer: tokio::sync::Mutex::new(Writer {
            wr: Box::new(wr),
            stat_sn: logged.exp_stat_sn,
            closed: false,
        }),
        params: params.clone(),
        nexus: nexus.clone(),
        view: view.clone(),
        window: Window {
            exp: AtomicU32::new(logged.cmd_sn),
            inflight: AtomicU32::new(0),
            advertised: AtomicU32::new(logged.cmd_sn.wrapping_add(CMD_WINDOW - 1)),
        },
        running: Mutex::new(HashMap::new()),
        next_ttt: AtomicU32::new(1),
        kill: Notify::new(),
        killed: AtomicBool::new(false),
        local_portal,
        initiator: logged.initiator.clone(),
    });
    let session_key = (logged.initiator.clone(), logged.isid);
    let ended = shared.session_started(
        session_key.clone(),
        logged.tsih,
        &target,
        logged.kind == SessionType::Discovery,
    );
    if let Some(v) = &view {
        for lun in v.luns.values() {
            lun.nexus_arrived(&nexus);
        }
    }
    let limits = ReadLimits {
        data_max: OUR_MAX_RECV_DATA_SEGMENT as usize,
        header_digest: params.header_digest,
        data_digest: params.data_digest,
    };
    // NOP-In pings an initiator silent for NOP_INTERVAL; silent as long
    // again, the connection ends.
    let last_heard = Arc::new(std::sync::Mutex::new(std::time::Instant::now()));
    let pinger = tokio::spawn(ping_when_idle(conn.clone(), last_heard.clone()));
    let mut rd = rd;
    loop {
        // Cancelling a read half done is harmless here: the connection
        // ends either way.
        let next = tokio::select! {
            r = read_pdu(&mut rd, limits) => r,
            _ = conn.kill.notified() => break,
            _ = ended.notified() => {
                tracing::info!("{}: session reinstated elsewhere", nexus.initiator_port);
                break;
            }
        };
        let pdu = match next {
            Err(PduError::DataDigest(p)) => {
                send_reject(&conn, &p, reject::DATA_DIGEST_ERROR).await;
                continue;
            }
            Err(e) => {
                tracing::debug!("{}: {e}", nexus.initiator_port);
                break;
            }
            Ok(p) => p,
        };
        if let Ok(mut t) = last_heard.lock() {
            *t = std::time::Instant::now();
        }
        if !dispatch(&conn, pdu).await {
            break;
        }
    }
    pinger.abort();
    // Commands still running finish (their writes are the initiator's);
    // nothing more is sent for them.
    let waits: Vec<Arc<Notify>> = conn
        .running
        .lock()
        .map(|r| {
            r.values()
                .map(|t| {
                    t.aborted.store(true, Ordering::Relaxed);
                    t.finished.clone()
                })
                .collect()
        })
        .unwrap_or_default();
    for w in waits {
        let _ = tokio::time::timeout(Duration::from_secs(30), w.notified()).await;
    }
    conn.close().await;
    if let Some(v) = &view {
        for lun in v.luns.values() {
            lun.nexus_gone(&nexus);
        }
    }
    shared.session_ended(&session_key, logged.tsih);
}

async fn ping_when_idle(conn: Arc<Conn>, last_heard: Arc<std::sync::Mutex<std::time::Instant>>) {
    let mut pinged_at: Option<std::time::Instant> = None;
    loop {
        tokio::time::sleep(NOP_INTERVAL / 4).await;
        let heard = last_heard
            .lock()
            .map(|t| *t)
            .unwrap_or_else(|_| std::time::Instant::now());
        if let Some(at) = pinged_at {
            if heard > at {
                pinged_at = None;
            } else if at.elapsed() >= NOP_INTERVAL {
                conn.die("no answer to NOP-In");
                return;
            }
            continue;
        }
        if heard.elapsed() >= NOP_INTERVAL {
            let mut p = Pdu::new(op::NOP_IN);
            p.set_flags(0x80);
            p.set_itt(RESERVED_TAG);
            p.set_u32(
                20,
                conn.next_ttt.fetch_add(1, Ordering::Relaxed) | 0x8000_0000,
            );
            conn.send(p, Stat::Current).await;
            pinged_at = Some(std::time::Instant::now());
        }
    }
}

async fn send_reject(conn: &Conn, bad: &Pdu, reason: u8) {
    let mut r = Pdu::new(op::REJECT);
    r.set_flags(0x80);
    r.bhs[2] = reason;
    r.set_itt(RESERVED_TAG);
    r.data = bad.bhs.to_vec();
    conn.send(r, Stat::Next).await;
}

/// Checks a non-immediate PDU's CmdSN against the window and advances it.
/// `false`: outside the window, to be ignored (RFC 7143 §4.2.2.1).
fn take_cmd_sn(conn: &Conn, pdu: &Pdu) -> bool {
    if pdu.immediate() {
        return true;
    }
    let sn = pdu.u32_at(24);
    let exp = conn.window.exp.load(Ordering::Relaxed);
    let max = conn.window.advertised.load(Ordering::Relaxed);
    if serial_lt(sn, exp) || serial_lt(max, sn) {
        tracing::debug!("CmdSN {sn} outside [{exp}, {max}]: ignored");
        return false;
    }
    conn.window.exp.store(sn.wrapping_add(1), Ordering::Relaxed);
    true
}

/// Handles one PDU; `false` ends the connection.
async fn dispatch(conn: &Arc<Conn>, pdu: Pdu) -> bool {
    let discovery = conn.view.is_none();
    match pdu.opcode() {
        op::NOP_OUT => {
            if !take_cmd_sn(conn, &pdu) {
                return true;
            }
            if pdu.itt() != RESERVED_TAG {
                let mut r = Pdu::new(op::NOP_IN);
                r.set_flags(0x80);
                r.bhs[8..16].copy_from_slice(&pdu.bhs[8..16]);
                r.set_itt(pdu.itt());
                r.set_u32(20, RESERVED_TAG);
                r.data = pdu.data;
                conn.send(r, Stat::Next).await;
            }
            true
        }
        op::SCSI_CMD if !discovery => {
            if !take_cmd_sn(conn, &pdu) {
                return true;
            }
            start_command(conn, pdu).await;
            true
        }
        op::DATA_OUT => {
            let tx = conn
                .running
                .lock()
                .ok()
                .and_then(|r| r.get(&pdu.itt()).and_then(|t| t.data.clone()));
            // Data for a command that is gone (refused before its data
            // arrived, or aborted) is dropped.
            if let Some(tx) = tx {
                let _ = tx.send(pdu).await;
            }
            true
        }
        op::TASK_MGMT_REQ if !discovery => {
            if !take_cmd_sn(conn, &pdu) {
                return true;
            }
            task_management(conn, pdu).await;
            true
        }
        op::TEXT_REQ => {
            if !take_cmd_sn(conn, &pdu) {
                return true;
            }
            text_request(conn, pdu).await;
            true
        }
        op::LOGOUT_REQ => {
            if !take_cmd_sn(conn, &pdu) {
                return true;
            }
            let mut r = Pdu::new(op::LOGOUT_RESP);
            r.set_flags(0x80);
            // Reason 2 (remove the connection for recovery) needs error
            // recovery level 2.
            r.bhs[2] = if pdu.flags() & 0x7f == 2 { 2 } else { 0 };
            r.set_itt(pdu.itt());
            conn.send(r, Stat::Next).await;
            false
        }
        op::SNACK => {
            send_reject(conn, &pdu, reject::SNACK_REJECT).await;
            true
        }
        _ => {
            send_reject(conn, &pdu, reject::PROTOCOL_ERROR).await;
            true
        }
    }
}

async fn text_request(conn: &Conn, pdu: Pdu) {
    let mut keys = Vec::new();
    for (k, v) in crate::text::parse(&pdu.data) {
        match (k.as_str(), v) {
            ("SendTargets", Some(which)) => {
                for (iqn, allowed) in conn.shared.target_names(&conn.initiator) {
                    if !allowed {
                        continue;
                    }
                    let wanted = which == "All"
                        || which == iqn
                        || (which.is_empty()
                            && conn.view.as_ref().is_some_and(|v| v.rec.iqn == iqn));
                    if wanted {
                        keys.push(("TargetName".to_string(), iqn.clone()));
                        keys.push((
                            "TargetAddress".to_string(),
                            format!("{},1", conn.local_portal),
                        ));
                    }
                }
            }
            (k, _) => keys.push((k.to_string(), "NotUnderstood".into())),
        }
    }
    let mut data = crate::text::encode(&keys);
    data.truncate(conn.params.max_xmit_data_segment as usize);
    let mut r = Pdu::new(op::TEXT_RESP);
    r.set_flags(0x80);
    r.bhs[8..16].copy_from_slice(&pdu.bhs[8..16]);
    r.set_itt(pdu.itt());
    r.set_u32(20, RESERVED_TAG);
    r.data = data;
    conn.send(r, Stat::Next).await;
}

async fn task_management(conn: &Arc<Conn>, pdu: Pdu) {
    let function = pdu.flags() & 0x7f;
    let lun_id = decode_lun(pdu.lun());
    let referenced = pdu.u32_at(20);
    let lun = conn.lun(lun_id);
    let abort = |pick: &dyn Fn(&u32, &Running) -> bool| -> Vec<Arc<Notify>> {
        conn.running
            .lock()
            .map(|r| {
                r.iter()
                    .filter(|(itt, t)| pick(itt, t))
                    .map(|(_, t)| {
                        t.aborted.store(true, Ordering::Relaxed);
                        t.finished.clone()
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let response: u8 = match function {
        // ABORT TASK
        1 => {
            let waits = abort(&|itt, t| *itt == referenced && t.lun == lun_id);
            if waits.is_empty() {
                // Already answered (or never arrived): the initiator
                // learns its answer went out before the abort.
                1
            } else {
                for w in waits {
                    let _ = tokio::time::timeout(Duration::from_secs(30), w.notified()).await;
                }
                0
            }
        }
        // ABORT TASK SET, CLEAR TASK SET
        2 | 4 => {
            if lun.is_none() {
                2
            } else {
                for w in abort(&|_, t| t.lun == lun_id) {
                    let _ = tokio::time::timeout(Duration::from_secs(30), w.notified()).await;
                }
                0
            }
        }
        // LOGICAL UNIT RESET
        5 => match &lun {
            None => 2,
            Some(l) => {
                for w in abort(&|_, t| t.lun == lun_id) {
                    let _ = tokio::time::timeout(Duration::from_secs(30), w.notified()).await;
                }
                l.reset(&conn.nexus).await;
                0
            }
        },
        // TARGET WARM RESET, TARGET COLD RESET
        6 | 7 => {
            for w in abort(&|_, _| true) {
                let _ = tokio::time::timeout(Duration::from_secs(30), w.notified()).await;
            }
            if let Some(v) = &conn.view {
                for l in v.luns.values() {
                    l.reset(&conn.nexus).await;
                }
            }
            0
        }
        // CLEAR ACA, TASK REASSIGN (error recovery level 2), others.
        _ => 5,
    };
    let mut r = Pdu::new(op::TASK_MGMT_RESP);
    r.set_flags(0x80);
    r.bhs[2] = response;
    r.set_itt(pdu.itt());
    conn.send(r, Stat::Next).await;
    if function == 7 && response == 0 {
        // A cold reset ends the connections (SAM-5 §6.3.2).
        conn.die("target cold reset");
    }
}

async fn start_command(conn: &Arc<Conn>, pdu: Pdu) {
    let itt = pdu.itt();
    let busy = conn.running.lock().map(|r| r.len()).unwrap_or(RUNNING_MAX);
    if busy >= RUNNING_MAX {
        let full = Done {
            status: scsi::sense::TASK_SET_FULL,
            ..Done::default()
        };
        respond(conn, &pdu, full, pdu.u32_at(20), &AtomicBool::new(false)).await;
        return;
    }
    let lun_id = decode_lun(pdu.lun());
    let writes = pdu.flags() & 0x20 != 0;
    let aborted = Arc::new(AtomicBool::new(false));
    let finished = Arc::new(Notify::new());
    let (data_tx, data_rx) = if writes {
        let (tx, rx) = mpsc::channel::<Pdu>(64);
        (Some(tx), Some(rx))
    } else {
        (None, None)
    };
    let duplicate = match conn.running.lock() {
        Ok(mut r) => match r.entry(itt) {
            std::collections::hash_map::Entry::Occupied(_) => true,
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(Running {
                    lun: lun_id,
                    data: data_tx,
                    aborted: aborted.clone(),
                    finished: finished.clone(),
                });
                false
            }
        },
        Err(_) => true,
    };
    if duplicate {
        send_reject(conn, &pdu, reject::INVALID_PDU_FIELD).await;
        return;
    }
    conn.window.inflight.fetch_add(1, Ordering::Relaxed);
    let conn = conn.clone();
    tokio::spawn(async move {
        run_command(&conn, pdu, data_rx, &aborted).await;
        if let Ok(mut r) = conn.running.lock() {
            r.remove(&itt);
        }
        conn.window.inflight.fetch_sub(1, Ordering::Relaxed);
        finished.notify_waiters();
        finished.notify_one();
    });
}

/// Runs one SCSI command: its data, the device, its answer.
async fn run_command(
    conn: &Arc<Conn>,
    mut cmd: Pdu,
    data_rx: Option<mpsc::Receiver<Pdu>>,
    aborted: &AtomicBool,
) {
    let flags = cmd.flags();
    let (reads, writes) = (flags & 0x40 != 0, flags & 0x20 != 0);
    let edtl = cmd.u32_at(20);
    let mut cdb: Vec<u8> = cmd.bhs[32..48].to_vec();
    // An extended CDB AHS (type 1) carries bytes 16 and on.
    if cmd.ahs.len() >= 4 && cmd.ahs[2] == 1 {
        let len = u16::from_be_bytes([cmd.ahs[0], cmd.ahs[1]]) as usize;
        let end = (4 + len.saturating_sub(1)).min(cmd.ahs.len());
        cdb.extend_from_slice(&cmd.ahs[4..end]);
    }
    let lun_id = decode_lun(cmd.lun());
    let lun = conn.lun(lun_id);
    let luns = conn.lun_ids();
    if edtl > TRANSFER_BYTES_MAX {
        respond(conn, &cmd, Done::invalid_cdb(), 0, aborted).await;
        return;
    }
    let _budget = if writes && edtl > 0 {
        match conn
            .shared
            .data_budget
            .clone()
            .acquire_many_owned(edtl.div_ceil(1024))
            .await
        {
            Ok(p) => Some(p),
            Err(_) => return,
        }
    } else {
        None
    };
    let data_out = if writes {
        let immediate = std::mem::take(&mut cmd.data);
        match receive_data(conn, &cmd, immediate, edtl, data_rx).await {
            Ok(d) => d,
            Err(why) => {
                // Error recovery level 0: the command fails; the session
                // goes on (its stray Data-Out is dropped).
                tracing::info!("{}: {why}", conn.nexus.initiator_port);
                let d = Done::check(
                    scsi::sense::key::ABORTED_COMMAND,
                    scsi::sense::asc::DATA_PHASE_ERROR,
                );
                respond(conn, &cmd, d, edtl, aborted).await;
                return;
            }
        }
    } else {
        Vec::new()
    };
    if aborted.load(Ordering::Relaxed) {
        return;
    }
    let task = scsi::Task {
        cdb: &cdb,
        nexus: &conn.nexus,
        data_out,
        expected_in: if reads { edtl } else { 0 },
        luns: &luns,
    };
    let cdb_ok = cdb.len() >= scsi::cdb_len(cdb[0]);
    let done = match (&lun, cdb_ok) {
        (_, false) => Done::invalid_cdb(),
        (Some(l), true) => l.execute(task).await,
        (None, true) => scsi::info::no_such_lun(&task, &luns),
    };
    respond(conn, &cmd, done, edtl, aborted).await;
}

/// Collects a write's data: immediate, unsolicited Data-Out up to the first
/// burst, then R2T after R2T. Any break in DataSN or offsets ends the
/// connection (error recovery level 0).
async fn receive_data(
    conn: &Conn,
    cmd: &Pdu,
    immediate: Vec<u8>,
    edtl: u32,
    rx: Option<mpsc::Receiver<Pdu>>,
) -> Result<Vec<u8>, String> {
    let p = &conn.params;
    if !immediate.is_empty()
        && (!p.immediate_data || immediate.len() > edtl.min(p.first_burst) as usize)
    {
        return Err("immediate data not allowed or too long".into());
    }
    // The immediate data becomes the start of the buffer (no copy).
    let mut buf = immediate;
    buf.reserve_exact((edtl as usize).saturating_sub(buf.len()));
    let Some(mut rx) = rx else {
        return Ok(buf);
    };
    // Unsolicited Data-Out follows when the command's F bit is clear.
    if cmd.flags() & 0x80 == 0 {
        if p.initial_r2t {
            return Err("unsolicited data with InitialR2T=Yes".into());
        }
        let limit = edtl.min(p.first_burst) as usize;
        receive_sequence(&mut rx, &mut buf, RESERVED_TAG, limit).await?;
    }
    let mut r2t_sn = 0u32;
    while buf.len() < edtl as usize {
        let want = (edtl as usize - buf.len()).min(p.max_burst as usize);
        let ttt = conn.next_ttt.fetch_add(1, Ordering::Relaxed) & 0x7fff_ffff;
        let mut r = Pdu::new(op::R2T);
        r.set_flags(0x80);
        r.bhs[8..16].copy_from_slice(&cmd.bhs[8..16]);
        r.set_itt(cmd.itt());
        r.set_u32(20, ttt);
        r.set_u32(36, r2t_sn);
        r.set_u32(40, buf.len() as u32);
        r.set_u32(44, want as u32);
        r2t_sn += 1;
        conn.send(r, Stat::Current).await;
        let end = buf.len() + want;
        receive_sequence(&mut rx, &mut buf, ttt, end).await?;
    }
    Ok(buf)
}

/// Receives one sequence of Data-Out (DataSN from 0, offsets in order, up
/// to the F bit) until `buf` reaches `end` bytes.
async fn receive_sequence(
    rx: &mut mpsc::Receiver<Pdu>,
    buf: &mut Vec<u8>,
    ttt: u32,
    end: usize,
) -> Result<(), String> {
    let mut data_sn = 0u32;
    loop {
        let pdu = match tokio::time::timeout(DATA_OUT_TIMEOUT, rx.recv()).await {
            Ok(Some(p)) => p,
            Ok(None) => return Err("connection ended during data".into()),
            Err(_) => return Err("Data-Out timed out".into()),
        };
        if pdu.u32_at(20) != ttt {
            return Err(format!(
                "Data-Out for TTT {:x}, expected {ttt:x}",
                pdu.u32_at(20)
            ));
        }
        if pdu.u32_at(36) != data_sn {
            return Err(format!(
                "Data-Out DataSN {} where {data_sn} was due",
                pdu.u32_at(36)
            ));
        }
        if pdu.u32_at(40) as usize != buf.len() {
            return Err(format!(
                "Data-Out offset {} where {} was due",
                pdu.u32_at(40),
                buf.len()
            ));
        }
        if buf.len() + pdu.data.len() > end {
            return Err("Data-Out past the burst".into());
        }
        buf.extend_from_slice(&pdu.data);
        data_sn += 1;
        if pdu.final_bit() {
            return if buf.len() == end {
                Ok(())
            } else if ttt == RESERVED_TAG {
                // An unsolicited burst may end short of the first burst
                // length only at the end of the data; R2Ts fetch the rest.
                Ok(())
            } else {
                Err("Data-Out sequence ended short".into())
            };
        }
    }
}

/// Sends Data-In and the status.
async fn respond(conn: &Conn, cmd: &Pdu, done: Done, edtl: u32, aborted: &AtomicBool) {
    if aborted.load(Ordering::Relaxed) {
        return;
    }
    let flags = cmd.flags();
    let (reads, writes) = (flags & 0x40 != 0, flags & 0x20 != 0);
    let produced = done.data_in.len() as u32;
    let spdtl = if writes { done.wanted_out } else { produced };
    let (res_flag, residual) = if spdtl > edtl {
        (0x04u8, spdtl - edtl)
    } else if spdtl < edtl {
        (0x02u8, edtl - spdtl)
    } else {
        (0, 0)
    };
    // Data-In when the command asked to read; the status rides on the last
    // one when it is GOOD (no sense to carry).
    let send = if reads {
        (produced.min(edtl)) as usize
    } else {
        0
    };
    let mut data_sn = 0u32;
    // Data-In and the status go out together, flushed once.
    let mut batch: Vec<(Pdu, Stat)> = Vec::new();
    if send > 0 {
        let seg = conn.params.max_xmit_data_segment.max(512) as usize;
        let burst = conn.params.max_burst.max(512) as usize;
        let collapse = done.status == scsi::sense::GOOD && done.sense.is_empty();
        let mut at = 0usize;
        while at < send {
            let burst_end = ((at / burst) + 1) * burst;
            let n = seg.min(send - at).min(burst_end - at);
            let last = at + n == send;
            let mut p = Pdu::new(op::DATA_IN);
            let mut f = 0u8;
            if last || at + n == burst_end {
                f |= 0x80;
            }
            let with_status = last && collapse;
            if with_status {
                f |= 0x01 | res_flag;
                p.bhs[3] = done.status;
                p.set_u32(44, residual);
            }
            p.set_flags(f);
            p.bhs[8..16].copy_from_slice(&cmd.bhs[8..16]);
            p.set_itt(cmd.itt());
            p.set_u32(20, RESERVED_TAG);
            p.set_u32(36, data_sn);
            p.set_u32(40, at as u32);
            p.data = done.data_in[at..at + n].to_vec();
            batch.push((p, if with_status { Stat::Next } else { Stat::None }));
            data_sn += 1;
            at += n;
            if with_status {
                conn.send_all(batch).await;
                return;
            }
        }
    }
    let mut r = Pdu::new(op::SCSI_RESP);
    r.set_flags(0x80 | res_flag);
    r.bhs[2] = 0;
    r.bhs[3] = done.status;
    r.set_itt(cmd.itt());
    r.set_u32(36, data_sn);
    r.set_u32(44, residual);
    if !done.sense.is_empty() {
        let mut d = (done.sense.len() as u16).to_be_bytes().to_vec();
        d.extend_from_slice(&done.sense);
        r.data = d;
    }
    batch.push((r, Stat::Next));
    conn.send_all(batch).await;
}

impl crate::login::Directory for Shared {
    fn target(&self, iqn: &str) -> Option<login::TargetAuth> {
        let v = self.view(iqn)?;
        Some(login::TargetAuth {
            chap: v.rec.chap.clone(),
            mutual: v.rec.mutual.clone(),
            initiators: v.rec.initiators.clone(),
            portal_group: self.group(),
            redirect: self.redirect_for(&v),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lun_encoding_round_trips() {
        for l in [0u64, 1, 255, 256, 1000, 16383] {
            assert_eq!(decode_lun(encode_lun(l)), l);
        }
        assert!(serial_lt(0xffff_fff0, 3));
        assert!(!serial_lt(3, 3));
    }
}
