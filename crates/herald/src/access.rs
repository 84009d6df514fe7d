//! User blocking and token revocation: who may no longer connect, and which
//! tokens no longer count. Every node keeps the rules in memory, so a check
//! (at connect, refresh and subscribe) never leaves the process; a change
//! made through the server API is applied here, sent to the other nodes as a
//! control message, and — for the kinds configured with `storage_type:
//! database` — written to durable storage first (and by every node that
//! hears of it, into its own storage when that is a file of its own), from
//! which every node loads the rules at start and again every
//! [`RELOAD_EVERY`] (so a node that missed a message catches up and checks
//! the connections the rules it learnt concern). Rules end at their
//! `expire_at`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use herald_protocol::Disconnect;
use parking_lot::RwLock;

use crate::auth::TokenId;
use crate::config::AccessConfig;
use crate::store::{AccessRules, StoreError};
use crate::wire::control::AccessChange;

/// How often persisted rules are read again.
pub const RELOAD_EVERY: Duration = Duration::from_secs(10);

/// Why a connection may not stay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// The user is blocked.
    Blocked,
    /// The connection's token was revoked.
    Revoked,
}

impl Denied {
    /// How the connection closes.
    pub fn disconnect(self) -> Disconnect {
        match self {
            Self::Blocked => Disconnect::blocked(),
            Self::Revoked => Disconnect::token_revoked(),
        }
    }
}

/// The rules in force. An `expire_at` of 0 never ends.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Rules {
    /// User → expire_at.
    blocked: HashMap<String, i64>,
    /// Token id (`jti`) → expire_at.
    revoked: HashMap<String, i64>,
    /// (user, channel) → (issued_before, expire_at); channel "" is the
    /// user's connection tokens.
    invalidated: HashMap<(String, String), (i64, i64)>,
}

fn alive(expire_at: i64, now: i64) -> bool {
    expire_at == 0 || expire_at > now
}

impl Rules {
    fn apply(&mut self, change: &AccessChange) {
        match change {
            AccessChange::Block { user, expire_at } => {
                self.blocked.insert(user.clone(), *expire_at);
            }
            AccessChange::Unblock { user } => {
                self.blocked.remove(user);
            }
            AccessChange::RevokeToken { uid, expire_at } => {
                self.revoked.insert(uid.clone(), *expire_at);
            }
            AccessChange::InvalidateUserTokens {
                user,
                channel,
                issued_before,
                expire_at,
            } => {
                self.invalidated.insert(
                    (user.clone(), channel.clone()),
                    (*issued_before, *expire_at),
                );
            }
        }
    }

    fn sweep(&mut self, now: i64) {
        self.blocked.retain(|_, e| alive(*e, now));
        self.revoked.retain(|_, e| alive(*e, now));
        self.invalidated.retain(|_, (_, e)| alive(*e, now));
    }

    fn is_empty(&self) -> bool {
        self.blocked.is_empty() && self.revoked.is_empty() && self.invalidated.is_empty()
    }

    /// The rules here that `before` did not have (or had otherwise), as the
    /// changes that make them.
    fn added_since(&self, before: &Rules) -> Vec<AccessChange> {
        let mut out = Vec::new();
        for (user, e) in &self.blocked {
            if before.blocked.get(user) != Some(e) {
                out.push(AccessChange::Block {
                    user: user.clone(),
                    expire_at: *e,
                });
            }
        }
        for (uid, e) in &self.revoked {
            if before.revoked.get(uid) != Some(e) {
                out.push(AccessChange::RevokeToken {
                    uid: uid.clone(),
                    expire_at: *e,
                });
            }
        }
        for ((user, channel), rule) in &self.invalidated {
            if before.invalidated.get(&(user.clone(), channel.clone())) != Some(rule) {
                out.push(AccessChange::InvalidateUserTokens {
                    user: user.clone(),
                    channel: channel.clone(),
                    issued_before: rule.0,
                    expire_at: rule.1,
                });
            }
        }
        out
    }

