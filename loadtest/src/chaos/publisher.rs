//! A publisher on the server API: each publication carries a unique payload id
//! (`{"id":"<name>-<n>"}`); the log says which were acknowledged, at which position, and
//! which got no acknowledgement (error, timeout, node down). Each task publishes one
//! at a time, moving to the next node after a failure, as a backend behind a load
//! balancer would.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use super::log::{stopped, EventLog};

pub struct PubSpec {
    pub name: String,
    pub nodes: Vec<String>,
    pub api_key: String,
    pub channels: Vec<String>,
    /// Publications per second of this task.
    pub rate: f64,
    pub log: Arc<EventLog>,
    pub stop_file: PathBuf,
}

pub async fn run(spec: PubSpec) -> anyhow::Result<()> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(4))
        .pool_idle_timeout(Duration::from_secs(2))
        .build()?;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / spec.rate.max(0.1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut node = 0usize;
    let mut n = 0u64;
    while !stopped(&spec.stop_file) {
        tick.tick().await;
        n += 1;
        let ch = &spec.channels[n as usize % spec.channels.len()];
        let id = format!("{}-{n}", spec.name);
        let url = format!("http://{}/api/publish", spec.nodes[node % spec.nodes.len()]);
        let body = json!({"channel": ch, "data": {"id": id}}).to_string();
        let answer = http
            .post(url)
            .header("X-API-Key", &spec.api_key)
            .header("Content-Type", "application/json")
            .body(body)
            .send()
            .await;
        let text = match answer {
            Ok(r) => r.text().await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        let reply: Option<Value> = text
            .as_deref()
            .ok()
            .and_then(|t| serde_json::from_str(t).ok());
        let result = reply.as_ref().and_then(|v| v.get("result"));
        let offset = result.and_then(|r| r.get("offset")).and_then(Value::as_u64);
        let epoch = result.and_then(|r| r.get("epoch")).and_then(Value::as_str);
        match (offset, epoch) {
            (Some(offset), Some(epoch)) => {
                spec.log.line(format_args!("A {ch} {id} {epoch} {offset}"));
            }
            _ => {
                let why = match (&text, &reply) {
                    (Err(e), _) => e.clone(),
                    (Ok(_), Some(v)) => v.get("error").map(Value::to_string).unwrap_or_default(),
                    (Ok(t), None) => t.clone(),
                };
                let why: String = why.split_whitespace().collect::<Vec<_>>().join("_");
                spec.log.line(format_args!(
                    "F {ch} {id} {}",
                    if why.is_empty() { "-" } else { why.as_str() }
                ));
                node += 1;
            }
        }
    }
    spec.log.flush();
    Ok(())
}
