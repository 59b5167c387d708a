//! Block commands (SBC-3): reads, writes, verifies, compare-and-write,
//! write same, unmap, LBA status, cache synchronisation.

use super::sense::{asc, key};
use super::{be16, be24, be32, be64, Done, Lun, Task, BLOCK_BYTES};

/// Longest single transfer (blocks): also what VPD B0 advertises.
pub const TRANSFER_BLOCKS_MAX: u32 = 64 * 1024;
/// WRITE SAME without UNMAP writes at most this many blocks per command.
pub const WRITE_SAME_BLOCKS_MAX: u32 = 64 * 1024;
pub const UNMAP_DESCRIPTORS_MAX: u32 = 256;
pub const UNMAP_BLOCKS_MAX: u32 = 1024 * 1024;

struct Range {
    lba: u64,
    blocks: u32,
    /// CDB byte 1: protect bits, DPO, FUA, BYTCHK...
    flags: u8,
}

/// LBA, length and flags of the read/write/verify/sync families.
fn range(cdb: &[u8]) -> Option<Range> {
    let need = super::cdb_len(cdb[0]);
    if cdb.len() < need {
        return None;
    }
    Some(match cdb[0] {
        0x08 | 0x0a => {
            let n = cdb[4] as u32;
            Range {
                lba: (be24(cdb, 1) & 0x1f_ffff) as u64,
                // READ(6)/WRITE(6): 0 means 256 blocks.
                blocks: if n == 0 { 256 } else { n },
                flags: 0,
            }
        }
        0x28 | 0x2a | 0x2e | 0x2f | 0x34 | 0x35 | 0x41 => Range {
            lba: be32(cdb, 2) as u64,
            blocks: be16(cdb, 7),
            flags: cdb[1],
        },
        0xa8 | 0xaa | 0xae | 0xaf => Range {
            lba: be32(cdb, 2) as u64,
            blocks: be32(cdb, 6),
            flags: cdb[1],
        },
        0x89 => Range {
            lba: be64(cdb, 2),
            blocks: cdb[13] as u32,
            flags: cdb[1],
        },
        _ => Range {
            lba: be64(cdb, 2),
            blocks: be32(cdb, 10),
            flags: cdb[1],
        },
    })
}

/// The range lies on the LUN (a zero-length one may start at its end).
fn in_bounds(lun: &Lun, r: &Range) -> bool {
    let total = lun.blocks();
    r.lba <= total && r.lba + r.blocks as u64 <= total
}

fn bytes(blocks: u32) -> usize {
    blocks as usize * BLOCK_BYTES as usize
}

fn offset(lba: u64) -> u64 {
    lba * BLOCK_BYTES as u64
}

fn write_protected() -> Done {
    Done::check(key::DATA_PROTECT, asc::WRITE_PROTECTED)
}

/// Decodes and checks the range; `Err` is the answer to give.
fn checked(lun: &Lun, t: &Task<'_>, protect_field: bool) -> Result<Range, Done> {
    let r = range(t.cdb).ok_or_else(Done::invalid_cdb)?;
    // No protection information on these LUNs: RDPROTECT/WRPROTECT/
    // VRPROTECT must be zero.
    if protect_field && r.flags & 0xe0 != 0 {
        return Err(Done::invalid_cdb());
    }
    if !in_bounds(lun, &r) {
        return Err(Done::illegal(asc::LBA_OUT_OF_RANGE));
    }
    if r.blocks > TRANSFER_BLOCKS_MAX
        && !matches!(t.cdb[0], 0x2f | 0xaf | 0x8f | 0x34 | 0x90 | 0x35 | 0x91)
    {
        return Err(Done::invalid_cdb());
    }
    Ok(r)
}

pub async fn read(lun: &Lun, t: &Task<'_>) -> Done {
    let r = match checked(lun, t, t.cdb[0] != 0x08) {
        Ok(r) => r,
        Err(d) => return d,
    };
    if r.blocks == 0 {
        return Done::good();
    }
    match lun.backend.read(offset(r.lba), bytes(r.blocks)).await {
        Ok(data) => Done::data(data),
        Err(e) => Done::from_backend(e, false),
    }
}

