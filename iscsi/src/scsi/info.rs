//! Commands that describe the logical unit (SPC-4): INQUIRY and its VPD
//! pages, capacity, mode pages, LUN and opcode reports, target port
//! groups, sense, and the no-op medium commands of a disk.

use super::block::{
    TRANSFER_BLOCKS_MAX, UNMAP_BLOCKS_MAX, UNMAP_DESCRIPTORS_MAX, WRITE_SAME_BLOCKS_MAX,
};
use super::sense::{asc, key};
use super::{be16, be32, clip, Done, Lun, Task, BLOCK_BYTES};

pub const VENDOR: &[u8; 8] = b"SPAREFS ";
pub const PRODUCT: &[u8; 16] = b"sparefs image   ";
pub const REVISION: &[u8; 4] = b"0001";

fn page(code: u8, body: Vec<u8>) -> Vec<u8> {
    let mut out = vec![0u8, code];
    out.extend_from_slice(&(body.len() as u16).to_be_bytes());
    out.extend(body);
    out
}

/// Standard INQUIRY data, `qualifier` 0 for a LUN that exists, 3 (with
/// device type 1Fh) for one that does not.
pub fn standard_inquiry(present: bool) -> Vec<u8> {
    let mut d = vec![0u8; 74];
    d[0] = if present { 0x00 } else { 0x7f };
    d[2] = 0x06; // SPC-4
    d[3] = 0x12; // HISUP, response data format 2
    d[4] = (d.len() - 5) as u8;
    d[5] = 0x10; // TPGS 01b: implicit ALUA
    d[7] = 0x02; // CMDQUE
    d[8..16].copy_from_slice(VENDOR);
    d[16..32].copy_from_slice(PRODUCT);
    d[32..36].copy_from_slice(REVISION);
    // Version descriptors: SAM-5, iSCSI, SPC-4, SBC-3.
    for (i, v) in [0x00a0u16, 0x0960, 0x0460, 0x04c0].iter().enumerate() {
        d[58 + 2 * i..60 + 2 * i].copy_from_slice(&v.to_be_bytes());
    }
    d
}

pub fn inquiry(lun: &Lun, t: &Task<'_>) -> Done {
    let cdb = t.cdb;
    if cdb.len() < 6 {
        return Done::invalid_cdb();
    }
    let evpd = cdb[1] & 0x01 != 0;
    let code = cdb[2];
    let alloc = be16(cdb, 3);
    if cdb[1] & 0x02 != 0 {
        // CMDDT (obsolete).
        return Done::invalid_cdb();
    }
    if !evpd {
        if code != 0 {
            return Done::invalid_cdb();
        }
        return Done::data(clip(standard_inquiry(true), alloc));
    }
    let data = match code {
        0x00 => page(0x00, vec![0x00, 0x80, 0x83, 0xb0, 0xb1, 0xb2]),
        0x80 => page(0x80, lun.rec.serial().into_bytes()),
        0x83 => page(0x83, designators(lun, t)),
        0xb0 => page(0xb0, block_limits()),
        0xb1 => {
            let mut b = vec![0u8; 0x3c];
            b[1] = 0x01; // non-rotating medium
            page(0xb1, b)
        }
        0xb2 => page(0xb2, vec![0x00, 0xe4, 0x02, 0x00]),
        _ => return Done::invalid_cdb(),
    };
    Done::data(clip(data, alloc))
}

fn designator(first: u8, second: u8, body: &[u8]) -> Vec<u8> {
    let mut d = vec![first, second, 0, body.len() as u8];
    d.extend_from_slice(body);
    d
}

/// VPD 83h: the LU's NAA and T10 identifiers (the same from every target
/// process: they come from the export record), then this port's.
fn designators(lun: &Lun, t: &Task<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend(designator(0x01, 0x03, &lun.rec.naa.to_be_bytes()));
    let mut t10 = VENDOR.to_vec();
    t10.extend_from_slice(lun.rec.serial().as_bytes());
    out.extend(designator(0x02, 0x01, &t10));
    // PIV, target port association: relative port, port group, name.
    // Each target process is one port in a group of its own, so both
    // numbers are its group's.
    let [hi, lo] = lun.ports().mine.to_be_bytes();
    out.extend(designator(0x01, 0x94, &[0, 0, hi, lo]));
    out.extend(designator(0x01, 0x95, &[0, 0, hi, lo]));
    let mut name = t.nexus.target_port.clone().into_bytes();
    name.push(0);
    while !name.len().is_multiple_of(4) {
        name.push(0);
    }
    out.extend(designator(0x53, 0x98, &name));
    out
}

