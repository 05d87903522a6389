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
use crate::gil::{Gil, GilToken};
use crate::object::Object;

/// The interpreter rs4py was built against, as `build.rs` found it.
///
/// ```
/// let build = rs4py::build_python();
/// assert!(std::path::Path::new(build.executable).is_absolute());
/// assert!(build.version.starts_with('3'));
/// assert_eq!(build.hexversion >> 24, 3);
/// assert!(std::path::Path::new(build.library).is_file());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BuildPython {
    /// The real interpreter executable (`sys.executable` at build time; never a shim).
    pub executable: &'static str,
    /// Its `sys.prefix` (a virtualenv's own prefix when built with a venv's python).
    pub prefix: &'static str,
    /// Its `sys.version`, on one line (3.9 puts the compiler on a second line); for display.
    pub version: &'static str,
    /// Its `sys.hexversion` (`0x030B07F0` for 3.11.7).
    pub hexversion: u32,
    /// Its libpython's real path (symbolic links resolved): the library a binary built here
    /// must load, as [`start`] checks.
    pub library: &'static str,
    /// The directory holding its libpython (the rpath of this package's binaries).
    pub lib_dir: &'static str,
}

/// The interpreter rs4py was built against (see [`BuildPython`]).
pub fn build_python() -> BuildPython {
    BuildPython {
        executable: env!("RS4PY_PYTHON_EXECUTABLE"),
        prefix: env!("RS4PY_PYTHON_PREFIX"),
        version: env!("RS4PY_PYTHON_VERSION"),
        hexversion: BUILD_HEXVERSION,
        library: env!("RS4PY_PYTHON_LIBRARY"),
        lib_dir: env!("RS4PY_PYTHON_LIBDIR"),
    }
}

const BUILD_HEXVERSION: u32 = match u32::from_str_radix(env!("RS4PY_PYTHON_HEXVERSION"), 10) {
    Ok(hexversion) => hexversion,
    Err(_) => panic!("build.rs records sys.hexversion as a decimal number"),
};

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
    if is_started() {
        // Someone else (the host program) started Python; it keeps managing it.
        return Ok(());
    }
    let build = build_python();
    check_loaded_library(&build)?;
    let executable = c_string(build.executable)?;
    let sigint_before = current_sigint_action();

    let mut preconfig = MaybeUninit::<ffi::PyPreConfig>::uninit();
    // SAFETY: fully initialises the plain struct; may be called before Python runs.
    unsafe { ffi::PyPreConfig_InitPythonConfig(preconfig.as_mut_ptr()) };
    // SAFETY: initialised just above.
    let preconfig = unsafe { preconfig.assume_init_mut() };
    // Locale coercion stays off: it would setenv("LC_CTYPE") in a process whose other threads
    // may be reading the environment (UTF-8 mode still covers the C locale).
    preconfig.coerce_c_locale = 0;
    preconfig.coerce_c_locale_warn = 0;
    // SAFETY: reads the initialised preconfig; Python is not running yet and nothing else
    // starts it concurrently (the caller's guarantee).
    start_status(unsafe { ffi::Py_PreInitialize(preconfig) })?;

    let mut config = MaybeUninit::<ffi::PyConfig>::uninit();
    // SAFETY: fully initialises the struct (allocating nothing yet); may be called before
    // Python runs.
    unsafe { ffi::PyConfig_InitPythonConfig(config.as_mut_ptr()) };
    // SAFETY: initialised just above.
    let config = unsafe { config.assume_init_mut() };
    config.install_signal_handlers = 0;
    config.parse_argv = 0;
    // SAFETY: `config` is initialised; Python is not running yet and nothing else starts it
    // concurrently (the caller's guarantee).
    let status = unsafe { configure_and_start(config, &executable) };
    // SAFETY: frees what the configuration allocated, exactly once: configure_and_start
    // returns on every path, never early from here.
    unsafe { ffi::PyConfig_Clear(config) };
    start_status(status)?;
    // SAFETY: Py_InitializeFromConfig left this thread holding the GIL; hand it back so that
    // any thread can take it. This thread keeps its thread state for its later guards.
    crate::gil::keep_thread_state(unsafe { ffi::PyEval_SaveThread() });
    restore_sigint(&sigint_before);
    Ok(())
}

