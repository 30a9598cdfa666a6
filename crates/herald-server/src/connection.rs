//! One protocol connection on `/ws`: the read loop (decode, hand to the session) and its writer.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use fastwebsockets::WebSocket;
use herald_core::{Flow, Session};
use herald_proto::{CloseCode, Format};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;

use crate::reader::{Inbound, MessageReader, ReadError};
use crate::state::{AppState, Handshake, Held};
use crate::writer::{ConnState, run_writer};

/// Serve an upgraded `/ws` connection until it closes.
pub async fn serve(
    ws: WebSocket<TokioIo<Upgraded>>,
    format: Format,
    app: Arc<AppState>,
    remote: IpAddr,
    hs: Handshake,
    mut held: Held,
) {
    let (r, mut w) = tokio::io::split(ws.into_inner());
    let mut reader = MessageReader::with_limits(r, app.conn.read_limits());
    let (identity, user_slot, over_user_limit, channels, auth_id) = match hs {
        Handshake::Done(identity, slot, channels) => (*identity, slot, false, channels, None),
        Handshake::FirstMessage => {
            let Some((identity, auth_id)) = Box::pin(crate::preauth::authenticate(
                &mut reader,
                &mut w,
                format,
                &app,
            ))
            .await
            else {
                reader
                    .linger(LINGER, linger_limit(app.conn.max_message_size))
                    .await;
                return;
            };
            let max = app.node.config().limits.max_connections_per_user;
            let slot = match identity.user_id.as_str() {
                "" => None,
                // Boxed: this future would otherwise be part of every connection task.
                user => Some(
                    Box::pin(crate::slots::acquire_user(
                        &app.user_slots,
                        &app.node,
                        user,
                        max,
                    ))
                    .await,
                ),
            };
            let over = matches!(slot, Some(None));
            (identity, slot.flatten(), over, Vec::new(), auth_id)
        }
    };
    let forwarded = held.forwarded.take();
    let _held = (held, user_slot);
    let mut session = Session::new(&app.node, format, identity);
    session.set_forwarded_headers(forwarded);
    session.set_client_ip(remote);
    let started = Instant::now();
    let client = session.client_id().to_owned();
    let over_limit = app
        .connections
        .fetch_add(1, std::sync::atomic::Ordering::AcqRel)
        >= app.server.max_connections;
    metrics::gauge!("herald_connections").increment(1.0);
    metrics::counter!("herald_connections_total").increment(1);
    if over_limit || over_user_limit {
        session.outlet().close(CloseCode::ConnectionLimit);
    } else {
        session.welcome(auth_id.as_ref());
        for channel in channels {
            Box::pin(session.server_command(herald_core::ServerCommand::Subscribe(channel))).await;
        }
    }
    tracing::info!(client = %client, remote = %remote, protocol = format.subprotocol(), "connected");

    let st = ConnState::new();
    let writer = tokio::spawn(run_writer(
        w,
        session.outlet().clone(),
        st.clone(),
        app.writer_settings(true),
        app.shutdown.clone(),
    ));
    let mut control = Vec::new();
    let mut reason = "client gone";
    let mut server_closed = false;
    let clean = loop {
        let res = {
            // One read future lives across timer ticks: reads are not cancel-safe, so a tick must
            // never drop a half-read frame.
            let read = reader.next(&mut control);
            tokio::pin!(read);
            loop {
                let auth_deadline = session.auth_deadline();
                tokio::select! {
                    r = &mut read => break Some(r),
                    _ = st.writer_done.wait() => break None,
                    _ = sleep_until_opt(auth_deadline) => {
                        if let Flow::Close(code) = session.on_auth_timer() {
                            session.outlet().close(code);
                        }
                    }
                    cmd = session.next_server_command() => {
                        Box::pin(session.server_command(cmd)).await;
                    }
                }
            }
        };
        let Some(res) = res else {
            reason = "closed by server";
            server_closed = true;
            break false;
        };
        for c in control.drain(..) {
            session.outlet().push_reply(c);
        }
        st.touch();
        let flow = match res {
            Ok(Inbound::Pong) => Flow::Continue,
            Ok(Inbound::Ping(pong)) => {
                session.outlet().push_pong(pong);
                Flow::Continue
            }
            // Boxed: command futures (recovery, resume) are large, and an idle connection's task
            // should not carry their space while it waits for the next frame.
            Ok(Inbound::Text(b)) if format == Format::Json => {
                Box::pin(dispatch(&mut session, format, &b)).await
            }
            Ok(Inbound::Binary(b)) if format == Format::Msgpack => {
                Box::pin(dispatch(&mut session, format, &b)).await
            }
            Ok(Inbound::Text(_) | Inbound::Binary(_)) => session.wrong_frame_type(),
            Ok(Inbound::Close { clean }) => {
                reason = if clean {
                    "client closed"
                } else {
                    "client closed abnormally"
                };
                break clean;
            }
            Err(ReadError::Protocol(code)) => {
                metrics::counter!("herald_protocol_errors_total", "code" => code.code().to_string()).increment(1);
                reason = "websocket protocol error";
                st.set_final_close(code);
                server_closed = true;
                break true;
            }
            Err(ReadError::Gone) => break false,
        };
        if let Flow::Close(code) = flow {
            session.outlet().close(code);
        }
    };
    st.reader_done.signal();
    let end = writer.await.unwrap_or(crate::writer::WriterEnd {
        code: Some(CloseCode::InternalError),
        abort: true,
    });
    app.connections
        .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    metrics::gauge!("herald_connections").decrement(1.0);
    let code = end.code.map(|c| c.code());
    tracing::info!(
        client = %client,
        remote = %remote,
        user = session.user_id(),
        duration_ms = started.elapsed().as_millis() as u64,
        close_code = code,
        reason,
        "disconnected"
    );
    // Boxed: ending a session is a large future; an idle connection should not carry its space.
    Box::pin(session.disconnected(clean)).await;
    // The server closed while the client may still be sending (the rest of an oversized message):
    // read it off before dropping the socket, so the client sees our close code, not a reset.
    if server_closed && !end.abort {
        reader
            .linger(LINGER, linger_limit(app.conn.max_message_size))
            .await;
    }
}

