//! JWT verification for connection and subscription tokens, and signing for
//! `herald gentoken`. Validation is configured explicitly: no leeway, `nbf`
//! checked, `exp` optional (a token without it never expires), `aud` and `iss`
//! required only when configured, and the algorithm must match the key kind.

mod jwks;

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use base64::Engine as _;
use bytes::Bytes;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::Deserialize;
use serde_json::{Map, Value};
use thiserror::Error;

use crate::config::{ConfigError, TokenConfig};

#[derive(Debug, Error, PartialEq, Eq)]
pub enum TokenError {
    /// The token was valid but its `exp` has passed: the client should fetch
    /// a new one (error 109).
    #[error("token expired")]
    Expired,
    #[error("invalid token: {0}")]
    Invalid(String),
}

/// Why a token was refused, in words rather than the JWT library's names.
fn in_words(e: &jsonwebtoken::errors::Error) -> String {
    use jsonwebtoken::errors::ErrorKind as K;
    match e.kind() {
        K::InvalidToken => "not a JWT (three base64url parts joined by dots)".into(),
        K::Base64(_) | K::Json(_) | K::Utf8(_) => {
            "not a JWT: a part is not base64url-encoded JSON".into()
        }
        K::InvalidSignature => {
            "the signature does not match the configured key (signed with another secret?)".into()
        }
        K::InvalidAlgorithm | K::InvalidAlgorithmName => {
            "signed with an algorithm the configured key does not take".into()
        }
        K::InvalidAudience => "its audience (aud) is not the one configured".into(),
        K::InvalidIssuer => "its issuer (iss) is not the one configured".into(),
        K::InvalidSubject => "its subject (sub) is not valid".into(),
        K::MissingRequiredClaim(claim) => format!("the claim {claim} is missing"),
        _ => e.to_string(),
    }
}

/// Verifies tokens with the keys of one `token` config section.
#[derive(Clone)]
pub struct Verifier {
    hmac: Option<DecodingKey>,
    /// The previous HMAC secret and until when it is accepted (0: no end).
    hmac_previous: Option<(DecodingKey, i64)>,
    rsa: Option<DecodingKey>,
    ecdsa: Option<DecodingKey>,
    audience: String,
    audience_regex: Option<regex::Regex>,
    issuer: String,
    issuer_regex: Option<regex::Regex>,
    user_id_claim: String,
    /// Keys from `jwks_public_endpoint`, by key id.
    jwks: Option<Arc<jwks::Jwks>>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Keys are secrets: never print them.
        f.debug_struct("Verifier")
            .field("audience", &self.audience)
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

/// Claims of a connection token.
#[derive(Debug, Clone, Default)]
pub struct ConnectionClaims {
    pub user: String,
    /// Unix seconds when the connection expires; `None` never.
    pub expires_at: Option<i64>,
    pub info: Option<Bytes>,
    /// Channels the server subscribes the client to, with their options:
    /// the `subs` claim when it is there, else the `channels` claim.
    pub subs: Vec<(String, SubOptions)>,
    pub meta: Option<Bytes>,
    pub id: TokenId,
}

/// What identifies a token for revocation: its `jti` and `iat` claims.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenId {
    pub jti: Option<String>,
    /// Unix seconds.
    pub iat: Option<i64>,
}

/// Claims of a subscription token.
#[derive(Debug, Clone, Default)]
pub struct SubscriptionClaims {
    pub user: String,
    pub channel: String,
    /// When set, only this client may use the token.
    pub client: String,
    pub expires_at: Option<i64>,
    pub options: SubOptions,
    pub id: TokenId,
}

/// What a token sets for one subscription: a `subs` entry of a connection
/// token, or a subscription token.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubOptions {
    /// Channel info shown with the client's publications and presence.
    pub info: Option<Bytes>,
    /// Sent to the client with the subscription.
    pub data: Option<Bytes>,
    pub overrides: Overrides,
}

