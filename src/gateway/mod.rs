//! The WebSocket endpoint: handshake, format negotiation, one session task per socket.
//!
//! A message's way in: `endpoint` accepts the socket, `session` runs one `select!` loop
//! per connection, `commands`/`connect`/`subscribe` turn each command into a reply by
//! calling the node, and `writer` coalesces replies and queued pushes into frames.

mod commands;
mod connect;
pub mod meters;
pub mod origin;
mod push_rpc;
pub mod ratelimit;
mod rpc;
mod session;
mod subscribe;

use std::sync::Arc;

use actix_web::http::header::{HeaderValue, SEC_WEBSOCKET_PROTOCOL};
use actix_web::{web, HttpRequest, HttpResponse};
use tokio_util::sync::CancellationToken;

use crate::auth::Verifier;
use crate::node::Node;
use crate::protocol::Format;

pub const PROTOBUF_SUBPROTOCOL: &str = "centrifuge-protobuf";
const JSON_SUBPROTOCOL: &str = "centrifuge-json";

/// What every session needs from the application.
#[derive(Clone)]
pub struct GatewayState {
    pub node: Node,
    pub verifier: Arc<Verifier>,
    /// Cancelled on shutdown: sessions that are not connected yet close at once.
    pub shutdown: CancellationToken,
    pub meters: meters::WireMeters,
    pub limits: Arc<ratelimit::SharedLimits>,
}

/// Picks the wire format the way the official SDKs ask for it: the
/// `centrifuge-protobuf` subprotocol, or `format=protobuf` / `cf_protocol=protobuf` in
/// the query (transports that cannot set a subprotocol). Returns the subprotocol to echo.
fn negotiate(req: &HttpRequest) -> (Format, Option<&'static str>) {
    let offered: Vec<String> = req
        .headers()
        .get_all(SEC_WEBSOCKET_PROTOCOL)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|s| s.trim().to_string()))
        .collect();
    if offered.iter().any(|p| p == PROTOBUF_SUBPROTOCOL) {
        return (Format::Protobuf, Some(PROTOBUF_SUBPROTOCOL));
    }
    let echo_json = offered
        .iter()
        .any(|p| p == JSON_SUBPROTOCOL)
        .then_some(JSON_SUBPROTOCOL);
    let query = req.query_string();
    let wants_protobuf = query
        .split('&')
        .any(|kv| kv == "format=protobuf" || kv == "cf_protocol=protobuf");
    if wants_protobuf {
        (Format::Protobuf, None)
    } else {
        (Format::Json, echo_json)
    }
}

/// `GET /connection/websocket`
pub async fn endpoint(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<GatewayState>,
) -> Result<HttpResponse, actix_web::Error> {
    if state.shutdown.is_cancelled() {
        return Ok(HttpResponse::ServiceUnavailable().finish());
    }
    if !origin::allowed(&req, &state.node.config().http.allowed_origins) {
        tracing::debug!(origin = ?req.headers().get("origin"), "websocket origin refused");
        return Ok(HttpResponse::Forbidden().body("origin not allowed"));
    }
    if let Some(peer) = req.peer_addr().map(|a| a.ip()) {
        let forwarded: Vec<&str> = req
            .headers()
            .get_all("x-forwarded-for")
            .filter_map(|v| v.to_str().ok())
            .collect();
        let ip = state.limits.client_ip(peer, &forwarded);
        if !state.limits.per_ip.allow(&ip) {
            metrics::counter!(crate::metrics::LIMIT_REJECTIONS_TOTAL, "limit" => "connect_per_ip")
                .increment(1);
            tracing::debug!(%ip, "websocket upgrade refused: connection rate per ip");
            let e = crate::protocol::codes::ERROR_TOO_MANY_REQUESTS;
            return Ok(HttpResponse::TooManyRequests()
                .insert_header(("Retry-After", "1"))
                .json(serde_json::json!({"error": {"code": e.code, "message": e.message}})));
        }
    }
    let (format, subprotocol) = negotiate(&req);
    let (mut response, ws, stream) = actix_ws::handle(&req, body)?;
    if let Some(p) = subprotocol {
        response
            .headers_mut()
            .insert(SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(p));
    }
    let max = state.node.config().client.max_frame_bytes;
    let stream = stream
        .max_frame_size(max)
        .aggregate_continuations()
        .max_continuation_size(max);
    let session = session::Session::new(state.get_ref().clone(), format, ws);
    actix_web::rt::spawn(session.run(stream));
    Ok(response)
}
