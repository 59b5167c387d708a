//! `sparefs image` (image files: create, resize, list, rm) and `sparefs
//! iscsi` (serve, export, unexport, list). Exports live in the meta as
//! configuration records (`sparefs_iscsi::exports`), changed here by
//! compare-and-set.

use anyhow::{bail, Context};
use clap::Subcommand;
use sparefs_client::MetaClient;
use sparefs_iscsi::exports::{self, Credentials, LunRec, TargetRec, DEFAULT_IQN};
use sparefs_proto::namespace::{FileKind, SetAttr};
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Subcommand)]
pub enum ImageCmd {
    /// A new sparse image file of SIZE (e.g. 20G); parent directories are made.
    Create {
        path: String,
        #[arg(long)]
        size: String,
    },
    /// Grow (or, with --force, shrink) an image; targets report the new capacity.
    Resize {
        path: String,
        #[arg(long)]
        size: String,
        #[arg(long)]
        force: bool,
    },
    /// Image files in DIR (default /images) and the LUNs exporting them.
    List {
        #[arg(default_value = "/images")]
        dir: String,
    },
    /// Remove an image (refused while it is exported).
    Rm { path: String },
}

#[derive(Subcommand)]
pub enum IscsiCmd {
    /// Run an iSCSI target process serving the cluster's exports.
    Serve {
        /// Meta replicas (not with --file).
        #[arg(long, env = "SPAREFS_META")]
        meta: Option<String>,
        #[arg(long, default_value = "0.0.0.0:3260")]
        listen: String,
        /// Serve one local file as LUN 1 of --iqn instead (testing the
        /// target alone, or comparing it with a plain disk).
        #[arg(long, conflicts_with = "meta")]
        file: Option<PathBuf>,
        /// Size of --file (made sparse if it is new).
        #[arg(long, default_value = "1G")]
        size: String,
        #[arg(long, default_value = DEFAULT_IQN)]
        iqn: String,
        /// The address initiators and the other targets reach this one at
        /// (default: --listen, or this host's name when --listen is a
        /// wildcard address). It names the target in the cluster.
        #[arg(long)]
        portal: Option<String>,
        /// This target's portal group (ALUA target port group, one per
        /// target process); default: the one it had, or the lowest free.
        #[arg(long)]
        portal_group: Option<u16>,
        /// Answer a login to a LUN this target is standby for with a
        /// temporary redirect to the active target (for initiators without
        /// multipath; leave off for multipath, which wants every path).
        #[arg(long)]
        redirect: bool,
        /// Serve Prometheus metrics over HTTP on this address.
        #[arg(long)]
        metrics: Option<String>,
    },
    /// Export an image file as a LUN.
    Export {
        #[arg(long, env = "SPAREFS_META")]
        meta: String,
        path: String,
        /// LUN number (default: the lowest free from 1).
        #[arg(long)]
        lun: Option<u64>,
        #[arg(long, default_value = DEFAULT_IQN)]
        iqn: String,
        /// One-way CHAP for the whole target: USER:SECRET (12+ bytes).
        #[arg(long)]
        chap: Option<String>,
        /// Mutual CHAP: what the target answers with, USER:SECRET.
        #[arg(long, requires = "chap")]
        mutual: Option<String>,
        /// Initiator IQNs allowed to log in to the target (comma separated).
        #[arg(long, value_delimiter = ',')]
        initiators: Vec<String>,
        #[arg(long)]
        read_only: bool,
    },
    /// Stop exporting a LUN (PATH, or --lun of --iqn).
    Unexport {
        #[arg(long, env = "SPAREFS_META")]
        meta: String,
        path: Option<String>,
        #[arg(long)]
        lun: Option<u64>,
        #[arg(long, default_value = DEFAULT_IQN)]
        iqn: String,
    },
    /// Exports, target processes and their sessions.
    List {
        #[arg(long, env = "SPAREFS_META")]
        meta: String,
        #[arg(long)]
        json: bool,
    },
}

fn client(meta: &str) -> Arc<MetaClient> {
    Arc::new(crate::meta_client(
        crate::split_addresses(meta),
        sparefs_proto::namespace::Caller::ROOT,
    ))
}

