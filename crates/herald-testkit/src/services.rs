//! The services tests may use (PostgreSQL, Redis, NATS), named by
//! `HERALD_TEST_*_URL` variables, and a PostgreSQL database per test.

use std::process::Command;

use crate::unique;

/// With `HERALD_TEST_REQUIRE_SERVICES` set (as CI does), a missing service
/// fails the test instead of skipping it.
pub fn required() -> bool {
    std::env::var_os("HERALD_TEST_REQUIRE_SERVICES").is_some()
}

/// The URL in `var`, or `None` with a note that the test is skipped.
pub fn env_url(var: &str) -> Option<String> {
    let url = std::env::var(var).ok();
    if url.is_none() {
        assert!(!required(), "{var} is not set");
        eprintln!("skipped: {var} not set");
    }
    url
}

/// A PostgreSQL database of the test's own on the server at an admin URL,
/// dropped (with its connections) when this is dropped. Made and dropped
/// with `psql`, so that it works from sync and async tests alike.
pub struct TestDatabase {
    admin: String,
    pub name: String,
    /// The URL to connect to it with.
    pub url: String,
}

impl TestDatabase {
    /// A fresh database on the server of `HERALD_TEST_POSTGRES_URL`, or
    /// `None` when it is not set (see [`env_url`]).
    pub fn create() -> Option<TestDatabase> {
        let admin = env_url("HERALD_TEST_POSTGRES_URL")?;
        Some(Self::create_at(&admin))
    }

    pub fn create_at(admin: &str) -> TestDatabase {
        let name = unique("herald_test_");
        psql(admin, &format!("CREATE DATABASE {name}"));
        TestDatabase {
            admin: admin.to_string(),
            url: with_database(admin, &name),
            name,
        }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        let _ = Command::new("psql")
            .args([self.admin.as_str(), "-qc", &sql])
            .status();
    }
}

fn psql(url: &str, sql: &str) {
    let ok = Command::new("psql")
        .args([url, "-qc", sql])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "psql could not run {sql:?} at {url}");
}

/// `url` with its database path replaced by `name` (query kept).
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let authority_end = base.find("://").map_or(0, |i| i + 3);
    let base = match base[authority_end..].find('/') {
        Some(slash) => &base[..authority_end + slash],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{name}?{q}"),
        None => format!("{base}/{name}"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn database_names_replace_the_path() {
        let w = super::with_database;
        assert_eq!(w("postgres://h:1/postgres", "x"), "postgres://h:1/x");
        assert_eq!(w("postgres://h:1", "x"), "postgres://h:1/x");
        assert_eq!(
            w("postgres://u@h/db?sslmode=off", "x"),
            "postgres://u@h/x?sslmode=off"
        );
    }
}
