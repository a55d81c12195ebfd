//! The sink: encodes batches on the caller's thread and writes them on a dedicated writer thread,
//! through a bounded queue.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

use dataflows::model::Tick;
use dataflows::output::Batch;

use super::config::InfluxConfig;
use super::service::{InfluxClient, SetupError, SinkStats, WriteError};
use crate::sinks::line_protocol::{Encoder, RuntimeMetrics, encode_runtime};
use crate::sinks::{Acknowledged, Canceller, Sink, SinkError};

/// How many requests wait for the writer at most. With the one being written, at most
/// [`MAX_IN_FLIGHT`] requests (each at most `batch-lines` lines) are held: when InfluxDB is slow
/// or down, [`Sink::write_batch`] blocks instead of buffering.
pub const QUEUE_REQUESTS: usize = 4;
/// The most requests queued or being written at once.
pub const MAX_IN_FLIGHT: u64 = QUEUE_REQUESTS as u64 + 1;

/// Writes batches to InfluxDB. See the [module docs](super).
pub struct InfluxSink {
    encoder: Encoder,
    batch_lines: usize,
    target: String,
    queue: Arc<Queue>,
    shared: Arc<Shared>,
    stats: Arc<SinkStats>,
    writer: Option<JoinHandle<()>>,
    finished: bool,
    buffer: String,
    /// Advanced by the writer once InfluxDB has answered every request before a mark.
    acknowledged: Acknowledged,
    /// The last watermark handed to the queue.
    marked_below: Tick,
    /// Bytes of line protocol queued for the writer so far.
    bytes: u64,
}

impl std::fmt::Debug for InfluxSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InfluxSink")
            .field("target", &self.target)
            .field("batch_lines", &self.batch_lines)
            .field("stats", &self.stats.snapshot())
            .finish_non_exhaustive()
    }
}

/// What the writer thread shares with the sink.
#[derive(Default)]
struct Shared {
    /// The first fatal error; once set, the writer has stopped.
    fatal: Mutex<Option<WriteError>>,
    /// Set when the sink is dropped unfinished: stop retrying, drop what is queued.
    abandon: AtomicBool,
}

/// One write request: whole lines, and the watermark they complete.
struct Request {
    body: String,
    lines: usize,
    /// Once this request is written (and, the queue being in order, every one before it), every
    /// timestamp before `through` is acknowledged; 0 when it completes nothing.
    through: Tick,
}

/// The bounded queue between the sink and its writer (a channel that can merge small requests).
struct Queue {
    state: Mutex<QueueState>,
    not_empty: Condvar,
    not_full: Condvar,
}

