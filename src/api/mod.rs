//! HTTP surface besides the WebSocket: the server API, `/health`, `/ready`, `/metrics`.

pub mod conversations;
pub mod methods;
pub mod openapi;
pub mod push;
pub mod tokens;

use std::sync::Arc;
use std::time::Instant;

use actix_web::http::header::{HeaderMap, AUTHORIZATION};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::auth::api_key_matches;
use crate::metrics as m;
use crate::node::Node;
use methods::ApiError;

#[derive(Clone)]
pub struct ApiState {
    pub node: Node,
    pub api_key: Arc<str>,
    pub prometheus: Option<PrometheusHandle>,
    /// Cancelled on shutdown: `/ready` turns 503 so load balancers drain this node.
    pub shutdown: CancellationToken,
    /// Kafka ingest and egress state, reported by `/ready`.
    pub kafka: crate::kafka::KafkaHealth,
}

fn error_response(status: StatusCode, e: &ApiError) -> HttpResponse {
    HttpResponse::build(status).json(json!({"error": e}))
}

/// `X-API-Key: KEY` or `Authorization: apikey KEY`.
fn presented_key(headers: &HeaderMap) -> Option<&str> {
    if let Some(v) = headers.get("x-api-key").and_then(|v| v.to_str().ok()) {
        return Some(v.trim());
    }
    let auth = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, key) = auth.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("apikey").then_some(key.trim())
}

/// `POST /api/{method}`
pub async fn api_method(
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Bytes,
    state: web::Data<ApiState>,
) -> HttpResponse {
    let method = path.into_inner();
    dispatch(&req, &state, &method, &body).await
}

/// `POST /api` with `{"method": "...", "params": {...}}` (the older single-endpoint form).
pub async fn api_legacy(
    req: HttpRequest,
    body: web::Bytes,
    state: web::Data<ApiState>,
) -> HttpResponse {
    #[derive(serde::Deserialize)]
    struct Envelope {
        method: String,
        #[serde(default)]
        params: Option<Box<serde_json::value::RawValue>>,
    }
    if !authorized(&req, &state) {
        return unauthorized();
    }
    let env: Envelope = match serde_json::from_slice(&body) {
        Ok(e) => e,
        Err(e) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                &ApiError::bad_request(format!("invalid request body: {e}")),
            )
        }
    };
    let params = env
        .params
        .as_ref()
        .map(|p| p.get().as_bytes().to_vec())
        .unwrap_or_else(|| b"{}".to_vec());
    dispatch(&req, &state, &env.method, &params).await
}

fn authorized(req: &HttpRequest, state: &ApiState) -> bool {
    presented_key(req.headers()).is_some_and(|k| api_key_matches(&state.api_key, k))
}

fn unauthorized() -> HttpResponse {
    error_response(
        StatusCode::UNAUTHORIZED,
        &ApiError {
            code: 101,
            message: "unauthorized".into(),
        },
    )
}

async fn dispatch(req: &HttpRequest, state: &ApiState, method: &str, body: &[u8]) -> HttpResponse {
    if !authorized(req, state) {
        metrics::counter!(m::API_REQUESTS_TOTAL, "method" => "unknown", "result" => "unauthorized")
            .increment(1);
        return unauthorized();
    }
    let Some(&known) = methods::METHODS.iter().find(|m| **m == method) else {
        metrics::counter!(m::API_REQUESTS_TOTAL, "method" => "unknown", "result" => "not_found")
            .increment(1);
        return error_response(
            StatusCode::NOT_FOUND,
            &crate::protocol::codes::ERROR_METHOD_NOT_FOUND.into(),
        );
    };
    // A body that is not JSON at all is a transport-level error (400); a JSON body with
    // bad fields is a method error (200 with an error object), as Centrifugo answers.
    if !body.iter().all(u8::is_ascii_whitespace)
        && serde_json::from_slice::<serde::de::IgnoredAny>(body).is_err()
    {
        metrics::counter!(m::API_REQUESTS_TOTAL, "method" => known, "result" => "bad_request")
            .increment(1);
        return error_response(
            StatusCode::BAD_REQUEST,
            &ApiError::bad_request("request body is not valid JSON"),
        );
    }
    let started = Instant::now();
    let result = methods::call(&state.node, known, body).await;
    metrics::histogram!(m::API_REQUEST_SECONDS, "method" => known)
        .record(started.elapsed().as_secs_f64());
    match result {
        Ok(v) => {
            metrics::counter!(m::API_REQUESTS_TOTAL, "method" => known, "result" => "ok")
                .increment(1);
            // `batch` answers with its replies at the top level, as the clients expect.
            if known == "batch" {
                HttpResponse::Ok().json(v)
            } else {
                HttpResponse::Ok().json(json!({"result": v}))
            }
        }
        Err(e) => {
            metrics::counter!(m::API_REQUESTS_TOTAL, "method" => known, "result" => "error")
                .increment(1);
            HttpResponse::Ok().json(json!({"error": e}))
        }
    }
}

/// `GET /health`: the process is alive.
pub async fn health() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

/// `GET /ready`: the node accepts new connections (false while draining).
///
/// A degraded Kafka is reported (`kafka`, `degraded`) but does not make the node
/// unready: WebSockets and the HTTP API keep working without it, every node shares the
/// same brokers, and taking nodes out of the load balancer would only cut clients off.
pub async fn ready(state: web::Data<ApiState>) -> HttpResponse {
    let draining = state.shutdown.is_cancelled();
    let mut body = json!({"status": if draining { "draining" } else { "ready" }});
    if state.kafka.enabled() {
        body["kafka"] = state.kafka.to_json();
        let degraded = state.kafka.degraded();
        if !degraded.is_empty() {
            body["degraded"] = json!(degraded);
        }
    }
    if draining {
        HttpResponse::ServiceUnavailable().json(body)
    } else {
        HttpResponse::Ok().json(body)
    }
}

/// `GET /metrics`: Prometheus text format.
pub async fn metrics_endpoint(state: web::Data<ApiState>) -> HttpResponse {
    match &state.prometheus {
        Some(h) => {
            crate::metrics::sample_process();
            HttpResponse::Ok()
                .content_type("text/plain; version=0.0.4")
                .body(h.render())
        }
        None => HttpResponse::ServiceUnavailable().body("metrics recorder not installed"),
    }
}