fn block_limits() -> Vec<u8> {
    let mut b = vec![0u8; 0x3c];
    b[0] = 0x01; // WSNZ: WRITE SAME of 0 blocks is refused
    b[1] = 255; // COMPARE AND WRITE: up to 255 blocks
    b[2..4].copy_from_slice(&8u16.to_be_bytes()); // 4 KiB granularity
    b[4..8].copy_from_slice(&TRANSFER_BLOCKS_MAX.to_be_bytes());
    b[8..12].copy_from_slice(&2048u32.to_be_bytes()); // 1 MiB optimal
    b[16..20].copy_from_slice(&UNMAP_BLOCKS_MAX.to_be_bytes());
    b[20..24].copy_from_slice(&UNMAP_DESCRIPTORS_MAX.to_be_bytes());
    b[24..28].copy_from_slice(&8u32.to_be_bytes());
    b[32..40].copy_from_slice(&(WRITE_SAME_BLOCKS_MAX as u64).to_be_bytes());
    b
}

pub fn read_capacity10(lun: &Lun, t: &Task<'_>) -> Done {
    if t.cdb.len() < 10 {
        return Done::invalid_cdb();
    }
    let pmi = t.cdb[8] & 0x01 != 0;
    if !pmi && be32(t.cdb, 2) != 0 {
        return Done::invalid_cdb();
    }
    let last = lun.blocks().saturating_sub(1).min(0xffff_ffff) as u32;
    let mut d = last.to_be_bytes().to_vec();
    d.extend_from_slice(&BLOCK_BYTES.to_be_bytes());
    Done::data(d)
}

pub fn read_capacity16(lun: &Lun, t: &Task<'_>) -> Done {
    let alloc = be32(t.cdb, 10);
    let mut d = vec![0u8; 32];
    d[0..8].copy_from_slice(&lun.blocks().saturating_sub(1).to_be_bytes());
    d[8..12].copy_from_slice(&BLOCK_BYTES.to_be_bytes());
    d[14] = 0xc0; // LBPME, LBPRZ: thin provisioned, unmapped reads zeros
    Done::data(clip(d, alloc))
}

pub fn report_luns(t: &Task<'_>, luns: &[u64]) -> Done {
    if t.cdb.len() < 12 {
        return Done::invalid_cdb();
    }
    let select = t.cdb[2];
    let alloc = be32(t.cdb, 6);
    if select > 2 && !(0x10..=0x12).contains(&select) {
        return Done::invalid_cdb();
    }
    if alloc < 16 {
        return Done::invalid_cdb();
    }
    let mut d = vec![0u8; 8];
    if select != 1 {
        for l in luns {
            d.extend_from_slice(&crate::session::encode_lun(*l).to_be_bytes());
        }
    }
    let n = (d.len() - 8) as u32;
    d[0..4].copy_from_slice(&n.to_be_bytes());
    Done::data(clip(d, alloc))
}

pub fn request_sense(t: &Task<'_>) -> Done {
    if t.cdb.len() < 6 {
        return Done::invalid_cdb();
    }
    let alloc = t.cdb[4] as u32;
    let d = if t.cdb[1] & 0x01 != 0 {
        vec![0x72, key::NO_SENSE, 0, 0, 0, 0, 0, 0]
    } else {
        super::sense::fixed(key::NO_SENSE, asc::NONE)
    };
    Done::data(clip(d, alloc))
}

pub fn start_stop(t: &Task<'_>) -> Done {
    if t.cdb.len() < 6 {
        return Done::invalid_cdb();
    }
    Done::good()
}

pub fn prevent_allow(t: &Task<'_>) -> Done {
    if t.cdb.len() < 6 {
        return Done::invalid_cdb();
    }
    Done::good()
}

