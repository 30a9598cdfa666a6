//! Server frames decoded: [`ServerMessage`] is a whole server frame with typed payloads (the Rust
//! client and tests read frames with it). The names of the frames are [`ServerKind`]'s.

use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::codec::Format;
use crate::envelope::{
    ClientInfo, Connected, Disconnect, ErrorPayload, GapPush, Id, RefreshInfo, Subscribed,
};
pub use crate::kind::ServerKind;

/// A `message` push as a client reads it.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct MessagePush {
    /// Channel.
    pub channel: String,
    /// Offset in the channel stream.
    pub offset: u64,
    /// Stream epoch.
    pub epoch: String,
    /// Publish time, ms since the Unix epoch.
    #[serde(default)]
    pub time: u64,
    /// Application data.
    #[serde(default)]
    pub data: serde_json::Value,
    /// The publisher, when it was a client.
    #[serde(default)]
    pub info: Option<serde_json::Value>,
}

/// A `join`/`leave` push: the channel and who (`client_id`, `user_id`, `info`).
#[derive(Debug, Clone, PartialEq)]
pub struct PresencePush {
    /// Channel.
    pub channel: String,
    /// Who joined or left, as sent (`channel` included).
    pub who: serde_json::Value,
    /// The same, typed.
    pub client: ClientInfo,
}

/// A server frame, decoded.
#[derive(Debug, Clone)]
pub enum ServerMessage {
    /// `connected`.
    Connected {
        /// The id of the `auth` command it answers, if any.
        id: Option<Id>,
        /// The session.
        info: Connected,
    },
    /// `reply` to the command `id`; the payload's shape depends on the command.
    Reply {
        /// The command's id.
        id: Id,
        /// The reply payload.
        payload: serde_json::Value,
    },
    /// `error`, for the command `id` or (without an id) for the connection.
    Error {
        /// The command's id.
        id: Option<Id>,
        /// Code, message, retryability.
        error: ErrorPayload,
        /// The code as sent: its wire name, also for a newer server's code this version decodes
        /// as [`crate::ErrorCode::Unknown`].
        code_name: String,
    },
    /// `pong` for the `ping` command `id`.
    Pong {
        /// The command's id.
        id: Option<Id>,
    },
    /// `message`.
    Message(MessagePush),
    /// `join`.
    Join(PresencePush),
    /// `leave`.
    Leave(PresencePush),
    /// `subscribed` (a server-side subscription).
    Subscribed(Subscribed),
    /// `unsubscribed`.
    Unsubscribed {
        /// The channel.
        channel: String,
    },
    /// `refresh` (the server asks for a fresh token).
    Refresh(Option<RefreshInfo>),
    /// `disconnect` advisory.
    Disconnect(Disconnect),
    /// `gap`: publications an at-least-once subscription will not get.
    Gap(GapPush),
    /// A frame type this version does not know (ignored by clients: forward compatibility).
    Unknown {
        /// Its `type`.
        kind: String,
    },
}

/// Why a server frame could not be read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ServerDecodeError {
    /// Not a `{type, id?, payload}` envelope in the connection's format.
    #[error("not a server frame: {0}")]
    Envelope(String),
    /// A known `type` whose payload lacks or mistypes a field.
    #[error("bad {kind} payload: {message}")]
    Payload {
        /// The frame type.
        kind: &'static str,
        /// What serde said.
        message: String,
    },
    /// A `reply` without an `id`.
    #[error("a reply without an id")]
    ReplyWithoutId,
}

impl ServerMessage {
    /// Decode a whole server frame (the WebSocket message's payload).
    pub fn decode(format: Format, input: &[u8]) -> Result<ServerMessage, ServerDecodeError> {
        let (kind, id, payload) = decode_server_frame(format, input)?;
        Self::from_parts(&kind, id, payload)
    }

    /// Build from an envelope already split into `type`, `id` and payload.
    pub fn from_parts(
        kind: &str,
        id: Option<Id>,
        payload: serde_json::Value,
    ) -> Result<ServerMessage, ServerDecodeError> {
        let Some(k) = ServerKind::parse(kind) else {
            return Ok(ServerMessage::Unknown {
                kind: kind.to_owned(),
            });
        };
        Ok(match k {
            ServerKind::Connected => ServerMessage::Connected {
                id,
                info: typed(k, payload)?,
            },
            ServerKind::Reply => ServerMessage::Reply {
                id: id.ok_or(ServerDecodeError::ReplyWithoutId)?,
                payload,
            },
            ServerKind::Error => ServerMessage::Error {
                id,
                code_name: payload["code"].as_str().unwrap_or_default().to_owned(),
                error: typed(k, payload)?,
            },
            ServerKind::Pong => ServerMessage::Pong { id },
            ServerKind::Message => ServerMessage::Message(typed(k, payload)?),
            ServerKind::Join => ServerMessage::Join(presence(k, payload)?),
            ServerKind::Leave => ServerMessage::Leave(presence(k, payload)?),
            ServerKind::Subscribed => ServerMessage::Subscribed(typed(k, payload)?),
            ServerKind::Unsubscribed => {
                #[derive(Deserialize)]
                struct C {
                    channel: String,
                }
                let c: C = typed(k, payload)?;
                ServerMessage::Unsubscribed { channel: c.channel }
            }
            ServerKind::Refresh => ServerMessage::Refresh(serde_json::from_value(payload).ok()),
            ServerKind::Disconnect => ServerMessage::Disconnect(typed(k, payload)?),
            ServerKind::Gap => ServerMessage::Gap(typed(k, payload)?),
        })
    }
}

