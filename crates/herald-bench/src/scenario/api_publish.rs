//! `api-publish`: the server API's publish at a fixed concurrency, over
//! HTTP or gRPC. N callers each publish, await the reply and publish again,
//! into channels spread over a prefix; the figures are acknowledged
//! publications per second, their latency, and (with `--server-pid`) the
//! server's CPU per publication.

use std::sync::Arc;
use std::time::Duration;

use herald::api::grpc::proto;
use herald::api::grpc::proto::centrifugo_api_client::CentrifugoApiClient;
use serde::Serialize;
use serde_json::value::RawValue;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use super::{check_server_pid, padded_object, Meter, ScenarioError, Window, REPLY_TIMEOUT};
use crate::api::Api;
use crate::report::{ErrorCounts, Report, Table};
use crate::stats::{spawn_progress, Latency, Progress, Summary};

/// How publications reach the server.
#[derive(Debug, Clone)]
pub enum Via {
    /// `POST <url>/publish`, keep-alive connections.
    Http { url: String },
    /// `CentrifugoApi/Publish` on one HTTP/2 connection.
    Grpc { addr: String },
}

impl Via {
    fn name(&self) -> &'static str {
        match self {
            Via::Http { .. } => "http",
            Via::Grpc { .. } => "grpc",
        }
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    pub via: Via,
    pub key: Option<String>,
    /// Channels are `<prefix>-0` … `<prefix>-<channels - 1>`.
    pub channel_prefix: String,
    pub channels: usize,
    /// Callers publishing at once.
    pub concurrency: usize,
    /// Size in bytes of each publication's JSON data.
    pub payload: usize,
    pub duration: Duration,
    pub warmup: Duration,
    pub server_pid: Option<u32>,
    pub progress: bool,
}

#[derive(Debug, Serialize)]
pub struct ApiPublishReport {
    pub scenario: &'static str,
    pub transport: &'static str,
    pub target: String,
    pub channel_prefix: String,
    pub channels: usize,
    pub concurrency: usize,
    pub payload_bytes: usize,
    pub warmup_s: f64,
    pub duration_s: f64,
    /// Publications acknowledged, started inside the measured window.
    pub acked: u64,
    pub publications_per_s: f64,
    pub latency: Summary,
    pub errors: ErrorCounts,
    pub server_cpu_s: Option<f64>,
    pub server_cpu_percent: Option<f64>,
    /// Publications per CPU-second of the server.
    pub publications_per_server_cpu_s: Option<f64>,
    pub loadgen_cpu_percent: f64,
}

impl Report for ApiPublishReport {
    fn clean(&self) -> bool {
        self.errors.total == 0
    }
    fn nothing_done(&self) -> Option<&'static str> {
        (self.acked == 0).then_some("no publication was acknowledged")
    }
    fn table(&self) -> String {
        let mut t = Table::new("herald-bench api-publish");
        t.row(
            "transport",
            format_args!("{} {}", self.transport, self.target),
        )
        .row(
            "channels",
            format_args!("{} × {}-<n>", self.channels, self.channel_prefix),
        )
        .row("concurrency", self.concurrency)
        .row("payload", format_args!("{} bytes", self.payload_bytes))
        .row(
            "window",
            format_args!("{} s after {} s warm-up", self.duration_s, self.warmup_s),
        )
        .row("acknowledged", self.acked)
        .row(
            "publications/s",
            format_args!("{:.0}", self.publications_per_s),
        )
        .latency("publish latency", &self.latency);
        let per = format!(
            "{:.0} publications per CPU-second",
            self.publications_per_server_cpu_s.unwrap_or(0.0)
        );
        t.cpu(
            self.server_cpu_s,
            self.server_cpu_percent,
            per,
            self.loadgen_cpu_percent,
        )
        .errors(&self.errors)
        .finish()
    }
}

/// One caller's publishing end.
#[derive(Clone)]
enum Caller {
    Http(Api),
    Grpc {
        client: CentrifugoApiClient<Channel>,
        key: Option<String>,
    },
}

impl Caller {
    /// Publishes once; the error's kind and text when it failed.
    async fn publish(&mut self, channel: &str, data: &RawValue) -> Result<(), (String, String)> {
        match self {
            Caller::Http(api) => api
                .publish(channel, data)
                .await
                .map_err(|e| (e.kind(), e.to_string())),
            Caller::Grpc { client, key } => {
                let mut request = tonic::Request::new(proto::PublishRequest {
                    channel: channel.to_string(),
                    data: data.get().as_bytes().to_vec(),
                    ..Default::default()
                });
                request.set_timeout(REPLY_TIMEOUT);
                if let Some(key) = key {
                    if let Ok(value) = format!("apikey {key}").parse() {
                        request.metadata_mut().insert("authorization", value);
                    }
                }
                match client.publish(request).await {
                    Ok(reply) => match reply.into_inner().error {
                        None => Ok(()),
                        Some(e) => Err((format!("api {}", e.code), e.message)),
                    },
                    Err(status) => Err((
                        format!("grpc {:?}", status.code()),
                        status.message().to_string(),
                    )),
                }
            }
        }
    }
}

