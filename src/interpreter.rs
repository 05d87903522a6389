//! Starting CPython: once per process, from any thread, through `PyConfig`.
//!
//! rs4py never calls `Py_Finalize`. Objects held in [`Handle`](crate::Handle)s may be dropped
//! on any thread at any time, `multiprocessing` keeps Python threads running in the
//! background, and CPython does not support finalizing while such threads run nor
//! re-initialising afterwards (many extension modules cannot be loaded twice). The operating
//! system reclaims the interpreter's memory when the process exits. The one consequence is that
//! Python `atexit` handlers do not run: release what needs releasing (such as a
//! [`Driver`'s worker processes) explicitly, or by dropping its owner.

use std::ffi::{CStr, CString, OsStr};
use std::mem::MaybeUninit;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use once_cell::sync::OnceCell;
use pyo3_ffi as ffi;

use crate::error::{Error, Result};
use crate::gil::Gil;
use crate::object::Object;

/// The interpreter rs4py was built against, as `build.rs` found it.
///
/// ```
/// let build = rs4py::build_python();
/// assert!(std::path::Path::new(build.executable).is_absolute());
/// assert!(build.version.starts_with('3'));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BuildPython {
    /// The real interpreter executable (`sys.executable` at build time; never a shim).
    pub executable: &'static str,
    /// Its `sys.prefix` (a virtualenv's own prefix when built with a venv's python).
    pub prefix: &'static str,
    /// Its `sys.version`.
    pub version: &'static str,
    /// The directory holding its libpython (the rpath of this package's binaries).
    pub lib_dir: &'static str,
}

/// The interpreter rs4py was built against (see [`BuildPython`]).
pub fn build_python() -> BuildPython {
    BuildPython {
        executable: env!("RS4PY_PYTHON_EXECUTABLE"),
        prefix: env!("RS4PY_PYTHON_PREFIX"),
        version: env!("RS4PY_PYTHON_VERSION"),
        lib_dir: env!("RS4PY_PYTHON_LIBDIR"),
    }
}

/// How to start the interpreter. `Default` starts it as `python3` would, with signal handlers
/// left to the Rust program.
#[derive(Debug, Clone, Default)]
pub struct StartOptions {
    /// Directories put at the front of `sys.path`, in order (like `PYTHONPATH`). Worker
    /// processes started by `multiprocessing` inherit them with every start method.
    pub python_path: Vec<PathBuf>,
}

static STARTED: OnceCell<Result<()>> = OnceCell::new();

/// Starts the interpreter if it is not running yet, then adds `options.python_path` to
/// `sys.path` (also when it was already running). Safe to call from any number of threads at
/// once: exactly one of them starts Python, the others wait for it. Afterwards no thread holds
/// the GIL, so any thread can take it with [`Gil::acquire`].
///
/// The thread that starts Python becomes Python's main thread (`threading.main_thread()`,
/// and the only one allowed `signal.signal`): start it from the program's main thread if
/// Python code you run cares. If the host program started Python itself, rs4py uses that
/// interpreter as it is; the host must have released the GIL.
///
/// Fails with [`Error::Start`] if Python cannot start, or if the libpython loaded at run time
/// is not the one rs4py was built against (a binary without rpath picking up another Python);
/// a failed start is remembered and reported to every later caller.
///
/// ```
/// let dir = std::env::temp_dir();
/// rs4py::start(&rs4py::StartOptions { python_path: vec![dir.clone()] })?;
/// let gil = rs4py::Gil::acquire()?;
/// let path: Vec<String> = gil.import("sys")?.getattr("path")?.extract()?;
/// assert!(path.contains(&dir.to_string_lossy().into_owned()));
/// # Ok::<(), rs4py::Error>(())
/// ```
pub fn start(options: &StartOptions) -> Result<()> {
    ensure_started()?;
    if options.python_path.is_empty() {
        return Ok(());
    }
    let gil = Gil::acquire()?;
    prepend_sys_path(&gil, &options.python_path)
}

