//! Wall-clock timestamps carried in frame headers. Peers on different machines correct for their
//! clock offset with the control stream's ping/pong.

use std::time::{SystemTime, UNIX_EPOCH};

/// Microseconds since the Unix epoch.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Milliseconds since midnight (UTC) of a [`now_us`] timestamp, for the test card's clock.
pub fn ms_of_day(us: u64) -> u64 {
    (us / 1000) % 86_400_000
}
