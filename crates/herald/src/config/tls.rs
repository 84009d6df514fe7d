//! TLS settings as Centrifugo v6 writes them (`tls.enabled`, `cert_pem`,
//! `key_pem`, `client_ca_pem`), each PEM given as its text, as base64 of
//! it, or as the path of a file holding it; read at load, so that a
//! missing or unreadable one stops the start with an error naming it.

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use super::ConfigError;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct TlsConfig {
    pub enabled: bool,
    /// The certificate (chain), PEM.
    pub cert_pem: String,
    /// Its private key, PEM.
    pub key_pem: String,
    /// When set, clients must present a certificate this CA signed.
    pub client_ca_pem: String,
}

/// A TLS identity, read and ready.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: String,
    pub key: String,
    pub client_ca: Option<String>,
}

impl TlsConfig {
    /// The PEMs, read; `None` when TLS is off. `section` names the config
    /// section in errors.
    pub fn load(&self, section: &str) -> Result<Option<TlsFiles>, ConfigError> {
        if !self.enabled {
            return Ok(None);
        }
        let read = |value: &str, field: &str, required: bool| {
            if value.is_empty() {
                if required {
                    return Err(ConfigError::invalid(
                        format!("{section}.{field}"),
                        "is required when TLS is enabled",
                    ));
                }
                return Ok(None);
            }
            let text = pem_text(value);
            if !text.contains("-----BEGIN") {
                return Err(ConfigError::invalid(
                    format!("{section}.{field}"),
                    "is neither PEM, base64 of PEM, nor a readable PEM file",
                ));
            }
            Ok(Some(text))
        };
        let cert = read(&self.cert_pem, "cert_pem", true)?.unwrap_or_default();
        let key = read(&self.key_pem, "key_pem", true)?.unwrap_or_default();
        let client_ca = read(&self.client_ca_pem, "client_ca_pem", false)?;
        Ok(Some(TlsFiles {
            cert,
            key,
            client_ca,
        }))
    }
}

/// Accepts PEM text, base64-encoded PEM, or a path to a PEM file.
pub(super) fn pem_text(value: &str) -> String {
    if value.contains("-----BEGIN") {
        return value.to_string();
    }
    if let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(value.trim()) {
        if let Ok(text) = String::from_utf8(decoded) {
            if text.contains("-----BEGIN") {
                return text;
            }
        }
    }
    std::fs::read_to_string(value).unwrap_or_else(|_| value.to_string())
}
