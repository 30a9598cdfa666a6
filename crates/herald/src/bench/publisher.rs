//! The benchmark publisher: one raw connection publishing round-robin over channels, at a fixed
//! rate or closed-loop (a window of unacknowledged publications), with a timestamp in every
//! payload for end-to-end latency.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::sync::Semaphore;

use super::raw::{self, RawConn};
use super::stats::now_ns;

/// What to publish.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Channels, published round-robin (publication k goes to channel k mod len).
    pub channels: Vec<String>,
    /// Publications per second; 0 = closed loop.
    pub rate: u64,
    /// Application data bytes per publication (`Shape::Padding`).
    pub payload: usize,
    /// What the data looks like.
    pub shape: Shape,
    /// Unacknowledged publications allowed in closed-loop mode.
    pub window: usize,
    /// How long to publish.
    pub duration: Duration,
}

/// What happened.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Publications sent.
    pub sent: u64,
    /// Publications acknowledged.
    pub acked: u64,
    /// `error` replies.
    pub errors: u64,
    /// The first error reply.
    pub first_error: Option<String>,
    /// The last acknowledged offset per channel (index as in `Plan::channels`).
    pub last_offsets: Vec<u64>,
    /// Publishing time.
    pub elapsed: Duration,
    /// The server closed the publisher's connection before the plan's duration was over.
    pub closed_early: bool,
    /// The close code the server sent the publisher, if it closed it.
    pub close_code: Option<u16>,
}

/// What the published data looks like (every shape carries `"t"`, the publish time).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// `{"t":…,"p":"xxxx…"}`: `payload` bytes, compressing absurdly well.
    Padding,
    /// A ~100-byte chat message: a user and a line of text, varying.
    Chat,
    /// A ~3 KB dashboard object: 24 services' metrics, of which three change per publication.
    Dashboard,
}

impl Shape {
    /// From the `--shape` value.
    pub fn parse(s: &str) -> Shape {
        match s {
            "chat" => Shape::Chat,
            "dashboard" => Shape::Dashboard,
            _ => Shape::Padding,
        }
    }

    /// The `--shape` value.
    pub fn name(self) -> &'static str {
        match self {
            Shape::Padding => "padding",
            Shape::Chat => "chat",
            Shape::Dashboard => "dashboard",
        }
    }

    /// The JSON data of publication `seq`.
    fn data(self, seq: u64, pad: &str) -> String {
        let t = now_ns();
        match self {
            Shape::Padding => format!(r#"{{"t":{t},"p":"{pad}"}}"#),
            Shape::Chat => {
                const LINES: [&str; 6] = [
                    "are we still on for lunch at noon?",
                    "pushed the fix, can you review the PR",
                    "the build is green again",
                    "meeting moved to 3pm, same room",
                    "lol that demo went better than expected",
                    "who has the slides for tomorrow",
                ];
                let line = LINES[(seq as usize) % LINES.len()];
                format!(
                    r#"{{"t":{t},"user":"user-{}","room":"general","text":"{line} #{seq}"}}"#,
                    seq % 37
                )
            }
            Shape::Dashboard => {
                let services: Vec<String> = (0..24u64)
                    .map(|i| {
                        // Three services change with every publication; the rest hold still.
                        let moving = i < 3;
                        let rps = if moving { 1000 + (seq * 37 + i * 11) % 900 } else { 1200 + i * 17 };
                        let p99 = if moving { 40 + (seq * 13 + i) % 60 } else { 55 + i };
                        format!(
                            r#"{{"name":"service-{i:02}","status":"ok","region":"eu-west-1","rps":{rps},"p50_ms":{},"p99_ms":{p99},"errors":0,"version":"2.14.{}"}}"#,
                            8 + i % 5,
                            i % 4
                        )
                    })
                    .collect();
                format!(
                    r#"{{"t":{t},"seq":{seq},"cluster":"prod-eu","updated_by":"collector-7","services":[{}]}}"#,
                    services.join(",")
                )
            }
        }
    }
}

