//! A Kafka record as a server API command, and what to do with the command's result.
//! Pure functions: no I/O, so every rule here has a unit test.
//!
//! The value is what Centrifugo's Kafka consumer reads, `{"method":"publish",
//! "payload":{...}}`, with any method of [`crate::api::methods::METHODS`] that changes
//! state (reads such as `history` or `presence` have nobody to answer to).

use serde::de::IgnoredAny;
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;
use serde_json::Value;

use crate::api::methods::{ApiError, METHODS};
use crate::protocol::codes;

/// Methods that only read: a record asking for one is invalid.
pub const READ_ONLY: &[&str] = &[
    "presence",
    "presence_stats",
    "history",
    "channels",
    "info",
    "batch",
    "conversation_members",
    "user_conversations",
];

/// Methods whose payload takes an `idempotency_key`.
const KEYED: &[&str] = &["publish", "broadcast"];

/// Header names that carry an idempotency key (the payload field wins over them).
pub const IDEMPOTENCY_HEADERS: &[&str] = &["idempotency_key", "idempotency-key"];

/// A command ready for [`crate::api::methods::call`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    pub method: &'static str,
    /// The JSON payload, with an `idempotency_key` added for keyed methods.
    pub payload: Vec<u8>,
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(default)]
    method: String,
    #[serde(borrow, default)]
    payload: Option<&'a RawValue>,
}

/// Whether a JSON object has a field, whatever its value (`null` included).
#[derive(Default)]
struct Present(bool);

impl<'de> Deserialize<'de> for Present {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        IgnoredAny::deserialize(de)?;
        Ok(Present(true))
    }
}

#[derive(Deserialize)]
struct KeyProbe {
    #[serde(default)]
    idempotency_key: Present,
}

/// Turns a record value into a command, or says why it can never apply.
///
/// `header_key` is an idempotency key from the record's headers; `derived_key` names the
/// record itself (topic, partition, offset). For `publish` and `broadcast` without an
/// `idempotency_key` field, the header's key or else the derived one is added, so that
/// a record applied again after a crash or rebalance is recognised by the store.
pub fn decode(
    value: Option<&[u8]>,
    header_key: Option<&str>,
    derived_key: impl FnOnce() -> String,
) -> Result<Command, ApiError> {
    let value = value.ok_or_else(|| ApiError::bad_request("record has no value"))?;
    // serde also reads a struct from a JSON array (`["publish", {...}]`); a command is
    // an object, as Centrifugo reads it.
    if !value.trim_ascii_start().starts_with(b"{") {
        return Err(ApiError::bad_request(
            "record value is not a command: expected a JSON object",
        ));
    }
    let env: Envelope = serde_json::from_slice(value)
        .map_err(|e| ApiError::bad_request(format!("record value is not a command: {e}")))?;
    if env.method.is_empty() {
        return Err(ApiError::bad_request("record value has no method"));
    }
    let method = METHODS
        .iter()
        .copied()
        .find(|m| *m == env.method && !READ_ONLY.contains(m))
        .ok_or_else(|| ApiError {
            code: codes::ERROR_METHOD_NOT_FOUND.code,
            message: format!("method not available to Kafka ingest: {:?}", env.method),
        })?;
    let payload = env.payload.map(RawValue::get).unwrap_or("{}");
    if !payload.trim_start().starts_with('{') {
        return Err(ApiError::bad_request("payload must be a JSON object"));
    }
    if !KEYED.contains(&method) {
        return Ok(Command {
            method,
            payload: payload.as_bytes().to_vec(),
        });
    }
    let probe: KeyProbe = serde_json::from_str(payload)
        .map_err(|e| ApiError::bad_request(format!("invalid payload: {e}")))?;
    if probe.idempotency_key.0 {
        return Ok(Command {
            method,
            payload: payload.as_bytes().to_vec(),
        });
    }
    let key = match header_key {
        Some(k) if !k.is_empty() => k.to_string(),
        _ => derived_key(),
    };
    Ok(Command {
        method,
        payload: with_key(payload, &key),
    })
}

/// `{...}` with `"idempotency_key":KEY` as its first field.
fn with_key(object: &str, key: &str) -> Vec<u8> {
    let body = object.trim_start();
    let rest = body[1..].trim_start();
    let key = Value::String(key.to_string()).to_string();
    let mut out = Vec::with_capacity(object.len() + key.len() + 24);
    out.extend_from_slice(b"{\"idempotency_key\":");
    out.extend_from_slice(key.as_bytes());
    if !rest.starts_with('}') {
        out.push(b',');
    }
    out.extend_from_slice(rest.as_bytes());
    out
}

/// What a command's result means for its record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Applied,
    /// May succeed later (internal error, store unavailable, rate limited): retry, and
    /// commit nothing past it meanwhile.
    Retryable(ApiError),
    /// Will never succeed: dead-letter it and go on.
    Invalid(ApiError),
}

fn retryable(e: &ApiError) -> bool {
    codes::ALL_ERRORS
        .iter()
        .any(|c| c.code == e.code && c.temporary)
}

