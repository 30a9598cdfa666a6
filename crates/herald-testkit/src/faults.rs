//! A fault-injecting TCP proxy for tests, and (Linux) a real-network blackhole in a network
//! namespace.
//!
//! [`FaultProxy`] sits between a client and a server on real sockets and changes the path's
//! conditions at runtime, per direction ([`Direction::Up`] = client → server, [`Direction::Down`] =
//! server → client):
//!
//! - **latency and jitter** ([`FaultHandle::set_latency`], [`FaultHandle::set_rtt`]): every chunk
//!   read from the sender is stamped `now + latency + U(0, jitter)` and waits in a timed queue (the
//!   "delay line") until then; the reader keeps reading meanwhile, so throughput is that of a
//!   long fat pipe, not one chunk per delay. Order is kept: a chunk is never due before the one in
//!   front of it, so jitter only ever adds delay.
//! - **a bandwidth cap** ([`FaultHandle::set_bandwidth`]): a token bucket (bytes/s, burst of
//!   20 ms or 1500 bytes, whichever is more) in front of the delay line; the proxy reads from the
//!   sender only as fast as the cap allows, so the sender sees TCP backpressure, as behind a
//!   real bottleneck.
//! - **a stall** ([`FaultHandle::stall`]): nothing is forwarded in that direction, the sockets
//!   stay open (half-open path); the proxy keeps reading until it holds
//!   [`ProxyOptions::stall_limit`] bytes and then stops, so the sender's socket buffers fill up.
//!   Held bytes (and a FIN, or a peer's RST) are delivered in order when the stall ends, as
//!   TCP retransmission does after a partition heals.
//! - **a blackhole** ([`FaultHandle::blackhole`]): both directions stalled, and new connections are
//!   accepted but held (nothing reaches the server) until [`FaultHandle::lift_blackhole`].
//! - **a network switch** ([`FaultHandle::freeze_current`]): the current connections go silent
//!   for good, new ones flow.
//! - **a reset** ([`FaultHandle::reset`]): `SO_LINGER` 0 on both sockets of every connection, then
//!   close: the client (and the server) get `ECONNRESET`.
//! - **a cut** ([`FaultHandle::cut_after`]): forward `n` more bytes in one direction, then close
//!   both sockets (FIN; the proxy drains what the peers still send for up to 1 s so that the close
//!   stays a FIN and not a RST) — with `n` inside a frame, a truncated frame and EOF.
//!
//! Statistics ([`FaultHandle::accepted`], [`FaultHandle::open`], [`FaultHandle::forwarded`],
//! [`FaultHandle::fins`], ...) and [`FaultHandle::wait_for`] let tests wait for events instead of
//! sleeping. See `docs/fault-harness.md`.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

/// One direction of a proxied connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Client → server.
    Up,
    /// Server → client.
    Down,
}

impl Direction {
    /// Both directions.
    pub const BOTH: [Direction; 2] = [Direction::Up, Direction::Down];

    fn idx(self) -> usize {
        match self {
            Direction::Up => 0,
            Direction::Down => 1,
        }
    }
}

/// The conditions of one direction of the path.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Link {
    /// One-way delay added to every byte.
    pub latency: Duration,
    /// Extra delay per chunk, uniform in `0..=jitter` (order is kept).
    pub jitter: Duration,
    /// Bandwidth cap in bytes per second (`None` = unlimited).
    pub bandwidth: Option<u64>,
    /// Nothing is forwarded (the sockets stay open).
    pub stalled: bool,
}

#[derive(Debug, Clone, Default)]
struct Conditions {
    links: [Link; 2],
    blackhole: bool,
}

impl Conditions {
    fn stalled(&self, dir: Direction) -> bool {
        self.blackhole || self.links[dir.idx()].stalled
    }
}

/// Limits of the proxy's own buffering.
#[derive(Debug, Clone)]
pub struct ProxyOptions {
    /// Bytes one direction of a connection may hold in its delay line (read, not yet delivered)
    /// while it flows. Default 4 MiB (a bandwidth-delay product well above the tests' needs).
    pub queue_limit: usize,
    /// While a direction is stalled, the proxy reads until it holds this many bytes and then
    /// stops reading. Default 64 KiB.
    pub stall_limit: usize,
    /// Largest single read. Default 16 KiB.
    pub chunk: usize,
}

