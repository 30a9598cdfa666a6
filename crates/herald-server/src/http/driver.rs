//! The task that owns one HTTP transport session: it runs the commands POSTed to it, the
//! session's server-side commands and its token timer, and decides when the client is gone —
//! a stream that ended, no poll for `http.session_timeout`, or (streams) no request for
//! `connection.ping_interval + pong_timeout`. A lost client's session is kept for `resume`, like
//! a dropped WebSocket's.

use std::sync::Arc;
use std::time::Instant;

use herald_core::{Flow, ServerCommand, Session};
use herald_proto::CloseCode;
use tokio::sync::mpsc;

use crate::http_sessions::{Entry, Transport};
use crate::state::{AppState, Held};

/// Everything the driver owns.
pub struct Driven {
    /// The server.
    pub app: Arc<AppState>,
    /// The shared side of the session.
    pub entry: Arc<Entry>,
    /// The protocol session.
    pub session: Session,
    /// Commands from the POSTs.
    pub rx: mpsc::Receiver<Vec<u8>>,
    /// Channels to subscribe server-side first (from the connect proxy).
    pub channels: Vec<String>,
    /// Slots held while the session lives.
    pub held: (Held, Option<crate::slots::UserSlot>),
}

enum Event {
    Command(Vec<u8>),
    Server(ServerCommand),
    AuthTimer,
    Shutdown,
    Check,
}

/// Why the loop ended.
enum End {
    /// The server's close went down (the session ends).
    Closed,
    /// The client is gone (the session waits for `resume`).
    Lost(&'static str),
    /// A one-way feed's client is gone (the session ends).
    Gone,
    /// The client ended the session (like a WebSocket close 1000).
    ClientClosed,
}

/// Run the session until it closes or its client is lost.
pub async fn run(d: Driven) {
    let Driven {
        app,
        entry,
        mut session,
        mut rx,
        channels,
        held,
    } = d;
    let started = Instant::now();
    for channel in channels {
        session
            .server_command(ServerCommand::Subscribe(channel))
            .await;
    }
    let liveness = app.conn.ping_interval + app.conn.pong_timeout;
    let session_timeout = app.http.session_timeout;
    let mut stop_by: Option<tokio::time::Instant> = None;
    let end = loop {
        let seen = entry.seen();
        let now = Instant::now();
        if seen.finished {
            break End::Closed;
        }
        if seen.client_closed {
            break End::ClientClosed;
        }
        let deadline = match entry.transport {
            Transport::Poll => match (seen.attached, seen.detached_at) {
                (false, Some(at)) if now >= at + session_timeout => break End::Lost("no poll"),
                (false, Some(at)) => Some(at + session_timeout),
                _ => None,
            },
            Transport::Feed => {
                // Its client comes back with `Last-Event-ID`, not `resume`: it just ends.
                if !seen.attached && seen.detached_at.is_some() {
                    break End::Gone;
                }
                None
            }
            Transport::Sse | Transport::Stream => {
                if !seen.attached && seen.detached_at.is_some() {
                    break End::Lost("stream ended");
                }
                if now >= seen.active_at + liveness {
                    if !seen.attached {
                        break End::Lost("no request within the heartbeat timeout");
                    }
                    // The downlink sends the advisory, ends, and detaches: lost next round.
                    entry.kill(CloseCode::HeartbeatTimeout);
                    None
                } else {
                    Some(seen.active_at + liveness)
                }
            }
        };
        if let Some(at) = stop_by
            && tokio::time::Instant::now() >= at
        {
            break End::Closed;
        }
        let deadline = [deadline.map(tokio::time::Instant::from_std), stop_by]
            .into_iter()
            .flatten()
            .min();
        let auth_at = session.auth_deadline();
        let event = tokio::select! {
            biased;
            _ = app.shutdown.cancelled(), if stop_by.is_none() => Event::Shutdown,
            m = rx.recv() => match m {
                Some(m) => Event::Command(m),
                None => Event::Check,
            },
            c = std::future::poll_fn(|cx| session.poll_server_command(cx)) => Event::Server(c),
            _ = sleep_until(auth_at), if auth_at.is_some() => Event::AuthTimer,
            _ = entry.changed() => Event::Check,
            _ = sleep_until(deadline), if deadline.is_some() => Event::Check,
        };
        let flow = match event {
            Event::Command(bytes) => {
                crate::connection::dispatch(&mut session, entry.format, &bytes).await
            }
            // Answered here, where the transport is known (the session does not keep it).
            Event::Server(ServerCommand::Describe(reply)) => {
                reply.answer(session.details(Some(entry.transport.name())));
                Flow::Continue
            }
            Event::Server(cmd) => {
                session.server_command(cmd).await;
                Flow::Continue
            }
            Event::AuthTimer => session.on_auth_timer(),
            Event::Shutdown => {
                stop_by = Some(tokio::time::Instant::now() + app.server.shutdown_timeout);
                Flow::Close(CloseCode::GoingAway)
            }
            Event::Check => Flow::Continue,
        };
        if let Flow::Close(code) = flow {
            session.outlet().close(code);
        }
    };
    entry.end();
    app.connections
        .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    metrics::gauge!("herald_connections").decrement(1.0);
    metrics::gauge!("herald_http_sessions", "transport" => entry.transport.name()).decrement(1.0);
    let (clean, reason) = match end {
        End::Closed => (false, "closed by server"),
        End::Lost(why) => (false, why),
        End::Gone => (true, "feed closed"),
        End::ClientClosed => (true, "client closed"),
    };
    tracing::info!(
        client = %session.client_id(),
        remote = session.client_ip().map(tracing::field::display),
        user = session.user_id(),
        transport = entry.transport.name(),
        duration_ms = started.elapsed().as_millis() as u64,
        close_code = session.outlet().close_requested().map(|c| c.code()),
        reason,
        "disconnected"
    );
    session.disconnected(clean).await;
    drop(held);
    // A long-poll's last answer may not have arrived: keep it for a poll that asks again.
    if entry.transport == Transport::Poll && !app.shutdown.is_cancelled() {
        tokio::select! {
            _ = tokio::time::sleep(session_timeout) => {}
            _ = app.shutdown.cancelled() => {}
        }
    }
    app.http_sessions.remove(entry.key);
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
