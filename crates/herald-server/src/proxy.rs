//! Backend proxies: client `rpc` commands, and subscribes/publishes in namespaces that ask for
//! it, are forwarded to the application backend as an HTTP `POST` with JSON, with a timeout and a
//! retry policy for failures that are safe to retry.
//!
//! Request bodies carry `client_id`, `user_id`, `info`, the connection's forwarded `headers` (the
//! `[proxy] forward_headers` allowlist, when set) and the command's fields. The backend
//! answers `200 {"result": ...}` or `200 {"error": {"message": "..."}}`; other statuses are
//! failures (5xx and connection errors are retried, then reported as `unavailable`).

use std::time::Duration;

use herald_core::EngineError;
use herald_core::rpc::{ChannelProxy, Refreshed, RpcContext, RpcHandler};
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

/// One backend endpoint with its timeout and retry policy.
#[derive(Debug, Clone)]
pub struct Backend {
    url: String,
    timeout: Duration,
    retries: u32,
    max_response: usize,
}

fn unavailable(why: String) -> EngineError {
    EngineError::new(
        ErrorCode::Unavailable,
        format!("backend unavailable: {why}"),
    )
}

impl Backend {
    /// POST `body`; the result of `{"result": ...}`. Errors: `{"error": {"message": ...}}` is
    /// the backend's refusal, with the code `refused` and its message; timeouts are `timeout`,
    /// connection failures and 5xx after the retries `unavailable`, other statuses `rpc_error`.
    pub async fn call(&self, body: &Value, refused: ErrorCode) -> Result<Value, EngineError> {
        let body = body.to_string();
        let mut last = String::new();
        for attempt in 0..=self.retries {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(50 << attempt.min(6))).await;
            }
            let r = crate::http_client::request(
                "POST",
                &self.url,
                &[("content-type", "application/json")],
                body.clone().into_bytes(),
                self.max_response,
                self.timeout,
            )
            .await;
            match r {
                Ok(r) if r.status == 200 => {
                    let v: Value = serde_json::from_slice(&r.body).map_err(|_| {
                        EngineError::new(ErrorCode::Internal, "the backend answered non-JSON")
                    })?;
                    if let Some(e) = v.get("error") {
                        let message = e["message"].as_str().unwrap_or("refused by the backend");
                        return Err(EngineError::new(refused, message));
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
                Err(e) if e.kind == crate::http_client::HttpErrorKind::Timeout => {
                    return Err(EngineError::new(
                        ErrorCode::Timeout,
                        "the backend did not answer in time",
                    ));
                }
                Err(e) => last = e.to_string(),
            }
            metrics::counter!("herald_backend_failures_total").increment(1);
        }
        Err(unavailable(last))
    }
}

fn who(ctx: &RpcContext) -> serde_json::Map<String, Value> {
    let mut m = serde_json::Map::new();
    m.insert("client_id".into(), json!(ctx.client_id));
    m.insert("user_id".into(), json!(ctx.user_id));
    m.insert("info".into(), json!(ctx.info));
    if let Some(h) = &ctx.headers {
        m.insert("headers".into(), Value::Object((**h).clone()));
    }
    m
}

/// The handshake headers named in `names` (lower-case), as a JSON object.
pub fn forwarded_headers(
    headers: &axum::http::HeaderMap,
    names: &[String],
) -> serde_json::Map<String, Value> {
    let mut fwd = serde_json::Map::new();
    for name in names {
        if let Some(v) = headers.get(name.as_str()).and_then(|v| v.to_str().ok()) {
            fwd.insert(name.clone(), json!(v));
        }
    }
    fwd
}

/// Forwards `rpc` to the backend.
pub struct HttpRpc {
    backend: Backend,
}

impl HttpRpc {
    /// A proxy to `cfg.url` (`None` when no URL is configured).
    pub fn new(cfg: &RpcProxyConfig) -> Option<HttpRpc> {
        Some(HttpRpc {
            backend: Backend {
                url: cfg.url.clone()?,
                timeout: cfg.timeout,
                retries: cfg.retries,
                max_response: cfg.max_response,
            },
        })
    }
}

