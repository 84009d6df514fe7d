//! TLS for Herald's own outgoing requests (JWKS endpoints, HTTPS proxies):
//! the system's root certificates (`SSL_CERT_FILE` / `SSL_CERT_DIR` are
//! honoured), ring as the crypto provider.

use std::sync::Arc;

use rustls::RootCertStore;

pub fn config() -> Result<rustls::ClientConfig, String> {
    let mut roots = RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth())
}
