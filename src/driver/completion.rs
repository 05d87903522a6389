//! How a finished task's answer reaches the Rust thread or future that waits for it, while
//! neither holds the GIL nor the Driver's mutex.
//!
//! The local pool's answers are read from the workers' pipes by the host itself, without the
//! GIL, and land here at once (`deliver_read`, see `pipes.rs`); py4cc takes those tasks off
//! its book later (`settle`), and until then `host_held()` leaves them out, so that each task
//! counts once. The others (the Ray backend's, and every failure py4cc decides: a death, a
//! timeout, a stop) py4cc hands over in batches: whenever its backend has announced tasks as
//! finished, it calls `deliver(answers)`, a C
//! function made callable from Python, with every answer since the last call, and forgets
//! those tasks. The answers land in a [`Completions`] table as plain Rust data (no Python
//! reference): a demo task's `(flag, i64, message)`, a general task's pickled bytes. A waiter
//! reads its answer from the table without the GIL (a general task's caller takes it once, to
//! unpickle and convert). So the table holds every task the host has been given and not
//! collected: an entry is made when a task is accepted (or when its answer comes, whichever
//! comes first) and removed when its answer is collected, it is cancelled, or its answer
//! expires (`result_ttl`, counted from delivery; expiry is checked whenever the table is used,
//! and py4cc's admission asks `host_held()` each time, so capacity never waits for a timer).
//!
//! py4cc's `max_tasks` counts finished answers not collected too: those live here, so py4cc's
//! admission adds `host_held()` (a C function: the number of answers in this table) to what
//! its own book holds. Keys the table dropped itself (cancelled or expired here) are
//! remembered, so that collecting one says why it is gone.
//!
//! Python may drop a key the host never recorded (the keys-exhausted path cancels it): the
//! notifier `notify(key, False)` then remembers the drop, and the late `accepted` consumes it
//! instead of making an entry that nothing would ever remove.
//!
//! Lock order: py4cc calls `deliver` and `host_held` with its own lock (and the GIL) held, and
//! they take the table's lock; no Rust thread takes the GIL or calls Python while it holds
//! the table's lock, so the order is always GIL, pool lock, table lock.

use std::collections::hash_map::Entry as MapEntry;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use pyo3_ffi as ffi;

use crate::Bytes;
use crate::callback::{MethodDef, bound_state, fastcall_args, truth_argument};
use crate::error::Result;
use crate::gil::{Gil, GilToken};
use crate::object::Object;

/// A task's answer as py4cc delivered it: plain data, no Python object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Answer {
    /// The protocol's result flag.
    pub(crate) flag: i64,
    pub(crate) value: AnswerValue,
    /// The traceback or cause of a failure; empty otherwise.
    pub(crate) message: String,
}

/// The value of a delivered answer (crate-private: its module is not exported).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnswerValue {
    /// A demo task's value.
    Int(i64),
    /// A pickled value: a general task's answer (or a demo value outside the i64 range).
    Pickled(Vec<u8>),
    /// None: a general task that failed.
    Nothing,
}

/// Why the table dropped a key before its answer was collected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Gone {
    Cancelled,
    Expired,
}

/// What the table knows of a key, for a caller collecting it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Lookup {
    /// Accepted, not answered yet.
    Running,
    /// Its answer, now taken out of the table.
    Answered(Answer),
    /// Dropped here (cancelled or expired).
    Gone(Gone),
    /// Never heard of (never issued, collected already, or dropped by py4cc): py4cc says why.
    Unknown,
}

/// Where a waited-for task stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Standing {
    /// It has not been answered yet.
    Running,
    /// Its answer is in the table, or the table does not know the key: collect it.
    Settled,
}

/// What a task's entry knows: its answer once delivered, and who waits for it.
#[derive(Default)]
struct Entry {
    answer: Option<Answer>,
    /// The submitting thread has recorded it (it may be answered before that).
    accepted: bool,
    /// Its answer was read from a worker's pipe by the host (`deliver_read`), and py4cc's
    /// book still holds the task until it settles it: not counted by `host_held`.
    unsettled: bool,
    waiters: Vec<Waker>,
}

