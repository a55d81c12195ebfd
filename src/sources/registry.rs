//! A blocking client of a Confluent schema registry, and the reader's cache of writer schemas.
//!
//! Producers register the bundled schema under the subject `<topic>-value` ([`value_subject`])
//! and write the id the registry assigns in every message header. Readers meet ids they do not
//! know and fetch the writer schema by id, once per id: [`SchemaCache::resolve`] registers it in
//! the [`Decoder`], and remembers ids whose fetch failed for a while
//! ([`SchemaCache::with_retry_after`]) so that a bad id costs one request, not one per message.
//!
//! The registry URL may carry basic-auth credentials (`https://user:password@host:8081`). They
//! are taken out of the URL when the client is built and sent as an `Authorization` header; the
//! client's `Debug`, its [`RegistryClient::url`] and its errors never show them.
//!
//! Request and response bodies are written and read with `serde_json` (already in the tree for
//! other reasons); the URL is checked and its credentials percent-decoded by
//! [`RegistryUrl::parse`], which `[kafka]`'s validation shares.

use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, Instant};

use reqwest::Url;
use reqwest::blocking::{Client, Response};
use serde_json::{Map, Value};

use crate::config::kafka::RegistryUrl;
use crate::retry::{Reason, RetryPolicy, Verdict, retry_after_header};
use crate::sources::avro::{Decoder, HEADER_LEN, MAGIC, SchemaError};

/// The content type of Confluent schema registry requests.
pub const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

/// How long one request may take, connecting included, unless told otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// How many times a request is sent at most when the registry is unreachable or answers 5xx.
pub const DEFAULT_ATTEMPTS: u32 = 3;

/// How long [`SchemaCache`] waits before asking again about an id whose fetch failed.
pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(60);

/// The subject the values of `topic` are registered under (Confluent's `TopicNameStrategy`).
pub fn value_subject(topic: &str) -> String {
    format!("{topic}-value")
}

/// The schema id in a Confluent-framed message's header, if it has one.
pub fn header_schema_id(message: &[u8]) -> Option<u32> {
    match message {
        [magic, a, b, c, d, ..] if *magic == MAGIC && message.len() >= HEADER_LEN => {
            Some(u32::from_be_bytes([*a, *b, *c, *d]))
        }
        _ => None,
    }
}

/// A schema registry request failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The configured URL is not an absolute http(s) URL.
    #[error("schema registry url: {0}")]
    InvalidUrl(String),
    /// The HTTP client could not be built (TLS setup).
    #[error("schema registry client: {0}")]
    Client(String),
    /// No answer: the connection failed or timed out, on every attempt.
    #[error("schema registry {url} unreachable after {attempts} attempt(s): {source}")]
    Unreachable {
        /// The request's URL, without credentials.
        url: String,
        /// How many times it was sent.
        attempts: u32,
        /// The last attempt's error.
        source: reqwest::Error,
    },
    /// The registry refused the request (4xx), with its own explanation.
    #[error("schema registry refused {url}: HTTP {status}{}: {message}", error_code.map(|c| format!(" (error code {c})")).unwrap_or_default())]
    Rejected {
        /// The request's URL, without credentials.
        url: String,
        /// The HTTP status.
        status: u16,
        /// Confluent's `error_code`, e.g. 40401 (subject not found) or 40403 (schema not found).
        error_code: Option<u32>,
        /// Confluent's `message`, or the body as sent when it has none.
        message: String,
    },
    /// The registry failed (5xx) on every attempt.
    #[error(
        "schema registry failed on {url} after {attempts} attempt(s): HTTP {status}: {message}"
    )]
    Server {
        /// The request's URL, without credentials.
        url: String,
        /// How many times it was sent.
        attempts: u32,
        /// The last HTTP status.
        status: u16,
        /// The registry's message, or the body as sent.
        message: String,
    },
    /// A 2xx answer without the expected field.
    #[error("schema registry answered {url} with an unexpected body: {body}")]
    BadResponse {
        /// The request's URL, without credentials.
        url: String,
        /// The body (cut to 200 characters).
        body: String,
    },
    /// The registry's schema cannot be used as a writer schema of the event.
    #[error("schema registry id {id}: {source}")]
    Schema {
        /// The schema id.
        id: u32,
        /// Why the decoder refused it.
        source: SchemaError,
    },
    /// The id's fetch failed recently; it is not asked about again until the wait is over.
    #[error("schema id {id}: its fetch failed recently ({reason}); not retried yet")]
    RecentlyFailed {
        /// The schema id.
        id: u32,
        /// Why the fetch failed.
        reason: String,
    },
}

