//! The `sparefs` command: thin entry points over the service libraries.
//! Owns: argument parsing, process setup, printing. Must not hold service
//! logic of its own.

mod cert_cmd;
mod chaos_cmd;
mod daemon_cmd;
mod fs_cmd;
mod fsck_cmd;
mod fsck_verify;
mod iscsi_cmd;
mod metrics_http;
mod mount_cmd;
mod names;
mod node_cmd;
mod status_cmd;
mod up_cmd;
mod up_tls;

use anyhow::Context;
use clap::{Parser, Subcommand};
use sparefs_proto::namespace::Caller;
use sparefs_proto::ReplicaId;
use sparefs_wire::tls::{Credentials, Identity, Role, Tls};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Parser)]
#[command(
    name = "sparefs",
    version,
    about = "A fault-tolerant filesystem made from spare disk space"
)]
struct Cli {
    /// Directory of this process's TLS credentials (ca.pem, cert.pem,
    /// key.pem; `sparefs up` makes them under DATA/tls): every connection
    /// is then mutual TLS, and the certificate's role decides what it may
    /// do (docs/security.md). Without it, plaintext.
    #[arg(long, global = true, env = "SPAREFS_TLS")]
    tls: Option<PathBuf>,
    /// Log lines as text or as JSON objects (one per line), on stderr.
    #[arg(
        long,
        global = true,
        env = "SPAREFS_LOG_FORMAT",
        default_value = "text"
    )]
    log_format: LogFormat,
    /// What to log: a level, or levels by module
    /// (`info,sparefs_meta=debug,sparefs_wire=warn`); also SPAREFS_LOG.
    #[arg(long, global = true, env = "SPAREFS_LOG", default_value = "info")]
    log_level: String,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run one replica of the metadata Raft group.
    Meta(daemon_cmd::MetaArgs),
    /// Run a chunkserver over a directory of spare space.
    Chunkserver(daemon_cmd::ChunkserverArgs),
    /// Mount the filesystem (FUSE).
    Mount(mount_cmd::MountArgs),
    /// Namespace commands that need no mount.
    Fs {
        #[arg(long, env = "SPAREFS_META")]
        meta: String,
        #[command(subcommand)]
        cmd: fs_cmd::FsCmd,
    },
    /// Check the filesystem (namespace, layouts, blocks) on a live cluster,
    /// repair what is safe to repair; exit 0 clean, 1 corrected, 4 errors
    /// left, 8 operational error.
    Fsck(fsck_cmd::FsckArgs),
    /// Show the state of the cluster.
    Status {
        #[arg(long, env = "SPAREFS_META")]
        meta: Option<String>,
        /// A directory `sparefs up` runs in (reads its cluster.json).
        #[arg(long)]
        data: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Per-directory redundancy policy.
    Policy {
        #[arg(long, env = "SPAREFS_META")]
        meta: String,
        #[command(subcommand)]
        cmd: fs_cmd::PolicyCmd,
    },
    /// Cluster administration.
    Admin {
        #[arg(long, env = "SPAREFS_META")]
        meta: String,
        #[command(subcommand)]
        cmd: AdminCmd,
    },
    /// Start a local cluster over directories under --data.
    Up(up_cmd::UpArgs),
    /// Pull the power on daemons of a `sparefs up` cluster under a workload.
    Chaos(chaos_cmd::ChaosArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish,
    /// powershell), e.g. `sparefs completions bash > /etc/bash_completion.d/sparefs`.
    Completions { shell: clap_complete::Shell },
    /// Write a man page for `sparefs` and each of its commands into DIR
    /// (sparefs.1, sparefs-mount.1, ...).
    Man { dir: PathBuf },
    /// Certificates: a cluster CA, credentials per process, trust lists.
    Cert {
        #[command(subcommand)]
        cmd: cert_cmd::CertCmd,
    },
    /// Disk image files for iSCSI export.
    Image {
        #[arg(long, env = "SPAREFS_META")]
        meta: String,
        #[command(subcommand)]
        cmd: iscsi_cmd::ImageCmd,
    },
    /// The iSCSI target: serve, export, unexport, list.
    Iscsi {
        #[command(subcommand)]
        cmd: iscsi_cmd::IscsiCmd,
    },
    /// Chunkserver administration: list, drain, undrain, remove.
    Node {
        #[arg(long, env = "SPAREFS_META")]
        meta: String,
        #[command(subcommand)]
        cmd: node_cmd::NodeCmd,
    },
}

#[derive(Subcommand)]
enum AdminCmd {
    /// Meta replica membership.
    Meta {
        #[command(subcommand)]
        cmd: AdminMetaCmd,
    },
}

#[derive(Subcommand)]
enum AdminMetaCmd {
    /// Add replica ID at ADDR (start it first with `sparefs meta --join`).
    Add { id: u64, address: String },
    /// Remove replica ID from the group.
    Remove { id: u64 },
    /// Hand leadership to replica ID.
    Transfer { id: u64 },
}

/// This process's TLS ends from the credentials in `dir`, whose
/// certificate must be of `role` (and, given, name `id`).
pub(crate) fn load_tls(
    dir: &std::path::Path,
    role: Role,
    id: Option<u64>,
) -> anyhow::Result<Arc<Tls>> {
    let creds =
        Credentials::load(dir).with_context(|| format!("TLS credentials in {}", dir.display()))?;
    let who = creds.identity()?;
    let wanted = match id {
        Some(id) => who == Identity { role, id },
        None => who.role == role,
    };
    let expected = match id {
        Some(id) => Identity { role, id }.to_string(),
        None => format!("a {}", role.name()),
    };
    anyhow::ensure!(
        wanted,
        "{}: the certificate names {who}, not {expected}",
        dir.display()
    );
    Ok(Arc::new(Tls::new(&creds)?))
}

/// `load_tls` for a daemon or a mount: it also reloads its credentials on
/// SIGHUP. (Not for commands, nor `up`, whose SIGHUP still means the
/// terminal is gone: it stops and its daemons with it.)
pub(crate) fn load_tls_reloading(
    dir: &std::path::Path,
    role: Role,
    id: Option<u64>,
) -> anyhow::Result<Arc<Tls>> {
    let tls = load_tls(dir, role, id)?;
    reload_on_hangup(dir.to_path_buf(), tls.clone());
    Ok(tls)
}

/// On SIGHUP, reads the credentials in `dir` again and uses them for every
/// new connection (a rotated certificate or trust list: docs/security.md);
/// connections already open keep theirs.
fn reload_on_hangup(dir: PathBuf, tls: Arc<Tls>) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangups = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("no reloading of TLS credentials on SIGHUP: {e}");
            return;
        }
    };
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            match Credentials::load(&dir).and_then(|c| tls.reload(&c)) {
                Ok(()) => tracing::info!("reloaded the TLS credentials in {}", dir.display()),
                Err(e) => tracing::warn!(
                    "kept the TLS credentials in use: those in {} do not load: {e}",
                    dir.display()
                ),
            }
        }
    });
}

