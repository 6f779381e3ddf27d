//! Every metric name in one place, with its unit in the name (Prometheus conventions),
//! and the exporter setup. docs/OPERATIONS.md lists what each one means.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const BUILD_INFO: &str = "herald_build_info";
pub const CONNECTIONS: &str = "herald_connections";
pub const CONNECTS_TOTAL: &str = "herald_connects_total";
pub const DISCONNECTS_TOTAL: &str = "herald_disconnects_total";
pub const SUBSCRIPTIONS: &str = "herald_subscriptions";
pub const COMMANDS_TOTAL: &str = "herald_commands_total";
pub const PUBLICATIONS_TOTAL: &str = "herald_publications_total";
pub const DELIVERIES_TOTAL: &str = "herald_deliveries_total";
pub const PUBLISH_TO_WRITE_SECONDS: &str = "herald_publish_to_write_seconds";
pub const BYTES_IN_TOTAL: &str = "herald_transport_bytes_in_total";
pub const BYTES_OUT_TOTAL: &str = "herald_transport_bytes_out_total";
pub const FRAMES_OUT_TOTAL: &str = "herald_transport_frames_out_total";
pub const QUEUE_DROPPED_TOTAL: &str = "herald_outbound_queue_full_total";
pub const API_REQUESTS_TOTAL: &str = "herald_api_requests_total";
pub const API_REQUEST_SECONDS: &str = "herald_api_request_duration_seconds";

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process-wide recorder once; later calls (several servers in one test
/// process) share it. `None` if another recorder was installed first.
pub fn install() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Suffix("_seconds".into()),
                    &[
                        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                    ],
                )
                .ok()?;
            let handle = builder.install_recorder().ok()?;
            describe();
            Some(handle)
        })
        .clone()
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_gauge!(BUILD_INFO, "Herald version running on this node (value 1).");
    describe_gauge!(
        CONNECTIONS,
        "Authenticated client connections on this node."
    );
    describe_counter!(CONNECTS_TOTAL, "Connect attempts by result.");
    describe_counter!(
        DISCONNECTS_TOTAL,
        "Connections closed by the server, by disconnect code."
    );
    describe_gauge!(SUBSCRIPTIONS, "Client subscriptions on this node.");
    describe_counter!(
        COMMANDS_TOTAL,
        "Client commands by method and result (ok or error code)."
    );
    describe_counter!(
        PUBLICATIONS_TOTAL,
        "Publications accepted, by source (client, api)."
    );
    describe_counter!(
        DELIVERIES_TOTAL,
        "Publications queued to local subscribers."
    );
    describe_histogram!(
        PUBLISH_TO_WRITE_SECONDS,
        Unit::Seconds,
        "From publish on this node to the socket write."
    );
    describe_counter!(
        BYTES_IN_TOTAL,
        Unit::Bytes,
        "WebSocket payload bytes received."
    );
    describe_counter!(
        BYTES_OUT_TOTAL,
        Unit::Bytes,
        "WebSocket payload bytes sent."
    );
    describe_counter!(
        FRAMES_OUT_TOTAL,
        "WebSocket messages sent (after coalescing)."
    );
    describe_counter!(
        QUEUE_DROPPED_TOTAL,
        "Deliveries refused because a connection's queue was full (it is then disconnected)."
    );
    describe_counter!(API_REQUESTS_TOTAL, "Server API calls by method and result.");
    describe_histogram!(
        API_REQUEST_SECONDS,
        Unit::Seconds,
        "Server API call duration."
    );
}
