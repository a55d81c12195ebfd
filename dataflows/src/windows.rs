//! Event-time tumbling windows: which window an event falls in, and when a window closes.

use crate::model::{EventTimeMs, Tick};

/// Window size and allowed lateness, both in milliseconds.
///
/// A window `[start, start + size)` is *open* while the processing time is before
/// `start + size + allowed_lateness`: until then late events, refunds and demographic changes
/// correct it. At that tick it *closes*: its rows are final, they leave the dataflow's state, and
/// what it held stays only in the all-time totals. The allowed lateness is therefore also the
/// window retention.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WindowSpec {
    /// The window length; greater than zero.
    pub size_ms: u64,
    /// How long after its end a window still takes corrections.
    pub allowed_lateness_ms: u64,
}

impl WindowSpec {
    /// The start of the window holding `time`.
    #[inline]
    pub fn window_of(&self, time: EventTimeMs) -> EventTimeMs {
        EventTimeMs(time.0 - time.0 % self.size_ms)
    }

    /// The processing time at which the window starting at `start` closes.
    #[inline]
    pub fn closes_at(&self, start: EventTimeMs) -> Tick {
        start
            .0
            .saturating_add(self.size_ms)
            .saturating_add(self.allowed_lateness_ms)
    }

    /// Whether the window starting at `start` has closed at processing time `tick`.
    #[inline]
    pub fn is_closed(&self, start: EventTimeMs, tick: Tick) -> bool {
        tick >= self.closes_at(start)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_and_closing() {
        let spec = WindowSpec {
            size_ms: 60_000,
            allowed_lateness_ms: 10_000,
        };
        assert_eq!(spec.window_of(EventTimeMs(0)), EventTimeMs(0));
        assert_eq!(spec.window_of(EventTimeMs(59_999)), EventTimeMs(0));
        assert_eq!(spec.window_of(EventTimeMs(60_000)), EventTimeMs(60_000));
        assert_eq!(spec.closes_at(EventTimeMs(60_000)), 130_000);
        assert!(!spec.is_closed(EventTimeMs(60_000), 129_999));
        assert!(spec.is_closed(EventTimeMs(60_000), 130_000));
        assert_eq!(spec.closes_at(EventTimeMs(u64::MAX - 5)), u64::MAX);
    }
}
