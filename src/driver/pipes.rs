//! The workers' answers read by the host itself, without the GIL.
//!
//! py4cc's dispatcher waits on the workers' pipes in [`wait_readable`](super::turn) with the
//! GIL released. Given the pipes' fds, that function also reads them: each answer a worker
//! wrote (py4cc's fixed answer frame, see `py4cc/protocol.py`'s `encode_answer`) goes straight
//! into the [`Completions`] table, which wakes its waiter, and is noted for py4cc to settle
//! (take off its book) the next time it holds the GIL. Anything else a worker sends (`Ready`,
//! `InitFailed`, a frame this side does not parse) and the end of a pipe wait for py4cc, which
//! takes them with `take(fd)`. So a task's answer costs py4cc no read, no unpickling and no
//! `deliver` call, and when py4cc has nothing to do on an answer (no task waits for a worker)
//! the dispatcher does not take the GIL for it at all.
//!
//! Lock order: the reader's state, then the table's (see `completion.rs`); no waker runs
//! with the reader's lock held.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use pyo3_ffi as ffi;

use super::completion::{Answer, AnswerValue, Completions};
use crate::Bytes;
use crate::callback::{MethodDef, bound_state, fastcall_args};
use crate::error::Result;
use crate::gil::{Gil, GilToken};
use crate::object::Object;

/// The most one read of a pipe takes in (as py4cc's own `READ_SIZE`).
const READ_SIZE: usize = 1 << 16;

/// The first byte of an answer frame; a pickle starts with 0x80.
const ANSWER_TAG: u8 = b'A';

/// An answer frame's fixed head: tag, key, flag, run time, value kind, message length.
const ANSWER_HEAD: usize = 1 + 8 + 8 + 8 + 1 + 4;

/// The value kinds of an answer frame (as `py4cc/protocol.py` numbers them).
const VALUE_INT: u8 = 0;
const VALUE_NONE: u8 = 1;
const VALUE_PICKLED: u8 = 2;

/// An answer read from a pipe, for py4cc to settle: the pipe's fd, the key, the flag and how
/// long the Engine ran.
type Settled = (libc::c_int, i64, i64, f64);

/// What the host has read from the workers' pipes.
pub(crate) struct PipeReader {
    completions: Arc<Completions>,
    state: Mutex<ReaderState>,
}

#[derive(Default)]
struct ReaderState {
    /// Per pipe: the start of a message whose rest has not come yet.
    inboxes: HashMap<libc::c_int, Vec<u8>>,
    /// Per pipe: messages for py4cc (not answers), and whether the pipe has ended.
    for_python: HashMap<libc::c_int, (Vec<Vec<u8>>, bool)>,
    /// Answers delivered and not settled by py4cc yet, in the order they came.
    answered: Vec<Settled>,
    /// The waiters of answers read while py4cc had tasks to send: woken once it has sent
    /// them (see [`PipeReader::wake_deferred`]).
    deferred: Vec<std::task::Waker>,
}

impl PipeReader {
    /// A reader that delivers into `completions`.
    pub(crate) fn new(completions: Arc<Completions>) -> Self {
        PipeReader { completions, state: Mutex::new(ReaderState::default()) }
    }

