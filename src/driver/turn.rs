//! The dispatcher's turn for the GIL.
//!
//! py4cc's dispatcher thread blocks in `poll` with the GIL released, and must take the GIL
//! back to hand each answer on. CPython's GIL is not fair: a thread that releases it wakes one
//! waiter, but a thread already running takes it first if it asks first, and a waiter asks to
//! be let in by force only after a whole switch interval (5 ms) without any switch at all. With
//! many Rust threads calling in one after another, the GIL changes hands all the time, so the
//! dispatcher can wait for many calls while the answers (and the workers that wait for their
//! next task) pile up.
//!
//! So the Rust Driver waits on the workers' pipes for the dispatcher: py4cc calls
//! [`DispatcherTurn::wait_readable`]'s C function instead of `select.poll`; when `poll`
//! returns, it marks the dispatcher's turn before it takes the GIL back, and a Rust thread
//! about to take the GIL for a Driver call lets the dispatcher go first.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use pyo3_ffi as ffi;

use super::pipes::{PipeReader, fd_argument};
use crate::callback::{MethodDef, bound_state, fastcall_args, truth_argument};
use crate::error::Result;
use crate::exception::raise;
use crate::gil::GilToken;
use crate::object::Object;

/// The longest a Driver call waits for the dispatcher's turn; far longer than taking the GIL
/// takes after any one call into Python.
const PATIENCE: Duration = Duration::from_millis(20);

/// Whether the dispatcher is taking the GIL back, and who waits for it to have done so; and
/// what reads the workers' pipes while it waits (see `pipes.rs`).
pub(crate) struct DispatcherTurn {
    taking_gil: Mutex<bool>,
    taken: Condvar,
    reader: Arc<PipeReader>,
}

impl Default for DispatcherTurn {
    fn default() -> Self {
        DispatcherTurn::new(Arc::new(PipeReader::new(Arc::default())))
    }
}

impl DispatcherTurn {
    /// A turn whose `wait_readable` reads pipes with `reader`.
    pub(crate) fn new(reader: Arc<PipeReader>) -> Self {
        DispatcherTurn { taking_gil: Mutex::new(false), taken: Condvar::new(), reader }
    }

    /// Returns once the dispatcher is not waiting for the GIL (at once, nearly always), or
    /// after [`PATIENCE`] at most: politeness, never a dependency (a dispatcher that never got
    /// the GIL back, in an interpreter shutting down, must not stop the Driver's callers). The
    /// caller must not hold the GIL.
    pub(crate) fn let_dispatcher_go_first(&self) {
        self.let_dispatcher_go_first_within(PATIENCE);
    }

    fn let_dispatcher_go_first_within(&self, patience: Duration) {
        let mut taking = self.taking_gil.lock();
        if !*taking {
            return;
        }
        let deadline = Instant::now() + patience;
        while *taking && !self.taken.wait_until(&mut taking, deadline).timed_out() {}
    }

    /// Wakes the waiters whose answers were read while py4cc had tasks to send (it wakes them
    /// itself when it next waits); for a dispatcher that will not wait again (finalized).
    pub(crate) fn wake_deferred(&self) {
        self.reader.wake_deferred();
    }

    /// The C function to hand to py4cc as its dispatcher's `wait_readable(fds, timeout_ms)`.
    pub(crate) fn function<'py>(self: &Arc<Self>, gil: GilToken<'py>) -> Result<Object<'py>> {
        WAIT_DEF.bind(gil, Arc::clone(self))
    }
}

static WAIT_DEF: MethodDef<DispatcherTurn> = MethodDef::fastcall(
    c"wait_readable",
    wait_readable,
    c"wait_readable(fds, timeout_ms[, write_fds[, pipes, eager[, hold_wakes]]]): poll(2) fds for input, write_fds \
      for output, the GIL released, reading the workers' pipes itself; [(fd, revents)].",
);

