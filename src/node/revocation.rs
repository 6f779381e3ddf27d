//! Token revocation: a deny-list of token ids (`jti`) and, per user, an "issued before"
//! time that invalidates every older token of the user (server API `revoke_token` and
//! `invalidate_user_tokens`, shaped like Centrifugo PRO's).
//!
//! Checked on connect and on refresh; the node disconnects live connections that use a
//! revoked token. Entries expire so the list stays small: at the `expire_at` the caller
//! gave, or else at the token's own `exp` once a token with that id has been seen (a
//! revoked token is useless after its `exp` anyway). An entry whose token was never seen
//! and that has no `expire_at` is kept until the process ends.
//!
//! The list lives in this process. In cluster mode every node applies each revocation
//! (it travels on the control channel) and `crate::cluster` also keeps it in Redis,
//! where a node that starts later finds it (docs/SECURITY.md, "Revocation").

use std::collections::HashMap;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::auth::now_unix;

/// What identifies the token a connection authenticated with, for revocation checks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenMeta {
    pub jti: Option<String>,
    pub iat: Option<i64>,
    pub exp: Option<i64>,
}

/// One revocation, as the server API receives it and the control channel carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Revocation {
    /// The token whose `jti` is `uid`.
    Token {
        uid: String,
        #[serde(default)]
        expire_at: Option<i64>,
    },
    /// Every token of `user` issued (`iat`) before `issued_before`; a token without `iat`
    /// counts as issued at 0. With `channel`: the user's subscription tokens for that
    /// channel instead of the connection tokens.
    User {
        user: String,
        issued_before: i64,
        #[serde(default)]
        expire_at: Option<i64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        channel: Option<String>,
    },
}

impl Revocation {
    /// Whether a connection of `user` authenticated with `token` is revoked by this.
    pub fn hits(&self, user: &str, token: &TokenMeta) -> bool {
        match self {
            Revocation::Token { uid, .. } => token.jti.as_deref() == Some(uid.as_str()),
            Revocation::User {
                user: u,
                issued_before,
                channel: None,
                ..
            } => u == user && token.iat.unwrap_or(0) < *issued_before,
            Revocation::User { .. } => false,
        }
    }
}

/// Expiry in unix seconds; `None` never expires.
type Expiry = Option<i64>;

fn live(expiry: Expiry, now: i64) -> bool {
    expiry.is_none_or(|t| t > now)
}

/// The deny-list. std-like `parking_lot` mutexes: held for a map lookup or edit only,
/// never across `.await`.
#[derive(Default)]
pub struct Revocations {
    tokens: Mutex<HashMap<String, Expiry>>,
    /// (user, channel) -> (issued_before, expiry); channel "" for connection tokens.
    users: Mutex<HashMap<(String, String), (i64, Expiry)>>,
}

impl Revocations {
    /// Records a revocation; expired entries are dropped on the way.
    pub fn add(&self, r: &Revocation) {
        let now = now_unix();
        match r {
            Revocation::Token { uid, expire_at } => {
                let mut t = self.tokens.lock();
                t.retain(|_, e| live(*e, now));
                if live(*expire_at, now) {
                    t.insert(uid.clone(), *expire_at);
                }
            }
            Revocation::User {
                user,
                issued_before,
                expire_at,
                channel,
            } => {
                let mut u = self.users.lock();
                u.retain(|_, (_, e)| live(*e, now));
                if !live(*expire_at, now) {
                    return;
                }
                // Never move the bar back: a call with an earlier time does not lift a
                // stricter (later) one.
                let key = (user.clone(), channel.clone().unwrap_or_default());
                let entry = u.entry(key).or_insert((*issued_before, *expire_at));
                if *issued_before >= entry.0 {
                    *entry = (*issued_before, *expire_at);
                }
            }
        }
    }

    /// Whether `user`'s token is revoked. A revoked token id seen with an `exp` makes
    /// its entry expire then, unless the revocation gave its own `expire_at`.
    pub fn is_revoked(&self, user: &str, token: &TokenMeta) -> bool {
        let now = now_unix();
        if let Some(jti) = &token.jti {
            let mut t = self.tokens.lock();
            if let Some(expiry) = t.get_mut(jti) {
                if live(*expiry, now) {
                    if expiry.is_none() {
                        *expiry = token.exp;
                    }
                    return true;
                }
                t.remove(jti);
            }
        }
        self.issued_too_early(user, "", token.iat, now)
    }

    /// Whether `user`'s subscription token for `channel`, issued at `iat`, is revoked.
    pub fn is_sub_revoked(&self, user: &str, channel: &str, iat: Option<i64>) -> bool {
        !channel.is_empty() && self.issued_too_early(user, channel, iat, now_unix())
    }

    fn issued_too_early(&self, user: &str, channel: &str, iat: Option<i64>, now: i64) -> bool {
        if user.is_empty() {
            return false;
        }
        let u = self.users.lock();
        match u.get(&(user.to_string(), channel.to_string())) {
            Some((before, expiry)) if live(*expiry, now) => iat.unwrap_or(0) < *before,
            _ => false,
        }
    }

    /// Entries held (token ids, users), for tests and metrics.
    pub fn len(&self) -> (usize, usize) {
        (self.tokens.lock().len(), self.users.lock().len())
    }
}

/// Revocation on the node: the deny-list plus the live connections it ends.
impl super::Node {
    /// Whether `user`'s token is revoked (connect and refresh ask).
    pub fn is_revoked(&self, user: &str, token: &TokenMeta) -> bool {
        self.shared.revocations.is_revoked(user, token)
    }

