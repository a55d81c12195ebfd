//! The one rule by which a worker's event source moves its capability from tick to tick: what
//! the events source downgrades to, and where every worker's inputs stop for a checkpoint.

use dataflows::model::Tick;

/// Where a tick ends and the next starts.
///
/// A tick lasts `tick_ms` on the processing-time clock. The next tick starts at its end, except
/// that:
/// - a tick that fell behind the clock is followed by the current one (Kafka: its ticks follow
///   the wall clock; the generator's are simulated time, with no clock);
/// - while stopping, the tick reaches the next checkpoint boundary, where the run ends;
/// - the first tick after a restore reads no event, and ends before the first boundary (see
///   [`TickRule::new`] and [`TickRule::reads_nothing`]);
/// - no tick ever crosses a checkpoint boundary: every worker's inputs stop exactly there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct TickRule {
    tick_ms: u64,
    /// The checkpoint interval, `Tick::MAX` without checkpoints.
    interval: Tick,
    /// The next checkpoint boundary.
    boundary: Tick,
    /// The first tick after a restore, which ends before the first boundary.
    restored_at: Option<Tick>,
}

/// How a tick ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Closed {
    /// Its end on the clock: what its demographics are fed up to.
    pub(super) end: Tick,
    /// Where the next tick starts: what the source's capability is downgraded to.
    pub(super) next: Tick,
}

impl TickRule {
    /// The rule of a run whose first tick starts at `first`, with checkpoints every `interval`
    /// (`Tick::MAX` for none); `restored` when `first` is the tick a checkpoint is restored at.
    ///
    /// After a restore, the first tick ends before the first boundary whatever the clock or a
    /// stop says: the demographics read at start enter in the second tick, so they are in every
    /// worker's state at every boundary. Were the first tick to reach the boundary (a stop
    /// during it jumps there), the run would end there with the checkpoint's demographics as its
    /// last output and its last checkpoint.
    pub(super) fn new(tick_ms: u64, first: Tick, interval: Tick, restored: bool) -> TickRule {
        TickRule {
            tick_ms,
            interval,
            boundary: first.saturating_add(interval) / interval * interval,
            restored_at: restored.then_some(first),
        }
    }

    /// When the tick starting at `tick` is due to end, on the clock.
    pub(super) fn due(&self, tick: Tick) -> Tick {
        tick + self.tick_ms
    }

    /// How the tick starting at `tick` ends when closed at `clock` (`None`: simulated time,
    /// which never falls behind), `stopping` or not.
    pub(super) fn close(&self, tick: Tick, clock: Option<u64>, stopping: bool) -> Closed {
        let mut end = self.due(tick);
        if let Some(now) = clock {
            // A tick that fell behind the clock is followed by the current one.
            end = end.max(now - now % self.tick_ms);
        }
        if stopping {
            end = end.max(self.boundary);
        }
        let mut next = end;
        if self.restored_at == Some(tick) && self.boundary - 1 > tick {
            next = next.min(self.boundary - 1);
        }
        Closed {
            end,
            next: next.min(self.boundary),
        }
    }

    /// Whether the tick starting at `tick` is the first after a restore, which reads no event
    /// (it closes at once).
    ///
    /// Its output is then the checkpoint's rows alone, each written whole, so the sink rewrites
    /// every row the checkpoint holds. Had the tick's events entered with them, a row that an
    /// event emptied there (a refund of the only purchase in it) would cancel out at that
    /// timestamp and never be written: the sink would keep the value a run before wrote (found by
    /// the fault campaign as one stale window row after a restore). `dataflows::harness`'s
    /// restarted run has always entered the state alone.
    pub(super) fn reads_nothing(&self, tick: Tick) -> bool {
        self.restored_at == Some(tick)
    }

    /// The next checkpoint boundary.
    pub(super) fn boundary(&self) -> Tick {
        self.boundary
    }

