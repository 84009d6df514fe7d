//! How tokens are checked: the `token` sections of the configuration, and
//! their keys parsed at load, so that a key that cannot be used stops the
//! start with an error naming it.

use jsonwebtoken::DecodingKey;
use serde::{Deserialize, Serialize};

use super::tls::pem_text;
use super::{ConfigError, Secret};

/// How JWTs are verified: HMAC secret and/or an RSA or ECDSA public key (PEM).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct TokenConfig {
    pub hmac_secret_key: Secret,
    pub rsa_public_key: String,
    pub ecdsa_public_key: String,
    /// When set, tokens must carry this `aud`.
    pub audience: String,
    /// When set, tokens must carry this `iss`.
    pub issuer: String,
    /// The claim holding the user id; `sub` when empty.
    pub user_id_claim: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct SubscriptionTokenConfig {
    /// When false, subscription tokens are verified with `client.token`.
    pub enabled: bool,
    #[serde(flatten)]
    pub token: TokenConfig,
}

/// The keys of one token section, ready to verify with.
pub struct TokenKeys {
    pub hmac: Option<DecodingKey>,
    pub rsa: Option<DecodingKey>,
    pub ecdsa: Option<DecodingKey>,
}

impl TokenConfig {
    /// Parses the section's keys; `section` names it in errors.
    pub fn keys(&self, section: &str) -> Result<TokenKeys, ConfigError> {
        let hmac = (!self.hmac_secret_key.is_empty())
            .then(|| DecodingKey::from_secret(self.hmac_secret_key.expose().as_bytes()));
        let pem = |value: &str, field: &str, what: &str, parse: fn(&[u8]) -> _| {
            if value.is_empty() {
                return Ok(None);
            }
            let parsed: Result<DecodingKey, jsonwebtoken::errors::Error> =
                parse(pem_text(value).as_bytes());
            parsed.map(Some).map_err(|e| {
                ConfigError::invalid(
                    format!("{section}.{field}"),
                    format!("not {what} public key in PEM: {e}"),
                )
            })
        };
        Ok(TokenKeys {
            hmac,
            rsa: pem(
                &self.rsa_public_key,
                "rsa_public_key",
                "an RSA",
                DecodingKey::from_rsa_pem,
            )?,
            ecdsa: pem(
                &self.ecdsa_public_key,
                "ecdsa_public_key",
                "an ECDSA",
                DecodingKey::from_ec_pem,
            )?,
        })
    }
}