/// Starts the interpreter with default options unless it already runs.
#[inline]
pub(crate) fn ensure_started() -> Result<()> {
    STARTED
        .get_or_init(|| {
            // SAFETY: runs once per process (OnceCell), before any other rs4py call into Python.
            unsafe { initialize() }
        })
        .clone()
}

/// Whether the interpreter has been started (by rs4py or by the host program).
pub fn is_started() -> bool {
    // SAFETY: Py_IsInitialized may be called at any time, with or without the GIL.
    unsafe { ffi::Py_IsInitialized() != 0 }
}

unsafe fn initialize() -> Result<()> {
    // SAFETY: the caller guarantees no concurrent initialisation; these two functions may be
    // called before Py_Initialize.
    unsafe {
        if ffi::Py_IsInitialized() != 0 {
            // Someone else (the host program) started Python; it keeps managing it.
            return Ok(());
        }
        check_loaded_library(CStr::from_ptr(ffi::Py_GetVersion()))?;
    }
    let build = build_python();
    let executable = c_string(build.executable)?;
    let sigint_before = current_sigint_action();

    let mut preconfig = MaybeUninit::<ffi::PyPreConfig>::uninit();
    // SAFETY: PyPreConfig_InitPythonConfig fully initialises the plain struct; Py_PreInitialize
    // reads it. Locale coercion stays off: it would setenv("LC_CTYPE") in a process whose other
    // threads may be reading the environment (UTF-8 mode still covers the C locale).
    unsafe {
        ffi::PyPreConfig_InitPythonConfig(preconfig.as_mut_ptr());
        let preconfig = preconfig.assume_init_mut();
        preconfig.coerce_c_locale = 0;
        preconfig.coerce_c_locale_warn = 0;
        start_status(ffi::Py_PreInitialize(preconfig))?;
    }

    let mut config = MaybeUninit::<ffi::PyConfig>::uninit();
    // SAFETY: PyConfig_InitPythonConfig fully initialises the struct; every exit path below
    // calls PyConfig_Clear on it exactly once. Strings are copied by PyConfig_SetBytesString.
    unsafe {
        ffi::PyConfig_InitPythonConfig(config.as_mut_ptr());
        let config = config.assume_init_mut();
        config.install_signal_handlers = 0;
        config.parse_argv = 0;
        let mut status = ffi::PyConfig_SetBytesString(config, &mut config.executable, executable.as_ptr());
        if ffi::PyStatus_Exception(status) == 0 {
            status = ffi::PyConfig_SetBytesString(config, &mut config.program_name, executable.as_ptr());
        }
        if ffi::PyStatus_Exception(status) == 0 {
            status = ffi::Py_InitializeFromConfig(config);
        }
        ffi::PyConfig_Clear(config);
        start_status(status)?;
        // Py_InitializeFromConfig leaves this thread holding the GIL; hand it back so that any
        // thread can take it. This thread keeps its thread state for its later guards.
        crate::gil::keep_thread_state(ffi::PyEval_SaveThread());
    }
    restore_sigint(&sigint_before);
    Ok(())
}

fn current_sigint_action() -> libc::sigaction {
    let mut action = MaybeUninit::<libc::sigaction>::zeroed();
    // SAFETY: a null new action only queries; sigaction fills `action` (zeroed if it fails).
    unsafe {
        libc::sigaction(libc::SIGINT, std::ptr::null(), action.as_mut_ptr());
        action.assume_init()
    }
}

/// Importing `signal` installs Python's SIGINT handler even with signal handlers turned off
/// (and `multiprocessing`, among others, imports it). Import it now, once, then give SIGINT
/// back to the Rust program exactly as it was, telling Python too where it can know.
fn restore_sigint(before: &libc::sigaction) {
    let gil = Gil::acquire_started();
    // Telling Python is a courtesy (so that `signal.getsignal` is truthful): if it fails, the
    // error is fetched and dropped, and the handler is restored all the same.
    let _ = tell_python_about_sigint(&gil, before.sa_sigaction);
    // SAFETY: `before` is the action sigaction reported for SIGINT before Python started.
    unsafe { libc::sigaction(libc::SIGINT, before, std::ptr::null_mut()) };
}

