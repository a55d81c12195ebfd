//! The HTTP client: one call of [`InfluxClient::write`] is one write of a line-protocol body, retried
//! by the shared [`RetryPolicy`] while the failure is transient (waiting at least what a 429 or 503
//! asks for in `Retry-After`, as InfluxDB 2.x and Cloud send it; 1.x's throttling sends none), and
//! classified when it is not.

use std::fs::File;
use std::io::{Read as _, Write as _};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use reqwest::Url;
use reqwest::blocking::{Client, RequestBuilder, Response};
use reqwest::header::{AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE, HeaderValue};

use crate::config::ConfigError;
use crate::config::influx::{Api, InfluxConfig, Secret};
use crate::retry::{Reason, RetryPolicy, Verdict, retry_after_header};

/// The most bytes of an error response read for its message.
const MAX_ERROR_BODY: u64 = 64 * 1024;
/// The most characters of a plain-text error body quoted in an error.
const MAX_MESSAGE_CHARS: usize = 500;
/// How often the start check looks whether it was stopped.
const SLEEP_SLICE: Duration = Duration::from_millis(50);
/// At most one log line per this interval about refused lines; the others are counted in it.
const REJECT_LOG_INTERVAL: Duration = Duration::from_secs(1);

/// A request to InfluxDB failed.
///
/// Retryable (see [`WriteError::is_retryable`]): [`Connect`](WriteError::Connect),
/// [`Timeout`](WriteError::Timeout), [`Transport`](WriteError::Transport) and
/// [`Unavailable`](WriteError::Unavailable) (5xx, 429, 408). Fatal: [`Rejected`](WriteError::Rejected)
/// (any other non-2xx status, with InfluxDB's own message), [`Invalid`](WriteError::Invalid) and
/// [`RetriesExhausted`](WriteError::RetriesExhausted). A write answered with a refusal of some of
/// its lines ([`WriteError::refuses_lines`]) is not an error of the write: those lines are
/// counted and skipped, the others written. No variant carries a credential.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    /// InfluxDB refused the request (4xx other than 408 and 429, or an unexpected status); sending
    /// it again would not help.
    #[error("InfluxDB rejected the request (HTTP {status}): {message}")]
    Rejected {
        /// The HTTP status code.
        status: u16,
        /// InfluxDB's message: the `error` (v1) or `message` (v2) field of its JSON answer, else
        /// the `X-Influxdb-Error` header, else the body text.
        message: String,
    },
    /// InfluxDB could not take the request now (5xx, 429 Too Many Requests, 408).
    #[error("InfluxDB is unavailable (HTTP {status}): {message}")]
    Unavailable {
        /// The HTTP status code.
        status: u16,
        /// InfluxDB's message, as for `Rejected`.
        message: String,
    },
    /// No connection could be made (refused, unreachable, DNS, TLS handshake).
    #[error("cannot connect to InfluxDB: {0}")]
    Connect(String),
    /// No complete answer within `timeout-ms`.
    #[error("InfluxDB did not answer within {0} ms")]
    Timeout(u64),
    /// The connection failed mid-request (reset, closed, malformed answer).
    #[error("the request to InfluxDB failed: {0}")]
    Transport(String),
    /// The request could not be built (a token that is no valid header value, an operation the
    /// API lacks).
    #[error("cannot make the request: {0}")]
    Invalid(String),
    /// Every attempt failed with a retryable error (or retrying was cancelled).
    #[error("gave up after {attempts} attempts: {last}")]
    RetriesExhausted {
        /// Attempts made, the first included.
        attempts: u32,
        /// The last attempt's error.
        last: Box<WriteError>,
    },
}

