//! Channel names and the rules attached to them: which namespace a channel
//! belongs to, whether it is private (`$`) or user-limited (`name#u1,u2`), and
//! who may subscribe to or publish into it.

pub mod map;

use std::collections::HashMap;

use herald_protocol::ProtocolError;
use regex::Regex;

use crate::config::{ChannelConfig, ChannelOptions, HistoryStorage};
use crate::store::StreamOptions;

/// Channel rules compiled from the `channel` config section.
#[derive(Debug)]
pub struct ChannelRules {
    cfg: ChannelConfig,
    namespaces: HashMap<String, usize>,
    regexes: Vec<Option<Regex>>,
    without_regex: Option<Regex>,
    /// `client.insecure`: every channel open to everyone.
    insecure: bool,
}

/// What a channel name means under the rules.
#[derive(Debug)]
pub struct Resolved<'a> {
    pub options: &'a ChannelOptions,
    pub private: bool,
    /// The users listed after the user boundary, when the namespace allows
    /// user-limited channels and the name has them.
    pub allowed_users: Option<Vec<&'a str>>,
}

/// Who is asking, for permission checks.
pub struct Asker<'a> {
    pub user: &'a str,
    pub subscribed: bool,
}

impl ChannelRules {
    pub fn new(cfg: &ChannelConfig, insecure: bool) -> Self {
        let compile = |o: &ChannelOptions| {
            (!o.channel_regex.is_empty())
                .then(|| Regex::new(&o.channel_regex).ok())
                .flatten()
        };
        Self {
            namespaces: cfg
                .namespaces
                .iter()
                .enumerate()
                .map(|(i, n)| (n.name.clone(), i))
                .collect(),
            regexes: cfg.namespaces.iter().map(|n| compile(&n.options)).collect(),
            without_regex: compile(&cfg.without_namespace),
            cfg: cfg.clone(),
            insecure,
        }
    }

    /// Finds the options for `channel`: error 107 for an empty or too long
    /// name or one with a control character, 102 for an unknown namespace
    /// or a name the namespace's regex refuses. Every path that takes a
    /// channel name (client commands, server API, tokens) comes here first.
    pub fn resolve<'a>(&'a self, channel: &'a str) -> Result<Resolved<'a>, ProtocolError> {
        if channel.is_empty() || channel.len() > self.cfg.max_length {
            return Err(ProtocolError::BAD_REQUEST);
        }
        if channel.chars().any(char::is_control) {
            return Err(ProtocolError::INVALID_CHANNEL);
        }
        let private = channel.starts_with(self.cfg.private_prefix.as_str())
            && !self.cfg.private_prefix.is_empty();
        let name = if private {
            &channel[self.cfg.private_prefix.len()..]
        } else {
            channel
        };
        let (options, regex, rest) = match name.split_once(self.cfg.namespace_boundary.as_str()) {
            Some((ns, rest)) => {
                let i = *self
                    .namespaces
                    .get(ns)
                    .ok_or(ProtocolError::UNKNOWN_CHANNEL)?;
                (
                    &self.cfg.namespaces[i].options,
                    self.regexes[i].as_ref(),
                    rest,
                )
            }
            None => (
                &self.cfg.without_namespace,
                self.without_regex.as_ref(),
                name,
            ),
        };
        if let Some(re) = regex {
            if !re.is_match(rest) {
                return Err(ProtocolError::UNKNOWN_CHANNEL);
            }
        }
        let allowed_users = if options.allow_user_limited_channels {
            rest.rsplit_once(self.cfg.user_boundary.as_str())
                .map(|(_, users)| {
                    users
                        .split(self.cfg.user_separator.as_str())
                        .filter(|u| !u.is_empty())
                        .collect()
                })
        } else {
            None
        };
        Ok(Resolved {
            options,
            private,
            allowed_users,
        })
    }

