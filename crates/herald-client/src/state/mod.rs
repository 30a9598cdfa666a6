//! The client's protocol state, without I/O: subscriptions and their positions, requests in
//! flight, the offline publish queue, resume. The driver (`driver.rs`) owns the socket and the
//! clock; it feeds this state what happened — a frame arrived, the application asked for
//! something, the connection opened or ended, time passed — and carries out what the state asks
//! for ([`Output`]: send a frame, report an event, fetch a token, drop the connection). Every
//! decision lives here, so it is unit-tested without a socket (`tests.rs`) and checked against
//! the scenario suite both clients share (`clients/scenarios/`, `scenarios.rs`).
//!
//! Replies to the application travel on the oneshot senders inside the commands; sending on one
//! never blocks.

mod acks;
mod commands;
mod delta;
mod inbound;
#[cfg(test)]
mod scenarios;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::Duration;

use herald_proto::envelope::{Connected, Disconnect};
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::backoff::Backoff;
use crate::error::ClientError;
use crate::event::Event;

pub(crate) type Reply = oneshot::Sender<Result<Value, ClientError>>;

/// A command from a `Client` handle.
pub(crate) enum Cmd {
    Request {
        kind: String,
        payload: Value,
        timeout: Duration,
        tx: Reply,
    },
    Publish {
        channel: String,
        data: Value,
        key: String,
        tx: Reply,
    },
    Subscribe {
        channel: String,
        tx: Reply,
    },
    Unsubscribe {
        channel: String,
        tx: Reply,
    },
    Close {
        tx: oneshot::Sender<()>,
    },
}

/// What the state asks the driver to do, in order.
#[derive(Debug)]
pub(crate) enum Output {
    /// Send this text frame.
    Send(String),
    /// Report this to the application.
    Event(Event),
    /// The server asked for a fresh token: call the token callback, then [`ClientState::refresh`].
    FetchToken,
    /// End this connection as lost (e.g. the resume reply never came) and reconnect.
    Drop(String),
}

/// How a connection ended, as far as reconnecting goes.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Disconnected {
    pub code: u16,
    pub reason: String,
    pub reconnect: bool,
    /// The server's hint: wait at least this long.
    pub after: Option<Duration>,
}

/// The settings the state needs.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub request_timeout: Duration,
    pub offline_queue: usize,
    pub offline_deadline: Duration,
    /// Delays of subscribe retries (after a retryable error).
    pub backoff: Backoff,
    /// The token comes from a callback (so a `refresh` push can be answered).
    pub refreshable: bool,
}

struct Sub {
    /// Last offset received (or the stream top at subscribe time).
    offset: u64,
    epoch: String,
    /// Confirmed by the server at least once (so `offset`/`epoch` are a recovery position).
    positioned: bool,
    /// A gap was just reported for this channel whose size is unknown (resume with
    /// `recovered: false`): the offset skip the next message shows is that same gap.
    gap_reported: bool,
    /// The namespace drops messages for slow readers (`drop_oldest`/`latest`): an offset skip
    /// inside the epoch is a drop, not a loss.
    lossy: bool,
    /// `subscribe` calls waiting for the server's confirmation.
    waiters: Vec<Reply>,
    /// A retry after a retryable error is due then (while connected).
    retry_at: Option<Instant>,
    /// Failed attempts in a row.
    failures: u32,
    /// The server confirmed it on the current connection (reply, push, or a resume that kept it).
    confirmed: bool,
    /// Which subscription this is: a reply for an earlier one of the same channel (subscribed,
    /// left, subscribed again) is not this one's.
    generation: u64,
    /// At-least-once: what the application processed and what was acknowledged.
    acks: Option<acks::Acks>,
    /// A delta subscription (`"delta":"fossil"`): data comes as JSON text, whole or as a delta.
    delta: bool,
    /// Delta subscription: the last data text applied, what the next delta applies to.
    base: Option<delta::Base>,
    /// Delta subscription: a delta did not apply and the channel is being subscribed again;
    /// its messages are ignored until the reply.
    resyncing: bool,
}

impl Sub {
    fn new(waiters: Vec<Reply>, generation: u64) -> Sub {
        Sub {
            confirmed: false,
            generation,
            offset: 0,
            epoch: String::new(),
            positioned: false,
            gap_reported: false,
            lossy: false,
            waiters,
            retry_at: None,
            failures: 0,
            acks: None,
            delta: false,
            base: None,
            resyncing: false,
        }
    }
}

struct QueuedPublish {
    channel: String,
    data: Value,
    key: String,
    deadline: Instant,
    tx: Reply,
}

enum Pending {
    Plain(Reply),
    Publish(QueuedPublish),
    /// A subscribe of this channel's subscription `generation`.
    Subscribe(String, u64),
    /// An unsubscribe whose reply has not come: if the connection dies first, the channel is
    /// left on a resumed session too.
    Unsubscribe(String, Reply),
    Refresh,
    Resume,
    /// A request of the client's own whose reply does not matter (a resync's `unsubscribe`).
    Internal,
}