impl WriteError {
    /// Whether the same request may succeed later.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            WriteError::Unavailable { .. }
                | WriteError::Connect(_)
                | WriteError::Timeout(_)
                | WriteError::Transport(_)
        )
    }

    /// Whether InfluxDB refused lines of the body rather than the request: 400 or 422 saying it
    /// could not parse a line, wrote only part of the body, or found lines whose field types
    /// conflict (`unable to parse`, `failed to parse`, `partial write`, `field type conflict`),
    /// or 413 (the body too large, so it is split). A 4xx caused by the request itself (401 and
    /// 403 authentication, 404 database not found, 400 `gzip: invalid header`, ...) is not: the
    /// same request would fail for every line.
    pub fn refuses_lines(&self) -> bool {
        match self {
            WriteError::Rejected { status: 413, .. } => true,
            WriteError::Rejected {
                status: 400 | 422,
                message,
            } => {
                let message = message.to_ascii_lowercase();
                [
                    "unable to parse",
                    "failed to parse",
                    "partial write",
                    "field type conflict",
                ]
                .iter()
                .any(|m| message.contains(m))
            }
            _ => false,
        }
    }

    /// The HTTP status InfluxDB answered with, if it answered (of the last attempt).
    pub fn status(&self) -> Option<u16> {
        match self {
            WriteError::Rejected { status, .. } | WriteError::Unavailable { status, .. } => {
                Some(*status)
            }
            WriteError::RetriesExhausted { last, .. } => last.status(),
            _ => None,
        }
    }
}

/// The client could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The configuration is invalid, or a secret file unreadable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The HTTP client could not be built (TLS initialisation).
    #[error("cannot set up the HTTP client for InfluxDB: {0}")]
    Client(String),
    /// `CREATE DATABASE` failed.
    #[error("cannot create InfluxDB database {database:?}: {source}")]
    CreateDatabase {
        /// The database.
        database: String,
        /// Why.
        source: WriteError,
    },
    /// The writer thread could not be started.
    #[error("cannot start the InfluxDB writer thread: {0}")]
    Thread(#[from] std::io::Error),
    /// InfluxDB did not answer the start check within `timeout-ms`, or refused it.
    #[error("InfluxDB at {url} failed the start check: {source}")]
    StartCheck {
        /// The base URL, without credentials.
        url: String,
        /// Why.
        source: WriteError,
    },
}

/// How the start check ([`check_at_start`]) ended, when it did not fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Checked {
    /// InfluxDB answered (and the database exists, when `create-database` is set).
    Ready,
    /// A stop (Ctrl-C, SIGTERM) came while waiting for InfluxDB: the run should end cleanly.
    Stopped,
}

/// Checks once, within `timeout-ms`, that InfluxDB answers: `CREATE DATABASE` when
/// `create-database` is set (a no-op when it exists), else `GET /ping`; no retry, so an
/// unreachable server fails the start at once with one line naming its URL (without
/// credentials). Returns [`Checked::Stopped`] as soon as `stop` is set meanwhile, without waiting
/// for the answer, so a stop during the check ends the process cleanly.
pub fn check_at_start(config: &InfluxConfig, stop: &AtomicBool) -> Result<Checked, SetupError> {
    let client = InfluxClient::new(config)?;
    let url = without_credentials(&client.base_url);
    let create = config.create_database;
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("influx-check".into())
        .spawn(move || {
            let _ = sender.send(client.check(create));
        })?;
    loop {
        if stop.load(Ordering::Relaxed) {
            return Ok(Checked::Stopped);
        }
        match receiver.recv_timeout(SLEEP_SLICE) {
            Ok(Ok(())) => return Ok(Checked::Ready),
            Ok(Err(source)) => return Err(SetupError::StartCheck { url, source }),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                return Err(SetupError::StartCheck {
                    url,
                    source: WriteError::Invalid("the check thread ended without an answer".into()),
                });
            }
        }
    }
}

/// A URL as text without its user and password, whatever it holds.
fn without_credentials(url: &Url) -> String {
    let mut url = url.clone();
    let _ = url.set_username("");
    let _ = url.set_password(None);
    url.to_string()
}

/// The sink's counters: cheap to share (`Arc`), updated with relaxed atomics, read with
/// [`SinkStats::snapshot`].
#[derive(Debug, Default)]
pub struct SinkStats {
    lines_written: AtomicU64,
    requests: AtomicU64,
    attempts: AtomicU64,
    retries: AtomicU64,
    failed: AtomicU64,
    rejected_lines: AtomicU64,
    in_flight: AtomicU64,
    max_in_flight: AtomicU64,
}

