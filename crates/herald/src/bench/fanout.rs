//! `herald bench fanout`: N subscribers over C channels, one publisher; end-to-end latency,
//! deliveries per second (wall and per server CPU second), loss and duplicates.
//!
//! With `--stalled-percent P`, P % of the subscribers (chosen at random with a fixed seed, so
//! channels get a mix) stop reading once subscribed: their sockets stay open with a small receive
//! buffer and are never read, as a client that hangs or an attacker would. Every figure is then
//! the healthy subscribers'; at the end the stalled sockets are read to see how the server ended
//! them (close frame, FIN, reset, or still open), next to the server's own counters.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::json;
use tokio::sync::watch;

use super::publisher::{self, Plan};
use super::raw::{self, RawConn};
use super::stats::{self, ServerProbe, now_ns};
use super::{Common, Target, open_many, prefix, progress, raise_fd_limit};

/// Scenario options.
#[derive(Debug, Clone)]
pub struct Options {
    pub subscribers: usize,
    pub channels: usize,
    pub rate: u64,
    pub payload: usize,
    /// What the data looks like.
    pub shape: super::publisher::Shape,
    pub window: usize,
    /// Publish through another node.
    pub publish_url: Option<String>,
    /// Percent of subscribers that never read after subscribing.
    pub stalled_percent: f64,
    /// `SO_RCVBUF` of the stalled subscribers.
    pub stalled_rcvbuf: u32,
    /// Report a per-second timeline.
    pub timeline: bool,
}

const SHARDS: usize = 16;
const DRAIN: Duration = Duration::from_secs(10);

#[derive(Default)]
struct SubResult {
    received: u64,
    duplicates: u64,
    expected: u64,
    /// Bytes the subscriber read after subscribing (the messages as they crossed the wire).
    wire_bytes: u64,
}

/// One shard of the latency record: the whole run, and one histogram per publish second.
struct Shard {
    all: Histogram<u64>,
    by_second: Vec<Histogram<u64>>,
}

struct Shared {
    delivered: AtomicU64,
    hist: Vec<Mutex<Shard>>,
    /// Publish clock (ns) at the start of publishing: the origin of the timeline.
    t0: AtomicU64,
    timeline: bool,
}

/// Latency samples: (microseconds, publish timestamp in ns).
fn flush(shared: &Shared, shard: usize, samples: &mut Vec<(u64, u64)>) {
    if let Ok(mut h) = shared.hist[shard % SHARDS].lock() {
        let t0 = shared.t0.load(Ordering::Relaxed);
        for (us, t) in samples.drain(..) {
            let _ = h.all.record(us.max(1));
            if shared.timeline {
                let sec = (t.saturating_sub(t0) / 1_000_000_000) as usize;
                if sec < 3600 {
                    while h.by_second.len() <= sec {
                        h.by_second.push(
                            Histogram::new_with_bounds(1, 60_000_000, 2)
                                .expect("constant, valid histogram bounds"),
                        );
                    }
                    let _ = h.by_second[sec].record(us.max(1));
                }
            }
        }
    }
    samples.clear();
}

async fn subscriber(
    i: usize,
    mut conn: RawConn,
    start: u64,
    channel: usize,
    shared: Arc<Shared>,
    mut finals: watch::Receiver<Option<Vec<u64>>>,
) -> SubResult {
    let mut r = SubResult::default();
    let wire_at_start = conn.wire_bytes();
    let mut last = start;
    let mut samples = Vec::with_capacity(1024);
    let mut final_offset: Option<u64> = None;
    let mut deadline: Option<tokio::time::Instant> = None;
    loop {
        if final_offset.is_some_and(|f| last >= f) {
            break;
        }
        tokio::select! {
            m = conn.next() => {
                let Ok(Some(m)) = m else { break };
                if memchr::memmem::find(m, b"\"type\":\"message\"").is_none() {
                    continue;
                }
                let now = now_ns();
                let Some(offset) = raw::number_after(m, b"\"offset\":") else { continue };
                if offset <= last {
                    r.duplicates += 1;
                    continue;
                }
                last = offset;
                r.received += 1;
                shared.delivered.fetch_add(1, Ordering::Relaxed);
                if let Some(t) = raw::number_after(m, b"\"t\":") {
                    samples.push((now.saturating_sub(t) / 1000, t));
                    if samples.len() == samples.capacity() {
                        flush(&shared, i, &mut samples);
                    }
                }
            }
            changed = finals.changed(), if final_offset.is_none() => {
                if changed.is_err() { break }
                let f = finals.borrow().as_ref().map(|v| v[channel]);
                final_offset = f;
                deadline = Some(tokio::time::Instant::now() + DRAIN);
            }
            _ = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            } => break,
        }
    }
    flush(&shared, i, &mut samples);
    r.expected = final_offset.unwrap_or(last).saturating_sub(start);
    r.wire_bytes = conn.wire_bytes() - wire_at_start;
    r
}

