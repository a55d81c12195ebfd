//! The Confluent schema registry client and the reader's schema cache.
//!
//! No Confluent-API schema registry can be installed on this machine (it is not on Maven
//! Central, PyPI or Debian), so these tests answer the client with a small hand-written HTTP
//! responder over `std::net::TcpListener`. That is acceptable here only because nothing real can
//! run; it speaks just enough HTTP/1.1 for one request per connection, and records every request
//! so the tests can count them and look at what was sent.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use apache_avro::Schema;
use dataflows::model::{CampaignId, Cents, Counter, Event, EventTimeMs, OrderId, Tag, UserId};
use shopflow::commands::embedded::EmbeddedKafka;
use shopflow::sources::avro::{DecodeError, DecodePath, Decoder, EVENT_SCHEMA};
use shopflow::sources::kafka::{
    KafkaConfig, KafkaSourceError, PartitionReader, StartPosition, counter_of,
};
use shopflow::sources::registry::{
    CONTENT_TYPE, RegistryClient, RegistryError, SchemaCache, value_subject,
};
use shopflow::writers::kafka::EventProducer;

use crate::support::avro::{apache_message, coupon_value};
use crate::support::process::free_port;

/// One request the responder received.
#[derive(Clone, Debug)]
struct Request {
    method: String,
    path: String,
    /// Header names lowercased.
    headers: Vec<(String, String)>,
    body: String,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

/// A fake registry on a local port that answers each request with `answer(request, n)`, `n`
/// counting requests from 0.
struct Responder {
    url: String,
    requests: Arc<Mutex<Vec<Request>>>,
}

impl Responder {
    fn start(answer: impl Fn(&Request, usize) -> (u16, String) + Send + 'static) -> Responder {
        Responder::with_headers(move |request, n| {
            let (status, body) = answer(request, n);
            (status, String::new(), body)
        })
    }

    /// [`Responder::start`] with extra header lines (each ending in `\r\n`) in the answers.
    fn with_headers(
        answer: impl Fn(&Request, usize) -> (u16, String, String) + Send + 'static,
    ) -> Responder {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a local port");
        let url = format!("http://{}", listener.local_addr().expect("its address"));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&requests);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let Some(request) = read_request(&stream) else {
                    continue;
                };
                let n = {
                    let mut seen = seen.lock().expect("not poisoned");
                    seen.push(request.clone());
                    seen.len() - 1
                };
                let (status, extra, body) = answer(&request, n);
                let response = format!(
                    "HTTP/1.1 {status} X\r\nContent-Type: {CONTENT_TYPE}\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = (&stream).write_all(response.as_bytes());
            }
        });
        Responder { url, requests }
    }

    fn requests(&self) -> Vec<Request> {
        self.requests.lock().expect("not poisoned").clone()
    }

    fn count(&self) -> usize {
        self.requests.lock().expect("not poisoned").len()
    }
}

fn read_request(stream: &TcpStream) -> Option<Request> {
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_owned();
    let path = parts.next()?.to_owned();
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).ok()?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (key, value) = line.split_once(':')?;
        headers.push((key.trim().to_ascii_lowercase(), value.trim().to_owned()));
    }
    let length: usize = headers
        .iter()
        .find(|(key, _)| key == "content-length")
        .map_or(Some(0), |(_, value)| value.parse().ok())?;
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    Some(Request {
        method,
        path,
        headers,
        body: String::from_utf8(body).ok()?,
    })
}

fn client(url: &str) -> RegistryClient {
    RegistryClient::with_timeout(url, Duration::from_secs(5))
        .expect("a client")
        .with_retries(3, Duration::from_millis(1))
}

/// `{"schema": "<schema>"}`, as the registry answers a fetch by id.
fn schema_answer(schema: &str) -> String {
    serde_json::json!({ "schema": schema, "schemaType": "AVRO" }).to_string()
}