impl Default for ProxyOptions {
    fn default() -> Self {
        ProxyOptions {
            queue_limit: 4 << 20,
            stall_limit: 64 << 10,
            chunk: 16 << 10,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kill {
    /// `SO_LINGER` 0, then close: RST.
    Reset,
    /// FIN both ways (after draining briefly).
    Close,
}

/// Per-connection control.
struct ConnCtl {
    kill: watch::Sender<Option<Kill>>,
    /// Bytes written to the receiver, per direction.
    written: [AtomicU64; 2],
    /// Close once `written` reaches this (u64::MAX = never), per direction.
    limit: [AtomicU64; 2],
    /// Silent for good (both directions stalled), whatever the proxy's conditions.
    frozen: AtomicBool,
}

impl ConnCtl {
    /// Kill with `k` unless already killed; returns the mode in force.
    fn kill_with(&self, k: Kill) -> Kill {
        self.kill(k);
        (*self.kill.borrow()).unwrap_or(k)
    }

    fn kill(&self, k: Kill) {
        self.kill.send_if_modified(|cur| {
            if cur.is_none() {
                *cur = Some(k);
                true
            } else {
                false
            }
        });
    }
}

struct Shared {
    upstream: SocketAddr,
    opts: ProxyOptions,
    cond: watch::Sender<Conditions>,
    conns: Mutex<HashMap<u64, Arc<ConnCtl>>>,
    next_id: AtomicU64,
    accepted: AtomicU64,
    open: AtomicUsize,
    received: [AtomicU64; 2],
    forwarded: [AtomicU64; 2],
    fins: [AtomicU64; 2],
    resets: AtomicU64,
    /// Bumped whenever a statistic changes (for `wait_for`).
    version: watch::Sender<u64>,
}

impl Shared {
    fn bump(&self) {
        self.version.send_modify(|v| *v = v.wrapping_add(1));
    }

    fn conns(&self) -> MutexGuard<'_, HashMap<u64, Arc<ConnCtl>>> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Controls and observes a [`FaultProxy`]; cheap to clone, usable from any task.
#[derive(Clone)]
pub struct FaultHandle {
    shared: Arc<Shared>,
}

/// A fault-injecting TCP proxy to one upstream address. Dropping it stops accepting and resets
/// every connection.
pub struct FaultProxy {
    addr: SocketAddr,
    handle: FaultHandle,
    accept: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// Listen on `127.0.0.1:0` and forward every connection to `upstream`, with clean
    /// conditions.
    pub async fn start(upstream: SocketAddr) -> std::io::Result<FaultProxy> {
        Self::start_with(upstream, ProxyOptions::default()).await
    }

    /// [`FaultProxy::start`] with buffering options.
    pub async fn start_with(
        upstream: SocketAddr,
        opts: ProxyOptions,
    ) -> std::io::Result<FaultProxy> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            upstream,
            opts,
            cond: watch::Sender::new(Conditions::default()),
            conns: Mutex::default(),
            next_id: AtomicU64::new(1),
            accepted: AtomicU64::new(0),
            open: AtomicUsize::new(0),
            received: Default::default(),
            forwarded: Default::default(),
            fins: Default::default(),
            resets: AtomicU64::new(0),
            version: watch::Sender::new(0),
        });
        let accept = tokio::spawn(accept_loop(listener, shared.clone()));
        Ok(FaultProxy {
            addr,
            handle: FaultHandle { shared },
            accept,
        })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A handle for other tasks.
    pub fn handle(&self) -> FaultHandle {
        self.handle.clone()
    }
}

impl std::ops::Deref for FaultProxy {
    type Target = FaultHandle;
    fn deref(&self) -> &FaultHandle {
        &self.handle
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.handle.reset();
    }
}

impl FaultHandle {
    fn update(&self, f: impl FnOnce(&mut Conditions)) {
        self.shared.cond.send_modify(f);
    }

    /// The conditions of `dir` now.
    pub fn link(&self, dir: Direction) -> Link {
        self.shared.cond.borrow().links[dir.idx()].clone()
    }

    /// Replace the conditions of `dir`.
    pub fn set_link(&self, dir: Direction, link: Link) {
        self.update(|c| c.links[dir.idx()] = link);
    }

    /// One-way latency and jitter of `dir`.
    pub fn set_latency(&self, dir: Direction, latency: Duration, jitter: Duration) {
        self.update(|c| {
            let l = &mut c.links[dir.idx()];
            l.latency = latency;
            l.jitter = jitter;
        });
    }

    /// Half of `rtt` each way, with `jitter` added per direction (so the round trip varies
    /// within `rtt..=rtt + 2 * jitter`).
    pub fn set_rtt(&self, rtt: Duration, jitter: Duration) {
        for d in Direction::BOTH {
            self.set_latency(d, rtt / 2, jitter);
        }
    }

    /// Cap `dir` at `bytes_per_second` (`None` = unlimited).
    pub fn set_bandwidth(&self, dir: Direction, bytes_per_second: Option<u64>) {
        self.update(|c| c.links[dir.idx()].bandwidth = bytes_per_second.map(|b| b.max(1)));
    }

    /// Stop forwarding `dir` (sockets stay open; bounded buffering, see [`ProxyOptions`]).
    pub fn stall(&self, dir: Direction) {
        self.update(|c| c.links[dir.idx()].stalled = true);
    }

    /// Forward `dir` again (what was held is delivered first, in order).
    pub fn unstall(&self, dir: Direction) {
        self.update(|c| c.links[dir.idx()].stalled = false);
    }

    /// Stall both directions of every connection and hold new connections (accepted, nothing
    /// forwarded, not even connected upstream) until [`FaultHandle::lift_blackhole`].
    pub fn blackhole(&self) {
        self.update(|c| c.blackhole = true);
    }

    /// End the blackhole: held bytes and held connections go through.
    pub fn lift_blackhole(&self) {
        self.update(|c| c.blackhole = false);
    }

    /// Whether the blackhole is on.
    pub fn blackholed(&self) -> bool {
        self.shared.cond.borrow().blackhole
    }

    /// Clean conditions again: no latency, cap, stall or blackhole.
    pub fn heal(&self) {
        self.update(|c| *c = Conditions::default());
    }

    fn each_conn(&self, f: impl Fn(&ConnCtl)) -> usize {
        let conns: Vec<Arc<ConnCtl>> = self.shared.conns().values().cloned().collect();
        for c in &conns {
            f(c);
        }
        conns.len()
    }

    /// Reset every current connection (RST to the client and to the server); returns how many.
    pub fn reset(&self) -> usize {
        self.each_conn(|c| c.kill(Kill::Reset))
    }

    /// Every current connection goes silent for good (both directions stalled, sockets open,
    /// until [`FaultHandle::reset`] or [`FaultHandle::close`]) while new connections flow as
    /// usual: a network switch (Wi-Fi to mobile, a NAT rebinding) that leaves the old path dead.
    /// Returns how many.
    pub fn freeze_current(&self) -> usize {
        self.each_conn(|c| c.frozen.store(true, Ordering::SeqCst))
    }

    /// Close every current connection with a FIN both ways; returns how many.
    pub fn close(&self) -> usize {
        self.each_conn(|c| c.kill(Kill::Close))
    }

    /// On every current connection, forward `n` more bytes in `dir` (counted from what was
    /// written when this is called) and then close both sockets (FIN). Returns how many
    /// connections are affected.
    pub fn cut_after(&self, dir: Direction, n: u64) -> usize {
        self.each_conn(|c| {
            let at = c.written[dir.idx()]
                .load(Ordering::SeqCst)
                .saturating_add(n);
            c.limit[dir.idx()].store(at, Ordering::SeqCst);
            if n == 0 {
                c.kill(Kill::Close);
            }
        })
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Connections whose sockets are still open (held ones included).
    pub fn open(&self) -> usize {
        self.shared.open.load(Ordering::SeqCst)
    }

    /// Bytes read from the sender of `dir`, all connections.
    pub fn received(&self, dir: Direction) -> u64 {
        self.shared.received[dir.idx()].load(Ordering::SeqCst)
    }

    /// Bytes delivered to the receiver of `dir`, all connections.
    pub fn forwarded(&self, dir: Direction) -> u64 {
        self.shared.forwarded[dir.idx()].load(Ordering::SeqCst)
    }

    /// FINs read from the sender of `dir` (whether passed on yet or not): `fins(Down)` counts
    /// connections the server closed.
    pub fn fins(&self, dir: Direction) -> u64 {
        self.shared.fins[dir.idx()].load(Ordering::SeqCst)
    }

    /// Connections that ended by a reset (asked for, or a socket error on either side).
    pub fn resets(&self) -> u64 {
        self.shared.resets.load(Ordering::SeqCst)
    }

    /// Wait until `cond` holds (checked whenever a statistic changes); panics after `timeout`
    /// naming `what`.
    pub async fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        mut cond: impl FnMut(&FaultHandle) -> bool,
    ) {
        let mut rx = self.shared.version.subscribe();
        let deadline = Instant::now() + timeout;
        loop {
            rx.borrow_and_update();
            if cond(self) {
                return;
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => panic!("proxy gone while waiting for {what}"),
                Err(_) => panic!("timed out after {timeout:?} waiting for {what}"),
            }
        }
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        match listener.accept().await {
            Ok((client, _)) => {
                let _ = client.set_nodelay(true);
                shared.accepted.fetch_add(1, Ordering::SeqCst);
                shared.open.fetch_add(1, Ordering::SeqCst);
                shared.bump();
                tokio::spawn(connection(client, shared.clone()));
            }
            // EMFILE and the like: try again shortly.
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

/// Removes the connection from the registry when it ends.
struct ConnGuard {
    shared: Arc<Shared>,
    id: u64,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.shared.conns().remove(&self.id);
        self.shared.open.fetch_sub(1, Ordering::SeqCst);
        self.shared.bump();
    }
}

/// Resolves with the kill mode once the connection is killed.
async fn killed(rx: &mut watch::Receiver<Option<Kill>>) -> Kill {
    loop {
        if let Some(k) = *rx.borrow_and_update() {
            return k;
        }
        if rx.changed().await.is_err() {
            return Kill::Reset;
        }
    }
}

async fn connection(client: TcpStream, shared: Arc<Shared>) {
    let id = shared.next_id.fetch_add(1, Ordering::SeqCst);
    let ctl = Arc::new(ConnCtl {
        kill: watch::Sender::new(None),
        written: Default::default(),
        limit: [AtomicU64::new(u64::MAX), AtomicU64::new(u64::MAX)],
        frozen: AtomicBool::new(false),
    });
    shared.conns().insert(id, ctl.clone());
    let _guard = ConnGuard {
        shared: shared.clone(),
        id,
    };
    let mut kill = ctl.kill.subscribe();
    let mut cond = shared.cond.subscribe();
    // Held while blackholed: nothing reaches the server.
    let held = tokio::select! {
        r = cond.wait_for(|c| !c.blackhole) => r.is_err(),
        _ = killed(&mut kill) => true,
    };
    let upstream = if held {
        None
    } else {
        tokio::select! {
            r = TcpStream::connect(shared.upstream) => r.ok(),
            _ = killed(&mut kill) => None,
        }
    };
    let Some(server) = upstream else {
        if killed_now(&kill) != Some(Kill::Close) {
            let _ = client.set_zero_linger();
            shared.resets.fetch_add(1, Ordering::SeqCst);
        }
        return;
    };
    let _ = server.set_nodelay(true);
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    let up = Arc::new(Line::default());
    let down = Arc::new(Line::default());
    let s = &shared;
    tokio::join!(
        reader(cr, &up, Direction::Up, s, &ctl),
        writer(sw, &up, Direction::Up, s, &ctl),
        reader(sr, &down, Direction::Down, s, &ctl),
        writer(cw, &down, Direction::Down, s, &ctl),
    );
    if killed_now(&kill) == Some(Kill::Reset) {
        shared.resets.fetch_add(1, Ordering::SeqCst);
    }
}

fn killed_now(rx: &watch::Receiver<Option<Kill>>) -> Option<Kill> {
    *rx.borrow()
}

enum Item {
    Data(Vec<u8>, Instant),
    /// The sender's FIN.
    Eof(Instant),
    /// The sender's socket failed (e.g. it was reset): reset the connection when this is due,
    /// so that a RST does not cross a stalled path either.
    Reset(Instant),
}

impl Item {
    fn due(&self) -> Instant {
        match self {
            Item::Data(_, t) | Item::Eof(t) | Item::Reset(t) => *t,
        }
    }
}

/// The delay line of one direction of one connection: a timed FIFO between its reader and its
/// writer.
#[derive(Default)]
struct Line {
    q: Mutex<VecDeque<Item>>,
    /// Bytes in `q`.
    queued: AtomicUsize,
    /// One waiter each (the writer, the reader): `notify_one` keeps a permit, so no wake-up is lost.
    pushed: Notify,
    popped: Notify,
}

impl Line {
    fn q(&self) -> MutexGuard<'_, VecDeque<Item>> {
        self.q.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn push(&self, item: Item) {
        if let Item::Data(b, _) = &item {
            self.queued.fetch_add(b.len(), Ordering::SeqCst);
        }
        self.q().push_back(item);
        self.pushed.notify_one();
    }

    fn front_due(&self) -> Option<Instant> {
        self.q().front().map(Item::due)
    }

    fn pop(&self) -> Option<Item> {
        self.q().pop_front()
    }

    fn release(&self, n: usize) {
        self.queued.fetch_sub(n, Ordering::SeqCst);
        self.popped.notify_one();
    }
}

/// A token bucket in bytes.
struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn burst(rate: u64) -> f64 {
        (rate as f64 / 50.0).max(1500.0)
    }

    fn refill(&mut self, now: Instant, rate: u64) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + dt * rate as f64).min(Self::burst(rate));
        self.last = now;
    }
}

/// xorshift64*, seeded per direction: jitter needs no cryptographic quality.
struct Rng(u64);

impl Rng {
    fn new() -> Rng {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(0x9e37_79b9_7f4a_7c15);
        Rng(h.finish() | 1)
    }

