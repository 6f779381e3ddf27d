//! Client protocol v2 messages, written for Herald from the published protocol
//! description (field names and numbers are the wire contract; see docs/PROTOCOL.md).
//!
//! One type serves both encodings: `prost` derives the Protobuf codec, `serde` the JSON
//! one. JSON omits default values, as the reference encoder does, and embeds `bytes`
//! fields as raw JSON (see `json_bytes`).

use std::collections::HashMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::json_bytes::{self as jb};

#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default)]
pub struct Command {
    #[prost(uint32, tag = "1")]
    #[serde(skip_serializing_if = "jb::is_zero_u32")]
    pub id: u32,
    #[prost(message, optional, tag = "4")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connect: Option<ConnectRequest>,
    #[prost(message, optional, tag = "5")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subscribe: Option<SubscribeRequest>,
    #[prost(message, optional, tag = "6")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unsubscribe: Option<UnsubscribeRequest>,
    #[prost(message, optional, tag = "7")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub publish: Option<PublishRequest>,
    #[prost(message, optional, tag = "8")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub presence: Option<PresenceRequest>,
    #[prost(message, optional, tag = "9")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub presence_stats: Option<PresenceStatsRequest>,
    #[prost(message, optional, tag = "10")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub history: Option<HistoryRequest>,
    #[prost(message, optional, tag = "11")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ping: Option<Empty>,
    #[prost(message, optional, tag = "12")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub send: Option<SendRequest>,
    #[prost(message, optional, tag = "13")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rpc: Option<RpcRequest>,
    #[prost(message, optional, tag = "14")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refresh: Option<RefreshRequest>,
    #[prost(message, optional, tag = "15")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sub_refresh: Option<SubRefreshRequest>,
}

#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default)]
pub struct Reply {
    #[prost(uint32, tag = "1")]
    #[serde(skip_serializing_if = "jb::is_zero_u32")]
    pub id: u32,
    #[prost(message, optional, tag = "2")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<Error>,
    #[prost(message, optional, tag = "4")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub push: Option<Push>,
    #[prost(message, optional, tag = "5")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connect: Option<ConnectResult>,
    #[prost(message, optional, tag = "6")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subscribe: Option<SubscribeResult>,
    #[prost(message, optional, tag = "7")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unsubscribe: Option<Empty>,
    #[prost(message, optional, tag = "8")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub publish: Option<Empty>,
    #[prost(message, optional, tag = "9")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub presence: Option<PresenceResult>,
    #[prost(message, optional, tag = "10")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub presence_stats: Option<PresenceStatsResult>,
    #[prost(message, optional, tag = "11")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub history: Option<HistoryResult>,
    #[prost(message, optional, tag = "12")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ping: Option<Empty>,
    #[prost(message, optional, tag = "13")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rpc: Option<RpcResult>,
    #[prost(message, optional, tag = "14")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refresh: Option<RefreshResult>,
    #[prost(message, optional, tag = "15")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sub_refresh: Option<SubRefreshResult>,
}

/// Results and requests that carry no fields (`{}` in JSON).
#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
pub struct Empty {}

#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default)]
pub struct Push {
    #[prost(string, tag = "2")]
    #[serde(skip_serializing_if = "String::is_empty")]
    pub channel: String,
    #[prost(message, optional, tag = "4")]
    #[serde(rename = "pub", skip_serializing_if = "Option::is_none")]
    pub publication: Option<Publication>,
    #[prost(message, optional, tag = "5")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub join: Option<Join>,
    #[prost(message, optional, tag = "6")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leave: Option<Leave>,
    #[prost(message, optional, tag = "7")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unsubscribe: Option<UnsubscribePush>,
    #[prost(message, optional, tag = "8")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<MessagePush>,
    #[prost(message, optional, tag = "9")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subscribe: Option<SubscribePush>,
    #[prost(message, optional, tag = "10")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connect: Option<ConnectPush>,
    #[prost(message, optional, tag = "11")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disconnect: Option<DisconnectPush>,
    #[prost(message, optional, tag = "12")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refresh: Option<RefreshPush>,
}

