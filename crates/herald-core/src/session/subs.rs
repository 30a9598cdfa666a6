//! A session's subscriptions by channel name: a sorted vector. A session holds a few channels
//! (at most `session.max_channels`), and a hash map's table costs ~150 bytes for the first one —
//! as much as the rest of an idle connection's subscription.

use std::sync::Arc;

use crate::hub::Subscriber;

/// Subscriptions, sorted by channel.
#[derive(Default)]
pub(super) struct Subs(Vec<(String, Arc<Subscriber>)>);

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
                if self.0.capacity() == 0 {
                    self.0.reserve_exact(1);
                }
                self.0.insert(i, (channel, sub));
                None
            }
        }
    }

    pub(super) fn remove(&mut self, channel: &str) -> Option<Arc<Subscriber>> {
        let i = self.find(channel).ok()?;
        let (_, sub) = self.0.remove(i);
        if self.0.is_empty() {
            self.0 = Vec::new();
        }
        Some(sub)
    }

    /// Take every subscription out.
    pub(super) fn drain(&mut self) -> impl Iterator<Item = (String, Arc<Subscriber>)> {
        std::mem::take(&mut self.0).into_iter()
    }
}

impl<'a> IntoIterator for &'a Subs {
    type Item = (&'a String, &'a Arc<Subscriber>);
    type IntoIter = std::iter::Map<
        std::slice::Iter<'a, (String, Arc<Subscriber>)>,
        fn(&'a (String, Arc<Subscriber>)) -> (&'a String, &'a Arc<Subscriber>),
    >;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter().map(|(c, s)| (c, s))
    }
}
