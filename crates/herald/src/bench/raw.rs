//! A minimal WebSocket client for load generation: one socket, one read buffer, frames parsed in
//! place. It does only what the benchmark needs (masked text frames out, unmasked frames in,
//! pong replies), so one load-generator core can drive thousands of connections. The same
//! connection can instead read a one-way SSE feed (`/http/subscribe`, docs/protocol.md §10.6):
//! a chunked `text/event-stream` answer whose `message` events it returns.

use std::io;
use std::net::{IpAddr, SocketAddr};

use herald_proto::frame::{self, OpCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

/// The read side: server bytes parsed into frames in place.
pub struct RawReader {
    read: OwnedReadHalf,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// The code of the server's close frame, once one was read.
    pub close_code: Option<u16>,
    /// Reading an SSE feed instead of WebSocket frames.
    sse: Option<Sse>,
    /// Bytes read from the socket (handshake included): what the server put on the wire.
    pub wire_bytes: u64,
    /// The last compressed (permessage-deflate) message, inflated.
    inflated: Vec<u8>,
}

/// The state of a chunked SSE answer: events decoded out of the HTTP chunks.
struct Sse {
    chunk: Chunk,
    events: Vec<u8>,
    at: usize,
}

#[derive(Clone, Copy)]
enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    /// This many bytes of chunk data are still to come.
    Data(usize),
    /// The CRLF after a chunk's data.
    End,
    /// The last (empty) chunk was read.
    Done,
}

/// One benchmark connection.
pub struct RawConn {
    reader: RawReader,
    write: OwnedWriteHalf,
}

enum Frame {
    /// A text or binary frame's payload (offset, length) and whether it is compressed (RSV1).
    Data(usize, usize, bool),
    Ping(usize, usize),
    Close(usize, usize),
    Other,
}

/// How a connection that was left unread ended, seen by reading it to the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The server sent a close frame (with this code, if any).
    CloseFrame(Option<u16>),
    /// The server closed the TCP connection without a close frame (FIN).
    Eof,
    /// The connection was reset.
    Reset,
    /// Still open: nothing more arrived before the timeout.
    Open,
}

fn masked(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(payload.len() + 14);
    f.push(0x80 | opcode);
    let len = payload.len();
    if len < 126 {
        f.push(0x80 | len as u8);
    } else if len <= u16::MAX as usize {
        f.push(0x80 | 126);
        f.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        f.push(0x80 | 127);
        f.extend_from_slice(&(len as u64).to_be_bytes());
    }
    let mask: [u8; 4] = rand::random();
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
    f
}

/// Encode a masked client text frame.
pub fn text_frame(text: &[u8]) -> Vec<u8> {
    masked(1, text)
}

