//! Hand-written JSON for the two frames every publication costs: the `message` push (encoded
//! once, shared by every subscriber) and the publisher's `publish` reply.
//!
//! Byte for byte what serde_json writes for the same values (the tests compare them), without
//! its per-token calls: the keys are constants, strings that need no escaping (channel names,
//! epochs, client ids: nearly all) are copied as they are, and the buffer is sized once. Through
//! serde_json the `message` frame cost ≈ 4 500 instructions (three buffer growths, an escape
//! pass over every key) — at 10 subscribers per publication, ≈ 450 per delivery
//! (`SUBS=1000 CHANNELS=100 bench/instructions.sh`). Values the application supplies (`data`
//! that is not raw JSON, the publisher's `info`) still go through serde_json.

use bytes::Bytes;
use serde::Serialize;

use super::{EncodeError, PublicationOut};
use crate::data::DataOut;
use crate::envelope::{ClientInfo, Id};
use crate::frame::{self, MAX_HEADER, OpCode};

/// Append `s` as a JSON string.
fn string(buf: &mut Vec<u8>, s: &str) {
    // serde_json escapes `"`, `\` and the control characters below 0x20, nothing else.
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        buf.reserve(s.len() + 2);
        buf.push(b'"');
        buf.extend_from_slice(s.as_bytes());
        buf.push(b'"');
    } else {
        value(buf, s).unwrap_or_else(|_| unreachable!("a string always serializes"));
    }
}

