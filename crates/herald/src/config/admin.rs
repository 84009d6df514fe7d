//! `admin`: the web UI for operators and the API behind it (Centrifugo's
//! keys, plus Herald's `login_rate_limit` and `session_ttl`).

use serde::{Deserialize, Serialize};

use super::{Config, ConfigError, Dur, Secret};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Admin {
    pub enabled: bool,
    /// Asked at login; compared in constant time.
    pub password: Secret,
    /// Signs the session a login hands out.
    pub secret: Secret,
    /// No login at all: for a UI reachable only from a trusted network.
    pub insecure: bool,
    /// Where the UI and its API are served.
    pub handler_prefix: String,
    /// Serve on the public port even when `http_server.internal_port`
    /// gives the operations endpoints a listener of their own.
    pub external: bool,
    /// Herald: login attempts a second from one address (each may retry
    /// after that); 0 for no limit.
    pub login_rate_limit: u32,
    /// Herald: how long a login lasts.
    pub session_ttl: Dur,
}

impl Default for Admin {
    fn default() -> Self {
        Self {
            enabled: false,
            password: Secret::default(),
            secret: Secret::default(),
            insecure: false,
            handler_prefix: "/admin".into(),
            external: false,
            login_rate_limit: 1,
            session_ttl: Dur::secs(12 * 3600),
        }
    }
}

impl Admin {
    /// The prefix without a trailing slash (empty serves at the root).
    pub fn prefix(&self) -> &str {
        self.handler_prefix.trim_end_matches('/')
    }
}

/// The longest `session_ttl` taken.
const MAX_SESSION: u64 = 366 * 24 * 3600;

pub fn validate(c: &Config, warnings: &mut Vec<String>) -> Result<(), ConfigError> {
    let a = &c.admin;
    if !a.enabled {
        return Ok(());
    }
    // At the root of the public listener, the UI's API would take the
    // server API's paths.
    let public = a.external || c.http_server.internal().is_none();
    let api = c.http_api.handler_prefix.trim_end_matches('/');
    if public && !c.http_api.disabled && format!("{}/api", a.prefix()) == api {
        return Err(ConfigError::invalid(
            "admin.handler_prefix",
            format!("its API would take the server API's paths ({api}, http_api.handler_prefix): choose another prefix, such as /admin"),
        ));
    }
    if public && a.insecure && !c.dev {
        warnings.push(
            "admin.insecure serves the admin UI without a login on the public listener: set http_server.internal_port (and internal_address 127.0.0.1) to keep it off the network".into(),
        );
    }
    if !a.handler_prefix.is_empty() && !a.handler_prefix.starts_with('/') {
        return Err(ConfigError::invalid(
            "admin.handler_prefix",
            "a path starting with /, such as /admin",
        ));
    }
    if a.insecure {
        return Ok(());
    }
    for (key, value) in [("admin.password", &a.password), ("admin.secret", &a.secret)] {
        if value.expose().is_empty() {
            return Err(ConfigError::invalid(
                key,
                "must be set when admin.enabled (or set admin.insecure for a UI on a trusted network only)",
            ));
        }
    }
    if a.session_ttl.is_zero() || a.session_ttl.0.as_secs() > MAX_SESSION {
        return Err(ConfigError::invalid(
            "admin.session_ttl",
            "from 1s to a year (8784h)",
        ));
    }
    Ok(())
}