    /// Moves on to the boundary after the current one (taken or skipped).
    pub(super) fn pass_boundary(&mut self) {
        self.boundary = self.boundary.saturating_add(self.interval);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NONE: Tick = Tick::MAX;

    #[test]
    fn a_tick_lasts_tick_ms_when_the_clock_keeps_up() {
        let rule = TickRule::new(1_000, 5_000, NONE, false);
        assert_eq!(rule.due(5_000), 6_000);
        let closed = rule.close(5_000, Some(6_003), false);
        assert_eq!(
            closed,
            Closed {
                end: 6_000,
                next: 6_000
            }
        );
        // Simulated time: the clock plays no part.
        let closed = rule.close(5_000, None, false);
        assert_eq!(
            closed,
            Closed {
                end: 6_000,
                next: 6_000
            }
        );
    }

    #[test]
    fn a_tick_that_fell_behind_is_followed_by_the_current_one() {
        let rule = TickRule::new(1_000, 5_000, NONE, false);
        let closed = rule.close(5_000, Some(9_450), false);
        assert_eq!(
            closed,
            Closed {
                end: 9_000,
                next: 9_000
            }
        );
    }

    #[test]
    fn no_tick_crosses_a_boundary_and_the_next_starts_there() {
        let mut rule = TickRule::new(1_000, 5_000, 10_000, false);
        assert_eq!(rule.boundary(), 10_000);
        let closed = rule.close(9_000, Some(13_200), false);
        assert_eq!(
            closed,
            Closed {
                end: 13_000,
                next: 10_000
            }
        );
        rule.pass_boundary();
        assert_eq!(rule.boundary(), 20_000);
        let closed = rule.close(10_000, Some(13_200), false);
        assert_eq!(
            closed,
            Closed {
                end: 13_000,
                next: 13_000
            }
        );
    }

    #[test]
    fn the_first_boundary_is_the_next_multiple_of_the_interval() {
        assert_eq!(TickRule::new(1_000, 0, 10_000, false).boundary(), 10_000);
        assert_eq!(
            TickRule::new(1_000, 10_000, 10_000, true).boundary(),
            20_000
        );
        assert_eq!(
            TickRule::new(1_000, 12_000, 10_000, false).boundary(),
            20_000
        );
        assert_eq!(TickRule::new(1_000, 12_000, NONE, false).boundary(), NONE);
    }

    #[test]
    fn stopping_jumps_to_the_boundary() {
        let rule = TickRule::new(1_000, 5_000, 10_000, false);
        let closed = rule.close(5_000, Some(5_400), true);
        assert_eq!(
            closed,
            Closed {
                end: 10_000,
                next: 10_000
            }
        );
    }

    #[test]
    fn the_first_tick_after_a_restore_ends_before_the_first_boundary() {
        let rule = TickRule::new(1_000, 10_000, 10_000, true);
        // A stop during it, or a clock far ahead, would take it to the boundary.
        let closed = rule.close(10_000, Some(10_500), true);
        assert_eq!(
            closed,
            Closed {
                end: 20_000,
                next: 19_999
            }
        );
        let closed = rule.close(10_000, Some(31_000), false);
        assert_eq!(
            closed,
            Closed {
                end: 31_000,
                next: 19_999
            }
        );
        // Only the first: the next tick reaches the boundary.
        let closed = rule.close(19_999, Some(19_999), true);
        assert_eq!(
            closed,
            Closed {
                end: 20_999,
                next: 20_000
            }
        );
        // Nor when the tick is one before the boundary already.
        let rule = TickRule::new(1_000, 19_999, 10_000, true);
        let closed = rule.close(19_999, Some(25_000), false);
        assert_eq!(
            closed,
            Closed {
                end: 25_000,
                next: 20_000
            }
        );
    }

    #[test]
    fn without_a_restore_the_first_tick_may_reach_the_boundary() {
        let rule = TickRule::new(1_000, 10_000, 10_000, false);
        let closed = rule.close(10_000, Some(10_500), true);
        assert_eq!(
            closed,
            Closed {
                end: 20_000,
                next: 20_000
            }
        );
    }
}