    /// Why [`ChannelRules::resolve`] refused `channel` with `e`, in words
    /// that name the setting at fault (for the server API's messages).
    pub fn explain(&self, channel: &str, e: &ProtocolError) -> Option<String> {
        if e.code == ProtocolError::BAD_REQUEST.code && channel.is_empty() {
            return Some("channel is required".into());
        }
        if e.code == ProtocolError::BAD_REQUEST.code && channel.len() > self.cfg.max_length {
            return Some(format!(
                "channel is longer than channel.max_length ({} bytes)",
                self.cfg.max_length
            ));
        }
        if e.code != ProtocolError::UNKNOWN_CHANNEL.code {
            return None;
        }
        let name = channel
            .strip_prefix(self.cfg.private_prefix.as_str())
            .filter(|_| !self.cfg.private_prefix.is_empty())
            .unwrap_or(channel);
        let (ns, _) = name.split_once(self.cfg.namespace_boundary.as_str())?;
        Some(if self.namespaces.contains_key(ns) {
            format!("unknown channel: the name does not match namespace {ns:?}'s channel_regex")
        } else {
            format!("unknown channel: no namespace {ns:?} in channel.namespaces")
        })
    }

    /// Stream retention for a namespace, or `None` when it keeps no history:
    /// memory history needs both size and TTL, durable history is on with
    /// any values (zero meaning unbounded).
    pub fn stream_options(&self, o: &ChannelOptions) -> Option<StreamOptions> {
        let durable = o.history_storage == HistoryStorage::Durable;
        if !durable && (o.history_size == 0 || o.history_ttl.is_zero()) {
            return None;
        }
        let meta_ttl = if o.history_meta_ttl.is_zero() {
            self.cfg.history_meta_ttl
        } else {
            o.history_meta_ttl
        };
        Some(StreamOptions {
            size: o.history_size,
            ttl: o.history_ttl.0,
            meta_ttl: meta_ttl.0,
        })
    }

    /// Retention of `channel`'s stream (zero values when it has none).
    pub fn stream_options_for(&self, channel: &str) -> StreamOptions {
        self.resolve(channel)
            .ok()
            .and_then(|r| self.stream_options(r.options))
            .unwrap_or_default()
    }

    /// Does the namespace's subscribe proxy decide who subscribes? Not to
    /// private channels (they need a token) nor user-limited ones (their
    /// name decides).
    pub fn subscribe_proxied(&self, r: &Resolved<'_>) -> bool {
        r.options.subscribe_proxy_enabled && !r.private && r.allowed_users.is_none()
    }

    /// May `who` subscribe without a subscription token?
    pub fn can_subscribe(&self, r: &Resolved<'_>, who: &Asker<'_>) -> bool {
        if self.insecure {
            return true;
        }
        if r.private {
            return false;
        }
        if let Some(users) = &r.allowed_users {
            return !who.user.is_empty() && users.contains(&who.user);
        }
        let o = r.options;
        if who.user.is_empty() {
            o.allow_subscribe_for_anonymous && o.allow_subscribe_for_client
        } else {
            o.allow_subscribe_for_client
        }
    }

    /// May `who` read the channel's presence?
    pub fn can_read_presence(&self, r: &Resolved<'_>, who: &Asker<'_>) -> bool {
        let o = r.options;
        self.allowed(
            who,
            o.allow_presence_for_client,
            o.allow_presence_for_subscriber,
            o.allow_presence_for_anonymous,
        )
    }

    /// May `who` read the channel's history?
    pub fn can_read_history(&self, r: &Resolved<'_>, who: &Asker<'_>) -> bool {
        let o = r.options;
        self.allowed(
            who,
            o.allow_history_for_client,
            o.allow_history_for_subscriber,
            o.allow_history_for_anonymous,
        )
    }

    fn allowed(
        &self,
        who: &Asker<'_>,
        for_client: bool,
        for_subscriber: bool,
        for_anonymous: bool,
    ) -> bool {
        if self.insecure {
            return true;
        }
        if who.user.is_empty() && !for_anonymous {
            return false;
        }
        for_client || (for_subscriber && who.subscribed)
    }

