//! A node's delivery position on one channel, and gap filling — written once for every engine.
//!
//! An engine whose live stream can lose publications (Redis Pub/Sub, core NATS: both drop
//! messages on a reconnect or under pressure) keeps one [`ChannelCursor`] per channel it
//! subscribed to. It feeds the cursor what the live stream carries ([`ChannelCursor::live`]) and,
//! after the live stream reconnects, asks it to catch up ([`ChannelCursor::catch_up`]). The cursor
//! delivers to the node in offset order and never twice: duplicates (the live stream racing a
//! catch-up) are dropped, skipped offsets are read from the engine's history in pages of at most
//! [`FILL_PAGE`] (a failed read is retried, then given up), and a live publication of another
//! epoch restarts the cursor in that epoch.
//!
//! What cannot be filled (history trimmed or disabled, the read kept failing, the stream reset
//! under the gap) is not hidden: the next publication is delivered with its offset, so every
//! client sees the skip and reports a gap (`docs/protocol.md` §4), and the node counts it in
//! `herald_broker_gap_unfilled_total{reason}`. Filled publications count in
//! `herald_broker_gap_filled_total`.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use herald_proto::StreamPosition;

use crate::broker::{BrokerError, HistoryPage, HistoryQuery};
use crate::publication::Publication;

/// Most publications read per history page while filling a gap.
pub const FILL_PAGE: usize = 256;

/// Attempts of one page read before the gap is given up.
const READ_ATTEMPTS: u32 = 3;

/// Reads a page of one channel's history (an engine's `history`, bound to the channel).
pub trait PageReader {
    /// The page `q` asks for.
    fn read(
        &mut self,
        q: HistoryQuery,
    ) -> impl Future<Output = Result<HistoryPage, BrokerError>> + Send;
}

/// A [`Broker`](crate::broker::Broker)'s history of one channel as a [`PageReader`].
pub struct BrokerHistory<'a> {
    /// The engine.
    pub broker: &'a dyn crate::broker::Broker,
    /// The channel.
    pub channel: &'a str,
    /// Pages read so far.
    pub reads: usize,
}

impl PageReader for BrokerHistory<'_> {
    fn read(
        &mut self,
        q: HistoryQuery,
    ) -> impl Future<Output = Result<HistoryPage, BrokerError>> + Send {
        self.reads += 1;
        self.broker.history(self.channel, q)
    }
}

/// How a fill ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fill {
    /// Everything missing was delivered.
    Complete,
    /// History no longer holds (all of) the missing publications: `lost` of them were skipped.
    Trimmed {
        /// How many offsets could not be delivered.
        lost: u64,
    },
    /// The stream is in another epoch now: what the old one held after the cursor is gone.
    EpochChanged,
    /// History could not be read (after retries).
    Failed,
}

/// What was last delivered on a channel on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelCursor {
    epoch: Arc<str>,
    last: u64,
}

impl ChannelCursor {
    /// A cursor at `(epoch, last)`: the stream position when this node subscribed.
    pub fn new(epoch: Arc<str>, last: u64) -> ChannelCursor {
        ChannelCursor { epoch, last }
    }

    /// The epoch and offset of the last publication delivered.
    pub fn position(&self) -> (&Arc<str>, u64) {
        (&self.epoch, self.last)
    }

    /// The stream moved to `offset` without a publication to deliver (an engine's marker for
    /// an offset that carries nothing for subscribers).
    pub fn advance(&mut self, offset: u64) {
        self.last = self.last.max(offset);
    }

    /// A publication from the live stream: delivered after whatever history holds between the
    /// cursor and it; dropped if already delivered.
    pub async fn live(
        &mut self,
        p: Arc<Publication>,
        history: &mut impl PageReader,
        deliver: &mut impl FnMut(Arc<Publication>),
    ) -> Option<Fill> {
        if p.epoch != self.epoch {
            // A new stream (engine flushed or restarted): the old one's tail is not recoverable
            // here; subscribers see the new epoch and report it.
            unfilled("epoch_changed", 1);
            self.epoch = p.epoch.clone();
            self.last = p.offset;
            deliver(p);
            return Some(Fill::EpochChanged);
        }
        if p.offset <= self.last {
            return None; // already delivered (a catch-up raced the live stream)
        }
        let mut fill = None;
        if p.offset > self.last + 1 {
            fill = Some(self.fill(Some(p.offset), history, deliver).await);
        }
        self.last = p.offset;
        deliver(p);
        fill
    }

