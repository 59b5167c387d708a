//! Tests through a real FUSE mount of a real cluster (needs root and
//! /dev/fuse): real programs, two mounts, a differential test against a
//! local directory, and no hangs when the metadata service is gone.

use rand::{rngs::StdRng, Rng, SeedableRng};
use sparefs_tests::{fs_cluster, is_mounted, poll};
use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn sh(dir: &Path, script: &str) -> String {
    sparefs_tests::run_ok(
        Command::new("sh").arg("-c").arg(script).current_dir(dir),
        &format!("`{script}` in {}", dir.display()),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn real_programs_tar_git_sqlite() {
    let (_c, mounts) = fs_cluster(1, 1).await.expect("cluster");
    let m = &mounts[0];
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let tarball = tempfile::NamedTempFile::new().expect("temp");
    sh(
        &src,
        &format!(
            "tar czf {} --exclude=./target --exclude=./.git .",
            tarball.path().display()
        ),
    );
    sh(
        m,
        &format!(
            "mkdir src && cd src && tar xzf {}",
            tarball.path().display()
        ),
    );
    sh(
        m,
        &format!("diff -r src {} -x target -x .git >/dev/null", src.display()),
    );
    sh(m, "cd src && git init -q && git add -A && git -c user.email=t@t -c user.name=t commit -qm import && git fsck --full");
    let ok = sh(
        m,
        "python3 -c \"
import sqlite3
db = sqlite3.connect('t.db')
db.execute('create table t(k integer primary key, v text)')
for i in range(20):
    db.executemany('insert into t(v) values (?)', [('x' * (i % 50),) for _ in range(500)])
    db.commit()
db.execute('delete from t where k % 3 = 0'); db.commit()
db.execute('vacuum')
print(db.execute('pragma integrity_check').fetchone()[0], db.execute('select count(*) from t').fetchone()[0])
\"",
    );
    assert_eq!(ok.trim(), "ok 6667", "sqlite integrity check");

    // A file over 4 GiB: sparse, with data past the 32-bit boundary.
    let big = m.join("big.img");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&big)
        .expect("create");
    let at = 5u64 << 30;
    let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 241) as u8).collect();
    std::os::unix::fs::FileExt::write_all_at(&f, &data, at).expect("write at 5 GiB");
    f.sync_all().expect("fsync");
    drop(f);
    let f = std::fs::File::open(&big).expect("reopen");
    assert_eq!(f.metadata().expect("stat").len(), at + data.len() as u64);
    let mut back = vec![0u8; data.len()];
    std::os::unix::fs::FileExt::read_exact_at(&f, &mut back, at).expect("read at 5 GiB");
    assert_eq!(back, data);
    let mut hole = vec![1u8; 4096];
    std::os::unix::fs::FileExt::read_exact_at(&f, &mut hole, 3 << 30).expect("read the hole");
    assert!(hole.iter().all(|b| *b == 0), "a hole reads as zeros");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_mounts_see_each_others_files_close_to_open() {
    let (_c, mounts) = fs_cluster(3, 2).await.expect("cluster");
    let (a, b) = (&mounts[0], &mounts[1]);
    let v1: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
    std::fs::write(a.join("shared"), &v1).expect("write on a");
    assert_eq!(
        std::fs::read(b.join("shared")).expect("read on b"),
        v1,
        "whole and current on the other mount"
    );
    let v2: Vec<u8> = (0..1_000_000u32).map(|i| (i % 7) as u8).collect();
    std::fs::write(a.join("shared"), &v2).expect("rewrite on a");
    assert_eq!(
        std::fs::read(b.join("shared")).expect("reread on b"),
        v2,
        "a reopen sees the new contents"
    );
    // Append on b, read on a.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(b.join("shared"))
        .expect("open append");
    f.write_all(b"tail").expect("append");
    drop(f);
    let got = std::fs::read(a.join("shared")).expect("read on a");
    assert_eq!(&got[got.len() - 4..], b"tail");
    assert_eq!(got.len(), v2.len() + 4);
    // Small files: an open brings the file's chunk map with its attributes;
    // it must be current at every reopen, also while b holds the file open
    // (its open file is then shared and revalidated).
    let held = std::fs::File::open(b.join("shared")).expect("hold open on b");
    for round in 0..5u8 {
        let small: Vec<u8> = (0..16_384u32).map(|i| (i as u8) ^ round).collect();
        std::fs::write(a.join("small"), &small).expect("small write on a");
        std::fs::write(a.join("shared"), &small[..100 + round as usize]).expect("rewrite");
        assert_eq!(
            std::fs::read(b.join("small")).expect("small read on b"),
            small,
            "round {round}: small file current on b"
        );
        assert_eq!(
            std::fs::read(b.join("shared")).expect("reread while held"),
            &small[..100 + round as usize],
            "round {round}: reopen of a held file is current"
        );
    }
    drop(held);
    held_attribute_changes_commit_at_close(a, b);
    std::fs::create_dir(b.join("dir")).expect("mkdir on b");
    std::thread::sleep(Duration::from_millis(1100));
    assert!(
        a.join("dir").is_dir(),
        "a sees b's directory once its entry cache expires"
    );
}

