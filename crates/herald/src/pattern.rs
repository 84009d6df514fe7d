//! Glob patterns where `*` stands for any run of characters, used for
//! allowed origins and the `channels` API filter.

use regex::Regex;

/// Compiles a glob; `case_insensitive` for origins.
pub fn glob(pattern: &str, case_insensitive: bool) -> Option<Regex> {
    let flags = if case_insensitive { "(?i)" } else { "" };
    Regex::new(&format!(
        "^{flags}{}$",
        regex::escape(pattern).replace(r"\*", ".*")
    ))
    .ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn globs() {
        let g = super::glob("chat:*", false).unwrap();
        assert!(g.is_match("chat:room") && g.is_match("chat:") && !g.is_match("news:chat:x"));
        assert!(super::glob("a.b", false).unwrap().is_match("a.b"));
        assert!(!super::glob("a.b", false).unwrap().is_match("axb"));
    }
}