/// How long a server-initiated close waits for the client to stop sending.
pub const LINGER: std::time::Duration = std::time::Duration::from_secs(2);

/// How many bytes a lingering close reads off at most.
pub fn linger_limit(max_message_size: usize) -> usize {
    (2 * max_message_size).max(1 << 20)
}

async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn dispatch(session: &mut herald_core::Session, format: Format, bytes: &[u8]) -> Flow {
    metrics::counter!("herald_bytes_in_total").increment(bytes.len() as u64);
    match herald_proto::decode(format, bytes) {
        Ok(req) => {
            metrics::counter!("herald_messages_in_total", "type" => req.command.kind())
                .increment(1);
            session.handle(req).await
        }
        Err(e) => session.decode_error(e),
    }
}

/// Serve an upgraded `/echo` connection: every message is sent back unchanged.
pub async fn serve_echo(ws: WebSocket<TokioIo<Upgraded>>, app: Arc<AppState>) {
    use herald_core::outlet::{Outlet, QueueLimits};
    use herald_proto::frame::{self, OpCode};
    let (r, w) = tokio::io::split(ws.into_inner());
    let max = app.conn.max_message_size.max(16 << 20);
    let mut reader = MessageReader::new(r, max);
    let outlet = Outlet::new(
        Format::Json,
        QueueLimits {
            max_messages: 1024,
            max_bytes: 4 * max,
        },
    );
    let st = ConnState::new();
    let writer = tokio::spawn(run_writer(
        w,
        outlet.clone(),
        st.clone(),
        app.writer_settings(false),
        app.shutdown.clone(),
    ));
    let mut control = Vec::new();
    loop {
        let res = tokio::select! {
            r = reader.next(&mut control) => r,
            _ = st.writer_done.wait() => break,
        };
        for c in control.drain(..) {
            outlet.push_reply(c);
        }
        st.touch();
        match res {
            Ok(Inbound::Text(b)) => outlet.push_reply(frame::with_payload(OpCode::Text, &b)),
            Ok(Inbound::Binary(b)) => outlet.push_reply(frame::with_payload(OpCode::Binary, &b)),
            Ok(Inbound::Pong) => {}
            // Every ping answered (Autobahn 2.10 checks it); the queue bound still applies.
            Ok(Inbound::Ping(pong)) => outlet.push_reply(pong),
            Ok(Inbound::Close { .. }) | Err(ReadError::Gone) => break,
            Err(ReadError::Protocol(code)) => {
                st.set_final_close(code);
                break;
            }
        }
    }
    st.reader_done.signal();
    let _ = writer.await;
}