pub fn read_defect_data(t: &Task<'_>) -> Done {
    let (twelve, need) = if t.cdb[0] == 0xb7 {
        (true, 12)
    } else {
        (false, 10)
    };
    if t.cdb.len() < need {
        return Done::invalid_cdb();
    }
    let flags = t.cdb[if twelve { 1 } else { 2 }] & 0x1f;
    let (d, alloc) = if twelve {
        let mut d = vec![0u8; 8];
        d[1] = flags;
        (d, be32(t.cdb, 6))
    } else {
        let mut d = vec![0u8; 4];
        d[1] = flags;
        (d, be16(t.cdb, 7))
    };
    Done::data(clip(d, alloc))
}

/// Mode pages this LUN has: caching (08h), control (0Ah), informational
/// exceptions (1Ch). `changeable`: the mask of what MODE SELECT may change.
fn mode_page(lun: &Lun, code: u8, changeable: bool) -> Option<Vec<u8>> {
    Some(match code {
        0x08 => {
            let mut p = vec![0u8; 20];
            p[0] = 0x08;
            p[1] = 0x12;
            let wce = lun.wce.load(std::sync::atomic::Ordering::Relaxed);
            p[2] = if changeable || wce { 0x04 } else { 0 };
            p
        }
        0x0a => {
            let mut p = vec![0u8; 12];
            p[0] = 0x0a;
            p[1] = 0x0a;
            if !changeable {
                p[3] = 0x10; // unrestricted reordering
                p[8] = 0xff; // busy timeout: unlimited
                p[9] = 0xff;
            }
            p
        }
        0x1c => {
            let mut p = vec![0u8; 12];
            p[0] = 0x1c;
            p[1] = 0x0a;
            p
        }
        _ => return None,
    })
}

pub fn mode_sense(lun: &Lun, t: &Task<'_>) -> Done {
    let ten = t.cdb[0] == 0x5a;
    if t.cdb.len() < if ten { 10 } else { 6 } {
        return Done::invalid_cdb();
    }
    let dbd = t.cdb[1] & 0x08 != 0;
    let pc = t.cdb[2] >> 6;
    let code = t.cdb[2] & 0x3f;
    let sub = t.cdb[3];
    let alloc = if ten { be16(t.cdb, 7) } else { t.cdb[4] as u32 };
    if pc == 3 {
        return Done::illegal(asc::SAVING_PARAMETERS_NOT_SUPPORTED);
    }
    if sub != 0 && sub != 0xff {
        return Done::invalid_cdb();
    }
    let changeable = pc == 1;
    let mut pages = Vec::new();
    if code == 0x3f {
        for c in [0x08, 0x0a, 0x1c] {
            pages.extend(mode_page(lun, c, changeable).unwrap_or_default());
        }
    } else {
        match mode_page(lun, code, changeable) {
            Some(p) => pages.extend(p),
            None => return Done::invalid_cdb(),
        }
    }
    let mut blockdesc = Vec::new();
    if !dbd {
        let n = lun.blocks().min(0xffff_ffff) as u32;
        blockdesc.extend_from_slice(&n.to_be_bytes());
        blockdesc.push(0);
        blockdesc.extend_from_slice(&BLOCK_BYTES.to_be_bytes()[1..4]);
    }
    let dsp = if lun.rec.read_only { 0x80 } else { 0 } | 0x10; // WP, DPOFUA
    let mut d = if ten {
        let mut h = vec![0u8; 8];
        h[3] = dsp;
        h[6..8].copy_from_slice(&(blockdesc.len() as u16).to_be_bytes());
        h
    } else {
        vec![0, 0, dsp, blockdesc.len() as u8]
    };
    d.extend(blockdesc);
    d.extend(pages);
    if ten {
        let n = (d.len() - 2) as u16;
        d[0..2].copy_from_slice(&n.to_be_bytes());
    } else {
        d[0] = (d.len() - 1) as u8;
    }
    Done::data(clip(d, alloc))
}

pub fn mode_select(lun: &Lun, t: &Task<'_>) -> Done {
    let ten = t.cdb[0] == 0x55;
    if t.cdb.len() < if ten { 10 } else { 6 } {
        return Done::invalid_cdb();
    }
    let len = if ten { be16(t.cdb, 7) } else { t.cdb[4] as u32 } as usize;
    let mut done = mode_select_inner(lun, t, ten, len);
    done.wanted_out = len as u32;
    done
}