/// The tasks the host holds, their answers, and who waits for which.
pub(crate) struct Completions {
    table: Mutex<Table>,
    /// How long a delivered answer is kept (`result_ttl`); None: until collected.
    ttl: Option<Duration>,
}

impl Default for Completions {
    fn default() -> Self {
        Completions::new(None)
    }
}

/// The table behind the lock.
#[derive(Default)]
struct Table {
    keys: HashMap<i64, Entry>,
    /// How many entries hold an answer.
    answered: usize,
    /// How many of those py4cc has not settled yet (its book still counts them): `host_held()`
    /// is `answered - unsettled`.
    unsettled: usize,
    /// Keys py4cc dropped while a worker ran them (cancelled): their answer, read from the
    /// pipe later, is discarded. The latest [`GONE_MEMORY`] of them.
    discard: HashSet<i64>,
    discard_order: VecDeque<i64>,
    /// When each delivered answer expires, oldest first (some collected already).
    expiry: VecDeque<(Instant, i64)>,
    /// False once the driver is finalized: answers then stay until collected.
    expiring: bool,
    /// Keys dropped here, with why, the latest [`GONE_MEMORY`] of them.
    gone: HashMap<i64, Gone>,
    gone_order: VecDeque<i64>,
    cancelled: u64,
    expired: u64,
    /// Keys Python dropped before they were accepted here (see the module's documentation).
    dropped_early: HashSet<i64>,
}

/// `dropped_early` only holds keys on their way out of `submit`; past this many something
/// else put them there (a key dropped that was never going to be accepted), and they go.
const DROPPED_EARLY_LIMIT: usize = 4096;

/// How many dropped keys are remembered, so that collecting one says why it is gone (as
/// py4cc's own memory of them).
const GONE_MEMORY: usize = 10_000;

impl Table {
    /// Drops the answers whose `result_ttl` has run out by `now`.
    fn expire(&mut self, now: Instant) {
        if !self.expiring {
            return;
        }
        while let Some(&(when, key)) = self.expiry.front() {
            if when > now {
                return;
            }
            self.expiry.pop_front();
            if self.remove_answered(key).is_some() {
                self.expired += 1;
                self.remember(key, Gone::Expired);
            }
        }
    }

    fn remember(&mut self, key: i64, why: Gone) {
        if self.gone.insert(key, why).is_none() {
            self.gone_order.push_back(key);
        }
        while self.gone_order.len() > GONE_MEMORY {
            if let Some(old) = self.gone_order.pop_front() {
                self.gone.remove(&old);
            }
        }
    }

    /// Removes `key`'s entry if it holds an answer, keeping the counts right.
    fn remove_answered(&mut self, key: i64) -> Option<Entry> {
        if self.keys.get(&key).is_none_or(|entry| entry.answer.is_none()) {
            return None;
        }
        let entry = self.keys.remove(&key)?;
        self.answered -= 1;
        if entry.unsettled {
            self.unsettled -= 1;
        }
        Some(entry)
    }

    /// Removes `key`'s entry if it holds an answer: cancelled here.
    fn cancel_answered(&mut self, key: i64) -> Option<Entry> {
        let entry = self.remove_answered(key)?;
        self.cancelled += 1;
        self.remember(key, Gone::Cancelled);
        Some(entry)
    }

    /// A late answer to `key` is to be discarded (py4cc dropped the task while it ran).
    fn discard_later(&mut self, key: i64) {
        if self.discard.insert(key) {
            self.discard_order.push_back(key);
        }
        while self.discard_order.len() > GONE_MEMORY {
            if let Some(old) = self.discard_order.pop_front() {
                self.discard.remove(&old);
            }
        }
    }
}

impl Completions {
    /// A table whose delivered answers expire `ttl` after delivery (None: never).
    pub(crate) fn new(ttl: Option<Duration>) -> Self {
        Completions { table: Mutex::new(Table { expiring: true, ..Table::default() }), ttl }
    }

