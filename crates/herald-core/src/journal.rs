//! Bounded in-memory journals the server API reads: lifecycle events (for webhooks and polling
//! backends) and dead letters (what could not be processed or delivered).

use std::collections::VecDeque;
use std::sync::Mutex;

use serde::Serialize;
use serde_json::Value;

use crate::sync::lock;
use crate::sync::now_ms;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A session started (its first command; a `resume` continues the old session).
    Connect,
    /// A session ended: closed cleanly, or its resume grace period ran out.
    Disconnect,
    /// A session subscribed to a channel.
    Subscribe,
    /// A session left a channel.
    Unsubscribe,
    /// A channel got its first subscriber on this node.
    ChannelOccupied,
    /// A channel lost its last subscriber on this node.
    ChannelVacated,
    /// An at-least-once subscription gave up publications (`reason`: `ack_attempts_exhausted`
    /// or `trimmed`; the dead letter of reason `undelivered` names the offsets).
    Undelivered,
}

/// One lifecycle event.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// Unique id (deduplicate on it: delivery is at least once).
    pub id: String,
    /// Position in this node's sequence (increasing by one).
    pub seq: u64,
    /// Milliseconds since the Unix epoch.
    pub time: u64,
    /// The node that saw it.
    pub node: String,
    /// What happened.
    #[serde(rename = "type")]
    pub kind: EventKind,
    /// The session's client id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// The session's user.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// The channel.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    /// Why a session ended.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// How long the session lasted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
}

/// The names an event carries, in the order they sit in the log's name bytes.
const NAMES: usize = 4;
/// Length mark of an absent name.
const ABSENT: u16 = u16::MAX;
/// Longest name kept whole (in bytes); a longer one keeps its first this-many bytes, cut back to a
/// character boundary. Client ids, channel names (at most 255 bytes) and reasons are far
/// shorter; a user id this long would be a 64 KiB token's subject.
const MAX_NAME: usize = ABSENT as usize - 1;

/// One event as the log keeps it: 32 bytes, no allocation. Its names (client id, user id,
/// channel, reason) are appended to the log's name bytes, one ring beside the events that is
/// trimmed in the same order, so that the log is two buffers and not small allocations per event.
/// Those allocations, made while sessions came and went, pinned the pages around them after the
/// sessions ended: after a flood of 5 000 sessions a log of six allocations per event held ~30 MB
/// of otherwise free memory resident (`server.memory_trim_interval` could not give it back).
/// Neither the id nor the sequence number is kept: the sequence is the event's position after
/// the oldest, and the id is made from the log's random base and the sequence when the event is
/// read. (It was 128 bytes with three inline names: 1.3 MB at the default 10 000 events.)
struct Kept {
    time: u64,
    /// `u64::MAX`: none.
    duration_ms: u64,
    kind: EventKind,
    /// Byte length of each name, [`ABSENT`] when there is none.
    lens: [u16; NAMES],
}

impl Kept {
    fn size(&self) -> usize {
        self.lens
            .iter()
            .map(|&l| if l == ABSENT { 0 } else { usize::from(l) })
            .sum()
    }
}

/// The newest events and their names.
#[derive(Default)]
struct Ring {
    /// The newest `seq` (0 = none yet).
    last: u64,
    events: VecDeque<Kept>,
    /// Every kept event's names, oldest first.
    names: VecDeque<u8>,
}

impl Ring {
    /// The oldest kept `seq` (`last + 1` when empty).
    fn oldest(&self) -> u64 {
        self.last + 1 - self.events.len() as u64
    }

    fn pop_front(&mut self) {
        if let Some(gone) = self.events.pop_front() {
            self.names.drain(..gone.size());
            // A burst of long names does not keep its buffer after it has scrolled out.
            if self.names.capacity() > 64 * 1024 && self.names.len() < self.names.capacity() / 4 {
                self.names.shrink_to(self.names.len() * 2);
            }
        }
    }

    fn text(name: Option<&str>) -> (&[u8], u16) {
        match name {
            None => (&[], ABSENT),
            Some(t) => {
                let mut end = t.len().min(MAX_NAME);
                while !t.is_char_boundary(end) {
                    end -= 1;
                }
                // `end` ≤ MAX_NAME < u16::MAX.
                (&t.as_bytes()[..end], end as u16)
            }
        }
    }

