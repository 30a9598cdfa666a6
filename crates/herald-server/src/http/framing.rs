//! How messages travel in HTTP bodies (docs/protocol.md §10.2): server messages as SSE events,
//! newline-delimited JSON, or length-prefixed MessagePack; client commands as one JSON object, a
//! JSON array of them, or length-prefixed MessagePack.

use bytes::{BufMut, Bytes, BytesMut};
use herald_proto::Format;

/// Most commands one request body may carry (the session's command queue holds them all).
pub const MAX_COMMANDS_PER_REQUEST: usize = crate::http_sessions::COMMAND_QUEUE;

/// The framing of a server → client body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// `text/event-stream`: each message an SSE event (`data:` lines, blank line).
    Sse,
    /// `application/x-ndjson`: each JSON message on one line.
    Lines,
    /// MessagePack: each message as a 4-byte big-endian length, then the message.
    Lengths,
}

/// Content type of length-prefixed MessagePack bodies (both directions).
pub const MSGPACK_STREAM: &str = "application/vnd.herald.v1.msgpack-stream";

impl Style {
    /// The streaming style for `format` (SSE carries JSON only).
    pub fn stream(format: Format) -> Style {
        match format {
            Format::Json => Style::Lines,
            Format::Msgpack => Style::Lengths,
        }
    }

    /// The response's `Content-Type`.
    pub fn content_type(self) -> &'static str {
        match self {
            Style::Sse => "text/event-stream; charset=utf-8",
            Style::Lines => "application/x-ndjson; charset=utf-8",
            Style::Lengths => MSGPACK_STREAM,
        }
    }

    /// Append one message.
    pub fn push(self, buf: &mut BytesMut, msg: &[u8]) {
        match self {
            // A line break inside a JSON message can only be whitespace between tokens (in
            // strings it is escaped), so splitting there and letting the reader join the `data:`
            // lines with `\n` yields an equivalent document.
            Style::Sse => {
                for line in msg.split(|&b| b == b'\n' || b == b'\r') {
                    if line.is_empty() && !msg.is_empty() {
                        continue;
                    }
                    buf.put_slice(b"data: ");
                    buf.put_slice(line);
                    buf.put_u8(b'\n');
                }
                buf.put_u8(b'\n');
            }
            Style::Lines => {
                let start = buf.len();
                buf.put_slice(msg);
                for b in &mut buf[start..] {
                    if *b == b'\n' || *b == b'\r' {
                        *b = b' ';
                    }
                }
                buf.put_u8(b'\n');
            }
            Style::Lengths => {
                buf.put_u32(msg.len() as u32);
                buf.put_slice(msg);
            }
        }
    }

    /// What the server sends when it has had nothing to send for a ping interval (proxies close
    /// idle responses; the client learns the stream is alive).
    pub fn keepalive(self) -> Bytes {
        match self {
            Style::Sse => Bytes::from_static(b": ping\n\n"),
            Style::Lines => Bytes::from_static(b"\n"),
            Style::Lengths => Bytes::from_static(&[0, 0, 0, 0]),
        }
    }
}

/// The message inside a frame the engine queued (frames carry a WebSocket header).
pub fn payload(frame: &Bytes) -> Bytes {
    match herald_proto::frame::payload_offset(frame) {
        Some(at) => frame.slice(at..),
        None => Bytes::new(),
    }
}

/// A long-poll batch: a JSON array of messages, or length-prefixed MessagePack messages.
pub fn batch(format: Format, messages: &[Bytes]) -> Bytes {
    let len: usize = messages.iter().map(|m| m.len() + 4).sum();
    let mut buf = BytesMut::with_capacity(len + 2);
    match format {
        Format::Json => {
            buf.put_u8(b'[');
            for (i, m) in messages.iter().enumerate() {
                if i > 0 {
                    buf.put_u8(b',');
                }
                buf.put_slice(m);
            }
            buf.put_u8(b']');
        }
        Format::Msgpack => {
            for m in messages {
                Style::Lengths.push(&mut buf, m);
            }
        }
    }
    buf.freeze()
}

/// Why a request body is not a list of commands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyError {
    /// Not a JSON object or array of objects / not whole length-prefixed frames.
    Malformed(&'static str),
    /// More than [`MAX_COMMANDS_PER_REQUEST`].
    TooMany,
}