/// The counters at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Lines InfluxDB accepted.
    pub lines_written: u64,
    /// Write requests InfluxDB accepted.
    pub requests: u64,
    /// HTTP write attempts, retries included.
    pub attempts: u64,
    /// Attempts that were retries.
    pub retries: u64,
    /// Write requests given up on (fatal error or retries exhausted).
    pub failed: u64,
    /// Lines InfluxDB refused (`sink_rejected_lines`): counted, logged and skipped; the other
    /// lines of their requests are written.
    pub rejected_lines: u64,
    /// Requests queued for or being written by the writer thread now.
    pub in_flight: u64,
    /// The most requests ever in flight: at most the queue capacity plus one.
    pub max_in_flight: u64,
}

impl SinkStats {
    /// Reads every counter (each atomically; together only approximately consistent while the
    /// sink runs).
    pub fn snapshot(&self) -> StatsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StatsSnapshot {
            lines_written: get(&self.lines_written),
            requests: get(&self.requests),
            attempts: get(&self.attempts),
            retries: get(&self.retries),
            failed: get(&self.failed),
            rejected_lines: get(&self.rejected_lines),
            in_flight: get(&self.in_flight),
            max_in_flight: get(&self.max_in_flight),
        }
    }

    /// Lines InfluxDB accepted.
    pub fn lines_written(&self) -> u64 {
        self.lines_written.load(Ordering::Relaxed)
    }

    /// Retries so far.
    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }

    /// Lines InfluxDB refused so far.
    pub fn rejected_lines(&self) -> u64 {
        self.rejected_lines.load(Ordering::Relaxed)
    }

    pub(super) fn add_in_flight(&self) {
        let now = self.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        self.max_in_flight.fetch_max(now, Ordering::Relaxed);
    }

    pub(super) fn sub_in_flight(&self, n: u64) {
        self.in_flight.fetch_sub(n, Ordering::Relaxed);
    }

    fn count(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// How a request authenticates.
#[derive(Clone)]
enum Auth {
    None,
    Basic { username: String, password: Secret },
    Token(Secret),
}

/// A failed request, and the wait its answer asked for before the next one (`Retry-After`).
struct Failed {
    error: WriteError,
    retry_after: Option<Duration>,
}

impl From<WriteError> for Failed {
    fn from(error: WriteError) -> Failed {
        Failed {
            error,
            retry_after: None,
        }
    }
}

/// An InfluxDB HTTP client for one database (v1) or bucket (v2). Blocking: call it from a thread
/// that may wait (the sink's writer thread).
pub struct InfluxClient {
    http: Client,
    api: Api,
    database: String,
    base_url: Url,
    write_url: Url,
    query_url: Url,
    ping_url: Url,
    auth: Auth,
    gzip: bool,
    timeout_ms: u64,
    retry: RetryPolicy,
    stats: Arc<SinkStats>,
    rejects: Rejects,
}

/// Where refused lines go: a rate-limited log, and the rejects file when one is set.
struct Rejects {
    /// `influx.rejects-file`, opened for appending.
    file: Option<Mutex<File>>,
    /// When the last log line about refused lines was written.
    logged_at: Mutex<Option<Instant>>,
    /// Refused lines since that log line.
    unlogged: AtomicU64,
}

impl std::fmt::Debug for InfluxClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InfluxClient")
            .field("write_url", &self.write_url.as_str())
            .field("gzip", &self.gzip)
            .finish_non_exhaustive()
    }
}

