//! The HTTP server API under `/api/v1/` for backends, authenticated with API keys
//! (`Authorization: apikey <key>`, compared in constant time). Errors use the protocol's codes.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use herald_core::EngineError;
use herald_core::broker::HistoryQuery;
use herald_core::cluster::ControlMessage;
use herald_proto::{Data, ErrorCode, Format};
use serde::Deserialize;
use serde_json::{Value, json};
use subtle::ConstantTimeEq;

use crate::state::{AppState, json_error};

/// Largest accepted API request body.
pub const MAX_BODY: usize = 64 * 1024;

/// Whether the request carries one of the configured API keys.
pub fn authorized(headers: &HeaderMap, keys: &[String]) -> bool {
    let Some(given) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().split_once(' '))
        .and_then(|(scheme, k)| scheme.eq_ignore_ascii_case("apikey").then(|| k.trim()))
    else {
        return false;
    };
    // Check every key (no early exit) so timing does not tell which one matched.
    keys.iter().fold(false, |ok, k| {
        ok | bool::from(k.as_bytes().ct_eq(given.as_bytes()))
    })
}

/// The 401 response for a request without a valid API key (`None` = the key is valid).
pub fn key_rejection(app: &AppState, headers: &HeaderMap) -> Option<Response> {
    let keys = &app.node.config().auth.api_keys;
    if keys.is_empty() {
        return Some(json_error(
            StatusCode::UNAUTHORIZED,
            ErrorCode::Unauthorized,
            "the server API is disabled: no auth.api_keys configured",
        ));
    }
    if !authorized(headers, keys) {
        return Some(json_error(
            StatusCode::UNAUTHORIZED,
            ErrorCode::Unauthorized,
            "missing or wrong API key",
        ));
    }
    None
}

/// A failed API call: HTTP status plus the protocol's error code.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: ErrorCode,
    message: String,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    pub(crate) fn bad(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::BadRequest, message)
    }

    pub(crate) fn json(&self) -> Value {
        json!({"code": self.code.as_str(), "message": self.message})
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        let status = match e.code {
            ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::PermissionDenied => StatusCode::FORBIDDEN,
            ErrorCode::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            _ => StatusCode::BAD_REQUEST,
        };
        ApiError::new(status, e.code, e.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        json_error(self.status, self.code, &self.message)
    }
}

fn params<T: serde::de::DeserializeOwned>(v: Value) -> Result<T, ApiError> {
    if !v.is_object() {
        return Err(ApiError::bad("parameters must be a JSON object"));
    }
    serde_json::from_value(v).map_err(|e| ApiError::bad(format!("invalid parameters: {e}")))
}

/// Largest number of channels in one `broadcast` and commands in one `batch`.
pub const MAX_FANOUT: usize = 1000;

/// Largest `batch` response (bytes of JSON results); the commands past it are not executed and
/// get `too_large`. One `history` page (at most 100 publications) always fits.
pub const MAX_BATCH_RESPONSE: usize = 8 << 20;

fn over_budget() -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        ErrorCode::TooLarge,
        format!(
            "not executed: the batch response reached {} MiB; send the rest in another batch",
            MAX_BATCH_RESPONSE >> 20
        ),
    )
}

