//! At-least-once subscriptions (`docs/protocol.md` §8a): acknowledging what the application
//! processed, batched — at once when half the window is unacknowledged, else within
//! [`ACK_DELAY`] — and the `gap` push.

use herald_proto::envelope::GapPush;

use super::*;
use crate::event::GapReason;

/// Longest wait before a processed offset is acknowledged.
pub(crate) const ACK_DELAY: Duration = Duration::from_millis(100);

/// One at-least-once subscription's acknowledgements.
#[derive(Debug, Clone)]
pub(crate) struct Acks {
    window: u32,
    /// Highest offset the application processed.
    processed: u64,
    /// Highest offset acknowledged to the server (or covered by a resume position).
    sent: u64,
    /// When the pending ack goes out.
    due: Option<Instant>,
}

impl Acks {
    /// Starting at `position` (everything up to it counts as acknowledged).
    pub(crate) fn new(window: u32, position: u64) -> Acks {
        Acks {
            window,
            processed: position,
            sent: position,
            due: None,
        }
    }

    pub(crate) fn due(&self) -> Option<Instant> {
        self.due
    }

    /// The connection ended: unsent acks are carried by the resume positions (or by the
    /// recovery position of a new subscription), not sent on the next connection.
    pub(crate) fn connection_ended(&mut self) {
        self.sent = self.processed;
        self.due = None;
    }
}

impl ClientState {
    /// The application processed `channel` up to `offset` (automatic mode: it asked for the
    /// next event; manual mode: it said so).
    pub(crate) fn processed(&mut self, channel: &str, offset: u64, now: Instant) {
        if !matches!(self.link, Link::Up) {
            return;
        }
        let Some(a) = self.subs.get_mut(channel).and_then(|s| s.acks.as_mut()) else {
            return;
        };
        if offset <= a.processed {
            return;
        }
        a.processed = offset;
        let half = u64::from((a.window / 2).max(1));
        if a.processed - a.sent >= half {
            self.send_ack(channel);
        } else if a.due.is_none() {
            a.due = Some(now + ACK_DELAY);
        }
    }

    fn send_ack(&mut self, channel: &str) {
        let Some(a) = self.subs.get_mut(channel).and_then(|s| s.acks.as_mut()) else {
            return;
        };
        a.due = None;
        if a.processed <= a.sent {
            return;
        }
        a.sent = a.processed;
        let offset = a.processed;
        self.send("ack", None, json!({"channel": channel, "offset": offset}));
    }

    pub(super) fn send_due_acks(&mut self, now: Instant) {
        let due: Vec<String> = self
            .subs
            .iter()
            .filter(|(_, s)| {
                s.acks
                    .as_ref()
                    .and_then(Acks::due)
                    .is_some_and(|t| t <= now)
            })
            .map(|(c, _)| c.clone())
            .collect();
        for c in due {
            self.send_ack(&c);
        }
    }

    /// The server gave up offsets `from..=to`: report them unless already held, and go on after
    /// `to`.
    pub(super) fn on_gap(&mut self, g: GapPush) {
        let Some(sub) = self.subs.get_mut(&g.channel) else {
            return;
        };
        if !sub.positioned || sub.epoch != g.epoch || g.to <= sub.offset {
            return;
        }
        let last = sub.offset;
        sub.offset = g.to;
        sub.gap_reported = false;
        if let Some(a) = &mut sub.acks {
            // Given up by the server: nothing to acknowledge up to `to`.
            a.processed = a.processed.max(g.to);
            a.sent = a.sent.max(g.to);
        }
        let reason = match g.reason.as_str() {
            "trimmed" => GapReason::Trimmed,
            _ => GapReason::Unacknowledged,
        };
        self.emit(Event::Gap {
            channel: g.channel,
            reason,
            last_offset: last,
            resumed_at: g.to,
        });
    }
}