    /// One read of `fd` (which poll found readable, or ended): its answers go to the table;
    /// whether py4cc must look at `fd` (messages for it, or the pipe's end). With `defer`,
    /// their waiters are woken by the next [`wake_deferred`](Self::wake_deferred), not here.
    pub(crate) fn read_once(&self, fd: libc::c_int, defer: bool) -> bool {
        let mut buffer = [0_u8; READ_SIZE];
        let count = loop {
            // SAFETY: reads at most `buffer.len()` bytes into a live buffer of that length.
            let count = unsafe { libc::read(fd, buffer.as_mut_ptr().cast(), buffer.len()) };
            if count >= 0 {
                break Some(count as usize);
            }
            match std::io::Error::last_os_error().raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EAGAIN) => break None, // nothing yet: it was only writable, or woke early
                _ => break Some(0),               // as py4cc does: a pipe that fails has ended
            }
        };
        let Some(count) = count else {
            return self.state.lock().for_python.contains_key(&fd);
        };
        let (answers, for_python) = {
            let mut state = self.state.lock();
            let mut inbox = state.inboxes.remove(&fd).unwrap_or_default();
            inbox.extend_from_slice(&buffer[..count]);
            let mut answers = Vec::new();
            let mut others = Vec::new();
            for message in take_messages(&mut inbox) {
                match parse_answer(&message) {
                    Some(answer) => answers.push(answer),
                    None => others.push(message),
                }
            }
            if !inbox.is_empty() {
                state.inboxes.insert(fd, inbox);
            }
            if count == 0 || !others.is_empty() {
                let waiting = state.for_python.entry(fd).or_default();
                waiting.0.append(&mut others);
                waiting.1 |= count == 0;
            }
            (answers, state.for_python.contains_key(&fd))
        };
        if !answers.is_empty() {
            // The note, then the table, under the reader's lock: a settle (which takes it)
            // sees both or neither, and whoever finds the answer in the table (woken, or
            // looking) and asks py4cc finds it noted.
            let settled = answers.iter().map(|(key, answer, run_s)| (fd, *key, answer.flag, *run_s));
            let woken = {
                let mut state = self.state.lock();
                state.answered.extend(settled);
                let mut woken =
                    self.completions.deliver_read(answers.into_iter().map(|(key, answer, _)| (key, answer)).collect());
                if defer {
                    state.deferred.append(&mut woken);
                }
                woken
            };
            woken.into_iter().for_each(std::task::Waker::wake);
        }
        for_python
    }

    /// Wakes the waiters of answers read with `defer`. Their answers are in the table from the
    /// read on (a caller that looks finds its own); only the wake waits, so that the threads it
    /// starts do not compete with the dispatcher while it sends the workers their next tasks.
    pub(crate) fn wake_deferred(&self) {
        let deferred = std::mem::take(&mut self.state.lock().deferred);
        deferred.into_iter().for_each(std::task::Waker::wake);
    }

    /// What waits for py4cc from `fd`: its messages, and whether it has ended.
    fn take(&self, fd: libc::c_int) -> (Vec<Vec<u8>>, bool) {
        self.state.lock().for_python.remove(&fd).unwrap_or_default()
    }

    /// Reads `fd` until nothing more waits or it ends, then forgets it (its worker has
    /// exited): what waits for py4cc, as [`take`](Self::take).
    fn drain(&self, fd: libc::c_int) -> (Vec<Vec<u8>>, bool) {
        while readable_now(fd) {
            self.read_once(fd, false);
            if self.state.lock().for_python.get(&fd).is_some_and(|waiting| waiting.1) {
                break;
            }
        }
        let mut state = self.state.lock();
        state.inboxes.remove(&fd); // a partial message from a dead worker never completes
        state.for_python.remove(&fd).unwrap_or_default()
    }

    /// The answers delivered since the last call, now settled: py4cc takes them off its book.
    fn answered(&self) -> Vec<Settled> {
        let mut state = self.state.lock();
        let answered = std::mem::take(&mut state.answered);
        self.completions.settle(answered.iter().map(|&(_, key, _, _)| key));
        answered
    }

    /// The functions py4cc's pool uses beside `wait_readable`, as one object: `take(fd)`,
    /// `drain(fd)`, `answered()` and `write(fd, data)`.
    pub(crate) fn functions<'py>(self: &Arc<Self>, gil: GilToken<'py>) -> Result<Object<'py>> {
        let namespace = gil.import("types")?.getattr("SimpleNamespace")?;
        let take = TAKE_DEF.bind(gil, Arc::clone(self))?;
        let drain = DRAIN_DEF.bind(gil, Arc::clone(self))?;
        let answered = ANSWERED_DEF.bind(gil, Arc::clone(self))?;
        let write = WRITE_DEF.bind(gil, Arc::clone(self))?;
        namespace.call((), [("take", &take), ("drain", &drain), ("answered", &answered), ("write", &write)])
    }
}

