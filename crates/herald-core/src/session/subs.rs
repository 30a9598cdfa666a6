//! A session's subscriptions by channel name: a sorted vector. A session holds a few channels
//! (at most `session.max_channels`), and a hash map's table costs ~150 bytes for the first one —
//! as much as the rest of an idle connection's subscription. Channel names up to 24 bytes sit
//! in the entry (`CompactString`): no allocation of their own.

use std::sync::Arc;

use compact_str::CompactString;

use crate::hub::Subscriber;

/// Subscriptions, sorted by channel: a boxed slice, exactly as long as it holds (16 bytes in
/// every connection's session, not a vector's 24; a subscribe or unsubscribe moves the entries
/// anyway, to keep them sorted).
#[derive(Default)]
pub(super) struct Subs(Box<[(CompactString, Arc<Subscriber>)]>);

impl Subs {
    fn find(&self, channel: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(c, _)| c.as_str().cmp(channel))
    }

    pub(super) fn len(&self) -> usize {
        self.0.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(super) fn get(&self, channel: &str) -> Option<&Arc<Subscriber>> {
        self.find(channel).ok().map(|i| &self.0[i].1)
    }

    pub(super) fn contains_key(&self, channel: &str) -> bool {
        self.find(channel).is_ok()
    }

    /// Add or replace a subscription; the replaced one is returned.
    pub(super) fn insert(
        &mut self,
        channel: String,
        sub: Arc<Subscriber>,
    ) -> Option<Arc<Subscriber>> {
        match self.find(&channel) {
            Ok(i) => Some(std::mem::replace(&mut self.0[i].1, sub)),
            Err(i) => {
                let mut v = std::mem::take(&mut self.0).into_vec();
                v.reserve_exact(1);
                v.insert(i, (CompactString::from(channel), sub));
                self.0 = v.into_boxed_slice();
                None
            }
        }
    }

    pub(super) fn remove(&mut self, channel: &str) -> Option<Arc<Subscriber>> {
        let i = self.find(channel).ok()?;
        let mut v = std::mem::take(&mut self.0).into_vec();
        let (_, sub) = v.remove(i);
        self.0 = v.into_boxed_slice();
        Some(sub)
    }

    /// Take every subscription out.
    pub(super) fn drain(&mut self) -> impl Iterator<Item = (String, Arc<Subscriber>)> {
        std::mem::take(&mut self.0)
            .into_vec()
            .into_iter()
            .map(|(c, s)| (c.into_string(), s))
    }
}

impl<'a> IntoIterator for &'a Subs {
    type Item = (&'a str, &'a Arc<Subscriber>);
    type IntoIter = std::iter::Map<
        std::slice::Iter<'a, (CompactString, Arc<Subscriber>)>,
        fn(&'a (CompactString, Arc<Subscriber>)) -> (&'a str, &'a Arc<Subscriber>),
    >;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter().map(|(c, s)| (c.as_str(), s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 14: each subscription's channel name was a `String` of its own (a 16-byte
    /// allocation for `bench-42`, per idle connection).
    #[test]
    fn short_channel_names_take_no_allocation_and_stay_sorted() {
        let limits = crate::outlet::QueueLimits {
            max_messages: 10,
            max_bytes: 1 << 10,
        };
        let outlet = crate::outlet::Outlet::new(herald_proto::Format::Json, limits);
        let sub = || {
            Subscriber::new(
                outlet.clone(),
                Arc::from("c1"),
                crate::config::SlowConsumerPolicy::Disconnect,
                false,
            )
        };
        let mut subs = Subs::default();
        let long = "x".repeat(40);
        for c in ["b", "a", long.as_str(), "chat:room-1234567890123"] {
            assert!(subs.insert(c.to_owned(), sub()).is_none());
        }
        assert!(subs.insert("a".to_owned(), sub()).is_some());
        let names: Vec<&str> = (&subs).into_iter().map(|(c, _)| c).collect();
        assert_eq!(names, ["a", "b", "chat:room-1234567890123", long.as_str()]);
        let heap: Vec<bool> = subs.0.iter().map(|(c, _)| c.is_heap_allocated()).collect();
        assert_eq!(heap, [false, false, false, true]);
        assert!(subs.remove("b").is_some() && !subs.contains_key("b"));
        assert_eq!(subs.drain().count(), 3);
        assert!(subs.is_empty());
        // Every connection's session holds one.
        assert_eq!(std::mem::size_of::<Subs>(), 16);
    }
}
