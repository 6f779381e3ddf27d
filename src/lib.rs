//! Herald: a realtime messaging hub that speaks the Centrifugo client protocol (v2) and
//! server API.
//!
//! How a message travels:
//!
//! ```text
//! client --WS--> gateway --+
//! backend -HTTP-> api -----+--> node::publish --> broker (sequences, keeps recent
//!                                                  history, delivers to every node)
//!                                                     |
//!                      node fan-out <-----------------+
//!                      (encode once per format, push into each subscriber's queue)
//!                                 |
//!                      gateway session (coalesce, write) --> client
//! ```
//!
//! - [`protocol`]: wire messages, JSON/Protobuf framing, every client-visible code.
//! - [`gateway`]: the WebSocket endpoint and Herald's own WebSocket transport; one
//!   session per connection, in the connection's task.
//! - [`http`]: the listener: WebSocket upgrades to the gateway, the rest to actix-web.
//! - [`node`]: local subscriptions, the one publish path, fan-out.
//! - [`broker`]: trait + memory and Redis backends: offsets, epochs, history, delivery.
//! - [`presence`]: trait + memory and Redis backends.
//! - [`cluster`]: cluster mode over Redis: connections and sharding, node registry,
//!   control channel for user commands, reconciler of persisted publications.
//! - [`store`]: durable history, members, read markers (embedded SQLite, or ScyllaDB).
//! - [`kafka`]: Kafka ingest (records -> server API commands) and egress (publications -> topic).
//! - [`push`]: device registry, APNs/FCM senders, durable queue + dispatcher, offline fallback.
//! - [`api`]: server HTTP API, health, readiness, metrics endpoint.
//! - [`auth`]: JWT verification (HMAC, RSA, EC, JWKS) and API keys.
//! - [`tls`]: optional TLS on the listener, certificate reload on SIGHUP.
//! - [`config`]: typed configuration with compiled-in defaults.
//! - [`metrics`]: every metric name.
//! - [`app`]: wires it all together; `run(config, listener, shutdown)`.

pub mod api;
pub mod app;
pub mod auth;
pub mod broker;
pub mod cluster;
pub mod config;
pub mod gateway;
pub mod http;
pub mod ipnet;
pub mod kafka;
pub mod metrics;
pub mod node;
pub mod presence;
pub mod protocol;
pub mod push;
pub mod store;
pub mod tls;
