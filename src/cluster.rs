//! Cluster mode: the TCP connections between processes, set up by shopflow and then handed to
//! timely.
//!
//! timely's own setup (`timely_communication::networking::create_sockets`) retries a refused
//! connection forever, checks nothing about the peer beyond the 8-byte process index it reads,
//! and panics on anything unexpected. Here every process instead:
//!
//! 1. listens on its own hostfile address, connects to every process before it and accepts every
//!    process after it (timely's convention), retrying refused connections with backoff (50 ms
//!    doubling up to 1 s) until an overall deadline (`engine.connect-timeout-ms`), then fails
//!    naming the `host:port` it could not reach;
//! 2. starts each connection with a [`Handshake`] in both directions: a magic and protocol
//!    version, its process index, `-n`, `-w`, the engine settings the results depend on, a
//!    fingerprint of what it reads, and its clock (process 0's is the run's start everywhere);
//!    both sides check the other's before going on, so peers that disagree fail at once with a
//!    message saying how;
//! 3. opens a second connection to every process it dials, the control link, on which the
//!    processes' [`watchdog`]s tell each other how they end (a heartbeat while running, then a
//!    goodbye or the reason they failed), so that a cluster fails as one;
//! 4. once connected to everyone, sends [`READY`] on every data connection and waits for every
//!    peer's, so that no process starts its dataflow while another is still failing to connect;
//! 5. hands the data connections to timely's `initialize_networking_from_sockets`, which writes
//!    and reads timely's own message framing from the next byte on. timely's 8-byte index prefix
//!    is part of the setup this module replaces, so nothing else precedes that framing.

pub mod pod;
pub mod watchdog;

use std::any::Any;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use timely::communication::WorkerGuards;
use timely::communication::allocator::ProcessBuilder;
use timely::communication::allocator::zero_copy::initialize::{
    CommsGuard, initialize_networking_from_sockets,
};
use timely::communication::{AllocatorBuilder, Hooks};
use timely::worker::Worker;
use timely::{CommunicationConfig, WorkerConfig};

use crate::clock::now_ms;
use crate::plan::{EventSource, Plan};
use crate::retry::{Delays, RetryPolicy};
use watchdog::{Failure, Watchdog};

/// The first bytes of every handshake: not a shopflow process otherwise.
pub const MAGIC: [u8; 8] = *b"SHOPFLOW";

/// The version of this handshake and of the data exchanged after it; peers must run the same.
pub const VERSION: u32 = 2;

/// What a process sends on every connection once it has checked every peer's handshake.
pub const READY: [u8; 8] = *b"READY\r\n\0";

/// The shortest wait for a peer's bytes, even once the deadline has passed.
const MIN_WAIT: Duration = Duration::from_millis(200);
/// The longest pause between two connection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// How a refused connection is retried: after 50 ms, doubling up to [`MAX_BACKOFF`], until the
/// overall deadline.
const RETRY: RetryPolicy = RetryPolicy::exponential(Duration::from_millis(50), MAX_BACKOFF);

/// The cluster could not be formed.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// This process's own address cannot be listened on.
    #[error("cannot listen on {address} (process {process}'s address in the hostfile): {reason}")]
    Listen {
        /// The address.
        address: String,
        /// This process's index.
        process: usize,
        /// Why, as the operating system says.
        reason: String,
    },
    /// A process before this one never accepted a connection.
    #[error("cannot reach process {process} at {address} after {waited} ({reason})")]
    Unreachable {
        /// The peer's index.
        process: usize,
        /// Its hostfile address.
        address: String,
        /// The overall timeout.
        waited: Seconds,
        /// The last attempt's error.
        reason: String,
    },
    /// A process after this one never connected.
    #[error(
        "process {process} at {address} did not connect within {waited} (is it running, with the same hostfile?)"
    )]
    NotConnected {
        /// The peer's index.
        process: usize,
        /// Its hostfile address.
        address: String,
        /// The overall timeout.
        waited: Seconds,
    },
    /// Peers disagree on the flags or settings that must agree.
    #[error("{0}")]
    Mismatch(String),
    /// Something other than a shopflow peer of this cluster answered or connected, or a peer
    /// left during the handshake.
    #[error("{peer} {problem}")]
    Handshake {
        /// Who: `process 1 at host:port`, or `a connection from host:port`.
        peer: String,
        /// What went wrong.
        problem: String,
    },
    /// The sockets could not be handed to timely.
    #[error("cannot start timely's networking: {0}")]
    Start(String),
}

