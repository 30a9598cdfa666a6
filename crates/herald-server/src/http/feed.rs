//! The one-way SSE feed for simple consumers (`EventSource`, `curl -N`): `GET /http/subscribe`
//! with one or more `channel` parameters streams their publications as SSE events whose `id`
//! holds the position in every channel, so the browser's automatic reconnect (which sends it back
//! as `Last-Event-ID`) recovers exactly what was missed, or is told of the gap
//! (docs/protocol.md §10.6).

use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{Request, StatusCode};
use axum::response::Response;
use bytes::{BufMut, Bytes, BytesMut};
use herald_core::outlet::Out;
use herald_proto::{CloseCode, ErrorCode, Format, StreamPosition};
use tokio::time::Sleep;

use super::downlink::Registered;
use super::framing::{self, Style};
use super::{Opening, Refused, bad_request, refuse, start, streamed};
use crate::http_sessions::{Entry, Transport};
use crate::metrics::WriterMetrics;
use crate::state::AppState;
use crate::writer::closing_frames;

/// Most channels one feed may follow.
pub const MAX_FEED_CHANNELS: usize = 16;

/// Where the feed stands in one channel.
struct Position {
    channel: String,
    /// `(epoch, offset)` of the last publication sent, or of the stream when subscribed.
    at: Option<(Arc<str>, u64)>,
}

/// Parse `Last-Event-ID`: one `epoch:offset` (or `-`) per channel, in the URL's order.
fn positions(id: &str, n: usize) -> Option<Vec<Option<StreamPosition>>> {
    let parts: Vec<&str> = id.split(',').collect();
    if parts.len() != n {
        return None;
    }
    parts
        .into_iter()
        .map(|p| match p.trim() {
            "-" => Some(None),
            p => {
                let (epoch, offset) = p.rsplit_once(':')?;
                let offset = offset.parse().ok()?;
                (!epoch.is_empty()).then(|| {
                    Some(StreamPosition {
                        offset,
                        epoch: epoch.to_owned(),
                    })
                })
            }
        })
        .collect()
}

fn status_of(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::PermissionDenied => StatusCode::FORBIDDEN,
        ErrorCode::Unauthorized | ErrorCode::TokenInvalid | ErrorCode::TokenExpired => {
            StatusCode::UNAUTHORIZED
        }
        _ => StatusCode::BAD_REQUEST,
    }
}

/// `GET /http/subscribe?channel=…[&channel=…]`.
pub async fn subscribe(
    State(app): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request<Body>,
) -> Response {
    let (parts, _) = req.into_parts();
    let Ok(Query(query)) = Query::<Vec<(String, String)>>::try_from_uri(&parts.uri) else {
        return bad_request("malformed query string");
    };
    let channels: Vec<String> = query
        .into_iter()
        .filter(|(k, _)| k == "channel")
        .map(|(_, v)| v)
        .collect();
    if channels.is_empty() || channels.len() > MAX_FEED_CHANNELS {
        return bad_request("name 1 to 16 channels: ?channel=a&channel=b");
    }
    if channels.len() > app.node.config().session.max_channels {
        return bad_request("more channels than session.max_channels");
    }
    if (1..channels.len()).any(|i| channels[..i].contains(&channels[i])) {
        return bad_request("a channel is named twice");
    }
    let last = match parts.headers.get("last-event-id").map(|v| v.to_str()) {
        None => vec![None; channels.len()],
        Some(Ok(v)) => match positions(v, channels.len()) {
            Some(p) => p,
            None => return bad_request("Last-Event-ID does not match these channels"),
        },
        Some(Err(_)) => return bad_request("Last-Event-ID is not text"),
    };
    let cmds = channels
        .iter()
        .zip(&last)
        .enumerate()
        .map(|(i, (channel, recover))| {
            let mut payload = serde_json::json!({ "channel": channel });
            if let Some(p) = recover {
                payload["recover"] = serde_json::json!({"offset": p.offset, "epoch": p.epoch});
            }
            serde_json::json!({"type": "subscribe", "id": i.to_string(), "payload": payload})
                .to_string()
                .into_bytes()
        })
        .collect();
    let opening = Opening {
        peer,
        parts: &parts,
        transport: Transport::Feed,
        format: Format::Json,
        cmds,
    };
    let check = |s: &herald_core::Session| -> Result<(), Refused> {
        for c in &channels {
            s.may_subscribe(c)
                .map_err(|e| refuse(status_of(e.code), e.code, &e.message))?;
        }
        Ok(())
    };
    let entry = match start(&app, opening, check).await {
        Ok(e) => e,
        Err(r) => return *r,
    };
    let positions = channels
        .into_iter()
        .zip(last)
        .map(|(channel, p)| Position {
            channel,
            at: p.map(|p| (Arc::from(p.epoch), p.offset)),
        })
        .collect();
    let feed = Feed {
        generation: entry.attach(),
        entry: entry.clone(),
        positions,
        keepalive: Box::pin(tokio::time::sleep(app.conn.ping_interval)),
        interval: app.conn.ping_interval,
        jitter: app.server.shutdown_reconnect_jitter,
        items: Vec::new(),
        done: false,
        registered: Registered::default(),
    };
    streamed(
        &parts,
        Body::from_stream(feed),
        Style::Sse.content_type(),
        &entry.id,
    )
}

