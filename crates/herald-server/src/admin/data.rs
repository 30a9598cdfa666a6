//! The admin API under `/admin/api/` (behind [`super::auth::guard`]). Every action runs through
//! the server API's own [`crate::api::call`], so validation and limits are the same.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use herald_proto::ErrorCode;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::api::{ApiError, ApiMethod, call};
use crate::state::{AppState, json_error};

/// Most channels one `channels` answer lists.
pub const MAX_CHANNELS: usize = 1000;
/// Most sessions one `connections` answer lists.
pub const MAX_SESSIONS: usize = 100;
/// How long a live session has to say what it is (transport, age, address) in a `connections`
/// answer; one that does not answer in time is listed without them.
pub const DESCRIBE_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(500);
/// History entries the channel page shows.
pub const CHANNEL_HISTORY: usize = 20;

fn answer(r: Result<Value, ApiError>) -> Response {
    match r {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

fn bad(message: &str) -> Response {
    json_error(StatusCode::BAD_REQUEST, ErrorCode::BadRequest, message)
}

fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(t)| t)
        .map_err(|e| ApiError::bad(format!("invalid query: {}", e.body_text())))
}

/// `GET /admin/api/overview`: the server API's `info` plus this node's metrics.
pub async fn overview(State(app): State<Arc<AppState>>) -> Response {
    let info = match call(&app, ApiMethod::Info, json!({})).await {
        Ok(v) => v,
        Err(e) => return e.into_response(),
    };
    let stats = app.metrics.as_ref().map(|h| {
        metrics::gauge!("herald_channels").set(app.node.hub().channels() as f64);
        h.run_upkeep();
        super::stats::parse(&crate::writer::exposition(h))
    });
    Json(json!({
        "time_ms": herald_core::publication::now_ms(),
        "info": info,
        "stats": stats,
    }))
    .into_response()
}

/// `?prefix=&limit=`
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelsQuery {
    #[serde(default)]
    prefix: String,
    #[serde(default)]
    limit: Option<usize>,
}

/// `GET /admin/api/channels`: channels whose names start with `prefix`, by name, with
/// subscriber counts (the server API's `channels`).
pub async fn channels(
    State(app): State<Arc<AppState>>,
    q: Result<Query<ChannelsQuery>, QueryRejection>,
) -> Response {
    let q = match query(q) {
        Ok(q) => q,
        Err(e) => return e.into_response(),
    };
    let limit = q.limit.unwrap_or(100);
    if limit == 0 || limit > MAX_CHANNELS {
        return bad(&format!("limit must be 1 to {MAX_CHANNELS}"));
    }
    let all = match call(&app, ApiMethod::Channels, json!({})).await {
        Ok(v) => v,
        Err(e) => return e.into_response(),
    };
    let mut found: Vec<&Value> = all["channels"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| {
            c["channel"]
                .as_str()
                .is_some_and(|n| n.starts_with(&q.prefix))
        })
        .collect();
    found.sort_by(|a, b| a["channel"].as_str().cmp(&b["channel"].as_str()));
    let total = found.len();
    found.truncate(limit);
    Json(json!({"channels": found, "total": total})).into_response()
}

/// `?channel=`
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelQuery {
    channel: String,
}

fn part(r: Result<Value, ApiError>) -> Value {
    r.unwrap_or_else(|e| json!({"error": e.json()}))
}

/// `GET /admin/api/channel`: presence, presence stats and the newest history entries of one
/// channel; a part the namespace does not keep carries `{"error": ...}` instead.
pub async fn channel(
    State(app): State<Arc<AppState>>,
    q: Result<Query<ChannelQuery>, QueryRejection>,
) -> Response {
    let q = match query(q) {
        Ok(q) => q,
        Err(e) => return e.into_response(),
    };
    if let Err(e) = app.node.namespace(&q.channel) {
        return ApiError::from(e).into_response();
    }
    let ch = json!({"channel": q.channel});
    let presence = call(&app, ApiMethod::Presence, ch.clone()).await;
    let stats = call(&app, ApiMethod::PresenceStats, ch).await;
    let history = call(
        &app,
        ApiMethod::History,
        json!({"channel": q.channel, "limit": CHANNEL_HISTORY, "reverse": true}),
    )
    .await;
    Json(json!({
        "channel": q.channel,
        "presence": part(presence),
        "presence_stats": part(stats),
        "history": part(history),
    }))
    .into_response()
}

