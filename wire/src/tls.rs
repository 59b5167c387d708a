//! Mutual TLS for a cluster's connections: its certificate authority, each
//! process's certificate naming its role and id, and the verified identity
//! of the peer on the other end of a connection.
//!
//! A certificate names its holder as a URI subject alternative name
//! `sparefs:ROLE:ID` (`sparefs:meta:2`, `sparefs:mount:7`). Every
//! certificate also names the DNS name `CLUSTER_NAME`, which every
//! connection asks for: a peer is who its certificate says, not where it
//! listens, so addresses can move. Both ends present a certificate signed
//! by the cluster CA (the trust list may hold several CAs, old and new,
//! while a CA is rotated); TLS 1.3 with AES-GCM (AES-NI) or ChaCha20.
//!
//! Owns: certificates, keys, the rustls configurations, a peer's identity.
//! Must not touch: what a role may do (each service decides that).

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use std::fmt;
use std::path::Path;
use std::sync::Arc;
use tokio::net::TcpStream;

/// The name every certificate carries and every connection asks for.
pub const CLUSTER_NAME: &str = "sparefs.cluster";
/// How long a certificate is valid (rotation replaces it sooner).
const VALID_DAYS: i64 = 3650;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    Meta,
    Chunkserver,
    Mount,
    Admin,
    Iscsi,
}

impl Role {
    const ALL: [Role; 5] = [
        Role::Meta,
        Role::Chunkserver,
        Role::Mount,
        Role::Admin,
        Role::Iscsi,
    ];

    /// The role `name` names (`meta`, `chunkserver`, `mount`, `admin`,
    /// `iscsi`).
    pub fn parse(name: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.name() == name)
    }

    pub fn name(self) -> &'static str {
        match self {
            Role::Meta => "meta",
            Role::Chunkserver => "chunkserver",
            Role::Mount => "mount",
            Role::Admin => "admin",
            Role::Iscsi => "iscsi",
        }
    }
}

/// Who a certificate says its holder is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Identity {
    pub role: Role,
    pub id: u64,
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.role.name(), self.id)
    }
}

/// Which callers a certificate's holder may speak for: a mount (or an
/// iSCSI target) sends each request as a uid, and the meta believes only
/// the uids its certificate allows (as an NFS server trusts a client host,
/// or squashes it). Named in the certificate as a second URI,
/// `sparefs-callers:squash-root` or `sparefs-callers:uids:FIRST-LAST`;
/// without one, any caller.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Callers {
    #[default]
    Any,
    /// Root (uid 0, gid 0) becomes the anonymous user; others are believed.
    SquashRoot,
    /// Only uids in `first..=last` are believed; any other caller, root
    /// included, becomes the anonymous user.
    Uids { first: u32, last: u32 },
}

const CALLERS_SCHEME: &str = "sparefs-callers:";

impl Callers {
    /// As written on a command line: `any`, `squash-root`, `uids:1000-1999`.
    pub fn parse(s: &str) -> Result<Callers, String> {
        let bad = || format!("callers {s:?} are none of any, squash-root, uids:FIRST-LAST");
        match s {
            "any" => Ok(Callers::Any),
            "squash-root" => Ok(Callers::SquashRoot),
            _ => {
                let (a, b) = s
                    .strip_prefix("uids:")
                    .and_then(|r| r.split_once('-'))
                    .ok_or_else(bad)?;
                let first: u32 = a.parse().map_err(|_| bad())?;
                let last: u32 = b.parse().map_err(|_| bad())?;
                if first > last {
                    return Err(format!("callers {s:?}: the range is empty"));
                }
                Ok(Callers::Uids { first, last })
            }
        }
    }

    fn uri(self) -> Option<String> {
        (self != Callers::Any).then(|| format!("{CALLERS_SCHEME}{self}"))
    }