pub async fn write(lun: &Lun, t: Task<'_>) -> Done {
    let r = match checked(lun, &t, t.cdb[0] != 0x0a) {
        Ok(r) => r,
        Err(mut d) => {
            d.wanted_out = t.data_out.len() as u32;
            return d;
        }
    };
    let wanted = bytes(r.blocks);
    if lun.rec.read_only {
        let mut d = write_protected();
        d.wanted_out = wanted as u32;
        return d;
    }
    let mut done = write_at(
        lun,
        r.lba,
        &t.data_out[..t.data_out.len().min(wanted)],
        r.flags,
    )
    .await;
    done.wanted_out = wanted as u32;
    done
}

/// Writes under the LUN's shared lock; FUA makes it durable first.
async fn write_at(lun: &Lun, lba: u64, data: &[u8], flags: u8) -> Done {
    if data.is_empty() {
        return Done::good();
    }
    let _shared = lun.atomic.read().await;
    if let Err(e) = lun.backend.write(offset(lba), data).await {
        return Done::from_backend(e, true);
    }
    if flags & 0x08 != 0 {
        if let Err(e) = lun.backend.flush().await {
            return Done::from_backend(e, true);
        }
    }
    Done::good()
}

fn miscompare(at: usize) -> Done {
    super::Done {
        status: super::sense::CHECK_CONDITION,
        sense: super::sense::fixed_with_info(
            key::MISCOMPARE,
            asc::MISCOMPARE_DURING_VERIFY,
            at as u32,
        ),
        ..Done::default()
    }
}

pub async fn verify(lun: &Lun, t: &Task<'_>) -> Done {
    let r = match checked(lun, t, true) {
        Ok(r) => r,
        Err(d) => return d,
    };
    let bytchk = (r.flags >> 1) & 0x03;
    let wanted = match bytchk {
        0 => 0,
        1 => bytes(r.blocks),
        3 => BLOCK_BYTES as usize,
        _ => return Done::invalid_cdb(),
    };
    let mut done = if r.blocks == 0 {
        Done::good()
    } else {
        match lun.backend.read(offset(r.lba), bytes(r.blocks)).await {
            Err(e) => Done::from_backend(e, false),
            // BYTCHK 0: the medium is readable (every block checked
            // end to end against its checksum on the way).
            Ok(_) if bytchk == 0 => Done::good(),
            Ok(_) if t.data_out.len() < wanted => Done::illegal(asc::PARAMETER_LIST_LENGTH_ERROR),
            Ok(have) => {
                let first_bad = have.iter().enumerate().position(|(i, b)| {
                    let want = if bytchk == 1 {
                        t.data_out[i]
                    } else {
                        t.data_out[i % BLOCK_BYTES as usize]
                    };
                    *b != want
                });
                match first_bad {
                    Some(at) => miscompare(at),
                    None => Done::good(),
                }
            }
        }
    };
    done.wanted_out = wanted as u32;
    done
}

/// Reads the range, lets `change` turn its bytes into what to write (or
/// refuse), writes that (FUA honoured): all under the LUN's exclusive lock,
/// so no other write of the LUN lands in between.
async fn read_modify_write(
    lun: &Lun,
    r: &Range,
    change: impl FnOnce(Vec<u8>) -> Result<Vec<u8>, Done>,
) -> Done {
    let _alone = lun.atomic.write().await;
    let have = match lun.backend.read(offset(r.lba), bytes(r.blocks)).await {
        Ok(h) => h,
        Err(e) => return Done::from_backend(e, false),
    };
    let new = match change(have) {
        Ok(n) => n,
        Err(d) => return d,
    };
    if let Err(e) = lun.backend.write(offset(r.lba), &new).await {
        return Done::from_backend(e, true);
    }
    if r.flags & 0x08 != 0 {
        if let Err(e) = lun.backend.flush().await {
            return Done::from_backend(e, true);
        }
    }
    Done::good()
}

