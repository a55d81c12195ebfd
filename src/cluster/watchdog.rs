//! The watchdog: how a process notices that the run failed, here or in another process, and how
//! it makes the whole cluster end promptly instead of waiting for what will never come.
//!
//! timely alone does not fail a cluster as one: a worker that returns an error leaves its peers
//! waiting forever for its progress, and a lost connection panics timely's network threads, which
//! takes the local workers down only when they next touch it, while a sink retrying InfluxDB or
//! blocked on its bounded queue keeps the process alive regardless. So every process keeps one
//! [`Watchdog`]:
//!
//! - it records the run's first [`Failure`]: a local one (a worker's error or panic, the sink's
//!   error), a peer's (which that peer reported), or a lost peer;
//! - on the first failure it runs the hooks the runtime registered ([`Watchdog::on_failure`]):
//!   stop the workers, cancel the sink;
//! - it tells every peer about a local failure, on the control links set up with the data
//!   connections (see [`super::connect_all`]), and says goodbye to them when the run ends well;
//! - one thread per peer reads that peer's control link: a failure it reports is recorded as such;
//!   a link that closes without a goodbye, or stays silent for [`SILENCE`] (heartbeats come every
//!   [`HEARTBEAT`]), is a lost peer;
//! - [`conclude`] waits for the run's threads, but once the run has failed at most [`GRACE`]:
//!   threads still blocked then are left behind, and the process ends with the failure.
//!
//! A control message is a tag byte, a big-endian `u32` length and that many bytes of UTF-8:
//! `H` (heartbeat, empty), `D` (goodbye, empty: the run ended well here), `F` (failed: why), `A`
//! (acknowledged, empty: the answer to a goodbye or a failure, after which the peer sends nothing
//! more). A process that ends waits (at most [`SETTLE`]) for the acknowledgements of the peers
//! still running, so that it closes its links with nothing unread in them: a socket closed with
//! unread data is reset, and a reset could reach the peer before the goodbye it follows.

use std::any::Any;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::RecvTimeoutError;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::Seconds;

/// How often a running process tells its peers it is alive.
pub const HEARTBEAT: Duration = Duration::from_millis(500);
/// How long a peer may stay silent before it counts as lost (a hung host, a cut network: a
/// killed process closes its connections at once and is noticed at once).
pub const SILENCE: Duration = Duration::from_secs(10);
/// How long a failed run waits for its own threads to end before leaving them behind.
pub const GRACE: Duration = Duration::from_secs(2);
/// The longest reason sent to peers; a longer one is cut.
const MAX_REASON: usize = 4_096;
/// The longest a write to a peer's control link may block.
const WRITE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long an ending process waits for its running peers to acknowledge how it ended.
pub const SETTLE: Duration = Duration::from_secs(1);

const TAG_HEARTBEAT: u8 = b'H';
const TAG_GOODBYE: u8 = b'D';
const TAG_FAILED: u8 = b'F';
const TAG_ACK: u8 = b'A';

/// Why a run failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    /// This process failed; the message is its own error.
    #[error("{0}")]
    Local(String),
    /// Another process failed, and said why.
    #[error("process {process} failed: {reason}")]
    Peer {
        /// Its index.
        process: usize,
        /// Its error.
        reason: String,
    },
    /// Another process is gone without saying why.
    #[error("lost process {process} at {address}: {how}")]
    Lost {
        /// Its index.
        process: usize,
        /// Its hostfile address.
        address: String,
        /// What was seen.
        how: String,
    },
    /// timely's connections broke (its threads panicked) while every control link was fine.
    #[error("lost the connection to another process during the run ({0})")]
    Broken(String),
}

impl Failure {
    /// Whether the failure happened elsewhere: then this process's own errors are its symptoms.
    pub fn is_remote(&self) -> bool {
        matches!(self, Failure::Peer { .. } | Failure::Lost { .. })
    }
}