#[async_trait::async_trait]
impl RpcHandler for HttpRpc {
    async fn call(
        &self,
        ctx: RpcContext,
        method: String,
        data: Value,
    ) -> Result<Value, EngineError> {
        let mut body = who(&ctx);
        body.insert("method".into(), json!(method));
        body.insert("data".into(), data);
        self.backend
            .call(&Value::Object(body), ErrorCode::RpcError)
            .await
    }
}

/// `[proxy]`: backends that authenticate connections without a token, and that decide
/// subscribes and publishes in namespaces with `subscribe_proxy` / `publish_proxy`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChannelProxyConfig {
    /// Authenticates connections that bring no token: receives `{"client_ip", "headers"}` (only
    /// the `forward_headers`), answers `{"result": {"user", "info"?, "channels"?, "expire_at"?}}`
    /// or an error (HTTP 401 for the client).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connect_url: Option<String>,
    /// Handshake headers passed to every proxy and to `[rpc]` (case-insensitive names, e.g.
    /// `cookie`); other headers never leave the server.
    #[serde(deserialize_with = "herald_core::config::list")]
    pub forward_headers: Vec<String>,
    /// Extends connections the connect proxy authenticated with an `expire_at`: receives
    /// `{"client_id","user_id","info","headers"}` before expiry (`auth.refresh_before`), answers
    /// `{"result": {"expire_at", "info"?}}`, or an error to let the connection expire (4010).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refresh_url: Option<String>,
    /// Receives `{"client_id","user_id","info","headers","channel"}`; answers
    /// `{"result": {}}` or `{"result": {"info": ...}}` (channel info shown in presence and
    /// join/leave) to allow, or `{"error": {"message": ...}}` to refuse.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subscribe_url: Option<String>,
    /// Receives `{"client_id","user_id","info","channel","data"}`; answers `{"result": {}}` to
    /// allow, `{"result": {"data": ...}}` to publish replacement data, or an error to refuse.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub publish_url: Option<String>,
    /// Timeout of one attempt.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Extra attempts after a connection failure or a 5xx.
    pub retries: u32,
}

impl Default for ChannelProxyConfig {
    fn default() -> Self {
        ChannelProxyConfig {
            connect_url: None,
            forward_headers: Vec::new(),
            refresh_url: None,
            subscribe_url: None,
            publish_url: None,
            timeout: Duration::from_secs(3),
            retries: 1,
        }
    }
}

impl ChannelProxyConfig {
    /// `forward_headers`, lower-cased.
    pub fn header_names(&self) -> Vec<String> {
        self.forward_headers
            .iter()
            .map(|h| h.to_ascii_lowercase())
            .collect()
    }
}

/// The HTTP subscribe/publish/refresh proxy.
pub struct HttpChannelProxy {
    subscribe: Option<Backend>,
    publish: Option<Backend>,
    refresh: Option<Backend>,
}

impl HttpChannelProxy {
    /// A proxy for the configured URLs (`None` when none is set).
    pub fn new(cfg: &ChannelProxyConfig) -> Option<HttpChannelProxy> {
        let backend = |url: &Option<String>| {
            url.as_ref().map(|u| Backend {
                url: u.clone(),
                timeout: cfg.timeout,
                retries: cfg.retries,
                max_response: 1 << 20,
            })
        };
        let p = HttpChannelProxy {
            subscribe: backend(&cfg.subscribe_url),
            publish: backend(&cfg.publish_url),
            refresh: backend(&cfg.refresh_url),
        };
        (p.subscribe.is_some() || p.publish.is_some() || p.refresh.is_some()).then_some(p)
    }
}

fn not_configured(what: &str) -> EngineError {
    EngineError::new(
        ErrorCode::Unavailable,
        format!("the namespace asks for a {what} proxy but none is configured"),
    )
}