/// `wait_readable(fds, timeout_ms[, write_fds[, pipes, eager[, hold_wakes]]])`: `poll(2)` on `fds` (a
/// sequence of ints) for input, and on `write_fds` for output (the pool's pipes with bytes
/// waiting to go), up to `timeout_ms` (a number, or None for no limit), with the GIL
/// released; answers the ready ones as a list of `(fd, revents)`, as `select.poll().poll`
/// does. Marks the dispatcher's turn while it takes the GIL back. Never unwinds into C.
///
/// `pipes` (some of `fds`: the workers' pipes) are read here, by the turn's [`PipeReader`]:
/// a pipe is in the answer only if something there waits for py4cc (`take(fd)`). When only
/// answers came, it returns at once if `eager` is true (py4cc has work to do on them: tasks
/// wait for a worker), else it waits on: the answers are settled by py4cc later. With
/// `hold_wakes` true (py4cc batches), the waiters of the answers read while `eager` are woken
/// when it is next called: after py4cc has sent the workers their next batches, which the
/// woken threads would otherwise compete with for the CPU.
unsafe extern "C" fn wait_readable(
    capsule: *mut ffi::PyObject,
    args: *mut *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
) -> *mut ffi::PyObject {
    // The fds to wait on for output, then the pipes to read, whether to return on answers
    // and whether to hold their wakes.
    let expected = match nargs {
        3 => 3,
        5 => 5,
        6 => 6,
        _ => 2,
    };
    // SAFETY: GIL held (CPython calls us with it); these are the call's own arguments.
    let Some(args) = (unsafe {
        fastcall_args(
            args,
            nargs,
            expected,
            c"wait_readable(fds, timeout_ms[, write_fds[, pipes, eager[, hold_wakes]]]) takes 2, 3, 5 or 6 arguments",
        )
    }) else {
        return std::ptr::null_mut();
    };
    // SAFETY: GIL held; `capsule` is the `self` of a function bound by WAIT_DEF, a
    // MethodDef<DispatcherTurn>; the borrow ends with the call.
    let Some(turn) = (unsafe { bound_state::<DispatcherTurn>(capsule) }) else {
        return std::ptr::null_mut();
    };
    let mut fds = Vec::new();
    // SAFETY: GIL held; args[0] is borrowed for the call.
    if unsafe { add_fds(args[0], libc::POLLIN, &mut fds) }.is_none() {
        return std::ptr::null_mut();
    }
    if expected >= 3 {
        // SAFETY: GIL held; args[2] is borrowed for the call.
        if unsafe { add_fds(args[2], libc::POLLOUT, &mut fds) }.is_none() {
            return std::ptr::null_mut();
        }
    }
    let mut pipes = Vec::new();
    let mut eager = true;
    let mut hold_wakes = false;
    if expected >= 5 {
        // SAFETY: GIL held; args[3] is borrowed for the call. Its events are not used: a
        // pipe is polled for input because it is one of `fds`.
        if unsafe { add_fds(args[3], 0, &mut pipes) }.is_none() {
            return std::ptr::null_mut();
        }
        // SAFETY: GIL held; args[4] is borrowed.
        let Some(truth) = (unsafe { truth_argument(args[4]) }) else {
            return std::ptr::null_mut();
        };
        eager = truth;
    }
    if expected == 6 {
        // SAFETY: GIL held; args[5] is borrowed.
        let Some(truth) = (unsafe { truth_argument(args[5]) }) else {
            return std::ptr::null_mut();
        };
        hold_wakes = truth;
    }
    let pipes: Vec<libc::c_int> = pipes.iter().map(|pipe| pipe.fd).collect();
    // SAFETY: GIL held; reads the address of the static None object (not a reference taken).
    let none = unsafe { ffi::Py_None() };
    let timeout_ms = if args[1] == none {
        -1
    } else {
        // SAFETY: GIL held; args[1] is borrowed; -1.0 with an exception set if not a number.
        let ms = unsafe { ffi::PyFloat_AsDouble(args[1]) };
        // SAFETY: GIL held; reads the thread's error indicator.
        if ms == -1.0 && !unsafe { ffi::PyErr_Occurred() }.is_null() {
            return std::ptr::null_mut();
        }
        // Rounded up, as select.poll does: a deadline is never polled for too short a time.
        ms.max(0.0).ceil().min(libc::c_int::MAX as f64) as libc::c_int
    };
    // SAFETY: GIL held by this thread, released here and taken back below on every path.
    let thread_state = unsafe { ffi::PyEval_SaveThread() };
    // py4cc is back in its wait: it has sent what waited for a worker.
    turn.reader.wake_deferred();
    let ready = poll_and_read(&mut fds, timeout_ms, &pipes, eager, eager && hold_wakes, &turn.reader);
    *turn.taking_gil.lock() = true;
    // SAFETY: the state PyEval_SaveThread returned on this thread; takes the GIL back.
    unsafe { ffi::PyEval_RestoreThread(thread_state) };
    *turn.taking_gil.lock() = false;
    turn.taken.notify_all();
    if let Err(errno) = ready {
        let text =
            std::ffi::CString::new(format!("wait_readable: poll failed: {}", std::io::Error::from_raw_os_error(errno)))
                .unwrap_or_default();
        // SAFETY: GIL held; reads a static exception type.
        let os_error = unsafe { ffi::PyExc_OSError };
        // SAFETY: GIL held; OSError is an exception type.
        return unsafe { raise(os_error, &text) };
    }
    answer(&fds)
}

