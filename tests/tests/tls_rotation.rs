//! Rotating a cluster's CA without stopping it, as docs/security.md says:
//! (1) every process trusts the new CA as well (`sparefs cert trust --add`,
//! SIGHUP), (2) every process gets a certificate of the new CA (`sparefs
//! cert issue`, SIGHUP), (3) every process stops trusting the old CA
//! (`sparefs cert trust --remove`, SIGHUP). A writer on the mount runs
//! throughout and never fails; new connections work after each step (a
//! restarted replica, fresh clients); at the end a certificate of the old
//! CA is refused.

use sparefs_proto::msg::{Reply, Request};
use sparefs_tests::{fs_cluster_tls, sparefs_bin, who, TlsRole};
use sparefs_wire::conn::Conn;
use sparefs_wire::tls::{Credentials, Tls};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn cert(args: &[&str]) {
    sparefs_tests::run_ok(
        std::process::Command::new(sparefs_bin())
            .arg("cert")
            .args(args),
        &format!("sparefs cert {args:?}"),
    );
}

/// Whether a fresh connection with `creds` gets a status answer from
/// every replica.
async fn answered_by_all(addrs: &[String], creds: &Credentials) -> bool {
    let Ok(tls) = Tls::new(creds) else {
        return false;
    };
    for a in addrs {
        let Ok(conn) = Conn::open_with(a, Duration::from_secs(2), Some(&tls)).await else {
            return false;
        };
        if !matches!(
            conn.call(Request::Status, Duration::from_secs(2)).await,
            Ok(Reply::Status(_))
        ) {
            return false;
        }
    }
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_rotates_while_the_cluster_serves() -> anyhow::Result<()> {
    let (mut c, mounts) = fs_cluster_tls(3, 1).await?;
    let addrs: Vec<String> = c.addrs.values().cloned().collect();
    let old_ca = c.ca.as_ref().expect("TLS").cert_pem().to_string();
    let root = c.dir.path().to_path_buf();
    let old_pem = root.join("old-ca.pem");
    std::fs::write(&old_pem, &old_ca)?;
    let new_dir = root.join("new-ca");
    cert(&["ca", new_dir.to_str().expect("utf-8")]);
    let new_pem = new_dir.join("ca.pem");
    let admin_dir = c.tls_dir(who(TlsRole::Admin, 0))?.expect("TLS");
    let creds: Vec<(&str, u64, PathBuf)> = (1..=3)
        .map(|i| ("meta", i, root.join(format!("tls/meta{i}"))))
        .chain((1..=3).map(|i| ("chunkserver", i, root.join(format!("tls/chunkserver{i}")))))
        .chain([
            ("mount", 1, root.join("tls/mount1")),
            ("admin", 0, admin_dir.clone()),
        ])
        .collect();
    for (_, _, d) in &creds {
        assert!(
            d.join("cert.pem").exists(),
            "{} has credentials",
            d.display()
        );
    }
    let mount_pid = c.mounts.get(&1).map(|(p, _)| p.id()).expect("mount 1");
    let hangup = |c: &mut sparefs_tests::MetaCluster| {
        for i in 1..=3 {
            c.signal(i, libc::SIGHUP);
            c.signal_chunkserver(i, libc::SIGHUP);
        }
        #[allow(unsafe_code)]
        // SAFETY: signalling the mount process this test started.
        unsafe {
            libc::kill(mount_pid as i32, libc::SIGHUP);
        }
    };

    // A writer on the mount for the whole rotation.
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let writer = {
        let (stop, written, dir) = (stop.clone(), written.clone(), mounts[0].clone());
        std::thread::spawn(move || -> std::io::Result<()> {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let p = dir.join(format!("w{}", n % 8));
                let bytes = vec![(n % 251) as u8; 200_000 + (n as usize % 7) * 1000];
                std::fs::write(&p, &bytes)?;
                std::fs::File::open(&p)?.sync_all()?;
                if std::fs::read(&p)? != bytes {
                    return Err(std::io::Error::other(format!(
                        "{} read back wrong",
                        p.display()
                    )));
                }
                n += 1;
                written.store(n, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(50));
            }
            Ok(())
        })
    };
    let progressed = |since: u64| {
        let w = written.clone();
        async move {
            let start = std::time::Instant::now();
            while w.load(Ordering::Relaxed) < since + 3 {
                assert!(
                    start.elapsed() < Duration::from_secs(30),
                    "the writer stalled"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };

    // 1. Trust both.
    for (_, _, d) in &creds {
        cert(&["trust", s(d), "--add", s(&new_pem)]);
    }
    hangup(&mut c);
    progressed(written.load(Ordering::Relaxed)).await;

    // 2. Certificates of the new CA.
    for (role, id, d) in &creds {
        cert(&[
            "issue",
            role,
            &id.to_string(),
            "--ca",
            s(&new_dir),
            "--out",
            s(d),
        ]);
    }
    hangup(&mut c);
    progressed(written.load(Ordering::Relaxed)).await;
    let admin = Credentials::load(&admin_dir)?;
    assert_eq!(admin.trusted_cas()?, 2);
    assert!(
        answered_by_all(&addrs, &admin).await,
        "new admin, both trusted"
    );

    // 3. Trust the new CA only.
    for (_, _, d) in &creds {
        cert(&["trust", s(d), "--remove", s(&old_pem)]);
    }
    hangup(&mut c);
    progressed(written.load(Ordering::Relaxed)).await;

    // New connections everywhere: a replica restarts with the rotated
    // credentials and rejoins; fresh clients of the new CA are answered.
    let leader = c.wait_leader(Duration::from_secs(10)).await?;
    let restarted = if leader == 3 { 2 } else { 3 };
    c.kill(restarted);
    c.spawn(restarted, false)?;
    let admin = Credentials::load(&admin_dir)?;
    assert_eq!(admin.trusted_cas()?, 1);
    let start = std::time::Instant::now();
    while !answered_by_all(&addrs, &admin).await {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the rotated cluster does not answer a new admin: {}",
            c.log_tail(restarted)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The restarted replica leads: the mount (reloaded, not restarted)
    // must open a new connection to it to keep writing.
    let start = std::time::Instant::now();
    loop {
        let moved = c
            .client()
            .transfer_leader(sparefs_proto::ReplicaId(restarted))
            .await;
        if moved.is_ok() && c.wait_leader(Duration::from_secs(5)).await? == restarted {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "replica {restarted} did not take the lead: {moved:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    progressed(written.load(Ordering::Relaxed)).await;

    // The old CA's certificates are refused now, whatever they trust.
    let stale = c.ca.as_ref().expect("TLS").issue(who(TlsRole::Admin, 0))?;
    assert!(!answered_by_all(&addrs, &stale).await, "an old-CA admin");
    let mut stale_trusting_both = stale.clone();
    stale_trusting_both.trust(&std::fs::read_to_string(&new_pem)?)?;
    assert!(
        !answered_by_all(&addrs, &stale_trusting_both).await,
        "an old-CA admin that trusts the new CA"
    );

    stop.store(true, Ordering::Relaxed);
    writer
        .join()
        .map_err(|_| anyhow::anyhow!("writer panicked"))??;
    assert!(written.load(Ordering::Relaxed) > 10);
    Ok(())
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}
