//! Replays the fuzz corpora and every saved crash (fuzz/corpus, fuzz/regressions)
//! through the same checks as the fuzz targets, without libFuzzer, so CI keeps each
//! input that ever mattered fixed. Longer fuzzing: scripts/fuzz.sh.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use herald::auth::Verifier;
use herald::config::Config;
use herald::protocol::codec::{decode_json_commands, decode_protobuf_commands};
use prost::Message as _;

fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut out = Vec::new();
    for dir in [
        root.join("corpus").join(target),
        root.join("regressions").join(target),
    ] {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let data = std::fs::read(e.path()).expect("read corpus file");
            out.push((e.path(), data));
        }
    }
    out
}

#[test]
fn json_commands_corpus() {
    let all = inputs("json_commands");
    assert!(
        !all.is_empty(),
        "the json_commands corpus is in the repository"
    );
    for (path, data) in all {
        if let Ok(commands) = decode_json_commands(&data) {
            for cmd in commands {
                let text = serde_json::to_vec(&cmd).expect("encode");
                let again = decode_json_commands(&text).expect("decode");
                assert_eq!(again, vec![cmd], "{}", path.display());
            }
        }
    }
}

#[test]
fn protobuf_commands_corpus() {
    let all = inputs("protobuf_commands");
    assert!(!all.is_empty());
    for (path, data) in all {
        if let Ok(commands) = decode_protobuf_commands(Bytes::from(data)) {
            let mut buf = Vec::new();
            for c in &commands {
                buf.extend(c.encode_length_delimited_to_vec());
            }
            let again = decode_protobuf_commands(Bytes::from(buf)).expect("decode");
            assert_eq!(again, commands, "{}", path.display());
        }
    }
}

#[test]
fn jwt_corpus_never_verifies() {
    let cfg = Config::load_from(None, "fuzz", vec![]).expect("config");
    let v = Verifier::new(&cfg.auth, "a secret the fuzzer does not know").expect("verifier");
    let all = inputs("jwt");
    assert!(!all.is_empty());
    for (path, data) in all {
        let Ok(token) = std::str::from_utf8(&data) else {
            continue;
        };
        assert!(v.verify_connect(token).is_err(), "{}", path.display());
        assert!(
            v.verify_subscribe(token, "alice", "news").is_err(),
            "{}",
            path.display()
        );
    }
}

#[test]
fn config_corpus_loads_or_names_the_problem() {
    let all = inputs("config");
    assert!(!all.is_empty());
    for (_, data) in all {
        let Ok(text) = std::str::from_utf8(&data) else {
            continue;
        };
        if let Err(e) = Config::load_from(Some(text), "fuzz.toml", vec![]) {
            assert!(!e.to_string().is_empty());
        }
    }
}

/// The `api_bodies` target: every body for every method answers a result object or a
/// documented error with a message, on a real node (memory broker and presence).
#[tokio::test]
async fn api_bodies_corpus_answers_results_or_documented_errors() {
    use herald::api::methods::{call, METHODS};
    use herald::protocol::codes;
    use std::sync::Arc;
    let config = Arc::new(Config::load_from(None, "fuzz", vec![]).expect("config"));
    let node = herald::node::Node::new(
        config,
        Arc::new(herald::broker::memory::MemoryBroker::new()),
        Arc::new(herald::presence::memory::MemoryPresence::default()),
        None,
    );
    let all = inputs("api_bodies");
    assert!(!all.is_empty());
    for (path, data) in all {
        let Some((&pick, body)) = data.split_first() else {
            continue;
        };
        let method = METHODS
            .get(pick as usize % (METHODS.len() + 1))
            .copied()
            .unwrap_or("nope");
        match call(&node, method, body).await {
            Ok(v) => assert!(v.is_object(), "{}: {v}", path.display()),
            Err(e) => {
                assert!(!e.message.is_empty(), "{}", path.display());
                assert!(
                    codes::ALL_ERRORS.iter().any(|c| c.code == e.code),
                    "{}: code {}",
                    path.display(),
                    e.code
                );
            }
        }
    }
}

/// The `kafka_records` target: a record decodes into a command whose payload is the
/// same JSON object plus an idempotency key (publish, broadcast), or a documented error.
#[test]
fn kafka_records_corpus_decodes_or_names_the_problem() {
    use herald::api::methods::METHODS;
    use herald::kafka::record::{decode, READ_ONLY};
    use herald::protocol::codes;
    use serde_json::Value;
    const DERIVED: &str = "kafka:topic:0:42";
    let all = inputs("kafka_records");
    assert!(!all.is_empty());
    for (path, data) in all {
        let p = path.display();
        let Some((&len, rest)) = data.split_first() else {
            continue;
        };
        let (header, value) = if len == 255 {
            (None, rest)
        } else {
            let n = (len as usize).min(rest.len());
            (std::str::from_utf8(&rest[..n]).ok(), &rest[n..])
        };
        let value = (!value.is_empty()).then_some(value);
        let cmd = match decode(value, header, || DERIVED.to_string()) {
            // `Value` refuses numbers out of f64 range that `RawValue` keeps.
            Ok(_) if serde_json::from_slice::<Value>(value.unwrap_or_default()).is_err() => {
                continue
            }
            Ok(cmd) => cmd,
            Err(e) => {
                assert!(!e.message.is_empty(), "{p}");
                assert!(codes::ALL_ERRORS.iter().any(|c| c.code == e.code), "{p}");
                continue;
            }
        };
        assert!(METHODS.contains(&cmd.method) && !READ_ONLY.contains(&cmd.method));
        let payload: Value = serde_json::from_slice(&cmd.payload).expect("payload is JSON");
        let mut fields = payload.as_object().cloned().expect("payload is an object");
        if matches!(cmd.method, "publish" | "broadcast") {
            let original: Value = serde_json::from_slice(value.unwrap_or_default()).expect("JSON");
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
            assert_eq!(fields.remove("idempotency_key"), Some(expected), "{p}");
            assert_eq!(fields, orig, "{p}: payload changed");
        }
    }
}
