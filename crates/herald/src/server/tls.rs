//! TLS on the HTTP/WebSocket listener (`http_server.tls`), with rustls: the
//! certificate and key are read at start, and read again on SIGHUP
//! ([`Tls::reload`]) without dropping a connection — handshakes after the
//! reload use the new ones, connections already up keep theirs. A reload
//! that fails keeps what was there.

use std::sync::Arc;

use parking_lot::RwLock;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio_rustls::TlsAcceptor;

use crate::config::{ConfigError, TlsConfig, TlsFiles};

/// Why TLS could not be set up from the configured files.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{what} in {key}")]
    Pem {
        what: &'static str,
        key: &'static str,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("the TLS certificate and key do not make a server identity")]
    Rustls(#[from] rustls::Error),
    #[error("the client CA in http_server.tls.client_ca_pem cannot verify clients")]
    ClientCa(#[from] rustls::server::VerifierBuilderError),
}

/// The listener's TLS: the acceptor handshakes use, swapped on reload.
pub struct Tls {
    source: TlsConfig,
    current: RwLock<TlsAcceptor>,
}

const SECTION: &str = "http_server.tls";

impl Tls {
    /// TLS as `config` sets it up; `None` when it is off.
    pub fn load(config: &TlsConfig) -> Result<Option<Arc<Self>>, TlsError> {
        let Some(files) = config.load(SECTION)? else {
            return Ok(None);
        };
        Ok(Some(Arc::new(Self {
            source: config.clone(),
            current: RwLock::new(acceptor(&files)?),
        })))
    }

    /// The acceptor for the next handshake.
    pub fn acceptor(&self) -> TlsAcceptor {
        self.current.read().clone()
    }

    /// Reads the certificate and key again and uses them from the next
    /// handshake on.
    pub fn reload(&self) -> Result<(), TlsError> {
        let files = self
            .source
            .load(SECTION)?
            .ok_or(ConfigError::invalid(SECTION, "TLS was turned off"))?;
        *self.current.write() = acceptor(&files)?;
        Ok(())
    }
}

fn acceptor(files: &TlsFiles) -> Result<TlsAcceptor, TlsError> {
    let pem = |what, key| move |source| TlsError::Pem { what, key, source };
    let certs = CertificateDer::pem_slice_iter(files.cert.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem("no certificate", "http_server.tls.cert_pem"))?;
    let key = PrivateKeyDer::from_pem_slice(files.key.as_bytes())
        .map_err(pem("no private key", "http_server.tls.key_pem"))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = match &files.client_ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(ca.as_bytes()) {
                roots.add(cert.map_err(pem("no certificate", "http_server.tls.client_ca_pem"))?)?;
            }
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider).build()?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(certs, key)?;
    // WebSocket upgrades are HTTP/1.1; the API may use either.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
