//! Property tests of what reads untrusted or hand-written input: the
//! configuration loader (files of any content, trees of real keys holding
//! values of any type, environment variables) and the token verifier
//! (claims of any shape, tokens of any bytes). Each answers Ok or an error
//! and never panics. `PROPTEST_CASES` sets how many inputs each property
//! tries (CI runs more).

use std::collections::BTreeMap;

use herald::auth::{sign_hs256, Verifier};
use herald::config::{self, Overrides, TokenConfig};
use proptest::prelude::*;
use serde_json::{json, Value};

const SECRET: &str = "fuzz-secret";

/// Any JSON value, nested a few levels.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
        "[0-9]{1,4}(ms|s|m|h)".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::from),
            prop::collection::btree_map("[a-z_]{1,8}", inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Real configuration keys, so that values reach their parsers and checks.
const KEYS: &[&str] = &[
    "http_server.port",
    "http_server.address",
    "http_server.header_read_timeout",
    "http_api.key",
    "http_api.max_request_body_size",
    "http_api.error_mode",
    "grpc_api.enabled",
    "grpc_api.port",
    "grpc_api.tls",
    "client.token.hmac_secret_key",
    "client.token.rsa_public_key",
    "client.token.audience_regex",
    "client.ping_interval",
    "client.pong_timeout",
    "client.queue_max_size",
    "client.channel_limit",
    "channel.max_length",
    "channel.publication_max_size",
    "channel.idempotency_window",
    "channel.without_namespace",
    "channel.namespaces",
    "engine.type",
    "engine.redis.address",
    "broker.enabled",
    "broker.type",
    "broker.nats.url",
    "presence_manager.type",
    "storage.type",
    "storage.sqlite.synchronous",
    "storage.batch_max_size",
    "storage.timeout",
    "websocket.message_size_limit",
    "log.level",
    "log.format",
    "swagger.enabled",
];

/// A configuration tree: some real keys (nested by their dots), each with a
/// value of any type.
fn config_tree() -> impl Strategy<Value = Value> {
    prop::collection::vec((prop::sample::select(KEYS), any_json()), 0..6).prop_map(|pairs| {
        let mut root = json!({});
        for (key, value) in pairs {
            let mut at = &mut root;
            let parts: Vec<&str> = key.split('.').collect();
            for part in &parts[..parts.len() - 1] {
                if !at.get(*part).is_some_and(Value::is_object) {
                    at[*part] = json!({});
                }
                at = &mut at[*part];
            }
            at[*parts.last().unwrap()] = value;
        }
        root
    })
}

fn load_file(name: &str, content: &[u8]) -> Result<config::Loaded, config::ConfigError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, content).unwrap();
    config::load(Some(&path), &BTreeMap::new(), &Overrides::default())
}

/// Claim names the verifier reads.
const CLAIMS: &[&str] = &[
    "sub",
    "exp",
    "nbf",
    "iat",
    "aud",
    "iss",
    "expire_at",
    "info",
    "b64info",
    "data",
    "b64data",
    "channels",
    "subs",
    "meta",
    "channel",
    "client",
    "override",
];

fn claims() -> impl Strategy<Value = Value> {
    prop::collection::btree_map(prop::sample::select(CLAIMS), any_json(), 0..8)
        .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_string(), v)).collect()))
}

fn verifier() -> Verifier {
    let c = TokenConfig {
        hmac_secret_key: SECRET.into(),
        ..Default::default()
    };
    Verifier::from_config(&c, "client.token").unwrap()
}

proptest! {
    #[test]
    fn config_trees_of_real_keys(tree in config_tree()) {
        match load_file("config.json", tree.to_string().as_bytes()) {
            Ok(_) => {}
            // An error names what is wrong.
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }

    #[test]
    fn config_files_of_any_content(
        content in prop::collection::vec(any::<u8>(), 0..256),
        ext in prop::sample::select(&["json", "yaml", "toml"][..]),
    ) {
        let _ = load_file(&format!("config.{ext}"), &content);
    }

    #[test]
    fn environment_variables_of_any_value(
        key in prop::sample::select(KEYS),
        value in ".{0,16}",
    ) {
        let name = format!("HERALD_{}", key.replace('.', "_").to_uppercase());
        let env: BTreeMap<String, String> = [(name, value)].into();
        let _ = config::load(None, &env, &Overrides::default());
    }

    #[test]
    fn claims_of_any_shape(claims in claims()) {
        let token = sign_hs256(&claims, SECRET).unwrap();
        let v = verifier();
        let _ = v.verify_connection(&token, 1_800_000_000);
        let _ = v.verify_subscription(&token, 1_800_000_000);
    }

    #[test]
    fn tokens_of_any_bytes(parts in prop::collection::vec("[A-Za-z0-9_=.+/-]{0,40}", 1..5)) {
        let token = parts.join(".");
        let v = verifier();
        let _ = v.verify_connection(&token, 1_800_000_000);
        let _ = v.verify_subscription(&token, 1_800_000_000);
    }
}

/// Forged tokens that once fooled JWT libraries, kept as regressions: each
/// is refused.
#[test]
fn known_forgeries_are_refused() {
    use base64::Engine as _;
    let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
    let rsa_public = std::fs::read_to_string(format!("{dir}/rsa_public.pem")).unwrap();
    let c = TokenConfig {
        hmac_secret_key: SECRET.into(),
        rsa_public_key: rsa_public.clone(),
        ..Default::default()
    };
    let v = Verifier::from_config(&c, "client.token").unwrap();
    let claims = json!({"sub": "admin"});
    let forged = [
        // No signature at all.
        format!(
            "{}.{}.",
            b64(&json!({"alg": "none", "typ": "JWT"})),
            b64(&claims)
        ),
        format!("{}.{}.", b64(&json!({"alg": "None"})), b64(&claims)),
        // Algorithm confusion: HS256 "signed" with the RSA public key.
        sign_hs256(&claims, &rsa_public).unwrap(),
        // A valid signature under another secret.
        sign_hs256(&claims, "not-the-secret").unwrap(),
        // The right secret, the payload swapped afterwards.
        {
            let good = sign_hs256(&json!({"sub": "guest"}), SECRET).unwrap();
            let parts: Vec<&str> = good.split('.').collect();
            format!("{}.{}.{}", parts[0], b64(&claims), parts[2])
        },
        // Header claims to be RS256, signature is HMAC.
        {
            let good = sign_hs256(&claims, SECRET).unwrap();
            let parts: Vec<&str> = good.split('.').collect();
            format!(
                "{}.{}.{}",
                b64(&json!({"alg": "RS256"})),
                parts[1],
                parts[2]
            )
        },
    ];
    for token in forged {
        assert!(
            v.verify_connection(&token, 1_800_000_000).is_err(),
            "{token}"
        );
    }
}
