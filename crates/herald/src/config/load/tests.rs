use super::*;
use crate::config::{Dur, HistoryStorage};

fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn write(name: &str, text: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(name), text).unwrap();
    dir
}

#[test]
fn defaults_without_sources() {
    let l = load(None, &env(&[]), &Overrides::default()).unwrap();
    assert_eq!(l.config.http_server.port, 8000);
    assert_eq!(l.config.client.ping_interval, Dur::secs(25));
    assert_eq!(l.config.client.channel_limit, 128);
    assert_eq!(l.config.data_dir, "herald-data");
    assert_eq!(l.warnings.len(), 2, "{:?}", l.warnings);
    assert!(l.warnings[0].contains("client.token"), "{:?}", l.warnings);
    assert!(l.warnings[1].contains("http_api.key"), "{:?}", l.warnings);
}

#[test]
fn centrifugo_json_file_with_namespaces() {
    let dir = write(
        "c.json",
        r#"{"client":{"token":{"hmac_secret_key":"k"},"ping_interval":"10s"},
            "http_api":{"key":"api"},
            "channel":{"namespaces":[{"name":"chat","presense":true,"presence":true,"history_size":10,"history_ttl":"300s","history_storage":"durable"}]},
            "webtransport":{"enabled":true}}"#,
    );
    let l = load(
        Some(&dir.path().join("c.json")),
        &env(&[]),
        &Overrides::default(),
    )
    .unwrap();
    assert_eq!(l.config.client.token.hmac_secret_key, "k");
    assert_eq!(l.config.client.ping_interval, Dur::secs(10));
    let ns = &l.config.channel.namespaces[0];
    assert_eq!(
        (
            ns.name.as_str(),
            ns.options.presence,
            ns.options.history_size
        ),
        ("chat", true, 10)
    );
    assert_eq!(ns.options.history_storage, HistoryStorage::Durable);
    assert_eq!(l.warnings.len(), 2, "{:?}", l.warnings);
    assert!(
        l.warnings[0].contains("`channel.namespaces[0].presense`"),
        "{:?}",
        l.warnings
    );
    assert!(l.warnings[1].contains("`webtransport`"), "{:?}", l.warnings);
}

#[test]
fn yaml_and_toml_files() {
    let dir = write(
        "c.yaml",
        "http_server:\n  port: 9001\nclient:\n  allowed_origins: ['*']\n",
    );
    let l = load(
        Some(&dir.path().join("c.yaml")),
        &env(&[]),
        &Overrides::default(),
    )
    .unwrap();
    assert_eq!(l.config.http_server.port, 9001);
    assert_eq!(l.config.client.allowed_origins, vec!["*"]);
    let dir = write("c.toml", "[http_server]\nport = 9002\n[[channel.namespaces]]\nname = \"ns\"\nallow_publish_for_client = true\n");
    let l = load(
        Some(&dir.path().join("c.toml")),
        &env(&[]),
        &Overrides::default(),
    )
    .unwrap();
    assert_eq!(l.config.http_server.port, 9002);
    assert!(
        l.config.channel.namespaces[0]
            .options
            .allow_publish_for_client
    );
}

#[test]
fn env_overrides_file_and_flags_override_env() {
    let dir = write(
        "c.json",
        r#"{"http_server":{"port":1234},"http_api":{"key":"file"}}"#,
    );
    let e = env(&[
        ("HERALD_HTTP_API_KEY", "env"),
        ("HERALD_HTTP_SERVER_PORT", "2345"),
        ("HERALD_CLIENT_TOKEN_HMAC_SECRET_KEY", "sec"),
        ("HERALD_CLIENT_ALLOWED_ORIGINS", "http://a http://b"),
        ("HERALD_CLIENT_INSECURE", "true"),
        (
            "HERALD_CHANNEL_NAMESPACES",
            r#"[{"name":"x1","presence":true}]"#,
        ),
        ("HERALD_NOPE", "1"),
    ]);
    let o = Overrides {
        port: Some(3456),
        ..Default::default()
    };
    let l = load(Some(&dir.path().join("c.json")), &e, &o).unwrap();
    assert_eq!(l.config.http_api.key, "env");
    assert_eq!(l.config.http_server.port, 3456);
    assert_eq!(l.config.client.token.hmac_secret_key, "sec");
    assert_eq!(
        l.config.client.allowed_origins,
        vec!["http://a", "http://b"]
    );
    assert!(l.config.client.insecure);
    assert_eq!(l.config.channel.namespaces[0].name, "x1");
    assert!(
        l.warnings.iter().any(|w| w.contains("HERALD_NOPE")),
        "{:?}",
        l.warnings
    );
}