impl InfluxClient {
    /// Validates `config`, reads its secret files and builds the client. Connects to nothing.
    pub fn new(config: &InfluxConfig) -> Result<InfluxClient, SetupError> {
        config.validate()?;
        let base = config.base_url()?;
        let password = config.resolve_password()?;
        let token = config.resolve_token()?;
        let auth = match (&config.username, password, token) {
            (Some(username), Some(password), _) => Auth::Basic {
                username: username.clone(),
                password,
            },
            (_, _, Some(token)) => Auth::Token(token),
            _ => Auth::None,
        };
        let endpoint = |path: &str| {
            let mut url = base.clone();
            url.set_path(&format!("{}/{path}", base.path().trim_end_matches('/')));
            url
        };
        let mut write_url = match config.api {
            Api::V1 => endpoint("write"),
            Api::V2 => endpoint("api/v2/write"),
        };
        {
            let mut query = write_url.query_pairs_mut();
            match config.api {
                Api::V1 => {
                    query.append_pair("db", &config.database);
                    if let Some(rp) = &config.retention_policy {
                        query.append_pair("rp", rp);
                    }
                }
                Api::V2 => {
                    let org = config.org.as_deref().unwrap_or_default();
                    query
                        .append_pair("org", org)
                        .append_pair("bucket", &config.database);
                }
            }
            query.append_pair("precision", "ms");
        }
        let timeout = Duration::from_millis(config.timeout_ms);
        let http = Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("shopflow/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| SetupError::Client(error_chain(&e)))?;
        let file = if config.rejects_file.as_os_str().is_empty() {
            None
        } else {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&config.rejects_file)
                .map_err(|e| ConfigError::Invalid {
                    key: "influx.rejects-file",
                    message: format!("cannot open {}: {e}", config.rejects_file.display()),
                })?;
            Some(Mutex::new(file))
        };
        Ok(InfluxClient {
            http,
            api: config.api,
            database: config.database.clone(),
            base_url: base.clone(),
            write_url,
            query_url: endpoint("query"),
            ping_url: endpoint("ping"),
            auth,
            gzip: config.gzip,
            timeout_ms: config.timeout_ms,
            retry: retry_policy(config),
            stats: Arc::new(SinkStats::default()),
            rejects: Rejects {
                file,
                logged_at: Mutex::new(None),
                unlogged: AtomicU64::new(0),
            },
        })
    }

    /// The counters this client updates.
    pub fn stats(&self) -> Arc<SinkStats> {
        Arc::clone(&self.stats)
    }

    /// The write endpoint, with its query (database, precision); it holds no credential.
    pub fn write_url(&self) -> &Url {
        &self.write_url
    }

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
    pub(super) fn write_lines(
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

    /// One `CREATE DATABASE` (when `create`) or `GET /ping`, no retry, within `timeout-ms`.
    fn check(&self, create: bool) -> Result<(), WriteError> {
        if create {
            self.create_database_once().map_err(|failed| failed.error)
        } else {
            self.ping().map(drop)
        }
    }

    /// Runs `CREATE DATABASE "<database>"` (v1; a no-op when it exists), retrying transient
    /// failures. The name is quoted and escaped, so it is always one identifier.
    pub fn create_database(&self) -> Result<(), WriteError> {
        self.with_retries("create database", &AtomicBool::new(false), false, || {
            self.create_database_once()
        })
    }

    /// One `CREATE DATABASE` request, no retry.
    fn create_database_once(&self) -> Result<(), Failed> {
        if self.api != Api::V1 {
            return Err(WriteError::Invalid("create-database needs api = \"v1\"".into()).into());
        }
        let statement = format!("CREATE DATABASE {}", quote_identifier(&self.database));
        // Form-encode the statement in the body, so it stays out of proxies' access logs.
        let mut form = Url::parse("http://form.invalid/").expect("a valid URL");
        form.query_pairs_mut().append_pair("q", &statement);
        let form = form.query().unwrap_or_default().to_owned();
        let request = self
            .http
            .post(self.query_url.clone())
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(form);
        let text = read_text(self.send_once(request)?);
        // A statement's error comes back as 200 with `"error"` in its result.
        match json_string_field(&text, "error") {
            Some(message) => Err(WriteError::Rejected {
                status: 200,
                message,
            }
            .into()),
            None => Ok(()),
        }
    }

    /// Runs a read-only InfluxQL query on the database (v1 `GET /query`, millisecond epochs,
    /// answered in chunks of 10,000 rows) and returns the answer, a stream of JSON objects, for
    /// the caller to read. Connection failures and 5xx answers are retried as writes are;
    /// `timeout` bounds the whole request, reading the answer included.
    pub fn query(&self, statement: &str, timeout: Duration) -> Result<Response, WriteError> {
        if self.api != Api::V1 {
            return Err(WriteError::Invalid("queries need api = \"v1\"".into()));
        }
        let mut url = self.query_url.clone();
        url.query_pairs_mut()
            .append_pair("db", &self.database)
            .append_pair("q", statement)
            .append_pair("epoch", "ms")
            .append_pair("chunked", "true")
            .append_pair("chunk_size", "10000");
        self.with_retries("query", &AtomicBool::new(false), false, || {
            self.send_once(self.http.get(url.clone()).timeout(timeout))
        })
    }

    /// One `GET /ping`, no retry: the server's version (`X-Influxdb-Version`) when it is up.
    pub fn ping(&self) -> Result<Option<String>, WriteError> {
        let response = self.send(self.http.get(self.ping_url.clone()))?;
        Ok(response
            .headers()
            .get("X-Influxdb-Version")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned))
    }