/// The feed's streamed body.
struct Feed {
    entry: Arc<Entry>,
    generation: u64,
    positions: Vec<Position>,
    keepalive: Pin<Box<Sleep>>,
    interval: Duration,
    jitter: Duration,
    items: Vec<Out>,
    done: bool,
    registered: Registered,
}

impl Feed {
    /// Write the current `id`: every channel's position.
    fn write_id(&self, buf: &mut BytesMut) {
        for (i, p) in self.positions.iter().enumerate() {
            if i > 0 {
                buf.put_u8(b',');
            }
            match &p.at {
                Some((epoch, offset)) => {
                    buf.put_slice(epoch.as_bytes());
                    let _ = write!(buf, ":{offset}");
                }
                None => buf.put_u8(b'-'),
            }
        }
    }

    fn event(&self, buf: &mut BytesMut, name: Option<&str>, id: bool, data: &[u8]) {
        if let Some(name) = name {
            buf.put_slice(b"event: ");
            buf.put_slice(name.as_bytes());
            buf.put_u8(b'\n');
        }
        if id {
            buf.put_slice(b"id: ");
            self.write_id(buf);
            buf.put_u8(b'\n');
        }
        Style::Sse.push(buf, data);
    }

    /// A reply or error from the session: subscribe outcomes become `subscribed` (and `gap`)
    /// events, errors `error` events; the rest (`connected`, pongs) is not for the feed. Returns
    /// false when the feed must end (an error that retrying will not fix).
    fn reply(&mut self, buf: &mut BytesMut, frame: &Bytes) -> bool {
        let msg = framing::payload(frame);
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(&msg) else {
            return true;
        };
        let payload = v["payload"].to_string();
        match v["type"].as_str() {
            Some("reply") => {
                let p = &v["payload"];
                let (Some(channel), Some(epoch), Some(offset)) = (
                    p["channel"].as_str(),
                    p["epoch"].as_str(),
                    p["offset"].as_u64(),
                ) else {
                    return true;
                };
                let recovered = p["recovered"].as_bool();
                if let Some(pos) = self.positions.iter_mut().find(|x| x.channel == channel)
                    && recovered != Some(true)
                {
                    // Not recovering (or not all of it): the feed continues from here.
                    pos.at = Some((Arc::from(epoch), offset));
                }
                if recovered == Some(false) {
                    let gap = serde_json::json!({"channel": channel}).to_string();
                    self.event(buf, Some("gap"), false, gap.as_bytes());
                }
                self.event(buf, Some("subscribed"), true, payload.as_bytes());
                true
            }
            Some("error") => {
                self.event(buf, Some("error"), false, payload.as_bytes());
                v["payload"]["retryable"].as_bool().unwrap_or(false)
            }
            _ => true,
        }
    }

