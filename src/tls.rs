//! TLS with rustls (ring provider), both sides: [`ClientTls`] accepts
//! clients' handshakes (after SSLRequest, or PostgreSQL 17's direct TLS) and
//! [`ServerTls`] upgrades the proxy's own connections to PostgreSQL. Each
//! holds its rustls configuration behind a lock so [`ClientTls::reload`] and
//! [`ServerTls::reload`] can swap certificates without touching connections
//! that already finished their handshake.
//!
//! The SSLRequest exchange with clients and tenant resolution from the server
//! name belong to `session` and `tenant`; this module owns certificates,
//! verification and the handshakes themselves.

use std::io;
use std::path::Path;
use std::sync::{Arc, OnceLock, RwLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{ring, CryptoProvider};
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::config::{SslMode, TlsConfig};
use crate::net::Stream;

/// The ALPN protocol name PostgreSQL 17 uses; required for direct TLS.
pub const ALPN_POSTGRESQL: &[u8] = b"postgresql";

/// SSLRequest: length 8, code 1234.5679.
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 4, 210, 22, 47];

/// Why TLS could not be set up; names the config key and file at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("tls.{key}: cannot read {path}: {source}")]
    Read {
        /// The config key naming the file.
        key: &'static str,
        /// The file.
        path: String,
        /// The I/O error.
        source: io::Error,
    },
    /// A file holds no usable PEM of the kind expected.
    #[error("tls.{key}: {path}: {message}")]
    Pem {
        /// The config key naming the file.
        key: &'static str,
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// rustls refused the combination (e.g. a key that does not match its certificate).
    #[error("tls.{key}: {message}")]
    Setup {
        /// The config key most likely at fault.
        key: &'static str,
        /// rustls' message.
        message: String,
    },
}

fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    Arc::clone(PROVIDER.get_or_init(|| Arc::new(ring::default_provider())))
}

fn read(key: &'static str, path: &str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(Path::new(path)).map_err(|source| TlsError::Read {
        key,
        path: path.to_string(),
        source,
    })
}

fn load_certs(key: &'static str, path: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(key, path)?;
    let bad = |message: String| TlsError::Pem {
        key,
        path: path.to_string(),
        message,
    };
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("bad PEM: {e}")))?;
    if certs.is_empty() {
        return Err(bad("no CERTIFICATE found".into()));
    }
    Ok(certs)
}

fn load_key(key: &'static str, path: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(key, path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| TlsError::Pem {
        key,
        path: path.to_string(),
        message: format!("no usable PRIVATE KEY: {e}"),
    })
}

fn load_roots(key: &'static str, path: &str) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(key, path)? {
        roots.add(cert).map_err(|e| TlsError::Pem {
            key,
            path: path.to_string(),
            message: format!("not a usable CA certificate: {e}"),
        })?;
    }
    Ok(Arc::new(roots))
}

fn setup(key: &'static str) -> impl Fn(rustls::Error) -> TlsError {
    move |e| TlsError::Setup {
        key,
        message: e.to_string(),
    }
}

/// The client-facing side: the certificate clients see and how their own is checked.
pub struct ClientTls {
    mode: SslMode,
    files: RwLock<TlsConfig>,
    /// Swapped whole by `reload`; each handshake takes the one in force when it starts.
    config: RwLock<Arc<Loaded>>,
}

/// The file names currently in use.
fn read_files(files: &RwLock<TlsConfig>) -> TlsConfig {
    match files.read() {
        Ok(f) => f.clone(),
        Err(poisoned) => poisoned.into_inner().clone(),
    }
}

/// One load of the client-facing files.
struct Loaded {
    config: Arc<rustls::ServerConfig>,
    /// `tls-server-end-point` channel binding data of the certificate shown.
    end_point: Vec<u8>,
}

/// A client's finished handshake.
pub struct Accepted {
    /// The encrypted stream.
    pub stream: tokio_rustls::server::TlsStream<TcpStream>,
    /// Channel binding data for SCRAM-SHA-256-PLUS (RFC 5929 `tls-server-end-point`).
    pub end_point: Vec<u8>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("mode", &self.mode)
            .finish()
    }
}