/// The bundled schema with a `coupon` field added at the end, as a later producer would write.
fn schema_with_coupon() -> String {
    let mut schema: serde_json::Value = serde_json::from_str(EVENT_SCHEMA).expect("JSON");
    schema["fields"]
        .as_array_mut()
        .expect("fields")
        .push(serde_json::json!({"name": "coupon", "type": ["null", "string"], "default": null}));
    schema.to_string()
}

fn event() -> Event {
    Event {
        order_id: OrderId(99),
        tag: Tag::Purchased,
        user_id: UserId(7),
        campaign_id: CampaignId(3),
        total: Cents(12_345),
        units: 2,
        event_time: EventTimeMs(1_700_000_000_000),
    }
}

/// `event()` written with [`schema_with_coupon`] under `id`, Confluent-framed.
fn coupon_message(id: u32, coupon: Option<&str>) -> Vec<u8> {
    let schema = Schema::parse_str(&schema_with_coupon()).expect("a schema");
    apache_message(id, &schema, coupon_value(&event(), coupon))
}

#[test]
fn registering_sends_the_schema_and_returns_the_id() {
    let registry = Responder::start(|_, _| (200, r#"{"id":17}"#.into()));
    let id = client(&registry.url)
        .register(&value_subject("shopflow-events"), EVENT_SCHEMA)
        .expect("registered");
    assert_eq!(id, 17);
    let requests = registry.requests();
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!(request.method, "POST");
    assert_eq!(request.path, "/subjects/shopflow-events-value/versions");
    assert_eq!(request.header("content-type"), Some(CONTENT_TYPE));
    assert_eq!(request.header("authorization"), None);
    let body: serde_json::Value = serde_json::from_str(&request.body).expect("a JSON body");
    assert_eq!(body, serde_json::json!({ "schema": EVENT_SCHEMA }));
}

#[test]
fn credentials_in_the_url_become_basic_auth_and_stay_out_of_errors() {
    let registry = Responder::start(|_, _| {
        (
            401,
            r#"{"error_code":40101,"message":"Unauthorized"}"#.into(),
        )
    });
    let url = registry.url.replace("http://", "http://user:pw@");
    let error = client(&url)
        .register("t-value", EVENT_SCHEMA)
        .expect_err("refused");
    assert!(
        matches!(error, RegistryError::Rejected { status: 401, .. }),
        "{error:?}"
    );
    let requests = registry.requests();
    assert_eq!(requests.len(), 1, "a 4xx is not retried");
    assert_eq!(
        requests[0].header("authorization"),
        Some("Basic dXNlcjpwdw==")
    );
    let text = format!("{error} {error:?}");
    assert!(!text.contains("pw@") && !text.contains("user:"), "{text}");
    assert!(text.contains("Unauthorized"), "{text}");
}

#[test]
fn a_schema_fetched_by_id_with_an_added_field_decodes() {
    let writer = schema_with_coupon();
    let answer = schema_answer(&writer);
    let registry = Responder::start(move |request, _| {
        if request.method == "GET" && request.path == "/schemas/ids/5" {
            (200, answer.clone())
        } else {
            (
                404,
                r#"{"error_code":40403,"message":"Schema not found"}"#.into(),
            )
        }
    });
    assert_eq!(
        client(&registry.url).schema_by_id(5).expect("fetched"),
        writer
    );

    let mut decoder = Decoder::with_bundled(1).expect("a decoder");
    let mut cache = SchemaCache::new(client(&registry.url));
    let message = coupon_message(5, Some("SPRING"));
    assert_eq!(
        decoder.decode(&message),
        Err(DecodeError::UnknownSchemaId(5))
    );
    cache.resolve(&mut decoder, 5).expect("resolved");
    assert!(decoder.knows(5));
    let decoded = decoder.decode(&message).expect("decoded");
    assert_eq!(decoded.schema_id, 5);
    assert_eq!(decoded.path, DecodePath::Generic);
    assert_eq!(decoded.event, event());
    let decoded = decoder
        .decode(&coupon_message(5, None))
        .expect("decoded without a coupon");
    assert_eq!(decoded.event, event());

    // Known ids, fetched or bundled, are not asked about again.
    for _ in 0..10 {
        cache.resolve(&mut decoder, 5).expect("known");
        cache.resolve(&mut decoder, 1).expect("bundled");
    }
    assert_eq!(
        registry.count(),
        2,
        "one direct fetch and one through the cache"
    );
    assert_eq!(cache.fetches(), 1);
}

#[test]
fn not_found_carries_the_registry_message() {
    let registry = Responder::start(|_, _| {
        (
            404,
            r#"{"error_code":40403,"message":"Schema 9 not found"}"#.into(),
        )
    });
    let error = client(&registry.url)
        .schema_by_id(9)
        .expect_err("not found");
    match &error {
        RegistryError::Rejected {
            status,
            error_code,
            message,
            url,
        } => {
            assert_eq!(*status, 404);
            assert_eq!(*error_code, Some(40403));
            assert_eq!(message, "Schema 9 not found");
            assert!(url.ends_with("/schemas/ids/9"), "{url}");
        }
        other => panic!("{other:?}"),
    }
    assert!(error.to_string().contains("Schema 9 not found"), "{error}");
    assert_eq!(registry.count(), 1, "a 4xx is not retried");
}

#[test]
fn a_failed_fetch_is_not_repeated_per_message() {
    let registry = Responder::start(|_, _| {
        (
            404,
            r#"{"error_code":40403,"message":"Schema not found"}"#.into(),
        )
    });
    let mut decoder = Decoder::with_bundled(1).expect("a decoder");
    let mut cache =
        SchemaCache::new(client(&registry.url)).with_retry_after(Duration::from_millis(300));
    let message = coupon_message(9, None);
    let first = cache.resolve(&mut decoder, 9).expect_err("not found");
    assert!(
        matches!(first, RegistryError::Rejected { status: 404, .. }),
        "{first:?}"
    );
    // What the partition reader does per message: resolve, then decode and count the failure.
    for _ in 0..100 {
        let error = cache.resolve(&mut decoder, 9).expect_err("remembered");
        assert!(
            matches!(error, RegistryError::RecentlyFailed { id: 9, .. }),
            "{error:?}"
        );
        let error = decoder.decode(&message).expect_err("unknown");
        assert_eq!(error, DecodeError::UnknownSchemaId(9));
        assert_eq!(counter_of(&error), Counter::MalformedUnknownSchema);
    }
    assert_eq!(registry.count(), 1);
    // Once the wait is over, the id is asked about again.
    std::thread::sleep(Duration::from_millis(350));
    cache.resolve(&mut decoder, 9).expect_err("still not found");
    assert_eq!(registry.count(), 2);
    assert_eq!(cache.fetches(), 2);
}

#[test]
fn an_incompatible_schema_is_refused_and_remembered() {
    let registry = Responder::start(|_, _| (200, schema_answer(r#"{"type":"string"}"#)));
    let mut decoder = Decoder::with_bundled(1).expect("a decoder");
    let mut cache = SchemaCache::new(client(&registry.url));
    let error = cache.resolve(&mut decoder, 4).expect_err("incompatible");
    assert!(
        matches!(error, RegistryError::Schema { id: 4, .. }),
        "{error:?}"
    );
    assert!(!decoder.knows(4));
    for _ in 0..10 {
        cache.resolve(&mut decoder, 4).expect_err("remembered");
    }
    assert_eq!(registry.count(), 1);
}

#[test]
fn server_errors_are_retried_a_bounded_number_of_times() {
    let registry = Responder::start(|_, n| {
        if n < 2 {
            (503, "upstream down".into())
        } else {
            (200, r#"{"id":3}"#.into())
        }
    });
    let id = client(&registry.url)
        .register("t-value", EVENT_SCHEMA)
        .expect("registered on the third attempt");
    assert_eq!(id, 3);
    assert_eq!(registry.count(), 3);

    let failing = Responder::start(|_, _| {
        (
            500,
            r#"{"error_code":50001,"message":"Error in the backend data store"}"#.into(),
        )
    });
    let error = client(&failing.url).schema_by_id(2).expect_err("failed");
    match &error {
        RegistryError::Server {
            attempts,
            status,
            message,
            ..
        } => {
            assert_eq!((*attempts, *status), (3, 500));
            assert_eq!(message, "Error in the backend data store");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(failing.count(), 3);
}

/// A registry behind a proxy or a rate limit may answer 503 with `Retry-After`: the client waits
/// at least that long (its own backoff here is 1 ms), within its bounded attempts.
#[test]
fn a_retry_after_longer_than_the_backoff_is_waited_for() {
    let registry = Responder::with_headers(|_, n| {
        if n == 0 {
            (503, "Retry-After: 1\r\n".into(), "busy".into())
        } else {
            (200, String::new(), r#"{"id":8}"#.into())
        }
    });
    let started = std::time::Instant::now();
    let id = client(&registry.url)
        .register("t-value", EVENT_SCHEMA)
        .expect("registered on the second attempt");
    assert_eq!(id, 8);
    assert_eq!(registry.count(), 2);
    let waited = started.elapsed();
    assert!(waited >= Duration::from_secs(1), "{waited:?}");
    assert!(waited < Duration::from_secs(4), "{waited:?}");
}

#[test]
fn an_unreachable_registry_is_retried_then_reported() {
    // A port nothing listens on: bound, then released.
    let port = free_port();
    let error = client(&format!("http://u:secret@127.0.0.1:{port}"))
        .schema_by_id(1)
        .expect_err("unreachable");
    assert!(
        matches!(error, RegistryError::Unreachable { attempts: 3, .. }),
        "{error:?}"
    );
    assert!(!error.to_string().contains("secret"), "{error}");
}

#[test]
fn a_silent_registry_times_out() {
    // Accepts connections and never answers.
    let listener = TcpListener::bind("127.0.0.1:0").expect("a local port");
    let url = format!("http://{}", listener.local_addr().expect("its address"));
    let held = std::thread::spawn(move || {
        let mut streams = Vec::new();
        for stream in listener.incoming().take(2) {
            streams.push(stream);
        }
        std::thread::sleep(Duration::from_secs(2));
    });
    let started = std::time::Instant::now();
    let error = RegistryClient::with_timeout(&url, Duration::from_millis(200))
        .expect("a client")
        .with_retries(2, Duration::from_millis(1))
        .schema_by_id(1)
        .expect_err("timed out");
    assert!(
        matches!(error, RegistryError::Unreachable { attempts: 2, .. }),
        "{error:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    drop(held);
}

/// The producer and the partition reader against librdkafka's in-process mock cluster (no
/// Kafka to install) and the fake registry: the producer registers the bundled schema and
/// writes the id it is given; the reader fetches each id once, decodes an evolved writer's
/// message, and counts a message whose id the registry does not have as an unknown schema.
#[test]
fn producer_and_reader_use_the_registry() {
    let coupon = schema_answer(&schema_with_coupon());
    let bundled = schema_answer(EVENT_SCHEMA);
    let registry = Responder::start(move |request, _| {
        match (request.method.as_str(), request.path.as_str()) {
            ("POST", "/subjects/registry-e2e-value/versions") => (200, r#"{"id":21}"#.into()),
            ("GET", "/schemas/ids/21") => (200, bundled.clone()),
            ("GET", "/schemas/ids/22") => (200, coupon.clone()),
            _ => (
                404,
                r#"{"error_code":40403,"message":"Schema not found"}"#.into(),
            ),
        }
    });
    let config = KafkaConfig {
        brokers: "127.0.0.1:1".into(),
        topic: "registry-e2e".into(),
        partitions: 1,
        group_id: "registry-e2e".into(),
        start: StartPosition::Earliest,
        schema_id: 1,
        schema_registry_url: registry.url.clone(),
        dead_letter_topic: String::new(),
        max_poll_messages: 100,
        max_message_bytes: 65_536,
        // The test's events are from 2023: no bound on their age.
        max_event_age_ms: 0,
        max_future_skew_ms: 300_000,
        max_order_cents: 1_000_000_000,
        max_units: 1_000_000,
        properties: BTreeMap::new(),
    };
    assert_eq!(config.validate(), Ok(()));
    let embedded = EmbeddedKafka::start(&config).expect("the mock cluster");
    let config = embedded.config();

    let mut producer = EventProducer::new(config).expect("a producer");
    producer.send(&event(), 1).expect("sent");
    producer
        .send_raw(b"k", &coupon_message(22, Some("SPRING")), 2)
        .expect("sent");
    for n in 0..3 {
        producer
            .send_raw(b"k", &coupon_message(99, None), 3 + n)
            .expect("sent");
    }
    producer.flush(Duration::from_secs(10)).expect("flushed");
    let first = registry.requests()[0].clone();
    assert_eq!(first.path, "/subjects/registry-e2e-value/versions");
    let mut reader = PartitionReader::open(config, 0, 1, None).expect("a reader");
    let mut events = Vec::new();
    let mut messages = 0;
    let mut malformed = BTreeMap::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while messages < 5 && std::time::Instant::now() < deadline {
        let polled = reader
            .poll(1_000, |event| events.push(event))
            .expect("polled");
        messages += polled.messages;
        for (counter, n) in polled.malformed {
            *malformed.entry(counter).or_insert(0) += n;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(messages, 5);
    assert_eq!(events, vec![event(), event()]);
    assert_eq!(
        malformed.into_iter().collect::<Vec<_>>(),
        vec![(Counter::MalformedUnknownSchema, 3)]
    );
    // The fetch of 21 shows the producer wrote the id the registry gave it, not `schema-id`.
    let mut paths: Vec<String> = registry.requests().into_iter().map(|r| r.path).collect();
    paths.sort();
    assert_eq!(
        paths,
        [
            "/schemas/ids/21",
            "/schemas/ids/22",
            "/schemas/ids/99",
            "/subjects/registry-e2e-value/versions"
        ]
    );
}

#[test]
fn a_bad_registry_url_fails_validation_and_a_refusal_fails_the_producer() {
    let registry = Responder::start(|_, _| {
        (
            422,
            r#"{"error_code":42201,"message":"Invalid schema"}"#.into(),
        )
    });
    let mut config = KafkaConfig {
        brokers: "127.0.0.1:1".into(),
        topic: "registry-refused".into(),
        partitions: 1,
        group_id: "g".into(),
        start: StartPosition::Earliest,
        schema_id: 1,
        schema_registry_url: "localhost:8081".into(),
        dead_letter_topic: String::new(),
        max_poll_messages: 100,
        max_message_bytes: 65_536,
        max_event_age_ms: 2_592_000_000,
        max_future_skew_ms: 300_000,
        max_order_cents: 1_000_000_000,
        max_units: 1_000_000,
        properties: BTreeMap::new(),
    };
    let message = config.validate().expect_err("not a URL");
    assert!(
        message.starts_with("kafka.schema-registry-url: "),
        "{message}"
    );
    config.schema_registry_url = registry.url.clone();
    let error = EventProducer::new(&config).err().expect("refused");
    assert!(matches!(error, KafkaSourceError::Registry(_)), "{error:?}");
    assert!(error.to_string().contains("Invalid schema"), "{error}");
}
