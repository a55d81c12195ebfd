//! The client: built from `[influx]`, it authenticates, sends one request at a time and retries
//! by the shared policy; `CREATE DATABASE`, queries and `/ping`.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::time::Duration;

use reqwest::Url;
use reqwest::blocking::{Client, RequestBuilder, Response};
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};

use super::answer::{error_message, json_string_field, read_text};
use super::error::{SetupError, WriteError, classify_transport, error_chain};
use super::stats::SinkStats;
use super::write::Rejects;
use crate::config::ConfigError;
use crate::config::influx::{Api, InfluxConfig, Secret};
use crate::retry::{Reason, RetryPolicy, Verdict, retry_after_header};

/// How a request authenticates.
#[derive(Clone)]
enum Auth {
    None,
    Basic { username: String, password: Secret },
    Token(Secret),
}

/// A failed request, and the wait its answer asked for before the next one (`Retry-After`).
pub(super) struct Failed {
    pub(super) error: WriteError,
    pub(super) retry_after: Option<Duration>,
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
    pub(super) http: Client,
    api: Api,
    database: String,
    pub(super) base_url: Url,
    pub(super) write_url: Url,
    query_url: Url,
    ping_url: Url,
    auth: Auth,
    pub(super) gzip: bool,
    timeout_ms: u64,
    retry: RetryPolicy,
    pub(super) stats: Arc<SinkStats>,
    pub(super) rejects: Rejects,
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

    /// Runs `CREATE DATABASE "<database>"` (v1; a no-op when it exists), retrying transient
    /// failures. The name is quoted and escaped, so it is always one identifier.
    pub fn create_database(&self) -> Result<(), WriteError> {
        self.with_retries("create database", &AtomicBool::new(false), false, || {
            self.create_database_once()
        })
    }

    /// One `CREATE DATABASE` request, no retry.
    pub(super) fn create_database_once(&self) -> Result<(), Failed> {
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
    pub(super) fn send_once(&self, request: RequestBuilder) -> Result<Response, Failed> {
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
    pub(super) fn with_retries<T>(
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
}