    /// The limit a verified certificate names: `Any` if it names none,
    /// an error if it names more than one or one this version cannot read
    /// (refusing is safer than believing every caller).
    pub fn of_certificate(der: &[u8]) -> Result<Callers, String> {
        let (_, cert) =
            x509_parser::parse_x509_certificate(der).map_err(|e| format!("certificate: {e}"))?;
        let Some(san) = cert
            .subject_alternative_name()
            .map_err(|e| format!("certificate: {e}"))?
        else {
            return Ok(Callers::Any);
        };
        let mut found = san.value.general_names.iter().filter_map(|n| match n {
            x509_parser::extensions::GeneralName::URI(u) => u.strip_prefix(CALLERS_SCHEME),
            _ => None,
        });
        let Some(one) = found.next() else {
            return Ok(Callers::Any);
        };
        if found.next().is_some() {
            return Err("the certificate names its callers twice".into());
        }
        Callers::parse(one)
    }
}

impl fmt::Display for Callers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Callers::Any => f.write_str("any"),
            Callers::SquashRoot => f.write_str("squash-root"),
            Callers::Uids { first, last } => write!(f, "uids:{first}-{last}"),
        }
    }
}

impl Identity {
    pub const fn new(role: Role, id: u64) -> Identity {
        Identity { role, id }
    }

    /// The upper 64 bits of every client id a holder of this certificate
    /// may use (the lower 64 are its own random choice): a client's
    /// sessions, locks, leases and delegations then belong to one
    /// certificate, and another certificate cannot act for them.
    pub fn client_prefix(self) -> u64 {
        let mut h = blake3::Hasher::new();
        h.update(b"sparefs client id");
        h.update(self.role.name().as_bytes());
        h.update(&self.id.to_be_bytes());
        let mut prefix = [0u8; 8];
        prefix.copy_from_slice(&h.finalize().as_bytes()[..8]);
        u64::from_be_bytes(prefix)
    }

    /// A client id of this certificate's, `low` its own random part.
    pub fn client_id(self, low: u64) -> u128 {
        ((self.client_prefix() as u128) << 64) | low as u128
    }

    /// Whether `client` is one of this certificate's client ids.
    pub fn owns_client_id(self, client: u128) -> bool {
        (client >> 64) as u64 == self.client_prefix()
    }

    fn uri(self) -> String {
        format!("sparefs:{}:{}", self.role.name(), self.id)
    }

    fn from_uri(uri: &str) -> Option<Identity> {
        let mut parts = uri.split(':');
        if parts.next()? != "sparefs" {
            return None;
        }
        let role = parts.next()?;
        let role = Role::ALL.into_iter().find(|r| r.name() == role)?;
        let id = parts.next()?.parse().ok()?;
        parts.next().is_none().then_some(Identity { role, id })
    }

