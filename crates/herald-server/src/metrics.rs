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