/// A blocking client of a Confluent schema registry.
#[derive(Clone)]
pub struct RegistryClient {
    client: Client,
    /// The base URL, without credentials, ending in `/`.
    base: Url,
    /// Basic-auth user and password from the configured URL.
    auth: Option<(String, Option<String>)>,
    attempts: u32,
    backoff: Duration,
}

impl fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryClient")
            .field("url", &self.base.as_str())
            .field("auth", &self.auth.as_ref().map(|_| "***"))
            .field("attempts", &self.attempts)
            .finish_non_exhaustive()
    }
}

impl RegistryClient {
    /// A client of the registry at `url` with [`DEFAULT_TIMEOUT`] per request.
    pub fn new(url: &str) -> Result<RegistryClient, RegistryError> {
        RegistryClient::with_timeout(url, DEFAULT_TIMEOUT)
    }

    /// A client of the registry at `url` (`http[s]://[user:password@]host[:port][/path]`) whose
    /// requests each take at most `timeout`.
    pub fn with_timeout(url: &str, timeout: Duration) -> Result<RegistryClient, RegistryError> {
        let RegistryUrl { base, auth } =
            RegistryUrl::parse(url).map_err(RegistryError::InvalidUrl)?;
        let client = Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .build()
            .map_err(|e| RegistryError::Client(e.to_string()))?;
        Ok(RegistryClient {
            client,
            base,
            auth,
            attempts: DEFAULT_ATTEMPTS,
            backoff: Duration::from_millis(100),
        })
    }

    /// Sends each request at most `attempts` times (at least once), waiting `backoff`, then
    /// twice that, and so on up to 1024 times that, between attempts, or longer when the registry
    /// asks for it (`Retry-After`).
    pub fn with_retries(mut self, attempts: u32, backoff: Duration) -> RegistryClient {
        self.attempts = attempts.max(1);
        self.backoff = backoff;
        self
    }

    /// The registry's base URL, without credentials.
    pub fn url(&self) -> &str {
        self.base.as_str()
    }

    /// Registers `schema_json` (an Avro schema) under `subject`; returns its id. Registering a
    /// schema the subject already has returns the existing id.
    pub fn register(&self, subject: &str, schema_json: &str) -> Result<u32, RegistryError> {
        let url = self.endpoint(&["subjects", subject, "versions"])?;
        let text = self.send(&url, Some(register_body(schema_json)))?;
        registered_id(&text).ok_or_else(|| bad_response(&url, &text))
    }

    /// The schema registered under `id`, as JSON text.
    pub fn schema_by_id(&self, id: u32) -> Result<String, RegistryError> {
        let url = self.endpoint(&["schemas", "ids", &id.to_string()])?;
        let text = self.send(&url, None)?;
        fetched_schema(&text).ok_or_else(|| bad_response(&url, &text))
    }

    /// The base URL with `segments` appended, each percent-encoded as one path segment.
    fn endpoint(&self, segments: &[&str]) -> Result<Url, RegistryError> {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .map_err(|()| RegistryError::InvalidUrl("cannot be a base URL".into()))?
            .pop_if_empty()
            .extend(segments);
        Ok(url)
    }