    /// Whether `user`'s subscription token for `channel` issued at `iat` is revoked.
    pub fn is_sub_revoked(&self, user: &str, channel: &str, iat: Option<i64>) -> bool {
        self.shared.revocations.is_sub_revoked(user, channel, iat)
    }

    /// A server API revocation: recorded and applied here, then sent to every other
    /// node in cluster mode. Returns the connections disconnected on this node.
    pub async fn revoke(&self, r: Revocation) -> Result<usize, super::NodeError> {
        let n = self.apply_revocation(&r);
        if let Some(link) = self.shared.cluster.get() {
            link.broadcast_revocation(&r).await?;
        }
        Ok(n)
    }

    /// Records a revocation and disconnects this node's connections it hits with 3500
    /// "invalid token": the SDK does not reconnect with the same token.
    pub fn apply_revocation(&self, r: &Revocation) -> usize {
        let list = &self.shared.revocations;
        list.add(r);
        if let Revocation::User {
            user,
            issued_before,
            channel: Some(channel),
            ..
        } = r
        {
            // Subscription tokens: each session ends its subscription if the token it
            // subscribed with is older.
            for conn in self.shared.registry.user_conns(user) {
                conn.control(super::conn::Control::RevokeSubTokens {
                    channel: channel.clone(),
                    issued_before: *issued_before,
                });
            }
            metrics::counter!(crate::metrics::TOKENS_REVOKED_TOTAL).increment(1);
            return 0;
        }
        let conns = match r {
            Revocation::Token { .. } => self.shared.registry.all_conns(),
            Revocation::User { user, .. } => self.shared.registry.user_conns(user),
        };
        let mut n = 0;
        for conn in conns {
            let token = conn.token();
            if r.hits(&conn.user, &token) {
                // Also moves the entry's expiry to the token's `exp`.
                list.is_revoked(&conn.user, &token);
                conn.disconnect(crate::protocol::codes::DISCONNECT_INVALID_TOKEN.into());
                n += 1;
            }
        }
        metrics::counter!(crate::metrics::TOKENS_REVOKED_TOTAL).increment(1);
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(jti: Option<&str>, iat: Option<i64>, exp: Option<i64>) -> TokenMeta {
        TokenMeta {
            jti: jti.map(str::to_string),
            iat,
            exp,
        }
    }

    #[test]
    fn token_ids_are_denied_until_their_expiry() {
        let r = Revocations::default();
        let now = now_unix();
        r.add(&Revocation::Token {
            uid: "t1".into(),
            expire_at: None,
        });
        assert!(r.is_revoked("alice", &meta(Some("t1"), None, Some(now + 60))));
        assert!(!r.is_revoked("alice", &meta(Some("t2"), None, None)));
        assert!(!r.is_revoked("alice", &meta(None, None, None)));
        // Seen with an exp: the entry now ends then; an entry already past is dropped.
        r.add(&Revocation::Token {
            uid: "old".into(),
            expire_at: Some(now - 1),
        });
        assert_eq!(r.len().0, 1);
        r.add(&Revocation::Token {
            uid: "t3".into(),
            expire_at: None,
        });
        assert!(r.is_revoked("bob", &meta(Some("t3"), None, Some(now - 5))));
        // The entry took the (past) exp of the token: it is gone on the next look.
        assert!(!r.is_revoked("bob", &meta(Some("t3"), None, None)));
    }

    #[test]
    fn user_invalidation_covers_older_tokens_only() {
        let r = Revocations::default();
        let now = now_unix();
        r.add(&Revocation::User {
            user: "alice".into(),
            issued_before: now,
            expire_at: None,
            channel: None,
        });
        assert!(r.is_revoked("alice", &meta(None, Some(now - 10), None)));
        assert!(r.is_revoked("alice", &meta(None, None, None)), "no iat");
        assert!(!r.is_revoked("alice", &meta(None, Some(now), None)));
        assert!(!r.is_revoked("bob", &meta(None, Some(now - 10), None)));
        assert!(!r.is_revoked("", &meta(None, None, None)));
        // A later call with an earlier time does not lift the stricter bar.
        r.add(&Revocation::User {
            user: "alice".into(),
            issued_before: now - 100,
            expire_at: None,
            channel: None,
        });
        assert!(r.is_revoked("alice", &meta(None, Some(now - 10), None)));
        // Channel-scoped: subscription tokens of that channel only.
        r.add(&Revocation::User {
            user: "bob".into(),
            issued_before: now,
            expire_at: None,
            channel: Some("news".into()),
        });
        assert!(r.is_sub_revoked("bob", "news", Some(now - 1)));
        assert!(!r.is_sub_revoked("bob", "news", Some(now)));
        assert!(!r.is_sub_revoked("bob", "other", Some(now - 1)));
        assert!(!r.is_revoked("bob", &meta(None, Some(now - 1), None)));
    }

    #[test]
    fn revocations_roundtrip_as_json() {
        for rev in [
            Revocation::Token {
                uid: "x".into(),
                expire_at: Some(5),
            },
            Revocation::User {
                user: "u".into(),
                issued_before: 7,
                expire_at: None,
                channel: Some("news".into()),
            },
        ] {
            let json = serde_json::to_string(&rev).unwrap();
            assert_eq!(serde_json::from_str::<Revocation>(&json).unwrap(), rev);
        }
    }
}
