//! The overview's numbers, read from the same Prometheus recorder `/metrics` renders.

use std::collections::BTreeMap;

use herald_core::cluster::{MAX_LOAD_BUCKETS, NodeLoad};
use serde::Serialize;

/// Counters and gauges of this node for the overview charts. Counters are totals since the
/// process started; the UI turns them into rates.
#[derive(Debug, Default, Clone, PartialEq, Serialize)]
pub struct Stats {
    /// `herald_connections`
    pub connections: f64,
    /// `herald_subscriptions`
    pub subscriptions: f64,
    /// `herald_channels`
    pub channels: f64,
    /// `herald_messages_in_total` (every type)
    pub messages_in: f64,
    /// `herald_frames_out_total`
    pub messages_out: f64,
    /// `herald_messages_published_total`
    pub published: f64,
    /// `herald_slow_consumer_disconnects_total`
    pub slow_consumer_disconnects: f64,
    /// `herald_queue_dropped_total` (every reason)
    pub queue_dropped: f64,
    /// `herald_protocol_errors_total` by `code`
    pub errors: BTreeMap<String, f64>,
    /// `herald_close_codes_total` by `code`
    pub close_codes: BTreeMap<String, f64>,
    /// `herald_publish_to_send_seconds` cumulative buckets: (upper bound in seconds, count);
    /// the last bound is `+Inf` (written as `null`).
    pub publish_to_send: Vec<(Option<f64>, f64)>,
}

impl Stats {
    /// What this node announces to the cluster (counts rounded to integers, at most
    /// [`MAX_LOAD_BUCKETS`] latency buckets).
    pub fn load(&self) -> NodeLoad {
        let n = |v: f64| v.max(0.0).round() as u64;
        NodeLoad {
            subscriptions: n(self.subscriptions),
            channels: n(self.channels),
            messages_in: n(self.messages_in),
            messages_out: n(self.messages_out),
            published: n(self.published),
            slow_consumer_disconnects: n(self.slow_consumer_disconnects),
            queue_dropped: n(self.queue_dropped),
            errors: n(self.errors.values().sum()),
            publish_to_send: self
                .publish_to_send
                .iter()
                .take(MAX_LOAD_BUCKETS)
                .map(|&(le, c)| (le, n(c)))
                .collect(),
        }
    }
}

/// One sample line: metric name, the value of label `label` (if any) and the value.
fn sample<'a>(line: &'a str, label: &str) -> Option<(&'a str, Option<&'a str>, f64)> {
    if line.starts_with('#') {
        return None;
    }
    let (head, value) = line.rsplit_once(' ')?;
    let value: f64 = match value {
        "+Inf" => f64::INFINITY,
        v => v.parse().ok()?,
    };
    let (name, labels) = match head.split_once('{') {
        Some((n, rest)) => (n, rest.strip_suffix('}')?),
        None => (head, ""),
    };
    let want = format!("{label}=\"");
    let found = labels
        .split(',')
        .find_map(|kv| kv.strip_prefix(want.as_str()))
        .and_then(|v| v.strip_suffix('"'));
    Some((name, found, value))
}

/// The overview numbers in a rendered Prometheus text.
pub fn parse(text: &str) -> Stats {
    let mut s = Stats::default();
    for line in text.lines() {
        let Some((name, _, v)) = sample(line, "") else {
            continue;
        };
        match name {
            "herald_connections" => s.connections += v,
            "herald_subscriptions" => s.subscriptions += v,
            "herald_channels" => s.channels += v,
            "herald_messages_in_total" => s.messages_in += v,
            "herald_frames_out_total" => s.messages_out += v,
            "herald_messages_published_total" => s.published += v,
            "herald_slow_consumer_disconnects_total" => s.slow_consumer_disconnects += v,
            "herald_queue_dropped_total" => s.queue_dropped += v,
            "herald_protocol_errors_total" | "herald_close_codes_total" => {
                if let Some((_, Some(code), _)) = sample(line, "code") {
                    let map = if name == "herald_protocol_errors_total" {
                        &mut s.errors
                    } else {
                        &mut s.close_codes
                    };
                    *map.entry(code.to_owned()).or_default() += v;
                }
            }
            "herald_publish_to_send_seconds_bucket" => {
                if let Some((_, Some(le), _)) = sample(line, "le") {
                    let bound = le.parse::<f64>().ok().filter(|b| b.is_finite());
                    s.publish_to_send.push((bound, v));
                }
            }
            _ => {}
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_counters_gauges_labels_and_buckets() {
        let text = "# TYPE herald_connections gauge\nherald_connections 3\n\
            herald_messages_in_total{type=\"publish\"} 5\nherald_messages_in_total{type=\"subscribe\"} 2\n\
            herald_protocol_errors_total{code=\"bad_request\"} 4\n\
            herald_close_codes_total{code=\"4501\"} 1\n\
            herald_publish_to_send_seconds_bucket{le=\"0.001\"} 7\n\
            herald_publish_to_send_seconds_bucket{le=\"+Inf\"} 9\nherald_other 1\n";
        let s = parse(text);
        assert_eq!(s.connections, 3.0);
        assert_eq!(s.messages_in, 7.0);
        assert_eq!(s.errors.get("bad_request"), Some(&4.0));
        assert_eq!(s.close_codes.get("4501"), Some(&1.0));
        assert_eq!(s.publish_to_send, vec![(Some(0.001), 7.0), (None, 9.0)]);
        let load = s.load();
        assert_eq!((load.messages_in, load.errors), (7, 4));
        assert_eq!(load.publish_to_send, vec![(Some(0.001), 7), (None, 9)]);
    }

    #[test]
    fn ignores_garbage() {
        assert_eq!(parse("nonsense\nx{ 1\n{}} y\n"), Stats::default());
    }
}
