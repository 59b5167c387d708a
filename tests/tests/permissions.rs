//! The meta checks open(2) as the kernel does (`ReadOp::Open` carries the
//! access the open asks for): what the kernel lets a user do through a
//! mount still works, in particular running a program the user may only
//! execute (the kernel's exec opens ask for execute, not read).

use sparefs_tests::fs_cluster;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

fn as_nobody(program: &Path, args: &[&str]) -> std::io::Result<std::process::Output> {
    Command::new(program)
        .args(args)
        .uid(65534)
        .gid(65534)
        .output()
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_program_its_user_may_only_execute_runs_and_cannot_be_read() {
    let (c, mounts) = fs_cluster(1, 1).await.expect("cluster");
    // The harness's directory is private; the mount is for every user.
    chmod(c.dir.path(), 0o755);
    let prog = mounts[0].join("prog");
    std::fs::copy("/bin/true", &prog).expect("copy a program in");
    chmod(&prog, 0o711);
    let ran = as_nobody(&prog, &[]).expect("exec an execute-only program");
    assert!(ran.status.success(), "{ran:?}");
    let cat = as_nobody(Path::new("/bin/cat"), &[prog.to_str().expect("utf-8")]).expect("run cat");
    assert!(
        !cat.status.success() && cat.stdout.is_empty(),
        "nobody read an execute-only program"
    );
    chmod(&prog, 0o700);
    let refused = as_nobody(&prog, &[]);
    assert!(
        matches!(&refused, Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied),
        "nobody ran a 0700 program of root's: {refused:?}"
    );
}
