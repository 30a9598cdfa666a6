//! `herald bench storm`: a reconnect storm. N real clients (herald-client, default backoff) are
//! connected and subscribed through an in-process relay; every relayed connection is cut at once
//! (a network blip, a balancer failing over) and all clients come back together. Reports how
//! long until every one is connected again, how many attempts were refused (1013, with the
//! node's `limits.connect_per_second`) or failed otherwise, how many sessions were resumed, and
//! the server's CPU and peak RSS during the storm (`--pid`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use herald_client::{Client, ClientConfig, Event, State};
use serde_json::json;

use super::relay::relay;
use super::stats::{self, ServerProbe};
use super::{Common, Target, prefix, progress, raise_fd_limit};

/// What one client saw after the cut.
#[derive(Default)]
struct Seen {
    /// Set at the cut; the client is back once `back` is set.
    cut_at: Option<Instant>,
    back: Option<Duration>,
    resumed: bool,
    /// Disconnects after the cut (the first is the cut itself).
    downs: u64,
    /// Of those, refusals by the node's connect rate (1013).
    refused: u64,
}

/// Run the scenario.
pub async fn run(c: &Common, clients: usize, timeout: Duration) -> anyhow::Result<()> {
    raise_fd_limit(clients * 3 + 64);
    let t = Arc::new(Target::new(c)?);
    let probe = ServerProbe::new(&c.pid)?;
    let (relay_addr, relays) = relay(t.addr).await?;
    let p = prefix(c);
    let seen: Vec<Arc<Mutex<Seen>>> = (0..clients).map(|_| Arc::default()).collect();
    let bar = progress(clients as u64, "connecting", c.json);
    let mut handles = Vec::with_capacity(clients);
    let sem = Arc::new(tokio::sync::Semaphore::new(c.concurrency.max(1)));
    let mut joins = tokio::task::JoinSet::new();
    for (i, s) in seen.iter().enumerate() {
        let mut cfg = ClientConfig::new(format!("ws://{relay_addr}{}", t.path));
        if let Some(tok) = &t.token {
            cfg = cfg.token(tok.clone());
        }
        let (client, mut events) = Client::connect(cfg);
        let s = s.clone();
        tokio::spawn(async move {
            while let Some(e) = events.next().await {
                let Event::State(st) = e else { continue };
                let Ok(mut s) = s.lock() else { break };
                let Some(cut) = s.cut_at else { continue };
                if s.back.is_some() {
                    continue;
                }
                match st {
                    State::Connected { resumed, .. } => {
                        s.back = Some(cut.elapsed());
                        s.resumed = resumed;
                    }
                    State::Disconnected { code, .. } => {
                        s.downs += 1;
                        s.refused += u64::from(code == 1013);
                    }
                    _ => {}
                }
            }
        });
        let permit = sem.clone().acquire_owned().await?;
        let channel = format!("{p}:{}", i % 100);
        let sub = client.clone();
        let bar = bar.clone();
        joins.spawn(async move {
            let r = sub.subscribe(&channel).await;
            drop(permit);
            bar.inc(1);
            r.map_err(|e| anyhow::anyhow!("client {i}: subscribe: {e}"))
        });
        handles.push(client);
    }
    while let Some(r) = joins.join_next().await {
        r??;
    }
    bar.finish_and_clear();

    let cpu0 = probe.as_ref().map(|p| p.cpu_seconds()).transpose()?;
    let rss0 = probe.as_ref().map(|p| p.rss_bytes()).transpose()?;
    let peak_rss = Arc::new(AtomicU64::new(rss0.unwrap_or(0)));
    let sampler = probe.clone().map(|p| {
        let peak = peak_rss.clone();
        tokio::spawn(async move {
            loop {
                if let Ok(r) = p.rss_bytes() {
                    peak.fetch_max(r, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    });
    // The storm: every relayed connection cut at the same instant.
    let cut = Instant::now();
    for s in &seen {
        if let Ok(mut s) = s.lock() {
            s.cut_at = Some(cut);
        }
    }
    let victims: Vec<_> = relays
        .lock()
        .map(|m| m.values().cloned().collect())
        .unwrap_or_default();
    for v in victims {
        v.abort();
    }
    let bar = progress(clients as u64, "reconnecting", c.json);
    let deadline = cut + timeout;
    let back = loop {
        let back = seen
            .iter()
            .filter(|s| s.lock().map(|s| s.back.is_some()).unwrap_or(false))
            .count();
        bar.set_position(back as u64);
        if back == clients || Instant::now() > deadline {
            break back;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let all_back = cut.elapsed();
    bar.finish_and_clear();
    let cpu = match (&probe, cpu0) {
        (Some(p), Some(c0)) => Some(p.cpu_seconds()? - c0),
        _ => None,
    };
    if let Some(s) = sampler {
        s.abort();
    }
    for h in &handles {
        h.close().await;
    }
    let mut times: Vec<f64> = Vec::with_capacity(clients);
    let (mut resumed, mut refused, mut failed) = (0u64, 0u64, 0u64);
    for s in &seen {
        if let Ok(s) = s.lock() {
            if let Some(b) = s.back {
                times.push(stats::secs(b));
            }
            resumed += u64::from(s.resumed);
            refused += s.refused;
            failed += s.downs.saturating_sub(1 + s.refused);
        }
    }
    times.sort_by(f64::total_cmp);
    let pct = |q: f64| {
        times
            .get(((times.len() as f64 - 1.0) * q).round() as usize)
            .copied()
    };
    let report = json!({
        "scenario": "storm",
        "clients": clients,
        "back": back,
        "resumed": resumed,
        "seconds_until_all_back": (back == clients).then(|| stats::secs(all_back)),
        "back_p50_seconds": pct(0.5),
        "back_p99_seconds": pct(0.99),
        "refused_1013": refused,
        "failed_attempts": failed,
        "server_cpu_seconds": cpu,
        "server_rss_before": rss0,
        "server_rss_peak": probe.as_ref().map(|_| peak_rss.load(Ordering::Relaxed)),
        "ok": back == clients,
    });
    stats::report("herald bench storm", &report, c.json);
    if back < clients {
        anyhow::bail!("storm: only {back} of {clients} clients back within {timeout:?}");
    }
    Ok(())
}