/// Whether `fd` has something to read (or has ended) right now.
fn readable_now(fd: libc::c_int) -> bool {
    let mut pollfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid pollfd; a zero timeout never blocks.
    let status = unsafe { libc::poll(&mut pollfd, 1, 0) };
    status > 0 && pollfd.revents != 0
}

/// The whole messages at the front of `inbox`, framed as `Connection.send_bytes` frames them
/// (a 4-byte big-endian length, or -1 and an 8-byte one), removed from it; a partial one stays.
fn take_messages(inbox: &mut Vec<u8>) -> Vec<Vec<u8>> {
    let mut messages = Vec::new();
    let mut at = 0;
    loop {
        let rest = &inbox[at..];
        let Some(length) = rest.get(..4).map(|head| i32::from_be_bytes([head[0], head[1], head[2], head[3]])) else {
            break;
        };
        let (size, start): (usize, usize) = if length == -1 {
            let Some(long) = rest.get(4..12) else { break };
            let mut bytes = [0_u8; 8];
            bytes.copy_from_slice(long);
            (usize::try_from(u64::from_be_bytes(bytes)).unwrap_or(usize::MAX), 12)
        } else {
            (usize::try_from(length).unwrap_or(0), 4)
        };
        let Some(message) = start.checked_add(size).and_then(|end| rest.get(start..end)) else {
            break;
        };
        messages.push(message.to_vec());
        at += start + size;
    }
    inbox.drain(..at);
    messages
}

/// An answer frame's key, answer and run time; None for any other message (py4cc reads it).
fn parse_answer(message: &[u8]) -> Option<(i64, Answer, f64)> {
    let head = message.get(..ANSWER_HEAD)?;
    if head[0] != ANSWER_TAG {
        return None;
    }
    let eight = |at: usize| -> [u8; 8] { head[at..at + 8].try_into().unwrap_or([0; 8]) };
    let key = i64::from_le_bytes(eight(1));
    let flag = i64::from_le_bytes(eight(9));
    let run_s = f64::from_le_bytes(eight(17));
    let kind = head[25];
    let text_length = usize::try_from(u32::from_le_bytes(head[26..30].try_into().ok()?)).ok()?;
    let body = &message[ANSWER_HEAD..];
    let text = body.get(..text_length)?;
    let tail = &body[text_length..];
    let value = match kind {
        VALUE_INT => AnswerValue::Int(i64::from_le_bytes(tail.try_into().ok()?)),
        VALUE_NONE if tail.is_empty() => AnswerValue::Nothing,
        VALUE_PICKLED => AnswerValue::Pickled(tail.to_vec()),
        _ => return None,
    };
    let message = String::from_utf8_lossy(text).into_owned();
    Some((key, Answer { flag, value, message }, run_s))
}

static TAKE_DEF: MethodDef<PipeReader> = MethodDef::fastcall(
    c"take",
    take,
    c"take(fd): (messages, ended): what the pipe fd sent that is not an answer, and whether it has ended.",
);

static DRAIN_DEF: MethodDef<PipeReader> = MethodDef::fastcall(
    c"drain",
    drain,
    c"drain(fd): read the pipe fd of an exited worker to its end, then as take(fd).",
);

static ANSWERED_DEF: MethodDef<PipeReader> = MethodDef::fastcall(
    c"answered",
    answered,
    c"answered(): [(fd, key, flag, run_s)]: the answers read from the pipes since the last call.",
);

static WRITE_DEF: MethodDef<PipeReader> = MethodDef::fastcall(
    c"write",
    write,
    c"write(fd, data): os.write of a non-blocking pipe, keeping the GIL (it never waits): the bytes written.",
);