#[test]
fn invalid_values_name_the_key() {
    let cases: &[(&str, &str)] = &[
        (r#"{"http_server":{"port":"abc"}}"#, "http_server.port"),
        (
            r#"{"client":{"ping_interval":"soon"}}"#,
            "client.ping_interval",
        ),
        (
            r#"{"channel":{"namespaces":[{"name":"ok"},{"name":"ok","presence":1}]}}"#,
            "channel.namespaces[1].presence",
        ),
        (
            r#"{"channel":{"namespaces":[{"name":"a b"}]}}"#,
            "channel.namespaces[0].name",
        ),
        (
            r#"{"channel":{"namespaces":[{"name":"dup"},{"name":"dup"}]}}"#,
            "channel.namespaces[1].name",
        ),
        (
            r#"{"client":{"ping_interval":"5s","pong_timeout":"6s"}}"#,
            "client.pong_timeout",
        ),
        (
            r#"{"client":{"queue_max_size":0}}"#,
            "client.queue_max_size",
        ),
        (r#"{"engine":{"type":"tarantool"}}"#, "engine.type"),
        (
            r#"{"client":{"write_delay":"1001ms"}}"#,
            "client.write_delay",
        ),
        (
            r#"{"broker":{"enabled":true,"type":"kafka"}}"#,
            "broker.type",
        ),
        (r#"{"broker":{"enabled":true}}"#, "broker.type"),
        (
            r#"{"client":{"queue_max_size":65536},"channel":{"publication_max_size":65536}}"#,
            "channel.publication_max_size",
        ),
        (
            r#"{"client":{"queue_max_size":65536},"channel":{"namespaces":[{"name":"big","publication_max_size":60000}]}}"#,
            "channel.namespaces[0].publication_max_size",
        ),
        (
            r#"{"presence_manager":{"enabled":true}}"#,
            "presence_manager.type",
        ),
        (
            r#"{"channel":{"idempotency_window":"0s"}}"#,
            "channel.idempotency_window",
        ),
        (
            r#"{"engine":{"type":"redis"},"channel":{"namespaces":[{"name":"dd","history_size":5,"history_ttl":"60s","history_storage":"durable"}]}}"#,
            "channel.namespaces[0].history_storage",
        ),
        (
            r#"{"broker":{"enabled":true,"type":"nats"},"channel":{"without_namespace":{"history_size":5,"history_ttl":"60s"}}}"#,
            "channel.without_namespace.history_storage",
        ),
        (
            r#"{"broker":{"enabled":true,"type":"nats"},"channel":{"namespaces":[{"name":"pp","presence":true}]}}"#,
            "channel.namespaces[0].presence",
        ),
        (
            r#"{"broker":{"enabled":true,"type":"nats"},"channel":{"namespaces":[{"name":"pa"}]},"pusher":{"apps":[{"id":"1","key":"k","secret":"s","namespace":"pa","enable_watchlist_events":true}]}}"#,
            "pusher.apps[0].enable_watchlist_events",
        ),
        (
            r#"{"engine":{"redis":{"address":"http://x"}}}"#,
            "engine.redis.address",
        ),
        (
            r#"{"storage":{"sqlite":{"synchronous":"off"}}}"#,
            "storage.sqlite.synchronous",
        ),
        (r#"{"storage":{"type":"mysql"}}"#, "storage.type"),
        (r#"{"storage":{"timeout":"0s"}}"#, "storage.timeout"),
        (
            r#"{"channel":{"namespaces":[{"name":"rx","channel_regex":"("}]}}"#,
            "channel.namespaces[0].channel_regex",
        ),
        (
            r#"{"client":{"token":{"rsa_public_key":"not a key"}}}"#,
            "client.token.rsa_public_key",
        ),
    ];
    for (text, key) in cases {
        let dir = write("c.json", text);
        let err = load(
            Some(&dir.path().join("c.json")),
            &env(&[]),
            &Overrides::default(),
        )
        .unwrap_err();
        match &err {
            ConfigError::Invalid { key: k, .. } => assert_eq!(k, key, "{text}: {err}"),
            other => panic!("{text}: {other}"),
        }
    }
    let err = load(
        None,
        &env(&[("HERALD_CLIENT_INSECURE", "maybe")]),
        &Overrides::default(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("client.insecure"), "{err}");
}

#[test]
fn unreadable_and_malformed_files() {
    let err = load(
        Some(Path::new("/nonexistent/herald.json")),
        &env(&[]),
        &Overrides::default(),
    )
    .unwrap_err();
    assert!(matches!(err, ConfigError::Read { .. }));
    let dir = write("c.json", "{ not json");
    let err = load(
        Some(&dir.path().join("c.json")),
        &env(&[]),
        &Overrides::default(),
    )
    .unwrap_err();
    assert!(matches!(err, ConfigError::Parse { .. }), "{err}");
}

#[test]
fn dev_mode_opens_everything() {
    let o = Overrides {
        dev: true,
        ..Default::default()
    };
    let l = load(None, &env(&[]), &o).unwrap();
    assert!(l.config.client.insecure && l.config.http_api.insecure);
    assert_eq!(l.config.client.allowed_origins, vec!["*"]);
}

#[test]
fn dev_mode_chat_keeps_history_and_presence() {
    let o = Overrides {
        dev: true,
        ..Default::default()
    };
    let l = load(None, &env(&[]), &o).unwrap();
    let chat = l
        .config
        .channel
        .namespaces
        .iter()
        .find(|n| n.name == "chat")
        .expect("--dev adds the demo's chat namespace");
    let c = &chat.options;
    assert!(c.presence && c.join_leave, "the online counter needs both");
    assert_eq!(c.history_size, 100);
    assert_eq!(c.history_ttl, Dur::secs(24 * 3600));
    assert!(c.force_recovery, "a reconnecting page recovers");
}

#[test]
fn dev_mode_keeps_a_configured_chat_namespace() {
    let dir = write(
        "c.json",
        r#"{"channel":{"namespaces":[{"name":"chat","history_size":5,"history_ttl":"60s"}]}}"#,
    );
    let o = Overrides {
        dev: true,
        ..Default::default()
    };
    let l = load(Some(&dir.path().join("c.json")), &env(&[]), &o).unwrap();
    let chats: Vec<_> = l
        .config
        .channel
        .namespaces
        .iter()
        .filter(|n| n.name == "chat")
        .collect();
    assert_eq!(chats.len(), 1);
    assert_eq!(chats[0].options.history_size, 5);
    assert!(!chats[0].options.presence);
}

#[test]
fn the_example_config_loads_without_warnings() {
    let path = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/herald.toml"
    ));
    let l = load(Some(path), &env(&[]), &Overrides::default()).unwrap();
    assert!(l.warnings.is_empty(), "{:?}", l.warnings);
    assert_eq!(l.config.channel.namespaces.len(), 4);
    assert_eq!(l.config.client.token.hmac_secret_key, "change-me-secret");
}

#[test]
fn write_delay_accepts_up_to_one_second() {
    let dir = write("c.json", r#"{"client":{"write_delay":"1s"}}"#);
    let loaded = load(
        Some(&dir.path().join("c.json")),
        &env(&[]),
        &Overrides::default(),
    )
    .unwrap();
    assert_eq!(loaded.config.client.write_delay, Dur::secs(1));
}

#[test]
fn secrets_never_show_in_a_printed_config() {
    let dir = write(
        "c.json",
        r#"{"client":{"token":{"hmac_secret_key":"s-hmac"}},"http_api":{"key":"s-api"},
            "admin":{"password":"s-admin-pw","secret":"s-admin-secret"},
            "engine":{"type":"redis","redis":{"address":"redis://:s-addr-pw@127.0.0.1:6379",
                "password":"s-redis-pw"}},
            "broker":{"nats":{"url":"nats://user:s-nats-pw@127.0.0.1:4222"}},
            "storage":{"postgres":{"url":"postgres://u:s-pg-pw@127.0.0.1/db"}}}"#,
    );
    let l = load(
        Some(&dir.path().join("c.json")),
        &env(&[]),
        &Overrides::default(),
    )
    .unwrap();
    let printed = format!("{:?}", l.config);
    for secret in [
        "s-hmac",
        "s-api",
        "s-admin-pw",
        "s-admin-secret",
        "s-addr-pw",
        "s-redis-pw",
        "s-nats-pw",
        "s-pg-pw",
    ] {
        assert!(!printed.contains(secret), "{secret} in {printed}");
    }
    assert_eq!(l.config.http_api.key, "s-api", "still readable where used");
    assert!(printed.contains("127.0.0.1:6379"), "the rest is shown");
}

#[test]
fn an_empty_broker_or_presence_type_is_none() {
    let l = load(
        None,
        &env(&[
            ("HERALD_BROKER_TYPE", ""),
            ("HERALD_PRESENCE_MANAGER_TYPE", ""),
        ]),
        &Overrides::default(),
    )
    .unwrap();
    assert_eq!(l.config.broker.kind, None);
    assert_eq!(l.config.presence_manager.kind, None);
    let l = load(
        None,
        &env(&[("HERALD_BROKER_TYPE", "nats")]),
        &Overrides::default(),
    )
    .unwrap();
    assert_eq!(l.config.broker.kind, Some(crate::config::BrokerType::Nats));
}

#[test]
fn misspelt_keys_are_named_with_the_key_they_probably_mean() {
    let known: Vec<String> = ["allowed_origins", "ping_interval", "token"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let near = |k: &str| super::closest(k, known.iter()).cloned();
    assert_eq!(near("allowed_origin").as_deref(), Some("allowed_origins"));
    assert_eq!(near("pign_interval").as_deref(), Some("ping_interval"));
    assert_eq!(near("tokne").as_deref(), Some("token"));
    assert_eq!(near("something_else"), None);
    assert_eq!(near("x"), None);
}

#[test]
fn errors_say_types_in_words_and_durations_need_units() {
    let cases: &[(&str, &str, &str, &str)] = &[
        (
            "c.json",
            r#"{"http_server":{"port":"abc"}}"#,
            "http_server.port",
            "a whole number from 0 to 65535",
        ),
        (
            "c.json",
            r#"{"client":{"queue_max_size":-1}}"#,
            "client.queue_max_size",
            "a whole number, 0 or more",
        ),
        // The key without a unit is named, not a later one it upsets.
        (
            "c.yaml",
            "client:\n  ping_interval: 25\n",
            "client.ping_interval",
            "\"25s\"",
        ),
    ];
    for (name, text, key, words) in cases {
        let dir = write(name, text);
        let err = load(
            Some(&dir.path().join(name)),
            &env(&[]),
            &Overrides::default(),
        )
        .map(|_| ())
        .unwrap_err()
        .to_string();
        assert!(err.contains(key), "{text}: {err}");
        assert!(err.contains(words), "{text}: {err}");
        assert!(!err.contains("u16") && !err.contains("usize"), "{err}");
    }
}
