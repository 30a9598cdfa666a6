//! One protocol connection on `/ws`: one task that reads (decode, hand to the session) and
//! writes (the [`Link`]) the same socket; and the `/echo` loop.

use std::future::Future;
use std::net::{IpAddr, Ipv6Addr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;

use fastwebsockets::WebSocket;
use herald_core::{Flow, ServerCommand, Session};
use herald_proto::{CloseCode, Format};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::time::Sleep;

use self::phases::{Opened, Phases};
use crate::link::{IoEvent, Link};
use crate::metrics::InboundMetrics;
use crate::reader::{Inbound, MessageReader, ReadError};
use crate::slots::Slot;
use crate::state::{AppState, Handshake, Held};
use crate::writer::WriterEnd;
use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};

type Io = TokioIo<Upgraded>;

/// Refuse an upgraded `/ws` connection the node has no room for this instant
/// (`limits.connect_per_second`): the `disconnect` advisory with the retry hint `after` and close
/// 1013, then read off what the client still sends (its first commands), so that it sees the
/// close code rather than a reset. No token is checked and no session made.
pub(crate) async fn serve_busy(
    ws: WebSocket<Io>,
    format: Format,
    app: Arc<AppState>,
    after: std::time::Duration,
    _slot: crate::admit::BusyGuard,
) {
    let mut reader = MessageReader::with_limits(ws.into_inner(), app.read_limits.clone());
    let code = CloseCode::TryAgainLater;
    metrics::counter!("herald_close_codes_total", "code" => code.code().to_string()).increment(1);
    let frames = crate::writer::closing_frames_after(format, code, Some(after.as_millis() as u64));
    if crate::preauth::send(reader.get_mut(), &frames, app.conn.write_timeout).await {
        reader
            .linger(LINGER, linger_limit(app.conn.max_message_size))
            .await;
    }
}

/// A connection past its setup: what its future holds while it lives. Every byte here is a byte
/// per idle connection (the future's box is the largest allocation a connection has; jemalloc
/// rounds it to its size class: 384, 448, 512, …): `-Zprint-type-sizes` shows the layout (see
/// docs/benchmarks.md).
struct Conn<S> {
    /// The server, and this connection's place in `AppState::connections`.
    app: Counted,
    session: Session,
    link: Link<S>,
    format: Format,
    /// The last poll of the session's server commands was `Pending` (its waker is registered).
    cmds_armed: bool,
    /// When this connection began, for the `disconnected` log ([`herald_core::limits::clock_ms`]
    /// split in seconds and milliseconds: 6 bytes in what was padding; a resumed session's own
    /// start is older).
    started_s: u32,
    started_ms: u16,
    /// Armed while the session's token has an expiry (at its deadline).
    auth_timer: Option<Pin<Box<Sleep>>>,
    /// Slots held while the connection lives: the client IP's (nearly every connection), the
    /// user's (boxed: 40 bytes anonymous connections lack).
    _held: (Option<Slot<Ipv6Addr>>, Option<Box<crate::slots::UserSlot>>),
}

/// One count in `AppState::connections` and the `herald_connections` gauge, given back however
/// the task ends (a panic included: a leaked count would refuse everyone with 4002 in the end);
/// and the server state.
struct Counted(Arc<AppState>);

impl std::ops::Deref for Counted {
    type Target = Arc<AppState>;
    fn deref(&self) -> &Arc<AppState> {
        &self.0
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0
            .connections
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        metrics::gauge!("herald_connections").decrement(1.0);
    }
}

