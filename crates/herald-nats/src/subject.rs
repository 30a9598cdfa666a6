//! Channel names as NATS subject tokens: letters, digits, `_` and `-` stay; every other byte is
//! `~XX` (hex), so `.`, `*` and `>` never reach a subject.

/// One subject token for `channel`.
pub fn token(channel: &str) -> String {
    let mut out = String::with_capacity(channel.len());
    for b in channel.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            out.push(b as char);
        } else {
            out.push_str(&format!("~{b:02X}"));
        }
    }
    out
}

/// The channel a token stands for.
pub fn channel(token: &str) -> Option<String> {
    let b = token.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'~' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_hold_no_subject_syntax() {
        for ch in [
            "news",
            "chat:lobby",
            "a.b*c>d",
            "dm:#alice,bob",
            "x~y/z=1@2",
        ] {
            let t = token(ch);
            assert!(!t.contains(['.', '*', '>', ' ']), "{t}");
            assert_eq!(channel(&t).as_deref(), Some(ch));
        }
        assert_eq!(channel("bad~Z"), None);
    }
}
