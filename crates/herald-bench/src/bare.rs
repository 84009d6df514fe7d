//! The bare reference server (`herald-bench bare-server`): a minimal
//! WebSocket fan-out with no protocol logic beyond what herald-bench needs.
//! It answers v2-shaped `connect`, `subscribe` and `publish` commands with
//! empty results, and sends every publication (from `POST /api/publish` or a
//! client's `publish`) to every socket that has subscribed to anything,
//! encoded once and shared, with queued frames joined by newlines into one
//! message like Herald does. No channels, history, auth or limits: what is
//! left is the cost of the sockets, the runtime and the JSON envelope, i.e.
//! how close a real server can get on this machine.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::sync::broadcast;

use crate::target::check_loopback;

/// Publications buffered for the slowest socket; a socket further behind
/// is closed with code 3008, as a slow consumer.
pub const BACKLOG: usize = 65_536;

/// Queued publications are joined into messages of about this size at most.
const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// Socket buffer sizes, as Herald's defaults (tungstenite zero-fills the
/// read buffer before each read attempt, so its size is a CPU cost too).
const READ_BUFFER: usize = 1024;
const WRITE_BUFFER: usize = 4096;

/// Flags of `bare-server`.
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Address to listen on (loopback only).
    #[arg(long, default_value = "127.0.0.1")]
    pub address: IpAddr,
    /// Port to listen on (0 picks a free one; the bound address is printed).
    #[arg(long, default_value_t = 18300)]
    pub port: u16,
    /// Stop by itself after this long (e.g. `30m`).
    #[arg(long, default_value = "30m", value_parser = humantime::parse_duration)]
    pub max_runtime: Duration,
}

struct Hub {
    tx: broadcast::Sender<Utf8Bytes>,
    clients: AtomicU64,
}

impl Hub {
    fn publish(&self, channel: &str, data: &RawValue) {
        let channel = crate::protocol::quote(channel);
        let frame = format!(
            "{{\"push\":{{\"channel\":{channel},\"pub\":{{\"data\":{}}}}}}}",
            data.get()
        );
        // No receiver (nobody subscribed yet) is not an error here.
        let _ = self.tx.send(Utf8Bytes::from(frame));
    }
}

/// A bound bare server, not yet serving.
pub struct BareServer {
    listener: tokio::net::TcpListener,
    app: Router,
}

impl BareServer {
    /// Binds `address:port` (loopback only; port 0 picks a free one).
    pub async fn bind(address: IpAddr, port: u16) -> anyhow::Result<Self> {
        check_loopback(&address.to_string())?;
        let listener = tokio::net::TcpListener::bind(SocketAddr::new(address, port)).await?;
        let (tx, _) = broadcast::channel(BACKLOG);
        let hub = Arc::new(Hub {
            tx,
            clients: AtomicU64::new(0),
        });
        let app = Router::new()
            .route("/connection/websocket", get(upgrade))
            .route("/api/publish", post(api_publish))
            .route("/health", get(|| async { "{}" }))
            .with_state(hub);
        Ok(Self { listener, app })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `stop` completes.
    pub async fn run(
        self,
        stop: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        axum::serve(self.listener, self.app)
            .with_graceful_shutdown(stop)
            .await?;
        Ok(())
    }
}

/// Runs the server until Ctrl-C, SIGTERM or `max_runtime`.
pub async fn serve(o: Options) -> anyhow::Result<()> {
    let server = BareServer::bind(o.address, o.port).await?;
    let addr = server.local_addr()?;
    println!("bare-server listening on {addr} (ws://{addr}/connection/websocket)");
    server
        .run(until_stopped("bare-server", o.max_runtime))
        .await
}

/// Completes on Ctrl-C, SIGTERM or after `max` (said on stderr).
pub async fn until_stopped(who: &'static str, max: Duration) {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
        _ = tokio::time::sleep(max) => eprintln!("{who}: max runtime reached"),
    }
}

#[derive(Deserialize)]
struct PublishBody<'a> {
    #[serde(borrow)]
    channel: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    data: &'a RawValue,
}

async fn api_publish(State(hub): State<Arc<Hub>>, body: axum::body::Bytes) -> impl IntoResponse {
    match serde_json::from_slice::<PublishBody>(&body) {
        Ok(p) => {
            hub.publish(&p.channel, p.data);
            "{\"result\":{}}"
        }
        Err(_) => "{\"error\":{\"code\":107,\"message\":\"bad request\"}}",
    }
}

async fn upgrade(State(hub): State<Arc<Hub>>, ws: WebSocketUpgrade) -> impl IntoResponse {
    ws.read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .on_upgrade(move |socket| connection(socket, hub))
}