#[derive(Clone, PartialEq, Eq, prost::Message, Serialize, Deserialize)]
#[serde(default)]
pub struct Error {
    #[prost(uint32, tag = "1")]
    pub code: u32,
    #[prost(string, tag = "2")]
    pub message: String,
    #[prost(bool, tag = "3")]
    #[serde(skip_serializing_if = "jb::is_false")]
    pub temporary: bool,
}

#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default)]
pub struct ClientInfo {
    #[prost(string, tag = "1")]
    pub user: String,
    #[prost(string, tag = "2")]
    pub client: String,
    #[prost(bytes = "bytes", tag = "3")]
    #[serde(with = "jb", skip_serializing_if = "Bytes::is_empty")]
    pub conn_info: Bytes,
    #[prost(bytes = "bytes", tag = "4")]
    #[serde(with = "jb", skip_serializing_if = "Bytes::is_empty")]
    pub chan_info: Bytes,
}

#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default)]
pub struct Publication {
    #[prost(bytes = "bytes", tag = "4")]
    #[serde(with = "jb", skip_serializing_if = "Bytes::is_empty")]
    pub data: Bytes,
    #[prost(message, optional, tag = "5")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub info: Option<ClientInfo>,
    #[prost(uint64, tag = "6")]
    #[serde(skip_serializing_if = "jb::is_zero_u64")]
    pub offset: u64,
    #[prost(map = "string, string", tag = "7")]
    #[serde(skip_serializing_if = "HashMap::is_empty")]
    pub tags: HashMap<String, String>,
    #[prost(bool, tag = "8")]
    #[serde(skip_serializing_if = "jb::is_false")]
    pub delta: bool,
    #[prost(int64, tag = "9")]
    #[serde(skip_serializing_if = "jb::is_zero_i64")]
    pub time: i64,
    #[prost(string, tag = "10")]
    #[serde(skip_serializing_if = "String::is_empty")]
    pub channel: String,
}

#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default)]
pub struct Join {
    #[prost(message, optional, tag = "1")]
    pub info: Option<ClientInfo>,
}

#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default)]
pub struct Leave {
    #[prost(message, optional, tag = "1")]
    pub info: Option<ClientInfo>,
}

#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default)]
pub struct StreamPosition {
    #[prost(uint64, tag = "1")]
    pub offset: u64,
    #[prost(string, tag = "2")]
    pub epoch: String,
}

#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default)]
pub struct ConnectRequest {
    #[prost(string, tag = "1")]
    pub token: String,
    #[prost(bytes = "bytes", tag = "2")]
    #[serde(with = "jb", skip_serializing_if = "Bytes::is_empty")]
    pub data: Bytes,
    #[prost(map = "string, message", tag = "3")]
    #[serde(skip_serializing_if = "HashMap::is_empty")]
    pub subs: HashMap<String, SubscribeRequest>,
    #[prost(string, tag = "4")]
    pub name: String,
    #[prost(string, tag = "5")]
    pub version: String,
    #[prost(map = "string, string", tag = "6")]
    #[serde(skip_serializing_if = "HashMap::is_empty")]
    pub headers: HashMap<String, String>,
}

#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default)]
pub struct ConnectResult {
    #[prost(string, tag = "1")]
    pub client: String,
    #[prost(string, tag = "2")]
    #[serde(skip_serializing_if = "String::is_empty")]
    pub version: String,
    #[prost(bool, tag = "3")]
    #[serde(skip_serializing_if = "jb::is_false")]
    pub expires: bool,
    #[prost(uint32, tag = "4")]
    #[serde(skip_serializing_if = "jb::is_zero_u32")]
    pub ttl: u32,
    #[prost(bytes = "bytes", tag = "5")]
    #[serde(with = "jb", skip_serializing_if = "Bytes::is_empty")]
    pub data: Bytes,
    #[prost(message, repeated, tag = "6")]
    #[serde(with = "sub_results", skip_serializing_if = "Vec::is_empty")]
    pub subs: Vec<SubscribeResultEntry>,
    #[prost(uint32, tag = "7")]
    #[serde(skip_serializing_if = "jb::is_zero_u32")]
    pub ping: u32,
    #[prost(bool, tag = "8")]
    #[serde(skip_serializing_if = "jb::is_false")]
    pub pong: bool,
    #[prost(string, tag = "9")]
    #[serde(skip_serializing_if = "String::is_empty")]
    pub session: String,
    #[prost(string, tag = "10")]
    #[serde(skip_serializing_if = "String::is_empty")]
    pub node: String,
    #[prost(int64, tag = "11")]
    #[serde(skip_serializing_if = "jb::is_zero_i64")]
    pub time: i64,
}