/// A duration shown in seconds, as `10 s` or `2.5 s`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seconds(pub Duration);

impl std::fmt::Display for Seconds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.subsec_millis() == 0 {
            write!(f, "{} s", self.0.as_secs())
        } else if self.0 >= Duration::from_secs(1) {
            write!(f, "{:.1} s", self.0.as_secs_f64())
        } else {
            write!(f, "{} ms", self.0.as_millis())
        }
    }
}

/// What every process of a cluster must agree on besides `-n` and `-w`: the engine settings the
/// results depend on, and what is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Agreement {
    /// `engine.tick-ms`.
    pub tick_ms: u64,
    /// `engine.window-ms`.
    pub window_ms: u64,
    /// `engine.allowed-lateness-ms`.
    pub allowed_lateness_ms: u64,
    /// `engine.order-horizon-ms`.
    pub order_horizon_ms: u64,
    /// A fingerprint of where events come from: with the generator its settings, `--events` and
    /// `--start-ms` (every worker generates its share of one stream); with Kafka the topic, the
    /// consumer group, the start position and the checkpoint it would restore (every worker reads
    /// its share of the partitions, and restores its share of one checkpoint).
    pub inputs: u64,
}

impl Agreement {
    /// What the processes running `plan` must agree on.
    pub fn of(plan: &Plan) -> Agreement {
        let engine = &plan.config.engine;
        // Demographics are read by worker 0 alone, so only the events' source is fingerprinted.
        let inputs = match &plan.events {
            EventSource::Generator { start_ms } => format!(
                "generator {:?} start-ms={start_ms:?} events={:?}",
                plan.config.generator, plan.stop.events
            ),
            // The checkpoint each process would restore: a directory that is not shared, or one
            // that changed between the starts, would restore different states.
            EventSource::Kafka { config, .. } => format!(
                "kafka topic={} group={} start={:?} checkpoint={:?}",
                config.topic,
                config.group_id,
                config.start,
                plan.checkpoints.as_ref().map(|dir| {
                    let pipeline = crate::checkpoint::fingerprint(
                        &config.topic,
                        &config.group_id,
                        &plan.config.params(),
                    );
                    crate::checkpoint::select(dir, &pipeline)
                        .map(|selected| selected.found.map(|f| f.tick))
                        .map_err(|e| e.to_string())
                })
            ),
        };
        Agreement {
            tick_ms: engine.tick_ms,
            window_ms: engine.window_ms,
            allowed_lateness_ms: engine.allowed_lateness_ms,
            order_horizon_ms: engine.order_horizon_ms,
            inputs: fnv1a(inputs.as_bytes()),
        }
    }
}

/// FNV-1a, 64 bits: a fingerprint that is the same in every build (unlike std's hashers).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// What a process says about itself first on every connection, in both directions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Handshake {
    /// The sender's process index (`-p`).
    pub process: usize,
    /// The number of processes (`-n`).
    pub processes: usize,
    /// Worker threads per process (`-w`).
    pub threads: usize,
    /// The rest of what must agree.
    pub agreement: Agreement,
    /// The sender's wall clock when it began connecting, in ms since the epoch: process 0's is
    /// the cluster's start (see [`Communication::start_ms`]).
    pub clock_ms: u64,
    /// Whether the dialing side opens the control link (see [`watchdog`]) rather than the data
    /// connection; the accepting side's answer always says `false`.
    pub control: bool,
}

/// A handshake's bytes could not be read as one.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The bytes do not begin with [`MAGIC`].
    #[error("sent something other than a shopflow handshake (another program on this port?)")]
    NotShopflow,
    /// Another version of the protocol.
    #[error(
        "speaks cluster protocol version {0}, this process version {VERSION} (run the same shopflow version everywhere)"
    )]
    Version(u32),
}

impl Handshake {
    /// The length of a handshake on the wire.
    pub const LEN: usize = 76;