/// The task of an accepted `/ws` upgrade: wait for the upgrade, set the connection up, serve
/// it until it closes.
///
/// Two phases, each boxed ([`phases`]): the setup (first-message auth, slots, the session),
/// then the connection, so the task that lives as long as the connection holds only [`Conn`]
/// and the loop's few locals, not the handshake's leftovers, and tokio's task itself is 128
/// bytes. Corked ([`herald_core::outlet::Corked`]): what a burst of the connection's
/// publications queues for idle subscribers is written, a write per subscriber, at the end of
/// each poll, by this task — no wake-up per subscriber.
///
/// Plain TCP connections are served on the stream taken back from hyper (its `Upgraded` boxes
/// the stream behind a rewind buffer: 64 bytes more per connection); TLS connections on
/// `Upgraded`.
#[allow(clippy::too_many_arguments)]
pub fn task(
    upgrade: fastwebsockets::upgrade::UpgradeFut,
    format: Format,
    app: Arc<AppState>,
    remote: IpAddr,
    hs: Handshake,
    held: Held,
    deflate: Option<herald_proto::deflate::Agreed>,
) -> impl Future<Output = ()> + Send {
    let setup = async move {
        let ws = match upgrade.await {
            Ok(ws) => ws,
            Err(e) => {
                tracing::debug!(error = %e, "upgrade failed");
                return Opened::Nothing;
            }
        };
        let setup = Setup {
            format,
            app,
            remote,
            hs,
            held,
            deflate,
        };
        match crate::listener::plain_tcp(ws.into_inner().into_inner()) {
            Ok((tcp, read_buf)) => {
                let stream = crate::tcp::SendStream::new(tcp);
                let conn = open(stream, read_buf, setup).await;
                conn.map_or(Opened::Nothing, |c| Opened::Plain(c.run()))
            }
            Err(up) => {
                tracing::debug!("/ws over TLS (or another stream): served on hyper's Upgraded");
                let conn = open(TokioIo::new(up), Bytes::new(), setup).await;
                conn.map_or(Opened::Nothing, |c| Opened::Other(c.run()))
            }
        }
    };
    herald_core::outlet::Corked::new(Phases::new(setup))
}

/// What the handshake hands a connection's setup.
struct Setup {
    format: Format,
    app: Arc<AppState>,
    remote: IpAddr,
    hs: Handshake,
    held: Held,
    deflate: Option<herald_proto::deflate::Agreed>,
}

/// What a connection's socket must be.
pub trait Socket: AsyncRead + AsyncWrite + Unpin + Send + crate::link::Lend + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + crate::link::Lend + 'static> Socket for T {}

/// Authenticate (first message, when the handshake had no token) and make the session.
/// `read_buf`: what the client sent after its handshake and hyper already read.
async fn open<S: Socket>(io: S, read_buf: Bytes, setup: Setup) -> Option<Conn<S>> {
    let Setup {
        format,
        app,
        remote,
        hs,
        mut held,
        deflate,
    } = setup;
    let mut reader = MessageReader::with_limits(io, app.read_limits.clone())
        .inflating(deflate.is_some())
        .with_buffered(&read_buf);
    drop(read_buf);
    let (identity, user_slot, over_user_limit, channels, auth_id, resume_only) = match hs {
        Handshake::Done(identity, slot, channels, resume_only) => {
            (*identity, slot, false, channels, None, resume_only)
        }
        Handshake::FirstMessage => {
            let Some((identity, auth_id)) =
                crate::preauth::authenticate(&mut reader, format, &app).await
            else {
                reader
                    .linger(LINGER, linger_limit(app.conn.max_message_size))
                    .await;
                return None;
            };
            let slot = crate::admit::user_slot(&app, &identity).await;
            let over = slot.is_err();
            (
                identity,
                slot.ok().flatten(),
                over,
                Vec::new(),
                auth_id,
                None,
            )
        }
    };
    let forwarded = held.forwarded.take();
    let mut session = Session::new(&app.node, format, identity);
    if let Some(t) = &resume_only {
        session.require_resume(t);
    }
    // Shared compressed frames use a 15-bit window: a client that asked for a smaller one gets
    // publications uncompressed (it may still send compressed messages).
    if deflate.is_some_and(|a| a.server_max_window_bits == herald_proto::deflate::MAX_WINDOW_BITS) {
        session.outlet().set_deflate(app.deflate.clone());
    }
    session.set_forwarded_headers(forwarded);
    session.set_client_ip(remote);
    let over_limit = app
        .connections
        .fetch_add(1, std::sync::atomic::Ordering::AcqRel)
        >= app.server.max_connections;
    let app = Counted(app);
    metrics::gauge!("herald_connections").increment(1.0);
    metrics::counter!("herald_connections_total").increment(1);
    let mut link = Link::new(reader, session.outlet().clone(), app.ws_writes.clone());
    if over_limit || over_user_limit {
        session.outlet().close(CloseCode::ConnectionLimit);
    } else {
        session.welcome(auth_id.as_ref());
        for channel in channels {
            link.drive(Box::pin(
                session.server_command(ServerCommand::Subscribe(channel)),
            ))
            .await;
        }
    }
    tracing::info!(client = %session.client_id(), remote = %remote, protocol = format.subprotocol(), "connected");
    let started = herald_core::limits::clock_ms();
    Some(Conn {
        app,
        session,
        link,
        format,
        cmds_armed: false,
        started_s: u32::try_from(started / 1000).unwrap_or(u32::MAX),
        started_ms: (started % 1000) as u16,
        auth_timer: None,
        _held: (held._ip, user_slot.map(Box::new)),
    })
}