/// `write(fd, data)`: `os.write` for the pool's non-blocking pipes, without letting the GIL
/// go: such a write never waits, and letting the GIL go would hand it to a waiting thread
/// for that thread's whole call. Raises what `os.write` raises (`BlockingIOError` when the
/// pipe is full). Never unwinds into C.
unsafe extern "C" fn write(
    _capsule: *mut ffi::PyObject, // the reader: a write needs none of its state
    args: *mut *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
) -> *mut ffi::PyObject {
    // SAFETY: GIL held (CPython calls us with it); these are the call's own arguments.
    let Some(&[fd, data]) = (unsafe { fastcall_args(args, nargs, 2, c"write(fd, data) takes 2 arguments") }) else {
        return std::ptr::null_mut();
    };
    // SAFETY: GIL held; `fd` is one of the call's borrowed arguments.
    let Some(fd) = (unsafe { fd_argument(fd, c"a file descriptor out of range") }) else {
        return std::ptr::null_mut();
    };
    let mut view = std::mem::MaybeUninit::<ffi::Py_buffer>::uninit();
    // SAFETY: GIL held; `data` is borrowed; fills `view` (released below) or sets an exception.
    if unsafe { ffi::PyObject_GetBuffer(data, view.as_mut_ptr(), ffi::PyBUF_SIMPLE) } != 0 {
        return std::ptr::null_mut();
    }
    // SAFETY: PyObject_GetBuffer succeeded, so `view` is initialised.
    let mut view = unsafe { view.assume_init() };
    let written = loop {
        // SAFETY: `view.buf` points at `view.len` readable bytes while the view is held.
        let written = unsafe { libc::write(fd, view.buf.cast_const(), view.len as usize) };
        if written >= 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            break written;
        }
    };
    // SAFETY: GIL held; releases the view taken above, once.
    unsafe { ffi::PyBuffer_Release(&mut view) };
    if written < 0 {
        // SAFETY: GIL held; reads a static exception type.
        let os_error = unsafe { ffi::PyExc_OSError };
        // SAFETY: GIL held; OSError with errno's text (BlockingIOError for EAGAIN), as os.write.
        return unsafe { ffi::PyErr_SetFromErrno(os_error) };
    }
    // SAFETY: GIL held; a new reference (or NULL with an exception set) for CPython.
    unsafe { ffi::PyLong_FromSsize_t(written as ffi::Py_ssize_t) }
}

/// The reader bound to a function of `TAKE_DEF` or `DRAIN_DEF` and the fd it was called with;
/// None with an exception set.
///
/// # Safety
/// The GIL is held and the arguments are what CPython passed to such a function.
unsafe fn reader_and_fd<'call>(
    capsule: *mut ffi::PyObject,
    args: *mut *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
) -> Option<(&'call PipeReader, libc::c_int)> {
    // SAFETY: GIL held; the call's own arguments (the caller's guarantee).
    let &[fd] = (unsafe { fastcall_args(args, nargs, 1, c"this function takes 1 argument, a pipe's fd") })? else {
        return None;
    };
    // SAFETY: GIL held; `fd` is one of the call's borrowed arguments.
    let fd = unsafe { fd_argument(fd, c"a file descriptor out of range") }?;
    // SAFETY: GIL held; `capsule` is the `self` of a function bound by a MethodDef<PipeReader>.
    let reader = unsafe { bound_state::<PipeReader>(capsule) }?;
    Some((reader, fd))
}

