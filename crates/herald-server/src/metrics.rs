//! Prometheus metrics: the recorder and the names Herald records.
//!
//! Every metric is listed in `docs/operations.md`.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Install the process-wide Prometheus recorder (once; later calls reuse it).
pub fn install() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            // `herald_publish_to_send_seconds` and the write totals are kept by the write
            // side and added to the text by `writer::exposition`.
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full("herald_ack_latency_seconds".into()),
                    &[
                        0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                        60.0,
                    ],
                )
                .ok()?;
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok()?;
            Some(handle)
        })
        .clone()
}

/// A monotonic total: one relaxed atomic add per observation.
pub(crate) struct Total(AtomicU64);

impl Total {
    pub(crate) const fn new() -> Self {
        Total(AtomicU64::new(0))
    }

    pub(crate) fn increment(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// `herald_bytes_in_total` and `herald_messages_in_total{type}`: relaxed atomic adds per
/// command, handed to the recorder when metrics are rendered (`writer::exposition`).
/// Through the recorder each was a registry lookup (the key hashed, its labels compared):
/// ≈ 900 instructions per command, a publication's share of ten deliveries' own work.
pub(crate) struct InboundMetrics {
    pub(crate) bytes_in: Total,
    /// By [`Command::index`](herald_proto::Command::index).
    pub(crate) by_kind: [Total; herald_proto::Command::KINDS.len()],
}

static INBOUND_METRICS: InboundMetrics = InboundMetrics {
    bytes_in: Total::new(),
    by_kind: [const { Total::new() }; herald_proto::Command::KINDS.len()],
};

impl InboundMetrics {
    pub(crate) fn get() -> &'static InboundMetrics {
        &INBOUND_METRICS
    }

    /// Hand the totals to the recorder (absent until first counted, like a counter the recorder
    /// registers on first use).
    pub(crate) fn export(&self) {
        let bytes = self.bytes_in.get();
        if bytes > 0 {
            metrics::counter!("herald_bytes_in_total").absolute(bytes);
        }
        for (kind, total) in herald_proto::Command::KINDS.iter().zip(&self.by_kind) {
            let n = total.get();
            if n > 0 {
                metrics::counter!("herald_messages_in_total", "type" => *kind).absolute(n);
            }
        }
    }
}

/// The write side's metrics: kept here with plain relaxed atomic adds and handed to the
/// Prometheus recorder only when metrics are rendered
/// (`writer::exposition`). Through the
/// recorder every observation was a dynamic call and two atomic read-modify-writes (the value
/// and its recency generation), and every latency observation a push into its sample buffer:
/// at one batch per delivery, a quarter of the server's own CPU in a 1 × 1 000 fan-out.
pub(crate) struct WriterMetrics {
    /// `herald_frames_out_total`.
    pub(crate) frames_out: Total,
    /// `herald_bytes_out_total`.
    pub(crate) bytes_out: Total,
    /// `herald_writes_total`.
    pub(crate) writes: Total,
    /// `herald_publish_to_send_seconds`.
    pub(crate) publish_to_send: LatencyHistogram,
}

static WRITER_METRICS: WriterMetrics = WriterMetrics {
    frames_out: Total::new(),
    bytes_out: Total::new(),
    writes: Total::new(),
    publish_to_send: LatencyHistogram::new(),
};

impl WriterMetrics {
    pub(crate) fn get() -> &'static WriterMetrics {
        &WRITER_METRICS
    }

    /// Hand the totals to the recorder (before it renders) and append the latency histogram
    /// to `text` (its exposition: the recorder's would hold every sample until the next upkeep).
    pub(crate) fn export(&self, text: &mut String) {
        // Absent until the first write, like a counter the recorder registers on first use.
        let (frames, bytes, writes) = (
            self.frames_out.get(),
            self.bytes_out.get(),
            self.writes.get(),
        );
        if frames > 0 {
            metrics::counter!("herald_frames_out_total").absolute(frames);
        }
        if bytes > 0 {
            metrics::counter!("herald_bytes_out_total").absolute(bytes);
        }
        if writes > 0 {
            metrics::counter!("herald_writes_total").absolute(writes);
        }
        self.publish_to_send
            .render("herald_publish_to_send_seconds", text);
    }
}

/// Upper bounds (seconds, inclusive) of `herald_publish_to_send_seconds`'s buckets.
pub(crate) const PUBLISH_TO_SEND_BOUNDS: [f64; 13] = [
    0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// A latency histogram with fixed buckets ([`PUBLISH_TO_SEND_BOUNDS`] and `+Inf`): an
/// observation is two relaxed atomic adds.
pub(crate) struct LatencyHistogram {
    /// Per-bucket counts (not cumulative); the last is `+Inf`.
    buckets: [AtomicU64; PUBLISH_TO_SEND_BOUNDS.len() + 1],
    /// Sum of the observations, in nanoseconds.
    sum_ns: AtomicU64,
}

impl LatencyHistogram {
    pub(crate) const fn new() -> Self {
        LatencyHistogram {
            buckets: [const { AtomicU64::new(0) }; PUBLISH_TO_SEND_BOUNDS.len() + 1],
            sum_ns: AtomicU64::new(0),
        }
    }

    /// Observe `secs` seconds.
    pub(crate) fn record(&self, secs: f64) {
        let i = PUBLISH_TO_SEND_BOUNDS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(PUBLISH_TO_SEND_BOUNDS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_ns
            .fetch_add((secs.max(0.0) * 1e9) as u64, Ordering::Relaxed);
    }

    /// Append the Prometheus text exposition of `name` (nothing before the first observation).
    pub(crate) fn render(&self, name: &str, out: &mut String) {
        use std::fmt::Write as _;
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let count: u64 = counts.iter().sum();
        if count == 0 {
            return;
        }
        let _ = writeln!(out, "# TYPE {name} histogram");
        let mut cumulative = 0;
        for (i, n) in counts.iter().enumerate() {
            cumulative += n;
            match PUBLISH_TO_SEND_BOUNDS.get(i) {
                Some(b) => {
                    let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cumulative}");
                }
                None => {
                    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
                }
            }
        }
        let sum = self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum {sum}");
        let _ = writeln!(out, "{name}_count {count}");
        out.push('\n');
    }
}