impl RawReader {
    async fn fill(&mut self) -> io::Result<bool> {
        if self.start > 0 && (self.end == self.buf.len() || self.start == self.end) {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.buf.len() {
            let n = self.buf.len() * 2;
            self.buf.resize(n, 0);
        }
        let n = self.read.read(&mut self.buf[self.end..]).await?;
        self.end += n;
        self.wire_bytes += n as u64;
        Ok(n > 0)
    }

    async fn frame(&mut self) -> io::Result<Option<Frame>> {
        loop {
            let base = self.buf.as_ptr() as usize;
            let compressed = self.buf[self.start..self.end]
                .first()
                .is_some_and(|b| b & 0x40 != 0);
            let parsed = frame::parse_unmasked(&self.buf[self.start..self.end])
                .map(|(p, op)| (p.as_ptr() as usize - base, p.len(), op));
            match parsed {
                Some((at, len, op)) => {
                    self.start = at + len;
                    return Ok(Some(match op {
                        OpCode::Text | OpCode::Binary => Frame::Data(at, len, compressed),
                        OpCode::Ping => Frame::Ping(at, len),
                        OpCode::Close => {
                            let p = &self.buf[at..at + len];
                            if p.len() >= 2 {
                                self.close_code = Some(u16::from_be_bytes([p[0], p[1]]));
                            }
                            Frame::Close(at, len)
                        }
                        _ => Frame::Other,
                    }));
                }
                None => {
                    if !self.fill().await? {
                        return Ok(None);
                    }
                }
            }
        }
    }

    /// Decode what is buffered out of the HTTP chunks into `events`; false when more bytes are
    /// needed, or the body ended (`Chunk::Done`).
    fn dechunk(&mut self) -> bool {
        let Some(sse) = self.sse.as_mut() else {
            return false;
        };
        let mut progressed = false;
        loop {
            let avail = &self.buf[self.start..self.end];
            match sse.chunk {
                Chunk::Done => return progressed,
                Chunk::Size => {
                    let Some(nl) = memchr::memmem::find(avail, b"\r\n") else {
                        return progressed;
                    };
                    let line = std::str::from_utf8(&avail[..nl]).unwrap_or("");
                    let hex = line.split(';').next().unwrap_or("").trim();
                    let n = usize::from_str_radix(hex, 16).unwrap_or(0);
                    self.start += nl + 2;
                    sse.chunk = if n == 0 { Chunk::Done } else { Chunk::Data(n) };
                }
                Chunk::Data(left) => {
                    if avail.is_empty() {
                        return progressed;
                    }
                    let take = left.min(avail.len());
                    sse.events.extend_from_slice(&avail[..take]);
                    self.start += take;
                    progressed = true;
                    sse.chunk = if take == left {
                        Chunk::End
                    } else {
                        Chunk::Data(left - take)
                    };
                }
                Chunk::End => {
                    if avail.len() < 2 {
                        return progressed;
                    }
                    self.start += 2;
                    sse.chunk = Chunk::Size;
                }
            }
        }
    }

    /// Where the next SSE event's name and data are in the decoded events; `None` at the end.
    async fn event_at(
        &mut self,
    ) -> io::Result<Option<(std::ops::Range<usize>, std::ops::Range<usize>)>> {
        loop {
            let found = self.sse.as_mut().and_then(|sse| {
                if sse.at > 64 * 1024 {
                    sse.events.drain(..sse.at);
                    sse.at = 0;
                }
                let pos = memchr::memmem::find(&sse.events[sse.at..], b"\n\n")?;
                let block = sse.at..sse.at + pos;
                sse.at += pos + 2;
                Some((block, &sse.events))
            });
            if let Some((block, events)) = found {
                let (mut name, mut data) = (0..0, 0..0);
                let mut line_start = block.start;
                for line in events[block.clone()].split(|&b| b == b'\n') {
                    let at = line_start;
                    line_start += line.len() + 1;
                    if line.starts_with(b"event: ") {
                        name = at + 7..at + line.len();
                    } else if line.starts_with(b"data: ") {
                        data = at + 6..at + line.len();
                    }
                }
                if data.is_empty() {
                    continue; // a comment (keepalive)
                }
                return Ok(Some((name, data)));
            }
            if self.dechunk() {
                continue;
            }
            if matches!(self.sse.as_ref().map(|s| s.chunk), Some(Chunk::Done)) {
                return Ok(None);
            }
            if !self.fill().await? {
                return Ok(None);
            }
        }
    }

    /// The next SSE event as (name, data; an empty name is `message`); `None` at the end.
    pub async fn event(&mut self) -> io::Result<Option<(&[u8], &[u8])>> {
        let Some((name, data)) = self.event_at().await? else {
            return Ok(None);
        };
        Ok(self
            .sse
            .as_ref()
            .map(|s| (&s.events[name], &s.events[data])))
    }

    /// The next text/binary payload (pings and pongs skipped), or on an SSE feed the data of
    /// the next `message` event. `None` on close/EOF.
    pub async fn next(&mut self) -> io::Result<Option<&[u8]>> {
        if self.sse.is_some() {
            return self.next_message().await;
        }
        loop {
            match self.frame().await? {
                Some(Frame::Data(at, len, false)) => return Ok(Some(&self.buf[at..at + len])),
                Some(Frame::Data(at, len, true)) => {
                    self.inflated =
                        herald_proto::deflate::inflate(&self.buf[at..at + len], 1 << 26).map_err(
                            |e| io::Error::other(format!("bad compressed message: {e}")),
                        )?;
                    return Ok(Some(&self.inflated));
                }
                Some(Frame::Close(..)) | None => return Ok(None),
                Some(_) => {}
            }
        }
    }
}

impl RawReader {
    /// The data of the next `message` event of an SSE feed (`None` at a `disconnect` or the end).
    async fn next_message(&mut self) -> io::Result<Option<&[u8]>> {
        loop {
            let Some((name, data)) = self.event_at().await? else {
                return Ok(None);
            };
            let Some(sse) = self.sse.as_ref() else {
                return Ok(None);
            };
            match &sse.events[name] {
                b"" | b"message" => return Ok(self.sse.as_ref().map(|s| &s.events[data])),
                b"disconnect" => {
                    self.close_code =
                        number_after(&sse.events[data], b"\"code\":").map(|c| c as u16);
                    return Ok(None);
                }
                _ => continue,
            }
        }
    }
}

async fn tcp(
    addr: SocketAddr,
    local: Option<IpAddr>,
    recv_buffer: Option<u32>,
) -> io::Result<tokio::net::TcpStream> {
    let sock = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(size) = recv_buffer {
        sock.set_recv_buffer_size(size)?;
    }
    if let Some(ip) = local {
        sock.bind(SocketAddr::new(ip, 0))?;
    }
    let stream = sock.connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

impl RawConn {
    /// Open a one-way SSE feed: `GET path` (e.g. `/http/subscribe?channel=c`), optionally with a
    /// token, expecting `200` and a chunked `text/event-stream`.
    pub async fn connect_sse(
        addr: SocketAddr,
        local: Option<IpAddr>,
        path: &str,
        token: Option<&str>,
        recv_buffer: Option<u32>,
    ) -> io::Result<RawConn> {
        let stream = tcp(addr, local, recv_buffer).await?;
        let auth = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n{auth}\r\n"
        );
        let (read, mut write) = stream.into_split();
        write.write_all(req.as_bytes()).await?;
        let mut reader = RawReader {
            read,
            buf: vec![0; 16 * 1024],
            start: 0,
            end: 0,
            close_code: None,
            sse: None,
            wire_bytes: 0,
            inflated: Vec::new(),
        };
        loop {
            if let Some(pos) = memchr::memmem::find(&reader.buf[..reader.end], b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&reader.buf[..pos]).to_ascii_lowercase();
                if !head.starts_with("http/1.1 200") || !head.contains("transfer-encoding: chunked")
                {
                    let first = head.lines().next().unwrap_or("").to_owned();
                    return Err(io::Error::other(format!("SSE feed refused: {first}")));
                }
                reader.start = pos + 4;
                break;
            }
            if !reader.fill().await? {
                return Err(io::Error::other("closed during the SSE request"));
            }
        }
        reader.sse = Some(Sse {
            chunk: Chunk::Size,
            events: Vec::new(),
            at: 0,
        });
        Ok(RawConn { reader, write })
    }