/// A chmod behind buffered writes is answered by the mount and committed
/// with them at close: the other mount sees it then. One the meta refuses
/// by then (the file was given away meanwhile) is reported by close, and
/// the data still lands.
fn held_attribute_changes_commit_at_close(a: &Path, b: &Path) {
    use std::io::BufRead;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let mut f = std::fs::File::create(a.join("attrs")).expect("create");
    f.write_all(b"data").expect("write");
    f.set_permissions(std::fs::Permissions::from_mode(0o640))
        .expect("fchmod");
    drop(f);
    let m = std::fs::metadata(b.join("attrs")).expect("stat on b");
    assert_eq!(
        (m.mode() & 0o7777, m.len()),
        (0o640, 4),
        "b sees a's chmod after close"
    );

    std::fs::write(a.join("given"), b"").expect("create");
    std::os::unix::fs::chown(a.join("given"), Some(1000), Some(1000)).expect("chown");
    let script = r#"
import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY)
os.write(fd, b"x")
os.fchmod(fd, 0o600)
print("held", flush=True)
sys.stdin.readline()
try:
    os.close(fd)
    print("closed", flush=True)
except OSError as e:
    print("close errno %d" % e.errno, flush=True)
"#;
    let mut owner = Command::new("setpriv")
        .args([
            "--reuid=1000",
            "--regid=1000",
            "--clear-groups",
            "/usr/bin/python3",
            "-c",
            script,
        ])
        // Relative to the mount: the test's temporary directory is closed to
        // other users.
        .arg("given")
        .current_dir(a)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn the owner");
    let mut out = std::io::BufReader::new(owner.stdout.take().expect("stdout"));
    let mut line = String::new();
    out.read_line(&mut line).expect("read");
    assert_eq!(line.trim(), "held");
    std::os::unix::fs::chown(b.join("given"), Some(1001), None).expect("give it away on b");
    writeln!(owner.stdin.take().expect("stdin")).expect("go on");
    line.clear();
    out.read_line(&mut line).expect("read");
    let _ = owner.wait();
    assert_eq!(
        line.trim(),
        "close errno 1",
        "the refused chmod is reported (EPERM)"
    );
    std::thread::sleep(Duration::from_millis(1100));
    let m = std::fs::metadata(b.join("given")).expect("stat on b");
    assert_eq!((m.uid(), m.len()), (1001, 1), "the data landed");
    assert_ne!(m.mode() & 0o7777, 0o600, "the refused chmod did not");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_hang_when_every_meta_replica_is_gone() {
    let (mut c, mounts) = fs_cluster(1, 1).await.expect("cluster");
    let m = mounts[0].clone();
    std::fs::write(m.join("f"), b"x").expect("write");
    c.kill(1);
    let start = Instant::now();
    let m2 = m.clone();
    let r = tokio::task::spawn_blocking(move || std::fs::metadata(m2.join("never-seen")))
        .await
        .expect("join");
    let took = start.elapsed();
    let err = r.expect_err("stat with no meta succeeded");
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert!(took < Duration::from_secs(30), "took {took:?}");
    println!(
        "stat failed with EIO after {:.1}s with every meta replica stopped",
        took.as_secs_f64()
    );
    c.unmount(1);
    assert!(!is_mounted(&m), "still mounted");
}

