//! permessage-deflate (RFC 7692) without I/O: the negotiation of one connection's parameters, and
//! compressing or inflating one message.
//!
//! Herald always runs **without context takeover in both directions**: the server says
//! `server_no_context_takeover` (each message it sends is compressed on its own, so one compressed
//! frame serves every subscriber) and imposes `client_no_context_takeover` (RFC 7692 §7.1.1.1
//! lets a server do so), so no connection keeps a 32 KiB inflate window between messages: a
//! message is inflated with a per-thread decompressor, under a hard output cap. The trade-off:
//! messages are compressed individually (a feed whose messages repeat each other compresses
//! less than with a shared window — delta updates are the answer to that), for zero compression
//! memory per idle connection.

use std::cell::RefCell;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// The bytes a sync flush ends with, removed from every compressed message (RFC 7692 §7.2.1)
/// and appended again before inflating (§7.2.2).
pub const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// The window Herald compresses broadcasts with (and the one it inflates with).
pub const MAX_WINDOW_BITS: u8 = 15;

/// What one connection agreed to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Agreed {
    /// Largest LZ77 window the server may use when it compresses (9..=15: 15 unless the client
    /// asked for less with `server_max_window_bits`).
    pub server_max_window_bits: u8,
}

/// Accept the first acceptable `permessage-deflate` offer among the client's
/// `Sec-WebSocket-Extensions` header values. Returns the agreement and the value of the
/// response's `Sec-WebSocket-Extensions` header; `None` when nothing acceptable was offered
/// (the connection then runs uncompressed).
///
/// An offer is declined when it has an unknown or repeated parameter, a malformed value, or
/// `server_max_window_bits=8` (zlib's raw deflate cannot use a 256-byte window).
pub fn negotiate<'a>(header_values: impl IntoIterator<Item = &'a str>) -> Option<(Agreed, String)> {
    header_values
        .into_iter()
        .flat_map(|v| v.split(','))
        .find_map(offer)
}

fn offer(ext: &str) -> Option<(Agreed, String)> {
    let mut parts = ext.split(';').map(str::trim);
    if !parts.next()?.eq_ignore_ascii_case("permessage-deflate") {
        return None;
    }
    let mut seen: Vec<&str> = Vec::new();
    let mut server_bits = None;
    for p in parts {
        if p.is_empty() {
            return None;
        }
        let (name, value) = match p.split_once('=') {
            Some((n, v)) => (n.trim(), Some(v.trim().trim_matches('"'))),
            None => (p, None),
        };
        if seen.contains(&name) {
            return None;
        }
        seen.push(name);
        match (name, value) {
            ("server_no_context_takeover" | "client_no_context_takeover", None) => {}
            ("server_max_window_bits", Some(v)) => server_bits = Some(window_bits(v)?),
            ("client_max_window_bits", None) => {}
            ("client_max_window_bits", Some(v)) => {
                window_bits(v)?;
            }
            _ => return None,
        }
    }
    if server_bits == Some(8) {
        return None;
    }
    let bits = server_bits.unwrap_or(MAX_WINDOW_BITS);
    let mut response =
        String::from("permessage-deflate; server_no_context_takeover; client_no_context_takeover");
    if let Some(b) = server_bits {
        response.push_str(&format!("; server_max_window_bits={b}"));
    }
    Some((
        Agreed {
            server_max_window_bits: bits,
        },
        response,
    ))
}

/// A window size value: 8..=15, digits only, no leading zero.
fn window_bits(v: &str) -> Option<u8> {
    if v.is_empty() || v.starts_with('0') || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse().ok().filter(|b| (8..=15).contains(b))
}

thread_local! {
    /// One compressor per window size in use on this thread (reset before each message).
    static COMPRESSORS: RefCell<Vec<(u8, Compress)>> = const { RefCell::new(Vec::new()) };
    /// One decompressor per thread (reset before each message: no context takeover).
    static INFLATER: RefCell<Option<Decompress>> = const { RefCell::new(None) };
}

/// Compression level of outgoing messages (zlib's 1 = fastest .. 9 = smallest).
const LEVEL: u32 = 6;

/// Compress one message on its own (no context takeover) with a `window_bits` window (9..=15),
/// appending the compressed payload — the sync flush's tail removed — to `out`.
pub fn compress(input: &[u8], window_bits: u8, out: &mut Vec<u8>) {
    let bits = window_bits.clamp(9, MAX_WINDOW_BITS);
    COMPRESSORS.with(|c| {
        let mut all = c.borrow_mut();
        let at = match all.iter().position(|(b, _)| *b == bits) {
            Some(i) => i,
            None => {
                all.push((
                    bits,
                    Compress::new_with_window_bits(Compression::new(LEVEL), false, bits),
                ));
                all.len() - 1
            }
        };
        let c = &mut all[at].1;
        c.reset();
        let start = out.len();
        out.reserve(input.len() / 2 + 64);
        loop {
            let consumed = c.total_in() as usize;
            let status = c
                .compress_vec(&input[consumed..], out, FlushCompress::Sync)
                .unwrap_or(Status::StreamEnd);
            let done = c.total_in() as usize == input.len() && out.len() < out.capacity();
            if done || status == Status::StreamEnd {
                break;
            }
            out.reserve(out.capacity().max(64));
        }
        if out.len() >= start + TAIL.len() && out.ends_with(&TAIL) {
            out.truncate(out.len() - TAIL.len());
        }
    });
}