    /// The wire format, big-endian: magic, version (u32), process, processes, threads, control
    /// (u32 each), tick, window, lateness, horizon (u64 each), inputs fingerprint (u64), clock
    /// (u64).
    pub fn encode(&self) -> [u8; Handshake::LEN] {
        let mut bytes = [0u8; Handshake::LEN];
        bytes[..8].copy_from_slice(&MAGIC);
        let small = [
            VERSION,
            u32_of(self.process),
            u32_of(self.processes),
            u32_of(self.threads),
            u32::from(self.control),
        ];
        for (i, v) in small.into_iter().enumerate() {
            bytes[8 + 4 * i..12 + 4 * i].copy_from_slice(&v.to_be_bytes());
        }
        let a = &self.agreement;
        let large = [
            a.tick_ms,
            a.window_ms,
            a.allowed_lateness_ms,
            a.order_horizon_ms,
            a.inputs,
            self.clock_ms,
        ];
        for (i, v) in large.into_iter().enumerate() {
            bytes[28 + 8 * i..36 + 8 * i].copy_from_slice(&v.to_be_bytes());
        }
        bytes
    }

    /// Reads a handshake; any bytes give a handshake or an error, never a panic.
    pub fn decode(bytes: &[u8; Handshake::LEN]) -> Result<Handshake, DecodeError> {
        if bytes[..8] != MAGIC {
            return Err(DecodeError::NotShopflow);
        }
        let small = |i: usize| {
            let mut b = [0u8; 4];
            b.copy_from_slice(&bytes[8 + 4 * i..12 + 4 * i]);
            u32::from_be_bytes(b)
        };
        let large = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&bytes[28 + 8 * i..36 + 8 * i]);
            u64::from_be_bytes(b)
        };
        if small(0) != VERSION {
            return Err(DecodeError::Version(small(0)));
        }
        Ok(Handshake {
            process: small(1) as usize,
            processes: small(2) as usize,
            threads: small(3) as usize,
            agreement: Agreement {
                tick_ms: large(0),
                window_ms: large(1),
                allowed_lateness_ms: large(2),
                order_horizon_ms: large(3),
                inputs: large(4),
            },
            clock_ms: large(5),
            control: small(4) != 0,
        })
    }

    /// Checks that `peer` (a verified-by-magic handshake) can be in one cluster with `self`;
    /// the error says how they differ, peer first.
    pub fn check(&self, peer: &Handshake) -> Result<(), ClusterError> {
        let (them, me) = (peer.process, self.process);
        let mismatch = |message: String| Err(ClusterError::Mismatch(message));
        if peer.processes != self.processes {
            return mismatch(format!(
                "process {them} was started with --processes {} but process {me} with --processes {}",
                peer.processes, self.processes
            ));
        }
        if peer.threads != self.threads {
            let workers = |n: usize| if n == 1 { "worker" } else { "workers" };
            return mismatch(format!(
                "process {them} runs {} {} per process but process {me} runs {}",
                peer.threads,
                workers(peer.threads),
                self.threads
            ));
        }
        let (a, b) = (&peer.agreement, &self.agreement);
        let settings = [
            ("engine.tick-ms", a.tick_ms, b.tick_ms),
            ("engine.window-ms", a.window_ms, b.window_ms),
            (
                "engine.allowed-lateness-ms",
                a.allowed_lateness_ms,
                b.allowed_lateness_ms,
            ),
            (
                "engine.order-horizon-ms",
                a.order_horizon_ms,
                b.order_horizon_ms,
            ),
        ];
        for (key, theirs, mine) in settings {
            if theirs != mine {
                return mismatch(format!(
                    "process {them} has {key} = {theirs} but process {me} has {mine} (the engine settings must agree)"
                ));
            }
        }
        if a.inputs != b.inputs {
            return mismatch(format!(
                "process {them} reads other events than process {me}: the generator settings, \
                 --events or --start-ms, or the Kafka topic, group or start position, or the \
                 checkpoint it would restore (engine.checkpoint-dir must be shared) differ"
            ));
        }
        Ok(())
    }
}

