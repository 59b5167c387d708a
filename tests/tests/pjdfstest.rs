//! pjdfstest (crates.io `pjdfstest`, the Rust rewrite of the POSIX file
//! system suite, installed by scripts/deps.sh) through a mount, judged
//! against the same suite on a local directory in the same run: every test
//! that passes locally must pass on the mount.
//!
//! The one test allowed to differ is `link::link_count_max`: pjdfstest
//! skips it where `pathconf(_PC_LINK_MAX)` cannot tell the limit, and glibc
//! knows the limit only of file systems it recognises by magic number (a
//! FUSE mount answers 127, "unknown").

use sparefs_tests::cluster_with;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

const MAY_BE_SKIPPED_ON_THE_MOUNT: &[&str] = &["link::link_count_max"];

/// Runs the suite in `dir`; returns each test's verdict by name, and the
/// whole output for a failure message.
fn run_suite(dir: &Path, secondary: &Path) -> (BTreeMap<String, String>, String) {
    let pjdfstest = std::env::var("PJDFSTEST").unwrap_or_else(|_| "pjdfstest".into());
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("pjdfstest/linux.toml");
    let out = Command::new(&pjdfstest)
        .arg("-c")
        .arg(&config)
        .arg("-p")
        .arg(dir)
        .arg("-s")
        .arg(secondary)
        .output()
        .expect("run pjdfstest (scripts/deps.sh installs it)");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let verdicts = text
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            let name = words.next()?;
            let verdict = words.next_back()?;
            (name.contains("::") && words.next().is_none())
                .then(|| (name.to_string(), verdict.to_string()))
        })
        .collect();
    (verdicts, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pjdfstest_passes_on_the_mount_where_it_passes_locally() {
    let mut c = cluster_with(3, 3, "2G", &[], &[]).await.expect("cluster");
    let mount = c.spawn_mount(1, 10).expect("mount");
    let on_mount = mount.join("pjd");
    std::fs::create_dir(&on_mount).expect("mkdir on the mount");
    let local = tempfile::tempdir().expect("tempdir");
    let other = tempfile::tempdir().expect("tempdir");
    // The suite switches to unprivileged users inside these directories.
    for d in [on_mount.as_path(), local.path(), other.path()] {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    }
    let (want, local_text) = run_suite(local.path(), other.path());
    let passed_locally: Vec<&String> = want
        .iter()
        .filter(|(_, v)| v.as_str() == "ok")
        .map(|(n, _)| n)
        .collect();
    assert!(
        passed_locally.len() > 300,
        "pjdfstest did not run locally:\n{local_text}"
    );
    let (got, mount_text) = run_suite(&on_mount, other.path());
    let lost: Vec<String> = passed_locally
        .iter()
        .filter(|n| got.get(n.as_str()).map(String::as_str) != Some("ok"))
        .filter(|n| {
            !(MAY_BE_SKIPPED_ON_THE_MOUNT.contains(&n.as_str())
                && got.get(n.as_str()).map(String::as_str) == Some("skipped"))
        })
        .map(|n| format!("{n}: {}", got.get(n.as_str()).map_or("missing", |v| v)))
        .collect();
    println!(
        "pjdfstest: {} pass locally, {} on the mount",
        passed_locally.len(),
        got.values().filter(|v| v.as_str() == "ok").count()
    );
    assert!(
        lost.is_empty(),
        "pjdfstest tests that pass locally but not on the mount:\n{}\n\nmount output tail:\n{}",
        lost.join("\n"),
        mount_text
            .lines()
            .rev()
            .take(40)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n")
    );
    // Everything the suite did (modes, ACL-free chmods, links, renames,
    // special files) leaves a state fsck finds clean.
    let o = std::process::Command::new(sparefs_tests::sparefs_bin())
        .args(["fsck", "--meta", &c.meta_list(), "--json"])
        .output()
        .expect("sparefs fsck");
    assert_eq!(
        o.status.code(),
        Some(0),
        "fsck after the suite: {}",
        String::from_utf8_lossy(&o.stdout)
    );
}
