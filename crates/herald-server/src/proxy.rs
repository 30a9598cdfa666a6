//! The RPC proxy: client `rpc` commands are forwarded to the application backend as an HTTP
//! `POST` with JSON, with a timeout and a retry policy for failures that are safe to retry.
//!
//! Request body: `{"method", "data", "client_id", "user_id", "info"}`. The backend answers
//! `200 {"result": ...}` or `200 {"error": {"message": "..."}}`; other statuses are failures
//! (5xx and connection errors are retried, then reported as `unavailable`).

use std::time::Duration;

use herald_core::EngineError;
use herald_core::rpc::{RpcContext, RpcHandler};
use herald_proto::ErrorCode;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// `[rpc]` settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RpcProxyConfig {
    /// Backend endpoint (`http://` or `https://`); unset = `rpc` is disabled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Timeout of one attempt.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Extra attempts after a connection failure or a 5xx answer (not after a timeout).
    pub retries: u32,
    /// Largest backend answer, in bytes.
    pub max_response: usize,
}

impl Default for RpcProxyConfig {
    fn default() -> Self {
        RpcProxyConfig {
            url: None,
            timeout: Duration::from_secs(5),
            retries: 1,
            max_response: 1 << 20,
        }
    }
}

/// Forwards `rpc` to the backend.
pub struct HttpRpc {
    url: String,
    cfg: RpcProxyConfig,
}

impl HttpRpc {
    /// A proxy to `cfg.url` (`None` when no URL is configured).
    pub fn new(cfg: &RpcProxyConfig) -> Option<HttpRpc> {
        Some(HttpRpc {
            url: cfg.url.clone()?,
            cfg: cfg.clone(),
        })
    }
}

fn unavailable(why: String) -> EngineError {
    EngineError::new(
        ErrorCode::Unavailable,
        format!("backend unavailable: {why}"),
    )
}

#[async_trait::async_trait]
impl RpcHandler for HttpRpc {
    async fn call(
        &self,
        ctx: RpcContext,
        method: String,
        data: Value,
    ) -> Result<Value, EngineError> {
        let body = json!({
            "method": method,
            "data": data,
            "client_id": ctx.client_id,
            "user_id": ctx.user_id,
            "info": ctx.info,
        })
        .to_string();
        let mut last = String::new();
        for attempt in 0..=self.cfg.retries {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(50 << attempt.min(6))).await;
            }
            let r = crate::http_client::request(
                "POST",
                &self.url,
                &[("content-type", "application/json")],
                body.clone().into_bytes(),
                self.cfg.max_response,
                self.cfg.timeout,
            )
            .await;
            match r {
                Ok(r) if r.status == 200 => {
                    let v: Value = serde_json::from_slice(&r.body).map_err(|_| {
                        EngineError::new(ErrorCode::Internal, "the backend answered non-JSON")
                    })?;
                    if let Some(e) = v.get("error") {
                        let msg = e["message"].as_str().unwrap_or("backend error").to_owned();
                        return Err(EngineError::new(ErrorCode::RpcError, msg));
                    }
                    return Ok(v.get("result").cloned().unwrap_or(Value::Null));
                }
                Ok(r) if r.status >= 500 => last = format!("HTTP {}", r.status),
                Ok(r) => {
                    return Err(EngineError::new(
                        ErrorCode::RpcError,
                        format!("the backend answered HTTP {}", r.status),
                    ));
                }
                Err(e) if e.ends_with("timed out") => {
                    return Err(EngineError::new(
                        ErrorCode::Timeout,
                        "the backend did not answer in time",
                    ));
                }
                Err(e) => last = e,
            }
            metrics::counter!("herald_rpc_backend_failures_total").increment(1);
        }
        Err(unavailable(last))
    }
}