    /// Sends one request with the credentials; any non-2xx status is an error.
    fn send(&self, request: RequestBuilder) -> Result<Response, WriteError> {
        self.send_once(request).map_err(|failed| failed.error)
    }

    /// [`InfluxClient::send`], with the wait a 429 or 5xx answer asks for in `Retry-After`.
    fn send_once(&self, request: RequestBuilder) -> Result<Response, Failed> {
        let request = match &self.auth {
            Auth::None => request,
            Auth::Basic { username, password } => {
                request.basic_auth(username, Some(password.expose()))
            }
            Auth::Token(token) => {
                let mut value = HeaderValue::from_str(&format!("Token {}", token.expose()))
                    .map_err(|_| {
                        WriteError::Invalid("the token is not a valid HTTP header value".into())
                    })?;
                value.set_sensitive(true);
                request.header(AUTHORIZATION, value)
            }
        };
        let response = request
            .send()
            .map_err(|e| classify_transport(e, self.timeout_ms))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let retry_after = retry_after_header(response.headers());
        let header = response
            .headers()
            .get("X-Influxdb-Error")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let location = response
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let text = read_text(response);
        let mut message = error_message(&text, header.as_deref(), status.canonical_reason());
        if let (true, Some(location)) = (status.is_redirection(), location) {
            message = format!("unexpected redirect to {location} (check url)");
        }
        let code = status.as_u16();
        if status.is_server_error() || code == 429 || code == 408 {
            Err(Failed {
                error: WriteError::Unavailable {
                    status: code,
                    message,
                },
                retry_after,
            })
        } else {
            Err(WriteError::Rejected {
                status: code,
                message,
            }
            .into())
        }
    }

    /// Runs `attempt` until it succeeds, fails fatally, or `max-retries` retries failed.
    fn with_retries<T>(
        &self,
        what: &str,
        cancel: &AtomicBool,
        count: bool,
        mut attempt: impl FnMut() -> Result<T, Failed>,
    ) -> Result<T, WriteError> {
        let outcome = self.retry.run(
            Some(cancel),
            |number| {
                if count {
                    SinkStats::count(&self.stats.attempts, 1);
                    if number > 1 {
                        SinkStats::count(&self.stats.retries, 1);
                    }
                }
                attempt()
            },
            |failed| match (failed.error.is_retryable(), failed.retry_after) {
                (false, _) => Verdict::Fatal,
                (true, None) => Verdict::Retry,
                (true, Some(wait)) => Verdict::RetryAfter(wait),
            },
            |failed, retrying| {
                tracing::warn!(
                    attempt = retrying.attempt,
                    of = self.retry.attempts(),
                    backoff_ms = retrying.wait.as_millis() as u64,
                    retry_after_ms = retrying.asked.map(|asked| asked.as_millis() as u64),
                    reason = %failed.error,
                    "InfluxDB {what} failed; retrying"
                );
            },
        );
        let gave_up = match outcome {
            Ok(value) => return Ok(value),
            Err(gave_up) => gave_up,
        };
        let (error, attempts) = (gave_up.error.error, gave_up.attempts);
        match gave_up.reason {
            Reason::Fatal => {
                // A refusal of lines is the caller's to count and log, once a second.
                if !error.refuses_lines() {
                    tracing::error!(%error, "InfluxDB {what} failed; not retrying");
                }
                return Err(error);
            }
            // The run failed elsewhere and said so: this is not news.
            Reason::Cancelled => {
                tracing::debug!(attempts, %error, "InfluxDB {what} failed; cancelled")
            }
            Reason::Exhausted => {
                tracing::error!(attempts, %error, "InfluxDB {what} failed; giving up")
            }
        }
        Err(WriteError::RetriesExhausted {
            attempts,
            last: Box::new(error),
        })
    }
}

