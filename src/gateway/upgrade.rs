//! The WebSocket handshake on the socket actix-http hands over.
//!
//! actix-http's HTTP/1 dispatcher passes every request carrying `Upgrade: websocket`
//! (and its socket, with any bytes read past the request head) to the service installed
//! with `HttpServiceBuilder::upgrade`; the dispatcher and its two 8 KiB buffers are gone
//! from then on. Here the handshake is checked and answered by hand (101, or a refusal
//! with `Connection: close`), and the connection's session runs on the bare socket.

use std::convert::Infallible;

use actix_codec::Framed;
use actix_http::header::SEC_WEBSOCKET_KEY;
use actix_http::ws::{hash_key, verify_handshake, HandshakeError};
use actix_http::{h1, Request, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::session::Session;
use super::wire::WsConn;
use super::{admit, negotiate, GatewayState, Refusal};

/// The WebSocket endpoint's path (JSON and Protobuf alike; the format is negotiated).
pub const PATH: &str = "/connection/websocket";

/// Serves one upgrade request to its end: the session runs inside this future, in the
/// connection's own task.
pub fn serve<T>(
    state: GatewayState,
    req: Request,
    framed: Framed<T, h1::Codec>,
) -> impl std::future::Future<Output = Result<(), Infallible>>
where
    T: AsyncRead + AsyncWrite + Unpin + 'static,
{
    // The handshake's state (the request, the HTTP layer's buffers) lives in its own
    // box, freed before the session starts: an `async fn` would keep its arguments'
    // storage (~800 bytes) in the connection's future for as long as it runs.
    let handshake = Box::pin(handshake(state, req, framed));
    async move {
        if let Some(session) = handshake.await {
            session.run().await;
        }
        Ok(())
    }
}

/// Answers the handshake. Every buffer of the HTTP layer is dropped when this returns.
async fn handshake<T>(
    state: GatewayState,
    req: Request,
    framed: Framed<T, h1::Codec>,
) -> Option<Box<Session>>
where
    T: AsyncRead + AsyncWrite + Unpin + 'static,
{
    let parts = framed.into_parts();
    let mut io = parts.io;
    let timeout = state.node.config().client.write_timeout;
    // A response to an earlier request on this connection may still be unwritten.
    if !parts.write_buf.is_empty() {
        write(&mut io, &parts.write_buf, timeout).await.ok()?;
    }
    drop(parts.write_buf);
    let head = req.head();
    let answer = if head.uri.path() != PATH {
        Err(Refusal {
            status: StatusCode::NOT_FOUND,
            body: String::new(),
            json: false,
            retry_after: false,
        })
    } else {
        admit(&state, &head.headers, head.peer_addr.map(|a| a.ip()))
            .and_then(|()| verify_handshake(head).map_err(handshake_refusal))
    };
    if let Err(r) = answer {
        let _ = write(&mut io, &refusal_bytes(&r), timeout).await;
        let _ = io.shutdown().await;
        return None;
    }
    let key = head.headers.get(SEC_WEBSOCKET_KEY)?;
    let (format, subprotocol) = negotiate(&head.headers, head.uri.query().unwrap_or(""));
    let accept = hash_key(key.as_bytes());
    let response = switching(&accept, subprotocol);
    drop(req);
    write(&mut io, response.as_bytes(), timeout).await.ok()?;
    let max = state.node.config().client.max_frame_bytes;
    let ws = WsConn::new(Box::new(io), &parts.read_buf, max);
    drop(parts.read_buf);
    Some(Box::new(Session::new(state, format, ws)))
}

async fn write<T: AsyncWrite + Unpin>(
    io: &mut T,
    bytes: &[u8],
    limit: std::time::Duration,
) -> std::io::Result<()> {
    let w = async {
        io.write_all(bytes).await?;
        io.flush().await
    };
    match tokio::time::timeout(limit, w).await {
        Ok(r) => r,
        Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
    }
}

/// `101 Switching Protocols`.
fn switching(accept: &[u8], subprotocol: Option<&str>) -> String {
    let accept = std::str::from_utf8(accept).unwrap_or_default();
    let mut r = format!(
        "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: {accept}\r\n"
    );
    if let Some(p) = subprotocol {
        r.push_str("sec-websocket-protocol: ");
        r.push_str(p);
        r.push_str("\r\n");
    }
    r.push_str("\r\n");
    r
}

/// The answers actix-http gives for each handshake error.
fn handshake_refusal(e: HandshakeError) -> Refusal {
    let status = match e {
        HandshakeError::GetMethodRequired => StatusCode::METHOD_NOT_ALLOWED,
        HandshakeError::UnsupportedVersion => StatusCode::UPGRADE_REQUIRED,
        _ => StatusCode::BAD_REQUEST,
    };
    Refusal {
        status,
        body: e.to_string(),
        json: false,
        retry_after: false,
    }
}

/// A whole HTTP/1.1 response that closes the connection.
fn refusal_bytes(r: &Refusal) -> Vec<u8> {
    let mut head = format!(
        "HTTP/1.1 {} {}\r\ncontent-length: {}\r\nconnection: close\r\n",
        r.status.as_u16(),
        r.status.canonical_reason().unwrap_or(""),
        r.body.len()
    );
    let kind = if r.json {
        "application/json"
    } else {
        "text/plain; charset=utf-8"
    };
    head.push_str("content-type: ");
    head.push_str(kind);
    head.push_str("\r\n");
    if r.retry_after {
        head.push_str("retry-after: 1\r\n");
    }
    match r.status {
        StatusCode::METHOD_NOT_ALLOWED => head.push_str("allow: GET\r\n"),
        StatusCode::UPGRADE_REQUIRED => {
            head.push_str("upgrade: websocket\r\nsec-websocket-version: 13\r\n")
        }
        _ => {}
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(r.body.as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of what `f` returns, without calling it.
    fn returned_size<A, B, C, R>(_: fn(A, B, C) -> R) -> usize {
        std::mem::size_of::<R>()
    }

    /// Every idle connection holds its future and its boxed session: a large state
    /// added inline (a command's future, a timer, a buffer) shows here, not only in the
    /// idle benchmark. Measured 800 and 440 bytes (debug build) when this was written.
    #[test]
    fn connection_state_stays_small() {
        let future = returned_size(serve::<tokio::net::TcpStream> as fn(_, _, _) -> _);
        let session = std::mem::size_of::<Session>();
        assert!(future <= 1024, "connection future is {future} bytes");
        assert!(session <= 512, "session is {session} bytes");
    }

    #[test]
    fn refusals_are_complete_responses() {
        let r = Refusal {
            status: StatusCode::TOO_MANY_REQUESTS,
            body: "{}".into(),
            json: true,
            retry_after: true,
        };
        let text = String::from_utf8(refusal_bytes(&r)).unwrap();
        assert!(
            text.starts_with("HTTP/1.1 429 Too Many Requests\r\n"),
            "{text}"
        );
        assert!(text.contains("content-length: 2\r\n"), "{text}");
        assert!(text.contains("retry-after: 1\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\n{}"), "{text}");
    }
}
