//! What the write side of a connection shares with the rest of the server: how a connection
//! ended, the settings its writes follow, the closing frames of a server-initiated close, and the
//! process-wide metric handles. The writing itself is in `link.rs`.

use std::time::Duration;

use bytes::Bytes;
use herald_proto::envelope::Disconnect;
use herald_proto::frame;
use herald_proto::{CloseCode, Format};

use crate::config::ConnectionConfig;

/// How the writer ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriterEnd {
    /// The close code the server sent, if it initiated the close.
    pub code: Option<CloseCode>,
    /// The socket was stuck mid-frame: drop it without a close frame.
    pub abort: bool,
}

impl WriterEnd {
    pub(crate) fn close(code: Option<CloseCode>) -> Self {
        WriterEnd { code, abort: false }
    }
}

/// The writer's metric handles, registered once per process. The recorder is installed when the
/// server is built (`metrics::install` in `ServerBuilder::bind`), before any connection exists,
/// so the first writer already resolves them against it.
pub(crate) struct WriterMetrics {
    pub(crate) frames_out: metrics::Counter,
    pub(crate) bytes_out: metrics::Counter,
    pub(crate) writes: metrics::Counter,
    pub(crate) publish_to_send: metrics::Histogram,
}

impl WriterMetrics {
    pub(crate) fn get() -> &'static WriterMetrics {
        static M: std::sync::OnceLock<WriterMetrics> = std::sync::OnceLock::new();
        M.get_or_init(|| WriterMetrics {
            frames_out: metrics::counter!("herald_frames_out_total"),
            bytes_out: metrics::counter!("herald_bytes_out_total"),
            writes: metrics::counter!("herald_writes_total"),
            publish_to_send: metrics::histogram!("herald_publish_to_send_seconds"),
        })
    }
}

/// Settings the writer needs, and the heartbeat wheel (one pointer in every link for both).
#[derive(Clone)]
pub struct WriterSettings {
    /// The node's heartbeat wheel.
    pub wheel: std::sync::Arc<crate::heartbeat::Heartbeats>,
    /// Heartbeat and timeouts.
    pub conn: ConnectionConfig,
    /// Shutdown flush deadline.
    pub shutdown_timeout: Duration,
    /// Upper bound of the shutdown reconnect hint.
    pub reconnect_jitter: Duration,
    /// Send a `disconnect` advisory before server-initiated closes (not on `/echo`).
    pub advisory: bool,
}

fn jitter(max: Duration) -> u64 {
    let max = max.as_millis() as u64;
    if max == 0 {
        0
    } else {
        rand::random::<u64>() % (max + 1)
    }
}

/// The `disconnect` advisory and the close frame for a server-initiated close. `jitter` bounds
/// the random `reconnect_after_ms` hint sent with 1001.
pub fn closing_frames(format: Format, code: CloseCode, jitter_max: Option<Duration>) -> Vec<Bytes> {
    let after = match (code, jitter_max) {
        (CloseCode::GoingAway, Some(max)) => Some(jitter(max)),
        _ => None,
    };
    closing_frames_after(format, code, after)
}

/// The `disconnect` advisory (with `reconnect_after_ms` when given) and the close frame.
pub fn closing_frames_after(format: Format, code: CloseCode, after_ms: Option<u64>) -> Vec<Bytes> {
    let mut frames = Vec::with_capacity(2);
    let d = Disconnect {
        code: code.code(),
        reason: code.reason().to_owned(),
        reconnect: code.reconnect(),
        reconnect_after_ms: after_ms,
    };
    if let Ok(b) = herald_proto::encode(format, herald_proto::ServerKind::Disconnect, None, &d) {
        frames.push(b);
    }
    frames.push(frame::close(code.code(), code.reason()));
    frames
}
