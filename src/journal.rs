//! The journal of rows written: which aggregate rows a process handed to the sink since the
//! oldest checkpoint kept, so that a restarted run can clear those its restored state does not
//! hold.
//!
//! A checkpoint holds the state at its boundary `T`; a run killed after `T` may have written rows
//! that the state at `T` does not have — say, the segment a user moved to after `T`, and who was
//! deleted while the pipeline was down. The restored run never produces that row again, so
//! without more InfluxDB would keep its value forever. So the sink thread records every row key
//! it is about to write with a value (write-ahead: appended and synced before the batch goes to
//! the sink) in a segment file per checkpoint interval, under the checkpoint directory:
//! `<dir>/journal/<segment start>-<process>-<run start>`. On start, [`written_since`]
//! reads every process's segments from the restored checkpoint's boundary on (everything, with
//! no checkpoint), and the runtime writes a removal, in its first output, for each key its own
//! workers keep, that is not in that output, and whose window (if it has one) is still open.
//! Segments older than the oldest complete checkpoint are removed.
//!
//! Each entry is a postcard-encoded [`AggregateKey`], length-prefixed; a crash may leave a torn
//! last entry, where reading a segment stops (the sync before each write to the sink makes every
//! key whose write may have reached the sink whole).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use dataflows::model::{AggregateKey, OutputKey, Tick};
use dataflows::output::{Batch, Change};
use dataflows::windows::WindowSpec;
use rustc_hash::FxHashSet;

/// The journal could not be written or read.
#[derive(Debug, thiserror::Error)]
#[error("journal of rows written {path}: {source}")]
pub struct JournalError {
    /// The file or directory.
    pub path: PathBuf,
    /// What failed.
    pub source: std::io::Error,
}

fn error(path: &Path) -> impl FnOnce(std::io::Error) -> JournalError + '_ {
    move |source| JournalError {
        path: path.to_owned(),
        source,
    }
}

/// One process's journal, written by its sink thread.
pub struct Journal {
    dir: PathBuf,
    process: usize,
    run: u64,
    interval: Tick,
    /// The current segment: its start, its file, and the keys already in it.
    segment: Option<(Tick, BufWriter<File>, FxHashSet<AggregateKey>)>,
}

impl Journal {
    /// The journal of `process` under the checkpoint directory `checkpoints`, in segments of
    /// `interval` (the checkpoint interval); `run` tells this run's files from earlier ones'.
    pub fn new(checkpoints: &Path, process: usize, run: u64, interval: Tick) -> Journal {
        Journal {
            dir: checkpoints.join("journal"),
            process,
            run,
            interval: interval.max(1),
            segment: None,
        }
    }

    /// Records the keys `batch` writes a value for that the current segment lacks, and syncs
    /// them to disk: call before handing the batch to the sink.
    pub fn record(&mut self, batch: &Batch) -> Result<(), JournalError> {
        let start = batch.time - batch.time % self.interval;
        if self.segment.as_ref().is_none_or(|(s, _, _)| *s != start) {
            self.rotate(start)?;
        }
        let (_, file, keys) = self.segment.as_mut().expect("a segment after rotating");
        let mut added = false;
        for change in &batch.changes {
            if let (OutputKey::Aggregate(key), Some(_)) = (&change.key, &change.value)
                && !keys.contains(key)
            {
                let bytes = postcard::to_stdvec(key).expect("a key always encodes");
                let length = u32::try_from(bytes.len()).expect("a key is small");
                let path = &self.dir;
                file.write_all(&length.to_le_bytes())
                    .and_then(|()| file.write_all(&bytes))
                    .map_err(error(path))?;
                keys.insert(key.clone());
                added = true;
            }
        }
        if added {
            let path = &self.dir;
            file.flush().map_err(error(path))?;
            file.get_ref().sync_data().map_err(error(path))?;
        }
        Ok(())
    }