    /// The identity a verified certificate names, if it names exactly one.
    pub fn of_certificate(der: &[u8]) -> Option<Identity> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let san = cert.subject_alternative_name().ok()??;
        let mut found = san.value.general_names.iter().filter_map(|n| match n {
            x509_parser::extensions::GeneralName::URI(u) => Identity::from_uri(u),
            _ => None,
        });
        let one = found.next()?;
        found.next().is_none().then_some(one)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error("tls configuration: {0}")]
    Config(#[from] rustls::Error),
    #[error("client verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    #[error("{what}: {source}")]
    File {
        what: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Pem(String),
}

/// One process's credentials: the CAs it trusts, its certificate and key
/// (PEM). Kept in a directory as `ca.pem`, `cert.pem` and `key.pem` (0600).
#[derive(Clone)]
pub struct Credentials {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

fn read(dir: &Path, name: &str) -> Result<String, TlsError> {
    let path = dir.join(name);
    std::fs::read_to_string(&path).map_err(|source| TlsError::File {
        what: format!("read {}", path.display()),
        source,
    })
}

/// Writes `text` to `dir/name` readable by its owner only, whole or not at
/// all (a temporary file renamed into place).
fn write_private(dir: &Path, name: &str, text: &str) -> Result<(), TlsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(name);
    let tmp = dir.join(format!("{name}.tmp"));
    let io = |what: &str, source| TlsError::File {
        what: format!("{what} {}", path.display()),
        source,
    };
    std::fs::create_dir_all(dir).map_err(|e| io("create the directory of", e))?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| io("create", e))?;
    f.write_all(text.as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(|e| io("write", e))?;
    std::fs::rename(&tmp, &path).map_err(|e| io("rename into", e))
}

impl Credentials {
    pub fn load(dir: &Path) -> Result<Credentials, TlsError> {
        Ok(Credentials {
            ca_pem: read(dir, "ca.pem")?,
            cert_pem: read(dir, "cert.pem")?,
            key_pem: read(dir, "key.pem")?,
        })
    }

    pub fn save(&self, dir: &Path) -> Result<(), TlsError> {
        write_private(dir, "ca.pem", &self.ca_pem)?;
        write_private(dir, "cert.pem", &self.cert_pem)?;
        write_private(dir, "key.pem", &self.key_pem)
    }

    fn cert_der(&self) -> Result<CertificateDer<'static>, TlsError> {
        CertificateDer::from_pem_slice(self.cert_pem.as_bytes())
            .map_err(|e| TlsError::Pem(format!("cert.pem: {e}")))
    }

    /// Adds the CAs in `pem` to the trust list (those not in it yet): the
    /// first step of rotating to a new CA.
    pub fn trust(&mut self, pem: &str) -> Result<usize, TlsError> {
        let have = ders(&self.ca_pem)?;
        let mut added = 0;
        for block in pem_blocks(pem) {
            let der = one_der(block)?;
            if !have.contains(&der) {
                self.ca_pem.push_str(block);
                self.ca_pem.push('\n');
                added += 1;
            }
        }
        Ok(added)
    }

    /// Removes the CAs in `pem` from the trust list: the last step of
    /// rotating away from an old CA. The list never becomes empty.
    pub fn distrust(&mut self, pem: &str) -> Result<usize, TlsError> {
        let gone = ders(pem)?;
        let mut kept = String::new();
        let mut removed = 0;
        for block in pem_blocks(&self.ca_pem) {
            if gone.contains(&one_der(block)?) {
                removed += 1;
            } else {
                kept.push_str(block);
                kept.push('\n');
            }
        }
        if kept.is_empty() {
            return Err(TlsError::Pem(
                "that would leave no CA to trust: trust the new one first".into(),
            ));
        }
        self.ca_pem = kept;
        Ok(removed)
    }

    /// How many CAs the trust list holds.
    pub fn trusted_cas(&self) -> Result<usize, TlsError> {
        Ok(ders(&self.ca_pem)?.len())
    }

    /// Whom this certificate names.
    pub fn identity(&self) -> Result<Identity, TlsError> {
        Identity::of_certificate(&self.cert_der()?)
            .ok_or_else(|| TlsError::Pem("cert.pem names no sparefs role and id".into()))
    }

    /// Which callers this certificate may speak for.
    pub fn callers(&self) -> Result<Callers, TlsError> {
        Callers::of_certificate(&self.cert_der()?)
            .map_err(|e| TlsError::Pem(format!("cert.pem: {e}")))
    }

    /// When this certificate stops being valid, as seconds since the epoch.
    pub fn not_after(&self) -> Result<i64, TlsError> {
        let der = self.cert_der()?;
        let (_, cert) = x509_parser::parse_x509_certificate(&der)
            .map_err(|e| TlsError::Pem(format!("cert.pem: {e}")))?;
        Ok(cert.validity().not_after.timestamp())
    }
}

/// The PEM certificate blocks of `text`, each from BEGIN to END.
fn pem_blocks(text: &str) -> Vec<&str> {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(b) = rest.find(BEGIN) {
        let Some(e) = rest[b..].find(END) else {
            break;
        };
        out.push(&rest[b..b + e + END.len()]);
        rest = &rest[b + e + END.len()..];
    }
    out
}

fn one_der(block: &str) -> Result<Vec<u8>, TlsError> {
    CertificateDer::from_pem_slice(block.as_bytes())
        .map(|d| d.to_vec())
        .map_err(|e| TlsError::Pem(format!("a CA certificate: {e}")))
}

fn ders(text: &str) -> Result<Vec<Vec<u8>>, TlsError> {
    pem_blocks(text).into_iter().map(one_der).collect()
}

/// A cluster's certificate authority: signs every process's certificate.
pub struct ClusterCa {
    cert_pem: String,
    key: KeyPair,
}

