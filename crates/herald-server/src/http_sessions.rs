//! The HTTP transport sessions a node holds (the `http` module): each an [`Entry`] shared by
//! its driver task (which owns the protocol `Session`) and the requests that reach it (the
//! stream or poll that carries messages down, the POSTs that carry commands up); and the
//! requests this node relayed to other nodes, waiting for their answers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use herald_core::limits::Allowance;
use herald_core::outlet::Outlet;
use herald_proto::{CloseCode, Format};
use tokio::sync::{Notify, mpsc};

/// Lock, recovering from poisoning (every structure here stays consistent between statements).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Commands queued per session between the POSTs and its driver; also the most one request body
/// may carry, so that a new session's opening body always fits.
pub const COMMAND_QUEUE: usize = 64;

/// Which HTTP transport carries a session's messages down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// `text/event-stream`.
    Sse,
    /// A streamed response (`fetch` + `ReadableStream`).
    Stream,
    /// Long-polling: one response per batch.
    Poll,
    /// The one-way SSE feed of publications (`/http/subscribe`): no commands after opening.
    Feed,
}

impl Transport {
    /// The name in metrics and logs.
    pub fn name(self) -> &'static str {
        match self {
            Transport::Sse => "sse",
            Transport::Stream => "stream",
            Transport::Poll => "poll",
            Transport::Feed => "feed",
        }
    }
}

/// A 128-bit random session id, written as 32 hex digits, then `.` and the node id (so that any
/// node can tell where the session lives).
pub fn session_id(key: u128, node: &str) -> String {
    format!("{key:032x}.{node}")
}

/// Split a session id into its key and node.
pub fn parse_session_id(id: &str) -> Option<(u128, &str)> {
    let (key, node) = id.split_once('.')?;
    if key.len() != 32 || !key.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Some((u128::from_str_radix(key, 16).ok()?, node))
}

/// A long-poll batch kept until the client acknowledges it (a lost answer is sent again).
#[derive(Debug)]
pub struct Batch {
    /// Its sequence number (from 1).
    pub seq: u64,
    /// Its messages.
    pub messages: Vec<Bytes>,
}

/// What the requests and the driver share about one session.
pub struct Entry {
    /// The key in the registry.
    pub key: u128,
    /// The id clients send in `Herald-Session`.
    pub id: String,
    /// How messages go down.
    pub transport: Transport,
    /// Wire format.
    pub format: Format,
    /// Commands for the driver.
    pub cmds: mpsc::Sender<Vec<u8>>,
    /// Requests the client may still make (`http.requests_per_second`).
    pub requests: Allowance,
    state: Mutex<State>,
    /// Wakes the driver: attach, detach, activity, a delivered close.
    driver: Notify,
    /// Wakes the attached downlink when the driver ends it.
    downlink: AtomicWaker,
}

struct State {
    /// The outlet to drain (changes when `resume` redirects to the resumed session's).
    outlet: Arc<Outlet>,
    /// The generation of the attached downlink or poll.
    attached: Option<u64>,
    generation: u64,
    /// When the last downlink or poll ended.
    detached_at: Option<Instant>,
    /// When the client last made a request.
    active_at: Instant,
    /// Long-polling: the last batch, until acknowledged.
    batch: Option<Batch>,
    next_seq: u64,
    /// The driver ends the downlink with this advisory.
    kill: Option<CloseCode>,
    /// The server's close was delivered (the final message went down).
    finished: bool,
    /// The session ended: only a lost final batch can still be fetched.
    ended: bool,
    /// The client ended the session (`POST /http/close`).
    client_closed: bool,
}

/// How the driver sees its session's requests.
#[derive(Debug, Clone, Copy)]
pub struct Seen {
    /// A downlink or poll is attached.
    pub attached: bool,
    /// Since when nothing is attached (`None`: attached, or never was).
    pub detached_at: Option<Instant>,
    /// The last request.
    pub active_at: Instant,
    /// The server's close went down.
    pub finished: bool,
    /// The client ended the session.
    pub client_closed: bool,
}

impl Entry {
    /// A new entry and the receiving end of its command queue.
    pub fn new(
        key: u128,
        node: &str,
        transport: Transport,
        format: Format,
        outlet: Arc<Outlet>,
        requests: Allowance,
    ) -> (Arc<Entry>, mpsc::Receiver<Vec<u8>>) {
        let (cmds, rx) = mpsc::channel(COMMAND_QUEUE);
        let entry = Arc::new(Entry {
            key,
            id: session_id(key, node),
            transport,
            format,
            cmds,
            requests,
            state: Mutex::new(State {
                outlet,
                attached: None,
                generation: 0,
                detached_at: None,
                active_at: Instant::now(),
                batch: None,
                next_seq: 1,
                kill: None,
                finished: false,
                ended: false,
                client_closed: false,
            }),
            driver: Notify::new(),
            downlink: AtomicWaker::new(),
        });
        (entry, rx)
    }

    /// The outlet to drain now.
    pub fn outlet(&self) -> Arc<Outlet> {
        lock(&self.state).outlet.clone()
    }

    /// Drain `target` from now on (after `resume`).
    pub fn redirect(&self, target: Arc<Outlet>) {
        lock(&self.state).outlet = target;
    }

    /// The client made a request.
    pub fn touch(&self) {
        lock(&self.state).active_at = Instant::now();
    }

    /// Attach a downlink or poll; the one attached before (if any) ends. Its generation.
    pub fn attach(&self) -> u64 {
        let mut s = lock(&self.state);
        s.generation += 1;
        s.attached = Some(s.generation);
        s.detached_at = None;
        s.active_at = Instant::now();
        let g = s.generation;
        drop(s);
        self.downlink.wake();
        self.driver.notify_one();
        g
    }

