//! Checkpoints on disk: each worker's share of the dataflow's state at a tick boundary, with the
//! Kafka offsets that state covers, so a restarted pipeline (after a crash, SIGKILL included)
//! continues exactly where the last complete checkpoint left it.
//!
//! Layout: `<dir>/<tick>/worker-<index>-of-<peers>` per worker. A checkpoint is complete once all
//! `peers` files are there; files are written to a temporary name, synced, then renamed, so a
//! file that exists is whole. A worker writes its file only once its process's sink has written
//! every timestamp before the boundary: a window that closed before it is then in the sink, so
//! restoring (which does not re-emit closed windows) loses nothing. Older checkpoints are removed
//! once a newer one is complete, keeping the last two.
//!
//! What the dataflow state is, and how it is read and restored, is [`dataflows::state`]'s
//! business; the demographics are not in it, they are re-read from their source on restart.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use dataflows::model::Tick;
use dataflows::state::State;
use serde::{Deserialize, Serialize};

/// The format version written in every file.
pub const VERSION: u32 = 1;

/// A checkpoint could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// A file system operation failed.
    #[error("checkpoint {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// A file is not a checkpoint this version can read.
    #[error("checkpoint {path}: {message}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// The checkpoint belongs to another pipeline (topic, windows, horizon).
    #[error(
        "checkpoint {path} was written for {found}, but this run is {expected}; \
         remove the directory or set another engine.checkpoint-dir"
    )]
    Mismatch {
        /// The checkpoint file.
        path: PathBuf,
        /// The pipeline it was written for.
        found: String,
        /// This run's pipeline.
        expected: String,
    },
}

/// One worker's file.
#[derive(Debug, Serialize, Deserialize)]
pub struct WorkerCheckpoint {
    /// The format version.
    pub version: u32,
    /// What pipeline this is for (see [`fingerprint`]).
    pub pipeline: String,
    /// The boundary: the state holds every update before it.
    pub tick: Tick,
    /// The worker's global index.
    pub worker: usize,
    /// The number of workers of the run that wrote it.
    pub peers: usize,
    /// The next offset to read, per partition this worker read.
    pub offsets: BTreeMap<i32, i64>,
    /// The worker's share of the state.
    pub state: State,
}

/// Names what a checkpoint is valid for: the topic and the parameters that shape the state.
pub fn fingerprint(topic: &str, params: &dataflows::Params) -> String {
    format!(
        "topic {topic}, window {} ms, allowed lateness {} ms, order horizon {} ms",
        params.windows.size_ms, params.windows.allowed_lateness_ms, params.order_horizon_ms
    )
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io {
        path: path.to_owned(),
        source,
    }
}

fn file_name(worker: usize, peers: usize) -> String {
    format!("worker-{worker}-of-{peers}")
}

/// Writes one worker's file, atomically.
pub fn write(dir: &Path, checkpoint: &WorkerCheckpoint) -> Result<PathBuf, CheckpointError> {
    let tick_dir = dir.join(checkpoint.tick.to_string());
    std::fs::create_dir_all(&tick_dir).map_err(io(&tick_dir))?;
    let path = tick_dir.join(file_name(checkpoint.worker, checkpoint.peers));
    let temporary = tick_dir.join(format!(
        ".{}.tmp",
        file_name(checkpoint.worker, checkpoint.peers)
    ));
    let file = std::fs::File::create(&temporary).map_err(io(&temporary))?;
    let mut writer = std::io::BufWriter::new(file);
    postcard::to_io(checkpoint, &mut writer).map_err(|e| CheckpointError::Format {
        path: path.clone(),
        message: e.to_string(),
    })?;
    let file = writer
        .into_inner()
        .map_err(|e| io(&temporary)(e.into_error()))?;
    file.sync_all().map_err(io(&temporary))?;
    std::fs::rename(&temporary, &path).map_err(io(&path))?;
    Ok(path)
}

/// Reads one worker's file and checks it belongs to `pipeline`.
pub fn read(path: &Path, pipeline: &str) -> Result<WorkerCheckpoint, CheckpointError> {
    let bytes = std::fs::read(path).map_err(io(path))?;
    let format = |message: String| CheckpointError::Format {
        path: path.to_owned(),
        message,
    };
    let checkpoint: WorkerCheckpoint =
        postcard::from_bytes(&bytes).map_err(|e| format(format!("unreadable: {e}")))?;
    if checkpoint.version != VERSION {
        return Err(format(format!(
            "format version {} (this build reads {VERSION})",
            checkpoint.version
        )));
    }
    if checkpoint.pipeline != pipeline {
        return Err(CheckpointError::Mismatch {
            path: path.to_owned(),
            found: checkpoint.pipeline,
            expected: pipeline.to_owned(),
        });
    }
    Ok(checkpoint)
}

/// A complete checkpoint found on disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    /// Its boundary.
    pub tick: Tick,
    /// Every worker's file, in worker order.
    pub files: Vec<PathBuf>,
}

