//! The GIL guard, and the entry points that need nothing but the GIL: import, eval, run.

use std::cell::Cell;
use std::ffi::CString;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};

use pyo3_ffi as ffi;

use crate::error::{Error, Result};
use crate::exception;
use crate::interpreter;
use crate::object::Object;

/// How many times a thread took the GIL through rs4py; see [`gil_acquisitions`].
static ACQUISITIONS: AtomicU64 = AtomicU64::new(0);

/// How many times, since the process started, a thread took the GIL through rs4py: an
/// outermost [`Gil`] guard that did not find it already held, or rs4py taking it back after
/// letting it go around a blocking call. Nested guards and Python's own threads (those that
/// `threading` starts) are not counted.
///
/// A diagnostic for benchmarks and profiles (how many GIL hand-offs a piece of work costs,
/// measured as the difference between two readings), not a synchronisation tool: the count
/// is relaxed, and other threads may take the GIL between two readings.
///
/// ```
/// let before = rs4py::gil_acquisitions();
/// drop(rs4py::Gil::acquire()?);
/// assert!(rs4py::gil_acquisitions() > before);
/// # Ok::<(), rs4py::Error>(())
/// ```
pub fn gil_acquisitions() -> u64 {
    ACQUISITIONS.load(Ordering::Relaxed)
}

/// Counts one acquisition; called with the GIL just taken, so the counter's cache line moves
/// between threads with the GIL and costs no extra contention.
#[inline(always)]
fn count_acquisition() {
    ACQUISITIONS.fetch_add(1, Ordering::Relaxed);
}

/// How the outermost guard of a thread took the GIL, and so how it gives it back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outermost {
    /// Restored the thread's kept state (`PyEval_RestoreThread`): release with `PyEval_SaveThread`.
    Restored,
    /// Found the GIL already held through the kept state (by PyO3, or C code that called
    /// `PyGILState_Ensure`): leave it to its holder.
    AlreadyHeld,
    /// `PyGILState_Ensure`, on a thread whose state rs4py does not keep: `PyGILState_Release`.
    Ensured(ffi::PyGILState_STATE),
}

thread_local! {
    // One thread's GIL bookkeeping, in cells without destructors, so that they stay usable
    // while the thread's other thread-locals are destroyed.
    /// How many `Gil` guards the thread holds. Counting lets nested guards drop in any order.
    static DEPTH: Cell<usize> = const { Cell::new(0) };
    /// How the outermost of them took the GIL (meaningless while DEPTH is 0).
    static OUTERMOST: Cell<Outermost> = const { Cell::new(Outermost::Restored) };
    /// The thread state kept for this thread's life, or null before its first acquisition.
    static KEPT: Cell<*mut ffi::PyThreadState> = const { Cell::new(std::ptr::null_mut()) };
    /// Its destructor deletes the thread state kept for this thread, when the thread exits.
    static DELETE_AT_EXIT: DeleteAtExit = const { DeleteAtExit };
}

/// Proof that the current thread holds the GIL, released when dropped.
///
/// Guards nest: a thread may acquire again while it holds one, and the GIL is released when
/// its last guard goes, whatever the order. A `Gil` is neither `Send` nor `Sync`: it belongs
/// to the thread that acquired it, and so do the [`Object`]s tied to it.
///
/// # Thread states
///
/// Python keeps a thread state for every thread that runs Python code. rs4py makes one on a
/// thread's first acquisition and keeps it until the thread exits, so taking the GIL again
/// costs about what it costs on the thread that started Python, and Python's thread-local data
/// (`threading.local`) lives as long as the thread. The thread state is the one the
/// `PyGILState` API knows for the thread, so C extensions and PyO3 that call
/// `PyGILState_Ensure` on the same thread, inside or outside a `Gil`, share it. On threads that
/// Python made (`threading.Thread`) or that already had a thread state from other code, rs4py
/// uses that state only while it holds a guard, through `PyGILState_Ensure`.
///
/// When the thread exits, a thread-local destructor takes the GIL once more to clear and delete
/// the kept state. A guard still alive then (one kept in another thread-local, dropped later)
/// deletes it when it goes; a guard leaked with `mem::forget` keeps the GIL, as it would on a
/// live thread, and its thread state is never deleted. The process's main thread skips this at
/// exit: the process is ending, and waiting for the GIL there could only delay it.
///
/// So a thread that has taken the GIL (dropping a [`Handle`](crate::Handle) takes it too)
/// needs it once more to exit, after its last guard is gone: joining it while holding a guard
/// (`JoinHandle::join`, the end of a `thread::scope`) waits forever, the join for the exit and
/// the exit for the GIL. Drop the guard before joining.
///
/// ```
/// let gil = rs4py::Gil::acquire()?;
/// let inner = rs4py::Gil::acquire()?; // nesting is fine
/// assert_eq!(gil.eval("6 * 7")?.extract::<i64>()?, 42);
/// drop(gil);
/// assert_eq!(inner.eval("1 + 1")?.extract::<i64>()?, 2);
/// # Ok::<(), rs4py::Error>(())
/// ```
///
/// A `Gil` cannot leave its thread:
///
/// ```compile_fail
/// let gil = rs4py::Gil::acquire().unwrap();
/// std::thread::spawn(move || drop(gil));
/// ```
pub struct Gil {
    _not_send: PhantomData<*mut ()>,
}

