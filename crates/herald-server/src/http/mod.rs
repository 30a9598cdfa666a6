//! The HTTP transports (docs/protocol.md §10) for clients that cannot open a WebSocket: the same
//! protocol messages and session semantics, carried down by SSE (`/http/sse`), a streamed
//! response (`/http/stream`) or long-polls (`/http/poll`), and up by `POST /http/send`.
//!
//! - [`driver`]: the task that owns one session.
//! - [`downlink`]: streamed bodies and long-poll answers.
//! - [`feed`]: the one-way SSE feed (`/http/subscribe`) with `Last-Event-ID` recovery.
//! - [`framing`]: messages in HTTP bodies, both directions.
//! - [`relay`]: requests for sessions held by another node, over the control bus.

pub mod downlink;
pub mod driver;
pub mod feed;
pub mod framing;
pub mod relay;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderValue, Method, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use herald_core::limits::Allowance;
use herald_core::{Identity, Session};
use herald_proto::{Command, ErrorCode, Format};

use crate::admit::{Admitted, admit, rejected, too_many, user_limit, user_slot};
use crate::handshake::{self, Offer};
use crate::http_sessions::{Entry, Transport, parse_session_id};
use crate::state::{AppState, Handshake, json_error};
use downlink::Downlink;
use framing::Style;

/// The session a request is for.
pub const SESSION_HEADER: &str = "herald-session";
/// A long-poll's acknowledgement: the `Herald-Seq` of the last batch received.
pub const ACK_HEADER: &str = "herald-ack";
/// A long-poll answer's batch number.
pub const SEQ_HEADER: &str = "herald-seq";
/// The wire format: `herald.v1.json` (default) or `herald.v1.msgpack`.
pub const PROTOCOL_HEADER: &str = "herald-protocol";

/// The `/http` routes (with CORS), when `http.enabled`.
pub fn routes(router: Router<Arc<AppState>>, app: &Arc<AppState>) -> Router<Arc<AppState>> {
    use axum::routing::{get, post};
    let preflight = || async { StatusCode::NO_CONTENT };
    let http = Router::new()
        .route("/http/sse", get(sse).post(sse).options(preflight))
        .route("/http/stream", post(stream).options(preflight))
        .route("/http/poll", post(poll).options(preflight))
        .route("/http/send", post(send).options(preflight))
        .route("/http/close", post(close).options(preflight))
        .route("/http/subscribe", get(feed::subscribe).options(preflight))
        .layer(axum::middleware::from_fn_with_state(app.clone(), cors));
    router.merge(http)
}

/// CORS for every `/http` route: a disallowed `Origin` gets 403; an allowed one gets its
/// `Access-Control-Allow-Origin` (with credentials) and preflights are answered.
async fn cors(
    State(app): State<Arc<AppState>>,
    req: Request<Body>,
    next: axum::middleware::Next,
) -> Response {
    if !handshake::origin_allowed(
        req.headers(),
        &app.server.allowed_origins,
        app.server.allow_missing_origin,
    ) {
        rejected("origin");
        return json_error(
            StatusCode::FORBIDDEN,
            ErrorCode::PermissionDenied,
            "origin not allowed",
        );
    }
    let origin = req.headers().get(header::ORIGIN).cloned();
    let preflight = req.method() == Method::OPTIONS;
    let mut resp = next.run(req).await;
    if preflight {
        let h = resp.headers_mut();
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST"),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static(
                "authorization, content-type, herald-session, herald-ack, herald-protocol, herald-resume, last-event-id",
            ),
        );
        h.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("600"),
        );
    }
    let h = resp.headers_mut();
    h.append(header::VARY, HeaderValue::from_static("origin"));
    if let Some(origin) = origin {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        h.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
        h.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static("herald-session, herald-seq, retry-after"),
        );
    }
    resp
}

/// An answer given instead of serving the request (boxed: a `Response` is large).
type Refused = Box<Response>;

fn refuse(status: StatusCode, code: ErrorCode, message: &str) -> Refused {
    Box::new(json_error(status, code, message))
}

fn bad_request(message: &str) -> Response {
    json_error(StatusCode::BAD_REQUEST, ErrorCode::BadRequest, message)
}

/// The format named by `Herald-Protocol`.
fn format(headers: &HeaderMap) -> Result<Format, Refused> {
    match headers.get(PROTOCOL_HEADER).map(|v| v.to_str()) {
        None => Ok(Format::Json),
        Some(Ok(v)) => Format::from_subprotocol(v.trim()).ok_or_else(|| {
            Box::new(bad_request(
                "unsupported Herald-Protocol: use herald.v1.json or herald.v1.msgpack",
            ))
        }),
        Some(Err(_)) => Err(Box::new(bad_request("Herald-Protocol is not text"))),
    }
}

