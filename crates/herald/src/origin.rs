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

/// Whether `pattern` can ever match a browser's Origin header, which is
/// a scheme and a host (and port), never a path: why not, if it cannot.
pub fn check_pattern(pattern: &str) -> Result<(), &'static str> {
    // A pattern's `*` may stand for a scheme, and `null` is the Origin of
    // pages from files and sandboxes: both can match.
    if pattern.contains('*') || pattern == "null" {
        return Ok(());
    }
    let Some((scheme, host)) = pattern.split_once("://") else {
        return Err("an origin starts with its scheme, such as https://app.example.com");
    };
    if scheme.is_empty() || host.is_empty() {
        return Err("an origin is a scheme and a host, such as https://app.example.com");
    }
    if host.contains('/') {
        return Err("an origin has no path, not even a trailing slash");
    }
    Ok(())
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

    #[test]
    fn patterns_that_can_never_match_are_told() {
        for good in [
            "*",
            "https://app.example.com",
            "http://localhost:3000",
            "https://*.example.com",
            "*.example.com",
            "null",
        ] {
            assert_eq!(check_pattern(good), Ok(()), "{good}");
        }
        for bad in [
            "localhost:3000",
            "http://localhost:3000/",
            "https://a.com/app",
            "://x",
        ] {
            assert!(check_pattern(bad).is_err(), "{bad}");
        }
    }
}