impl Gil {
    /// Takes the GIL for the current thread, starting the interpreter with default
    /// [`StartOptions`](crate::StartOptions) if it is not running yet. Blocks while another
    /// thread holds the GIL.
    #[inline]
    pub fn acquire() -> Result<Gil> {
        // A guard held or a thread state kept means Python runs: no need to ask.
        match Gil::acquire_kept() {
            Some(gil) => Ok(gil),
            None => Gil::acquire_first(),
        }
    }

    /// Takes the GIL, knowing that the interpreter runs (during its start, say).
    #[inline]
    pub(crate) fn acquire_started() -> Gil {
        Gil::acquire_kept().unwrap_or_else(|| {
            let outermost = first_acquisition();
            OUTERMOST.set(outermost);
            DEPTH.set(1);
            Gil { _not_send: PhantomData }
        })
    }

    /// Takes the GIL if this thread already holds a guard or keeps a thread state, the common
    /// case and the fast one; `None` otherwise.
    #[inline(always)]
    fn acquire_kept() -> Option<Gil> {
        let depth = DEPTH.get();
        if depth == 0 {
            let kept = KEPT.get();
            if kept.is_null() {
                return None;
            }
            // Recorded after the fact: take_kept runs no Python code that could take a guard
            // meanwhile.
            OUTERMOST.set(take_kept(kept));
        }
        DEPTH.set(depth + 1);
        Some(Gil { _not_send: PhantomData })
    }

    /// Starts Python if need be, then takes the GIL on a thread whose state rs4py keeps not yet.
    #[cold]
    #[inline(never)]
    fn acquire_first() -> Result<Gil> {
        interpreter::ensure_started()?;
        Ok(Gil::acquire_started())
    }

    /// Whether the current thread holds the GIL (through rs4py or otherwise).
    pub fn is_held() -> bool {
        // SAFETY: PyGILState_Check may be called without the GIL once Python runs.
        interpreter::is_started() && unsafe { ffi::PyGILState_Check() } != 0
    }

    /// Runs `work` with the GIL released, then takes it back: for work inside rs4py known to
    /// touch no Python object and to leave the guard count as it found it (taking a lock).
    ///
    /// Not public: with owned guards, safe code could smuggle an `Object` into `work` (a leaked
    /// `'static` guard and a thread-local) and use it without the GIL. A user lets the GIL go
    /// by dropping the guard.
    pub(crate) fn release_during<T>(&self, work: impl FnOnce() -> T) -> T {
        struct Reacquire {
            thread_state: *mut ffi::PyThreadState,
            depth: usize,
            outermost: Outermost,
        }
        impl Drop for Reacquire {
            fn drop(&mut self) {
                // SAFETY: thread_state is the one PyEval_SaveThread returned on this thread;
                // restoring it takes the GIL back, also while unwinding from a panic in work
                // (which, inside rs4py, takes no guard of its own).
                unsafe { ffi::PyEval_RestoreThread(self.thread_state) };
                count_acquisition();
                OUTERMOST.set(self.outermost);
                DEPTH.set(self.depth);
            }
        }
        // The kept thread state stays recorded: a guard taken inside `work` restores it.
        let (depth, outermost) = (DEPTH.replace(0), OUTERMOST.get());
        // SAFETY: this thread holds the GIL (self proves it); PyEval_SaveThread releases it
        // and returns the thread state to restore.
        let thread_state = unsafe { ffi::PyEval_SaveThread() };
        let _reacquire = Reacquire { thread_state, depth, outermost };
        work()
    }

