//! HTTP proxies: each call a JSON POST to the endpoint; any status but
//! 200 is an error. One pooled client per proxy keeps connections alive
//! and reuses them (HTTPS through rustls).

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use hyper::{HeaderMap, Method, Uri};

use super::{Answer, ProxyError, Request};
use crate::client_tls::HttpClient;
use crate::config::proxy::Proxy;

pub struct Caller {
    client: HttpClient,
    uri: Uri,
    /// `http.static_headers`, checked once.
    fixed: HeaderMap,
}

impl Caller {
    pub fn open(config: &Proxy) -> Result<Self, String> {
        let uri: Uri = config.endpoint.parse().map_err(|e| format!("{e}"))?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
            return Err("use an http://, https:// or grpc:// endpoint".into());
        }
        let client = crate::client_tls::http_client()?;
        let mut fixed = HeaderMap::new();
        for (name, value) in &config.http.static_headers {
            let bad = |e: &dyn std::fmt::Display| format!("static header {name}: {e}");
            let n = HeaderName::try_from(name.as_str()).map_err(|e| bad(&e))?;
            let v = HeaderValue::try_from(value.as_str()).map_err(|e| bad(&e))?;
            fixed.insert(n, v);
        }
        Ok(Self { client, uri, fixed })
    }

    pub async fn call<Req: Request, Resp: Answer>(
        &self,
        config: &Proxy,
        request: &Req,
        headers: &[(String, String)],
    ) -> Result<Resp, ProxyError> {
        let body = serde_json::to_vec(request)
            .map_err(|e| ProxyError::Garbage(format!("request: {e}")))?;
        let mut builder = hyper::Request::builder()
            .method(Method::POST)
            .uri(self.uri.clone());
        let all = builder.headers_mut().expect("a fresh request");
        all.extend(self.fixed.clone());
        for (name, value) in headers {
            // A client's header that cannot be one is not passed on.
            if let (Ok(n), Ok(v)) = (
                HeaderName::try_from(name.as_str()),
                HeaderValue::try_from(value.as_str()),
            ) {
                all.insert(n, v);
            }
        }
        all.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let request = builder
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| ProxyError::Garbage(format!("request: {e}")))?;
        let response = self
            .client
            .request(request)
            .await
            .map_err(|e| ProxyError::Unreachable(crate::report::Chain(&e).to_string()))?;
        if response.status() != hyper::StatusCode::OK {
            return Err(ProxyError::Status(response.status().as_u16()));
        }
        let limit = config.max_response_size;
        let answer = Limited::new(response.into_body(), limit)
            .collect()
            .await
            .map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    ProxyError::TooLarge(limit)
                } else {
                    ProxyError::Unreachable(e.to_string())
                }
            })?
            .to_bytes();
        serde_json::from_slice(&answer).map_err(|e| ProxyError::Garbage(e.to_string()))
    }
}