/// Which subscribers stall: `round(n × percent / 100)` of them, chosen with a fixed seed.
fn stalled_set(n: usize, percent: f64) -> Vec<bool> {
    use rand::SeedableRng;
    use rand::seq::SliceRandom;
    let k = ((n as f64) * percent / 100.0).round() as usize;
    let mut idx: Vec<usize> = (0..n).collect();
    idx.shuffle(&mut rand::rngs::StdRng::seed_from_u64(0x5ee1_c0de));
    let mut stalled = vec![false; n];
    for &i in idx.iter().take(k.min(n)) {
        stalled[i] = true;
    }
    stalled
}

/// The server counters sampled for the stalled-subscriber report.
const WATCHED: &[(&str, &str)] = &[
    (
        "slow_consumer_disconnects",
        "herald_slow_consumer_disconnects_total",
    ),
    ("close_4001", "herald_close_codes_total{code=\"4001\"}"),
    ("close_4003", "herald_close_codes_total{code=\"4003\"}"),
    ("close_4000", "herald_close_codes_total{code=\"4000\"}"),
];

/// Counter increments from `a` to `b`, and the connection gauges at `b`.
fn watched_delta(a: &stats::Metrics, b: &stats::Metrics) -> serde_json::Value {
    let mut m = serde_json::Map::new();
    for (name, key) in WATCHED {
        m.insert((*name).into(), json!(b.get(key) - a.get(key)));
    }
    m.insert(
        "sessions_waiting_now".into(),
        json!(b.get("herald_sessions_waiting")),
    );
    m.insert("connections_now".into(), json!(b.get("herald_connections")));
    serde_json::Value::Object(m)
}

/// How the stalled connections ended, read after the run.
async fn stalled_ends(stalled: Vec<RawConn>) -> serde_json::Value {
    let mut set = tokio::task::JoinSet::new();
    for c in stalled {
        set.spawn(c.read_to_end(Duration::from_secs(2)));
    }
    let (mut eof, mut reset, mut open) = (0u64, 0u64, 0u64);
    let mut codes = std::collections::BTreeMap::<String, u64>::new();
    while let Some(r) = set.join_next().await {
        match r {
            Ok(raw::End::CloseFrame(code)) => {
                *codes
                    .entry(code.map_or("none".into(), |c| c.to_string()))
                    .or_default() += 1
            }
            Ok(raw::End::Eof) => eof += 1,
            Ok(raw::End::Reset) | Err(_) => reset += 1,
            Ok(raw::End::Open) => open += 1,
        }
    }
    let frames: u64 = codes.values().sum();
    json!({
        "closed_by_server": frames + eof + reset,
        "close_frames": codes,
        "eof_without_close_frame": eof,
        "reset": reset,
        "still_open": open,
    })
}