/// Bytes `v` takes as JSON, without building the text.
fn json_len(v: &Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0 += b.len();
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut c = Count(0);
    let _ = serde_json::to_writer(&mut c, v);
    c.0
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishParams {
    channel: String,
    data: Value,
    #[serde(default)]
    idempotency_key: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BroadcastParams {
    channels: Vec<String>,
    data: Value,
    #[serde(default)]
    idempotency_key: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChannelParams {
    channel: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryParams {
    channel: String,
    #[serde(default)]
    since: Option<herald_proto::StreamPosition>,
    #[serde(default)]
    limit: Option<usize>,
    #[serde(default)]
    reverse: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChannelsParams {
    #[serde(default)]
    pattern: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DisconnectParams {
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    client_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchParams {
    commands: Vec<BatchCommand>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchCommand {
    method: String,
    #[serde(default)]
    params: serde_json::Map<String, Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NoParams {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserChannelParams {
    user: String,
    channel: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsParams {
    #[serde(default)]
    since: Option<u64>,
    #[serde(default)]
    limit: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitParams {
    #[serde(default)]
    limit: Option<usize>,
}

/// `POST /api/v1/revoke` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeRequest {
    /// Revoke every token of this user issued up to now.
    #[serde(default)]
    pub user: Option<String>,
    /// Revoke the token with this `jti`.
    #[serde(default)]
    pub token_id: Option<String>,
    /// Keep the revocation until this Unix time in seconds (default: 24 hours from now; set it
    /// to the longest lifetime of the tokens you issue).
    #[serde(default)]
    pub expires_at: Option<u64>,
}

fn check_key_len(key: &Option<String>) -> Result<(), ApiError> {
    match key {
        Some(k) if k.is_empty() || k.len() > herald_proto::envelope::MAX_IDEMPOTENCY_KEY_LEN => {
            Err(ApiError::bad("idempotency_key must be 1-128 bytes"))
        }
        _ => Ok(()),
    }
}

async fn publish(
    app: &AppState,
    channel: &str,
    data: &Value,
    key: Option<String>,
) -> Result<Value, ApiError> {
    check_key_len(&key)?;
    let data = Data::json(&data.to_string()).map_err(|e| ApiError::bad(e.to_string()))?;
    let out = app.node.publish(channel, data, None, key).await?;
    let mut v = json!({"offset": out.offset, "epoch": &*out.epoch});
    if out.duplicate {
        v["duplicate"] = json!(true);
    }
    Ok(v)
}

/// Run one API method.
/// The server API's methods (`POST /api/v1/{method}`, docs/openapi.json).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiMethod {
    /// `publish`
    Publish,
    /// `broadcast`
    Broadcast,
    /// `presence`
    Presence,
    /// `presence_stats`
    PresenceStats,
    /// `history`
    History,
    /// `history_remove`
    HistoryRemove,
    /// `channels`
    Channels,
    /// `info`
    Info,
    /// `disconnect`
    Disconnect,
    /// `revoke`
    Revoke,
    /// `subscribe` (server-side)
    Subscribe,
    /// `unsubscribe` (server-side)
    Unsubscribe,
    /// `events`
    Events,
    /// `dead_letters`
    DeadLetters,
    /// `batch`
    Batch,
}

impl ApiMethod {
    /// Every method.
    pub const ALL: [ApiMethod; 15] = [
        ApiMethod::Publish,
        ApiMethod::Broadcast,
        ApiMethod::Presence,
        ApiMethod::PresenceStats,
        ApiMethod::History,
        ApiMethod::HistoryRemove,
        ApiMethod::Channels,
        ApiMethod::Info,
        ApiMethod::Disconnect,
        ApiMethod::Revoke,
        ApiMethod::Subscribe,
        ApiMethod::Unsubscribe,
        ApiMethod::Events,
        ApiMethod::DeadLetters,
        ApiMethod::Batch,
    ];

    /// The name in the URL (also the `method` label of `herald_api_requests_total`).
    pub fn as_str(self) -> &'static str {
        match self {
            ApiMethod::Publish => "publish",
            ApiMethod::Broadcast => "broadcast",
            ApiMethod::Presence => "presence",
            ApiMethod::PresenceStats => "presence_stats",
            ApiMethod::History => "history",
            ApiMethod::HistoryRemove => "history_remove",
            ApiMethod::Channels => "channels",
            ApiMethod::Info => "info",
            ApiMethod::Disconnect => "disconnect",
            ApiMethod::Revoke => "revoke",
            ApiMethod::Subscribe => "subscribe",
            ApiMethod::Unsubscribe => "unsubscribe",
            ApiMethod::Events => "events",
            ApiMethod::DeadLetters => "dead_letters",
            ApiMethod::Batch => "batch",
        }
    }

    /// The method a URL names; an unknown one is `unknown_type` (404).
    pub fn parse(name: &str) -> Result<ApiMethod, ApiError> {
        ApiMethod::ALL
            .into_iter()
            .find(|m| m.as_str() == name)
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::NOT_FOUND,
                    ErrorCode::UnknownType,
                    format!(
                        "unknown API method `{}`",
                        name.chars().take(32).collect::<String>()
                    ),
                )
            })
    }
}

/// Run one API method.
pub async fn call(app: &AppState, method: ApiMethod, p: Value) -> Result<Value, ApiError> {
    let node = &app.node;
    match method {
        ApiMethod::Publish => {
            let p: PublishParams = params(p)?;
            publish(app, &p.channel, &p.data, p.idempotency_key).await
        }
        ApiMethod::Broadcast => {
            let p: BroadcastParams = params(p)?;
            if p.channels.is_empty() || p.channels.len() > MAX_FANOUT {
                return Err(ApiError::bad(format!("channels: 1 to {MAX_FANOUT}")));
            }
            check_key_len(&p.idempotency_key)?;
            // All or nothing on bad input: every channel name must be valid.
            for ch in &p.channels {
                node.namespace(ch)?;
            }
            let mut results = Vec::with_capacity(p.channels.len());
            for ch in &p.channels {
                results.push(
                    match publish(app, ch, &p.data, p.idempotency_key.clone()).await {
                        Ok(mut r) => {
                            r["channel"] = json!(ch);
                            r
                        }
                        Err(e) => json!({"channel": ch, "error": e.json()}),
                    },
                );
            }
            Ok(json!({"results": results}))
        }
        ApiMethod::Presence => {
            let p: ChannelParams = params(p)?;
            Ok(json!({"clients": node.presence(&p.channel).await?}))
        }
        ApiMethod::PresenceStats => {
            let p: ChannelParams = params(p)?;
            Ok(serde_json::to_value(node.presence_stats(&p.channel).await?)
                .map_err(|e| ApiError::bad(e.to_string()))?)
        }
        ApiMethod::History => {
            let p: HistoryParams = params(p)?;
            let limit = p.limit.unwrap_or(herald_proto::envelope::MAX_HISTORY_LIMIT);
            if limit > herald_proto::envelope::MAX_HISTORY_LIMIT {
                return Err(ApiError::bad("limit must be at most 100"));
            }
            if !node.namespace(&p.channel)?.history_enabled() {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    ErrorCode::HistoryDisabled,
                    "history is disabled in this namespace",
                ));
            }
            let q = HistoryQuery {
                since: p.since,
                limit,
                reverse: p.reverse,
            };
            let page = node.history(&p.channel, q).await?;
            let pubs: Vec<Value> = page
                .publications
                .iter()
                .filter_map(|x| serde_json::to_value(x.out(Format::Json)).ok())
                .collect();
            Ok(json!({"offset": page.top, "epoch": &*page.epoch, "publications": pubs}))
        }
        ApiMethod::HistoryRemove => {
            let p: ChannelParams = params(p)?;
            node.remove_history(&p.channel).await?;
            Ok(json!({}))
        }
        ApiMethod::Channels => {
            let p: ChannelsParams = params(p)?;
            let list = node.hub().channel_counts(|c| {
                p.pattern
                    .as_deref()
                    .is_none_or(|pat| herald_core::auth::patterns::matches(pat, c))
            });
            let channels: Vec<Value> = list
                .into_iter()
                .map(|(c, n)| json!({"channel": c, "subscribers": n}))
                .collect();
            Ok(json!({"channels": channels}))
        }
        ApiMethod::Info => {
            params::<NoParams>(p)?;
            let mut info = json!({
            "node": node.id(),
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_ms": app.started.elapsed().as_millis() as u64,
            "connections": app.connections.load(std::sync::atomic::Ordering::Relaxed),
            "channels": node.hub().channels(),
            "waiting_sessions": node.waiting_sessions(),
            });
            if let Some(registry) = node.node_registry() {
                let nodes = registry
                    .nodes()
                    .await
                    .map_err(herald_core::EngineError::from)?;
                info["cluster"] = json!(nodes);
            }
            Ok(info)
        }
        ApiMethod::Disconnect => {
            let p: DisconnectParams = params(p)?;
            let msg = match (p.user, p.client_id) {
                (Some(user), None) if !user.is_empty() => ControlMessage::DisconnectUser { user },
                (None, Some(client)) if !client.is_empty() => {
                    ControlMessage::DisconnectClient { client }
                }
                _ => return Err(ApiError::bad("give exactly one of `user` or `client_id`")),
            };
            Ok(json!({"disconnected": node.cluster(msg).await?}))
        }
        ApiMethod::Revoke => {
            let req: RevokeRequest = params(p)?;
            let now = herald_core::publication::now_ms() / 1000;
            let expires_at = req.expires_at.unwrap_or(now + 24 * 3600);
            let msg = match (req.user, req.token_id) {
                (Some(user), None) if !user.is_empty() => {
                    ControlMessage::RevokeUser { user, expires_at }
                }
                (None, Some(jti)) if !jti.is_empty() => {
                    ControlMessage::RevokeToken { jti, expires_at }
                }
                _ => return Err(ApiError::bad("give exactly one of `user` or `token_id`")),
            };
            Ok(json!({"closed": node.cluster(msg).await?}))
        }
        ApiMethod::Subscribe | ApiMethod::Unsubscribe => {
            let p: UserChannelParams = params(p)?;
            if p.user.is_empty() {
                return Err(ApiError::bad("user must not be empty"));
            }
            node.namespace(&p.channel)?;
            let (user, channel) = (p.user, p.channel);
            let msg = if method == ApiMethod::Subscribe {
                ControlMessage::Subscribe { user, channel }
            } else {
                ControlMessage::Unsubscribe { user, channel }
            };
            Ok(json!({"sessions": node.cluster(msg).await?}))
        }
        ApiMethod::Events => {
            let p: EventsParams = params(p)?;
            let limit = p.limit.unwrap_or(100);
            if limit > 1000 {
                return Err(ApiError::bad("limit must be at most 1000"));
            }
            let (events, oldest) = node.events().since(p.since.unwrap_or(0), limit);
            Ok(json!({
                "events": events,
                "last_seq": node.events().last_seq(),
                "oldest_seq": oldest,
            }))
        }
        ApiMethod::DeadLetters => {
            let p: LimitParams = params(p)?;
            let limit = p.limit.unwrap_or(100);
            if limit > 1000 {
                return Err(ApiError::bad("limit must be at most 1000"));
            }
            Ok(json!({"dead_letters": node.dead_letters().list(limit)}))
        }
        ApiMethod::Batch => {
            let p: BatchParams = params(p)?;
            if p.commands.len() > MAX_FANOUT {
                return Err(ApiError::bad(format!("at most {MAX_FANOUT} commands")));
            }
            let mut results = Vec::with_capacity(p.commands.len());
            let mut size = 0usize;
            for c in p.commands {
                if size > MAX_BATCH_RESPONSE {
                    results.push(json!({"error": over_budget().json()}));
                    continue;
                }
                let r = match ApiMethod::parse(&c.method) {
                    Ok(ApiMethod::Batch) => Err(ApiError::bad("batches do not nest")),
                    Ok(m) => Box::pin(call(app, m, Value::Object(c.params))).await,
                    Err(e) => Err(e),
                };
                let mut r = match r {
                    Ok(v) => json!({"result": v}),
                    Err(e) => json!({"error": e.json()}),
                };
                size += json_len(&r);
                if size > MAX_BATCH_RESPONSE {
                    r = json!({"error": over_budget().json()});
                }
                results.push(r);
            }
            Ok(json!({"results": results}))
        }
    }
}

/// `POST /api/v1/{method}`: JSON parameters in, JSON result out.
pub async fn handler(
    State(app): State<Arc<AppState>>,
    Path(method): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    handle(&app, &method, &headers, body).await
}

/// `POST /api/v1/dead_letters` (the path also has a `GET`).
pub async fn dead_letters_post(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    handle(&app, ApiMethod::DeadLetters.as_str(), &headers, body).await
}

async fn handle(
    app: &AppState,
    method: &str,
    headers: &HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    if let Some(r) = key_rejection(app, headers) {
        return r;
    }
    let body = match body {
        Ok(b) => b,
        Err(e) => {
            return json_error(e.status(), ErrorCode::TooLarge, &e.body_text());
        }
    };
    let p: Value = if body.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => return ApiError::bad(format!("body is not JSON: {e}")).into_response(),
        }
    };
    let method = ApiMethod::parse(method);
    let label = method.as_ref().map_or("other", |m| m.as_str());
    metrics::counter!("herald_api_requests_total", "method" => label).increment(1);
    let result = match method {
        Ok(m) => call(app, m, p).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

/// `GET /api/v1/dead_letters`: the newest 100 dead letters.
pub async fn dead_letters_get(State(app): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Some(r) = key_rejection(&app, &headers) {
        return r;
    }
    match call(&app, ApiMethod::DeadLetters, json!({})).await {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}
