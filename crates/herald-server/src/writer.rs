//! What the write side of a connection shares with the rest of the server: how a connection
//! ended, the settings its writes follow, the closing frames of a server-initiated close, and the
//! process-wide metric handles. The writing itself is in `link.rs`.

use std::time::Duration;

use bytes::Bytes;
use herald_proto::envelope::Disconnect;
use herald_proto::frame;
use herald_proto::{CloseCode, Format};

use crate::config::ConnectionConfig;
use crate::metrics::WriterMetrics;

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

/// The Prometheus text exposition: the recorder's (`handle`), with the write side's totals and
/// latency histogram ([`WriterMetrics`]) and the inbound command totals
/// ([`InboundMetrics`](crate::metrics::InboundMetrics)). `/metrics`, the admin page and the cluster load read
/// this.
pub fn exposition(handle: &metrics_exporter_prometheus::PrometheusHandle) -> String {
    let mut text = String::new();
    WriterMetrics::get().export(&mut text);
    crate::metrics::InboundMetrics::get().export();
    let mut out = handle.render();
    out.push_str(&text);
    out
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 14: the write side's latency histogram, kept out of the recorder, renders as a
    /// Prometheus histogram (cumulative, `le` inclusive, `+Inf`, sum, count) that the admin
    /// page's parser reads like the recorder's.
    #[test]
    fn the_latency_histogram_renders_as_a_prometheus_histogram() {
        let h = crate::metrics::LatencyHistogram::new();
        let name = "herald_publish_to_send_seconds";
        let mut out = String::new();
        h.render(name, &mut out);
        assert!(
            out.is_empty(),
            "nothing before the first observation: {out}"
        );
        for secs in [0.00005, 0.001, 0.001, 3.0] {
            h.record(secs);
        }
        h.render(name, &mut out);
        for line in [
            "# TYPE herald_publish_to_send_seconds histogram\n",
            "herald_publish_to_send_seconds_bucket{le=\"0.0001\"} 1\n",
            "herald_publish_to_send_seconds_bucket{le=\"0.0005\"} 1\n",
            "herald_publish_to_send_seconds_bucket{le=\"0.001\"} 3\n",
            "herald_publish_to_send_seconds_bucket{le=\"2.5\"} 3\n",
            "herald_publish_to_send_seconds_bucket{le=\"+Inf\"} 4\n",
            "herald_publish_to_send_seconds_count 4\n",
        ] {
            assert!(out.contains(line), "{line:?} missing from:\n{out}");
        }
        let sum: f64 = out
            .lines()
            .find_map(|l| l.strip_prefix("herald_publish_to_send_seconds_sum "))
            .and_then(|v| v.parse().ok())
            .expect("a sum");
        assert!((sum - 3.00205).abs() < 1e-6, "sum {sum}");
        let parsed = crate::admin::stats::parse(&out);
        assert_eq!(parsed.publish_to_send.len(), 14, "{parsed:?}");
        assert_eq!(parsed.publish_to_send[13], (None, 4.0));
    }

    /// The write totals reach the recorder when metrics are rendered.
    #[test]
    fn the_write_totals_are_handed_to_the_recorder() {
        let Some(handle) = crate::metrics::install() else {
            panic!("the recorder installs");
        };
        let w = WriterMetrics::get();
        w.frames_out.increment(3);
        w.bytes_out.increment(300);
        w.writes.increment(2);
        let text = exposition(&handle);
        let value = |name: &str| -> u64 {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        // Other tests in this process write too: at least ours.
        assert!(value("herald_frames_out_total") >= 3, "{text}");
        assert!(value("herald_bytes_out_total") >= 300, "{text}");
        assert!(value("herald_writes_total") >= 2, "{text}");
    }
}
