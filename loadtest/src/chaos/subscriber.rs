//! A subscriber that behaves like the official SDKs: it subscribes with `recover: true`,
//! remembers each channel's (offset, epoch), reconnects to another node when its
//! connection ends, resubscribes with recovery on unsubscribe 2500, retries failed
//! subscribes, and logs every result and publication for the checker. When the run
//! stops it resubscribes once more with recovery (catching up whatever live delivery
//! had not brought yet), then logs `END`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::log::{stopped, EventLog};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long a client may take to catch up after the run stopped.
const CATCH_UP: Duration = Duration::from_secs(60);

pub struct SubSpec {
    pub name: String,
    pub nodes: Vec<String>,
    pub token: String,
    pub channels: Vec<String>,
    pub log: Arc<EventLog>,
    pub stop_file: PathBuf,
}

#[derive(Default)]
struct Chan {
    /// (epoch, offset) once the first subscribe answered.
    pos: Option<(String, u64)>,
    subscribed: bool,
    /// A subscribe is in flight with this command id.
    pending: Option<u64>,
    /// Retry a failed subscribe after this instant.
    retry_at: Option<Instant>,
}

enum Ended {
    /// The connection ended; reconnect.
    Lost,
    /// The run is over and every channel was caught up (or gave up).
    Done,
}

pub async fn run(spec: SubSpec) {
    let mut chans: HashMap<String, Chan> = spec
        .channels
        .iter()
        .map(|c| (c.clone(), Chan::default()))
        .collect();
    let mut attempt = 0usize;
    // Set when the run stopped: the client then catches up, for at most CATCH_UP.
    let mut final_since: Option<Instant> = None;
    loop {
        if final_since.is_none() && stopped(&spec.stop_file) {
            final_since = Some(Instant::now());
        }
        let node = &spec.nodes[(name_index(&spec.name) + attempt) % spec.nodes.len()];
        attempt += 1;
        let ended = match session(&spec, node, &mut chans, &mut final_since).await {
            Ok(e) => e,
            Err(e) => {
                spec.log
                    .line(format_args!("X {} {}", spec.name, squash(&e.to_string())));
                Ended::Lost
            }
        };
        if let Ended::Done = ended {
            break;
        }
        for c in chans.values_mut() {
            c.subscribed = false;
            c.pending = None;
            c.retry_at = None;
        }
        // Give up catching up after a while at the end (the checker reports it).
        if final_since.is_some_and(|t| t.elapsed() > CATCH_UP) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100 + (attempt as u64 % 5) * 100)).await;
    }
    for ch in &spec.channels {
        let sub = chans.get(ch).is_some_and(|c| c.subscribed) as u8;
        spec.log.line(format_args!("END {} {ch} {sub}", spec.name));
    }
    spec.log.flush();
}

fn name_index(name: &str) -> usize {
    name.bytes().map(usize::from).sum()
}

fn squash(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join("_")
}

async fn send(ws: &mut Ws, v: Value) -> anyhow::Result<()> {
    ws.send(Message::text(v.to_string())).await?;
    Ok(())
}

fn subscribe_cmd(id: u64, channel: &str, c: &Chan) -> Value {
    let mut sub = json!({"channel": channel});
    if let Some((epoch, offset)) = &c.pos {
        sub["recover"] = json!(true);
        sub["epoch"] = json!(epoch);
        sub["offset"] = json!(offset);
    }
    json!({"id": id, "subscribe": sub})
}