    fn below(&mut self, bound: Duration) -> Duration {
        if bound.is_zero() {
            return Duration::ZERO;
        }
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let r = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d);
        let nanos = bound.as_nanos().min(u64::MAX as u128) as u64;
        Duration::from_nanos(r % nanos.saturating_add(1))
    }
}

/// Read from the sender of `dir` into its delay line, within the bandwidth cap and the buffering
/// bounds.
async fn reader(mut r: OwnedReadHalf, line: &Line, dir: Direction, shared: &Shared, ctl: &ConnCtl) {
    let mut kill = ctl.kill.subscribe();
    let mut cond = shared.cond.subscribe();
    let mut buf = vec![0u8; shared.opts.chunk.max(1)];
    let mut rng = Rng::new();
    let mut last_due = Instant::now();
    let mut bucket: Option<Bucket> = None;
    let i = dir.idx();
    let k = loop {
        let c = cond.borrow_and_update().clone();
        let link = &c.links[i];
        let limit = if c.stalled(dir) || ctl.frozen.load(Ordering::SeqCst) {
            shared.opts.stall_limit
        } else {
            shared.opts.queue_limit
        }
        .max(1);
        let queued = line.queued.load(Ordering::SeqCst);
        if queued >= limit {
            tokio::select! {
                _ = line.popped.notified() => {}
                _ = cond.changed() => {}
                k = killed(&mut kill) => break k,
            }
            continue;
        }
        let mut max = buf.len().min(limit - queued);
        match link.bandwidth {
            Some(rate) => {
                let now = Instant::now();
                let b = bucket.get_or_insert(Bucket {
                    tokens: Bucket::burst(rate),
                    last: now,
                });
                b.refill(now, rate);
                let want = (max as f64).min(1500.0);
                if b.tokens < want {
                    let wait = Duration::from_secs_f64((want - b.tokens) / rate as f64);
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = cond.changed() => {}
                        k = killed(&mut kill) => break k,
                    }
                    continue;
                }
                max = max.min(b.tokens as usize).max(1);
            }
            None => bucket = None,
        }
        let n = tokio::select! {
            n = r.read(&mut buf[..max]) => n,
            k = killed(&mut kill) => break k,
        };
        match n {
            Ok(0) => {
                shared.fins[i].fetch_add(1, Ordering::SeqCst);
                let due = due(&mut last_due, &c.links[i], &mut rng);
                line.push(Item::Eof(due));
                shared.bump();
                // Nothing more to read; the other direction may go on.
                return;
            }
            Ok(n) => {
                if let Some(b) = bucket.as_mut() {
                    b.tokens -= n as f64;
                }
                shared.received[i].fetch_add(n as u64, Ordering::SeqCst);
                let due = due(&mut last_due, &c.links[i], &mut rng);
                line.push(Item::Data(buf[..n].to_vec(), due));
                shared.bump();
            }
            Err(_) => {
                let due = due(&mut last_due, &c.links[i], &mut rng);
                line.push(Item::Reset(due));
                shared.bump();
                return;
            }
        }
    };
    match k {
        Kill::Reset => {
            let _ = r.as_ref().set_zero_linger();
        }
        Kill::Close => {
            // Drain what the peer still sends, so that closing is a FIN and not a RST (unread
            // data at close makes the kernel answer with RST).
            let _ = tokio::time::timeout(Duration::from_secs(1), async {
                while let Ok(n) = r.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                }
            })
            .await;
        }
    }
}

