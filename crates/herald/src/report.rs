//! How an error is written in logs and messages: with its causes, each said
//! once (some libraries repeat their cause in their own message). Log
//! fields use [`Chain`] so that every log format — JSON included, which
//! would print only the outermost message — shows why something failed.

use std::error::Error;
use std::fmt;

/// Displays an error and its sources as `error: cause: cause`.
pub struct Chain<'a>(pub &'a (dyn Error + 'a));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut said = String::new();
        let mut next: Option<&dyn Error> = Some(self.0);
        while let Some(e) = next {
            let text = e.to_string();
            if !said.contains(&text) {
                if !said.is_empty() {
                    said.push_str(": ");
                }
                said.push_str(&text);
            }
            next = e.source();
        }
        f.write_str(&said)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] Middle);

    #[derive(Debug, thiserror::Error)]
    #[error("middle failed: {0}")]
    struct Middle(#[source] std::io::Error);

    #[test]
    fn causes_are_said_once() {
        let e = Outer(Middle(std::io::Error::other("disk gone")));
        assert_eq!(
            Chain(&e).to_string(),
            "outer: middle failed: disk gone",
            "a cause already in its parent's message is not repeated"
        );
    }
}
