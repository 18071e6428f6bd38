//! Deadlines from durations that operators set (drain and shutdown times), which are not
//! bounded and must never overflow an `Instant`.

use std::time::Duration;

/// The instant `timeout` from now, or a year from now for a timeout too large to represent.
pub fn deadline_after(timeout: Duration) -> tokio::time::Instant {
    let now = tokio::time::Instant::now();
    now.checked_add(timeout).unwrap_or_else(|| now + Duration::from_secs(365 * 24 * 3600))
}