/// An index or count as sent: they are at most 1024 here; larger ones saturate and then mismatch.
fn u32_of(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// A process's side of timely's communication, connected and checked: what [`execute`] runs on.
pub struct Communication {
    allocators: Vec<AllocatorBuilder>,
    guard: Box<dyn Any + Send>,
    worker: WorkerConfig,
    start_ms: u64,
    watchdog: Arc<Watchdog>,
}

impl Communication {
    /// The run's start on the wall clock, in ms since the epoch, the same in every process: when
    /// process 0 began connecting (when this one did, alone). A generator without `--start-ms`
    /// starts its simulated time here, so that every process generates its share of one stream.
    pub fn start_ms(&self) -> u64 {
        self.start_ms
    }

    /// This process's watchdog: the run's failures, here and in the other processes.
    pub fn watchdog(&self) -> Arc<Watchdog> {
        Arc::clone(&self.watchdog)
    }
}

/// Sets up the communication `config` describes: for a cluster, the connections [`connect_all`]
/// makes (`agreement` and `timeout` apply); otherwise timely's own thread or process allocators.
pub fn connect(
    config: timely::Config,
    agreement: Agreement,
    timeout: Duration,
) -> Result<Communication, ClusterError> {
    let timely::Config {
        communication,
        worker,
    } = config;
    let CommunicationConfig::Cluster {
        threads,
        process,
        addresses,
        ..
    } = communication
    else {
        let (allocators, guard) = communication.try_build().map_err(ClusterError::Start)?;
        return Ok(Communication {
            allocators,
            guard,
            worker,
            start_ms: now_ms(),
            watchdog: Watchdog::alone(0),
        });
    };
    let hello = Handshake {
        process,
        processes: addresses.len(),
        threads,
        agreement,
        clock_ms: now_ms(),
        control: false,
    };
    let Connected {
        data: sockets,
        control,
        start_ms,
    } = connect_all(&addresses, &hello, timeout)?;
    let watchdog = Watchdog::watch(process, control, &addresses)
        .map_err(|e| ClusterError::Start(format!("cannot watch the other processes: {e}")))?;
    let hooks = Hooks::default();
    let local =
        ProcessBuilder::new_typed_vector(threads, hooks.refill.clone(), hooks.spill.clone());
    let (builders, guard) =
        initialize_networking_from_sockets(local, sockets, process, threads, hooks)
            .map_err(|e| ClusterError::Start(e.to_string()))?;
    Ok(Communication {
        allocators: builders.into_iter().map(AllocatorBuilder::Tcp).collect(),
        guard: Box::new(Links(Some(guard))),
        worker,
        start_ms,
        watchdog,
    })
}

/// `timely::execute` on connected communication: runs `func` on every local worker. A worker's
/// error or panic is the run's failure, told to the [`Watchdog`] at once (a panic on a broken
/// connection only as a symptom: the watchdog learns its cause from the control links).
pub fn execute<T, E, F>(communication: Communication, func: F) -> Result<Guards<T, E>, String>
where
    T: Send + 'static,
    E: std::fmt::Display + Send + 'static,
    F: Fn(&mut Worker) -> Result<T, E> + Send + Sync + 'static,
{
    let Communication {
        allocators,
        guard,
        worker,
        watchdog,
        ..
    } = communication;
    let cluster = allocators
        .iter()
        .any(|a| matches!(a, AllocatorBuilder::Tcp(_)));
    let panics = Arc::new(Mutex::new(Vec::new()));
    let noted = Arc::clone(&panics);
    let inner = timely::execute::execute_from(allocators, guard, worker, move |worker| {
        let index = worker.index();
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| func(worker))) {
            Ok(Ok(result)) => Ok(result),
            Ok(Err(error)) => {
                watchdog.fail(Failure::Local(error.to_string()));
                Err(error)
            }
            Err(payload) => {
                let message = watchdog::panic_message(payload.as_ref());
                if cluster && watchdog::is_broken_connection("", &message) {
                    watchdog.broke(&message);
                } else {
                    watchdog.fail(Failure::Local(format!(
                        "worker {index} panicked: {message}"
                    )));
                }
                let mut noted = noted.lock().unwrap_or_else(|p| p.into_inner());
                noted.push(message);
                drop(noted);
                std::panic::resume_unwind(payload)
            }
        }
    })?;
    Ok(Guards {
        inner,
        panics,
        cluster,
    })
}

/// The running workers, as timely's guards, with the messages of the panics that ended any.
pub struct Guards<T: Send + 'static, E: Send + 'static = String> {
    inner: WorkerGuards<Result<T, E>>,
    panics: Arc<Mutex<Vec<String>>>,
    cluster: bool,
}