/// The sink's retries: `initial-backoff-ms` doubling up to `max-backoff-ms`, full jitter, at most
/// `max-retries`.
fn retry_policy(config: &InfluxConfig) -> RetryPolicy {
    RetryPolicy::exponential(
        Duration::from_millis(config.initial_backoff_ms),
        Duration::from_millis(config.max_backoff_ms),
    )
    .with_retries(config.max_retries)
    .with_full_jitter()
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

/// At most [`MAX_MESSAGE_CHARS`] characters of `message`, for a log line.
fn shorten(message: &str) -> String {
    let mut text: String = message.chars().take(MAX_MESSAGE_CHARS).collect();
    if text.len() < message.len() {
        text.push('…');
    }
    text
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

/// Up to [`MAX_ERROR_BODY`] bytes of a response, as text.
fn read_text(response: Response) -> String {
    let mut bytes = Vec::new();
    let _ = response.take(MAX_ERROR_BODY).read_to_end(&mut bytes);
    String::from_utf8_lossy(&bytes).into_owned()
}

/// A reqwest failure as a retryable [`WriteError`], with its cause chain but not its URL.
fn classify_transport(error: reqwest::Error, timeout_ms: u64) -> WriteError {
    if error.is_timeout() {
        return WriteError::Timeout(timeout_ms);
    }
    let connect = error.is_connect();
    let text = error_chain(&error.without_url());
    if connect {
        WriteError::Connect(text)
    } else {
        WriteError::Transport(text)
    }
}

/// An error and its sources, `: `-separated, each distinct message once.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let message = cause.to_string();
        if !text.contains(&message) {
            text.push_str(": ");
            text.push_str(&message);
        }
        source = cause.source();
    }
    text
}

/// InfluxDB's message in an error answer.
fn error_message(body: &str, header: Option<&str>, reason: Option<&str>) -> String {
    if let Some(message) =
        json_string_field(body, "error").or_else(|| json_string_field(body, "message"))
    {
        return message;
    }
    if let Some(header) = header.filter(|h| !h.is_empty()) {
        return header.to_owned();
    }
    let body = body.trim();
    if !body.is_empty() {
        let mut text: String = body.chars().take(MAX_MESSAGE_CHARS).collect();
        if text.len() < body.len() {
            text.push('…');
        }
        return text;
    }
    reason.unwrap_or("no message").to_owned()
}

/// The string value of the first member `"name": "..."` of a JSON object anywhere in `json`.
///
/// Enough JSON for InfluxDB's error answers (`{"error":"..."}`, `{"code":..,"message":".."}`, and
/// `{"results":[{"statement_id":0,"error":"..."}]}`): the key must follow `{` or `,`, so text that
/// merely contains the name inside another string does not count.
pub(super) fn json_string_field(json: &str, name: &str) -> Option<String> {
    let key = format!("\"{name}\"");
    let mut from = 0;
    while let Some(found) = json[from..].find(&key) {
        let start = from + found;
        from = start + key.len();
        let before = json[..start].trim_end();
        if !(before.ends_with('{') || before.ends_with(',')) {
            continue;
        }
        let rest = json[from..].trim_start();
        let Some(rest) = rest.strip_prefix(':') else {
            continue;
        };
        let Some(rest) = rest.trim_start().strip_prefix('"') else {
            continue;
        };
        return parse_json_string(rest);
    }
    None
}

/// The JSON string starting right after its opening quote, unescaped.
fn parse_json_string(text: &str) -> Option<String> {
    let mut out = String::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => return Some(out),
            '\\' => match chars.next()? {
                'n' => out.push('\n'),
                't' => out.push('\t'),
                'r' => out.push('\r'),
                'b' => out.push('\u{8}'),
                'f' => out.push('\u{c}'),
                'u' => {
                    let hex: String = chars.by_ref().take(4).collect();
                    let unit = u32::from_str_radix(&hex, 16).ok()?;
                    // Surrogate pairs are rare in error messages: show a replacement character.
                    out.push(char::from_u32(unit).unwrap_or('\u{fffd}'));
                }
                other => out.push(other),
            },
            c => out.push(c),
        }
    }
    None
}

