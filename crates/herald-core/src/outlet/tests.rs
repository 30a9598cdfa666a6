//! Tests of the outlet: its size, the writer's wake-ups, drains and slow-consumer policies.

use super::*;
use herald_proto::Data;

/// Issue 14: every connection holds an outlet; with its `Arc` counts it is a 160-byte
/// allocation (jemalloc's size class; 192 when the pong, redirect, compression policy and
/// room waiters were inline). A field added to `Queue` or `Outlet` must pay for itself.
#[test]
fn an_outlet_fits_a_160_byte_allocation() {
    let size = std::mem::size_of::<Outlet>() + 2 * std::mem::size_of::<usize>();
    assert!(size <= 160, "Arc<Outlet> is {size} bytes");
}

/// A writer task's waker: counts wake-ups, and reads the outlet when woken (a wake-up under
/// the queue's lock would deadlock here).
struct Writer {
    wakes: std::sync::atomic::AtomicUsize,
    outlet: std::sync::Weak<Outlet>,
}

impl std::task::Wake for Writer {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if let Some(o) = self.outlet.upgrade() {
            let _ = o.len();
        }
        self.wakes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Issue 14: the writer's waker was an `AtomicWaker`: every push took it (two atomic
/// read-modify-writes and a wake by value) and every drain registered a fresh clone (two
/// more). It is kept under the queue's lock now: registered once, woken once per drain.
#[test]
fn the_writer_is_woken_once_per_drain_and_its_waker_is_kept_not_cloned() {
    let o = Outlet::new(
        Format::Json,
        QueueLimits {
            max_messages: 16,
            max_bytes: 1 << 20,
        },
    );
    let w = Arc::new(Writer {
        wakes: Default::default(),
        outlet: Arc::downgrade(&o),
    });
    let wakes = || w.wakes.load(std::sync::atomic::Ordering::Relaxed);
    let waker = Waker::from(w.clone());
    let mut d = Drained::default();
    o.drain_for(&waker, 16, &mut d);
    let kept = Arc::strong_count(&w);
    assert_eq!(kept, 3, "the test's, the waker's and the outlet's");
    o.push_reply(Bytes::from_static(b"a"));
    o.push_reply(Bytes::from_static(b"b"));
    assert_eq!(wakes(), 1, "once until the writer drains again");
    for _ in 0..3 {
        d.frames.clear();
        o.drain_for(&waker, 16, &mut d);
        assert_eq!(Arc::strong_count(&w), kept, "compared, not cloned again");
    }
    o.close(CloseCode::GoingAway);
    assert_eq!(wakes(), 2);
    // `register` (the HTTP transports' way) arms it the same.
    o.register(&waker);
    o.redirect(Outlet::new(Format::Json, o.limits()));
    assert_eq!(wakes(), 3);
    // A finished task lets go of its own waker only: after a rotation's resume the outlet
    // may serve another connection already, which must still be woken.
    let other = Waker::from(Arc::new(Writer {
        wakes: Default::default(),
        outlet: Arc::downgrade(&o),
    }));
    o.forget_writer(&other);
    assert_eq!(Arc::strong_count(&w), 3, "another task's waker kept it");
    o.forget_writer(&waker);
    assert_eq!(Arc::strong_count(&w), 2, "the task's waker let go");
}

#[test]
fn a_drain_says_whether_it_left_the_queue_empty() {
    let o = Outlet::new(
        Format::Json,
        QueueLimits {
            max_messages: 16,
            max_bytes: 1 << 20,
        },
    );
    let mut d = Drained::default();
    o.drain(4, &mut d);
    assert!(d.emptied && d.frames.is_empty());
    o.push_reply(Bytes::from_static(b"a"));
    o.push_reply(Bytes::from_static(b"b"));
    o.drain(1, &mut d);
    assert!(!d.emptied, "one frame is left");
    o.drain(1, &mut d);
    assert!(d.emptied);
    assert_eq!(d.frames.len(), 2);
}

#[test]
fn a_pong_redirect_or_room_waiter_leaves_nothing_behind() {
    let o = Outlet::new(
        Format::Json,
        QueueLimits {
            max_messages: 4,
            max_bytes: 1 << 20,
        },
    );
    o.push_pong(Bytes::from_static(b"pong"));
    let mut d = Drained::default();
    o.drain(16, &mut d);
    assert_eq!(d.frames, vec![Bytes::from_static(b"pong")]);
    assert!(
        lock(&o.queue).rare.is_none(),
        "the written pong's box is gone"
    );
    o.set_deflate(None);
    assert!(lock(&o.queue).rare.is_none());
}

fn publication(ch: &str, offset: u64) -> Out {
    Out::Pub(Arc::new(Publication::new(
        Arc::from(ch),
        offset,
        Arc::from("e"),
        0,
        Data::json("1").expect("json"),
        None,
    )))
}

fn limits(n: usize) -> QueueLimits {
    QueueLimits {
        max_messages: n,
        max_bytes: 1 << 20,
    }
}

#[test]
fn disconnect_policy_closes_when_full() {
    let o = Outlet::new(Format::Json, limits(2));
    assert!(o.push(publication("a", 1), SlowConsumerPolicy::Disconnect));
    assert!(o.push(publication("a", 2), SlowConsumerPolicy::Disconnect));
    assert!(!o.push(publication("a", 3), SlowConsumerPolicy::Disconnect));
    assert_eq!(o.close_requested(), Some(CloseCode::SlowConsumer));
    assert!(o.is_empty());
}

#[test]
fn drop_oldest_keeps_newest_and_replies() {
    let o = Outlet::new(Format::Json, limits(3));
    o.push_reply(Bytes::from_static(b"r"));
    for i in 1..=5 {
        assert!(o.push(publication("a", i), SlowConsumerPolicy::DropOldest));
    }
    assert_eq!(o.queued_offsets("a"), vec![4, 5]);
    assert_eq!(o.len(), 3);
}

#[test]
fn latest_conflates_per_channel() {
    let o = Outlet::new(Format::Json, limits(10));
    for i in 1..=5 {
        o.push(publication("a", i), SlowConsumerPolicy::Latest);
        o.push(publication("b", i), SlowConsumerPolicy::Latest);
    }
    assert_eq!(o.queued_offsets("a"), vec![5]);
    assert_eq!(o.queued_offsets("b"), vec![5]);
    let mut d = Drained::default();
    o.drain(100, &mut d);
    assert_eq!(d.frames.len(), 2);
    assert!(d.close.is_none());
}
