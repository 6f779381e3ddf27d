//! Herald's own WebSocket transport (RFC 6455, server side) on an upgraded socket.
//!
//! Why not actix-ws: it leaves the socket to actix-http's HTTP/1 dispatcher, which keeps
//! an 8 KiB read and an 8 KiB write buffer per connection for as long as it is open, and
//! it moves every message through a channel and a second task. Here the session task
//! owns the socket:
//! - reads go into one scratch buffer per thread; a connection keeps bytes only for a
//!   frame that has not fully arrived (nothing while idle);
//! - writes go straight to the socket (header and payload parts as one vectored write);
//!   only what the socket did not take is kept, as slices of the shared payloads.
//!
//! Frames are parsed with actix-http's `ws::Parser` (masking, lengths, control-frame
//! rules); fragmented messages are joined here, within the same size limit.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};

use actix_http::ws::{OpCode, Parser};
use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The socket, plain TCP or TLS; boxed so that the session is one type for both.
pub(super) trait Io: AsyncRead + AsyncWrite + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + 'static> Io for T {}

/// Size of the per-thread read buffer: one read takes at most this much.
const SCRATCH: usize = 16 * 1024;

/// Largest number of slices handed to one vectored write.
const MAX_IOV: usize = 64;

thread_local! {
    /// Shared by every connection of this worker thread: a read is copied out of it
    /// before the next one, and no borrow lives across an `.await`.
    static SCRATCH_BUF: RefCell<Box<[u8]>> = RefCell::new(vec![0; SCRATCH].into_boxed_slice());
}

/// A complete message from the client.
#[derive(Debug)]
pub(super) enum WsMessage {
    Text(Bytes),
    Binary(Bytes),
    Ping(Bytes),
    Pong,
    Close,
}

/// Why reading stopped with an error the client caused.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum WireError {
    /// A frame or a fragmented message over the size limit.
    TooBig,
    /// Anything else against RFC 6455 (unmasked frame, bad opcode, stray continuation,
    /// invalid UTF-8 in a text message, ...).
    Malformed,
}

/// What one parsed frame gave.
enum Parsed {
    Message(WsMessage),
    /// A fragment that does not finish its message.
    Fragment,
    /// The frame has not fully arrived.
    Incomplete,
}

/// A message being assembled from fragments.
struct Partial {
    text: bool,
    data: BytesMut,
}

pub(super) struct WsConn {
    io: Box<dyn Io>,
    /// Received bytes not yet parsed: only ever an incomplete frame, or frames that
    /// arrived together with the one just returned. Empty (no allocation) while idle.
    inbuf: BytesMut,
    /// Boxed: rare, and it keeps the idle connection small.
    partial: Option<Box<Partial>>,
    /// What the socket did not take yet, in order; empty (no allocation) while idle.
    unsent: VecDeque<Bytes>,
    max: usize,
    eof: bool,
}

