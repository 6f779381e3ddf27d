//! Server API methods for push notifications (shapes modelled on Centrifugo PRO's push
//! API): `device_register`, `device_update`, `device_remove`, `device_list`,
//! `send_push_notification`; and the `push` object of `publish`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};

use super::methods::ApiError;
use crate::node::Node;
use crate::protocol::codes;
use crate::push::devices::{check_token, RegisterReq, TopicsOp};
use crate::push::fallback::{PushOverride, PUSH_TAG};
use crate::push::message::ApnsOverride;
use crate::push::service::{self, PushService};
use crate::push::{
    DeviceFilter, DeviceUpdate, NewJob, Notification, Platform, Provider, PushStoreError,
};

const MAX_LIST: usize = 1000;
const DEFAULT_LIST: usize = 100;

fn not_configured() -> ApiError {
    ApiError {
        code: codes::ERROR_NOT_AVAILABLE.code,
        message: "push notifications are not configured".into(),
    }
}

fn svc(node: &Node) -> Result<Arc<PushService>, ApiError> {
    service::for_node(node).ok_or_else(not_configured)
}

impl From<PushStoreError> for ApiError {
    fn from(e: PushStoreError) -> Self {
        match e {
            PushStoreError::NotFound => ApiError::bad_request("device not found"),
            PushStoreError::Unavailable(cause) => {
                tracing::warn!(%cause, "push store call failed");
                codes::ERROR_INTERNAL.into()
            }
        }
    }
}

