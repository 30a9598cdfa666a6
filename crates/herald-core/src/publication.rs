//! A publication and its encoded frames, built at most once per wire format.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use herald_proto::codec::{PublicationOut, data_for};
use herald_proto::envelope::ClientInfo;
use herald_proto::{Data, Format};

/// One message in a channel stream. Shared (`Arc`) by history and every subscriber's queue.
#[derive(Debug)]
pub struct Publication {
    /// Channel name.
    pub channel: Arc<str>,
    /// Offset in the channel stream (starts at 1).
    pub offset: u64,
    /// Stream epoch.
    pub epoch: Arc<str>,
    /// Publish time, milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// Application data.
    pub data: Data,
    /// Publisher, when known.
    pub info: Option<ClientInfo>,
    /// When this node created or received the publication (for publish-to-send latency).
    pub received: std::time::Instant,
    /// [`epoch_tag`] of `epoch`, computed once (subscribers compare it, not the string).
    pub epoch_tag: u64,
    size: usize,
    frames: [OnceLock<Bytes>; 2],
    /// The frame for connections that negotiated permessage-deflate, per format: compressed, or
    /// the plain frame when the namespace does not compress or it is too small to gain.
    deflated: [OnceLock<Bytes>; 2],
    /// Delta subscriptions (JSON): the `message` frame with `data` as a JSON string, and the one
    /// carrying a Fossil delta against the previous publication of the channel.
    delta: OnceLock<Box<DeltaFrames>>,
}

/// A publication's frames for delta subscriptions, encoded on first use and shared.
#[derive(Debug, Default)]
struct DeltaFrames {
    whole: OnceLock<Bytes>,
    delta: OnceLock<Bytes>,
}

/// A `message` payload whose `data` is JSON text in a string (delta subscriptions).
#[derive(serde::Serialize)]
struct TextOut<'a> {
    channel: &'a str,
    offset: u64,
    epoch: &'a str,
    time: u64,
    data: &'a str,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    delta: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    info: Option<&'a ClientInfo>,
}

impl Publication {
    /// Build a publication.
    pub fn new(
        channel: Arc<str>,
        offset: u64,
        epoch: Arc<str>,
        time_ms: u64,
        data: Data,
        info: Option<ClientInfo>,
    ) -> Self {
        let (channel_len, data_len) = (channel.len(), data.encoded_len());
        Publication {
            channel,
            offset,
            epoch_tag: epoch_tag(&epoch),
            epoch,
            time_ms,
            data,
            info,
            received: std::time::Instant::now(),
            size: 64 + channel_len + data_len,
            frames: [OnceLock::new(), OnceLock::new()],
            deflated: [OnceLock::new(), OnceLock::new()],
            delta: OnceLock::new(),
        }
    }

