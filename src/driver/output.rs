//! Worker output and events, handed to a Rust callback.
//!
//! py4cc reads every worker's stdout and stderr (fds 1 and 2, so C-level writes too) line by
//! line on one Python thread per driver, the relay, and calls its sink with
//! `(pid, stream, line)` for each line and for each event (a worker's death, a task timeout, a
//! replacement). With [`DriverOptions::worker_output`](super::DriverOptions::worker_output)
//! set, that sink is a C function made callable from Python: it copies the line into a
//! [`WorkerLine`], lets the GIL go, and calls the Rust callback. So the callback runs on the
//! relay thread, one line at a time and in order, without the GIL, and may take it (call the
//! driver, say). Without a callback py4cc writes `[py4cc worker <pid> <stream>] <line>` to the
//! process's stderr.

use std::fmt;
use std::sync::Arc;

use pyo3_ffi as ffi;

use crate::callback::{MethodDef, bound_state, fastcall_args};
use crate::error::Result;
use crate::gil::{Gil, GilToken};
use crate::object::Object;

/// Which of a worker's outputs a [`WorkerLine`] comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WorkerStream {
    /// The worker's standard output (fd 1).
    Stdout,
    /// The worker's standard error (fd 2).
    Stderr,
    /// Not written by the worker: something the driver noticed about it (it died, its task
    /// timed out, it was started as a replacement, it failed to start).
    Event,
}

impl WorkerStream {
    /// The name py4cc gives it: `"stdout"`, `"stderr"` or `"event"`.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerStream::Stdout => "stdout",
            WorkerStream::Stderr => "stderr",
            WorkerStream::Event => "event",
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        [WorkerStream::Stdout, WorkerStream::Stderr, WorkerStream::Event].into_iter().find(|s| s.as_str() == name)
    }
}

/// One line of a worker's output, or one event about a worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerLine {
    /// The worker process's id (0 for an event about no particular worker, such as a
    /// replacement that could not be started at all).
    pub pid: u32,
    /// Where the line comes from.
    pub stream: WorkerStream,
    /// The line, without its newline (and without a `\r` before it). Bytes that are not
    /// UTF-8 appear as `\xNN`; a line longer than 64 KiB comes in several pieces. An event's
    /// text may span several lines (a traceback); it names a task by its key. (Without a
    /// callback, py4cc writes events to stderr itself, naming a task by its own number for
    /// it: the key's last 12 digits.)
    pub text: String,
}

/// A callback that receives every [`WorkerLine`] of a driver's workers.
///
/// It is called on the driver's output thread (a Python thread, with the GIL released), one
/// line at a time, in the order the lines were read; events come after the output their
/// worker wrote before them. It should return quickly (log the line, count it): while it
/// runs, no other line is handed on, and a worker whose output pipe fills up waits in its
/// next write. It may call the driver; but `finalize` (or `drop`) on another thread waits up
/// to 3 s for the output thread, so a callback that then calls a method taking the driver's
/// mutex (`submit`, `cancel`, `finalize`, ...) holds that finalize up as long. It should not
/// keep the driver alive (hold a `Weak`, not an `Arc`), or the driver never drops. A panic
/// is caught: the line then goes to stderr, and the first failure is reported there.
///
/// ```
/// use rs4py::{WorkerOutput, WorkerStream};
/// let output = WorkerOutput::new(|line| {
///     if line.stream == WorkerStream::Event {
///         eprintln!("worker {}: {}", line.pid, line.text);
///     }
/// });
/// # let _ = output;
/// ```
#[derive(Clone)]
pub struct WorkerOutput(Arc<dyn Fn(WorkerLine) + Send + Sync>);

impl WorkerOutput {
    /// Wraps a callback.
    pub fn new(callback: impl Fn(WorkerLine) + Send + Sync + 'static) -> WorkerOutput {
        WorkerOutput(Arc::new(callback))
    }

    /// Calls the callback (what the driver's output thread does for each line).
    pub(crate) fn call(&self, line: WorkerLine) {
        (self.0)(line)
    }

    /// The Python callable `sink(pid, stream, line)` to give py4cc. Python owns a copy of the
    /// callback from here (dropped when py4cc drops the callable).
    pub(super) fn sink<'py>(&self, gil: GilToken<'py>) -> Result<Object<'py>> {
        SINK_DEF.bind(gil, Arc::new(self.clone()))
    }
}

impl fmt::Debug for WorkerOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WorkerOutput(..)")
    }
}

static SINK_DEF: MethodDef<WorkerOutput> = MethodDef::fastcall(
    c"worker_output",
    sink,
    c"worker_output(pid, stream, line): hands one worker line to rs4py's callback.",
);

/// `sink(pid, stream, line)`, called by py4cc's output thread with the GIL held. Never
/// unwinds into C.
unsafe extern "C" fn sink(
    capsule: *mut ffi::PyObject,
    args: *mut *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
) -> *mut ffi::PyObject {
    // CPython holds the GIL while it calls a C function: taking it again only counts a guard,
    // which lets the callback run with the GIL released below.
    let gil = Gil::acquire_started();
    // SAFETY: GIL held (CPython calls us with it); these are the call's own arguments.
    let Some(args) = (unsafe { fastcall_args(args, nargs, 3, c"worker_output(pid, stream, line) takes 3 arguments") })
    else {
        return std::ptr::null_mut();
    };
    let line = match read_line(gil.token(), args) {
        Ok(line) => line,
        Err(error) => {
            let message = std::ffi::CString::new(format!("worker_output: {error}")).unwrap_or_default();
            // SAFETY: GIL held; reads a static exception type.
            let value_error = unsafe { ffi::PyExc_ValueError };
            // SAFETY: GIL held; ValueError is an exception type.
            return unsafe { crate::exception::raise(value_error, &message) };
        }
    };
    // SAFETY: GIL held; `capsule` is the `self` of a function bound by SINK_DEF, a
    // MethodDef<WorkerOutput>; the borrow ends with the call (the callback is Fn, Send, Sync).
    let Some(output) = (unsafe { bound_state::<WorkerOutput>(capsule) }) else {
        return std::ptr::null_mut();
    };
    // The user's code must not unwind into CPython; without the GIL it may take it freely.
    let outcome = gil.release_during(|| std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| output.call(line))));
    if outcome.is_err() {
        // SAFETY: GIL held (taken back); reads a static exception type.
        let runtime_error = unsafe { ffi::PyExc_RuntimeError };
        // SAFETY: GIL held; RuntimeError is an exception type.
        return unsafe { crate::exception::raise(runtime_error, c"the Rust worker_output callback panicked") };
    }
    // SAFETY: GIL held; None goes back to CPython as the new reference it expects.
    unsafe { crate::object::new_none_reference() }
}

