//! The exit codes fulcrumctl promises scripts, and the failure type that carries one.
//!
//! Code that knows which code a failure deserves (the HTTP client, the `--wait` check, local
//! checks of input) returns a [`Failure`]; `main` looks for one in the error chain, and
//! anything else ends with code 1.

use std::fmt;

use hyper::StatusCode;

/// The exit codes, as the top-level `--help` lists them.
pub(crate) const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  success
  1  any other error (unreadable file, unexpected answer, ...)
  2  usage: bad arguments, no endpoint or token configured
  3  no endpoint reachable
  4  refused: bad input (by the server, or a file found invalid before sending), not found,
     conflict, bad token
  5  cluster unavailable (the server answered 5xx)
  6  --wait (or `wait`) timed out before every node applied the revision";

/// Why fulcrumctl stops, as its exit code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Exit {
    /// Anything not classified below.
    Other = 1,
    /// The command line is wrong or incomplete.
    Usage = 2,
    /// No endpoint could be reached.
    Unreachable = 3,
    /// The request was refused: fix it before trying again.
    Refused = 4,
    /// The cluster could not do it now: trying later may work.
    Unavailable = 5,
    /// A revision did not reach every node in time.
    WaitTimedOut = 6,
}

impl Exit {
    /// The class of an HTTP error status: 4xx is for the caller to fix, 5xx for the cluster.
    pub(crate) fn for_status(status: StatusCode) -> Exit {
        if status.is_client_error() {
            Exit::Refused
        } else if status.is_server_error() {
            Exit::Unavailable
        } else {
            Exit::Other
        }
    }

    /// The exit code `error` deserves: the first [`Failure`] in its chain decides.
    pub(crate) fn of(error: &anyhow::Error) -> Exit {
        error.chain().find_map(|e| e.downcast_ref::<Failure>()).map_or(Exit::Other, |f| f.exit)
    }

    /// The process exit code.
    pub(crate) fn code(self) -> u8 {
        self as u8
    }
}

/// An error that knows its exit code.
#[derive(Debug)]
pub(crate) struct Failure {
    /// The exit code it ends with.
    pub(crate) exit: Exit,
    /// What happened and what to do, for a person.
    pub(crate) message: String,
}

impl Failure {
    /// A failure ending with `exit`.
    pub(crate) fn new(exit: Exit, message: impl Into<String>) -> Failure {
        Failure { exit, message: message.into() }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}

#[cfg(test)]
mod tests {
    use anyhow::Context;

    use super::*;

    #[test]
    fn statuses_map_to_exit_codes() {
        for (status, exit) in [
            (400, Exit::Refused),
            (401, Exit::Refused),
            (404, Exit::Refused),
            (409, Exit::Refused),
            (500, Exit::Unavailable),
            (503, Exit::Unavailable),
            (504, Exit::Unavailable),
            (302, Exit::Other),
        ] {
            let status = StatusCode::from_u16(status).unwrap();
            assert_eq!(Exit::for_status(status), exit, "{status}");
        }
        assert_eq!(Exit::Refused.code(), 4);
        assert_eq!(Exit::WaitTimedOut.code(), 6);
    }

    #[test]
    fn the_code_survives_context_and_defaults_to_one() {
        let wrapped = Err::<(), _>(Failure::new(Exit::Unreachable, "down"))
            .context("while waiting")
            .unwrap_err();
        assert_eq!(Exit::of(&wrapped), Exit::Unreachable);
        assert_eq!(format!("{wrapped:#}"), "while waiting: down");
        assert_eq!(Exit::of(&anyhow::anyhow!("plain")).code(), 1);
    }
}