    /// A task was accepted under `key`.
    pub(crate) fn accepted(&self, key: i64) {
        let mut table = self.table.lock();
        if !table.dropped_early.remove(&key) {
            table.keys.entry(key).or_default().accepted = true;
        }
    }

    /// py4cc hands over these answers: each goes into its key's entry, and its waiters are
    /// woken (after the lock is let go). A key answered already keeps its first answer.
    pub(crate) fn deliver(&self, answers: Vec<(i64, Answer)>) {
        self.deliver_from(answers, false).into_iter().for_each(Waker::wake);
    }

    /// The host read these answers from the workers' pipes itself (see `pipes.rs`): as
    /// [`deliver`](Self::deliver), but py4cc's book still holds the tasks until it
    /// [`settle`](Self::settle)s them, and the answer of a task py4cc dropped while it ran is
    /// discarded. Returns the waiters to wake, for the caller to wake once it has noted the
    /// answers for py4cc (a woken caller may ask py4cc's stats at once).
    #[must_use]
    pub(crate) fn deliver_read(&self, answers: Vec<(i64, Answer)>) -> Vec<Waker> {
        self.deliver_from(answers, true)
    }

    fn deliver_from(&self, answers: Vec<(i64, Answer)>, read: bool) -> Vec<Waker> {
        let now = Instant::now();
        let mut woken = Vec::new();
        {
            let mut table = self.table.lock();
            table.expire(now);
            for (key, answer) in answers {
                if read && table.discard.remove(&key) {
                    continue;
                }
                let entry = table.keys.entry(key).or_default();
                if entry.answer.is_some() {
                    continue;
                }
                entry.answer = Some(answer);
                entry.unsettled = read;
                woken.append(&mut entry.waiters);
                table.answered += 1;
                table.unsettled += usize::from(read);
                if let Some(ttl) = self.ttl {
                    table.expiry.push_back((now + ttl, key));
                }
            }
        }
        woken
    }

    /// py4cc has taken these keys, read by the host, off its book: `host_held` counts their
    /// answers from now on (those still in the table).
    pub(crate) fn settle(&self, keys: impl IntoIterator<Item = i64>) {
        let mut table = self.table.lock();
        for key in keys {
            if let Some(entry) = table.keys.get_mut(&key).filter(|entry| entry.unsettled) {
                entry.unsettled = false;
                table.unsettled -= 1;
            }
        }
    }

