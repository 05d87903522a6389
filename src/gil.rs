//! The GIL guard, and the entry points that need nothing but the GIL: import, eval, run.

use std::cell::Cell;
use std::ffi::CString;
use std::marker::PhantomData;

use pyo3_ffi as ffi;

use crate::error::{Error, Result};
use crate::exception;
use crate::interpreter;
use crate::object::Object;

thread_local! {
    /// How many `Gil` guards this thread holds, and the state to hand back when the outermost
    /// one goes. Counting here lets nested guards drop in any order.
    static HELD: Cell<(usize, Option<ffi::PyGILState_STATE>)> = const { Cell::new((0, None)) };
}

/// Proof that the current thread holds the GIL, released when dropped.
///
/// Guards nest: a thread may acquire again while it holds one, and the GIL is released when
/// its last guard goes, whatever the order. A `Gil` is neither `Send` nor `Sync`: it belongs
/// to the thread that acquired it, and so do the [`Object`]s tied to it.
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
        interpreter::ensure_started()?;
        Ok(Gil::acquire_started())
    }

    /// Takes the GIL, knowing that the interpreter runs (during its start, say).
    #[inline]
    pub(crate) fn acquire_started() -> Gil {
        HELD.with(|held| {
            let (depth, state) = held.get();
            if depth == 0 {
                // SAFETY: the interpreter is initialised (ensure_started) and this thread holds
                // no rs4py guard; PyGILState_Ensure works from any thread, making a thread
                // state for it if needed.
                let state = unsafe { ffi::PyGILState_Ensure() };
                held.set((1, Some(state)));
            } else {
                held.set((depth + 1, state));
            }
        });
        Gil { _not_send: PhantomData }
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
            held: (usize, Option<ffi::PyGILState_STATE>),
        }
        impl Drop for Reacquire {
            fn drop(&mut self) {
                // SAFETY: thread_state is the one PyEval_SaveThread returned on this thread;
                // restoring it takes the GIL back, also while unwinding from a panic in work
                // (which, inside rs4py, takes no guard of its own).
                unsafe { ffi::PyEval_RestoreThread(self.thread_state) };
                HELD.with(|held| held.set(self.held));
            }
        }
        let held = HELD.with(|held| held.replace((0, None)));
        // SAFETY: this thread holds the GIL (self proves it); PyEval_SaveThread releases it
        // and returns the thread state to restore.
        let thread_state = unsafe { ffi::PyEval_SaveThread() };
        let _reacquire = Reacquire { thread_state, held };
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
        HELD.with(|held| match held.get() {
            (1, Some(state)) => {
                held.set((0, None));
                // SAFETY: this is the outermost guard of this thread; `state` came from its
                // PyGILState_Ensure, so this is the matching release.
                unsafe { ffi::PyGILState_Release(state) };
            }
            (depth, state) => held.set((depth.saturating_sub(1), state)),
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