fn mode_select_inner(lun: &Lun, t: &Task<'_>, ten: bool, len: usize) -> Done {
    // PF must be set; saving pages is not possible.
    if t.cdb[1] & 0x10 == 0 || t.cdb[1] & 0x01 != 0 {
        return Done::invalid_cdb();
    }
    let p = &t.data_out[..t.data_out.len().min(len)];
    let head = if ten { 8 } else { 4 };
    if p.is_empty() {
        return Done::good();
    }
    if p.len() < head {
        return Done::illegal(asc::PARAMETER_LIST_LENGTH_ERROR);
    }
    let bdl = if ten {
        be16(p, 6) as usize
    } else {
        p[3] as usize
    };
    let mut at = head + bdl;
    while at + 2 <= p.len() {
        let code = p[at] & 0x3f;
        let plen = p[at + 1] as usize;
        if at + 2 + plen > p.len() {
            return Done::illegal(asc::PARAMETER_LIST_LENGTH_ERROR);
        }
        let body = &p[at..at + 2 + plen];
        let Some(current) = mode_page(lun, code, false) else {
            return Done::illegal(asc::INVALID_FIELD_IN_PARAMETER_LIST);
        };
        if current.len() != body.len() {
            return Done::illegal(asc::INVALID_FIELD_IN_PARAMETER_LIST);
        }
        if code == 0x08 {
            lun.wce
                .store(body[2] & 0x04 != 0, std::sync::atomic::Ordering::Relaxed);
        }
        at += 2 + plen;
    }
    Done::good()
}

/// Opcodes this device implements: (opcode, service action, CDB length).
pub const OPCODES: &[(u8, Option<u16>, u16)] = &[
    (0x00, None, 6),
    (0x03, None, 6),
    (0x08, None, 6),
    (0x0a, None, 6),
    (0x12, None, 6),
    (0x15, None, 6),
    (0x16, None, 6),
    (0x17, None, 6),
    (0x1a, None, 6),
    (0x1b, None, 6),
    (0x1e, None, 6),
    (0x25, None, 10),
    (0x28, None, 10),
    (0x2a, None, 10),
    (0x2e, None, 10),
    (0x2f, None, 10),
    (0x34, None, 10),
    (0x35, None, 10),
    (0x37, None, 10),
    (0x41, None, 10),
    (0x42, None, 10),
    (0x55, None, 10),
    (0x5a, None, 10),
    (0x5e, Some(0x00), 10),
    (0x5e, Some(0x01), 10),
    (0x5e, Some(0x02), 10),
    (0x5e, Some(0x03), 10),
    (0x5f, Some(0x00), 10),
    (0x5f, Some(0x01), 10),
    (0x5f, Some(0x02), 10),
    (0x5f, Some(0x03), 10),
    (0x5f, Some(0x04), 10),
    (0x5f, Some(0x05), 10),
    (0x5f, Some(0x06), 10),
    (0x88, None, 16),
    (0x89, None, 16),
    (0x8a, None, 16),
    (0x8b, None, 16),
    (0x8e, None, 16),
    (0x8f, None, 16),
    (0x90, None, 16),
    (0x91, None, 16),
    (0x93, None, 16),
    (0x9e, Some(0x10), 16),
    (0x9e, Some(0x12), 16),
    (0xa0, None, 12),
    (0xa3, Some(0x0a), 12),
    (0xa3, Some(0x0c), 12),
    (0xa8, None, 12),
    (0xaa, None, 12),
    (0xae, None, 12),
    (0xaf, None, 12),
    (0xb7, None, 12),
];

fn usage(op: u8, sa: Option<u16>, len: u16) -> Vec<u8> {
    let mut u = vec![0xffu8; len as usize];
    u[0] = op;
    if let Some(sa) = sa {
        u[1] = 0xe0 | (sa as u8 & 0x1f);
    }
    let last = u.len() - 1;
    u[last] = 0x00;
    u
}

fn timeouts() -> Vec<u8> {
    let mut d = vec![0u8; 12];
    d[1] = 0x0a;
    d[4..8].copy_from_slice(&30u32.to_be_bytes());
    d[8..12].copy_from_slice(&60u32.to_be_bytes());
    d
}

