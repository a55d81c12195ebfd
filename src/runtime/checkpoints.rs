//! Checkpoints and commits, behind the sink: a worker captures its state at each boundary,
//! writes it once the sink has acknowledged the boundary, and commits the Kafka offsets of the
//! newest checkpoint complete on disk (every worker's file written, in any process). Committed
//! offsets so never run ahead of a checkpoint holding the state they cover, nor a checkpoint
//! ahead of what the sink holds.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use dataflows::model::Tick;
use dataflows::state::State;
use dataflows::windows::WindowSpec;

use super::workers::Workers;
use super::{EventSource, Plan, RunError};
use crate::checkpoint::{self, WorkerCheckpoint};
use crate::journal::{Journal, Written};
use crate::sources::kafka::{KafkaSourceError, PartitionReader};

/// The next offset to read, per partition.
pub(super) type Offsets = BTreeMap<i32, i64>;

/// Where and what a run checkpoints.
pub(super) struct Checkpoints {
    pub(super) dir: PathBuf,
    pub(super) pipeline: String,
    pub(super) interval_ms: u64,
    /// The checkpoint this run restores.
    pub(super) found: Option<checkpoint::Found>,
}

impl Checkpoints {
    /// Where `plan` checkpoints, for which pipeline, and the newest complete valid checkpoint to
    /// restore; `None` without a checkpoint directory or a Kafka source.
    pub(super) fn open(plan: &Plan) -> Result<Option<Checkpoints>, RunError> {
        let (Some(dir), EventSource::Kafka { config, .. }) = (&plan.checkpoints, &plan.events)
        else {
            return Ok(None);
        };
        checkpoint::prepare(dir)?;
        let pipeline =
            checkpoint::fingerprint(&config.topic, &config.group_id, &plan.config.params());
        let selected = checkpoint::select(dir, &pipeline)?;
        for rejected in &selected.rejected {
            tracing::warn!(%rejected, "checkpoint unusable; falling back to an older one");
        }
        let found = selected.found;
        match &found {
            Some(found) => {
                tracing::info!(tick = found.tick, workers = found.files.len(), dir = %dir.display(), "restoring a checkpoint");
            }
            None => {
                tracing::info!(dir = %dir.display(), start = ?config.start, "no checkpoint to restore: reading the topic from kafka.start with empty state");
            }
        }
        Ok(Some(Checkpoints {
            dir: dir.clone(),
            pipeline,
            interval_ms: plan.config.engine.checkpoint_interval_ms,
            found,
        }))
    }

    /// The boundary of the checkpoint restored, if any.
    pub(super) fn restored_at(&self) -> Option<Tick> {
        self.found.as_ref().map(|f| f.tick)
    }

    /// This process's journal of rows written, with the rows earlier runs wrote to clear in the
    /// first output (see [`crate::journal`]).
    pub(super) fn journal(
        &self,
        workers: &Workers,
        start_ms: u64,
        tick_ms: u64,
        windows: WindowSpec,
    ) -> Result<Written, RunError> {
        let since = self.restored_at();
        let first = (start_ms - start_ms % tick_ms).max(since.unwrap_or(0));
        let threads = workers.threads_per_process();
        let peers = threads * workers.processes.max(1);
        let local = workers.process * threads..(workers.process + 1) * threads;
        let journal = Journal::new(&self.dir, workers.process, start_ms, self.interval_ms);
        Ok(Written::open(journal, since, first, windows, |key| {
            local.contains(&dataflows::aggregates::owner(key, peers))
        })?)
    }

    /// This worker's share of the checkpoint restored, and every partition's offset in it.
    pub(super) fn load(
        &self,
        index: usize,
        peers: usize,
    ) -> Result<Option<(State, Offsets)>, checkpoint::CheckpointError> {
        self.found
            .as_ref()
            .map(|found| checkpoint::load(found, &self.pipeline, index, peers))
            .transpose()
    }
}

/// A worker's checkpoints on their way: captured, written, committed.
#[derive(Default)]
pub(super) struct Checkpointer {
    /// Checkpoints taken, waiting for the sink to pass their boundary before being written.
    captured: Vec<WorkerCheckpoint>,
    writers: Vec<JoinHandle<()>>,
    /// The offsets of the checkpoints written (or being written), waiting for every worker's
    /// file: only a complete checkpoint's offsets are committed.
    uncommitted: Vec<(Tick, Offsets)>,
}

impl Checkpointer {
    /// Whether a checkpoint captured is still waiting for the sink (an outage).
    pub(super) fn waiting(&self) -> bool {
        !self.captured.is_empty()
    }

    /// Keeps a checkpoint captured at its boundary, to write once the sink has passed it.
    pub(super) fn capture(&mut self, checkpoint: WorkerCheckpoint) {
        self.captured.push(checkpoint);
    }

    /// Writes (on their own threads) the captured checkpoints whose boundary the sink has
    /// acknowledged: only then is everything before the boundary in the sink, closed windows
    /// included. Their offsets wait in `uncommitted` for [`commit_complete`](Self::commit_complete).
    pub(super) fn write_acknowledged(
        &mut self,
        acknowledged_below: Tick,
        checkpoints: &Checkpoints,
    ) {
        self.writers.retain(|w| !w.is_finished());
        let ready = self
            .captured
            .partition_point(|c| c.tick <= acknowledged_below);
        for checkpoint in self.captured.drain(..ready) {
            self.uncommitted
                .push((checkpoint.tick, checkpoint.offsets.clone()));
            let dir = checkpoints.dir.clone();
            let spawned = std::thread::Builder::new()
                .name("shopflow-checkpoint".into())
                .spawn(move || write(&dir, &checkpoint));
            match spawned {
                Ok(writer) => self.writers.push(writer),
                Err(error) => tracing::error!(%error, "cannot start a checkpoint writer"),
            }
        }
    }

    /// Commits the offsets of the newest checkpoint in `uncommitted` that is complete on disk
    /// (every worker's file written, in any process), and forgets it and the older ones:
    /// committed offsets never run ahead of a checkpoint that holds the state they cover. At the
    /// end of a run (`last`), waits a little for the other workers' files of the last one.
    pub(super) fn commit_complete(
        &mut self,
        reader: &mut PartitionReader,
        checkpoints: &Checkpoints,
        last: bool,
    ) -> Result<(), KafkaSourceError> {
        let deadline = Instant::now() + Duration::from_secs(if last { 10 } else { 0 });
        loop {
            let newest = self
                .uncommitted
                .iter()
                .rposition(|(tick, _)| checkpoint::is_complete(&checkpoints.dir, *tick));
            if let Some(newest) = newest {
                let (_, offsets) = self.uncommitted.drain(..=newest).next_back().expect("one");
                return reader.commit(&offsets, last);
            }
            if self.uncommitted.is_empty() || Instant::now() >= deadline {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the checkpoints being written.
    pub(super) fn join_writers(&mut self) {
        for writer in self.writers.drain(..) {
            let _ = writer.join();
        }
    }
}

/// Writes one checkpoint, on its own thread; worker 0 then prunes the old ones.
fn write(dir: &std::path::Path, checkpoint: &WorkerCheckpoint) {
    let started = Instant::now();
    match checkpoint::write(dir, checkpoint) {
        Ok(path) => {
            tracing::debug!(path = %path.display(), elapsed = ?started.elapsed(), "checkpoint written");
            if checkpoint.worker == 0
                && let Err(error) = checkpoint::prune(dir)
            {
                tracing::warn!(%error, "cannot remove old checkpoints");
            }
        }
        Err(error) => tracing::error!(%error, "cannot write a checkpoint"),
    }
}
