//! Conversions between the client's types and fuser's, in one place each:
//! attributes, file kinds, times, and errors to errno.

use fuser::{Errno, FileAttr, FileType, INodeNo};
use sparefs_client::ClientError;
use sparefs_proto::namespace::{
    Attr, Caller, FileKind, Time, TimeSet, OPEN_EXEC, OPEN_READ, OPEN_WRITE,
};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub fn errno(e: &ClientError) -> Errno {
    if !matches!(e, ClientError::Errno(_)) {
        tracing::warn!("{e}");
    }
    Errno::from_i32(e.errno().code())
}

pub fn kind(k: FileKind) -> FileType {
    match k {
        FileKind::File => FileType::RegularFile,
        FileKind::Dir => FileType::Directory,
        FileKind::Symlink => FileType::Symlink,
        FileKind::Fifo => FileType::NamedPipe,
        FileKind::Socket => FileType::Socket,
        FileKind::CharDev => FileType::CharDevice,
        FileKind::BlockDev => FileType::BlockDevice,
    }
}

/// The kind encoded in a mode's S_IFMT bits.
pub fn kind_of_mode(mode: u32) -> Option<FileKind> {
    Some(match mode & 0o170000 {
        0o100000 | 0 => FileKind::File,
        0o040000 => FileKind::Dir,
        0o120000 => FileKind::Symlink,
        0o010000 => FileKind::Fifo,
        0o140000 => FileKind::Socket,
        0o020000 => FileKind::CharDev,
        0o060000 => FileKind::BlockDev,
        _ => return None,
    })
}

pub fn system_time(t: Time) -> SystemTime {
    if t.secs >= 0 {
        UNIX_EPOCH + Duration::new(t.secs as u64, t.nanos)
    } else {
        UNIX_EPOCH - Duration::new(t.secs.unsigned_abs(), 0) + Duration::from_nanos(t.nanos as u64)
    }
}

pub fn time(t: SystemTime) -> Time {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => Time {
            secs: d.as_secs() as i64,
            nanos: d.subsec_nanos(),
        },
        Err(e) => {
            let d = e.duration();
            let (mut secs, mut nanos) = (-(d.as_secs() as i64), d.subsec_nanos());
            if nanos > 0 {
                secs -= 1;
                nanos = 1_000_000_000 - nanos;
            }
            Time { secs, nanos }
        }
    }
}

pub fn time_set(t: fuser::TimeOrNow) -> TimeSet {
    match t {
        fuser::TimeOrNow::Now => TimeSet::Now,
        fuser::TimeOrNow::SpecificTime(s) => TimeSet::At(time(s)),
    }
}

pub fn file_attr(a: &Attr, size: u64) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino.0),
        size,
        blocks: size.div_ceil(512),
        atime: system_time(a.atime),
        mtime: system_time(a.mtime),
        ctime: system_time(a.ctime),
        crtime: system_time(a.crtime),
        kind: kind(a.kind),
        perm: (a.perm & 0o7777) as u16,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev,
        blksize: 128 * 1024,
        flags: 0,
    }
}

/// What an open(2) with `flags` asks of the file's permissions
/// (`ReadOp::Open`), as the kernel checked it before asking.
pub fn open_access(flags: i32) -> u32 {
    // The kernel opens a program for exec(2) read-only with __FMODE_EXEC:
    // that needs execute permission, not read.
    const FMODE_EXEC: i32 = 0x20;
    if flags & FMODE_EXEC != 0 {
        return OPEN_EXEC;
    }
    match flags & libc::O_ACCMODE {
        libc::O_RDONLY => OPEN_READ,
        libc::O_WRONLY => OPEN_WRITE,
        _ => OPEN_READ | OPEN_WRITE,
    }
}

/// The caller of a FUSE request, with supplementary groups from
/// /proc/PID/status (FUSE passes only uid, gid and pid).
pub fn caller(uid: u32, gid: u32, pid: u32) -> Caller {
    let mut groups = Vec::new();
    if uid != 0 {
        if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
            if let Some(line) = status.lines().find(|l| l.starts_with("Groups:")) {
                groups = line
                    .split_whitespace()
                    .skip(1)
                    .filter_map(|g| g.parse().ok())
                    .take(256)
                    .collect();
            }
        }
    }
    Caller { uid, gid, groups }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip_including_before_the_epoch() {
        for t in [
            Time { secs: 0, nanos: 0 },
            Time {
                secs: 1_700_000_000,
                nanos: 123,
            },
            Time {
                secs: -5,
                nanos: 250_000_000,
            },
        ] {
            assert_eq!(time(system_time(t)), t);
        }
    }
}