    /// Starts the segment at `start`, and removes the segments older than the oldest complete
    /// checkpoint.
    fn rotate(&mut self, start: Tick) -> Result<(), JournalError> {
        std::fs::create_dir_all(&self.dir).map_err(error(&self.dir))?;
        let path = self
            .dir
            .join(format!("{start}-{}-{}", self.process, self.run));
        let file = File::options()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(error(&path))?;
        self.segment = Some((start, BufWriter::new(file), FxHashSet::default()));
        let checkpoints = self.dir.parent().unwrap_or(&self.dir);
        if let Some(oldest) = crate::checkpoint::complete(checkpoints)
            .ok()
            .and_then(|found| found.first().map(|f| f.tick))
        {
            for (segment, path) in segments(&self.dir)? {
                if segment < oldest && segment != start {
                    let _ = std::fs::remove_file(path);
                }
            }
        }
        Ok(())
    }
}

/// The segment files in `dir`, with their starts.
fn segments(dir: &Path) -> Result<Vec<(Tick, PathBuf)>, JournalError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(error(dir)(e)),
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.map_err(error(dir))?;
        if let Some(start) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.split('-').next())
            .and_then(|start| start.parse::<Tick>().ok())
        {
            found.push((start, entry.path()));
        }
    }
    Ok(found)
}

/// Every key written, by any process, in the segments that start at or after `since` (all of
/// them for `None`), under the checkpoint directory `checkpoints`.
pub fn written_since(
    checkpoints: &Path,
    since: Option<Tick>,
) -> Result<FxHashSet<AggregateKey>, JournalError> {
    read_since(&checkpoints.join("journal"), since)
}

/// [`written_since`] in the journal directory `dir`.
fn read_since(dir: &Path, since: Option<Tick>) -> Result<FxHashSet<AggregateKey>, JournalError> {
    let mut keys = FxHashSet::default();
    for (start, path) in segments(dir)? {
        if since.is_some_and(|since| start < since) {
            continue;
        }
        let bytes = std::fs::read(&path).map_err(error(&path))?;
        let mut rest = bytes.as_slice();
        // A torn last entry (a crash while appending) ends the segment.
        while let Some((length, after)) = rest.split_first_chunk::<4>() {
            let length = u32::from_le_bytes(*length) as usize;
            let Some((entry, after)) = after.split_at_checked(length) else {
                break;
            };
            let Ok(key) = postcard::from_bytes::<AggregateKey>(entry) else {
                break;
            };
            keys.insert(key);
            rest = after;
        }
    }
    Ok(keys)
}

/// The runtime's side of the journal: the journal of the rows this process writes, and the rows
/// to clear in the run's first output (see the module's documentation).
pub struct Written {
    journal: Journal,
    clear: Option<Clear>,
}

/// Rows a run before this one wrote after the restored checkpoint's boundary (or at all, with
/// none): those this process's workers keep and that its first output does not hold are written
/// as removals in it.
struct Clear {
    /// The run's first timestamp.
    at: Tick,
    keys: Vec<AggregateKey>,
}

impl Written {
    /// Takes over `journal`, and reads what earlier runs wrote from `since` (the restored
    /// checkpoint's boundary; everything for `None`): the rows for which `keeps` holds (those
    /// this process's workers own) and whose window is still open at `first`, the run's first
    /// timestamp, are cleared there unless the run writes them.
    pub fn open(
        journal: Journal,
        since: Option<Tick>,
        first: Tick,
        windows: WindowSpec,
        keeps: impl Fn(&AggregateKey) -> bool,
    ) -> Result<Written, JournalError> {
        let mut keys: Vec<_> = read_since(&journal.dir, since)?
            .into_iter()
            .filter(|key| keeps(key))
            // A window closed by now keeps its values, as any window that closed while the
            // pipeline was down.
            .filter(|key| {
                key.window.is_none_or(|start| {
                    start
                        .0
                        .saturating_add(windows.size_ms + windows.allowed_lateness_ms)
                        > first
                })
            })
            .collect();
        keys.sort();
        if !keys.is_empty() {
            tracing::info!(
                rows = keys.len(),
                "rows written before the restart, checked against the restored state"
            );
        }
        Ok(Written {
            journal,
            clear: Some(Clear { at: first, keys }),
        })
    }

    /// The run's first timestamp while its removals are still to be written: it is written even
    /// with no output of its own, as it carries them.
    pub fn clearing_at(&self) -> Option<Tick> {
        self.clear.as_ref().map(|clear| clear.at)
    }

