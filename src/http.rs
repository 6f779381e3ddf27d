//! The HTTP listener: actix-http serves every request; WebSocket upgrades go to the
//! gateway's own transport, everything else to the actix-web `App` (server API, health,
//! metrics).
//!
//! Why not `actix_web::HttpServer`: it offers no way to install actix-http's upgrade
//! hook, so a WebSocket would stay inside the HTTP/1 dispatcher, with its two 8 KiB
//! buffers per connection and an extra channel and task per session (docs/BENCHMARKS.md,
//! "Idle connections"). The server below is the one `HttpServer` builds (actix-server,
//! `HttpService`, the same timeouts), with the hook added.

use std::net::TcpListener;
use std::time::Duration;

use actix_http::HttpService;
use actix_service::map_config;
use actix_web::dev::{fn_service, AppConfig, Server};
use actix_web::{web, App};

use crate::api::{self, ApiState};
use crate::gateway::{self, GatewayState};

/// The routes of the actix-web side. `GET /connection/websocket` is here too, for
/// requests without `Upgrade: websocket` (refused as a handshake would be).
fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route(gateway::upgrade::PATH, web::get().to(gateway::endpoint))
        .route(
            "/api/openapi.json",
            web::get().to(api::openapi::openapi_json),
        )
        .route("/api", web::post().to(api::api_legacy))
        .route("/api/{method}", web::post().to(api::api_method))
        .route("/health", web::get().to(api::health))
        .route("/ready", web::get().to(api::ready))
        .route("/metrics", web::get().to(api::metrics_endpoint));
}

/// One worker's HTTP service: the same settings `actix_web::HttpServer` uses by default
/// (keep-alive 5 s, 5 s to send a request head, 1 s to disconnect), plus the upgrade hook.
macro_rules! service {
    ($gateway:expr, $api:expr, $addr:expr) => {{
        let (gateway, api) = ($gateway.clone(), $api.clone());
        let app = App::new()
            .app_data(web::Data::new(gateway.clone()))
            .app_data(web::Data::new(api))
            .configure(routes);
        HttpService::build()
            .client_request_timeout(Duration::from_secs(5))
            .client_disconnect_timeout(Duration::from_secs(1))
            .local_addr($addr)
            .upgrade(fn_service(move |(req, framed)| {
                gateway::upgrade::serve(gateway.clone(), req, framed)
            }))
            .finish(map_config(app, |_| AppConfig::default()))
    }};
}

/// Starts serving on `listener` (TLS when `tls` is given). `workers` = 0: one per core.
/// The server stops through its handle (`Server::handle().stop(graceful)`).
pub fn serve(
    listener: TcpListener,
    tls: Option<rustls::ServerConfig>,
    workers: usize,
    gateway: GatewayState,
    api: ApiState,
) -> std::io::Result<Server> {
    let addr = listener.local_addr()?;
    let mut builder = Server::build().disable_signals().shutdown_timeout(1);
    if workers > 0 {
        builder = builder.workers(workers);
    }
    let builder = match tls {
        None => builder.listen("herald-http", listener, move || {
            service!(gateway, api, addr).tcp()
        })?,
        Some(tls) => builder.listen("herald-https", listener, move || {
            service!(gateway, api, addr).rustls_0_23(tls.clone())
        })?,
    };
    Ok(builder.run())
}