    /// Events with `seq > since`, at most `limit`.
    fn read(&self, since: u64, limit: usize, node: &str, base: u128) -> Vec<Event> {
        let skip = since.saturating_sub(self.last - self.events.len() as u64);
        let mut at = 0;
        let mut out = Vec::new();
        for (i, e) in self.events.iter().enumerate() {
            let start = at;
            at += e.size();
            if (i as u64) < skip {
                continue;
            }
            if out.len() == limit {
                break;
            }
            let mut pos = start;
            let mut names = e.lens.map(|l| {
                (l != ABSENT).then(|| {
                    let l = usize::from(l);
                    let bytes: Vec<u8> = self.names.range(pos..pos + l).copied().collect();
                    pos += l;
                    // Cut on a character boundary when kept: whole UTF-8.
                    String::from_utf8_lossy(&bytes).into_owned()
                })
            });
            let seq = self.oldest() + i as u64;
            out.push(Event {
                id: event_id(base, seq),
                seq,
                time: e.time,
                node: node.to_owned(),
                kind: e.kind,
                client_id: names[0].take(),
                user_id: names[1].take(),
                channel: names[2].take(),
                reason: names[3].take(),
                duration_ms: (e.duration_ms != u64::MAX).then_some(e.duration_ms),
            });
        }
        out
    }
}

/// An event's id: a random version-4 UUID (simple form) per log, with the sequence number added
/// to its low 64 bits — unique within the log, and unrelated across logs and restarts (each log
/// draws its own base).
fn event_id(base: u128, seq: u64) -> String {
    let low = (base as u64).wrapping_add(seq) as u128;
    let bits = (base & !u128::from(u64::MAX)) | low;
    uuid::Builder::from_random_bytes(bits.to_be_bytes())
        .into_uuid()
        .simple()
        .to_string()
}

/// The node's event sequence, keeping the newest `capacity` events. Its buffer grows as events
/// come, never past `capacity` entries (a doubling would hold up to twice that).
pub struct EventLog {
    inner: Mutex<Ring>,
    capacity: usize,
    node: String,
    /// Where this log's event ids start (see [`event_id`]).
    id_base: u128,
    notify: tokio::sync::Notify,
}

impl EventLog {
    /// An empty log.
    pub fn new(node: &str, capacity: usize) -> EventLog {
        EventLog {
            inner: Mutex::new(Ring::default()),
            capacity: capacity.max(1),
            node: node.to_owned(),
            id_base: uuid::Uuid::new_v4().as_u128(),
            notify: tokio::sync::Notify::new(),
        }
    }

    /// Append an event.
    pub fn push(
        &self,
        kind: EventKind,
        client_id: Option<&str>,
        user_id: Option<&str>,
        channel: Option<&str>,
        reason: Option<&'static str>,
        duration_ms: Option<u64>,
    ) {
        let names = [client_id, user_id, channel, reason].map(Ring::text);
        let e = Kept {
            time: now_ms(),
            duration_ms: duration_ms.map_or(u64::MAX, |d| d.min(u64::MAX - 1)),
            kind,
            lens: names.map(|(_, l)| l),
        };
        {
            let mut g = lock(&self.inner);
            g.last += 1;
            if g.events.len() == self.capacity {
                g.pop_front();
            } else if g.events.len() == g.events.capacity() {
                // Double, but not past the capacity.
                let len = g.events.len();
                g.events.reserve_exact(len.max(16).min(self.capacity - len));
            }
            g.events.push_back(e);
            for (bytes, _) in names {
                g.names.extend(bytes);
            }
        }
        metrics::counter!("herald_events_total").increment(1);
        self.notify.notify_waiters();
    }

    /// Count an event that a connection's quota kept out of the log.
    pub fn suppressed(&self, kind: EventKind) {
        let kind = match kind {
            EventKind::Connect => "connect",
            EventKind::Disconnect => "disconnect",
            EventKind::Subscribe => "subscribe",
            EventKind::Unsubscribe => "unsubscribe",
            EventKind::ChannelOccupied => "channel_occupied",
            EventKind::ChannelVacated => "channel_vacated",
            EventKind::Undelivered => "undelivered",
        };
        metrics::counter!("herald_journal_suppressed_total", "journal" => "events", "reason" => kind)
            .increment(1);
    }

    /// Events with `seq > since`, at most `limit`, and the oldest `seq` still kept (so a reader
    /// can tell it fell behind: `oldest > since + 1`).
    pub fn since(&self, since: u64, limit: usize) -> (Vec<Event>, u64) {
        let g = lock(&self.inner);
        (g.read(since, limit, &self.node, self.id_base), g.oldest())
    }

    /// The newest `seq` (0 = none yet).
    pub fn last_seq(&self) -> u64 {
        lock(&self.inner).last
    }

    /// Wait until an event is appended.
    pub async fn appended(&self) {
        self.notify.notified().await
    }
}

