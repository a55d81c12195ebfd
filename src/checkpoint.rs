//! Checkpoints on disk: each worker's share of the dataflow's state at a tick boundary, with the
//! Kafka offsets that state covers, so a restarted pipeline (after a crash, SIGKILL included)
//! continues exactly where the last complete checkpoint left it.
//!
//! Layout: `<dir>/<tick>/worker-<index>-of-<peers>` per worker, where `<dir>` is the pipeline's
//! own directory under `engine.checkpoint-dir` ([`pipeline_dir`]: one per consumer group). A
//! checkpoint is complete once all `peers` files are there; files are written to a temporary
//! name, synced, then renamed, so a file that exists is whole. A worker writes its file only once
//! its process's sink has acknowledged every timestamp before the boundary: a window that closed
//! before it is then in the sink, so restoring (which does not re-emit closed windows) loses
//! nothing. Older checkpoints are removed once a newer one is complete, keeping the last two.
//!
//! Every file ends with a CRC-32 of what precedes it and says which worker of how many wrote it,
//! at which boundary, for which pipeline (topic, consumer group, engine settings). [`select`]
//! takes the newest complete checkpoint whose every file passes every check, reports each file
//! that does not (by path and reason), and falls back to the older one kept.
//!
//! What the dataflow state is, and how it is read and restored, is [`dataflows::state`]'s
//! business; the demographics are not in it, they are re-read from their source on restart.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use dataflows::model::Tick;
use dataflows::state::State;
use serde::{Deserialize, Serialize};

/// The format version written in every file.
pub const VERSION: u32 = 2;

/// The bytes of the checksum that ends every file.
const CHECKSUM_BYTES: usize = 4;

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
    /// The checkpoint directory cannot be written: found at start, before anything is read.
    #[error("checkpoint directory {path} cannot be written: {source}")]
    Unwritable {
        /// The directory.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// The checkpoint belongs to another pipeline (topic, group, windows, horizon).
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

/// One worker's file. The fields before `offsets` are its header (see [`Header`]): keep them
/// first, in this order.
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

/// The leading fields of a [`WorkerCheckpoint`], read without its state.
#[derive(Debug, Deserialize)]
struct Header {
    version: u32,
    pipeline: String,
    tick: Tick,
    worker: usize,
    peers: usize,
}

/// Names what a checkpoint is valid for: the topic, the consumer group, and the parameters that
/// shape the state.
pub fn fingerprint(topic: &str, group: &str, params: &dataflows::Params) -> String {
    format!(
        "topic {topic}, group {group}, window {} ms, allowed lateness {} ms, order horizon {} ms",
        params.windows.size_ms, params.windows.allowed_lateness_ms, params.order_horizon_ms
    )
}

/// The directory of one pipeline's checkpoints under `engine.checkpoint-dir`: one per consumer
/// group, as Kafka Streams keeps one state directory per application, so that pipelines of other
/// groups run from the same working directory never meet. Characters other than ASCII letters,
/// digits, `-` and `_` are written as `%XX`, so no group id can name another path.
pub fn pipeline_dir(root: &Path, group: &str) -> PathBuf {
    let mut name = String::with_capacity(group.len());
    for byte in group.bytes() {
        if byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_' {
            name.push(byte as char);
        } else {
            name.push_str(&format!("%{byte:02X}"));
        }
    }
    if name.is_empty() {
        name.push_str("%00");
    }
    root.join(name)
}