pub async fn compare_and_write(lun: &Lun, t: Task<'_>) -> Done {
    let r = match checked(lun, &t, true) {
        Ok(r) => r,
        Err(d) => return d,
    };
    let n = bytes(r.blocks);
    let mut done = if lun.rec.read_only {
        write_protected()
    } else if t.data_out.len() != 2 * n {
        // Exactly the blocks to compare and those to write.
        Done::invalid_cdb()
    } else if r.blocks == 0 {
        Done::good()
    } else {
        let (expect, write) = t.data_out.split_at(n);
        read_modify_write(lun, &r, |have| {
            match have.iter().zip(expect).position(|(a, b)| a != b) {
                Some(at) => Err(miscompare(at)),
                None => Ok(write.to_vec()),
            }
        })
        .await
    };
    done.wanted_out = 2 * n as u32;
    done
}

pub async fn orwrite(lun: &Lun, t: Task<'_>) -> Done {
    let r = match checked(lun, &t, true) {
        Ok(r) => r,
        Err(d) => return d,
    };
    let n = bytes(r.blocks);
    let mut done = if lun.rec.read_only {
        write_protected()
    } else if r.blocks == 0 {
        Done::good()
    } else {
        read_modify_write(lun, &r, |mut have| {
            for (a, b) in have.iter_mut().zip(&t.data_out) {
                *a |= *b;
            }
            Ok(have)
        })
        .await
    };
    done.wanted_out = n as u32;
    done
}

pub fn prefetch(lun: &Lun, t: &Task<'_>) -> Done {
    match checked(lun, t, false) {
        Ok(_) => Done::good(),
        Err(d) => d,
    }
}

pub async fn synchronize_cache(lun: &Lun, t: &Task<'_>) -> Done {
    if let Err(d) = checked(lun, t, false) {
        return d;
    }
    match lun.backend.flush().await {
        Ok(()) => Done::good(),
        Err(e) => Done::from_backend(e, true),
    }
}

pub async fn write_same(lun: &Lun, t: Task<'_>) -> Done {
    let r = match checked(lun, &t, true) {
        Ok(r) => r,
        Err(d) => return d,
    };
    let unmap = r.flags & 0x08 != 0;
    let anchor = r.flags & 0x10 != 0;
    let ndob = t.cdb[0] == 0x93 && r.flags & 0x01 != 0;
    let wanted = if ndob { 0 } else { BLOCK_BYTES as usize };
    let mut done = write_same_inner(lun, &t, &r, unmap, anchor, ndob).await;
    done.wanted_out = wanted as u32;
    done
}

async fn write_same_inner(
    lun: &Lun,
    t: &Task<'_>,
    r: &Range,
    unmap: bool,
    anchor: bool,
    ndob: bool,
) -> Done {
    // ANCHOR: not supported (VPD B2 ANC_SUP 0), with or without UNMAP.
    if anchor {
        return Done::invalid_cdb();
    }
    if lun.rec.read_only {
        return write_protected();
    }
    if !ndob && t.data_out.len() != BLOCK_BYTES as usize {
        return Done::invalid_cdb();
    }
    let pattern: Vec<u8> = if ndob {
        vec![0u8; BLOCK_BYTES as usize]
    } else {
        t.data_out[..BLOCK_BYTES as usize].to_vec()
    };
    // 0 blocks: SBC-3 says "to the end of the medium" only when the
    // WSNZ bit is 0; VPD B0 sets WSNZ, so 0 is refused.
    if r.blocks == 0 {
        return Done::invalid_cdb();
    }
    let zeros = pattern.iter().all(|b| *b == 0);
    if unmap && zeros {
        let _shared = lun.atomic.read().await;
        return match lun
            .backend
            .unmap(offset(r.lba), bytes(r.blocks) as u64)
            .await
        {
            Ok(()) => Done::good(),
            Err(e) => Done::from_backend(e, true),
        };
    }
    if r.blocks > WRITE_SAME_BLOCKS_MAX {
        return Done::invalid_cdb();
    }
    let chunk_blocks = 2048u32.min(r.blocks);
    let chunk: Vec<u8> = pattern.repeat(chunk_blocks as usize);
    let mut lba = r.lba;
    let end = r.lba + r.blocks as u64;
    while lba < end {
        let n = (end - lba).min(chunk_blocks as u64) as usize;
        let d = write_at(lun, lba, &chunk[..n * BLOCK_BYTES as usize], 0).await;
        if d.status != 0 {
            return d;
        }
        lba += n as u64;
    }
    Done::good()
}