/// Why a dead letter was written (the `reason` of the letter and of `herald_dead_letters_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadLetterKind {
    /// A client frame could not be used: its error code (`malformed`, `unknown_type`,
    /// `wrong_frame_type`, …).
    Frame(herald_proto::ErrorCode),
    /// A backend call (a proxy, `rpc`) failed after its retries.
    BackendFailed,
    /// A webhook delivery failed after its retries.
    Webhook,
    /// Lifecycle events left the event log before the webhook delivered them.
    EventsDropped,
    /// A publication could not be encoded for subscribers.
    Encode,
    /// An at-least-once subscription gave publications up (never acknowledged, or trimmed from
    /// history while the window held them back).
    Undelivered,
}

impl DeadLetterKind {
    /// The reason as written in the letter and the metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            DeadLetterKind::Frame(code) => code.as_str(),
            DeadLetterKind::BackendFailed => "backend_failed",
            DeadLetterKind::Webhook => "webhook",
            DeadLetterKind::EventsDropped => "events_dropped",
            DeadLetterKind::Encode => "encode",
            DeadLetterKind::Undelivered => "undelivered",
        }
    }
}

impl Serialize for DeadLetterKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// One dead letter.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetter {
    /// Unique id.
    pub id: String,
    /// Milliseconds since the Unix epoch.
    pub time: u64,
    /// Why (also the `reason` label of `herald_dead_letters_total`).
    pub reason: DeadLetterKind,
    /// What it was about (client, method, channel, error, ...).
    pub context: Value,
}

/// The newest dead letters, bounded.
pub struct DeadLetters {
    inner: Mutex<VecDeque<DeadLetter>>,
    capacity: usize,
}

impl DeadLetters {
    /// An empty store keeping `capacity` letters.
    pub fn new(capacity: usize) -> DeadLetters {
        DeadLetters {
            inner: Mutex::new(VecDeque::new()),
            capacity: capacity.max(1),
        }
    }

    /// Record one (and count it by reason).
    pub fn push(&self, reason: DeadLetterKind, context: Value) {
        metrics::counter!("herald_dead_letters_total", "reason" => reason.as_str()).increment(1);
        let mut g = lock(&self.inner);
        if g.len() == self.capacity {
            g.pop_front();
        }
        g.push_back(DeadLetter {
            id: uuid::Uuid::new_v4().simple().to_string(),
            time: now_ms(),
            reason,
            context,
        });
    }

    /// Count a dead letter that a connection's quota kept out of the store (still counted in
    /// `herald_dead_letters_total`, so the counter stays exact).
    pub fn suppressed(&self, reason: DeadLetterKind) {
        metrics::counter!("herald_dead_letters_total", "reason" => reason.as_str()).increment(1);
        metrics::counter!("herald_journal_suppressed_total", "journal" => "dead_letters", "reason" => reason.as_str())
            .increment(1);
    }