fn tell_python_about_sigint(gil: &Gil, handler: libc::sighandler_t) -> Result<()> {
    let signal = gil.import("signal")?;
    let name = match handler {
        libc::SIG_DFL => "SIG_DFL",
        libc::SIG_IGN => "SIG_IGN",
        _ => return Ok(()),
    };
    signal.call_method("signal", (signal.getattr("SIGINT")?, signal.getattr(name)?), ())?;
    Ok(())
}

/// Refuses a libpython other than the build interpreter's: same-named libraries of two
/// installations (pyenv's and the system's) would otherwise mix silently.
fn check_loaded_library(loaded: &CStr) -> Result<()> {
    let loaded = loaded.to_string_lossy();
    let build = build_python();
    if loaded == build.version {
        return Ok(());
    }
    Err(Error::Start(format!(
        "the libpython loaded at run time reports version {loaded:?}, but rs4py was built \
         against {:?} ({}, library directory {}); link with rpath to that directory (see the \
         rs4py README) or set LD_LIBRARY_PATH",
        build.version, build.executable, build.lib_dir
    )))
}

/// A start step's status: fine, or the error it describes.
fn start_status(status: ffi::PyStatus) -> Result<()> {
    // SAFETY: PyStatus_Exception only reads the struct, and may be called before Python runs.
    if unsafe { ffi::PyStatus_Exception(status) } == 0 { Ok(()) } else { Err(Error::Start(status_message(&status))) }
}

fn status_message(status: &ffi::PyStatus) -> String {
    let text = |ptr: *const libc::c_char| {
        if ptr.is_null() {
            None
        } else {
            // SAFETY: PyStatus messages are static NUL-terminated C strings.
            Some(unsafe { CStr::from_ptr(ptr) }.to_string_lossy().into_owned())
        }
    };
    match (text(status.func), text(status.err_msg)) {
        (Some(func), Some(msg)) => format!("{func}: {msg}"),
        (None, Some(msg)) => msg,
        _ => format!("Python asked to exit with code {}", status.exitcode),
    }
}

fn c_string(text: &str) -> Result<CString> {
    CString::new(text).map_err(|_| Error::InvalidArgument(format!("{text:?} contains a NUL byte")))
}

/// Puts `dirs` at the front of `sys.path`, in order, skipping those already there.
pub(crate) fn prepend_sys_path(gil: &Gil, dirs: &[PathBuf]) -> Result<()> {
    let sys_path = gil.import("sys")?.getattr("path")?;
    for (position, dir) in dirs.iter().enumerate() {
        let entry = path_to_python(gil, dir)?;
        if !sys_path.contains(&entry)? {
            sys_path.call_method("insert", (position, entry), ())?;
        }
    }
    Ok(())
}

/// A path as Python's `os.fsdecode` would give it (undecodable bytes as surrogate escapes).
pub(crate) fn path_to_python<'py>(gil: &'py Gil, path: &Path) -> Result<Object<'py>> {
    let bytes = OsStr::as_bytes(path.as_os_str());
    let len = isize::try_from(bytes.len()).map_err(|_| Error::InvalidArgument("path too long".into()))?;
    // SAFETY: the GIL is held (gil); the function reads `len` bytes from a live slice and
    // returns a new reference or NULL with an exception set, which from_owned_ptr handles.
    unsafe { Object::from_owned_ptr(gil, ffi::PyUnicode_DecodeFSDefaultAndSize(bytes.as_ptr().cast(), len)) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn another_libpython_is_refused_with_the_fix_in_the_message() {
        let err = check_loaded_library(c"3.11.2 (main, Apr 28 2025, 14:11:48) [GCC 12.2.0]").unwrap_err();
        let Error::Start(message) = err else { panic!("expected Error::Start") };
        assert!(message.contains("3.11.2 (main, Apr 28 2025"), "{message}");
        assert!(message.contains(build_python().executable), "{message}");
        assert!(message.contains("rpath"), "{message}");
    }

    #[test]
    fn the_build_libpython_is_accepted() {
        let version = CString::new(build_python().version).unwrap();
        assert_eq!(check_loaded_library(&version), Ok(()));
    }
}