/// Why a compressed message could not be inflated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InflateError {
    /// It inflates past the allowed size (a compression bomb, or simply too big): close 1009.
    #[error("the message inflates past {0} bytes")]
    TooBig(usize),
    /// Not valid deflate data: close 1007.
    #[error("not valid deflate data")]
    Corrupt,
}

/// Inflate one message (compressed without context takeover), producing at most `max` bytes.
pub fn inflate(input: &[u8], max: usize) -> Result<Vec<u8>, InflateError> {
    INFLATER.with(|d| {
        let mut slot = d.borrow_mut();
        let d =
            slot.get_or_insert_with(|| Decompress::new_with_window_bits(false, MAX_WINDOW_BITS));
        d.reset(false);
        let mut out = Vec::with_capacity((input.len() * 3).clamp(64, max.max(64)));
        for chunk in [input, &TAIL[..]] {
            let base = d.total_in() as usize;
            loop {
                let consumed = d.total_in() as usize - base;
                if consumed == chunk.len() && out.len() < out.capacity() {
                    break;
                }
                if out.len() == out.capacity() {
                    if out.len() > max {
                        return Err(InflateError::TooBig(max));
                    }
                    // Grow, but never beyond one byte past the cap (to see that it is passed).
                    let more = out.capacity().min(max + 1 - out.len()).max(1);
                    out.reserve_exact(more);
                }
                let before = (d.total_in(), d.total_out());
                let status = d
                    .decompress_vec(&chunk[consumed..], &mut out, FlushDecompress::Sync)
                    .map_err(|_| InflateError::Corrupt)?;
                if out.len() > max {
                    return Err(InflateError::TooBig(max));
                }
                if status == Status::StreamEnd {
                    // A final block inside a message: nothing may follow it.
                    return if d.total_in() as usize - base == chunk.len() {
                        Ok(out)
                    } else {
                        Err(InflateError::Corrupt)
                    };
                }
                if (d.total_in(), d.total_out()) == before && out.len() < out.capacity() {
                    // No progress with room to write: the input is exhausted mid-block.
                    break;
                }
            }
        }
        Ok(out)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_accepts_what_it_can_honour_and_declines_the_rest() {
        let ok = |h: &str| negotiate([h]);
        let (a, r) = ok("permessage-deflate; client_max_window_bits").expect("chromium's offer");
        assert_eq!(a.server_max_window_bits, 15);
        assert_eq!(
            r,
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
        );
        let (a, r) =
            ok("permessage-deflate; server_max_window_bits=10; client_no_context_takeover")
                .expect("accepted");
        assert_eq!(a.server_max_window_bits, 10);
        assert!(r.ends_with("; server_max_window_bits=10"), "{r}");
        // The first acceptable offer wins, across values and commas.
        let (a, _) = negotiate([
            "x-webkit-deflate-frame",
            "permessage-deflate; server_max_window_bits=8, permessage-deflate; server_max_window_bits=12",
        ])
        .expect("the second offer");
        assert_eq!(a.server_max_window_bits, 12);
        for bad in [
            "permessage-deflate; server_max_window_bits=8",
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=010",
            "permessage-deflate; client_max_window_bits=7",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; mystery",
            "permessage-deflate;",
            "deflate-frame",
            "",
        ] {
            assert_eq!(ok(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn compress_then_inflate_round_trips_for_every_window() {
        let text: Vec<u8> = (0..5000u32)
            .flat_map(|i| format!("{{\"n\":{},\"v\":\"value\"}}", i % 97).into_bytes())
            .collect();
        for bits in 9..=15 {
            let mut z = Vec::new();
            compress(&text, bits, &mut z);
            assert!(!z.ends_with(&TAIL));
            assert!(z.len() * 5 < text.len(), "window {bits}: {} bytes", z.len());
            assert_eq!(inflate(&z, text.len()).expect("inflates"), text);
        }
        let mut z = Vec::new();
        compress(b"", 15, &mut z);
        assert_eq!(inflate(&z, 10).expect("empty"), b"");
    }

    #[test]
    fn inflating_is_bounded_and_refuses_garbage() {
        let zeros = vec![0u8; 1 << 20];
        let mut bomb = Vec::new();
        compress(&zeros, 15, &mut bomb);
        assert!(bomb.len() < 2048, "{} bytes", bomb.len());
        assert_eq!(
            inflate(&bomb, 64 * 1024),
            Err(InflateError::TooBig(64 * 1024))
        );
        assert_eq!(inflate(&bomb, 1 << 20).map(|v| v.len()), Ok(1 << 20));
        assert_eq!(
            inflate(&[0xff, 0xff, 0xff], 1000),
            Err(InflateError::Corrupt)
        );
    }
}