fn size_of(text: &str) -> anyhow::Result<u64> {
    let n = sparefs_chunkserver::parse_size(text, 0).map_err(anyhow::Error::msg)?;
    if n == 0 || n % 512 != 0 {
        bail!("image size {text} must be a positive multiple of 512 bytes");
    }
    Ok(n)
}

/// Sizes an image (sparse: no bytes are written).
async fn set_size(
    c: &MetaClient,
    ino: sparefs_proto::InodeId,
    bytes: u64,
    path: &str,
) -> anyhow::Result<()> {
    let set = SetAttr {
        size: Some(bytes),
        ..Default::default()
    };
    c.setattr(ino, set)
        .await
        .with_context(|| format!("sizing {path}"))?;
    println!("{path}: {bytes} bytes");
    Ok(())
}

pub async fn image(meta: &str, cmd: ImageCmd) -> anyhow::Result<i32> {
    let c = client(meta);
    match cmd {
        ImageCmd::Create { path, size } => {
            let bytes = size_of(&size)?;
            if let Some((dir, _)) = path.rsplit_once('/') {
                crate::fs_cmd::mkdir_p(&c, dir)
                    .await
                    .with_context(|| format!("making {dir}"))?;
            }
            let (dir, name) = c
                .resolve_parent(&path)
                .await
                .with_context(|| path.clone())?;
            let a = c
                .create(dir.ino, &name, 0o600, true)
                .await
                .with_context(|| format!("creating {path}"))?;
            set_size(&c, a.ino, bytes, &path).await?;
        }
        ImageCmd::Resize { path, size, force } => {
            let bytes = size_of(&size)?;
            let a = c.resolve(&path).await.with_context(|| path.clone())?;
            if bytes < a.size && !force {
                bail!(
                    "{path}: shrinking from {} to {bytes} bytes loses data; add --force",
                    a.size
                );
            }
            set_size(&c, a.ino, bytes, &path).await?;
        }
        ImageCmd::List { dir } => {
            let targets = exports::load_all(&c).await.map_err(anyhow::Error::msg)?;
            let d = c.resolve(&dir).await.with_context(|| dir.clone())?;
            for e in c.readdir(d.ino).await? {
                let name = String::from_utf8_lossy(&e.name).to_string();
                if name == "." || name == ".." {
                    continue;
                }
                let a = c.getattr(e.ino).await?;
                if a.kind != FileKind::File {
                    continue;
                }
                let used: Vec<String> = targets
                    .iter()
                    .flat_map(|(t, _)| {
                        t.luns
                            .iter()
                            .filter(|(_, l)| l.ino == a.ino.0)
                            .map(|(n, _)| format!("{}/{n}", t.iqn))
                            .collect::<Vec<_>>()
                    })
                    .collect();
                let path = format!("{}/{name}", dir.trim_end_matches('/'));
                println!(
                    "{path}\t{}\t{}",
                    a.size,
                    if used.is_empty() {
                        "-".into()
                    } else {
                        used.join(",")
                    }
                );
            }
        }
        ImageCmd::Rm { path } => {
            let a = c.resolve(&path).await.with_context(|| path.clone())?;
            let targets = exports::load_all(&c).await.map_err(anyhow::Error::msg)?;
            if targets
                .iter()
                .any(|(t, _)| t.luns.values().any(|l| l.ino == a.ino.0))
            {
                bail!("{path} is exported; `sparefs iscsi unexport` it first");
            }
            let (dir, name) = c.resolve_parent(&path).await?;
            c.unlink(dir.ino, &name)
                .await
                .with_context(|| format!("removing {path}"))?;
        }
    }
    Ok(0)
}

/// Changes one target record by compare-and-set, again on a conflict.
async fn change_target(
    c: &MetaClient,
    iqn: &str,
    mut f: impl FnMut(&mut TargetRec) -> anyhow::Result<()>,
) -> anyhow::Result<TargetRec> {
    let key = exports::key_of(iqn);
    for _ in 0..16 {
        let cur = sparefs_iscsi::state::get(c, &key)
            .await
            .map_err(anyhow::Error::msg)?;
        let (mut rec, version) = match cur {
            Some(e) => (
                serde_json::from_slice::<TargetRec>(&e.value).context("export record")?,
                e.version,
            ),
            None => (
                TargetRec {
                    iqn: iqn.to_string(),
                    ..Default::default()
                },
                0,
            ),
        };
        f(&mut rec)?;
        let value = if rec.luns.is_empty() {
            None
        } else {
            Some(serde_json::to_vec(&rec)?)
        };
        match sparefs_iscsi::state::put(c, &key, Some(version), value).await {
            Ok(_) => return Ok(rec),
            Err(sparefs_iscsi::state::PutError::Stale) => continue,
            Err(e) => bail!("{e}"),
        }
    }
    bail!("{iqn}: changed by others too often; try again")
}