/// Adds the ints of the sequence `fds` to `pollfds`, waiting for `events` (an fd already there
/// waits for both); None with an exception set if `fds` is not a sequence of fds.
///
/// # Safety
/// The GIL is held and `fds` is a valid (borrowed) object pointer.
unsafe fn add_fds(fds: *mut ffi::PyObject, events: libc::c_short, pollfds: &mut Vec<libc::pollfd>) -> Option<()> {
    // SAFETY: GIL held (the caller's guarantee); `fds` is borrowed.
    let count = unsafe { ffi::PySequence_Size(fds) };
    if count < 0 {
        return None;
    }
    for index in 0..count {
        // SAFETY: GIL held; a new reference or NULL with an exception set.
        let item = unsafe { ffi::PySequence_GetItem(fds, index) };
        if item.is_null() {
            return None;
        }
        // SAFETY: GIL held; `item` is the new reference just made, alive for the call.
        let fd = unsafe { fd_argument(item, c"wait_readable: a file descriptor out of range") };
        // SAFETY: releases the new reference from PySequence_GetItem, GIL held.
        unsafe { ffi::Py_DecRef(item) };
        let fd = fd?;
        match pollfds.iter_mut().find(|pollfd| pollfd.fd == fd) {
            Some(pollfd) => pollfd.events |= events,
            None => pollfds.push(libc::pollfd { fd, events, revents: 0 }),
        }
    }
    Some(())
}

/// `poll(2)` on `fds`, reading the ready ones of `pipes` with `reader`; polls again while
/// only answers came and not `eager` (within what is left of `timeout_ms`); with `hold_wakes`,
/// the answers' waiters wake at the next call. A pipe stays ready in `fds` only if something
/// there waits for py4cc.
fn poll_and_read(
    fds: &mut [libc::pollfd],
    timeout_ms: libc::c_int,
    pipes: &[libc::c_int],
    eager: bool,
    hold_wakes: bool,
    reader: &PipeReader,
) -> std::result::Result<(), libc::c_int> {
    let deadline = (timeout_ms >= 0).then(|| Instant::now() + Duration::from_millis(timeout_ms as u64));
    loop {
        let left = match deadline {
            None => -1,
            Some(deadline) => {
                deadline.saturating_duration_since(Instant::now()).as_millis().min(libc::c_int::MAX as u128)
                    as libc::c_int
            }
        };
        fds.iter_mut().for_each(|pollfd| pollfd.revents = 0);
        poll_retrying(fds, left)?;
        let mut for_python = false;
        let mut answered = false;
        for pollfd in fds.iter_mut().filter(|pollfd| pollfd.revents != 0) {
            if !pipes.contains(&pollfd.fd) || pollfd.revents & !libc::POLLOUT == 0 {
                for_python = true;
                continue;
            }
            answered = true;
            if reader.read_once(pollfd.fd, hold_wakes) {
                for_python = true;
            } else {
                // Only answers: py4cc need not look at this pipe. A POLLOUT stays.
                pollfd.revents &= libc::POLLOUT;
                for_python |= pollfd.revents != 0;
            }
        }
        let timed_out = deadline.is_some_and(|deadline| Instant::now() >= deadline);
        // Only answers came, and py4cc has nothing to do on them: wait on.
        let only_answers_to_settle = answered && !for_python && !eager;
        if !only_answers_to_settle || timed_out {
            return Ok(());
        }
    }
}

