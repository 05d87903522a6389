//! How a finished task reaches the Rust thread or future that waits for it, while neither holds
//! the GIL nor the Driver's mutex.
//!
//! py4cc's pool calls a notifier, a C function made callable from Python, whenever a task
//! finishes or is dropped without being retrieved (its result expired). The notifier records
//! it in a [`Completions`] table and wakes whoever waits on that key; the waiter then takes the
//! GIL once, to collect the answer. The table mirrors the keys the pool holds: an entry is made
//! when a task is accepted (or when it finishes, whichever comes first) and removed when its
//! answer has been collected, it was cancelled, or its result expired. So a waiter can tell
//! "not finished" without asking Python at all.
//!
//! Python may drop a key before the submitting thread has recorded it (the task finished and
//! its result expired while that thread waited for the GIL on its way out of `submit`): the
//! table then remembers the drop, and the late `accepted` consumes it instead of making an
//! entry that nothing would ever remove.
//!
//! Lock order: the pool calls the notifier with its own lock (and the GIL) held, and the
//! notifier takes the table's lock; no Rust thread takes the GIL or calls Python while it holds
//! the table's lock, so the order is always GIL, pool lock, table lock.

use std::collections::hash_map::Entry as MapEntry;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, Thread};
use std::time::Instant;

use parking_lot::Mutex;
use pyo3_ffi as ffi;

use crate::callback::{MethodDef, bound_state, fastcall_args};
use crate::error::Result;
#[cfg(test)]
use crate::gil::Gil;
use crate::gil::GilToken;
use crate::object::Object;

/// What a task's entry knows: whether it has finished, and who waits for it.
#[derive(Default)]
struct Entry {
    finished: bool,
    /// The submitting thread has recorded it (it may finish before that).
    accepted: bool,
    waiters: Vec<Waker>,
}

/// The keys the pool holds, whether each has finished, and who waits for which.
#[derive(Default)]
pub(crate) struct Completions {
    table: Mutex<Table>,
}

/// The table behind the lock.
#[derive(Default)]
struct Table {
    keys: HashMap<i64, Entry>,
    /// Keys Python dropped before they were accepted here (see the module's documentation).
    dropped_early: HashSet<i64>,
}

/// `dropped_early` only holds keys on their way out of `submit`; past this many something
/// else put them there (a key dropped that was never going to be accepted), and they go.
const DROPPED_EARLY_LIMIT: usize = 4096;

/// Where a waited-for task stands, as far as the table knows without asking Python.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Standing {
    /// It has not finished: Python would answer "not finished".
    Running,
    /// It finished, or the table does not know the key (never issued, already collected,
    /// cancelled or expired): Python has the answer.
    AskPython,
}

impl Completions {
    /// A task was accepted under `key`.
    pub(crate) fn accepted(&self, key: i64) {
        let mut table = self.table.lock();
        if !table.dropped_early.remove(&key) {
            table.keys.entry(key).or_default().accepted = true;
        }
    }

    /// The pool finished the task under `key`: its answer waits to be collected.
    pub(crate) fn finished(&self, key: i64) {
        let waiters = {
            let mut table = self.table.lock();
            let entry = table.keys.entry(key).or_default();
            entry.finished = true;
            std::mem::take(&mut entry.waiters)
        };
        waiters.into_iter().for_each(Waker::wake);
    }

    /// The pool dropped the task under `key` without anyone collecting it (its result expired,
    /// or it was cancelled): forget it, waking its waiters so that they ask Python what became
    /// of it. A key not accepted yet is remembered, so that its `accepted` makes no entry.
    pub(crate) fn forget(&self, key: i64) {
        let entry = {
            let mut table = self.table.lock();
            let entry = table.keys.remove(&key);
            if !entry.as_ref().is_some_and(|entry| entry.accepted) {
                if table.dropped_early.len() >= DROPPED_EARLY_LIMIT {
                    table.dropped_early.clear();
                }
                table.dropped_early.insert(key);
            }
            entry
        };
        if let Some(entry) = entry {
            entry.waiters.into_iter().for_each(Waker::wake);
        }
    }

    /// The Rust side is done with `key` (its answer collected, or it was cancelled from Rust):
    /// forget it, waking any other waiter so that it asks Python.
    pub(crate) fn collected(&self, key: i64) {
        let entry = self.table.lock().keys.remove(&key);
        if let Some(entry) = entry {
            entry.waiters.into_iter().for_each(Waker::wake);
        }
    }

    /// Where `key` stands now.
    pub(crate) fn standing(&self, key: i64) -> Standing {
        match self.table.lock().keys.get(&key) {
            Some(Entry { finished: false, .. }) => Standing::Running,
            _ => Standing::AskPython,
        }
    }

