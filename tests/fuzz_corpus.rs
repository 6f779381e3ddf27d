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
