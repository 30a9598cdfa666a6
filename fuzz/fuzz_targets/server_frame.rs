//! The client side of the wire: parsing server frames (`frame::parse_unmasked`, used by the
//! `herald bench` load generator on bytes from the server) and decoding their envelopes
//! (`server::decode_server_frame`) into typed messages (`ServerMessage::decode`, used by the Rust
//! client), plus the frame builders.
//!
//! Input: `[selector, bytes...]`. Invariants: no panic (overflow checks are on); a parsed frame's
//! payload lies inside the input; building a frame around any payload and parsing it back gives
//! the same payload and opcode; a close frame's payload is at most 125 bytes with a UTF-8 reason.
#![no_main]

use herald_proto::frame::{self, OpCode};
use herald_proto::server::decode_server_frame;
use herald_proto::{Format, ServerMessage};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let Some((&sel, bytes)) = input.split_first() else {
        return;
    };
    let format = if sel & 1 == 0 {
        Format::Json
    } else {
        Format::Msgpack
    };

    if let Some((payload, _op)) = frame::parse_unmasked(bytes) {
        assert!(payload.len() <= bytes.len());
        let _ = decode_server_frame(format, payload);
        let _ = ServerMessage::decode(format, payload);
    }
    let _ = decode_server_frame(format, bytes);
    let _ = ServerMessage::decode(format, bytes);

    let op = [
        OpCode::Text,
        OpCode::Binary,
        OpCode::Close,
        OpCode::Ping,
        OpCode::Pong,
    ][usize::from(sel >> 1) % 5];
    let built = frame::with_payload(op, bytes);
    assert_eq!(frame::parse_unmasked(&built), Some((bytes, op)));

    let reason = String::from_utf8_lossy(bytes);
    let code = u16::from_le_bytes([sel, bytes.first().copied().unwrap_or(0)]);
    let close = frame::close(code, &reason);
    let (payload, op) = frame::parse_unmasked(&close).expect("close frame parses");
    assert_eq!(op, OpCode::Close);
    assert!(payload.len() <= 125, "close payload of {}", payload.len());
    assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), code);
    let r = std::str::from_utf8(&payload[2..]).expect("close reason is UTF-8");
    assert!(reason.starts_with(r));
});
