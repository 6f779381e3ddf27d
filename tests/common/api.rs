//! The server HTTP API (`POST /api/<method>`) over reqwest.

use std::net::SocketAddr;

use serde_json::Value;

use super::{within, API_KEY};

pub struct Api {
    base: String,
    http: reqwest::Client,
}

/// A raw API answer: status and body (JSON when it parses, `Value::Null` otherwise).
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
    pub text: String,
}

impl Api {
    pub fn new(addr: SocketAddr) -> Api {
        Api {
            base: format!("http://{addr}"),
            http: reqwest::Client::new(),
        }
    }

    /// `POST /api/{method}` with `body` and the given extra headers.
    pub async fn raw(&self, method: &str, body: Vec<u8>, headers: &[(&str, &str)]) -> Answer {
        self.raw_path(&format!("/api/{method}"), body, headers)
            .await
    }

    /// `POST {path}` with `body` and the given extra headers.
    pub async fn raw_path(&self, path: &str, body: Vec<u8>, headers: &[(&str, &str)]) -> Answer {
        let mut req = self
            .http
            .post(format!("{}{path}", self.base))
            .header("Content-Type", "application/json")
            .body(body);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = within("api response", req.send())
            .await
            .expect("api request");
        let status = resp.status().as_u16();
        let text = within("api body", resp.text()).await.expect("api body");
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Answer { status, body, text }
    }

    /// Calls `method` with the right key; returns the whole body, asserting 200.
    pub async fn call(&self, method: &str, params: Value) -> Value {
        let a = self
            .raw(
                method,
                params.to_string().into_bytes(),
                &[("X-API-Key", API_KEY)],
            )
            .await;
        assert_eq!(a.status, 200, "{method}: {}", a.text);
        a.body
    }

    /// Calls `method` and returns its `result`, panicking on an error object.
    pub async fn ok(&self, method: &str, params: Value) -> Value {
        let body = self.call(method, params.clone()).await;
        assert!(
            body.get("error").is_none(),
            "{method} {params} failed: {body}"
        );
        body.get("result")
            .cloned()
            .unwrap_or_else(|| panic!("{method}: no result in {body}"))
    }

    /// Publishes `data` to `channel`; returns the result (offset, epoch).
    pub async fn publish(&self, channel: &str, data: Value) -> Value {
        self.ok(
            "publish",
            serde_json::json!({"channel": channel, "data": data}),
        )
        .await
    }
}
