//! Server API methods for token revocation, shaped like Centrifugo PRO's:
//! `revoke_token` (by token id, the `jti` claim) and `invalidate_user_tokens` (every
//! token of a user issued before a time, by the `iat` claim).

use serde::Deserialize;
use serde_json::{json, Value};

use super::methods::ApiError;
use crate::auth::now_unix;
use crate::node::revocation::Revocation;
use crate::node::Node;

#[derive(Deserialize)]
pub struct RevokeTokenReq {
    #[serde(default)]
    uid: String,
    /// Unix seconds when the deny-list entry may be forgotten (the token's `exp`).
    #[serde(default)]
    expire_at: Option<i64>,
}

#[derive(Deserialize)]
pub struct InvalidateUserTokensReq {
    #[serde(default)]
    user: String,
    /// Unix seconds; tokens with an earlier `iat` are refused. Default: now.
    #[serde(default)]
    issued_before: Option<i64>,
    #[serde(default)]
    expire_at: Option<i64>,
    /// With a channel: the user's subscription tokens for that channel, instead of
    /// the connection tokens.
    #[serde(default)]
    channel: Option<String>,
}

fn expiry(expire_at: Option<i64>) -> Result<Option<i64>, ApiError> {
    match expire_at {
        None | Some(0) => Ok(None),
        Some(t) if t < 0 => Err(ApiError::bad_request("expire_at must be unix seconds")),
        Some(t) => Ok(Some(t)),
    }
}

/// `revoke_token`: `{uid, expire_at?}` -> `{}`; connections using the token are closed
/// with 3500 and the token is refused on connect and refresh.
pub async fn revoke_token(node: &Node, r: RevokeTokenReq) -> Result<Value, ApiError> {
    if r.uid.is_empty() {
        return Err(ApiError::bad_request("uid required (the token's jti)"));
    }
    let rev = Revocation::Token {
        uid: r.uid,
        expire_at: expiry(r.expire_at)?,
    };
    node.revoke(rev).await?;
    Ok(json!({}))
}

/// `invalidate_user_tokens`: `{user, issued_before?, expire_at?, channel?}` -> `{}`.
pub async fn invalidate_user_tokens(
    node: &Node,
    r: InvalidateUserTokensReq,
) -> Result<Value, ApiError> {
    if r.user.is_empty() {
        return Err(ApiError::bad_request("user required"));
    }
    let channel = r.channel.filter(|c| !c.is_empty());
    if let Some(c) = &channel {
        node.options(c)?;
    }
    let issued_before = match r.issued_before {
        None | Some(0) => now_unix(),
        Some(t) if t < 0 => {
            return Err(ApiError::bad_request("issued_before must be unix seconds"))
        }
        Some(t) => t,
    };
    let rev = Revocation::User {
        user: r.user,
        issued_before,
        expire_at: expiry(r.expire_at)?,
        channel,
    };
    node.revoke(rev).await?;
    Ok(json!({}))
}