    /// The newest `limit` letters, oldest first.
    pub fn list(&self, limit: usize) -> Vec<DeadLetter> {
        let g = lock(&self.inner);
        g.iter()
            .skip(g.len().saturating_sub(limit))
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_log_is_bounded_and_sequenced() {
        let log = EventLog::new("n1", 3);
        for _ in 0..5 {
            log.push(EventKind::Connect, Some("c"), Some("u"), None, None, None);
        }
        let (events, oldest) = log.since(0, 10);
        assert_eq!(
            events.iter().map(|e| e.seq).collect::<Vec<_>>(),
            vec![3, 4, 5]
        );
        assert_eq!(oldest, 3);
        assert_eq!(log.since(4, 10).0.len(), 1);
        assert_eq!(log.last_seq(), 5);
    }

    /// Issue 14: at 10 000 events the log's buffer had doubled to 16 384 slots (2.4 MB, a quarter
    /// of a kilobyte per idle connection in `herald bench idle`), and each event kept a 16-byte id.
    #[test]
    fn the_buffer_stops_at_the_capacity_and_ids_stay_unique() {
        let log = EventLog::new("n1", 1000);
        for _ in 0..2500 {
            log.push(EventKind::Connect, Some("c"), None, None, None, None);
        }
        assert!(lock(&log.inner).events.capacity() <= 1000);
        let (events, _) = log.since(0, 2000);
        assert_eq!(events.len(), 1000);
        let ids: std::collections::HashSet<_> = events.iter().map(|e| e.id.clone()).collect();
        assert_eq!(ids.len(), 1000);
        // Read twice, an event keeps its id; another log's ids are unrelated.
        assert_eq!(log.since(1500, 1).0[0].id, events[0].id);
        let other = EventLog::new("n1", 10);
        other.push(EventKind::Connect, Some("c"), None, None, None, None);
        assert!(!ids.contains(&other.since(0, 1).0[0].id));
    }

    #[test]
    fn events_come_out_as_they_went_in() {
        let log = EventLog::new("n1", 10);
        let long = "u".repeat(300);
        log.push(
            EventKind::Disconnect,
            Some("1f3a9b2c-7"),
            Some(&long),
            None,
            Some("resume grace period expired"),
            Some(42),
        );
        log.push(
            EventKind::Subscribe,
            Some(""),
            None,
            Some("chat:é"),
            None,
            None,
        );
        let (events, _) = log.since(0, 10);
        let e = &events[0];
        assert_eq!(
            serde_json::to_value(e).expect("json"),
            serde_json::json!({
                "id": e.id, "seq": 1, "time": e.time, "node": "n1", "type": "disconnect",
                "client_id": "1f3a9b2c-7", "user_id": long,
                "reason": "resume grace period expired", "duration_ms": 42,
            })
        );
        assert_eq!(e.id.len(), 32);
        assert!(e.id.bytes().all(|b| b.is_ascii_hexdigit()));
        // An empty name is not an absent one.
        assert_eq!(
            serde_json::to_value(&events[1]).expect("json"),
            serde_json::json!({
                "id": events[1].id, "seq": 2, "time": events[1].time, "node": "n1",
                "type": "subscribe", "client_id": "", "channel": "chat:é",
            })
        );
    }

    /// Issue 14: each event took 128 bytes (three 24-byte inline names, a sequence number, an
    /// optional duration and a reason): 1.3 MB at the default 10 000 events, 128 bytes per
    /// connection in `herald bench idle`'s 10 000.
    #[test]
    fn an_event_is_32_bytes_and_its_names_scroll_out_with_it() {
        assert_eq!(std::mem::size_of::<Kept>(), 32);
        let log = EventLog::new("n1", 3);
        for i in 0..50u64 {
            let name = format!("client-{i}-{}", "x".repeat(i as usize));
            log.push(
                EventKind::Connect,
                Some(&name),
                Some("u"),
                None,
                None,
                Some(i),
            );
        }
        let (events, oldest) = log.since(0, 10);
        assert_eq!(oldest, 48);
        let got: Vec<_> = events
            .iter()
            .map(|e| {
                (
                    e.seq,
                    e.client_id.clone().unwrap_or_default(),
                    e.duration_ms,
                )
            })
            .collect();
        let want: Vec<_> = (47..50u64)
            .map(|i| {
                (
                    i + 1,
                    format!("client-{i}-{}", "x".repeat(i as usize)),
                    Some(i),
                )
            })
            .collect();
        assert_eq!(got, want);
        let g = lock(&log.inner);
        assert_eq!(
            g.names.len(),
            g.events.iter().map(Kept::size).sum::<usize>()
        );
        drop(g);
        // Reading from the middle, and past the end.
        assert_eq!(log.since(48, 10).0.len(), 2);
        assert_eq!(log.since(49, 10).0[0].user_id.as_deref(), Some("u"));
        assert!(log.since(50, 10).0.is_empty());
        assert!(log.since(99, 10).0.is_empty());
    }

    #[test]
    fn a_name_longer_than_the_log_keeps_is_cut_on_a_character_boundary() {
        let log = EventLog::new("n1", 2);
        let user = "é".repeat(MAX_NAME); // two bytes each
        log.push(EventKind::Connect, Some("c"), Some(&user), None, None, None);
        let (events, _) = log.since(0, 1);
        let kept = events[0].user_id.clone().expect("user");
        assert!(kept.len() <= MAX_NAME && kept.len() >= MAX_NAME - 1);
        assert!(user.starts_with(&kept));
        // A burst of long names gives its buffer back once it has scrolled out.
        for _ in 0..4 {
            log.push(EventKind::Connect, Some("c"), Some(&user), None, None, None);
        }
        for _ in 0..2 {
            log.push(EventKind::Connect, Some("c"), None, None, None, None);
        }
        assert!(lock(&log.inner).names.capacity() < 64 * 1024 * 2);
    }

    #[test]
    fn dead_letters_keep_the_newest() {
        let d = DeadLetters::new(2);
        for i in 0..3 {
            d.push(DeadLetterKind::Webhook, serde_json::json!({"i": i}));
        }
        let l = d.list(10);
        assert_eq!(l.len(), 2);
        assert_eq!(l[1].context["i"], 2);
    }
}