/// Sets the executable and program name in `config`, then starts Python from it: the status
/// of the first step that fails, or of the start.
///
/// # Safety
/// `config` was initialised by `PyConfig_InitPythonConfig`; Python is not running and nothing
/// else starts it concurrently.
unsafe fn configure_and_start(config: &mut ffi::PyConfig, executable: &CStr) -> ffi::PyStatus {
    // SAFETY: per the contract; the string is copied into the config.
    let status = unsafe { ffi::PyConfig_SetBytesString(config, &mut config.executable, executable.as_ptr()) };
    // SAFETY: only reads the struct.
    if unsafe { ffi::PyStatus_Exception(status) } != 0 {
        return status;
    }
    // SAFETY: as for the executable.
    let status = unsafe { ffi::PyConfig_SetBytesString(config, &mut config.program_name, executable.as_ptr()) };
    // SAFETY: only reads the struct.
    if unsafe { ffi::PyStatus_Exception(status) } != 0 {
        return status;
    }
    // SAFETY: per the contract; reads the config, which the caller clears afterwards.
    unsafe { ffi::Py_InitializeFromConfig(config) }
}

fn current_sigint_action() -> libc::sigaction {
    let mut action = MaybeUninit::<libc::sigaction>::zeroed();
    // SAFETY: a null new action only queries; sigaction fills `action` (left zeroed if it
    // fails).
    unsafe { libc::sigaction(libc::SIGINT, std::ptr::null(), action.as_mut_ptr()) };
    // SAFETY: zeroed or filled by sigaction: either way a valid plain C struct.
    unsafe { action.assume_init() }
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
fn check_loaded_library(build: &BuildPython) -> Result<()> {
    // SAFETY: Py_GetVersion may be called before Py_Initialize; it returns a NUL-terminated
    // buffer owned by libpython, valid for the life of the process.
    let version = unsafe { ffi::Py_GetVersion() };
    // SAFETY: as above, a valid C string.
    let text = unsafe { CStr::from_ptr(version) }.to_string_lossy();
    // The buffer lies inside the loaded libpython, whatever symbol binding the executable uses.
    compare_library(build, &text, file_containing(version.cast()).as_deref())
}

/// The file (symbolic links resolved) of the loaded object holding `address`, if the dynamic
/// loader knows one.
fn file_containing(address: *const libc::c_void) -> Option<PathBuf> {
    let mut info = MaybeUninit::<libc::Dl_info>::zeroed();
    // SAFETY: dladdr only reads the address and fills `info`; 0 means it found no object.
    if unsafe { libc::dladdr(address, info.as_mut_ptr()) } == 0 {
        return None;
    }
    // SAFETY: dladdr succeeded, so `info` is filled.
    let file = unsafe { info.assume_init() }.dli_fname;
    if file.is_null() {
        return None;
    }
    // SAFETY: dli_fname is a NUL-terminated string owned by the loader, alive while the object
    // stays loaded (libpython is never unloaded); it is copied at once.
    let file = Path::new(OsStr::from_bytes(unsafe { CStr::from_ptr(file) }.to_bytes())).to_path_buf();
    Some(std::fs::canonicalize(&file).unwrap_or(file))
}

/// Whether the loaded libpython (its `Py_GetVersion` text and file) is `build`'s. The file is
/// what tells two installations apart; the feature version (3.X) is the ABI that pyo3-ffi was
/// compiled for. A bugfix release installed in place of the build one (a distribution update)
/// is the same installation with the same ABI, and is accepted.
fn compare_library(build: &BuildPython, loaded_version: &str, loaded_file: Option<&Path>) -> Result<()> {
    let build_feature = (build.hexversion >> 24, (build.hexversion >> 16) & 0xff);
    let same_file = loaded_file == Some(Path::new(build.library));
    if same_file && feature_version(loaded_version) == Some(build_feature) {
        return Ok(());
    }
    let file = loaded_file.map_or_else(|| "an unknown file".to_owned(), |file| file.display().to_string());
    Err(Error::Start(format!(
        "the libpython loaded at run time is {file}, version {:?}, but rs4py was built against {}, \
         version {:?} ({}); link with rpath to {} (see the rs4py README) or set LD_LIBRARY_PATH",
        loaded_version.lines().collect::<Vec<_>>().join(" "),
        build.library,
        build.version,
        build.executable,
        build.lib_dir
    )))
}

/// `(major, minor)` from the start of a `sys.version` text (`"3.9.18 (main, ...)"`).
fn feature_version(version: &str) -> Option<(u32, u32)> {
    let number = version.split_whitespace().next()?;
    let mut parts = number.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
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
        let entry = path_to_python(gil.token(), dir)?;
        if !sys_path.contains(&entry)? {
            sys_path.call_method("insert", (position, entry), ())?;
        }
    }
    Ok(())
}

