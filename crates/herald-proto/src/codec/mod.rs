//! Decoding client frames and encoding server frames for both wire formats.
//!
//! Encoding produces a complete, unmasked server-to-client WebSocket frame (header + payload) in a
//! single [`Bytes`], so a broadcast is encoded once and the same bytes are written to every
//! subscriber of that format.

mod jsonin;
mod jsonout;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::codes::ErrorCode;
use crate::data::{Data, DataOut};
use crate::envelope::{
    Ack, Auth, ChannelOnly, ClientInfo, Command, DecodeError, History, Id, MAX_IDEMPOTENCY_KEY_LEN,
    Publish, Refresh, Request, Resume, Rpc, Subscribe,
};
use crate::frame::{self, OpCode};
use crate::kind::ServerKind;

/// The negotiated wire format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// `herald.v1.json`: JSON in text frames (the default without a subprotocol).
    Json,
    /// `herald.v1.msgpack`: MessagePack maps in binary frames.
    Msgpack,
}

/// Subprotocol name for JSON v1.
pub const SUBPROTOCOL_JSON: &str = "herald.v1.json";
/// Subprotocol name for MessagePack v1.
pub const SUBPROTOCOL_MSGPACK: &str = "herald.v1.msgpack";

impl Format {
    /// The subprotocol name.
    pub fn subprotocol(self) -> &'static str {
        match self {
            Format::Json => SUBPROTOCOL_JSON,
            Format::Msgpack => SUBPROTOCOL_MSGPACK,
        }
    }

    /// Parse a subprotocol name.
    pub fn from_subprotocol(name: &str) -> Option<Format> {
        match name.trim() {
            SUBPROTOCOL_JSON => Some(Format::Json),
            SUBPROTOCOL_MSGPACK => Some(Format::Msgpack),
            _ => None,
        }
    }

    /// The WebSocket opcode of this format's data frames.
    pub fn opcode(self) -> OpCode {
        match self {
            Format::Json => OpCode::Text,
            Format::Msgpack => OpCode::Binary,
        }
    }

    /// Index for per-format caches.
    pub fn index(self) -> usize {
        match self {
            Format::Json => 0,
            Format::Msgpack => 1,
        }
    }
}

/// Encoding a server frame failed (only possible with non-serializable application data).
#[derive(Debug, thiserror::Error)]
#[error("encode error: {0}")]
pub struct EncodeError(pub(crate) String);

fn bad(id: &Option<Id>, code: ErrorCode, message: impl Into<String>) -> DecodeError {
    DecodeError {
        id: id.clone(),
        code,
        message: message.into(),
    }
}

#[derive(Deserialize)]
struct JsonEnvelope<'a> {
    #[serde(rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    id: Option<Id>,
    #[serde(borrow, default)]
    payload: Option<&'a RawValue>,
}

#[derive(Deserialize)]
pub(crate) struct JsonPublish<'a> {
    pub(crate) channel: String,
    #[serde(borrow)]
    pub(crate) data: &'a RawValue,
    #[serde(default)]
    pub(crate) idempotency_key: Option<String>,
}

#[derive(Deserialize)]
struct MpEnvelope {
    #[serde(rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    id: Option<Id>,
    #[serde(default)]
    payload: Option<rmpv::Value>,
}

#[derive(Deserialize)]
struct MpPublish {
    channel: String,
    data: rmpv::Value,
    #[serde(default)]
    idempotency_key: Option<String>,
}

/// Decode one client frame.
pub fn decode(format: Format, input: &[u8]) -> Result<Request, DecodeError> {
    match format {
        Format::Json => jsonin::decode(input).unwrap_or_else(|| decode_json(input)),
        Format::Msgpack => {
            let env: MpEnvelope = rmp_serde::from_slice(input).map_err(|e| {
                bad(
                    &None,
                    ErrorCode::Malformed,
                    format!("invalid envelope: {e}"),
                )
            })?;
            finish(
                env.id,
                env.kind.as_deref(),
                RawPayload::Msgpack(env.payload),
            )
        }
    }
}