/// An InfluxQL identifier, double-quoted with `\` and `"` escaped (and line breaks as `\n`): it
/// cannot end the identifier or the statement.
pub fn quote_identifier(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 2);
    out.push('"');
    for c in name.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn influx_error_messages_are_extracted() {
        let v1 = r#"{"error":"database not found: \"nope\""}"#;
        assert_eq!(
            error_message(v1, None, None),
            "database not found: \"nope\""
        );
        let v2 = r#"{"code":"not found","message":"bucket \"b\" not found"}"#;
        assert_eq!(error_message(v2, None, None), "bucket \"b\" not found");
        let query = r#"{"results":[{"statement_id":0,"error":"bad \\ thing\n"}]}"#;
        assert_eq!(json_string_field(query, "error").unwrap(), "bad \\ thing\n");
        assert_eq!(
            json_string_field(r#"{"results":[{"statement_id":0}]}"#, "error"),
            None
        );
        // The name inside another string value is not a key.
        let tricky = r#"{"message":"x, \"error\": \"no\"","error":"yes"}"#;
        assert_eq!(json_string_field(tricky, "error").unwrap(), "yes");
        assert_eq!(
            error_message("", Some("header says"), Some("Bad Request")),
            "header says"
        );
        assert_eq!(error_message("  plain text\n", None, None), "plain text");
        assert_eq!(error_message("", None, Some("Bad Gateway")), "Bad Gateway");
        assert_eq!(
            json_string_field(r#"{"error":"caf\u00e9"}"#, "error").unwrap(),
            "café"
        );
        let long = "x".repeat(2_000);
        assert_eq!(
            error_message(&long, None, None).chars().count(),
            MAX_MESSAGE_CHARS + 1
        );
    }

    #[test]
    fn identifiers_are_quoted_and_escaped() {
        assert_eq!(quote_identifier("shop"), "\"shop\"");
        assert_eq!(
            quote_identifier("a\"; DROP DATABASE \"b\\"),
            "\"a\\\"; DROP DATABASE \\\"b\\\\\""
        );
        assert_eq!(quote_identifier("x\ny"), "\"x\\ny\"");
    }

    #[test]
    fn backoff_doubles_to_its_cap_with_full_jitter() {
        let config: InfluxConfig = toml::from_str(
            r#"
            url = "http://localhost:8086"
            api = "v1"
            database = "d"
            batch-lines = 5000
            gzip = false
            timeout-ms = 10000
            max-retries = 100
            initial-backoff-ms = 100
            max-backoff-ms = 1000
            create-database = false
            rejects-file = ""
            "#,
        )
        .expect("a config");
        let policy = retry_policy(&config);
        assert_eq!(
            policy,
            RetryPolicy {
                first: Duration::from_millis(100),
                max: Duration::from_millis(1_000),
                retries: Some(100),
                full_jitter: true,
            }
        );
        assert_eq!(policy.delays().count(), 100);
        let caps = [100, 200, 400, 800, 1_000, 1_000, 1_000];
        for (delay, cap) in policy.delays().zip(caps) {
            assert!(delay <= Duration::from_millis(cap), "{delay:?} > {cap} ms");
        }
        let delays: std::collections::HashSet<Duration> = (0..50)
            .map(|_| policy.delays().nth(3).expect("a delay"))
            .collect();
        assert!(delays.len() > 1, "jittered");
    }

    #[test]
    fn retryability() {
        assert!(WriteError::Connect("refused".into()).is_retryable());
        assert!(WriteError::Timeout(5).is_retryable());
        assert!(
            WriteError::Unavailable {
                status: 503,
                message: String::new()
            }
            .is_retryable()
        );
        let rejected = WriteError::Rejected {
            status: 400,
            message: "bad".into(),
        };
        assert!(!rejected.is_retryable());
        let exhausted = WriteError::RetriesExhausted {
            attempts: 3,
            last: Box::new(WriteError::Unavailable {
                status: 503,
                message: "busy".into(),
            }),
        };
        assert!(!exhausted.is_retryable());
        assert_eq!(exhausted.status(), Some(503));
        assert_eq!(
            exhausted.to_string(),
            "gave up after 3 attempts: InfluxDB is unavailable (HTTP 503): busy"
        );
    }

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