/// Puts `dirs` on `sys.path` right after the standard library's entries (the last one that
/// lies in `sysconfig`'s `stdlib` or `platstdlib` directory, `lib-dynload` included, and
/// not in its `purelib` or `platlib`, site-packages, which may lie inside the former), in
/// order, skipping those already there: the standard library cannot be shadowed from
/// `dirs`, while `dirs` still come before site-packages. Without a standard library entry
/// (an unusual layout), they go last.
pub(crate) fn insert_sys_path_after_stdlib(gil: &Gil, dirs: &[PathBuf]) -> Result<()> {
    let sysconfig = gil.import("sysconfig")?;
    let sysconfig_dirs = |names: [&str; 2]| {
        names
            .into_iter()
            .map(|name| Ok(PathBuf::from(sysconfig.call_method("get_path", (name,), ())?.extract::<String>()?)))
            .collect::<Result<Vec<PathBuf>>>()
    };
    let stdlib_dirs = sysconfig_dirs(["stdlib", "platstdlib"])?;
    let site_dirs = sysconfig_dirs(["purelib", "platlib"])?;
    let is_stdlib = |entry: &Path| {
        stdlib_dirs.iter().any(|dir| entry.starts_with(dir)) && !site_dirs.iter().any(|dir| entry.starts_with(dir))
    };
    let sys_path = gil.import("sys")?.getattr("path")?;
    let mut position = sys_path.len()?;
    for index in (0..sys_path.len()?).rev() {
        // An entry that is not a str (it may be anything) is no standard library directory.
        let Ok(entry) = sys_path.get_item(index)?.extract::<String>() else { continue };
        if is_stdlib(Path::new(&entry)) {
            position = index + 1;
            break;
        }
    }
    for dir in dirs {
        let entry = path_to_python(gil.token(), dir)?;
        if !sys_path.contains(&entry)? {
            sys_path.call_method("insert", (position, entry), ())?;
            position += 1;
        }
    }
    Ok(())
}

