//! The real `herald` binary as a child process, for end-to-end push tests: started on a
//! given port with a config file and environment, killed (SIGKILL) on drop. (Not in
//! `fakes`: an example includes that module, and examples have no binary to run.)
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A 64-hex-digit APNs token derived from a name.
pub fn apns_token(name: &str) -> String {
    let hex: String = name.bytes().map(|b| format!("{b:02x}")).collect();
    format!("{hex:0<64}")
}

pub struct Herald {
    pub child: Child,
    pub port: u16,
    api_key: String,
    http: reqwest::Client,
}

impl Drop for Herald {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Herald {
    /// Starts `herald serve --config config` on 127.0.0.1:`port` with `env` (which must
    /// set the API key to `api_key`) and waits until /health answers.
    pub async fn spawn(
        port: u16,
        config: &Path,
        api_key: &str,
        env: &[(String, String)],
    ) -> Herald {
        let mut c = Command::new(env!("CARGO_BIN_EXE_herald"));
        c.arg("serve")
            .arg("--config")
            .arg(config)
            .env("HERALD_HTTP__ADDR", format!("127.0.0.1:{port}"))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            c.env(k, v);
        }
        let child = c.spawn().expect("spawn herald");
        let h = Herald {
            child,
            port,
            api_key: api_key.to_string(),
            http: reqwest::Client::new(),
        };
        for _ in 0..300 {
            let ok = h
                .http
                .get(format!("http://127.0.0.1:{port}/health"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ok {
                return h;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("herald did not become healthy");
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Calls the server API; panics on an error answer.
    pub async fn api(&self, method: &str, body: Value) -> Value {
        let r = self
            .http
            .post(format!("http://127.0.0.1:{}/api/{method}", self.port))
            .header("X-API-Key", &self.api_key)
            .json(&body)
            .send()
            .await
            .expect("api call");
        let v: Value = r.json().await.expect("api json");
        assert!(v.get("error").is_none(), "{method} {body}: {v}");
        v["result"].clone()
    }

    /// Samples of `name` whose labels include every `labels` pair, summed.
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let text = self
            .http
            .get(format!("http://127.0.0.1:{}/metrics", self.port))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text");
        text.lines()
            .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
            .filter(|l| {
                labels
                    .iter()
                    .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Waits until `metric` reaches `want` (bounded).
    pub async fn wait_metric(&self, name: &str, labels: &[(&str, &str)], want: f64) {
        for _ in 0..600 {
            if self.metric(name, labels).await >= want {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{name}{labels:?} never reached {want}");
    }

    /// Waits until both queues are empty (the gauge is refreshed every second).
    pub async fn wait_drained(&self) {
        let mut zero = 0;
        for _ in 0..600 {
            let d = self.metric("herald_push_queue_depth", &[]).await;
            zero = if d == 0.0 { zero + 1 } else { 0 };
            if zero >= 3 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        panic!("push queue never drained");
    }
}