/// One random step of the differential test, applied to a root directory.
fn step(root: &Path, rng: &mut StdRng, names: &[&str]) -> String {
    let pick = |rng: &mut StdRng| -> PathBuf {
        let depth = rng.gen_range(1..=2);
        let mut p = root.to_path_buf();
        for _ in 0..depth {
            p.push(names[rng.gen_range(0..names.len())]);
        }
        p
    };
    let code = |r: std::io::Result<()>| match r {
        Ok(()) => "ok".to_string(),
        Err(e) => format!("errno {}", e.raw_os_error().unwrap_or(-1)),
    };
    match rng.gen_range(0..10) {
        0 => code(std::fs::create_dir(pick(rng))),
        1 | 2 => {
            let p = pick(rng);
            let len = rng.gen_range(0..200_000);
            let seed: u8 = rng.gen();
            let data: Vec<u8> = (0..len)
                .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
                .collect();
            let at = rng.gen_range(0..100_000u64);
            code((|| {
                let mut f = std::fs::OpenOptions::new()
                    .create(true)
                    .write(true)
                    .truncate(false)
                    .open(&p)?;
                f.seek(SeekFrom::Start(at))?;
                f.write_all(&data)
            })())
        }
        3 => code(std::fs::remove_file(pick(rng))),
        4 => code(std::fs::remove_dir(pick(rng))),
        5 => code(std::fs::rename(pick(rng), pick(rng))),
        6 => {
            let p = pick(rng);
            let len = rng.gen_range(0..150_000);
            code(
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&p)
                    .and_then(|f| f.set_len(len)),
            )
        }
        7 => {
            let p = pick(rng);
            let mut buf = Vec::new();
            match std::fs::File::open(&p).and_then(|mut f| f.read_to_end(&mut buf)) {
                Ok(n) => format!("read {n} {}", blake_lite(&buf)),
                Err(e) => format!("errno {}", e.raw_os_error().unwrap_or(-1)),
            }
        }
        8 => code(std::fs::hard_link(pick(rng), pick(rng))),
        _ => code(std::os::unix::fs::symlink("target", pick(rng))),
    }
}

fn blake_lite(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf29ce484222325u64, |h, x| {
        (h ^ *x as u64).wrapping_mul(0x100000001b3)
    })
}

