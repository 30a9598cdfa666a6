//! Direct writes from the fan-out (see the module docs of [`super`]).

use std::future::Future;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Wake, Waker};

use bytes::Bytes;
use herald_proto::{CloseCode, Data, Format};

use super::{Direct, Drained, Out, Outlet, QueueLimits, with_direct_writes};
use crate::config::SlowConsumerPolicy;
use crate::publication::Publication;
use crate::sync::lock;

/// A socket that takes at most `room` bytes in all (then `WouldBlock`), recording them.
#[derive(Default)]
struct Socket {
    room: Mutex<usize>,
    wire: Mutex<Vec<u8>>,
    /// Write calls made.
    writes: Mutex<usize>,
}

impl Direct for Socket {
    fn try_write(
        &self,
        frames: &[std::io::IoSlice<'_>],
        _: std::time::Instant,
    ) -> std::io::Result<usize> {
        *lock(&self.writes) += 1;
        let frame: Vec<u8> = frames.iter().flat_map(|f| f.iter().copied()).collect();
        let mut room = lock(&self.room);
        if *room == 0 {
            return Err(std::io::ErrorKind::WouldBlock.into());
        }
        let n = frame.len().min(*room);
        *room -= n;
        lock(&self.wire).extend_from_slice(&frame[..n]);
        Ok(n)
    }
}

/// A writer task that is never woken for real (the test drains by hand): counts wake-ups.
#[derive(Default)]
struct Task(std::sync::atomic::AtomicUsize);

impl Wake for Task {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

struct Setup {
    outlet: Arc<Outlet>,
    socket: Arc<Socket>,
    weak: Weak<dyn Direct>,
    task: Arc<Task>,
    waker: Waker,
}

impl Setup {
    fn new(room: usize) -> Setup {
        Setup::with_limit(room, 4)
    }

    /// A socket that takes `room` bytes, an outlet that holds `max_messages`.
    fn with_limit(room: usize, max_messages: usize) -> Setup {
        let outlet = Outlet::new(
            Format::Json,
            QueueLimits {
                max_messages,
                max_bytes: 1 << 20,
            },
        );
        let socket = Arc::new(Socket {
            room: Mutex::new(room),
            ..Socket::default()
        });
        let weak: Weak<dyn Direct> = Arc::downgrade(&socket) as Weak<Socket>;
        let task = Arc::new(Task::default());
        Setup {
            outlet,
            socket,
            weak,
            waker: Waker::from(task.clone()),
            task,
        }
    }

    /// The writer drains (arming its waker) and, having written all of it, reports idle.
    fn drain_and_idle(&self) -> Drained {
        let mut d = Drained::default();
        self.outlet.drain_for(&self.waker, 100, &mut d);
        self.outlet.idle(&self.weak);
        d
    }

    fn push(&self, offset: u64) -> bool {
        with_direct_writes(true, || {
            self.outlet
                .push(publication(offset), SlowConsumerPolicy::DropOldest)
        })
    }

    fn wire(&self) -> Vec<u8> {
        lock(&self.socket.wire).clone()
    }

