//! How a failed worker, or a failed run, stops every local worker: one that waited for the
//! failed worker's progress would wait forever.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::status::Status;

/// The watchdog's hook: a failed run, here or elsewhere, stops every local worker.
pub(super) fn stop_on_failure(
    status: &Arc<Status>,
    failed: &Arc<AtomicBool>,
) -> impl Fn() + Send + Sync + 'static {
    let (status, failed) = (Arc::clone(status), Arc::clone(failed));
    move || {
        failed.store(true, Ordering::Relaxed);
        status.stop.store(true, Ordering::Relaxed);
    }
}

/// Armed while a worker runs: if the worker ends any other way than by [`disarm`](Self::disarm)
/// (an error returned with `?`, a panic), it stops the run, so that the other workers, which
/// would wait for its progress forever, end too and the error reaches the user.
pub(super) struct StopOthersOnFailure {
    status: Arc<Status>,
    failed: Arc<AtomicBool>,
    armed: bool,
}

impl StopOthersOnFailure {
    pub(super) fn new(status: &Arc<Status>, failed: &Arc<AtomicBool>) -> StopOthersOnFailure {
        StopOthersOnFailure {
            status: Arc::clone(status),
            failed: Arc::clone(failed),
            armed: true,
        }
    }

    /// The worker ended as it should: nothing to stop.
    pub(super) fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for StopOthersOnFailure {
    fn drop(&mut self) {
        if self.armed {
            self.failed.store(true, Ordering::Relaxed);
            self.status.stop.store(true, Ordering::Relaxed);
        }
    }
}
