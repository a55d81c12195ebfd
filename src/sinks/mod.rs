//! Sinks: where completed batches go. Each runs on the runtime's sink thread, never on a worker.

pub mod influx;
pub mod line_protocol;

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use dataflows::model::Tick;
use dataflows::output::Batch;

/// A sink failed; the run stops with this error.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// Writing failed.
    #[error("cannot write {target}: {source}")]
    Io {
        /// What was being written.
        target: String,
        /// Why it failed.
        source: std::io::Error,
    },
}

/// Makes a sink give up at once, from any thread (see [`Sink::canceller`]).
pub type Canceller = Box<dyn Fn() + Send + Sync>;

/// How far a sink's writes are acknowledged: every timestamp before [`below`](Self::below) is
/// durably in the sink (for InfluxDB: every line of it answered with a 2xx, or refused and
/// counted). Shared with the workers, which commit Kafka offsets and write checkpoints only
/// behind it, so that a crash never leaves a position ahead of what the sink holds.
#[derive(Clone, Debug, Default)]
pub struct Acknowledged(Arc<AtomicU64>);

impl Acknowledged {
    /// Every timestamp before this one is acknowledged.
    pub fn below(&self) -> Tick {
        self.0.load(Ordering::Acquire)
    }

    /// Records that every timestamp before `below` is acknowledged; never moves back.
    pub fn advance(&self, below: Tick) {
        self.0.fetch_max(below, Ordering::AcqRel);
    }
}

/// Receives every completed timestamp's batch, in time order, exactly once.
pub trait Sink: Send {
    /// Takes one batch.
    fn write_batch(&mut self, batch: &Batch) -> Result<(), SinkError>;
    /// Says that every timestamp before `below` has been handed to
    /// [`write_batch`](Self::write_batch): once what was handed is durable, the sink advances its
    /// [`acknowledged`](Self::acknowledged) watermark to `below`.
    fn complete_below(&mut self, below: Tick) -> Result<(), SinkError>;
    /// The sink's acknowledgement watermark, shared.
    fn acknowledged(&self) -> Acknowledged;
    /// Makes everything written so far durable; called at the end of a run.
    fn finish(&mut self) -> Result<(), SinkError>;
    /// Lines (or records) written so far.
    fn written(&self) -> u64;
    /// Writes the engine's runtime metrics; sinks with no place for them ignore them.
    fn write_runtime(&mut self, _metrics: &line_protocol::RuntimeMetrics) -> Result<(), SinkError> {
        Ok(())
    }
    /// Bytes of line protocol written (or queued to be) so far, before any compression.
    fn bytes_written(&self) -> u64 {
        0
    }
    /// Write retries so far.
    fn retries(&self) -> u64 {
        0
    }
    /// Lines the destination refused so far: counted, logged and skipped, the others written.
    fn rejected_lines(&self) -> u64 {
        0
    }
    /// What makes the sink give up at once when the run has failed, called from another thread:
    /// its retries stop, a [`write_batch`](Sink::write_batch) blocked on a full queue returns an
    /// error, and [`finish`](Sink::finish) fails instead of waiting for what is queued. `None`
    /// for a sink that never blocks for long.
    fn canceller(&self) -> Option<Canceller> {
        None
    }
}

/// Discards batches: measures the engine alone.
#[derive(Debug, Default)]
pub struct Discard {
    changes: u64,
    acknowledged: Acknowledged,
}

impl Sink for Discard {
    fn write_batch(&mut self, batch: &Batch) -> Result<(), SinkError> {
        self.changes += batch.changes.len() as u64;
        Ok(())
    }
    fn complete_below(&mut self, below: Tick) -> Result<(), SinkError> {
        self.acknowledged.advance(below);
        Ok(())
    }
    fn acknowledged(&self) -> Acknowledged {
        self.acknowledged.clone()
    }
    fn finish(&mut self) -> Result<(), SinkError> {
        Ok(())
    }
    fn written(&self) -> u64 {
        self.changes
    }
}

/// Writes line protocol to a file or standard output.
pub struct LineProtocolWriter {
    encoder: line_protocol::Encoder,
    target: String,
    out: BufWriter<Box<dyn Write + Send>>,
    buffer: String,
    lines: u64,
    bytes: u64,
    acknowledged: Acknowledged,
    /// Set when a write failed because the reader of the pipe is gone.
    reader_gone: Arc<AtomicBool>,
}

impl LineProtocolWriter {
    /// Writes to `path`, or to standard output for `-`; creates or truncates the file.
    pub fn create(path: &Path, window_ms: u64) -> Result<LineProtocolWriter, SinkError> {
        let (target, out): (String, Box<dyn Write + Send>) = if path == Path::new("-") {
            ("standard output".into(), Box::new(std::io::stdout()))
        } else {
            let file = File::create(path).map_err(|source| SinkError::Io {
                target: path.display().to_string(),
                source,
            })?;
            (path.display().to_string(), Box::new(file))
        };
        Ok(LineProtocolWriter {
            encoder: line_protocol::Encoder::new(window_ms),
            target,
            out: BufWriter::with_capacity(1 << 16, out),
            buffer: String::new(),
            lines: 0,
            bytes: 0,
            acknowledged: Acknowledged::default(),
            reader_gone: Arc::default(),
        })
    }

    /// Whether this writes to standard output.
    pub fn is_stdout(path: &Path) -> bool {
        path.as_os_str() == "-"
    }

    /// Set once a write found its reader gone (`| head`): see [`reader_gone`](Self::reader_gone).
    pub fn reader_gone(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.reader_gone)
    }

    fn io(&self, source: std::io::Error) -> SinkError {
        if source.kind() == std::io::ErrorKind::BrokenPipe {
            self.reader_gone.store(true, Ordering::Relaxed);
        }
        SinkError::Io {
            target: self.target.clone(),
            source,
        }
    }
}

impl Sink for LineProtocolWriter {
    fn write_batch(&mut self, batch: &Batch) -> Result<(), SinkError> {
        self.buffer.clear();
        self.encoder.encode(batch, &mut self.buffer);
        self.lines += self.buffer.matches('\n').count() as u64;
        self.bytes += self.buffer.len() as u64;
        self.out
            .write_all(self.buffer.as_bytes())
            .map_err(|e| self.io(e))?;
        // A batch is a unit: flush it whole so a reader never sees part of a timestamp.
        self.out.flush().map_err(|e| self.io(e))
    }
    /// Every batch is flushed as it is written: what was handed over is written.
    fn complete_below(&mut self, below: Tick) -> Result<(), SinkError> {
        self.acknowledged.advance(below);
        Ok(())
    }
    fn acknowledged(&self) -> Acknowledged {
        self.acknowledged.clone()
    }
    fn finish(&mut self) -> Result<(), SinkError> {
        self.out.flush().map_err(|e| self.io(e))
    }
    fn written(&self) -> u64 {
        self.lines
    }
    fn bytes_written(&self) -> u64 {
        self.bytes
    }
    fn write_runtime(&mut self, metrics: &line_protocol::RuntimeMetrics) -> Result<(), SinkError> {
        self.buffer.clear();
        line_protocol::encode_runtime(metrics, &mut self.buffer);
        self.lines += 1;
        self.bytes += self.buffer.len() as u64;
        self.out
            .write_all(self.buffer.as_bytes())
            .map_err(|e| self.io(e))
    }
}
