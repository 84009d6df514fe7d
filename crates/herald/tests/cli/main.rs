//! The `herald` binary itself: its subcommands, configuration errors and
//! warnings, `HERALD_*` environment variables, and a graceful shutdown on
//! SIGTERM.

use std::path::Path;
use std::process::{Command, Output, Stdio};

use herald_testkit::{Event, Served, Ws, WAIT};
use serde_json::{json, Value};

mod crash;
mod disk_full;
mod tls;
mod webhook;

/// The binary with a clean environment: no inherited `HERALD_*` variables.
fn herald() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_herald"));
    cmd.env_clear();
    cmd
}

fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null()).output().expect("herald runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn write(path: &Path, v: &Value) {
    std::fs::write(path, v.to_string()).unwrap();
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn non_empty_str(v: &Value) -> bool {
    v.as_str().is_some_and(|s| !s.is_empty())
}

#[test]
fn version_prints_the_crate_version() {
    let o = run(herald().arg("version"));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains(env!("CARGO_PKG_VERSION")),
        "{}",
        stdout(&o)
    );
    let o = run(herald().arg("--version"));
    assert!(o.status.success());
    assert!(stdout(&o).contains(env!("CARGO_PKG_VERSION")));
}

#[test]
fn genconfig_writes_fresh_secrets_and_does_not_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.json");
    let o = run(herald().arg("genconfig").arg("-o").arg(&file));
    assert!(o.status.success(), "{}", stderr(&o));
    let cfg = read_json(&file);
    assert!(
        non_empty_str(&cfg["client"]["token"]["hmac_secret_key"]),
        "{cfg}"
    );
    assert!(non_empty_str(&cfg["http_api"]["key"]), "{cfg}");
    assert!(non_empty_str(&cfg["admin"]["password"]), "{cfg}");
    assert_ne!(
        cfg["client"]["token"]["hmac_secret_key"],
        cfg["http_api"]["key"]
    );
    // Its secrets are for its owner's eyes only.
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    }
    // It says where the API key is, and that browsers need origins.
    assert!(stdout(&o).contains("http_api.key"), "{}", stdout(&o));
    assert!(stdout(&o).contains("--allowed-origin"), "{}", stdout(&o));

    // The generated file is a valid configuration without warnings.
    let o = run(herald().arg("checkconfig").arg("-c").arg(&file));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!stderr(&o).contains("warning"), "{}", stderr(&o));

    // No overwrite without --force; the file stays as it was.
    let before = std::fs::read_to_string(&file).unwrap();
    let o = run(herald().arg("genconfig").arg("-o").arg(&file));
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--force"), "{}", stderr(&o));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), before);

    // With --force: a new file with new secrets.
    let o = run(herald()
        .arg("genconfig")
        .arg("-o")
        .arg(&file)
        .arg("--force"));
    assert!(o.status.success(), "{}", stderr(&o));
    let again = read_json(&file);
    assert!(non_empty_str(&again["client"]["token"]["hmac_secret_key"]));
    assert_ne!(
        again["client"]["token"]["hmac_secret_key"],
        cfg["client"]["token"]["hmac_secret_key"]
    );
}

