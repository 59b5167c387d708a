//! A process blocked waiting for a lock (fcntl F_SETLKW, OFD locks, lockf,
//! flock) behaves as on a local filesystem: SIGKILL and ^C end the wait at
//! once, and the holder's exit hands the lock over. fuser answers the
//! kernel's INTERRUPT with ENOSYS, after which the kernel waits for the
//! mount's answer even for a killed process: before the mount noticed the
//! waiter's pending signal, a killed waiter stayed in uninterruptible sleep
//! until the lock was released.

use sparefs_tests::fs_cluster;
use std::io::BufRead;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How each kind of lock is taken, blocking, in Python (`f` is open for
/// writing).
const KINDS: [(&str, &str); 4] = [
    ("fcntl", "fcntl.lockf(f, fcntl.LOCK_EX)"),
    (
        "ofd",
        "fcntl.fcntl(f, 38, struct.pack('hhqqi4x', fcntl.F_WRLCK, 0, 0, 0, 0))",
    ),
    ("flock", "fcntl.flock(f, fcntl.LOCK_EX)"),
    ("range", "fcntl.lockf(f, fcntl.LOCK_EX, 10, 100)"),
];

/// A process killed when dropped, so a failed assertion leaves none behind.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

type Lines = std::io::Lines<std::io::BufReader<std::process::ChildStdout>>;

/// Starts a process that opens `path`, prints "start", takes the lock
/// (blocking), prints "locked" and sleeps.
fn locker(path: &Path, take: &str) -> (Proc, Lines) {
    let script = format!(
        "import fcntl, struct, time, sys\nf = open({:?}, 'r+')\nprint('start', flush=True)\n{take}\nprint('locked', flush=True)\ntime.sleep(300)",
        path.display().to_string()
    );
    let mut child = Command::new("python3")
        .arg("-c")
        .arg(script)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3");
    let lines = std::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    (Proc(child), lines)
}

fn next_line(lines: &mut Lines) -> String {
    lines.next().and_then(Result::ok).unwrap_or_default()
}

/// Waits for `child` to exit, up to `within`.
fn exits_within(child: &mut Proc, within: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < within {
        if matches!(child.0.try_wait(), Ok(Some(_))) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_blocked_lock_wait_ends_on_signals_and_on_the_holders_exit() {
    let (mut c, mounts) = fs_cluster(1, 2).await.expect("cluster");
    let (a, b) = (mounts[0].clone(), mounts[1].clone());
    for (kind, take) in KINDS {
        let name = format!("lock-{kind}");
        std::fs::write(a.join(&name), vec![0u8; 4096]).expect("create");
        let (holder, mut hl) = locker(&a.join(&name), take);
        assert_eq!(next_line(&mut hl), "start");
        assert_eq!(next_line(&mut hl), "locked", "{kind}: holder");
        // On the same mount and on another one: killed, or ^C, while waiting.
        for (waiter_dir, signal, how) in [
            (&a, libc::SIGKILL, "SIGKILL, same mount"),
            (&b, libc::SIGKILL, "SIGKILL, other mount"),
            (&b, libc::SIGINT, "^C, other mount"),
        ] {
            let (mut waiter, mut wl) = locker(&waiter_dir.join(&name), take);
            assert_eq!(next_line(&mut wl), "start");
            std::thread::sleep(Duration::from_millis(700)); // in the wait now
            assert!(
                matches!(waiter.0.try_wait(), Ok(None)),
                "{kind}: the waiter did not wait"
            );
            let pid = waiter.0.id();
            let rc = std::process::Command::new("kill")
                .arg(format!("-{signal}"))
                .arg(pid.to_string())
                .status()
                .expect("kill");
            assert!(rc.success());
            assert!(
                exits_within(&mut waiter, Duration::from_secs(5)),
                "{kind}: a waiter stayed blocked after {how}"
            );
        }
        // The holder exits: a waiter on the other mount gets the lock.
        let (waiter, mut wl) = locker(&b.join(&name), take);
        assert_eq!(next_line(&mut wl), "start");
        std::thread::sleep(Duration::from_millis(500));
        let released = Instant::now();
        drop(holder);
        assert_eq!(next_line(&mut wl), "locked", "{kind}: lock not handed over");
        assert!(
            released.elapsed() < Duration::from_secs(5),
            "{kind}: handed over only after {:?}",
            released.elapsed()
        );
        drop(waiter);
    }
    c.unmount(1);
    c.unmount(2);
}