enum Link {
    Down,
    /// `resume` sent (request id), waiting for its reply before anything else.
    Resuming(u64, Box<Connected>),
    Up,
}

pub(crate) struct ClientState {
    cfg: Settings,
    subs: BTreeMap<String, Sub>,
    /// Channels the application left while disconnected: a resumed session still has them.
    left_while_away: BTreeSet<String>,
    pending: HashMap<u64, (Pending, Instant)>,
    offline: VecDeque<QueuedPublish>,
    resume_token: Option<String>,
    link: Link,
    advisory: Option<Disconnect>,
    out: VecDeque<Output>,
    next_id: u64,
}

impl ClientState {
    pub(crate) fn new(cfg: Settings) -> ClientState {
        ClientState {
            cfg,
            subs: BTreeMap::new(),
            left_while_away: BTreeSet::new(),
            pending: HashMap::new(),
            offline: VecDeque::new(),
            resume_token: None,
            link: Link::Down,
            advisory: None,
            out: VecDeque::new(),
            next_id: 1,
        }
    }

    /// The next thing to do, if any.
    pub(crate) fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// The token the next connection will `resume` with, if any.
    pub(crate) fn resume_token(&self) -> Option<&str> {
        self.resume_token.as_deref()
    }

    /// Whether application commands are taken now (not while a resume is in flight: the
    /// resume must be the first command on the new connection).
    pub(crate) fn accepts_commands(&self) -> bool {
        !matches!(self.link, Link::Resuming(..))
    }

    fn emit(&mut self, e: Event) {
        self.out.push_back(Output::Event(e));
    }

    fn id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    fn send(&mut self, kind: &str, id: Option<u64>, payload: Value) {
        let mut frame = json!({"type": kind, "payload": payload});
        if let Some(id) = id {
            frame["id"] = json!(id);
        }
        self.out.push_back(Output::Send(frame.to_string()));
    }

    /// The server's `connected` arrived on a new connection: resume the previous session if
    /// there is one, else (re)subscribe everything and flush the offline queue.
    pub(crate) fn opened(&mut self, info: Connected, now: Instant) {
        self.advisory = None;
        let Some(token) = self.resume_token.clone() else {
            self.up(info, false, now);
            return;
        };
        let positions: serde_json::Map<String, Value> = self
            .subs
            .iter()
            .filter(|(_, s)| s.positioned)
            .map(|(c, s)| (c.clone(), json!({"offset": s.offset, "epoch": s.epoch})))
            .collect();
        let id = self.id();
        self.pending
            .insert(id, (Pending::Resume, now + self.cfg.request_timeout));
        self.send(
            "resume",
            Some(id),
            json!({"token": token, "positions": positions}),
        );
        self.link = Link::Resuming(id, Box::new(info));
    }

    /// The connection is usable: subscribe what the session does not hold, send what waited.
    fn up(&mut self, info: Connected, resumed: bool, now: Instant) {
        if !resumed {
            let channels: Vec<String> = self.subs.keys().cloned().collect();
            for c in channels {
                self.send_subscribe(&c, now);
            }
        }
        if !resumed || self.resume_token.is_none() {
            self.resume_token = Some(info.resume_token.clone());
        }
        self.left_while_away.clear();
        self.link = Link::Up;
        self.expire_offline(now);
        while let Some(q) = self.offline.pop_front() {
            self.send_publish(q, now);
        }
        self.emit(Event::State(crate::event::State::Connected {
            client_id: info.client_id,
            user_id: info.user_id,
            resumed,
        }));
    }

    /// The connection ended with a close frame (`code`, `reason`). Only a 1011, 4000, 4003 or
    /// 4005 (rotation) close leaves the session resumable, and a 1013 refusal does not touch it
    /// (protocol §8); after any other, the next connection subscribes again with `recover`
    /// instead of trying a `resume` that must fail.
    pub(crate) fn closed(&mut self, code: u16, reason: &str) -> Disconnected {
        if !matches!(code, 1005 | 1006 | 1011 | 1013 | 4000 | 4003 | 4005) {
            self.resume_token = None;
        }
        let d = match self.advisory.take() {
            Some(a) => Disconnected {
                code,
                reason: a.reason,
                reconnect: a.reconnect,
                after: a.reconnect_after_ms.map(Duration::from_millis),
            },
            None => Disconnected {
                code,
                reason: reason.to_owned(),
                reconnect: herald_proto::codes::reconnect_after_close(code),
                after: None,
            },
        };
        self.down();
        d
    }

    /// The connection died without a close frame (1006), or could not be opened.
    /// The client gave the connection up (no resume reply, a silent server): it closes it with
    /// 4000, which keeps the session on the server for the next connection's `resume`.
    pub(crate) fn gave_up(&mut self, why: &str) -> Disconnected {
        Disconnected {
            code: herald_proto::CloseCode::HeartbeatTimeout.code(),
            ..self.lost(why, true)
        }
    }

    pub(crate) fn lost(&mut self, why: &str, reconnect: bool) -> Disconnected {
        self.advisory = None;
        self.down();
        Disconnected {
            code: 1006,
            reason: why.to_owned(),
            reconnect,
            after: None,
        }
    }