fn due(last: &mut Instant, link: &Link, rng: &mut Rng) -> Instant {
    let t = (Instant::now() + link.latency + rng.below(link.jitter)).max(*last);
    *last = t;
    t
}

/// Deliver the delay line of `dir` to its receiver when each chunk is due.
async fn writer(
    mut w: OwnedWriteHalf,
    line: &Line,
    dir: Direction,
    shared: &Shared,
    ctl: &ConnCtl,
) {
    let mut kill = ctl.kill.subscribe();
    let mut cond = shared.cond.subscribe();
    let i = dir.idx();
    let k = loop {
        let stalled = cond.borrow_and_update().stalled(dir) || ctl.frozen.load(Ordering::SeqCst);
        let Some(due) = line.front_due() else {
            tokio::select! {
                _ = line.pushed.notified() => {}
                k = killed(&mut kill) => break k,
            }
            continue;
        };
        if stalled {
            tokio::select! {
                _ = cond.changed() => {}
                k = killed(&mut kill) => break k,
            }
            continue;
        }
        if Instant::now() < due {
            tokio::select! {
                _ = tokio::time::sleep_until(due) => {}
                _ = cond.changed() => {}
                k = killed(&mut kill) => break k,
            }
            continue;
        }
        let Some(item) = line.pop() else {
            continue;
        };
        let bytes = match item {
            Item::Eof(_) => {
                // Half-close; a later reset still reaches this socket through its read half
                // (the other direction's reader), if that one is still open.
                let _ = w.shutdown().await;
                return;
            }
            Item::Reset(_) => break ctl.kill_with(Kill::Reset),
            Item::Data(b, _) => b,
        };
        let limit = ctl.limit[i].load(Ordering::SeqCst);
        let written = ctl.written[i].load(Ordering::SeqCst);
        let room = limit.saturating_sub(written);
        let cut = bytes.len() as u64 >= room;
        let send = &bytes[..bytes.len().min(room as usize)];
        let ok = tokio::select! {
            r = w.write_all(send) => r.is_ok(),
            k = killed(&mut kill) => break k,
        };
        ctl.written[i].fetch_add(send.len() as u64, Ordering::SeqCst);
        shared.forwarded[i].fetch_add(send.len() as u64, Ordering::SeqCst);
        line.release(bytes.len());
        shared.bump();
        if !ok {
            break ctl.kill_with(Kill::Reset);
        } else if cut {
            break ctl.kill_with(Kill::Close);
        }
    };
    match k {
        Kill::Reset => {
            let _ = w.as_ref().set_zero_linger();
            // Dropping the half would shut the write side down first (a FIN before the RST).
            w.forget();
        }
        Kill::Close => {
            let _ = w.shutdown().await;
        }
    }
}