    /// py4cc dropped the task under `key`, which the host holds no answer for (it was
    /// cancelled): forget it, waking its waiters so that they ask py4cc what became of it. A
    /// key not accepted yet is remembered, so that its `accepted` makes no entry.
    pub(crate) fn forget(&self, key: i64) {
        let entry = {
            let mut table = self.table.lock();
            if table.keys.get(&key).is_some_and(|entry| entry.answer.is_some()) {
                return; // answered: py4cc no longer has it, whatever it says
            }
            let entry = table.keys.remove(&key);
            // Its worker may still answer it: the host, which reads the pipes, drops that.
            table.discard_later(key);
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

    /// Takes `key`'s answer out of the table if it is there; else says where the key stands.
    /// Another waiter on the key is woken, and then finds it unknown.
    pub(crate) fn take(&self, key: i64) -> Lookup {
        let (lookup, entry) = {
            let mut table = self.table.lock();
            table.expire(Instant::now());
            match table.keys.get(&key) {
                Some(Entry { answer: None, .. }) => return Lookup::Running,
                Some(_) => {
                    let mut entry = table.remove_answered(key);
                    let answer = entry.as_mut().and_then(|entry| entry.answer.take());
                    (answer.map_or(Lookup::Unknown, Lookup::Answered), entry)
                }
                None => (table.gone.get(&key).map_or(Lookup::Unknown, |why| Lookup::Gone(*why)), None),
            }
        };
        if let Some(entry) = entry {
            entry.waiters.into_iter().for_each(Waker::wake);
        }
        lookup
    }

    /// Cancels `key` here if its answer is in the table (py4cc no longer holds it); whether
    /// it was.
    pub(crate) fn cancel_answered(&self, key: i64) -> bool {
        let entry = {
            let mut table = self.table.lock();
            table.expire(Instant::now());
            table.cancel_answered(key)
        };
        entry.map(|entry| entry.waiters.into_iter().for_each(Waker::wake)).is_some()
    }

    /// py4cc has been asked to cancel `key` and answered `found`: if its answer came
    /// meanwhile, it is cancelled here; else the key is forgotten. Whether the task was held.
    pub(crate) fn cancelled(&self, key: i64, found: bool) -> bool {
        let (held, entry) = {
            let mut table = self.table.lock();
            match table.cancel_answered(key) {
                Some(entry) => (true, Some(entry)),
                None => (found, table.keys.remove(&key)),
            }
        };
        if let Some(entry) = entry {
            entry.waiters.into_iter().for_each(Waker::wake);
        }
        held
    }

    /// How many answers the table holds (delivered, not collected, cancelled or expired),
    /// less those py4cc's book still counts (read from a pipe, not settled): what py4cc's
    /// admission counts beside its own book.
    pub(crate) fn held(&self) -> usize {
        let mut table = self.table.lock();
        table.expire(Instant::now());
        table.answered - table.unsettled
    }

    /// How many answers the table dropped: cancelled and expired.
    pub(crate) fn dropped(&self) -> (u64, u64) {
        let table = self.table.lock();
        (table.cancelled, table.expired)
    }

    /// The driver is finalized: answers are kept until collected from now on, as py4cc
    /// keeps its own after a stop.
    pub(crate) fn stop_expiring(&self) {
        self.table.lock().expiring = false;
    }

    /// Where `key` stands now.
    pub(crate) fn standing(&self, key: i64) -> Standing {
        match self.table.lock().keys.get(&key) {
            Some(Entry { answer: None, .. }) => Standing::Running,
            _ => Standing::Settled,
        }
    }

    /// Blocks the calling thread until `key` no longer stands `Running`, or until `deadline`.
    pub(crate) fn wait(&self, key: i64, deadline: Option<Instant>) -> Standing {
        let waker = Waker::from(Arc::new(Unpark(thread::current())));
        loop {
            if self.register(key, &waker) == Standing::Settled {
                return Standing::Settled;
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
            Standing::Settled => Poll::Ready(()),
            Standing::Running => Poll::Pending,
        }
    }

    /// Registers `waker` on `key` unless the task has been answered (or is unknown).
    fn register(&self, key: i64, waker: &Waker) -> Standing {
        let mut table = self.table.lock();
        match table.keys.get_mut(&key) {
            Some(entry) if entry.answer.is_none() => {
                if !entry.waiters.iter().any(|known| known.will_wake(waker)) {
                    entry.waiters.push(waker.clone());
                }
                Standing::Running
            }
            _ => Standing::Settled,
        }
    }

    /// Takes `waker` off `key` (a thread that timed out, a future dropped while pending).
    pub(crate) fn unregister(&self, key: i64, waker: &Waker) {
        if let MapEntry::Occupied(mut entry) = self.table.lock().keys.entry(key) {
            entry.get_mut().waiters.retain(|known| !known.will_wake(waker));
        }
    }

    /// How many keys the table holds (expired answers dropped first).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        let mut table = self.table.lock();
        table.expire(Instant::now());
        table.keys.len()
    }

    /// How many keys Python dropped before they were accepted, not accepted yet.
    #[cfg(test)]
    fn dropped_early(&self) -> usize {
        self.table.lock().dropped_early.len()
    }

    /// The three functions to hand to py4cc, keeping the table alive as long as Python keeps
    /// them: `notify(key, finished)` ([`forget`](Self::forget) when `finished` is false;
    /// finishes come through `deliver`), `deliver(answers)` ([`deliver`](Self::deliver)) and
    /// `host_held()` ([`held`](Self::held)).
    pub(crate) fn functions<'py>(self: &Arc<Self>, gil: GilToken<'py>) -> Result<HostFunctions<'py>> {
        Ok(HostFunctions {
            notify: NOTIFY_DEF.bind(gil, Arc::clone(self))?,
            deliver: DELIVER_DEF.bind(gil, Arc::clone(self))?,
            held: HELD_DEF.bind(gil, Arc::clone(self))?,
        })
    }
}

