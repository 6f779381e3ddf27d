//! `GET /api/openapi.json`: docs/openapi.yaml, compiled into the binary and served as JSON.
//!
//! The YAML is parsed once, on the first request, and the JSON bytes are kept: the
//! document never changes while the process runs.

use std::sync::LazyLock;

use actix_web::http::header::ContentType;
use actix_web::HttpResponse;
use bytes::Bytes;

/// The OpenAPI 3.1 description of the server API, as written in the repository.
pub const OPENAPI_YAML: &str = include_str!("../../docs/openapi.yaml");

/// The document as JSON, or why it could not be converted (a broken build, caught by the
/// tests below before it ships).
static OPENAPI_JSON: LazyLock<Result<Bytes, String>> = LazyLock::new(|| {
    let doc = to_json(OPENAPI_YAML)?;
    serde_json::to_vec(&doc)
        .map(Bytes::from)
        .map_err(|e| e.to_string())
});

fn to_json(yaml: &str) -> Result<serde_json::Value, String> {
    serde_yaml_ng::from_str(yaml).map_err(|e| format!("docs/openapi.yaml: {e}"))
}

/// `GET /api/openapi.json`
pub async fn openapi_json() -> HttpResponse {
    match &*OPENAPI_JSON {
        Ok(body) => HttpResponse::Ok()
            .content_type(ContentType::json())
            .body(body.clone()),
        Err(e) => {
            tracing::error!(cause = %e, "openapi document unavailable");
            HttpResponse::InternalServerError()
                .content_type(ContentType::json())
                .body(r#"{"error":{"code":100,"message":"internal server error"}}"#)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::methods::METHODS;

    fn doc() -> serde_json::Value {
        to_json(OPENAPI_YAML).expect("docs/openapi.yaml parses")
    }

    #[test]
    fn is_openapi_3_1() {
        let d = doc();
        assert_eq!(d["openapi"], "3.1.0");
        assert!(OPENAPI_JSON.is_ok());
    }

    /// Every server API method is described, and nothing else is described under /api/.
    #[test]
    fn paths_match_the_methods() {
        let d = doc();
        let paths = d["paths"].as_object().expect("paths");
        for m in METHODS {
            let op = &paths
                .get(&format!("/api/{m}"))
                .unwrap_or_else(|| panic!("/api/{m} missing from docs/openapi.yaml"))["post"];
            for status in ["200", "400", "401"] {
                assert!(
                    op["responses"].get(status).is_some(),
                    "/api/{m}: no {status}"
                );
            }
        }
        for p in paths.keys() {
            if let Some(m) = p.strip_prefix("/api/") {
                assert!(
                    m == "openapi.json" || METHODS.contains(&m),
                    "{p} is documented but is not a method"
                );
            }
        }
    }

    #[actix_web::test]
    async fn serves_json() {
        let resp = openapi_json().await;
        assert_eq!(resp.status(), 200);
        let body = actix_web::body::to_bytes(resp.into_body()).await.unwrap();
        let served: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(served, doc());
    }
}