impl ClientTls {
    /// Reads the certificate, key and CA files; `None` when `client_tls_sslmode` is `disable`.
    pub fn load(config: &TlsConfig) -> Result<Option<ClientTls>, TlsError> {
        if config.client_tls_sslmode == SslMode::Disable {
            return Ok(None);
        }
        Ok(Some(ClientTls {
            mode: config.client_tls_sslmode,
            config: RwLock::new(Arc::new(Self::build(config)?)),
            files: RwLock::new(config.clone()),
        }))
    }

    fn build(config: &TlsConfig) -> Result<Loaded, TlsError> {
        let certs = load_certs("client_tls_cert_file", &config.client_tls_cert_file)?;
        let end_point = certs.first().map(|c| end_point_hash(c)).unwrap_or_default();
        let key = load_key("client_tls_key_file", &config.client_tls_key_file)?;
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(setup("client_tls_sslmode"))?;
        let builder = if config.client_tls_sslmode >= SslMode::VerifyCa {
            let roots = load_roots("client_tls_ca_file", &config.client_tls_ca_file)?;
            let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider())
                .build()
                .map_err(|e| TlsError::Setup {
                    key: "client_tls_ca_file",
                    message: e.to_string(),
                })?;
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let mut server = builder
            .with_single_cert(certs, key)
            .map_err(setup("client_tls_key_file"))?;
        // Offered to clients that send ALPN (PostgreSQL 17's libpq does); a
        // client asking only for something else fails the handshake, as with PostgreSQL.
        server.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
        Ok(Loaded {
            config: Arc::new(server),
            end_point,
        })
    }

    /// Reads the files again and uses them for handshakes from now on; on
    /// error the certificates in force stay.
    pub fn reload(&self) -> Result<(), TlsError> {
        let files = read_files(&self.files);
        self.reload_from(&files)
    }

    /// As [`ClientTls::reload`], from the file names in `config` (the mode
    /// in force stays); they are the ones reloaded from then on.
    pub fn reload_from(&self, config: &TlsConfig) -> Result<(), TlsError> {
        let mut files = config.clone();
        files.client_tls_sslmode = self.mode;
        let fresh = Arc::new(Self::build(&files)?);
        if let Ok(mut slot) = self.config.write() {
            *slot = fresh;
        }
        if let Ok(mut slot) = self.files.write() {
            *slot = files;
        }
        Ok(())
    }

    /// `client_tls_sslmode`.
    pub fn mode(&self) -> SslMode {
        self.mode
    }

    /// Runs the server side of a handshake on `socket`.
    ///
    /// Not cancel safe; run it under the login timeout.
    pub async fn accept(&self, socket: TcpStream) -> io::Result<Accepted> {
        let loaded = match self.config.read() {
            Ok(c) => Arc::clone(&c),
            Err(_) => return Err(io::Error::other("TLS configuration lock poisoned")),
        };
        let stream = TlsAcceptor::from(Arc::clone(&loaded.config))
            .accept(socket)
            .await?;
        Ok(Accepted {
            stream,
            end_point: loaded.end_point.clone(),
        })
    }
}

/// RFC 5929 `tls-server-end-point`: the certificate's hash with the hash of
/// its signature algorithm, SHA-256 for MD5, SHA-1 and anything not
/// recognised (the signature algorithm is read from the DER by hand: it is
/// the second element of the outer SEQUENCE).
fn end_point_hash(cert: &CertificateDer<'_>) -> Vec<u8> {
    use sha2::Digest as _;
    const SHA384: [&[u8]; 2] = [
        &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0c],
        &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03],
    ];
    const SHA512: [&[u8]; 2] = [
        &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0d],
        &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x04],
    ];
    let oid = signature_oid(cert.as_ref()).unwrap_or_default();
    if SHA384.contains(&oid) {
        sha2::Sha384::digest(cert.as_ref()).to_vec()
    } else if SHA512.contains(&oid) {
        sha2::Sha512::digest(cert.as_ref()).to_vec()
    } else {
        sha2::Sha256::digest(cert.as_ref()).to_vec()
    }
}

/// The signature algorithm OID of a DER certificate.
fn signature_oid(der: &[u8]) -> Option<&[u8]> {
    let (_, certificate, _) = der_tlv(der)?;
    let (_, _tbs, rest) = der_tlv(certificate)?;
    let (_, algorithm, _) = der_tlv(rest)?;
    let (tag, oid, _) = der_tlv(algorithm)?;
    (tag == 0x06).then_some(oid)
}