/// The table's functions for py4cc (see [`Completions::functions`]).
pub(crate) struct HostFunctions<'py> {
    pub(crate) notify: Object<'py>,
    pub(crate) deliver: Object<'py>,
    pub(crate) held: Object<'py>,
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
    c"notify(key, finished): the task under key is gone (False); a finish (True) comes through deliver.",
);

static DELIVER_DEF: MethodDef<Completions> = MethodDef::fastcall(
    c"deliver",
    deliver,
    c"deliver(answers): [(key, flag, value, message)], value an int, None or pickled bytes.",
);

static HELD_DEF: MethodDef<Completions> =
    MethodDef::fastcall(c"host_held", host_held, c"host_held(): how many delivered answers the host holds.");

/// Raises `exception` with `text` (GIL held); NULL, for the C function to return.
fn raise_text(exception: *mut ffi::PyObject, text: &str) -> *mut ffi::PyObject {
    let text = std::ffi::CString::new(text.replace('\0', " ")).unwrap_or_default();
    // SAFETY: GIL held (every caller is a C function CPython called); `exception` is an
    // exception type read from a static.
    unsafe { crate::exception::raise(exception, &text) }
}

/// Runs `wake` (which calls wakers: foreign code) so that a panic does not unwind into
/// CPython; NULL with a SystemError set if it panicked, else a new reference to None.
fn without_unwinding(wake: impl FnOnce()) -> *mut ffi::PyObject {
    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(wake)).is_err() {
        // SAFETY: GIL held (as above); reads a static exception type.
        return raise_text(unsafe { ffi::PyExc_SystemError }, "rs4py: a task's waker panicked");
    }
    // SAFETY: GIL held; None goes back to CPython as the new reference it expects.
    unsafe { crate::object::new_none_reference() }
}

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
    // SAFETY: GIL held; `finished` is borrowed.
    let Some(finished) = (unsafe { truth_argument(finished) }) else {
        return std::ptr::null_mut();
    };
    // SAFETY: GIL held; `capsule` is the `self` of a function bound by NOTIFY_DEF, a
    // MethodDef<Completions>; the borrow ends with the call.
    let Some(table) = (unsafe { bound_state::<Completions>(capsule) }) else {
        return std::ptr::null_mut();
    };
    without_unwinding(|| {
        if !finished {
            table.forget(key);
        }
    })
}

/// `deliver(answers)`, called by the pool with the GIL held (and its lock): reads every
/// answer first, so that a malformed one delivers none (a TypeError or ValueError says
/// which). Never unwinds into C.
unsafe extern "C" fn deliver(
    capsule: *mut ffi::PyObject,
    args: *mut *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
) -> *mut ffi::PyObject {
    // CPython holds the GIL while it calls a C function: this only counts a guard.
    let gil = Gil::acquire_started();
    // SAFETY: GIL held (CPython calls us with it); these are the call's own arguments.
    let Some(&[answers]) = (unsafe { fastcall_args(args, nargs, 1, c"deliver(answers) takes 1 argument") }) else {
        return std::ptr::null_mut();
    };
    // SAFETY: GIL held; `capsule` is the `self` of a function bound by DELIVER_DEF, a
    // MethodDef<Completions>; the borrow ends with the call.
    let Some(table) = (unsafe { bound_state::<Completions>(capsule) }) else {
        return std::ptr::null_mut();
    };
    // SAFETY: GIL held (gil); `answers` is a live borrowed reference for the call.
    let read = unsafe { Object::from_borrowed_ptr(gil.token(), answers) }.and_then(|answers| read_answers(&answers));
    match read {
        Ok(answers) => without_unwinding(|| table.deliver(answers)),
        // SAFETY: GIL held; reads a static exception type.
        Err(error) => raise_text(unsafe { ffi::PyExc_TypeError }, &format!("deliver: {error}")),
    }
}