impl ClusterCa {
    pub fn create() -> Result<ClusterCa, TlsError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, "sparefs cluster CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_after = rcgen::date_time_ymd(2100, 1, 1);
        let cert = params.self_signed(&key)?;
        Ok(ClusterCa {
            cert_pem: cert.pem(),
            key,
        })
    }

    /// The CA kept in `dir` (`ca.pem`, `ca.key`).
    pub fn load(dir: &Path) -> Result<ClusterCa, TlsError> {
        Ok(ClusterCa {
            cert_pem: read(dir, "ca.pem")?,
            key: KeyPair::from_pem(&read(dir, "ca.key")?)?,
        })
    }

    pub fn save(&self, dir: &Path) -> Result<(), TlsError> {
        write_private(dir, "ca.pem", &self.cert_pem)?;
        write_private(dir, "ca.key", &self.key.serialize_pem())
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// A certificate and key for `who`, trusting this CA.
    pub fn issue(&self, who: Identity) -> Result<Credentials, TlsError> {
        self.issue_for(who, Callers::Any)
    }

    /// A certificate and key for `who` that may speak only for `callers`.
    pub fn issue_for(&self, who: Identity, callers: Callers) -> Result<Credentials, TlsError> {
        let issuer = CertificateParams::from_ca_cert_pem(&self.cert_pem)?.self_signed(&self.key)?;
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(vec![CLUSTER_NAME.to_string()])?;
        params
            .subject_alt_names
            .push(SanType::URI(who.uri().try_into()?));
        if let Some(uri) = callers.uri() {
            params.subject_alt_names.push(SanType::URI(uri.try_into()?));
        }
        params
            .distinguished_name
            .push(DnType::CommonName, who.to_string());
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::days(1);
        params.not_after = now + time::Duration::days(VALID_DAYS);
        let cert = params.signed_by(&key, &issuer, &self.key)?;
        Ok(Credentials {
            ca_pem: self.cert_pem.clone(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// The TLS ends of one process: accepts and opens connections that both
/// sides authenticate, and says who the peer is. Its credentials can be
/// replaced while it runs (`reload`: a rotated certificate or trust list);
/// connections already open keep the credentials they were made with.
pub struct Tls {
    configs: std::sync::RwLock<Arc<Configs>>,
    me: Identity,
}

struct Configs {
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
}

pub type ServerStream = tokio_rustls::server::TlsStream<TcpStream>;
pub type ClientStream = tokio_rustls::client::TlsStream<TcpStream>;
/// A client connection on a blocking socket.
pub type BlockingClientStream = rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>;

/// ring's provider: AES-GCM with AES-NI, built in a minute with no C
/// toolchain beyond cc. (rustls deprecates it for lacking post-quantum key
/// exchange; aws-lc-rs has that, at the cost of a much longer C build in
/// CI: a choice to revisit in docs/security.md.)
#[allow(deprecated)]
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl Configs {
    fn new(creds: &Credentials) -> Result<Configs, TlsError> {
        let mut roots = RootCertStore::empty();
        for ca in CertificateDer::pem_slice_iter(creds.ca_pem.as_bytes()) {
            let ca = ca.map_err(|e| TlsError::Pem(format!("ca.pem: {e}")))?;
            roots.add(ca)?;
        }
        let roots = Arc::new(roots);
        let chain = CertificateDer::pem_slice_iter(creds.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsError::Pem(format!("cert.pem: {e}")))?;
        let key = PrivateKeyDer::from_pem_slice(creds.key_pem.as_bytes())
            .map_err(|e| TlsError::Pem(format!("key.pem: {e}")))?;
        let verifier =
            WebPkiClientVerifier::builder_with_provider(roots.clone(), provider()).build()?;
        let server = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())?;
        let client = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)?;
        Ok(Configs {
            server: Arc::new(server),
            client: Arc::new(client),
        })
    }
}

impl Tls {
    pub fn new(creds: &Credentials) -> Result<Tls, TlsError> {
        Ok(Tls {
            configs: std::sync::RwLock::new(Arc::new(Configs::new(creds)?)),
            me: creds.identity()?,
        })
    }

    /// Uses `creds` for every connection from now on. They must name the
    /// same role and id (a process does not change who it is).
    pub fn reload(&self, creds: &Credentials) -> Result<(), TlsError> {
        let who = creds.identity()?;
        if who != self.me {
            return Err(TlsError::Pem(format!(
                "the new certificate names {who}, this process is {}",
                self.me
            )));
        }
        let configs = Arc::new(Configs::new(creds)?);
        match self.configs.write() {
            Ok(mut c) => *c = configs,
            Err(poisoned) => *poisoned.into_inner() = configs,
        }
        Ok(())
    }

    fn configs(&self) -> Arc<Configs> {
        match self.configs.read() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Whom this process's certificate names.
    pub fn me(&self) -> Identity {
        self.me
    }

    /// Completes the server side of a handshake: the client presented a
    /// certificate of this cluster's CA, naming `Identity` and the callers
    /// it may speak for.
    pub async fn accept(
        &self,
        tcp: TcpStream,
    ) -> std::io::Result<(ServerStream, Identity, Callers)> {
        let acceptor = tokio_rustls::TlsAcceptor::from(self.configs().server.clone());
        let stream = acceptor.accept(tcp).await?;
        let session = stream.get_ref().1;
        let who = named_peer(session)?;
        let callers = session
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| Callers::of_certificate(c))
            .unwrap_or(Ok(Callers::Any))
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::PermissionDenied, e))?;
        Ok((stream, who, callers))
    }

    /// Completes the client side of a handshake with a server of this
    /// cluster, naming `Identity`.
    pub async fn connect(&self, tcp: TcpStream) -> std::io::Result<(ClientStream, Identity)> {
        let name = ServerName::try_from(CLUSTER_NAME)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let connector = tokio_rustls::TlsConnector::from(self.configs().client.clone());
        let stream = connector.connect(name, tcp).await?;
        let who = named_peer(stream.get_ref().1)?;
        Ok((stream, who))
    }
}

impl Tls {
    /// `connect` on a blocking socket, for threads that must not wait on a
    /// runtime (the mount's lanes); the socket's timeouts bound the
    /// handshake.
    pub fn connect_blocking(
        &self,
        mut tcp: std::net::TcpStream,
    ) -> std::io::Result<(BlockingClientStream, Identity)> {
        let name = ServerName::try_from(CLUSTER_NAME)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let mut conn = rustls::ClientConnection::new(self.configs().client.clone(), name)
            .map_err(std::io::Error::other)?;
        while conn.is_handshaking() {
            conn.complete_io(&mut tcp)?;
        }
        let who = named_peer(&conn)?;
        Ok((rustls::StreamOwned::new(conn, tcp), who))
    }
}

/// Whom the peer's (verified) certificate names.
fn named_peer(session: &rustls::CommonState) -> std::io::Result<Identity> {
    session
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(|c| Identity::of_certificate(c))
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                "the peer's certificate names no sparefs role and id",
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    fn who(role: Role, id: u64) -> Identity {
        Identity { role, id }
    }

    #[test]
    fn identities_round_trip_and_strangers_are_refused() {
        for role in Role::ALL {
            let w = who(role, 42);
            assert_eq!(Identity::from_uri(&w.uri()), Some(w));
        }
        for bad in [
            "sparefs:root:1",
            "sparefs:meta",
            "sparefs:meta:x",
            "x:meta:1",
            "sparefs:meta:1:2",
        ] {
            assert_eq!(Identity::from_uri(bad), None, "{bad}");
        }
    }

    /// One handshake between `server` and `client` credentials: what each
    /// side learned of the other, or the error.
    async fn handshake(
        server: &Credentials,
        client: &Credentials,
    ) -> (std::io::Result<Identity>, std::io::Result<Identity>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let s = Tls::new(server).expect("server tls");
        let c = Tls::new(client).expect("client tls");
        let accepting = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await?;
            let (mut stream, peer, _) = s.accept(tcp).await?;
            let mut b = [0u8; 5];
            stream.read_exact(&mut b).await?;
            stream.write_all(&b).await?;
            stream.flush().await?;
            Ok::<_, std::io::Error>(peer)
        });
        let connecting = async {
            let tcp = TcpStream::connect(addr).await?;
            let (mut stream, peer) = c.connect(tcp).await?;
            stream.write_all(b"hello").await?;
            let mut b = [0u8; 5];
            stream.read_exact(&mut b).await?;
            assert_eq!(&b, b"hello");
            Ok::<_, std::io::Error>(peer)
        };
        let client_saw = connecting.await;
        let server_saw = accepting.await.expect("server task");
        (server_saw, client_saw)
    }

    #[tokio::test]
    async fn both_ends_learn_who_the_other_is() {
        let ca = ClusterCa::create().expect("ca");
        let meta = ca.issue(who(Role::Meta, 2)).expect("meta cert");
        let mount = ca.issue(who(Role::Mount, 7)).expect("mount cert");
        let (server_saw, client_saw) = handshake(&meta, &mount).await;
        assert_eq!(server_saw.expect("accepted"), who(Role::Mount, 7));
        assert_eq!(client_saw.expect("connected"), who(Role::Meta, 2));
    }

    #[tokio::test]
    async fn a_certificate_of_another_ca_is_refused_both_ways() {
        let ours = ClusterCa::create().expect("ca");
        let theirs = ClusterCa::create().expect("other ca");
        let meta = ours.issue(who(Role::Meta, 1)).expect("cert");
        let intruder = theirs.issue(who(Role::Admin, 1)).expect("cert");
        let (server_saw, _) = handshake(&meta, &intruder).await;
        assert!(
            server_saw.is_err(),
            "a stranger's client certificate was accepted"
        );
        let (_, client_saw) = handshake(&intruder, &meta).await;
        assert!(
            client_saw.is_err(),
            "a stranger's server certificate was accepted"
        );
    }

    /// While a CA is rotated, processes trust the old and the new one.
    #[tokio::test]
    async fn a_trust_list_of_two_cas_accepts_both() {
        let old = ClusterCa::create().expect("ca");
        let new = ClusterCa::create().expect("ca");
        let mut meta = new.issue(who(Role::Meta, 1)).expect("cert");
        meta.ca_pem = format!("{}{}", old.cert_pem(), new.cert_pem());
        let mount = old.issue(who(Role::Mount, 3)).expect("cert");
        let mut mount_both = mount.clone();
        mount_both.ca_pem = meta.ca_pem.clone();
        let (server_saw, client_saw) = handshake(&meta, &mount_both).await;
        assert_eq!(server_saw.expect("accepted"), who(Role::Mount, 3));
        assert_eq!(client_saw.expect("connected"), who(Role::Meta, 1));
    }

    /// Rotation: trust both, move to the new CA, drop the old one; a
    /// process that reloads refuses the old CA's certificates from then on.
    #[tokio::test]
    async fn a_ca_is_rotated_by_reloading() {
        let old = ClusterCa::create().expect("ca");
        let new = ClusterCa::create().expect("ca");
        let mut meta = old.issue(who(Role::Meta, 1)).expect("cert");
        let server = Tls::new(&meta).expect("tls");
        assert_eq!(meta.trust(new.cert_pem()).expect("trust"), 1);
        assert_eq!(meta.trust(new.cert_pem()).expect("again"), 0, "listed once");
        server.reload(&meta).expect("reload");
        let old_mount = old.issue(who(Role::Mount, 2)).expect("cert");
        let mut new_mount = new.issue(who(Role::Mount, 2)).expect("cert");
        new_mount.trust(old.cert_pem()).expect("trust");
        assert!(
            accepts(&server, &old_mount).await,
            "old, while both are trusted"
        );
        assert!(
            accepts(&server, &new_mount).await,
            "new, while both are trusted"
        );
        let mut rotated = new.issue(who(Role::Meta, 1)).expect("cert");
        assert!(rotated.distrust(new.cert_pem()).is_err(), "no CA left");
        rotated.trust(old.cert_pem()).expect("trust");
        assert_eq!(rotated.distrust(old.cert_pem()).expect("distrust"), 1);
        server.reload(&rotated).expect("reload");
        assert!(!accepts(&server, &old_mount).await, "the old CA is gone");
        assert!(accepts(&server, &new_mount).await);
        let stranger = new.issue(who(Role::Meta, 9)).expect("cert");
        assert!(server.reload(&stranger).is_err(), "another identity");
    }

    /// Whether `server` completes a handshake with a client holding `creds`.
    async fn accepts(server: &Tls, creds: &Credentials) -> bool {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let client = Tls::new(creds).expect("tls");
        let connecting = async move {
            let tcp = TcpStream::connect(addr).await?;
            let (mut s, _) = client.connect(tcp).await?;
            let mut b = [0u8; 1];
            s.read_exact(&mut b).await?;
            Ok::<_, std::io::Error>(())
        };
        let accepting = async {
            let (tcp, _) = listener.accept().await?;
            let (mut s, _, _) = server.accept(tcp).await?;
            s.write_all(b"x").await?;
            s.flush().await?;
            Ok::<_, std::io::Error>(())
        };
        let (a, c) = tokio::join!(accepting, connecting);
        a.is_ok() && c.is_ok()
    }

    #[test]
    fn client_ids_belong_to_one_certificate() {
        let a = who(Role::Mount, 1);
        let b = who(Role::Mount, 2);
        let id = a.client_id(0xdead_beef);
        assert!(a.owns_client_id(id));
        assert!(!b.owns_client_id(id));
        assert!(!who(Role::Admin, 1).owns_client_id(id), "role counts");
        assert!(!a.owns_client_id(0xdead_beef), "a bare random id");
    }

    #[test]
    fn a_certificate_names_the_callers_it_may_speak_for() {
        let ca = ClusterCa::create().expect("ca");
        for callers in [
            Callers::Any,
            Callers::SquashRoot,
            Callers::Uids {
                first: 1000,
                last: 1999,
            },
        ] {
            let creds = ca.issue_for(who(Role::Mount, 4), callers).expect("cert");
            assert_eq!(creds.identity().expect("identity"), who(Role::Mount, 4));
            assert_eq!(creds.callers().expect("callers"), callers);
            assert_eq!(Callers::parse(&callers.to_string()), Ok(callers));
        }
        for bad in ["", "root", "uids:5", "uids:9-1", "uids:-1-5", "uids:1-x"] {
            assert!(Callers::parse(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn the_server_learns_the_callers_of_a_client() {
        let ca = ClusterCa::create().expect("ca");
        let meta = Tls::new(&ca.issue(who(Role::Meta, 1)).expect("cert")).expect("tls");
        let mount = ca
            .issue_for(who(Role::Mount, 2), Callers::SquashRoot)
            .expect("cert");
        let mount = Tls::new(&mount).expect("tls");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accepting = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await?;
            let (mut stream, who, callers) = meta.accept(tcp).await?;
            stream.write_all(b"x").await?;
            stream.flush().await?;
            Ok::<_, std::io::Error>((who, callers))
        });
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let (mut stream, _) = mount.connect(tcp).await.expect("handshake");
        let mut b = [0u8; 1];
        stream.read_exact(&mut b).await.expect("read");
        let (seen, callers) = accepting.await.expect("task").expect("accepted");
        assert_eq!(seen, who(Role::Mount, 2));
        assert_eq!(callers, Callers::SquashRoot);
    }

    #[test]
    fn credentials_are_saved_private_and_load_back() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = ClusterCa::create().expect("ca");
        ca.save(dir.path()).expect("save ca");
        let again = ClusterCa::load(dir.path()).expect("load ca");
        let creds = again.issue(who(Role::Chunkserver, 5)).expect("cert");
        let d = dir.path().join("cs5");
        creds.save(&d).expect("save");
        for f in ["ca.pem", "cert.pem", "key.pem"] {
            let mode = std::fs::metadata(d.join(f))
                .expect("stat")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{f}");
        }
        let loaded = Credentials::load(&d).expect("load");
        assert_eq!(loaded.identity().expect("named"), who(Role::Chunkserver, 5));
        Tls::new(&loaded).expect("usable");
    }
}