/// Run the scenario.
pub async fn run(c: &Common, o: Options) -> anyhow::Result<()> {
    raise_fd_limit(o.subscribers + 16);
    let t = Arc::new(Target::new(c)?);
    let probe = ServerProbe::new(&c.pid)?;
    let p = prefix(c);
    let names: Vec<String> = (0..o.channels).map(|k| format!("{p}:{k}")).collect();
    let bar = progress(o.subscribers as u64, "connecting", c.json);
    let n_ch = o.channels;
    let names2 = names.clone();
    let stalled_at = Arc::new(stalled_set(o.subscribers, o.stalled_percent));
    let stalled_at2 = stalled_at.clone();
    let rcvbuf = o.stalled_rcvbuf;
    let started_connect = Instant::now();
    let (conns, failed, first_error) = open_many(
        &t,
        o.subscribers,
        c.concurrency,
        move |i| names2[i % n_ch].clone(),
        move |i| stalled_at2[i].then_some(rcvbuf),
        &bar,
    )
    .await;
    bar.finish_and_clear();
    let connect_seconds = started_connect.elapsed().as_secs_f64();
    if conns.is_empty() {
        anyhow::bail!(
            "no subscriber connected: {}",
            first_error.unwrap_or_default()
        );
    }
    let shared = Arc::new(Shared {
        delivered: AtomicU64::new(0),
        hist: (0..SHARDS)
            .map(|_| {
                Mutex::new(Shard {
                    all: stats::histogram(),
                    by_second: Vec::new(),
                })
            })
            .collect(),
        t0: AtomicU64::new(now_ns()),
        timeline: o.timeline,
    });
    let (final_tx, final_rx) = watch::channel(None::<Vec<u64>>);
    let subscribers = conns.len();
    let mut tasks = Vec::with_capacity(subscribers);
    // Stalled subscribers: held, never read, until the end.
    let mut stalled = Vec::new();
    for (i, conn, start, _) in conns {
        if stalled_at[i] {
            stalled.push(conn);
            continue;
        }
        tasks.push(tokio::spawn(subscriber(
            i,
            conn,
            start,
            i % n_ch,
            shared.clone(),
            final_rx.clone(),
        )));
    }
    let healthy = tasks.len();
    let n_stalled = stalled.len();
    let pub_conn = match &o.publish_url {
        Some(url) => {
            let other = Common {
                url: url.clone(),
                ..c.clone()
            };
            Target::new(&other)?.open(usize::MAX / 2).await?
        }
        None => t.open(usize::MAX / 2).await?,
    };
    let metrics0 = if n_stalled > 0 || o.timeline {
        stats::scrape_metrics(t.addr).await
    } else {
        None
    };
    let cpu0 = probe.as_ref().map(|p| p.cpu_seconds()).transpose()?;
    let user0 = probe.as_ref().map(|p| p.user_cpu_seconds()).transpose()?;
    let sent = Arc::new(AtomicU64::new(0));
    let plan = Plan {
        channels: names.clone(),
        rate: o.rate,
        payload: o.payload,
        shape: o.shape,
        window: o.window,
        duration: c.duration,
    };
    let bar = progress(0, "publishing", c.json);
    bar.set_length(c.duration.as_secs().max(1));
    let ticker = {
        let (bar, shared) = (bar.clone(), shared.clone());
        tokio::spawn(async move {
            let start = Instant::now();
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                bar.set_position(start.elapsed().as_secs());
                bar.set_message(format!(
                    "{} deliveries",
                    shared.delivered.load(Ordering::Relaxed)
                ));
            }
        })
    };
    // The server's counters once a second (timeline only).
    let server_samples = Arc::new(Mutex::new(Vec::<stats::Metrics>::new()));
    let sampler = (o.timeline && metrics0.is_some()).then(|| {
        let (addr, out) = (t.addr, server_samples.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            for _ in 0..3600 {
                tick.tick().await;
                if let Some(m) = stats::scrape_metrics(addr).await
                    && let Ok(mut v) = out.lock()
                {
                    v.push(m);
                }
            }
        })
    });
    let started = Instant::now();
    shared.t0.store(now_ns(), Ordering::Relaxed);
    let outcome = publisher::publish(pub_conn, plan, sent).await;
    let _ = final_tx.send(Some(outcome.last_offsets.clone()));
    let mut results = Vec::with_capacity(tasks.len());
    for task in tasks {
        if let Ok(r) = task.await {
            results.push(r);
        }
    }
    let wall = started.elapsed();
    ticker.abort();
    bar.finish_and_clear();
    let cpu = match (&probe, cpu0) {
        (Some(p), Some(c0)) => Some(p.cpu_seconds()? - c0),
        _ => None,
    };
    let user_cpu = match (&probe, user0) {
        (Some(p), Some(u0)) => Some(p.user_cpu_seconds()? - u0),
        _ => None,
    };
    let rss = probe.as_ref().map(|p| p.rss_bytes()).transpose()?;
    if let Some(s) = sampler {
        s.abort();
    }
    let server_samples = server_samples.lock().map(|v| v.clone()).unwrap_or_default();
    let metrics1 = match metrics0 {
        Some(_) => stats::scrape_metrics(t.addr).await,
        None => None,
    };
    let ends = if n_stalled > 0 {
        Some(stalled_ends(stalled).await)
    } else {
        drop(stalled);
        None
    };
    let mut hist = stats::histogram();
    let mut by_second: Vec<Histogram<u64>> = Vec::new();
    for h in &shared.hist {
        if let Ok(h) = h.lock() {
            let _ = hist.add(&h.all);
            for (k, sh) in h.by_second.iter().enumerate() {
                if by_second.len() <= k {
                    by_second.push(sh.clone());
                } else {
                    let _ = by_second[k].add(sh);
                }
            }
        }
    }
    let delivered: u64 = results.iter().map(|r| r.received).sum();
    let expected: u64 = results.iter().map(|r| r.expected).sum();
    let duplicates: u64 = results.iter().map(|r| r.duplicates).sum();
    let wire: u64 = results.iter().map(|r| r.wire_bytes).sum();
    let mut report = json!({
        "scenario": "fanout",
        "subscribers": subscribers,
        "channels": o.channels,
        "connect_failures": failed,
        "first_connect_error": first_error,
        "connect_seconds": connect_seconds,
        "payload_bytes": o.payload,
        "shape": o.shape.name(),
        "compress_offered": c.compress,
        "rate": if o.rate == 0 { json!("max") } else { json!(o.rate) },
        "published": outcome.sent,
        "publish_acked": outcome.acked,
        "publish_errors": outcome.errors,
        "first_publish_error": outcome.first_error,
        "publish_seconds": stats::secs(outcome.elapsed),
        "publisher_closed_early": outcome.closed_early,
        "publisher_close_code": outcome.close_code,
        "publications_per_second": outcome.acked as f64 / outcome.elapsed.as_secs_f64(),
        "deliveries": delivered,
        "expected_deliveries": expected,
        "lost": expected.saturating_sub(delivered),
        "duplicates": duplicates,
        "wall_seconds": stats::secs(wall),
        "deliveries_per_second": delivered as f64 / wall.as_secs_f64(),
        "server_cpu_seconds": cpu,
        "deliveries_per_server_cpu_second": cpu.filter(|c| *c > 0.0).map(|c| delivered as f64 / c),
        "server_user_cpu_seconds": user_cpu,
        // The server's own work per delivery, without the kernel's (which, on loopback, includes
        // the receiving side's TCP processing and is nearly the same for every server).
        "server_user_cpu_us_per_delivery": user_cpu.filter(|_| delivered > 0).map(|u| u * 1e6 / delivered as f64),
        "wire_bytes_per_delivery": (delivered > 0).then(|| wire as f64 / delivered as f64),
        "server_rss_bytes": rss,
        "latency": stats::latency_json(&hist),
        "latency_clock": "publish call to subscriber read, same host clock",
        "measured_at_ns": now_ns(),
    });
    if let Some(obj) = report.as_object_mut() {
        if o.stalled_percent > 0.0 {
            obj.insert("stalled_percent".into(), json!(o.stalled_percent));
            obj.insert("stalled_subscribers".into(), json!(n_stalled));
            obj.insert("healthy_subscribers".into(), json!(healthy));
            obj.insert(
                "measured".into(),
                json!("deliveries, lost, duplicates and latency: healthy subscribers only"),
            );
            obj.insert("stalled_rcvbuf_bytes".into(), json!(o.stalled_rcvbuf));
        }
        if let Some(e) = ends {
            obj.insert("stalled_end".into(), e);
        }
        if let (Some(a), Some(b)) = (&metrics0, &metrics1) {
            obj.insert("server_counters_delta".into(), watched_delta(a, b));
        }
        if o.timeline {
            let ms = |us: u64| us as f64 / 1000.0;
            let lat: Vec<_> = by_second
                .iter()
                .enumerate()
                .map(|(k, h)| {
                    json!({
                        "second": k,
                        "samples": h.len(),
                        "p50_ms": ms(h.value_at_quantile(0.5)),
                        "p99_ms": ms(h.value_at_quantile(0.99)),
                        "max_ms": ms(h.max()),
                    })
                })
                .collect();
            obj.insert("timeline_latency_by_publish_second".into(), json!(lat));
            if let Some(a) = &metrics0 {
                let mut prev = a.clone();
                let srv: Vec<_> = server_samples
                    .iter()
                    .enumerate()
                    .map(|(k, m)| {
                        let d = watched_delta(&prev, m);
                        prev = m.clone();
                        json!({"second": k + 1, "server": d})
                    })
                    .collect();
                obj.insert("timeline_server_by_wall_second".into(), json!(srv));
            }
        }
    }
    stats::report("herald bench fanout", &report, c.json);
    if outcome.closed_early {
        eprintln!(
            "herald bench fanout: the server closed the publisher's connection after {:.1} s \
             (close code {}): the figures cover that time only",
            outcome.elapsed.as_secs_f64(),
            outcome
                .close_code
                .map_or("none".to_owned(), |c| c.to_string())
        );
    }
    Ok(())
}