impl<T: Send + 'static, E: Send + 'static> Guards<T, E> {
    /// Waits for the workers and returns what each returned, or why it failed: the panic's own
    /// message (timely reports only `Any { .. }`), and in a cluster, a connection to another
    /// process lost during the run as such.
    pub fn join(self) -> Vec<Result<Result<T, E>, String>> {
        let results = self.inner.join();
        let panics = self.panics.lock().unwrap_or_else(|p| p.into_inner());
        let lost = self.cluster && panics.iter().any(|m| watchdog::is_broken_connection("", m));
        let why = if lost {
            "lost the connection to another process during the run (see the other processes' errors)"
                .to_owned()
        } else {
            panics
                .first()
                .map_or_else(String::new, |m| format!("a worker panicked: {m}"))
        };
        results
            .into_iter()
            .map(|r| r.map_err(|e| if why.is_empty() { e } else { why.clone() }))
            .collect()
    }
}

/// timely's send and receive threads. When a peer dies mid-run they panic, and timely's guard
/// re-raises their panics when dropped; the run has already failed by then (its workers report
/// it, see [`Guards::join`]), so the re-raised panic is caught instead of aborting the report.
struct Links(Option<CommsGuard>);

impl Drop for Links {
    fn drop(&mut self) {
        if let Some(guard) = self.0.take()
            && std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(guard))).is_err()
        {
            tracing::debug!("the connections' threads ended with a panic");
        }
    }
}

/// The connections of one process to every other, as [`connect_all`] leaves them: one per process
/// in order, `None` for this one.
pub struct Connected {
    /// timely's data connections, ready for its framing.
    pub data: Vec<Option<TcpStream>>,
    /// The control links, for the [`watchdog`].
    pub control: Vec<Option<TcpStream>>,
    /// Process 0's clock when it began connecting: the run's start.
    pub start_ms: u64,
}

/// Connects process `hello.process` to every other one of `addresses` (one per process) twice,
/// for data and for control, checks every peer's handshake, and waits until every peer is
/// connected to everyone. Gives up after `timeout`.
pub fn connect_all(
    addresses: &[String],
    hello: &Handshake,
    timeout: Duration,
) -> Result<Connected, ClusterError> {
    let me = hello.process;
    let deadline = Instant::now() + timeout;
    let listen_error = |e: std::io::Error| ClusterError::Listen {
        address: addresses[me].clone(),
        process: me,
        reason: describe(&e),
    };
    let listener = TcpListener::bind(addresses[me].as_str())
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .map_err(listen_error)?;
    tracing::info!(process = me, address = %addresses[me], "connecting to the other processes");
    // Per process, the data connection and the control link.
    let mut links: [Vec<Option<TcpStream>>; 2] = [
        addresses.iter().map(|_| None).collect(),
        addresses.iter().map(|_| None).collect(),
    ];
    let mut start_ms = hello.clock_ms;
    // Per process before this one: when to try next, the pauses after that, the last error.
    let mut attempts: Vec<(Instant, Delays, Option<String>)> = (0..me)
        .map(|_| (Instant::now(), RETRY.delays(), None))
        .collect();
    let complete = |links: &[Vec<Option<TcpStream>>; 2], j: usize| {
        j == me || (links[0][j].is_some() && links[1][j].is_some())
    };
    while let Some(first_missing) = (0..addresses.len()).find(|&j| !complete(&links, j)) {
        let now = Instant::now();
        if now >= deadline {
            let last_error = attempts.get(first_missing).and_then(|a| a.2.clone());
            return Err(gave_up(first_missing, me, addresses, timeout, last_error));
        }
        accept_waiting(&listener, hello, &mut links, deadline).map_err(
            |refused| match refused {
                Refused::Listener(e) => listen_error(e),
                Refused::Peer(e) => e,
            },
        )?;
        if let Some(clock_ms) = dial_due(&mut attempts, &mut links, addresses, hello, deadline)? {
            start_ms = clock_ms;
        }
        let next_attempt = attempts
            .iter()
            .enumerate()
            .filter(|(j, _)| !complete(&links, *j))
            .map(|(_, (next, _, _))| *next)
            .min()
            .unwrap_or(deadline);
        let pause = next_attempt
            .min(deadline)
            .saturating_duration_since(Instant::now())
            .min(Duration::from_millis(10));
        std::thread::sleep(pause);
    }
    drop(listener);
    let [mut data, control] = links;
    barrier(&mut data, addresses, deadline)?;
    for stream in data.iter().flatten() {
        let prepared = stream
            .set_read_timeout(None)
            .and_then(|()| stream.set_write_timeout(None))
            .and_then(|()| stream.set_nodelay(true));
        if let Err(e) = prepared {
            return Err(ClusterError::Start(describe(&e)));
        }
    }
    tracing::info!(process = me, start_ms, "connected to every process");
    Ok(Connected {
        data,
        control,
        start_ms,
    })
}