/// The frame header for an unmasked server frame; returns its length.
fn header(buf: &mut [u8; 10], op: OpCode, len: usize) -> usize {
    buf[0] = 0x80 | u8::from(op);
    if len < 126 {
        buf[1] = len as u8;
        2
    } else if len <= usize::from(u16::MAX) {
        buf[1] = 126;
        buf[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        4
    } else {
        buf[1] = 127;
        buf[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    }
}

/// The payload length a frame header announces, once enough of it has arrived.
fn announced_len(src: &[u8]) -> Option<u64> {
    let second = *src.get(1)?;
    match second & 0x7f {
        126 => Some(u64::from(u16::from_be_bytes([*src.get(2)?, *src.get(3)?]))),
        127 => {
            let b: [u8; 8] = src.get(2..10)?.try_into().ok()?;
            Some(u64::from_be_bytes(b))
        }
        n => Some(u64::from(n)),
    }
}

/// Whether `src` holds a whole frame: header, mask and the payload it announces.
/// Until then nothing is handed to the parser, which would reserve the announced
/// length at once (a 14-byte header announcing 64 KiB would pin 64 KiB to an idle
/// connection); the buffer grows only with bytes that arrived.
fn whole_frame(src: &[u8]) -> bool {
    let (Some(second), Some(len)) = (src.get(1), announced_len(src)) else {
        return false;
    };
    let ext = match second & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let mask = if second & 0x80 != 0 { 4 } else { 0 };
    src.len() as u64 >= 2 + ext + mask + len
}

/// RFC 6455 5.5.1 / 7.4: an empty close payload, or a 2-byte code a peer may send
/// followed by a UTF-8 reason.
fn valid_close(payload: &[u8]) -> bool {
    match payload {
        [] => true,
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            matches!(code, 1000..=1003 | 1007..=1011 | 3000..=4999)
                && std::str::from_utf8(reason).is_ok()
        }
        [_] => false,
    }
}

impl WsConn {
    /// `leftover`: bytes read past the handshake (frames the client sent at once).
    pub(super) fn new(io: Box<dyn Io>, leftover: &[u8], max: usize) -> Self {
        WsConn {
            io,
            inbuf: BytesMut::from(leftover),
            partial: None,
            unsent: VecDeque::new(),
            max,
            eof: false,
        }
    }

    /// The next message; `None` once the client has gone (EOF or a broken socket).
    /// Cancel-safe: a message is returned in the poll that completes it.
    pub(super) async fn recv(&mut self) -> Option<Result<WsMessage, WireError>> {
        poll_fn(|cx| self.poll_recv(cx)).await
    }

    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<WsMessage, WireError>>> {
        loop {
            if !self.inbuf.is_empty() {
                match self.parse_one() {
                    Ok(Parsed::Message(msg)) => return Poll::Ready(Some(Ok(msg))),
                    Ok(Parsed::Fragment) => continue,
                    Ok(Parsed::Incomplete) => {}
                    Err(e) => return Poll::Ready(Some(Err(e))),
                }
            }
            if self.eof {
                return Poll::Ready(None);
            }
            let io = &mut self.io;
            let inbuf = &mut self.inbuf;
            let read = SCRATCH_BUF.with(|s| {
                let mut s = s.borrow_mut();
                let mut rb = ReadBuf::new(&mut s[..]);
                match Pin::new(&mut **io).poll_read(cx, &mut rb) {
                    Poll::Ready(Ok(())) => {
                        inbuf.extend_from_slice(rb.filled());
                        Poll::Ready(Ok(rb.filled().len()))
                    }
                    Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                    Poll::Pending => Poll::Pending,
                }
            });
            match read {
                Poll::Pending => {
                    self.release_inbuf();
                    return Poll::Pending;
                }
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                    // An incomplete frame at EOF is dropped with the connection.
                    self.eof = true;
                    return Poll::Ready(None);
                }
                Poll::Ready(Ok(_)) => {}
            }
        }
    }

    /// Drops the read buffer's allocation once everything in it was parsed.
    fn release_inbuf(&mut self) {
        if self.inbuf.is_empty() && self.inbuf.capacity() > 0 {
            self.inbuf = BytesMut::new();
        }
    }

    /// Parses one frame from `inbuf`.
    fn parse_one(&mut self) -> Result<Parsed, WireError> {
        // Refuse an oversize frame from its header, before its payload is buffered.
        if announced_len(&self.inbuf).is_some_and(|n| n > self.max as u64) {
            return Err(WireError::TooBig);
        }
        if !whole_frame(&self.inbuf) {
            return Ok(Parsed::Incomplete);
        }
        let parsed = Parser::parse(&mut self.inbuf, true, self.max).map_err(|e| match e {
            actix_http::ws::ProtocolError::Overflow => WireError::TooBig,
            _ => WireError::Malformed,
        })?;
        let Some((fin, op, payload)) = parsed else {
            return Ok(Parsed::Incomplete);
        };
        let payload = payload.unwrap_or_default();
        self.release_inbuf();
        // Control frames are never fragmented (RFC 6455 5.5).
        if !fin && matches!(op, OpCode::Ping | OpCode::Pong | OpCode::Close) {
            return Err(WireError::Malformed);
        }
        match op {
            OpCode::Ping => Ok(Parsed::Message(WsMessage::Ping(payload.freeze()))),
            OpCode::Pong => Ok(Parsed::Message(WsMessage::Pong)),
            OpCode::Close if !valid_close(&payload) => Err(WireError::Malformed),
            OpCode::Close => Ok(Parsed::Message(WsMessage::Close)),
            OpCode::Text | OpCode::Binary => {
                if self.partial.is_some() {
                    return Err(WireError::Malformed);
                }
                let text = op == OpCode::Text;
                if fin {
                    return finish_message(text, payload).map(Parsed::Message);
                }
                self.partial = Some(Box::new(Partial {
                    text,
                    data: payload,
                }));
                Ok(Parsed::Fragment)
            }
            OpCode::Continue => {
                let Some(p) = self.partial.as_mut() else {
                    return Err(WireError::Malformed);
                };
                if p.data.len() + payload.len() > self.max {
                    return Err(WireError::TooBig);
                }
                p.data.extend_from_slice(&payload);
                if !fin {
                    return Ok(Parsed::Fragment);
                }
                let Some(p) = self.partial.take() else {
                    return Err(WireError::Malformed);
                };
                finish_message(p.text, p.data).map(Parsed::Message)
            }
            OpCode::Bad => Err(WireError::Malformed),
        }
    }

    /// Writes one message whose payload is `parts`, joined by `sep` when given, then
    /// waits until the socket has taken all of it. Cancel-safe: what is not written yet
    /// stays queued for the next write or `close`.
    pub(super) async fn send(
        &mut self,
        op: OpCode,
        parts: &[Bytes],
        sep: Option<&'static [u8]>,
    ) -> io::Result<()> {
        let mut pending = Some(parts);
        poll_fn(|cx| {
            if let Some(parts) = pending.take() {
                self.write_now(cx, op, parts, sep)?;
            }
            self.poll_drain(cx)
        })
        .await
    }

    /// Sends a close frame (`code` and `reason`, or an empty one) after anything still
    /// queued, and shuts down the write side.
    pub(super) async fn close(&mut self, code: Option<(u16, &str)>) -> io::Result<()> {
        let payload = match code {
            None => Bytes::new(),
            Some((code, reason)) => {
                let mut p = BytesMut::with_capacity(2 + reason.len());
                p.extend_from_slice(&code.to_be_bytes());
                // A close payload holds at most 125 bytes.
                let mut end = reason.len().min(123);
                while !reason.is_char_boundary(end) {
                    end -= 1;
                }
                p.extend_from_slice(&reason.as_bytes()[..end]);
                p.freeze()
            }
        };
        self.send(OpCode::Close, &[payload], None).await?;
        poll_fn(|cx| Pin::new(&mut *self.io).poll_shutdown(cx)).await
    }

    /// Reads and drops whatever the client still sends until it closes its side, so
    /// that closing a socket with unread input does not reset the connection and
    /// destroy the close frame before the client has read it.
    pub(super) async fn drain_input(&mut self) {
        self.inbuf = BytesMut::new();
        self.partial = None;
        let io = &mut self.io;
        poll_fn(|cx| loop {
            let r = SCRATCH_BUF.with(|s| {
                let mut s = s.borrow_mut();
                let mut rb = ReadBuf::new(&mut s[..]);
                Pin::new(&mut **io)
                    .poll_read(cx, &mut rb)
                    .map_ok(|()| rb.filled().len())
            });
            match r {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(()),
                Poll::Ready(Ok(_)) => continue,
                Poll::Pending => return Poll::Pending,
            }
        })
        .await
    }

    /// Writes the frame at once, as far as the socket takes it; queues the rest.
    fn write_now(
        &mut self,
        cx: &mut Context<'_>,
        op: OpCode,
        parts: &[Bytes],
        sep: Option<&'static [u8]>,
    ) -> io::Result<()> {
        let sep = sep.unwrap_or_default();
        let len =
            parts.iter().map(Bytes::len).sum::<usize>() + sep.len() * parts.len().saturating_sub(1);
        let mut hdr = [0u8; 10];
        let hlen = header(&mut hdr, op, len);
        let hdr = &hdr[..hlen];
        let count = 1 + 2 * parts.len();
        let mut written = 0;
        if self.unsent.is_empty() {
            // A loop because one vectored write takes at most MAX_IOV slices.
            loop {
                let mut iov = [IoSlice::new(&[]); MAX_IOV];
                let mut k = 0;
                let mut skip = written;
                for c in (0..count).map(|i| chunk(hdr, parts, sep, i)) {
                    if skip >= c.len() {
                        skip -= c.len();
                        continue;
                    }
                    iov[k] = IoSlice::new(&c[skip..]);
                    skip = 0;
                    k += 1;
                    if k == MAX_IOV {
                        break;
                    }
                }
                if k == 0 {
                    return Ok(());
                }
                match Pin::new(&mut *self.io).poll_write_vectored(cx, &iov[..k]) {
                    Poll::Ready(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
                    Poll::Ready(Ok(n)) => written += n,
                    Poll::Ready(Err(e)) => return Err(e),
                    Poll::Pending => break,
                }
            }
        }
        // Queue what the socket did not take: payloads as slices of the shared bytes.
        let mut skip = written;
        for i in 0..count {
            let c = chunk(hdr, parts, sep, i);
            if skip >= c.len() {
                skip -= c.len();
                continue;
            }
            let rest = match i {
                0 => Bytes::copy_from_slice(&c[skip..]),
                i if i % 2 == 1 => Bytes::from_static(&sep[skip..]),
                i => parts[i / 2 - 1].slice(skip..),
            };
            self.unsent.push_back(rest);
            skip = 0;
        }
        Ok(())
    }

    /// Writes the queue out, then flushes the socket (TLS keeps records until then).
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.unsent.is_empty() {
            let mut iov = [IoSlice::new(&[]); MAX_IOV];
            let mut k = 0;
            for b in self.unsent.iter().take(MAX_IOV) {
                iov[k] = IoSlice::new(b);
                k += 1;
            }
            let n = match Pin::new(&mut *self.io).poll_write_vectored(cx, &iov[..k]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            };
            let mut n = n;
            while n > 0 {
                let Some(front) = self.unsent.front_mut() else {
                    break;
                };
                if n >= front.len() {
                    n -= front.len();
                    self.unsent.pop_front();
                } else {
                    front.advance(n);
                    n = 0;
                }
            }
        }
        if self.unsent.capacity() > 0 {
            self.unsent = VecDeque::new();
        }
        Pin::new(&mut *self.io).poll_flush(cx)
    }
}