    /// The token that proves, by value, that this thread holds the GIL for as long as `self`
    /// is borrowed: what [`ToPython`](crate::ToPython) and the other conversions take.
    ///
    /// ```
    /// use rs4py::ToPython;
    /// let gil = rs4py::Gil::acquire()?;
    /// let list = vec![1, 2].to_python(gil.token())?;
    /// assert_eq!(list.repr()?, "[1, 2]");
    /// # Ok::<(), rs4py::Error>(())
    /// ```
    #[inline]
    pub fn token(&self) -> GilToken<'_> {
        GilToken { _held: PhantomData }
    }

    /// Imports a module by its dotted name (`PyImport_Import`, which honours import hooks).
    ///
    /// ```
    /// let gil = rs4py::Gil::acquire()?;
    /// let path = gil.import("os.path")?;
    /// let joined: String = path.call_method("join", ("a", "b"), ())?.extract()?;
    /// assert_eq!(joined, "a/b");
    /// let missing = gil.import("no_such_module").unwrap_err();
    /// assert_eq!(missing.python_type(), Some("ModuleNotFoundError"));
    /// # Ok::<(), rs4py::Error>(())
    /// ```
    pub fn import(&self, name: &str) -> Result<Object<'_>> {
        self.token().import(name)
    }

    /// Evaluates one Python expression in the namespace of `__main__` and returns its value.
    ///
    /// ```
    /// let gil = rs4py::Gil::acquire()?;
    /// let words: Vec<String> = gil.eval("'a b c'.split()")?.extract()?;
    /// assert_eq!(words, ["a", "b", "c"]);
    /// # Ok::<(), rs4py::Error>(())
    /// ```
    pub fn eval(&self, expression: &str) -> Result<Object<'_>> {
        self.token().eval(expression)
    }

    /// Runs Python statements in the namespace of `__main__` (what they define stays there,
    /// for later `run` and `eval` calls).
    ///
    /// ```
    /// let gil = rs4py::Gil::acquire()?;
    /// gil.run("def double(x):\n    return 2 * x\n")?;
    /// assert_eq!(gil.eval("double(21)")?.extract::<i64>()?, 42);
    /// # Ok::<(), rs4py::Error>(())
    /// ```
    pub fn run(&self, statements: &str) -> Result<()> {
        self.token().run(statements)
    }

    /// Python's `None`.
    pub fn none(&self) -> Object<'_> {
        self.token().none()
    }
}

impl Drop for Gil {
    #[inline]
    fn drop(&mut self) {
        let depth = DEPTH.get().saturating_sub(1);
        // Recorded first: releasing may run Python code (destructors) that takes a guard.
        DEPTH.set(depth);
        if depth > 0 {
            return;
        }
        match OUTERMOST.get() {
            // SAFETY: the outermost guard restored the kept thread state and this thread holds
            // the GIL with it; PyEval_SaveThread releases it and keeps the state.
            Outermost::Restored => _ = unsafe { ffi::PyEval_SaveThread() },
            // SAFETY: `state` came from this thread's PyGILState_Ensure for the outermost guard;
            // this is the matching release.
            Outermost::Ensured(state) => unsafe { ffi::PyGILState_Release(state) },
            Outermost::AlreadyHeld => {}
        }
    }
}

