//! The Kafka dependency's state, as `/ready` and `herald_kafka_up` report it.
//!
//! librdkafka reconnects by itself and says little when it fails, so the state is read
//! from its statistics (every second): broker connection states, the consumer group
//! state and the leaders of the assigned partitions.

use std::sync::Arc;

use parking_lot::Mutex;
use rdkafka::statistics::Statistics;
use serde::Serialize;
use serde_json::{json, Value};

use crate::metrics as m;

/// One Kafka role's state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Status {
    /// Not configured.
    #[default]
    Disabled,
    /// Connecting or joining the consumer group for the first time.
    Starting,
    Ok,
    /// Records are not flowing; `reason` says why. Herald keeps serving WebSockets and
    /// the clients keep reconnecting with backoff.
    Degraded {
        reason: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Ingest,
    Egress,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Ingest => "ingest",
            Role::Egress => "egress",
        }
    }
}

/// Cheap-clone handle to the state of ingest and egress.
#[derive(Clone, Default)]
pub struct KafkaHealth {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    /// parking_lot Mutex: held only to read or replace a small value, never across await.
    ingest: Mutex<Status>,
    egress: Mutex<Status>,
}

impl KafkaHealth {
    fn slot(&self, role: Role) -> &Mutex<Status> {
        match role {
            Role::Ingest => &self.inner.ingest,
            Role::Egress => &self.inner.egress,
        }
    }

    pub fn get(&self, role: Role) -> Status {
        self.slot(role).lock().clone()
    }

    /// Records a new state; a change is logged once and mirrored in `herald_kafka_up`.
    pub fn set(&self, role: Role, status: Status) {
        let previous = std::mem::replace(&mut *self.slot(role).lock(), status.clone());
        let up = if status == Status::Ok { 1.0 } else { 0.0 };
        metrics::gauge!(m::KAFKA_UP, "role" => role.name()).set(up);
        if previous == status {
            return;
        }
        match &status {
            Status::Degraded { reason } => {
                tracing::warn!(role = role.name(), reason, "kafka degraded")
            }
            Status::Ok => tracing::info!(role = role.name(), "kafka connected"),
            _ => {}
        }
    }

    /// Whether ingest or egress is configured.
    pub fn enabled(&self) -> bool {
        self.get(Role::Ingest) != Status::Disabled || self.get(Role::Egress) != Status::Disabled
    }

    /// The degraded roles, as `/ready` lists them (`kafka.ingest`, `kafka.egress`).
    pub fn degraded(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        for (role, name) in [
            (Role::Ingest, "kafka.ingest"),
            (Role::Egress, "kafka.egress"),
        ] {
            if matches!(self.get(role), Status::Degraded { .. }) {
                out.push(name);
            }
        }
        out
    }

    /// `{"ingest": {"state": "ok"}, "egress": {"state": "degraded", "reason": "..."}}`
    pub fn to_json(&self) -> Value {
        json!({"ingest": self.get(Role::Ingest), "egress": self.get(Role::Egress)})
    }
}

/// Brokers librdkafka learned from metadata (node id >= 0); the bootstrap entries only
/// when none was learned yet.
fn known_brokers(stats: &Statistics) -> Vec<&rdkafka::statistics::Broker> {
    let learned: Vec<_> = stats.brokers.values().filter(|b| b.nodeid >= 0).collect();
    if learned.is_empty() {
        stats.brokers.values().collect()
    } else {
        learned
    }
}

/// A connection that failed or is being retried. `INIT` is a broker never needed yet
/// (librdkafka connects lazily), not a failure.
fn failing(state: &str) -> bool {
    !matches!(state, "UP" | "INIT" | "UPDATE")
}

/// Some("...") when no broker is reachable although some connection was tried.
pub fn brokers_problem(stats: &Statistics) -> Option<String> {
    let brokers = known_brokers(stats);
    if brokers.iter().any(|b| b.state == "UP") {
        return None;
    }
    let mut tried: Vec<String> = brokers
        .iter()
        .filter(|b| failing(&b.state))
        .map(|b| format!("{} {}", b.nodename, b.state))
        .collect();
    if tried.is_empty() {
        return None;
    }
    tried.sort();
    Some(format!("no broker reachable ({})", tried.join(", ")))
}

