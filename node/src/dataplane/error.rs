//! The data path's one error type: why a connection or request failed, whose fault that was
//! (the client's, a backend's, or ours) and whether another backend may be tried. L4 and L7
//! count, log and retry by it; its label names the `fulcrum_*_errors_total{kind}` series.

/// Why a connection failed, as counted in `fulcrum_*_errors_total{kind}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ErrorKind {
    /// The pool had no backend able to take the connection.
    #[error("no backend could take it")]
    NoBackend,
    /// Connecting to a backend failed or timed out.
    #[error("connecting to the backend failed")]
    ConnectFailed,
    /// A backend was skipped because it was at its connection limit.
    #[error("the backend is at its connection limit")]
    BackendAtLimit,
    /// The connection was closed because no byte moved for the idle timeout.
    #[error("nothing moved for the idle timeout")]
    IdleTimeout,
    /// Reading or writing either side failed mid-stream.
    #[error("reading or writing failed mid-stream")]
    Io,
    /// The connection was closed by a drain deadline.
    #[error("closed by a drain deadline")]
    Drained,
    /// The client cancelled most of its requests before their answer (HTTP/2 rapid reset),
    /// so its connection was closed.
    #[error("closed for cancelling most of its requests (rapid reset)")]
    ResetFlood,
    /// A TCP listener's rate limit refused the connection.
    #[error("refused by the listener's rate limit")]
    RateLimited,
}

/// Whose fault a failure was, for logs and for what counts against a backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The client's side: it went quiet or broke off.
    Client,
    /// A backend's: it refused, timed out or was full.
    Backend,
    /// Ours: no backend to offer, or this node closed the connection on purpose.
    Proxy,
}

impl ErrorKind {
    /// Every kind, in the order the metrics list them.
    pub const ALL: [ErrorKind; 8] = [
        ErrorKind::NoBackend,
        ErrorKind::ConnectFailed,
        ErrorKind::BackendAtLimit,
        ErrorKind::IdleTimeout,
        ErrorKind::Io,
        ErrorKind::Drained,
        ErrorKind::RateLimited,
        ErrorKind::ResetFlood,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::NoBackend => "no_backend",
            ErrorKind::ConnectFailed => "connect_failed",
            ErrorKind::BackendAtLimit => "backend_at_limit",
            ErrorKind::IdleTimeout => "idle_timeout",
            ErrorKind::Io => "io",
            ErrorKind::Drained => "drained",
            ErrorKind::RateLimited => "rate_limited",
            ErrorKind::ResetFlood => "reset_flood",
        }
    }

    /// Whose fault a failure of this kind is.
    pub fn fault(self) -> Fault {
        match self {
            ErrorKind::ConnectFailed | ErrorKind::BackendAtLimit => Fault::Backend,
            // Mid-stream, either side may have broken off; the client is the usual one.
            ErrorKind::IdleTimeout
            | ErrorKind::Io
            | ErrorKind::RateLimited
            | ErrorKind::ResetFlood => Fault::Client,
            ErrorKind::NoBackend | ErrorKind::Drained => Fault::Proxy,
        }
    }

    /// Whether another backend may be tried after a failure of this kind: only when nothing
    /// reached the backend, so trying again cannot repeat a request.
    pub fn may_try_another(self) -> bool {
        matches!(self, ErrorKind::ConnectFailed | ErrorKind::BackendAtLimit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_failures_before_anything_was_sent_allow_another_backend() {
        for kind in ErrorKind::ALL {
            assert_eq!(kind.may_try_another(), kind.fault() == Fault::Backend, "{kind:?}");
        }
        assert_eq!(ErrorKind::Drained.fault(), Fault::Proxy);
        assert_eq!(
            ErrorKind::ALL.len(),
            ErrorKind::ALL
                .iter()
                .map(|k| k.as_str())
                .collect::<std::collections::BTreeSet<_>>()
                .len()
        );
    }
}
