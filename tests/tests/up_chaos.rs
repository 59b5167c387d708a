//! `sparefs up` end to end: it prints `ready`, the mount works, `status
//! --json` has the documented shape, `sparefs chaos` (SIGKILL and SIGSTOP of
//! chunkservers and the meta leader under a verifying workload) ends with
//! no application error and full protection, Ctrl-C stops everything, and
//! a second `up` on the same directory has the same files.

use sparefs_tests::{is_mounted, sparefs_bin};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `sparefs up`, stopped (and its mount detached) on drop.
struct Up {
    child: Child,
    mount: PathBuf,
}

impl Up {
    fn start(data: &Path, port: u16) -> Up {
        let mut child = Command::new(sparefs_bin())
            .args(["up", "--data"])
            .arg(data)
            .args([
                "--port",
                &port.to_string(),
                // Its iSCSI target on 127.0.0.1:PORT, away from a
                // developer's own cluster on 3260.
                "--iscsi-port",
                &port.to_string(),
                "--out-after",
                "20",
                "--gc-grace",
                "10",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn sparefs up");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                println!("up: {line}");
                let _ = tx.send(line);
            }
        });
        let up = Up {
            child,
            mount: data.join("mnt"),
        };
        let start = Instant::now();
        loop {
            match rx.recv_timeout(Duration::from_secs(1)) {
                Ok(line) if line.contains("ready") => break,
                _ => assert!(
                    start.elapsed() < Duration::from_secs(90),
                    "sparefs up never printed ready"
                ),
            }
        }
        assert!(is_mounted(&up.mount));
        up
    }

    fn stop(mut self) {
        #[allow(unsafe_code)]
        // SAFETY: signalling our own child.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGINT);
        }
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(30) {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(
            matches!(self.child.try_wait(), Ok(Some(_))),
            "sparefs up did not stop on Ctrl-C"
        );
        assert!(!is_mounted(&self.mount), "mount left behind");
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if is_mounted(&self.mount) {
            let _ = Command::new("umount").arg("-l").arg(&self.mount).status();
        }
    }
}

#[test]
fn up_survives_chaos_and_restarts_with_the_same_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("cluster");
    let port = 7460;
    let up = Up::start(&data, port);
    let file = up.mount.join("kept");
    std::fs::write(&file, b"still here").expect("write");
    let out = Command::new(sparefs_bin())
        .args(["status", "--json", "--data"])
        .arg(&data)
        .output()
        .expect("status");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status json");
    assert_eq!(v["meta"].as_array().map(|a| a.len()), Some(3), "{v}");
    assert_eq!(
        v["chunkservers"].as_array().map(|a| a.len()),
        Some(3),
        "{v}"
    );
    for cs in v["chunkservers"].as_array().into_iter().flatten() {
        for key in [
            "id",
            "address",
            "state",
            "capacity_bytes",
            "used_bytes",
            "pid",
        ] {
            assert!(!cs[key].is_null(), "chunkserver field {key} missing: {cs}");
        }
    }
    for key in ["protected", "degraded", "unreadable"] {
        assert!(v["health"][key].is_u64(), "health.{key}: {v}");
    }
    assert!(
        v["repair"]["blocks_to_repair"].is_u64(),
        "repair progress: {v}"
    );
    let chaos = Command::new(sparefs_bin())
        .args(["chaos", "--data"])
        .arg(&data)
        .args([
            "--every",
            "5",
            "--duration",
            "30",
            "--down-for",
            "2",
            "--sigstop",
            "--seed",
            "1",
        ])
        .output()
        .expect("sparefs chaos");
    let report = String::from_utf8_lossy(&chaos.stdout);
    println!("{report}");
    assert!(chaos.status.success(), "chaos failed: {report}");
    assert!(
        report.contains("0 errors seen by the application"),
        "{report}"
    );
    up.stop();
    let up = Up::start(&data, port);
    assert_eq!(
        std::fs::read(up.mount.join("kept")).expect("read after restart"),
        b"still here"
    );
    up.stop();
}
