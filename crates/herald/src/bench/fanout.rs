//! `herald bench fanout`: N subscribers over C channels, one publisher; end-to-end latency,
//! deliveries per second (wall and per server CPU second), loss and duplicates.

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
    pub window: usize,
    /// Publish through another node.
    pub publish_url: Option<String>,
}

const SHARDS: usize = 16;
const DRAIN: Duration = Duration::from_secs(10);

#[derive(Default)]
struct SubResult {
    received: u64,
    duplicates: u64,
    expected: u64,
}

struct Shared {
    delivered: AtomicU64,
    hist: Vec<Mutex<Histogram<u64>>>,
}

fn flush(shared: &Shared, shard: usize, samples: &mut Vec<u64>) {
    if let Ok(mut h) = shared.hist[shard % SHARDS].lock() {
        for s in samples.drain(..) {
            let _ = h.record(s.max(1));
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
                    samples.push(now.saturating_sub(t) / 1000);
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
    r
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
    let started_connect = Instant::now();
    let (conns, failed, first_error) = open_many(
        &t,
        o.subscribers,
        c.concurrency,
        move |i| names2[i % n_ch].clone(),
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
            .map(|_| Mutex::new(stats::histogram()))
            .collect(),
    });
    let (final_tx, final_rx) = watch::channel(None::<Vec<u64>>);
    let subscribers = conns.len();
    let mut tasks = Vec::with_capacity(subscribers);
    for (i, conn, start, _) in conns {
        tasks.push(tokio::spawn(subscriber(
            i,
            conn,
            start,
            i % n_ch,
            shared.clone(),
            final_rx.clone(),
        )));
    }
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
    let cpu0 = probe.as_ref().map(|p| p.cpu_seconds()).transpose()?;
    let sent = Arc::new(AtomicU64::new(0));
    let plan = Plan {
        channels: names.clone(),
        rate: o.rate,
        payload: o.payload,
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
    let started = Instant::now();
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
    let rss = probe.as_ref().map(|p| p.rss_bytes()).transpose()?;
    let mut hist = stats::histogram();
    for h in &shared.hist {
        if let Ok(h) = h.lock() {
            let _ = hist.add(&*h);
        }
    }
    let delivered: u64 = results.iter().map(|r| r.received).sum();
    let expected: u64 = results.iter().map(|r| r.expected).sum();
    let duplicates: u64 = results.iter().map(|r| r.duplicates).sum();
    let report = json!({
        "scenario": "fanout",
        "subscribers": subscribers,
        "channels": o.channels,
        "connect_failures": failed,
        "first_connect_error": first_error,
        "connect_seconds": connect_seconds,
        "payload_bytes": o.payload,
        "rate": if o.rate == 0 { json!("max") } else { json!(o.rate) },
        "published": outcome.sent,
        "publish_acked": outcome.acked,
        "publish_errors": outcome.errors,
        "first_publish_error": outcome.first_error,
        "publish_seconds": stats::secs(outcome.elapsed),
        "publications_per_second": outcome.acked as f64 / outcome.elapsed.as_secs_f64(),
        "deliveries": delivered,
        "expected_deliveries": expected,
        "lost": expected.saturating_sub(delivered),
        "duplicates": duplicates,
        "wall_seconds": stats::secs(wall),
        "deliveries_per_second": delivered as f64 / wall.as_secs_f64(),
        "server_cpu_seconds": cpu,
        "deliveries_per_server_cpu_second": cpu.filter(|c| *c > 0.0).map(|c| delivered as f64 / c),
        "server_rss_bytes": rss,
        "latency": stats::latency_json(&hist),
        "latency_clock": "publish call to subscriber read, same host clock",
        "measured_at_ns": now_ns(),
    });
    stats::report("herald bench fanout", &report, c.json);
    Ok(())
}