/// Namespace options a token (or the server API's subscribe) overrides for
/// one subscription; `None` keeps the namespace's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, Deserialize)]
#[serde(default)]
pub struct Overrides {
    pub presence: Option<bool>,
    pub join_leave: Option<bool>,
    pub force_push_join_leave: Option<bool>,
    pub force_recovery: Option<bool>,
    pub force_positioning: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawClaims {
    /// NumericDate: integer or fractional seconds.
    exp: Option<f64>,
    expire_at: Option<f64>,
    info: Option<Value>,
    b64info: Option<String>,
    data: Option<Value>,
    b64data: Option<String>,
    #[serde(rename = "override")]
    overrides: Option<RawOverrides>,
    channels: Vec<String>,
    subs: BTreeMap<String, RawSub>,
    meta: Option<Value>,
    channel: String,
    client: String,
    /// A string by RFC 7519; a number is taken as its decimal form.
    jti: Option<Value>,
    iat: Option<f64>,
}

impl RawClaims {
    fn id(&self) -> TokenId {
        TokenId {
            jti: match &self.jti {
                Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
                Some(Value::Number(n)) => Some(n.to_string()),
                _ => None,
            },
            iat: self.iat.map(|t| t as i64),
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawSub {
    info: Option<Value>,
    b64info: Option<String>,
    data: Option<Value>,
    b64data: Option<String>,
    #[serde(rename = "override")]
    overrides: Option<RawOverrides>,
}

/// `{"presence": {"value": true}, …}`, as Centrifugo writes overrides.
#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub struct RawOverrides {
    presence: Option<BoolValue>,
    join_leave: Option<BoolValue>,
    force_push_join_leave: Option<BoolValue>,
    force_recovery: Option<BoolValue>,
    force_positioning: Option<BoolValue>,
}

#[derive(Debug, Deserialize)]
struct BoolValue {
    value: bool,
}

impl From<RawOverrides> for Overrides {
    fn from(r: RawOverrides) -> Self {
        let v = |b: Option<BoolValue>| b.map(|b| b.value);
        Self {
            presence: v(r.presence),
            join_leave: v(r.join_leave),
            force_push_join_leave: v(r.force_push_join_leave),
            force_recovery: v(r.force_recovery),
            force_positioning: v(r.force_positioning),
        }
    }
}

fn sub_options(
    info: (Option<Value>, Option<String>),
    data: (Option<Value>, Option<String>),
    overrides: Option<RawOverrides>,
) -> Result<SubOptions, TokenError> {
    Ok(SubOptions {
        info: json_or_b64(info.0, info.1, "b64info")?,
        data: json_or_b64(data.0, data.1, "b64data")?,
        overrides: overrides.map(Overrides::from).unwrap_or_default(),
    })
}

impl Verifier {
    /// Builds a verifier; `section` names the config section in errors.
    pub fn from_config(c: &TokenConfig, section: &str) -> Result<Self, ConfigError> {
        let keys = c.keys(section)?;
        Ok(Self {
            hmac: keys.hmac,
            hmac_previous: keys.hmac_previous,
            rsa: keys.rsa,
            ecdsa: keys.ecdsa,
            audience: c.audience.clone(),
            audience_regex: keys.audience_regex,
            issuer: c.issuer.clone(),
            issuer_regex: keys.issuer_regex,
            user_id_claim: c.user_id_claim.clone(),
            jwks: match c.jwks_public_endpoint.as_str() {
                "" => None,
                url => Some(Arc::new(jwks::Jwks::new(url).map_err(|e| {
                    ConfigError::invalid(format!("{section}.jwks_public_endpoint"), e)
                })?)),
            },
        })
    }

    /// Before verifying `token`: when its header names a key id and a JWKS
    /// endpoint is set, makes sure that key is known (fetching the set if
    /// it is not, within bounds). Verification itself never waits.
    pub async fn prepare(&self, token: &str) {
        let Some(jwks) = &self.jwks else { return };
        if let Ok(jsonwebtoken::Header { kid: Some(kid), .. }) = jsonwebtoken::decode_header(token)
        {
            jwks.prepare(&kid).await;
        }
    }

    /// The key of a token signed by a key of the JWKS set, by its `kid`.
    fn jwks_key(&self, header: &jsonwebtoken::Header) -> Option<Result<DecodingKey, TokenError>> {
        let (jwks, kid) = (self.jwks.as_ref()?, header.kid.as_deref()?);
        if matches!(
            header.alg,
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512
        ) {
            return None;
        }
        Some(match jwks.key(kid) {
            Some(k) if k.algorithms.contains(&header.alg) => Ok(k.key),
            Some(_) => Err(TokenError::Invalid(format!(
                "key {kid:?} does not take {:?}",
                header.alg
            ))),
            None => Err(TokenError::Invalid(format!("unknown key id {kid:?}"))),
        })
    }

    fn decode(&self, token: &str, now: i64) -> Result<(String, RawClaims), TokenError> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| TokenError::Invalid(in_words(&e)))?;
        let from_jwks = self.jwks_key(&header).transpose()?;
        let key = match header.alg {
            _ if from_jwks.is_some() => from_jwks.as_ref(),
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => self.hmac.as_ref(),
            Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512 => self.rsa.as_ref(),
            Algorithm::ES256 | Algorithm::ES384 => self.ecdsa.as_ref(),
            other => {
                return Err(TokenError::Invalid(format!(
                    "algorithm {other:?} is not accepted"
                )))
            }
        }
        .ok_or_else(|| TokenError::Invalid(format!("no key configured for {:?}", header.alg)))?;
        let mut v = Validation::new(header.alg);
        v.leeway = 0;
        v.validate_exp = false; // checked below so that expiry is told apart from invalidity
        v.validate_nbf = true;
        v.required_spec_claims = HashSet::new();
        if self.audience.is_empty() {
            v.validate_aud = false;
        } else {
            v.set_audience(&[&self.audience]);
            v.required_spec_claims.insert("aud".into());
        }
        if !self.issuer.is_empty() {
            v.set_issuer(&[&self.issuer]);
            v.required_spec_claims.insert("iss".into());
        }
        let mut decoded = jsonwebtoken::decode::<Map<String, Value>>(token, key, &v);
        // During a rotation, a token signed with the previous HMAC secret
        // is accepted until that secret's end.
        if let (Err(e), Some((previous, until))) = (&decoded, &self.hmac_previous) {
            let bad_signature =
                matches!(e.kind(), jsonwebtoken::errors::ErrorKind::InvalidSignature);
            let hmac = matches!(
                header.alg,
                Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512
            );
            if bad_signature && hmac && (*until == 0 || now <= *until) {
                decoded = jsonwebtoken::decode::<Map<String, Value>>(token, previous, &v);
            }
        }
        let data = decoded.map_err(|e| {
            match e.kind() {
                // Not valid yet: most likely clock skew, so let the client fetch
                // a fresh token rather than give up.
                jsonwebtoken::errors::ErrorKind::ImmatureSignature => TokenError::Expired,
                _ => TokenError::Invalid(in_words(&e)),
            }
        })?;
        let map = data.claims;
        self.check_patterns(&map)?;
        let claim = if self.user_id_claim.is_empty() {
            "sub"
        } else {
            self.user_id_claim.as_str()
        };
        let user = match map.get(claim) {
            None => String::new(),
            Some(Value::String(s)) => s.clone(),
            Some(_) => {
                return Err(TokenError::Invalid(format!(
                    "claim {claim:?} is not a string"
                )))
            }
        };
        let raw: RawClaims = serde_json::from_value(Value::Object(map))
            .map_err(|e| TokenError::Invalid(format!("bad claims: {e}")))?;
        if raw.exp.is_some_and(|exp| exp > 0.0 && exp as i64 <= now) {
            return Err(TokenError::Expired);
        }
        Ok((user, raw))
    }

