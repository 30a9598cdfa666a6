//! Server-to-client WebSocket frames (RFC 6455 §5.2), built into one buffer.
//!
//! Server frames are never masked, so a frame's bytes are the same for every recipient: this is
//! what lets a broadcast be encoded once and shared. Client frames are parsed by the transport's
//! WebSocket crate, not here.

use bytes::Bytes;

/// Largest possible header of an unmasked frame.
pub const MAX_HEADER: usize = 10;

/// WebSocket opcodes used by the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpCode {
    /// Text frame.
    Text = 0x1,
    /// Binary frame.
    Binary = 0x2,
    /// Close frame.
    Close = 0x8,
    /// Ping frame.
    Ping = 0x9,
    /// Pong frame.
    Pong = 0xA,
}

/// A buffer with room reserved for the header; write the payload after it, then [`finish`].
pub fn start() -> Vec<u8> {
    let mut buf = Vec::with_capacity(128);
    buf.resize(MAX_HEADER, 0);
    buf
}

/// Write the header in front of the payload and return the whole frame (FIN set, no mask).
pub fn finish(buf: Vec<u8>, opcode: OpCode) -> Bytes {
    finish_with(buf, opcode, false)
}

/// [`finish`], with RSV1 set when `compressed` (a permessage-deflate message, RFC 7692 §6).
pub fn finish_with(mut buf: Vec<u8>, opcode: OpCode, compressed: bool) -> Bytes {
    let len = buf.len() - MAX_HEADER;
    let mut header = [0u8; MAX_HEADER];
    header[0] = 0x80 | if compressed { 0x40 } else { 0 } | opcode as u8;
    let hlen = if len < 126 {
        header[1] = len as u8;
        2
    } else if len <= u16::MAX as usize {
        header[1] = 126;
        header[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        4
    } else {
        header[1] = 127;
        header[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    };
    let begin = MAX_HEADER - hlen;
    buf[begin..MAX_HEADER].copy_from_slice(&header[..hlen]);
    Bytes::from(buf).slice(begin..)
}

/// A permessage-deflate frame: `payload` compressed on its own with a `window_bits` window. The
/// same bytes serve every connection that negotiated a window at least that large.
pub fn deflated(opcode: OpCode, payload: &[u8], window_bits: u8) -> Bytes {
    let mut buf = Vec::with_capacity(MAX_HEADER + payload.len() / 2 + 64);
    buf.resize(MAX_HEADER, 0);
    crate::deflate::compress(payload, window_bits, &mut buf);
    finish_with(buf, opcode, true)
}

/// Whether a frame built here is compressed (RSV1).
pub fn is_deflated(frame: &[u8]) -> bool {
    frame.first().is_some_and(|b| b & 0x40 != 0)
}

/// A frame with the given payload.
pub fn with_payload(opcode: OpCode, payload: &[u8]) -> Bytes {
    let mut buf = start();
    buf.extend_from_slice(payload);
    finish(buf, opcode)
}

/// A close frame with a code and a reason (truncated to fit the 125-byte control frame limit).
pub fn close(code: u16, reason: &str) -> Bytes {
    let mut payload = Vec::with_capacity(2 + reason.len());
    payload.extend_from_slice(&code.to_be_bytes());
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    with_payload(OpCode::Close, &payload)
}

/// Where the payload of a frame built by this module starts (its header length: 2, 4 or 10), or
/// `None` when `frame` is too short to hold a header. Transports that carry messages without
/// WebSocket framing (HTTP streaming, SSE, long-polling) slice the shared frame there.
pub fn payload_offset(frame: &[u8]) -> Option<usize> {
    let start = match frame.get(1)? & 0x7F {
        126 => 4,
        127 => 10,
        _ => 2,
    };
    (frame.len() >= start).then_some(start)
}

/// Parse one complete unmasked frame produced by this module: `(payload, opcode)`.
/// Intended for tests and for checking frames; returns `None` on anything else.
pub fn parse_unmasked(frame: &[u8]) -> Option<(&[u8], OpCode)> {
    let b0 = *frame.first()?;
    let b1 = *frame.get(1)?;
    let opcode = match b0 & 0x0F {
        0x1 => OpCode::Text,
        0x2 => OpCode::Binary,
        0x8 => OpCode::Close,
        0x9 => OpCode::Ping,
        0xA => OpCode::Pong,
        _ => return None,
    };
    let (len, start): (usize, usize) = match b1 & 0x7F {
        126 => (
            u16::from_be_bytes([*frame.get(2)?, *frame.get(3)?]) as usize,
            4,
        ),
        127 => {
            let mut b = [0u8; 8];
            b.copy_from_slice(frame.get(2..10)?);
            (usize::try_from(u64::from_be_bytes(b)).ok()?, 10)
        }
        n => (n as usize, 2),
    };
    Some((frame.get(start..start.checked_add(len)?)?, opcode))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression (found by `fuzz/fuzz_targets/server_frame.rs`): a 64-bit length near
    /// `usize::MAX` overflowed `start + len` (a panic in debug builds).
    #[test]
    fn a_huge_declared_length_is_not_a_frame() {
        let mut f = vec![0x82, 127];
        f.extend_from_slice(&u64::MAX.to_be_bytes());
        f.extend_from_slice(b"abc");
        assert_eq!(parse_unmasked(&f), None);
    }

    #[test]
    fn payload_offset_skips_each_header_length() {
        for len in [0usize, 125, 126, 65535, 65536] {
            let payload = vec![7u8; len];
            let f = with_payload(OpCode::Text, &payload);
            let at = payload_offset(&f).expect("header");
            assert_eq!(&f[at..], &payload[..]);
        }
        assert_eq!(payload_offset(&[0x81]), None);
        assert_eq!(payload_offset(&[0x81, 127, 0]), None);
    }

    #[test]
    fn headers_for_all_length_classes() {
        for len in [0usize, 125, 126, 65535, 65536] {
            let payload = vec![7u8; len];
            let f = with_payload(OpCode::Binary, &payload);
            let (p, op) = parse_unmasked(&f).expect("parse");
            assert_eq!((p.len(), op), (len, OpCode::Binary));
            assert_eq!(f[0], 0x82);
        }
    }

    #[test]
    fn close_reason_is_truncated_on_char_boundary() {
        let f = close(4001, &"é".repeat(100));
        let (p, op) = parse_unmasked(&f).expect("parse");
        assert_eq!(op, OpCode::Close);
        assert!(p.len() <= 125);
        assert!(std::str::from_utf8(&p[2..]).is_ok());
    }
}