/// Decode a JSON command in two passes: the envelope with its payload raw, then the payload.
/// Any input; `jsonin` decodes the usual ones in one.
pub(crate) fn decode_json(input: &[u8]) -> Result<Request, DecodeError> {
    let env: JsonEnvelope<'_> = serde_json::from_slice(input).map_err(|e| {
        bad(
            &None,
            ErrorCode::Malformed,
            format!("invalid envelope: {e}"),
        )
    })?;
    let payload = RawPayload::Json(env.payload.map(RawValue::get));
    finish(env.id, env.kind.as_deref(), payload)
}

/// The still-undecoded payload of either format.
pub(crate) enum RawPayload<'a> {
    Json(Option<&'a str>),
    Msgpack(Option<rmpv::Value>),
}

impl RawPayload<'_> {
    fn typed<T: DeserializeOwned>(self, id: &Option<Id>) -> Result<T, DecodeError> {
        let missing = || bad(id, ErrorCode::BadRequest, "missing `payload`");
        let invalid = |e: String| bad(id, ErrorCode::BadRequest, e);
        match self {
            RawPayload::Json(p) => {
                serde_json::from_str(p.ok_or_else(missing)?).map_err(|e| invalid(e.to_string()))
            }
            RawPayload::Msgpack(p) => {
                rmpv::ext::from_value(p.ok_or_else(missing)?).map_err(|e| invalid(e.to_string()))
            }
        }
    }

    fn publish(self, id: &Option<Id>) -> Result<Publish, DecodeError> {
        let (channel, data, key) = match self {
            RawPayload::Json(p) => {
                let p = p.ok_or_else(|| bad(id, ErrorCode::BadRequest, "missing `payload`"))?;
                let jp: JsonPublish<'_> = serde_json::from_str(p)
                    .map_err(|e| bad(id, ErrorCode::BadRequest, e.to_string()))?;
                (
                    jp.channel,
                    Data::Json(jp.data.to_owned()),
                    jp.idempotency_key,
                )
            }
            raw @ RawPayload::Msgpack(_) => {
                let mp: MpPublish = raw.typed(id)?;
                (mp.channel, Data::msgpack(&mp.data), mp.idempotency_key)
            }
        };
        checked_publish(id, channel, data, key)
    }
}

/// A `publish` command from its decoded fields.
pub(crate) fn checked_publish(
    id: &Option<Id>,
    channel: String,
    data: Data,
    key: Option<String>,
) -> Result<Publish, DecodeError> {
    if key
        .as_ref()
        .is_some_and(|k| k.is_empty() || k.len() > MAX_IDEMPOTENCY_KEY_LEN)
    {
        return Err(bad(
            id,
            ErrorCode::BadRequest,
            "idempotency_key must be 1..=128 bytes",
        ));
    }
    Ok(Publish {
        channel,
        data,
        idempotency_key: key,
    })
}

/// The command of type `kind` from its envelope's fields.
pub(crate) fn finish(
    id: Option<Id>,
    kind: Option<&str>,
    payload: RawPayload<'_>,
) -> Result<Request, DecodeError> {
    let kind = kind.ok_or_else(|| bad(&id, ErrorCode::Malformed, "missing string field `type`"))?;
    let command = match kind {
        "subscribe" => Command::Subscribe(payload.typed::<Subscribe>(&id)?),
        "unsubscribe" => Command::Unsubscribe(payload.typed::<ChannelOnly>(&id)?),
        "publish" => Command::Publish(payload.publish(&id)?),
        "history" => Command::History(payload.typed::<History>(&id)?),
        "presence" => Command::Presence(payload.typed::<ChannelOnly>(&id)?),
        "presence_stats" => Command::PresenceStats(payload.typed::<ChannelOnly>(&id)?),
        "ping" => Command::Ping,
        "resume" => Command::Resume(payload.typed::<Resume>(&id)?),
        "auth" => Command::Auth(payload.typed::<Auth>(&id)?),
        "refresh" => Command::Refresh(payload.typed::<Refresh>(&id)?),
        "rpc" => Command::Rpc(payload.typed::<Rpc>(&id)?),
        "ack" => Command::Ack(payload.typed::<Ack>(&id)?),
        other => {
            let shown: String = other.chars().take(32).collect();
            return Err(bad(
                &id,
                ErrorCode::UnknownType,
                format!("unknown type `{shown}`"),
            ));
        }
    };
    Ok(Request { id, command })
}

