//! The built binary as a process: run to the end; started with its output collected while it
//! runs, and ended within a limit; or running (`shopflow run`) with its log read while it runs,
//! its memory sampled, interrupted or killed. Also the loopback ports and hostfiles that
//! processes of a cluster are given.

use std::ffi::OsStr;
use std::fs::File;
use std::io::Read as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Runs the built binary to the end.
pub fn shopflow(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_shopflow"));
    command.args(args);
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().expect("the binary runs")
}

/// The built binary with `args` and `env`, standard input closed: a command to start.
pub fn command<S: AsRef<OsStr>>(args: &[S], env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_shopflow"));
    command
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null());
    command
}

/// Starts the built binary with `args` and `env`, collecting its output as it runs.
pub fn start(args: &[String], env: &[(&str, &str)]) -> Running {
    Running::spawn(command(args, env))
}

/// A `shopflow` process started by a test, its output collected as it runs; killed if the test
/// ends first.
pub struct Running {
    child: Option<Child>,
    stdout: Option<JoinHandle<String>>,
    stderr: Option<JoinHandle<String>>,
    started: Instant,
}

/// What a process said and how it ended.
#[derive(Debug)]
pub struct Finished {
    /// Its exit code; `None` when a signal ended it (it was killed at the limit, say).
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
    /// When it was seen to end.
    pub ended: Instant,
    /// Whether it was still running at the limit, and killed.
    pub killed: bool,
}

impl Running {
    /// Starts `command` with its standard output and error piped, each read by a thread of its
    /// own as the process runs (so that neither pipe fills and blocks it).
    pub fn spawn(mut command: Command) -> Running {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the binary starts");
        let collect = |mut pipe: Box<dyn std::io::Read + Send>| {
            std::thread::spawn(move || {
                let mut bytes = Vec::new();
                let _ = pipe.read_to_end(&mut bytes);
                text(&bytes)
            })
        };
        let stdout = child.stdout.take().map(|p| collect(Box::new(p)));
        let stderr = child.stderr.take().map(|p| collect(Box::new(p)));
        Running {
            child: Some(child),
            stdout,
            stderr,
            started: Instant::now(),
        }
    }

    /// Waits for the process to end; kills it and fails the test after `limit`.
    pub fn finish(self, limit: Duration) -> Finished {
        let finished = self.end_within(limit);
        if finished.killed {
            panic!(
                "still running after {limit:?}, killed; it said:\n{}",
                finished.stderr
            );
        }
        finished
    }

    /// Waits for the process to end, at most `limit`: then kills it (`killed`, no exit code).
    pub fn end_within(mut self, limit: Duration) -> Finished {
        let mut child = self.child.take().expect("not finished yet");
        let status = loop {
            if let Some(status) = child.try_wait().expect("the process can be waited for") {
                break Some(status);
            }
            if self.started.elapsed() > limit {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let ended = Instant::now();
        let elapsed = self.started.elapsed();
        let join = |h: Option<JoinHandle<String>>| h.map(|h| h.join().unwrap_or_default());
        let stdout = join(self.stdout.take()).unwrap_or_default();
        let stderr = join(self.stderr.take()).unwrap_or_default();
        Finished {
            code: status.and_then(|s| s.code()),
            stdout,
            stderr,
            elapsed,
            ended,
            killed: status.is_none(),
        }
    }

    /// Kills the process now (as SIGKILL does), returning when.
    pub fn kill(mut self) -> Instant {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
        Instant::now()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `n` loopback ports free right now (held together while chosen, so they differ).
pub fn free_ports(n: usize) -> Vec<u16> {
    let held: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("a free port"))
        .collect();
    held.iter()
        .map(|l| l.local_addr().expect("an address").port())
        .collect()
}

/// A loopback port free right now: nothing listens on it once this returns.
pub fn free_port() -> u16 {
    free_ports(1)[0]
}

/// A hostfile listing `127.0.0.1:port` for each port, with a comment and a blank line.
pub fn hostfile(dir: &Path, name: &str, ports: &[u16]) -> String {
    let path = dir.join(name);
    let lines: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    std::fs::write(
        &path,
        format!("# process 0 first\n\n{}\n", lines.join("\n")),
    )
    .expect("the hostfile");
    path.to_str().expect("a UTF-8 path").to_owned()
}

/// Output bytes as text.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `shopflow run -w 2 --start earliest`, its standard error going to a file that can be read
/// while it runs. Killed if the test ends first.
pub struct Pipeline {
    child: Child,
    log: PathBuf,
    _dir: tempfile::TempDir,
    started: Instant,
}

impl Pipeline {
    pub fn start(env: &[(String, String)]) -> Pipeline {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let log = dir.path().join("stderr.log");
        let stderr = File::create(&log).expect("a log file");
        let mut command = Command::new(env!("CARGO_BIN_EXE_shopflow"));
        command
            .args(["run", "-w", "2", "--start", "earliest"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        for (key, value) in env {
            command.env(key, value);
        }
        let child = command.spawn().expect("shopflow runs");
        Pipeline {
            child,
            log,
            _dir: dir,
            started: Instant::now(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What it has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Fails the test, with the log, if the pipeline has exited.
    pub fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!(
                "the pipeline exited with {status} after {:?}:\n{}",
                self.started.elapsed(),
                self.log()
            );
        }
    }

    /// Waits for the pipeline to exit by itself within `within`.
    pub fn wait(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("the pipeline's status") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the pipeline did not exit within {within:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL, as a crash: nothing is flushed or committed.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends `signal` (`INT`, `TERM`, ...) and returns at once.
    pub fn signal(&mut self, signal: &str) {
        let sent = Command::new("kill")
            .args([&format!("-{signal}"), &self.pid().to_string()])
            .status()
            .expect("kill runs");
        assert!(sent.success(), "SIG{signal} delivered");
    }

    /// Ctrl-C, as a user stops it, then waits: it writes everything it read, and exits 0.
    pub fn interrupt(&mut self) {
        self.signal("INT");
        let status = self.wait(Duration::from_secs(60));
        assert!(
            status.success(),
            "a stopped pipeline exits 0, not {status}:\n{}",
            self.log()
        );
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The process's resident set in KiB (`VmRSS` of `/proc/<pid>/status`).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// Samples a process's RSS every `every` on a thread of its own, with the time of each sample.
pub struct RssSampler {
    samples: Arc<Mutex<Vec<(Instant, u64)>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RssSampler {
    pub fn start(pid: u32, every: Duration) -> RssSampler {
        let samples: Arc<Mutex<Vec<(Instant, u64)>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (samples, stop) = (samples.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Some(kib) = rss_kib(pid) {
                        lock(&samples).push((Instant::now(), kib));
                    }
                    std::thread::sleep(every);
                }
            })
        };
        RssSampler {
            samples,
            stop,
            thread: Some(thread),
        }
    }

    /// The samples so far.
    pub fn samples(&self) -> Vec<(Instant, u64)> {
        lock(&self.samples).clone()
    }

    /// The samples taken from `from` to `to`, in KiB.
    pub fn between(&self, from: Instant, to: Instant) -> Vec<u64> {
        self.samples()
            .into_iter()
            .filter(|(at, _)| (from..=to).contains(at))
            .map(|(_, kib)| kib)
            .collect()
    }

    pub fn stop(&mut self) -> Vec<(Instant, u64)> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        self.samples()
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.stop();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Polls `condition` every 200 ms until it holds; fails the test with `what` after `within`.
pub fn wait_for(what: &str, within: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !condition() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}