/// The complete checkpoints in `dir`, oldest first.
pub fn complete(dir: &Path) -> Result<Vec<Found>, CheckpointError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(dir)(e)),
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io(dir))?;
        let Some(tick) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<Tick>().ok())
        else {
            continue;
        };
        let mut files: BTreeMap<usize, (usize, PathBuf)> = BTreeMap::new();
        let tick_dir = entry.path();
        for file in std::fs::read_dir(&tick_dir).map_err(io(&tick_dir))? {
            let file = file.map_err(io(&tick_dir))?;
            let name = file.file_name();
            let Some((worker, peers)) = name
                .to_str()
                .and_then(|n| n.strip_prefix("worker-"))
                .and_then(|n| n.split_once("-of-"))
                .and_then(|(w, p)| Some((w.parse::<usize>().ok()?, p.parse::<usize>().ok()?)))
            else {
                continue;
            };
            files.insert(worker, (peers, file.path()));
        }
        let peers = files.values().next().map(|(peers, _)| *peers);
        if let Some(peers) = peers
            && files.len() == peers
            && files.keys().copied().eq(0..peers)
            && files.values().all(|(p, _)| *p == peers)
        {
            found.push(Found {
                tick,
                files: files.into_values().map(|(_, path)| path).collect(),
            });
        }
    }
    found.sort_by_key(|f| f.tick);
    Ok(found)
}

/// The newest complete checkpoint in `dir`, if any.
pub fn latest(dir: &Path) -> Result<Option<Found>, CheckpointError> {
    Ok(complete(dir)?.pop())
}

/// Removes every checkpoint directory older than the second newest complete one (incomplete
/// ones included: a newer complete checkpoint supersedes them).
pub fn prune(dir: &Path) -> Result<(), CheckpointError> {
    let complete = complete(dir)?;
    let Some(keep_from) = complete.iter().rev().nth(1).map(|f| f.tick) else {
        return Ok(());
    };
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let entry = entry.map_err(io(dir))?;
        if let Some(tick) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<Tick>().ok())
            && tick < keep_from
        {
            let path = entry.path();
            std::fs::remove_dir_all(&path).map_err(io(&path))?;
        }
    }
    Ok(())
}

/// What a restarting worker takes from a checkpoint: the state of the old workers it is given
/// (`old ≡ index mod peers`), and every old worker's offsets (it picks its own partitions').
pub fn load(
    found: &Found,
    pipeline: &str,
    index: usize,
    peers: usize,
) -> Result<(State, BTreeMap<i32, i64>), CheckpointError> {
    let mut state = State::default();
    let mut offsets = BTreeMap::new();
    for (old, path) in found.files.iter().enumerate() {
        let checkpoint = read(path, pipeline)?;
        offsets.extend(checkpoint.offsets);
        if old % peers == index {
            state.extend(checkpoint.state);
        }
    }
    Ok((state, offsets))
}

#[cfg(test)]
mod tests {
    use super::*;
    use dataflows::model::{CampaignId, Counter, Slot, Totals, UserId};

    fn checkpoint(tick: Tick, worker: usize, peers: usize) -> WorkerCheckpoint {
        WorkerCheckpoint {
            version: VERSION,
            pipeline: "p".into(),
            tick,
            worker,
            peers,
            offsets: BTreeMap::from([(worker as i32, 10 + worker as i64)]),
            state: State {
                contributions: vec![(
                    (UserId(worker as u32), (CampaignId(1), Slot::Retired)),
                    Totals::click(),
                )],
                segments: Vec::new(),
                counters: vec![(Counter::EventsIn, 3)],
                orders: Vec::new(),
            },
        }
    }

    #[test]
    fn complete_needs_every_worker_and_prune_keeps_two() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        write(dir.path(), &checkpoint(1000, 0, 2)).expect("written");
        assert_eq!(
            latest(dir.path()).expect("readable"),
            None,
            "one of two files"
        );
        write(dir.path(), &checkpoint(1000, 1, 2)).expect("written");
        for tick in [2000, 3000] {
            write(dir.path(), &checkpoint(tick, 0, 2)).expect("written");
            write(dir.path(), &checkpoint(tick, 1, 2)).expect("written");
        }
        write(dir.path(), &checkpoint(4000, 0, 2)).expect("written");
        let ticks: Vec<Tick> = complete(dir.path())
            .unwrap()
            .iter()
            .map(|f| f.tick)
            .collect();
        assert_eq!(ticks, [1000, 2000, 3000]);
        prune(dir.path()).expect("pruned");
        let ticks: Vec<Tick> = complete(dir.path())
            .unwrap()
            .iter()
            .map(|f| f.tick)
            .collect();
        assert_eq!(ticks, [2000, 3000]);
        assert!(
            dir.path().join("4000").exists(),
            "newer than the newest complete: kept"
        );

        // Two old workers onto three new ones: each old file goes to exactly one new worker, and
        // every new worker sees every offset.
        let found = latest(dir.path()).unwrap().expect("a checkpoint");
        let shares: Vec<(State, BTreeMap<i32, i64>)> = (0..3)
            .map(|i| load(&found, "p", i, 3).expect("loaded"))
            .collect();
        assert_eq!(shares[0].0.contributions.len(), 1);
        assert_eq!(shares[1].0.contributions.len(), 1);
        assert_eq!(shares[2].0, State::default());
        for (_, offsets) in &shares {
            assert_eq!(*offsets, BTreeMap::from([(0, 10), (1, 11)]));
        }
    }

    #[test]
    fn foreign_truncated_and_future_files_are_errors() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = write(dir.path(), &checkpoint(1000, 0, 1)).expect("written");
        let error = read(&path, "q").expect_err("another pipeline");
        assert!(matches!(error, CheckpointError::Mismatch { .. }), "{error}");
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
        let error = read(&path, "p").expect_err("truncated");
        assert!(error.to_string().contains("unreadable"), "{error}");
        let mut future = checkpoint(1000, 0, 1);
        future.version = VERSION + 1;
        let path = write(dir.path(), &future).expect("written");
        let error = read(&path, "p").expect_err("a future version");
        assert!(error.to_string().contains("format version"), "{error}");
    }
}
