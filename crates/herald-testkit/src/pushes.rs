//! A streamed HTTP response read one message at a time: the
//! unidirectional HTTP transports' pushes and the admin UI's live view.

use serde_json::Value;

use crate::WAIT;

pub struct Pushes {
    response: reqwest::Response,
    buf: Vec<u8>,
    /// What ends one message: a newline, or an empty line for SSE.
    end: &'static [u8],
}

impl Pushes {
    /// Sends `request`, which must answer 200, and reads its body as
    /// messages ending with `end`.
    pub async fn open(request: reqwest::RequestBuilder, end: &'static [u8]) -> Self {
        let response = request.send().await.expect("reachable");
        assert_eq!(response.status().as_u16(), 200, "{:?}", response.headers());
        Self {
            response,
            buf: Vec::new(),
            end,
        }
    }

    /// The response's headers.
    pub fn headers(&self) -> &reqwest::header::HeaderMap {
        self.response.headers()
    }

    /// The next message as JSON, `data: ` taken off for SSE; `None` at
    /// the end.
    pub async fn next(&mut self) -> Option<Value> {
        loop {
            if let Some(at) = self.buf.windows(self.end.len()).position(|w| w == self.end) {
                let message: Vec<u8> = self.buf.drain(..at + self.end.len()).collect();
                let text = std::str::from_utf8(&message[..at]).unwrap();
                let json = text.strip_prefix("data: ").unwrap_or(text);
                return Some(
                    serde_json::from_str(json).unwrap_or_else(|e| panic!("{text:?}: {e}")),
                );
            }
            let chunk = tokio::time::timeout(WAIT, self.response.chunk())
                .await
                .expect("a chunk in time")
                .expect("readable");
            self.buf.extend_from_slice(&chunk?);
        }
    }
}