#[test]
fn genconfig_takes_the_origins_browsers_come_from() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.json");
    let o = run(herald()
        .arg("genconfig")
        .arg("-o")
        .arg(&file)
        .args(["--allowed-origin", "http://localhost:3000"])
        .args(["--allowed-origin", "https://app.example.com"]));
    assert!(o.status.success(), "{}", stderr(&o));
    let cfg = read_json(&file);
    assert_eq!(
        cfg["client"]["allowed_origins"],
        serde_json::json!(["http://localhost:3000", "https://app.example.com"])
    );
    assert!(!stdout(&o).contains("--allowed-origin"), "{}", stdout(&o));

    // An origin with a path never matches: refused, and nothing written.
    let other = dir.path().join("other.json");
    let o = run(herald()
        .arg("genconfig")
        .arg("-o")
        .arg(&other)
        .args(["--allowed-origin", "http://localhost:3000/"]));
    assert!(!o.status.success());
    assert!(stderr(&o).contains("no path"), "{}", stderr(&o));
    assert!(!other.exists());

    // In a file, such an origin is warned about by name.
    std::fs::write(
        &other,
        serde_json::json!({"client": {"allowed_origins": ["localhost:3000"]}}).to_string(),
    )
    .unwrap();
    let o = run(herald().arg("checkconfig").arg("-c").arg(&other));
    assert!(
        stderr(&o).contains("client.allowed_origins"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn gentoken_and_checktoken() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.json");
    assert!(run(herald().arg("genconfig").arg("-o").arg(&file))
        .status
        .success());
    let o = run(herald()
        .args(["gentoken", "-c"])
        .arg(&file)
        .args(["-u", "alice", "--ttl", "60"]));
    assert!(o.status.success(), "{}", stderr(&o));
    let token = stdout(&o).trim().to_string();
    assert_eq!(token.split('.').count(), 3, "a JWT: {token}");

    // The token carries the user and the requested lifetime.
    let secret = read_json(&file)["client"]["token"]["hmac_secret_key"]
        .as_str()
        .unwrap()
        .to_string();
    let claims = hs256_claims(&token, &secret);
    assert_eq!(claims["sub"], "alice");
    let ttl = claims["exp"].as_i64().unwrap() - herald::auth::now_unix();
    assert!((50..=60).contains(&ttl), "exp about 60s ahead: {claims}");

    let o = run(herald().args(["checktoken", "-c"]).arg(&file).arg(&token));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("alice"), "{}", stdout(&o));

    // A changed signature, payload or secret is refused.
    // The signature's first character changes (its last may only carry
    // padding bits, which a decoder refuses before any signature check).
    let (head, rest) = token.split_once('.').unwrap();
    let (payload, sig) = rest.split_once('.').unwrap();
    let first = sig.chars().next().unwrap();
    let other = if first == 'A' { 'B' } else { 'A' };
    let tampered = format!("{head}.{payload}.{other}{}", &sig[1..]);
    let forged_payload = format!(
        "{head}.{}.{sig}",
        base64_url(&json!({"sub": "mallory"}).to_string())
    );
    let other_secret =
        herald::auth::sign_hs256(&json!({"sub": "alice"}), "another-secret").unwrap();
    for (bad, why) in [
        (tampered, "signature does not match"),
        (forged_payload, "signature does not match"),
        (other_secret, "signed with another secret?"),
        ("garbage".into(), "not a JWT"),
    ] {
        let o = run(herald().args(["checktoken", "-c"]).arg(&file).arg(&bad));
        assert!(!o.status.success(), "{bad} accepted: {}", stdout(&o));
        let err = stderr(&o);
        assert!(err.contains("invalid token") && err.contains(why), "{err}");
        // In words, not the library's names for errors.
        assert!(
            !err.contains("InvalidSignature") && !err.contains("InvalidToken"),
            "{err}"
        );
    }

    // An expired token fails too.
    let expired = herald::auth::sign_hs256(
        &json!({"sub": "alice", "exp": herald::auth::now_unix() - 10}),
        &secret,
    )
    .unwrap();
    let o = run(herald().args(["checktoken", "-c"]).arg(&file).arg(&expired));
    assert!(!o.status.success());
    assert!(stderr(&o).contains("expired"), "{}", stderr(&o));
}