/// The credentials client commands connect with (`--tls`), set once at
/// start: every command module makes its clients through `meta_client`.
static CLIENT_TLS: std::sync::OnceLock<Arc<Tls>> = std::sync::OnceLock::new();

/// A meta client for this command, over TLS when `--tls` was given.
pub fn meta_client(addresses: Vec<String>, caller: Caller) -> sparefs_client::MetaClient {
    let client = sparefs_client::MetaClient::new(addresses, caller);
    match CLIENT_TLS.get() {
        Some(tls) => client.with_tls(tls.clone()),
        None => client,
    }
}

/// The credentials a command connects with: `--tls DIR`, or for commands
/// given a `sparefs up` directory, the admin certificate `up` made there.
fn client_tls(tls: Option<PathBuf>, data: Option<&std::path::Path>) -> anyhow::Result<()> {
    let dir = tls.or_else(|| {
        data.map(|d| up_tls::dir(d, "admin"))
            .filter(|d| d.join("cert.pem").exists())
    });
    if let Some(dir) = dir {
        let creds = Credentials::load(&dir)
            .with_context(|| format!("TLS credentials in {}", dir.display()))?;
        let _ = CLIENT_TLS.set(Arc::new(Tls::new(&creds)?));
    }
    Ok(())
}

pub fn parse_peers(s: &str) -> anyhow::Result<BTreeMap<u64, String>> {
    let mut out = BTreeMap::new();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        let (id, addr) = part
            .split_once('=')
            .with_context(|| format!("peer {part:?} is not ID=ADDR"))?;
        let id: u64 = id
            .parse()
            .with_context(|| format!("peer id {id:?} is not a number"))?;
        addr.parse::<std::net::SocketAddr>()
            .with_context(|| format!("peer address {addr:?} is not IP:PORT"))?;
        out.insert(id, addr.to_string());
    }
    Ok(out)
}

