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
pub const STORE_OPERATION_SECONDS: &str = "herald_store_operation_duration_seconds";
pub const REDIS_ERRORS_TOTAL: &str = "herald_redis_errors_total";
pub const REDIS_RECONNECTS_TOTAL: &str = "herald_redis_reconnects_total";
pub const REDIS_COMMAND_SECONDS: &str = "herald_redis_command_duration_seconds";
pub const REDIS_UP: &str = "herald_redis_up";
pub const REDIS_PUBSUB_LAG_SECONDS: &str = "herald_redis_pubsub_lag_seconds";
pub const CLUSTER_NODES: &str = "herald_cluster_nodes";
pub const RECONCILED_TOTAL: &str = "herald_store_reconciled_total";
pub const PROCESS_RESIDENT_MEMORY_BYTES: &str = "herald_process_resident_memory_bytes";
pub const PROCESS_CPU_SECONDS_TOTAL: &str = "herald_process_cpu_seconds_total";
pub const PROCESS_OPEN_FDS: &str = "herald_process_open_fds";
pub const PROCESS_THREADS: &str = "herald_process_threads";
pub const PUSH_QUEUED_TOTAL: &str = "herald_push_queued_total";
pub const PUSH_SENT_TOTAL: &str = "herald_push_sent_total";
pub const PUSH_FAILED_TOTAL: &str = "herald_push_failed_total";
pub const PUSH_RETRIES_TOTAL: &str = "herald_push_retries_total";
pub const PUSH_QUEUE_DEPTH: &str = "herald_push_queue_depth";
pub const PUSH_PROVIDER_SECONDS: &str = "herald_push_provider_request_duration_seconds";
pub const PUSH_PUBLISH_TO_SEND_SECONDS: &str = "herald_push_publish_to_send_seconds";
pub const PUSH_TOKENS_REMOVED_TOTAL: &str = "herald_push_tokens_removed_total";
pub const PUSH_FALLBACK_DROPPED_TOTAL: &str = "herald_push_fallback_dropped_total";
pub const KAFKA_RECORDS_CONSUMED_TOTAL: &str = "herald_kafka_records_consumed_total";
pub const KAFKA_RECORDS_APPLIED_TOTAL: &str = "herald_kafka_records_applied_total";
pub const KAFKA_RECORDS_FAILED_TOTAL: &str = "herald_kafka_records_failed_total";
pub const KAFKA_RECORDS_DEAD_LETTERED_TOTAL: &str = "herald_kafka_records_dead_lettered_total";
pub const KAFKA_CONSUMER_LAG: &str = "herald_kafka_consumer_lag";
pub const KAFKA_UP: &str = "herald_kafka_up";
pub const KAFKA_EGRESS_PRODUCED_TOTAL: &str = "herald_kafka_egress_produced_total";
pub const KAFKA_EGRESS_FAILED_TOTAL: &str = "herald_kafka_egress_failed_total";
pub const KAFKA_EGRESS_BUFFERED: &str = "herald_kafka_egress_buffered";
pub const KAFKA_EGRESS_DROPPED_TOTAL: &str = "herald_kafka_egress_dropped_total";
pub const TOKENS_REVOKED_TOTAL: &str = "herald_token_revocations_total";
pub const LIMIT_REJECTIONS_TOTAL: &str = "herald_limit_rejections_total";
/// The `limit` label values of LIMIT_REJECTIONS_TOTAL.
pub const LIMITS: &[&str] = &[
    "connect_per_ip",
    "connection_commands",
    "user_commands",
    "subscriptions",
    "publication_size",
    "presence_size",
];
pub const JWKS_FETCHES_TOTAL: &str = "herald_jwks_fetches_total";

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
    describe_counter!(
        TOKENS_REVOKED_TOTAL,
        "Token revocations applied on this node (revoke_token, invalidate_user_tokens)."
    );
    describe_counter!(JWKS_FETCHES_TOTAL, "JWKS fetches by result (ok, error).");
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
        "Store operations the backend failed, by op (append, append_at, history, members, set_read, conversations, remove_history, remove_user_data; commit: an embedded group commit)."
    );
    describe_histogram!(
        STORE_OPERATION_SECONDS,
        Unit::Seconds,
        "Store calls of any backend, by op (append: a publish waiting for durability; append_at: the same in cluster mode; history; ...)."
    );
    describe_counter!(
        REDIS_ERRORS_TOTAL,
        "Cluster mode: failed Redis operations, by op (publish, history, seed, subscribe, presence, control, heartbeat, reconcile, pubsub, decode)."
    );
    describe_histogram!(
        REDIS_COMMAND_SECONDS,
        Unit::Seconds,
        "Cluster mode: one Redis operation (a command, pipeline or script) from send to reply, by op; failures and timeouts included."
    );
    describe_gauge!(
        REDIS_UP,
        "Cluster mode: 1 if the last keepalive PING (every second) to this Redis shard was answered, else 0; by shard (its index in broker.redis_url)."
    );
    describe_counter!(
        REDIS_RECONNECTS_TOTAL,
        "Cluster mode: Redis pub/sub connections re-established after a loss, by conn (broker, control); each one makes the subscribers of its channels recover."
    );
    describe_histogram!(
        REDIS_PUBSUB_LAG_SECONDS,
        Unit::Seconds,
        "Cluster mode: from the publish script (publishing node's clock) to the pub/sub message reaching this node."
    );
    describe_gauge!(
        CLUSTER_NODES,
        "Cluster mode: live nodes this node saw at its last heartbeat (itself included)."
    );
    describe_counter!(
        RECONCILED_TOTAL,
        "Cluster mode: persisted publications the reconciler found missing from the store, by result (copied, lost)."
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
    describe_counter!(
        PUSH_QUEUED_TOTAL,
        "Push notifications written to the durable queue, by provider and source (fallback, api)."
    );
    describe_counter!(
        PUSH_SENT_TOTAL,
        "Push notifications the provider accepted, by provider."
    );
    describe_counter!(
        PUSH_FAILED_TOTAL,
        "Push notifications given up on, by provider and reason (the provider's code, or exhausted)."
    );
    describe_counter!(
        PUSH_RETRIES_TOTAL,
        "Push sends rescheduled after a temporary failure, by provider and reason."
    );
    describe_gauge!(
        PUSH_QUEUE_DEPTH,
        "Push notifications waiting in the durable queue (due or retrying), by provider."
    );
    describe_histogram!(
        PUSH_PROVIDER_SECONDS,
        Unit::Seconds,
        "One request to the push provider, by provider."
    );
    describe_histogram!(
        PUSH_PUBLISH_TO_SEND_SECONDS,
        Unit::Seconds,
        "From a publication's fan-out to the provider accepting its offline push, by provider."
    );
    describe_counter!(
        PUSH_TOKENS_REMOVED_TOTAL,
        "Devices removed because the provider called their token invalid, by provider."
    );
    describe_counter!(
        PUSH_FALLBACK_DROPPED_TOTAL,
        "Publications the offline push fallback skipped because its queue was full."
    );
    describe_counter!(
        KAFKA_RECORDS_CONSUMED_TOTAL,
        "Kafka ingest: records read from the topic (each once, however often retried)."
    );
    describe_counter!(
        KAFKA_RECORDS_APPLIED_TOTAL,
        "Kafka ingest: records whose command succeeded."
    );
    describe_counter!(
        KAFKA_RECORDS_FAILED_TOTAL,
        "Kafka ingest: failed attempts, by kind: invalid (never retried, dead-lettered or skipped) or retryable (retried after a backoff)."
    );
    describe_counter!(
        KAFKA_RECORDS_DEAD_LETTERED_TOTAL,
        "Kafka ingest: invalid records produced to the dead-letter topic, by source topic."
    );
    describe_gauge!(
        KAFKA_CONSUMER_LAG,
        "Kafka ingest: records of a partition assigned to this node not applied yet (high watermark of its last fetch minus the next offset to apply)."
    );
    describe_gauge!(
        KAFKA_UP,
        "Kafka dependency health by role (ingest, egress): 1 connected, 0 starting or degraded."
    );
    describe_counter!(
        KAFKA_EGRESS_PRODUCED_TOTAL,
        "Kafka egress: publications the brokers confirmed, by topic."
    );
    describe_counter!(
        KAFKA_EGRESS_FAILED_TOTAL,
        "Kafka egress: publications whose delivery failed for good, by topic."
    );
    describe_gauge!(
        KAFKA_EGRESS_BUFFERED,
        "Kafka egress: publications accepted and not yet confirmed (buffer plus in flight)."
    );
    describe_counter!(
        KAFKA_EGRESS_DROPPED_TOTAL,
        "Kafka egress: publications dropped because the egress buffer was full."
    );
    describe_counter!(
        LIMIT_REJECTIONS_TOTAL,
        "Requests refused by an abuse limit, by limit (docs/SECURITY.md)."
    );
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
    for limit in LIMITS {
        metrics::counter!(LIMIT_REJECTIONS_TOTAL, "limit" => *limit).absolute(0);
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
