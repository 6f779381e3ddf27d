//! Framing of commands and replies for the two wire formats.
//!
//! JSON: one text frame holds one or more commands separated by `\n`; replies are
//! joined the same way. Protobuf: one binary frame holds one or more varint
//! length-delimited messages. Because every encoded reply is self-delimiting, a
//! connection can coalesce pending replies by plain concatenation (JSON adds the `\n`).

use bytes::{Bytes, BytesMut};
use prost::Message as _;

use super::messages::{Command, Reply};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    Json,
    Protobuf,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::Protobuf => "protobuf",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("invalid json command: {0}")]
    Json(#[from] serde_json::Error),
    #[error("invalid protobuf command: {0}")]
    Protobuf(#[from] prost::DecodeError),
    #[error("frame does not match the negotiated protocol format")]
    WrongFrameType,
}

/// Decodes every command in one JSON text frame.
pub fn decode_json_commands(frame: &[u8]) -> Result<Vec<Command>, DecodeError> {
    let mut out = Vec::with_capacity(1);
    for line in frame.split(|b| *b == b'\n') {
        let line = line.trim_ascii();
        if line.is_empty() {
            continue;
        }
        out.push(serde_json::from_slice::<Command>(line)?);
    }
    Ok(out)
}

/// Decodes every command in one Protobuf binary frame.
pub fn decode_protobuf_commands(mut frame: Bytes) -> Result<Vec<Command>, DecodeError> {
    let mut out = Vec::with_capacity(1);
    while !frame.is_empty() {
        out.push(Command::decode_length_delimited(&mut frame)?);
    }
    Ok(out)
}

/// Encodes one reply for the wire, self-delimited (Protobuf) or bare (JSON; the writer
/// inserts `\n` between coalesced JSON replies).
pub fn encode_reply(format: Format, reply: &Reply) -> Bytes {
    match format {
        Format::Json => match serde_json::to_vec(reply) {
            Ok(v) => Bytes::from(v),
            // Serializing owned protocol structs cannot fail (no maps with non-string
            // keys, no failing Serialize impls); keep a valid frame regardless.
            Err(_) => Bytes::from_static(b"{}"),
        },
        Format::Protobuf => Bytes::from(reply.encode_length_delimited_to_vec()),
    }
}

/// The server ping: an empty reply.
pub fn ping_frame(format: Format) -> Bytes {
    match format {
        Format::Json => Bytes::from_static(b"{}"),
        Format::Protobuf => Bytes::from_static(&[0]),
    }
}

/// Joins already-encoded replies into one frame payload.
pub fn join_frames(format: Format, parts: &[Bytes]) -> Bytes {
    if parts.len() == 1 {
        return parts[0].clone();
    }
    let total: usize = parts.iter().map(|p| p.len() + 1).sum();
    let mut buf = BytesMut::with_capacity(total);
    for (i, p) in parts.iter().enumerate() {
        if format == Format::Json && i > 0 {
            buf.extend_from_slice(b"\n");
        }
        buf.extend_from_slice(p);
    }
    buf.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::messages::{Error, PublishRequest};

    #[test]
    fn json_batch_splits_on_newlines() {
        let cmds = decode_json_commands(
            b"{\"id\":1,\"publish\":{\"channel\":\"a\",\"data\":{\"x\":1}}}\n{}\n",
        )
        .unwrap();
        assert_eq!(cmds.len(), 2);
        assert_eq!(cmds[0].id, 1);
        assert_eq!(&cmds[0].publish.as_ref().unwrap().data[..], b"{\"x\":1}");
        assert_eq!(cmds[1], Command::default());
    }

    /// Found by the `json_commands` fuzz target: a publish without data must encode
    /// back to a publish without data, not to `"data":""`.
    #[test]
    fn publish_without_data_round_trips() {
        let cmds = decode_json_commands(br#"{"id":3,"publish":{"channel":"c"}}"#).unwrap();
        let again = decode_json_commands(&serde_json::to_vec(&cmds[0]).unwrap()).unwrap();
        assert_eq!(again, cmds);
    }

    #[test]
    fn protobuf_batch_round_trips() {
        let a = Command {
            id: 7,
            publish: Some(PublishRequest {
                channel: "c".into(),
                data: Bytes::from_static(b"hi"),
            }),
            ..Default::default()
        };
        let b = Command {
            id: 8,
            ..Default::default()
        };
        let mut buf = a.encode_length_delimited_to_vec();
        buf.extend(b.encode_length_delimited_to_vec());
        let cmds = decode_protobuf_commands(Bytes::from(buf)).unwrap();
        assert_eq!(cmds, vec![a, b]);
    }

    #[test]
    fn truncated_protobuf_is_an_error_not_a_panic() {
        assert!(decode_protobuf_commands(Bytes::from_static(&[0x05, 0x08])).is_err());
    }

    #[test]
    fn json_reply_omits_defaults() {
        let r = Reply {
            id: 3,
            error: Some(Error {
                code: 103,
                message: "permission denied".into(),
                temporary: false,
            }),
            ..Default::default()
        };
        let s = encode_reply(Format::Json, &r);
        assert_eq!(
            &s[..],
            br#"{"id":3,"error":{"code":103,"message":"permission denied"}}"#
        );
    }

    #[test]
    fn joined_json_frames_are_newline_separated() {
        let f = join_frames(
            Format::Json,
            &[Bytes::from_static(b"{}"), Bytes::from_static(b"{\"id\":1}")],
        );
        assert_eq!(&f[..], b"{}\n{\"id\":1}");
    }
}