    fn close(&mut self, buf: &mut BytesMut, code: CloseCode) {
        if let Some(f) = closing_frames(Format::Json, code, Some(self.jitter)).first() {
            let msg = framing::payload(f);
            self.event(buf, Some("disconnect"), false, &msg);
        }
        metrics::counter!("herald_close_codes_total", "code" => code.code().to_string())
            .increment(1);
        self.done = true;
    }

    fn chunk(&mut self, buf: BytesMut) -> Poll<Option<Result<Bytes, Infallible>>> {
        let m = WriterMetrics::get();
        m.bytes_out.increment(buf.len() as u64);
        m.writes.increment(1);
        let next = tokio::time::Instant::now() + self.interval;
        self.keepalive.as_mut().reset(next);
        Poll::Ready(Some(Ok(buf.freeze())))
    }
}

impl futures_util::Stream for Feed {
    type Item = Result<Bytes, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        let mut buf = BytesMut::with_capacity(512);
        this.entry.register(cx.waker());
        if let Err(code) = this.entry.attached(this.generation) {
            match code.filter(|c| *c != CloseCode::Normal) {
                Some(code) => {
                    this.close(&mut buf, code);
                    return this.chunk(buf);
                }
                None => return Poll::Ready(None),
            }
        }
        let outlet = this.entry.outlet();
        this.registered.register(&outlet, cx);
        let mut items = std::mem::take(&mut this.items);
        let (close, _) = outlet.drain_items(256, &mut items);
        let m = WriterMetrics::get();
        for item in items.drain(..) {
            match item {
                // The feed's events are always whole messages (plain data, not deltas).
                Out::Pub(p) | Out::Whole(p) | Out::Delta(p, _) => {
                    let Some(pos) = this.positions.iter_mut().find(|x| *x.channel == *p.channel)
                    else {
                        continue;
                    };
                    match &mut pos.at {
                        Some((epoch, offset)) if Arc::ptr_eq(epoch, &p.epoch) => *offset = p.offset,
                        at => *at = Some((p.epoch.clone(), p.offset)),
                    }
                    m.publish_to_send.record(p.received.elapsed().as_secs_f64());
                    m.frames_out.increment(1);
                    let msg = framing::payload(&p.frame(Format::Json));
                    this.event(&mut buf, None, true, &msg);
                }
                Out::Reply(b) => {
                    if !this.reply(&mut buf, &b) {
                        this.done = true;
                        break;
                    }
                }
                // join/leave: not part of the feed.
                Out::Event(_) => {}
            }
        }
        this.items = items;
        if let Some(code) = close
            && !this.done
        {
            this.close(&mut buf, code);
            this.entry.finish();
        }
        if !buf.is_empty() {
            return this.chunk(buf);
        }
        if this.done {
            return Poll::Ready(None);
        }
        if this.keepalive.as_mut().poll(cx).is_ready() {
            let next = tokio::time::Instant::now() + this.interval;
            this.keepalive.as_mut().reset(next);
            return Poll::Ready(Some(Ok(Style::Sse.keepalive())));
        }
        Poll::Pending
    }
}

impl Drop for Feed {
    fn drop(&mut self) {
        self.registered.forget(&self.entry);
        self.entry.detach(self.generation);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_event_ids_name_one_position_per_channel() {
        let p = positions("ab12:7,-", 2).expect("two");
        assert_eq!(
            p[0].as_ref().map(|p| (p.epoch.as_str(), p.offset)),
            Some(("ab12", 7))
        );
        assert!(p[1].is_none());
        assert!(positions("ab12:7", 2).is_none());
        assert!(positions(":7", 1).is_none());
        assert!(positions("e:x", 1).is_none());
    }
}
