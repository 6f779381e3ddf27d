//! Typed configuration: compiled-in defaults, an optional file, then environment.
//!
//! Loading works on a TOML tree first so that every error can name the offending key:
//! a key the defaults do not have is unknown, a value whose type differs from the
//! default's is bad, and anything serde still rejects is reported with its path.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Deserializer};
use toml::Value;

/// The embedded defaults, also shipped as `config/herald.toml`.
pub const DEFAULTS: &str = include_str!("../config/herald.toml");
const ENV_PREFIX: &str = "HERALD_";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML: {source}")]
    Parse {
        path: String,
        source: toml::de::Error,
    },
    #[error("unknown config key `{0}`")]
    UnknownKey(String),
    #[error("bad value for config key `{key}`: {reason}")]
    BadValue { key: String, reason: String },
}

fn bad(key: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::BadValue {
        key: key.to_string(),
        reason: reason.into(),
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub http: HttpConfig,
    pub api: ApiConfig,
    pub auth: AuthConfig,
    pub client: ClientConfig,
    pub store: StoreConfig,
    pub kafka: KafkaConfig,
    pub broker: BrokerConfig,
    pub push: PushConfig,
    pub channel: ChannelOptions,
    #[serde(default)]
    pub namespaces: Vec<Namespace>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// "sqlite" or "scylla".
    pub kind: String,
    pub path: String,
    pub sync: String,
    #[serde(deserialize_with = "duration")]
    pub idempotency_window: Duration,
    pub max_history_page: usize,
    pub max_recovery: usize,
    pub scylla_uri: String,
    pub scylla_keyspace: String,
    pub scylla_replication: String,
}

/// `[push]`: push notifications (docs/PUSH.md). Off unless a provider is configured.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushConfig {
    pub concurrency: usize,
    pub max_attempts: u32,
    #[serde(deserialize_with = "duration")]
    pub backoff_min: Duration,
    #[serde(deserialize_with = "duration")]
    pub backoff_max: Duration,
    #[serde(deserialize_with = "duration")]
    pub ttl: Duration,
    pub fallback_queue_len: usize,
    /// Cluster mode: how long a push a node took may stay unacknowledged before another
    /// node takes it over (longer than a provider request can take).
    #[serde(deserialize_with = "duration")]
    pub visibility_timeout: Duration,
    pub apns: ApnsConfig,
    pub fcm: FcmConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApnsConfig {
    pub endpoint: String,
    pub key_file: String,
    pub key_id: String,
    pub team_id: String,
    pub topic: String,
    pub ca_file: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FcmConfig {
    pub endpoint: String,
    pub service_account_file: String,
    pub ca_file: String,
}

impl PushConfig {
    /// Whether any provider is configured (push is off otherwise).
    pub fn enabled(&self) -> bool {
        !self.apns.key_file.is_empty() || !self.fcm.service_account_file.is_empty()
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.concurrency == 0 {
            return Err(bad("push.concurrency", "must be positive"));
        }
        if self.max_attempts == 0 {
            return Err(bad("push.max_attempts", "must be positive"));
        }
        if self.fallback_queue_len == 0 {
            return Err(bad("push.fallback_queue_len", "must be positive"));
        }
        if self.visibility_timeout < Duration::from_millis(100) {
            return Err(bad("push.visibility_timeout", "must be at least 100ms"));
        }
        if self.backoff_min.is_zero() || self.backoff_min > self.backoff_max {
            return Err(bad(
                "push.backoff_min",
                "must be positive and at most push.backoff_max",
            ));
        }
        let url_ok = |u: &str| u.starts_with("https://") || u.starts_with("http://");
        let apns = &self.apns;
        if !matches!(apns.endpoint.as_str(), "production" | "sandbox") && !url_ok(&apns.endpoint) {
            return Err(bad(
                "push.apns.endpoint",
                format!(
                    "{:?}: use \"production\", \"sandbox\" or an https:// URL",
                    apns.endpoint
                ),
            ));
        }
        if !apns.key_file.is_empty() {
            for (key, v) in [
                ("push.apns.key_id", &apns.key_id),
                ("push.apns.team_id", &apns.team_id),
                ("push.apns.topic", &apns.topic),
            ] {
                if v.is_empty() {
                    return Err(bad(key, "required when push.apns.key_file is set"));
                }
            }
        }
        if !url_ok(&self.fcm.endpoint) {
            return Err(bad(
                "push.fcm.endpoint",
                format!("{:?}: use an https:// URL", self.fcm.endpoint),
            ));
        }
        Ok(())
    }
}

/// `[broker]`: where publications travel between nodes. `memory` keeps everything in
/// this process; `redis` is cluster mode (docs/CLUSTER.md): several nodes share Redis for
/// delivery, offsets, recent history, presence and node control.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerConfig {
    /// "memory" or "redis".
    pub kind: String,
    /// Comma-separated Redis URLs; channels are spread over them by consistent hashing.
    pub redis_url: String,
    /// The URLs are seeds of one Redis Cluster (hash slots, sharded pub/sub).
    pub redis_cluster: bool,
    pub redis_prefix: String,
    #[serde(deserialize_with = "duration")]
    pub redis_timeout: Duration,
    #[serde(deserialize_with = "duration")]
    pub history_meta_ttl: Duration,
    #[serde(deserialize_with = "duration")]
    pub presence_ttl: Duration,
    #[serde(deserialize_with = "duration")]
    pub node_heartbeat: Duration,
    #[serde(deserialize_with = "duration")]
    pub node_ttl: Duration,
    #[serde(deserialize_with = "duration")]
    pub reconcile_interval: Duration,
}

impl BrokerConfig {
    /// Cluster mode: the broker and presence live in Redis.
    pub fn is_redis(&self) -> bool {
        self.kind == "redis"
    }

    fn validate(&self, channels: &[(String, &ChannelOptions)]) -> Result<(), ConfigError> {
        if !matches!(self.kind.as_str(), "memory" | "redis") {
            return Err(bad(
                "broker.kind",
                format!("{:?}: use \"memory\" or \"redis\"", self.kind),
            ));
        }
        crate::cluster::redis::parse_urls(&self.redis_url)
            .map_err(|e| bad("broker.redis_url", e))?;
        if self.redis_prefix.is_empty() || self.redis_prefix.contains(char::is_whitespace) {
            return Err(bad(
                "broker.redis_prefix",
                "must be non-empty, without spaces",
            ));
        }
        if self.redis_cluster && self.redis_prefix.contains(['{', '}']) {
            // A brace would change the hash tags that keep a channel in one slot.
            return Err(bad(
                "broker.redis_prefix",
                "must not contain braces with broker.redis_cluster",
            ));
        }
        for (key, d) in [
            ("broker.redis_timeout", self.redis_timeout),
            ("broker.history_meta_ttl", self.history_meta_ttl),
            ("broker.presence_ttl", self.presence_ttl),
            ("broker.node_heartbeat", self.node_heartbeat),
            ("broker.reconcile_interval", self.reconcile_interval),
        ] {
            if d.is_zero() {
                return Err(bad(key, "must be positive"));
            }
        }
        if self.node_ttl <= self.node_heartbeat {
            return Err(bad(
                "broker.node_ttl",
                "must be above broker.node_heartbeat",
            ));
        }
        if self.is_redis() {
            // In cluster mode a persisted channel's Redis stream carries its recent
            // publications for recovery and for the reconciler: it must exist.
            for (prefix, o) in channels {
                if o.persist && (o.history_size == 0 || o.history_ttl.is_zero()) {
                    return Err(bad(
                        &format!("{prefix}.history_size"),
                        "persisted channels need history_size and history_ttl above zero with broker.kind = \"redis\"",
                    ));
                }
            }
        }
        Ok(())
    }
}

/// `[kafka]`: ingest of server API commands and egress of publications (docs/KAFKA.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    pub brokers: Vec<String>,
    /// Extra librdkafka properties, `name=value`, applied after Herald's own.
    pub client_options: Vec<String>,
    pub ingest_enabled: bool,
    pub topics: Vec<String>,
    pub group_id: String,
    pub dlq_topic: String,
    pub max_in_flight: usize,
    pub partition_buffer: usize,
    #[serde(deserialize_with = "duration")]
    pub commit_interval: Duration,
    #[serde(deserialize_with = "duration")]
    pub retry_backoff_max: Duration,
    pub egress_enabled: bool,
    pub egress_topic: String,
    pub egress_namespaces: Vec<String>,
    pub egress_buffer: usize,
}