/// Runs the scenario to completion (warm-up + duration, plus at most one
/// reply timeout).
pub async fn run(o: &Options) -> Result<ApiPublishReport, ScenarioError> {
    if o.channels == 0 || o.concurrency == 0 {
        return Err(ScenarioError::Invalid(
            "--channels and --concurrency must be at least 1".into(),
        ));
    }
    check_server_pid(o.server_pid.as_slice())?;
    let (caller, target) = match &o.via {
        Via::Http { url } => {
            crate::target::check_http_url(url)?;
            let publish_url = format!("{}/publish", url.trim_end_matches('/'));
            let api = Api::new(publish_url, o.key.clone(), REPLY_TIMEOUT)
                .map_err(|e| ScenarioError::Invalid(e.to_string()))?;
            (Caller::Http(api), url.clone())
        }
        Via::Grpc { addr } => {
            let host = addr
                .rsplit_once(':')
                .map_or(addr.as_str(), |(host, _)| host);
            crate::target::check_loopback(host)?;
            let channel = Channel::from_shared(format!("http://{addr}"))
                .map_err(|e| ScenarioError::Invalid(format!("--grpc-addr: {e}")))?
                .connect_timeout(Duration::from_secs(5))
                .connect()
                .await
                .map_err(|e| ScenarioError::Invalid(format!("cannot reach {addr}: {e}")))?;
            let client = CentrifugoApiClient::new(channel);
            let caller = Caller::Grpc {
                client,
                key: o.key.clone(),
            };
            (caller, addr.clone())
        }
    };
    let data: Arc<RawValue> = Arc::from(
        RawValue::from_string(padded_object("", o.payload)).expect("padded object is JSON"),
    );
    let window = Window::starting_now(o.warmup, o.duration);
    let progress = Arc::new(Progress::default());
    let stop = CancellationToken::new();
    let ticker = o
        .progress
        .then(|| spawn_progress(progress.clone(), "acked", window.measure_from, stop.clone()));
    let meter = tokio::spawn({
        let (progress, server_pid) = (progress.clone(), o.server_pid);
        async move {
            tokio::time::sleep_until(window.measure_from).await;
            let meter = Meter::start(server_pid.as_slice(), &progress);
            tokio::time::sleep_until(window.end).await;
            meter.stop(&progress)
        }
    });
    let mut tasks = JoinSet::new();
    for i in 0..o.concurrency {
        let channel = format!("{}-{}", o.channel_prefix, i % o.channels);
        tasks.spawn(publish_loop(
            caller.clone(),
            channel,
            data.clone(),
            window,
            progress.clone(),
        ));
    }
    let mut latency = Latency::new();
    let mut errors = ErrorCounts::default();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((l, e)) => {
                latency.merge(&l);
                errors.merge(e);
            }
            Err(e) => errors.add("panic".into(), || e.to_string()),
        }
    }
    stop.cancel();
    if let Some(t) = ticker {
        let _ = t.await;
    }
    let usage = meter.await.unwrap_or_default();
    let acked = latency.count();
    let per_cpu = usage
        .server_cpu_s
        .filter(|s| *s > 0.0)
        .map(|s| acked as f64 / s);
    Ok(ApiPublishReport {
        scenario: "api-publish",
        transport: o.via.name(),
        target,
        channel_prefix: o.channel_prefix.clone(),
        channels: o.channels,
        concurrency: o.concurrency,
        payload_bytes: data.get().len(),
        warmup_s: o.warmup.as_secs_f64(),
        duration_s: o.duration.as_secs_f64(),
        acked,
        publications_per_s: acked as f64 / o.duration.as_secs_f64().max(1e-9),
        latency: latency.summary(),
        errors,
        server_cpu_s: usage.server_cpu_s,
        server_cpu_percent: usage.server_cpu_percent,
        publications_per_server_cpu_s: per_cpu,
        loadgen_cpu_percent: usage.loadgen_cpu_percent,
    })
}

/// One caller: publish, await the reply, repeat until the window ends.
async fn publish_loop(
    mut caller: Caller,
    channel: String,
    data: Arc<RawValue>,
    window: Window,
    progress: Arc<Progress>,
) -> (Latency, ErrorCounts) {
    let mut latency = Latency::new();
    let mut errors = ErrorCounts::default();
    loop {
        let started = Instant::now();
        if started >= window.end {
            break;
        }
        match caller.publish(&channel, &data).await {
            Ok(()) => {
                let took = started.elapsed();
                progress.complete(took);
                if window.measures(started) {
                    latency.record(took);
                }
            }
            Err((kind, text)) => {
                progress.error();
                errors.add(kind, || text);
                // A failing server answers at once: do not spin on it.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    (latency, errors)
}
