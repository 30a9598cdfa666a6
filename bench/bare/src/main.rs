//! The limit for `herald bench`: a bare tokio fan-out server that does nothing but fan out, built
//! the way the dependency notes describe the fastest tokio design — each broadcast frame built
//! once and shared (`Bytes`), every frame queued for a socket sent with one vectored write, one task
//! per connection that both reads and writes, reads into a per-thread scratch buffer (only an
//! incomplete frame is kept by the connection). No auth, history, limits, heartbeats or metrics:
//! what Herald adds on top of this is what a comparison with it measures.
//!
//! It speaks the subset of Herald's protocol v1 the benchmark uses (`connected`, `subscribe`,
//! `publish`, `message`), like the Node `ws` and uWebSockets.js baselines.
//!
//!   herald-bench-bare [ADDR]   (default 127.0.0.1:8400; `PORT` sets the port)

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::io::{self, IoSlice};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use bytes::Bytes;
use serde_json::{Value, json};
use sha1::{Digest, Sha1};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

/// Frames a connection may have queued before it is dropped (a slow consumer).
const MAX_QUEUED: usize = 4096;
/// Frames per vectored write.
const MAX_BATCH: usize = 256;
/// Largest client message.
const MAX_MESSAGE: usize = 64 * 1024;
const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

thread_local! {
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(vec![0; 64 * 1024]);
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What the fan-out hands a connection: frames to write.
#[derive(Default)]
struct Conn {
    queue: Mutex<Queue>,
    ready: Notify,
}

#[derive(Default)]
struct Queue {
    frames: VecDeque<Bytes>,
    dropped: bool,
}

impl Conn {
    fn push(&self, frame: Bytes) {
        let mut q = lock(&self.queue);
        if q.frames.len() >= MAX_QUEUED {
            q.dropped = true;
        } else {
            q.frames.push_back(frame);
        }
        drop(q);
        self.ready.notify_one();
    }
}

#[derive(Default)]
struct Room {
    offset: u64,
    conns: Vec<Arc<Conn>>,
}

#[derive(Default)]
struct Hub {
    rooms: Mutex<HashMap<String, Room>>,
}

/// A server frame (FIN, unmasked) around `payload`.
fn frame(opcode: u8, payload: &[u8]) -> Bytes {
    let mut f = Vec::with_capacity(payload.len() + 10);
    f.push(0x80 | opcode);
    match payload.len() {
        n if n < 126 => f.push(n as u8),
        n if n <= 0xffff => {
            f.push(126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(payload);
    f.into()
}

fn text(v: &Value) -> Bytes {
    frame(0x1, v.to_string().as_bytes())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// One client frame: opcode and unmasked payload, or `None` when `buf` holds only part of it.
/// Returns the bytes consumed.
fn parse(buf: &[u8]) -> io::Result<Option<(u8, Vec<u8>, usize)>> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let opcode = buf[0] & 0x0f;
    let (len, mut at) = match buf[1] & 0x7f {
        126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4),
        127 if buf.len() >= 10 => {
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            (u64::from_be_bytes(b) as usize, 10)
        }
        126 | 127 => return Ok(None),
        n => (n as usize, 2),
    };
    if len > MAX_MESSAGE || buf[1] & 0x80 == 0 {
        return Err(io::Error::other("too large or unmasked"));
    }
    if buf.len() < at + 4 + len {
        return Ok(None);
    }
    let mask = [buf[at], buf[at + 1], buf[at + 2], buf[at + 3]];
    at += 4;
    let payload = buf[at..at + len]
        .iter()
        .enumerate()
        .map(|(i, b)| b ^ mask[i % 4])
        .collect();
    Ok(Some((opcode, payload, at + len)))
}

/// Handle one text message; replies go on the connection's own queue.
fn command(hub: &Hub, me: &Arc<Conn>, subs: &mut Vec<String>, raw: &[u8]) {
    let Ok(msg) = serde_json::from_slice::<Value>(raw) else {
        me.push(text(
            &json!({"type": "error", "payload": {"code": "malformed"}}),
        ));
        return;
    };
    let (id, p) = (&msg["id"], &msg["payload"]);
    let Some(channel) = p["channel"].as_str() else {
        me.push(text(
            &json!({"type": "error", "id": id, "payload": {"code": "bad_request"}}),
        ));
        return;
    };
    match msg["type"].as_str() {
        Some("subscribe") => {
            let offset = {
                let mut rooms = lock(&hub.rooms);
                let room = rooms.entry(channel.to_owned()).or_default();
                room.conns.push(me.clone());
                room.offset
            };
            subs.push(channel.to_owned());
            me.push(text(&json!({"type": "reply", "id": id,
                "payload": {"channel": channel, "offset": offset, "epoch": "bare"}})));
        }
        Some("publish") => {
            let mut rooms = lock(&hub.rooms);
            let room = rooms.entry(channel.to_owned()).or_default();
            room.offset += 1;
            let offset = room.offset;
            // Built once, shared by every subscriber.
            let f = text(&json!({"type": "message", "payload": {"channel": channel,
                "offset": offset, "epoch": "bare", "time": now_ms(), "data": p["data"]}}));
            for c in &room.conns {
                c.push(f.clone());
            }
            drop(rooms);
            me.push(text(&json!({"type": "reply", "id": id,
                "payload": {"offset": offset, "epoch": "bare"}})));
        }
        _ => me.push(text(&json!({"type": "error", "id": id,
            "payload": {"code": "unknown_type"}}))),
    }
}

/// Write every frame with as few vectored writes as the socket allows (the same loop as
/// herald-server's writer: the baseline shares no code with Herald on purpose).
async fn write_all(stream: &mut TcpStream, frames: &[Bytes]) -> io::Result<()> {
    let (mut idx, mut off) = (0, 0);
    let mut slices = Vec::with_capacity(frames.len());
    while idx < frames.len() {
        slices.clear();
        slices.push(IoSlice::new(&frames[idx][off..]));
        slices.extend(frames[idx + 1..].iter().map(|b| IoSlice::new(b)));
        let mut n = stream.write_vectored(&slices).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        while n > 0 && idx < frames.len() {
            let left = frames[idx].len() - off;
            if n >= left {
                n -= left;
                idx += 1;
                off = 0;
            } else {
                off += n;
                n = 0;
            }
        }
    }
    Ok(())
}

async fn handshake(stream: &mut TcpStream) -> io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 512];
    let end = loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 || head.len() > 8192 {
            return Err(io::Error::other("no handshake"));
        }
        head.extend_from_slice(&chunk[..n]);
        if let Some(p) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break p;
        }
    };
    let head = String::from_utf8_lossy(&head[..end]);
    let header = |name: &str| {
        head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    };
    let key = header("sec-websocket-key").ok_or_else(|| io::Error::other("no key"))?;
    let accept = base64::engine::general_purpose::STANDARD
        .encode(Sha1::digest(format!("{key}{GUID}").as_bytes()));
    let protocol = header("sec-websocket-protocol")
        .and_then(|p| p.split(',').next().map(|s| s.trim().to_owned()))
        .map(|p| format!("Sec-WebSocket-Protocol: {p}\r\n"))
        .unwrap_or_default();
    let resp = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\n{protocol}\r\n"
    );
    stream.write_all(resp.as_bytes()).await
}

