//! The wall clock, in the model's unit: integer milliseconds since the Unix epoch.
//!
//! One place for it, below everything that reads it (sources, the cluster's handshake, the
//! runtime, `verify`), so reading the time imports nothing else.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