pub async fn unmap(lun: &Lun, t: Task<'_>) -> Done {
    let cdb = t.cdb;
    if cdb.len() < 10 {
        return Done::invalid_cdb();
    }
    let list_len = be16(cdb, 7) as usize;
    let mut done = unmap_inner(lun, &t, list_len).await;
    done.wanted_out = list_len as u32;
    done
}

async fn unmap_inner(lun: &Lun, t: &Task<'_>, list_len: usize) -> Done {
    if t.cdb[1] & 0x01 != 0 {
        // ANCHOR: not supported (VPD B2 ANC_SUP 0).
        return Done::invalid_cdb();
    }
    if lun.rec.read_only {
        return write_protected();
    }
    if list_len == 0 {
        return Done::good();
    }
    let p = &t.data_out[..t.data_out.len().min(list_len)];
    if p.len() < 8 {
        return Done::illegal(asc::PARAMETER_LIST_LENGTH_ERROR);
    }
    let desc_len = be16(p, 2) as usize;
    let descs = &p[8..p.len().min(8 + desc_len)];
    if descs.len() / 16 > UNMAP_DESCRIPTORS_MAX as usize {
        return Done::illegal(asc::INVALID_FIELD_IN_PARAMETER_LIST);
    }
    let mut ranges = Vec::new();
    for d in descs.chunks_exact(16) {
        let r = Range {
            lba: be64(d, 0),
            blocks: be32(d, 8),
            flags: 0,
        };
        if !in_bounds(lun, &r) {
            return Done::illegal(asc::LBA_OUT_OF_RANGE);
        }
        if r.blocks > UNMAP_BLOCKS_MAX {
            return Done::illegal(asc::INVALID_FIELD_IN_PARAMETER_LIST);
        }
        ranges.push(r);
    }
    let _shared = lun.atomic.read().await;
    for r in ranges.iter().filter(|r| r.blocks > 0) {
        if let Err(e) = lun
            .backend
            .unmap(offset(r.lba), bytes(r.blocks) as u64)
            .await
        {
            return Done::from_backend(e, true);
        }
    }
    Done::good()
}

/// Blocks GET LBA STATUS looks at per answer: a run of zero blocks is
/// reported deallocated (they read as zeros, as unmapped blocks do: LBPRZ).
const LBA_STATUS_SCAN_BLOCKS: u64 = 2048;

pub async fn get_lba_status(lun: &Lun, t: &Task<'_>) -> Done {
    let lba = be64(t.cdb, 2);
    let alloc = be32(t.cdb, 10);
    let total = lun.blocks();
    if lba >= total {
        return Done::illegal(asc::LBA_OUT_OF_RANGE);
    }
    let n = (total - lba).min(LBA_STATUS_SCAN_BLOCKS);
    let data = match lun
        .backend
        .read(offset(lba), (n * BLOCK_BYTES as u64) as usize)
        .await
    {
        Ok(d) => d,
        Err(e) => return Done::from_backend(e, false),
    };
    let mut descs: Vec<(u64, u32, u8)> = Vec::new();
    for (i, blk) in data.chunks(BLOCK_BYTES as usize).enumerate() {
        let state = if blk.iter().all(|b| *b == 0) { 1 } else { 0 };
        match descs.last_mut() {
            Some(last) if last.2 == state => last.1 += 1,
            _ => descs.push((lba + i as u64, 1, state)),
        }
    }
    let mut out = vec![0u8; 8];
    for (l, c, s) in descs {
        out.extend_from_slice(&l.to_be_bytes());
        out.extend_from_slice(&c.to_be_bytes());
        out.push(s);
        out.extend_from_slice(&[0, 0, 0]);
    }
    let len = (out.len() - 4) as u32;
    out[0..4].copy_from_slice(&len.to_be_bytes());
    Done::data(super::clip(out, alloc))
}