    /// Sends a GET (no body) or a POST, retrying unreachable and 5xx answers; returns the body of
    /// a 2xx answer.
    fn send(&self, url: &Url, body: Option<String>) -> Result<String, RegistryError> {
        let policy = RetryPolicy::exponential(self.backoff, self.backoff.saturating_mul(1 << 10))
            .with_retries(self.attempts - 1);
        let outcome = policy.run(
            None,
            |_| self.send_once(url, body.as_deref()),
            |failed| match failed {
                Failed::Rejected(..) => Verdict::Fatal,
                Failed::Server { retry_after, .. } => {
                    retry_after.map_or(Verdict::Retry, Verdict::RetryAfter)
                }
                Failed::Unreachable(_) => Verdict::Retry,
            },
            |_, _| {},
        );
        let gave_up = match outcome {
            Ok(text) => return Ok(text),
            Err(gave_up) => gave_up,
        };
        debug_assert!(gave_up.reason != Reason::Cancelled, "nothing cancels");
        let (url, attempts) = (url.to_string(), gave_up.attempts);
        Err(match gave_up.error {
            Failed::Rejected(status, text) => {
                let (error_code, message) = error_message(&text);
                RegistryError::Rejected {
                    url,
                    status,
                    error_code,
                    message,
                }
            }
            Failed::Server { status, text, .. } => RegistryError::Server {
                url,
                attempts,
                status,
                message: error_message(&text).1,
            },
            Failed::Unreachable(source) => RegistryError::Unreachable {
                url,
                attempts,
                source: source.without_url(),
            },
        })
    }

    /// One request; the body of a 2xx answer.
    fn send_once(&self, url: &Url, body: Option<&str>) -> Result<String, Failed> {
        let mut request = match body {
            Some(body) => self
                .client
                .post(url.clone())
                .header(reqwest::header::CONTENT_TYPE, CONTENT_TYPE)
                .body(body.to_owned()),
            None => self.client.get(url.clone()),
        }
        .header(reqwest::header::ACCEPT, CONTENT_TYPE);
        if let Some((user, password)) = &self.auth {
            request = request.basic_auth(user, password.as_ref());
        }
        let response = request.send().map_err(Failed::Unreachable)?;
        let status = response.status();
        let retry_after = retry_after_header(response.headers());
        let text = read_text(response).map_err(Failed::Unreachable)?;
        if status.is_success() {
            Ok(text)
        } else if status.is_server_error() {
            Err(Failed::Server {
                status: status.as_u16(),
                text,
                retry_after,
            })
        } else {
            Err(Failed::Rejected(status.as_u16(), text))
        }
    }
}

/// One request's failure.
enum Failed {
    /// No answer, or no complete one.
    Unreachable(reqwest::Error),
    /// A 5xx answer: its status, its body, and the wait it asked for (`Retry-After`).
    Server {
        status: u16,
        text: String,
        retry_after: Option<Duration>,
    },
    /// Any other answer that is not 2xx: its status and body.
    Rejected(u16, String),
}

/// The body of a registration: `{"schema": "<the schema as one JSON string>"}`.
fn register_body(schema_json: &str) -> String {
    serde_json::json!({ "schema": schema_json }).to_string()
}

/// The field `key` of the JSON object `text`; `None` if `text` is not a JSON object or has no
/// such field.
fn field(text: &str, key: &str) -> Option<Value> {
    serde_json::from_str::<Map<String, Value>>(text)
        .ok()?
        .remove(key)
}

/// The id in the registry's answer to a registration (other fields are ignored); `None` if it
/// has none.
fn registered_id(text: &str) -> Option<u32> {
    field(text, "id")?.as_u64()?.try_into().ok()
}

/// The schema in the registry's answer to a fetch by id (`schemaType`, `references`, ... are
/// ignored); `None` if it has none.
fn fetched_schema(text: &str) -> Option<String> {
    match field(text, "schema")? {
        Value::String(schema) => Some(schema),
        _ => None,
    }
}

fn read_text(response: Response) -> reqwest::Result<String> {
    response.text()
}

fn bad_response(url: &Url, text: &str) -> RegistryError {
    RegistryError::BadResponse {
        url: url.to_string(),
        body: text.chars().take(200).collect(),
    }
}

