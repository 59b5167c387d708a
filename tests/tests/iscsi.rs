//! The iSCSI target against real initiators (libiscsi's iscsi-test-cu,
//! iscsi-inq; qemu-img's iscsi:// driver) over a real TLS cluster: the
//! conformance suite, data round trips with checksums, a chunkserver and
//! the target SIGKILLed under I/O, CHAP and initiator ACL refusals, and
//! hostile bytes on the portal.

use sparefs_tests::{fs_cluster_tls, sparefs_bin, who, MetaCluster};
use sparefs_wire::tls::Role as TlsRole;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const IQN: &str = "iqn.2026-12.org.sparefs:default";

/// A TLS cluster with an iSCSI target process in front of it.
struct Target {
    c: MetaCluster,
    child: Option<Child>,
    portal: String,
}

impl Drop for Target {
    fn drop(&mut self) {
        self.kill();
    }
}

impl Target {
    async fn start() -> Target {
        let (c, _) = fs_cluster_tls(3, 0).await.expect("cluster");
        let port = 3300 + (rand::random::<u16>() % 600);
        let mut t = Target {
            c,
            child: None,
            portal: format!("127.0.0.1:{port}"),
        };
        t.spawn();
        t
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.c.dir.path().join("iscsi.log"))
            .expect("log");
        let child = Command::new(sparefs_bin())
            .args(self.c.tls_args(who(TlsRole::Iscsi, 1)).expect("tls"))
            .args([
                "iscsi",
                "serve",
                "--meta",
                &self.c.meta_list(),
                "--listen",
                &self.portal,
            ])
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("start the target");
        self.child = Some(child);
        let start = Instant::now();
        while std::net::TcpStream::connect(&self.portal).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "target did not listen:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.c.dir.path().join("iscsi.log")).unwrap_or_default()
    }

    /// `sparefs CMD...` as the cluster's admin.
    fn admin(&self, args: &[&str]) -> String {
        self.c.admin(args)
    }

    /// A new image of `mib` MiB exported as a LUN; waits until the target
    /// serves it.
    fn export(&self, path: &str, mib: u64, extra: &[&str]) -> String {
        let m = self.c.meta_list();
        self.admin(&[
            "image",
            "--meta",
            &m,
            "create",
            path,
            "--size",
            &format!("{mib}M"),
        ]);
        let mut a = vec!["iscsi", "export", "--meta", &m, path];
        a.extend_from_slice(extra);
        let out = self.admin(&a);
        let lun = out.trim().rsplit(' ').next().expect("lun").to_string();
        let url = format!("iscsi://{}/{IQN}/{lun}", self.portal);
        let start = Instant::now();
        loop {
            let ok = Command::new("iscsi-inq")
                .arg(&url)
                .output()
                .is_ok_and(|o| o.status.success());
            if ok
                || extra
                    .iter()
                    .any(|e| e.starts_with("--chap") || e.starts_with("--initiators"))
            {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "LUN never served:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        url
    }
}

fn random_file(dir: &std::path::Path, name: &str, mib: usize) -> (PathBuf, String) {
    let p = dir.join(name);
    let mut data = vec![0u8; mib << 20];
    for (i, chunk) in data.chunks_mut(8).enumerate() {
        let x = (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ rand::random::<u64>();
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    std::fs::write(&p, &data).expect("write");
    (p, blake3::hash(&data).to_hex().to_string())
}

fn qemu_write(src: &std::path::Path, url: &str) -> std::process::Output {
    Command::new("qemu-img")
        // -t writeback: qemu-img flushes (SYNCHRONIZE CACHE) at the end;
        // its default for the output, unsafe, never does.
        .args(["convert", "-n", "-t", "writeback", "-f", "raw", "-O", "raw"])
        .arg(src)
        .arg(url)
        .output()
        .expect("qemu-img")
}

/// Reads `mib` MiB of the LUN back and hashes them.
fn qemu_read_hash(url: &str, dir: &std::path::Path, mib: usize) -> String {
    let out = dir.join("readback.raw");
    let o = Command::new("qemu-img")
        .args([
            "dd",
            "-f",
            "raw",
            "-O",
            "raw",
            "bs=1M",
            &format!("count={mib}"),
        ])
        .arg(format!("if={url}"))
        .arg(format!("of={}", out.display()))
        .output()
        .expect("qemu-img dd");
    assert!(
        o.status.success(),
        "qemu-img dd: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let data = std::fs::read(&out).expect("read back");
    let _ = std::fs::remove_file(&out);
    blake3::hash(&data).to_hex().to_string()
}

/// libiscsi's conformance suite, every family, destructive tests allowed:
/// nothing may fail. Skips are listed in the output (each is a feature the
/// target does not claim: EXTENDED COPY, SANITIZE, WRITE ATOMIC, ...).
#[tokio::test(flavor = "multi_thread")]
async fn conformance_suite_passes() {
    let t = Target::start().await;
    let url = t.export("/images/cu.img", 256, &[]);
    let o = Command::new("iscsi-test-cu")
        .args(["--dataloss", "-n", &url])
        .output()
        .expect("iscsi-test-cu (apt-get install libiscsi-bin)");
    let text = String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
    let n = sparefs_tests::cunit_tests_line(&text);
    let (total, ran, passed, failed) = (n[0], n[1], n[2], n[3]);
    let skipped = text.matches("[SKIPPED]").count();
    println!("iscsi-test-cu: {total} tests, {ran} ran, {passed} passed, {failed} failed; {skipped} skip notes");
    let failures: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("[FAILED]") || l.contains(".c:"))
        .collect();
    assert_eq!(
        failed,
        0,
        "iscsi-test-cu failures:\n{}\n--- target log ---\n{}",
        failures.join("\n"),
        t.log()
    );
    assert!(total >= 200, "the suite ran only {total} tests");
}

/// qemu-img writes an image through the target and reads it back, byte
/// for byte; then a second image is written while a chunkserver is
/// SIGKILLed, and reads back intact with no error seen by qemu-img.
#[tokio::test(flavor = "multi_thread")]
async fn qemu_round_trip_survives_a_chunkserver_kill() {
    let mut t = Target::start().await;
    let url = t.export("/images/q.img", 128, &[]);
    let dir = tempfile::tempdir().expect("tmp");
    let (src, sum) = random_file(dir.path(), "a.raw", 64);
    let o = qemu_write(&src, &url);
    assert!(
        o.status.success(),
        "convert: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(qemu_read_hash(&url, dir.path(), 64), sum);

    let (src2, sum2) = random_file(dir.path(), "b.raw", 96);
    let writer = std::thread::spawn({
        let url = url.clone();
        move || qemu_write(&src2, &url)
    });
    std::thread::sleep(Duration::from_millis(400));
    t.c.kill_chunkserver(2);
    let o = writer.join().expect("writer");
    assert!(
        o.status.success(),
        "convert under a chunkserver kill: {}\n{}",
        String::from_utf8_lossy(&o.stderr),
        t.log()
    );
    assert_eq!(qemu_read_hash(&url, dir.path(), 96), sum2);
    t.c.spawn_chunkserver(2, "2G").expect("restart chunkserver");
}

/// What qemu-img wrote (it ends with SYNCHRONIZE CACHE) is all there after
/// the target is SIGKILLed and started again.
#[tokio::test(flavor = "multi_thread")]
async fn synced_data_survives_a_target_kill() {
    let mut t = Target::start().await;
    let url = t.export("/images/k.img", 64, &[]);
    let dir = tempfile::tempdir().expect("tmp");
    let (src, sum) = random_file(dir.path(), "a.raw", 32);
    let o = qemu_write(&src, &url);
    assert!(
        o.status.success(),
        "convert: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    t.kill();
    t.spawn();
    assert_eq!(qemu_read_hash(&url, dir.path(), 32), sum);
}

/// CHAP and the initiator list: the wrong secret, no secret, and an
/// initiator not on the list are refused at login; the right ones work.
#[tokio::test(flavor = "multi_thread")]
async fn chap_and_initiator_list_refuse_strangers() {
    let t = Target::start().await;
    let allowed = "iqn.2026-12.org.example:allowed";
    let url = t.export(
        "/images/c.img",
        16,
        &["--chap", "alice:correcthorse12", "--initiators", allowed],
    );
    let lun_path = url
        .split(&format!("{}/", t.portal))
        .nth(1)
        .expect("path")
        .to_string();
    let inq = |user: Option<&str>, initiator: &str| -> bool {
        let u = match user {
            Some(u) => format!("iscsi://{u}@{}/{lun_path}", t.portal),
            None => url.clone(),
        };
        Command::new("iscsi-inq")
            .args(["-i", initiator, &u])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    // The export record takes a refresh to reach the target.
    let start = Instant::now();
    while !inq(Some("alice%correcthorse12"), allowed) {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "CHAP login never worked:\n{}",
            t.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(!inq(None, allowed), "no CHAP accepted");
    assert!(
        !inq(Some("alice%wrongwrongwrong"), allowed),
        "wrong secret accepted"
    );
    assert!(
        !inq(Some("mallory%correcthorse12"), allowed),
        "wrong user accepted"
    );
    assert!(
        !inq(
            Some("alice%correcthorse12"),
            "iqn.2026-12.org.example:other"
        ),
        "initiator outside the list accepted"
    );
}

/// Hostile bytes on the portal: garbage, a PDU announcing a 16 MiB data
/// segment, a SCSI command before login, hundreds of idle connections.
/// Each is refused or dropped; the target keeps serving and stays small.
#[tokio::test(flavor = "multi_thread")]
async fn hostile_connections_are_dropped_and_the_target_serves_on() {
    let t = Target::start().await;
    let url = t.export("/images/h.img", 16, &[]);
    let connect = || std::net::TcpStream::connect(&t.portal).expect("connect");
    let closed = |mut s: std::net::TcpStream| -> bool {
        s.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(_) => return false,
            }
        }
    };
    // Garbage.
    let mut s = connect();
    s.write_all(&[0xffu8; 48]).expect("send");
    assert!(closed(s), "garbage left the connection open");
    // A login request announcing a 16 MiB data segment, then silence.
    let mut s = connect();
    let mut h = [0u8; 48];
    h[0] = 0x43;
    h[5] = 0xff;
    h[6] = 0xff;
    h[7] = 0xff;
    s.write_all(&h).expect("send");
    assert!(closed(s), "oversized segment left the connection open");
    // A SCSI command before any login.
    let mut s = connect();
    let mut h = [0u8; 48];
    h[0] = 0x01;
    h[1] = 0x80;
    s.write_all(&h).expect("send");
    assert!(closed(s), "a command before login was not refused");
    // Idle connections: each is held until the login timeout (or refused
    // past the target's limit); none stops the target.
    sparefs_wire::service::raise_descriptor_limit();
    let want = 10_000.min(sparefs_tests::open_file_limit().saturating_sub(2_000) as usize);
    let idle: Vec<std::net::TcpStream> = (0..want)
        .filter_map(|_| std::net::TcpStream::connect(&t.portal).ok())
        .collect();
    println!("{} idle connections open", idle.len());
    let o = Command::new("iscsi-inq")
        .arg(&url)
        .output()
        .expect("iscsi-inq");
    assert!(
        o.status.success(),
        "target stopped serving with idle connections: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    drop(idle);
    let pid = t.child.as_ref().expect("child").id();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("target alive");
    let rss_kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(rss_kb < 512 * 1024, "target RSS {rss_kb} KiB");
}

/// Mutual CHAP with a real initiator: the target proves itself with its
/// own secret (an initiator expecting another secret refuses it), and a
/// session with header digests reads and writes correctly.
#[tokio::test(flavor = "multi_thread")]
async fn mutual_chap_and_header_digests() {
    let t = Target::start().await;
    let url = t.export(
        "/images/m.img",
        16,
        &[
            "--chap",
            "alice:correcthorse12",
            "--mutual",
            "target:batterystaple9",
        ],
    );
    let lun_path = url
        .split(&format!("{}/", t.portal))
        .nth(1)
        .expect("path")
        .to_string();
    let with = |query: &str| {
        format!(
            "iscsi://alice%correcthorse12@{}/{lun_path}?{query}",
            t.portal
        )
    };
    let inq = |u: &str| {
        Command::new("iscsi-inq")
            .arg(u)
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let good = with("target_user=target&target_password=batterystaple9");
    let start = Instant::now();
    while !inq(&good) {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "mutual CHAP never worked:\n{}",
            t.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        !inq(&with("target_user=target&target_password=notthetarget1")),
        "the initiator accepted a target that does not know its secret"
    );
    // Header digests (CRC32C) on every PDU both ways, 4 KiB random reads
    // and the data checked by a round trip through the same options.
    let digests = with("target_user=target&target_password=batterystaple9&header_digest=crc32c");
    let o = Command::new("iscsi-perf")
        .args(["-r", "-m", "4", "-b", "8", "-t", "2", &digests])
        .output()
        .expect("iscsi-perf");
    let text = String::from_utf8_lossy(&o.stdout).replace('\r', "\n");
    assert!(
        o.status.success() && text.contains("iops average"),
        "reads with header digests: {text}{}\n{}",
        String::from_utf8_lossy(&o.stderr),
        t.log()
    );
}
