use serde_json::json;

use super::*;

const SECRET: &str = "test-secret";
const NOW: i64 = 1_800_000_000;

fn verifier(f: impl FnOnce(&mut TokenConfig)) -> Verifier {
    let mut c = TokenConfig {
        hmac_secret_key: SECRET.into(),
        ..Default::default()
    };
    f(&mut c);
    Verifier::from_config(&c, "client.token").unwrap()
}

fn sign(claims: Value) -> String {
    sign_hs256(&claims, SECRET).unwrap()
}

#[test]
fn valid_connection_token() {
    let t = sign(
        json!({"sub":"42","exp":NOW+60,"info":{"name":"Ann"},"channels":["news"],"subs":{"alerts":{}}}),
    );
    let c = verifier(|_| {}).verify_connection(&t, NOW).unwrap();
    assert_eq!(c.user, "42");
    assert_eq!(c.expires_at, Some(NOW + 60));
    assert_eq!(c.info.as_deref(), Some(&br#"{"name":"Ann"}"#[..]));
    // `subs` wins over `channels`, as in Centrifugo.
    let channels: Vec<&str> = c.subs.iter().map(|(ch, _)| ch.as_str()).collect();
    assert_eq!(channels, vec!["alerts"]);
}

#[test]
fn subs_claim_carries_info_data_and_overrides() {
    let t = sign(json!({"sub":"1","subs":{
        "a": {"info": {"x": 1}, "b64data": "eyJ5IjoyfQ==",
              "override": {"force_recovery": {"value": true}, "presence": {"value": false}}},
        "b": {}
    }}));
    let c = verifier(|_| {}).verify_connection(&t, NOW).unwrap();
    let (ch, a) = &c.subs[0];
    assert_eq!(ch, "a");
    assert_eq!(a.info.as_deref(), Some(&br#"{"x":1}"#[..]));
    assert_eq!(a.data.as_deref(), Some(&br#"{"y":2}"#[..]));
    assert_eq!(a.overrides.force_recovery, Some(true));
    assert_eq!(a.overrides.presence, Some(false));
    assert_eq!(a.overrides.force_positioning, None);
    assert_eq!(c.subs[1], ("b".to_string(), SubOptions::default()));
    let bad = sign(json!({"sub":"1","subs":{"a": {"b64data": "%%%"}}}));
    assert!(matches!(
        verifier(|_| {}).verify_connection(&bad, NOW),
        Err(TokenError::Invalid(_))
    ));
}

#[test]
fn fractional_times_and_duplicate_channels() {
    let t = sign(json!({"sub":"1","exp":(NOW as f64) + 60.5,"channels":["a","b","a"]}));
    let c = verifier(|_| {}).verify_connection(&t, NOW).unwrap();
    assert_eq!(c.expires_at, Some(NOW + 60));
    let channels: Vec<&str> = c.subs.iter().map(|(ch, _)| ch.as_str()).collect();
    assert_eq!(channels, vec!["a", "b"]);
}

#[test]
fn token_without_exp_never_expires() {
    let c = verifier(|_| {})
        .verify_connection(&sign(json!({"sub":"1"})), NOW)
        .unwrap();
    assert_eq!(c.expires_at, None);
}

#[test]
fn expire_at_overrides_exp() {
    let v = verifier(|_| {});
    let c = v
        .verify_connection(&sign(json!({"sub":"1","exp":NOW+10,"expire_at":0})), NOW)
        .unwrap();
    assert_eq!(c.expires_at, None);
    let c = v
        .verify_connection(&sign(json!({"sub":"1","expire_at":NOW+99})), NOW)
        .unwrap();
    assert_eq!(c.expires_at, Some(NOW + 99));
}

#[test]
fn rejections() {
    let v = verifier(|_| {});
    assert_eq!(
        v.verify_connection(&sign(json!({"sub":"1","exp":NOW-1})), NOW)
            .unwrap_err(),
        TokenError::Expired
    );
    // Not yet valid: the client is asked for a fresh token (clock skew).
    assert_eq!(
        v.verify_connection(&sign(json!({"sub":"1","nbf":NOW+30})), NOW)
            .unwrap_err(),
        TokenError::Expired
    );
    for claims in [json!({"sub":"1","channel":"x"}), json!({"sub":5})] {
        assert!(
            matches!(
                v.verify_connection(&sign(claims.clone()), NOW),
                Err(TokenError::Invalid(_))
            ),
            "{claims}"
        );
    }
    let wrong = sign_hs256(&json!({"sub":"1"}), "other").unwrap();
    assert!(matches!(
        v.verify_connection(&wrong, NOW),
        Err(TokenError::Invalid(_))
    ));
    assert!(matches!(
        v.verify_connection("garbage", NOW),
        Err(TokenError::Invalid(_))
    ));
    // alg "none": header {"alg":"none"} with an empty signature.
    let none = format!(
        "{}.{}.",
        b64(r#"{"alg":"none","typ":"JWT"}"#),
        b64(r#"{"sub":"1"}"#)
    );
    assert!(matches!(
        v.verify_connection(&none, NOW),
        Err(TokenError::Invalid(_))
    ));
    // An RS256 token where only an HMAC key exists (key confusion).
    let rs = format!(
        "{}.{}.{}",
        b64(r#"{"alg":"RS256","typ":"JWT"}"#),
        b64(r#"{"sub":"1"}"#),
        b64("sig")
    );
    assert!(matches!(
        v.verify_connection(&rs, NOW),
        Err(TokenError::Invalid(_))
    ));
}

#[test]
fn audience_and_issuer_when_configured() {
    let v = verifier(|c| {
        c.audience = "herald".into();
        c.issuer = "auth.example".into();
    });
    assert!(v
        .verify_connection(
            &sign(json!({"sub":"1","aud":"herald","iss":"auth.example"})),
            NOW
        )
        .is_ok());
    for claims in [
        json!({"sub":"1","iss":"auth.example"}),
        json!({"sub":"1","aud":"herald"}),
        json!({"sub":"1","aud":"other","iss":"auth.example"}),
        json!({"sub":"1","aud":"herald","iss":"evil"}),
    ] {
        assert!(
            matches!(
                v.verify_connection(&sign(claims.clone()), NOW),
                Err(TokenError::Invalid(_))
            ),
            "{claims}"
        );
    }
    // Without configured audience, a token that carries one still passes.
    assert!(verifier(|_| {})
        .verify_connection(&sign(json!({"sub":"1","aud":"x"})), NOW)
        .is_ok());
}

#[test]
fn user_id_claim_and_b64info() {
    let v = verifier(|c| c.user_id_claim = "user_id".into());
    let info = base64::engine::general_purpose::STANDARD.encode(br#"{"a":1}"#);
    let c = v
        .verify_connection(
            &sign(json!({"user_id":"u7","sub":"ignored","b64info":info})),
            NOW,
        )
        .unwrap();
    assert_eq!(c.user, "u7");
    assert_eq!(c.info.as_deref(), Some(&br#"{"a":1}"#[..]));
}

#[test]
fn subscription_token() {
    let v = verifier(|_| {});
    let s = v
        .verify_subscription(
            &sign(json!({"sub":"1","channel":"$secret","exp":NOW+5})),
            NOW,
        )
        .unwrap();
    assert_eq!(
        (s.user.as_str(), s.channel.as_str(), s.expires_at),
        ("1", "$secret", Some(NOW + 5))
    );
    assert!(matches!(
        v.verify_subscription(&sign(json!({"sub":"1"})), NOW),
        Err(TokenError::Invalid(_))
    ));
}

#[test]
fn bad_pem_is_a_config_error_naming_the_key() {
    let c = TokenConfig {
        ecdsa_public_key: "nope".into(),
        ..Default::default()
    };
    let err = Verifier::from_config(&c, "client.token").unwrap_err();
    assert!(
        err.to_string().contains("client.token.ecdsa_public_key"),
        "{err}"
    );
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
}

/// During an HMAC rotation, tokens signed with the previous secret pass
/// until `hmac_previous_secret_key_valid_until` (0: no end); others never.
#[test]
fn the_previous_hmac_secret_holds_until_its_end() {
    let old = |claims: Value| sign_hs256(&claims, "old-secret").unwrap();
    let rotating = |until: i64| {
        verifier(|c| {
            c.hmac_previous_secret_key = "old-secret".into();
            c.hmac_previous_secret_key_valid_until = until;
        })
    };
    let token = old(json!({"sub": "7"}));
    assert_eq!(
        rotating(0).verify_connection(&token, NOW).unwrap().user,
        "7"
    );
    assert_eq!(
        rotating(NOW + 1)
            .verify_connection(&token, NOW)
            .unwrap()
            .user,
        "7"
    );
    assert!(matches!(
        rotating(NOW - 1).verify_connection(&token, NOW),
        Err(TokenError::Invalid(_))
    ));
    // Without a previous secret, or with another one, it is refused; the
    // current secret passes either way.
    assert!(verifier(|_| {}).verify_connection(&token, NOW).is_err());
    let other = sign_hs256(&json!({"sub": "7"}), "third-secret").unwrap();
    assert!(rotating(0).verify_connection(&other, NOW).is_err());
    assert!(rotating(NOW - 1)
        .verify_connection(&sign(json!({"sub": "7"})), NOW)
        .is_ok());
}

#[test]
fn audience_and_issuer_patterns() {
    let v = verifier(|c| {
        c.audience_regex = "^herald-(eu|us)$".into();
        c.issuer_regex = r"^https://auth\.example\.com/".into();
    });
    let ok = sign(
        json!({"sub": "1", "aud": ["other", "herald-eu"], "iss": "https://auth.example.com/t1"}),
    );
    assert!(v.verify_connection(&ok, NOW).is_ok());
    for bad in [
        json!({"sub": "1", "aud": "herald-asia", "iss": "https://auth.example.com/t1"}),
        json!({"sub": "1", "aud": "herald-us", "iss": "https://evil.example.com/"}),
        json!({"sub": "1", "iss": "https://auth.example.com/t1"}),
    ] {
        assert!(
            matches!(
                v.verify_connection(&sign(bad.clone()), NOW),
                Err(TokenError::Invalid(_))
            ),
            "{bad}"
        );
    }
    let mut c = TokenConfig {
        audience_regex: "(".into(),
        ..Default::default()
    };
    let e = Verifier::from_config(&c, "client.token").unwrap_err();
    assert!(e.to_string().contains("client.token.audience_regex"), "{e}");
    c.audience_regex.clear();
    assert!(Verifier::from_config(&c, "client.token").is_ok());
}