/// Split a request body into commands (each still to be decoded). An empty body holds none.
pub fn commands(format: Format, body: &[u8]) -> Result<Vec<Vec<u8>>, BodyError> {
    let out = match format {
        Format::Json => {
            let text = body.trim_ascii();
            if text.is_empty() {
                return Ok(Vec::new());
            }
            if text.first() == Some(&b'[') {
                let items: Vec<&serde_json::value::RawValue> = serde_json::from_slice(text)
                    .map_err(|_| BodyError::Malformed("the body is not a JSON array"))?;
                items.iter().map(|r| r.get().as_bytes().to_vec()).collect()
            } else {
                vec![text.to_vec()]
            }
        }
        Format::Msgpack => {
            let mut rest = body;
            let mut out = Vec::new();
            while !rest.is_empty() {
                let (len, tail) = rest
                    .split_first_chunk::<4>()
                    .ok_or(BodyError::Malformed("a truncated length prefix"))?;
                let len = u32::from_be_bytes(*len) as usize;
                if tail.len() < len {
                    return Err(BodyError::Malformed("a truncated message"));
                }
                let (msg, tail) = tail.split_at(len);
                if !msg.is_empty() {
                    out.push(msg.to_vec());
                }
                rest = tail;
                if out.len() > MAX_COMMANDS_PER_REQUEST {
                    return Err(BodyError::TooMany);
                }
            }
            out
        }
    };
    if out.len() > MAX_COMMANDS_PER_REQUEST {
        return Err(BodyError::TooMany);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(style: Style, msg: &[u8]) -> Vec<u8> {
        let mut b = BytesMut::new();
        style.push(&mut b, msg);
        b.to_vec()
    }

    #[test]
    fn sse_splits_line_breaks_into_data_lines() {
        assert_eq!(framed(Style::Sse, br#"{"a":1}"#), b"data: {\"a\":1}\n\n");
        assert_eq!(
            framed(Style::Sse, b"{\"a\":\r\n1}"),
            b"data: {\"a\":\ndata: 1}\n\n"
        );
    }

    #[test]
    fn lines_never_break_inside_a_message() {
        assert_eq!(framed(Style::Lines, b"{\"a\":\n1}"), b"{\"a\": 1}\n");
    }

    #[test]
    fn lengths_prefix_each_message() {
        assert_eq!(framed(Style::Lengths, b"ab"), b"\0\0\0\x02ab");
    }

    #[test]
    fn payload_strips_the_websocket_header() {
        let f = herald_proto::frame::with_payload(herald_proto::frame::OpCode::Text, b"hello");
        assert_eq!(&payload(&f)[..], b"hello");
    }

    #[test]
    fn json_bodies_hold_an_object_or_an_array() {
        assert_eq!(
            commands(Format::Json, b"  ").expect("commands"),
            Vec::<Vec<u8>>::new()
        );
        assert_eq!(
            commands(Format::Json, br#"{"type":"ping"}"#).expect("commands"),
            vec![br#"{"type":"ping"}"#.to_vec()]
        );
        let two = commands(
            Format::Json,
            br#"[{"type":"ping"}, {"type":"ping","id":"2"}]"#,
        );
        assert_eq!(two.expect("commands").len(), 2);
        assert!(matches!(
            commands(Format::Json, b"[{"),
            Err(BodyError::Malformed(_))
        ));
        let many = format!("[{}]", vec!["{}"; 65].join(","));
        assert_eq!(
            commands(Format::Json, many.as_bytes()),
            Err(BodyError::TooMany)
        );
    }

    #[test]
    fn msgpack_bodies_are_length_prefixed() {
        let body = [&[0, 0, 0, 2][..], b"ab", &[0, 0, 0, 0], &[0, 0, 0, 1], b"c"].concat();
        assert_eq!(
            commands(Format::Msgpack, &body).expect("commands"),
            vec![b"ab".to_vec(), b"c".to_vec()]
        );
        assert!(commands(Format::Msgpack, &[0, 0, 0, 5, 1]).is_err());
        assert!(commands(Format::Msgpack, &[0, 0]).is_err());
    }

    #[test]
    fn batches_are_arrays_or_prefixed() {
        let msgs = [Bytes::from_static(b"{}"), Bytes::from_static(b"[1]")];
        assert_eq!(&batch(Format::Json, &msgs)[..], b"[{},[1]]");
        assert_eq!(&batch(Format::Json, &[])[..], b"[]");
        assert_eq!(&batch(Format::Msgpack, &msgs[..1])[..], b"\0\0\0\x02{}");
    }
}