    /// The next SSE event of a feed as (name, data).
    pub async fn event(&mut self) -> io::Result<Option<(&[u8], &[u8])>> {
        self.reader.event().await
    }

    /// Connect from `local` (any port) to `addr`, upgrade on `path`, optionally with a token,
    /// and with `SO_RCVBUF` set to `recv_buffer` before connecting when given (a small receive
    /// window makes a client that stops reading push back on the server at once).
    pub async fn connect_with(
        addr: SocketAddr,
        local: Option<IpAddr>,
        path: &str,
        token: Option<&str>,
        recv_buffer: Option<u32>,
        compress: bool,
    ) -> io::Result<RawConn> {
        let stream = tcp(addr, local, recv_buffer).await?;
        let auth = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        // What browsers offer.
        let deflate = if compress {
            "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
        } else {
            ""
        };
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Protocol: herald.v1.json\r\n{auth}{deflate}\r\n"
        );
        let (read, mut write) = stream.into_split();
        write.write_all(req.as_bytes()).await?;
        let mut reader = RawReader {
            read,
            buf: vec![0; 16 * 1024],
            start: 0,
            end: 0,
            close_code: None,
            sse: None,
            wire_bytes: 0,
            inflated: Vec::new(),
        };
        loop {
            if let Some(pos) = reader.buf[..reader.end]
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
            {
                if !reader.buf.starts_with(b"HTTP/1.1 101") {
                    let head = String::from_utf8_lossy(&reader.buf[..pos]);
                    let first = head.lines().next().unwrap_or("").to_owned();
                    return Err(io::Error::other(format!("upgrade refused: {first}")));
                }
                reader.start = pos + 4;
                break;
            }
            if !reader.fill().await? {
                return Err(io::Error::other("closed during the handshake"));
            }
        }
        Ok(RawConn { reader, write })
    }

    /// Bytes read from the socket so far.
    pub fn wire_bytes(&self) -> u64 {
        self.reader.wire_bytes
    }

    /// Separate the read and write sides (the reader then ignores pings: the writer must keep
    /// sending for the server to see the connection alive).
    pub fn into_split(self) -> (RawReader, OwnedWriteHalf) {
        (self.reader, self.write)
    }

    /// Send a text message.
    pub async fn send_text(&mut self, text: &[u8]) -> io::Result<()> {
        self.write.write_all(&masked(1, text)).await
    }

    /// The next text/binary payload (pings are answered, pongs skipped), or on an SSE feed the
    /// data of the next `message` event. `None` on close/EOF.
    pub async fn next(&mut self) -> io::Result<Option<&[u8]>> {
        if self.reader.sse.is_some() {
            return self.reader.next_message().await;
        }
        loop {
            match self.reader.frame().await? {
                Some(Frame::Data(at, len, false)) => {
                    return Ok(Some(&self.reader.buf[at..at + len]));
                }
                Some(Frame::Data(at, len, true)) => {
                    let r = &mut self.reader;
                    r.inflated = herald_proto::deflate::inflate(&r.buf[at..at + len], 1 << 26)
                        .map_err(|e| io::Error::other(format!("bad compressed message: {e}")))?;
                    return Ok(Some(&self.reader.inflated));
                }
                Some(Frame::Ping(at, len)) => {
                    let pong = masked(0xA, &self.reader.buf[at..at + len]);
                    self.write.write_all(&pong).await?;
                }
                Some(Frame::Close(..)) | None => return Ok(None),
                Some(Frame::Other) => {}
            }
        }
    }
}

