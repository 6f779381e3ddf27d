//! Client RPC methods for push notifications: an app registers its own device token
//! over its socket (`push.register`, `push.unregister`) and mutes conversations
//! (`push.mute`, `push.unmute`). Every method acts for the connection's user only.

use std::sync::Arc;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::json;

use super::commands::CmdError;
use super::session::Session;
use crate::protocol::codes;
use crate::push::devices::RegisterReq;
use crate::push::service::{self, PushService};
use crate::push::{DeviceFilter, Provider, PushStoreError};

#[derive(Deserialize, Default)]
#[serde(default)]
struct UnregisterReq {
    id: String,
    token: String,
    provider: Option<String>,
}

#[derive(Deserialize)]
struct MuteReq {
    channel: String,
    /// Unix seconds when the mute ends; absent or 0: until `push.unmute`.
    #[serde(default)]
    until: i64,
}

fn parse<T: serde::de::DeserializeOwned>(data: &[u8]) -> Result<T, CmdError> {
    serde_json::from_slice(data).map_err(|_| CmdError::Code(codes::ERROR_BAD_REQUEST))
}

fn store_error(e: PushStoreError) -> CmdError {
    match e {
        PushStoreError::NotFound => codes::ERROR_BAD_REQUEST.into(),
        PushStoreError::Unavailable(cause) => {
            tracing::warn!(%cause, "push store call failed");
            codes::ERROR_INTERNAL.into()
        }
    }
}

fn to_bytes(v: serde_json::Value) -> Bytes {
    Bytes::from(v.to_string())
}

impl Session {
    /// The connection's user (anonymous connections have no devices) and the service.
    fn push_target(&self) -> Result<(String, Arc<PushService>), CmdError> {
        let conn = self
            .conn
            .as_ref()
            .ok_or(CmdError::Code(codes::ERROR_UNAUTHORIZED))?;
        if conn.handle.user.is_empty() {
            return Err(codes::ERROR_PERMISSION_DENIED.into());
        }
        let svc =
            service::for_node(&self.st.node).ok_or(CmdError::Code(codes::ERROR_NOT_AVAILABLE))?;
        Ok((conn.handle.user.to_string(), svc))
    }

    /// The user's own devices with these ids (another user's id is not found).
    async fn own_devices(
        svc: &PushService,
        user: &str,
        ids: Vec<String>,
    ) -> Result<Vec<crate::push::Device>, CmdError> {
        let filter = DeviceFilter {
            ids,
            users: vec![user.to_string()],
            ..Default::default()
        };
        svc.devices(filter).await.map_err(store_error)
    }

    /// `{provider?, platform, token, topics?, meta?, id?}` -> `{id}`. With `id`, only
    /// a device of this user can be updated.
    pub(super) async fn rpc_push_register(&self, data: &[u8]) -> Result<Bytes, CmdError> {
        let req: RegisterReq = parse(data)?;
        let (user, svc) = self.push_target()?;
        if !req.id.is_empty()
            && Self::own_devices(&svc, &user, vec![req.id.clone()])
                .await?
                .is_empty()
        {
            return Err(codes::ERROR_PERMISSION_DENIED.into());
        }
        let device = req
            .into_device(user)
            .map_err(|_| CmdError::Code(codes::ERROR_BAD_REQUEST))?;
        let d = svc.store().register(device).await.map_err(store_error)?;
        Ok(to_bytes(json!({"id": d.id})))
    }

    /// `{id}` or `{token, provider?}` -> `{removed}`: the user's matching devices.
    pub(super) async fn rpc_push_unregister(&self, data: &[u8]) -> Result<Bytes, CmdError> {
        let req: UnregisterReq = parse(data)?;
        let (user, svc) = self.push_target()?;
        if req.id.is_empty() && req.token.is_empty() {
            return Err(codes::ERROR_BAD_REQUEST.into());
        }
        let provider = match req.provider.as_deref() {
            None | Some("") => None,
            Some(p) => Some(Provider::parse(p).ok_or(CmdError::Code(codes::ERROR_BAD_REQUEST))?),
        };
        let ids = if req.id.is_empty() {
            Vec::new()
        } else {
            vec![req.id]
        };
        let ids: Vec<String> = Self::own_devices(&svc, &user, ids)
            .await?
            .into_iter()
            .filter(|d| req.token.is_empty() || d.token == req.token)
            .filter(|d| provider.is_none_or(|p| p == d.provider))
            .map(|d| d.id)
            .collect();
        let removed = if ids.is_empty() {
            0
        } else {
            let filter = DeviceFilter {
                ids,
                ..Default::default()
            };
            svc.remove_devices(&filter).await.map_err(store_error)?
        };
        Ok(to_bytes(json!({"removed": removed})))
    }

    /// `{channel, until?}` -> `{}`: no pushes from this conversation for the user.
    pub(super) async fn rpc_push_mute(&self, data: &[u8]) -> Result<Bytes, CmdError> {
        let req: MuteReq = parse(data)?;
        let (user, svc) = self.push_target()?;
        self.st.node.options(&req.channel)?;
        let until = (req.until > 0).then_some(req.until.saturating_mul(1000));
        svc.store()
            .mute(&user, &req.channel, until)
            .await
            .map_err(store_error)?;
        Ok(to_bytes(json!({})))
    }

    /// `{channel}` -> `{}`.
    pub(super) async fn rpc_push_unmute(&self, data: &[u8]) -> Result<Bytes, CmdError> {
        let req: MuteReq = parse(data)?;
        let (user, svc) = self.push_target()?;
        svc.store()
            .unmute(&user, &req.channel)
            .await
            .map_err(store_error)?;
        Ok(to_bytes(json!({})))
    }
}