fn publication(id: u64, channel: &str, shape: Shape, pad: &str) -> Vec<u8> {
    let data = shape.data(id, pad);
    let text = format!(
        r#"{{"type":"publish","id":{id},"payload":{{"channel":"{channel}","data":{data}}}}}"#
    );
    raw::text_frame(text.as_bytes())
}

/// Publish according to `plan`; `sent_counter` is updated live (for progress).
pub async fn publish(conn: RawConn, plan: Plan, sent_counter: Arc<AtomicU64>) -> Outcome {
    let n_ch = plan.channels.len().max(1);
    let (mut reader, mut writer) = conn.into_split();
    let window = Arc::new(Semaphore::new(plan.window.max(1)));
    let acked = Arc::new(AtomicU64::new(0));
    let reader_window = window.clone();
    let reader_acked = acked.clone();
    let acks = tokio::spawn(async move {
        let mut last = vec![0u64; n_ch];
        let (mut errors, mut first_error) = (0u64, None);
        while let Ok(Some(m)) = reader.next().await {
            let is_error = memchr::memmem::find(m, b"\"type\":\"error\"").is_some();
            let is_reply = is_error || memchr::memmem::find(m, b"\"type\":\"reply\"").is_some();
            if !is_reply {
                continue;
            }
            if is_error {
                errors += 1;
                first_error.get_or_insert_with(|| String::from_utf8_lossy(m).into_owned());
            } else if let (Some(id), Some(off)) = (
                raw::number_after(m, b"\"id\":"),
                raw::number_after(m, b"\"offset\":"),
            ) {
                let ch = (id as usize) % n_ch;
                last[ch] = last[ch].max(off);
            }
            reader_acked.fetch_add(1, Ordering::Relaxed);
            reader_window.add_permits(1);
        }
        // The connection is gone: a closed-loop publisher waiting for a window slot stops.
        reader_window.close();
        (last, errors, first_error, reader.close_code)
    });
    let pad = "x".repeat(plan.payload.saturating_sub(30));
    let started = Instant::now();
    let mut sent: u64 = 0;
    let mut batch = Vec::new();
    let mut closed_early = false;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    'outer: while started.elapsed() < plan.duration {
        batch.clear();
        if plan.rate > 0 {
            tick.tick().await;
            let due = (plan.rate as f64 * started.elapsed().as_secs_f64()) as u64;
            while sent < due && batch.len() < 1 << 20 {
                let ch = &plan.channels[(sent as usize) % n_ch];
                batch.extend(publication(sent, ch, plan.shape, &pad));
                sent += 1;
            }
        } else {
            let Ok(p) = window.acquire().await else {
                closed_early = true;
                break;
            };
            p.forget();
            let mut n = 1;
            while n < 256 && window.try_acquire().map(|p| p.forget()).is_ok() {
                n += 1;
            }
            for _ in 0..n {
                let ch = &plan.channels[(sent as usize) % n_ch];
                batch.extend(publication(sent, ch, plan.shape, &pad));
                sent += 1;
            }
        }
        if acks.is_finished() || (!batch.is_empty() && writer.write_all(&batch).await.is_err()) {
            closed_early = true;
            break 'outer;
        }
        sent_counter.store(sent, Ordering::Relaxed);
    }
    let elapsed = started.elapsed();
    // Wait (bounded) for the outstanding acks.
    let deadline = Instant::now() + Duration::from_secs(10);
    while acked.load(Ordering::Relaxed) < sent && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let _ = writer.shutdown().await;
    drop(writer);
    let (last_offsets, errors, first_error, close_code) =
        acks.await
            .unwrap_or((vec![0; n_ch], 0, Some("ack reader failed".into()), None));
    Outcome {
        sent,
        acked: acked.load(Ordering::Relaxed),
        errors,
        first_error,
        last_offsets,
        elapsed,
        closed_early,
        close_code,
    }
}
