//! The clock of one HTTP client connection: when bytes last moved (for the listener's
//! `idle_timeout`), whether a request has arrived on it (a connection is wound down politely
//! only once it has had one), and the signal that winds it down. The head and keep-alive
//! timers are the HTTP/1.1 loop's own (`h1`).

use super::signal::Signal;
use super::splice::Activity;

/// What one client connection's timers and drains read: set by its IO and its service.
#[derive(Debug, Default)]
pub(crate) struct ClientClock {
    /// When bytes last moved, either way.
    pub activity: Activity,
    /// Set when the first request head arrives.
    pub first_request: Signal,
    /// Set to wind the connection down: HTTP/2 with GOAWAY, HTTP/1.1 after the request in
    /// flight (with `Connection: close`) or at once between requests.
    pub wind_down: Signal,
}

impl ClientClock {
    /// Notes a request head; true for the connection's first.
    pub(crate) fn requested(&self) -> bool {
        self.first_request.fire()
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
