//! The `sparefs` command refuses, with the reason, what cannot work or
//! cannot be honoured: a mount on a file, on a non-empty directory, or with
//! no meta to talk to; sizes and policies it cannot honour; a `--data` that
//! is a file. `fs ls` prints names so that none can split the listing or
//! reach the terminal, and keeps their bytes in `-0` and `--json`.

use sparefs_tests::{fs_cluster, sparefs_bin};
use std::process::{Command, Output};

fn sparefs(args: &[&str]) -> Output {
    Command::new(sparefs_bin())
        .args(args)
        .output()
        .expect("run sparefs")
}

fn refused(out: &Output, because: &str, what: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{what}: accepted ({err})");
    assert!(
        err.contains(because),
        "{what}: refused without saying {because:?}: {err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_refuses_what_cannot_work_and_says_why() {
    let (c, mounts) = fs_cluster(1, 1).await.expect("cluster");
    let meta = c.meta_list();
    let scratch = tempfile::tempdir().expect("tempdir");
    let file = scratch.path().join("a-file");
    std::fs::write(&file, b"x").expect("write");
    let full = scratch.path().join("full");
    std::fs::create_dir(&full).expect("mkdir");
    std::fs::write(full.join("precious"), b"x").expect("write");
    let empty = scratch.path().join("empty");
    std::fs::create_dir(&empty).expect("mkdir");
    let (f, d, e) = (
        file.to_str().expect("utf-8"),
        full.to_str().expect("utf-8"),
        empty.to_str().expect("utf-8"),
    );

    refused(
        &sparefs(&["mount", "--meta", &meta, f]),
        "not a directory",
        "mount on a file",
    );
    refused(
        &sparefs(&["mount", "--meta", &meta, d]),
        "not empty",
        "mount on a full directory",
    );
    refused(
        &sparefs(&["mount", "--meta", "127.0.0.1:1", "--timeout", "2", e]),
        "no sparefs meta",
        "mount with no meta",
    );
    assert!(!sparefs_tests::is_mounted(&empty) && !sparefs_tests::is_mounted(&full));
    let ok = sparefs(&["mount", "--daemon", "--nonempty", "--meta", &meta, d]);
    assert!(
        ok.status.success(),
        "--nonempty: {}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(sparefs_tests::is_mounted(&full));
    let _ = Command::new("umount").arg(&full).status();
    assert!(full.join("precious").exists(), "the hidden file is back");

    for bad in ["-1G", "nan", "inf", "1e30"] {
        let limit = format!("--limit={bad}");
        refused(
            &sparefs(&[
                "chunkserver",
                "--dir",
                e,
                &limit,
                "--meta",
                &meta,
                "--listen",
                "127.0.0.1:1",
            ]),
            "size",
            &format!("--limit {bad}"),
        );
    }
    for wide in ["ec:16+16", "rep:32", "ec:2+2"] {
        refused(
            &sparefs(&["policy", "--meta", &meta, "set", "/", wide]),
            "needs",
            &format!("policy {wide} on 3 chunkservers"),
        );
    }
    refused(
        &sparefs(&["policy", "--meta", &meta, "set", "/", "ec:255+255"]),
        "out of range",
        "ec:255+255",
    );
    refused(
        &sparefs(&["up", "--data", f]),
        "is not a directory",
        "up --data FILE",
    );

    // Names with a newline, a terminal escape and invalid UTF-8.
    let mnt = &mounts[0];
    let names: [&[u8]; 4] = [b"two\nlines", b"\x1b[2Jcleared", b"bad\xff", b"plain"];
    for n in names {
        use std::os::unix::ffi::OsStrExt;
        std::fs::write(mnt.join(std::ffi::OsStr::from_bytes(n)), b"x").expect("create");
    }
    let ls = sparefs(&["fs", "--meta", &meta, "ls", "/"]);
    assert!(ls.status.success());
    assert_eq!(
        ls.stdout.iter().filter(|&&b| b == b'\n').count(),
        names.len(),
        "one line per name"
    );
    assert!(
        !ls.stdout.contains(&0x1b),
        "an escape sequence reached the terminal"
    );
    let raw = sparefs(&["fs", "--meta", &meta, "ls", "-0", "/"]);
    let mut got: Vec<&[u8]> = raw
        .stdout
        .split(|&b| b == 0)
        .filter(|n| !n.is_empty())
        .collect();
    got.sort();
    let mut want = names.to_vec();
    want.sort();
    assert_eq!(got, want, "-0 keeps the bytes");
    let json = sparefs(&["fs", "--meta", &meta, "ls", "--json", "/"]);
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&json.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(lines.len(), names.len());
    assert!(lines.iter().any(|v| v["name"] == "two\nlines"));
    assert!(lines
        .iter()
        .any(|v| v["name_bytes"] == serde_json::json!([98, 97, 100, 255])));
}

/// `sparefs fs cat` acts as the user who runs it: the meta refuses the
/// chunk map (and so the bytes) of a file that user may not read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_reads_only_what_its_user_may() {
    use std::os::unix::process::CommandExt;
    let (c, mounts) = fs_cluster(1, 1).await.expect("cluster");
    let meta = c.meta_list();
    let secret = b"not for nobody";
    std::fs::write(mounts[0].join("private"), secret).expect("write");
    std::fs::write(mounts[0].join("public"), b"for everyone").expect("write");
    let mode = |p: &str, m: u32| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(mounts[0].join(p), std::fs::Permissions::from_mode(m))
            .expect("chmod");
    };
    mode("private", 0o600);
    mode("public", 0o644);
    let cat_as_nobody = |path: &str| {
        Command::new(sparefs_bin())
            .args(["fs", "--meta", &meta, "cat", path])
            .uid(65534)
            .gid(65534)
            .output()
            .expect("run sparefs as nobody")
    };
    let public = cat_as_nobody("/public");
    assert!(
        public.status.success(),
        "{}",
        String::from_utf8_lossy(&public.stderr)
    );
    assert_eq!(public.stdout, b"for everyone");
    let private = cat_as_nobody("/private");
    assert!(
        !private.status.success() && private.stdout.is_empty(),
        "nobody read a 0600 file of root's: {:?}",
        String::from_utf8_lossy(&private.stdout)
    );
    let err = String::from_utf8_lossy(&private.stderr).to_lowercase();
    assert!(
        err.contains("permission denied") || err.contains("eacces"),
        "refused without saying why: {err}"
    );
}