#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default)]
pub struct RefreshRequest {
    #[prost(string, tag = "1")]
    pub token: String,
}

#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default)]
pub struct RefreshResult {
    #[prost(string, tag = "1")]
    pub client: String,
    #[prost(string, tag = "2")]
    #[serde(skip_serializing_if = "String::is_empty")]
    pub version: String,
    #[prost(bool, tag = "3")]
    #[serde(skip_serializing_if = "jb::is_false")]
    pub expires: bool,
    #[prost(uint32, tag = "4")]
    #[serde(skip_serializing_if = "jb::is_zero_u32")]
    pub ttl: u32,
}

#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default)]
pub struct SubscribeRequest {
    #[prost(string, tag = "1")]
    pub channel: String,
    #[prost(string, tag = "2")]
    #[serde(skip_serializing_if = "String::is_empty")]
    pub token: String,
    #[prost(bool, tag = "3")]
    #[serde(skip_serializing_if = "jb::is_false")]
    pub recover: bool,
    #[prost(string, tag = "6")]
    #[serde(skip_serializing_if = "String::is_empty")]
    pub epoch: String,
    #[prost(uint64, tag = "7")]
    #[serde(skip_serializing_if = "jb::is_zero_u64")]
    pub offset: u64,
    #[prost(bytes = "bytes", tag = "8")]
    #[serde(with = "jb", skip_serializing_if = "Bytes::is_empty")]
    pub data: Bytes,
    #[prost(bool, tag = "9")]
    #[serde(skip_serializing_if = "jb::is_false")]
    pub positioned: bool,
    #[prost(bool, tag = "10")]
    #[serde(skip_serializing_if = "jb::is_false")]
    pub recoverable: bool,
    #[prost(bool, tag = "11")]
    #[serde(skip_serializing_if = "jb::is_false")]
    pub join_leave: bool,
    #[prost(string, tag = "12")]
    #[serde(skip_serializing_if = "String::is_empty")]
    pub delta: String,
}

#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default)]
pub struct SubscribeResult {
    #[prost(bool, tag = "1")]
    #[serde(skip_serializing_if = "jb::is_false")]
    pub expires: bool,
    #[prost(uint32, tag = "2")]
    #[serde(skip_serializing_if = "jb::is_zero_u32")]
    pub ttl: u32,
    #[prost(bool, tag = "3")]
    #[serde(skip_serializing_if = "jb::is_false")]
    pub recoverable: bool,
    #[prost(string, tag = "6")]
    #[serde(skip_serializing_if = "String::is_empty")]
    pub epoch: String,
    #[prost(message, repeated, tag = "7")]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub publications: Vec<Publication>,
    #[prost(bool, tag = "8")]
    #[serde(skip_serializing_if = "jb::is_false")]
    pub recovered: bool,
    #[prost(uint64, tag = "9")]
    #[serde(skip_serializing_if = "jb::is_zero_u64")]
    pub offset: u64,
    #[prost(bool, tag = "10")]
    #[serde(skip_serializing_if = "jb::is_false")]
    pub positioned: bool,
    #[prost(bytes = "bytes", tag = "11")]
    #[serde(with = "jb", skip_serializing_if = "Bytes::is_empty")]
    pub data: Bytes,
    #[prost(bool, tag = "12")]
    #[serde(skip_serializing_if = "jb::is_false")]
    pub was_recovering: bool,
    #[prost(bool, tag = "13")]
    #[serde(skip_serializing_if = "jb::is_false")]
    pub delta: bool,
}

#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default)]
pub struct SubRefreshRequest {
    #[prost(string, tag = "1")]
    pub channel: String,
    #[prost(string, tag = "2")]
    pub token: String,
}