/// Takes the GIL with the thread's kept state, unless this thread holds it already through
/// that state (code outside rs4py took it: PyO3, or C that called `PyGILState_Ensure`).
#[inline(always)]
fn take_kept(kept: *mut ffi::PyThreadState) -> Outermost {
    // SAFETY: PyThreadState_GetUnchecked may be called without the GIL; it returns the thread
    // state attached to this thread (3.12+), or the one holding the GIL in any thread (3.9 to
    // 3.11), either way equal to `kept` exactly when this thread holds the GIL through it.
    if unsafe { ffi::compat::PyThreadState_GetUnchecked() } == kept {
        return Outermost::AlreadyHeld;
    }
    // SAFETY: `kept` is this thread's own state, alive until the thread exits, and not current:
    // restoring it takes the GIL.
    unsafe { ffi::PyEval_RestoreThread(kept) };
    count_acquisition();
    Outermost::Restored
}

/// The first acquisition on a thread whose state rs4py does not keep yet: makes the thread
/// state to keep, or, where the thread has one from elsewhere, uses it for this guard only.
#[cold]
fn first_acquisition() -> Outermost {
    // SAFETY: PyGILState_GetThisThreadState may be called without the GIL; null means this
    // thread has no thread state.
    let existing = unsafe { ffi::PyGILState_GetThisThreadState() };
    // A thread state from elsewhere may be deleted by its owner (Python deletes a Python
    // thread's when it ends, PyGILState_Release the one its Ensure made): never kept. Neither
    // is one made while the thread exits, when no destructor could delete it any more.
    if !existing.is_null() || DELETE_AT_EXIT.try_with(|_| ()).is_err() {
        // SAFETY: the interpreter runs; PyGILState_Ensure takes the GIL with the thread's
        // state, making one if needed; the outermost guard's drop releases it.
        let state = unsafe { ffi::PyGILState_Ensure() };
        if matches!(state, ffi::PyGILState_STATE::PyGILState_UNLOCKED) {
            count_acquisition();
        }
        return Outermost::Ensured(state);
    }
    // SAFETY: the thread has no thread state: PyGILState_Ensure makes one (as the PyGILState
    // API's own, so PyGILState_Check and other callers of Ensure on this thread find it) and
    // takes the GIL with it. Its Ensure is never released; DeleteAtExit deletes the state.
    unsafe { ffi::PyGILState_Ensure() };
    count_acquisition();
    // SAFETY: as above; the state just made is this thread's in the PyGILState API.
    KEPT.set(unsafe { ffi::PyGILState_GetThisThreadState() });
    Outermost::Restored
}

/// Keeps `thread_state` for the current thread, which holds no guard: the state of the thread
/// that started Python, alive as long as the interpreter (rs4py never finalizes it).
pub(crate) fn keep_thread_state(thread_state: *mut ffi::PyThreadState) {
    KEPT.set(thread_state);
}

/// Deletes the current thread's kept state when the thread exits.
///
/// Waiting for the GIL here cannot be avoided by leaving the state to another thread to
/// delete: from CPython 3.12 deleting a thread state unbinds the `PyGILState` state of the
/// thread that deletes it, so only its own thread may.
struct DeleteAtExit;

impl Drop for DeleteAtExit {
    fn drop(&mut self) {
        // Guards taken from here on (by other thread-locals' destructors) use PyGILState_Ensure.
        let kept = KEPT.replace(std::ptr::null_mut());
        if kept.is_null() {
            return;
        }
        if DEPTH.get() > 0 {
            // A guard outlives this destructor (it sits in a thread-local destroyed later):
            // hand the state over to it as an Ensure that it releases, deleting the state.
            OUTERMOST.set(match OUTERMOST.get() {
                Outermost::Restored => Outermost::Ensured(ffi::PyGILState_STATE::PyGILState_UNLOCKED),
                Outermost::AlreadyHeld => Outermost::Ensured(ffi::PyGILState_STATE::PyGILState_LOCKED),
                ensured => ensured,
            });
            return;
        }
        if is_process_main_thread() {
            return;
        }
        // SAFETY: as in take_kept.
        if unsafe { ffi::compat::PyThreadState_GetUnchecked() } == kept {
            // Code outside rs4py holds the GIL through this state as the thread exits; its own
            // release would fail if the state were gone, so it stays.
            return;
        }
        // SAFETY: `kept` is this thread's state, not current; restoring it takes the GIL, which
        // PyThreadState_Clear needs.
        unsafe { ffi::PyEval_RestoreThread(kept) };
        count_acquisition();
        // SAFETY: GIL held through `kept`, current; clearing drops the thread's Python data and
        // may run destructors, which find the state still current and its PyGILState count 1.
        unsafe { ffi::PyThreadState_Clear(kept) };
        // SAFETY: `kept` is current and cleared: this unlinks and frees it, forgets it in the
        // PyGILState API and releases the GIL.
        unsafe { ffi::PyThreadState_DeleteCurrent() };
    }
}

