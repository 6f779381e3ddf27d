//! Crash test: the real `herald` binary under a publish burst is killed with SIGKILL and
//! restarted on the same store. Every acknowledged publish is in history, at the offset
//! it was acknowledged with; offsets are gap-free; nothing is stored twice.

use std::collections::{HashMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde_json::{json, Value};

const KEY: &str = "crash-key";

struct Store(std::path::PathBuf);
impl Drop for Store {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn spawn(port: u16, store: &Store) -> Child {
    Command::new(env!("CARGO_BIN_EXE_herald"))
        .arg("serve")
        .env("HERALD_HTTP__ADDR", format!("127.0.0.1:{port}"))
        .env("HERALD_API__KEY", KEY)
        .env("HERALD_AUTH__HMAC_SECRET", "crash-secret")
        .env("HERALD_STORE__PATH", &store.0)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn herald")
}

async fn wait_healthy(http: &reqwest::Client, port: u16) {
    for _ in 0..200 {
        if http
            .get(format!("http://127.0.0.1:{port}/health"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("herald did not become healthy");
}

async fn api(
    http: &reqwest::Client,
    port: u16,
    method: &str,
    body: Value,
) -> Result<Value, String> {
    let r = http
        .post(format!("http://127.0.0.1:{port}/api/{method}"))
        .header("X-API-Key", KEY)
        .json(&body)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let v: Value = r.json().await.map_err(|e| e.to_string())?;
    v.get("result").cloned().ok_or_else(|| v.to_string())
}

#[tokio::test]
async fn acknowledged_publishes_survive_sigkill() {
    let store = Store(std::env::temp_dir().join(format!("herald-crash-{}", uuid::Uuid::new_v4())));
    let port = free_port();
    let http = reqwest::Client::new();
    let mut child = spawn(port, &store);
    wait_healthy(&http, port).await;

    // (worker, n) -> acknowledged offset
    let acked: Arc<Mutex<HashMap<(u64, u64), u64>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for w in 0..8u64 {
        let (http, acked, stop) = (http.clone(), acked.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let body = json!({"channel": "chat:crash", "data": {"w": w, "n": n}});
                match api(&http, port, "publish", body).await {
                    Ok(res) => {
                        let offset = res["offset"].as_u64().expect("offset in publish result");
                        acked.lock().insert((w, n), offset);
                    }
                    Err(_) => break,
                }
            }
        }));
    }
    // Kill in the middle of the burst.
    while acked.lock().len() < 400 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    child.kill().expect("SIGKILL");
    let _ = child.wait();
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        let _ = w.await;
    }
    let acked = acked.lock().clone();

    let mut child = spawn(port, &store);
    wait_healthy(&http, port).await;
    let mut stored: Vec<(u64, (u64, u64))> = Vec::new();
    let mut since = 0u64;
    let mut epoch = String::new();
    loop {
        let mut body = json!({"channel": "chat:crash", "limit": 1000});
        if !epoch.is_empty() {
            body["since"] = json!({"offset": since, "epoch": epoch});
        }
        let page = api(&http, port, "history", body)
            .await
            .expect("history after restart");
        epoch = page["epoch"].as_str().unwrap_or_default().to_string();
        let pubs = page["publications"].as_array().cloned().unwrap_or_default();
        if pubs.is_empty() {
            break;
        }
        for p in &pubs {
            let offset = p["offset"].as_u64().expect("offset");
            stored.push((
                offset,
                (
                    p["data"]["w"].as_u64().expect("w"),
                    p["data"]["n"].as_u64().expect("n"),
                ),
            ));
            since = offset;
        }
    }
    let _ = child.kill();
    let _ = child.wait();

    let offsets: Vec<u64> = stored.iter().map(|(o, _)| *o).collect();
    assert_eq!(
        offsets,
        (1..=stored.len() as u64).collect::<Vec<_>>(),
        "offsets are gap-free from 1"
    );
    let by_offset: HashMap<u64, (u64, u64)> = stored.iter().copied().collect();
    for (id, offset) in &acked {
        assert_eq!(
            by_offset.get(offset),
            Some(id),
            "acknowledged {id:?} at offset {offset} is in history"
        );
    }
    let unique: HashSet<(u64, u64)> = stored.iter().map(|(_, id)| *id).collect();
    assert_eq!(unique.len(), stored.len(), "no publication stored twice");
    assert!(acked.len() >= 400 && stored.len() >= acked.len());
}
