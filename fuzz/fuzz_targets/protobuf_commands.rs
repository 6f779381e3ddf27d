//! A Protobuf binary frame from a client (varint length-delimited commands): decoding
//! never panics, and what decodes re-encodes to something that decodes the same.
#![no_main]

use bytes::Bytes;
use herald::protocol::codec::decode_protobuf_commands;
use libfuzzer_sys::fuzz_target;
use prost::Message as _;

fuzz_target!(|data: &[u8]| {
    if let Ok(commands) = decode_protobuf_commands(Bytes::copy_from_slice(data)) {
        let mut buf = Vec::new();
        for cmd in &commands {
            buf.extend(cmd.encode_length_delimited_to_vec());
        }
        let again = decode_protobuf_commands(Bytes::from(buf)).expect("re-encoded frame decodes");
        assert_eq!(again, commands);
    }
});
