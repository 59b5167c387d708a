//! `sparefs fs ...` and `sparefs policy ...`: namespace commands over the
//! client library, no mount needed. Failures print the errno's message and
//! exit non-zero.

use crate::{current_caller, split_addresses};
use clap::Subcommand;
use sparefs_client::{ClientError, DataClient, MetaClient, OpenFile};
use sparefs_proto::layout::Policy;
use sparefs_proto::namespace::*;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Subcommand)]
pub enum FsCmd {
    /// List directories. Names are quoted as `ls` quotes them on a
    /// terminal; `--json` and `-0` keep their bytes.
    Ls {
        /// One JSON object per entry, on a line each.
        #[arg(long, conflicts_with = "null")]
        json: bool,
        /// Names only, each followed by a NUL byte (for xargs -0).
        #[arg(short = '0', long = "null")]
        null: bool,
        paths: Vec<String>,
    },
    /// Show attributes.
    Stat { paths: Vec<String> },
    /// Make directories.
    Mkdir {
        #[arg(short = 'p', long)]
        parents: bool,
        paths: Vec<String>,
    },
    /// Remove empty directories.
    Rmdir { paths: Vec<String> },
    /// Rename SOURCE to DEST.
    Mv { source: String, dest: String },
    /// Create empty files or update their times.
    Touch { paths: Vec<String> },
    /// Remove files.
    Rm { paths: Vec<String> },
    /// Copy a local file into sparefs (replacing REMOTE's contents).
    Put { local: PathBuf, remote: String },
    /// Copy a file out of sparefs ("-" writes to standard output).
    Get { remote: String, local: PathBuf },
    /// Write files to standard output.
    Cat { paths: Vec<String> },
}

#[derive(Subcommand)]
pub enum PolicyCmd {
    Get { dir: String },
    Set { dir: String, policy: String },
}

fn kind_char(k: FileKind) -> char {
    match k {
        FileKind::File => '-',
        FileKind::Dir => 'd',
        FileKind::Symlink => 'l',
        FileKind::Fifo => 'p',
        FileKind::Socket => 's',
        FileKind::CharDev => 'c',
        FileKind::BlockDev => 'b',
    }
}