/// One command, as far as the bare server reads it.
#[derive(Deserialize, Default)]
#[serde(default)]
struct Command<'a> {
    id: u32,
    #[serde(borrow)]
    connect: Option<&'a RawValue>,
    #[serde(borrow)]
    subscribe: Option<&'a RawValue>,
    #[serde(borrow)]
    publish: Option<PublishBody<'a>>,
}

async fn connection(mut socket: WebSocket, hub: Arc<Hub>) {
    let n = hub.clients.fetch_add(1, Ordering::Relaxed);
    let mut feed: Option<broadcast::Receiver<Utf8Bytes>> = None;
    loop {
        tokio::select! {
            msg = socket.recv() => match msg {
                Some(Ok(Message::Text(text))) => {
                    let replies = answer(&text, n, &hub, &mut feed);
                    if !replies.is_empty() && socket.send(Message::Text(replies.into())).await.is_err() {
                        return;
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return,
            },
            first = next(&mut feed) => match first {
                Ok(first) => {
                    let batch = join_queued(first, feed.as_mut().expect("subscribed"));
                    if socket.send(Message::Text(batch)).await.is_err() {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    let frame = CloseFrame { code: 3008, reason: "slow".into() };
                    let _ = socket.send(Message::Close(Some(frame))).await;
                    return;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
        }
    }
}

/// The next publication once subscribed; never before.
async fn next(
    feed: &mut Option<broadcast::Receiver<Utf8Bytes>>,
) -> Result<Utf8Bytes, broadcast::error::RecvError> {
    match feed {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// `first` and whatever else is queued, joined by newlines, bounded.
fn join_queued(first: Utf8Bytes, rx: &mut broadcast::Receiver<Utf8Bytes>) -> Utf8Bytes {
    let mut joined: Option<String> = None;
    while joined.as_ref().map_or(first.len(), String::len) < MAX_MESSAGE_BYTES {
        let Ok(more) = rx.try_recv() else { break };
        let j = joined.get_or_insert_with(|| first.as_str().to_owned());
        j.push('\n');
        j.push_str(more.as_str());
    }
    joined.map_or(first, Utf8Bytes::from)
}

/// Replies to the commands of one frame, joined by newlines.
fn answer(
    text: &str,
    n: u64,
    hub: &Hub,
    feed: &mut Option<broadcast::Receiver<Utf8Bytes>>,
) -> String {
    let mut out = String::new();
    for line in text.split('\n').filter(|l| !l.trim().is_empty()) {
        let Ok(cmd) = serde_json::from_str::<Command>(line) else {
            continue;
        };
        if cmd.id == 0 {
            continue; // a pong
        }
        let id = cmd.id;
        let reply = if cmd.connect.is_some() {
            format!("{{\"id\":{id},\"connect\":{{\"client\":\"bare-{n}\",\"version\":\"0.0.0\"}}}}")
        } else if cmd.subscribe.is_some() {
            feed.get_or_insert_with(|| hub.tx.subscribe());
            format!("{{\"id\":{id},\"subscribe\":{{}}}}")
        } else if let Some(p) = cmd.publish {
            hub.publish(&p.channel, p.data);
            format!("{{\"id\":{id},\"publish\":{{}}}}")
        } else {
            format!("{{\"id\":{id}}}")
        };
        if !out.is_empty() {
            out.push('\n');
        }
        out.push_str(&reply);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_commands_and_fans_out() {
        let (tx, _) = broadcast::channel(8);
        let hub = Hub {
            tx,
            clients: AtomicU64::new(0),
        };
        let mut feed = None;
        let out = answer(
            "{\"id\":1,\"connect\":{}}\n{\"id\":2,\"subscribe\":{\"channel\":\"c\"}}\n{}",
            7,
            &hub,
            &mut feed,
        );
        assert_eq!(
            out,
            "{\"id\":1,\"connect\":{\"client\":\"bare-7\",\"version\":\"0.0.0\"}}\n{\"id\":2,\"subscribe\":{}}"
        );
        let rx = feed.as_mut().unwrap();
        let out = answer(
            "{\"id\":3,\"publish\":{\"channel\":\"c\",\"data\":{\"a\":1}}}",
            7,
            &hub,
            &mut None,
        );
        assert_eq!(out, "{\"id\":3,\"publish\":{}}");
        hub.publish("c", &RawValue::from_string("2".into()).unwrap());
        let first = rx.try_recv().unwrap();
        let batch = join_queued(first, rx);
        assert_eq!(
            batch.as_str(),
            "{\"push\":{\"channel\":\"c\",\"pub\":{\"data\":{\"a\":1}}}}\n{\"push\":{\"channel\":\"c\",\"pub\":{\"data\":2}}}"
        );
    }
}
