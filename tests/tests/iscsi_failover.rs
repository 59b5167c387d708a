//! iSCSI failover between target processes on different "hosts" (their own
//! addresses; a network namespace for the one that is cut off), driven by
//! a small libiscsi initiator of ours (tests/c/iscsi-writer.c) that writes
//! numbered, checksummed blocks with FUA and moves to the next portal when
//! a write fails:
//! - the active target SIGKILLed: the LUN comes back on the standby, every
//!   acknowledged write is there, the takeover time is printed, and the
//!   killed target started again rejoins as standby;
//! - the active target cut off from everything (network namespace): the
//!   standby takes over, nothing written through the cut-off target after
//!   that is visible, and once the link heals it rejoins as standby;
//! - the fence itself, without iSCSI: a writer whose fence was taken over
//!   stores blocks but can commit nothing;
//! - persistent reservations made through one target are seen through the
//!   other after failover, and libiscsi's multipath tests pass with the
//!   URLs of two targets;
//! - a LUN reset on one target reaches the nexuses of another.

use sparefs_client::{ClientError, DataClient, OpenFile};
use sparefs_proto::namespace::{NsReply, WriteOp};
use sparefs_proto::{Errno, InodeId};
use sparefs_tests::data::{get, pattern};
use sparefs_tests::{
    cunit_tests_line, fs_cluster_of, fs_cluster_tls, ip, ip_must as must, sparefs_bin, who,
    MetaCluster,
};
use sparefs_wire::tls::Role as TlsRole;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const IQN: &str = "iqn.2026-12.org.sparefs:default";

/// The initiator program, built against libiscsi (scripts/deps.sh
/// installs libiscsi-dev and gcc).
fn writer_bin(dir: &Path) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("c/iscsi-writer.c");
    let out = dir.join("iscsi-writer");
    let o = Command::new("cc")
        .args(["-O2", "-Wall", "-o"])
        .arg(&out)
        .arg(&src)
        .arg("-liscsi")
        .output()
        .expect("cc (apt-get install gcc libiscsi-dev)");
    assert!(
        o.status.success(),
        "building iscsi-writer: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

/// A target process, maybe inside a network namespace.
struct TargetProc {
    portal: String,
    child: Option<Child>,
    log: PathBuf,
    netns: Option<String>,
    extra: Vec<String>,
}

impl TargetProc {
    fn spawn(&mut self, c: &MetaCluster) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log");
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut cmd = Command::new("ip");
                cmd.args(["netns", "exec", ns]).arg(sparefs_bin());
                cmd
            }
            None => Command::new(sparefs_bin()),
        };
        let child = cmd
            .args(c.tls_args(who(TlsRole::Iscsi, 1)).expect("tls"))
            .args([
                "iscsi",
                "serve",
                "--meta",
                &c.meta_list(),
                "--listen",
                &self.portal,
            ])
            .args(&self.extra)
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("start a target");
        self.child = Some(child);
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for TargetProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A cluster with target processes in front of it.
struct Rig {
    c: MetaCluster,
    targets: Vec<TargetProc>,
    writer: PathBuf,
    tmp: tempfile::TempDir,
}

/// What one run of `iscsi-writer write` reported.
#[derive(Default, Debug)]
struct WriteRun {
    /// Block → the last sequence number acknowledged in it.
    last: HashMap<u64, u64>,
    acks: u64,
    last_seq: Option<u64>,
    /// Milliseconds since the writer started: first failure, resumption,
    /// and the gap between them.
    failed_ms: Option<u64>,
    resumed: Option<(u64, String, u64)>,
}

fn parse_run(out: &str) -> WriteRun {
    let mut r = WriteRun::default();
    for l in out.lines() {
        let p: Vec<&str> = l.split_whitespace().collect();
        match p.as_slice() {
            ["ack", seq, block, _ms] => {
                let (seq, block): (u64, u64) =
                    (seq.parse().expect("seq"), block.parse().expect("block"));
                r.last.insert(block, seq);
                r.acks += 1;
                r.last_seq = Some(seq);
            }
            ["fail", _seq, ms, ..] => {
                r.failed_ms.get_or_insert(ms.parse().expect("ms"));
            }
            ["resumed", _seq, ms, url, gap] if r.resumed.is_none() => {
                r.resumed = Some((
                    ms.parse().expect("ms"),
                    url.to_string(),
                    gap.parse().expect("gap"),
                ));
            }
            _ => {}
        }
    }
    r
}

