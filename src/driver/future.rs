//! [`TaskFuture`]: a task's answer as a `Future`, woken by the task's completion.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use super::{Driver, ResultStatus, TaskKey, TaskResult};

/// The future [`Driver::wait_async`] returns: it resolves to the task's [`TaskResult`]
/// (`TaskResult<i64>` for a demo task's `i64` key, `TaskResult<T>` for a [`Key<T>`](super::Key)).
///
/// `Send`, and runtime-agnostic: it registers the polling task's `Waker` with the driver's
/// completion table, which wakes it when the pool reports the task finished (or dropped), and
/// holds neither the GIL nor the driver's mutex while pending. The poll that finds the task
/// finished collects the answer, taking the mutex and the GIL briefly. Dropped before it
/// answers, it cancels the task.
#[must_use = "a TaskFuture does nothing unless polled, and dropping it cancels the task"]
pub struct TaskFuture<'a, K: TaskKey = i64> {
    driver: &'a Driver,
    key: K,
    /// The waker last registered with the table, taken off it when another replaces it or the
    /// future is dropped.
    registered: Option<Waker>,
    /// The answer was given: nothing to cancel on drop.
    answered: bool,
}

impl<'a, K: TaskKey> TaskFuture<'a, K> {
    pub(super) fn new(driver: &'a Driver, key: K) -> Self {
        TaskFuture { driver, key, registered: None, answered: false }
    }

    /// The key of the task this future waits for.
    pub fn key(&self) -> K {
        self.key
    }
}

// Nothing in a TaskFuture is pinned: it may move between polls.
impl<K: TaskKey> Unpin for TaskFuture<'_, K> {}

impl<K: TaskKey> Future for TaskFuture<'_, K> {
    type Output = TaskResult<K::Answer>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<TaskResult<K::Answer>> {
        let this = self.get_mut();
        let table = &this.driver.completions;
        let raw = this.key.raw();
        if this.answered {
            return Poll::Ready(TaskResult {
                status: ResultStatus::Error,
                key: raw,
                value: K::Answer::default(),
                message: "wait_async: this future already gave the task's answer".to_owned(),
            });
        }
        let Some(python_key) = this.driver.table_key(raw) else {
            // Not this Driver's key, or not usable here and now: collect says why.
            this.answered = true;
            return Poll::Ready(this.driver.collect(this.key, "wait_async"));
        };
        match table.poll(python_key, cx) {
            Poll::Pending => {
                match &this.registered {
                    Some(known) if known.will_wake(cx.waker()) => {}
                    _ => {
                        // Polled from another task than before: the old waker must not linger.
                        if let Some(old) = this.registered.replace(cx.waker().clone()) {
                            table.unregister(python_key, &old);
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

impl<K: TaskKey> Drop for TaskFuture<'_, K> {
    fn drop(&mut self) {
        if self.answered {
            return;
        }
        if let Some(waker) = self.registered.take() {
            if let Some(python_key) = self.driver.table_key(self.key.raw()) {
                self.driver.completions.unregister(python_key, &waker);
            }
        }
        self.driver.cancel(self.key);
    }
}

impl<K: TaskKey> std::fmt::Debug for TaskFuture<'_, K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskFuture").field("key", &self.key.raw()).field("answered", &self.answered).finish()
    }
}
