//! A hand-written responder, to count attempts and control timing exactly.

use super::*;

/// One request as the responder saw it.
#[derive(Clone, Debug)]
struct Seen {
    /// `POST /write?db=shop&precision=ms`
    target: String,
    /// Lower-cased names.
    headers: BTreeMap<String, String>,
    /// The body as sent (compressed, if it was).
    body: Vec<u8>,
}

impl Seen {
    fn text(&self) -> String {
        if self.headers.get("content-encoding").map(String::as_str) == Some("gzip") {
            let mut out = String::new();
            flate2::read::GzDecoder::new(&self.body[..])
                .read_to_string(&mut out)
                .unwrap();
            out
        } else {
            String::from_utf8(self.body.clone()).unwrap()
        }
    }
}

/// The answer to request number `n` (0-based) with this body: status, JSON body, delay before
/// answering.
type Script = dyn Fn(usize, &[u8]) -> (u16, &'static str, Duration) + Send + Sync;

struct Responder {
    url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    busy: Arc<AtomicUsize>,
    most_busy: Arc<AtomicUsize>,
}

impl Responder {
    /// Listens on a free local port; every connection gets a thread, requests are numbered in the
    /// order they arrive.
    fn start(
        script: impl Fn(usize) -> (u16, &'static str, Duration) + Send + Sync + 'static,
    ) -> Self {
        Self::answering(move |n, _| script(n))
    }

    /// [`Responder::start`] with answers that depend on the request's body too.
    fn answering(
        script: impl Fn(usize, &[u8]) -> (u16, &'static str, Duration) + Send + Sync + 'static,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let script: Arc<Script> = Arc::new(script);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let busy = Arc::new(AtomicUsize::new(0));
        let most_busy = Arc::new(AtomicUsize::new(0));
        let state = (seen.clone(), busy.clone(), most_busy.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let (script, (seen, busy, most_busy)) = (script.clone(), state.clone());
                std::thread::spawn(move || serve(stream, &*script, &seen, &busy, &most_busy));
            }
        });
        Responder {
            url,
            seen,
            busy,
            most_busy,
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

fn serve(
    stream: TcpStream,
    script: &Script,
    seen: &Mutex<Vec<Seen>>,
    busy: &AtomicUsize,
    most_busy: &AtomicUsize,
) {
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let target = line.trim_end().trim_end_matches(" HTTP/1.1").to_owned();
        let mut headers = BTreeMap::new();
        loop {
            let mut header = String::new();
            reader.read_line(&mut header).unwrap();
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            let (name, value) = header.split_once(':').unwrap();
            headers.insert(name.to_ascii_lowercase(), value.trim().to_owned());
        }
        let length = headers
            .get("content-length")
            .map_or(0, |l| l.parse().unwrap());
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        let now = busy.fetch_add(1, Ordering::SeqCst) + 1;
        most_busy.fetch_max(now, Ordering::SeqCst);
        let n = {
            let mut seen = seen.lock().unwrap();
            seen.push(Seen {
                target,
                headers,
                body: body.clone(),
            });
            seen.len() - 1
        };
        let (status, answer, delay) = script(n, &body);
        std::thread::sleep(delay);
        busy.fetch_sub(1, Ordering::SeqCst);
        let response = format!(
            "HTTP/1.1 {status} Whatever\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{answer}",
            answer.len()
        );
        if writer.write_all(response.as_bytes()).is_err() {
            return;
        }
    }
}

fn ok() -> (u16, &'static str, Duration) {
    (204, "", Duration::ZERO)
}

#[test]
fn a_closed_port_fails_after_exactly_three_attempts() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let mut sink = InfluxSink::start(&config(&url, "shop"), WINDOW_MS).unwrap();
    let stats = sink.stats();
    sink.write_batch(&campaigns(T, 0, 2)).expect("queued");
    let error = sink.finish().unwrap_err();
    match write_error(&error) {
        WriteError::RetriesExhausted { attempts: 3, last } => {
            assert!(matches!(*last, WriteError::Connect(_)), "{last:?}")
        }
        other => panic!("expected 3 attempts ending in a connection error, got {other:?}"),
    }
    assert!(
        error
            .to_string()
            .contains("gave up after 3 attempts: cannot connect"),
        "{error}"
    );
    let stats = stats.snapshot();
    assert_eq!(
        (
            stats.attempts,
            stats.retries,
            stats.failed,
            stats.requests,
            stats.lines_written,
            stats.in_flight
        ),
        (3, 2, 1, 0, 0, 0)
    );
    // The error stays: the next batch gets it too, and so does a second finish.
    let again = sink.write_batch(&campaigns(T + 1_000, 0, 2)).unwrap_err();
    assert!(matches!(
        write_error(&again),
        WriteError::RetriesExhausted { attempts: 3, .. }
    ));
    assert!(sink.finish().is_err());

    // create-database retries the same way, then fails the start.
    let creating = InfluxConfig {
        create_database: true,
        ..config(&url, "shop")
    };
    match InfluxSink::start(&creating, WINDOW_MS).unwrap_err() {
        SetupError::CreateDatabase { database, source } => {
            assert_eq!(database, "shop");
            assert!(matches!(
                source,
                WriteError::RetriesExhausted { attempts: 3, .. }
            ));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_server_answering_503_twice_gets_the_write_on_the_third_attempt() {
    let server = Responder::start(|n| match n {
        0 | 1 => (503, r#"{"error":"timeout"}"#, Duration::ZERO),
        _ => ok(),
    });
    let mut sink = InfluxSink::start(&config(&server.url, "shop"), WINDOW_MS).unwrap();
    let lines = campaigns(T, 0, 3);
    sink.write_batch(&lines).unwrap();
    sink.finish().expect("written on the third attempt");
    let stats = sink.stats().snapshot();
    assert_eq!(
        (
            stats.attempts,
            stats.retries,
            stats.requests,
            stats.failed,
            stats.lines_written
        ),
        (3, 2, 1, 0, 3)
    );
    let seen = server.seen();
    assert_eq!(seen.len(), 3);
    for request in &seen {
        assert_eq!(request.target, "POST /write?db=shop&precision=ms");
        assert_eq!(request.text(), encode(&lines));
        assert!(!request.headers.contains_key("authorization"));
    }

    // With retries off, the 503's message is the error.
    let server = Responder::start(|_| (503, r#"{"error":"engine overloaded"}"#, Duration::ZERO));
    let mut sink = InfluxSink::start(
        &InfluxConfig {
            max_retries: 0,
            ..config(&server.url, "shop")
        },
        WINDOW_MS,
    )
    .unwrap();
    sink.write_batch(&lines).unwrap();
    let error = write_error(&sink.finish().unwrap_err());
    assert_eq!(
        error,
        WriteError::RetriesExhausted {
            attempts: 1,
            last: Box::new(WriteError::Unavailable {
                status: 503,
                message: "engine overloaded".into()
            })
        }
    );
}

#[test]
fn a_timeout_is_retried() {
    let server = Responder::start(|n| {
        let delay = if n == 0 {
            Duration::from_millis(1_000)
        } else {
            Duration::ZERO
        };
        (204, "", delay)
    });
    let client = InfluxClient::new(&InfluxConfig {
        timeout_ms: 200,
        ..config(&server.url, "shop")
    })
    .unwrap();
    client.write(b"m x=1i 1\n").expect("the second attempt");
    let stats = client.stats().snapshot();
    assert_eq!(
        (stats.attempts, stats.retries, stats.requests, stats.failed),
        (2, 1, 1, 0)
    );

    let server = Responder::start(|_| (204, "", Duration::from_millis(1_000)));
    let client = InfluxClient::new(&InfluxConfig {
        timeout_ms: 200,
        max_retries: 0,
        ..config(&server.url, "shop")
    })
    .unwrap();
    assert_eq!(
        client.write(b"m x=1i 1\n"),
        Err(WriteError::RetriesExhausted {
            attempts: 1,
            last: Box::new(WriteError::Timeout(200))
        })
    );
}

#[test]
fn a_4xx_for_the_whole_request_is_fatal_not_retried_and_no_line_is_counted_as_refused() {
    // 400 retention policy not found: the request, not a line, is at fault.
    for (status, answer, message) in [
        (
            400,
            r#"{"error":"retention policy not found: nope"}"#,
            "retention policy not found: nope",
        ),
        (
            401,
            r#"{"error":"authorization failed"}"#,
            "authorization failed",
        ),
        (403, r#"{"error":"forbidden"}"#, "forbidden"),
        (
            404,
            r#"{"error":"database not found: \"shop\""}"#,
            "database not found: \"shop\"",
        ),
    ] {
        let server = Responder::start(move |_| (status, answer, Duration::ZERO));
        let client = InfluxClient::new(&config(&server.url, "shop")).unwrap();
        assert_eq!(
            client.write(b"m x=1i 1\nm x=2i 2\n"),
            Err(WriteError::Rejected {
                status,
                message: message.into()
            })
        );
        assert_eq!(server.count(), 1, "{status}: no retry, no halving");
        let stats = client.stats().snapshot();
        assert_eq!(
            (
                stats.attempts,
                stats.retries,
                stats.failed,
                stats.rejected_lines,
                stats.lines_written
            ),
            (1, 0, 1, 0, 0),
            "{status}"
        );
    }
}

#[test]
fn refused_lines_are_found_by_halving_counted_and_appended_to_the_rejects_file() {
    // A server that refuses, like InfluxDB 1.x, any body holding a `bad` line, and writes the rest.
    let server = Responder::answering(|_, body| {
        if String::from_utf8_lossy(body).contains("bad") {
            (
                400,
                r#"{"error":"partial write: field type conflict: input field \"bad\" dropped=1"}"#,
                Duration::ZERO,
            )
        } else {
            ok()
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let rejects = dir.path().join("rejects.lp");
    let client = InfluxClient::new(&InfluxConfig {
        rejects_file: rejects.clone(),
        ..config(&server.url, "shop")
    })
    .unwrap();
    let bad = [3usize, 4, 41, 99];
    let body: String = (0..100)
        .map(|i| {
            if bad.contains(&i) {
                format!("m bad=\"{i}\" {i}\n")
            } else {
                format!("m x={i}i {i}\n")
            }
        })
        .collect();
    client
        .write(body.as_bytes())
        .expect("a refused line does not fail the write");
    let stats = client.stats().snapshot();
    assert_eq!(
        (
            stats.requests,
            stats.failed,
            stats.rejected_lines,
            stats.lines_written
        ),
        (1, 0, 4, 96)
    );
    // Every good line was written (again, by halves), in order, after the refused first try.
    let written: Vec<String> = server
        .seen()
        .iter()
        .filter(|seen| !seen.text().contains("bad"))
        .flat_map(|seen| seen.text().lines().map(str::to_owned).collect::<Vec<_>>())
        .collect();
    let good: Vec<String> = body
        .lines()
        .filter(|l| !l.contains("bad"))
        .map(str::to_owned)
        .collect();
    assert_eq!(written, good);
    let message = "partial write: field type conflict: input field \"bad\" dropped=1";
    let expected: String = bad
        .iter()
        .map(|i| format!("# HTTP 400: {message}\nm bad=\"{i}\" {i}\n"))
        .collect();
    assert_eq!(std::fs::read_to_string(&rejects).unwrap(), expected);
    // Halving costs requests only around the refused lines.
    assert!(server.count() < 60, "{} requests", server.count());

    // A rejects file that cannot be opened is a configuration error naming its key.
    let error = InfluxClient::new(&InfluxConfig {
        rejects_file: dir.path().join("no/such/dir/rejects.lp"),
        ..config(&server.url, "shop")
    })
    .unwrap_err()
    .to_string();
    assert!(error.contains("influx.rejects-file"), "{error}");
}

#[test]
fn refused_lines_are_logged_at_most_once_a_second_with_influxdbs_message_and_no_secret() {
    let server = Responder::answering(|_, body| {
        if String::from_utf8_lossy(body).contains("bad") {
            (
                400,
                r#"{"error":"partial write: unable to parse 'bad': missing fields dropped=0"}"#,
                Duration::ZERO,
            )
        } else {
            ok()
        }
    });
    let client = InfluxClient::new(&InfluxConfig {
        username: Some("shop".into()),
        password: Some(Secret::new("hunter2-secret")),
        ..config(&server.url, "shop")
    })
    .unwrap();
    let started = Instant::now();
    let text = support::logs::logged(tracing::Level::INFO, || {
        let body: String = (0..100)
            .map(|i| {
                if i % 5 == 0 {
                    "bad\n".to_owned()
                } else {
                    format!("m x={i}i {i}\n")
                }
            })
            .collect();
        client.write(body.as_bytes()).unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "the test needs a fast write"
        );
        std::thread::sleep(Duration::from_millis(1_100));
        client.write(b"m x=1i 1\nbad\n").unwrap();
    });
    assert_eq!(client.stats().snapshot().rejected_lines, 21);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(lines[0].contains("WARN"), "{text}");
    assert!(lines[0].contains("InfluxDB refused a line"), "{text}");
    assert!(
        lines[0].contains("partial write: unable to parse 'bad': missing fields dropped=0"),
        "{text}"
    );
    assert!(
        lines[0].contains("since_last_log=1 sink_rejected_lines=1"),
        "{text}"
    );
    assert!(
        lines[1].contains("since_last_log=20 sink_rejected_lines=21"),
        "{text}"
    );
    assert!(!text.contains("hunter2"), "{text}");
}

#[test]
fn a_body_too_large_is_split_until_it_fits() {
    // 413 for a body of more than 3 lines.
    let server = Responder::answering(|_, body| {
        if body.iter().filter(|&&b| b == b'\n').count() > 3 {
            (
                413,
                r#"{"error":"Request Entity Too Large"}"#,
                Duration::ZERO,
            )
        } else {
            ok()
        }
    });
    let client = InfluxClient::new(&config(&server.url, "shop")).unwrap();
    let body: String = (0..20).map(|i| format!("m x={i}i {i}\n")).collect();
    client.write(body.as_bytes()).unwrap();
    let written: String = server
        .seen()
        .iter()
        .filter(|seen| seen.text().lines().count() <= 3)
        .map(Seen::text)
        .collect();
    assert_eq!(written, body);
    let stats = client.stats().snapshot();
    assert_eq!(
        (stats.requests, stats.rejected_lines, stats.lines_written),
        (1, 0, 20)
    );
    // One line still too large is refused, counted, and the others are written.
    let server = Responder::answering(|_, body| {
        if body.len() > 1_000 {
            (413, "", Duration::ZERO)
        } else {
            ok()
        }
    });
    let client = InfluxClient::new(&config(&server.url, "shop")).unwrap();
    let huge = format!("m s=\"{}\" 5\n", "x".repeat(2_000));
    let body = format!("m x=1i 1\n{huge}m x=2i 2\n");
    client.write(body.as_bytes()).unwrap();
    let stats = client.stats().snapshot();
    assert_eq!((stats.rejected_lines, stats.lines_written), (1, 2));
}

#[test]
fn requests_carry_the_api_url_credentials_and_encoding() {
    let server = Responder::start(|_| ok());
    let lines = campaigns(T, 0, 5);

    // v1, a path prefix, a retention policy, basic authentication, gzip.
    let v1 = InfluxConfig {
        url: format!("{}/influx/", server.url),
        database: "shop db".into(),
        retention_policy: Some("one week".into()),
        username: Some("shop".into()),
        password: Some(Secret::new("hunter2")),
        gzip: true,
        ..config(&server.url, "shop")
    };
    let mut sink = InfluxSink::start(&v1, WINDOW_MS).unwrap();
    sink.write_batch(&lines).unwrap();
    sink.finish().unwrap();

    // v2: organisation, bucket, token.
    let v2 = InfluxConfig {
        api: Api::V2,
        org: Some("acme".into()),
        token: Some(Secret::new("t0ken")),
        ..config(&server.url, "shop")
    };
    let client = InfluxClient::new(&v2).unwrap();
    assert!(!format!("{client:?}").contains("t0ken"));
    client.write(encode(&lines).as_bytes()).unwrap();

    let seen = server.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(
        seen[0].target,
        "POST /influx/write?db=shop+db&rp=one+week&precision=ms"
    );
    assert_eq!(seen[0].headers["authorization"], "Basic c2hvcDpodW50ZXIy");
    assert_eq!(seen[0].headers["content-encoding"], "gzip");
    assert_eq!(seen[0].text(), encode(&lines));
    assert!(seen[0].body.len() < encode(&lines).len());
    assert_eq!(
        seen[1].target,
        "POST /api/v2/write?org=acme&bucket=shop&precision=ms"
    );
    assert_eq!(seen[1].headers["authorization"], "Token t0ken");
    assert!(!seen[1].headers.contains_key("content-encoding"));
    assert_eq!(seen[1].text(), encode(&lines));
}

#[test]
fn a_slow_server_blocks_the_caller_with_a_bounded_queue_and_order_is_kept() {
    const DELAY: Duration = Duration::from_millis(100);
    const BATCHES: u32 = 12;
    let server = Responder::start(|_| (204, "", DELAY));
    // Every batch is exactly one full request, so nothing can be merged.
    let mut sink = InfluxSink::start(
        &InfluxConfig {
            batch_lines: 10,
            ..config(&server.url, "shop")
        },
        WINDOW_MS,
    )
    .unwrap();
    let stats = sink.stats();
    let started = Instant::now();
    for i in 0..BATCHES {
        sink.write_batch(&campaigns(T + u64::from(i) * 1_000, i * 10, 10))
            .unwrap();
        let now = stats.snapshot();
        assert!(now.in_flight <= MAX_IN_FLIGHT, "{now:?}");
        // What is not in flight has been answered: the caller cannot run ahead of the server.
        assert!(
            now.requests + MAX_IN_FLIGHT > u64::from(i),
            "batch {i}: {now:?}"
        );
    }
    let queued_in = started.elapsed();
    let must_wait = DELAY * (BATCHES - MAX_IN_FLIGHT as u32 - 1);
    assert!(
        queued_in >= must_wait,
        "{BATCHES} batches queued in {queued_in:?}: the caller must wait for the server"
    );
    sink.finish().unwrap();
    let snapshot = stats.snapshot();
    assert_eq!(snapshot.requests, u64::from(BATCHES));
    assert_eq!(snapshot.lines_written, u64::from(BATCHES) * 10);
    assert!(snapshot.max_in_flight <= MAX_IN_FLIGHT, "{snapshot:?}");
    assert_eq!(server.most_busy.load(Ordering::SeqCst), 1, "one at a time");
    assert_eq!(server.busy.load(Ordering::SeqCst), 0);
    // In time order, each request one whole batch.
    let bodies: Vec<String> = server.seen().iter().map(Seen::text).collect();
    let expected: Vec<String> = (0..BATCHES)
        .map(|i| encode(&campaigns(T + u64::from(i) * 1_000, i * 10, 10)))
        .collect();
    assert_eq!(bodies, expected);
}

#[test]
fn small_batches_queued_behind_a_slow_request_are_merged() {
    let server = Responder::start(|n| {
        (
            204,
            "",
            if n == 0 {
                Duration::from_millis(300)
            } else {
                Duration::ZERO
            },
        )
    });
    let mut sink = InfluxSink::start(&config(&server.url, "shop"), WINDOW_MS).unwrap();
    let batches: Vec<Batch> = (0..4).map(|i| campaigns(T + i * 1_000, 0, 2)).collect();
    sink.write_batch(&batches[0]).unwrap();
    wait_for("the first request", || server.count() == 1);
    for b in &batches[1..] {
        sink.write_batch(b).unwrap();
    }
    sink.finish().unwrap();
    let seen: Vec<String> = server.seen().iter().map(Seen::text).collect();
    assert_eq!(
        seen,
        [
            encode(&batches[0]),
            batches[1..].iter().map(encode).collect::<String>()
        ]
    );
    assert_eq!(sink.stats().snapshot().requests, 2);
    assert_eq!(sink.written(), 8);
}

#[test]
fn dropping_an_unfinished_sink_stops_retrying() {
    let server = Responder::start(|_| (503, "", Duration::ZERO));
    let mut sink = InfluxSink::start(
        &InfluxConfig {
            max_retries: 1_000,
            initial_backoff_ms: 200,
            max_backoff_ms: 200,
            ..config(&server.url, "shop")
        },
        WINDOW_MS,
    )
    .unwrap();
    sink.write_batch(&campaigns(T, 0, 1)).unwrap();
    wait_for("a first attempt", || server.count() >= 1);
    let started = Instant::now();
    drop(sink);
    assert!(started.elapsed() < Duration::from_secs(2));
    let attempts = server.count();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(server.count(), attempts, "no attempt after the drop");
}

/// A timestamp is acknowledged only once InfluxDB has answered 2xx for every line of it and of
/// every timestamp before it: not when it is handed to the sink, not while its write is retried,
/// never when the write fails for good.
#[test]
fn a_timestamp_is_acknowledged_only_once_influxdb_has_answered_all_of_it() {
    // The first request is answered after 400 ms; the second and later are refused until the
    // retries run out.
    let server = Responder::start(|n| match n {
        0 => (204, "", Duration::from_millis(400)),
        _ => (503, r#"{"error":"down"}"#, Duration::ZERO),
    });
    let mut sink = InfluxSink::start(
        &InfluxConfig {
            max_retries: 3,
            initial_backoff_ms: 50,
            max_backoff_ms: 50,
            ..config(&server.url, "shop")
        },
        WINDOW_MS,
    )
    .unwrap();
    let acknowledged = sink.acknowledged();
    sink.write_batch(&campaigns(T, 0, 3)).unwrap();
    sink.complete_below(T + 1).unwrap();
    assert_eq!(acknowledged.below(), 0, "handed over is not acknowledged");
    wait_for("the first answer", || server.count() == 1);
    assert_eq!(acknowledged.below(), 0, "sent but not yet answered");
    wait_for("the acknowledgement", || acknowledged.below() == T + 1);
    // A timestamp without output is acknowledged behind the ones before it.
    sink.complete_below(T + 2).unwrap();
    wait_for("an empty timestamp", || acknowledged.below() == T + 2);
    // A timestamp whose write is retried and then fails for good is never acknowledged.
    sink.write_batch(&campaigns(T + 2, 0, 3)).unwrap();
    sink.complete_below(T + 3).unwrap();
    sink.finish().expect_err("the retries ran out");
    assert_eq!(server.count(), 1 + 4, "one attempt and three retries");
    assert_eq!(acknowledged.below(), T + 2);
}
