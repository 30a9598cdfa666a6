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
pub mod netns;
mod pace;
use pace::{Bucket, Rng};

#[cfg(test)]
mod tests;