    /// Blocks the calling thread until `key` no longer stands `Running`, or until `deadline`.
    pub(crate) fn wait(&self, key: i64, deadline: Option<Instant>) -> Standing {
        let waker = Waker::from(Arc::new(Unpark(thread::current())));
        loop {
            if self.register(key, &waker) == Standing::AskPython {
                return Standing::AskPython;
            }
            match deadline {
                None => thread::park(),
                Some(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        self.unregister(key, &waker);
                        return self.standing(key);
                    }
                    thread::park_timeout(deadline - now);
                }
            }
        }
    }

    /// For a future: `Ready` once `key` no longer stands `Running`, else `Pending` with the
    /// context's waker registered.
    pub(crate) fn poll(&self, key: i64, cx: &Context<'_>) -> Poll<()> {
        match self.register(key, cx.waker()) {
            Standing::AskPython => Poll::Ready(()),
            Standing::Running => Poll::Pending,
        }
    }

    /// Registers `waker` on `key` unless the task no longer runs.
    fn register(&self, key: i64, waker: &Waker) -> Standing {
        let mut table = self.table.lock();
        match table.keys.get_mut(&key) {
            Some(entry) if !entry.finished => {
                if !entry.waiters.iter().any(|known| known.will_wake(waker)) {
                    entry.waiters.push(waker.clone());
                }
                Standing::Running
            }
            _ => Standing::AskPython,
        }
    }

    /// Takes `waker` off `key` (a thread that timed out, a future dropped while pending).
    pub(crate) fn unregister(&self, key: i64, waker: &Waker) {
        if let MapEntry::Occupied(mut entry) = self.table.lock().keys.entry(key) {
            entry.get_mut().waiters.retain(|known| !known.will_wake(waker));
        }
    }

    /// How many keys the table holds.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.table.lock().keys.len()
    }

    /// How many keys Python dropped before they were accepted, not accepted yet.
    #[cfg(test)]
    fn dropped_early(&self) -> usize {
        self.table.lock().dropped_early.len()
    }

    /// The notifier to hand to py4cc: a Python callable `notify(key, finished)` that calls
    /// [`finished`](Self::finished) (`finished` true) or [`forget`](Self::forget) (false) on this
    /// table. It keeps the table alive as long as Python keeps the callable.
    pub(crate) fn notifier<'py>(self: &Arc<Self>, gil: GilToken<'py>) -> Result<Object<'py>> {
        NOTIFY_DEF.bind(gil, Arc::clone(self))
    }
}

