//! A file unlinked while open lives until its last close (POSIX), across
//! mounts: the meta keeps the nameless inode while any live mount reports
//! it open, and frees it (its blocks to garbage collection) once none does,
//! whether the holder closed it or died.

use sparefs_proto::{Errno, InodeId};
use sparefs_tests::fs_cluster;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

/// Waits until the meta no longer knows inode `ino`.
async fn freed(c: &sparefs_tests::MetaCluster, ino: u64, within: Duration) -> f64 {
    let client = c.client();
    let start = Instant::now();
    loop {
        match client.getattr(InodeId(ino)).await {
            Err(e) if e.errno() == Errno::ENOENT => return start.elapsed().as_secs_f64(),
            Ok(a) => assert_eq!(a.nlink, 0, "an orphan has no name"),
            Err(e) => panic!("getattr: {e}"),
        }
        assert!(start.elapsed() < within, "inode {ino} was never freed");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_file_unlinked_while_open_lives_until_its_last_close() {
    let (mut c, mounts) = fs_cluster(3, 2).await.expect("cluster");
    let (a, b) = (mounts[0].clone(), mounts[1].clone());
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(a.join("kept"), &data).expect("write");
    std::fs::write(a.join("dies"), &data).expect("write");

    // Open on mount b, unlinked through mount a.
    let mut held = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(b.join("kept"))
        .expect("open");
    let ino = held.metadata().expect("fstat").ino();
    std::fs::remove_file(a.join("kept")).expect("unlink");
    tokio::time::sleep(Duration::from_millis(1500)).await; // b's entry cache
    assert!(!b.join("kept").exists(), "the name is gone");
    // Well past the time an orphan could be freed: still all there, and
    // writable.
    tokio::time::sleep(sparefs_meta::leader::ORPHAN_QUIET + Duration::from_secs(8)).await;
    let mut back = Vec::new();
    held.seek(SeekFrom::Start(0)).expect("seek");
    held.read_to_end(&mut back)
        .expect("read an unlinked open file");
    assert!(back == data, "an unlinked open file read other bytes");
    held.seek(SeekFrom::End(0)).expect("seek");
    held.write_all(b"tail").expect("write");
    held.sync_all().expect("fsync");
    assert_eq!(held.metadata().expect("fstat").nlink(), 0);
    assert_eq!(held.metadata().expect("fstat").len(), data.len() as u64 + 4);
    drop(held);
    let s = freed(&c, ino, Duration::from_secs(40)).await;
    println!("an unlinked file was freed {s:.1} s after its last close");

    // The holder's mount dies with the file open: freed once its lease ends.
    let held = std::fs::File::open(b.join("dies")).expect("open");
    let ino = held.metadata().expect("fstat").ino();
    std::fs::remove_file(a.join("dies")).expect("unlink");
    tokio::time::sleep(Duration::from_secs(3)).await;
    c.kill_mount(2);
    let s = freed(&c, ino, Duration::from_secs(60)).await;
    println!("an unlinked file open on a killed mount was freed {s:.1} s later");
    drop(held);
}
