//! The start: one check of InfluxDB, within timeout-ms.

use super::*;
use crate::support::process::free_port;

/// `shopflow run` against `url`, started; stdout and stderr piped.
fn run_against(url: &str, timeout_ms: u64) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_shopflow"))
        .args(["run", "-w", "1"])
        .env("SHOPFLOW__INFLUX__URL", url)
        .env("SHOPFLOW__INFLUX__TIMEOUT_MS", timeout_ms.to_string())
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the binary starts")
}

/// Waits up to `limit` for `child` to end; kills it and fails the test after.
fn ended_within(
    mut child: std::process::Child,
    limit: Duration,
) -> (std::process::ExitStatus, String) {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut stderr = String::new();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut stderr)
                .unwrap();
            return (status, stderr);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("still running after {limit:?}; killed");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn an_unreachable_influxdb_fails_the_start_at_once_with_one_line() {
    let port = free_port();
    let started = Instant::now();
    let child = run_against(&format!("http://127.0.0.1:{port}"), 10_000);
    let (status, stderr) = ended_within(child, Duration::from_secs(20));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with(&format!(
            "error: InfluxDB at http://127.0.0.1:{port}/ failed the start check: cannot connect"
        )),
        "{stderr}"
    );
}

#[test]
fn sigterm_while_waiting_for_influxdb_at_start_stops_cleanly() {
    // A server that accepts connections and never answers.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let accepted = Arc::new(AtomicUsize::new(0));
    {
        let accepted = accepted.clone();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for stream in listener.incoming() {
                held.push(stream);
                accepted.fetch_add(1, Ordering::SeqCst);
            }
        });
    }
    let child = run_against(&url, 60_000);
    wait_for("the start check's connection", || {
        accepted.load(Ordering::SeqCst) > 0
    });
    std::thread::sleep(Duration::from_millis(200));
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(sent.success());
    let (status, stderr) = ended_within(child, Duration::from_secs(5));
    assert_eq!(status.code(), Some(0), "{status:?}: {stderr}");
    assert!(
        stderr.contains("stopped while waiting for InfluxDB"),
        "{stderr}"
    );
}
