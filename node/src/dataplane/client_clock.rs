//! The clock of one HTTP client connection: when bytes last moved (for the listener's
//! `idle_timeout`), and whether a request has arrived on it (a connection is wound down
//! politely only once it has had one). The head and keep-alive timers are the HTTP/1.1
//! loop's own (`h1`).

use std::sync::atomic::{AtomicBool, Ordering};

use super::splice::Activity;

/// What one client connection's timers read: set by its IO and its service.
#[derive(Debug, Default)]
pub(crate) struct ClientClock {
    /// When bytes last moved, either way.
    pub activity: Activity,
    /// Whether a request head has arrived on the connection.
    requested: AtomicBool,
}

impl ClientClock {
    /// Notes a request head; true for the connection's first.
    pub(crate) fn requested(&self) -> bool {
        // A load first: after the first request this is a read, never a write.
        !self.requested.load(Ordering::Relaxed) && !self.requested.swap(true, Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_first_request_is_the_first() {
        let clock = ClientClock::default();
        assert!(clock.requested());
        assert!(!clock.requested());
    }
}