impl Rig {
    fn new(c: MetaCluster, portals: &[(String, Option<String>, Vec<String>)]) -> Rig {
        let tmp = tempfile::tempdir().expect("tmp");
        let writer = writer_bin(tmp.path());
        let targets = portals
            .iter()
            .enumerate()
            .map(|(i, (portal, netns, extra))| TargetProc {
                portal: portal.clone(),
                child: None,
                log: c.dir.path().join(format!("iscsi{i}.log")),
                netns: netns.clone(),
                extra: extra.clone(),
            })
            .collect();
        Rig {
            c,
            targets,
            writer,
            tmp,
        }
    }

    fn start(&mut self, i: usize) {
        let t = &mut self.targets[i];
        t.spawn(&self.c);
    }

    fn logs(&self) -> String {
        self.targets
            .iter()
            .map(|t| format!("--- target {} ---\n{}", t.portal, t.log_text()))
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn admin(&self, args: &[&str]) -> String {
        self.c.admin(args)
    }

    /// A new image exported; its LUN number.
    fn export(&self, path: &str, mib: u64) -> u64 {
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
        let out = self.admin(&["iscsi", "export", "--meta", &m, path]);
        out.trim()
            .rsplit(' ')
            .next()
            .and_then(|l| l.parse().ok())
            .expect("LUN number")
    }

    /// (active portal, epoch, standby portals) of a LUN, from `iscsi list`.
    fn lun_state(&self, lun: u64) -> Option<(Option<String>, u64, Vec<String>)> {
        let m = self.c.meta_list();
        let mut cmd = Command::new(sparefs_bin());
        cmd.args(self.c.tls_args(who(TlsRole::Admin, 0)).expect("tls"))
            .args(["iscsi", "list", "--meta", &m, "--json"]);
        let o = cmd.output().ok()?;
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).ok()?;
        let l = v["exports"]
            .as_array()?
            .iter()
            .flat_map(|e| e["luns"].as_array().cloned().unwrap_or_default())
            .find(|l| l["lun"].as_u64() == Some(lun))?;
        Some((
            l["active"].as_str().map(str::to_string),
            l["epoch"].as_u64().unwrap_or(0),
            l["standby"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default(),
        ))
    }

    /// Waits until `check` holds for the LUN's state.
    fn wait_state(
        &self,
        lun: u64,
        what: &str,
        check: impl Fn(&Option<String>, u64, &[String]) -> bool,
    ) -> (Option<String>, u64, Vec<String>) {
        let start = Instant::now();
        loop {
            if let Some((a, e, s)) = self.lun_state(lun) {
                if check(&a, e, &s) {
                    return (a, e, s);
                }
            }
            assert!(
                start.elapsed() < Duration::from_secs(40),
                "LUN {lun}: never {what}; now {:?}\n{}",
                self.lun_state(lun),
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn url(portal: &str, lun: u64) -> String {
        format!("iscsi://{portal}/{IQN}/{lun}")
    }

    fn spawn_writer(&self, urls: &[String], blocks: u64, secs: u64, tag: u64, name: &str) -> Child {
        self.spawn_writer_in(None, urls, blocks, secs, tag, name)
    }

    /// `spawn_writer` inside network namespace `netns`, if given.
    fn spawn_writer_in(
        &self,
        netns: Option<&str>,
        urls: &[String],
        blocks: u64,
        secs: u64,
        tag: u64,
        name: &str,
    ) -> Child {
        let out = std::fs::File::create(self.tmp.path().join(format!("{name}.out"))).expect("out");
        let err = std::fs::File::create(self.tmp.path().join(format!("{name}.err"))).expect("err");
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(&self.writer);
                c
            }
            None => Command::new(&self.writer),
        };
        cmd.args([
            "write",
            &urls.join(","),
            &blocks.to_string(),
            &secs.to_string(),
            &tag.to_string(),
        ])
        .stdout(out)
        .stderr(err)
        .spawn()
        .expect("iscsi-writer")
    }

    fn writer_output(&self, name: &str) -> (String, String) {
        let read = |ext: &str| {
            std::fs::read_to_string(self.tmp.path().join(format!("{name}.{ext}")))
                .unwrap_or_default()
        };
        (read("out"), read("err"))
    }

    /// Block → (tag, seq) of every well-formed block; panics on a torn one.
    fn verify(&self, url: &str, blocks: u64) -> HashMap<u64, (u64, u64)> {
        let o = Command::new(&self.writer)
            .args(["verify", url, &blocks.to_string()])
            .output()
            .expect("iscsi-writer verify");
        assert!(
            o.status.success(),
            "verify {url}: {}\n{}",
            String::from_utf8_lossy(&o.stderr),
            self.logs()
        );
        let mut m = HashMap::new();
        for l in String::from_utf8_lossy(&o.stdout).lines() {
            let p: Vec<&str> = l.split_whitespace().collect();
            match p.as_slice() {
                ["block", b, "bad"] => panic!("block {b} torn or foreign"),
                ["block", _, "empty"] => {}
                ["block", b, tag, seq] => {
                    m.insert(
                        b.parse().expect("block"),
                        (tag.parse().expect("tag"), seq.parse().expect("seq")),
                    );
                }
                _ => {}
            }
        }
        m
    }

    fn tool(&self, args: &[&str]) -> std::process::Output {
        Command::new(&self.writer)
            .args(args)
            .output()
            .expect("iscsi-writer")
    }
}

/// Every block acknowledged holds its last acknowledged write (the writer
/// writes one block at a time and retries the same bytes after a failure,
/// so nothing else may be there).
fn assert_all_acked_present(run: &WriteRun, found: &HashMap<u64, (u64, u64)>, tag: u64) {
    assert!(run.acks > 0, "nothing was acknowledged");
    for (block, seq) in &run.last {
        assert_eq!(
            found.get(block),
            Some(&(tag, *seq)),
            "block {block}: acknowledged write {seq} lost"
        );
    }
}

fn port() -> u16 {
    3300 + (rand::random::<u16>() % 600)
}

/// The active target SIGKILLed under synced writes: the standby takes the
/// LUN over within seconds and every acknowledged write is on it; the
/// killed target, started again, stands by.
#[tokio::test(flavor = "multi_thread")]
async fn sigkill_of_the_active_target_fails_over_with_every_acked_write() {
    let (c, _) = fs_cluster_tls(3, 0).await.expect("cluster");
    let p = port();
    let portals = [
        (format!("127.0.0.61:{p}"), None, vec![]),
        (format!("127.0.0.62:{p}"), None, vec![]),
    ];
    let mut rig = Rig::new(c, &portals);
    let lun = rig.export("/images/fo.img", 64);
    rig.start(0);
    let a = portals[0].0.clone();
    let b = portals[1].0.clone();
    let (_, epoch, _) = rig.wait_state(lun, "active on the first target", |act, _, _| {
        act.as_deref() == Some(a.as_str())
    });
    rig.start(1);
    rig.wait_state(lun, "with a standby", |act, _, sb| {
        act.as_deref() == Some(a.as_str()) && sb.contains(&b)
    });

    let urls = [Rig::url(&a, lun), Rig::url(&b, lun)];
    let began = Instant::now();
    let mut w = rig.spawn_writer(&urls, 512, 14, 1, "kill");
    std::thread::sleep(Duration::from_secs(4));
    let killed_at = began.elapsed();
    rig.targets[0].kill();
    let status = w.wait().expect("writer");
    let (out, err) = rig.writer_output("kill");
    assert!(status.success(), "writer: {err}");
    let run = parse_run(&out);
    let (resumed_ms, resumed_on, gap) = run
        .resumed
        .clone()
        .unwrap_or_else(|| panic!("writes never resumed:\n{err}\n{}", rig.logs()));
    let kill_to_io = resumed_ms.saturating_sub(killed_at.as_millis() as u64);
    println!(
        "takeover: {kill_to_io} ms from SIGKILL to the first write acknowledged on {resumed_on} \
         ({gap} ms after the writer saw the failure); {} writes acknowledged",
        run.acks
    );
    assert!(resumed_on.contains(&b), "resumed on {resumed_on}");
    assert!(kill_to_io < 15_000, "takeover took {kill_to_io} ms");
    let (act, e2, _) = rig.lun_state(lun).expect("state");
    assert_eq!(act.as_deref(), Some(b.as_str()));
    assert!(e2 > epoch, "the fence epoch grew ({epoch} -> {e2})");
    let found = rig.verify(&Rig::url(&b, lun), 512);
    assert_all_acked_present(&run, &found, 1);

    // The killed target comes back: it stands by, the survivor keeps it.
    rig.start(0);
    rig.wait_state(lun, "back with the old target as standby", |act, _, sb| {
        act.as_deref() == Some(b.as_str()) && sb.contains(&a)
    });
    // A standby answers I/O with NOT READY, standby (04h/0Bh): libiscsi's
    // connect (TEST UNIT READY) is refused on it.
    let o = rig.tool(&["verify", &Rig::url(&a, lun), "1"]);
    assert!(!o.status.success(), "the standby served I/O");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("0x040b"),
        "standby sense: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// The fence without iSCSI: a writer that lost its fence stores blocks but
/// commits nothing, inline or not; the new holder's writes land.
#[tokio::test(flavor = "multi_thread")]
async fn a_writer_whose_fence_was_taken_commits_nothing() {
    let (c, _) = fs_cluster_tls(3, 0).await.expect("cluster");
    let meta = Arc::new(c.client());
    let attr = meta
        .create(InodeId::ROOT, b"fenced.img", 0o644, true)
        .await
        .expect("create");
    let take = |expect: u64, holder: &str| WriteOp::TakeFence {
        ino: attr.ino,
        expect,
        holder: holder.into(),
    };
    let old = Arc::new(DataClient::new(meta.clone()));
    let new = Arc::new(DataClient::new(meta.clone()));
    match meta.write(take(0, "old#1")).await {
        Ok(NsReply::Fence { epoch: 1, .. }) => {}
        other => panic!("take: {other:?}"),
    }
    old.set_fence(attr.ino, Some(1));
    let first = pattern(3 << 20, 1);
    let f = OpenFile::open(old.clone(), &attr).await.expect("open");
    f.write(0, &first).await.expect("write");
    f.flush().await.expect("a holder commits");

    match meta.write(take(1, "new#1")).await {
        Ok(NsReply::Fence { epoch: 2, .. }) => {}
        other => panic!("take over: {other:?}"),
    }
    // The old holder's next commits: blocks (3 MiB) and inline (100 bytes).
    f.write(0, &pattern(3 << 20, 2)).await.expect("buffered");
    match f.flush().await {
        Err(ClientError::Errno(Errno::EKEYREVOKED)) => {}
        other => panic!("the fenced commit was not refused: {other:?}"),
    }
    let g = OpenFile::open(old.clone(), &attr).await.expect("open");
    g.write(10, &[9u8; 100]).await.expect("buffered");
    assert!(matches!(
        g.flush().await,
        Err(ClientError::Errno(Errno::EKEYREVOKED))
    ));
    // Taking it again from a stale epoch fails as well.
    assert!(matches!(
        meta.write(take(1, "old#1")).await,
        Err(ClientError::Errno(Errno::ESTALE))
    ));
    assert_eq!(get(&new, attr.ino).await.expect("read"), first);
    // The new holder writes.
    new.set_fence(attr.ino, Some(2));
    let h = OpenFile::open(new.clone(), &attr).await.expect("open");
    let third = pattern(1 << 20, 3);
    h.write(0, &third).await.expect("write");
    h.flush().await.expect("the holder commits");
    let now = get(&new, attr.ino).await.expect("read");
    assert_eq!(&now[..third.len()], &third[..]);
    assert_eq!(&now[third.len()..], &first[third.len()..]);
}

/// Reservations live in the meta: registered and reserved through the
/// active target, seen through the other once it took over. Before that,
/// libiscsi's multipath tests pass with one URL per target (the standby
/// redirects its logins to the active one).
#[tokio::test(flavor = "multi_thread")]
async fn reservations_and_multipath_tests_across_two_targets() {
    let (c, _) = fs_cluster_tls(3, 0).await.expect("cluster");
    let p = port();
    let portals = [
        (format!("127.0.0.63:{p}"), None, vec![]),
        (
            format!("127.0.0.64:{p}"),
            None,
            vec!["--redirect".to_string()],
        ),
    ];
    let mut rig = Rig::new(c, &portals);
    let lun = rig.export("/images/mp.img", 64);
    let (a, b) = (portals[0].0.clone(), portals[1].0.clone());
    rig.start(0);
    rig.wait_state(lun, "active on the first target", |act, _, _| {
        act.as_deref() == Some(a.as_str())
    });
    rig.start(1);
    rig.wait_state(lun, "with a standby", |act, _, sb| {
        act.as_deref() == Some(a.as_str()) && sb.contains(&b)
    });
    let (ua, ub) = (Rig::url(&a, lun), Rig::url(&b, lun));
    let o = Command::new("iscsi-test-cu")
        .args(["--dataloss", "-t", "SCSI.MultipathIO", &ua, &ub])
        .output()
        .expect("iscsi-test-cu");
    let text = String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
    let n = cunit_tests_line(&text);
    println!("multipath: {n:?} (total, ran, passed, failed, inactive)");
    assert!(n[1] >= 4, "multipath tests did not run: {text}");
    assert_eq!(n[3], 0, "multipath failures:\n{text}\n{}", rig.logs());

    // WRITE EXCLUSIVE by key abc through the active target.
    let o = rig.tool(&["reserve", &ua, "abc", "1"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    rig.targets[0].kill();
    rig.wait_state(lun, "taken over", |act, _, _| {
        act.as_deref() == Some(b.as_str())
    });
    let keys = rig.tool(&["keys", &ub]);
    let keys = String::from_utf8_lossy(&keys.stdout).to_string();
    assert!(keys.contains(" abc"), "keys after failover: {keys}");
    let holder = rig.tool(&["holder", &ub]);
    let holder = String::from_utf8_lossy(&holder.stdout).to_string();
    assert_eq!(
        holder.trim(),
        "reservation abc 1",
        "reservation after failover"
    );
}

// ---- the network-namespace variant ----

const NS: &str = "spf-iscsi";
const ROOT_IF: &str = "spf-isc0";
const NS_IF: &str = "spf-isc1";
const NET: &str = "10.79.0";
/// The cut-off target's address (inside the namespace).
const CUT: &str = "10.79.0.200";
/// Everything else lives on the root side.
const ROOT_SIDE: [u8; 7] = [1, 2, 3, 101, 102, 103, 202];

/// The namespace and its veth pair; removed on drop.
struct Net;

impl Net {
    fn setup() -> Net {
        ip(&["netns", "del", NS]);
        ip(&["link", "del", ROOT_IF]);
        ip(&["route", "del", "blackhole", &format!("{CUT}/32")]);
        must(&["netns", "add", NS]);
        must(&[
            "link", "add", ROOT_IF, "type", "veth", "peer", "name", NS_IF,
        ]);
        must(&["link", "set", NS_IF, "netns", NS]);
        for h in ROOT_SIDE {
            must(&["addr", "add", &format!("{NET}.{h}/24"), "dev", ROOT_IF]);
        }
        must(&["link", "set", ROOT_IF, "up"]);
        let cut = format!("{CUT}/24");
        must(&["netns", "exec", NS, "ip", "addr", "add", &cut, "dev", NS_IF]);
        must(&["netns", "exec", NS, "ip", "link", "set", NS_IF, "up"]);
        must(&["netns", "exec", NS, "ip", "link", "set", "lo", "up"]);
        Net
    }

    /// Blackhole routes both ways between the namespace and the rest.
    fn blackhole(&self, action: &str) {
        must(&["route", action, "blackhole", &format!("{CUT}/32")]);
        for h in ROOT_SIDE {
            let to = format!("{NET}.{h}/32");
            must(&["netns", "exec", NS, "ip", "route", action, "blackhole", &to]);
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        ip(&["netns", "del", NS]);
        ip(&["link", "del", ROOT_IF]);
        ip(&["route", "del", "blackhole", &format!("{CUT}/32")]);
    }
}

#[allow(unsafe_code)]
fn uid() -> u32 {
    // SAFETY: getuid has no preconditions.
    unsafe { libc::getuid() }
}

/// The active target's host cut off from the rest while two initiators
/// write through it (one elsewhere, which fails over; one on the cut-off
/// host, which keeps reaching it): the standby takes both LUNs over; the
/// write the cut-off target took in is retried by its client until the
/// link heals and is then refused by the fence; nothing written through it
/// after the takeover is visible; it stands by once healed.
#[tokio::test(flavor = "multi_thread")]
async fn cut_off_target_is_fenced_and_rejoins_as_standby() {
    if uid() != 0 {
        println!("skipped: network namespaces need root");
        return;
    }
    let net = Net::setup();
    let c = MetaCluster::start_tls_on(3, NET).expect("cluster");
    let (c, _) = fs_cluster_of(c, 0).await.expect("cluster");
    let p = port();
    let a = format!("{CUT}:{p}");
    let b = format!("{NET}.202:{p}");
    let portals = [
        (a.clone(), Some(NS.to_string()), vec![]),
        (b.clone(), None, vec![]),
    ];
    let mut rig = Rig::new(c, &portals);
    let lun1 = rig.export("/images/cut1.img", 64);
    let lun2 = rig.export("/images/cut2.img", 64);
    rig.start(0);
    for lun in [lun1, lun2] {
        rig.wait_state(lun, "active on the first target", |act, _, _| {
            act.as_deref() == Some(a.as_str())
        });
    }
    rig.start(1);
    rig.wait_state(lun1, "with a standby", |_, _, sb| sb.contains(&b));

    let began = Instant::now();
    let mut w1 = rig.spawn_writer(
        &[Rig::url(&a, lun1), Rig::url(&b, lun1)],
        256,
        16,
        1,
        "mover",
    );
    std::thread::sleep(Duration::from_secs(4));
    let cut_at = began.elapsed();
    net.blackhole("add");
    // An initiator on the cut-off host itself (a VM next to its target)
    // starts writing right after the cut: the target still believes in its
    // lease (for at most `HOLD`) and takes the first write in, whose commit
    // its client retries until the link heals.
    let mut w2 = rig.spawn_writer_in(Some(NS), &[Rig::url(&a, lun2)], 256, 10, 2, "stayer");
    std::thread::sleep(Duration::from_secs(8));
    net.blackhole("del");
    let healed_at = began.elapsed();
    assert!(w1.wait().expect("writer").success());
    assert!(w2.wait().expect("writer").success());

    let (out, err) = rig.writer_output("mover");
    let run1 = parse_run(&out);
    let (resumed_ms, resumed_on, gap) = run1
        .resumed
        .clone()
        .unwrap_or_else(|| panic!("writes never resumed:\n{err}\n{}", rig.logs()));
    println!(
        "takeover after the cut: {} ms to the first write acknowledged on {resumed_on} ({gap} ms \
         after the writer saw the failure)",
        resumed_ms.saturating_sub(cut_at.as_millis() as u64)
    );
    assert!(resumed_on.contains(&b), "resumed on {resumed_on}");
    assert!(
        (resumed_ms as u128) < healed_at.as_millis(),
        "the standby took over only after the link healed"
    );
    for lun in [lun1, lun2] {
        let (act, _, _) = rig.lun_state(lun).expect("state");
        assert_eq!(
            act.as_deref(),
            Some(b.as_str()),
            "LUN {lun} taken over\n{}",
            rig.logs()
        );
    }
    let found1 = rig.verify(&Rig::url(&b, lun1), 256);
    assert_all_acked_present(&run1, &found1, 1);

    // Nothing the initiator on the cut-off host sent landed: no write of
    // its was acknowledged, and none is on the LUN.
    let (out2, err2) = rig.writer_output("stayer");
    let run2 = parse_run(&out2);
    assert_eq!(
        run2.acks, 0,
        "the cut-off target acknowledged writes:\n{out2}\n{err2}"
    );
    let found2 = rig.verify(&Rig::url(&b, lun2), 256);
    assert!(
        found2.values().all(|(tag, _)| *tag != 2),
        "a write through the cut-off target landed after the takeover"
    );
    // The write it had taken in when the link went down was retried by
    // its client until the link healed, and then refused by the fence.
    let start = Instant::now();
    while !rig.targets[0].log_text().contains("fenced") {
        assert!(
            start.elapsed() < Duration::from_secs(40),
            "no commit of the cut-off target was refused by the fence:\n{}\n{}",
            rig.logs(),
            {
                let (o, e) = rig.writer_output("stayer");
                let tail: Vec<&str> = o.lines().filter(|l| !l.starts_with("ack")).collect();
                format!("stayer: {}\n{e}", tail.join("\n"))
            }
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let fenced = rig.targets[0].log_text().matches("fenced").count();
    println!("cut-off target: {fenced} commits refused by the fence after the heal");

    // Healed: the old target renews its heartbeat and stands by.
    for lun in [lun1, lun2] {
        rig.wait_state(lun, "with the healed target as standby", |act, _, sb| {
            act.as_deref() == Some(b.as_str()) && sb.contains(&a)
        });
    }
    let o = rig.tool(&["verify", &Rig::url(&a, lun2), "1"]);
    assert!(!o.status.success(), "the healed old target served I/O");
}

/// A LUN reset through one target process reaches the nexuses another
/// process has, and a registration made through one is read through the
/// other: both travel in the LU's record in the meta. (Two LUN objects of
/// the same LU over one real cluster stand for the two processes.)
#[tokio::test(flavor = "multi_thread")]
async fn unit_attentions_and_registrations_reach_every_path() {
    use sparefs_iscsi::backend::FileBackend;
    use sparefs_iscsi::exports::LunRec;
    use sparefs_iscsi::scsi::pr::Reservations;
    use sparefs_iscsi::scsi::{sense, Lun, Nexus};
    let (c, _) = fs_cluster_tls(3, 0).await.expect("cluster");
    let meta = Arc::new(c.client());
    let dir = tempfile::tempdir().expect("tmp");
    let naa = 0x3000_0000_0000_00aa;
    let lun = |name: &str| {
        let b = FileBackend::create(&dir.path().join(name), 1 << 20).expect("file");
        let rec = LunRec {
            path: "/lu.img".into(),
            ino: 0,
            read_only: false,
            naa,
        };
        Lun::new(
            1,
            rec,
            Arc::new(b),
            Reservations::in_meta(meta.clone(), naa),
        )
    };
    let (la, lb) = (lun("a"), lun("b"));
    la.refresh_reservations().await.expect("refresh");
    lb.refresh_reservations().await.expect("refresh");
    let na = Nexus::new("iqn.2026-12.org.example:host", [1; 6], IQN, 1);
    let nb = Nexus::new("iqn.2026-12.org.example:host", [2; 6], IQN, 2);
    la.nexus_arrived(&na);
    lb.nexus_arrived(&nb);
    // The power-on attention first, then quiet.
    for (l, n) in [(&la, &na), (&lb, &nb)] {
        let first = exec(l, n, &[0, 0, 0, 0, 0, 0], vec![]).await;
        assert_eq!(first.sense.get(2), Some(&6), "power-on unit attention");
        assert_eq!(
            exec(l, n, &[0, 0, 0, 0, 0, 0], vec![]).await.status,
            sense::GOOD
        );
    }
    // A registration through A.
    let mut prout = vec![0x5fu8, 0, 0, 0, 0, 0, 0, 0, 24, 0];
    prout[1] = 0;
    let mut param = vec![0u8; 24];
    param[8..16].copy_from_slice(&0xabcu64.to_be_bytes());
    assert_eq!(exec(&la, &na, &prout, param).await.status, sense::GOOD);
    // LUN reset through A.
    la.reset(&na).await;
    lb.refresh_reservations().await.expect("refresh");
    let heard = exec(&lb, &nb, &[0, 0, 0, 0, 0, 0], vec![]).await;
    assert_eq!(
        (heard.sense.get(2), heard.sense.get(12), heard.sense.get(13)),
        (Some(&6), Some(&0x29), Some(&0x03)),
        "the other path hears of the reset"
    );
    // READ KEYS through B shows A's registration.
    let keys = exec(&lb, &nb, &[0x5e, 0, 0, 0, 0, 0, 0, 0x10, 0, 0], vec![]).await;
    assert_eq!(keys.status, sense::GOOD);
    assert!(keys.data_in.len() >= 16, "{:?}", keys.data_in);
    assert_eq!(&keys.data_in[8..16], &0xabcu64.to_be_bytes());
}

async fn exec(
    l: &sparefs_iscsi::scsi::Lun,
    n: &sparefs_iscsi::scsi::Nexus,
    cdb: &[u8],
    data: Vec<u8>,
) -> sparefs_iscsi::scsi::Done {
    l.execute(sparefs_iscsi::scsi::Task {
        cdb,
        nexus: n,
        data_out: data,
        expected_in: 8192,
        luns: &[1],
    })
    .await
}