/// The request body, at most `connection.max_message_size` bytes (413 `too_large` beyond).
async fn body(app: &AppState, body: Body) -> Result<Bytes, Refused> {
    axum::body::to_bytes(body, app.conn.max_message_size)
        .await
        .map_err(|_| {
            refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                ErrorCode::TooLarge,
                "the request body is larger than connection.max_message_size",
            )
        })
}

fn commands(format: Format, body: &[u8]) -> Result<Vec<Vec<u8>>, Refused> {
    framing::commands(format, body).map_err(|e| match e {
        framing::BodyError::Malformed(what) => refuse(
            StatusCode::BAD_REQUEST,
            ErrorCode::Malformed,
            &format!("the body is not a list of commands: {what}"),
        ),
        framing::BodyError::TooMany => refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::TooLarge,
            "too many commands in one request (at most 64)",
        ),
    })
}

/// Headers every transport answer carries.
fn transport_headers(resp: &mut Response, content_type: &'static str, session: &str) {
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, no-store"),
    );
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if let Ok(v) = HeaderValue::from_str(session) {
        h.insert(SESSION_HEADER, v);
    }
}

async fn sse(
    State(app): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request<Body>,
) -> Response {
    open(app, peer, req, Transport::Sse).await
}

async fn stream(
    State(app): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request<Body>,
) -> Response {
    open(app, peer, req, Transport::Stream).await
}

async fn poll(
    State(app): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request<Body>,
) -> Response {
    if req.headers().contains_key(SESSION_HEADER) {
        poll_again(app, req).await
    } else {
        open(app, peer, req, Transport::Poll).await
    }
}

/// Authenticate by the first command of the body (`auth`), when the request carried no token.
fn first_message_auth(
    app: &AppState,
    format: Format,
    cmds: &mut Vec<Vec<u8>>,
) -> Result<(Identity, Option<herald_proto::Id>), Refused> {
    let unauthorized = |code: ErrorCode, message: &str| {
        rejected("auth");
        refuse(StatusCode::UNAUTHORIZED, code, message)
    };
    if cmds.is_empty() {
        return Err(unauthorized(
            ErrorCode::Unauthorized,
            "authenticate: a token in a header or cookie, or an `auth` command first in the body",
        ));
    }
    let first = cmds.remove(0);
    let req = match herald_proto::decode(format, &first) {
        Ok(r) => r,
        Err(e) => return Err(refuse(StatusCode::BAD_REQUEST, e.code, &e.message)),
    };
    match req.command {
        Command::Auth(a) => match app.node.authenticate(a.token.as_deref()) {
            Ok(identity) => Ok((identity, req.id)),
            Err(e) => Err(unauthorized(e.code, &e.message)),
        },
        other => Err(unauthorized(
            ErrorCode::Unauthorized,
            &format!("`{}` before `auth`: authenticate first", other.kind()),
        )),
    }
}

/// Open a session: admission (as for a WebSocket), authentication, the session and its driver,
/// then the first answer (the stream, or the first long-poll batch).
async fn open(
    app: Arc<AppState>,
    peer: SocketAddr,
    req: Request<Body>,
    transport: Transport,
) -> Response {
    let (parts, req_body) = req.into_parts();
    let format = match format(&parts.headers) {
        Ok(f) => f,
        Err(r) => return *r,
    };
    if transport == Transport::Sse && format == Format::Msgpack {
        return bad_request("SSE carries JSON only: use /http/stream for MessagePack");
    }
    let raw = match body(&app, req_body).await {
        Ok(b) => b,
        Err(r) => return *r,
    };
    let cmds = match commands(format, &raw) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    let opening = Opening {
        peer,
        parts: &parts,
        transport,
        format,
        cmds,
    };
    let entry = match start(&app, opening, |_| Ok(())).await {
        Ok(e) => e,
        Err(r) => return *r,
    };
    match transport {
        Transport::Sse | Transport::Stream => {
            let style = if transport == Transport::Sse {
                Style::Sse
            } else {
                Style::stream(format)
            };
            let head = (transport == Transport::Sse).then(|| {
                let event = serde_json::json!({ "session": entry.id });
                Bytes::from(format!("event: session\ndata: {event}\n\n"))
            });
            let jitter = app.server.shutdown_reconnect_jitter;
            let down = Downlink::new(entry.clone(), style, head, app.conn.ping_interval, jitter);
            streamed(
                &parts,
                Body::from_stream(down),
                style.content_type(),
                &entry.id,
            )
        }
        Transport::Poll => poll_answer(&app, &entry, 0).await,
        Transport::Feed => bad_request("not an opening transport"),
    }
}

