//! Config files: loading never panics; it either succeeds or names what is wrong.
#![no_main]

use herald::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Err(e) = Config::load_from(Some(text), "fuzz.toml", vec![]) {
        assert!(!e.to_string().is_empty());
    }
});
