//! Kafka ingest records (`kafka::record::decode`): any value and idempotency header
//! either becomes a command that `api::methods::call` can take, or an error with a
//! documented code; never a panic. A decoded publish or broadcast always carries an
//! idempotency key (the payload's own, else the header's, else the derived one), and
//! the rewritten payload is still the same JSON object plus that key.
#![no_main]

use herald::api::methods::METHODS;
use herald::kafka::record::{classify, decode, READ_ONLY};
use herald::protocol::codes;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

const DERIVED: &str = "kafka:topic:0:42";

fuzz_target!(|data: &[u8]| {
    // Layout: [header length byte][header bytes][value]; length 255 means no header,
    // an empty remainder means a record without a value.
    let Some((&len, rest)) = data.split_first() else {
        return;
    };
    let (header, value) = if len == 255 {
        (None, rest)
    } else {
        let n = (len as usize).min(rest.len());
        (std::str::from_utf8(&rest[..n]).ok(), &rest[n..])
    };
    let value = (!value.is_empty()).then_some(value);
    match decode(value, header, || DERIVED.to_string()) {
        Err(e) => {
            assert!(!e.message.is_empty());
            assert!(
                codes::ALL_ERRORS.iter().any(|c| c.code == e.code),
                "code {}",
                e.code
            );
        }
        // serde_json's `Value` refuses numbers out of f64 range that `RawValue` keeps
        // verbatim: nothing to compare against then.
        Ok(_) if serde_json::from_slice::<Value>(value.unwrap_or_default()).is_err() => {}
        Ok(cmd) => {
            assert!(METHODS.contains(&cmd.method) && !READ_ONLY.contains(&cmd.method));
            let payload: Value = serde_json::from_slice(&cmd.payload)
                .unwrap_or_else(|e| panic!("{}: rewritten payload is not JSON: {e}", cmd.method));
            let Value::Object(mut fields) = payload else {
                panic!("{}: payload is not an object", cmd.method)
            };
            if matches!(cmd.method, "publish" | "broadcast") {
                let original: Value = serde_json::from_slice(value.unwrap_or_default())
                    .expect("the record decoded, so it is JSON");
                let mut orig = original
                    .get("payload")
                    .and_then(Value::as_object)
                    .cloned()
                    .unwrap_or_default();
                let expected = match (orig.remove("idempotency_key"), header) {
                    (Some(k), _) => k,
                    (None, Some(h)) if !h.is_empty() => Value::String(h.to_string()),
                    _ => Value::String(DERIVED.to_string()),
                };
                assert_eq!(
                    fields.remove("idempotency_key"),
                    Some(expected),
                    "{}",
                    cmd.method
                );
                // Everything else is unchanged.
                assert_eq!(fields, orig, "{}: payload changed", cmd.method);
            }
            // Whatever `call` answers, classifying it never panics.
            let _ = classify(cmd.method, Ok(Value::Object(fields)));
        }
    }
});