/// `device_register`: `{id?, provider?, platform, token, user?, topics?, meta?}` ->
/// `{id}`. Registering a known token again updates its device (and moves it to `user`).
pub async fn device_register(node: &Node, r: RegisterReq) -> Result<Value, ApiError> {
    let s = svc(node)?;
    let user = r.user.clone();
    let device = r.into_device(user).map_err(ApiError::bad_request)?;
    let d = s.store().register(device).await?;
    Ok(json!({"id": d.id}))
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct UserUpdate {
    user: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct MetaUpdate {
    meta: BTreeMap<String, String>,
}

#[derive(Deserialize)]
pub struct TopicsUpdate {
    op: TopicsOp,
    #[serde(default)]
    topics: Vec<String>,
}

#[derive(Deserialize)]
pub struct MuteUpdate {
    /// `add` mutes, `remove` unmutes.
    op: TopicsOp,
    #[serde(default)]
    channels: Vec<String>,
    /// Unix seconds when an `add` ends; absent or 0: until removed.
    #[serde(default)]
    until: i64,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct UpdateReq {
    ids: Vec<String>,
    users: Vec<String>,
    user_update: Option<UserUpdate>,
    meta_update: Option<MetaUpdate>,
    topics_update: Option<TopicsUpdate>,
    /// Herald extension: per-conversation mutes of the `users` named.
    mute_update: Option<MuteUpdate>,
}

/// `device_update`: changes the devices selected by `ids` / `users`; `mute_update`
/// mutes or unmutes conversations for the `users`. -> `{}`
pub async fn device_update(node: &Node, r: UpdateReq) -> Result<Value, ApiError> {
    let s = svc(node)?;
    if r.ids.is_empty() && r.users.is_empty() {
        return Err(ApiError::bad_request("ids or users required"));
    }
    let filter = DeviceFilter {
        ids: r.ids,
        users: r.users,
        ..Default::default()
    };
    let update = DeviceUpdate {
        user: r.user_update.map(|u| u.user),
        meta: r.meta_update.map(|m| m.meta),
        topics: r.topics_update.map(|t| (t.op, t.topics)),
    };
    if update != DeviceUpdate::default() {
        s.store().update(&filter, &update).await?;
    }
    if let Some(mute) = r.mute_update {
        if filter.users.is_empty() {
            return Err(ApiError::bad_request("mute_update needs users"));
        }
        for ch in &mute.channels {
            node.options(ch)?;
        }
        let until = (mute.until > 0).then_some(mute.until.saturating_mul(1000));
        for u in &filter.users {
            for ch in &mute.channels {
                match mute.op {
                    TopicsOp::Add | TopicsOp::Set => s.store().mute(u, ch, until).await?,
                    TopicsOp::Remove => s.store().unmute(u, ch).await?,
                }
            }
        }
    }
    Ok(json!({}))
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct RemoveReq {
    ids: Vec<String>,
    users: Vec<String>,
}

/// `device_remove`: `{ids?, users?}` -> `{}`; their queued pushes go too.
pub async fn device_remove(node: &Node, r: RemoveReq) -> Result<Value, ApiError> {
    let s = svc(node)?;
    if r.ids.is_empty() && r.users.is_empty() {
        return Err(ApiError::bad_request("ids or users required"));
    }
    let filter = DeviceFilter {
        ids: r.ids,
        users: r.users,
        ..Default::default()
    };
    s.remove_devices(&filter).await?;
    Ok(json!({}))
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct FilterReq {
    ids: Vec<String>,
    users: Vec<String>,
    topics: Vec<String>,
    providers: Vec<String>,
    platforms: Vec<String>,
    /// `send_push_notification` names device ids `devices`, as Centrifugo does.
    devices: Vec<String>,
}

impl FilterReq {
    fn into_filter(self) -> Result<DeviceFilter, ApiError> {
        let providers = self
            .providers
            .iter()
            .map(|p| Provider::parse(p).ok_or_else(|| ApiError::bad_request("unknown provider")))
            .collect::<Result<_, _>>()?;
        let platforms = self
            .platforms
            .iter()
            .map(|p| Platform::parse(p).ok_or_else(|| ApiError::bad_request("unknown platform")))
            .collect::<Result<_, _>>()?;
        let mut ids = self.ids;
        ids.extend(self.devices);
        Ok(DeviceFilter {
            ids,
            users: self.users,
            topics: self.topics,
            providers,
            platforms,
        })
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct ListReq {
    filter: FilterReq,
    cursor: String,
    limit: usize,
    include_total_count: bool,
    include_meta: bool,
    include_topics: bool,
}

/// `device_list`: `{filter, cursor, limit, include_total_count, include_meta,
/// include_topics}` -> `{items, next_cursor, total_count?}`.
pub async fn device_list(node: &Node, r: ListReq) -> Result<Value, ApiError> {
    let s = svc(node)?;
    let limit = match r.limit {
        0 => DEFAULT_LIST,
        n => n.min(MAX_LIST),
    };
    let filter = r.filter.into_filter()?;
    let page = s
        .store()
        .list(&filter, &r.cursor, limit, r.include_total_count)
        .await?;
    let items: Vec<Value> = page
        .items
        .into_iter()
        .map(|d| {
            let mut v = json!({
                "id": d.id,
                "provider": d.provider,
                "platform": d.platform,
                "token": d.token,
                "user": d.user,
                "created_at": d.created_at,
                "updated_at": d.updated_at,
            });
            if r.include_meta {
                v["meta"] = json!(d.meta);
            }
            if r.include_topics {
                v["topics"] = json!(d.topics);
            }
            v
        })
        .collect();
    let mut out = json!({"items": items, "next_cursor": page.next_cursor});
    if let Some(t) = page.total {
        out["total_count"] = json!(t);
    }
    Ok(out)
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct RecipientReq {
    filter: Option<FilterReq>,
    /// Tokens not in the registry.
    apns_tokens: Vec<String>,
    fcm_tokens: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct FcmOverride {
    message: Option<Value>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct NotificationReq {
    title: String,
    body: String,
    data: BTreeMap<String, String>,
    badge: Option<u64>,
    collapse_id: Option<String>,
    thread_id: Option<String>,
    sound: Option<String>,
    /// Unix seconds; absent or 0: now + push.ttl.
    expire_at: i64,
    apns: Option<ApnsOverride>,
    fcm: Option<FcmOverride>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct SendReq {
    recipient: RecipientReq,
    notification: NotificationReq,
    /// The caller's id for this send; generated when absent.
    uid: String,
}

/// `send_push_notification`: queues a notification for the devices the recipient
/// filter selects (users, device ids, topics) and for raw tokens. -> `{uid, queued}`.
pub async fn send_push_notification(node: &Node, r: SendReq) -> Result<Value, ApiError> {
    let s = svc(node)?;
    let n = r.notification;
    if n.collapse_id.as_ref().is_some_and(|c| c.len() > 64) {
        return Err(ApiError::bad_request("collapse_id: at most 64 bytes"));
    }
    let template = Notification {
        id: String::new(),
        title: n.title,
        body: n.body,
        badge: n.badge,
        data: n.data,
        collapse_id: n.collapse_id.filter(|c| !c.is_empty()),
        thread_id: n.thread_id.filter(|c| !c.is_empty()),
        expire_at: if n.expire_at > 0 {
            n.expire_at
        } else {
            s.expire_at()
        },
        sound: n.sound,
        apns: n.apns,
        fcm: n.fcm.and_then(|f| f.message),
        published_ms: None,
    };
    let mut targets: Vec<(String, Provider, String)> = Vec::new();
    if let Some(f) = r.recipient.filter {
        let filter = f.into_filter()?;
        if filter.ids.is_empty() && filter.users.is_empty() && filter.topics.is_empty() {
            return Err(ApiError::bad_request(
                "recipient.filter needs users, devices or topics",
            ));
        }
        for d in s.devices(filter).await? {
            targets.push((d.id, d.provider, d.token));
        }
    }
    for (provider, tokens) in [
        (Provider::Apns, r.recipient.apns_tokens),
        (Provider::Fcm, r.recipient.fcm_tokens),
    ] {
        for t in tokens {
            check_token(provider, &t).map_err(ApiError::bad_request)?;
            targets.push((String::new(), provider, t));
        }
    }
    let uid = if r.uid.is_empty() {
        uuid::Uuid::new_v4().to_string()
    } else {
        r.uid
    };
    let jobs: Vec<NewJob> = targets
        .into_iter()
        .map(|(device_id, provider, token)| NewJob {
            device_id,
            provider,
            token,
            notification: Notification {
                id: uuid::Uuid::new_v4().to_string(),
                ..template.clone()
            },
        })
        .collect();
    let queued = s.enqueue(jobs, "api").await?;
    Ok(json!({"uid": uid, "queued": queued}))
}

/// The `push` object of `publish` (`{title, body, data, skip}`), carried to the offline
/// fallback in the publication's `herald.push` tag.
pub fn push_tag(
    raw: Option<&RawValue>,
    tags: &mut HashMap<String, String>,
) -> Result<(), ApiError> {
    let Some(raw) = raw else {
        return Ok(());
    };
    let over: PushOverride =
        serde_json::from_str(raw.get()).map_err(|e| ApiError::bad_request(format!("push: {e}")))?;
    let text =
        serde_json::to_string(&over).map_err(|e| ApiError::bad_request(format!("push: {e}")))?;
    tags.insert(PUSH_TAG.to_string(), text);
    Ok(())
}
