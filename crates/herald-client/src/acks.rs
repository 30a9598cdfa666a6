//! The application's side of at-least-once acks: what it processed, per channel, for the driver
//! to turn into `ack` commands (`state/acks.rs` batches them).

use std::collections::BTreeMap;
use std::sync::Mutex;

/// Processed positions of at-least-once channels, waiting for the driver (one entry per channel,
/// the highest offset: bounded by the subscriptions, never blocks the application).
#[derive(Default)]
pub(crate) struct AckBoard {
    pending: Mutex<BTreeMap<String, u64>>,
    pub(crate) notify: tokio::sync::Notify,
}

impl AckBoard {
    pub(crate) fn put(&self, channel: &str, offset: u64) {
        {
            let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            match p.get_mut(channel) {
                Some(o) => *o = (*o).max(offset),
                None => {
                    p.insert(channel.to_owned(), offset);
                }
            }
        }
        self.notify.notify_one();
    }

    /// Everything put since the last call.
    pub(crate) fn take(&self) -> BTreeMap<String, u64> {
        std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()))
    }
}