pub fn report_opcodes(t: &Task<'_>) -> Done {
    if t.cdb.len() < 12 {
        return Done::invalid_cdb();
    }
    let rctd = t.cdb[2] & 0x80 != 0;
    let options = t.cdb[2] & 0x07;
    let op = t.cdb[3];
    let sa = be16(t.cdb, 4) as u16;
    let alloc = be32(t.cdb, 6);
    let d = match options {
        0 => {
            let mut d = vec![0u8; 4];
            for (o, s, len) in OPCODES {
                let mut e = vec![*o, 0, 0, 0, 0, 0, 0, 0];
                if let Some(s) = s {
                    e[2..4].copy_from_slice(&s.to_be_bytes());
                    e[5] |= 0x01;
                }
                if rctd {
                    e[5] |= 0x02;
                }
                e[6..8].copy_from_slice(&len.to_be_bytes());
                d.extend(e);
                if rctd {
                    d.extend(timeouts());
                }
            }
            let n = (d.len() - 4) as u32;
            d[0..4].copy_from_slice(&n.to_be_bytes());
            d
        }
        1..=3 => {
            let with_sa = OPCODES.iter().any(|(o, s, _)| *o == op && s.is_some());
            // 1: the opcode has no service actions; 2: it has.
            if (options == 1 && with_sa) || (options == 2 && !with_sa) {
                return Done::invalid_cdb();
            }
            let found = OPCODES
                .iter()
                .find(|(o, s, _)| *o == op && (!with_sa || *s == Some(sa)));
            let mut d = vec![0u8; 4];
            match found {
                Some((o, s, len)) => {
                    d[1] = 0x03 | if rctd { 0x80 } else { 0 };
                    d[2..4].copy_from_slice(&len.to_be_bytes());
                    d.extend(usage(*o, *s, *len));
                    if rctd {
                        d.extend(timeouts());
                    }
                }
                None => d[1] = 0x01,
            }
            d
        }
        _ => return Done::invalid_cdb(),
    };
    Done::data(clip(d, alloc))
}

/// Every target process serving the LU is a group of one port (its
/// relative port number is the group's), active/optimized for the holder
/// of the image's fence, standby for the others (implicit ALUA).
pub fn report_target_port_groups(lun: &Lun, t: &Task<'_>) -> Done {
    if t.cdb.len() < 12 {
        return Done::invalid_cdb();
    }
    let extended = (t.cdb[1] >> 5) == 1;
    let alloc = be32(t.cdb, 6);
    let ports = lun.ports();
    let mut d = if extended {
        // Implicit transition time: a standby takes over within seconds.
        vec![0, 0, 0, 0, 0x10, 10, 0, 0]
    } else {
        vec![0, 0, 0, 0]
    };
    for (group, state) in &ports.groups {
        let state = if *group == ports.mine {
            ports.state()
        } else {
            *state
        };
        let mut desc = vec![0u8; 8];
        desc[0] = state.code();
        // Supported: transitioning, standby, active/optimized.
        desc[1] = 0x80 | 0x04 | 0x01;
        desc[2..4].copy_from_slice(&group.to_be_bytes());
        desc[5] = 0x02; // status: altered by an implicit transition
        desc[7] = 1;
        let [hi, lo] = group.to_be_bytes();
        desc.extend_from_slice(&[0, 0, hi, lo]);
        d.extend(desc);
    }
    let n = (d.len() - 4) as u32;
    d[0..4].copy_from_slice(&n.to_be_bytes());
    Done::data(clip(d, alloc))
}

/// The answer for a LUN that does not exist (SPC-4 §4.6.4).
pub fn no_such_lun(t: &Task<'_>, luns: &[u64]) -> Done {
    match t.cdb[0] {
        0x12 if t.cdb.len() >= 6 && t.cdb[1] & 0x01 == 0 => {
            Done::data(clip(standard_inquiry(false), be16(t.cdb, 3)))
        }
        0xa0 => report_luns(t, luns),
        0x03 if t.cdb.len() >= 6 => Done::data(clip(
            super::sense::fixed(key::ILLEGAL_REQUEST, asc::LUN_NOT_SUPPORTED),
            t.cdb[4] as u32,
        )),
        _ => Done::illegal(asc::LUN_NOT_SUPPORTED),
    }
}