pub fn split_addresses(s: &str) -> Vec<String> {
    s.split(',')
        .filter(|p| !p.is_empty())
        .map(|p| p.trim().to_string())
        .collect()
}

/// The calling user, for permission checks in the meta.
pub fn current_caller() -> Caller {
    let uid = nix_uid();
    Caller {
        uid: uid.0,
        gid: uid.1,
        groups: Vec::new(),
    }
}

/// A daemon's files hold file contents (fragments, inline data in the
/// meta's database), the cluster key and tokens: whatever umask it was
/// started with, nothing it creates is readable by other users.
#[allow(unsafe_code)]
pub(crate) fn private_files() {
    // SAFETY: umask cannot fail and touches no memory.
    unsafe { libc::umask(0o077) };
}

#[allow(unsafe_code)]
fn nix_uid() -> (u32, u32) {
    // SAFETY: getuid/getgid cannot fail and touch no memory.
    unsafe { (libc::getuid(), libc::getgid()) }
}

fn main() {
    let argv: Vec<String> = std::env::args().collect();
    let as_helper = argv.first().is_some_and(|a| a.ends_with("mount.sparefs"));
    let cli = if as_helper {
        match mount_cmd::helper_args(&argv) {
            Ok(args) => Cli {
                tls: None,
                log_format: LogFormat::Text,
                log_level: std::env::var("SPAREFS_LOG").unwrap_or_else(|_| "info".into()),
                cmd: Cmd::Mount(args),
            },
            Err(e) => {
                eprintln!("mount.sparefs: {e:#}");
                std::process::exit(1);
            }
        }
    } else {
        Cli::parse()
    };
    let filter = tracing_subscriber::EnvFilter::try_new(&cli.log_level).unwrap_or_else(|e| {
        eprintln!(
            "sparefs: --log-level {:?}: {e}; logging at info",
            cli.log_level
        );
        "info".into()
    });
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
    // Daemons serve many connections; the default soft limit of 1024
    // descriptors would cap them (the service loop sizes itself from it).
    sparefs_wire::service::raise_descriptor_limit();
    // (`up` goes private once it has made the data directory and mount
    // point, which every user must be able to reach.)
    if matches!(cli.cmd, Cmd::Meta(_) | Cmd::Chunkserver(_)) {
        private_files();
    }
    // A meta replica runs on one thread: its Raft driver and connections
    // hand messages to each other many times per request, and on a small
    // host each hand-over between threads cost more than the work itself.
    let mut builder = if matches!(cli.cmd, Cmd::Meta(_)) {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    let runtime = match builder.enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("sparefs: start the runtime: {e}");
            std::process::exit(1);
        }
    };
    let code = runtime.block_on(async move {
        match run(cli).await {
            Ok(code) => code,
            Err(e) => {
                eprintln!("sparefs: {e:#}");
                1
            }
        }
    });
    std::process::exit(code);
}