#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default)]
pub struct SubRefreshResult {
    #[prost(bool, tag = "1")]
    #[serde(skip_serializing_if = "jb::is_false")]
    pub expires: bool,
    #[prost(uint32, tag = "2")]
    #[serde(skip_serializing_if = "jb::is_zero_u32")]
    pub ttl: u32,
}

#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default)]
pub struct UnsubscribeRequest {
    #[prost(string, tag = "1")]
    pub channel: String,
}

#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default)]
pub struct PublishRequest {
    #[prost(string, tag = "1")]
    pub channel: String,
    #[prost(bytes = "bytes", tag = "2")]
    #[serde(with = "jb", skip_serializing_if = "Bytes::is_empty")]
    pub data: Bytes,
}

#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default)]
pub struct PresenceRequest {
    #[prost(string, tag = "1")]
    pub channel: String,
}

#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default)]
pub struct PresenceResult {
    #[prost(map = "string, message", tag = "1")]
    pub presence: HashMap<String, ClientInfo>,
}

#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default)]
pub struct PresenceStatsRequest {
    #[prost(string, tag = "1")]
    pub channel: String,
}

#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default)]
pub struct PresenceStatsResult {
    #[prost(uint32, tag = "1")]
    pub num_clients: u32,
    #[prost(uint32, tag = "2")]
    pub num_users: u32,
}

#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default)]
pub struct HistoryRequest {
    #[prost(string, tag = "1")]
    pub channel: String,
    #[prost(int32, tag = "7")]
    #[serde(skip_serializing_if = "jb::is_zero_i32")]
    pub limit: i32,
    #[prost(message, optional, tag = "8")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<StreamPosition>,
    #[prost(bool, tag = "9")]
    #[serde(skip_serializing_if = "jb::is_false")]
    pub reverse: bool,
}

#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default)]
pub struct HistoryResult {
    #[prost(message, repeated, tag = "1")]
    pub publications: Vec<Publication>,
    #[prost(string, tag = "2")]
    pub epoch: String,
    #[prost(uint64, tag = "3")]
    pub offset: u64,
}

#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default)]
pub struct RpcRequest {
    #[prost(bytes = "bytes", tag = "1")]
    #[serde(with = "jb", skip_serializing_if = "Bytes::is_empty")]
    pub data: Bytes,
    #[prost(string, tag = "2")]
    pub method: String,
}

#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default)]
pub struct RpcResult {
    #[prost(bytes = "bytes", tag = "1")]
    #[serde(with = "jb", skip_serializing_if = "Bytes::is_empty")]
    pub data: Bytes,
}

#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default)]
pub struct SendRequest {
    #[prost(bytes = "bytes", tag = "1")]
    #[serde(with = "jb", skip_serializing_if = "Bytes::is_empty")]
    pub data: Bytes,
}

#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default)]
pub struct UnsubscribePush {
    #[prost(uint32, tag = "2")]
    pub code: u32,
    #[prost(string, tag = "3")]
    pub reason: String,
}

#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default)]
pub struct SubscribePush {
    #[prost(bool, tag = "1")]
    #[serde(skip_serializing_if = "jb::is_false")]
    pub recoverable: bool,
    #[prost(string, tag = "4")]
    #[serde(skip_serializing_if = "String::is_empty")]
    pub epoch: String,
    #[prost(uint64, tag = "5")]
    #[serde(skip_serializing_if = "jb::is_zero_u64")]
    pub offset: u64,
    #[prost(bool, tag = "6")]
    #[serde(skip_serializing_if = "jb::is_false")]
    pub positioned: bool,
    #[prost(bytes = "bytes", tag = "7")]
    #[serde(with = "jb", skip_serializing_if = "Bytes::is_empty")]
    pub data: Bytes,
}

#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default)]
pub struct MessagePush {
    #[prost(bytes = "bytes", tag = "1")]
    #[serde(with = "jb", skip_serializing_if = "Bytes::is_empty")]
    pub data: Bytes,
}