    /// Whether a token of `user` counts no more: its id revoked, or issued
    /// before the user's tokens (of `channel`, "" for connection tokens)
    /// were invalidated. A token without `iat` is never issued before.
    fn token_revoked(&self, user: &str, channel: &str, id: &TokenId, now: i64) -> bool {
        if let Some(jti) = &id.jti {
            if self.revoked.get(jti).is_some_and(|e| alive(*e, now)) {
                return true;
            }
        }
        let Some(iat) = id.iat else {
            return false;
        };
        self.invalidated
            .get(&(user.to_string(), channel.to_string()))
            .is_some_and(|(before, e)| alive(*e, now) && iat < *before)
    }
}

/// The node's blocking and revocation rules.
pub struct Access {
    rules: RwLock<Rules>,
    /// Changes applied so far: a reload that saw changes arrive while it
    /// read storage leaves the rules as they are (the next one catches up).
    generation: AtomicU64,
    /// Where rules of the persisted kinds are kept.
    store: Option<Arc<dyn AccessRules>>,
    config: AccessConfig,
}

/// Why a change could not be made.
#[derive(Debug, thiserror::Error)]
#[error("access rule not saved")]
pub struct SaveError(#[source] pub StoreError);

impl Access {
    /// Rules in memory only.
    pub fn in_memory() -> Self {
        Self {
            rules: RwLock::default(),
            generation: AtomicU64::new(0),
            store: None,
            config: AccessConfig::default(),
        }
    }

    /// Rules of the kinds `config` persists kept in `store`, read from it
    /// now.
    pub async fn persisted(
        config: AccessConfig,
        store: Arc<dyn AccessRules>,
    ) -> Result<Self, StoreError> {
        let access = Self {
            rules: RwLock::default(),
            generation: AtomicU64::new(0),
            store: Some(store),
            config,
        };
        access.reload().await?;
        Ok(access)
    }

    /// Whether some kind of rule is kept in durable storage.
    pub fn is_persisted(&self) -> bool {
        self.store.is_some()
    }

    /// Replaces the persisted kinds' rules with what storage holds now;
    /// returns the rules that are new to this node (connections they
    /// concern must be checked).
    pub async fn reload(&self) -> Result<Vec<AccessChange>, StoreError> {
        let Some(store) = &self.store else {
            return Ok(Vec::new());
        };
        let seen = self.generation.load(Ordering::Acquire);
        let now = crate::auth::now_unix();
        let stored = store.load(now).await?;
        let mut fresh = Rules::default();
        for change in &stored {
            fresh.apply(change);
        }
        let mut rules = self.rules.write();
        if self.generation.load(Ordering::Acquire) != seen {
            // A change arrived while storage was read: what was read may
            // not hold it yet.
            return Ok(Vec::new());
        }
        // Kinds kept in memory only stay as they are.
        if !self.config.user_block.persisted() {
            fresh.blocked = std::mem::take(&mut rules.blocked);
        }
        if !self.config.token_revoke.persisted() {
            fresh.revoked = std::mem::take(&mut rules.revoked);
        }
        if !self.config.user_tokens_invalidate.persisted() {
            fresh.invalidated = std::mem::take(&mut rules.invalidated);
        }
        fresh.sweep(now);
        let added = fresh.added_since(&rules);
        *rules = fresh;
        Ok(added)
    }

    /// Makes a change on this node, saving it first when its kind is
    /// persisted (a change that could not be saved is not made).
    pub async fn save_and_apply(&self, change: &AccessChange) -> Result<(), SaveError> {
        self.save(change).await?;
        self.apply(change);
        Ok(())
    }

    /// Makes a change another node made.
    pub fn apply(&self, change: &AccessChange) {
        let mut rules = self.rules.write();
        rules.apply(change);
        rules.sweep(crate::auth::now_unix());
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Keeps a change another node made in this node's storage too, when
    /// its kind is persisted: with a database of each node's own (SQLite),
    /// the next reload would otherwise drop it.
    pub async fn save(&self, change: &AccessChange) -> Result<(), SaveError> {
        match self.store.as_ref().filter(|_| self.persists(change)) {
            Some(store) => store.save(change).await.map_err(SaveError),
            None => Ok(()),
        }
    }

    fn persists(&self, change: &AccessChange) -> bool {
        match change {
            AccessChange::Block { .. } | AccessChange::Unblock { .. } => {
                self.config.user_block.persisted()
            }
            AccessChange::RevokeToken { .. } => self.config.token_revoke.persisted(),
            AccessChange::InvalidateUserTokens { .. } => {
                self.config.user_tokens_invalidate.persisted()
            }
        }
    }

    /// Whether `user`, connecting (or refreshing) with a token `id` (none
    /// without a token), may be connected.
    pub fn check_connection(&self, user: &str, id: Option<&TokenId>) -> Result<(), Denied> {
        let rules = self.rules.read();
        if rules.is_empty() {
            return Ok(());
        }
        let now = crate::auth::now_unix();
        if rules.blocked.get(user).is_some_and(|e| alive(*e, now)) {
            return Err(Denied::Blocked);
        }
        match id {
            Some(id) if rules.token_revoked(user, "", id, now) => Err(Denied::Revoked),
            _ => Ok(()),
        }
    }

    /// Whether a subscription token `id` of `user` for `channel` was
    /// revoked.
    pub fn subscription_revoked(&self, user: &str, channel: &str, id: &TokenId) -> bool {
        let rules = self.rules.read();
        !rules.is_empty() && rules.token_revoked(user, channel, id, crate::auth::now_unix())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(jti: &str, iat: i64) -> TokenId {
        TokenId {
            jti: Some(jti.into()),
            iat: Some(iat),
        }
    }

    #[test]
    fn blocking_ends_at_unblock_or_expiry() {
        let a = Access::in_memory();
        let now = crate::auth::now_unix();
        assert_eq!(a.check_connection("u", None), Ok(()));
        a.apply(&AccessChange::Block {
            user: "u".into(),
            expire_at: 0,
        });
        assert_eq!(a.check_connection("u", None), Err(Denied::Blocked));
        assert_eq!(a.check_connection("v", None), Ok(()));
        a.apply(&AccessChange::Unblock { user: "u".into() });
        assert_eq!(a.check_connection("u", None), Ok(()));
        a.apply(&AccessChange::Block {
            user: "u".into(),
            expire_at: now - 1,
        });
        assert_eq!(a.check_connection("u", None), Ok(()), "expired block");
        assert!(a.rules.read().is_empty(), "swept");
    }

    #[test]
    fn tokens_are_revoked_by_id_and_by_issue_time() {
        let a = Access::in_memory();
        let now = crate::auth::now_unix();
        a.apply(&AccessChange::RevokeToken {
            uid: "t1".into(),
            expire_at: now + 60,
        });
        assert_eq!(
            a.check_connection("u", Some(&id("t1", now))),
            Err(Denied::Revoked)
        );
        assert_eq!(a.check_connection("u", Some(&id("t2", now))), Ok(()));
        assert!(a.subscription_revoked("u", "c", &id("t1", now)));
        a.apply(&AccessChange::InvalidateUserTokens {
            user: "u".into(),
            channel: String::new(),
            issued_before: now,
            expire_at: 0,
        });
        assert_eq!(
            a.check_connection("u", Some(&id("t3", now - 1))),
            Err(Denied::Revoked)
        );
        assert_eq!(a.check_connection("u", Some(&id("t3", now))), Ok(()));
        assert_eq!(a.check_connection("w", Some(&id("t3", now - 1))), Ok(()));
        // Connection tokens only: subscription tokens stay.
        assert!(!a.subscription_revoked("u", "c", &id("t3", now - 1)));
        // No iat: never issued before.
        let no_iat = TokenId {
            jti: None,
            iat: None,
        };
        assert_eq!(a.check_connection("u", Some(&no_iat)), Ok(()));
        a.apply(&AccessChange::InvalidateUserTokens {
            user: "u".into(),
            channel: "c".into(),
            issued_before: now,
            expire_at: 0,
        });
        assert!(a.subscription_revoked("u", "c", &id("t3", now - 1)));
        assert!(!a.subscription_revoked("u", "d", &id("t3", now - 1)));
    }
}
