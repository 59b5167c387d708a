//! Files at rest: a fresh cluster started with umask 000, and a data
//! directory made world-readable beforehand (as an older version left it),
//! keeps everything it writes from other users: each daemon's directory is
//! 0700 and nothing under it is readable, writable or enterable by group or
//! others (fragments, the meta's database with inline file contents and
//! the cluster key, the chunkserver token).

use sparefs_tests::fs_cluster;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Every path under `dir` (itself included) whose mode gives group or
/// others any access, with that mode.
fn open_to_others(dir: &Path) -> Vec<(String, u32)> {
    let mut found = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(p) = todo.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        let mode = meta.permissions().mode() & 0o7777;
        if !meta.file_type().is_symlink() && mode & 0o077 != 0 {
            found.push((p.display().to_string(), mode));
        }
        if meta.is_dir() {
            if let Ok(rd) = std::fs::read_dir(&p) {
                todo.extend(rd.flatten().map(|e| e.path()));
            }
        }
    }
    found
}

#[allow(unsafe_code)]
fn set_umask(mask: u32) {
    // SAFETY: umask cannot fail and touches no memory; this test binary
    // runs this one test, so no other thread creates files meanwhile.
    unsafe { libc::umask(mask) };
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_cluster_keeps_its_files_from_other_users() -> anyhow::Result<()> {
    set_umask(0);
    let (mut cluster, mounts) = fs_cluster(1, 1).await?;
    // Inline (small) and erasure-coded (large) contents, then a restart of
    // a chunkserver whose directory was opened up meanwhile.
    std::fs::write(mounts[0].join("small"), b"inline bytes")?;
    std::fs::write(mounts[0].join("large"), vec![7u8; 3 << 20])?;
    let fsync = std::fs::File::open(mounts[0].join("large"))?;
    fsync.sync_all()?;
    cluster.kill_chunkserver(1);
    std::fs::set_permissions(
        cluster.chunkserver_dir(1),
        std::fs::Permissions::from_mode(0o755),
    )?;
    cluster.spawn_chunkserver(1, "2G")?;
    // The new process listens only once it has made its directory private
    // (the meta may still count the old one up, so ask the socket).
    let address = cluster.chunkserver_address(1);
    let started = std::time::Instant::now();
    while tokio::net::TcpStream::connect(&address).await.is_err() {
        anyhow::ensure!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "the restarted chunkserver never listened"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    cluster
        .wait_chunkservers(3, std::time::Duration::from_secs(20))
        .await?;
    let mut dirs = vec![cluster.data_dir(1)];
    dirs.extend((1..=3).map(|n| cluster.chunkserver_dir(n)));
    let mut bad = Vec::new();
    for d in &dirs {
        let mode = std::fs::metadata(d)?.permissions().mode() & 0o7777;
        assert_eq!(mode, 0o700, "{} is {mode:o}", d.display());
        bad.extend(open_to_others(d));
    }
    assert!(
        std::fs::read_dir(cluster.chunkserver_dir(1).join("fragments"))?
            .next()
            .is_some(),
        "no fragments were written: the check above saw nothing"
    );
    assert!(bad.is_empty(), "open to other users: {bad:#?}");
    Ok(())
}