/// Classifies `call`'s result. A `broadcast` answers per channel: one retryable error
/// retries the whole record (its idempotency key keeps persisted channels from storing
/// twice); otherwise any error makes it invalid, with every failed channel named.
pub fn classify(method: &str, result: Result<Value, ApiError>) -> Outcome {
    let value = match result {
        Ok(v) => v,
        Err(e) if retryable(&e) => return Outcome::Retryable(e),
        Err(e) => return Outcome::Invalid(e),
    };
    if method != "broadcast" {
        return Outcome::Applied;
    }
    let errors: Vec<(usize, ApiError)> = value
        .get("responses")
        .and_then(Value::as_array)
        .map(|rs| {
            rs.iter()
                .enumerate()
                .filter_map(|(i, r)| {
                    let e = r.get("error")?;
                    Some((
                        i,
                        ApiError {
                            code: e.get("code").and_then(Value::as_u64).unwrap_or(0) as u32,
                            message: e
                                .get("message")
                                .and_then(Value::as_str)
                                .unwrap_or_default()
                                .to_string(),
                        },
                    ))
                })
                .collect()
        })
        .unwrap_or_default();
    if let Some((_, e)) = errors.iter().find(|(_, e)| retryable(e)) {
        return Outcome::Retryable(e.clone());
    }
    match errors.first() {
        None => Outcome::Applied,
        Some((_, first)) => Outcome::Invalid(ApiError {
            code: first.code,
            message: errors
                .iter()
                .map(|(i, e)| format!("channels[{i}]: {}", e.message))
                .collect::<Vec<_>>()
                .join("; "),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn derived() -> String {
        "kafka:t:0:7".to_string()
    }

    fn payload(c: &Command) -> Value {
        serde_json::from_slice(&c.payload).expect("payload is JSON")
    }

    #[test]
    fn publish_gets_the_header_key_or_the_derived_one() {
        let v = br#"{"method":"publish","payload":{"channel":"news","data":{"a":1}}}"#;
        let c = decode(Some(v), None, derived).unwrap();
        assert_eq!(c.method, "publish");
        assert_eq!(
            payload(&c),
            json!({"idempotency_key": "kafka:t:0:7", "channel": "news", "data": {"a": 1}})
        );
        let c = decode(Some(v), Some("order-1"), derived).unwrap();
        assert_eq!(payload(&c)["idempotency_key"], "order-1");
        let empty = br#"{"method":"broadcast","payload": {} }"#;
        let c = decode(Some(empty), Some("k\"1"), derived).unwrap();
        assert_eq!(payload(&c), json!({"idempotency_key": "k\"1"}));
    }

    #[test]
    fn the_payload_key_wins() {
        let v = br#"{"method":"publish","payload":{"channel":"c","data":1,"idempotency_key":"p"}}"#;
        let c = decode(Some(v), Some("h"), derived).unwrap();
        assert_eq!(payload(&c)["idempotency_key"], "p");
        let v = br#"{"method":"publish","payload":{"idempotency_key":null,"channel":"c"}}"#;
        let c = decode(Some(v), Some("h"), derived).unwrap();
        assert_eq!(payload(&c)["idempotency_key"], Value::Null);
    }

    #[test]
    fn other_methods_pass_their_payload_unchanged() {
        let v = br#"{"method":"disconnect","payload":{"user":"bob"}}"#;
        let c = decode(Some(v), Some("h"), derived).unwrap();
        assert_eq!(c.payload, br#"{"user":"bob"}"#);
        let v = br#"{"method":"history_remove"}"#;
        assert_eq!(decode(Some(v), None, derived).unwrap().payload, b"{}");
    }

    #[test]
    fn bad_records_are_invalid_with_a_reason() {
        for (value, code, words) in [
            (None, 107, "no value"),
            (Some(&b"not json"[..]), 107, "not a command"),
            (Some(&b"[1,2]"[..]), 107, "not a command"),
            (
                Some(&br#"["publish",{"channel":"c"}]"#[..]),
                107,
                "JSON object",
            ),
            (Some(&br#"{"payload":{}}"#[..]), 107, "no method"),
            (Some(&br#"{"method":"nope","payload":{}}"#[..]), 104, "nope"),
            (
                Some(&br#"{"method":"history","payload":{}}"#[..]),
                104,
                "history",
            ),
            (
                Some(&br#"{"method":"publish","payload":[1]}"#[..]),
                107,
                "object",
            ),
            (
                Some(&br#"{"method":"publish","payload":{"a":}}"#[..]),
                107,
                "not a command",
            ),
        ] {
            let e = decode(value, None, derived).unwrap_err();
            assert_eq!(e.code, code, "{value:?}: {e:?}");
            assert!(e.message.contains(words), "{value:?}: {e:?}");
        }
    }

    #[test]
    fn results_are_classified() {
        assert_eq!(classify("publish", Ok(json!({}))), Outcome::Applied);
        let internal = ApiError {
            code: 100,
            message: "internal server error".into(),
        };
        assert_eq!(
            classify("publish", Err(internal.clone())),
            Outcome::Retryable(internal)
        );
        let unknown = ApiError {
            code: 102,
            message: "unknown channel".into(),
        };
        assert_eq!(
            classify("publish", Err(unknown.clone())),
            Outcome::Invalid(unknown)
        );
    }

    #[test]
    fn broadcast_errors_per_channel() {
        let ok = json!({"responses": [{"result": {}}, {"result": {}}]});
        assert_eq!(classify("broadcast", Ok(ok)), Outcome::Applied);
        let bad = json!({"responses": [{"result": {}}, {"error": {"code": 102, "message": "unknown channel"}}]});
        assert_eq!(
            classify("broadcast", Ok(bad)),
            Outcome::Invalid(ApiError {
                code: 102,
                message: "channels[1]: unknown channel".into()
            })
        );
        let temp = json!({"responses": [{"error": {"code": 102, "message": "x"}}, {"error": {"code": 100, "message": "internal"}}]});
        assert!(matches!(
            classify("broadcast", Ok(temp)),
            Outcome::Retryable(_)
        ));
    }
}
