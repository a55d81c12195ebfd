//! What a run is, as plain data: its configuration, its workers, where its events and
//! demographics come from, and when it stops. [`crate::runtime`] runs a [`Plan`];
//! [`crate::cluster`] fingerprints one so that the processes of a cluster agree on it.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use crate::config::Config;
use crate::config::kafka::KafkaConfig;
use crate::config::mysql::MysqlConfig;
use crate::sources::mysql::Follower;

/// How many workers, and where: timely's own flags.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Workers {
    /// Worker threads per process; 0 for one per core.
    pub threads: usize,
    /// Number of processes.
    pub processes: usize,
    /// This process's index.
    pub process: usize,
    /// A file with one `host:port` per process.
    pub hostfile: Option<PathBuf>,
}

impl Workers {
    /// The number of threads per process, resolving 0 to the number of cores.
    pub fn threads_per_process(&self) -> usize {
        if self.threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            self.threads
        }
    }
}

/// When a run ends (besides Ctrl-C).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stop {
    /// After this many generated events.
    pub events: Option<u64>,
    /// After this much wall-clock time.
    pub duration: Option<Duration>,
}

/// Where events come from.
#[derive(Clone, Debug)]
#[allow(
    clippy::large_enum_variant,
    reason = "built once per run: its size does not matter"
)]
pub enum EventSource {
    /// The generator, in process: event `n` arrives at its simulated time, paced by
    /// `generator.pace`. Worker `i` of `w` generates the events `n ≡ i (mod w)`.
    Generator {
        /// The simulated time of event 0; `None` for now.
        start_ms: Option<u64>,
    },
    /// A Kafka topic; ticks follow the wall clock.
    Kafka {
        /// The topic and client settings.
        config: KafkaConfig,
        /// Stop once every partition is read to its end (and `producer_done` is set, if given).
        until_caught_up: bool,
        /// Set by an in-process producer when it has sent everything.
        producer_done: Option<Arc<AtomicBool>>,
    },
}

/// Where demographics come from: read once, at worker 0, and exchanged.
#[derive(Clone, Debug)]
pub enum DemographicSource {
    /// The generator's table and its changes (`generator.demographic-changes-per-second`).
    Generator,
    /// A MySQL table: a consistent snapshot, then its binlog; worker 0 leaves its binlog
    /// follower in the slot, where `/ready` watches it.
    Mysql(MysqlConfig, FollowerSlot),
}

impl DemographicSource {
    /// The MySQL table of `config`, with an empty follower slot.
    pub fn mysql(config: MysqlConfig) -> DemographicSource {
        DemographicSource::Mysql(config, FollowerSlot::default())
    }
}

/// Where worker 0 leaves the MySQL binlog follower it started, for the HTTP server's `/ready`
/// (empty until the snapshot is read).
#[derive(Clone, Debug, Default)]
pub struct FollowerSlot(Arc<std::sync::OnceLock<Follower>>);

impl FollowerSlot {
    /// The follower, once worker 0 has started it.
    pub fn get(&self) -> Option<&Follower> {
        self.0.get()
    }

    /// Keeps `follower` (the first one only: a run starts one).
    pub fn set(&self, follower: Follower) {
        let _ = self.0.set(follower);
    }
}

/// Everything a run needs.
#[derive(Clone, Debug)]
pub struct Plan {
    /// The configuration.
    pub config: Config,
    /// The workers.
    pub workers: Workers,
    /// When to stop.
    pub stop: Stop,
    /// Where events come from.
    pub events: EventSource,
    /// Where demographics come from.
    pub demographics: DemographicSource,
    /// Where to keep checkpoints (Kafka sources only): the pipeline's own directory
    /// ([`crate::checkpoint::pipeline_dir`]); `None` for none.
    pub checkpoints: Option<PathBuf>,
}
