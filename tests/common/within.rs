//! A time limit for work that could deadlock. Included by path (not through `common`) by the
//! binaries that use it.

use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread;
use std::time::Duration;

/// Runs `work` on its own thread and fails the test if it has not finished within `limit`
/// (a deadlock fails instead of hanging); a panic inside `work` is passed on.
pub fn within<T: Send + 'static>(limit: Duration, what: &str, work: impl FnOnce() -> T + Send + 'static) -> T {
    let (sender, receiver) = mpsc::channel();
    let worker = thread::spawn(move || {
        let _ = sender.send(work());
    });
    match receiver.recv_timeout(limit) {
        Ok(value) => {
            worker.join().unwrap();
            value
        }
        Err(RecvTimeoutError::Timeout) => panic!("{what} did not finish within {limit:?} (deadlock?)"),
        Err(RecvTimeoutError::Disconnected) => std::panic::resume_unwind(worker.join().unwrap_err()),
    }
}
