//! A `/ws` connection's task in two phases, each in its own allocation: the setup (the upgrade,
//! first-message auth, slots, the session), then the connection.
//!
//! tokio allocates a task as one 128-byte-aligned block: its header and trailer (≈ 100 bytes)
//! and the future. A connection's future held inline made its task the next multiple of 128
//! above `Conn` (a 488-byte `Conn` is a 640-byte task), and held the setup's space too, had the
//! setup not been boxed. Here the task's future is 16 bytes (one pointer and which phase), so
//! the task is tokio's smallest, 128 bytes; the connection's future is a box of its own, in
//! jemalloc's size class for its size (…, 384, 448, 512, 640, …): every 64 bytes out of `Conn`
//! below 512 are 64 bytes less per idle connection, where inline only a whole 128 counted.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

/// What the setup hands on: the connection's future (on plain TCP, or on another stream: TLS),
/// or nothing (the upgrade failed, auth refused, the client left).
pub(crate) enum Opened<P, T> {
    Plain(P),
    Other(T),
    Nothing,
}

/// The task: the setup's box, then the connection's.
pub(crate) enum Phases<A, P, T> {
    Setup(Pin<Box<A>>),
    Plain(Pin<Box<P>>),
    Other(Pin<Box<T>>),
    Done,
}

impl<A, P, T> Phases<A, P, T> {
    pub(crate) fn new(setup: A) -> Self {
        Phases::Setup(Box::pin(setup))
    }
}

impl<A, P, T> Future for Phases<A, P, T>
where
    A: Future<Output = Opened<P, T>>,
    P: Future<Output = ()>,
    T: Future<Output = ()>,
{
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            let next = match &mut *self {
                Phases::Setup(setup) => match setup.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    // The setup's box is freed before the connection's is made.
                    Poll::Ready(opened) => {
                        *self = Phases::Done;
                        match opened {
                            Opened::Plain(p) => Phases::Plain(Box::pin(p)),
                            Opened::Other(t) => Phases::Other(Box::pin(t)),
                            Opened::Nothing => return Poll::Ready(()),
                        }
                    }
                },
                Phases::Plain(p) => return finish(p.as_mut().poll(cx), &mut self),
                Phases::Other(t) => return finish(t.as_mut().poll(cx), &mut self),
                Phases::Done => return Poll::Ready(()),
            };
            *self = next;
        }
    }
}

/// The connection's future is dropped as soon as it is done (not with the task).
fn finish<A, P, T>(polled: Poll<()>, phases: &mut Pin<&mut Phases<A, P, T>>) -> Poll<()> {
    if polled.is_ready() {
        phases.set(Phases::Done);
    }
    polled
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::{Ready, ready};

    type Ended = Ready<()>;

    /// The task's future is one pointer and a discriminant: with the task tracker's token,
    /// 24 bytes, which tokio's task stage holds in 32 (its header, core and trailer are 96):
    /// a 128-byte task whatever the connection holds.
    #[test]
    fn the_task_future_is_two_words() {
        assert_eq!(
            std::mem::size_of::<Phases<Ready<Opened<Ended, Ended>>, Ended, Ended>>(),
            16
        );
        assert_eq!(
            std::mem::size_of::<
                herald_core::outlet::Corked<Phases<[u8; 4096], [u8; 512], [u8; 900]>>,
            >(),
            16
        );
    }

    /// Counts how often it is polled and whether it was dropped.
    struct Probe {
        polls: usize,
        dropped: std::sync::Arc<std::sync::atomic::AtomicBool>,
    }

    impl Future for Probe {
        type Output = ();
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            self.polls += 1;
            if self.polls < 2 {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            Poll::Ready(())
        }
    }

    impl Drop for Probe {
        fn drop(&mut self) {
            self.dropped
                .store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn the_setup_hands_on_and_the_connection_runs_to_its_end() {
        let dropped = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let probe = Probe {
            polls: 0,
            dropped: dropped.clone(),
        };
        let mut task = Phases::new(ready(Opened::<Probe, Ended>::Plain(probe)));
        assert!(
            futures_util::poll!(&mut task).is_pending(),
            "the connection waits"
        );
        assert!(matches!(task, Phases::Plain(_)));
        assert!(futures_util::poll!(&mut task).is_ready());
        assert!(matches!(task, Phases::Done));
        assert!(
            dropped.load(std::sync::atomic::Ordering::SeqCst),
            "dropped at its end"
        );
        // A finished task stays finished.
        assert!(futures_util::poll!(&mut task).is_ready());
    }

    /// A setup that hands `out` on and marks its drop.
    struct Setup {
        out: Option<Opened<Check, Ended>>,
        dropped: std::sync::Arc<std::sync::atomic::AtomicBool>,
    }

    impl Future for Setup {
        type Output = Opened<Check, Ended>;
        fn poll(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Self::Output> {
            Poll::Ready(self.out.take().unwrap_or(Opened::Nothing))
        }
    }

    impl Drop for Setup {
        fn drop(&mut self) {
            self.dropped
                .store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    /// A connection that checks, when first polled, that the setup is gone.
    struct Check(std::sync::Arc<std::sync::atomic::AtomicBool>);

    impl Future for Check {
        type Output = ();
        fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
            assert!(
                self.0.load(std::sync::atomic::Ordering::SeqCst),
                "the setup's box is freed before the connection runs"
            );
            Poll::Ready(())
        }
    }

    #[tokio::test]
    async fn the_setup_is_freed_before_the_connection_runs() {
        let dropped = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut task = Phases::new(Setup {
            out: Some(Opened::Plain(Check(dropped.clone()))),
            dropped: dropped.clone(),
        });
        assert!(futures_util::poll!(&mut task).is_ready());
        assert!(dropped.load(std::sync::atomic::Ordering::SeqCst));
    }

    #[tokio::test]
    async fn a_setup_that_opens_nothing_ends_the_task() {
        let mut task = Phases::new(ready(Opened::<Ended, Ended>::Nothing));
        assert!(futures_util::poll!(&mut task).is_ready());
        assert!(matches!(task, Phases::Done));
        let mut other = Phases::new(ready(Opened::<Ended, Ended>::Other(ready(()))));
        assert!(futures_util::poll!(&mut other).is_ready());
    }
}