/// Splits one DER TLV off `input`: (tag, contents, rest).
fn der_tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let (bytes, rest) = rest.split_at(n);
        let len = bytes
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, rest)
    };
    if rest.len() < len {
        return None;
    }
    let (contents, rest) = rest.split_at(len);
    Some((tag, contents, rest))
}

/// Accepts any server certificate (`require`), or a chain signed by the CA
/// whatever name it carries (`verify-ca`); `verify-full` uses webpki's own.
#[derive(Debug)]
struct LenientVerifier {
    /// `None`: no check at all.
    chain: Option<Arc<WebPkiServerVerifier>>,
}

impl ServerCertVerifier for LenientVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The PostgreSQL-facing side: whether and how backend connections use TLS.
pub struct ServerTls {
    mode: SslMode,
    files: RwLock<TlsConfig>,
    /// Swapped whole by `reload`; each connection takes the one in force.
    config: RwLock<Arc<rustls::ClientConfig>>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("mode", &self.mode)
            .finish()
    }
}

impl ServerTls {
    /// Reads the CA and optional client certificate; `None` when
    /// `server_tls_sslmode` is `disable` or `allow` (neither sends SSLRequest).
    pub fn load(config: &TlsConfig) -> Result<Option<ServerTls>, TlsError> {
        if config.server_tls_sslmode <= SslMode::Allow {
            return Ok(None);
        }
        Ok(Some(ServerTls {
            mode: config.server_tls_sslmode,
            config: RwLock::new(Arc::new(Self::build(config)?)),
            files: RwLock::new(config.clone()),
        }))
    }