/// `?user=` or `?client_id=`
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectionsQuery {
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    client_id: Option<String>,
}

/// `GET /admin/api/connections`: this node's sessions of a user, or the one with a client id,
/// with their wire format, transport, age, address and the channels they are subscribed to here.
pub async fn connections(
    State(app): State<Arc<AppState>>,
    q: Result<Query<ConnectionsQuery>, QueryRejection>,
) -> Response {
    let q = match query(q) {
        Ok(q) => q,
        Err(e) => return e.into_response(),
    };
    let user = q.user.as_deref().filter(|u| !u.is_empty());
    let client = q.client_id.as_deref().filter(|c| !c.is_empty());
    if user.is_none() && client.is_none() {
        return bad("give `user` or `client_id`");
    }
    let sessions = app
        .node
        .describe_sessions(user, client, MAX_SESSIONS, DESCRIBE_TIMEOUT)
        .await;
    let ids: Vec<&str> = sessions.iter().map(|s| s.client_id.as_str()).collect();
    let channels = app.node.hub().channels_of(&ids, MAX_CHANNELS);
    let sessions: Vec<Value> = sessions
        .iter()
        .zip(channels)
        .map(|(s, ch)| {
            let mut v = json!(s);
            v["channels"] = json!(ch);
            v
        })
        .collect();
    Json(json!({"node": app.node.id(), "sessions": sessions})).into_response()
}

fn body_json(body: Result<Bytes, BytesRejection>) -> Result<Value, ApiError> {
    let b = body.map_err(|e| ApiError::new(e.status(), ErrorCode::TooLarge, e.body_text()))?;
    serde_json::from_slice(&b).map_err(|e| ApiError::bad(format!("body is not JSON: {e}")))
}

async fn action(
    app: &AppState,
    method: ApiMethod,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match body_json(body) {
        Ok(p) => {
            tracing::info!(method = method.as_str(), "admin action");
            answer(call(app, method, p).await)
        }
        Err(e) => e.into_response(),
    }
}

/// `POST /admin/api/disconnect` `{"user"}` or `{"client_id"}`: the server API's `disconnect`.
pub async fn disconnect(
    State(app): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    action(&app, ApiMethod::Disconnect, body).await
}

/// `POST /admin/api/revoke` `{"user"}` or `{"token_id"}` (optional `expires_at`): the server
/// API's `revoke` (tokens refused from now on, live sessions closed with 4503).
pub async fn revoke(
    State(app): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    action(&app, ApiMethod::Revoke, body).await
}

/// `POST /admin/api/publish` `{"channel", "data"}`: the server API's `publish`.
pub async fn publish(
    State(app): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    action(&app, ApiMethod::Publish, body).await
}

/// `?limit=` (and `since=` for events)
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    #[serde(default)]
    since: Option<u64>,
    #[serde(default)]
    limit: Option<usize>,
}

/// `GET /admin/api/dead_letters?limit=`: the server API's `dead_letters`.
pub async fn dead_letters(
    State(app): State<Arc<AppState>>,
    q: Result<Query<PageQuery>, QueryRejection>,
) -> Response {
    let q = match query(q) {
        Ok(q) => q,
        Err(e) => return e.into_response(),
    };
    if q.since.is_some() {
        return bad("dead_letters takes no `since`");
    }
    let p = match q.limit {
        Some(l) => json!({"limit": l}),
        None => json!({}),
    };
    answer(call(&app, ApiMethod::DeadLetters, p).await)
}

/// `GET /admin/api/events?since=&limit=`: the server API's `events`.
pub async fn events(
    State(app): State<Arc<AppState>>,
    q: Result<Query<PageQuery>, QueryRejection>,
) -> Response {
    let q = match query(q) {
        Ok(q) => q,
        Err(e) => return e.into_response(),
    };
    let mut p = json!({});
    if let Some(s) = q.since {
        p["since"] = json!(s);
    }
    if let Some(l) = q.limit {
        p["limit"] = json!(l);
    }
    answer(call(&app, ApiMethod::Events, p).await)
}