/// What the watchdog knows.
#[derive(Default)]
struct State {
    /// The first failure; it names the cause.
    cause: Option<Failure>,
    /// What broke in timely's connections, when that came first: a consequence, whose cause the
    /// control links usually tell a moment later.
    symptom: Option<String>,
    /// When the run first failed (cause or symptom).
    since: Option<Instant>,
    /// The hooks have run.
    triggered: bool,
    /// This process's run ended well and it said goodbye.
    ended: bool,
}

/// A peer's control link, the writing side.
struct Link {
    process: usize,
    address: String,
    stream: Mutex<TcpStream>,
    /// The peer said how it ended: it gets no more heartbeats.
    peer_ended: AtomicBool,
    /// Nothing more will come from the peer: it acknowledged how this process ended, said how
    /// it ended itself, or its link closed.
    settled: AtomicBool,
}

/// A hook run once, on the first failure.
type Hook = Box<dyn Fn() + Send + Sync>;

/// A process's watchdog. See the [module docs](self).
pub struct Watchdog {
    process: usize,
    links: Vec<Link>,
    state: Mutex<State>,
    hooks: Mutex<Vec<Hook>>,
}

impl std::fmt::Debug for Watchdog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watchdog")
            .field("process", &self.process)
            .field("peers", &self.links.len())
            .finish_non_exhaustive()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Watchdog {
    /// The watchdog of a process alone: local failures only.
    pub fn alone(process: usize) -> Arc<Watchdog> {
        Arc::new(Watchdog {
            process,
            links: Vec::new(),
            state: Mutex::new(State::default()),
            hooks: Mutex::new(Vec::new()),
        })
    }

    /// The watchdog of process `process`, watching the control links `control` (one per process,
    /// `None` for this one) to the processes at `addresses`: starts a reader thread per peer and
    /// one heartbeat thread. They hold the watchdog weakly, and end once it is dropped.
    pub fn watch(
        process: usize,
        control: Vec<Option<TcpStream>>,
        addresses: &[String],
    ) -> std::io::Result<Arc<Watchdog>> {
        let mut links = Vec::new();
        let mut readers = Vec::new();
        for (peer, stream) in control.into_iter().enumerate() {
            let Some(stream) = stream else { continue };
            stream.set_nodelay(true)?;
            stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
            stream.set_read_timeout(Some(SILENCE))?;
            readers.push((peer, links.len(), stream.try_clone()?));
            links.push(Link {
                process: peer,
                address: addresses[peer].clone(),
                stream: Mutex::new(stream),
                peer_ended: AtomicBool::new(false),
                settled: AtomicBool::new(false),
            });
        }
        let watchdog = Arc::new(Watchdog {
            process,
            links,
            state: Mutex::new(State::default()),
            hooks: Mutex::new(Vec::new()),
        });
        for (peer, link, stream) in readers {
            let weak = Arc::downgrade(&watchdog);
            let address = addresses[peer].clone();
            std::thread::Builder::new()
                .name(format!("shopflow-watch-{peer}"))
                .spawn(move || read_link(&weak, peer, link, &address, stream))?;
        }
        if !watchdog.links.is_empty() {
            let weak = Arc::downgrade(&watchdog);
            std::thread::Builder::new()
                .name("shopflow-heartbeat".into())
                .spawn(move || {
                    while let Some(watchdog) = weak.upgrade() {
                        if lock(&watchdog.state).ended {
                            return;
                        }
                        for link in &watchdog.links {
                            if !link.peer_ended.load(Ordering::Relaxed) {
                                link.send(TAG_HEARTBEAT, "");
                            }
                        }
                        drop(watchdog);
                        std::thread::sleep(HEARTBEAT);
                    }
                })?;
        }
        register(&watchdog);
        Ok(watchdog)
    }

    /// This process's index.
    pub fn process(&self) -> usize {
        self.process
    }

    /// Runs `hook` on the first failure, or now if the run has already failed.
    pub fn on_failure(&self, hook: impl Fn() + Send + Sync + 'static) {
        let triggered = lock(&self.state).triggered;
        if triggered {
            hook();
        } else {
            lock(&self.hooks).push(Box::new(hook));
            // A failure between the look and the push ran the hooks without this one.
            if lock(&self.state).triggered {
                for hook in lock(&self.hooks).drain(..) {
                    hook();
                }
            }
        }
    }

    /// Records a failure; the first one is the run's cause, and a local one is told to every
    /// peer. A local failure once the run has failed (a connection broke, the sink was cancelled)
    /// is a consequence, not a cause.
    pub fn fail(&self, failure: Failure) {
        let mut state = lock(&self.state);
        if state.ended {
            return;
        }
        let consequence = matches!(failure, Failure::Local(_)) && state.since.is_some();
        let first = state.cause.is_none() && !consequence;
        if first {
            tracing::debug!(%failure, "the run failed");
            state.cause = Some(failure.clone());
            state.since.get_or_insert_with(Instant::now);
        }
        drop(state);
        if first && let Failure::Local(reason) = &failure {
            let mut cut = reason.as_str();
            if cut.len() > MAX_REASON {
                let mut end = MAX_REASON;
                while !cut.is_char_boundary(end) {
                    end -= 1;
                }
                cut = &cut[..end];
            }
            self.broadcast(TAG_FAILED, cut);
        }
        self.trigger();
    }

    /// Records that timely's connections broke (a network thread or a worker panicked on it):
    /// the run stops, and the cause is expected on the control links.
    pub fn broke(&self, what: &str) {
        let mut state = lock(&self.state);
        if state.ended {
            return;
        }
        state.symptom.get_or_insert_with(|| what.to_owned());
        state.since.get_or_insert_with(Instant::now);
        drop(state);
        self.trigger();
    }

    /// The run's failure: its cause, or else what broke; `None` while it has not failed.
    pub fn failure(&self) -> Option<Failure> {
        let state = lock(&self.state);
        state
            .cause
            .clone()
            .or_else(|| state.symptom.clone().map(Failure::Broken))
    }

    /// When the run first failed.
    pub fn failed_since(&self) -> Option<Instant> {
        lock(&self.state).since
    }

    /// The run's failure, waiting up to `wait` for its cause when only a broken connection is
    /// known so far: the control link that tells it may be read a moment after timely's threads
    /// panicked on the same lost peer.
    pub fn failure_within(&self, wait: Duration) -> Option<Failure> {
        let deadline = Instant::now() + wait;
        loop {
            let failure = self.failure();
            if !matches!(failure, Some(Failure::Broken(_))) || Instant::now() >= deadline {
                return failure;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The run ended here: says goodbye to every peer on success, or tells them why it failed,
    /// and waits (at most [`SETTLE`]) until the peers still running have acknowledged it.
    /// Nothing is recorded or sent after this.
    pub fn end(&self, error: Option<&str>) {
        match error {
            Some(error) => self.fail(Failure::Local(error.to_owned())),
            None => self.broadcast(TAG_GOODBYE, ""),
        }
        lock(&self.state).ended = true;
        let deadline = Instant::now() + SETTLE;
        while Instant::now() < deadline
            && !self
                .links
                .iter()
                .all(|link| link.settled.load(Ordering::Relaxed))
        {
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn trigger(&self) {
        {
            let mut state = lock(&self.state);
            if state.triggered {
                return;
            }
            state.triggered = true;
        }
        for hook in lock(&self.hooks).drain(..) {
            hook();
        }
    }

    /// Sends one message to every peer.
    fn broadcast(&self, tag: u8, text: &str) {
        for link in &self.links {
            link.send(tag, text);
        }
    }
}

impl Link {
    /// Sends one message; a peer that cannot take it is noticed by its reader.
    fn send(&self, tag: u8, text: &str) {
        let mut message = Vec::with_capacity(5 + text.len());
        message.push(tag);
        message.extend_from_slice(&(text.len() as u32).to_be_bytes());
        message.extend_from_slice(text.as_bytes());
        if let Err(error) = lock(&self.stream).write_all(&message) {
            tracing::debug!(process = self.process, address = %self.address, %error, "cannot reach the control link");
        }
    }
}

impl Drop for Watchdog {
    /// Closes the control links, which also ends their readers.
    fn drop(&mut self) {
        for link in &self.links {
            let _ = lock(&link.stream).shutdown(Shutdown::Both);
        }
    }
}

/// A peer's control link, the reading side (`link`: its index in the watchdog's links): records
/// what it says and how it ends, and acknowledges the peer's end.
fn read_link(
    watchdog: &Weak<Watchdog>,
    peer: usize,
    link: usize,
    address: &str,
    mut stream: TcpStream,
) {
    let lost = |how: String| Failure::Lost {
        process: peer,
        address: address.to_owned(),
        how,
    };
    loop {
        let mut header = [0u8; 5];
        let read = stream.read_exact(&mut header).and_then(|()| {
            let length = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
            let mut text = vec![0u8; length.min(MAX_REASON)];
            stream.read_exact(&mut text)?;
            if length > MAX_REASON {
                std::io::copy(
                    &mut (&mut stream).take((length - MAX_REASON) as u64),
                    &mut std::io::sink(),
                )?;
            }
            Ok(String::from_utf8_lossy(&text).into_owned())
        });
        let Some(watchdog) = watchdog.upgrade() else {
            return;
        };
        let this = &watchdog.links[link];
        let peer_ended = this.peer_ended.load(Ordering::Relaxed);
        let failure = match read {
            Ok(_) if header[0] == TAG_HEARTBEAT => None,
            Ok(_) if header[0] == TAG_ACK => {
                this.settled.store(true, Ordering::Relaxed);
                None
            }
            Ok(reason) if matches!(header[0], TAG_GOODBYE | TAG_FAILED) => {
                this.peer_ended.store(true, Ordering::Relaxed);
                this.settled.store(true, Ordering::Relaxed);
                this.send(TAG_ACK, "");
                (header[0] == TAG_FAILED).then_some(Failure::Peer {
                    process: peer,
                    reason,
                })
            }
            Ok(_) => Some(lost(format!(
                "it sent an unknown control message (tag {:#04x})",
                header[0]
            ))),
            Err(e) => {
                this.settled.store(true, Ordering::Relaxed);
                if peer_ended {
                    return;
                }
                Some(lost(match e.kind() {
                    ErrorKind::WouldBlock | ErrorKind::TimedOut => format!(
                        "it sent nothing for {} (hung, or the network is cut)",
                        Seconds(SILENCE)
                    ),
                    // A killed process's connections end with a reset when they held data
                    // it had not read (heartbeats), else with an end of file.
                    ErrorKind::UnexpectedEof
                    | ErrorKind::ConnectionReset
                    | ErrorKind::ConnectionAborted => {
                        "the connection closed without a goodbye (the process ended or was killed)"
                            .to_owned()
                    }
                    _ => format!("the connection failed ({})", super::describe(&e)),
                }))
            }
        };
        if let Some(failure) = failure {
            // Recorded unless this process has ended: `fail` ignores it then.
            let lost = matches!(failure, Failure::Lost { .. });
            watchdog.fail(failure);
            if lost {
                return;
            }
        }
    }
}

/// The watchdogs of this process's runs, for the panic hook: timely's network threads report a
/// lost connection only by panicking.
static WATCHED: Mutex<Vec<Weak<Watchdog>>> = Mutex::new(Vec::new());

fn register(watchdog: &Arc<Watchdog>) {
    let mut watched = lock(&WATCHED);
    watched.retain(|w| w.strong_count() > 0);
    watched.push(Arc::downgrade(watchdog));
    drop(watched);
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let message = panic_message(info.payload());
            let thread = std::thread::current();
            let name = thread.name().unwrap_or("");
            if !is_broken_connection(name, &message) {
                return previous(info);
            }
            // A consequence of a lost peer, told once by the watchdog: not a crash to print.
            tracing::debug!(thread = name, message, "timely's connection broke");
            let what = match name
                .strip_prefix("timely:recv-")
                .or(name.strip_prefix("timely:send-"))
            {
                Some(peer) => format!("process {peer}: {message}"),
                None => message,
            };
            for watchdog in lock(&WATCHED).iter().filter_map(Weak::upgrade) {
                watchdog.broke(&what);
            }
        }));
    });
}