/// What the connection's task must await next (everything else is handled as it is polled).
enum Next {
    /// A command message to decode and run.
    Message(Vec<u8>),
    /// A server-side command.
    Command(ServerCommand),
    /// The socket is done reading: finish the write side, then end.
    Finish(Ending),
    /// The write side finished by itself (the server closed).
    Ended(WriterEnd),
    /// The connection is rotated (4005): the session is handed back before the client is told.
    Handover,
}

/// How the connection ends.
struct Ending {
    clean: bool,
    reason: &'static str,
    server_closed: bool,
}

impl<S: Socket> Conn<S> {
    /// The connection's life: inbound messages, server commands and the auth timer, until the
    /// socket closes; then the session is handed back (ended or parked for `resume`).
    ///
    /// A plain `fn` around an `async move` block: an `async fn` would keep its `self` argument
    /// twice in the task (the argument and the body's copy of it). The loop's only state across
    /// an await is the message being dispatched: pings, pongs, wrong frames and the auth timer are
    /// handled inside the poll ([`Conn::poll_next`]).
    #[expect(
        clippy::manual_async_fn,
        reason = "an `async fn` stores `self` twice in the task"
    )]
    fn run(mut self) -> impl Future<Output = ()> + Send {
        async move {
            let (ending, end) = loop {
                let next = std::future::poll_fn(|cx| self.poll_next(cx)).await;
                match next {
                    Next::Finish(ending) => break (ending, None),
                    Next::Ended(end) => {
                        let ending = Ending {
                            clean: false,
                            reason: "closed by server",
                            server_closed: true,
                        };
                        break (ending, Some(end));
                    }
                    Next::Handover => {
                        let ending = Ending {
                            clean: false,
                            reason: "connection rotated",
                            server_closed: true,
                        };
                        break (ending, None);
                    }
                    // Boxed, the message or command moved in: command futures (recovery,
                    // resume) are large, and an idle connection's task should carry neither
                    // their space nor the message's.
                    next => Box::pin(self.handle(next)).await,
                }
            };
            Box::pin(self.close(ending, end)).await;
        }
    }

    /// Run a command message or a server-side command while the socket keeps being written.
    async fn handle(&mut self, next: Next) {
        let flow = match next {
            Next::Message(b) => {
                let format = self.format;
                self.link
                    .drive(Box::pin(dispatch(&mut self.session, format, &b)))
                    .await
            }
            Next::Command(cmd) => {
                self.link
                    .drive(Box::pin(self.session.server_command(cmd)))
                    .await;
                Flow::Continue
            }
            Next::Finish(_) | Next::Ended(_) | Next::Handover => Flow::Continue,
        };
        if let Flow::Close(code) = flow {
            self.session.outlet().close(code);
        }
    }

    /// Poll the socket, the server commands and the auth timer until something needs an await.
    fn poll_next(&mut self, cx: &mut std::task::Context<'_>) -> Poll<Next> {
        let auth_timer = &mut self.auth_timer;
        let session = &mut self.session;
        loop {
            let mut control = Vec::new();
            if let Poll::Ready(e) = self.link.poll_io(cx, &mut control) {
                let res = match e {
                    IoEvent::Ended(end) => return Poll::Ready(Next::Ended(end)),
                    IoEvent::Handover => return Poll::Ready(Next::Handover),
                    IoEvent::Inbound(res) => res,
                };
                for c in control {
                    session.outlet().push_reply(c);
                }
                let (clean, reason, code) = match res {
                    Ok(Inbound::Pong) => continue,
                    Ok(Inbound::Ping(pong)) => {
                        session.outlet().push_pong(pong);
                        continue;
                    }
                    // A command can change the session's server-command channel (`resume`):
                    // poll it again afterwards.
                    Ok(Inbound::Text(b)) if self.format == Format::Json => {
                        self.cmds_armed = false;
                        return Poll::Ready(Next::Message(b));
                    }
                    Ok(Inbound::Binary(b)) if self.format == Format::Msgpack => {
                        self.cmds_armed = false;
                        return Poll::Ready(Next::Message(b));
                    }
                    Ok(Inbound::Text(_) | Inbound::Binary(_)) => {
                        if let Flow::Close(code) = session.wrong_frame_type() {
                            session.outlet().close(code);
                        }
                        continue;
                    }
                    Ok(Inbound::Close { clean: true }) => (true, "client closed", None),
                    Ok(Inbound::Close { clean: false }) => {
                        (false, "client closed abnormally", None)
                    }
                    Err(ReadError::Protocol(code)) => {
                        metrics::counter!("herald_protocol_errors_total", "code" => code.code().to_string()).increment(1);
                        (true, "websocket protocol error", Some(code))
                    }
                    Err(ReadError::Gone) => (false, "client gone", None),
                };
                self.link.reader_finished(code);
                return Poll::Ready(Next::Finish(Ending {
                    clean,
                    reason,
                    server_closed: code.is_some(),
                }));
            }
            if !self.cmds_armed || session.server_command_waiting() {
                match session.poll_server_command(cx) {
                    // Answered here, where the transport is known (the session does not keep it).
                    Poll::Ready(ServerCommand::Describe(reply)) => {
                        self.cmds_armed = false;
                        reply.answer(session.details(Some("websocket")));
                        continue;
                    }
                    Poll::Ready(cmd) => {
                        self.cmds_armed = false;
                        return Poll::Ready(Next::Command(cmd));
                    }
                    Poll::Pending => self.cmds_armed = true,
                }
            }
            // Only a session whose token expires has an auth timer.
            let Some(at) = session.auth_deadline() else {
                *auth_timer = None;
                return Poll::Pending;
            };
            if auth_timer.as_ref().is_some_and(|t| t.deadline() != at) {
                *auth_timer = None;
            }
            let timer = auth_timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            if let Flow::Close(code) = session.on_auth_timer() {
                session.outlet().close(code);
            }
        }
    }

    /// After the socket's end: log, hand the session back, and read off what a client still
    /// sends after a server-initiated close.
    async fn close(self, ending: Ending, end: Option<WriterEnd>) {
        let Conn {
            app,
            session,
            mut link,
            _held,
            started_s,
            started_ms,
            ..
        } = self;
        let linger = linger_limit(app.conn.max_message_size);
        let started_ms = u64::from(started_s) * 1000 + u64::from(started_ms);
        let Ending {
            clean,
            reason,
            server_closed,
        } = ending;
        // A rotation's closing frames tell the client to come back at once and `resume`:
        // everything the client could find in the way goes first — the connection's count, its
        // slots, and the session, parked — and they are written after (written before, a quick
        // client's resume could miss the session). Any other end is written first.
        let rotating = link.handing_over();
        let end = match end {
            Some(end) => end,
            None if rotating => WriterEnd::close(Some(link.handover_code())),
            None => link.finish().await,
        };
        drop(app);
        log_end(&session, started_ms, end, reason);
        // The slots go now, before the session is handed back and the linger.
        drop(_held);
        session.disconnected(clean).await;
        let end = if rotating {
            link.handed_over();
            link.finish().await
        } else {
            end
        };
        // The server closed while the client may still be sending (the rest of an oversized
        // message): read it off before dropping the socket, so the client sees our close code,
        // not a reset.
        if server_closed && !end.abort {
            link.into_reader().linger(LINGER, linger).await;
        }
    }
}

