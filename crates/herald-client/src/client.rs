//! The application's handle: typed requests over the driver task.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

use crate::acks::AckBoard;
use crate::config::ClientConfig;
use crate::driver::Driver;
use crate::error::ClientError;
use crate::event::Event;
use crate::state::Cmd;

/// A Herald client. Cheap to clone; every clone talks to the same connection. The connection
/// closes when `close` is called or every clone is dropped.
#[derive(Clone)]
pub struct Client {
    cmds: mpsc::Sender<Cmd>,
    request_timeout: Duration,
    acks: Arc<AckBoard>,
}

/// The ordered stream of [`Event`]s. Read it: when its buffer is full the client stops reading
/// the socket (so nothing is dropped), and the server's slow-consumer policy takes over.
///
/// With [`AckMode::Auto`](crate::AckMode) (the default), asking for the next event acknowledges
/// the previous message of an at-least-once subscription: the application is done with it.
pub struct Events {
    rx: mpsc::Receiver<Event>,
    acks: Option<Arc<AckBoard>>,
    /// The last message handed out (auto mode), acknowledged at the next call.
    last: Option<(String, u64)>,
}

impl Events {
    /// The next event; `None` after the client reached `State::Closed`.
    pub async fn next(&mut self) -> Option<Event> {
        std::future::poll_fn(|cx| self.poll(cx)).await
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        if let (Some(board), Some((channel, offset))) = (&self.acks, self.last.take()) {
            board.put(&channel, offset);
        }
        let e = self.rx.poll_recv(cx);
        if let (Some(_), Poll::Ready(Some(Event::Message(m)))) = (&self.acks, &e) {
            self.last = Some((m.channel.clone(), m.offset));
        }
        e
    }
}

impl futures_util::Stream for Events {
    type Item = Event;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.poll(cx)
    }
}

/// Options of a `history` request.
#[derive(Debug, Clone, Default)]
pub struct HistoryQuery {
    /// After (forward) or before (reverse) this `(offset, epoch)`.
    pub since: Option<(u64, String)>,
    /// Page size (1..=100; default 100).
    pub limit: Option<usize>,
    /// Newest first.
    pub reverse: bool,
}

impl Client {
    /// Start a client: it connects (and keeps reconnecting) in a background task.
    pub fn connect(cfg: ClientConfig) -> (Client, Events) {
        let (tx, rx) = mpsc::channel(1024);
        let (etx, erx) = mpsc::channel(cfg.event_buffer.max(16));
        let request_timeout = cfg.request_timeout;
        let acks = Arc::new(AckBoard::default());
        let auto = cfg.ack == crate::config::AckMode::Auto;
        tokio::spawn(Driver::new(cfg, rx, etx, acks.clone()).run());
        (
            Client {
                cmds: tx,
                request_timeout,
                acks: acks.clone(),
            },
            Events {
                rx: erx,
                acks: auto.then_some(acks),
                last: None,
            },
        )
    }

    async fn call(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<Value, ClientError>>) -> Cmd,
    ) -> Result<Value, ClientError> {
        let (tx, rx) = oneshot::channel();
        self.cmds
            .send(make(tx))
            .await
            .map_err(|_| ClientError::Closed("client closed".into()))?;
        rx.await
            .map_err(|_| ClientError::Closed("client closed".into()))?
    }

    /// Subscribe; the client resubscribes (recovering from the last offset) after reconnects.
    /// Resolves with the server's reply once confirmed (waiting through reconnects). A retryable
    /// refusal (`unavailable`, a timeout, …) is retried after a backoff delay while the call keeps
    /// waiting (each failed attempt is an [`Event::SubscribeFailed`] with `retry_in`); a final one
    /// (`permission_denied`, …) ends the subscription and is returned. Wrap the call in a timeout
    /// to bound the wait.
    pub async fn subscribe(&self, channel: &str) -> Result<Value, ClientError> {
        let channel = channel.to_owned();
        self.call(|tx| Cmd::Subscribe { channel, tx }).await
    }

    /// Acknowledge that the application processed `channel` up to `offset` (cumulative) on an
    /// at-least-once subscription ([`AckMode::Manual`](crate::AckMode); in automatic mode
    /// [`Events`] does it). Never blocks; acks are batched (`docs/protocol.md` §4 `ack`).
    /// Ignored for other subscriptions.
    pub fn ack(&self, channel: &str, offset: u64) {
        self.acks.put(channel, offset);
    }

    /// Unsubscribe.
    pub async fn unsubscribe(&self, channel: &str) -> Result<Value, ClientError> {
        let channel = channel.to_owned();
        self.call(|tx| Cmd::Unsubscribe { channel, tx }).await
    }

    /// Publish with a fresh idempotency key; see [`Client::publish_with_key`].
    pub async fn publish(&self, channel: &str, data: Value) -> Result<Value, ClientError> {
        let key = uuid::Uuid::new_v4().simple().to_string();
        self.publish_with_key(channel, data, &key).await
    }

    /// Publish and wait for the ack (`{offset, epoch, duplicate?}`). While disconnected the publish
    /// waits in the bounded offline queue; if the connection drops before the ack it is sent again
    /// with the same idempotency key, so it is applied once.
    pub async fn publish_with_key(
        &self,
        channel: &str,
        data: Value,
        key: &str,
    ) -> Result<Value, ClientError> {
        let (channel, key) = (channel.to_owned(), key.to_owned());
        self.call(|tx| Cmd::Publish {
            channel,
            data,
            key,
            tx,
        })
        .await
    }

    /// Read history.
    pub async fn history(&self, channel: &str, q: HistoryQuery) -> Result<Value, ClientError> {
        let mut p = json!({"channel": channel, "reverse": q.reverse});
        if let Some((offset, epoch)) = q.since {
            p["since"] = json!({"offset": offset, "epoch": epoch});
        }
        if let Some(l) = q.limit {
            p["limit"] = json!(l);
        }
        self.request("history", p).await
    }

    /// Clients subscribed to a channel.
    pub async fn presence(&self, channel: &str) -> Result<Value, ClientError> {
        self.request("presence", json!({"channel": channel})).await
    }

    /// Client and user counts of a channel.
    pub async fn presence_stats(&self, channel: &str) -> Result<Value, ClientError> {
        self.request("presence_stats", json!({"channel": channel}))
            .await
    }

    /// Call the application backend (`rpc`); resolves with the result `data`.
    pub async fn rpc(&self, method: &str, data: Value) -> Result<Value, ClientError> {
        let mut r = self
            .request("rpc", json!({"method": method, "data": data}))
            .await?;
        Ok(r["data"].take())
    }

    /// Send any command and wait for its reply payload (fails at once while disconnected).
    pub async fn request(&self, kind: &str, payload: Value) -> Result<Value, ClientError> {
        self.request_with_timeout(kind, payload, self.request_timeout)
            .await
    }

    /// [`Client::request`] with its own timeout.
    pub async fn request_with_timeout(
        &self,
        kind: &str,
        payload: Value,
        timeout: Duration,
    ) -> Result<Value, ClientError> {
        let kind = kind.to_owned();
        self.call(|tx| Cmd::Request {
            kind,
            payload,
            timeout,
            tx,
        })
        .await
    }

    /// Close cleanly (1000): the server ends the session; pending requests fail with `Closed`.
    pub async fn close(&self) {
        let (tx, rx) = oneshot::channel();
        if self.cmds.send(Cmd::Close { tx }).await.is_ok() {
            let _ = rx.await;
        }
    }
}