/// Confluent's `error_code` and `message` from an error body, or the body itself (cut to 200
/// characters) when it is not one.
fn error_message(text: &str) -> (Option<u32>, String) {
    // A field of an unexpected type does not hide the other.
    let code = field(text, "error_code")
        .and_then(|code| code.as_u64())
        .and_then(|code| u32::try_from(code).ok());
    let message = match field(text, "message") {
        Some(Value::String(message)) => message,
        _ => text.trim().chars().take(200).collect(),
    };
    (code, message)
}

/// The writer schemas a reader fetched, and the ids whose fetch failed recently.
#[derive(Debug)]
pub struct SchemaCache {
    client: RegistryClient,
    retry_after: Duration,
    /// When each failed id's fetch failed, and why.
    failed: HashMap<u32, (Instant, String)>,
    fetches: u64,
}

impl SchemaCache {
    /// A cache fetching from `client`, which waits [`DEFAULT_RETRY_AFTER`] before asking again
    /// about an id whose fetch failed.
    pub fn new(client: RegistryClient) -> SchemaCache {
        SchemaCache {
            client,
            retry_after: DEFAULT_RETRY_AFTER,
            failed: HashMap::new(),
            fetches: 0,
        }
    }

    /// Waits `retry_after` before asking again about an id whose fetch failed.
    pub fn with_retry_after(mut self, retry_after: Duration) -> SchemaCache {
        self.retry_after = retry_after;
        self
    }

    /// The client.
    pub fn client(&self) -> &RegistryClient {
        &self.client
    }

    /// How many times the registry was asked for a schema (attempts not counted).
    pub fn fetches(&self) -> u64 {
        self.fetches
    }