/// Unpadded URL-safe base64, as in JWTs.
/// Subscription tokens as Centrifugo's CLI makes them: the user, the
/// channel and the lifetime, signed with the subscription token secret
/// when `client.subscription_token` is enabled.
#[test]
fn gensubtoken_and_checksubtoken() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.json");
    assert!(run(herald().arg("genconfig").arg("-o").arg(&file))
        .status
        .success());
    let gen = |args: &[&str]| run(herald().arg("gensubtoken").arg("-c").arg(&file).args(args));
    let check = |token: &str| {
        run(herald()
            .arg("checksubtoken")
            .arg("-c")
            .arg(&file)
            .arg(token))
    };
    let o = gen(&["-u", "alice", "-s", "news", "-t", "60"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let token = stdout(&o).trim().to_string();
    let secret = read_json(&file)["client"]["token"]["hmac_secret_key"]
        .as_str()
        .unwrap()
        .to_string();
    let claims = hs256_claims(&token, &secret);
    assert_eq!(
        (&claims["sub"], &claims["channel"]),
        (&json!("alice"), &json!("news"))
    );
    let ttl = claims["exp"].as_i64().unwrap() - herald::auth::now_unix();
    assert!((50..=60).contains(&ttl), "{claims}");
    let o = check(&token);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("\"alice\"") && stdout(&o).contains("\"news\""),
        "{}",
        stdout(&o)
    );

    // A connection token is no subscription token; a channel is required.
    let o = run(herald()
        .args(["gentoken", "-c"])
        .arg(&file)
        .args(["-u", "alice"]));
    let connection = stdout(&o).trim().to_string();
    let o = check(&connection);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("no channel claim"), "{}", stderr(&o));
    let o = gen(&["-u", "alice"]);
    assert!(!o.status.success());

    // With subscription tokens of their own, their secret signs and
    // verifies: tokens made before no longer pass.
    let mut cfg = read_json(&file);
    cfg["client"]["subscription_token"] =
        json!({"enabled": true, "hmac_secret_key": "another-secret-for-subscriptions"});
    write(&file, &cfg);
    let o = check(&token);
    assert!(!o.status.success(), "{}", stdout(&o));
    let o = gen(&["-u", "bob", "-s", "room", "-t", "0"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = check(stdout(&o).trim());
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("never expires"), "{}", stdout(&o));
}

/// The claims of a token signed with `secret` (HS256); fails the test
/// when the signature does not match.
fn hs256_claims(token: &str, secret: &str) -> Value {
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    validation.required_spec_claims.clear();
    jsonwebtoken::decode::<Value>(
        token,
        &jsonwebtoken::DecodingKey::from_secret(secret.as_bytes()),
        &validation,
    )
    .expect("signed with the configured secret")
    .claims
}

fn base64_url(text: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let bytes = text.as_bytes();
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

#[test]
fn checkconfig_reports_bad_values_and_unknown_keys() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.json");
    write(
        &file,
        &json!({"client": {"token": {"hmac_secret_key": "s"}}, "http_api": {"key": "k"}}),
    );
    let o = run(herald().args(["checkconfig", "-c"]).arg(&file));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!stderr(&o).contains("warning"), "{}", stderr(&o));

    write(&file, &json!({"client": {"ping_interval": "soon"}}));
    refused_naming(
        &run(herald().args(["checkconfig", "-c"]).arg(&file)),
        "client.ping_interval",
    );

    write(
        &file,
        &json!({"client": {"token": {"hmac_secret_key": "s"}, "no_such_option": 1}, "http_api": {"key": "k"}}),
    );
    let o = run(herald().args(["checkconfig", "-c"]).arg(&file));
    assert!(
        !o.status.success(),
        "an unknown key fails the check: {}",
        stderr(&o)
    );
    assert!(
        stderr(&o).contains("warning") && stderr(&o).contains("client.no_such_option"),
        "{}",
        stderr(&o)
    );
    // A misspelt key is named with the one it probably means.
    write(&file, &json!({"client": {"allowed_origin": ["http://x"]}}));
    let o = run(herald().args(["checkconfig", "-c"]).arg(&file));
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("did you mean `client.allowed_origins`?"),
        "{}",
        stderr(&o)
    );

    // A missing file is an error naming it.
    let missing = dir.path().join("missing.json");
    let o = run(herald().args(["checkconfig", "-c"]).arg(&missing));
    assert!(!o.status.success());
    assert!(stderr(&o).contains("missing.json"), "{}", stderr(&o));
}