    fn wakes(&self) -> usize {
        self.task.0.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn writes(&self) -> usize {
        *lock(&self.socket.writes)
    }

    /// Push publications `offsets` with the gate closed (a burst), in a corked scope.
    fn burst(&self, offsets: std::ops::Range<u64>) {
        for i in offsets {
            let queued = with_direct_writes(false, || {
                self.outlet
                    .push(publication(i), SlowConsumerPolicy::DropOldest)
            });
            assert!(queued);
        }
    }
}

fn publication(offset: u64) -> Out {
    Out::Pub(Arc::new(Publication::new(
        Arc::from("ch"),
        offset,
        Arc::from("e"),
        0,
        Data::json("1").expect("json"),
        None,
    )))
}

fn frame(offset: u64) -> Bytes {
    match publication(offset) {
        Out::Pub(p) => p.frame(Format::Json),
        _ => unreachable!(),
    }
}

#[test]
fn an_idle_writer_gets_publications_written_at_once() {
    let s = Setup::new(1 << 20);
    s.drain_and_idle();
    assert!(s.push(1));
    assert!(s.push(2));
    assert!(s.outlet.is_empty(), "written, not queued");
    assert_eq!(s.wire(), [frame(1), frame(2)].concat());
}

#[test]
fn nothing_is_written_directly_unless_the_writer_said_it_is_idle_and_the_gate_is_open() {
    let s = Setup::new(1 << 20);
    // Never reported idle.
    assert!(s.push(1));
    assert_eq!(s.outlet.len(), 1);
    // Idle is refused while something is queued; the drain takes it.
    s.outlet.idle(&s.weak);
    let d = s.drain_and_idle();
    assert_eq!(d.frames.len(), 1);
    // The gate closed (a burst): queued.
    let queued = with_direct_writes(false, || {
        s.outlet
            .push(publication(2), SlowConsumerPolicy::DropOldest)
    });
    assert!(queued);
    assert_eq!(s.outlet.len(), 1);
    // And the writer is busy with that until it reports idle again.
    assert!(s.push(3));
    assert_eq!(s.outlet.len(), 2);
    assert!(s.wire().is_empty());
}

/// A fan-out writes to at most `DIRECT_WRITES_PER_SCOPE` sockets itself; the rest is queued
/// for the connections' tasks (which other worker threads run).
#[test]
fn a_scope_makes_a_bounded_number_of_direct_writes() {
    let outlets: Vec<Setup> = (0..super::DIRECT_WRITES_PER_SCOPE + 3)
        .map(|_| Setup::new(1 << 20))
        .collect();
    for s in &outlets {
        s.drain_and_idle();
    }
    with_direct_writes(true, || {
        for s in &outlets {
            s.outlet
                .push(publication(1), SlowConsumerPolicy::DropOldest);
        }
    });
    let queued = outlets.iter().filter(|s| !s.outlet.is_empty()).count();
    assert_eq!(queued, 3);
}

/// Waiting for room once (a recovery) leaves the outlet's rarely used box behind: that must not
/// keep it from direct writes.
#[test]
fn an_outlet_that_waited_for_room_still_gets_direct_writes() {
    let s = Setup::new(1 << 20);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    assert!(rt.block_on(s.outlet.wait_for_room(1, std::time::Duration::from_secs(1))));
    s.drain_and_idle();
    assert!(s.push(1));
    assert!(s.outlet.is_empty());
    assert_eq!(s.wire(), frame(1).to_vec());
}

#[test]
fn a_full_socket_queues_and_the_writer_takes_over() {
    let s = Setup::new(0);
    s.drain_and_idle();
    assert!(s.push(1));
    assert_eq!(s.outlet.len(), 1, "queued when the socket takes nothing");
    // Not idle any more: the next one queues behind, in order.
    *lock(&s.socket.room) = 1 << 20;
    assert!(s.push(2));
    let d = s.drain_and_idle();
    assert_eq!(d.frames, vec![frame(1), frame(2)]);
    assert!(!d.partial);
}

#[test]
fn a_short_writes_rest_goes_first_survives_a_slow_consumer_and_is_taken_back() {
    let s = Setup::new(5);
    s.drain_and_idle();
    assert!(s.push(1));
    let whole = frame(1);
    assert_eq!(s.wire(), whole[..5].to_vec());
    // A pong owed and a resume's replies go behind the rest.
    s.outlet.push_pong(Bytes::from_static(b"P"));
    s.outlet
        .push_front(vec![Out::Reply(Bytes::from_static(b"R"))]);
    let mut d = Drained::default();
    s.outlet.drain(100, &mut d);
    assert!(d.partial);
    assert_eq!(
        d.frames,
        vec![
            whole.slice(5..),
            Bytes::from_static(b"P"),
            Bytes::from_static(b"R")
        ]
    );

    // A slow consumer's queue is cleared, but not the rest of a frame on the wire.
    let s = Setup::new(5);
    s.drain_and_idle();
    assert!(s.push(1));
    for i in 2..10 {
        s.outlet
            .push(publication(i), SlowConsumerPolicy::Disconnect);
    }
    assert_eq!(s.outlet.close_requested(), Some(CloseCode::SlowConsumer));
    // The link takes its socket back before writing its closing frames: the rest comes along,
    // and nobody else (a resumed session's connection) can drain it.
    assert_eq!(s.outlet.take_back(&s.weak), Some(frame(1).slice(5..)));
    assert!(s.outlet.is_empty());
    assert_eq!(s.outlet.take_back(&s.weak), None);
    // Taken back: the next idle writer (a resumed connection's) lends its own socket, and a
    // take-back with the old one takes nothing from it.
    let other = Setup::new(1 << 20);
    let mut d = Drained::default();
    s.outlet.drain_for(&s.waker, 100, &mut d);
    s.outlet.idle(&other.weak);
    assert_eq!(s.outlet.take_back(&s.weak), None);
    assert_eq!(s.outlet.take_back(&other.weak), None);
}

#[test]
fn a_socket_that_is_gone_is_not_written_and_the_push_is_queued() {
    let s = Setup::new(1 << 20);
    s.drain_and_idle();
    let Setup { outlet, socket, .. } = s;
    drop(socket);
    let queued = with_direct_writes(true, || {
        outlet.push(publication(1), SlowConsumerPolicy::DropOldest)
    });
    assert!(queued);
    assert_eq!(outlet.len(), 1);
}

#[test]
fn the_gate_is_restored_after_its_scope() {
    with_direct_writes(true, || {
        assert!(super::DIRECT_WRITES.get() > 0);
        with_direct_writes(false, || assert_eq!(super::DIRECT_WRITES.get(), 0));
        assert!(super::DIRECT_WRITES.get() > 0);
    });
    assert_eq!(super::DIRECT_WRITES.get(), 0);
}

/// Corked (a connection's task), a burst's publications to an idle subscriber wake no one and
/// go out together, one write, when the scope ends.
#[test]
fn a_corked_burst_is_one_write_per_subscriber_and_no_wake_up() {
    let s = Setup::with_limit(1 << 20, 100);
    s.drain_and_idle();
    super::corked(|| {
        s.burst(1..4);
        assert_eq!(s.outlet.len(), 3, "queued until the scope ends");
        assert!(s.wire().is_empty());
    });
    assert_eq!(s.wire(), [frame(1), frame(2), frame(3)].concat());
    assert_eq!(s.writes(), 1, "one vectored write");
    assert_eq!(s.wakes(), 0);
    assert!(s.outlet.is_empty());
    // Still idle: the next burst is corked again.
    super::corked(|| s.burst(4..5));
    assert_eq!(s.writes(), 2);
    assert_eq!(s.wakes(), 0);
    assert_eq!(
        s.wire(),
        (1..5).flat_map(|i| frame(i).to_vec()).collect::<Vec<u8>>()
    );
    assert!(s.outlet.is_empty());
}

/// Without a corked scope (an HTTP API publish, a broker's delivery), a closed gate wakes the
/// writer as before; in one, with the gate open, the first publication goes out at once and
/// what follows is corked behind nothing.
#[test]
fn outside_a_corked_task_a_push_wakes_the_writer() {
    let s = Setup::with_limit(1 << 20, 100);
    s.drain_and_idle();
    s.burst(1..3);
    assert_eq!(s.wakes(), 1, "woken once");
    assert_eq!(s.outlet.len(), 2);
    assert!(s.wire().is_empty());

    let s = Setup::with_limit(1 << 20, 100);
    s.drain_and_idle();
    super::corked(|| {
        assert!(s.push(1));
        assert_eq!(s.wire(), frame(1).to_vec(), "written at once");
        s.burst(2..4);
        // A push with the gate open behind a listed one queues behind it.
        assert!(s.push(4));
        assert_eq!(s.outlet.len(), 3);
    });
    assert_eq!(s.wire(), [frame(1), frame(2), frame(3), frame(4)].concat());
    assert_eq!(s.writes(), 2);
    assert_eq!(s.wakes(), 0);
}

/// A listed outlet whose writer was woken meanwhile (a close, a reply, a drain) is left to it:
/// the end of the scope writes nothing of what the writer owns now.
#[test]
fn a_listed_outlet_woken_meanwhile_is_left_to_its_writer() {
    let s = Setup::with_limit(1 << 20, 100);
    s.drain_and_idle();
    super::corked(|| {
        s.burst(1..3);
        s.outlet.close(CloseCode::ForceDisconnect);
    });
    assert!(s.wire().is_empty());
    assert_eq!(s.wakes(), 1);
    let mut d = Drained::default();
    s.outlet.drain(100, &mut d);
    assert_eq!(d.frames, vec![frame(1), frame(2)]);
    assert_eq!(d.close, Some(CloseCode::ForceDisconnect));

    // Drained by its writer (woken for something else) before the scope ended: nothing left to
    // write, and the push after the drain woke the writer (the drain ended its idleness).
    let s = Setup::with_limit(1 << 20, 100);
    s.drain_and_idle();
    super::corked(|| {
        s.burst(1..2);
        let mut d = Drained::default();
        s.outlet.drain_for(&s.waker, 100, &mut d);
        assert_eq!(d.frames, vec![frame(1)]);
        s.burst(2..3);
        assert_eq!(s.wakes(), 1);
    });
    assert!(s.wire().is_empty());
    assert_eq!(s.outlet.len(), 1);
}

/// What the socket does not take stays queued, the rest of a frame it cut first (on that socket
/// only), and the writer takes over.
#[test]
fn a_short_corked_write_leaves_the_rest_first_and_wakes_the_writer() {
    let first = frame(1).len();
    let s = Setup::with_limit(first + 5, 100);
    s.drain_and_idle();
    super::corked(|| s.burst(1..4));
    assert_eq!(s.wire(), [&frame(1)[..], &frame(2)[..5]].concat());
    assert_eq!(s.wakes(), 1);
    // Queued bytes: the rest as it is, the third as queued (an estimate of its frame).
    let queued = publication(3).len() + frame(2).len() - 5;
    assert_eq!(lock(&s.outlet.queue).bytes as usize, queued);
    let mut d = Drained::default();
    s.outlet.drain(100, &mut d);
    assert!(d.partial);
    assert_eq!(d.frames, vec![frame(2).slice(5..), frame(3)]);
    assert!(s.outlet.is_empty());
}

/// A scope writes at most `CORKED_PER_POLL` outlets itself and at most `MAX_FRAMES` frames to
/// each; the rest go to their writers. Nested scopes write once, when the outermost ends.
#[test]
fn a_corked_scope_is_bounded_and_nests() {
    let outlets: Vec<Setup> = (0..super::CORKED_PER_POLL + 2)
        .map(|_| Setup::with_limit(1 << 20, 100))
        .collect();
    for s in &outlets {
        s.drain_and_idle();
    }
    super::corked(|| {
        super::corked(|| {
            for s in &outlets {
                s.burst(1..2);
            }
        });
        assert!(
            outlets.iter().all(|s| s.wire().is_empty()),
            "the outer scope writes"
        );
    });
    let woken = outlets.iter().filter(|s| s.wakes() == 1).count();
    let written = outlets
        .iter()
        .filter(|s| s.wire() == frame(1).to_vec())
        .count();
    assert_eq!((woken, written), (2, super::CORKED_PER_POLL));

    // A listed outlet that fills up (a long poll: an API batch, a big read of commands) is
    // handed to its writer at `MAX_FRAMES`, or at half its limits, before it could overflow.
    let m = Setup::with_limit(1 << 20, 100);
    m.drain_and_idle();
    super::corked(|| {
        m.burst(0..super::cork::MAX_FRAMES as u64);
        assert_eq!(m.wakes(), 0);
        m.burst(16..20);
        assert_eq!(m.wakes(), 1, "the writer takes over");
    });
    assert!(
        m.wire().is_empty(),
        "and the end of the scope leaves it to the writer"
    );
    assert_eq!(m.outlet.len(), 20);
    let s = Setup::with_limit(1 << 20, 4);
    s.drain_and_idle();
    super::corked(|| {
        s.burst(1..3);
        assert_eq!(s.wakes(), 0);
        s.burst(3..4);
        assert_eq!(s.wakes(), 1, "three of four: over half");
    });
    assert_eq!(s.outlet.close_requested(), None, "no slow-consumer close");
}

/// A recovery that waits for room in a listed outlet is told when the corked write empties it
/// (as a drain tells it), not left to its timeout.
#[test]
fn a_corked_write_tells_a_recovery_waiting_for_room() {
    let s = Setup::with_limit(1 << 20, 4);
    s.drain_and_idle();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let _rt = rt.enter();
    let waiter = Arc::new(Task::default());
    let waker = Waker::from(waiter.clone());
    let mut cx = std::task::Context::from_waker(&waker);
    let mut wait = Box::pin(
        s.outlet
            .wait_for_room(3, std::time::Duration::from_secs(60)),
    );
    super::corked(|| {
        s.burst(1..3);
        assert!(wait.as_mut().poll(&mut cx).is_pending(), "2 + 3 > 4");
    });
    assert!(s.outlet.is_empty());
    assert_eq!(
        waiter.0.load(std::sync::atomic::Ordering::Relaxed),
        1,
        "woken by the corked write"
    );
    assert!(matches!(
        wait.as_mut().poll(&mut cx),
        std::task::Poll::Ready(true)
    ));
}