/// `poll(2)` on `fds`, again after an interruption by a signal (with what is left of the
/// timeout); the errno of any other failure.
fn poll_retrying(fds: &mut [libc::pollfd], timeout_ms: libc::c_int) -> std::result::Result<(), libc::c_int> {
    let deadline =
        (timeout_ms >= 0).then(|| std::time::Instant::now() + std::time::Duration::from_millis(timeout_ms as u64));
    let mut left = timeout_ms;
    loop {
        // SAFETY: `fds` is a valid array of pollfd of that length, written only by poll.
        let status = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, left) };
        if status >= 0 {
            return Ok(());
        }
        let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(libc::EINVAL);
        if errno != libc::EINTR {
            return Err(errno);
        }
        if let Some(deadline) = deadline {
            let remaining = deadline.saturating_duration_since(std::time::Instant::now());
            left = remaining.as_millis().min(libc::c_int::MAX as u128) as libc::c_int;
        }
    }
}

/// The `[(fd, revents)]` list of the ready fds, or NULL with an exception set. GIL held.
fn answer(fds: &[libc::pollfd]) -> *mut ffi::PyObject {
    // SAFETY: GIL held (the caller's); a new reference or NULL with an exception set.
    let list = unsafe { ffi::PyList_New(0) };
    if list.is_null() {
        return list;
    }
    for ready in fds.iter().filter(|pollfd| pollfd.revents != 0) {
        // SAFETY: GIL held; new references (or NULL with an exception set).
        let pair = unsafe { ffi::PyTuple_New(2) };
        // SAFETY: as above.
        let fd = unsafe { ffi::PyLong_FromLong(ready.fd.into()) };
        // SAFETY: as above.
        let events = unsafe { ffi::PyLong_FromLong(ready.revents.into()) };
        if pair.is_null() || fd.is_null() || events.is_null() {
            for made in [pair, fd, events, list] {
                // SAFETY: GIL held; releases each new reference made (NULL is skipped).
                unsafe { ffi::Py_XDECREF(made) };
            }
            return std::ptr::null_mut();
        }
        // SAFETY: GIL held; a fresh tuple of size 2; SetItem steals `fd` and `events`.
        unsafe { ffi::PyTuple_SetItem(pair, 0, fd) };
        // SAFETY: as above.
        unsafe { ffi::PyTuple_SetItem(pair, 1, events) };
        // SAFETY: GIL held; Append borrows `pair` (taking its own reference).
        let status = unsafe { ffi::PyList_Append(list, pair) };
        // SAFETY: GIL held; releases our reference to `pair`.
        unsafe { ffi::Py_DecRef(pair) };
        if status != 0 {
            // SAFETY: GIL held; releases the list.
            unsafe { ffi::Py_DecRef(list) };
            return std::ptr::null_mut();
        }
    }
    list
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver::completion::Completions;
    use crate::driver::completion::Standing;
    use crate::driver::pipes::tests::{close, pipe, write_all};
    use crate::gil::Gil;

    #[test]
    fn it_polls_like_select_poll_and_leaves_the_turn_open() -> Result<()> {
        let turn = Arc::new(DispatcherTurn::default());
        let gil = Gil::acquire()?;
        let wait = turn.function(gil.token())?;
        assert_eq!(Arc::strong_count(&turn), 2, "the capsule holds the turn");
        let (quiet, quiet_writer) = pipe();
        let (busy, busy_writer) = pipe();
        write_all(busy_writer, b"x");
        let ready: Vec<(i64, i64)> = wait.call((vec![quiet, busy], 1000.0), ())?.extract()?;
        assert_eq!(ready, [(i64::from(busy), i64::from(libc::POLLIN))]);
        let none: Vec<(i64, i64)> = wait.call((vec![quiet], 0), ())?.extract()?;
        assert!(none.is_empty(), "nothing to read, no waiting");
        let timed: Vec<(i64, i64)> = wait.call((vec![quiet], 20.5), ())?.extract()?;
        assert!(timed.is_empty(), "timed out");
        let forever: Vec<(i64, i64)> = wait.call((vec![busy], gil.none()), ())?.extract()?;
        assert_eq!(forever.len(), 1, "no limit, ready at once");
        close(quiet_writer);
        let hung_up: Vec<(i64, i64)> = wait.call(((quiet,), 1000), ())?.extract()?;
        assert_eq!(hung_up[0].0, i64::from(quiet));
        assert_ne!(hung_up[0].1 & i64::from(libc::POLLHUP), 0, "{hung_up:?}");
        assert!(!*turn.taking_gil.lock(), "the dispatcher's turn ends when it has the GIL");
        turn.let_dispatcher_go_first();
        for fd in [quiet, busy, busy_writer] {
            close(fd);
        }
        let wrong = wait.call((vec![0],), ()).unwrap_err();
        assert_eq!(wrong.python_type(), Some("TypeError"));
        let not_ints = wait.call((vec!["x"], 0), ()).unwrap_err();
        assert_eq!(not_ints.python_type(), Some("TypeError"));
        let huge = wait.call((vec![1_i64 << 40], 0), ()).unwrap_err();
        assert_eq!(huge.python_type(), Some("OverflowError"));
        let bad_timeout = wait.call((vec![0], "soon"), ()).unwrap_err();
        assert_eq!(bad_timeout.python_type(), Some("TypeError"));
        drop(wait);
        assert_eq!(Arc::strong_count(&turn), 1, "freeing the function frees the capsule's count");
        Ok(())
    }

    #[test]
    fn it_polls_write_fds_for_output() -> Result<()> {
        let turn = Arc::new(DispatcherTurn::default());
        let gil = Gil::acquire()?;
        let wait = turn.function(gil.token())?;
        let (reader, writer) = pipe();
        let room: Vec<(i64, i64)> = wait.call((vec![reader], 1000.0, vec![writer]), ())?.extract()?;
        assert_eq!(room, [(i64::from(writer), i64::from(libc::POLLOUT))], "an empty pipe has room");
        // SAFETY: sets O_NONBLOCK on a descriptor this test owns.
        assert_eq!(unsafe { libc::fcntl(writer, libc::F_SETFL, libc::O_NONBLOCK) }, 0);
        let chunk = [0_u8; 4096];
        // SAFETY: writes from a live buffer to a pipe this test owns, until it is full.
        while unsafe { libc::write(writer, chunk.as_ptr().cast(), chunk.len()) } > 0 {}
        let full: Vec<(i64, i64)> = wait.call((vec![reader], 0, vec![writer]), ())?.extract()?;
        assert_eq!(full, [(i64::from(reader), i64::from(libc::POLLIN))], "a full pipe is not writable");
        let both: Vec<(i64, i64)> = wait.call((vec![reader], 0, vec![reader]), ())?.extract()?;
        assert_eq!(both.len(), 1, "an fd in both lists is polled once: {both:?}");
        let not_fds = wait.call((vec![reader], 0, 5), ()).unwrap_err();
        assert_eq!(not_fds.python_type(), Some("TypeError"));
        let too_many = wait.call((vec![reader], 0, vec![writer], 1), ()).unwrap_err();
        assert_eq!(too_many.python_type(), Some("TypeError"));
        for fd in [reader, writer] {
            close(fd);
        }
        Ok(())
    }

    /// A demo answer's frame, as py4cc's `encode_answer` lays it out, framed for the pipe.
    fn answer_frame(key: i64) -> Vec<u8> {
        let mut message = vec![b'A'];
        message.extend(key.to_le_bytes());
        message.extend(0_i64.to_le_bytes());
        message.extend(0.5_f64.to_le_bytes());
        message.push(0);
        message.extend(0_u32.to_le_bytes());
        message.extend((key * 10).to_le_bytes());
        let mut framed = (message.len() as i32).to_be_bytes().to_vec();
        framed.extend(message);
        framed
    }

    /// A turn whose reader delivers into a table of its own, and that table.
    fn reading_turn() -> (Arc<Completions>, Arc<DispatcherTurn>) {
        let completions = Arc::new(Completions::new(None));
        let turn = Arc::new(DispatcherTurn::new(Arc::new(PipeReader::new(Arc::clone(&completions)))));
        (completions, turn)
    }

    #[test]
    fn it_reads_the_pipes_and_returns_for_answers_only_when_eager() -> Result<()> {
        let (completions, turn) = reading_turn();
        let gil = Gil::acquire()?;
        let wait = turn.function(gil.token())?;
        let (pipe_read, pipe_write) = pipe();
        let (other, other_writer) = pipe();
        let no_write_fds: Vec<i32> = Vec::new();
        write_all(pipe_write, &answer_frame(3));
        let eager: Vec<(i64, i64)> =
            wait.call((vec![pipe_read, other], 5000.0, &no_write_fds, vec![pipe_read], true), ())?.extract()?;
        assert!(eager.is_empty(), "an answer alone is not reported, but ends an eager wait: {eager:?}");
        assert_eq!(completions.standing(3), Standing::Settled, "answered");
        // Lazy: answers go on being read while it waits; a message on another fd ends the wait.
        let writer = std::thread::spawn(move || {
            for key in 4..7 {
                write_all(pipe_write, &answer_frame(key));
                std::thread::sleep(Duration::from_millis(20));
            }
            write_all(other_writer, b"x");
            (pipe_write, other_writer)
        });
        // wait_readable lets the GIL go while it polls: the writer needs none anyway.
        let lazy: Vec<(i64, i64)> =
            wait.call((vec![pipe_read, other], 30_000.0, &no_write_fds, vec![pipe_read], false), ())?.extract()?;
        assert_eq!(lazy, [(i64::from(other), i64::from(libc::POLLIN))]);
        for key in 3..7 {
            assert_eq!(completions.standing(key), Standing::Settled, "{key} answered while it waited");
        }
        // A message py4cc must read reports the pipe.
        let (pipe_write, other_writer) = writer.join().unwrap();
        write_all(pipe_write, &[0, 0, 0, 3, 0x80, 5, b'N']);
        let for_python: Vec<(i64, i64)> =
            wait.call((vec![pipe_read], 5000.0, &no_write_fds, vec![pipe_read], false), ())?.extract()?;
        assert_eq!(for_python, [(i64::from(pipe_read), i64::from(libc::POLLIN))]);
        let timed: Vec<(i64, i64)> =
            wait.call((vec![other], 10.0, &no_write_fds, vec![pipe_read], false), ())?.extract()?;
        assert_eq!(timed, [(i64::from(other), i64::from(libc::POLLIN))], "the byte on other is still there");
        let four = wait.call((vec![pipe_read], 0, &no_write_fds, vec![pipe_read]), ()).unwrap_err();
        assert_eq!(four.python_type(), Some("TypeError"));
        for fd in [pipe_read, pipe_write, other, other_writer] {
            close(fd);
        }
        Ok(())
    }

    #[test]
    fn answers_read_with_wakes_held_wake_their_waiters_when_the_dispatcher_waits_again() -> Result<()> {
        use crate::driver::completion::tests::CountWakes;
        use std::sync::atomic::Ordering;
        use std::task::{Context, Waker};
        let (completions, turn) = reading_turn();
        let gil = Gil::acquire()?;
        let wait = turn.function(gil.token())?;
        let (pipe_read, pipe_write) = pipe();
        let write = |bytes: &[u8]| write_all(pipe_write, bytes);
        let wakes = Arc::new(CountWakes::default());
        let waker = Waker::from(Arc::clone(&wakes));
        for key in 3..7 {
            completions.accepted(key);
            assert!(completions.poll(key, &Context::from_waker(&waker)).is_pending());
        }
        let woken = || wakes.0.load(Ordering::SeqCst);
        let no_write_fds: Vec<i32> = Vec::new();
        write(&answer_frame(3));
        let eager: Vec<(i64, i64)> =
            wait.call((vec![pipe_read], 5000.0, &no_write_fds, vec![pipe_read], true, true), ())?.extract()?;
        assert!(eager.is_empty(), "{eager:?}");
        assert_eq!(completions.standing(3), Standing::Settled, "the answer is in the table at once");
        assert_eq!(woken(), 0, "its waiter wakes once py4cc has sent the next batches");
        // The next wait wakes it on entry; a lazy wait wakes at once what it reads (holding
        // wakes is for an eager wait only).
        write(&answer_frame(4));
        let lazy: Vec<(i64, i64)> =
            wait.call((vec![pipe_read], 20.0, &no_write_fds, vec![pipe_read], false, true), ())?.extract()?;
        assert!(lazy.is_empty(), "{lazy:?}");
        assert_eq!(woken(), 2);
        // A dispatcher that will not wait again (finalized): the Driver wakes them.
        write(&answer_frame(5));
        let _: Vec<(i64, i64)> =
            wait.call((vec![pipe_read], 5000.0, &no_write_fds, vec![pipe_read], true, true), ())?.extract()?;
        assert_eq!((woken(), completions.standing(5)), (2, Standing::Settled));
        turn.wake_deferred();
        assert_eq!(woken(), 3);
        // Eager without holding wakes (no batching): woken at once.
        write(&answer_frame(6));
        let _: Vec<(i64, i64)> =
            wait.call((vec![pipe_read], 5000.0, &no_write_fds, vec![pipe_read], true), ())?.extract()?;
        assert_eq!(woken(), 4);
        let no_truth = gil.eval("type('NoTruth', (), {'__bool__': lambda self: 1 / 0})()")?;
        let not_a_truth = wait.call((vec![pipe_read], 0, &no_write_fds, vec![pipe_read], true, &no_truth), ());
        assert_eq!(not_a_truth.unwrap_err().python_type(), Some("ZeroDivisionError"));
        for fd in [pipe_read, pipe_write] {
            close(fd);
        }
        Ok(())
    }

    #[test]
    fn a_thread_waits_while_the_dispatcher_takes_the_gil() {
        let turn = Arc::new(DispatcherTurn::default());
        *turn.taking_gil.lock() = true;
        let waiter = {
            let turn = Arc::clone(&turn);
            std::thread::spawn(move || turn.let_dispatcher_go_first_within(Duration::from_secs(600)))
        };
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(!waiter.is_finished(), "it waits for the dispatcher");
        *turn.taking_gil.lock() = false;
        turn.taken.notify_all();
        waiter.join().unwrap();
        // A turn never given back delays a caller, never stops it.
        *turn.taking_gil.lock() = true;
        turn.let_dispatcher_go_first_within(Duration::from_millis(10));
        assert!(*turn.taking_gil.lock());
    }
}