async fn session(
    spec: &SubSpec,
    node: &str,
    chans: &mut HashMap<String, Chan>,
    final_since: &mut Option<Instant>,
) -> anyhow::Result<Ended> {
    let url = format!("ws://{node}/connection/websocket");
    let (mut ws, _) = tokio::time::timeout(
        Duration::from_secs(5),
        tokio_tungstenite::connect_async(url),
    )
    .await
    .map_err(|_| anyhow::anyhow!("connect timeout"))??;
    send(
        &mut ws,
        json!({"id": 1, "connect": {"token": spec.token, "name": "chaos"}}),
    )
    .await?;
    let mut next_id = 2u64;
    let mut connected = false;
    // Channel by in-flight subscribe id.
    let mut inflight: HashMap<u64, String> = HashMap::new();
    // At the end: channels still to catch up with one more recovering subscribe.
    let mut catch_up: Vec<String> = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let deadline_connect = Instant::now() + Duration::from_secs(5);
    loop {
        tokio::select! {
            frame = ws.next() => {
                let text = match frame {
                    Some(Ok(Message::Text(t))) => t.as_str().to_owned(),
                    Some(Ok(Message::Close(f))) => {
                        let code = f.map(|f| u16::from(f.code)).unwrap_or(0);
                        spec.log.line(format_args!("X {} {code}", spec.name));
                        return Ok(Ended::Lost);
                    }
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => anyhow::bail!("read: {e}"),
                    None => anyhow::bail!("connection ended"),
                };
                for line in text.split('\n').filter(|l| !l.trim().is_empty()) {
                    let v: Value = serde_json::from_str(line)?;
                    if v.as_object().is_some_and(|o| o.is_empty()) {
                        send(&mut ws, json!({})).await?;
                        continue;
                    }
                    if let Some(push) = v.get("push") {
                        if on_push(spec, chans, push) {
                            return Ok(Ended::Lost);
                        }
                        continue;
                    }
                    let id = v.get("id").and_then(Value::as_u64).unwrap_or(0);
                    if id == 1 {
                        if let Some(e) = v.get("error") {
                            anyhow::bail!("connect error {e}");
                        }
                        connected = true;
                        continue;
                    }
                    if let Some(ch) = inflight.remove(&id) {
                        on_subscribe_reply(spec, chans, &ch, &v);
                    }
                }
            }
            _ = tick.tick() => {
                if !connected {
                    anyhow::ensure!(Instant::now() < deadline_connect, "no connect reply");
                    continue;
                }
                if final_since.is_none() && stopped(&spec.stop_file) {
                    *final_since = Some(Instant::now());
                }
                if final_since.is_some_and(|t| t.elapsed() > CATCH_UP) {
                    return Ok(Ended::Done);
                }
                if final_since.is_some() && catch_up.is_empty() && inflight.is_empty() {
                    catch_up = spec.channels.clone();
                    for ch in &catch_up {
                        let c = chans.get_mut(ch).expect("known channel");
                        if c.subscribed {
                            send(&mut ws, json!({"id": next_id, "unsubscribe": {"channel": ch}})).await?;
                            next_id += 1;
                            c.subscribed = false;
                        }
                        c.retry_at = None;
                    }
                }
                for ch in &spec.channels {
                    let c = chans.get_mut(ch).expect("known channel");
                    let due = c.retry_at.is_none_or(|t| Instant::now() >= t);
                    if !c.subscribed && c.pending.is_none() && due {
                        send(&mut ws, subscribe_cmd(next_id, ch, c)).await?;
                        c.pending = Some(next_id);
                        inflight.insert(next_id, ch.clone());
                        next_id += 1;
                    }
                }
                if final_since.is_some() && inflight.is_empty() && !catch_up.is_empty()
                    && spec.channels.iter().all(|ch| chans[ch].subscribed)
                {
                    return Ok(Ended::Done);
                }
            }
        }
    }
}

/// Handles a push; true if the connection is over (disconnect).
fn on_push(spec: &SubSpec, chans: &mut HashMap<String, Chan>, push: &Value) -> bool {
    let ch = push
        .get("channel")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if let Some(p) = push.get("pub") {
        log_pub(spec, ch, p, "L");
        if let (Some(c), Some(o)) = (chans.get_mut(ch), p.get("offset").and_then(Value::as_u64)) {
            if let Some(pos) = c.pos.as_mut() {
                pos.1 = pos.1.max(o);
            }
        }
    } else if let Some(u) = push.get("unsubscribe") {
        let code = u.get("code").and_then(Value::as_u64).unwrap_or(0);
        spec.log.line(format_args!("U {} {ch} {code}", spec.name));
        if let Some(c) = chans.get_mut(ch) {
            c.subscribed = false;
            // 2500: resubscribe now with recovery; other codes are final for an SDK,
            // the checker reports them, and this client resubscribes after a pause.
            c.retry_at = (code != 2500).then(|| Instant::now() + Duration::from_secs(1));
        }
    } else if let Some(d) = push.get("disconnect") {
        let code = d.get("code").and_then(Value::as_u64).unwrap_or(0);
        spec.log.line(format_args!("X {} {code}", spec.name));
        return true;
    }
    false
}

fn log_pub(spec: &SubSpec, ch: &str, p: &Value, how: &str) {
    let offset = p.get("offset").and_then(Value::as_u64).unwrap_or(0);
    let id = p
        .get("data")
        .and_then(|d| d.get("id"))
        .and_then(Value::as_str)
        .unwrap_or("-");
    spec.log
        .line(format_args!("D {} {ch} {offset} {id} {how}", spec.name));
}

fn on_subscribe_reply(spec: &SubSpec, chans: &mut HashMap<String, Chan>, ch: &str, v: &Value) {
    let Some(c) = chans.get_mut(ch) else { return };
    c.pending = None;
    if let Some(e) = v.get("error") {
        let code = e.get("code").and_then(Value::as_u64).unwrap_or(0);
        spec.log.line(format_args!("E {} {ch} {code}", spec.name));
        c.retry_at = Some(Instant::now() + Duration::from_millis(300));
        return;
    }
    let r = &v["subscribe"];
    let epoch = r
        .get("epoch")
        .and_then(Value::as_str)
        .unwrap_or("-")
        .to_string();
    let top = r.get("offset").and_then(Value::as_u64).unwrap_or(0);
    let recovered = r.get("recovered").and_then(Value::as_bool).unwrap_or(false);
    let asked = c.pos.is_some();
    spec.log.line(format_args!(
        "S {} {ch} {epoch} {top} {} {}",
        spec.name, recovered as u8, asked as u8
    ));
    let mut last = top;
    if let Some(pubs) = r.get("publications").and_then(Value::as_array) {
        for p in pubs {
            log_pub(spec, ch, p, "R");
            last = last.max(p.get("offset").and_then(Value::as_u64).unwrap_or(0));
        }
    }
    spec.log.line(format_args!("T {} {ch}", spec.name));
    c.pos = Some((epoch, last));
    c.subscribed = true;
}
