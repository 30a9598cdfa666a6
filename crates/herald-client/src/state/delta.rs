//! Delta subscriptions (`docs/protocol.md` §5, "message on a delta subscription"): every
//! `message` carries its data as JSON text in a string, whole or as a Fossil delta against the
//! previous message's text. The client applies deltas and reports whole data, as for any other
//! channel; a delta it cannot apply is not reported and the channel is resynchronized
//! (`unsubscribe`, then at once `subscribe` with `recover` from the last offset applied).

use herald_proto::server::MessagePush;

use super::*;

/// The previous message's data text of a delta subscription: what the next delta applies to.
#[derive(Debug, Clone)]
pub(super) struct Base {
    pub offset: u64,
    pub epoch: String,
    pub text: String,
}

/// A message's data on a delta subscription could not be made whole.
#[derive(Debug)]
pub(super) struct Unusable(pub &'static str);

/// The data of message `p` of a delta subscription whose previous text is `base` (`delta`:
/// the message says `"delta": true`), and the text the next delta applies to (`None`: the data
/// came as plain JSON, there is nothing to apply a delta to).
pub(super) fn whole(
    p: &MessagePush,
    delta: bool,
    base: Option<&Base>,
) -> Result<(Value, Option<String>), Unusable> {
    let text = match (&p.data, delta) {
        (Value::String(t), false) => t.clone(),
        // Not a string without `delta`: plain data (the server did not encode it).
        (v, false) => return Ok((v.clone(), None)),
        (Value::String(d), true) => {
            let b = base.ok_or(Unusable("no previous text"))?;
            if b.epoch != p.epoch || b.offset.checked_add(1) != Some(p.offset) {
                return Err(Unusable("not the next offset after the previous text"));
            }
            apply(&b.text, d).ok_or(Unusable("the delta does not apply"))?
        }
        (_, true) => return Err(Unusable("a delta that is not a string")),
    };
    let data = serde_json::from_str(&text).map_err(|_| Unusable("not JSON"))?;
    Ok((data, Some(text)))
}

/// `delta` applied to `source`: `None` when it is malformed, does not fit `source`, fails its
/// checksum, or the result is not UTF-8.
pub(super) fn apply(source: &str, delta: &str) -> Option<String> {
    // `fossil_delta::apply` trusts its input (it indexes, allocates the announced size and does
    // not insist on the final checksum): only hand it deltas that are well formed for `source`.
    if !well_formed(source.len(), delta.as_bytes()) {
        return None;
    }
    let out = fossil_delta::apply(source.as_bytes(), delta.as_bytes()).ok()?;
    String::from_utf8(out).ok()
}

/// A base-64 digit of the Fossil delta format, read as `fossil_delta` reads it (the high bit
/// ignored).
fn digit(b: u8) -> Option<u64> {
    let c = b & 127;
    Some(match c {
        b'0'..=b'9' => c - b'0',
        b'A'..=b'Z' => c - b'A' + 10,
        b'_' => 36,
        b'a'..=b'z' => c - b'a' + 37,
        b'~' => 63,
        _ => return None,
    } as u64)
}

/// The number at the start of `d` and the rest; `None` when there is no digit or it would not
/// fit (`fossil_delta` reads any run of digits, possibly none, without overflow checks).
fn number(d: &[u8]) -> Option<(usize, &[u8])> {
    let n = d.iter().take_while(|b| digit(**b).is_some()).count();
    if n == 0 || n > 8 {
        return None;
    }
    let v = d[..n]
        .iter()
        .fold(0u64, |v, b| (v << 6) | digit(*b).unwrap_or(0));
    Some((usize::try_from(v).ok()?, &d[n..]))
}

/// Whether `fossil_delta::apply` can run `d` against a source of `source_len` bytes without
/// going out of bounds: `size "\n"`, then copies (`count "@" offset ","`) and inserts
/// (`count ":" bytes`) that add up to `size`, then `checksum ";"` and nothing after.
fn well_formed(source_len: usize, d: &[u8]) -> bool {
    let Some((size, rest)) = number(d) else {
        return false;
    };
    let Some((b'\n', mut d)) = rest.split_first() else {
        return false;
    };
    let mut total = 0usize;
    loop {
        let Some((count, rest)) = number(d) else {
            return false;
        };
        let Some((op, rest)) = rest.split_first() else {
            return false;
        };
        match op {
            b'@' => {
                let Some((offset, rest)) = number(rest) else {
                    return false;
                };
                let Some((b',', rest)) = rest.split_first() else {
                    return false;
                };
                if offset.checked_add(count).is_none_or(|end| end > source_len) {
                    return false;
                }
                total = total.saturating_add(count);
                d = rest;
            }
            b':' => {
                if count > rest.len() {
                    return false;
                }
                total = total.saturating_add(count);
                d = &rest[count..];
            }
            b';' => return rest.is_empty() && total == size,
            _ => return false,
        }
        if total > size {
            return false;
        }
    }
}

impl ClientState {
    /// A delta of `channel` could not be applied: ask for the channel again from the last offset
    /// applied. The `unsubscribe` is the client's own (its reply is ignored, the application
    /// still holds the subscription); the channel's messages are ignored until the `subscribe`
    /// reply.
    pub(super) fn resync(&mut self, channel: &str, why: &str, now: Instant) {
        let Some(sub) = self.subs.get_mut(channel) else {
            return;
        };
        tracing::debug!(channel, why, "delta not applicable: resubscribing");
        sub.resyncing = true;
        let id = self.id();
        self.pending
            .insert(id, (Pending::Internal, now + self.cfg.request_timeout));
        self.send("unsubscribe", Some(id), json!({ "channel": channel }));
        self.send_subscribe(channel, now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1: &str = r#"{"a":1,"b":"hello world hello world hello world","c":3}"#;
    const V2: &str = r#"{"a":2,"b":"hello world hello world hello world","c":4}"#;

    fn delta(from: &str, to: &str) -> String {
        String::from_utf8(fossil_delta::delta(to, from)).expect("utf-8")
    }

    #[test]
    fn applies_what_the_server_makes() {
        let d = delta(V1, V2);
        assert_eq!(d, "s\n6:{\"a\":2k@6,2:4}1Re7yw;", "the protocol's example");
        assert_eq!(apply(V1, &d).as_deref(), Some(V2));
        let long = "x".repeat(500) + "é";
        assert_eq!(apply(V1, &delta(V1, &long)).as_deref(), Some(long.as_str()));
        assert_eq!(apply("", &delta("", V1)).as_deref(), Some(V1));
    }

    #[test]
    fn malformed_deltas_are_refused_not_panicked_on() {
        let d = delta(V1, V2);
        // A wrong base: the checksum catches it.
        let other = V1.replace("hello", "HELLO");
        assert_eq!(apply(&other, &d), None);
        for bad in [
            "",
            "s",
            "s\n",
            "s\n6:",
            "s\n6:{\"a\":2k@6,2:4}1Re7yw",
            "s\n6:{\"a\":2k@6,2:4}1Re7yw;x",
            "s\n6:{\"a\":2k@6,2:4}",
            "s\n6:{\"a\":2k@6",
            "s\nZZ@0,1Re7yw;",
            "s\n6:{\"a\"",
            "~~~~~~~~~~~~~~~~~~~~\n0;",
            "s\n~~~~~~~~~~~~~~~~@0,0;",
            "1\n~~~~~~~~~~~~~~~:x0;",
            "\n0;",
            "s\n6?{\"a\":2k@6,2:4}1Re7yw;",
        ] {
            assert_eq!(apply(V1, bad), None, "{bad:?}");
        }
        // Every truncation and every single-byte change of a valid delta.
        for n in 0..d.len() {
            let _ = apply(V1, &d[..n]);
            let mut b = d.clone().into_bytes();
            for x in [b'0', b'~', b'@', b':', b';', b',', b'\n', 0xC3] {
                b[n] = x;
                if let Ok(s) = std::str::from_utf8(&b) {
                    let _ = apply(V1, s);
                }
            }
        }
    }
}