pub async fn iscsi(cmd: IscsiCmd, tls: Option<PathBuf>) -> anyhow::Result<i32> {
    match cmd {
        IscsiCmd::Serve {
            meta,
            listen,
            file,
            size,
            iqn,
            portal,
            portal_group,
            redirect,
            metrics,
        } => {
            crate::metrics_http::serve(metrics.as_deref(), "iscsi")?;
            let how = ServeHow {
                portal,
                portal_group,
                redirect,
            };
            serve(meta, listen, file, size, iqn, how, tls).await
        }
        IscsiCmd::Export {
            meta,
            path,
            lun,
            iqn,
            chap,
            mutual,
            initiators,
            read_only,
        } => {
            if !exports::valid_iqn(&iqn) {
                bail!(
                    "{iqn:?} is not an iSCSI name (iqn.YYYY-MM.reversed.domain[:id], lower case)"
                );
            }
            let chap: Option<Credentials> = chap
                .map(|s| s.parse())
                .transpose()
                .map_err(anyhow::Error::msg)?;
            let mutual: Option<Credentials> = mutual
                .map(|s| s.parse())
                .transpose()
                .map_err(anyhow::Error::msg)?;
            let c = client(&meta);
            let a = c.resolve(&path).await.with_context(|| path.clone())?;
            if a.kind != FileKind::File {
                bail!("{path} is not a regular file");
            }
            if a.size == 0 || a.size % 512 != 0 {
                bail!("{path}: {} bytes is not a whole number of 512-byte blocks (`sparefs image resize`)", a.size);
            }
            let mut chosen = 0;
            change_target(&c, &iqn, |t| {
                if let Some((n, _)) = t.luns.iter().find(|(_, l)| l.ino == a.ino.0) {
                    bail!("{path} is already LUN {n} of {iqn}");
                }
                let n = match lun {
                    Some(n) if t.luns.contains_key(&n) => bail!("LUN {n} of {iqn} is taken"),
                    Some(n) if n > 16383 => bail!("LUN {n}: at most 16383"),
                    Some(n) => n,
                    None => (1..16384).find(|n| !t.luns.contains_key(n)).unwrap_or(0),
                };
                chosen = n;
                t.luns.insert(
                    n,
                    LunRec {
                        path: path.clone(),
                        ino: a.ino.0,
                        read_only,
                        naa: exports::new_naa(&iqn, n, a.ino.0),
                    },
                );
                if chap.is_some() {
                    t.chap = chap.clone();
                    t.mutual = mutual.clone();
                }
                if !initiators.is_empty() {
                    t.initiators = initiators.clone();
                }
                Ok(())
            })
            .await?;
            println!("{path}: {iqn} LUN {chosen}");
            wait_served(&c, a.ino.0).await;
            Ok(0)
        }
        IscsiCmd::Unexport {
            meta,
            path,
            lun,
            iqn,
        } => {
            let c = client(&meta);
            let ino = match &path {
                Some(p) => Some(c.resolve(p).await.with_context(|| p.clone())?.ino.0),
                None => None,
            };
            if ino.is_none() && lun.is_none() {
                bail!("name the image PATH or --lun");
            }
            change_target(&c, &iqn, |t| {
                let before = t.luns.len();
                t.luns
                    .retain(|n, l| !(Some(*n) == lun || Some(l.ino) == ino));
                if t.luns.len() == before {
                    bail!("no such export on {iqn}");
                }
                Ok(())
            })
            .await?;
            Ok(0)
        }
        IscsiCmd::List { meta, json } => {
            let c = client(&meta);
            let v = summary(&c).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print_summary(&v);
            }
            Ok(0)
        }
    }
}

