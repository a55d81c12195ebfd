//! Writing a body: one request, retried; the lines InfluxDB refuses found by halving the body,
//! counted, logged at most once a second and kept in the rejects file.

use std::fs::File;
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use reqwest::header::{CONTENT_ENCODING, CONTENT_TYPE};

use super::answer::shorten;
use super::client::InfluxClient;
use super::error::WriteError;
use super::stats::SinkStats;

/// At most one log line per this interval about refused lines; the others are counted in it.
const REJECT_LOG_INTERVAL: Duration = Duration::from_secs(1);

/// Where refused lines go: a rate-limited log, and the rejects file when one is set.
pub(super) struct Rejects {
    /// `influx.rejects-file`, opened for appending.
    pub(super) file: Option<Mutex<File>>,
    /// When the last log line about refused lines was written.
    pub(super) logged_at: Mutex<Option<Instant>>,
    /// Refused lines since that log line.
    pub(super) unlogged: AtomicU64,
}

impl InfluxClient {
    /// Writes `body` (line protocol, millisecond timestamps) as one request, retrying transient
    /// failures. Blocks for up to `max-retries` backoffs. Lines InfluxDB refuses
    /// ([`WriteError::refuses_lines`]) are found by halving the body, counted in
    /// [`StatsSnapshot::rejected_lines`], logged and skipped; the others are written, and the
    /// write succeeds.
    pub fn write(&self, body: &[u8]) -> Result<(), WriteError> {
        let lines = body
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .count();
        self.write_lines(body, lines as u64, &AtomicBool::new(false))
    }

    /// [`InfluxClient::write`] of a body known to hold `lines` lines; stops retrying once
    /// `cancel` is set.
    ///
    /// When InfluxDB refuses lines of the body ([`WriteError::refuses_lines`]: a line it cannot
    /// parse, a field type conflict, a body too large), the body is halved and each half written
    /// again, in order, down to the single lines it refuses. Each of those is counted, logged at
    /// most once a second with InfluxDB's message, and appended to `rejects-file` when one is
    /// set; every other line is written, and the request is done (`Ok`). Writing a line again is
    /// harmless: every point is an absolute value at a fixed time, and halves go in order, so the
    /// last write of a point is still its last line. Any other error fails the request.
    pub(in crate::sinks::influx) fn write_lines(
        &self,
        body: &[u8],
        lines: u64,
        cancel: &AtomicBool,
    ) -> Result<(), WriteError> {
        let stats = &self.stats;
        let result = match self.post(body, cancel) {
            Ok(()) => Ok(0),
            Err(error) if error.refuses_lines() => {
                let spans = line_spans(body);
                self.write_halves(body, &spans, cancel, error)
            }
            Err(error) => Err(error),
        };
        match &result {
            Ok(rejected) => {
                SinkStats::count(&stats.requests, 1);
                SinkStats::count(&stats.lines_written, lines.saturating_sub(*rejected));
            }
            Err(_) => SinkStats::count(&stats.failed, 1),
        }
        result.map(drop)
    }

    /// Writes the lines `spans` of `body`, which InfluxDB refused in part with `refusal`: one line
    /// is rejected; more are halved and each half written (halved again while refused). Returns
    /// how many lines were rejected.
    fn write_halves(
        &self,
        body: &[u8],
        spans: &[(usize, usize)],
        cancel: &AtomicBool,
        refusal: WriteError,
    ) -> Result<u64, WriteError> {
        match spans {
            // No line to blame: the request itself was refused.
            [] => Err(refusal),
            [(start, end)] => {
                self.reject(&body[*start..*end], &refusal);
                Ok(1)
            }
            _ => {
                let (left, right) = spans.split_at(spans.len() / 2);
                let mut rejected = 0;
                for half in [left, right] {
                    let text = &body[half[0].0..half[half.len() - 1].1];
                    rejected += match self.post(text, cancel) {
                        Ok(()) => 0,
                        Err(error) if error.refuses_lines() => {
                            self.write_halves(body, half, cancel, error)?
                        }
                        Err(error) => return Err(error),
                    };
                }
                Ok(rejected)
            }
        }
    }

    /// Counts a line InfluxDB refused, logs it (at most once a second) and appends it to the
    /// rejects file, if any.
    fn reject(&self, line: &[u8], refusal: &WriteError) {
        SinkStats::count(&self.stats.rejected_lines, 1);
        let (status, message) = match refusal {
            WriteError::Rejected { status, message } => (*status, message.as_str()),
            _ => (0, "no message"),
        };
        let mut file_error = None;
        if let Some(file) = &self.rejects.file {
            let line = String::from_utf8_lossy(line);
            let entry = format!(
                "# HTTP {status}: {}\n{}\n",
                message.replace('\n', "\\n"),
                line.trim_end_matches('\n')
            );
            // One write per entry: appends from several processes do not interleave.
            let mut file = file.lock().unwrap_or_else(PoisonError::into_inner);
            file_error = file.write_all(entry.as_bytes()).err();
        }
        let unlogged = self.rejects.unlogged.fetch_add(1, Ordering::Relaxed) + 1;
        let mut logged_at = self
            .rejects
            .logged_at
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if logged_at.is_some_and(|at| at.elapsed() < REJECT_LOG_INTERVAL) {
            return;
        }
        *logged_at = Some(Instant::now());
        self.rejects.unlogged.store(0, Ordering::Relaxed);
        let total = self.stats.rejected_lines();
        let message = shorten(message);
        match file_error {
            None => tracing::warn!(
                status,
                %message,
                since_last_log = unlogged,
                sink_rejected_lines = total,
                "InfluxDB refused a line; it is skipped and counted, the others are written"
            ),
            Some(error) => tracing::error!(
                status,
                %message,
                since_last_log = unlogged,
                sink_rejected_lines = total,
                %error,
                "InfluxDB refused a line, and the rejects file cannot be written"
            ),
        }
    }

    /// One write request of `body`, gzip-compressed when configured, retrying transient
    /// failures.
    fn post(&self, body: &[u8], cancel: &AtomicBool) -> Result<(), WriteError> {
        let body = if self.gzip { gzip(body) } else { body.to_vec() };
        self.with_retries("write", cancel, true, || {
            let request = self
                .http
                .post(self.write_url.clone())
                .header(CONTENT_TYPE, "text/plain; charset=utf-8");
            let request = if self.gzip {
                request.header(CONTENT_ENCODING, "gzip")
            } else {
                request
            };
            self.send_once(request.body(body.clone())).map(drop)
        })
    }
}

/// The non-empty lines of `body`, each as `(start, end)` with its line break included.
fn line_spans(body: &[u8]) -> Vec<(usize, usize)> {
    let mut spans = Vec::new();
    let mut start = 0;
    while start < body.len() {
        let end = body[start..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(body.len(), |i| start + i + 1);
        if body[start..end].iter().any(|&b| b != b'\n') {
            spans.push((start, end));
        }
        start = end;
    }
    spans
}

fn gzip(body: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(
        Vec::with_capacity(body.len() / 4 + 64),
        flate2::Compression::fast(),
    );
    // Writing to a Vec cannot fail.
    encoder.write_all(body).expect("gzip into memory");
    encoder.finish().expect("gzip into memory")
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;

    use super::*;

    #[test]
    fn gzip_round_trips() {
        let body = b"m x=1i 1\n".repeat(100);
        let packed = gzip(&body);
        assert!(packed.len() < body.len());
        let mut unpacked = Vec::new();
        flate2::read::GzDecoder::new(&packed[..])
            .read_to_end(&mut unpacked)
            .unwrap();
        assert_eq!(unpacked, body);
    }
}
