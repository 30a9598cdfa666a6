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
    size: usize,
    frames: [OnceLock<Bytes>; 2],
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
            epoch,
            time_ms,
            data,
            info,
            received: std::time::Instant::now(),
            size: 64 + channel_len + data_len,
            frames: [OnceLock::new(), OnceLock::new()],
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
        self.frames[format.index()]
            .get_or_init(|| match herald_proto::encode(format, "message", None, &self.out(format)) {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!(channel = %self.channel, error = %e, "cannot encode publication");
                    metrics::counter!("herald_dead_letters_total", "reason" => "encode").increment(1);
                    Bytes::new()
                }
            })
            .clone()
    }

    /// Bytes this publication takes in a queue (its frame size, estimated before encoding).
    pub fn queued_len(&self) -> usize {
        self.size
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