/// Creates `dir` if needed and checks that a file can be written, synced and removed there:
/// a run that could never checkpoint fails at start, not at every interval.
pub fn prepare(dir: &Path) -> Result<(), CheckpointError> {
    let unwritable = |source| CheckpointError::Unwritable {
        path: dir.to_owned(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(unwritable)?;
    let probe = dir.join(format!(".probe-{}", std::process::id()));
    let written = std::fs::File::create(&probe).and_then(|mut file| {
        std::io::Write::write_all(&mut file, b"probe")?;
        file.sync_all()
    });
    let removed = std::fs::remove_file(&probe);
    written.and(removed).map_err(unwritable)
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
    let mut bytes = postcard::to_stdvec(checkpoint).map_err(|e| CheckpointError::Format {
        path: path.clone(),
        message: e.to_string(),
    })?;
    let checksum = crc32fast::hash(&bytes);
    bytes.extend_from_slice(&checksum.to_le_bytes());
    let mut file = std::fs::File::create(&temporary).map_err(io(&temporary))?;
    std::io::Write::write_all(&mut file, &bytes).map_err(io(&temporary))?;
    file.sync_all().map_err(io(&temporary))?;
    std::fs::rename(&temporary, &path).map_err(io(&path))?;
    Ok(path)
}

/// Where a file sits in its checkpoint: the boundary and the worker of how many it must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Place {
    /// The checkpoint's boundary (its directory's name).
    pub tick: Tick,
    /// The worker whose file it must be (its name's).
    pub worker: usize,
    /// The number of workers (its name's).
    pub peers: usize,
}

/// Reads a file whose checksum holds: its bytes without the checksum.
fn checked_bytes(path: &Path) -> Result<Vec<u8>, CheckpointError> {
    let mut bytes = std::fs::read(path).map_err(io(path))?;
    let format = |message: String| CheckpointError::Format {
        path: path.to_owned(),
        message,
    };
    let Some(body) = bytes.len().checked_sub(CHECKSUM_BYTES) else {
        return Err(format(format!("truncated: {} bytes", bytes.len())));
    };
    let stored = u32::from_le_bytes(bytes[body..].try_into().expect("four bytes"));
    bytes.truncate(body);
    let computed = crc32fast::hash(&bytes);
    if stored != computed {
        return Err(format(format!(
            "checksum mismatch (stored {stored:08x}, computed {computed:08x}): the file is damaged or truncated"
        )));
    }
    Ok(bytes)
}

/// Checks a file's header: its format version, its pipeline, and that it is the file of the
/// worker, the worker count and the boundary its place says.
fn check_header(
    path: &Path,
    header: &Header,
    pipeline: &str,
    place: Place,
) -> Result<(), CheckpointError> {
    let format = |message: String| CheckpointError::Format {
        path: path.to_owned(),
        message,
    };
    if header.version != VERSION {
        return Err(format(format!(
            "format version {} (this build reads {VERSION})",
            header.version
        )));
    }
    if header.pipeline != pipeline {
        return Err(CheckpointError::Mismatch {
            path: path.to_owned(),
            found: header.pipeline.clone(),
            expected: pipeline.to_owned(),
        });
    }
    let found = (header.tick, header.worker, header.peers);
    if found != (place.tick, place.worker, place.peers) {
        return Err(format(format!(
            "written by worker {} of {} at boundary {}, but it stands as worker {} of {} at boundary {}",
            header.worker, header.peers, header.tick, place.worker, place.peers, place.tick
        )));
    }
    Ok(())
}

/// Reads one worker's file and checks everything it says: checksum, version, pipeline, place.
pub fn read(
    path: &Path,
    pipeline: &str,
    place: Place,
) -> Result<WorkerCheckpoint, CheckpointError> {
    let bytes = checked_bytes(path)?;
    let format = |message: String| CheckpointError::Format {
        path: path.to_owned(),
        message,
    };
    let (header, _) = postcard::take_from_bytes::<Header>(&bytes)
        .map_err(|e| format(format!("unreadable header: {e}")))?;
    check_header(path, &header, pipeline, place)?;
    postcard::from_bytes(&bytes).map_err(|e| format(format!("unreadable: {e}")))
}

/// Checks every file of a complete checkpoint without decoding its state.
fn validate(found: &Found, pipeline: &str) -> Result<(), CheckpointError> {
    let peers = found.files.len();
    for (worker, path) in found.files.iter().enumerate() {
        let bytes = checked_bytes(path)?;
        let (header, _) =
            postcard::take_from_bytes::<Header>(&bytes).map_err(|e| CheckpointError::Format {
                path: path.clone(),
                message: format!("unreadable header: {e}"),
            })?;
        let place = Place {
            tick: found.tick,
            worker,
            peers,
        };
        check_header(path, &header, pipeline, place)?;
    }
    Ok(())
}

/// What [`select`] found.
#[derive(Debug, Default)]
pub struct Selected {
    /// The newest complete checkpoint whose every file passed every check.
    pub found: Option<Found>,
    /// The newer complete checkpoints passed over, each with the first file that failed a check
    /// and why.
    pub rejected: Vec<CheckpointError>,
}

/// The newest complete checkpoint in `dir` whose every file passes every check (checksum,
/// version, place, pipeline); newer ones that fail are reported in [`Selected::rejected`].
/// A checkpoint of another pipeline is an error: the directory is another pipeline's, and
/// falling back past it would silently start over.
pub fn select(dir: &Path, pipeline: &str) -> Result<Selected, CheckpointError> {
    let mut selected = Selected::default();
    for found in complete(dir)?.into_iter().rev() {
        match validate(&found, pipeline) {
            Ok(()) => {
                selected.found = Some(found);
                break;
            }
            Err(mismatch @ CheckpointError::Mismatch { .. }) => return Err(mismatch),
            Err(error) => selected.rejected.push(error),
        }
    }
    Ok(selected)
}

/// Whether the checkpoint at `tick` in `dir` is complete: every worker's file is there.
pub fn is_complete(dir: &Path, tick: Tick) -> bool {
    complete_at(&dir.join(tick.to_string())).is_some()
}

/// The files of the checkpoint in `tick_dir`, in worker order, if every worker's is there.
fn complete_at(tick_dir: &Path) -> Option<Vec<PathBuf>> {
    let mut files: BTreeMap<usize, (usize, PathBuf)> = BTreeMap::new();
    for file in std::fs::read_dir(tick_dir).ok()? {
        let file = file.ok()?;
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
    let peers = files.values().next().map(|(peers, _)| *peers)?;
    (files.len() == peers
        && files.keys().copied().eq(0..peers)
        && files.values().all(|(p, _)| *p == peers))
    .then(|| files.into_values().map(|(_, path)| path).collect())
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
        if let Some(files) = complete_at(&entry.path()) {
            found.push(Found { tick, files });
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
        let place = Place {
            tick: found.tick,
            worker: old,
            peers: found.files.len(),
        };
        let checkpoint = read(path, pipeline, place)?;
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

    fn place(tick: Tick, worker: usize, peers: usize) -> Place {
        Place {
            tick,
            worker,
            peers,
        }
    }

    #[test]
    fn foreign_truncated_and_future_files_are_errors() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = write(dir.path(), &checkpoint(1000, 0, 1)).expect("written");
        read(&path, "p", place(1000, 0, 1)).expect("a good file reads");
        let error = read(&path, "q", place(1000, 0, 1)).expect_err("another pipeline");
        assert!(matches!(error, CheckpointError::Mismatch { .. }), "{error}");
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
        let error = read(&path, "p", place(1000, 0, 1)).expect_err("truncated");
        assert!(error.to_string().contains("checksum mismatch"), "{error}");
        std::fs::write(&path, &bytes[..2]).unwrap();
        let error = read(&path, "p", place(1000, 0, 1)).expect_err("shorter than a checksum");
        assert!(error.to_string().contains("truncated"), "{error}");
        let mut future = checkpoint(1000, 0, 1);
        future.version = VERSION + 1;
        let path = write(dir.path(), &future).expect("written");
        let error = read(&path, "p", place(1000, 0, 1)).expect_err("a future version");
        assert!(error.to_string().contains("format version"), "{error}");
    }

    /// Every single flipped bit of a file, anywhere in it, is found by the checksum.
    #[test]
    fn every_flipped_bit_is_found() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = write(dir.path(), &checkpoint(1000, 0, 1)).expect("written");
        let good = std::fs::read(&path).unwrap();
        for bit in 0..good.len() * 8 {
            let mut bad = good.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            std::fs::write(&path, &bad).unwrap();
            let error =
                read(&path, "p", place(1000, 0, 1)).expect_err("a flipped bit is never accepted");
            assert!(
                matches!(error, CheckpointError::Format { .. }),
                "bit {bit}: {error}"
            );
        }
    }

    /// The checks `select` makes, each attacked: a flipped byte, a worker's file swapped for
    /// another's, a file moved to another boundary, a truncated newest checkpoint. Each is
    /// reported by path and passed over for the older complete checkpoint.
    #[test]
    fn select_passes_over_damaged_checkpoints_to_an_older_complete_one() {
        type Damage = fn(&Path);
        let flip: Damage = |dir| {
            let path = dir.join("3000/worker-1-of-2");
            let mut bytes = std::fs::read(&path).unwrap();
            let middle = bytes.len() / 2;
            bytes[middle] ^= 0x01;
            std::fs::write(&path, bytes).unwrap();
        };
        let swap: Damage = |dir| {
            std::fs::copy(
                dir.join("3000/worker-1-of-2"),
                dir.join("3000/worker-0-of-2"),
            )
            .unwrap();
        };
        let moved: Damage = |dir| {
            std::fs::copy(
                dir.join("2000/worker-0-of-2"),
                dir.join("3000/worker-0-of-2"),
            )
            .unwrap();
        };
        let truncate: Damage = |dir| {
            let path = dir.join("3000/worker-0-of-2");
            let bytes = std::fs::read(&path).unwrap();
            std::fs::write(&path, &bytes[..bytes.len() - 7]).unwrap();
        };
        for (what, damage, reason) in [
            ("a flipped byte", flip, "checksum mismatch"),
            (
                "worker 1's file as worker 0's",
                swap,
                "written by worker 1 of 2",
            ),
            ("an older boundary's file", moved, "at boundary 2000"),
            ("a truncated file", truncate, "checksum mismatch"),
        ] {
            let dir = tempfile::tempdir().expect("a temporary directory");
            for tick in [2000, 3000] {
                write(dir.path(), &checkpoint(tick, 0, 2)).expect("written");
                write(dir.path(), &checkpoint(tick, 1, 2)).expect("written");
            }
            let selected = select(dir.path(), "p").expect("selectable");
            assert_eq!(selected.found.map(|f| f.tick), Some(3000), "{what}");
            assert!(selected.rejected.is_empty());
            damage(dir.path());
            let selected = select(dir.path(), "p").expect("selectable");
            assert_eq!(
                selected.found.map(|f| f.tick),
                Some(2000),
                "{what}: the older checkpoint"
            );
            let [rejected] = selected.rejected.as_slice() else {
                panic!("{what}: one rejection, got {:?}", selected.rejected);
            };
            let message = rejected.to_string();
            assert!(message.contains("3000/worker-"), "{what}: {message}");
            assert!(message.contains(reason), "{what}: {message}");
        }
        // Both damaged: none usable, both reported.
        let dir = tempfile::tempdir().expect("a temporary directory");
        for tick in [2000, 3000] {
            write(dir.path(), &checkpoint(tick, 0, 1)).expect("written");
            let path = dir.path().join(format!("{tick}/worker-0-of-1"));
            std::fs::write(&path, b"garbage").unwrap();
        }
        let selected = select(dir.path(), "p").expect("selectable");
        assert!(selected.found.is_none());
        assert_eq!(selected.rejected.len(), 2);
        // Another pipeline's checkpoint is an error, not a fallback.
        let dir = tempfile::tempdir().expect("a temporary directory");
        write(dir.path(), &checkpoint(1000, 0, 1)).expect("written");
        let error = select(dir.path(), "q").expect_err("another pipeline's");
        assert!(matches!(error, CheckpointError::Mismatch { .. }), "{error}");
    }

    #[test]
    fn an_unwritable_directory_is_found_at_start() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        prepare(&dir.path().join("a/b")).expect("created and writable");
        assert!(dir.path().join("a/b").is_dir());
        assert_eq!(
            std::fs::read_dir(dir.path().join("a/b")).unwrap().count(),
            0
        );
        let file = dir.path().join("file");
        std::fs::write(&file, b"").unwrap();
        let error = prepare(&file.join("under")).expect_err("under a file");
        assert!(
            matches!(error, CheckpointError::Unwritable { .. }),
            "{error}"
        );
    }

    #[test]
    fn each_group_has_its_own_directory_and_no_group_names_another_path() {
        let root = Path::new("/state");
        assert_eq!(pipeline_dir(root, "shopflow"), root.join("shopflow"));
        assert_eq!(
            pipeline_dir(root, "a.b/../c"),
            root.join("a%2Eb%2F%2E%2E%2Fc")
        );
        assert_eq!(pipeline_dir(root, ".."), root.join("%2E%2E"));
        assert_eq!(pipeline_dir(root, ""), root.join("%00"));
        assert_ne!(pipeline_dir(root, "a%2F"), pipeline_dir(root, "a/"));
    }
}