    /// `aud` and `iss` against `audience_regex` and `issuer_regex`.
    fn check_patterns(&self, claims: &Map<String, Value>) -> Result<(), TokenError> {
        if let Some(re) = &self.audience_regex {
            let matches = match claims.get("aud") {
                Some(Value::String(aud)) => re.is_match(aud),
                Some(Value::Array(auds)) => auds
                    .iter()
                    .any(|a| a.as_str().is_some_and(|a| re.is_match(a))),
                _ => false,
            };
            if !matches {
                return Err(TokenError::Invalid(
                    "aud does not match audience_regex".into(),
                ));
            }
        }
        if let Some(re) = &self.issuer_regex {
            let matches = claims
                .get("iss")
                .and_then(Value::as_str)
                .is_some_and(|iss| re.is_match(iss));
            if !matches {
                return Err(TokenError::Invalid(
                    "iss does not match issuer_regex".into(),
                ));
            }
        }
        Ok(())
    }

    pub fn verify_connection(&self, token: &str, now: i64) -> Result<ConnectionClaims, TokenError> {
        let (user, raw) = self.decode(token, now)?;
        if !raw.channel.is_empty() {
            // A subscription token must not open a connection.
            return Err(TokenError::Invalid(
                "connection token has a channel claim".into(),
            ));
        }
        // Server-side subscriptions: `subs` with their options when given
        // (as Centrifugo does, `channels` is then not looked at), else
        // `channels` with the namespaces' options, each channel once.
        let id = raw.id();
        let mut subs = Vec::new();
        if raw.subs.is_empty() {
            for ch in raw.channels {
                if !subs.iter().any(|(c, _)| *c == ch) {
                    subs.push((ch, SubOptions::default()));
                }
            }
        } else {
            for (ch, sub) in raw.subs {
                let options = sub_options(
                    (sub.info, sub.b64info),
                    (sub.data, sub.b64data),
                    sub.overrides,
                )?;
                subs.push((ch, options));
            }
        }
        Ok(ConnectionClaims {
            id,
            user,
            expires_at: expiry(raw.exp, raw.expire_at, now)?,
            info: json_or_b64(raw.info, raw.b64info, "b64info")?,
            subs,
            meta: raw.meta.map(|m| Bytes::from(m.to_string())),
        })
    }