#[derive(Serialize)]
struct Envelope<'a, P> {
    #[serde(rename = "type")]
    kind: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a Id>,
    payload: P,
}

/// Encode a server frame `{type, id?, payload}` as a complete WebSocket frame.
pub fn encode<P: Serialize>(
    format: Format,
    kind: ServerKind,
    id: Option<&Id>,
    payload: &P,
) -> Result<Bytes, EncodeError> {
    let env = Envelope {
        kind: kind.as_str(),
        id,
        payload,
    };
    let mut buf = frame::start();
    match format {
        Format::Json => {
            serde_json::to_writer(&mut buf, &env).map_err(|e| EncodeError(e.to_string()))?
        }
        Format::Msgpack => rmp_serde::encode::write_named(&mut buf, &env)
            .map_err(|e| EncodeError(e.to_string()))?,
    }
    Ok(frame::finish(buf, format.opcode()))
}

/// The `message` push of a publication as a complete WebSocket frame: [`encode`] of
/// `ServerKind::Message`, written by hand in JSON (the frame every publication costs).
pub fn encode_message(format: Format, p: &PublicationOut<'_>) -> Result<Bytes, EncodeError> {
    match format {
        Format::Json => jsonout::message(p),
        Format::Msgpack => encode(format, ServerKind::Message, None, p),
    }
}

/// The reply to `publish` ([`Published`](crate::envelope::Published)) under `id`: [`encode`]
/// of `ServerKind::Reply`, written by hand in JSON.
pub fn encode_published(
    format: Format,
    id: &Id,
    offset: u64,
    epoch: &str,
    duplicate: bool,
) -> Result<Bytes, EncodeError> {
    match format {
        Format::Json => Ok(jsonout::published(id, offset, epoch, duplicate)),
        Format::Msgpack => {
            let p = crate::envelope::Published {
                offset,
                epoch: epoch.to_owned(),
                duplicate,
            };
            encode(format, ServerKind::Reply, Some(id), &p)
        }
    }
}

/// The payload of a `message` push (a publication), borrowed for encoding.
#[derive(Debug, Serialize)]
pub struct PublicationOut<'a> {
    /// Channel.
    pub channel: &'a str,
    /// Offset in the channel stream.
    pub offset: u64,
    /// Stream epoch.
    pub epoch: &'a str,
    /// Publish time, milliseconds since the Unix epoch.
    pub time: u64,
    /// Application data.
    pub data: DataOut<'a>,
    /// Publisher, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub info: Option<&'a ClientInfo>,
}

/// The payload of a `history` reply.
#[derive(Debug, Serialize)]
pub struct HistoryOut<'a> {
    /// Offset of the newest publication in the stream.
    pub offset: u64,
    /// Stream epoch.
    pub epoch: &'a str,
    /// The page, oldest first (newest first with `reverse`).
    pub publications: Vec<PublicationOut<'a>>,
}