fn typed<T: DeserializeOwned>(
    kind: ServerKind,
    payload: serde_json::Value,
) -> Result<T, ServerDecodeError> {
    serde_json::from_value(payload).map_err(|e| ServerDecodeError::Payload {
        kind: kind.as_str(),
        message: e.to_string(),
    })
}

fn presence(
    kind: ServerKind,
    payload: serde_json::Value,
) -> Result<PresencePush, ServerDecodeError> {
    #[derive(Deserialize)]
    struct C {
        channel: String,
    }
    let c: C = typed(kind, payload.clone())?;
    let client: ClientInfo = typed(kind, payload.clone())?;
    Ok(PresencePush {
        channel: c.channel,
        who: payload,
        client,
    })
}

/// Decode a server frame's envelope (for clients and tests): `(type, id, payload as JSON value)`.
pub fn decode_server_frame(
    format: Format,
    input: &[u8],
) -> Result<(String, Option<Id>, serde_json::Value), ServerDecodeError> {
    #[derive(Deserialize)]
    struct Any {
        #[serde(rename = "type")]
        kind: String,
        #[serde(default)]
        id: Option<Id>,
        #[serde(default)]
        payload: serde_json::Value,
    }
    let any: Any = match format {
        Format::Json => serde_json::from_slice(input).map_err(envelope)?,
        Format::Msgpack => {
            let v: rmpv::Value = rmp_serde::from_slice(input).map_err(envelope)?;
            let j = serde_json::to_value(&v).map_err(envelope)?;
            serde_json::from_value(j).map_err(envelope)?
        }
    };
    Ok((any.kind, any.id, any.payload))
}

fn envelope(e: impl std::fmt::Display) -> ServerDecodeError {
    ServerDecodeError::Envelope(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(s: &str) -> Result<ServerMessage, ServerDecodeError> {
        ServerMessage::decode(Format::Json, s.as_bytes())
    }

    #[test]
    fn names_round_trip() {
        for k in ServerKind::ALL {
            assert_eq!(ServerKind::parse(k.as_str()), Some(k));
        }
        assert_eq!(ServerKind::parse("subscribe"), None);
    }

    #[test]
    fn decodes_pushes_into_typed_payloads() {
        let m = decode(r#"{"type":"message","payload":{"channel":"a","offset":3,"epoch":"e","time":1,"data":{"x":1}}}"#)
            .expect("decodes");
        let ServerMessage::Message(m) = m else {
            panic!("{m:?}")
        };
        assert_eq!(
            (m.channel.as_str(), m.offset, m.epoch.as_str()),
            ("a", 3, "e")
        );
        assert_eq!(m.data["x"], 1);
        let j =
            decode(r#"{"type":"join","payload":{"channel":"a","client_id":"c","user_id":"u"}}"#)
                .expect("decodes");
        let ServerMessage::Join(j) = j else {
            panic!("{j:?}")
        };
        assert_eq!((j.channel.as_str(), j.client.user_id.as_str()), ("a", "u"));
        let d = decode(
            r#"{"type":"disconnect","payload":{"code":4001,"reason":"slow","reconnect":true}}"#,
        )
        .expect("decodes");
        assert!(matches!(
            d,
            ServerMessage::Disconnect(Disconnect {
                code: 4001,
                reconnect: true,
                ..
            })
        ));
        let e = decode(r#"{"type":"error","id":7,"payload":{"code":"unavailable","message":"m","retryable":true}}"#)
            .expect("decodes");
        assert!(
            matches!(e, ServerMessage::Error { id: Some(Id::Num(7)), error, .. } if error.retryable)
        );
        // A newer server's code: decoded, named as sent, its retryable flag kept.
        let e = decode(r#"{"type":"error","id":8,"payload":{"code":"shard_moving","message":"m","retryable":true}}"#)
            .expect("an unknown code still decodes");
        let ServerMessage::Error {
            error, code_name, ..
        } = e
        else {
            panic!("{e:?}")
        };
        assert_eq!(error.code, crate::ErrorCode::Unknown);
        assert_eq!(code_name, "shard_moving");
        assert!(error.retryable);
    }

    #[test]
    fn unknown_types_are_kept_and_bad_payloads_are_typed_errors() {
        assert!(matches!(
            decode(r#"{"type":"fancy","payload":{}}"#),
            Ok(ServerMessage::Unknown { kind }) if kind == "fancy"
        ));
        assert!(matches!(
            decode(r#"{"type":"message","payload":{"channel":"a"}}"#),
            Err(ServerDecodeError::Payload {
                kind: "message",
                ..
            })
        ));
        assert_eq!(
            decode(r#"{"type":"reply","payload":{}}"#).expect_err("an error"),
            ServerDecodeError::ReplyWithoutId
        );
        assert!(matches!(decode("[1]"), Err(ServerDecodeError::Envelope(_))));
    }
}