/// The answers of a `deliver` call: a sequence of `(key, flag, value, message)`.
fn read_answers(answers: &Object<'_>) -> Result<Vec<(i64, Answer)>> {
    let items: Vec<(i64, i64, Object<'_>, String)> = answers.extract()?;
    items
        .into_iter()
        .map(|(key, flag, value, message)| {
            let value = if value.is_none() {
                AnswerValue::Nothing
            } else if let Ok(number) = value.extract::<i64>() {
                AnswerValue::Int(number)
            } else {
                let Bytes(bytes) = value.extract::<Bytes>().map_err(|_| {
                    crate::Error::Conversion(format!(
                        "the value of task {key}'s answer is a {}, not an int in the i64 range, None or bytes",
                        value.type_name()
                    ))
                })?;
                AnswerValue::Pickled(bytes)
            };
            Ok((key, Answer { flag, value, message }))
        })
        .collect()
}

/// `host_held()`, called by the pool with the GIL held (and its lock). Never unwinds into C.
unsafe extern "C" fn host_held(
    capsule: *mut ffi::PyObject,
    args: *mut *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
) -> *mut ffi::PyObject {
    // SAFETY: GIL held (CPython calls us with it); these are the call's own arguments.
    if unsafe { fastcall_args(args, nargs, 0, c"host_held() takes no arguments") }.is_none() {
        return std::ptr::null_mut();
    }
    // SAFETY: GIL held; `capsule` is the `self` of a function bound by HELD_DEF, a
    // MethodDef<Completions>; the borrow ends with the call.
    let Some(table) = (unsafe { bound_state::<Completions>(capsule) }) else {
        return std::ptr::null_mut();
    };
    let held = table.held();
    // SAFETY: GIL held; a new reference (or NULL with an exception set) for CPython.
    unsafe { ffi::PyLong_FromSize_t(held) }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A waker's state that counts its wakes.
    #[derive(Default)]
    pub(crate) struct CountWakes(pub(crate) AtomicUsize);

    impl Wake for CountWakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn answer(value: i64) -> Answer {
        Answer { flag: 0, value: AnswerValue::Int(value), message: String::new() }
    }

    #[test]
    fn a_waiting_thread_is_woken_by_the_delivery_and_takes_the_answer() {
        let table = Arc::new(Completions::default());
        table.accepted(7);
        assert_eq!(table.take(7), Lookup::Running);
        let waiter = {
            let table = Arc::clone(&table);
            thread::spawn(move || table.wait(7, Some(Instant::now() + Duration::from_secs(30))))
        };
        thread::sleep(Duration::from_millis(20));
        table.deliver(vec![(7, answer(42)), (8, answer(43))]);
        assert_eq!(waiter.join().unwrap(), Standing::Settled);
        assert_eq!(table.held(), 2, "8 was delivered before its submitter recorded it");
        assert_eq!(table.take(7), Lookup::Answered(answer(42)));
        assert_eq!(table.take(7), Lookup::Unknown, "taken once");
        table.accepted(8); // late: must not undo the answer
        assert_eq!(table.take(8), Lookup::Answered(answer(43)));
        assert_eq!((table.held(), table.len()), (0, 0));
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
        assert_eq!(table.wait(99, None), Standing::Settled, "never issued: collect says so");
    }

    #[test]
    fn answers_expire_after_the_ttl_unless_finalized() {
        let table = Completions::new(Some(Duration::from_millis(40)));
        table.accepted(1);
        table.accepted(2);
        table.deliver(vec![(1, answer(1)), (2, answer(2))]);
        assert_eq!(table.take(2), Lookup::Answered(answer(2)));
        assert_eq!(table.held(), 1);
        thread::sleep(Duration::from_millis(60));
        assert_eq!(table.held(), 0, "expired");
        assert_eq!(table.take(1), Lookup::Gone(Gone::Expired));
        assert_eq!(table.take(2), Lookup::Unknown, "collected, not expired");
        assert_eq!(table.dropped(), (0, 1));
        table.stop_expiring();
        table.deliver(vec![(3, answer(3))]);
        thread::sleep(Duration::from_millis(60));
        assert_eq!(table.take(3), Lookup::Answered(answer(3)), "kept after finalize");
    }

    #[test]
    fn cancelling_an_answered_task_is_the_tables_alone() {
        let table = Completions::default();
        table.accepted(5);
        assert!(!table.cancel_answered(5), "running: py4cc must cancel it");
        assert!(table.cancelled(5, true), "py4cc held it");
        assert_eq!(table.take(5), Lookup::Unknown, "py4cc says it was cancelled");
        table.accepted(6);
        table.deliver(vec![(6, answer(6))]);
        assert!(table.cancel_answered(6));
        assert_eq!(table.take(6), Lookup::Gone(Gone::Cancelled));
        table.accepted(9);
        table.deliver(vec![(9, answer(9))]); // while py4cc was asked to cancel it
        assert!(table.cancelled(9, false), "answered meanwhile: cancelled here");
        assert_eq!((table.held(), table.len(), table.dropped()), (0, 0, (2, 0)));
    }

    #[test]
    fn a_key_dropped_before_it_was_accepted_makes_no_entry() {
        let table = Completions::default();
        table.forget(8);
        assert_eq!((table.len(), table.dropped_early()), (0, 1));
        table.accepted(8);
        assert_eq!((table.len(), table.dropped_early()), (0, 0), "consumed, no entry made");
        table.deliver(vec![(10, answer(10))]);
        table.forget(10);
        assert_eq!(table.take(10), Lookup::Answered(answer(10)), "an answer outlives py4cc's forgetting");
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
        table.deliver(vec![(3, answer(3))]);
        assert_eq!(counter.0.load(Ordering::SeqCst), 0, "an unregistered waker is not woken");
        assert_eq!(table.poll(3, &cx), Poll::Ready(()));
        table.accepted(4);
        assert_eq!(table.poll(4, &cx), Poll::Pending);
        table.deliver(vec![(4, answer(4))]);
        assert_eq!(counter.0.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn python_calls_the_functions() -> Result<()> {
        let table = Arc::new(Completions::default());
        table.accepted(11);
        table.accepted(12);
        let gil = Gil::acquire()?;
        let host = table.functions(gil.token())?;
        assert_eq!(Arc::strong_count(&table), 4, "each capsule holds the table");
        let answers = gil.eval("[(11, 0, 5, ''), (12, 2, None, 'Traceback: x'), (13, 0, b'\\x80\\x04K\\x07.', '')]")?;
        assert!(host.deliver.call((answers,), ())?.is_none());
        assert_eq!(host.held.call((), ())?.extract::<usize>()?, 3);
        assert_eq!(table.take(11), Lookup::Answered(answer(5)));
        let failed = Answer { flag: 2, value: AnswerValue::Nothing, message: "Traceback: x".into() };
        assert_eq!(table.take(12), Lookup::Answered(failed));
        let pickled =
            Answer { flag: 0, value: AnswerValue::Pickled(b"\x80\x04K\x07.".to_vec()), message: String::new() };
        assert_eq!(table.take(13), Lookup::Answered(pickled));
        let wrong = host.deliver.call((gil.eval("[(1, 0, 2.5, '')]")?,), ()).unwrap_err();
        assert_eq!(wrong.python_type(), Some("TypeError"));
        assert!(wrong.to_string().contains("is a float, not an int in the i64 range, None or bytes"), "{wrong}");
        let short = host.deliver.call((gil.eval("[(1, 0, 2)]")?,), ()).unwrap_err();
        assert_eq!(short.python_type(), Some("TypeError"));
        assert_eq!(table.len(), 0, "a malformed batch delivers nothing");
        assert_eq!(host.held.call((1,), ()).unwrap_err().python_type(), Some("TypeError"));
        table.accepted(14);
        host.notify.call((14, false), ())?;
        assert_eq!(table.take(14), Lookup::Unknown, "forgotten");
        assert_eq!(host.notify.call(("x", true), ()).unwrap_err().python_type(), Some("TypeError"));
        drop(host);
        assert_eq!(Arc::strong_count(&table), 1, "freeing the functions frees the capsules' counts");
        Ok(())
    }
}
