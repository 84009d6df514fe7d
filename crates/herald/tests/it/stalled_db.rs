//! A PostgreSQL that stops answering — as behind a network path that
//! drops every packet for a while — while durable channels are published
//! to: no call waits past `storage.timeout`, a publish fails with an error
//! rather than hang, and once the path is back publishing resumes without a
//! restart. A publish that timed out may still be stored (its bytes were on
//! their way); every acknowledged one is, each once, at contiguous offsets.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use herald_testkit::*;

/// A TCP relay to PostgreSQL that can stall: while stalled it reads from
/// neither side, so what either sends waits in the kernel's buffers (as
/// TCP keeps retransmitting across a dead path) and goes through once it
/// resumes. Connections stay open throughout.
struct Relay {
    port: u16,
    stalled: watch::Sender<bool>,
    stop: Arc<AtomicBool>,
}

impl Relay {
    async fn start(upstream: String) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (stalled, watching) = watch::channel(false);
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if stopping.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(server) = TcpStream::connect(&upstream).await else {
                    continue;
                };
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(pump(cr, sw, watching.clone()));
                tokio::spawn(pump(sr, cw, watching.clone()));
            }
        });
        Relay {
            port,
            stalled,
            stop,
        }
    }

    fn stall(&self, on: bool) {
        self.stalled.send_replace(on);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the pumps so that they read again and end with their peers.
        self.stalled.send_replace(false);
    }
}

/// Copies `from` to `to`, pausing while `stalled` holds `true`.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut stalled: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 16 << 10];
    loop {
        if stalled.wait_for(|s| !*s).await.is_err() {
            return;
        }
        let n = tokio::select! {
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            // Stalled while waiting: stop reading now.
            _ = stalled.wait_for(|s| *s) => continue,
        };
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

async fn publish(s: &TestServer, tag: &str) -> Value {
    s.api(
        "publish",
        json!({"channel": "dur:stall", "data": {"tag": tag}}),
    )
    .await
}

fn acknowledged(reply: &Value) -> bool {
    reply["result"]["offset"].as_u64().is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_postgres_fails_calls_in_time_and_publishing_resumes() {
    let Some(db) = TestDatabase::create() else {
        return;
    };
    let upstream = std::env::var("HERALD_TEST_POSTGRES_URL")
        .ok()
        .and_then(|u| url_host_port(&u))
        .unwrap_or_else(|| "127.0.0.1:5432".to_string());
    let relay = Relay::start(upstream.clone()).await;
    let through = db
        .url
        .replacen(&upstream, &format!("127.0.0.1:{}", relay.port), 1);
    assert_ne!(through, db.url, "{upstream} not in {}", db.url);
    let receiver = Receiver::start().await;
    let s = TestServer::start(json!({
        "storage": {"type": "postgres", "timeout": "2s", "postgres": {"url": through}},
        "webhooks": [{"name": "app", "url": receiver.url(), "events": ["connect"],
                      "retry_initial_delay": "200ms"}],
        "channel": {"namespaces": [
            { "name": "dur", "history_storage": "durable", "allow_subscribe_for_client": true }
        ]}
    }))
    .await;

    // Publications acknowledged, and those that were not (which may or may
    // not be stored).
    let mut acked = Vec::new();
    let mut unsure = Vec::new();
    publish_until_acked(&s, "before", 5, &mut acked, &mut unsure).await;

    relay.stall(true);
    let stalled: Vec<String> = (0..3).map(|n| format!("stalled{n}")).collect();
    unsure.extend(stalled.iter().cloned());
    let replies = in_time(futures_util::future::join_all(
        stalled.iter().map(|tag| publish(&s, tag)),
    ))
    .await;
    for r in &replies {
        assert_eq!(r["error"]["code"], 100, "{r}");
    }
    let history = in_time(s.api("history", json!({"channel": "dur:stall"}))).await;
    assert_eq!(history["error"]["code"], 100, "{history}");
    // The webhook event queue lives in the same database.
    let letters = in_time(s.api("webhook_dead_letters", json!({}))).await;
    assert_eq!(letters["error"]["code"], 100, "{letters}");
    // A channel without durable history is not held up by the database.
    // Its connect event waits for the database, the webhook writer trying
    // again until it answers.
    let mut ws = s.client("stalled-user").await;
    ws.cmd(json!({"subscribe": {"channel": "news"}})).await;
    s.api("publish", json!({"channel": "news", "data": "still live"}))
        .await;
    assert_eq!(ws.push().await["pub"]["data"], "still live");

    relay.stall(false);
    let resumed = Instant::now();
    publish_until_acked(&s, "after", 5, &mut acked, &mut unsure).await;

    eventually("the connect event of the stall delivered", || async {
        receiver
            .of("connect")
            .iter()
            .any(|r| r.raw.contains("stalled-user"))
    })
    .await;

    let history = loop {
        let read = s
            .api("history", json!({"channel": "dur:stall", "limit": 100}))
            .await;
        if read.get("result").is_some() {
            break read;
        }
        assert!(resumed.elapsed() < Duration::from_secs(20), "{read}");
    };
    let pubs = history["result"]["publications"].as_array().unwrap();
    let offsets: Vec<u64> = pubs.iter().map(|p| p["offset"].as_u64().unwrap()).collect();
    assert_eq!(offsets, (1..=pubs.len() as u64).collect::<Vec<_>>());
    let stored: Vec<String> = pubs
        .iter()
        .map(|p| p["data"]["tag"].as_str().unwrap().to_string())
        .collect();
    for tag in &acked {
        assert_eq!(
            stored.iter().filter(|t| *t == tag).count(),
            1,
            "{tag}: {stored:?}"
        );
    }
    for tag in &stored {
        assert!(
            acked.contains(tag) || unsure.contains(tag),
            "{tag} was never published"
        );
        let copies = stored.iter().filter(|t| *t == tag).count();
        assert_eq!(copies, 1, "{tag} stored {copies} times");
    }
    s.stop().await;
}

/// `call`'s output, which must come within the 2 s `storage.timeout` and a
/// margin.
async fn in_time<T>(call: impl std::future::Future<Output = T>) -> T {
    answers_within(
        Duration::from_secs(4),
        "a call to the stalled database",
        call,
    )
    .await
}

/// Publishes `count` publications tagged `<prefix><n>` that are
/// acknowledged (a commit slower than `storage.timeout` on a loaded
/// machine fails one, which is tried again under a new tag), noting which
/// were and which were not.
async fn publish_until_acked(
    s: &TestServer,
    prefix: &str,
    count: usize,
    acked: &mut Vec<String>,
    unsure: &mut Vec<String>,
) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let goal = acked.len() + count;
    let mut n = 0;
    while acked.len() < goal {
        let tag = format!("{prefix}{n}");
        n += 1;
        let reply = publish(s, &tag).await;
        if acknowledged(&reply) {
            acked.push(tag);
        } else {
            assert!(Instant::now() < deadline, "publishing fails: {reply}");
            unsure.push(tag);
        }
    }
}

/// `host:port` of a `postgres://user@host:port/db` URL.
fn url_host_port(url: &str) -> Option<String> {
    let rest = url.split("://").nth(1)?;
    let authority = rest.split('/').next()?;
    Some(authority.rsplit('@').next()?.to_string())
}
