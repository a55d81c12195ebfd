//! Sinks: where completed batches go. Each runs on the runtime's sink thread, never on a worker.

pub mod influx;
pub mod line_protocol;

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

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

/// Receives every completed timestamp's batch, in time order, exactly once.
pub trait Sink: Send {
    /// Takes one batch.
    fn write_batch(&mut self, batch: &Batch) -> Result<(), SinkError>;
    /// Makes everything written so far durable; called at the end of a run.
    fn finish(&mut self) -> Result<(), SinkError>;
    /// Lines (or records) written so far.
    fn written(&self) -> u64;
    /// Writes the engine's runtime metrics; sinks with no place for them ignore them.
    fn write_runtime(&mut self, _metrics: &line_protocol::RuntimeMetrics) -> Result<(), SinkError> {
        Ok(())
    }
    /// Write retries so far.
    fn retries(&self) -> u64 {
        0
    }
    /// Lines the destination refused so far: counted, logged and skipped, the others written.
    fn rejected_lines(&self) -> u64 {
        0
    }
}

/// Discards batches: measures the engine alone.
#[derive(Debug, Default)]
pub struct Discard {
    changes: u64,
}

impl Sink for Discard {
    fn write_batch(&mut self, batch: &Batch) -> Result<(), SinkError> {
        self.changes += batch.changes.len() as u64;
        Ok(())
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
        })
    }

    /// Whether this writes to standard output.
    pub fn is_stdout(path: &Path) -> bool {
        path.as_os_str() == "-"
    }

    fn io(&self, source: std::io::Error) -> SinkError {
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
        self.out
            .write_all(self.buffer.as_bytes())
            .map_err(|e| self.io(e))?;
        // A batch is a unit: flush it whole so a reader never sees part of a timestamp.
        self.out.flush().map_err(|e| self.io(e))
    }
    fn finish(&mut self) -> Result<(), SinkError> {
        self.out.flush().map_err(|e| self.io(e))
    }
    fn written(&self) -> u64 {
        self.lines
    }
    fn write_runtime(&mut self, metrics: &line_protocol::RuntimeMetrics) -> Result<(), SinkError> {
        self.buffer.clear();
        line_protocol::encode_runtime(metrics, &mut self.buffer);
        self.lines += 1;
        self.out
            .write_all(self.buffer.as_bytes())
            .map_err(|e| self.io(e))
    }
}
