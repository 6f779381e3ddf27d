//! The WebSocket endpoint: handshake, format negotiation, one session per socket.
//!
//! A message's way in: the HTTP layer hands an upgrade request and its socket to
//! `upgrade::serve`, which checks and answers the handshake; `session` runs one
//! `select!` loop per connection on Herald's own transport (`wire`: frames read and
//! written straight on the socket); `commands`/`connect`/`subscribe` turn each command
//! into a reply by calling the node, and the session coalesces replies and queued pushes
//! into one frame per write.

mod commands;
mod connect;
pub mod meters;
pub mod origin;
mod push_rpc;
pub mod ratelimit;
mod rpc;
mod session;
mod subscribe;
pub mod upgrade;
mod wire;

use std::sync::Arc;

use actix_web::http::header::{HeaderMap, SEC_WEBSOCKET_PROTOCOL};
use actix_web::http::StatusCode;
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
fn negotiate(headers: &HeaderMap, query: &str) -> (Format, Option<&'static str>) {
    let offered = || {
        headers
            .get_all(SEC_WEBSOCKET_PROTOCOL)
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(',').map(str::trim))
    };
    if offered().any(|p| p == PROTOBUF_SUBPROTOCOL) {
        return (Format::Protobuf, Some(PROTOBUF_SUBPROTOCOL));
    }
    let echo_json = offered()
        .any(|p| p == JSON_SUBPROTOCOL)
        .then_some(JSON_SUBPROTOCOL);
    let wants_protobuf = query
        .split('&')
        .any(|kv| kv == "format=protobuf" || kv == "cf_protocol=protobuf");
    if wants_protobuf {
        (Format::Protobuf, None)
    } else {
        (Format::Json, echo_json)
    }
}

/// A refused WebSocket handshake: the HTTP answer.
pub(crate) struct Refusal {
    pub status: StatusCode,
    pub body: String,
    pub json: bool,
    pub retry_after: bool,
}

impl Refusal {
    fn text(status: StatusCode, body: &str) -> Self {
        Refusal {
            status,
            body: body.to_string(),
            json: false,
            retry_after: false,
        }
    }
}

/// The checks every WebSocket handshake passes before it is accepted, in order:
/// shutting down (503), `Origin` (403), connection rate per client IP (429).
fn admit(
    state: &GatewayState,
    headers: &HeaderMap,
    peer: Option<std::net::IpAddr>,
) -> Result<(), Refusal> {
    if state.shutdown.is_cancelled() {
        return Err(Refusal::text(StatusCode::SERVICE_UNAVAILABLE, ""));
    }
    if !origin::allowed(headers, &state.node.config().http.allowed_origins) {
        tracing::debug!(origin = ?headers.get("origin"), "websocket origin refused");
        return Err(Refusal::text(StatusCode::FORBIDDEN, "origin not allowed"));
    }
    if let Some(peer) = peer {
        let forwarded: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .filter_map(|v| v.to_str().ok())
            .collect();
        let ip = state.limits.client_ip(peer, &forwarded);
        if !state.limits.per_ip.allow(&ip) {
            metrics::counter!(crate::metrics::LIMIT_REJECTIONS_TOTAL, "limit" => "connect_per_ip")
                .increment(1);
            tracing::debug!(%ip, "websocket upgrade refused: connection rate per ip");
            let e = crate::protocol::codes::ERROR_TOO_MANY_REQUESTS;
            return Err(Refusal {
                status: StatusCode::TOO_MANY_REQUESTS,
                body: serde_json::json!({"error": {"code": e.code, "message": e.message}})
                    .to_string(),
                json: true,
                retry_after: true,
            });
        }
    }
    Ok(())
}

/// `GET /connection/websocket` without `Upgrade: websocket` (requests with it never get
/// here: the HTTP layer hands them to [`upgrade::serve`]). Answers as a refused
/// handshake would.
pub async fn endpoint(
    req: HttpRequest,
    state: web::Data<GatewayState>,
) -> Result<HttpResponse, actix_web::Error> {
    let peer = req.peer_addr().map(|a| a.ip());
    if let Err(r) = admit(&state, req.headers(), peer) {
        let mut res = HttpResponse::build(r.status);
        if r.retry_after {
            res.insert_header(("Retry-After", "1"));
        }
        if r.json {
            res.content_type("application/json");
        }
        return Ok(res.body(r.body));
    }
    if let Err(e) = actix_http::ws::verify_handshake(req.head()) {
        return Ok(HttpResponse::from(actix_http::Response::from(e)));
    }
    // The HTTP layer hands a request to the upgrade hook only when its `Upgrade`
    // header is exactly `websocket`; one that merely lists it (`websocket, foo`) passes
    // the check above and lands here. Refused like any other malformed handshake.
    Ok(HttpResponse::BadRequest().body("Upgrade: websocket expected"))
}
