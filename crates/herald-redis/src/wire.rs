//! How publications travel through Redis.
//!
//! A history entry (a sorted-set member, score = offset) is `OFFSET:TIME:BODY`; the Pub/Sub
//! message for it is `p` + `EPOCH:` + the entry. `BODY` is one kind byte (`j` JSON data, `m`
//! MessagePack data), the publisher's info as JSON with a 4-byte big-endian length, then the data.
//! Join/leave events are `e` + JSON; cluster control messages travel on their own topic.

use std::sync::Arc;

use herald_core::publication::Publication;
use herald_proto::Data;
use herald_proto::envelope::ClientInfo;

/// Encode a publication's body (what the Lua script stores after `OFFSET:TIME:`).
pub fn body(data: &Data, info: Option<&ClientInfo>) -> Vec<u8> {
    herald_core::publication::body_bytes(data, info)
}

pub use herald_core::publication::Malformed;

fn split_once(b: &[u8], sep: u8) -> Option<(&[u8], &[u8])> {
    let i = b.iter().position(|&c| c == sep)?;
    Some((&b[..i], &b[i + 1..]))
}

fn number(b: &[u8]) -> Option<u64> {
    std::str::from_utf8(b).ok()?.parse().ok()
}

/// Decode a history entry `OFFSET:TIME:BODY` of `channel` in `epoch`.
pub fn entry(channel: &Arc<str>, epoch: &Arc<str>, e: &[u8]) -> Result<Publication, Malformed> {
    let (offset, rest) = split_once(e, b':').ok_or(Malformed("no offset"))?;
    let (time, body) = split_once(rest, b':').ok_or(Malformed("no time"))?;
    let offset = number(offset).ok_or(Malformed("bad offset"))?;
    let time = number(time).ok_or(Malformed("bad time"))?;
    let (data, info) = herald_core::publication::parse_body(body)?;
    Ok(Publication::new(
        channel.clone(),
        offset,
        epoch.clone(),
        time,
        data,
        info,
    ))
}

/// A Pub/Sub message on a channel topic.
pub enum Message<'a> {
    /// `p EPOCH:ENTRY`
    Publication { epoch: &'a str, entry: &'a [u8] },
    /// `e JSON`
    Event(&'a [u8]),
}

/// Split a Pub/Sub payload.
pub fn message(payload: &[u8]) -> Result<Message<'_>, Malformed> {
    match payload.split_first() {
        Some((b'p', rest)) => {
            let (epoch, entry) = split_once(rest, b':').ok_or(Malformed("no epoch"))?;
            let epoch = std::str::from_utf8(epoch).map_err(|_| Malformed("bad epoch"))?;
            Ok(Message::Publication { epoch, entry })
        }
        Some((b'e', rest)) => Ok(Message::Event(rest)),
        _ => Err(Malformed("unknown message")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_both_data_kinds() {
        let info = ClientInfo {
            client_id: "c1".into(),
            user_id: "alice".into(),
            info: Some(serde_json::json!({"n": "A"})),
            chan_info: None,
        };
        let (ch, ep): (Arc<str>, Arc<str>) = (Arc::from("news"), Arc::from("ab12"));
        for data in [
            Data::json(r#"{"x":[1,2]}"#).expect("json"),
            Data::msgpack(&rmpv::Value::from("hi")),
        ] {
            let mut e = b"42:1700000000000:".to_vec();
            e.extend(body(&data, Some(&info)));
            let p = entry(&ch, &ep, &e).expect("decodes");
            assert_eq!((p.offset, p.time_ms), (42, 1_700_000_000_000));
            assert_eq!(p.info.as_ref().map(|i| i.user_id.as_str()), Some("alice"));
            assert_eq!(p.data.to_json_value(), data.to_json_value());
        }
        let mut e = b"7:1:".to_vec();
        e.extend(body(&Data::json("1").expect("json"), None));
        assert!(entry(&ch, &ep, &e).expect("no info").info.is_none());
    }

    #[test]
    fn garbage_is_rejected_not_panicking() {
        let (ch, ep): (Arc<str>, Arc<str>) = (Arc::from("n"), Arc::from("e"));
        for bad in [
            &b""[..],
            b"x",
            b"1:2",
            b"1:2:j",
            b"1:2:j\0\0\0\x09{}",
            b"1:2:q\0\0\0\0{}",
        ] {
            assert!(entry(&ch, &ep, bad).is_err(), "{bad:?}");
        }
        assert!(message(b"zzz").is_err());
        assert!(message(b"pnocolon").is_err());
    }
}