/// Exports and target processes with their sessions, as `iscsi list
/// --json` and `status --json` show them.
/// Waits (a few seconds at most) until a live target serves the image
/// actively, so that an initiator started right after `export` finds the
/// LUN ready; says where it is served, on stderr.
async fn wait_served(c: &MetaClient, ino: u64) {
    let start = std::time::Instant::now();
    loop {
        let beats = sparefs_iscsi::target::heartbeats(c)
            .await
            .unwrap_or_default();
        let now = sparefs_iscsi::target::unix_now();
        let live: Vec<&str> = beats
            .iter()
            .filter(|b| {
                now.saturating_sub(b.updated_unix) <= sparefs_iscsi::target::HEARTBEAT_STALE_SECS
            })
            .map(|b| b.portal.as_str())
            .collect();
        if live.is_empty() {
            eprintln!("no iSCSI target is running: start one (`sparefs iscsi serve`)");
            return;
        }
        if let Ok((epoch, holder)) = sparefs_iscsi::failover::get_fence(c, ino).await {
            if let Some(p) = sparefs_iscsi::failover::holder_portal(&holder) {
                if live.contains(&p) {
                    eprintln!("served by {p} (epoch {epoch})");
                    return;
                }
            }
        }
        if start.elapsed() > std::time::Duration::from_secs(10) {
            eprintln!("not served yet by any target; see `sparefs iscsi list`");
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

pub async fn summary(c: &MetaClient) -> anyhow::Result<serde_json::Value> {
    let targets = exports::load_all(c).await.map_err(anyhow::Error::msg)?;
    let beats = sparefs_iscsi::target::heartbeats(c)
        .await
        .map_err(anyhow::Error::msg)?;
    let now = sparefs_iscsi::target::unix_now();
    let up = |b: &sparefs_iscsi::target::Heartbeat| {
        now.saturating_sub(b.updated_unix) <= sparefs_iscsi::target::HEARTBEAT_STALE_SECS
    };
    let mut exports = Vec::new();
    for (t, _) in &targets {
        let mut luns = Vec::new();
        for (n, l) in &t.luns {
            // Which target writes the image (the fence holder), under which
            // epoch, and which live targets stand by for it.
            let (epoch, holder) = sparefs_iscsi::failover::get_fence(c, l.ino)
                .await
                .unwrap_or((0, String::new()));
            let active = sparefs_iscsi::failover::holder_portal(&holder)
                .filter(|p| beats.iter().any(|b| b.portal == *p && up(b)))
                .map(str::to_string);
            let standby: Vec<&str> = beats
                .iter()
                .filter(|b| up(b) && Some(b.portal.as_str()) != active.as_deref())
                .map(|b| b.portal.as_str())
                .collect();
            luns.push(serde_json::json!({
                "lun": n, "path": l.path, "read_only": l.read_only, "naa": format!("{:016x}", l.naa),
                "active": active, "epoch": epoch, "standby": standby,
            }));
        }
        exports.push(serde_json::json!({
            "iqn": t.iqn,
            "chap": t.chap.is_some(),
            "mutual_chap": t.mutual.is_some(),
            "initiators": t.initiators,
            "luns": luns,
        }));
    }
    Ok(serde_json::json!({
        "exports": exports,
        "targets": beats.iter().map(|b| serde_json::json!({
            "portal": b.portal, "host": b.host, "pid": b.pid, "portal_group": b.group,
            "up": up(b),
            "seconds_since_heartbeat": now.saturating_sub(b.updated_unix),
            "sessions": b.sessions,
        })).collect::<Vec<_>>(),
    }))
}

pub fn print_summary(v: &serde_json::Value) {
    let empty = Vec::new();
    println!("iSCSI exports:");
    for t in v["exports"].as_array().unwrap_or(&empty) {
        let auth = match (t["chap"].as_bool(), t["mutual_chap"].as_bool()) {
            (Some(true), Some(true)) => "mutual CHAP",
            (Some(true), _) => "CHAP",
            _ => "no CHAP",
        };
        let who: Vec<&str> = t["initiators"]
            .as_array()
            .unwrap_or(&empty)
            .iter()
            .filter_map(|i| i.as_str())
            .collect();
        let who = if who.is_empty() {
            "any initiator".to_string()
        } else {
            who.join(",")
        };
        println!("  {} ({auth}, {who})", t["iqn"].as_str().unwrap_or("?"));
        for l in t["luns"].as_array().unwrap_or(&empty) {
            let ro = if l["read_only"].as_bool() == Some(true) {
                " (read-only)"
            } else {
                ""
            };
            let active = l["active"].as_str().unwrap_or("none");
            let standby: Vec<&str> = l["standby"]
                .as_array()
                .unwrap_or(&empty)
                .iter()
                .filter_map(|s| s.as_str())
                .collect();
            let standby = if standby.is_empty() {
                "none".to_string()
            } else {
                standby.join(", ")
            };
            println!(
                "    LUN {}: {}{ro}; active {active} (epoch {}), standby {standby}",
                l["lun"],
                l["path"].as_str().unwrap_or("?"),
                l["epoch"]
            );
        }
    }
    println!("iSCSI targets:");
    for b in v["targets"].as_array().unwrap_or(&empty) {
        let state = if b["up"].as_bool() == Some(true) {
            "up"
        } else {
            "gone"
        };
        let sessions = b["sessions"].as_array().unwrap_or(&empty);
        println!(
            "  {} (portal group {}) on {} (pid {}): {state}, {} sessions",
            b["portal"].as_str().unwrap_or("?"),
            b["portal_group"],
            b["host"].as_str().unwrap_or("?"),
            b["pid"],
            sessions.len()
        );
        for s in sessions {
            let to = if s["discovery"].as_bool() == Some(true) {
                "discovery"
            } else {
                s["target"].as_str().unwrap_or("?")
            };
            println!(
                "    {} isid {} -> {to}",
                s["initiator"].as_str().unwrap_or("?"),
                s["isid"].as_str().unwrap_or("?")
            );
        }
    }
}

/// How a target process presents itself to the others (failover).
struct ServeHow {
    portal: Option<String>,
    portal_group: Option<u16>,
    redirect: bool,
}

/// The name of a portal listening on `local`: itself, or with a wildcard
/// address this host's name.
fn portal_name(local: std::net::SocketAddr) -> String {
    if !local.ip().is_unspecified() {
        return local.to_string();
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".into());
    format!("{host}:{}", local.port())
}

async fn serve(
    meta: Option<String>,
    listen: String,
    file: Option<PathBuf>,
    size: String,
    iqn: String,
    how: ServeHow,
    tls: Option<PathBuf>,
) -> anyhow::Result<i32> {
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .with_context(|| format!("listening on {listen}"))?;
    let portal = match how.portal {
        Some(p) => p,
        None => listener
            .local_addr()
            .map(portal_name)
            .unwrap_or(listen.clone()),
    };
    let shared = match (meta, file) {
        (Some(meta), None) => {
            let mut c = sparefs_client::MetaClient::new(
                crate::split_addresses(&meta),
                sparefs_proto::namespace::Caller::ROOT,
            );
            if let Some(dir) = &tls {
                c = c.with_tls(crate::load_tls_reloading(
                    dir,
                    sparefs_wire::tls::Role::Iscsi,
                    None,
                )?);
            }
            let meta = Arc::new(c);
            let shared = sparefs_iscsi::target::Shared::new(Some(meta.clone()), portal.clone());
            let group = match how.portal_group {
                Some(g) => g,
                None => sparefs_iscsi::target::claim_group_retrying(&meta, &portal).await,
            };
            shared.set_group(group);
            shared.set_redirect(how.redirect);
            shared
        }
        (None, Some(file)) => {
            let bytes = size_of(&size)?;
            let backend = sparefs_iscsi::backend::FileBackend::create(&file, bytes)
                .with_context(|| format!("opening {}", file.display()))?;
            let shared = sparefs_iscsi::target::Shared::new(None, portal.clone());
            let mut rec = TargetRec {
                iqn: iqn.clone(),
                ..Default::default()
            };
            rec.luns.insert(
                1,
                LunRec {
                    path: file.display().to_string(),
                    ino: 0,
                    read_only: false,
                    naa: exports::new_naa(&iqn, 1, 0),
                },
            );
            let mut backends: std::collections::BTreeMap<
                u64,
                Arc<dyn sparefs_iscsi::backend::Backend>,
            > = Default::default();
            backends.insert(1, Arc::new(backend));
            shared.set_local(rec, backends);
            shared
        }
        _ => bail!("give --meta ADDRS (the cluster's exports) or --file PATH"),
    };
    println!("iscsi target on {portal} (portal group {})", shared.group());
    sparefs_iscsi::target::serve(shared, listener).await?;
    Ok(0)
}