/// A file descriptor passed from Python; None with an exception set (an OverflowError that
/// says `out_of_range` for an int that is not one). Also `wait_readable`'s.
///
/// # Safety
/// The GIL is held and `fd` is a valid (borrowed) object pointer.
pub(super) unsafe fn fd_argument(fd: *mut ffi::PyObject, out_of_range: &std::ffi::CStr) -> Option<libc::c_int> {
    // SAFETY: GIL held; `fd` is borrowed; -1 with an exception set if it is not an int that fits.
    let fd = unsafe { ffi::PyLong_AsLong(fd) };
    // SAFETY: GIL held; reads the thread's error indicator.
    if fd == -1 && !unsafe { ffi::PyErr_Occurred() }.is_null() {
        return None;
    }
    let Ok(fd) = libc::c_int::try_from(fd) else {
        // SAFETY: GIL held; reads a static exception type.
        let overflow = unsafe { ffi::PyExc_OverflowError };
        // SAFETY: GIL held; OverflowError is an exception type.
        unsafe { crate::exception::raise(overflow, out_of_range) };
        return None;
    };
    Some(fd)
}

/// `(messages, ended)` as a new Python reference, or NULL with an exception set.
fn waiting_to_python(gil: &Gil, (messages, ended): (Vec<Vec<u8>>, bool)) -> *mut ffi::PyObject {
    let messages: Vec<Bytes<Vec<u8>>> = messages.into_iter().map(Bytes).collect();
    new_reference(crate::ToPython::to_python(&(messages, ended), gil.token()))
}

/// The object as the new reference a C function returns, or NULL with the error raised.
fn new_reference(object: Result<Object<'_>>) -> *mut ffi::PyObject {
    match object {
        Ok(object) => object.into_ptr(),
        Err(error) => {
            let text = std::ffi::CString::new(error.to_string().replace('\0', " ")).unwrap_or_default();
            // SAFETY: GIL held (every caller is a C function CPython called); a static type.
            let system_error = unsafe { ffi::PyExc_SystemError };
            // SAFETY: GIL held; SystemError is an exception type.
            unsafe { crate::exception::raise(system_error, &text) }
        }
    }
}

/// `take(fd)`, called by the dispatcher with the GIL held. Never unwinds into C.
unsafe extern "C" fn take(
    capsule: *mut ffi::PyObject,
    args: *mut *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
) -> *mut ffi::PyObject {
    // SAFETY: CPython's own call of a function bound by TAKE_DEF, with the GIL held.
    unsafe { waiting_for_fd(capsule, args, nargs, |_, reader, fd| reader.take(fd)) }
}

/// `drain(fd)`, called by the dispatcher with the GIL held. Never unwinds into C.
unsafe extern "C" fn drain(
    capsule: *mut ffi::PyObject,
    args: *mut *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
) -> *mut ffi::PyObject {
    // Reads without the GIL: a pipe of an exited worker never blocks, but may hold a lot.
    // SAFETY: CPython's own call of a function bound by DRAIN_DEF, with the GIL held.
    unsafe { waiting_for_fd(capsule, args, nargs, |gil, reader, fd| gil.release_during(|| reader.drain(fd))) }
}

/// The body of `take` and `drain`: `(messages, ended)` for the fd they were called with, as
/// `waiting` finds them; NULL with an exception set for bad arguments.
///
/// # Safety
/// The GIL is held and the arguments are what CPython passed to a function bound by a
/// `MethodDef<PipeReader>`.
unsafe fn waiting_for_fd(
    capsule: *mut ffi::PyObject,
    args: *mut *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    waiting: impl FnOnce(&Gil, &PipeReader, libc::c_int) -> (Vec<Vec<u8>>, bool),
) -> *mut ffi::PyObject {
    // CPython holds the GIL while it calls a C function: this only counts a guard.
    let gil = Gil::acquire_started();
    // SAFETY: GIL held; CPython's own arguments for this function (the caller's guarantee).
    let Some((reader, fd)) = (unsafe { reader_and_fd(capsule, args, nargs) }) else {
        return std::ptr::null_mut();
    };
    let found = waiting(&gil, reader, fd);
    waiting_to_python(&gil, found)
}

