//! The server HTTP API (Centrifugo v6 style `POST /api/<method>`), as far as
//! the scenarios need it: publish.

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
        Ok(Self {
            http,
            base: publish_url,
            key,
        })
    }

    /// Publishes `data` into `channel`; succeeds on HTTP 200 without an
    /// `error` member.
    pub async fn publish(&self, channel: &str, data: &RawValue) -> Result<(), ApiError> {
        let body = serde_json::to_vec(&PublishBody { channel, data })
            .map_err(|e| ApiError::Http(e.to_string()))?;
        let mut req = self
            .http
            .post(&self.base)
            .header("Content-Type", "application/json")
            .body(body);
        if let Some(key) = &self.key {
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