#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default)]
pub struct ConnectPush {
    #[prost(string, tag = "1")]
    pub client: String,
    #[prost(string, tag = "2")]
    #[serde(skip_serializing_if = "String::is_empty")]
    pub version: String,
    #[prost(bytes = "bytes", tag = "3")]
    #[serde(with = "jb", skip_serializing_if = "Bytes::is_empty")]
    pub data: Bytes,
    #[prost(message, repeated, tag = "4")]
    #[serde(with = "sub_results", skip_serializing_if = "Vec::is_empty")]
    pub subs: Vec<SubscribeResultEntry>,
    #[prost(bool, tag = "5")]
    #[serde(skip_serializing_if = "jb::is_false")]
    pub expires: bool,
    #[prost(uint32, tag = "6")]
    #[serde(skip_serializing_if = "jb::is_zero_u32")]
    pub ttl: u32,
    #[prost(uint32, tag = "7")]
    #[serde(skip_serializing_if = "jb::is_zero_u32")]
    pub ping: u32,
    #[prost(bool, tag = "8")]
    #[serde(skip_serializing_if = "jb::is_false")]
    pub pong: bool,
    #[prost(string, tag = "9")]
    #[serde(skip_serializing_if = "String::is_empty")]
    pub session: String,
    #[prost(string, tag = "10")]
    #[serde(skip_serializing_if = "String::is_empty")]
    pub node: String,
    #[prost(int64, tag = "11")]
    #[serde(skip_serializing_if = "jb::is_zero_i64")]
    pub time: i64,
}

#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default)]
pub struct DisconnectPush {
    #[prost(uint32, tag = "1")]
    pub code: u32,
    #[prost(string, tag = "2")]
    pub reason: String,
}

#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default)]
pub struct RefreshPush {
    #[prost(bool, tag = "1")]
    #[serde(skip_serializing_if = "jb::is_false")]
    pub expires: bool,
    #[prost(uint32, tag = "2")]
    #[serde(skip_serializing_if = "jb::is_zero_u32")]
    pub ttl: u32,
}

/// One entry of the `map<string, SubscribeResult>` fields (`ConnectResult.subs`,
/// `Connect.subs`), written out as the map-entry message it is on the wire.
///
/// prost leaves out a map value equal to its default, and an all-default
/// `SubscribeResult` (a server-side subscription without positioning) is common; the
/// JS SDK's protobufjs decodes such an entry as `null` and fails. As an explicit entry
/// with an optional value the value is always written (`12 00`), as the reference
/// server does.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SubscribeResultEntry {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(message, optional, tag = "2")]
    pub value: Option<SubscribeResult>,
}

impl SubscribeResultEntry {
    pub fn new(channel: String, result: SubscribeResult) -> Self {
        SubscribeResultEntry {
            key: channel,
            value: Some(result),
        }
    }
}

/// JSON form of `Vec<SubscribeResultEntry>`: an object keyed by channel.
mod sub_results {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::{SubscribeResult, SubscribeResultEntry};

    pub fn serialize<S: Serializer>(
        entries: &[SubscribeResultEntry],
        ser: S,
    ) -> Result<S::Ok, S::Error> {
        let default = SubscribeResult::default();
        let map: BTreeMap<&str, &SubscribeResult> = entries
            .iter()
            .map(|e| (e.key.as_str(), e.value.as_ref().unwrap_or(&default)))
            .collect();
        map.serialize(ser)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        de: D,
    ) -> Result<Vec<SubscribeResultEntry>, D::Error> {
        let map: BTreeMap<String, SubscribeResult> = Deserialize::deserialize(de)?;
        Ok(map
            .into_iter()
            .map(|(k, v)| SubscribeResultEntry::new(k, v))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;

    #[test]
    fn empty_server_side_subscription_result_is_written_out() {
        let r = ConnectResult {
            client: "c".into(),
            subs: vec![SubscribeResultEntry::new(
                "feed:x".into(),
                SubscribeResult::default(),
            )],
            ..Default::default()
        };
        let bytes = r.encode_to_vec();
        // field 6, entry: key (0a 06 "feed:x") and an empty value (12 00).
        let entry = [
            0x32, 0x0a, 0x0a, 0x06, b'f', b'e', b'e', b'd', b':', b'x', 0x12, 0x00,
        ];
        assert!(
            bytes.windows(entry.len()).any(|w| w == entry),
            "{bytes:02x?}"
        );
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"client":"c","subs":{"feed:x":{}}}"#
        );
    }
}