    fn build(config: &TlsConfig) -> Result<rustls::ClientConfig, TlsError> {
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(setup("server_tls_sslmode"))?;
        let roots = if config.server_tls_ca_file.is_empty() {
            None
        } else {
            Some(load_roots(
                "server_tls_ca_file",
                &config.server_tls_ca_file,
            )?)
        };
        let chain = match (&roots, config.server_tls_sslmode) {
            (Some(roots), SslMode::VerifyCa | SslMode::VerifyFull) => Some(
                WebPkiServerVerifier::builder_with_provider(Arc::clone(roots), provider())
                    .build()
                    .map_err(|e| TlsError::Setup {
                        key: "server_tls_ca_file",
                        message: e.to_string(),
                    })?,
            ),
            _ => None,
        };
        let builder = match (config.server_tls_sslmode, chain) {
            (SslMode::VerifyFull, Some(chain)) => builder.with_webpki_verifier(chain),
            (_, chain) => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(LenientVerifier { chain })),
        };
        let mut client = if config.server_tls_cert_file.is_empty() {
            builder.with_no_client_auth()
        } else {
            let certs = load_certs("server_tls_cert_file", &config.server_tls_cert_file)?;
            let key = load_key("server_tls_key_file", &config.server_tls_key_file)?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(setup("server_tls_key_file"))?
        };
        client.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
        Ok(client)
    }

    /// Reads the files again and uses them for connections opened from now on.
    pub fn reload(&self) -> Result<(), TlsError> {
        let files = read_files(&self.files);
        self.reload_from(&files)
    }

    /// As [`ServerTls::reload`], from the file names in `config` (the mode
    /// in force stays); they are the ones reloaded from then on.
    pub fn reload_from(&self, config: &TlsConfig) -> Result<(), TlsError> {
        let mut files = config.clone();
        files.server_tls_sslmode = self.mode;
        let fresh = Arc::new(Self::build(&files)?);
        if let Ok(mut slot) = self.config.write() {
            *slot = fresh;
        }
        if let Ok(mut slot) = self.files.write() {
            *slot = files;
        }
        Ok(())
    }

    /// Sends SSLRequest on a fresh TCP connection to `host` and runs the
    /// handshake when the server agrees. A server that says no is used in
    /// plain text under `prefer` and refused from `require` up. Unix sockets
    /// are returned as they are: PostgreSQL has no TLS there.
    ///
    /// Not cancel safe; run it under the connect timeout.
    pub async fn upgrade(&self, stream: Stream, host: &str) -> io::Result<Stream> {
        let Stream::Tcp(mut tcp) = stream else {
            return Ok(stream);
        };
        tcp.write_all(&SSL_REQUEST).await?;
        match tcp.read_u8().await? {
            b'S' => {}
            b'N' if self.mode <= SslMode::Prefer => return Ok(Stream::Tcp(tcp)),
            b'N' => {
                return Err(io::Error::other(format!(
                    "server does not support TLS, and server_tls_sslmode is {:?}",
                    self.mode
                )))
            }
            other => {
                return Err(io::Error::other(format!(
                    "unexpected answer {other:#04x} to SSLRequest"
                )))
            }
        }
        let name = ServerName::try_from(host.to_string())
            .map_err(|e| io::Error::other(format!("{host:?} is not a TLS server name: {e}")))?;
        let config = match self.config.read() {
            Ok(c) => Arc::clone(&c),
            Err(_) => return Err(io::Error::other("TLS configuration lock poisoned")),
        };
        let tls = TlsConnector::from(config).connect(name, tcp).await?;
        Ok(Stream::TlsClient(Box::new(tls)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A write on a TLS half is done only when its records are on the
    /// transport: with a 1 KiB pipe nobody reads, 16 KiB cannot be done.
    #[tokio::test]
    async fn tls_writes_go_through_to_the_socket() {
        use crate::net::TlsWriteHalf;
        use std::time::Duration;

        let signed = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let key = PrivateKeyDer::Pkcs8(signed.key_pair.serialize_der().into());
        let server = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![signed.cert.der().clone()], key)
            .unwrap();
        let client = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(LenientVerifier { chain: None }))
            .with_no_client_auth();
        let (near, far) = tokio::io::duplex(1024);
        let name = ServerName::try_from("localhost").unwrap();
        let (server, client) = tokio::join!(
            TlsAcceptor::from(Arc::new(server)).accept(near),
            TlsConnector::from(Arc::new(client)).connect(name, far),
        );
        let (mut server, mut client) = (server.unwrap(), client.unwrap());

        let data = vec![7u8; 16 * 1024];
        let (_, half) = tokio::io::split(&mut server);
        let mut writer = TlsWriteHalf::new(half);
        let stalled = tokio::time::timeout(Duration::from_millis(200), writer.write_all(&data));
        assert!(
            stalled.await.is_err(),
            "a write finished with its records unsent"
        );

        let reader = async {
            let mut got = vec![0u8; data.len()];
            client.read_exact(&mut got).await.unwrap();
            got
        };
        let (written, got) = tokio::join!(writer.write_all(&data), reader);
        written.unwrap();
        // The first, interrupted write_all had the whole buffer taken or not at
        // all: what arrives is one copy's worth of the same bytes.
        assert_eq!(got, data);
    }

    #[test]
    fn der_walk_survives_garbage() {
        assert_eq!(signature_oid(&[]), None);
        assert_eq!(signature_oid(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
        assert_eq!(signature_oid(&[0x30, 0x80]), None);
        // SEQUENCE { SEQUENCE {}, SEQUENCE { OID 1.2.3 } }
        let der = [
            0x30, 0x09, 0x30, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2a, 0x03, 0x04,
        ];
        assert_eq!(signature_oid(&der), Some(&[0x2a, 0x03, 0x04][..]));
        assert_eq!(
            end_point_hash(&CertificateDer::from(der.to_vec())).len(),
            32
        );
    }

    #[test]
    fn missing_and_bad_files_name_key_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("bad.pem");
        std::fs::write(&bad, "not pem at all").unwrap();
        let mut config = TlsConfig {
            client_tls_sslmode: SslMode::Require,
            client_tls_cert_file: dir.path().join("nope.pem").display().to_string(),
            client_tls_key_file: bad.display().to_string(),
            ..TlsConfig::default()
        };
        let err = ClientTls::load(&config).unwrap_err().to_string();
        assert!(err.contains("tls.client_tls_cert_file"), "{err}");
        assert!(err.contains("nope.pem"), "{err}");
        config.client_tls_cert_file = bad.display().to_string();
        let err = ClientTls::load(&config).unwrap_err().to_string();
        assert!(err.contains("tls.client_tls_cert_file"), "{err}");
        assert!(err.contains("no CERTIFICATE"), "{err}");
        assert!(ClientTls::load(&TlsConfig::default()).unwrap().is_none());
        assert!(ServerTls::load(&TlsConfig::default()).unwrap().is_none());
    }
}
