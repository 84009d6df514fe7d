//! The server HTTP API (Centrifugo v6 style `POST /api/<method>`), as far as
//! the scenarios need it: publish. A publish URL ending in `/events` is a
//! Pusher HTTP API (`/apps/<id>/events`): the key is then `KEY:SECRET`,
//! each request is signed, and the data goes as the event's string.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// Why an API call failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("HTTP request failed: {0}")]
    Http(String),
    #[error("HTTP status {0}: {1:.200}")]
    Status(u16, String),
    #[error("error reply {code}: {message}")]
    Reply { code: u32, message: String },
}

impl ApiError {
    /// A short label to count errors by in reports.
    pub fn kind(&self) -> String {
        match self {
            ApiError::Http(_) => "http".into(),
            ApiError::Status(s, _) => format!("status {s}"),
            ApiError::Reply { code, .. } => format!("api {code}"),
        }
    }
}

#[derive(Serialize)]
struct PublishBody<'a> {
    channel: &'a str,
    data: &'a RawValue,
}

#[derive(Deserialize)]
struct ReplyBody {
    error: Option<ErrorBody>,
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    code: u32,
    #[serde(default)]
    message: String,
}

/// A keep-alive HTTP client for one server's API.
#[derive(Clone)]
pub struct Api {
    http: reqwest::Client,
    base: String,
    key: Option<String>,
    /// A Pusher app's key and secret, and the path signed.
    pusher: Option<(String, String, String)>,
}

#[derive(Serialize)]
struct PusherEvent<'a> {
    name: &'a str,
    channel: &'a str,
    data: &'a str,
}

impl Api {
    /// `publish_url` is the full URL of the publish method; `timeout`
    /// bounds each call.
    pub fn new(
        publish_url: String,
        key: Option<String>,
        timeout: Duration,
    ) -> Result<Self, ApiError> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| ApiError::Http(e.to_string()))?;
        let pusher = if publish_url.ends_with("/events") {
            let (app_key, secret) =
                key.as_deref()
                    .and_then(|k| k.split_once(':'))
                    .ok_or_else(|| {
                        ApiError::Http("a Pusher HTTP API needs --api-key KEY:SECRET".into())
                    })?;
            let path = reqwest::Url::parse(&publish_url)
                .map_err(|e| ApiError::Http(e.to_string()))?
                .path()
                .to_string();
            Some((app_key.to_string(), secret.to_string(), path))
        } else {
            None
        };
        Ok(Self {
            http,
            base: publish_url,
            key,
            pusher,
        })
    }

    /// The URL and body of a Pusher event, signed now.
    fn pusher_request(
        &self,
        (key, secret, path): &(String, String, String),
        channel: &str,
        data: &RawValue,
    ) -> Result<(String, Vec<u8>), ApiError> {
        let body = serde_json::to_vec(&PusherEvent {
            name: "bench",
            channel,
            data: data.get(),
        })
        .map_err(|e| ApiError::Http(e.to_string()))?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let md5 = herald::signing::md5_hex(&body);
        let query = format!("auth_key={key}&auth_timestamp={now}&auth_version=1.0&body_md5={md5}");
        let signature = herald::signing::hmac_sha256_hex(
            secret.as_bytes(),
            format!("POST\n{path}\n{query}").as_bytes(),
        );
        Ok((
            format!("{}?{query}&auth_signature={signature}", self.base),
            body,
        ))
    }

    /// Publishes `data` into `channel`; succeeds on HTTP 200 without an
    /// `error` member.
    pub async fn publish(&self, channel: &str, data: &RawValue) -> Result<(), ApiError> {
        let (url, body) = match &self.pusher {
            Some(app) => self.pusher_request(app, channel, data)?,
            None => (
                self.base.clone(),
                serde_json::to_vec(&PublishBody { channel, data })
                    .map_err(|e| ApiError::Http(e.to_string()))?,
            ),
        };
        let mut req = self
            .http
            .post(url)
            .header("Content-Type", "application/json")
            .body(body);
        if let (Some(key), None) = (&self.key, &self.pusher) {
            req = req.header("X-API-Key", key);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| ApiError::Http(e.to_string()))?;
        let status = resp.status().as_u16();
        let text = resp
            .text()
            .await
            .map_err(|e| ApiError::Http(e.to_string()))?;
        if status != 200 {
            return Err(ApiError::Status(status, text));
        }
        match serde_json::from_str::<ReplyBody>(&text) {
            Ok(ReplyBody { error: Some(e) }) => Err(ApiError::Reply {
                code: e.code,
                message: e.message,
            }),
            Ok(_) => Ok(()),
            Err(_) => Err(ApiError::Status(status, text)),
        }
    }
}