    pub fn verify_subscription(
        &self,
        token: &str,
        now: i64,
    ) -> Result<SubscriptionClaims, TokenError> {
        let (user, raw) = self.decode(token, now)?;
        if raw.channel.is_empty() {
            return Err(TokenError::Invalid(
                "subscription token has no channel claim".into(),
            ));
        }
        Ok(SubscriptionClaims {
            id: raw.id(),
            user,
            channel: raw.channel,
            client: raw.client,
            expires_at: expiry(raw.exp, raw.expire_at, now)?,
            options: sub_options(
                (raw.info, raw.b64info),
                (raw.data, raw.b64data),
                raw.overrides,
            )?,
        })
    }
}

/// `expire_at` decouples connection expiry from `exp`: 0 means never.
fn expiry(exp: Option<f64>, expire_at: Option<f64>, now: i64) -> Result<Option<i64>, TokenError> {
    let (exp, expire_at) = (exp.map(|t| t as i64), expire_at.map(|t| t as i64));
    match expire_at {
        Some(0) => Ok(None),
        Some(t) if t <= now => Err(TokenError::Expired),
        Some(t) => Ok(Some(t)),
        None => Ok(exp.filter(|e| *e > 0)),
    }
}

/// A raw JSON claim, or the same as base64 in its `b64` twin (named in
/// errors); the JSON one wins when both are set.
fn json_or_b64(
    json: Option<Value>,
    b64: Option<String>,
    b64_name: &str,
) -> Result<Option<Bytes>, TokenError> {
    if let Some(v) = json {
        return Ok(Some(Bytes::from(v.to_string())));
    }
    match b64 {
        Some(b) if !b.is_empty() => {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(b.as_bytes())
                .map_err(|e| TokenError::Invalid(format!("{b64_name} is not base64: {e}")))?;
            if !herald_protocol::json::is_valid_json(&raw) {
                return Err(TokenError::Invalid(format!(
                    "{b64_name} does not hold JSON"
                )));
            }
            Ok(Some(Bytes::from(raw)))
        }
        _ => Ok(None),
    }
}

/// Signs an HS256 token with `secret` (used by `herald gentoken` and tests).
pub fn sign_hs256(claims: &Value, secret: &str) -> Result<String, jsonwebtoken::errors::Error> {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
}

pub use crate::clock::now_unix;

#[cfg(test)]
mod tests;