    /// After a connection ends: publishes in flight go back to the front of the offline queue
    /// (to be retried with the same idempotency key), other requests fail with `Disconnected`.
    fn down(&mut self) {
        self.link = Link::Down;
        // Frames not written to the dead socket are not for the next one (its first command must
        // be `resume`); what the next connection needs is rebuilt from the state.
        self.out.retain(|o| matches!(o, Output::Event(_)));
        let mut inflight: Vec<(u64, Pending)> =
            self.pending.drain().map(|(id, (p, _))| (id, p)).collect();
        inflight.sort_by_key(|(id, _)| std::cmp::Reverse(*id));
        for (_, p) in inflight {
            match p {
                Pending::Publish(q) => self.offline.push_front(q),
                Pending::Plain(tx) => drop(tx.send(Err(ClientError::Disconnected))),
                Pending::Unsubscribe(channel, tx) => {
                    self.left_while_away.insert(channel);
                    let _ = tx.send(Ok(json!({})));
                }
                Pending::Subscribe(..) | Pending::Refresh | Pending::Resume | Pending::Internal => {
                }
            }
        }
        for s in self.subs.values_mut() {
            s.retry_at = None;
            s.confirmed = false;
            // The resync's subscribe is gone with the connection: the next one subscribes or
            // resumes from the last offset applied anyway.
            s.resyncing = false;
            if let Some(a) = &mut s.acks {
                a.connection_ended();
            }
        }
    }

    /// A fresh token for the server's `refresh` request.
    pub(crate) fn refresh(&mut self, token: String, now: Instant) {
        if !matches!(self.link, Link::Up) {
            return;
        }
        let id = self.id();
        self.pending
            .insert(id, (Pending::Refresh, now + self.cfg.request_timeout));
        self.send("refresh", Some(id), json!({ "token": token }));
    }

    /// When [`ClientState::tick`] has work next.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        let pending = self.pending.values().map(|(_, d)| *d);
        let offline = self.offline.iter().map(|q| q.deadline);
        let retries = self.subs.values().filter_map(|s| s.retry_at);
        let acks = self
            .subs
            .values()
            .filter_map(|s| s.acks.as_ref().and_then(acks::Acks::due));
        pending.chain(offline).chain(retries).chain(acks).min()
    }

    /// Time passed: expire requests and queued publishes, retry subscriptions.
    pub(crate) fn tick(&mut self, now: Instant) {
        self.expire_offline(now);
        self.expire_pending(now);
        self.send_due_acks(now);
        let due: Vec<String> = self
            .subs
            .iter()
            .filter(|(_, s)| s.retry_at.is_some_and(|t| t <= now))
            .map(|(c, _)| c.clone())
            .collect();
        for c in due {
            if let Some(s) = self.subs.get_mut(&c) {
                s.retry_at = None;
            }
            self.send_subscribe(&c, now);
        }
    }

    fn expire_offline(&mut self, now: Instant) {
        let mut kept = VecDeque::with_capacity(self.offline.len());
        for q in self.offline.drain(..) {
            if q.deadline <= now {
                let _ = q.tx.send(Err(ClientError::Expired));
            } else {
                kept.push_back(q);
            }
        }
        self.offline = kept;
    }

    fn expire_pending(&mut self, now: Instant) {
        let mut expired: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, (_, d))| *d <= now)
            .map(|(id, _)| *id)
            .collect();
        expired.sort_unstable();
        for id in expired {
            let Some((p, _)) = self.pending.remove(&id) else {
                continue;
            };
            match p {
                Pending::Plain(tx) => drop(tx.send(Err(ClientError::Timeout))),
                Pending::Publish(q) => drop(q.tx.send(Err(ClientError::Timeout))),
                Pending::Subscribe(c, generation) => {
                    if self
                        .subs
                        .get(&c)
                        .is_some_and(|s| s.generation == generation)
                    {
                        self.subscribe_failed(&c, ClientError::Timeout, now);
                    }
                }
                Pending::Unsubscribe(_, tx) => drop(tx.send(Err(ClientError::Timeout))),
                Pending::Refresh => tracing::warn!("refresh got no reply"),
                Pending::Internal => {}
                Pending::Resume => {
                    self.out.push_back(Output::Drop("resume timed out".into()));
                }
            }
        }
    }

    /// Everything still waiting fails: the client is done.
    pub(crate) fn fail_all(&mut self, reason: &str) {
        let err = || Err(ClientError::Closed(reason.to_owned()));
        for (_, (p, _)) in self.pending.drain() {
            match p {
                Pending::Plain(tx) | Pending::Unsubscribe(_, tx) => drop(tx.send(err())),
                Pending::Publish(q) => drop(q.tx.send(err())),
                Pending::Subscribe(..) | Pending::Refresh | Pending::Resume | Pending::Internal => {
                }
            }
        }
        for q in self.offline.drain(..) {
            let _ = q.tx.send(err());
        }
        for s in self.subs.values_mut() {
            for w in s.waiters.drain(..) {
                let _ = w.send(err());
            }
        }
    }
}