    /// The payload view for encoding in `format`.
    pub fn out(&self, format: Format) -> PublicationOut<'_> {
        PublicationOut {
            channel: &self.channel,
            offset: self.offset,
            epoch: &self.epoch,
            time: self.time_ms,
            data: data_for(format, &self.data),
            info: self.info.as_ref(),
        }
    }

    /// The complete `message` WebSocket frame for `format`, encoded on first use and shared after.
    pub fn frame(&self, format: Format) -> Bytes {
        self.frame_ref(format).clone()
    }

    /// [`Publication::frame`], borrowed.
    pub fn frame_ref(&self, format: Format) -> &Bytes {
        self.frames[format.index()]
            .get_or_init(|| match herald_proto::codec::encode_message(format, &self.out(format)) {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!(channel = %self.channel, error = %e, "cannot encode publication");
                    metrics::counter!("herald_dead_letters_total", "reason" => crate::journal::DeadLetterKind::Encode.as_str()).increment(1);
                    Bytes::new()
                }
            })
    }

    /// The `message` frame for a `format` connection that negotiated permessage-deflate:
    /// compressed once (no context takeover, 15-bit window) and shared by every such subscriber,
    /// or the plain frame when `policy` does not compress this channel, the payload is under the
    /// threshold, or compressing does not make it smaller.
    pub fn deflated_frame(
        &self,
        format: Format,
        policy: &crate::compression::DeflatePolicy,
    ) -> Bytes {
        self.deflated[format.index()]
            .get_or_init(|| {
                let plain = self.frame(format);
                if !policy.compresses(&self.channel, format) {
                    return plain;
                }
                let Some(at) = herald_proto::frame::payload_offset(&plain) else {
                    return plain;
                };
                let payload = &plain[at..];
                if payload.len() < policy.threshold {
                    return plain;
                }
                let opcode = match format {
                    Format::Json => herald_proto::frame::OpCode::Text,
                    Format::Msgpack => herald_proto::frame::OpCode::Binary,
                };
                let z = herald_proto::frame::deflated(
                    opcode,
                    payload,
                    herald_proto::deflate::MAX_WINDOW_BITS,
                );
                if z.len() < plain.len() {
                    metrics::counter!("herald_compressed_messages_total").increment(1);
                    metrics::counter!("herald_compression_saved_bytes_total")
                        .increment((plain.len() - z.len()) as u64);
                    z
                } else {
                    plain
                }
            })
            .clone()
    }

    /// The JSON text of the data.
    fn data_text(&self) -> std::borrow::Cow<'_, str> {
        match &self.data {
            Data::Json(raw) => std::borrow::Cow::Borrowed(raw.get()),
            other => std::borrow::Cow::Owned(
                serde_json::to_string(&data_for(Format::Json, other)).unwrap_or_default(),
            ),
        }
    }

    fn text_frame(&self, data: &str, delta: bool) -> Bytes {
        let out = TextOut {
            channel: &self.channel,
            offset: self.offset,
            epoch: &self.epoch,
            time: self.time_ms,
            data,
            delta,
            info: self.info.as_ref(),
        };
        herald_proto::encode(Format::Json, herald_proto::ServerKind::Message, None, &out)
            .unwrap_or_default()
    }

    /// For a delta subscription: the whole message, its `data` as a JSON string.
    pub fn whole_text_frame(&self) -> Bytes {
        self.delta
            .get_or_init(Box::default)
            .whole
            .get_or_init(|| self.text_frame(&self.data_text(), false))
            .clone()
    }

    /// For a delta subscription holding `base` (the channel's previous publication): this one
    /// as a Fossil delta against it — computed once, shared by every such subscriber — or the
    /// whole message when a delta would not be smaller (or not valid UTF-8 text).
    pub fn delta_frame(&self, base: &Publication) -> Bytes {
        let make = || {
            let (from, to) = (base.data_text(), self.data_text());
            let d = fossil_delta::delta(to.as_bytes(), from.as_bytes());
            match std::str::from_utf8(&d) {
                Ok(d) if d.len() < to.len() => {
                    metrics::counter!("herald_delta_messages_total").increment(1);
                    self.text_frame(d, true)
                }
                _ => self.whole_text_frame(),
            }
        };
        self.delta
            .get_or_init(Box::default)
            .delta
            .get_or_init(make)
            .clone()
    }

    /// Bytes this publication takes in a queue (its frame size, estimated before encoding).
    pub fn queued_len(&self) -> usize {
        self.size
    }
}

/// A publication's data and publisher as bytes, for engines that carry publications between nodes:
/// one kind byte (`j` JSON data, `m` MessagePack data), the publisher's info as JSON with a 4-byte
/// big-endian length (0 = none), then the data.
pub fn body_bytes(data: &Data, info: Option<&ClientInfo>) -> Vec<u8> {
    let info = info
        .and_then(|i| serde_json::to_vec(i).ok())
        .unwrap_or_default();
    let mut out = Vec::with_capacity(5 + info.len() + data.encoded_len());
    out.push(match data {
        Data::Json(_) => b'j',
        Data::Msgpack(_) => b'm',
    });
    out.extend_from_slice(&(info.len() as u32).to_be_bytes());
    out.extend_from_slice(&info);
    match data {
        Data::Json(raw) => out.extend_from_slice(raw.get().as_bytes()),
        Data::Msgpack(m) => out.extend_from_slice(m.as_bytes()),
    }
    out
}

/// Why bytes from an engine are not a publication body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed publication from the engine: {0}")]
pub struct Malformed(pub &'static str);

/// Decode [`body_bytes`] into its data and publisher.
pub fn parse_body(body: &[u8]) -> Result<(Data, Option<ClientInfo>), Malformed> {
    let (&kind, rest) = body.split_first().ok_or(Malformed("empty body"))?;
    if rest.len() < 4 {
        return Err(Malformed("short body"));
    }
    let (len, rest) = rest.split_at(4);
    let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
    if rest.len() < len {
        return Err(Malformed("short info"));
    }
    let (info, data) = rest.split_at(len);
    let info: Option<ClientInfo> = if info.is_empty() {
        None
    } else {
        Some(serde_json::from_slice(info).map_err(|_| Malformed("bad info"))?)
    };
    let data = match kind {
        b'j' => {
            let text = std::str::from_utf8(data).map_err(|_| Malformed("bad utf-8"))?;
            Data::json(text).map_err(|_| Malformed("bad json"))?
        }
        b'm' => Data::Msgpack(
            herald_proto::Msgpack::from_bytes(data).map_err(|_| Malformed("bad msgpack"))?,
        ),
        _ => return Err(Malformed("unknown kind")),
    };
    Ok((data, info))
}

/// A 64-bit tag of an epoch string (FNV-1a), for cheap "same epoch?" checks on the hot path.
pub fn epoch_tag(epoch: &str) -> u64 {
    epoch.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

pub use crate::sync::now_ms;
