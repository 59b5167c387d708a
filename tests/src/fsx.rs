//! An fsx-style verifier: a seeded random sequence of writes, reads,
//! truncates, hole punches, shared-mmap writes, fsyncs and reopens on one
//! file, every read checked against an in-memory model of the contents.

use rand::{rngs::StdRng, Rng, SeedableRng};
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;

#[derive(Debug, Default)]
pub struct FsxStats {
    pub ops: usize,
    pub writes: usize,
    pub reads: usize,
    pub truncates: usize,
    pub punches: usize,
    pub mmap_writes: usize,
    pub bytes_checked: u64,
}

fn open(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
}

#[allow(unsafe_code)]
fn mmap_write(f: &File, offset: u64, data: &[u8]) -> Result<(), String> {
    let page = 4096u64;
    let start = offset / page * page;
    let len = (offset + data.len() as u64 - start) as usize;
    // SAFETY: maps `len` bytes of an open file shared; the range lies within
    // the file (the caller checks), is written through the returned pointer
    // only inside the mapping, synced, and unmapped before returning.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            start as i64,
        );
        if p == libc::MAP_FAILED {
            return Err(format!("mmap: {}", std::io::Error::last_os_error()));
        }
        std::ptr::copy_nonoverlapping(
            data.as_ptr(),
            (p as *mut u8).add((offset - start) as usize),
            data.len(),
        );
        let rc = libc::msync(p, len, libc::MS_SYNC);
        libc::munmap(p, len);
        if rc != 0 {
            return Err(format!("msync: {}", std::io::Error::last_os_error()));
        }
    }
    Ok(())
}

fn punch(f: &File, offset: u64, len: u64) -> Result<(), String> {
    #[allow(unsafe_code)]
    // SAFETY: fallocate on an open descriptor; no memory is passed.
    let rc = unsafe {
        libc::fallocate(
            f.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset as i64,
            len as i64,
        )
    };
    if rc != 0 {
        return Err(format!("punch hole: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Whether `buf`, read at `off`, holds what the model says is there.
fn same_as_model(buf: &[u8], model: &[u8], off: u64) -> Result<(), String> {
    let want = &model[off as usize..off as usize + buf.len()];
    match buf.iter().zip(want).position(|(a, b)| a != b) {
        None => Ok(()),
        Some(at) => Err(format!(
            "read {off}+{} differs at byte {} (got {}, want {})",
            buf.len(),
            off as usize + at,
            buf[at],
            want[at]
        )),
    }
}

/// Runs `ops` operations on `path` (created empty) with files up to `max_len`.
pub fn run(path: &Path, ops: usize, seed: u64, max_len: u64) -> Result<FsxStats, String> {
    let mut rng = StdRng::seed_from_u64(seed);
    let _ = std::fs::remove_file(path);
    let mut f = open(path).map_err(|e| e.to_string())?;
    let mut model: Vec<u8> = Vec::new();
    let mut st = FsxStats::default();
    let fail = |i: usize, what: String| format!("op {i} (seed {seed}): {what}");
    for i in 0..ops {
        st.ops += 1;
        let size = model.len() as u64;
        match rng.gen_range(0..100) {
            0..=29 => {
                let off = rng.gen_range(0..max_len);
                let len = rng.gen_range(1..=(max_len - off).min(64 * 1024)) as usize;
                let b: u8 = rng.gen();
                let data: Vec<u8> = (0..len).map(|x| b.wrapping_add(x as u8)).collect();
                f.write_all_at(&data, off)
                    .map_err(|e| fail(i, format!("write: {e}")))?;
                let end = off as usize + len;
                if model.len() < end {
                    model.resize(end, 0);
                }
                model[off as usize..end].copy_from_slice(&data);
                st.writes += 1;
            }
            30..=59 => {
                if size == 0 {
                    continue;
                }
                let off = rng.gen_range(0..size);
                let len = rng.gen_range(1..=(size - off).min(128 * 1024)) as usize;
                let mut buf = vec![0u8; len];
                f.read_exact_at(&mut buf, off)
                    .map_err(|e| fail(i, format!("read {off}+{len}: {e}")))?;
                same_as_model(&buf, &model, off).map_err(|e| fail(i, e))?;
                st.reads += 1;
                st.bytes_checked += len as u64;
            }
            60..=69 => {
                let len = rng.gen_range(0..max_len);
                f.set_len(len)
                    .map_err(|e| fail(i, format!("truncate: {e}")))?;
                model.resize(len as usize, 0);
                st.truncates += 1;
            }
            70..=79 => {
                if size == 0 {
                    continue;
                }
                let off = rng.gen_range(0..size);
                let len = rng.gen_range(1..=(size - off).min(256 * 1024));
                punch(&f, off, len).map_err(|e| fail(i, e))?;
                let end = (off + len).min(size) as usize;
                model[off as usize..end].fill(0);
                st.punches += 1;
            }
            80..=89 => {
                if size == 0 {
                    continue;
                }
                let off = rng.gen_range(0..size);
                let len = rng.gen_range(1..=(size - off).min(16 * 1024)) as usize;
                let b: u8 = rng.gen();
                let data: Vec<u8> = (0..len).map(|x| b ^ (x as u8)).collect();
                mmap_write(&f, off, &data).map_err(|e| fail(i, e))?;
                model[off as usize..off as usize + len].copy_from_slice(&data);
                st.mmap_writes += 1;
            }
            90..=94 => f.sync_all().map_err(|e| fail(i, format!("fsync: {e}")))?,
            _ => {
                drop(f);
                f = open(path).map_err(|e| fail(i, format!("reopen: {e}")))?;
                let len = f.metadata().map_err(|e| e.to_string())?.len();
                if len != model.len() as u64 {
                    return Err(fail(
                        i,
                        format!("size after reopen {len}, want {}", model.len()),
                    ));
                }
            }
        }
    }
    // Final full comparison after a reopen.
    drop(f);
    let all = std::fs::read(path).map_err(|e| e.to_string())?;
    if all != model {
        return Err(format!(
            "final contents differ (seed {seed}): {} vs {} bytes",
            all.len(),
            model.len()
        ));
    }
    st.bytes_checked += all.len() as u64;
    Ok(st)
}