/// Why [`connect_all`] gave up at its deadline on `process`, the first one still missing: a
/// process before `me` never accepted (with the `last_error` of dialling it), one after never
/// connected.
fn gave_up(
    process: usize,
    me: usize,
    addresses: &[String],
    timeout: Duration,
    last_error: Option<String>,
) -> ClusterError {
    let address = addresses[process].clone();
    if process < me {
        ClusterError::Unreachable {
            process,
            address,
            waited: Seconds(timeout),
            reason: last_error.unwrap_or_else(|| "no attempt finished".to_owned()),
        }
    } else {
        ClusterError::NotConnected {
            process,
            address,
            waited: Seconds(timeout),
        }
    }
}

/// Why accepting a connection failed: the listener itself, or the peer's handshake.
enum Refused {
    Listener(std::io::Error),
    Peer(ClusterError),
}

/// Accepts every connection waiting on `listener`, checking each one's handshake, into `links`.
fn accept_waiting(
    listener: &TcpListener,
    hello: &Handshake,
    links: &mut [Vec<Option<TcpStream>>; 2],
    deadline: Instant,
) -> Result<(), Refused> {
    loop {
        match listener.accept() {
            Ok((stream, from)) => {
                let (process, control, stream) =
                    accept(stream, from, hello, links, deadline).map_err(Refused::Peer)?;
                tracing::info!(process, %from, control, "process connected");
                links[usize::from(control)][process] = Some(stream);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::Interrupted | ErrorKind::ConnectionAborted
                ) => {}
            Err(e) => return Err(Refused::Listener(e)),
        }
    }
}

/// Dials every process before this one whose next attempt is due and that still misses a
/// connection: the data connection first, then the control link (the peer accepts them in that
/// order). A failed dial sets the process's next attempt after its next pause. Returns process
/// 0's clock when this round connected to it.
fn dial_due(
    attempts: &mut [(Instant, Delays, Option<String>)],
    links: &mut [Vec<Option<TcpStream>>; 2],
    addresses: &[String],
    hello: &Handshake,
    deadline: Instant,
) -> Result<Option<u64>, ClusterError> {
    let mut start_ms = None;
    for (process, (next, pauses, last_error)) in attempts.iter_mut().enumerate() {
        let complete = links[0][process].is_some() && links[1][process].is_some();
        if complete || *next > Instant::now() {
            continue;
        }
        let address = &addresses[process];
        // The data connection first, then the control link: the peer accepts them in order.
        for control in [false, true] {
            if links[usize::from(control)][process].is_some() {
                continue;
            }
            let wait = deadline
                .saturating_duration_since(Instant::now())
                .clamp(MIN_WAIT, MAX_BACKOFF);
            match dial(address, wait) {
                Ok(stream) => {
                    let mine = Handshake { control, ..*hello };
                    let (stream, theirs) = greet(stream, process, address, &mine, deadline)?;
                    if process == 0 {
                        start_ms = Some(theirs.clock_ms);
                    }
                    tracing::info!(process, %address, control, "connected to process");
                    links[usize::from(control)][process] = Some(stream);
                }
                Err(e) => {
                    if last_error.is_none() {
                        tracing::info!(process, %address, error = %e, "waiting for process");
                    }
                    *last_error = Some(e);
                    // The retries are unbounded: the deadline ends them.
                    *next = Instant::now() + pauses.next().unwrap_or(MAX_BACKOFF);
                    break;
                }
            }
        }
    }
    Ok(start_ms)
}