/// Pick the data view for a format.
pub fn data_for(format: Format, data: &Data) -> DataOut<'_> {
    match format {
        Format::Json => data.for_json(),
        Format::Msgpack => data.for_msgpack(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(input: &str) -> DecodeError {
        decode(Format::Json, input.as_bytes()).expect_err("should fail")
    }

    #[test]
    fn decodes_subscribe_with_recover() {
        let r = decode(
            Format::Json,
            br#"{"type":"subscribe","id":"1","payload":{"channel":"news","recover":{"offset":3,"epoch":"e"}},"extra":1}"#,
        )
        .expect("decode");
        assert_eq!(r.id, Some(Id::Str("1".into())));
        match r.command {
            Command::Subscribe(s) => {
                assert_eq!(s.channel, "news");
                assert_eq!(s.recover.expect("recover").offset, 3);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn keeps_json_data_raw() {
        let r = decode(
            Format::Json,
            br#"{"type":"publish","id":7,"payload":{"channel":"c","data":{"a": [1, 2]}}}"#,
        )
        .expect("decode");
        match r.command {
            Command::Publish(p) => match p.data {
                Data::Json(raw) => assert_eq!(raw.get(), r#"{"a": [1, 2]}"#),
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn reports_codes_for_bad_input() {
        assert_eq!(err("not json").code, ErrorCode::Malformed);
        assert_eq!(err("[1,2]").code, ErrorCode::Malformed);
        assert_eq!(err(r#"{"id":"1"}"#).code, ErrorCode::Malformed);
        let e = err(r#"{"type":"subscribe","id":"9","payload":{"channel":5}}"#);
        assert_eq!(
            (e.code, e.id),
            (ErrorCode::BadRequest, Some(Id::Str("9".into())))
        );
        let e = err(r#"{"type":"fly","id":2}"#);
        assert_eq!((e.code, e.id), (ErrorCode::UnknownType, Some(Id::Num(2))));
        assert_eq!(
            err(r#"{"type":"publish","payload":{"channel":"c"}}"#).code,
            ErrorCode::BadRequest
        );
        let long = "k".repeat(200);
        let e = err(&format!(
            r#"{{"type":"publish","payload":{{"channel":"c","data":1,"idempotency_key":"{long}"}}}}"#
        ));
        assert_eq!(e.code, ErrorCode::BadRequest);
        assert_eq!(err(r#"{"type":"ping","id":-1}"#).code, ErrorCode::Malformed);
    }

    #[test]
    fn msgpack_round_trip() {
        #[derive(Serialize)]
        struct P<'a> {
            channel: &'a str,
            data: rmpv::Value,
        }
        #[derive(Serialize)]
        struct E<'a> {
            #[serde(rename = "type")]
            kind: &'a str,
            id: u64,
            payload: P<'a>,
        }
        let bytes = rmp_serde::to_vec_named(&E {
            kind: "publish",
            id: 4,
            payload: P {
                channel: "c",
                data: rmpv::Value::from(vec![rmpv::Value::from(1)]),
            },
        })
        .expect("encode");
        let r = decode(Format::Msgpack, &bytes).expect("decode");
        assert_eq!(r.id, Some(Id::Num(4)));
        assert!(matches!(
            r.command,
            Command::Publish(Publish {
                data: Data::Msgpack(_),
                ..
            })
        ));
        assert_eq!(
            decode(Format::Msgpack, b"\xc1").expect_err("bad").code,
            ErrorCode::Malformed
        );
    }

    #[test]
    fn encodes_publication_once_per_format() {
        let data = Data::json(r#"{"x":1}"#).expect("json");
        let info = ClientInfo {
            client_id: "c1".into(),
            user_id: "".into(),
            info: None,
            chan_info: None,
        };
        for format in [Format::Json, Format::Msgpack] {
            let out = PublicationOut {
                channel: "news",
                offset: 7,
                epoch: "ep",
                time: 1,
                data: data_for(format, &data),
                info: Some(&info),
            };
            let frame = encode(format, ServerKind::Message, None, &out).expect("encode");
            let (payload, opcode) = frame::parse_unmasked(&frame).expect("frame");
            assert_eq!(opcode, format.opcode());
            let (kind, id, p) =
                crate::server::decode_server_frame(format, payload).expect("decode");
            assert_eq!((kind.as_str(), id), ("message", None));
            assert_eq!(p["data"]["x"], 1);
            assert_eq!(p["offset"], 7);
        }
    }
}