#[test]
fn environment_variables_are_honoured() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.json");
    write(
        &file,
        &json!({"client": {"token": {"hmac_secret_key": "s"}}}),
    );

    // Without a key the API warning appears; the variable silences it.
    let o = run(herald().args(["checkconfig", "-c"]).arg(&file));
    assert!(o.status.success());
    assert!(stderr(&o).contains("http_api.key"), "{}", stderr(&o));
    let o = run(herald()
        .args(["checkconfig", "-c"])
        .arg(&file)
        .env("HERALD_HTTP_API_KEY", "from-env"));
    assert!(o.status.success());
    assert!(!stderr(&o).contains("http_api.key"), "{}", stderr(&o));

    // The token secret from the environment signs and verifies, without a file.
    let env_secret = "secret-from-env";
    let o = run(herald()
        .args(["gentoken", "-u", "bob"])
        .env("HERALD_CLIENT_TOKEN_HMAC_SECRET_KEY", env_secret));
    assert!(o.status.success(), "{}", stderr(&o));
    let token = stdout(&o).trim().to_string();
    let o = run(herald()
        .arg("checktoken")
        .arg(&token)
        .env("HERALD_CLIENT_TOKEN_HMAC_SECRET_KEY", env_secret));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("bob"));
    // The variable wins over the file's secret.
    let o = run(herald()
        .args(["checktoken", "-c"])
        .arg(&file)
        .arg(&token)
        .env("HERALD_CLIENT_TOKEN_HMAC_SECRET_KEY", env_secret));
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run(herald().args(["checktoken", "-c"]).arg(&file).arg(&token));
    assert!(!o.status.success(), "the file's secret does not match");
    // Without any secret gentoken says what to set.
    let o = run(herald().args(["gentoken", "-u", "bob"]));
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("HERALD_CLIENT_TOKEN_HMAC_SECRET_KEY"),
        "{}",
        stderr(&o)
    );

    // HERALD_CONFIG names the file.
    let o = run(herald()
        .arg("checktoken")
        .arg(herald::auth::sign_hs256(&json!({"sub": "carol"}), "s").unwrap())
        .env("HERALD_CONFIG", &file));
    assert!(o.status.success(), "{}", stderr(&o));

    // A value that does not parse names the key and the variable; an
    // unknown variable is a warning.
    let o = run(herald()
        .args(["checkconfig", "-c"])
        .arg(&file)
        .env("HERALD_CLIENT_CHANNEL_LIMIT", "many"));
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("client.channel_limit")
            && stderr(&o).contains("HERALD_CLIENT_CHANNEL_LIMIT"),
        "{}",
        stderr(&o)
    );
    let o = run(herald()
        .args(["checkconfig", "-c"])
        .arg(&file)
        .env("HERALD_NO_SUCH_THING", "1"));
    assert!(o.status.success());
    assert!(
        stderr(&o).contains("HERALD_NO_SUCH_THING"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn serve_with_an_invalid_config_names_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.json");
    write(&file, &json!({"client": {"ping_interval": "soon"}}));
    refused_naming(&serve_once(&file), "client.ping_interval");
    // An out-of-range combination is refused the same way.
    write(
        &file,
        &json!({"client": {"ping_interval": "1s", "pong_timeout": "2s"}}),
    );
    refused_naming(&serve_once(&file), "client.pong_timeout");
}

/// Runs `herald serve` with `config` until it exits (it must not start).
fn serve_once(config: &Path) -> Output {
    run(herald()
        .args(["serve", "-c"])
        .arg(config)
        .args(["--port", "0", "--address", "127.0.0.1"]))
}

/// The command failed, and its message names `key`.
fn refused_naming(o: &Output, key: &str) {
    assert!(
        !o.status.success(),
        "accepted; wanted an error naming {key}"
    );
    assert!(stderr(o).contains(key), "{}", stderr(o));
}

fn serve(config: &Path, env: &[(&str, &str)]) -> Served {
    serve_full(config, env, &[])
}

fn serve_with_args(config: &Path, args: &[&str]) -> Served {
    serve_full(config, &[], args)
}

fn serve_full(config: &Path, env: &[(&str, &str)], args: &[&str]) -> Served {
    let mut cmd = herald();
    cmd.args(["serve", "-c"])
        .arg(config)
        .args(["--port", "0", "--address", "127.0.0.1"])
        .args(args)
        .env("RUST_LOG", "info")
        .envs(env.iter().copied());
    Served::spawn(cmd, WAIT)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_clients_with_3001_and_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.json");
    write(
        &file,
        &json!({
            "client": {"token": {"hmac_secret_key": "file-secret"}},
            "channel": {"without_namespace": {"allow_subscribe_for_client": true}},
            "log": {"level": "info"},
            "data_dir": dir.path().join("data").display().to_string()
        }),
    );
    // Settings from the environment reach the running server.
    let mut s = serve(&file, &[("HERALD_HTTP_API_KEY", "env-api-key")]);

    let mut ws = Ws::connect(&s.addr).await;
    let token = herald::auth::sign_hs256(&json!({"sub": "alice"}), "file-secret").unwrap();
    let r = ws.cmd(json!({"connect": {"token": token}})).await;
    assert!(r["connect"]["client"].is_string(), "{r}");
    let r = ws.cmd(json!({"subscribe": {"channel": "news"}})).await;
    assert_eq!(r, json!({"id": 2, "subscribe": {}}));

    let api = |key: &'static str| {
        reqwest::Client::new()
            .post(format!("http://{}/api/publish", s.addr))
            .header("X-API-Key", key)
            .body(r#"{"channel":"news","data":{"via":"api"}}"#)
            .send()
    };
    assert_eq!(api("wrong").await.unwrap().status().as_u16(), 401);
    assert_eq!(api("env-api-key").await.unwrap().status().as_u16(), 200);
    let p = ws.push().await;
    assert_eq!(p["pub"]["data"], json!({"via": "api"}), "{p}");

    s.signal("TERM");
    let closed = match ws.next().await {
        Event::Msg(m) => panic!("unexpected message before the close: {m}"),
        Event::Closed(c) => c,
    };
    assert_eq!(closed, Some((3001, "shutdown".into())));

    // No new connections once shutdown began (refused, or 503 while the
    // process is still draining).
    let late = Ws::try_open(&format!("ws://{}/connection/websocket", s.addr)).await;
    assert!(late.is_err(), "new connection accepted after SIGTERM");

    let status = tokio::task::block_in_place(|| s.wait_exit());
    assert!(status.success(), "exit status {status:?}");
    // The reader thread ends at EOF, which follows the exit.
    let mut rest = Vec::new();
    while let Ok(line) = s.lines.recv_timeout(WAIT) {
        rest.push(line);
    }
    assert!(
        rest.iter().any(|l| l.contains("stopped")),
        "log ends with `stopped`: {rest:?}"
    );
    // The shutdown line counts the one connection it closed.
    assert!(
        rest.iter()
            .any(|l| l.contains("connections closed") && l.contains("connections=1")),
        "shutdown counts one connection: {rest:?}"
    );
}

#[test]
fn corrupt_durable_storage_stops_the_start_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.json");
    write(
        &config,
        &json!({"channel": {"namespaces": [{"name": "dur", "history_storage": "durable"}]}}),
    );
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let garbage = "not a database ".repeat(20);
    std::fs::write(data.join("streams.db"), &garbage).unwrap();
    let out = run(herald()
        .args(["serve", "-c"])
        .arg(&config)
        .args(["--port", "0", "--address", "127.0.0.1", "--data-dir"])
        .arg(&data));
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("cannot open durable storage") && err.contains("streams.db"),
        "{err}"
    );
    assert_eq!(
        err.matches("file is not a database").count(),
        1,
        "said once: {err}"
    );
    assert_eq!(
        std::fs::read_to_string(data.join("streams.db")).unwrap(),
        garbage,
        "never reset"
    );
}