/// One connection attempt to every address `address` resolves to; the error as a phrase.
fn dial(address: &str, wait: Duration) -> Result<TcpStream, String> {
    let resolved: Vec<SocketAddr> = address
        .to_socket_addrs()
        .map_err(|e| describe(&e))?
        .collect();
    let mut last = format!("{address} resolves to no address");
    for addr in resolved {
        match TcpStream::connect_timeout(&addr, wait) {
            Ok(stream) => return Ok(stream),
            Err(e) => last = describe(&e),
        }
    }
    Err(last)
}

/// The connecting side: sends this process's handshake, reads and checks process `process`'s.
fn greet(
    mut stream: TcpStream,
    process: usize,
    address: &str,
    hello: &Handshake,
    deadline: Instant,
) -> Result<(TcpStream, Handshake), ClusterError> {
    let peer = format!("process {process} at {address}");
    let theirs =
        exchange(&mut stream, hello, deadline).map_err(|problem| ClusterError::Handshake {
            peer: peer.clone(),
            problem,
        })?;
    if theirs.process != process {
        return Err(ClusterError::Handshake {
            peer,
            problem: format!(
                "answered as process {}: is the hostfile the same for every process?",
                theirs.process
            ),
        });
    }
    hello.check(&theirs)?;
    Ok((stream, theirs))
}

/// The accepting side: sends this process's handshake, reads and checks the peer's, which must
/// be a process after this one not yet connected this way (`links`: data, control). Returns the
/// peer's index and whether this is its control link.
fn accept(
    mut stream: TcpStream,
    from: SocketAddr,
    hello: &Handshake,
    links: &[Vec<Option<TcpStream>>; 2],
    deadline: Instant,
) -> Result<(usize, bool, TcpStream), ClusterError> {
    let peer = format!("a connection from {from}");
    let handshake = |problem: String| ClusterError::Handshake {
        peer: peer.clone(),
        problem,
    };
    // Accepted sockets inherit non-blocking mode on some systems.
    stream
        .set_nonblocking(false)
        .map_err(|e| handshake(describe(&e)))?;
    let theirs = exchange(&mut stream, hello, deadline).map_err(handshake)?;
    // Disagreements first: with another -n, the index may well be out of this cluster's range.
    hello.check(&theirs)?;
    let (them, me) = (theirs.process, hello.process);
    let problem = if them == me {
        format!(
            "claims to be process {me}, as this process does: are two processes started with -p {me}?"
        )
    } else if them < me {
        format!(
            "claims to be process {them}, which this process connects to itself: \
             is the hostfile the same for every process?"
        )
    } else if them >= hello.processes {
        format!(
            "claims to be process {them} of a cluster of {}",
            hello.processes
        )
    } else if links[usize::from(theirs.control)][them].is_some() {
        format!(
            "claims to be process {them}, which is already connected: are two processes started with -p {them}?"
        )
    } else {
        return Ok((them, theirs.control, stream));
    };
    Err(handshake(problem))
}

/// Writes this process's handshake and reads the peer's, waiting until `deadline` (at least
/// [`MIN_WAIT`]); the error as a phrase about the peer.
fn exchange(
    stream: &mut TcpStream,
    hello: &Handshake,
    deadline: Instant,
) -> Result<Handshake, String> {
    let wait = deadline
        .saturating_duration_since(Instant::now())
        .max(MIN_WAIT);
    stream
        .set_read_timeout(Some(wait))
        .and_then(|()| stream.set_write_timeout(Some(wait)))
        .map_err(|e| describe(&e))?;
    stream
        .write_all(&hello.encode())
        .map_err(|e| format!("could not be written to ({})", describe(&e)))?;
    let mut bytes = [0u8; Handshake::LEN];
    stream.read_exact(&mut bytes).map_err(|e| match e.kind() {
        ErrorKind::UnexpectedEof => "closed the connection during the handshake".to_owned(),
        ErrorKind::WouldBlock | ErrorKind::TimedOut => {
            format!("sent no handshake within {}", Seconds(wait))
        }
        _ => format!("failed during the handshake ({})", describe(&e)),
    })?;
    Handshake::decode(&bytes).map_err(|e| e.to_string())
}

