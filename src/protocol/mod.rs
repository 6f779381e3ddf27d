//! The Centrifugo client protocol v2: messages, codes, and framing for JSON and Protobuf.

pub mod codec;
pub mod codes;
pub mod json_bytes;
pub mod messages;

pub use codec::Format;
