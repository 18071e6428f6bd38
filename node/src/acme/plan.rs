//! When a listener's certificate is due, sans IO: from the listener's names, what the store
//! keeps and the time (UNIX seconds), whether to order now and why; and how long a failed
//! attempt waits.

use fulcrum_model::Name;
use fulcrum_model::acme::AcmeState;

/// The first wait after a failure; each further failure doubles it.
pub const FIRST_RETRY_SECONDS: u64 = 10;
/// The longest wait between attempts.
pub const MAX_RETRY_SECONDS: u64 = 3600;

/// Why a certificate is ordered now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Due {
    /// An order was placed and not finished (by this node or another): resume it.
    Resume,
    /// An operator asked.
    Requested,
    /// None was issued yet.
    Missing,
    /// The listener now wants other names.
    NamesChanged,
    /// Two thirds of its lifetime have passed.
    Renewal,
}

/// Whether `listener`, which wants `names`, should order now.
pub fn due(now: u64, listener: &Name, names: &[String], state: &AcmeState) -> Option<Due> {
    let order = state.order(listener);
    if order.is_some_and(|o| o.retry_at > now) {
        return None;
    }
    if order.is_some_and(|o| o.url.is_some() && o.hostnames == names) {
        return Some(Due::Resume);
    }
    if order.is_some_and(|o| o.renew_requested) {
        return Some(Due::Requested);
    }
    match state.certificate(listener) {
        None => Some(Due::Missing),
        Some(issued) if issued.hostnames != names => Some(Due::NamesChanged),
        Some(issued) if now >= issued.renew_at() => Some(Due::Renewal),
        Some(_) => None,
    }
}

/// When the next attempt may start after the `failures`-th failure in a row at `now`.
pub fn retry_at(now: u64, failures: u32) -> u64 {
    let doublings = failures.saturating_sub(1).min(16);
    let wait = FIRST_RETRY_SECONDS.saturating_mul(1 << doublings).min(MAX_RETRY_SECONDS);
    now.saturating_add(wait)
}

#[cfg(test)]
mod tests {
    use super::*;
    use fulcrum_model::acme::{AcmeOrder, IssuedCertificate, Sealed};

    fn name() -> Name {
        "web".parse().unwrap()
    }

    fn names() -> Vec<String> {
        vec!["www.example.test".to_owned()]
    }

    fn issued(not_before: u64, not_after: u64) -> IssuedCertificate {
        IssuedCertificate {
            listener: name(),
            hostnames: names(),
            chain_pem: String::new(),
            key: Sealed(Vec::new()),
            not_before,
            not_after,
        }
    }

    fn order(url: Option<&str>, retry_at: u64, renew_requested: bool) -> AcmeOrder {
        AcmeOrder {
            listener: name(),
            hostnames: names(),
            url: url.map(str::to_owned),
            failures: 0,
            retry_at,
            last_error: None,
            renew_requested,
            pending_key: None,
        }
    }

    #[test]
    fn a_listener_without_a_certificate_orders_and_one_with_a_fresh_one_does_not() {
        let mut state = AcmeState::default();
        assert_eq!(due(100, &name(), &names(), &state), Some(Due::Missing));
        state.certificates.push(issued(0, 90));
        assert_eq!(due(59, &name(), &names(), &state), None);
        assert_eq!(due(60, &name(), &names(), &state), Some(Due::Renewal));
        assert_eq!(
            due(10, &name(), &["other.example.test".to_owned()], &state),
            Some(Due::NamesChanged)
        );
    }

    #[test]
    fn an_unfinished_order_is_resumed_and_a_failed_one_waits() {
        let mut state = AcmeState::default();
        state.certificates.push(issued(0, 90));
        state.orders.push(order(Some("https://ca/order/1"), 0, false));
        assert_eq!(due(10, &name(), &names(), &state), Some(Due::Resume));
        state.orders[0] = order(None, 50, true);
        assert_eq!(due(49, &name(), &names(), &state), None);
        assert_eq!(due(50, &name(), &names(), &state), Some(Due::Requested));
        // An order placed for other names is not resumed: the names changed since.
        state.orders[0] = order(Some("https://ca/order/1"), 0, false);
        state.orders[0].hostnames = vec!["old.example.test".to_owned()];
        assert_eq!(due(10, &name(), &names(), &state), None);
    }

    #[test]
    fn retries_back_off_by_doubling_up_to_an_hour() {
        assert_eq!(retry_at(1000, 1), 1010);
        assert_eq!(retry_at(1000, 2), 1020);
        assert_eq!(retry_at(1000, 3), 1040);
        assert_eq!(retry_at(1000, 12), 1000 + MAX_RETRY_SECONDS);
        assert_eq!(retry_at(u64::MAX, u32::MAX), u64::MAX);
    }
}