/// `answered()`, called by py4cc with the GIL and its pool's lock held. Never unwinds into C.
unsafe extern "C" fn answered(
    capsule: *mut ffi::PyObject,
    args: *mut *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
) -> *mut ffi::PyObject {
    // CPython holds the GIL while it calls a C function: this only counts a guard.
    let gil = Gil::acquire_started();
    // SAFETY: GIL held; CPython's own arguments for this function.
    if unsafe { fastcall_args(args, nargs, 0, c"answered() takes no arguments") }.is_none() {
        return std::ptr::null_mut();
    }
    // SAFETY: GIL held; `capsule` is the `self` of a function bound by ANSWERED_DEF.
    let Some(reader) = (unsafe { bound_state::<PipeReader>(capsule) }) else {
        return std::ptr::null_mut();
    };
    let answered: Vec<(i64, i64, i64, f64)> =
        reader.answered().into_iter().map(|(fd, key, flag, run_s)| (i64::from(fd), key, flag, run_s)).collect();
    new_reference(crate::ToPython::to_python(&answered, gil.token()))
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::driver::completion::Lookup;
    use crate::driver::package;
    use crate::interpreter::{self, StartOptions};

    /// A pipe: (read end, write end). Also for `turn.rs`'s tests.
    pub(in crate::driver) fn pipe() -> (libc::c_int, libc::c_int) {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors pipe(2) writes.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        (fds[0], fds[1])
    }

    /// Writes all of `bytes` to `fd` in one write. Also for `turn.rs`'s tests.
    pub(in crate::driver) fn write_all(fd: libc::c_int, bytes: &[u8]) {
        // SAFETY: writes from a live buffer of that length to a pipe this test owns.
        assert_eq!(unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) }, bytes.len() as isize);
    }

    pub(in crate::driver) fn close(fd: libc::c_int) {
        // SAFETY: closes a descriptor this test opened and owns.
        unsafe { libc::close(fd) };
    }

    /// `message` framed as `Connection.send_bytes` frames it.
    fn framed(message: &[u8]) -> Vec<u8> {
        let mut bytes = (message.len() as i32).to_be_bytes().to_vec();
        bytes.extend_from_slice(message);
        bytes
    }

    /// py4cc's own frame of `Answer(key, flag, value, message, run_s[, pickled])`, built by
    /// `py4cc.protocol.encode_report` from Python source text for the value.
    fn python_frame(fields: &str) -> Vec<u8> {
        let package_dir = package::package_parent_dir().unwrap().to_path_buf();
        interpreter::start(&StartOptions { python_path: vec![package_dir] }).unwrap();
        let gil = Gil::acquire().unwrap();
        let protocol = gil.import("py4cc.protocol").unwrap();
        let builtins = gil.import("builtins").unwrap();
        let answer = builtins
            .getattr("eval")
            .unwrap()
            .call((format!("Answer({fields})"), protocol.getattr("__dict__").unwrap()), ())
            .unwrap();
        let Bytes(frame) = protocol.getattr("encode_report").unwrap().call((answer,), ()).unwrap().extract().unwrap();
        frame
    }

    #[test]
    fn it_reads_py4cc_answer_frames_as_py4cc_wrote_them() {
        let (key, answer, run_s) = parse_answer(&python_frame("2**40 + 3, 0, 17, 'ok \\u00e9', 0.25")).unwrap();
        assert_eq!((key, run_s), ((1 << 40) + 3, 0.25));
        assert_eq!(answer, Answer { flag: 0, value: AnswerValue::Int(17), message: "ok é".to_owned() });
        let (_, failed, _) = parse_answer(&python_frame("1, 2, None, 'trace\\x00back'")).unwrap();
        assert_eq!(failed, Answer { flag: 2, value: AnswerValue::Nothing, message: "trace\0back".to_owned() });
        let (_, extreme, _) = parse_answer(&python_frame("1, 2, -(2**63), ''")).unwrap();
        assert_eq!(extreme.value, AnswerValue::Int(i64::MIN));
        // A lone surrogate cannot be Rust text: replaced, never a failure.
        let (_, strange, _) = parse_answer(&python_frame("1, 0, 5, 'a\\ud800b'")).unwrap();
        assert_eq!(strange.message, "a\u{fffd}\u{fffd}\u{fffd}b");
        // An int outside i64 and a general task's answer travel pickled.
        let (_, huge, _) = parse_answer(&python_frame("1, 0, 2**64, ''")).unwrap();
        let AnswerValue::Pickled(pickled) = huge.value else { panic!("{huge:?}") };
        let gil = Gil::acquire().unwrap();
        let loads = gil.import("pickle").unwrap().getattr("loads").unwrap();
        assert_eq!(loads.call((Bytes(pickled),), ()).unwrap().str().unwrap(), (1_u128 << 64).to_string());
        let (_, general, _) = parse_answer(&python_frame("1, 0, b'\\x80\\x05K\\x07.', '', 0.0, True")).unwrap();
        assert_eq!(general.value, AnswerValue::Pickled(b"\x80\x05K\x07.".to_vec()));
    }

    #[test]
    fn anything_else_is_left_for_py4cc() {
        assert!(parse_answer(&python_frame("2**64, 0, 1, ''")).is_none(), "a key outside i64: pickled fields");
        let good = python_frame("1, 0, 5, 'msg'");
        assert!(parse_answer(&good[..good.len() - 1]).is_none(), "a value cut short");
        let mut long = good.clone();
        long.push(0);
        assert!(parse_answer(&long).is_none(), "an int value of 9 bytes");
        let mut unknown_kind = good.clone();
        unknown_kind[25] = 7;
        assert!(parse_answer(&unknown_kind).is_none());
        let mut lying_length = good;
        lying_length[26] = 200;
        assert!(parse_answer(&lying_length).is_none(), "a message longer than the frame");
        assert!(parse_answer(b"\x80\x05N.").is_none(), "a pickle");
        assert!(parse_answer(b"").is_none());
    }

    #[test]
    fn messages_are_split_as_send_bytes_frames_them() {
        let mut inbox = framed(b"one");
        inbox.extend(framed(b""));
        inbox.extend([0xff, 0xff, 0xff, 0xff]); // -1: an 8-byte length follows
        inbox.extend(3_u64.to_be_bytes());
        inbox.extend(b"two");
        inbox.extend(&framed(b"three")[..6]);
        assert_eq!(take_messages(&mut inbox), [b"one".to_vec(), Vec::new(), b"two".to_vec()]);
        assert_eq!(inbox, &framed(b"three")[..6], "a partial message waits for its rest");
        inbox.extend(&framed(b"three")[6..]);
        assert_eq!(take_messages(&mut inbox), [b"three".to_vec()]);
        assert!(inbox.is_empty());
        let mut huge = [0xff_u8, 0xff, 0xff, 0xff].to_vec();
        huge.extend(u64::MAX.to_be_bytes());
        assert!(take_messages(&mut huge).is_empty(), "a length past memory waits, never panics");
    }

    #[test]
    fn answers_go_to_the_table_and_the_rest_to_py4cc() {
        let completions = Arc::new(Completions::new(None));
        let reader = PipeReader::new(Arc::clone(&completions));
        let (read_end, write_end) = pipe();
        completions.accepted(7);
        let answer = python_frame("7, 0, 42, ''");
        let mut bytes = framed(&answer);
        bytes.extend(framed(b"\x80\x05N.")); // a pickle: for py4cc
        bytes.extend(&framed(&python_frame("8, 2, -1, 'boom'"))[..10]); // the start of one more
        write_all(write_end, &bytes);
        assert!(reader.read_once(read_end, false), "a message waits for py4cc");
        assert_eq!(completions.held(), 0, "read, not settled: py4cc's book still counts it");
        assert!(matches!(completions.take(7), Lookup::Answered(Answer { value: AnswerValue::Int(42), .. })));
        assert_eq!(reader.take(read_end), (vec![b"\x80\x05N.".to_vec()], false));
        assert_eq!(reader.take(read_end), (Vec::new(), false), "taken once");
        write_all(write_end, &framed(&python_frame("8, 2, -1, 'boom'"))[10..]);
        assert!(!reader.read_once(read_end, false), "only an answer: nothing for py4cc");
        assert_eq!(completions.held(), 0);
        assert_eq!(reader.answered(), [(read_end, 7, 0, 0.0), (read_end, 8, 2, 0.0)]);
        assert_eq!(completions.held(), 1, "settled: 8 is the host's to count now");
        assert!(reader.answered().is_empty());
        close(write_end);
        assert_eq!(reader.drain(read_end), (Vec::new(), true), "the pipe's end");
        assert!(reader.state.lock().inboxes.is_empty() && reader.state.lock().for_python.is_empty());
        close(read_end);
    }

    #[test]
    fn the_answer_of_a_task_dropped_while_it_ran_is_discarded() {
        let completions = Arc::new(Completions::new(None));
        let reader = PipeReader::new(Arc::clone(&completions));
        let (read_end, write_end) = pipe();
        completions.accepted(5);
        completions.forget(5); // py4cc cancelled it while its worker ran it
        write_all(write_end, &framed(&python_frame("5, 0, 3, ''")));
        assert!(!reader.read_once(read_end, false));
        assert_eq!(completions.take(5), Lookup::Unknown);
        assert_eq!(reader.answered(), [(read_end, 5, 0, 0.0)], "py4cc still takes it off its worker");
        assert_eq!(completions.held(), 0, "no place is lost to it");
        for fd in [read_end, write_end] {
            close(fd);
        }
    }

    #[test]
    fn write_keeps_the_gil_and_says_when_the_pipe_is_full() {
        let package_dir = package::package_parent_dir().unwrap().to_path_buf();
        interpreter::start(&StartOptions { python_path: vec![package_dir] }).unwrap();
        let gil = Gil::acquire().unwrap();
        let reader = Arc::new(PipeReader::new(Arc::default()));
        let write = reader.functions(gil.token()).unwrap().getattr("write").unwrap();
        let (read_end, write_end) = pipe();
        let written: usize = write.call((write_end, Bytes(b"abc")), ()).unwrap().extract().unwrap();
        assert_eq!(written, 3);
        let view = gil.import("builtins").unwrap().getattr("memoryview").unwrap().call((Bytes(b"xyz!"),), ()).unwrap();
        let written: usize = write.call((write_end, view), ()).unwrap().extract().unwrap();
        assert_eq!(written, 4, "a memoryview, as the pool's outbox holds");
        let mut buffer = [0_u8; 16];
        // SAFETY: reads into a live buffer from a pipe this test owns.
        assert_eq!(unsafe { libc::read(read_end, buffer.as_mut_ptr().cast(), buffer.len()) }, 7);
        assert_eq!(&buffer[..7], b"abcxyz!");
        // SAFETY: sets O_NONBLOCK on a descriptor this test owns.
        assert_eq!(unsafe { libc::fcntl(write_end, libc::F_SETFL, libc::O_NONBLOCK) }, 0);
        let chunk = Bytes(vec![0_u8; 1 << 16]);
        let full = loop {
            match write.call((write_end, &chunk), ()) {
                Ok(_) => continue,
                Err(error) => break error,
            }
        };
        assert_eq!(full.python_type(), Some("BlockingIOError"), "{full}");
        close(read_end);
        let broken = write.call((write_end, Bytes(b"x")), ()).unwrap_err();
        assert_eq!(broken.python_type(), Some("BrokenPipeError"), "{broken}");
        close(write_end);
        assert_eq!(write.call((write_end, 5), ()).unwrap_err().python_type(), Some("TypeError"));
        assert_eq!(write.call((1_i64 << 40, Bytes(b"x")), ()).unwrap_err().python_type(), Some("OverflowError"));
        let take = reader.functions(gil.token()).unwrap().getattr("take").unwrap();
        assert_eq!(take.call(("3",), ()).unwrap_err().python_type(), Some("TypeError"));
    }
}