/// Whether this is the thread the process started with, whose thread-locals are destroyed as
/// the process exits.
#[cfg(target_os = "linux")]
fn is_process_main_thread() -> bool {
    // SAFETY: gettid only reads the calling thread's id.
    let thread = unsafe { libc::syscall(libc::SYS_gettid) };
    // SAFETY: getpid only reads the process's id.
    thread == libc::c_long::from(unsafe { libc::getpid() })
}

/// Whether this is the thread the process started with, whose thread-locals are destroyed as
/// the process exits.
#[cfg(any(target_vendor = "apple", target_os = "freebsd"))]
fn is_process_main_thread() -> bool {
    // SAFETY: pthread_main_np only reads the calling thread's identity.
    unsafe { libc::pthread_main_np() == 1 }
}

/// Not known on this platform: the main thread deletes its kept state at exit like any other.
#[cfg(not(any(target_os = "linux", target_vendor = "apple", target_os = "freebsd")))]
fn is_process_main_thread() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `body` on a new thread (whose thread-state story starts from scratch) and joins it.
    fn on_new_thread(body: impl FnOnce() + Send + 'static) {
        std::thread::spawn(body).join().unwrap();
    }

    fn release_during_round_trip(gil: &Gil) {
        let seen = gil.release_during(|| {
            let released = !Gil::is_held();
            let other = std::thread::spawn(|| Gil::acquire().unwrap().eval("1 + 1").unwrap().extract::<i64>().unwrap());
            let other = other.join().unwrap();
            let inner = Gil::acquire().unwrap();
            let inside = Gil::is_held() && inner.eval("3").unwrap().extract::<i64>().unwrap() == 3;
            drop(inner);
            (released, other, inside, !Gil::is_held())
        });
        assert_eq!(seen, (true, 2, true, true), "released, another thread ran, a guard inside worked, then released");
        assert!(Gil::is_held(), "taken back");
        assert_eq!(gil.eval("'back'").unwrap().extract::<String>().unwrap(), "back");
    }

    #[test]
    fn gil_acquisitions_counts_outermost_guards_and_takings_back_not_nested_guards() {
        on_new_thread(|| {
            let gil = Gil::acquire().unwrap();
            // While this thread holds the GIL no other can take it, so the count stands still
            // but for this thread's own acquisitions.
            let held = gil_acquisitions();
            let nested = Gil::acquire().unwrap();
            assert_eq!(gil_acquisitions(), held, "a nested guard takes nothing");
            drop(nested);
            gil.release_during(|| ());
            assert!(gil_acquisitions() > held, "taking the GIL back after release_during counts");
            let back = gil_acquisitions();
            drop(gil);
            let again = Gil::acquire().unwrap();
            assert!(gil_acquisitions() > back, "a new outermost guard counts");
            drop(again);
        });
    }

    #[test]
    fn release_during_lets_the_gil_go_and_takes_it_back_on_a_kept_thread_state() {
        on_new_thread(|| {
            let gil = Gil::acquire().unwrap();
            let nested = Gil::acquire().unwrap();
            release_during_round_trip(&nested);
            drop(nested);
            assert!(Gil::is_held(), "the outer guard still holds it");
            drop(gil);
            assert!(!Gil::is_held());
        });
    }

    #[test]
    fn release_during_inside_a_foreign_pygilstate_ensure() {
        // Started elsewhere: the thread that starts Python keeps its state from the start.
        on_new_thread(|| interpreter::ensure_started().unwrap());
        on_new_thread(|| {
            // SAFETY: Python runs; this Ensure (which makes this thread's state) is paired with
            // the Release below.
            let state = unsafe { ffi::PyGILState_Ensure() };
            let gil = Gil::acquire().unwrap();
            assert_eq!(OUTERMOST.get(), Outermost::Ensured(ffi::PyGILState_STATE::PyGILState_LOCKED));
            release_during_round_trip(&gil);
            drop(gil);
            assert!(Gil::is_held(), "Ensure still holds it");
            // SAFETY: matches the Ensure above.
            unsafe { ffi::PyGILState_Release(state) };
            assert!(!Gil::is_held());
            assert!(KEPT.get().is_null(), "a thread state made by Ensure is never kept");
        });
    }
}