fn mode_string(a: &Attr) -> String {
    let mut s = String::new();
    s.push(kind_char(a.kind));
    for shift in [6, 3, 0] {
        let bits = (a.perm >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        s.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    s
}

/// Bytes per read or write call of put/get.
const PIECE: usize = 8 * 1024 * 1024;

async fn copy_out(
    client: &Arc<MetaClient>,
    path: &str,
    mut out: Box<dyn std::io::Write>,
) -> Result<(), ClientError> {
    let attr = client.resolve(path).await?;
    if attr.kind != FileKind::File {
        return Err(ClientError::Errno(sparefs_proto::Errno::EISDIR));
    }
    let data = DataClient::new(client.clone());
    let mut offset = 0;
    while offset < attr.size {
        let bytes = data.read(attr.ino, attr.size, offset, PIECE).await?;
        if bytes.is_empty() {
            break;
        }
        out.write_all(&bytes)
            .map_err(|e| ClientError::Rejected(format!("write output: {e}")))?;
        offset += bytes.len() as u64;
    }
    out.flush()
        .map_err(|e| ClientError::Rejected(format!("write output: {e}")))?;
    Ok(())
}

/// Runs one `sparefs fs` subcommand on one path. (Long: one arm per
/// subcommand, each a few lines.)
async fn one(client: &Arc<MetaClient>, cmd: &FsCmd, path: &str) -> Result<(), ClientError> {
    match cmd {
        FsCmd::Ls { json, null, .. } => {
            use std::io::Write;
            let a = client.resolve(path).await?;
            let entries = if a.kind == FileKind::Dir {
                let mut out = Vec::new();
                for e in client.readdir(a.ino).await? {
                    out.push((e.name.clone(), client.getattr(e.ino).await?));
                }
                out
            } else {
                vec![(path.as_bytes().to_vec(), a)]
            };
            let mut stdout = std::io::stdout().lock();
            let wrote = |r: std::io::Result<()>| {
                r.map_err(|e| ClientError::Rejected(format!("write output: {e}")))
            };
            for (name, attr) in entries {
                if *null {
                    wrote(stdout.write_all(&name))?;
                    wrote(stdout.write_all(b"\0"))?;
                } else if *json {
                    let mut v = crate::names::json(&name);
                    v["ino"] = attr.ino.0.into();
                    v["mode"] = format!("{:o}", attr.perm).into();
                    v["kind"] = format!("{:?}", attr.kind).into();
                    v["nlink"] = attr.nlink.into();
                    v["uid"] = attr.uid.into();
                    v["gid"] = attr.gid.into();
                    v["size"] = attr.size.into();
                    wrote(writeln!(stdout, "{v}"))?;
                } else {
                    wrote(writeln!(
                        stdout,
                        "{} {:>3} {:>5} {:>5} {:>12} {}",
                        mode_string(&attr),
                        attr.nlink,
                        attr.uid,
                        attr.gid,
                        attr.size,
                        crate::names::shell_escape(&name)
                    ))?;
                }
            }
        }
        FsCmd::Stat { .. } => {
            let a = client.resolve(path).await?;
            println!(
                "{path}: ino {} {} {:o} uid {} gid {} size {} nlink {} mtime {}.{:09} ctime {}.{:09}",
                a.ino, mode_string(&a), a.perm, a.uid, a.gid, a.size, a.nlink, a.mtime.secs, a.mtime.nanos, a.ctime.secs, a.ctime.nanos
            );
        }
        FsCmd::Mkdir { parents, .. } => {
            if *parents {
                mkdir_p(client, path).await?;
            } else {
                let (dir, name) = client.resolve_parent(path).await?;
                client.mkdir(dir.ino, &name, 0o755).await?;
            }
        }
        FsCmd::Rmdir { .. } => {
            let (dir, name) = client.resolve_parent(path).await?;
            client.rmdir(dir.ino, &name).await?;
        }
        FsCmd::Touch { .. } => {
            let (dir, name) = client.resolve_parent(path).await?;
            let a = client.create(dir.ino, &name, 0o644, false).await?;
            let set = SetAttr {
                atime: Some(TimeSet::Now),
                mtime: Some(TimeSet::Now),
                ..Default::default()
            };
            client.setattr(a.ino, set).await?;
        }
        FsCmd::Rm { .. } => {
            let (dir, name) = client.resolve_parent(path).await?;
            client.unlink(dir.ino, &name).await?;
        }
        FsCmd::Put { local, .. } => {
            use tokio::io::AsyncReadExt;
            let (dir, name) = client.resolve_parent(path).await?;
            let attr = client.create(dir.ino, &name, 0o644, false).await?;
            let attr = client
                .setattr(
                    attr.ino,
                    SetAttr {
                        size: Some(0),
                        ..Default::default()
                    },
                )
                .await?;
            let data = Arc::new(DataClient::new(client.clone()));
            let file = OpenFile::open(data, &attr).await?;
            let mut src = tokio::fs::File::open(local)
                .await
                .map_err(|e| ClientError::Rejected(format!("{}: {e}", local.display())))?;
            let mut buf = vec![0u8; PIECE];
            let mut offset = 0u64;
            loop {
                let n = src
                    .read(&mut buf)
                    .await
                    .map_err(|e| ClientError::Rejected(format!("{}: {e}", local.display())))?;
                if n == 0 {
                    break;
                }
                file.write(offset, &buf[..n]).await?;
                offset += n as u64;
            }
            file.flush().await?;
        }
        FsCmd::Get { local, .. } => {
            let out: Box<dyn std::io::Write> = if local.as_os_str() == "-" {
                Box::new(std::io::stdout())
            } else {
                Box::new(
                    std::fs::File::create(local)
                        .map_err(|e| ClientError::Rejected(format!("{}: {e}", local.display())))?,
                )
            };
            copy_out(client, path, out).await?;
        }
        FsCmd::Cat { .. } => copy_out(client, path, Box::new(std::io::stdout())).await?,
        FsCmd::Mv { source, dest } => {
            let (sdir, sname) = client.resolve_parent(source).await?;
            // Moving onto an existing directory moves into it, as mv does.
            let (ddir, dname) = match client.resolve(dest).await {
                Ok(a) if a.kind == FileKind::Dir => (a, sname.clone()),
                _ => client.resolve_parent(dest).await?,
            };
            client
                .rename(sdir.ino, &sname, ddir.ino, &dname, RenameMode::Replace)
                .await?;
        }
    }
    Ok(())
}

pub async fn run(meta: &str, cmd: FsCmd) -> anyhow::Result<i32> {
    let client = Arc::new(crate::meta_client(split_addresses(meta), current_caller()));
    let paths: Vec<String> = match &cmd {
        FsCmd::Ls { paths, .. } if paths.is_empty() => vec!["/".into()],
        FsCmd::Ls { paths, .. }
        | FsCmd::Stat { paths }
        | FsCmd::Rmdir { paths }
        | FsCmd::Touch { paths }
        | FsCmd::Rm { paths } => paths.clone(),
        FsCmd::Mkdir { paths, .. } => paths.clone(),
        FsCmd::Mv { source, .. } => vec![source.clone()],
        FsCmd::Put { remote, .. } => vec![remote.clone()],
        FsCmd::Get { remote, .. } => vec![remote.clone()],
        FsCmd::Cat { paths } => paths.clone(),
    };
    let mut code = 0;
    for path in &paths {
        if let Err(e) = one(&client, &cmd, path).await {
            eprintln!("sparefs: {path}: {e}");
            code = 1;
        }
    }
    Ok(code)
}

pub async fn policy(meta: &str, cmd: PolicyCmd) -> anyhow::Result<i32> {
    let client = crate::meta_client(split_addresses(meta), current_caller());
    let result = async {
        match cmd {
            PolicyCmd::Get { dir } => {
                let a = client.resolve(&dir).await?;
                if let NsReply::Policy(p) = client.read(ReadOp::GetPolicy { ino: a.ino }).await? {
                    println!("{p}");
                }
                Ok::<_, ClientError>(())
            }
            PolicyCmd::Set { dir, policy } => {
                let p: Policy = policy.parse().map_err(ClientError::Rejected)?;
                // Each fragment goes to its own host: a policy wider than the
                // cluster would only ever be written lowered.
                if let NsReply::Chunkservers(list) = client.read(ReadOp::ListChunkservers).await? {
                    if p.width() > list.len() {
                        return Err(ClientError::Rejected(format!(
                            "policy {p} needs {} chunkservers (one fragment each); this cluster has {}",
                            p.width(),
                            list.len()
                        )));
                    }
                }
                let a = client.resolve(&dir).await?;
                client.set_policy(a.ino, p).await
            }
        }
    }
    .await;
    match result {
        Ok(()) => Ok(0),
        Err(e) => {
            eprintln!("sparefs: {e}");
            Ok(1)
        }
    }
}

/// `mkdir -p`: every missing directory of `path`, mode 0755.
pub(crate) async fn mkdir_p(client: &MetaClient, path: &str) -> Result<(), ClientError> {
    let mut cur = client.resolve("/").await?;
    for part in path.split('/').filter(|p| !p.is_empty()) {
        cur = match client.lookup(cur.ino, part.as_bytes()).await {
            Ok(a) => a,
            Err(ClientError::Errno(sparefs_proto::Errno::ENOENT)) => {
                client.mkdir(cur.ino, part.as_bytes(), 0o755).await?
            }
            Err(e) => return Err(e),
        };
    }
    Ok(())
}