    /// Makes `decoder` know the writer schema `id`: nothing to do if it does; otherwise fetches
    /// it from the registry and registers it. An id whose fetch (or registration) failed less
    /// than the retry wait ago fails at once with [`RegistryError::RecentlyFailed`].
    pub fn resolve(&mut self, decoder: &mut Decoder, id: u32) -> Result<(), RegistryError> {
        if decoder.knows(id) {
            return Ok(());
        }
        if let Some((at, reason)) = self.failed.get(&id) {
            if at.elapsed() < self.retry_after {
                return Err(RegistryError::RecentlyFailed {
                    id,
                    reason: reason.clone(),
                });
            }
            self.failed.remove(&id);
        }
        self.fetches += 1;
        let outcome = self.client.schema_by_id(id).and_then(|schema| {
            decoder
                .register(id, &schema)
                .map_err(|source| RegistryError::Schema { id, source })
        });
        if let Err(error) = &outcome {
            // A failure map cannot grow past the ids a topic's messages carry; bound it anyway.
            if self.failed.len() >= 10_000 {
                self.failed.clear();
            }
            self.failed.insert(id, (Instant::now(), error.to_string()));
        }
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_register_body_carries_the_schema_as_one_string() {
        for schema in [
            "",
            "x",
            "{\"type\":\"record\"}",
            "a\\b\"c\n\r\t\u{1}\u{1f}é😀/",
        ] {
            let body: serde_json::Value =
                serde_json::from_str(&register_body(schema)).expect("JSON");
            assert_eq!(body, serde_json::json!({ "schema": schema }));
        }
        assert_eq!(
            register_body("{\"a\":\"b\\c\"}\n\t\u{1}é"),
            r#"{"schema":"{\"a\":\"b\\c\"}\n\t\u0001é"}"#
        );
    }

    #[test]
    fn registry_answers_are_read() {
        assert_eq!(registered_id("{\"id\":42}"), Some(42));
        assert_eq!(registered_id(" { \"id\" : 7 } "), Some(7));
        // Confluent adds fields around the one wanted, nested ones included.
        let by_id = r#"{"schemaType":"AVRO","references":[{"name":"x","v":[1,true,null]}],"meta":{},"schema":"{\"type\":\"string\"}","n":-1.5e3}"#;
        assert_eq!(
            fetched_schema(by_id).as_deref(),
            Some("{\"type\":\"string\"}")
        );
        assert_eq!(
            fetched_schema(r#"{"schema":"\ud83d\ude00\u00e9"}"#).as_deref(),
            Some("😀é")
        );
    }

    #[test]
    fn answers_without_the_field_are_refused() {
        for text in [
            "",
            "{}",
            "[1]",
            "{\"id\"}",
            "{\"id\":}",
            "{\"other\":1}",
            "{\"other\":[1,}, \"id\":1}",
            "{\"id\":\"unterminated}",
            "{\"id\":\"\\ud800\"}",
            "{\"id\":bogus}",
            "{\"id\":null}",
            "{\"id\":-1}",
            "{\"id\":4294967296}",
            "{\"id\":1.5}",
            "<html>502 Bad Gateway</html>",
        ] {
            assert_eq!(registered_id(text), None, "{text}");
            assert_eq!(
                fetched_schema(&text.replace("id", "schema")),
                None,
                "{text}"
            );
        }
    }

    #[test]
    fn error_message_prefers_the_registry_message() {
        assert_eq!(
            error_message(r#"{"error_code":40403,"message":"Schema 9 not found"}"#),
            (Some(40403), "Schema 9 not found".into())
        );
        assert_eq!(
            error_message(" gateway down \n"),
            (None, "gateway down".into())
        );
        // A field of another type is ignored, the other still read.
        assert_eq!(
            error_message(r#"{"error_code":"x","message":"busy"}"#),
            (None, "busy".into())
        );
        assert_eq!(
            error_message(r#"{"error_code":50001,"message":7}"#),
            (Some(50001), r#"{"error_code":50001,"message":7}"#.into())
        );
    }

    #[test]
    fn urls_drop_credentials_and_encode_segments() {
        let client = RegistryClient::new("https://al%40ice:s3cr%2Ft@registry.example:8081/base")
            .expect("client");
        assert_eq!(client.url(), "https://registry.example:8081/base/");
        assert_eq!(
            client.auth,
            Some(("al@ice".to_owned(), Some("s3cr/t".to_owned())))
        );
        let debug = format!("{client:?}");
        assert!(!debug.contains("s3cr"), "{debug}");
        assert!(!debug.contains("al@ice"), "{debug}");
        assert_eq!(
            client
                .endpoint(&["subjects", "a/b c-value", "versions"])
                .expect("url")
                .as_str(),
            "https://registry.example:8081/base/subjects/a%2Fb%20c-value/versions"
        );
        let plain = RegistryClient::new("http://localhost:8081").expect("client");
        assert_eq!(plain.url(), "http://localhost:8081/");
        assert!(plain.auth.is_none());
        assert_eq!(
            plain
                .endpoint(&["schemas", "ids", "3"])
                .expect("url")
                .as_str(),
            "http://localhost:8081/schemas/ids/3"
        );
    }

    #[test]
    fn bad_urls_are_refused_without_echoing_them() {
        for url in [
            "",
            "registry:8081",
            "ftp://host/",
            "not a url",
            "http://u:secret@",
            "http://u:secret%ff@host/",
        ] {
            match RegistryClient::new(url) {
                Err(RegistryError::InvalidUrl(message)) => {
                    assert!(!message.contains("secret"), "{message}");
                }
                other => panic!("{url}: {other:?}"),
            }
        }
    }

    #[test]
    fn header_schema_id_reads_the_confluent_header() {
        assert_eq!(header_schema_id(&[0, 0, 0, 1, 2, 9]), Some(258));
        assert_eq!(header_schema_id(&[0, 0, 0, 0, 7]), Some(7));
        assert_eq!(header_schema_id(&[1, 0, 0, 0, 7]), None);
        assert_eq!(header_schema_id(&[0, 0, 0, 7]), None);
        assert_eq!(header_schema_id(&[]), None);
    }

    #[test]
    fn value_subjects_follow_the_topic_name_strategy() {
        assert_eq!(value_subject("shopflow-events"), "shopflow-events-value");
    }
}