#[async_trait::async_trait]
impl ChannelProxy for HttpChannelProxy {
    async fn subscribe(
        &self,
        ctx: &RpcContext,
        channel: &str,
    ) -> Result<Option<Value>, EngineError> {
        let b = self
            .subscribe
            .as_ref()
            .ok_or_else(|| not_configured("subscribe"))?;
        let mut body = who(ctx);
        body.insert("channel".into(), json!(channel));
        let mut result = b
            .call(&Value::Object(body), ErrorCode::PermissionDenied)
            .await?;
        Ok(result
            .get_mut("info")
            .map(Value::take)
            .filter(|v| !v.is_null()))
    }

    fn refreshes(&self) -> bool {
        self.refresh.is_some()
    }

    async fn refresh(&self, ctx: &RpcContext) -> Result<Refreshed, EngineError> {
        let b = self
            .refresh
            .as_ref()
            .ok_or_else(|| not_configured("refresh"))?;
        let r = b
            .call(&Value::Object(who(ctx)), ErrorCode::Unauthorized)
            .await?;
        let expire_at = r["expire_at"].as_u64().ok_or_else(|| {
            EngineError::new(
                ErrorCode::Internal,
                "the refresh proxy answered without `expire_at`",
            )
        })?;
        Ok(Refreshed {
            expire_at,
            info: r.get("info").cloned().filter(|v| !v.is_null()),
        })
    }

    async fn publish(
        &self,
        ctx: &RpcContext,
        channel: &str,
        data: Value,
    ) -> Result<Option<Value>, EngineError> {
        let b = self
            .publish
            .as_ref()
            .ok_or_else(|| not_configured("publish"))?;
        let mut body = who(ctx);
        body.insert("channel".into(), json!(channel));
        body.insert("data".into(), data);
        let mut result = b
            .call(&Value::Object(body), ErrorCode::PermissionDenied)
            .await?;
        Ok(result.get_mut("data").map(Value::take))
    }
}

/// Who the connect proxy says a connection is.
#[derive(Debug, Clone)]
pub struct ProxyIdentity {
    /// The identity for the session.
    pub identity: herald_core::Identity,
    /// Channels to subscribe the session to, server-side.
    pub channels: Vec<String>,
}

/// The connect proxy: the backend authenticates connections that bring no token.
pub struct HttpConnectProxy {
    backend: Backend,
    forward: Vec<String>,
}

impl HttpConnectProxy {
    /// A proxy for `cfg.connect_url` (`None` when unset).
    pub fn new(cfg: &ChannelProxyConfig) -> Option<HttpConnectProxy> {
        Some(HttpConnectProxy {
            backend: Backend {
                url: cfg.connect_url.clone()?,
                timeout: cfg.timeout,
                retries: cfg.retries,
                max_response: 1 << 20,
            },
            forward: cfg.header_names(),
        })
    }

    /// Ask the backend who this handshake is. `Err` codes: `unauthorized` (refused),
    /// `unavailable`/`timeout` (backend problems), `internal` (bad answer).
    pub async fn connect(
        &self,
        client_ip: std::net::IpAddr,
        headers: &axum::http::HeaderMap,
    ) -> Result<ProxyIdentity, EngineError> {
        let fwd = forwarded_headers(headers, &self.forward);
        let body = json!({"client_ip": client_ip.to_string(), "headers": fwd});
        let r = self.backend.call(&body, ErrorCode::Unauthorized).await?;
        let bad = || {
            EngineError::new(
                ErrorCode::Internal,
                "the connect proxy answered without `user`",
            )
        };
        let user = r["user"].as_str().ok_or_else(bad)?.to_owned();
        let now = herald_core::publication::now_ms() / 1000;
        let claims = herald_core::Claims {
            sub: user.clone(),
            // Without `expire_at` the connection does not expire (a year is "forever" here).
            exp: r["expire_at"].as_u64().unwrap_or(now + 365 * 24 * 3600),
            iat: Some(now),
            info: r.get("info").cloned().filter(|v| !v.is_null()),
            proxied: true,
            ..Default::default()
        };
        let channels = r["channels"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|c| c.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        Ok(ProxyIdentity {
            identity: herald_core::Identity {
                user_id: user.into(),
                claims: Some(Box::new(claims)),
            },
            channels,
        })
    }
}