/// Append an unsigned integer.
fn uint(buf: &mut Vec<u8>, n: u64) {
    buf.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// Append any value through serde_json.
fn value<T: Serialize + ?Sized>(buf: &mut Vec<u8>, v: &T) -> Result<(), EncodeError> {
    serde_json::to_writer(&mut *buf, v).map_err(|e| EncodeError(e.to_string()))
}

/// A frame's buffer: room for the WebSocket header, then `payload_hint` bytes.
fn start(payload_hint: usize) -> Vec<u8> {
    let mut buf = Vec::with_capacity(MAX_HEADER + payload_hint);
    buf.resize(MAX_HEADER, 0);
    buf
}

/// The `message` push of a publication (JSON), as a complete WebSocket frame.
pub(crate) fn message(p: &PublicationOut<'_>) -> Result<Bytes, EncodeError> {
    let raw = match &p.data {
        DataOut::Raw(r) => Some(r.get()),
        DataOut::Owned(_) => None,
    };
    let info_hint = p
        .info
        .map_or(0, |i| 48 + i.client_id.len() + i.user_id.len());
    let mut buf =
        start(96 + p.channel.len() + p.epoch.len() + raw.map_or(64, str::len) + info_hint);
    buf.extend_from_slice(br#"{"type":"message","payload":{"channel":"#);
    string(&mut buf, p.channel);
    buf.extend_from_slice(br#","offset":"#);
    uint(&mut buf, p.offset);
    buf.extend_from_slice(br#","epoch":"#);
    string(&mut buf, p.epoch);
    buf.extend_from_slice(br#","time":"#);
    uint(&mut buf, p.time);
    buf.extend_from_slice(br#","data":"#);
    match raw {
        Some(r) => buf.extend_from_slice(r.as_bytes()),
        None => value(&mut buf, &p.data)?,
    }
    if let Some(info) = p.info {
        buf.extend_from_slice(br#","info":"#);
        client_info(&mut buf, info)?;
    }
    buf.extend_from_slice(b"}}");
    Ok(frame::finish(buf, OpCode::Text))
}

fn client_info(buf: &mut Vec<u8>, i: &ClientInfo) -> Result<(), EncodeError> {
    buf.extend_from_slice(br#"{"client_id":"#);
    string(buf, &i.client_id);
    buf.extend_from_slice(br#","user_id":"#);
    string(buf, &i.user_id);
    if let Some(v) = &i.info {
        buf.extend_from_slice(br#","info":"#);
        value(buf, v)?;
    }
    if let Some(v) = &i.chan_info {
        buf.extend_from_slice(br#","chan_info":"#);
        value(buf, v)?;
    }
    buf.push(b'}');
    Ok(())
}

/// The reply to `publish` (JSON): `{offset, epoch, duplicate?}` under `id`.
pub(crate) fn published(id: &Id, offset: u64, epoch: &str, duplicate: bool) -> Bytes {
    let id_hint = match id {
        Id::Num(_) => 20,
        Id::Str(s) => s.len() + 2,
    };
    let mut buf = start(64 + id_hint + epoch.len());
    buf.extend_from_slice(br#"{"type":"reply","id":"#);
    match id {
        Id::Num(n) => uint(&mut buf, *n),
        Id::Str(s) => string(&mut buf, s),
    }
    buf.extend_from_slice(br#","payload":{"offset":"#);
    uint(&mut buf, offset);
    buf.extend_from_slice(br#","epoch":"#);
    string(&mut buf, epoch);
    if duplicate {
        buf.extend_from_slice(br#","duplicate":true"#);
    }
    buf.extend_from_slice(b"}}");
    frame::finish(buf, OpCode::Text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{Format, data_for, encode};
    use crate::envelope::Published;
    use crate::{Data, ServerKind};
    use proptest::prelude::*;

    fn info(client: &str, user: &str, extra: bool) -> ClientInfo {
        ClientInfo {
            client_id: client.to_owned(),
            user_id: user.to_owned(),
            info: extra.then(|| serde_json::json!({"name": user, "n": [1, 2.5, null]})),
            chan_info: extra.then(|| serde_json::json!("role\n\"x\"")),
        }
    }

    fn check_message(channel: &str, epoch: &str, data: &Data, info: Option<&ClientInfo>) {
        let p = PublicationOut {
            channel,
            offset: 42,
            epoch,
            time: 1_764_000_000_123,
            data: data_for(Format::Json, data),
            info,
        };
        let serde = encode(Format::Json, ServerKind::Message, None, &p).expect("serde");
        assert_eq!(message(&p).expect("by hand"), serde);
    }

    /// The hand-written frames are serde_json's, byte for byte.
    #[test]
    fn a_message_is_what_serde_json_writes() {
        let json = Data::json(r#"{"a":[1,"b\u0000"],"c":null}"#).expect("json");
        let mp = Data::msgpack(&rmpv::Value::Map(vec![(
            rmpv::Value::from("k"),
            rmpv::Value::Binary(vec![0, 1, 255]),
        )]));
        for data in [&json, &mp] {
            for i in [
                None,
                Some(info("c1", "", false)),
                Some(info("c\"2", "ü\t", true)),
            ] {
                check_message("news", "ab12", data, i.as_ref());
                check_message("ch\\an\u{1}nel", "", data, i.as_ref());
            }
        }
    }

    #[test]
    fn a_publish_reply_is_what_serde_json_writes() {
        for id in [
            Id::Num(0),
            Id::Num(u64::MAX),
            Id::Str("r-1".into()),
            Id::Str("\"\u{7f}é".into()),
        ] {
            for duplicate in [false, true] {
                let p = Published {
                    offset: 7,
                    epoch: "e\u{1f}".into(),
                    duplicate,
                };
                let serde = encode(Format::Json, ServerKind::Reply, Some(&id), &p).expect("serde");
                assert_eq!(published(&id, p.offset, &p.epoch, duplicate), serde);
            }
        }
    }

    proptest! {
        #[test]
        fn strings_are_escaped_like_serde_json(s in any::<String>()) {
            let mut buf = Vec::new();
            string(&mut buf, &s);
            prop_assert_eq!(buf, serde_json::to_vec(&s).expect("serde"));
        }

        #[test]
        fn messages_are_serde_json_for_any_names(channel in any::<String>(), epoch in any::<String>(), client in any::<String>()) {
            let data = Data::json("[1]").expect("json");
            check_message(&channel, &epoch, &data, Some(&info(&client, &channel, false)));
        }
    }
}
