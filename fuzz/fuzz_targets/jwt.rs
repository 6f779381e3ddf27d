//! Connection and subscription tokens from clients: verification never panics and never
//! accepts a token the fuzzer could not have signed.
#![no_main]

use std::sync::OnceLock;

use herald::auth::Verifier;
use herald::config::Config;
use libfuzzer_sys::fuzz_target;

fn verifier() -> &'static Verifier {
    static V: OnceLock<Verifier> = OnceLock::new();
    V.get_or_init(|| {
        let cfg = Config::load_from(None, "fuzz", vec![]).expect("default config");
        Verifier::new(&cfg.auth, "a secret the fuzzer does not know").expect("verifier")
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else { return };
    assert!(verifier().verify_connect(token).is_err(), "accepted a forged token: {token}");
    assert!(verifier().verify_subscribe(token, "alice", "news").is_err());
});
