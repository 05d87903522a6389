//! [`TaskFuture`]: a task's answer as a `Future`, woken by the task's completion.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use super::{Driver, ResultStatus, TaskResult};

/// The future [`Driver::wait_async`] returns: it resolves to the task's [`TaskResult`].
///
/// `Send`, and runtime-agnostic: it registers the polling task's `Waker` with the driver's
/// completion table, which wakes it when the pool reports the task finished (or dropped), and
/// holds neither the GIL nor the driver's mutex while pending. The poll that finds the task
/// finished collects the answer, taking the mutex and the GIL briefly. Dropped before it
/// answers, it cancels the task.
#[must_use = "a TaskFuture does nothing unless polled, and dropping it cancels the task"]
pub struct TaskFuture<'a> {
    driver: &'a Driver,
    key: i64,
    /// The waker last registered with the table, taken off it when another replaces it or the
    /// future is dropped.
    registered: Option<Waker>,
    /// The answer was given: nothing to cancel on drop.
    answered: bool,
}

impl<'a> TaskFuture<'a> {
    pub(super) fn new(driver: &'a Driver, key: i64) -> Self {
        TaskFuture { driver, key, registered: None, answered: false }
    }

    /// The key of the task this future waits for.
    pub fn key(&self) -> i64 {
        self.key
    }
}

impl Future for TaskFuture<'_> {
    type Output = TaskResult;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<TaskResult> {
        let this = self.get_mut();
        let table = &this.driver.completions;
        if this.answered {
            return Poll::Ready(TaskResult {
                status: ResultStatus::Error,
                key: this.key,
                value: 0,
                message: "wait_async: this future already gave the task's answer".to_owned(),
            });
        }
        match table.poll(this.key, cx) {
            Poll::Pending => {
                match &this.registered {
                    Some(known) if known.will_wake(cx.waker()) => {}
                    _ => {
                        // Polled from another task than before: the old waker must not linger.
                        if let Some(old) = this.registered.replace(cx.waker().clone()) {
                            table.unregister(this.key, &old);
                        }
                    }
                }
                Poll::Pending
            }
            Poll::Ready(()) => {
                this.registered = None;
                this.answered = true;
                Poll::Ready(this.driver.collect(this.key, "wait_async"))
            }
        }
    }
}

impl Drop for TaskFuture<'_> {
    fn drop(&mut self) {
        if self.answered {
            return;
        }
        if let Some(waker) = self.registered.take() {
            self.driver.completions.unregister(self.key, &waker);
        }
        self.driver.cancel(self.key);
    }
}

impl std::fmt::Debug for TaskFuture<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskFuture").field("key", &self.key).field("answered", &self.answered).finish()
    }
}