#[derive(Default)]
struct QueueState {
    requests: VecDeque<Request>,
    /// No more requests will come (`finish`).
    closed: bool,
    /// The writer is gone: pushing fails.
    stopped: bool,
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits for room, then queues `request`; `false` when the writer is gone.
    fn push(&self, request: Request, stats: &SinkStats) -> bool {
        let mut state = self.lock();
        while state.requests.len() >= QUEUE_REQUESTS && !state.stopped {
            state = self
                .not_full
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
        if state.stopped {
            return false;
        }
        state.requests.push_back(request);
        stats.add_in_flight();
        self.not_empty.notify_one();
        true
    }

    /// Marks that once everything queued so far is written, every timestamp before `below` is:
    /// the mark joins the last queued request, or is queued alone (with no body) when none is.
    /// `false` when the writer is gone.
    fn mark(&self, below: Tick, stats: &SinkStats) -> bool {
        let mut state = self.lock();
        if state.stopped {
            return false;
        }
        if let Some(last) = state.requests.back_mut() {
            last.through = last.through.max(below);
            return true;
        }
        drop(state);
        let mark = Request {
            body: String::new(),
            lines: 0,
            through: below,
        };
        self.push(mark, stats)
    }

    /// The next request, merged with the ones queued behind it while the total stays within
    /// `batch_lines`; `None` once the queue is closed and empty, or stopped.
    fn take(&self, batch_lines: usize, stats: &SinkStats) -> Option<Request> {
        let mut state = self.lock();
        while state.requests.is_empty() && !state.closed && !state.stopped {
            state = self
                .not_empty
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
        if state.stopped {
            return None;
        }
        let mut request = state.requests.pop_front()?;
        while let Some(next) = state.requests.front() {
            if request.lines + next.lines > batch_lines {
                break;
            }
            let next = state.requests.pop_front().expect("a front request");
            request.body.push_str(&next.body);
            request.lines += next.lines;
            request.through = request.through.max(next.through);
            stats.sub_in_flight(1);
        }
        self.not_full.notify_all();
        Some(request)
    }

    fn close(&self) {
        self.lock().closed = true;
        self.not_empty.notify_all();
    }

    /// The writer stops: queued requests are dropped, pushers wake up and fail.
    fn stop(&self, stats: &SinkStats) {
        let mut state = self.lock();
        state.stopped = true;
        stats.sub_in_flight(state.requests.len() as u64);
        state.requests.clear();
        self.not_full.notify_all();
        self.not_empty.notify_all();
    }
}

impl InfluxSink {
    /// Validates `config`, builds the client, creates the database when `create-database` is set
    /// (retrying while the server is unreachable), and starts the writer thread. Windowed rows are
    /// tagged with `window_ms` (see [`Encoder::new`]).
    pub fn start(config: &InfluxConfig, window_ms: u64) -> Result<InfluxSink, SetupError> {
        let client = InfluxClient::new(config)?;
        if config.create_database {
            client
                .create_database()
                .map_err(|source| SetupError::CreateDatabase {
                    database: config.database.clone(),
                    source,
                })?;
        }
        let target = format!("InfluxDB database {:?} at {}", config.database, config.url);
        let batch_lines = config.batch_lines;
        let stats = client.stats();
        let acknowledged = Acknowledged::default();
        let queue = Arc::new(Queue {
            state: Mutex::new(QueueState::default()),
            not_empty: Condvar::new(),
            not_full: Condvar::new(),
        });
        let shared = Arc::new(Shared::default());
        let writer = {
            let (queue, shared, stats) = (queue.clone(), shared.clone(), stats.clone());
            let acknowledged = acknowledged.clone();
            std::thread::Builder::new()
                .name("influx-writer".into())
                .spawn(move || {
                    write_loop(&client, &queue, &shared, &stats, &acknowledged, batch_lines)
                })?
        };
        Ok(InfluxSink {
            encoder: Encoder::new(window_ms),
            batch_lines,
            target,
            queue,
            shared,
            stats,
            writer: Some(writer),
            finished: false,
            buffer: String::new(),
            acknowledged,
            marked_below: 0,
            bytes: 0,
        })
    }

    /// The counters: lines written, requests, attempts, retries, failures, requests in flight.
    pub fn stats(&self) -> Arc<SinkStats> {
        Arc::clone(&self.stats)
    }

    /// The writer's fatal error, if it had one.
    fn fatal(&self) -> Option<WriteError> {
        self.shared
            .fatal
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn error(&self, error: std::io::Error) -> SinkError {
        SinkError::Io {
            target: self.target.clone(),
            source: error,
        }
    }

    fn write_error(&self, error: WriteError) -> SinkError {
        self.error(std::io::Error::other(error))
    }

    /// Waits for the writer thread to end.
    fn join(&mut self) -> Result<(), SinkError> {
        if let Some(writer) = self.writer.take()
            && writer.join().is_err()
        {
            return Err(self.error(std::io::Error::other("the writer thread panicked")));
        }
        Ok(())
    }
}

/// The writer thread: takes requests in order and writes each, acknowledging its watermark once
/// InfluxDB has answered, until the queue closes or a write fails for good.
fn write_loop(
    client: &InfluxClient,
    queue: &Queue,
    shared: &Shared,
    stats: &SinkStats,
    acknowledged: &Acknowledged,
    batch_lines: usize,
) {
    /// Stops the queue however the writer ends, a panic included, so no pusher waits forever.
    struct StopOnExit<'a>(&'a Queue, &'a SinkStats);
    impl Drop for StopOnExit<'_> {
        fn drop(&mut self) {
            self.0.stop(self.1);
        }
    }
    let _stop = StopOnExit(queue, stats);
    while let Some(request) = queue.take(batch_lines, stats) {
        let result = if request.lines == 0 {
            Ok(())
        } else {
            client.write_lines(
                request.body.as_bytes(),
                request.lines as u64,
                &shared.abandon,
            )
        };
        stats.sub_in_flight(1);
        if let Err(error) = result {
            if shared.abandon.load(Ordering::Relaxed) {
                tracing::debug!(%error, lines = request.lines, "InfluxDB sink cancelled");
            } else {
                tracing::error!(%error, lines = request.lines, "InfluxDB sink stopped");
            }
            *shared.fatal.lock().unwrap_or_else(PoisonError::into_inner) = Some(error);
            return;
        }
        acknowledged.advance(request.through);
    }
}

impl Sink for InfluxSink {
    /// Encodes `batch`, splits it into requests of at most `batch-lines` lines and queues them for
    /// the writer, waiting while the queue is full. Fails with the writer's fatal error, if any.
    fn write_batch(&mut self, batch: &Batch) -> Result<(), SinkError> {
        if let Some(error) = self.fatal() {
            return Err(self.write_error(error));
        }
        if self.finished {
            return Err(self.error(std::io::Error::other("the sink is finished")));
        }
        self.buffer.clear();
        self.encoder.encode(batch, &mut self.buffer);
        self.send_buffer()
    }

    fn write_runtime(&mut self, metrics: &RuntimeMetrics) -> Result<(), SinkError> {
        if let Some(error) = self.fatal() {
            return Err(self.write_error(error));
        }
        self.buffer.clear();
        encode_runtime(metrics, &mut self.buffer);
        self.send_buffer()
    }

    fn retries(&self) -> u64 {
        self.stats.retries()
    }

    fn bytes_written(&self) -> u64 {
        self.bytes
    }

    /// Stops the writer's retries and its queue, dropping what is queued; the write under way
    /// ends after its current attempt.
    fn canceller(&self) -> Option<Canceller> {
        let (queue, shared, stats) = (
            Arc::clone(&self.queue),
            Arc::clone(&self.shared),
            Arc::clone(&self.stats),
        );
        Some(Box::new(move || {
            shared.abandon.store(true, Ordering::Relaxed);
            queue.stop(&stats);
        }))
    }

    /// Queues the mark behind what was handed over: the writer acknowledges it once InfluxDB has
    /// answered every request before it.
    fn complete_below(&mut self, below: Tick) -> Result<(), SinkError> {
        if below <= self.marked_below {
            return Ok(());
        }
        if let Some(error) = self.fatal() {
            return Err(self.write_error(error));
        }
        if !self.queue.mark(below, &self.stats) {
            return Err(self.writer_gone());
        }
        self.marked_below = below;
        Ok(())
    }

    fn acknowledged(&self) -> Acknowledged {
        self.acknowledged.clone()
    }

    fn rejected_lines(&self) -> u64 {
        self.stats.rejected_lines()
    }

    /// Waits until everything queued is written, then ends the writer; the first fatal error, if
    /// any, is returned (every time it is called), or that the sink was cancelled.
    fn finish(&mut self) -> Result<(), SinkError> {
        self.finished = true;
        self.queue.close();
        self.join()?;
        match self.fatal() {
            Some(error) => Err(self.write_error(error)),
            None if self.shared.abandon.load(Ordering::Relaxed) => {
                Err(self.error(std::io::Error::other("cancelled: the run failed")))
            }
            None => Ok(()),
        }
    }

    /// Lines InfluxDB accepted.
    fn written(&self) -> u64 {
        self.stats.lines_written()
    }
}

impl InfluxSink {
    /// Splits the encoded buffer into requests and queues them, waiting while the queue is full.
    fn send_buffer(&mut self) -> Result<(), SinkError> {
        self.bytes += self.buffer.len() as u64;
        for (body, lines) in split_lines(&self.buffer, self.batch_lines) {
            let request = Request {
                body: body.to_owned(),
                lines,
                through: 0,
            };
            if !self.queue.push(request, &self.stats) {
                return Err(self.writer_gone());
            }
        }
        Ok(())
    }

    /// The error of a writer that is gone: its fatal error, if it had one.
    fn writer_gone(&self) -> SinkError {
        self.fatal().map_or_else(
            || self.error(std::io::Error::other("the writer thread ended")),
            |error| self.write_error(error),
        )
    }
}

impl Drop for InfluxSink {
    /// Unfinished (an error elsewhere): stop at once, dropping what is queued; the write under way
    /// ends after its current attempt.
    fn drop(&mut self) {
        if self.writer.is_some() {
            if !self.finished {
                self.shared.abandon.store(true, Ordering::Relaxed);
                self.queue.stop(&self.stats);
            }
            self.queue.close();
            let _ = self.join();
        }
    }
}

/// Cuts newline-terminated `text` into pieces of at most `max_lines` whole lines, with their line
/// counts.
fn split_lines(text: &str, max_lines: usize) -> Vec<(&str, usize)> {
    let mut pieces = Vec::new();
    let (mut start, mut lines) = (0, 0);
    for (end, _) in text.match_indices('\n') {
        lines += 1;
        if lines == max_lines {
            pieces.push((&text[start..=end], lines));
            (start, lines) = (end + 1, 0);
        }
    }
    if start < text.len() {
        let rest = &text[start..];
        pieces.push((rest, lines + usize::from(!rest.ends_with('\n'))));
    }
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sink_can_move_to_the_sink_thread() {
        fn boxed(sink: InfluxSink) -> Box<dyn Sink> {
            Box::new(sink)
        }
        let _ = boxed;
    }

    #[test]
    fn batches_split_into_whole_lines() {
        let text = "a 1\nb 2\nc 3\nd 4\ne 5\n";
        assert_eq!(
            split_lines(text, 2),
            [("a 1\nb 2\n", 2), ("c 3\nd 4\n", 2), ("e 5\n", 1)]
        );
        assert_eq!(split_lines(text, 5), [(text, 5)]);
        assert_eq!(split_lines(text, 5_000), [(text, 5)]);
        assert_eq!(split_lines("", 3), []);
        assert_eq!(split_lines("a\nb", 1), [("a\n", 1), ("b", 1)]);
        let many: String = (0..12_345).map(|i| format!("m x={i}i\n")).collect();
        let pieces = split_lines(&many, 5_000);
        let counts: Vec<usize> = pieces.iter().map(|p| p.1).collect();
        assert_eq!(counts, [5_000, 5_000, 2_345]);
        assert_eq!(pieces.iter().map(|p| p.0).collect::<String>(), many);
    }

    #[test]
    fn the_queue_merges_small_requests_up_to_the_limit_in_order() {
        let stats = SinkStats::default();
        let queue = Queue {
            state: Mutex::new(QueueState::default()),
            not_empty: Condvar::new(),
            not_full: Condvar::new(),
        };
        for (body, lines) in [("a\n", 1), ("b\nc\n", 2), ("d\ne\nf\n", 3), ("g\n", 1)] {
            assert!(queue.push(
                Request {
                    body: body.into(),
                    lines,
                    through: 0,
                },
                &stats
            ));
        }
        assert_eq!(stats.snapshot().in_flight, 4);
        assert_eq!(stats.snapshot().max_in_flight, 4);
        let first = queue.take(3, &stats).unwrap();
        assert_eq!((first.body.as_str(), first.lines), ("a\nb\nc\n", 3));
        assert_eq!(stats.snapshot().in_flight, 3, "merged into one");
        stats.sub_in_flight(1);
        let second = queue.take(5, &stats).unwrap();
        assert_eq!((second.body.as_str(), second.lines), ("d\ne\nf\ng\n", 4));
        stats.sub_in_flight(1);
        queue.close();
        assert!(queue.take(5, &stats).is_none());
        assert_eq!(stats.snapshot().in_flight, 0);
        queue.stop(&stats);
        assert!(!queue.push(
            Request {
                body: "h\n".into(),
                lines: 1,
                through: 0,
            },
            &stats
        ));
    }
}