fn tree(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("readdir").flatten() {
            let p = e.path();
            let rel = p.strip_prefix(root).expect("prefix").display().to_string();
            let md = std::fs::symlink_metadata(&p).expect("lstat");
            let desc = if md.is_dir() {
                stack.push(p.clone());
                format!("dir nlink={}", std::os::unix::fs::MetadataExt::nlink(&md))
            } else if md.file_type().is_symlink() {
                format!(
                    "link {}",
                    std::fs::read_link(&p).expect("readlink").display()
                )
            } else {
                let data = std::fs::read(&p).expect("read");
                format!(
                    "file {} {} nlink={}",
                    data.len(),
                    blake_lite(&data),
                    std::os::unix::fs::MetadataExt::nlink(&md)
                )
            };
            out.insert(rel, desc);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn differential_against_a_local_directory() {
    let (_c, mounts) = fs_cluster(1, 1).await.expect("cluster");
    let local = tempfile::tempdir().expect("tempdir");
    let seed: u64 = std::env::var("SPAREFS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("differential seed {seed} (replay with SPAREFS_SEED={seed})");
    let names = ["a", "b", "c", "d"];
    let (mut r1, mut r2) = (StdRng::seed_from_u64(seed), StdRng::seed_from_u64(seed));
    for i in 0..1500 {
        let want = step(local.path(), &mut r1, &names);
        let got = step(&mounts[0], &mut r2, &names);
        assert_eq!(got, want, "step {i} (seed {seed}) differs");
    }
    assert_eq!(
        tree(&mounts[0]),
        tree(local.path()),
        "final trees differ (seed {seed})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn posix_conformance_suite() {
    let (_c, mounts) = fs_cluster(1, 1).await.expect("cluster");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("posix/conformance.py");
    let dir = mounts[0].join("conformance");
    std::fs::create_dir(&dir).expect("mkdir");
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let out = Command::new("python3")
        .arg(&script)
        .arg(&dir)
        .output()
        .expect("run conformance.py");
    let text = String::from_utf8_lossy(&out.stdout);
    let summary = text.lines().last().unwrap_or("").to_string();
    println!("{summary}");
    assert!(
        out.status.success(),
        "unexpected conformance failures:\n{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fsx_random_io_matches_a_model() {
    let (_c, mounts) = fs_cluster(1, 1).await.expect("cluster");
    let ops: usize = std::env::var("SPAREFS_FSX_OPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000);
    let seed: u64 = std::env::var("SPAREFS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20261125);
    let path = mounts[0].join("fsx.bin");
    let start = Instant::now();
    let st = tokio::task::spawn_blocking(move || {
        sparefs_tests::fsx::run(&path, ops, seed, 4 * 1024 * 1024)
    })
    .await
    .expect("join")
    .unwrap_or_else(|e| panic!("fsx failed: {e}"));
    println!(
        "fsx: {st:?} in {:.1}s (seed {seed})",
        start.elapsed().as_secs_f64()
    );
    // The same sequence on a local file proves the verifier itself.
    let local = tempfile::tempdir().expect("tempdir");
    sparefs_tests::fsx::run(&local.path().join("fsx.bin"), 2_000, seed, 4 * 1024 * 1024)
        .expect("fsx on a local file");
}

fn try_lock(path: &Path, how: &str) -> bool {
    let script = format!(
        "import fcntl\nf = open({:?}, 'a')\n{how}",
        path.display().to_string()
    );
    Command::new("python3")
        .arg("-c")
        .arg(script)
        .status()
        .expect("python3")
        .success()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn locks_are_held_in_the_meta_and_released_when_a_mount_dies() {
    use std::io::BufRead;
    let (mut c, mounts) = fs_cluster(1, 2).await.expect("cluster");
    let (a, b) = (mounts[0].clone(), mounts[1].clone());
    std::fs::write(a.join("db"), b"x").expect("create");
    std::fs::write(a.join("flk"), b"x").expect("create");
    // A holder on mount a takes a POSIX write lock and a flock, and keeps them.
    let mut holder = Command::new("python3")
        .arg("-c")
        .arg(format!(
            "import fcntl, time\nf = open({:?}, 'a')\nfcntl.lockf(f, fcntl.LOCK_EX)\ng = open({:?}, 'a')\nfcntl.flock(g, fcntl.LOCK_EX)\nprint('locked', flush=True)\ntime.sleep(120)",
            a.join("db").display().to_string(),
            a.join("flk").display().to_string()
        ))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("holder");
    let mut line = String::new();
    std::io::BufReader::new(holder.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read");
    assert_eq!(line.trim(), "locked");
    assert!(
        !try_lock(
            &b.join("db"),
            "fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)"
        ),
        "POSIX lock granted twice across mounts"
    );
    assert!(
        !try_lock(
            &b.join("db"),
            "fcntl.lockf(f, fcntl.LOCK_SH | fcntl.LOCK_NB)"
        ),
        "shared lock granted over a write lock"
    );
    assert!(
        !try_lock(
            &a.join("flk"),
            "fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)"
        ),
        "second flock granted on the same mount"
    );
    assert!(
        !try_lock(
            &b.join("flk"),
            "fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)"
        ),
        "flock granted across mounts"
    );
    // The holder's mount dies without unlocking: the lease runs out.
    let start = Instant::now();
    c.kill_mount(1);
    let _ = holder.kill();
    let _ = holder.wait();
    loop {
        if try_lock(
            &b.join("db"),
            "fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)",
        ) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(40),
            "locks of a dead mount were never released"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    println!(
        "locks of a killed mount released after {:.1}s",
        start.elapsed().as_secs_f64()
    );
    // A released lock on a live mount is free at once.
    assert!(try_lock(
        &b.join("db"),
        "fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)\nfcntl.lockf(f, fcntl.LOCK_UN)"
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mount_helper_mounts_like_mount_8_calls_it() {
    let (c, _) = fs_cluster(1, 0).await.expect("cluster");
    // mount(8) runs /sbin/mount.sparefs SPEC DIR -o OPTIONS; a symlink with
    // that name to the binary is the helper.
    let tmp = tempfile::tempdir().expect("tempdir");
    let helper = tmp.path().join("mount.sparefs");
    std::os::unix::fs::symlink(sparefs_tests::sparefs_bin(), &helper).expect("symlink");
    let dir = tmp.path().join("mnt");
    std::fs::create_dir(&dir).expect("mkdir");
    let log = tmp.path().join("helper.log");
    let status = Command::new(&helper)
        .arg(c.meta_list())
        .arg(&dir)
        .args(["-o", &format!("rw,_netdev,timeout=5,log={}", log.display())])
        .status()
        .expect("run helper");
    assert!(status.success(), "mount.sparefs failed");
    assert!(is_mounted(&dir), "not mounted after the helper returned");
    std::fs::write(dir.join("via-helper"), b"ok").expect("write");
    assert_eq!(std::fs::read(dir.join("via-helper")).expect("read"), b"ok");
    let st = Command::new("umount").arg(&dir).status().expect("umount");
    assert!(st.success(), "umount failed");
    let start = Instant::now();
    while is_mounted(&dir) {
        assert!(start.elapsed() < Duration::from_secs(10), "still mounted");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// A directory made on one mount is delegated to it: its names are answered
/// there and reach the meta a moment later. Another mount that looks at it
/// makes the meta recall it first, so it sees everything at once; a change
/// fsynced on the holder survives the holder's death, which another mount
/// waits out (the lease) instead of failing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_directory_made_on_one_mount_is_recalled_for_another() {
    let (mut c, mounts) = fs_cluster(3, 2).await.expect("cluster");
    let (a, b) = (mounts[0].clone(), mounts[1].clone());
    std::fs::create_dir(a.join("tree")).expect("mkdir");
    for i in 0..200 {
        std::fs::write(a.join(format!("tree/f{i}")), format!("{i}")).expect("create");
    }
    std::fs::create_dir(a.join("tree/sub")).expect("mkdir sub");
    std::fs::write(a.join("tree/sub/x"), b"x").expect("create in sub");
    std::fs::remove_file(a.join("tree/f7")).expect("unlink");
    assert!(matches!(
        std::fs::remove_dir(a.join("tree/sub")),
        Err(e) if e.raw_os_error() == Some(libc::ENOTEMPTY)
    ));
    assert_eq!(
        std::fs::metadata(a.join("tree")).expect("stat").nlink(),
        3,
        "the holder's answer counts sub"
    );

    // b, at once: every name, and the contents.
    let mut want: Vec<String> = (0..200)
        .filter(|i| *i != 7)
        .map(|i| format!("f{i}"))
        .collect();
    want.push("sub".into());
    want.sort();
    assert_eq!(names_in(&b.join("tree")), want);
    assert_eq!(std::fs::read(b.join("tree/f5")).expect("read"), b"5");
    assert_eq!(std::fs::read(b.join("tree/sub/x")).expect("read"), b"x");
    assert_eq!(std::fs::metadata(b.join("tree")).expect("stat").nlink(), 3);

    // b changes it, a sees the change (a gave the directory back).
    std::fs::write(b.join("tree/from_b"), b"b").expect("create on b");
    assert_eq!(
        std::fs::read(a.join("tree/from_b")).expect("read on a"),
        b"b"
    );
    std::fs::write(a.join("tree/after"), b"a").expect("create on a after");
    assert_eq!(
        std::fs::read(b.join("tree/after")).expect("read on b"),
        b"a"
    );

    // fsync of the directory makes a's answers durable: they outlive a.
    std::fs::create_dir(a.join("kept")).expect("mkdir");
    for i in 0..20 {
        std::fs::write(a.join(format!("kept/k{i}")), b"k").expect("create");
    }
    std::fs::File::open(a.join("kept"))
        .and_then(|d| d.sync_all())
        .expect("fsync dir");
    c.kill_mount(1);
    // b waits for a's lease to run out (its calls retry; a mount whose
    // timeout is shorter than the lease may see EIO meanwhile).
    let kept = b.join("kept");
    let (got, secs) = poll(Duration::from_secs(40), Duration::from_millis(200), || {
        let kept = kept.clone();
        async move {
            std::fs::read_dir(&kept)
                .map(|_| names_in(&kept))
                .map_err(|e| format!("a dead mount's directory stayed out of reach: {e}"))
        }
    })
    .await;
    println!("a killed mount's directory was read after {secs:.1}s");
    assert_eq!(got.len(), 20, "{got:?}");
    std::fs::write(b.join("kept/more"), b"m").expect("b writes there now");
}

/// A directory's entries as getdents64 gives them with a small buffer
/// (many READDIRs, each resuming at a cookie), from cookie `from` on:
/// each name with its `d_off` (the cookie to resume after it). Python's
/// ctypes makes the system call (the tests forbid `unsafe`).
fn cookies_in(dir: &Path, from: i64) -> Vec<(String, i64)> {
    let out = listing(dir, from, None)
        .wait_with_output()
        .expect("python3");
    entries_listed(dir, out)
}

/// Starts listing `dir` from cookie `from`; with `pause` (calls, path), it
/// stops after that many getdents64 calls, makes `path.ready` and goes on
/// once `path` exists.
fn listing(dir: &Path, from: i64, pause: Option<(usize, &Path)>) -> std::process::Child {
    const LIST: &str = r#"
import ctypes, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
fd = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECTORY)
os.lseek(fd, int(sys.argv[2]), os.SEEK_SET)
pause, go = int(sys.argv[3]), sys.argv[4]
buf = ctypes.create_string_buffer(4096)
calls = 0
while True:
    if calls == pause:
        open(go + ".ready", "w").close()
        while not os.path.exists(go):
            time.sleep(0.01)
    calls += 1
    n = libc.syscall(217, fd, buf, 4096)  # getdents64 on x86_64
    if n < 0:
        sys.exit("getdents64: " + os.strerror(ctypes.get_errno()))
    if n == 0:
        break
    raw, at = buf.raw[:n], 0
    while at < n:
        off = int.from_bytes(raw[at + 8:at + 16], "little", signed=True)
        reclen = int.from_bytes(raw[at + 16:at + 18], "little")
        name = raw[at + 19:at + reclen].split(b"\0")[0].decode()
        print(name, off)
        at += reclen
"#;
    let (calls, go) = match pause {
        Some((calls, go)) => (calls as i64, go.display().to_string()),
        None => (-1, String::new()),
    };
    Command::new("python3")
        .args(["-c", LIST])
        .arg(dir)
        .arg(from.to_string())
        .arg(calls.to_string())
        .arg(go)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3")
}

fn entries_listed(dir: &Path, out: std::process::Output) -> Vec<(String, i64)> {
    assert!(
        out.status.success(),
        "listing {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let (name, off) = l.rsplit_once(' ').expect("name and offset");
            (name.to_string(), off.parse().expect("offset"))
        })
        .collect()
}

/// The mount holding a directory lists it itself after the first page (the
/// kernel's READDIRPLUS, from the meta): every name once, with the cookies
/// the meta gives them, so a listing may resume at any cookie, and another
/// mount (through the meta, after the recall) sees the same positions.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_delegated_directory_is_listed_by_its_holder_with_the_metas_cookies() {
    let (_c, mounts) = fs_cluster(3, 2).await.expect("cluster");
    let (a, b) = (mounts[0].clone(), mounts[1].clone());
    let d = a.join("d");
    std::fs::create_dir(&d).expect("mkdir");
    let mut want = vec![".".to_string(), "..".to_string()];
    for i in 0..600 {
        std::fs::write(d.join(format!("f{i}")), b"").expect("create");
        want.push(format!("f{i}"));
    }
    for i in (0..600).step_by(5) {
        std::fs::remove_file(d.join(format!("f{i}"))).expect("unlink");
    }
    want.retain(|n| {
        n.strip_prefix('f')
            .and_then(|i| i.parse::<u32>().ok())
            .is_none_or(|i| i % 5 != 0)
    });
    // Names made through the meta (symlink, link) count cookies as well.
    for i in 0..10 {
        std::os::unix::fs::symlink("f1", d.join(format!("ln{i}"))).expect("symlink");
        std::fs::create_dir(d.join(format!("sub{i}"))).expect("mkdir");
        want.extend([format!("ln{i}"), format!("sub{i}")]);
    }
    std::fs::hard_link(d.join("f1"), d.join("hl")).expect("link");
    want.push("hl".into());
    for i in 0..300 {
        std::fs::write(d.join(format!("g{i}")), format!("g{i}")).expect("create");
        want.push(format!("g{i}"));
    }
    // Renames answered by the holder: to a new name, over a file, into a
    // subdirectory; each lands on a new cookie, as at the meta.
    for i in 0..50 {
        std::fs::rename(d.join(format!("g{i}")), d.join(format!("h{i}"))).expect("rename");
    }
    std::fs::rename(d.join("g50"), d.join("f2")).expect("rename over a file");
    std::fs::rename(d.join("f3"), d.join("sub0/f3")).expect("rename into sub0");
    want.retain(|n| {
        n.strip_prefix('g')
            .and_then(|i| i.parse::<u32>().ok())
            .is_none_or(|i| i > 50)
            && n != "f3"
    });
    want.extend((0..50).map(|i| format!("h{i}")));
    want.sort();

    let on_a = cookies_in(&d, 0);
    let mut names: Vec<String> = on_a.iter().map(|(n, _)| n.clone()).collect();
    names.sort();
    assert_eq!(names, want, "each name once");
    assert!(
        on_a.windows(2).all(|w| w[0].1 < w[1].1),
        "cookies grow along the listing"
    );
    // Resuming inside the listing, before and past the first page.
    for at in [5, 140, 300, on_a.len() - 2] {
        assert_eq!(
            cookies_in(&d, on_a[at].1),
            on_a[at + 1..],
            "resumed after {at}"
        );
    }
    // b lists through the meta (a gives the directory back): the same.
    assert_eq!(cookies_in(&b.join("d"), 0), on_a, "the meta's cookies");
    assert_eq!(cookies_in(&d, 0), on_a, "a, through the meta now");
    let read = |p: &str| std::fs::read(b.join("d").join(p)).expect("read on b");
    assert_eq!(read("h7"), b"g7");
    assert_eq!(read("f2"), b"g50");
    assert_eq!(read("sub0/f3"), b"");

    // A listing begun here that the meta takes over midway: another mount
    // recalls the directory while the holder's reader is inside its first
    // page of names (4,096, answered here), and changes names past it.
    let e = a.join("e");
    std::fs::create_dir(&e).expect("mkdir");
    for i in 0..5000 {
        std::fs::write(e.join(format!("n{i}")), b"").expect("create");
    }
    let sync = tempfile::tempdir().expect("tempdir");
    let go = sync.path().join("go");
    let reader = listing(&e, 0, Some((8, &go)));
    let ready = go.with_extension("ready");
    let (_, secs) = poll(Duration::from_secs(30), Duration::from_millis(20), || {
        let ready = ready.clone();
        async move {
            ready
                .exists()
                .then_some(())
                .ok_or_else(|| "the reader never paused".to_string())
        }
    })
    .await;
    println!("reader paused after {secs:.1}s");
    std::fs::remove_file(b.join("e/n4999")).expect("unlink on b");
    std::fs::write(b.join("e/late"), b"").expect("create on b");
    std::fs::write(&go, b"").expect("go");
    let got = entries_listed(&e, reader.wait_with_output().expect("reader"));
    assert!(
        got.windows(2).all(|w| w[0].1 < w[1].1),
        "cookies grow along the listing"
    );
    let mut names: Vec<String> = got.into_iter().map(|(n, _)| n).collect();
    names.sort();
    let mut want: Vec<String> = (0..4999).map(|i| format!("n{i}")).collect();
    want.extend([".".into(), "..".into(), "late".into()]);
    want.sort();
    assert_eq!(names, want, "each name once; the meta's view past the page");
}

/// The holder answers LOOKUP and GETATTR of files in its directories from
/// attributes it keeps (client/src/deleg.rs `known`); each change it makes
/// to a file must drop them. After every change the kernel's entry and
/// attribute timeouts (1 s) run out, so the stat below asks the mount again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn attributes_kept_by_the_holder_follow_every_change() {
    let (_c, mounts) = fs_cluster(3, 2).await.expect("cluster");
    let (a, b) = (mounts[0].clone(), mounts[1].clone());
    let k = a.join("k");
    std::fs::create_dir(&k).expect("mkdir");
    let f = k.join("f");
    std::fs::write(&f, b"").expect("create");
    let stat = |p: &Path| {
        std::thread::sleep(Duration::from_millis(1100));
        std::fs::symlink_metadata(p).expect("stat")
    };
    assert_eq!(stat(&f).len(), 0);
    std::fs::write(&f, vec![7u8; 100]).expect("write");
    assert_eq!(stat(&f).len(), 100, "a write");
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    assert_eq!(stat(&f).mode() & 0o7777, 0o600, "a chmod");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&f)
        .and_then(|h| h.set_len(10))
        .expect("truncate");
    assert_eq!(stat(&f).len(), 10, "a truncate");
    let t = std::time::UNIX_EPOCH + Duration::from_secs(12345);
    std::fs::File::options()
        .write(true)
        .open(&f)
        .and_then(|h| h.set_modified(t))
        .expect("utimens");
    assert_eq!(stat(&f).mtime(), 12345, "new times");
    std::fs::hard_link(&f, k.join("g")).expect("link");
    assert_eq!(stat(&f).nlink(), 2, "a second name");
    std::fs::rename(k.join("g"), k.join("h")).expect("rename");
    assert_eq!(stat(&k.join("h")).nlink(), 2);
    std::fs::remove_file(k.join("h")).expect("unlink");
    assert_eq!(stat(&f).nlink(), 1, "the second name gone");
    std::fs::OpenOptions::new()
        .append(true)
        .open(&f)
        .and_then(|mut h| h.write_all(b"12345"))
        .expect("append");
    assert_eq!(stat(&f).len(), 15, "an append");
    // Kept attributes never outlive the delegation: b changes the file (a
    // gives the directory back first), a sees it.
    let on_b = b.join("k/f");
    assert_eq!(stat(&on_b).len(), 15);
    std::fs::set_permissions(&on_b, std::fs::Permissions::from_mode(0o640)).expect("chmod on b");
    std::fs::OpenOptions::new()
        .append(true)
        .open(&on_b)
        .and_then(|mut h| h.write_all(b"b"))
        .expect("append on b");
    let seen = stat(&f);
    assert_eq!(
        (seen.len(), seen.mode() & 0o7777),
        (16, 0o640),
        "b's changes"
    );
}

/// A mount keeps answering in its delegated directories while the meta
/// leader is SIGKILLed; its queued changes reach the new leader (retried
/// under the same request id), the new leader knows the delegation, and
/// another mount then sees every name.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn delegated_changes_survive_a_meta_leader_failover() {
    let (mut c, mounts) = fs_cluster(3, 2).await.expect("cluster");
    let (a, b) = (mounts[0].clone(), mounts[1].clone());
    std::fs::create_dir(a.join("d")).expect("mkdir");
    for i in 0..100 {
        std::fs::write(a.join(format!("d/before{i}")), b"x").expect("create");
    }
    let leader = c
        .wait_leader(Duration::from_secs(10))
        .await
        .expect("leader");
    c.kill(leader);
    for i in 0..100 {
        std::fs::write(a.join(format!("d/after{i}")), b"y").expect("create during failover");
    }
    for i in (0..100).step_by(3) {
        std::fs::remove_file(a.join(format!("d/before{i}"))).expect("unlink");
    }
    std::fs::File::open(a.join("d"))
        .and_then(|d| d.sync_all())
        .expect("fsync dir");
    let mut want: Vec<String> = (0..100)
        .filter(|i| i % 3 != 0)
        .map(|i| format!("before{i}"))
        .chain((0..100).map(|i| format!("after{i}")))
        .collect();
    want.sort();
    assert_eq!(names_in(&b.join("d")), want);
    assert_eq!(std::fs::read(b.join("d/after99")).expect("read"), b"y");
}
