//! A JSON text frame from a client: decoding never panics, and what decodes survives a
//! round trip through the encoder unchanged.
#![no_main]

use herald::protocol::codec::decode_json_commands;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(commands) = decode_json_commands(data) {
        for cmd in commands {
            let text = serde_json::to_vec(&cmd).expect("a decoded command encodes");
            let again = decode_json_commands(&text).expect("an encoded command decodes");
            assert_eq!(again, vec![cmd]);
        }
    }
});