/// A path as Python's `os.fsdecode` would give it (undecodable bytes as surrogate escapes).
pub(crate) fn path_to_python<'py>(gil: GilToken<'py>, path: &Path) -> Result<Object<'py>> {
    let bytes = OsStr::as_bytes(path.as_os_str());
    let len = isize::try_from(bytes.len()).map_err(|_| Error::InvalidArgument("path too long".into()))?;
    // SAFETY: the GIL is held (gil); the function reads `len` bytes from a live slice and
    // returns a new reference or NULL with an exception set.
    let ptr = unsafe { ffi::PyUnicode_DecodeFSDefaultAndSize(bytes.as_ptr().cast(), len) };
    // SAFETY: a new reference or NULL with an exception set, as just said.
    unsafe { Object::from_owned_ptr(gil, ptr) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The build description of a 3.9.18 installed under `/opt/py`.
    fn build_39() -> BuildPython {
        BuildPython {
            executable: "/opt/py/bin/python3.9",
            prefix: "/opt/py",
            version: "3.9.18 (main, May  9 2026, 07:33:49)  [GCC 12.2.0]",
            hexversion: 0x030912f0,
            library: "/opt/py/lib/libpython3.9.so.1.0",
            lib_dir: "/opt/py/lib",
        }
    }

    /// Python 3.9's own text: the compiler on a second line.
    const VERSION_39: &str = "3.9.18 (main, May  9 2026, 07:33:49) \n[GCC 12.2.0]";

    #[test]
    fn a_multi_line_version_of_the_build_library_is_accepted() {
        let library = Path::new("/opt/py/lib/libpython3.9.so.1.0");
        assert_eq!(compare_library(&build_39(), VERSION_39, Some(library)), Ok(()));
        // A bugfix update installed in place keeps the file and the ABI.
        assert_eq!(
            compare_library(&build_39(), "3.9.19 (main, Jan  1 2027, 00:00:00) \n[GCC 12.2.0]", Some(library)),
            Ok(())
        );
    }

    #[test]
    fn another_installation_of_the_same_version_is_refused_with_the_fix_in_the_message() {
        let other = Path::new("/usr/lib/x86_64-linux-gnu/libpython3.9.so.1.0");
        let err = compare_library(&build_39(), VERSION_39, Some(other)).unwrap_err();
        let Error::Start(message) = err else { panic!("expected Error::Start") };
        for part in [
            "/usr/lib/x86_64-linux-gnu/libpython3.9.so.1.0",
            "/opt/py/lib/libpython3.9.so.1.0",
            "/opt/py/bin/python3.9",
            "rpath to /opt/py/lib",
            "3.9.18 (main, May  9 2026, 07:33:49)  [GCC 12.2.0]",
        ] {
            assert!(message.contains(part), "{part:?} missing from {message}");
        }
        assert!(!message.contains("\\n"), "one line: {message}");
        assert!(compare_library(&build_39(), VERSION_39, None).is_err(), "a library of unknown file is not trusted");
    }

    #[test]
    fn another_feature_version_at_the_same_path_is_refused() {
        let library = Path::new("/opt/py/lib/libpython3.9.so.1.0");
        for version in ["3.10.13 (main, May  9 2026, 07:34:36) [GCC 12.2.0]", "4.9.0", "3", "", "garbage 3.9.18"] {
            assert!(compare_library(&build_39(), version, Some(library)).is_err(), "{version:?} accepted");
        }
    }

    #[test]
    fn the_version_text_gives_the_feature_version() {
        assert_eq!(feature_version(VERSION_39), Some((3, 9)));
        assert_eq!(feature_version("3.13.0rc1+ (heads/3.13:abc, Oct 1 2024) [Clang 15]"), Some((3, 13)));
        assert_eq!(feature_version("3.12.0a1"), Some((3, 12)));
        assert_eq!(feature_version("three.twelve"), None);
    }

    #[test]
    fn the_library_this_process_loaded_is_the_build_library() {
        let build = build_python();
        // SAFETY: Py_GetVersion may be called before Py_Initialize and returns a static buffer.
        let version = unsafe { ffi::Py_GetVersion() };
        assert_eq!(file_containing(version.cast()).as_deref(), Some(Path::new(build.library)));
        assert_eq!(check_loaded_library(&build), Ok(()));
        assert!(Path::new(build.library).is_absolute() && Path::new(build.library).is_file(), "{}", build.library);
    }
}
