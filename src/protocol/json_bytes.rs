//! Serde glue for the protocol's `bytes` fields.
//!
//! In the JSON protocol a `bytes` field (`data`, `info`, `conn_info`, `chan_info`) carries
//! embedded JSON, not base64: `{"data":{"text":"hi"}}`. Protobuf carries the same bytes
//! verbatim. Keeping the field as `Bytes` lets one message type serve both encodings and
//! lets a publication's payload be shared, never re-parsed, on the fan-out path.

use bytes::Bytes;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;

pub fn serialize<S: Serializer>(bytes: &Bytes, ser: S) -> Result<S::Ok, S::Error> {
    // Bytes that came from a Protobuf client may not be JSON; a JSON client must still get
    // a parseable frame, so such payloads travel as a JSON string instead of breaking it.
    match std::str::from_utf8(bytes) {
        Ok(text) => match serde_json::from_str::<&RawValue>(text) {
            Ok(raw) => raw.serialize(ser),
            Err(_) => ser.serialize_str(text),
        },
        Err(_) => ser.serialize_str(&String::from_utf8_lossy(bytes)),
    }
}

pub fn deserialize<'de, D: Deserializer<'de>>(de: D) -> Result<Bytes, D::Error> {
    let raw: Box<RawValue> = Deserialize::deserialize(de)?;
    let text: Box<str> = raw.into();
    Ok(Bytes::from(String::from(text)))
}

/// Serde helpers for skipping default values, the way the reference JSON encoding does.
pub fn is_false(v: &bool) -> bool {
    !*v
}
pub fn is_zero_u32(v: &u32) -> bool {
    *v == 0
}
pub fn is_zero_u64(v: &u64) -> bool {
    *v == 0
}
pub fn is_zero_i32(v: &i32) -> bool {
    *v == 0
}
pub fn is_zero_i64(v: &i64) -> bool {
    *v == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize, Deserialize)]
    struct Holder {
        #[serde(with = "super")]
        data: Bytes,
    }

    #[test]
    fn embeds_json_and_reads_it_back_verbatim() {
        let h: Holder = serde_json::from_str(r#"{"data":{"a":[1,2]}}"#).unwrap();
        assert_eq!(&h.data[..], br#"{"a":[1,2]}"#);
        assert_eq!(
            serde_json::to_string(&h).unwrap(),
            r#"{"data":{"a":[1,2]}}"#
        );
    }

    #[test]
    fn non_json_bytes_become_a_string() {
        let h = Holder {
            data: Bytes::from_static(b"not json"),
        };
        assert_eq!(serde_json::to_string(&h).unwrap(), r#"{"data":"not json"}"#);
    }
}
