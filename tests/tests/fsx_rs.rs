//! fsx-rs (crates.io `fsx`, installed by scripts/deps.sh) with every
//! operation it knows on Linux (tests/fsx/all-ops.toml: reads, writes,
//! mmap reads and writes, truncate, fsync, fdatasync, msync invalidate,
//! posix_fallocate, punch hole, sendfile, fadvise, copy_file_range,
//! close/open) on a 4 MiB file through a mount, while other programs write,
//! read and copy files on the same mount. Longer runs: bench/fsx-long.sh.

use sparefs_tests::cluster_with;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Writes, reads back and copies files under `dir` until `stop`.
fn background_load(dir: &Path, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    let dir = dir.to_path_buf();
    std::thread::spawn(move || {
        let mut rounds = 0;
        // Modest: overwritten blocks stay until the GC grace period (600 s)
        // ends, and each chunkserver here has 2 GiB.
        let data: Vec<u8> = (0..256 << 10).map(|i: u32| (i % 253) as u8).collect();
        while !stop.load(Ordering::SeqCst) {
            let f = dir.join(format!("load-{}", rounds % 3));
            std::fs::write(&f, &data).expect("load write");
            let back = std::fs::read(&f).expect("load read");
            assert!(back == data, "background load read other bytes");
            std::fs::copy(&f, dir.join("load-copy")).expect("load copy");
            std::fs::remove_file(dir.join("load-copy")).expect("load unlink");
            rounds += 1;
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        rounds
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fsx_rs_with_every_operation_under_load() {
    let fsx = std::env::var("FSX").unwrap_or_else(|_| "fsx".into());
    // Every overwrite leaves garbage until the GC grace period ends: 200,000
    // operations and the load leave a few GiB of it with the default 600 s.
    let mut c = cluster_with(
        3,
        3,
        "8G",
        &["--gc-grace", "60"],
        &["--inventory-every", "10"],
    )
    .await
    .expect("cluster");
    let mounts = [c.spawn_mount(1, 10).expect("mount")];
    let dir = mounts[0].join("fsx");
    std::fs::create_dir(&dir).expect("mkdir");
    let load_dir = mounts[0].join("load");
    std::fs::create_dir(&load_dir).expect("mkdir");
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("fsx/all-ops.toml");
    let artifacts = tempfile::tempdir().expect("tempdir");
    let stop = Arc::new(AtomicBool::new(false));
    let load = background_load(&load_dir, stop.clone());
    let mut failures = Vec::new();
    {
        let seed = 90547;
        let out = Command::new(&fsx)
            .arg("-f")
            .arg(&config)
            .args(["-N", "100000", "-S", &seed.to_string(), "-P"])
            .arg(artifacts.path())
            .arg(dir.join(format!("f{seed}")))
            .output()
            .expect("run fsx (scripts/deps.sh installs it)");
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        if !out.status.success() || !text.contains("All operations completed A-OK") {
            let tail: Vec<&str> = text.lines().rev().take(30).collect();
            failures.push(format!(
                "seed {seed}: {}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            ));
        }
    }
    stop.store(true, Ordering::SeqCst);
    let rounds = load.join().expect("background load");
    println!("fsx-rs: 100,000 operations beside {rounds} rounds of background load");
    assert!(
        failures.is_empty(),
        "fsx-rs failed:\n{}",
        failures.join("\n\n")
    );
}
