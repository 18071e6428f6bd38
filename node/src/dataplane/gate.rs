//! A future polled only when something it waits on has woken it. `tokio::select!` polls every
//! branch whenever its task wakes, so a connection's watchers (idle timer, drain signals, its
//! listener's stop) would be polled again on every read and write of the connection; gated,
//! they are polled only when one of them fires.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

/// `inner`, polled only on its own wake-ups (and once at first).
pub(crate) struct Gated<'a, F> {
    inner: Pin<&'a mut F>,
    gate: Arc<Gate>,
    polled: bool,
}

impl<'a, F: Future> Gated<'a, F> {
    pub(crate) fn new(inner: Pin<&'a mut F>) -> Self {
        Gated { inner, gate: Arc::new(Gate::default()), polled: false }
    }
}

/// Set when the inner future is woken, and the task waiting on the gate then woken.
#[derive(Default)]
struct Gate {
    woken: AtomicBool,
    task: Mutex<Option<Waker>>,
}

impl Wake for Gate {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        let task = self.task.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(task) = task.as_ref() {
            task.wake_by_ref();
        }
    }
}

impl<F: Future> Future for Gated<'_, F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        {
            let mut task = self.gate.task.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            if !task.as_ref().is_some_and(|t| t.will_wake(cx.waker())) {
                *task = Some(cx.waker().clone());
            }
        }
        if self.polled && !self.gate.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        self.polled = true;
        let waker = Waker::from(Arc::clone(&self.gate));
        self.inner.as_mut().poll(&mut Context::from_waker(&waker))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use tokio::sync::oneshot;

    /// A future that counts how often it is polled.
    struct Counted<'a, F> {
        polls: &'a AtomicUsize,
        inner: F,
    }

    impl<F: Future + Unpin> Future for Counted<'_, F> {
        type Output = F::Output;

        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
            self.polls.fetch_add(1, Ordering::Relaxed);
            Pin::new(&mut self.inner).poll(cx)
        }
    }

    #[test]
    fn the_inner_future_is_polled_only_when_woken() {
        let polls = AtomicUsize::new(0);
        let (fire, fired) = oneshot::channel::<()>();
        let mut inner = std::pin::pin!(Counted { polls: &polls, inner: fired });
        let mut gated = Gated::new(inner.as_mut());
        let mut cx = Context::from_waker(Waker::noop());
        for _ in 0..10 {
            assert!(Pin::new(&mut gated).poll(&mut cx).is_pending());
        }
        assert_eq!(polls.load(Ordering::Relaxed), 1, "polled once, then only when woken");
        fire.send(()).expect("sent");
        assert!(Pin::new(&mut gated).poll(&mut cx).is_ready(), "its wake-up lets it finish");
        assert_eq!(polls.load(Ordering::Relaxed), 2);
    }
}
