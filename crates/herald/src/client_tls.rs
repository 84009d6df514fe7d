//! Herald's own outgoing HTTP (JWKS endpoints, proxies, webhooks): TLS with
//! the system's root certificates (`SSL_CERT_FILE` / `SSL_CERT_DIR` are
//! honoured) and ring as the crypto provider, and a pooled client.

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

/// A pooled HTTP/1.1 client for Herald's own requests (proxies, webhooks):
/// `http://` and `https://` URLs, connections kept alive and reused.
pub type HttpClient = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    http_body_util::Full<bytes::Bytes>,
>;

pub fn http_client() -> Result<HttpClient, String> {
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config()?)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Ok(
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_max_idle_per_host(256)
            .build(connector),
    )
}