/// A whole message; text must be UTF-8 (RFC 6455 §8.1).
fn finish_message(text: bool, data: BytesMut) -> Result<WsMessage, WireError> {
    if text {
        if std::str::from_utf8(&data).is_err() {
            return Err(WireError::Malformed);
        }
        Ok(WsMessage::Text(data.freeze()))
    } else {
        Ok(WsMessage::Binary(data.freeze()))
    }
}

/// The `i`-th piece of a message on the wire: the header, then for each part the
/// separator before it (empty for the first) and the part.
fn chunk<'a>(hdr: &'a [u8], parts: &'a [Bytes], sep: &'static [u8], i: usize) -> &'a [u8] {
    match i {
        0 => hdr,
        i if i % 2 == 1 && i > 1 => sep,
        i if i % 2 == 1 => &[],
        i => &parts[i / 2 - 1],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt};

    /// A masked client frame.
    fn client_frame(op: OpCode, fin: bool, payload: &[u8]) -> Vec<u8> {
        let mut b = BytesMut::new();
        Parser::write_message(&mut b, payload, op, fin, true);
        b.to_vec()
    }

    #[tokio::test]
    async fn frames_split_at_every_byte_arrive_whole_and_idle_keeps_no_buffer() {
        let mut wire = Vec::new();
        wire.extend(client_frame(OpCode::Text, true, b"{\"id\":1}"));
        wire.extend(client_frame(OpCode::Binary, false, &[1, 2, 3]));
        wire.extend(client_frame(OpCode::Ping, true, b"p"));
        wire.extend(client_frame(OpCode::Continue, true, &[4; 300]));
        for split in 1..wire.len() {
            let (mut client, server) = duplex(64 * 1024);
            let mut ws = WsConn::new(Box::new(server), &wire[..split.min(3)], 1 << 16);
            client.write_all(&wire[split.min(3)..split]).await.unwrap();
            let tail = wire[split..].to_vec();
            let writer = tokio::spawn(async move {
                tokio::task::yield_now().await;
                client.write_all(&tail).await.unwrap();
                client
            });
            let m1 = ws.recv().await.unwrap().unwrap();
            assert!(
                matches!(&m1, WsMessage::Text(t) if &t[..] == b"{\"id\":1}"),
                "{m1:?}"
            );
            let m2 = ws.recv().await.unwrap().unwrap();
            assert!(
                matches!(&m2, WsMessage::Ping(p) if &p[..] == b"p"),
                "{m2:?}"
            );
            let m3 = ws.recv().await.unwrap().unwrap();
            let mut want = vec![1, 2, 3];
            want.extend([4; 300]);
            assert!(
                matches!(&m3, WsMessage::Binary(b) if b[..] == want[..]),
                "split {split}"
            );
            assert_eq!(
                ws.inbuf.capacity(),
                0,
                "idle connection keeps no read buffer"
            );
            assert!(ws.partial.is_none());
            drop(writer.await.unwrap());
            assert!(ws.recv().await.is_none(), "EOF ends the stream");
        }
    }

    /// Random frames with random bytes flipped, fed in random pieces: every input ends
    /// in messages, an error or EOF; none panics or hangs, and no message exceeds the
    /// limit.
    #[tokio::test]
    async fn random_input_never_panics_or_exceeds_the_limit() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let ops = [
            OpCode::Text,
            OpCode::Binary,
            OpCode::Continue,
            OpCode::Ping,
            OpCode::Pong,
            OpCode::Close,
        ];
        for _ in 0..500 {
            let mut wire = Vec::new();
            for _ in 0..rng.gen_range(1..6) {
                let len = rng.gen_range(0..300);
                let payload: Vec<u8> = (0..len).map(|_| rng.gen_range(b'a'..=b'z')).collect();
                let op = ops[rng.gen_range(0..ops.len())];
                wire.extend(client_frame(op, rng.gen_bool(0.7), &payload));
            }
            for _ in 0..rng.gen_range(0..4) {
                let i = rng.gen_range(0..wire.len());
                wire[i] = rng.gen();
            }
            let (mut client, server) = duplex(1 << 16);
            let mut ws = WsConn::new(Box::new(server), &[], 200);
            let mut rest = &wire[..];
            while !rest.is_empty() {
                let n = rng.gen_range(1..=rest.len());
                client.write_all(&rest[..n]).await.unwrap();
                rest = &rest[n..];
            }
            drop(client);
            loop {
                match ws.recv().await {
                    None | Some(Err(_)) => break,
                    Some(Ok(WsMessage::Text(b) | WsMessage::Binary(b))) => assert!(b.len() <= 200),
                    Some(Ok(_)) => {}
                }
            }
        }
    }

    /// A header announcing a large frame allocates nothing until the bytes arrive; a
    /// valid close with a code and reason is a close.
    #[tokio::test]
    async fn announced_lengths_are_not_reserved_ahead() {
        let (mut client, server) = duplex(1 << 17);
        let mut ws = WsConn::new(Box::new(server), &[], 1 << 16);
        let frame = client_frame(OpCode::Binary, true, &vec![7; 60_000]);
        client.write_all(&frame[..14]).await.unwrap();
        let pending = tokio::time::timeout(Duration::from_millis(50), ws.recv()).await;
        assert!(pending.is_err(), "no message from a header alone");
        assert!(
            ws.inbuf.capacity() < 1024,
            "buffer reserved {} bytes for a frame that has not arrived",
            ws.inbuf.capacity()
        );
        client.write_all(&frame[14..]).await.unwrap();
        match ws.recv().await.unwrap().unwrap() {
            WsMessage::Binary(b) => assert_eq!(b.len(), 60_000),
            other => panic!("{other:?}"),
        }
        let close = [&1000u16.to_be_bytes()[..], b"bye"].concat();
        client
            .write_all(&client_frame(OpCode::Close, true, &close))
            .await
            .unwrap();
        assert!(matches!(
            ws.recv().await.unwrap().unwrap(),
            WsMessage::Close
        ));
    }

    #[tokio::test]
    async fn oversize_is_refused_from_the_header() {
        let (mut client, server) = duplex(1024);
        let mut ws = WsConn::new(Box::new(server), &[], 100);
        // Announces 1 MB, sends only the header and mask.
        let frame = client_frame(OpCode::Binary, true, &vec![0; 1 << 20]);
        client.write_all(&frame[..14]).await.unwrap();
        assert_eq!(ws.recv().await.unwrap().unwrap_err(), WireError::TooBig);
    }

    #[tokio::test]
    async fn fragments_over_the_limit_and_protocol_errors() {
        let cases: Vec<(Vec<u8>, WireError)> = vec![
            (
                [
                    client_frame(OpCode::Text, false, &[b'a'; 60]),
                    client_frame(OpCode::Continue, true, &[b'a'; 60]),
                ]
                .concat(),
                WireError::TooBig,
            ),
            (
                client_frame(OpCode::Continue, true, b"x"),
                WireError::Malformed,
            ),
            (
                client_frame(OpCode::Text, true, &[0xff, 0xfe]),
                WireError::Malformed,
            ),
            (
                [
                    client_frame(OpCode::Text, false, b"a"),
                    client_frame(OpCode::Text, true, b"b"),
                ]
                .concat(),
                WireError::Malformed,
            ),
            // Unmasked client frame.
            (vec![0x81, 0x01, b'a'], WireError::Malformed),
            // A fragmented control frame.
            (
                client_frame(OpCode::Ping, false, b"p"),
                WireError::Malformed,
            ),
            // Close payloads: one byte, a code no peer may send, a reason not UTF-8.
            (
                client_frame(OpCode::Close, true, &[3]),
                WireError::Malformed,
            ),
            (
                client_frame(OpCode::Close, true, &1005u16.to_be_bytes()),
                WireError::Malformed,
            ),
            (
                client_frame(OpCode::Close, true, &[0x03, 0xe8, 0xff]),
                WireError::Malformed,
            ),
        ];
        for (bytes, want) in cases {
            let (mut client, server) = duplex(1024);
            let mut ws = WsConn::new(Box::new(server), &[], 100);
            client.write_all(&bytes).await.unwrap();
            assert_eq!(ws.recv().await.unwrap().unwrap_err(), want, "{bytes:?}");
        }
    }

    /// Reads server frames until a close frame; returns (opcode, payload) of each.
    async fn read_frames(mut r: impl AsyncRead + Unpin) -> Vec<(OpCode, Vec<u8>)> {
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        loop {
            while let Some((fin, op, p)) = Parser::parse(&mut buf, false, 1 << 24).unwrap() {
                assert!(fin);
                let p = p.map(|p| p.to_vec()).unwrap_or_default();
                out.push((op, p));
                if op == OpCode::Close {
                    return out;
                }
            }
            let mut chunk = [0u8; 7];
            let n = r.read(&mut chunk).await.unwrap();
            assert!(n > 0, "EOF before the close frame");
            buf.extend_from_slice(&chunk[..n]);
        }
    }

    #[tokio::test]
    async fn writes_that_the_socket_takes_in_pieces_arrive_whole_and_in_order() {
        // A 16-byte pipe: every write is partial, so the queue of unsent slices is used.
        let (client, server) = duplex(16);
        let reader = tokio::spawn(read_frames(client));
        let mut ws = WsConn::new(Box::new(server), &[], 1024);
        let parts: Vec<Bytes> = (0..200u32)
            .map(|i| Bytes::from(format!("{{\"n\":{i}}}")))
            .collect();
        ws.send(OpCode::Text, &parts, Some(b"\n")).await.unwrap();
        let big = Bytes::from(vec![7u8; 70_000]);
        ws.send(OpCode::Binary, std::slice::from_ref(&big), None)
            .await
            .unwrap();
        ws.send(OpCode::Text, &[Bytes::from_static(b"{}")], Some(b"\n"))
            .await
            .unwrap();
        assert_eq!(ws.unsent.capacity(), 0, "nothing kept once written");
        ws.close(Some((3008, "slow"))).await.unwrap();
        let frames = reader.await.unwrap();
        let joined = parts
            .iter()
            .map(|p| std::str::from_utf8(p).unwrap())
            .collect::<Vec<_>>()
            .join("\n");
        assert_eq!(frames.len(), 4);
        assert_eq!(frames[0], (OpCode::Text, joined.into_bytes()));
        assert_eq!(frames[1], (OpCode::Binary, big.to_vec()));
        assert_eq!(frames[2], (OpCode::Text, b"{}".to_vec()));
        let mut close = 3008u16.to_be_bytes().to_vec();
        close.extend_from_slice(b"slow");
        assert_eq!(frames[3], (OpCode::Close, close));
    }

    #[tokio::test]
    async fn a_write_cancelled_midway_is_finished_by_the_next_one() {
        let (mut client, server) = duplex(16);
        let mut ws = WsConn::new(Box::new(server), &[], 1024);
        let payload = Bytes::from(vec![b'x'; 100]);
        // The pipe takes 16 bytes; the rest stays queued when the write is dropped.
        let first = tokio::time::timeout(
            std::time::Duration::from_millis(10),
            ws.send(OpCode::Text, std::slice::from_ref(&payload), None),
        )
        .await;
        assert!(first.is_err(), "the write waits for the reader");
        assert!(!ws.unsent.is_empty());
        let reader = tokio::spawn(async move {
            let mut all = Vec::new();
            client.read_to_end(&mut all).await.unwrap();
            all
        });
        ws.send(OpCode::Text, &[Bytes::from_static(b"y")], None)
            .await
            .unwrap();
        ws.close(None).await.unwrap();
        drop(ws);
        let all = reader.await.unwrap();
        let mut want = BytesMut::new();
        Parser::write_message(&mut want, &payload, OpCode::Text, true, false);
        Parser::write_message(&mut want, b"y", OpCode::Text, true, false);
        Parser::write_message(&mut want, b"", OpCode::Close, true, false);
        assert_eq!(all, want.to_vec());
    }
}