/// Whether a panic is timely's way of saying a connection to another process broke: its network
/// threads' own panics, and the workers' on the queues those left poisoned.
pub fn is_broken_connection(thread: &str, message: &str) -> bool {
    thread.starts_with("timely:recv-")
        || thread.starts_with("timely:send-")
        || message.starts_with("timely communication error")
        || message.contains("MergeQueue poisoned")
        // timely's guard re-raising its network threads' panics when dropped.
        || message.starts_with("Send thread panic")
        || message.starts_with("Recv thread panic")
}

/// A panic's message, when it has one.
pub fn panic_message(payload: &(dyn Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_owned())
}

/// How the run's threads ended, or that they were left behind.
pub enum Ending<T, S> {
    /// Every thread ended: the workers' results and the sink thread's.
    Joined {
        /// Each worker's result, or why it failed (see [`super::Guards::join`]).
        workers: Vec<Result<T, String>>,
        /// The sink thread's result (an error if it panicked).
        sink: std::thread::Result<S>,
    },
    /// The run failed and its threads did not end within [`GRACE`].
    Abandoned,
}

/// Waits for the workers (and timely's connections) and the sink thread; once `watchdog` says
/// the run failed, at most [`GRACE`] longer: threads still blocked then (on a peer, on InfluxDB)
/// are left behind, as the process is about to end.
pub fn conclude<T: Send + 'static, E: Send + 'static, S: Send + 'static>(
    guards: super::Guards<T, E>,
    sink: JoinHandle<S>,
    watchdog: &Watchdog,
) -> Ending<Result<T, E>, S> {
    let (sender, receiver) = std::sync::mpsc::channel();
    let joiner = std::thread::Builder::new()
        .name("shopflow-join".into())
        .spawn(move || {
            let workers = guards.join();
            let sink = sink.join();
            let _ = sender.send((workers, sink));
        });
    if joiner.is_err() {
        tracing::error!("cannot start a thread to wait for the run's threads");
        return Ending::Abandoned;
    }
    loop {
        match receiver.recv_timeout(Duration::from_millis(20)) {
            Ok((workers, sink)) => return Ending::Joined { workers, sink },
            Err(RecvTimeoutError::Timeout) => {
                if watchdog
                    .failed_since()
                    .is_some_and(|since| since.elapsed() >= GRACE)
                {
                    tracing::debug!("the run's threads did not end in time; leaving them");
                    return Ending::Abandoned;
                }
            }
            Err(RecvTimeoutError::Disconnected) => return Ending::Abandoned,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Two watchdogs joined by a control link, as processes 0 and 1.
    fn pair() -> (Arc<Watchdog>, Arc<Watchdog>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let dialed = TcpStream::connect(&address).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        let addresses = [address.clone(), address];
        let zero = Watchdog::watch(0, vec![None, Some(accepted)], &addresses).unwrap();
        let one = Watchdog::watch(1, vec![Some(dialed), None], &addresses).unwrap();
        (zero, one)
    }

    fn wait_for(watchdog: &Watchdog) -> Failure {
        let started = Instant::now();
        loop {
            if let Some(failure) = watchdog.failure() {
                return failure;
            }
            assert!(started.elapsed() < Duration::from_secs(5), "no failure");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn a_local_failure_reaches_the_peer_with_its_reason_and_runs_the_hooks_once() {
        let (zero, one) = pair();
        let hooks = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&hooks);
        one.on_failure(move || {
            counted.fetch_add(1, Ordering::Relaxed);
        });
        zero.fail(Failure::Local("source: the binlog follower gave up".into()));
        let failure = wait_for(&one);
        assert_eq!(
            failure.to_string(),
            "process 0 failed: source: the binlog follower gave up"
        );
        assert!(failure.is_remote());
        // Later failures do not replace the cause, and the hooks ran once.
        one.fail(Failure::Local("a consequence".into()));
        drop(zero);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(one.failure(), Some(failure));
        assert_eq!(hooks.load(Ordering::Relaxed), 1);
        // A hook registered after the failure runs at once.
        let late = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&late);
        one.on_failure(move || {
            counted.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(late.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_peer_gone_without_a_goodbye_is_lost_and_one_with_a_goodbye_is_not() {
        let (zero, one) = pair();
        drop(one);
        match wait_for(&zero) {
            Failure::Lost { process, how, .. } => {
                assert_eq!(process, 1);
                assert!(how.contains("without a goodbye"), "{how}");
            }
            other => panic!("expected a lost peer, got {other}"),
        }

        let (zero, one) = pair();
        let started = Instant::now();
        one.end(None);
        // The running peer acknowledged the goodbye: nothing more will come from it.
        assert!(started.elapsed() < SETTLE, "{:?}", started.elapsed());
        assert!(zero.links[0].peer_ended.load(Ordering::Relaxed));
        drop(one);
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(zero.failure(), None);
    }

    #[test]
    fn broken_connections_are_symptoms_a_cause_then_names() {
        let watchdog = Watchdog::alone(0);
        watchdog.broke("MergeQueue poisoned.");
        assert_eq!(
            watchdog.failure(),
            Some(Failure::Broken("MergeQueue poisoned.".into()))
        );
        // The sink cancelled because of it fails: a consequence, not the cause.
        watchdog.fail(Failure::Local("the writer thread ended".into()));
        assert_eq!(
            watchdog.failure(),
            Some(Failure::Broken("MergeQueue poisoned.".into()))
        );
        watchdog.fail(Failure::Lost {
            process: 1,
            address: "h:1".into(),
            how: "gone".into(),
        });
        assert_eq!(
            watchdog.failure().map(|f| f.to_string()),
            Some("lost process 1 at h:1: gone".into())
        );
        assert!(is_broken_connection("timely:recv-1", "anything"));
        assert!(is_broken_connection(
            "timely:work-0",
            "MergeQueue poisoned."
        ));
        assert!(!is_broken_connection(
            "timely:work-0",
            "index out of bounds"
        ));
    }

    #[test]
    fn a_failed_run_is_concluded_within_the_grace_however_long_its_threads_block() {
        let watchdog = Watchdog::alone(0);
        let blocked = std::thread::spawn(|| std::thread::sleep(Duration::from_secs(60)));
        let guards = super::super::execute(
            super::super::connect(
                timely::Config::thread(),
                super::super::Agreement {
                    tick_ms: 1,
                    window_ms: 1,
                    allowed_lateness_ms: 0,
                    order_horizon_ms: 0,
                    inputs: 0,
                },
                Duration::from_secs(1),
            )
            .unwrap(),
            |_| Ok::<(), String>(()),
        )
        .unwrap();
        watchdog.fail(Failure::Local("the sink failed".into()));
        let started = Instant::now();
        assert!(matches!(
            conclude(guards, blocked, &watchdog),
            Ending::Abandoned
        ));
        let took = started.elapsed();
        assert!(took <= GRACE + Duration::from_millis(500), "{took:?}");
    }
}