/// Outcome of reading what the socket has.
enum Read {
    More,
    Closed,
}

/// Read what is there into the thread's scratch buffer and handle every complete frame.
fn read_ready(
    stream: &TcpStream,
    hub: &Hub,
    me: &Arc<Conn>,
    subs: &mut Vec<String>,
    partial: &mut Vec<u8>,
) -> io::Result<Read> {
    SCRATCH.with(|s| {
        let mut s = s.borrow_mut();
        let n = match stream.try_read(&mut s[..]) {
            Ok(0) => return Ok(Read::Closed),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Read::More),
            Err(e) => return Err(e),
        };
        let joined;
        let mut buf: &[u8] = if partial.is_empty() {
            &s[..n]
        } else {
            partial.extend_from_slice(&s[..n]);
            joined = std::mem::take(partial);
            &joined
        };
        while let Some((opcode, payload, used)) = parse(buf)? {
            buf = &buf[used..];
            match opcode {
                0x1 => command(hub, me, subs, &payload),
                0x8 => {
                    me.push(frame(0x8, &payload[..payload.len().min(2)]));
                    return Ok(Read::Closed);
                }
                0x9 => me.push(frame(0xA, &payload)),
                _ => {}
            }
        }
        partial.extend_from_slice(buf);
        Ok(Read::More)
    })
}

async fn serve(mut stream: TcpStream, hub: Arc<Hub>, id: u64) -> io::Result<()> {
    handshake(&mut stream).await?;
    let me = Arc::new(Conn::default());
    me.push(text(
        &json!({"type": "connected", "payload": {"client_id": format!("bare-{id}"),
        "ping_interval_ms": 25000, "pong_timeout_ms": 10000}}),
    ));
    let mut subs = Vec::new();
    let mut partial = Vec::new();
    let mut batch: Vec<Bytes> = Vec::new();
    let mut closing = false;
    let result = loop {
        {
            let mut q = lock(&me.queue);
            if q.dropped {
                break Ok(());
            }
            let n = q.frames.len().min(MAX_BATCH);
            batch.extend(q.frames.drain(..n));
        }
        if !batch.is_empty() {
            if let Err(e) = write_all(&mut stream, &batch).await {
                break Err(e);
            }
            batch.clear();
            continue;
        }
        if closing {
            break Ok(());
        }
        tokio::select! {
            r = stream.readable() => {
                if let Err(e) = r {
                    break Err(e);
                }
                match read_ready(&stream, &hub, &me, &mut subs, &mut partial) {
                    // Let the subscribers' tasks write before reading more: a publisher in a
                    // closed loop would otherwise outrun them until their queues overflow.
                    Ok(Read::More) => tokio::task::yield_now().await,
                    Ok(Read::Closed) => closing = true,
                    Err(e) => break Err(e),
                }
            }
            _ = me.ready.notified() => {}
        }
    };
    let mut rooms = lock(&hub.rooms);
    for s in subs {
        if let Some(r) = rooms.get_mut(&s) {
            r.conns.retain(|c| !Arc::ptr_eq(c, &me));
        }
    }
    result
}

#[tokio::main]
async fn main() -> io::Result<()> {
    let addr = std::env::args().nth(1).unwrap_or_else(|| {
        format!(
            "127.0.0.1:{}",
            std::env::var("PORT").unwrap_or_else(|_| "8400".into())
        )
    });
    let listener = TcpListener::bind(&addr).await?;
    // The bound address (port 0 picks a free one): the first line of stdout.
    println!(
        "bare fan-out baseline listening on ws://{}/ws",
        listener.local_addr()?
    );
    let hub = Arc::new(Hub::default());
    let mut id = 0u64;
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        id += 1;
        tokio::spawn(serve(stream, hub.clone(), id));
    }
}