    /// Deliver what history holds after the cursor (after the live stream was down). In another
    /// epoch, the cursor moves to the new stream's top.
    pub async fn catch_up(
        &mut self,
        history: &mut impl PageReader,
        deliver: &mut impl FnMut(Arc<Publication>),
    ) -> Fill {
        let fill = self.fill(None, history, deliver).await;
        if fill == Fill::EpochChanged {
            let q = HistoryQuery {
                since: None,
                limit: 0,
                reverse: false,
            };
            if let Ok(page) = read(history, q).await {
                self.epoch = page.epoch;
                self.last = page.top;
            }
        }
        fill
    }

    /// Deliver history after the cursor, up to (not including) `before` when given, in pages.
    async fn fill(
        &mut self,
        before: Option<u64>,
        history: &mut impl PageReader,
        deliver: &mut impl FnMut(Arc<Publication>),
    ) -> Fill {
        let missing = |last: u64| before.map(|b| b.saturating_sub(last + 1));
        let mut lost = 0;
        loop {
            let limit = missing(self.last).map_or(FILL_PAGE, |m| (m as usize).min(FILL_PAGE));
            if limit == 0 {
                return Fill::Complete;
            }
            let q = HistoryQuery {
                since: Some(StreamPosition {
                    offset: self.last,
                    epoch: self.epoch.to_string(),
                }),
                limit,
                reverse: false,
            };
            let page = match read(history, q).await {
                Ok(p) if p.epoch == self.epoch => p,
                Ok(_) | Err(BrokerError::EpochMismatch) => {
                    unfilled("epoch_changed", missing(self.last).unwrap_or(1));
                    return Fill::EpochChanged;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot fill a gap from history");
                    unfilled("read_failed", missing(self.last).unwrap_or(1));
                    return Fill::Failed;
                }
            };
            let n = page.publications.len();
            let start = self.last;
            let mut page_lost = 0;
            let mut beyond = false;
            for p in page.publications {
                if before.is_some_and(|b| p.offset >= b) {
                    beyond = true;
                    break;
                }
                if p.offset <= self.last {
                    continue;
                }
                page_lost += p.offset - self.last - 1; // trimmed between pages (or before the first)
                self.last = p.offset;
                metrics::counter!("herald_broker_gap_filled_total").increment(1);
                deliver(p);
            }
            if n < limit || beyond {
                // History has nothing more before `before`: the rest of the gap is gone.
                page_lost += missing(self.last).unwrap_or(0);
            }
            if page_lost > 0 {
                unfilled("trimmed", page_lost);
                lost += page_lost;
            }
            if beyond {
                return Fill::Trimmed { lost };
            }
            if n >= limit && self.last == start && missing(self.last) != Some(0) {
                // A full page that moved nothing forward: an engine bug, not a loop forever.
                unfilled("read_failed", missing(self.last).unwrap_or(1));
                return Fill::Failed;
            }
            if n < limit || missing(self.last) == Some(0) {
                return if lost > 0 {
                    Fill::Trimmed { lost }
                } else {
                    Fill::Complete
                };
            }
        }
    }
}

fn unfilled(reason: &'static str, n: u64) {
    metrics::counter!("herald_broker_gap_unfilled_total", "reason" => reason).increment(n);
}

/// One page, retried a few times on a failure of the backing service.
async fn read(history: &mut impl PageReader, q: HistoryQuery) -> Result<HistoryPage, BrokerError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match history.read(q.clone()).await {
            Err(BrokerError::Unavailable(e)) if attempt < READ_ATTEMPTS => {
                tracing::debug!(error = %e, attempt, "history read failed; retrying");
                tokio::time::sleep(Duration::from_millis(50 * u64::from(attempt))).await;
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests;