/// The `disconnected` log line.
fn log_end(session: &Session, started_ms: u64, end: WriterEnd, reason: &'static str) {
    tracing::info!(
        client = %session.client_id(),
        remote = session.client_ip().map(tracing::field::display),
        user = session.user_id(),
        duration_ms = herald_core::limits::clock_ms().saturating_sub(started_ms),
        close_code = end.code.map(|c| c.code()),
        reason,
        "disconnected"
    );
}

/// How long a server-initiated close waits for the client to stop sending.
pub const LINGER: std::time::Duration = std::time::Duration::from_secs(2);

/// How many bytes a lingering close reads off at most.
pub fn linger_limit(max_message_size: usize) -> usize {
    (2 * max_message_size).max(1 << 20)
}

pub(crate) async fn dispatch(
    session: &mut herald_core::Session,
    format: Format,
    bytes: &[u8],
) -> Flow {
    let m = InboundMetrics::get();
    m.bytes_in.increment(bytes.len() as u64);
    match herald_proto::decode(format, bytes) {
        Ok(req) => {
            m.by_kind[req.command.index()].increment(1);
            session.handle(req).await
        }
        Err(e) => session.decode_error(e),
    }
}

/// Serve an upgraded `/echo` connection: every message is sent back unchanged.
/// With permessage-deflate every non-empty message goes back compressed, with the window the
/// client allowed.
pub async fn serve_echo(
    ws: WebSocket<TokioIo<Upgraded>>,
    app: Arc<AppState>,
    deflate: Option<herald_proto::deflate::Agreed>,
) {
    use herald_core::outlet::{Outlet, QueueLimits};
    use herald_proto::frame::{self, OpCode};
    let max = app.conn.max_message_size.max(16 << 20);
    let reader = MessageReader::new(ws.into_inner(), max).inflating(deflate.is_some());
    let echo = |opcode: OpCode, b: &[u8]| match deflate {
        Some(a) if !b.is_empty() => frame::deflated(opcode, b, a.server_max_window_bits),
        _ => frame::with_payload(opcode, b),
    };
    let outlet = Outlet::new(
        Format::Json,
        QueueLimits {
            max_messages: 1024,
            max_bytes: 4 * max,
        },
    );
    let mut link = Link::new(reader, outlet.clone(), app.echo_writes.clone());
    let mut control = Vec::new();
    loop {
        let res = match link.next(&mut control).await {
            IoEvent::Inbound(res) => res,
            IoEvent::Ended(_) => return,
            // `/echo` is never rotated; were it, nothing is handed back.
            IoEvent::Handover => {
                link.handed_over();
                continue;
            }
        };
        for c in control.drain(..) {
            outlet.push_reply(c);
        }
        match res {
            Ok(Inbound::Text(b)) => outlet.push_reply(echo(OpCode::Text, &b)),
            Ok(Inbound::Binary(b)) => outlet.push_reply(echo(OpCode::Binary, &b)),
            Ok(Inbound::Pong) => {}
            // Every ping answered (Autobahn 2.10 checks it); the queue bound still applies.
            Ok(Inbound::Ping(pong)) => outlet.push_reply(pong),
            Ok(Inbound::Close { .. }) | Err(ReadError::Gone) => {
                link.reader_finished(None);
                break;
            }
            Err(ReadError::Protocol(code)) => {
                link.reader_finished(Some(code));
                break;
            }
        }
    }
    link.finish().await;
}

mod phases;
#[cfg(test)]
mod tests;