/// The `(pid, stream, line)` arguments as a [`WorkerLine`].
fn read_line(gil: GilToken<'_>, args: &[*mut ffi::PyObject]) -> Result<WorkerLine> {
    let argument = |index: usize| {
        // SAFETY: GIL held (gil); the argument is a live borrowed reference for the call.
        unsafe { Object::from_borrowed_ptr(gil, args[index]) }
    };
    let pid: u32 = argument(0)?.extract()?;
    let stream: String = argument(1)?.extract()?;
    let stream = WorkerStream::from_name(&stream)
        .ok_or_else(|| crate::Error::Conversion(format!("unknown stream {stream:?} (stdout, stderr or event)")))?;
    let text: String = argument(2)?.extract()?;
    Ok(WorkerLine { pid, stream, text })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::interpreter::{self, StartOptions};
    use parking_lot::Mutex;

    fn collecting() -> (WorkerOutput, Arc<Mutex<Vec<WorkerLine>>>) {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let kept = Arc::clone(&lines);
        (WorkerOutput::new(move |line| kept.lock().push(line)), lines)
    }

    #[test]
    fn the_sink_hands_lines_to_the_callback_without_the_gil() {
        interpreter::start(&StartOptions::default()).unwrap();
        let gil = Gil::acquire().unwrap();
        let held = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&held);
        let (output, lines) = collecting();
        let output = WorkerOutput::new(move |line| {
            seen.lock().push(Gil::is_held());
            output.call(line);
        });
        let sink = output.sink(gil.token()).unwrap();
        sink.call((42, "stdout", "héllo"), ()).unwrap();
        sink.call((0, "event", "a\nb"), ()).unwrap();
        assert_eq!(
            *lines.lock(),
            vec![
                WorkerLine { pid: 42, stream: WorkerStream::Stdout, text: "héllo".into() },
                WorkerLine { pid: 0, stream: WorkerStream::Event, text: "a\nb".into() },
            ]
        );
        assert_eq!(*held.lock(), vec![false, false], "the callback runs without the GIL");

        // The arguments are borrowed: their counts are as before, however often the sink runs
        // (objects made at run time, which no other code shares).
        let (pid, stream, text) = (
            gil.eval("int('1000000')").unwrap(),
            gil.eval("''.join(['std', 'err'])").unwrap(),
            gil.eval("'-'.join('xy')").unwrap(),
        );
        let before = [pid.refcount(), stream.refcount(), text.refcount(), sink.refcount()];
        for _ in 0..1000 {
            sink.call((&pid, &stream, &text), ()).unwrap();
        }
        assert_eq!([pid.refcount(), stream.refcount(), text.refcount(), sink.refcount()], before);
        assert_eq!(lines.lock().len(), 1002);
        assert_eq!(lines.lock()[1001], WorkerLine { pid: 1_000_000, stream: WorkerStream::Stderr, text: "x-y".into() });
    }

    #[test]
    fn wrong_arguments_and_a_panic_raise_in_python() {
        let gil = Gil::acquire().unwrap();
        let (output, lines) = collecting();
        let sink = output.sink(gil.token()).unwrap();
        let err = sink.call((1, "stdout"), ()).unwrap_err();
        assert_eq!(err.to_string(), "TypeError: worker_output(pid, stream, line) takes 3 arguments");
        let err = sink.call((1, "stdin", "x"), ()).unwrap_err();
        assert_eq!(err.python_type(), Some("ValueError"));
        assert!(err.to_string().contains(r#"unknown stream "stdin" (stdout, stderr or event)"#), "{err}");
        let err = sink.call((-1, "stdout", "x"), ()).unwrap_err();
        assert_eq!(err.python_type(), Some("ValueError"), "{err}");
        assert!(lines.lock().is_empty());

        let panicking = WorkerOutput::new(|_| panic!("the callback panics"));
        let sink = panicking.sink(gil.token()).unwrap();
        let err = sink.call((1, "stderr", "x"), ()).unwrap_err();
        assert_eq!(err.to_string(), "RuntimeError: the Rust worker_output callback panicked");
        // The GIL is still ours, and the sink still works.
        assert!(Gil::is_held());
        assert!(sink.call((1, "stderr", "again"), ()).is_err());
    }

    #[test]
    fn the_callback_is_freed_with_the_python_callable() {
        let gil = Gil::acquire().unwrap();
        let (output, _lines) = collecting();
        let inner = Arc::clone(&output.0);
        let before = Arc::strong_count(&inner);
        let sink = output.sink(gil.token()).unwrap();
        assert_eq!(Arc::strong_count(&inner), before + 1);
        drop(sink);
        assert_eq!(Arc::strong_count(&inner), before);
    }
}