/// sparefs.1 and a page per command (sparefs-mount.1, sparefs-iscsi-serve.1...).
fn write_man_pages(dir: &std::path::Path) -> anyhow::Result<i32> {
    fn write(cmd: &clap::Command, name: &str, dir: &std::path::Path) -> anyhow::Result<usize> {
        let cmd = cmd.clone().name(name.to_string());
        let mut page = Vec::new();
        clap_mangen::Man::new(cmd.clone()).render(&mut page)?;
        let path = dir.join(format!("{name}.1"));
        std::fs::write(&path, page).with_context(|| format!("write {}", path.display()))?;
        let mut n = 1;
        for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
            n += write(sub, &format!("{name}-{}", sub.get_name()), dir)?;
        }
        Ok(n)
    }
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let cli = <Cli as clap::CommandFactory>::command();
    let n = write(&cli, "sparefs", dir)?;
    println!("{n} man pages in {}", dir.display());
    Ok(0)
}

async fn run(cli: Cli) -> anyhow::Result<i32> {
    let tls = cli.tls;
    match &cli.cmd {
        Cmd::Meta(_)
        | Cmd::Chunkserver(_)
        | Cmd::Mount(_)
        | Cmd::Up(_)
        | Cmd::Cert { .. }
        | Cmd::Completions { .. }
        | Cmd::Man { .. } => {}
        Cmd::Iscsi {
            cmd: iscsi_cmd::IscsiCmd::Serve { .. },
        } => {}
        Cmd::Status { data, .. } => client_tls(tls.clone(), data.as_deref())?,
        Cmd::Fsck(args) => client_tls(tls.clone(), args.data.as_deref())?,
        Cmd::Chaos(args) => client_tls(tls.clone(), Some(&args.data))?,
        _ => client_tls(tls.clone(), None)?,
    }
    match cli.cmd {
        Cmd::Meta(args) => daemon_cmd::run_meta(args, tls).await,
        Cmd::Chunkserver(args) => daemon_cmd::run_chunkserver(args, tls).await,
        Cmd::Mount(mut args) => {
            if args.tls.is_none() {
                args.tls = tls;
            }
            mount_cmd::run(args).await
        }
        Cmd::Fs { meta, cmd } => fs_cmd::run(&meta, cmd).await,
        Cmd::Cert { cmd } => cert_cmd::run(cmd),
        Cmd::Completions { shell } => {
            let mut cli = <Cli as clap::CommandFactory>::command();
            // Into memory first: the generator panics on a closed stdout.
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut cli, "sparefs", &mut script);
            let _ = std::io::Write::write_all(&mut std::io::stdout(), &script);
            Ok(0)
        }
        Cmd::Man { dir } => write_man_pages(&dir),
        Cmd::Policy { meta, cmd } => fs_cmd::policy(&meta, cmd).await,
        Cmd::Status { meta, data, json } => status_cmd::run(meta, data, json).await,
        Cmd::Fsck(args) => Ok(fsck_cmd::run(args).await),
        Cmd::Admin {
            meta,
            cmd: AdminCmd::Meta { cmd },
        } => {
            let client = meta_client(split_addresses(&meta), current_caller());
            match cmd {
                AdminMetaCmd::Add { id, address } => {
                    client.add_replica(ReplicaId(id), address).await?
                }
                AdminMetaCmd::Remove { id } => client.remove_replica(ReplicaId(id)).await?,
                AdminMetaCmd::Transfer { id } => client.transfer_leader(ReplicaId(id)).await?,
            }
            Ok(0)
        }
        Cmd::Up(args) => up_cmd::run(args).await,
        Cmd::Node { meta, cmd } => node_cmd::run(&meta, cmd).await,
        Cmd::Chaos(args) => chaos_cmd::run(args).await,
        Cmd::Image { meta, cmd } => iscsi_cmd::image(&meta, cmd).await,
        Cmd::Iscsi { cmd } => iscsi_cmd::iscsi(cmd, tls).await,
    }
}