/// Completions and man pages come from the CLI definition: every command
/// is in the bash script, and each gets its page.
#[test]
fn completions_and_man_pages_cover_every_command() {
    let out = sparefs(&["completions", "bash"]);
    assert!(out.status.success());
    let script = String::from_utf8_lossy(&out.stdout);
    for cmd in ["mount", "fsck", "iscsi", "status", "up", "--verify-data"] {
        assert!(script.contains(cmd), "bash completion lacks {cmd}");
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(sparefs_bin())
        .arg("man")
        .arg(dir.path())
        .output()
        .expect("sparefs man");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for page in [
        "sparefs.1",
        "sparefs-fsck.1",
        "sparefs-mount.1",
        "sparefs-iscsi-serve.1",
    ] {
        let text = std::fs::read_to_string(dir.path().join(page)).expect(page);
        assert!(
            text.starts_with(".ie") || text.contains(".TH"),
            "{page} is a man page"
        );
    }
}

/// A cluster file from a newer sparefs is refused with the reason, not
/// misread.
#[test]
fn a_cluster_file_of_a_newer_format_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("cluster.json"),
        r#"{"format": 9, "meta": [{"id": 1, "address": "127.0.0.1:1"}], "chunkservers": []}"#,
    )
    .expect("write");
    let data = dir.path().to_string_lossy().to_string();
    let out = sparefs(&["status", "--data", &data]);
    refused(
        &out,
        "newer sparefs (cluster-file format 9)",
        "status of a newer cluster file",
    );
}

/// `--log-format json`: every line a daemon logs is one JSON object with a
/// level and its fields; `--log-level` takes levels by module.
#[test]
fn logs_can_be_json_lines() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let at = format!("127.0.0.1:{port}");
    // A one-replica meta group: it logs its Raft start at once.
    let mut child = Command::new(sparefs_bin())
        .args([
            "--log-format",
            "json",
            "--log-level",
            "info,sparefs_wire=warn",
        ])
        .args(["meta", "--id", "1", "--listen", &at])
        .args(["--peers", &format!("1={at}"), "--data"])
        .arg(dir.path().join("m"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("sparefs chunkserver");
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let _ = child.kill();
    let out = child.wait_with_output().expect("its output");
    let text = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty(), "it logged nothing");
    for line in lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        assert!(v["level"].is_string() && v["fields"].is_object(), "{line}");
    }
}
