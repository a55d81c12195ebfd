//! What the library logs, captured: `tracing` output of one thread while a closure runs.

use std::sync::{Arc, Mutex};

/// A buffer the subscriber writes into.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .expect("not poisoned")
            .extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// What `tracing` printed at `level` and above, without colours, on this thread while `f` ran
/// (librdkafka's lines are logged by the thread that polls the client).
pub fn logged(level: tracing::Level, f: impl FnOnce()) -> String {
    let capture = Capture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    tracing::subscriber::with_default(subscriber, f);
    let bytes = capture.0.lock().expect("not poisoned").clone();
    String::from_utf8_lossy(&bytes).into_owned()
}
