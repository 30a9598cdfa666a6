//! Direct writes from the fan-out (see the module docs of [`super`]).

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
}

impl Direct for Socket {
    fn try_write(&self, frame: &[u8], _: std::time::Instant) -> std::io::Result<usize> {
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

/// A writer task that is never woken for real (the test drains by hand).
struct Task;

impl Wake for Task {
    fn wake(self: Arc<Self>) {}
}

struct Setup {
    outlet: Arc<Outlet>,
    socket: Arc<Socket>,
    weak: Weak<dyn Direct>,
    waker: Waker,
}

impl Setup {
    fn new(room: usize) -> Setup {
        let outlet = Outlet::new(
            Format::Json,
            QueueLimits {
                max_messages: 4,
                max_bytes: 1 << 20,
            },
        );
        let socket = Arc::new(Socket {
            room: Mutex::new(room),
            ..Socket::default()
        });
        let weak: Weak<dyn Direct> = Arc::downgrade(&socket) as Weak<Socket>;
        Setup {
            outlet,
            socket,
            weak,
            waker: Waker::from(Arc::new(Task)),
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
