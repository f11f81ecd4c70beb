//! TLS on the server's one port (gRPC, pRPC and plain HTTP alike), with
//! rustls.
//!
//! The certificate and key are files that tools such as cert-manager
//! replace in place before they expire, so they are checked every few
//! seconds and re-read when they change; new connections get the new
//! certificate, open ones keep theirs. A file that does not load (a
//! half-written rotation, say) leaves the previous certificate in use, with
//! a warning.
//!
//! With `client_ca`, clients may present a certificate signed by that CA
//! (TLS still accepts clients without one, who then need a token). A
//! verified certificate's DNS and URI SANs travel with every request of the
//! connection as a [`PeerCertificate`]; `[[tls.grants]]` map them to
//! principals (see [`crate::auth`]).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// Where the certificate, key and client CA are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsOptions {
    /// PEM certificate chain (leaf first).
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// PEM CA certificates that sign client certificates.
    pub client_ca: Option<PathBuf>,
}

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or holds no usable PEM.
    #[error("{}: {reason}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// rustls refused the certificate, key or CA.
    #[error("TLS: {0}")]
    Rustls(String),
}

/// The verified client certificate of a connection: its DNS-name and URI
/// SANs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerCertificate {
    /// The SANs, in the certificate's order.
    pub sans: Arc<[String]>,
}

/// The provider, explicitly: no process-wide default is installed.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    qscheduler_wire::prpc::crypto_provider()
}

fn file_error(path: &Path, reason: impl ToString) -> TlsError {
    TlsError::File {
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

/// The certificates of a PEM file (at least one).
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(path, e))?;
    if certs.is_empty() {
        return Err(file_error(path, "no PEM certificate in the file"));
    }
    Ok(certs)
}

/// A rustls server configuration from the files.
fn load(options: &TlsOptions) -> Result<rustls::ServerConfig, TlsError> {
    let certs = read_certs(&options.cert)?;
    let key =
        PrivateKeyDer::from_pem_file(&options.key).map_err(|e| file_error(&options.key, e))?;
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    let builder = match &options.client_ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in read_certs(ca)? {
                roots.add(c).map_err(|e| file_error(ca, e))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .allow_unauthenticated()
                .build()
                .map_err(|e| file_error(ca, e))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Rustls(format!("certificate and key: {e}")))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

type Stamp = Vec<Option<(Option<SystemTime>, u64)>>;

/// The current TLS configuration, reloaded when its files change.
pub struct TlsAcceptorCell {
    options: TlsOptions,
    config: RwLock<Arc<rustls::ServerConfig>>,
    stamp: Mutex<Stamp>,
}

impl std::fmt::Debug for TlsAcceptorCell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsAcceptorCell")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl TlsAcceptorCell {
    /// Loads the files.
    pub fn new(options: TlsOptions) -> Result<Arc<TlsAcceptorCell>, TlsError> {
        let stamp = stamp_of(&options);
        let config = load(&options)?;
        Ok(Arc::new(TlsAcceptorCell {
            options,
            config: RwLock::new(Arc::new(config)),
            stamp: Mutex::new(stamp),
        }))
    }

    fn current(&self) -> Arc<rustls::ServerConfig> {
        Arc::clone(
            &self
                .config
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// Re-reads the files if they changed since the last look; returns
    /// whether a new configuration is in use.
    pub fn reload_if_changed(&self) -> bool {
        let now = stamp_of(&self.options);
        {
            let mut last = self
                .stamp
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if *last == now {
                return false;
            }
            *last = now;
        }
        match load(&self.options) {
            Ok(c) => {
                *self
                    .config
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(c);
                tracing::info!(cert = %self.options.cert.display(), "TLS certificate reloaded");
                true
            }
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    "the changed TLS files do not load; keeping the previous certificate"
                );
                false
            }
        }
    }

    /// Checks the files every `every` while the server runs.
    pub fn spawn_reload(self: &Arc<Self>, every: Duration) {
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(cell) = me.upgrade() else { return };
                // Reading PEM files is quick, but it is file I/O.
                let _ = tokio::task::spawn_blocking(move || cell.reload_if_changed()).await;
            }
        });
    }

    /// The TLS handshake of an accepted connection, and what its requests
    /// should carry (the client certificate's SANs).
    pub async fn accept(
        &self,
        tcp: TcpStream,
    ) -> io::Result<(TlsStream<TcpStream>, http::Extensions)> {
        let stream = TlsAcceptor::from(self.current()).accept(tcp).await?;
        let mut extensions = http::Extensions::new();
        if let Some(leaf) = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
        {
            extensions.insert(PeerCertificate {
                sans: sans_of(leaf.as_ref()).into(),
            });
        }
        Ok((stream, extensions))
    }
}

fn stamp_of(options: &TlsOptions) -> Stamp {
    [
        Some(&options.cert),
        Some(&options.key),
        options.client_ca.as_ref(),
    ]
    .into_iter()
    .flatten()
    .map(|p| {
        std::fs::metadata(p)
            .ok()
            .map(|m| (m.modified().ok(), m.len()))
    })
    .collect()
}

/// The DNS-name and URI SANs of a DER certificate (none if it does not
/// parse: rustls verified it, so that does not happen).
pub fn sans_of(der: &[u8]) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return Vec::new();
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(s) | GeneralName::URI(s) => Some((*s).to_owned()),
            _ => None,
        })
        .collect()
}