/// Proof that the current thread holds the GIL for `'py`, passed by value: a zero-sized,
/// `Copy` marker made only from a borrowed [`Gil`] ([`Gil::token`]), and carried by every
/// [`Object<'py>`](Object) ([`Object::gil`]).
///
/// It offers what needs nothing but the GIL (`import`, `eval`, `run`, `none`), like the
/// `Gil` it came from. Like a `Gil`, it cannot leave its thread, and it cannot outlive the
/// borrow of the guard it came from:
///
/// ```compile_fail
/// let gil = rs4py::Gil::acquire().unwrap();
/// let token = gil.token();
/// std::thread::spawn(move || drop(token));
/// ```
///
/// ```compile_fail
/// let token = {
///     let gil = rs4py::Gil::acquire().unwrap();
///     gil.token()
/// };
/// ```
#[derive(Clone, Copy, Debug)]
pub struct GilToken<'py> {
    // Borrows a guard in name only: no pointer is kept. `&Gil` is neither `Send` nor `Sync`
    // (a `Gil` is not `Sync`), and so neither is the token.
    _held: PhantomData<&'py Gil>,
}

impl<'py> From<&'py Gil> for GilToken<'py> {
    #[inline]
    fn from(gil: &'py Gil) -> Self {
        gil.token()
    }
}

impl<'py> GilToken<'py> {
    /// Imports a module by its dotted name; see [`Gil::import`].
    pub fn import(self, name: &str) -> Result<Object<'py>> {
        let name = Object::from_str(self, name)?;
        // SAFETY: GIL held (self); PyImport_Import borrows `name` and returns a new reference
        // or NULL with an exception set.
        let module = unsafe { ffi::PyImport_Import(name.as_ptr()) };
        // SAFETY: a new reference or NULL with an exception set, as just said.
        unsafe { Object::from_owned_ptr(self, module) }
    }

    /// Evaluates one Python expression in the namespace of `__main__`; see [`Gil::eval`].
    pub fn eval(self, expression: &str) -> Result<Object<'py>> {
        self.run_source(expression, ffi::Py_eval_input)
    }

    /// Runs Python statements in the namespace of `__main__`; see [`Gil::run`].
    pub fn run(self, statements: &str) -> Result<()> {
        self.run_source(statements, ffi::Py_file_input).map(drop)
    }

    fn run_source(self, source: &str, start: libc::c_int) -> Result<Object<'py>> {
        let source = CString::new(source).map_err(|e| {
            Error::InvalidArgument(format!("Python source contains a NUL byte at offset {}", e.nul_position()))
        })?;
        // SAFETY: GIL held (self); returns a borrowed reference to __main__, kept alive by
        // sys.modules, or NULL with an exception set.
        let main = unsafe { ffi::PyImport_AddModule(c"__main__".as_ptr()) };
        if main.is_null() {
            return Err(exception::fetch_error(self));
        }
        // SAFETY: GIL held; `main` is a module (what PyImport_AddModule returns); its dict is
        // a borrowed reference that the module keeps alive.
        let globals = unsafe { ffi::PyModule_GetDict(main) };
        // SAFETY: GIL held; borrows the source and the globals, returns a new reference or
        // NULL with an exception set.
        let result = unsafe { ffi::PyRun_String(source.as_ptr(), start, globals, globals) };
        // SAFETY: a new reference or NULL with an exception set, as just said.
        unsafe { Object::from_owned_ptr(self, result) }
    }

    /// Python's `None`.
    pub fn none(self) -> Object<'py> {
        // SAFETY: GIL held (self); reads the address of the static None object.
        let none = unsafe { ffi::Py_None() };
        // SAFETY: a borrowed reference to a static object that is never NULL, so
        // from_borrowed_ptr cannot fail.
        unsafe { Object::from_borrowed_ptr(self, none) }.expect("Py_None is never NULL")
    }
}
