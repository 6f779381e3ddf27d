//! librdkafka settings every Herald client shares, `kafka.client_options`, and log
//! routing into `tracing`.

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::ClientConfig;

use crate::config::KafkaConfig;

/// How often librdkafka reports statistics: the source of `/ready`'s Kafka state and of
/// the consumer lag gauge.
pub const STATS_INTERVAL_MS: &str = "1000";

/// Settings of every client: brokers, statistics, and a short reconnect backoff so that
/// a broker coming back is noticed within seconds (librdkafka's default grows to 10 s).
pub fn base(config: &KafkaConfig) -> ClientConfig {
    let brokers: Vec<&str> = config
        .brokers
        .iter()
        .map(|b| b.trim())
        .filter(|b| !b.is_empty())
        .collect();
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers.join(","))
        .set("client.id", "herald")
        .set("statistics.interval.ms", STATS_INTERVAL_MS)
        .set("reconnect.backoff.ms", "100")
        .set("reconnect.backoff.max.ms", "2000")
        .set_log_level(RDKafkaLogLevel::Warning);
    c
}

/// Applies `kafka.client_options` last, so they can change any of Herald's settings.
pub fn apply_options(c: &mut ClientConfig, options: &[String]) {
    for option in options {
        if let Ok((name, value)) = parse_option(option) {
            c.set(name, value);
        }
    }
}

fn parse_option(option: &str) -> Result<(&str, &str), String> {
    match option.split_once('=') {
        Some((name, value)) if !name.trim().is_empty() => Ok((name.trim(), value.trim())),
        _ => Err(format!("{option:?} is not name=value")),
    }
}

/// Checks `kafka.client_options` at config load: each entry is `name=value` and names a
/// property librdkafka knows, with a value it accepts.
pub fn check_client_options(options: &[String]) -> Result<(), String> {
    let mut c = ClientConfig::new();
    for option in options {
        let (name, value) = parse_option(option)?;
        c.set(name, value);
    }
    c.create_native_config()
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// librdkafka's log lines, at a level that does not alarm: it reports every failed
/// reconnect as an error, and a broker outage is already reported by `/ready`, the
/// `herald_kafka_up` gauge and one warning per state change.
pub fn log(role: &str, level: RDKafkaLogLevel, facility: &str, message: &str) {
    match level {
        RDKafkaLogLevel::Emerg
        | RDKafkaLogLevel::Alert
        | RDKafkaLogLevel::Critical
        | RDKafkaLogLevel::Error
        | RDKafkaLogLevel::Warning => {
            tracing::info!(target: "librdkafka", role, facility, "{message}")
        }
        _ => tracing::debug!(target: "librdkafka", role, facility, "{message}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_must_be_known_name_value_pairs() {
        assert!(check_client_options(&[]).is_ok());
        assert!(check_client_options(&["session.timeout.ms=6000".into()]).is_ok());
        let e = check_client_options(&["session.timeout.ms".into()]).unwrap_err();
        assert!(e.contains("name=value"), "{e}");
        let e = check_client_options(&["no.such.property=1".into()]).unwrap_err();
        assert!(e.contains("no.such.property"), "{e}");
        let e = check_client_options(&["session.timeout.ms=soon".into()]).unwrap_err();
        assert!(e.contains("session.timeout.ms"), "{e}");
    }
}