    /// May `who` publish from the client side?
    pub fn can_publish(&self, r: &Resolved<'_>, who: &Asker<'_>) -> bool {
        let o = r.options;
        self.allowed(
            who,
            o.allow_publish_for_client,
            o.allow_publish_for_subscriber,
            o.allow_publish_for_anonymous,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Namespace;

    fn rules() -> ChannelRules {
        let mut cfg = ChannelConfig {
            max_length: 20,
            ..Default::default()
        };
        cfg.without_namespace.allow_subscribe_for_client = true;
        let ns = |name: &str, f: fn(&mut ChannelOptions)| {
            let mut n = Namespace {
                name: name.into(),
                ..Default::default()
            };
            f(&mut n.options);
            n
        };
        cfg.namespaces = vec![
            ns("chat", |o| {
                o.allow_subscribe_for_client = true;
                o.allow_publish_for_subscriber = true;
            }),
            ns("dm", |o| o.allow_user_limited_channels = true),
            ns("anon", |o| {
                o.allow_subscribe_for_client = true;
                o.allow_subscribe_for_anonymous = true;
                o.allow_publish_for_client = true;
                o.allow_publish_for_anonymous = true;
            }),
            ns("rx", |o| {
                o.allow_subscribe_for_client = true;
                o.channel_regex = "^[a-z]+$".into();
            }),
        ];
        ChannelRules::new(&cfg, false)
    }

    fn user(u: &str) -> Asker<'_> {
        Asker {
            user: u,
            subscribed: false,
        }
    }

    #[test]
    fn resolution_errors() {
        let r = rules();
        assert_eq!(r.resolve("").unwrap_err().code, 107);
        assert_eq!(r.resolve("x".repeat(21).as_str()).unwrap_err().code, 107);
        assert!(r.resolve("x".repeat(20).as_str()).is_ok());
        assert_eq!(r.resolve("nope:x").unwrap_err().code, 102);
        for bad in [
            "chat:a\u{0}b",
            "chat:a\nb",
            "chat:\u{7f}",
            "a\tb",
            "chat:\u{85}",
        ] {
            assert_eq!(
                r.resolve(bad).unwrap_err(),
                ProtocolError::INVALID_CHANNEL,
                "{bad:?}"
            );
        }
        assert!(
            r.resolve("chat:é ü 日本").is_ok(),
            "other characters are fine"
        );
        assert_eq!(r.resolve("rx:ABC").unwrap_err().code, 102);
        assert!(r.resolve("rx:abc").is_ok());
    }

    #[test]
    fn subscribe_permissions() {
        let r = rules();
        let can = |ch: &str, u: &str| r.can_subscribe(&r.resolve(ch).unwrap(), &user(u));
        assert!(can("plain", "1"));
        assert!(
            !can("plain", ""),
            "anonymous needs allow_subscribe_for_anonymous"
        );
        assert!(can("chat:room", "1"));
        assert!(!can("$chat:room", "1"), "private channels need a token");
        assert!(can("dm:x#1,2", "2"));
        assert!(!can("dm:x#1,2", "3"));
        assert!(!can("dm:x", "1"));
        assert!(can("anon:x", ""));
    }

    #[test]
    fn publish_permissions() {
        let r = rules();
        let res = r.resolve("chat:room").unwrap();
        assert!(!r.can_publish(&res, &user("1")));
        assert!(r.can_publish(
            &res,
            &Asker {
                user: "1",
                subscribed: true
            }
        ));
        assert!(!r.can_publish(&r.resolve("plain").unwrap(), &user("1")));
        assert!(r.can_publish(&r.resolve("anon:x").unwrap(), &user("")));
        let open = ChannelRules::new(&ChannelConfig::default(), true);
        assert!(open.can_publish(&open.resolve("any").unwrap(), &user("")));
    }
}
