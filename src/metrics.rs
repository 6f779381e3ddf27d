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
pub const STORE_COMMIT_SECONDS: &str = "herald_store_commit_seconds";
pub const STORE_APPENDS_TOTAL: &str = "herald_store_appends_total";
pub const STORE_ERRORS_TOTAL: &str = "herald_store_errors_total";
pub const PROCESS_RESIDENT_MEMORY_BYTES: &str = "herald_process_resident_memory_bytes";
pub const PROCESS_CPU_SECONDS_TOTAL: &str = "herald_process_cpu_seconds_total";
pub const PROCESS_OPEN_FDS: &str = "herald_process_open_fds";
pub const PROCESS_THREADS: &str = "herald_process_threads";

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
    describe_histogram!(
        STORE_COMMIT_SECONDS,
        Unit::Seconds,
        "Embedded store group commits, from BEGIN to durable COMMIT."
    );
    describe_counter!(
        STORE_APPENDS_TOTAL,
        "Store appends by result (ok, duplicate, error)."
    );
    describe_counter!(
        STORE_ERRORS_TOTAL,
        "Store operations that failed, by operation."
    );
    describe_gauge!(
        PROCESS_RESIDENT_MEMORY_BYTES,
        Unit::Bytes,
        "Resident memory of the Herald process."
    );
    describe_counter!(
        PROCESS_CPU_SECONDS_TOTAL,
        Unit::Seconds,
        "User and system CPU time of the Herald process (whole seconds)."
    );
    describe_gauge!(
        PROCESS_OPEN_FDS,
        "Open file descriptors (sockets included) of the Herald process."
    );
    describe_gauge!(PROCESS_THREADS, "Threads of the Herald process.");
    zero_series();
}

/// Series that alerts and dashboards rely on exist from the start, at zero, so that a
/// fresh node shows them and `increase()` sees the first event.
fn zero_series() {
    metrics::gauge!(CONNECTIONS).set(0.0);
    metrics::gauge!(SUBSCRIPTIONS).set(0.0);
    metrics::counter!(DELIVERIES_TOTAL).absolute(0);
    metrics::counter!(QUEUE_DROPPED_TOTAL).absolute(0);
    for source in ["client", "api"] {
        metrics::counter!(PUBLICATIONS_TOTAL, "source" => source).absolute(0);
    }
    for code in ["3001", "3008", "3012"] {
        metrics::counter!(DISCONNECTS_TOTAL, "code" => code).absolute(0);
    }
}

/// Reads the process's own resource use from /proc (Linux); called on each scrape.
pub fn sample_process() {
    #[cfg(target_os = "linux")]
    {
        // Page size and clock ticks of every Linux platform Herald targets.
        const PAGE: u64 = 4096;
        const TICKS: u64 = 100;
        if let Ok(statm) = std::fs::read_to_string("/proc/self/statm") {
            if let Some(rss) = statm
                .split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<u64>().ok())
            {
                metrics::gauge!(PROCESS_RESIDENT_MEMORY_BYTES).set((rss * PAGE) as f64);
            }
        }
        if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
            // Fields after the command name (which may contain spaces) start at ")";
            // utime, stime and num_threads are fields 14, 15 and 20 of stat.
            let fields: Vec<&str> = stat
                .rsplit_once(')')
                .map(|(_, r)| r.split_whitespace().collect())
                .unwrap_or_default();
            let num = |i: usize| {
                fields
                    .get(i)
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0)
            };
            metrics::counter!(PROCESS_CPU_SECONDS_TOTAL).absolute((num(11) + num(12)) / TICKS);
            metrics::gauge!(PROCESS_THREADS).set(num(17) as f64);
        }
        if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
            metrics::gauge!(PROCESS_OPEN_FDS).set(dir.count() as f64);
        }
    }
}