impl RawConn {
    /// Read (and discard) everything the server still sends until it closes the connection, or
    /// until nothing arrives for `idle`: how a connection that was left unread ended.
    pub async fn read_to_end(mut self, idle: std::time::Duration) -> End {
        if self.reader.sse.is_some() {
            loop {
                match tokio::time::timeout(idle, self.reader.next_message()).await {
                    Err(_) => return End::Open,
                    Ok(Ok(Some(_))) => {}
                    Ok(Ok(None)) => {
                        return match self.reader.close_code {
                            Some(code) => End::CloseFrame(Some(code)),
                            None => End::Eof,
                        };
                    }
                    Ok(Err(_)) => return End::Reset,
                }
            }
        }
        loop {
            match tokio::time::timeout(idle, self.reader.frame()).await {
                Err(_) => return End::Open,
                Ok(Ok(None)) => return End::Eof,
                Ok(Ok(Some(Frame::Close(at, len)))) => {
                    let p = &self.reader.buf[at..at + len];
                    let code = (p.len() >= 2).then(|| u16::from_be_bytes([p[0], p[1]]));
                    return End::CloseFrame(code);
                }
                Ok(Ok(Some(_))) => {}
                // Reset (or another read error: the connection is gone either way).
                Ok(Err(_)) => return End::Reset,
            }
        }
    }
}

/// A JSON number after `key` (e.g. `"offset":`) in `text`, without parsing the whole message.
pub fn number_after(text: &[u8], key: &[u8]) -> Option<u64> {
    let at = memchr::memmem::find(text, key)? + key.len();
    let digits = text[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&text[at..at + digits])
        .ok()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_numbers() {
        let m = br#"{"type":"message","payload":{"channel":"c","offset":42,"epoch":"e","data":{"t":1234567}}}"#;
        assert_eq!(number_after(m, b"\"offset\":"), Some(42));
        assert_eq!(number_after(m, b"\"t\":"), Some(1234567));
        assert_eq!(number_after(m, b"\"missing\":"), None);
    }
}
