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
    /// The HMAC secret before the current one, still accepted during a
    /// rotation.
    pub hmac_previous_secret_key: Secret,
    /// Unix seconds after which the previous secret is refused (0: no end).
    pub hmac_previous_secret_key_valid_until: i64,
    pub rsa_public_key: String,
    pub ecdsa_public_key: String,
    /// A JWKS endpoint: tokens whose header names a key id (`kid`) are
    /// verified with that key from the set (RSA, ECDSA, Ed25519).
    pub jwks_public_endpoint: String,
    /// When set, tokens must carry this `aud`.
    pub audience: String,
    /// When set, a token's `aud` must match this regular expression.
    pub audience_regex: String,
    /// When set, tokens must carry this `iss`.
    pub issuer: String,
    /// When set, a token's `iss` must match this regular expression.
    pub issuer_regex: String,
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
    /// The previous HMAC secret and until when it is accepted (0: no end).
    pub hmac_previous: Option<(DecodingKey, i64)>,
    pub rsa: Option<DecodingKey>,
    pub ecdsa: Option<DecodingKey>,
    pub audience_regex: Option<regex::Regex>,
    pub issuer_regex: Option<regex::Regex>,
}

impl TokenConfig {
    /// Parses the section's keys; `section` names it in errors.
    pub fn keys(&self, section: &str) -> Result<TokenKeys, ConfigError> {
        let hmac = (!self.hmac_secret_key.is_empty())
            .then(|| DecodingKey::from_secret(self.hmac_secret_key.expose().as_bytes()));
        let hmac_previous = (!self.hmac_previous_secret_key.is_empty()).then(|| {
            let key = DecodingKey::from_secret(self.hmac_previous_secret_key.expose().as_bytes());
            (key, self.hmac_previous_secret_key_valid_until)
        });
        let regex = |value: &str, field: &str| {
            if value.is_empty() {
                return Ok(None);
            }
            regex::Regex::new(value)
                .map(Some)
                .map_err(|e| ConfigError::invalid(format!("{section}.{field}"), e.to_string()))
        };
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
            hmac_previous,
            audience_regex: regex(&self.audience_regex, "audience_regex")?,
            issuer_regex: regex(&self.issuer_regex, "issuer_regex")?,
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
