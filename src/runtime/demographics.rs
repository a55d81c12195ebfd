//! Worker 0's demographics: the table read at start, then its changes, as a real source reads
//! its table once; and, when restoring, the hand-over from the segments the checkpoint held.

use dataflows::inputs::Inputs;
use dataflows::model::{Counter, Demographic, Segment, Tick, UserId};
use dataflows::state::State;

use super::DemographicSource;
use crate::generators::demographics;
use crate::generators::events::GeneratorKnobs;
use crate::sources::mysql::{ChangeFeed, DemographicsSource, MysqlError};

/// Where worker 0's changes come from after the initial table.
enum Changes {
    Generated {
        changes: demographics::Changes,
        /// `generator.demographic-changes-per-second`.
        per_second: f64,
        /// The simulated time of the first change.
        start_ms: u64,
    },
    Mysql(ChangeFeed),
}

/// A worker's demographics input: worker 0 reads, the others wait for the exchange.
#[derive(Default)]
pub(super) struct Demographics {
    changes: Option<Changes>,
    /// The table read at start, until it enters.
    snapshot: Vec<Demographic>,
    /// The segments a checkpoint restored, retracted when the demographics enter.
    restored_segments: Vec<((UserId, Segment), isize)>,
    /// Likewise the count of unconvertible demographics rows, which the source counts afresh.
    restored_skipped: isize,
    /// The timestamp the checkpoint's state is restored at, if restoring.
    restored_at: Option<Tick>,
}

impl Demographics {
    /// Keeps what of a restored `state` the demographics replace once they enter: the segments
    /// the join held, and the count of rows skipped.
    pub(super) fn restored(state: State, at: Tick) -> Demographics {
        let restored_skipped = state
            .counters
            .iter()
            .rev()
            .find(|(counter, _)| *counter == Counter::DemographicsSkipped)
            .map_or(0, |(_, n)| *n as isize);
        Demographics {
            restored_segments: state.segments,
            restored_skipped,
            restored_at: Some(at),
            ..Demographics::default()
        }
    }

    /// Reads the table at worker 0 (`index`), and enters it now unless restoring (then it waits
    /// for the end of the first tick, which ends before the first boundary: see
    /// [`super::tick::TickRule::new`]).
    pub(super) fn start(
        &mut self,
        index: usize,
        source: &DemographicSource,
        knobs: &GeneratorKnobs,
        start_ms: u64,
        inputs: &mut Inputs,
    ) -> Result<(), MysqlError> {
        self.changes = match (index, source) {
            (0, DemographicSource::Generator) => {
                self.snapshot = demographics::table(knobs.seed, knobs.users).collect();
                Some(Changes::Generated {
                    changes: demographics::Changes::new(knobs.seed, knobs.users, knobs.new_users),
                    per_second: knobs.demographic_changes_per_second,
                    start_ms,
                })
            }
            (0, DemographicSource::Mysql(config, slot)) => {
                let (rows, feed) = DemographicsSource::start(config)?;
                slot.set(feed.follower());
                tracing::info!(rows = rows.len(), "demographics snapshot");
                self.snapshot = rows;
                Some(Changes::Mysql(feed))
            }
            _ => None,
        };
        if self.restored_at.is_none() {
            for row in self.snapshot.drain(..) {
                inputs.demographic(row, 1);
            }
        }
        Ok(())
    }

    /// Sends the tick starting at `tick` and ending at `end` its demographics.
    ///
    /// Restoring: the first timestamp's output is the checkpoint's rows alone, whole, so that
    /// the sink rewrites every one of them (its tick reads no event either, see
    /// [`super::tick::TickRule::reads_nothing`]); from the next one, the demographics as their source
    /// holds them now replace the segments the checkpoint held, moving whoever changed meanwhile
    /// with retractions (written as removals). Were both at the first timestamp, a row the
    /// checkpoint held that no longer has a user would cancel out there and never be written,
    /// and the sink would keep its old value.
    pub(super) fn feed(
        &mut self,
        inputs: &mut Inputs,
        tick: Tick,
        end: Tick,
    ) -> Result<(), MysqlError> {
        if self.restored_at == Some(tick) {
            return Ok(());
        }
        if !self.restored_segments.is_empty() {
            inputs.retract_segments(&std::mem::take(&mut self.restored_segments));
        }
        for row in self.snapshot.drain(..) {
            inputs.demographic(row, 1);
        }
        // The source counts its unconvertible rows afresh (with its changes, below).
        inputs.count(
            Counter::DemographicsSkipped,
            -std::mem::take(&mut self.restored_skipped),
        );
        match &mut self.changes {
            Some(Changes::Generated {
                changes,
                per_second,
                start_ms,
            }) => {
                let change_ms = |k: u64| *start_ms + (k as f64 * 1_000.0 / *per_second) as u64;
                while *per_second > 0.0 && change_ms(changes.position()) < end {
                    for (row, diff) in changes.next_change() {
                        inputs.demographic(row, diff);
                    }
                }
            }
            Some(Changes::Mysql(feed)) => {
                for (row, diff) in feed.try_recv_all()? {
                    inputs.demographic(row, diff);
                }
                inputs.count(Counter::DemographicsSkipped, feed.take_skipped());
            }
            None => {}
        }
        Ok(())
    }
}