/// The consumer's state: the group must be joined and the leader of every assigned
/// partition connected.
pub fn consumer_status(
    stats: &Statistics,
    assigned: &[(String, i32)],
    ever_joined: bool,
) -> Status {
    if let Some(reason) = brokers_problem(stats) {
        return Status::Degraded { reason };
    }
    let group = stats.cgrp.as_ref().map(|g| g.state.as_str()).unwrap_or("");
    if group != "up" {
        return if ever_joined {
            Status::Degraded {
                reason: format!("consumer group coordinator not available (group state {group:?})"),
            }
        } else {
            Status::Starting
        };
    }
    for (topic, partition) in assigned {
        let Some(p) = stats
            .topics
            .get(topic)
            .and_then(|t| t.partitions.get(partition))
        else {
            continue;
        };
        let leader = stats.brokers.values().find(|b| b.nodeid == p.leader);
        match leader {
            Some(b) if b.state == "UP" => {}
            Some(b) => {
                return Status::Degraded {
                    reason: format!(
                        "leader of {topic}/{partition} ({}) is {}",
                        b.nodename, b.state
                    ),
                }
            }
            None => {
                return Status::Degraded {
                    reason: format!("{topic}/{partition} has no leader"),
                }
            }
        }
    }
    if ever_joined {
        Status::Ok
    } else {
        Status::Starting
    }
}

/// The producer's state: a broker reachable, and no delivery failed since the last one
/// that succeeded.
pub fn producer_status(stats: &Statistics, last_failure: Option<&str>) -> Status {
    if let Some(reason) = brokers_problem(stats) {
        return Status::Degraded { reason };
    }
    match last_failure {
        Some(e) => Status::Degraded {
            reason: format!("delivery failed: {e}"),
        },
        None => Status::Ok,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(brokers: &[(i32, &str)], group: &str, leader: i32) -> Statistics {
        use rdkafka::statistics::{Broker, ConsumerGroup, Partition, Topic};
        let brokers = brokers
            .iter()
            .map(|(id, state)| {
                let broker = Broker {
                    name: format!("b{id}:9092/{id}"),
                    nodeid: *id,
                    nodename: format!("b{id}:9092"),
                    state: state.to_string(),
                    ..Default::default()
                };
                (broker.name.clone(), broker)
            })
            .collect();
        let partition = Partition {
            partition: 0,
            leader,
            ..Default::default()
        };
        let topic = Topic {
            topic: "t".into(),
            partitions: [(0, partition)].into_iter().collect(),
            ..Default::default()
        };
        Statistics {
            brokers,
            topics: [("t".to_string(), topic)].into_iter().collect(),
            cgrp: Some(ConsumerGroup {
                state: group.into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn assigned() -> Vec<(String, i32)> {
        vec![("t".to_string(), 0)]
    }

    #[test]
    fn healthy_consumer_is_ok_once_joined() {
        let s = stats(&[(1, "UP"), (2, "INIT")], "up", 1);
        assert_eq!(consumer_status(&s, &assigned(), true), Status::Ok);
        assert_eq!(consumer_status(&s, &assigned(), false), Status::Starting);
    }

    #[test]
    fn all_brokers_down_is_degraded() {
        let s = stats(&[(1, "DOWN"), (2, "TRY_CONNECT")], "up", 1);
        let Status::Degraded { reason } = consumer_status(&s, &assigned(), true) else {
            panic!("not degraded")
        };
        assert!(reason.contains("no broker reachable"), "{reason}");
        assert!(matches!(producer_status(&s, None), Status::Degraded { .. }));
    }

    #[test]
    fn a_down_leader_or_lost_coordinator_is_degraded() {
        let s = stats(&[(1, "UP"), (2, "DOWN")], "up", 2);
        let Status::Degraded { reason } = consumer_status(&s, &assigned(), true) else {
            panic!("not degraded")
        };
        assert!(reason.contains("leader of t/0"), "{reason}");
        let s = stats(&[(1, "UP")], "wait-coord", 1);
        assert!(matches!(
            consumer_status(&s, &assigned(), true),
            Status::Degraded { .. }
        ));
        assert_eq!(consumer_status(&s, &assigned(), false), Status::Starting);
    }

    #[test]
    fn idle_producer_is_ok_and_a_failed_delivery_degrades_it() {
        let s = stats(&[(1, "INIT")], "", -1);
        assert_eq!(producer_status(&s, None), Status::Ok);
        assert!(matches!(
            producer_status(&s, Some("timed out")),
            Status::Degraded { .. }
        ));
    }

    #[test]
    fn ready_json_lists_degraded_roles() {
        let h = KafkaHealth::default();
        assert!(!h.enabled());
        h.set(Role::Ingest, Status::Ok);
        h.set(Role::Egress, Status::Degraded { reason: "x".into() });
        assert!(h.enabled());
        assert_eq!(h.degraded(), vec!["kafka.egress"]);
        assert_eq!(
            h.to_json(),
            json!({"ingest": {"state": "ok"}, "egress": {"state": "degraded", "reason": "x"}})
        );
    }
}