/// Wakes a parked thread.
struct Unpark(Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

static NOTIFY_DEF: MethodDef<Completions> = MethodDef::fastcall(
    c"notify",
    notify,
    c"notify(key, finished): the task under key finished (True) or is gone (False).",
);

/// `notify(key, finished)`, called by the pool with the GIL held. Never unwinds into C.
unsafe extern "C" fn notify(
    capsule: *mut ffi::PyObject,
    args: *mut *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
) -> *mut ffi::PyObject {
    // SAFETY: GIL held (CPython calls us with it); these are the call's own arguments.
    let Some(&[key, finished]) = (unsafe { fastcall_args(args, nargs, 2, c"notify(key, finished) takes 2 arguments") })
    else {
        return std::ptr::null_mut();
    };
    // SAFETY: GIL held; `key` is borrowed. -1 with an exception set means it is not an int
    // that fits, which the check below reports as it is.
    let key = unsafe { ffi::PyLong_AsLongLong(key) };
    // SAFETY: GIL held; PyErr_Occurred only reads the thread's error indicator.
    if key == -1 && !unsafe { ffi::PyErr_Occurred() }.is_null() {
        return std::ptr::null_mut();
    }
    // SAFETY: GIL held; `finished` is borrowed; -1 means its __bool__ raised (left set).
    let finished = match unsafe { ffi::PyObject_IsTrue(finished) } {
        -1 => return std::ptr::null_mut(),
        truth => truth == 1,
    };
    // SAFETY: GIL held; `capsule` is the `self` of a function bound by NOTIFY_DEF, a
    // MethodDef<Completions>; the borrow ends with the call.
    let Some(table) = (unsafe { bound_state::<Completions>(capsule) }) else {
        return std::ptr::null_mut();
    };
    // A waker is foreign code (an executor's): it must not unwind into CPython.
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        if finished {
            table.finished(key);
        } else {
            table.forget(key);
        }
    }));
    if outcome.is_err() {
        // SAFETY: GIL held; reads a static exception type.
        let system_error = unsafe { ffi::PyExc_SystemError };
        // SAFETY: GIL held; SystemError is an exception type.
        return unsafe { crate::exception::raise(system_error, c"rs4py: a task's waker panicked") };
    }
    // SAFETY: GIL held; None goes back to CPython as the new reference it expects.
    unsafe { crate::object::new_none_reference() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    struct CountWakes(AtomicUsize);

    impl Wake for CountWakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_waiting_thread_is_woken_by_the_finish() {
        let table = Arc::new(Completions::default());
        table.accepted(7);
        assert_eq!(table.standing(7), Standing::Running);
        let waiter = {
            let table = Arc::clone(&table);
            thread::spawn(move || table.wait(7, Some(Instant::now() + Duration::from_secs(30))))
        };
        thread::sleep(Duration::from_millis(20));
        table.finished(7);
        assert_eq!(waiter.join().unwrap(), Standing::AskPython);
        assert_eq!(table.standing(7), Standing::AskPython);
        table.forget(7);
        assert_eq!(table.len(), 0);
    }

    #[test]
    fn a_wait_times_out_and_leaves_no_waiter_behind() {
        let table = Completions::default();
        table.accepted(1);
        let started = Instant::now();
        assert_eq!(table.wait(1, Some(started + Duration::from_millis(30))), Standing::Running);
        assert!(started.elapsed() >= Duration::from_millis(30));
        assert!(table.table.lock().keys[&1].waiters.is_empty());
        assert_eq!(table.wait(1, Some(Instant::now())), Standing::Running, "a past deadline answers at once");
    }

    #[test]
    fn unknown_finished_and_forgotten_keys_send_the_waiter_to_python() {
        let table = Completions::default();
        assert_eq!(table.wait(99, None), Standing::AskPython, "never issued");
        table.finished(5); // before the submitter recorded it
        table.accepted(5); // must not undo the finish
        assert_eq!(table.standing(5), Standing::AskPython);
        table.accepted(6);
        table.forget(6);
        assert_eq!(table.wait(6, None), Standing::AskPython, "expired or cancelled");
        assert_eq!(table.dropped_early(), 0, "6 was known: nothing to remember");
    }

    #[test]
    fn a_key_dropped_before_it_was_accepted_makes_no_entry() {
        let table = Completions::default();
        table.finished(8); // finished, then expired, before its submitter recorded it
        table.forget(8);
        table.forget(9); // expired without a finish seen (cannot happen, but harmless)
        assert_eq!((table.len(), table.dropped_early()), (0, 2));
        table.accepted(8);
        assert_eq!((table.len(), table.dropped_early()), (0, 1), "consumed, no entry made");
        assert_eq!(table.standing(8), Standing::AskPython);
        table.accepted(10);
        table.collected(10);
        table.collected(10);
        assert_eq!((table.len(), table.dropped_early()), (0, 1), "the Rust side's own removal leaves no mark");
        for key in 100..100 + DROPPED_EARLY_LIMIT as i64 {
            table.forget(key);
        }
        assert!(table.dropped_early() <= DROPPED_EARLY_LIMIT, "bounded");
    }

    #[test]
    fn a_future_is_woken_once_per_registration_and_can_leave() {
        let table = Completions::default();
        table.accepted(3);
        let counter = Arc::new(CountWakes(AtomicUsize::new(0)));
        let waker = Waker::from(Arc::clone(&counter));
        let cx = Context::from_waker(&waker);
        assert_eq!(table.poll(3, &cx), Poll::Pending);
        assert_eq!(table.poll(3, &cx), Poll::Pending, "polled twice, registered once");
        assert_eq!(table.table.lock().keys[&3].waiters.len(), 1);
        table.unregister(3, &waker);
        table.finished(3);
        assert_eq!(counter.0.load(Ordering::SeqCst), 0, "an unregistered waker is not woken");
        assert_eq!(table.poll(3, &cx), Poll::Ready(()));

        table.accepted(4);
        assert_eq!(table.poll(4, &cx), Poll::Pending);
        table.forget(4);
        assert_eq!(counter.0.load(Ordering::SeqCst), 1);
        assert_eq!(table.poll(4, &cx), Poll::Ready(()));
        // A simple future over the table resolves on an executor-free poll loop too.
        struct Finished<'a>(&'a Completions, i64);
        impl Future for Finished<'_> {
            type Output = ();
            fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
                self.0.poll(self.1, cx)
            }
        }
        let mut future = std::pin::pin!(Finished(&table, 3));
        assert_eq!(future.as_mut().poll(&mut Context::from_waker(&waker)), Poll::Ready(()));
    }

    #[test]
    fn python_calls_the_notifier() -> Result<()> {
        let table = Arc::new(Completions::default());
        table.accepted(11);
        table.accepted(12);
        let gil = Gil::acquire()?;
        let notify = table.notifier(gil.token())?;
        assert_eq!(Arc::strong_count(&table), 2, "the capsule holds the table");
        assert!(notify.call((11, true), ())?.is_none());
        notify.call((12, false), ())?;
        assert_eq!(table.standing(11), Standing::AskPython);
        assert_eq!(table.len(), 1, "12 is forgotten, 11 waits to be collected");
        let wrong = notify.call((11,), ()).unwrap_err();
        assert_eq!(wrong.python_type(), Some("TypeError"));
        let not_int = notify.call(("x", true), ()).unwrap_err();
        assert_eq!(not_int.python_type(), Some("TypeError"));
        let huge = gil.eval("2**70")?;
        assert_eq!(notify.call((huge, true), ()).unwrap_err().python_type(), Some("OverflowError"));
        drop(notify);
        assert_eq!(Arc::strong_count(&table), 1, "freeing the function frees the capsule's count");
        Ok(())
    }
}