    /// Whether generation `g` is still the attached one (and the driver did not end it).
    pub fn attached(&self, g: u64) -> Result<(), Option<CloseCode>> {
        let s = lock(&self.state);
        if let Some(code) = s.kill {
            return Err(Some(code));
        }
        if s.attached == Some(g) {
            Ok(())
        } else {
            Err(None)
        }
    }

    /// Register the attached downlink's waker (before checking [`Entry::attached`]).
    pub fn register(&self, waker: &std::task::Waker) {
        self.downlink.register(waker);
    }

    /// Generation `g` ended (its response finished or its client went away). When it was the
    /// attached one, its waker is let go (under the state's lock, so a newer downlink, which
    /// attaches under it first, cannot have registered yet): the entry outlives the request.
    pub fn detach(&self, g: u64) {
        let mut s = lock(&self.state);
        let mut waker = None;
        if s.attached == Some(g) {
            s.attached = None;
            s.detached_at = Some(Instant::now());
            waker = self.downlink.take();
        }
        drop(s);
        drop(waker);
        self.driver.notify_one();
    }

    /// The server's close went down to the client.
    pub fn finish(&self) {
        lock(&self.state).finished = true;
        self.driver.notify_one();
    }

    /// The client ended the session: its downlink ends (without an advisory) and so does it.
    pub fn close_by_client(&self) {
        let mut s = lock(&self.state);
        s.client_closed = true;
        s.kill.get_or_insert(CloseCode::Normal);
        drop(s);
        self.downlink.wake();
        self.driver.notify_one();
    }

    /// End the attached downlink with a `disconnect` advisory for `code`.
    pub fn kill(&self, code: CloseCode) {
        lock(&self.state).kill.get_or_insert(code);
        self.downlink.wake();
    }

    /// Mark the session ended (only a kept final batch can still be fetched).
    pub fn end(&self) {
        let mut s = lock(&self.state);
        s.ended = true;
        s.kill.get_or_insert(CloseCode::Normal);
        drop(s);
        self.downlink.wake();
    }

    /// Whether the session ended.
    pub fn ended(&self) -> bool {
        lock(&self.state).ended
    }

    /// The driver's view.
    pub fn seen(&self) -> Seen {
        let s = lock(&self.state);
        Seen {
            attached: s.attached.is_some(),
            detached_at: s.detached_at,
            active_at: s.active_at,
            finished: s.finished,
            client_closed: s.client_closed,
        }
    }

    /// Wait for the next attach, detach, activity or delivered close.
    pub async fn changed(&self) {
        self.driver.notified().await;
    }

    /// Long-polling: what to answer at once given the client's `ack` — the kept batch again if
    /// the client did not get it, or `None` (the kept batch, if any, is acknowledged and gone).
    pub fn unacked(&self, ack: u64) -> Option<(u64, Vec<Bytes>)> {
        let mut s = lock(&self.state);
        match &s.batch {
            Some(b) if ack < b.seq => Some((b.seq, b.messages.clone())),
            Some(_) => {
                s.batch = None;
                None
            }
            None => None,
        }
    }

    /// Long-polling: keep `messages` as the next batch; its sequence number.
    pub fn keep(&self, messages: Vec<Bytes>) -> u64 {
        let mut s = lock(&self.state);
        let seq = s.next_seq;
        s.next_seq += 1;
        s.batch = Some(Batch { seq, messages });
        seq
    }
}

/// The node's HTTP transport sessions by key.
#[derive(Default)]
pub struct Registry {
    sessions: Mutex<HashMap<u128, Arc<Entry>>>,
}

impl Registry {
    /// Add a session.
    pub fn insert(&self, entry: Arc<Entry>) {
        lock(&self.sessions).insert(entry.key, entry);
    }

    /// Find a session.
    pub fn get(&self, key: u128) -> Option<Arc<Entry>> {
        lock(&self.sessions).get(&key).cloned()
    }

    /// Forget a session.
    pub fn remove(&self, key: u128) {
        lock(&self.sessions).remove(&key);
    }
}

/// Requests relayed to other nodes, waiting for their answers (see `http::relay`).
#[derive(Default)]
pub struct RelayWaits {
    next: std::sync::atomic::AtomicU64,
    waiting: Mutex<HashMap<u64, tokio::sync::oneshot::Sender<axum::response::Response>>>,
}

impl RelayWaits {
    /// A new request number and where its answer will arrive.
    pub fn wait(
        &self,
    ) -> (
        u64,
        tokio::sync::oneshot::Receiver<axum::response::Response>,
    ) {
        let req = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (tx, rx) = tokio::sync::oneshot::channel();
        lock(&self.waiting).insert(req, tx);
        (req, rx)
    }

    /// Stop waiting for `req`.
    pub fn forget(&self, req: u64) {
        lock(&self.waiting).remove(&req);
    }

    /// The answer to `req` arrived.
    pub fn answered(&self, req: u64, resp: axum::response::Response) {
        if let Some(tx) = lock(&self.waiting).remove(&req) {
            let _ = tx.send(resp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_ids_name_their_node() {
        let id = session_id(0xabc, "node-1.example");
        assert_eq!(id.len(), 33 + "node-1.example".len());
        assert_eq!(parse_session_id(&id), Some((0xabc, "node-1.example")));
        assert_eq!(parse_session_id("abc.node"), None);
        assert_eq!(parse_session_id(&format!("{}.n", "g".repeat(32))), None);
        assert_eq!(parse_session_id("nodot"), None);
    }
}
