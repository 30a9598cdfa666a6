//! `herald bench churn`: real clients (herald-client) behind an in-process relay whose
//! connections are cut at random while a publisher runs; every client must end with every
//! publication of its channel exactly once (resume or recovery within the history window).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use herald_client::{Backoff, Client, ClientConfig, Event, State};
use rand::Rng;
use serde_json::json;

use super::publisher::{self, Plan};
use super::relay::relay;
use super::stats;
use super::{Common, Target, prefix, progress, raise_fd_limit};

#[derive(Default)]
struct Tally {
    received: u64,
    duplicates: u64,
    gaps: u64,
    reconnects: u64,
    last: u64,
}

/// Run the scenario.
pub async fn run(
    c: &Common,
    clients: usize,
    channels: usize,
    rate: u64,
    cut_every: Duration,
) -> anyhow::Result<()> {
    raise_fd_limit(clients * 3 + 16);
    let t = Arc::new(Target::new(c)?);
    let (relay_addr, relays) = relay(t.addr).await?;
    let p = prefix(c);
    let names: Vec<String> = (0..channels).map(|k| format!("{p}:{k}")).collect();
    let tallies: Vec<Arc<Mutex<Tally>>> = (0..clients)
        .map(|_| Arc::new(Mutex::new(Tally::default())))
        .collect();
    let bar = progress(clients as u64, "connecting", c.json);
    let mut handles = Vec::with_capacity(clients);
    for (i, tally) in tallies.iter().enumerate() {
        let mut cfg = ClientConfig::new(format!("ws://{relay_addr}{}", t.path));
        if let Some(tok) = &t.token {
            cfg = cfg.token(tok.clone());
        }
        cfg.backoff = Backoff {
            min: Duration::from_millis(20),
            first_max: Duration::from_millis(100),
            cap: Duration::from_secs(1),
            ..Backoff::default()
        };
        let (client, mut events) = Client::connect(cfg);
        let tally = tally.clone();
        tokio::spawn(async move {
            while let Some(e) = events.next().await {
                let Ok(mut t) = tally.lock() else { break };
                match e {
                    Event::Message(m) => {
                        if m.offset <= t.last {
                            t.duplicates += 1;
                        } else {
                            t.last = m.offset;
                            t.received += 1;
                        }
                    }
                    Event::Gap { .. } => t.gaps += 1,
                    Event::State(State::Disconnected { .. }) => t.reconnects += 1,
                    _ => {}
                }
            }
        });
        client
            .subscribe(&names[i % channels])
            .await
            .map_err(|e| anyhow::anyhow!("client {i}: subscribe: {e}"))?;
        bar.inc(1);
        handles.push(client);
    }
    bar.finish_and_clear();

    let cuts = Arc::new(AtomicU64::new(0));
    let cutter = {
        let (relays, cuts) = (relays.clone(), cuts.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(cut_every);
            tick.tick().await;
            loop {
                tick.tick().await;
                let victim = {
                    let Ok(m) = relays.lock() else { break };
                    if m.is_empty() {
                        continue;
                    }
                    let k = rand::rng().random_range(0..m.len());
                    m.values().nth(k).cloned()
                };
                if let Some(v) = victim {
                    v.abort();
                    cuts.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    let pub_conn = t.open(usize::MAX / 2).await?;
    let plan = Plan {
        channels: names.clone(),
        rate,
        payload: 64,
        shape: super::publisher::Shape::Padding,
        window: 64,
        duration: c.duration,
    };
    let bar = progress(c.duration.as_secs().max(1), "churning", c.json);
    let ticker = {
        let bar = bar.clone();
        tokio::spawn(async move {
            let start = Instant::now();
            loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                bar.set_position(start.elapsed().as_secs());
            }
        })
    };
    let outcome = publisher::publish(pub_conn, plan, Arc::new(AtomicU64::new(0))).await;
    cutter.abort();
    ticker.abort();
    bar.finish_and_clear();
    // Everyone must catch up to the final offset of their channel.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let behind = tallies
            .iter()
            .enumerate()
            .filter(|(i, t)| {
                t.lock()
                    .map(|t| t.last < outcome.last_offsets[i % channels])
                    .unwrap_or(true)
            })
            .count();
        if behind == 0 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for h in &handles {
        h.close().await;
    }
    let (mut received, mut expected, mut duplicates, mut gaps, mut reconnects) = (0, 0, 0, 0, 0);
    for (i, t) in tallies.iter().enumerate() {
        if let Ok(t) = t.lock() {
            received += t.received;
            expected += outcome.last_offsets[i % channels];
            duplicates += t.duplicates;
            gaps += t.gaps;
            reconnects += t.reconnects;
        }
    }
    let lost = expected.saturating_sub(received);
    let report = json!({
        "scenario": "churn",
        "clients": clients,
        "channels": channels,
        "published": outcome.sent,
        "publish_errors": outcome.errors,
        "first_publish_error": outcome.first_error,
        "publish_seconds": stats::secs(outcome.elapsed),
        "connections_cut": cuts.load(Ordering::Relaxed),
        "client_disconnects_seen": reconnects,
        "deliveries": received,
        "expected_deliveries": expected,
        "lost": lost,
        "duplicates": duplicates,
        "gap_events": gaps,
        "ok": lost == 0 && duplicates == 0 && gaps == 0,
    });
    stats::report("herald bench churn", &report, c.json);
    if lost > 0 || duplicates > 0 || gaps > 0 {
        anyhow::bail!("churn: {lost} lost, {duplicates} duplicated, {gaps} gap events");
    }
    Ok(())
}