/// Sends [`READY`] to every peer, then waits for every peer's: each has then checked all of its
/// connections, so no process starts while another is still failing.
fn barrier(
    links: &mut [Option<TcpStream>],
    addresses: &[String],
    deadline: Instant,
) -> Result<(), ClusterError> {
    let gave_up = |process: usize, what: String| ClusterError::Handshake {
        peer: format!("process {process} at {}", addresses[process]),
        problem: what,
    };
    for (process, stream) in links.iter_mut().enumerate() {
        if let Some(stream) = stream {
            stream.write_all(&READY).map_err(|e| {
                gave_up(
                    process,
                    format!("left before the cluster was complete ({})", describe(&e)),
                )
            })?;
        }
    }
    for (process, stream) in links.iter_mut().enumerate() {
        let Some(stream) = stream else { continue };
        let wait = deadline
            .saturating_duration_since(Instant::now())
            .max(MIN_WAIT);
        let mut bytes = [0u8; READY.len()];
        let read = stream
            .set_read_timeout(Some(wait))
            .and_then(|()| stream.read_exact(&mut bytes));
        match read {
            Ok(()) if bytes == READY => {}
            Ok(()) => {
                return Err(gave_up(
                    process,
                    "sent something else than its ready signal".to_owned(),
                ));
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Err(gave_up(
                    process,
                    "did not finish connecting to the other processes in time (see its own error)"
                        .to_owned(),
                ));
            }
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => {
                return Err(gave_up(
                    process,
                    "left before the cluster was complete (see its own error)".to_owned(),
                ));
            }
            Err(e) => {
                return Err(gave_up(
                    process,
                    format!(
                        "left before the cluster was complete ({}; see its own error)",
                        describe(&e)
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// An I/O error as a phrase: `connection refused`, without the `(os error 111)`.
fn describe(error: &std::io::Error) -> String {
    let text = error.to_string();
    let text = match text.find(" (os error") {
        Some(at) => &text[..at],
        None => &text,
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(process: usize) -> Handshake {
        Handshake {
            process,
            processes: 2,
            threads: 2,
            agreement: Agreement {
                tick_ms: 1_000,
                window_ms: 60_000,
                allowed_lateness_ms: 120_000,
                order_horizon_ms: 600_000,
                inputs: 7,
            },
            clock_ms: 1_700_000_000_000,
            control: process == 1,
        }
    }

    #[test]
    fn a_handshake_reads_back_and_any_bytes_give_an_answer() {
        let h = hello(1);
        assert_eq!(Handshake::decode(&h.encode()), Ok(h));
        let mut bytes = h.encode();
        bytes[0] = b'X';
        assert_eq!(Handshake::decode(&bytes), Err(DecodeError::NotShopflow));
        bytes = h.encode();
        bytes[11] = 9;
        assert_eq!(Handshake::decode(&bytes), Err(DecodeError::Version(9)));
        // Any bytes at all: an answer, never a panic.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for round in 0..10_000 {
            let mut bytes = [0u8; Handshake::LEN];
            for b in bytes.iter_mut() {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                *b = state as u8;
            }
            if round % 2 == 0 {
                bytes[..8].copy_from_slice(&MAGIC);
                bytes[8..12].copy_from_slice(&VERSION.to_be_bytes());
            }
            let decoded = Handshake::decode(&bytes);
            assert_eq!(decoded.is_ok(), round % 2 == 0);
            if let Ok(peer) = decoded {
                let _ = hello(0).check(&peer);
            }
        }
    }

    #[test]
    fn mismatches_name_both_processes_and_the_difference() {
        let me = hello(0);
        let mut peer = hello(1);
        peer.threads = 1;
        assert_eq!(
            me.check(&peer).unwrap_err().to_string(),
            "process 1 runs 1 worker per process but process 0 runs 2"
        );
        peer = hello(1);
        peer.agreement.window_ms = 30_000;
        assert_eq!(
            me.check(&peer).unwrap_err().to_string(),
            "process 1 has engine.window-ms = 30000 but process 0 has 60000 (the engine settings must agree)"
        );
        assert!(me.check(&hello(1)).is_ok());
    }

    #[test]
    fn seconds_read_naturally() {
        assert_eq!(Seconds(Duration::from_secs(10)).to_string(), "10 s");
        assert_eq!(Seconds(Duration::from_millis(2_500)).to_string(), "2.5 s");
        assert_eq!(Seconds(Duration::from_millis(300)).to_string(), "300 ms");
    }
}