/// `herald serve` under `sh -c "<limits> && exec herald …"`, so that it
/// starts with the shell's limits.
fn serve_limited(limits: &str, config: &Path) -> Served {
    let mut cmd = Command::new("sh");
    cmd.env_clear()
        .env("RUST_LOG", "info")
        .arg("-c")
        .arg(format!("{limits} && exec \"$0\" \"$@\""))
        .arg(env!("CARGO_BIN_EXE_herald"))
        .args(["serve", "-c"])
        .arg(config)
        .args(["--port", "0", "--address", "127.0.0.1"]);
    Served::spawn(cmd, WAIT)
}

/// Log lines of `s` containing `text`, until `quiet` passes without a line.
fn log_lines(s: &Served, text: &str, quiet: std::time::Duration) -> Vec<String> {
    let mut out = Vec::new();
    while let Ok(line) = s.lines.recv_timeout(quiet) {
        if line.contains(text) {
            out.push(line);
        }
    }
    out
}

/// Herald raises its soft limit on open files to the hard one at start;
/// and at a hard limit of 256, 300 sockets that send nothing cannot lock
/// the API out for longer than the header timeout, while accept backs off
/// instead of spinning on the failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_sockets_cannot_lock_out_the_api_at_a_low_file_limit() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.json");
    write(
        &file,
        &json!({"http_api": {"key": "k"}, "http_server": {"header_read_timeout": "500ms"},
                "log": {"level": "info"}}),
    );
    let hard: u64 = String::from_utf8(
        Command::new("sh")
            .args(["-c", "ulimit -Hn"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .trim()
    .parse()
    .unwrap();
    let raised = serve_limited("ulimit -Sn 64", &file);
    assert!(
        raised
            .head
            .iter()
            .any(|l| l.contains("open files limit") && l.contains(&format!("limit={hard}"))),
        "soft limit raised to {hard}: {:#?}",
        raised.head
    );
    drop(raised);

    let s = serve_limited("ulimit -n 256", &file);
    let mut silent = Vec::new();
    for _ in 0..300 {
        silent.push(tokio::net::TcpStream::connect(&s.addr).await.unwrap());
    }
    // The API answers again within the header timeout and a few backoffs.
    let client = reqwest::Client::new();
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let answered = client
            .post(format!("http://{}/api/info", s.addr))
            .header("X-API-Key", "k")
            .body("{}")
            .timeout(std::time::Duration::from_secs(2))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if answered {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the API stayed locked out"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    drop(silent);
    let failures = tokio::task::block_in_place(|| {
        log_lines(&s, "accept failed", std::time::Duration::from_millis(500))
    });
    assert!(failures.len() <= 2, "one line per streak: {failures:#?}");
}

/// A server whose log reader went away (stderr a closed pipe) still stops
/// on SIGTERM: a log line that cannot be written is dropped, never a panic
/// in the task that logged it.
#[test]
fn sigterm_stops_a_server_whose_stderr_was_closed() {
    use std::io::{BufRead, BufReader};

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.json");
    write(
        &config,
        &json!({"client": {"token": {"hmac_secret_key": "s"}}, "http_api": {"key": "k"}}),
    );
    let mut child = herald()
        .args(["serve", "-c"])
        .arg(&config)
        .args(["--port", "0", "--address", "127.0.0.1", "--data-dir"])
        .arg(dir.path().join("data"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut log = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    while !line.contains("listening") {
        line.clear();
        assert!(
            log.read_line(&mut line).unwrap() > 0,
            "exited before listening"
        );
    }
    drop(log);
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = std::time::Instant::now() + WAIT;
    let exited = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert!(exited.is_some_and(|s| s.success()), "{exited:?}");
}

/// The status of a WebSocket upgrade from an origin the server does not
/// list.
async fn upgrade_from_elsewhere(addr: &str) -> u16 {
    reqwest::Client::new()
        .get(format!("http://{addr}/connection/websocket"))
        .header("Connection", "Upgrade")
        .header("Upgrade", "websocket")
        .header("Sec-WebSocket-Version", "13")
        .header("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
        .header("Origin", "http://localhost:3000")
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_origin_is_logged_with_the_key_that_lets_it_in() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.json");
    write(
        &file,
        &json!({"client": {"allowed_origins": ["http://app.example"], "token": {"hmac_secret_key": "s"}}}),
    );
    let served = serve(&file, &[]);
    assert_eq!(upgrade_from_elsewhere(&served.addr).await, 403);
    served.logged("add it to client.allowed_origins");

    // One client's stream of refused commands does not flood the log at
    // info: a later refused origin is the next line.
    let mut ws = Ws::connect(&served.addr).await;
    let token = herald::auth::sign_hs256(&json!({"sub": "u"}), "s").unwrap();
    ws.cmd(json!({"connect": {"token": token}})).await;
    for n in 0..50 {
        let r = ws
            .cmd(json!({"subscribe": {"channel": format!("c{n}"), "token": "not a token"}}))
            .await;
        assert_eq!(r["error"]["code"], 103, "{r}");
    }
    assert_eq!(upgrade_from_elsewhere(&served.addr).await, 403);
    let lines = served.lines_until("add it to client.allowed_origins");
    assert!(lines.len() <= 2, "{} lines logged: {lines:?}", lines.len());
}