/// A streamed answer that holds its connection for the session's life.
fn streamed(
    parts: &axum::http::request::Parts,
    body: Body,
    content_type: &'static str,
    session: &str,
) -> Response {
    // It counts as a connection now (like an upgraded WebSocket), not as a pending HTTP
    // connection; nothing follows it on its connection.
    if let Some(slot) = parts.extensions.get::<crate::listener::HttpSlot>() {
        slot.release();
    }
    let mut resp = body.into_response();
    transport_headers(&mut resp, content_type, session);
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

/// What an opening request brings.
pub(crate) struct Opening<'a> {
    pub peer: SocketAddr,
    pub parts: &'a axum::http::request::Parts,
    pub transport: Transport,
    pub format: Format,
    /// Commands for the new session (the opening body).
    pub cmds: Vec<Vec<u8>>,
}

/// Admit, authenticate and start a session: its entry, with its driver running. `check` may
/// refuse the session before anything runs (the one-way feed's permission checks).
pub(crate) async fn start(
    app: &Arc<AppState>,
    o: Opening<'_>,
    check: impl FnOnce(&Session) -> Result<(), Refused>,
) -> Result<Arc<Entry>, Refused> {
    let Opening {
        peer,
        parts,
        transport,
        format,
        mut cmds,
    } = o;
    let Admitted { ip, hs, mut held } =
        admit(app, peer, &parts.headers, &parts.uri, &Offer::default())
            .await
            .map_err(|r| Box::new(r.into_response()))?;
    let (identity, user_slot, channels, auth_id, resume_only) = match hs {
        Handshake::Done(identity, slot, channels, resume_only) => {
            (*identity, slot, channels, None, resume_only)
        }
        Handshake::FirstMessage => {
            let (identity, auth_id) = first_message_auth(app, format, &mut cmds)?;
            let Ok(slot) = user_slot(app, &identity).await else {
                return Err(Box::new(user_limit()));
            };
            (identity, slot, Vec::new(), auth_id, None)
        }
    };
    let mut session = Session::new(&app.node, format, identity);
    if let Some(t) = &resume_only {
        session.require_resume(t);
    }
    check(&session)?;
    if app
        .connections
        .fetch_add(1, std::sync::atomic::Ordering::AcqRel)
        >= app.server.max_connections
    {
        app.connections
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        rejected("connections");
        return Err(refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Unavailable,
            "connection limit reached",
        ));
    }
    metrics::gauge!("herald_connections").increment(1.0);
    metrics::counter!("herald_connections_total").increment(1);
    metrics::gauge!("herald_http_sessions", "transport" => transport.name()).increment(1.0);
    session.set_forwarded_headers(held.forwarded.take());
    session.set_client_ip(ip);
    session.welcome(auth_id.as_ref());
    let h = &app.http;
    let (entry, rx) = Entry::new(
        uuid::Uuid::new_v4().as_u128(),
        app.node.id(),
        transport,
        format,
        session.outlet().clone(),
        Allowance::new(
            h.requests_per_second,
            std::time::Duration::from_secs(1),
            h.requests_burst,
        ),
    );
    for c in cmds {
        // The queue holds MAX_COMMANDS_PER_REQUEST: a new session's first body always fits.
        let _ = entry.cmds.try_send(c);
    }
    tracing::info!(client = %session.client_id(), remote = %ip, transport = transport.name(), protocol = format.subprotocol(), "connected");
    app.http_sessions.insert(entry.clone());
    app.tracker.spawn(driver::run(driver::Driven {
        app: app.clone(),
        entry: entry.clone(),
        session,
        rx,
        channels,
        held: (held, user_slot),
    }));
    Ok(entry)
}

async fn poll_answer(app: &AppState, entry: &Arc<Entry>, ack: u64) -> Response {
    let a = downlink::poll(
        entry,
        ack,
        app.http.poll_timeout,
        app.server.shutdown_reconnect_jitter,
    )
    .await;
    if a.gone {
        return session_gone();
    }
    let content_type = match entry.format {
        Format::Json => "application/json",
        Format::Msgpack => framing::MSGPACK_STREAM,
    };
    let mut resp = Body::from(a.body).into_response();
    transport_headers(&mut resp, content_type, &entry.id);
    if let Some(seq) = a.seq {
        resp.headers_mut()
            .insert(SEQ_HEADER, HeaderValue::from(seq));
    }
    resp
}

