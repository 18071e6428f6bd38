//! The clocks of one HTTP client connection: when bytes last moved (for the listener's
//! `idle_timeout`), and hyper's header-read timer made to tell the two waits apart that hyper
//! treats as one. A connection that has had a request and is waiting, idle, for its next one
//! gets `keep_alive_timeout`; a request head being sent gets `header_timeout` from its first
//! byte (a new connection's first request from the connect), so a slowloris client is cut
//! off as before while a keep-alive client may pause between requests.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::rt::{Sleep, Timer};

use super::splice::Activity;

/// What one client connection's timers read: set by its IO and its service.
#[derive(Debug, Default)]
pub(crate) struct ClientClock {
    /// When bytes last moved, either way.
    pub activity: Activity,
    /// Reads that returned bytes.
    reads: AtomicU64,
    /// Whether a request head has arrived on the connection.
    requested: AtomicBool,
}

impl ClientClock {
    /// Notes bytes read from the client.
    pub(crate) fn read(&self) {
        self.reads.fetch_add(1, Ordering::Relaxed);
        self.activity.touch();
    }

    /// Notes a request head; true for the connection's first.
    pub(crate) fn requested(&self) -> bool {
        // A load first: after the first request this is a read, never a write.
        !self.requested.load(Ordering::Relaxed) && !self.requested.swap(true, Ordering::Relaxed)
    }
}

/// hyper's header-read timer for one connection (set as its HTTP/1 timer, with any
/// `header_read_timeout`: the deadlines are this timer's own).
#[derive(Clone, Debug)]
pub(crate) struct HeadTimer {
    clock: Arc<ClientClock>,
    header: Duration,
    keep_alive: Duration,
}

impl HeadTimer {
    /// The timer of the connection `clock` belongs to.
    pub(crate) fn new(clock: Arc<ClientClock>, header: Duration, keep_alive: Duration) -> Self {
        HeadTimer { clock, header, keep_alive }
    }

    /// (Re)starts `sleep` for a wait beginning now.
    fn start(&self, sleep: &mut HeadSleep) {
        // tokio's clock, which the sleep runs on (and tests pause).
        let now = tokio::time::Instant::now();
        let wait = if self.clock.requested.load(Ordering::Relaxed) {
            self.keep_alive
        } else {
            self.header
        };
        sleep.reads_at_start = self.clock.reads.load(Ordering::Relaxed);
        sleep.head_began = false;
        sleep.inner.as_mut().reset(now + wait);
    }
}

impl Timer for HeadTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Sleep>> {
        hyper_util::rt::TokioTimer::new().sleep(duration)
    }

    fn sleep_until(&self, _hypers_deadline: Instant) -> Pin<Box<dyn Sleep>> {
        let mut sleep = HeadSleep {
            clock: Arc::clone(&self.clock),
            header: self.header,
            reads_at_start: 0,
            head_began: false,
            inner: Box::pin(tokio::time::sleep(Duration::ZERO)),
        };
        self.start(&mut sleep);
        Box::pin(sleep)
    }

    fn reset(&self, sleep: &mut Pin<Box<dyn Sleep>>, new_deadline: Instant) {
        match sleep.as_mut().downcast_mut_pin::<HeadSleep>() {
            Some(head) => self.start(head.get_mut()),
            None => *sleep = self.sleep_until(new_deadline),
        }
    }
}

/// One wait for a request head: the keep-alive (or first-request) deadline until a byte
/// arrives, then the header deadline from that byte.
struct HeadSleep {
    clock: Arc<ClientClock>,
    header: Duration,
    reads_at_start: u64,
    head_began: bool,
    inner: Pin<Box<tokio::time::Sleep>>,
}

impl Future for HeadSleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        // hyper polls this after every read that left the head incomplete, so the first
        // byte of a head is seen here as soon as it is read.
        if !self.head_began && self.clock.reads.load(Ordering::Relaxed) != self.reads_at_start {
            self.head_began = true;
            let deadline = tokio::time::Instant::now() + self.header;
            self.inner.as_mut().reset(deadline);
        }
        self.inner.as_mut().poll(cx)
    }
}

impl Sleep for HeadSleep {}

#[cfg(test)]
mod tests {
    use super::*;

    fn timer() -> (Arc<ClientClock>, HeadTimer) {
        let clock = Arc::new(ClientClock::default());
        let timer =
            HeadTimer::new(Arc::clone(&clock), Duration::from_secs(1), Duration::from_secs(10));
        (clock, timer)
    }

    /// Whether `sleep` has fired after the (paused) clock moved on by `by`.
    async fn fired_after(sleep: &mut Pin<Box<dyn Sleep>>, by: Duration) -> bool {
        tokio::time::advance(by).await;
        std::future::poll_fn(|cx| Poll::Ready(sleep.as_mut().poll(cx).is_ready())).await
    }

    #[tokio::test(start_paused = true)]
    async fn a_first_request_gets_the_header_timeout_from_the_connect() {
        let (_, timer) = timer();
        let mut sleep = timer.sleep_until(Instant::now());
        assert!(!fired_after(&mut sleep, Duration::from_millis(900)).await);
        assert!(fired_after(&mut sleep, Duration::from_millis(200)).await);
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_keep_alive_connection_gets_the_keep_alive_timeout() {
        let (clock, timer) = timer();
        assert!(clock.requested());
        assert!(!clock.requested(), "only the first request is the first");
        let mut sleep = timer.sleep_until(Instant::now());
        assert!(!fired_after(&mut sleep, Duration::from_secs(9)).await);
        assert!(fired_after(&mut sleep, Duration::from_millis(1100)).await);
    }

    #[tokio::test(start_paused = true)]
    async fn a_head_begun_on_a_keep_alive_connection_gets_the_header_timeout_from_its_first_byte() {
        let (clock, timer) = timer();
        clock.requested();
        let mut sleep = timer.sleep_until(Instant::now());
        assert!(!fired_after(&mut sleep, Duration::from_secs(5)).await);
        clock.read();
        assert!(!fired_after(&mut sleep, Duration::ZERO).await, "the first byte restarts it");
        assert!(!fired_after(&mut sleep, Duration::from_millis(900)).await);
        clock.read();
        assert!(fired_after(&mut sleep, Duration::from_millis(200)).await, "later bytes do not");
    }

    #[tokio::test(start_paused = true)]
    async fn a_reset_starts_a_new_wait() {
        let (clock, timer) = timer();
        let mut sleep = timer.sleep_until(Instant::now());
        clock.read();
        assert!(!fired_after(&mut sleep, Duration::from_millis(500)).await);
        clock.requested();
        timer.reset(&mut sleep, Instant::now());
        assert!(!fired_after(&mut sleep, Duration::from_secs(9)).await, "keep-alive now");
        assert!(fired_after(&mut sleep, Duration::from_millis(1100)).await);
    }
}