    /// At the run's first timestamp, adds a removal for every row to clear that `changes` does
    /// not write.
    pub fn clear_absent(&mut self, time: Tick, changes: &mut Vec<Change>) {
        if self.clear.as_ref().is_none_or(|clear| clear.at != time) {
            return;
        }
        let clear = self.clear.take().expect("checked above");
        let present: FxHashSet<&AggregateKey> = changes
            .iter()
            .filter_map(|change| match &change.key {
                OutputKey::Aggregate(key) => Some(key),
                OutputKey::Counter(_) => None,
            })
            .collect();
        let absent: Vec<Change> = clear
            .keys
            .into_iter()
            .filter(|key| !present.contains(key))
            .map(|key| Change {
                key: OutputKey::Aggregate(key),
                value: None,
            })
            .collect();
        if !absent.is_empty() {
            tracing::info!(
                rows = absent.len(),
                "rows written before the restart that the restored state does not hold: removed"
            );
        }
        changes.extend(absent);
    }

    /// Records the keys `batch` writes (see [`Journal::record`]): call before handing the batch
    /// to the sink.
    pub fn record(&mut self, batch: &Batch) -> Result<(), JournalError> {
        self.journal.record(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dataflows::model::{
        AgeBand, CampaignId, Dimension, EventTimeMs, Gender, Name, OutputValue, Totals,
    };

    fn key(n: u32, window: Option<u64>) -> AggregateKey {
        AggregateKey {
            dimension: match n % 3 {
                0 => Dimension::CampaignAgeGender(
                    CampaignId(n),
                    Some((AgeBand::From25To34, Gender::Female)),
                ),
                1 => Dimension::State(Some((Name::from("US"), Name::from(format!("s,t\u{1}{n}"))))),
                _ => Dimension::Country(None),
            },
            window: window.map(EventTimeMs),
        }
    }

    fn batch(time: Tick, changes: &[(AggregateKey, bool)]) -> Batch {
        Batch {
            time,
            changes: changes
                .iter()
                .map(|(key, valued)| Change {
                    key: OutputKey::Aggregate(key.clone()),
                    value: valued.then_some(OutputValue::Totals(Totals::click())),
                })
                .collect(),
        }
    }

    #[test]
    fn keys_written_with_a_value_are_read_back_from_their_segments_on() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mut journal = Journal::new(dir.path(), 0, 7, 1_000);
        journal
            .record(&batch(500, &[(key(0, None), true), (key(1, None), false)]))
            .unwrap();
        journal
            .record(&batch(
                1_500,
                &[(key(2, Some(60_000)), true), (key(0, None), true)],
            ))
            .unwrap();
        let mut other = Journal::new(dir.path(), 1, 8, 1_000);
        other
            .record(&batch(2_250, &[(key(4, None), true)]))
            .unwrap();
        let all = written_since(dir.path(), None).unwrap();
        let want: FxHashSet<AggregateKey> = [key(0, None), key(2, Some(60_000)), key(4, None)]
            .into_iter()
            .collect();
        assert_eq!(
            all, want,
            "every key written with a value; removals are not"
        );
        let since = written_since(dir.path(), Some(1_000)).unwrap();
        let want: FxHashSet<AggregateKey> = [key(0, None), key(2, Some(60_000)), key(4, None)]
            .into_iter()
            .collect();
        assert_eq!(since, want, "key 0 again in the segment from 1000");
        let since = written_since(dir.path(), Some(2_000)).unwrap();
        assert_eq!(since, [key(4, None)].into_iter().collect());
    }

    #[test]
    fn a_torn_last_entry_ends_its_segment() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mut journal = Journal::new(dir.path(), 0, 1, 1_000);
        journal
            .record(&batch(0, &[(key(0, None), true), (key(1, None), true)]))
            .unwrap();
        drop(journal);
        let (_, path) = segments(&dir.path().join("journal")).unwrap().remove(0);
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
        assert_eq!(
            written_since(dir.path(), None).unwrap(),
            [key(0, None)].into_iter().collect()
        );
    }
}