/// A real-network blackhole: a fresh network namespace (`ip netns`) whose loopback traffic to a
/// port can be dropped by nftables rules on the input hook — packets vanish, TCP retransmits, no
/// RST and no ICMP, exactly like a partition. Code runs inside it with [`netns::NetNs::run`].
#[cfg(target_os = "linux")]
pub mod netns {
    use std::os::fd::AsFd;
    use std::process::Command;

    const WHAT: &str = "a network namespace with nftables (`ip`, `nft`, root)";

    /// A network namespace of the test's own, deleted on drop.
    pub struct NetNs {
        name: String,
    }

    fn output(program: &str, args: &[&str]) -> Result<String, String> {
        let out = Command::new(program)
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .output()
            .map_err(|e| format!("{program}: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "{program} {}: {}{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim(),
                String::from_utf8_lossy(&out.stdout).trim()
            ))
        }
    }

    fn root() -> bool {
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("Uid:"))
                    .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
            })
            .unwrap_or(false)
    }

    /// `ip` and `nft` are there, installing Debian's `iproute2` / `nftables` with apt when one
    /// is missing.
    fn tools() -> Result<(), String> {
        if !root() {
            return Err("needs root (network namespaces, nftables)".into());
        }
        let missing: Vec<&str> = [("ip", "-V", "iproute2"), ("nft", "--version", "nftables")]
            .into_iter()
            .filter(|(program, flag, _)| output(program, &[flag]).is_err())
            .map(|(_, _, package)| package)
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        eprintln!(
            "installing Debian's {} for the real-network blackhole test",
            missing.join(", ")
        );
        let mut install = vec!["-o", "DPkg::Lock::Timeout=120", "install", "-y", "-q"];
        install.extend(&missing);
        if output("apt-get", &install).is_err() {
            output(
                "apt-get",
                &["-o", "DPkg::Lock::Timeout=120", "update", "-q"],
            )?;
            output("apt-get", &install)?;
        }
        output("ip", &["-V"])?;
        output("nft", &["--version"]).map(|_| ())
    }

    impl NetNs {
        /// A new namespace with loopback up and an empty `inet herald` table (input hook). `None`
        /// (the test is skipped, with the reason printed) when that is not possible here; under
        /// `CI=true` it panics instead.
        pub fn create() -> Option<NetNs> {
            if let Err(e) = tools() {
                return crate::unavailable(WHAT, e);
            }
            let name = format!("herald-{}", crate::unique());
            if let Err(e) = output("ip", &["netns", "add", &name]) {
                return crate::unavailable(WHAT, e);
            }
            let ns = NetNs { name };
            let setup = ns
                .exec("ip", &["link", "set", "lo", "up"])
                .and_then(|_| ns.exec("nft", &["add", "table", "inet", "herald"]))
                .and_then(|_| {
                    ns.exec(
                        "nft",
                        &[
                            "add chain inet herald input { type filter hook input priority 0; policy accept; }",
                        ],
                    )
                });
            match setup {
                Ok(_) => Some(ns),
                Err(e) => crate::unavailable(WHAT, e),
            }
        }

        /// Its name (`ip netns exec NAME ...`).
        pub fn name(&self) -> &str {
            &self.name
        }

        /// Run a program inside it; its stdout, or what went wrong.
        pub fn exec(&self, program: &str, args: &[&str]) -> Result<String, String> {
            let mut all = vec!["netns", "exec", self.name.as_str(), program];
            all.extend_from_slice(args);
            output("ip", &all)
        }

        /// Drop every TCP packet to or from `port` (both directions of every connection of a
        /// server listening there, and new SYNs to it).
        pub fn drop_port(&self, port: u16) -> Result<(), String> {
            let p = port.to_string();
            self.exec(
                "nft",
                &[
                    "add", "rule", "inet", "herald", "input", "tcp", "dport", &p, "drop",
                ],
            )?;
            self.exec(
                "nft",
                &[
                    "add", "rule", "inet", "herald", "input", "tcp", "sport", &p, "drop",
                ],
            )
            .map(|_| ())
        }

        /// Remove every drop rule.
        pub fn clear_rules(&self) -> Result<(), String> {
            self.exec("nft", &["flush", "chain", "inet", "herald", "input"])
                .map(|_| ())
        }

        /// The rules now (`nft list table`), for failure messages.
        pub fn rules(&self) -> String {
            self.exec("nft", &["list", "table", "inet", "herald"])
                .unwrap_or_else(|e| e)
        }

        /// Move the calling thread into the namespace: sockets it creates afterwards (and
        /// threads it spawns) live there.
        pub fn enter(&self) -> std::io::Result<()> {
            let f = std::fs::File::open(format!("/run/netns/{}", self.name))?;
            rustix::thread::move_into_link_name_space(
                f.as_fd(),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )
            .map_err(std::io::Error::from)
        }

        /// Run `f` on a new thread inside the namespace and return its result (a panic in `f`
        /// is passed on). Build the tokio runtime inside `f`, so that its threads and sockets
        /// are in the namespace too.
        pub fn run<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
            std::thread::scope(|s| {
                s.spawn(|| {
                    self.enter().expect("enter the network namespace");
                    f()
                })
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p))
            })
        }
    }

    impl Drop for NetNs {
        fn drop(&mut self) {
            let _ = output("ip", &["netns", "del", &self.name]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WAIT: Duration = Duration::from_secs(10);

    /// An upstream that echoes every connection.
    async fn echo() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    /// An upstream that hands each accepted socket to the test.
    async fn upstream() -> (SocketAddr, tokio::sync::mpsc::Receiver<TcpStream>) {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                if tx.send(s).await.is_err() {
                    return;
                }
            }
        });
        (addr, rx)
    }

    fn pattern(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i % 251) as u8).collect()
    }

    #[tokio::test]
    async fn latency_is_at_least_the_configured_one_and_throughput_stays_high() {
        let p = FaultProxy::start(echo().await).await.expect("proxy");
        p.set_latency(
            Direction::Up,
            Duration::from_millis(60),
            Duration::from_millis(20),
        );
        p.set_latency(Direction::Down, Duration::from_millis(40), Duration::ZERO);
        let mut c = TcpStream::connect(p.addr()).await.expect("connect");
        let mut buf = [0u8; 4];
        for _ in 0..5 {
            let t = Instant::now();
            c.write_all(b"ping").await.expect("write");
            c.read_exact(&mut buf).await.expect("read");
            let rtt = t.elapsed();
            assert!(rtt >= Duration::from_millis(100), "rtt {rtt:?}");
            assert!(rtt < Duration::from_secs(2), "rtt {rtt:?}");
            assert_eq!(&buf, b"ping");
        }
        // A timed queue, not a sleep per read: 4 MiB (256 reads of 16 KiB) takes about one
        // round trip plus transfer time, not 256 × 100 ms.
        let data = pattern(4 << 20);
        let t = Instant::now();
        let (mut r, mut w) = c.into_split();
        let send = data.clone();
        let writer = tokio::spawn(async move { w.write_all(&send).await.map(|_| w) });
        let mut got = vec![0u8; data.len()];
        r.read_exact(&mut got).await.expect("read back");
        let took = t.elapsed();
        writer.await.expect("join").expect("write");
        assert!(got == data, "bytes changed or reordered");
        assert!(took >= Duration::from_millis(100), "{took:?}");
        assert!(
            took < Duration::from_secs(5),
            "4 MiB through 100 ms RTT took {took:?}"
        );
    }

    #[tokio::test]
    async fn jitter_never_reorders() {
        let p = FaultProxy::start(echo().await).await.expect("proxy");
        p.set_rtt(Duration::from_millis(10), Duration::from_millis(30));
        let c = TcpStream::connect(p.addr()).await.expect("connect");
        let (mut r, mut w) = c.into_split();
        let writer = tokio::spawn(async move {
            for i in 0u32..300 {
                w.write_all(&i.to_be_bytes()).await.expect("write");
                if i % 10 == 0 {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
            w
        });
        let mut buf = [0u8; 4];
        for i in 0u32..300 {
            r.read_exact(&mut buf).await.expect("read");
            assert_eq!(u32::from_be_bytes(buf), i);
        }
        drop(writer.await.expect("join"));
    }

    #[tokio::test]
    async fn bandwidth_cap_holds_within_tolerance() {
        let (addr, mut accepted) = upstream().await;
        let p = FaultProxy::start(addr).await.expect("proxy");
        let rate = 100_000u64;
        p.set_bandwidth(Direction::Down, Some(rate));
        let mut c = TcpStream::connect(p.addr()).await.expect("connect");
        let mut s = accepted.recv().await.expect("upstream connection");
        let n = 150_000usize;
        let data = pattern(n);
        let send = data.clone();
        let t = Instant::now();
        tokio::spawn(async move {
            let _ = s.write_all(&send).await;
            let _ = s.shutdown().await;
            // Keep the socket until the test is done reading.
            tokio::time::sleep(Duration::from_secs(30)).await;
        });
        let mut got = vec![0u8; n];
        c.read_exact(&mut got).await.expect("read");
        let took = t.elapsed().as_secs_f64();
        assert!(got == data);
        // The first burst (≤ 2000 bytes at this rate) is free; the rest goes at `rate`.
        let expected = (n as f64 - Bucket::burst(rate)) / rate as f64;
        assert!(took >= expected * 0.95, "{took:.3} s < {expected:.3} s");
        assert!(
            took <= expected * 1.5 + 0.3,
            "{took:.3} s for {expected:.3} s"
        );
        // The other direction is not capped.
        let t = Instant::now();
        c.write_all(&pattern(1 << 20)).await.expect("write up");
        assert!(t.elapsed() < Duration::from_secs(3));
    }

    #[tokio::test]
    async fn stall_stops_bytes_keeps_the_socket_and_buffers_boundedly() {
        let (addr, mut accepted) = upstream().await;
        let opts = ProxyOptions::default();
        let bound = (opts.stall_limit + opts.chunk) as u64;
        let stall_limit = opts.stall_limit as u64;
        let p = FaultProxy::start_with(addr, opts).await.expect("proxy");
        p.stall(Direction::Down);
        let mut c = TcpStream::connect(p.addr()).await.expect("connect");
        let s = accepted.recv().await.expect("upstream connection");
        let n = 8 << 20;
        let data = pattern(n);
        let send = data.clone();
        let (mut sr, mut sw) = s.into_split();
        let writer = tokio::spawn(async move { sw.write_all(&send).await.map(|_| sw) });
        // The server writes into the path until its socket buffers are full.
        p.wait_for("the stall buffer to fill", WAIT, |h| {
            h.received(Direction::Down) >= stall_limit
        })
        .await;
        let mut one = [0u8; 1];
        let r = tokio::time::timeout(Duration::from_millis(300), c.read(&mut one)).await;
        assert!(r.is_err(), "a stalled direction delivered {r:?}");
        assert_eq!(p.forwarded(Direction::Down), 0);
        assert!(
            p.received(Direction::Down) <= bound,
            "the proxy buffered {} bytes",
            p.received(Direction::Down)
        );
        assert!(
            !writer.is_finished(),
            "8 MiB fit somewhere: nothing pushed back"
        );
        // Half-open: the other direction still flows.
        c.write_all(b"up").await.expect("write up");
        let mut up = [0u8; 2];
        tokio::time::timeout(WAIT, sr.read_exact(&mut up))
            .await
            .expect("in time")
            .expect("read up");
        assert_eq!(&up, b"up");
        // Unstalled: everything, in order.
        p.unstall(Direction::Down);
        let mut got = vec![0u8; n];
        tokio::time::timeout(WAIT, c.read_exact(&mut got))
            .await
            .expect("in time")
            .expect("read");
        assert!(got == data);
        drop(writer.await.expect("join").expect("write"));
    }

    #[tokio::test]
    async fn reset_gives_econnreset_to_the_client_and_the_server() {
        let (addr, mut accepted) = upstream().await;
        let p = FaultProxy::start(addr).await.expect("proxy");
        let mut c = TcpStream::connect(p.addr()).await.expect("connect");
        let mut s = accepted.recv().await.expect("upstream connection");
        s.write_all(b"hi").await.expect("write");
        let mut buf = [0u8; 2];
        c.read_exact(&mut buf).await.expect("read");
        assert_eq!(p.reset(), 1);
        let e = tokio::time::timeout(WAIT, c.read(&mut buf))
            .await
            .expect("in time")
            .expect_err("reset");
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}");
        let e = tokio::time::timeout(WAIT, s.read(&mut buf))
            .await
            .expect("in time")
            .expect_err("reset upstream");
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}");
        p.wait_for("the connection to end", WAIT, |h| h.open() == 0)
            .await;
        assert_eq!(p.resets(), 1);
    }

    #[tokio::test]
    async fn cut_after_forwards_exactly_n_bytes_then_closes() {
        let (addr, mut accepted) = upstream().await;
        let p = FaultProxy::start(addr).await.expect("proxy");
        let mut c = TcpStream::connect(p.addr()).await.expect("connect");
        let mut s = accepted.recv().await.expect("upstream connection");
        s.write_all(b"0123").await.expect("write");
        let mut buf = [0u8; 4];
        c.read_exact(&mut buf).await.expect("read");
        assert_eq!(p.cut_after(Direction::Down, 10), 1);
        s.write_all(&pattern(1000)).await.expect("write");
        let mut got = Vec::new();
        tokio::time::timeout(WAIT, c.read_to_end(&mut got))
            .await
            .expect("in time")
            .expect("EOF, not an error");
        assert_eq!(got, pattern(10));
        // The server's side is closed too.
        let mut rest = Vec::new();
        let r = tokio::time::timeout(WAIT, s.read_to_end(&mut rest))
            .await
            .expect("in time");
        assert!(matches!(r, Ok(0)) || r.is_err(), "{r:?}");
        p.wait_for("the connection to end", WAIT, |h| h.open() == 0)
            .await;
        assert_eq!(p.forwarded(Direction::Down), 14);
    }

    #[tokio::test]
    async fn frozen_connections_stay_silent_while_new_ones_flow() {
        let p = FaultProxy::start(echo().await).await.expect("proxy");
        let mut old = TcpStream::connect(p.addr()).await.expect("connect");
        p.wait_for("the connection", WAIT, |h| h.open() == 1).await;
        assert_eq!(p.freeze_current(), 1);
        old.write_all(b"old").await.expect("write");
        let mut new = TcpStream::connect(p.addr()).await.expect("connect");
        new.write_all(b"new").await.expect("write");
        let mut buf = [0u8; 3];
        tokio::time::timeout(WAIT, new.read_exact(&mut buf))
            .await
            .expect("in time")
            .expect("read");
        assert_eq!(&buf, b"new");
        let r = tokio::time::timeout(Duration::from_millis(300), old.read(&mut buf)).await;
        assert!(r.is_err(), "a frozen connection delivered {r:?}");
    }

    #[tokio::test]
    async fn a_peer_reset_does_not_cross_a_stall() {
        let (addr, mut accepted) = upstream().await;
        let p = FaultProxy::start(addr).await.expect("proxy");
        let c = TcpStream::connect(p.addr()).await.expect("connect");
        let mut s = accepted.recv().await.expect("upstream connection");
        p.stall(Direction::Up);
        c.set_zero_linger().expect("linger");
        drop(c);
        let mut buf = [0u8; 1];
        let r = tokio::time::timeout(Duration::from_millis(300), s.read(&mut buf)).await;
        assert!(r.is_err(), "the reset crossed the stall: {r:?}");
        p.unstall(Direction::Up);
        let e = tokio::time::timeout(WAIT, s.read(&mut buf))
            .await
            .expect("in time")
            .expect_err("reset");
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}");
    }

    #[tokio::test]
    async fn blackhole_silences_both_ways_and_holds_new_connections() {
        let (addr, mut accepted) = upstream().await;
        let p = FaultProxy::start(addr).await.expect("proxy");
        let mut c = TcpStream::connect(p.addr()).await.expect("connect");
        let mut s = accepted.recv().await.expect("upstream connection");
        p.blackhole();
        c.write_all(b"up").await.expect("write");
        s.write_all(b"down").await.expect("write");
        let mut c2 = TcpStream::connect(p.addr()).await.expect("a held connect");
        c2.write_all(b"new").await.expect("write");
        p.wait_for("both chunks and the connection", WAIT, |h| {
            h.received(Direction::Up) >= 2 && h.received(Direction::Down) >= 4 && h.accepted() == 2
        })
        .await;
        let silent = tokio::time::timeout(Duration::from_millis(300), accepted.recv()).await;
        assert!(silent.is_err(), "a held connection reached the server");
        assert_eq!(p.forwarded(Direction::Up) + p.forwarded(Direction::Down), 0);
        p.lift_blackhole();
        let mut buf = [0u8; 4];
        tokio::time::timeout(WAIT, c.read_exact(&mut buf))
            .await
            .expect("in time")
            .expect("read");
        assert_eq!(&buf, b"down");
        let mut up = [0u8; 2];
        s.read_exact(&mut up).await.expect("read");
        assert_eq!(&up, b"up");
        let mut s2 = tokio::time::timeout(WAIT, accepted.recv())
            .await
            .expect("in time")
            .expect("the held connection");
        let mut three = [0u8; 3];
        s2.read_exact(&mut three).await.expect("read");
        assert_eq!(&three, b"new");
    }
}
