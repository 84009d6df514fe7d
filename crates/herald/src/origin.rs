//! Which browser origins may open connections (`client.allowed_origins`).
//! Requests without an Origin header (servers, native apps) always pass; with
//! no list configured only same-host origins pass; `*` allows every origin and
//! a `*` inside a pattern stands for any run of characters.

use axum::http::HeaderMap;
use regex::Regex;

#[derive(Debug)]
pub struct OriginPolicy {
    any: bool,
    patterns: Vec<Regex>,
}

impl OriginPolicy {
    pub fn new(allowed: &[String]) -> Self {
        let any = allowed.iter().any(|p| p == "*");
        let patterns = allowed
            .iter()
            .filter_map(|p| crate::pattern::glob(p, true))
            .collect();
        Self { any, patterns }
    }

    pub fn allows(&self, headers: &HeaderMap) -> bool {
        let Some(origin) = headers.get("origin").and_then(|v| v.to_str().ok()) else {
            return true;
        };
        if self.any {
            return true;
        }
        if self.patterns.is_empty() {
            let host = headers
                .get("host")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            let origin_host = origin.split_once("://").map(|(_, h)| h).unwrap_or(origin);
            return !host.is_empty() && origin_host.eq_ignore_ascii_case(host);
        }
        self.patterns.iter().any(|re| re.is_match(origin))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(origin: Option<&str>, host: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("host", host.parse().unwrap());
        if let Some(o) = origin {
            h.insert("origin", o.parse().unwrap());
        }
        h
    }

    #[test]
    fn origin_rules() {
        let none = OriginPolicy::new(&[]);
        assert!(none.allows(&headers(None, "a:8000")));
        assert!(none.allows(&headers(Some("http://a:8000"), "a:8000")));
        assert!(!none.allows(&headers(Some("http://evil"), "a:8000")));
        let any = OriginPolicy::new(&["*".into()]);
        assert!(any.allows(&headers(Some("http://evil"), "a")));
        let some = OriginPolicy::new(&[
            "https://*.example.com".into(),
            "http://localhost:3000".into(),
        ]);
        assert!(some.allows(&headers(Some("https://app.example.com"), "x")));
        assert!(some.allows(&headers(Some("HTTP://LOCALHOST:3000"), "x")));
        assert!(!some.allows(&headers(Some("https://example.com.evil.org"), "x")));
        assert!(!some.allows(&headers(Some("http://localhost:3001"), "x")));
    }
}