/// Kafka's rule for topic names: 1..=249 of `[a-zA-Z0-9._-]`.
fn topic_name_ok(t: &str) -> bool {
    (1..=249).contains(&t.len())
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl KafkaConfig {
    fn validate(&self, namespaces: &[Namespace]) -> Result<(), ConfigError> {
        crate::kafka::check_client_options(&self.client_options)
            .map_err(|e| bad("kafka.client_options", e))?;
        if !self.ingest_enabled && !self.egress_enabled {
            return Ok(());
        }
        let named = self.topics.iter().map(|t| ("kafka.topics", t)).chain([
            ("kafka.dlq_topic", &self.dlq_topic),
            ("kafka.egress_topic", &self.egress_topic),
        ]);
        for (key, topic) in named {
            if !topic.is_empty() && !topic_name_ok(topic) {
                return Err(bad(key, format!("{topic:?} is not a Kafka topic name")));
            }
        }
        for ns in &self.egress_namespaces {
            if self.egress_enabled && !ns.is_empty() && !namespaces.iter().any(|n| &n.name == ns) {
                return Err(bad(
                    "kafka.egress_namespaces",
                    format!("no namespace named {ns:?}"),
                ));
            }
        }
        if self.brokers.iter().all(|b| b.trim().is_empty()) {
            return Err(bad("kafka.brokers", "required when Kafka is enabled"));
        }
        if self.ingest_enabled {
            if self.topics.is_empty() {
                return Err(bad("kafka.topics", "required when kafka.ingest_enabled"));
            }
            if self.group_id.is_empty() {
                return Err(bad("kafka.group_id", "must not be empty"));
            }
            if self.topics.contains(&self.dlq_topic) {
                return Err(bad("kafka.dlq_topic", "must not be one of kafka.topics"));
            }
            if self.egress_enabled && self.topics.contains(&self.egress_topic) {
                return Err(bad("kafka.egress_topic", "must not be one of kafka.topics"));
            }
            for (key, v) in [
                ("kafka.max_in_flight", self.max_in_flight),
                ("kafka.partition_buffer", self.partition_buffer),
            ] {
                if v == 0 {
                    return Err(bad(key, "must be positive"));
                }
            }
            // librdkafka's limit of queued.min.messages, which Herald sets to it.
            if self.partition_buffer > 10_000_000 {
                return Err(bad("kafka.partition_buffer", "must be at most 10000000"));
            }
            if self.commit_interval.is_zero() {
                return Err(bad("kafka.commit_interval", "must be positive"));
            }
            if self.retry_backoff_max < Duration::from_millis(100) {
                return Err(bad("kafka.retry_backoff_max", "must be at least 100ms"));
            }
        }
        if self.egress_enabled {
            if self.egress_topic.is_empty() {
                return Err(bad(
                    "kafka.egress_topic",
                    "required when kafka.egress_enabled",
                ));
            }
            if self.egress_buffer == 0 {
                return Err(bad("kafka.egress_buffer", "must be positive"));
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    pub addr: String,
    #[serde(deserialize_with = "duration")]
    pub shutdown_timeout: Duration,
    pub workers: usize,
    /// Browser origins allowed to open a WebSocket (`*` = any; empty = same origin).
    pub allowed_origins: Vec<String>,
    /// Addresses of reverse proxies whose `X-Forwarded-For` names the client, for the
    /// per-IP connection limit; from any other peer the header is ignored.
    pub trusted_proxies: Vec<String>,
    /// PEM certificate chain and private key: TLS on the listener when both are set.
    pub tls_cert: String,
    pub tls_key: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    pub key: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    pub hmac_secret: String,
    pub rsa_public_key: String,
    pub ecdsa_public_key: String,
    pub audience: String,
    pub issuer: String,
    pub allow_anonymous: bool,
    pub personal_channel: bool,
    pub personal_namespace: String,
    #[serde(deserialize_with = "duration")]
    pub expired_close_delay: Duration,
    /// HTTP(S) URL of a JWKS document; RSA and EC tokens with a `kid` use its keys.
    pub jwks_url: String,
    #[serde(deserialize_with = "duration")]
    pub jwks_refresh_interval: Duration,
    #[serde(deserialize_with = "duration")]
    pub jwks_min_refetch: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    #[serde(deserialize_with = "duration")]
    pub ping_interval: Duration,
    #[serde(deserialize_with = "duration")]
    pub pong_timeout: Duration,
    #[serde(deserialize_with = "duration")]
    pub connect_timeout: Duration,
    pub max_frame_bytes: usize,
    pub max_channel_length: usize,
    pub max_subscriptions: usize,
    pub max_connections_per_user: usize,
    pub command_rate: u32,
    pub command_burst: u32,
    /// WebSocket upgrades per second from one peer IP (0 = unlimited).
    pub connect_rate_per_ip: u32,
    pub connect_burst_per_ip: u32,
    /// Commands per second of one user over all its connections on this node.
    pub user_command_rate: u32,
    pub user_command_burst: u32,
    pub outbound_queue_len: usize,
    #[serde(deserialize_with = "duration")]
    pub write_timeout: Duration,
}

/// Per-namespace channel rules (see docs/CONFIG.md for each option's meaning).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ChannelOptions {
    pub allow_subscribe_for_client: bool,
    pub allow_subscribe_for_anonymous: bool,
    pub allow_publish_for_client: bool,
    pub allow_publish_for_subscriber: bool,
    pub allow_history_for_client: bool,
    pub allow_history_for_subscriber: bool,
    pub allow_presence_for_client: bool,
    pub allow_presence_for_subscriber: bool,
    pub allow_user_limited_channels: bool,
    pub presence: bool,
    pub join_leave: bool,
    pub force_push_join_leave: bool,
    pub history_size: usize,
    #[serde(deserialize_with = "duration")]
    pub history_ttl: Duration,
    pub force_recovery: bool,
    pub force_positioning: bool,
    pub persist: bool,
    #[serde(deserialize_with = "duration")]
    pub history_max_age: Duration,
    pub history_max_count: u64,
    pub members: bool,
    pub client_message_id_field: String,
    /// Offline members get a push notification (docs/PUSH.md).
    pub push: bool,
    pub push_title: String,
    pub push_body: String,
    /// Largest publication `data` in bytes (0 = only the frame/body limits apply).
    pub max_publication_size: usize,
    /// Most clients in one channel's presence; a client subscribe beyond it is refused
    /// (0 = unlimited).
    pub max_presence_size: usize,
}

impl ChannelOptions {
    /// Whether the channel keeps history (and so assigns offsets): always when
    /// persisted, otherwise when the in-memory history has a size and a TTL.
    pub fn history_enabled(&self) -> bool {
        self.persist || (self.history_size > 0 && !self.history_ttl.is_zero())
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct Namespace {
    pub name: String,
    #[serde(flatten)]
    pub options: ChannelOptions,
}

fn duration<'de, D: Deserializer<'de>>(de: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(de)?;
    humantime::parse_duration(&s)
        .map_err(|e| serde::de::Error::custom(format!("invalid duration {s:?}: {e}")))
}

impl Config {
    /// The compiled-in defaults with the process environment applied.
    pub fn load(file: Option<&str>) -> Result<Config, ConfigError> {
        let text = match file {
            Some(path) => {
                Some(
                    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                        path: path.to_string(),
                        source,
                    })?,
                )
            }
            None => None,
        };
        Self::load_from(text.as_deref(), file.unwrap_or("<none>"), std::env::vars())
    }

    /// Loads from file text and an explicit environment, for tests and `check-config`.
    pub fn load_from(
        file_text: Option<&str>,
        file_name: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let defaults: Value = toml::from_str(DEFAULTS).map_err(|source| ConfigError::Parse {
            path: "<embedded defaults>".into(),
            source,
        })?;
        let mut merged = defaults.clone();
        if let Some(text) = file_text {
            let user: Value = toml::from_str(text).map_err(|source| ConfigError::Parse {
                path: file_name.to_string(),
                source,
            })?;
            merge(&mut merged, user, &defaults, "")?;
        }
        let mut env: Vec<(String, String)> = env.into_iter().collect();
        env.sort();
        for (name, value) in env {
            // Only HERALD_<SECTION>__<KEY> is config: other HERALD_* variables (such as
            // the HERALD_SERVICE_HOST / HERALD_PORT_* that Kubernetes injects for a
            // service named "herald") are left alone.
            if let Some(rest) = name.strip_prefix(ENV_PREFIX).filter(|r| r.contains("__")) {
                apply_env(&mut merged, rest, &value)?;
            }
        }
        fill_namespaces(&mut merged)?;
        let config: Config = serde_path_to_error::deserialize(merged).map_err(|e| {
            let key = e.path().to_string();
            ConfigError::BadValue {
                key,
                reason: e.into_inner().to_string(),
            }
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what types alone cannot; each error names the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.http.addr.parse::<SocketAddr>().map_err(|e| {
            bad(
                "http.addr",
                format!("{:?} is not host:port ({e})", self.http.addr),
            )
        })?;
        if self.client.ping_interval.is_zero() {
            return Err(bad("client.ping_interval", "must be positive"));
        }
        if self.client.pong_timeout.is_zero()
            || self.client.pong_timeout >= self.client.ping_interval
        {
            return Err(bad(
                "client.pong_timeout",
                "must be positive and below client.ping_interval",
            ));
        }
        for (key, v) in [
            ("client.max_frame_bytes", self.client.max_frame_bytes),
            ("client.max_channel_length", self.client.max_channel_length),
            ("client.outbound_queue_len", self.client.outbound_queue_len),
        ] {
            if v == 0 {
                return Err(bad(key, "must be positive"));
            }
        }
        if self.client.command_rate > 0 && self.client.command_burst < self.client.command_rate {
            return Err(bad(
                "client.command_burst",
                "must be at least client.command_rate",
            ));
        }
        for p in &self.http.trusted_proxies {
            if let Err(e) = p.parse::<crate::ipnet::IpNet>() {
                return Err(bad("http.trusted_proxies", e.to_string()));
            }
        }
        for (burst_key, rate, burst) in [
            (
                "client.connect_burst_per_ip",
                self.client.connect_rate_per_ip,
                self.client.connect_burst_per_ip,
            ),
            (
                "client.user_command_burst",
                self.client.user_command_rate,
                self.client.user_command_burst,
            ),
        ] {
            if rate > 0 && burst < rate {
                return Err(bad(burst_key, "must be at least its rate"));
            }
        }
        if !matches!(self.store.sync.as_str(), "full" | "normal") {
            return Err(bad(
                "store.sync",
                format!("{:?}: use \"full\" or \"normal\"", self.store.sync),
            ));
        }
        if !matches!(self.store.kind.as_str(), "sqlite" | "scylla") {
            return Err(bad(
                "store.kind",
                format!("{:?}: use \"sqlite\" or \"scylla\"", self.store.kind),
            ));
        }
        crate::store::scylla::parse_nodes(&self.store.scylla_uri)
            .map_err(|e| bad("store.scylla_uri", e))?;
        crate::store::scylla::check_keyspace(&self.store.scylla_keyspace)
            .map_err(|e| bad("store.scylla_keyspace", e))?;
        crate::store::scylla::check_replication(&self.store.scylla_replication)
            .map_err(|e| bad("store.scylla_replication", e))?;
        if self.store.path.is_empty() {
            return Err(bad("store.path", "must not be empty"));
        }
        let channels: Vec<(String, &ChannelOptions)> =
            std::iter::once(("channel".to_string(), &self.channel))
                .chain(
                    self.namespaces
                        .iter()
                        .enumerate()
                        .map(|(i, n)| (format!("namespaces[{i}]"), &n.options)),
                )
                .collect();
        self.broker.validate(&channels)?;
        self.push.validate()?;
        if self.store.max_history_page == 0 || self.store.max_recovery == 0 {
            return Err(bad(
                "store.max_history_page",
                "store.max_history_page and store.max_recovery must be positive",
            ));
        }
        self.kafka.validate(&self.namespaces)?;
        let mut seen = std::collections::HashSet::new();
        for (i, ns) in self.namespaces.iter().enumerate() {
            let valid = !ns.name.is_empty()
                && ns
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.');
            if !valid {
                return Err(bad(
                    &format!("namespaces[{i}].name"),
                    format!("{:?}: use letters, digits, _ - .", ns.name),
                ));
            }
            if !seen.insert(ns.name.as_str()) {
                return Err(bad(
                    &format!("namespaces[{i}].name"),
                    format!("{:?} is defined twice", ns.name),
                ));
            }
        }
        if self.auth.personal_channel
            && !self
                .namespaces
                .iter()
                .any(|n| n.name == self.auth.personal_namespace)
        {
            return Err(bad(
                "auth.personal_namespace",
                format!("no namespace named {:?}", self.auth.personal_namespace),
            ));
        }
        let jwks = &self.auth.jwks_url;
        if self.http.tls_cert.is_empty() != self.http.tls_key.is_empty() {
            return Err(bad(
                "http.tls_cert",
                "http.tls_cert and http.tls_key go together: set both or neither",
            ));
        }
        let url_ok = jwks.starts_with("https://") || jwks.starts_with("http://");
        if !jwks.is_empty() && !url_ok {
            return Err(bad("auth.jwks_url", "expected an http:// or https:// URL"));
        }
        if self.auth.jwks_refresh_interval.is_zero() {
            return Err(bad("auth.jwks_refresh_interval", "must be positive"));
        }
        for (key, pem) in [
            ("auth.rsa_public_key", &self.auth.rsa_public_key),
            ("auth.ecdsa_public_key", &self.auth.ecdsa_public_key),
        ] {
            if !pem.is_empty() && !pem.contains("-----BEGIN") {
                return Err(bad(key, "expected a PEM public key"));
            }
        }
        Ok(())
    }

    pub fn socket_addr(&self) -> SocketAddr {
        // validate() has checked it; fall back to the documented default all the same.
        self.http
            .addr
            .parse()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 8000)))
    }
}

fn type_name(v: &Value) -> &'static str {
    v.type_str()
}

/// Merges `user` into `into`, checking each key and type against `defaults`.
fn merge(into: &mut Value, user: Value, defaults: &Value, path: &str) -> Result<(), ConfigError> {
    let (Value::Table(into_t), Value::Table(user_t), Value::Table(def_t)) = (into, user, defaults)
    else {
        return Ok(());
    };
    for (k, v) in user_t {
        let key = if path.is_empty() {
            k.clone()
        } else {
            format!("{path}.{k}")
        };
        let Some(def) = def_t.get(&k) else {
            return Err(ConfigError::UnknownKey(key));
        };
        if key == "namespaces" {
            check_namespaces(&v, defaults)?;
            into_t.insert(k, v);
            continue;
        }
        if type_name(def) != type_name(&v) {
            return Err(bad(
                &key,
                format!("expected {}, found {}", type_name(def), type_name(&v)),
            ));
        }
        match v {
            Value::Table(_) => {
                let slot = into_t.entry(k.clone()).or_insert_with(|| def.clone());
                merge(slot, v, def, &key)?;
            }
            other => {
                into_t.insert(k, other);
            }
        }
    }
    Ok(())
}

/// Namespace entries take the keys of `[channel]` plus `name`.
fn check_namespaces(v: &Value, defaults: &Value) -> Result<(), ConfigError> {
    let Value::Array(items) = v else {
        return Err(bad(
            "namespaces",
            "expected an array of tables ([[namespaces]])",
        ));
    };
    let channel = defaults.get("channel").and_then(Value::as_table);
    for (i, item) in items.iter().enumerate() {
        let Value::Table(t) = item else {
            return Err(bad(&format!("namespaces[{i}]"), "expected a table"));
        };
        for (k, val) in t {
            let key = format!("namespaces[{i}].{k}");
            if k == "name" {
                if !val.is_str() {
                    return Err(bad(&key, "expected string"));
                }
                continue;
            }
            match channel.and_then(|c| c.get(k)) {
                None => return Err(ConfigError::UnknownKey(key)),
                Some(def) if type_name(def) != type_name(val) => {
                    return Err(bad(
                        &key,
                        format!("expected {}, found {}", type_name(def), type_name(val)),
                    ))
                }
                Some(_) => {}
            }
        }
    }
    Ok(())
}

/// Fills each namespace's missing keys from the merged `[channel]` table.
fn fill_namespaces(merged: &mut Value) -> Result<(), ConfigError> {
    let Some(channel) = merged.get("channel").and_then(Value::as_table).cloned() else {
        return Ok(());
    };
    if let Some(Value::Array(items)) = merged.get_mut("namespaces") {
        for (i, item) in items.iter_mut().enumerate() {
            let Value::Table(t) = item else {
                return Err(bad(&format!("namespaces[{i}]"), "expected a table"));
            };
            if !t.contains_key("name") {
                return Err(bad(&format!("namespaces[{i}].name"), "missing"));
            }
            for (k, v) in &channel {
                t.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
    }
    Ok(())
}

/// Applies `SECTION__KEY=value`, typed like the value it replaces.
fn apply_env(merged: &mut Value, rest: &str, raw: &str) -> Result<(), ConfigError> {
    let parts: Vec<String> = rest.split("__").map(|p| p.to_ascii_lowercase()).collect();
    let key = parts.join(".");
    let env_name = format!("{ENV_PREFIX}{rest}");
    let mut cur = merged;
    for (i, p) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        let Some(next) = cur.as_table_mut().and_then(|t| t.get_mut(p)) else {
            return Err(ConfigError::UnknownKey(format!("{key} (from {env_name})")));
        };
        if last {
            let parsed = match next {
                Value::String(_) => Value::String(raw.to_string()),
                Value::Integer(_) => Value::Integer(
                    raw.trim()
                        .parse()
                        .map_err(|_| bad(&key, format!("{env_name}={raw:?} is not an integer")))?,
                ),
                Value::Boolean(_) => Value::Boolean(match raw.trim() {
                    "true" | "1" => true,
                    "false" | "0" => false,
                    _ => return Err(bad(&key, format!("{env_name}={raw:?} is not true/false"))),
                }),
                Value::Float(_) => Value::Float(
                    raw.trim()
                        .parse()
                        .map_err(|_| bad(&key, format!("{env_name}={raw:?} is not a number")))?,
                ),
                Value::Array(_) => Value::Array(
                    raw.split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(|s| Value::String(s.into()))
                        .collect(),
                ),
                _ => return Err(bad(&key, format!("{env_name} cannot set a whole section"))),
            };
            *next = parsed;
            return Ok(());
        }
        cur = next;
    }
    Err(ConfigError::UnknownKey(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_load_and_validate() {
        let c = Config::load_from(None, "-", env(&[])).unwrap();
        assert_eq!(c.http.addr, "127.0.0.1:8000");
        assert_eq!(c.client.ping_interval, Duration::from_secs(25));
    }

    #[test]
    fn env_overrides_named_keys() {
        let c = Config::load_from(
            None,
            "-",
            env(&[
                ("HERALD_HTTP__ADDR", "127.0.0.1:9999"),
                ("HERALD_API__KEY", "12345"),
                ("HERALD_AUTH__HMAC_SECRET", "s3cret"),
                ("HERALD_CLIENT__MAX_SUBSCRIPTIONS", "7"),
                ("UNRELATED", "x"),
                ("HERALD_PORT_8000_TCP_ADDR", "10.0.0.1"),
                ("HERALD_SERVICE_HOST", "10.0.0.1"),
            ]),
        )
        .unwrap();
        assert_eq!(c.http.addr, "127.0.0.1:9999");
        assert_eq!(c.api.key, "12345");
        assert_eq!(c.auth.hmac_secret, "s3cret");
        assert_eq!(c.client.max_subscriptions, 7);
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = Config::load_from(Some("[http]\nadr = \"x\"\n"), "f", env(&[])).unwrap_err();
        assert_eq!(e.to_string(), "unknown config key `http.adr`");
        let e = Config::load_from(None, "-", env(&[("HERALD_HTTP__NOPE", "1")])).unwrap_err();
        assert!(e.to_string().contains("http.nope"), "{e}");
        let e = Config::load_from(
            Some("[[namespaces]]\nname = \"a\"\nhistry_size = 1\n"),
            "f",
            env(&[]),
        )
        .unwrap_err();
        assert!(e.to_string().contains("namespaces[0].histry_size"), "{e}");
    }

    #[test]
    fn bad_values_are_named() {
        let e = Config::load_from(
            Some("[client]\nmax_subscriptions = \"many\"\n"),
            "f",
            env(&[]),
        )
        .unwrap_err();
        assert!(e.to_string().contains("client.max_subscriptions"), "{e}");
        let e = Config::load_from(
            None,
            "f",
            env(&[("HERALD_HTTP__TRUSTED_PROXIES", "10.0.0.1,10.0.0.0/33")]),
        )
        .unwrap_err();
        assert!(e.to_string().contains("http.trusted_proxies"), "{e}");
        assert!(e.to_string().contains("10.0.0.0/33"), "{e}");
        let ok = Config::load_from(
            None,
            "f",
            env(&[(
                "HERALD_HTTP__TRUSTED_PROXIES",
                "10.0.0.1, 10.0.0.0/8,fd00::/8",
            )]),
        )
        .unwrap();
        assert_eq!(ok.http.trusted_proxies.len(), 3);
        let e = Config::load_from(
            None,
            "f",
            env(&[
                ("HERALD_CLIENT__USER_COMMAND_RATE", "10"),
                ("HERALD_CLIENT__USER_COMMAND_BURST", "5"),
            ]),
        )
        .unwrap_err();
        assert!(e.to_string().contains("client.user_command_burst"), "{e}");
        let e = Config::load_from(Some("[client]\nping_interval = \"soon\"\n"), "f", env(&[]))
            .unwrap_err();
        assert!(e.to_string().contains("client.ping_interval"), "{e}");
        let e = Config::load_from(None, "-", env(&[("HERALD_HTTP__ADDR", "nowhere")])).unwrap_err();
        assert!(e.to_string().contains("http.addr"), "{e}");
        let e = Config::load_from(None, "-", env(&[("HERALD_CLIENT__MAX_FRAME_BYTES", "-1")]))
            .unwrap_err();
        assert!(e.to_string().contains("client.max_frame_bytes"), "{e}");
        let kafka = |buffer: &str| {
            Config::load_from(
                None,
                "-",
                env(&[
                    ("HERALD_KAFKA__INGEST_ENABLED", "true"),
                    ("HERALD_KAFKA__BROKERS", "127.0.0.1:9092"),
                    ("HERALD_KAFKA__TOPICS", "t"),
                    ("HERALD_KAFKA__PARTITION_BUFFER", buffer),
                ]),
            )
        };
        assert!(kafka("10000000").is_ok());
        for buffer in ["0", "10000001"] {
            let e = kafka(buffer).unwrap_err();
            assert!(e.to_string().contains("kafka.partition_buffer"), "{e}");
        }
    }

    #[test]
    fn store_kind_and_scylla_keys() {
        let c = Config::load_from(None, "-", env(&[])).unwrap();
        assert_eq!(c.store.kind, "sqlite");
        assert_eq!(c.store.scylla_uri, "127.0.0.1:9042");
        assert_eq!(c.store.scylla_keyspace, "herald");
        let c = Config::load_from(
            Some("[store]\nkind = \"scylla\"\nscylla_keyspace = \"chat_prod\"\n"),
            "f",
            env(&[("HERALD_STORE__SCYLLA_URI", "10.0.0.1:9042,10.0.0.2:9042")]),
        )
        .unwrap();
        assert_eq!(c.store.kind, "scylla");
        assert_eq!(c.store.scylla_keyspace, "chat_prod");
        assert_eq!(c.store.scylla_uri, "10.0.0.1:9042,10.0.0.2:9042");
        for (var, value, key) in [
            ("HERALD_STORE__KIND", "postgres", "store.kind"),
            ("HERALD_STORE__SCYLLA_URI", " , ", "store.scylla_uri"),
            (
                "HERALD_STORE__SCYLLA_KEYSPACE",
                "my-keyspace",
                "store.scylla_keyspace",
            ),
            (
                "HERALD_STORE__SCYLLA_REPLICATION",
                "3",
                "store.scylla_replication",
            ),
        ] {
            let e = Config::load_from(None, "-", env(&[(var, value)])).unwrap_err();
            assert!(e.to_string().contains(key), "{var}: {e}");
        }
    }

    #[test]
    fn broker_keys() {
        let c = Config::load_from(None, "-", env(&[])).unwrap();
        assert_eq!(c.broker.kind, "memory");
        assert!(!c.broker.is_redis());
        let c = Config::load_from(
            Some("[broker]\nkind = \"redis\"\n"),
            "f",
            env(&[(
                "HERALD_BROKER__REDIS_URL",
                "redis://10.0.0.1:6379, redis://10.0.0.2:6379/2",
            )]),
        )
        .unwrap();
        assert!(c.broker.is_redis());
        assert_eq!(
            crate::cluster::redis::parse_urls(&c.broker.redis_url)
                .unwrap()
                .len(),
            2
        );
        for (var, value, key) in [
            ("HERALD_BROKER__KIND", "kafka", "broker.kind"),
            ("HERALD_BROKER__REDIS_URL", "http://x", "broker.redis_url"),
            ("HERALD_BROKER__REDIS_URL", " , ", "broker.redis_url"),
            ("HERALD_BROKER__REDIS_PREFIX", "", "broker.redis_prefix"),
            ("HERALD_BROKER__NODE_TTL", "1s", "broker.node_ttl"),
            ("HERALD_BROKER__REDIS_TIMEOUT", "0s", "broker.redis_timeout"),
        ] {
            let e = Config::load_from(None, "-", env(&[(var, value)])).unwrap_err();
            assert!(e.to_string().contains(key), "{var}: {e}");
        }
        // Cluster mode needs a Redis stream for persisted channels.
        let e = Config::load_from(
            Some("[broker]\nkind = \"redis\"\n[[namespaces]]\nname = \"chat\"\npersist = true\nhistory_size = 0\n"),
            "f",
            env(&[]),
        )
        .unwrap_err();
        assert!(e.to_string().contains("namespaces[0].history_size"), "{e}");
    }

    #[test]
    fn push_keys_nest_and_validate() {
        let c = Config::load_from(None, "-", env(&[])).unwrap();
        assert!(!c.push.enabled());
        assert_eq!(c.push.apns.endpoint, "production");
        assert!(c
            .namespaces
            .iter()
            .any(|n| n.name == "chat" && n.options.push));
        let c = Config::load_from(
            Some("[push.fcm]\nservice_account_file = \"/k.json\"\n"),
            "f",
            env(&[
                ("HERALD_PUSH__APNS__ENDPOINT", "https://127.0.0.1:9443"),
                ("HERALD_PUSH__APNS__KEY_FILE", "/AuthKey.p8"),
                ("HERALD_PUSH__APNS__KEY_ID", "ABC123DEFG"),
                ("HERALD_PUSH__APNS__TEAM_ID", "DEF123GHIJ"),
                ("HERALD_PUSH__APNS__TOPIC", "com.example.app"),
                ("HERALD_PUSH__CONCURRENCY", "8"),
            ]),
        )
        .unwrap();
        assert!(c.push.enabled());
        assert_eq!(c.push.apns.endpoint, "https://127.0.0.1:9443");
        assert_eq!(c.push.fcm.service_account_file, "/k.json");
        assert_eq!(c.push.concurrency, 8);
        for (var, value, key) in [
            (
                "HERALD_PUSH__APNS__ENDPOINT",
                "gateway.push.apple.com",
                "push.apns.endpoint",
            ),
            ("HERALD_PUSH__APNS__KEY_FILE", "/k.p8", "push.apns.key_id"),
            ("HERALD_PUSH__CONCURRENCY", "0", "push.concurrency"),
            ("HERALD_PUSH__BACKOFF_MIN", "10m", "push.backoff_min"),
            ("HERALD_PUSH__APNS__NOPE", "1", "push.apns.nope"),
        ] {
            let e = Config::load_from(None, "-", env(&[(var, value)])).unwrap_err();
            assert!(e.to_string().contains(key), "{var}: {e}");
        }
    }

    #[test]
    fn namespaces_inherit_channel_defaults() {
        let c = Config::load_from(
            Some(
                "[channel]\nhistory_size = 9\n[[namespaces]]\nname = \"chat\"\npresence = false\n",
            ),
            "f",
            env(&[]),
        )
        .unwrap();
        let chat = c.namespaces.iter().find(|n| n.name == "chat").unwrap();
        assert_eq!(chat.options.history_size, 9);
        assert!(!chat.options.presence);
    }

    #[test]
    fn shipped_file_equals_embedded_defaults() {
        let shipped =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/herald.toml"))
                .unwrap();
        assert_eq!(shipped, DEFAULTS);
    }
}

#[cfg(test)]
mod doc_tests {
    /// docs/CONFIG.md must describe every key the defaults have.
    #[test]
    fn every_key_is_documented() {
        let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/CONFIG.md"))
            .unwrap();
        let defaults: toml::Value = toml::from_str(super::DEFAULTS).unwrap();
        fn check(doc: &str, path: &str, table: &toml::value::Table) {
            for (key, value) in table {
                match value.as_table() {
                    // A sub-table (`[push.apns]`) documents its own keys.
                    Some(sub) => check(doc, &format!("{path}.{key}"), sub),
                    None => assert!(
                        doc.contains(&format!("| `{key}` |")),
                        "{path}.{key} missing from docs/CONFIG.md"
                    ),
                }
            }
        }
        for (section, table) in defaults.as_table().unwrap() {
            if let Some(table) = table.as_table() {
                check(&doc, section, table);
            }
        }
    }
}