fn session_gone() -> Response {
    json_error(
        StatusCode::NOT_FOUND,
        ErrorCode::SessionNotFound,
        "no such HTTP session (it ended, or its client was lost): open a new one, with `resume`",
    )
}

/// The session named by `Herald-Session`: its key and node.
fn session_key(headers: &HeaderMap) -> Result<(u128, String), Refused> {
    let Some(id) = headers.get(SESSION_HEADER).and_then(|v| v.to_str().ok()) else {
        return Err(Box::new(bad_request("missing Herald-Session")));
    };
    let Some((key, node)) = parse_session_id(id.trim()) else {
        return Err(Box::new(bad_request("malformed Herald-Session")));
    };
    Ok((key, node.to_owned()))
}

/// The session `key` held here, charged one request.
fn lookup(app: &AppState, key: u128) -> Result<Arc<Entry>, Refused> {
    let Some(entry) = app.http_sessions.get(key) else {
        return Err(Box::new(session_gone()));
    };
    if !entry.requests.take() {
        return Err(Box::new(too_many("too many requests for this session")));
    }
    Ok(entry)
}

/// Whether a request for a session of `node` that is not held here goes to that node.
fn elsewhere(app: &AppState, key: u128, node: &str) -> bool {
    node != app.node.id()
        && app.node.control_bus().is_some()
        && app.http_sessions.get(key).is_none()
}

/// How long a relayed command POST waits for the holding node's answer.
const RELAY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

async fn poll_again(app: Arc<AppState>, req: Request<Body>) -> Response {
    let (key, node) = match session_key(req.headers()) {
        Ok(k) => k,
        Err(r) => return *r,
    };
    let ack = match req.headers().get(ACK_HEADER).map(|v| v.to_str()) {
        None => 0,
        Some(Ok(v)) => match v.trim().parse::<u64>() {
            Ok(n) => n,
            Err(_) => return bad_request("Herald-Ack must be a batch number"),
        },
        Some(Err(_)) => return bad_request("Herald-Ack must be a batch number"),
    };
    if elsewhere(&app, key, &node) {
        let wait = app.http.poll_timeout + RELAY_TIMEOUT;
        return relay::forward(&app, &node, key, relay::Request::Poll(ack), wait).await;
    }
    poll_on(&app, key, ack).await
}

/// A long-poll for session `key`, held here.
pub(crate) async fn poll_on(app: &AppState, key: u128, ack: u64) -> Response {
    let entry = match lookup(app, key) {
        Ok(e) => e,
        Err(r) => return *r,
    };
    if entry.transport != Transport::Poll {
        return bad_request("not a long-polling session");
    }
    entry.touch();
    poll_answer(app, &entry, ack).await
}

async fn send(State(app): State<Arc<AppState>>, req: Request<Body>) -> Response {
    let (key, node) = match session_key(req.headers()) {
        Ok(k) => k,
        Err(r) => return *r,
    };
    let raw = match body(&app, req.into_body()).await {
        Ok(b) => b,
        Err(r) => return *r,
    };
    if elsewhere(&app, key, &node) {
        return relay::forward(&app, &node, key, relay::Request::Send(raw), RELAY_TIMEOUT).await;
    }
    send_to(&app, key, raw).await
}

/// Commands for session `key`, held here.
pub(crate) async fn send_to(app: &AppState, key: u128, raw: Bytes) -> Response {
    let entry = match lookup(app, key) {
        Ok(e) => e,
        Err(r) => return *r,
    };
    if entry.ended() {
        return session_gone();
    }
    let cmds = match commands(entry.format, &raw) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    entry.touch();
    if entry.cmds.capacity() < cmds.len() {
        return too_many("the session's command queue is full");
    }
    for c in cmds {
        if entry.cmds.try_send(c).is_err() {
            return too_many("the session's command queue is full");
        }
    }
    StatusCode::NO_CONTENT.into_response()
}

async fn close(State(app): State<Arc<AppState>>, req: Request<Body>) -> Response {
    let (key, node) = match session_key(req.headers()) {
        Ok(k) => k,
        Err(r) => return *r,
    };
    if elsewhere(&app, key, &node) {
        return relay::forward(&app, &node, key, relay::Request::Close, RELAY_TIMEOUT).await;
    }
    close_on(&app, key)
}

/// End session `key`, held here, at its client's request.
pub(crate) fn close_on(app: &AppState, key: u128) -> Response {
    let entry = match lookup(app, key) {
        Ok(e) => e,
        Err(r) => return *r,
    };
    if entry.ended() {
        return session_gone();
    }
    entry.close_by_client();
    StatusCode::NO_CONTENT.into_response()
}
