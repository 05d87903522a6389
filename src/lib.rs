//! rs4py embeds CPython in a multi-threaded Rust program through the raw C API.
//!
//! - [`start`] starts the interpreter once per process (any thread, races included) with the
//!   very Python the crate was built against, then releases the GIL.
//! - [`Gil`] takes the GIL for the current thread; guards nest.
//! - [`Object`] owns one reference, tied to a `Gil` by the zero-sized [`GilToken`] it carries;
//!   [`Handle`] is its storable, `Send + Sync` twin. Reference counts stay right by
//!   construction.
//! - Every failing C-API call becomes an [`Error`]; a Python exception carries its type,
//!   message and traceback.
//! - [`ToPython`] and [`FromPython`] convert values both ways.
//!
//! ```
//! let gil = rs4py::Gil::acquire()?;
//! let json = gil.import("json")?;
//! let text: String = json.call_method("dumps", (vec![1, 2],), [("indent", 0)])?.extract()?;
//! assert_eq!(text, "[\n1,\n2\n]");
//! let err = json.call_method("loads", ("{",), ()).unwrap_err();
//! assert_eq!(err.python_type(), Some("json.decoder.JSONDecodeError"));
//! # Ok::<(), rs4py::Error>(())
//! ```
//!
//! # Which Python
//!
//! The build script finds the interpreter as PyO3 does: `PYO3_PYTHON`, else an active
//! virtualenv, else `python3` on `PATH`. It links its libpython and sets the rpath of this
//! package's own binaries, tests and examples to that library's directory. A crate that depends
//! on rs4py adds the same rpath to its own binaries with one line in its `build.rs`:
//!
//! ```text
//! println!("cargo:rustc-link-arg=-Wl,-rpath,{}", std::env::var("DEP_RS4PY_LIBDIR").unwrap());
//! ```
//!
//! At run time rs4py refuses (with [`Error::Start`]) a libpython other than the one it was
//! built against, rather than mixing two installations.

#![warn(missing_docs)]

mod callback;
mod convert;
mod driver;
mod error;
mod exception;
mod gil;
mod interpreter;
mod object;

pub use convert::{Bytes, FromPython, IntoArgs, IntoKwargs, ToPython};
pub use driver::{
    Backend, Driver, DriverOptions, DriverState, DriverStats, Key, Preload, ResultStatus, StartMethod, SubmitStatus,
    TaskFuture, TaskKey, TaskReceipt, TaskResult, WorkerLine, WorkerOutput, WorkerStream,
};
pub use error::{Error, PythonException, Result};
pub use gil::{Gil, GilToken, gil_acquisitions};
pub use interpreter::{BuildPython, StartOptions, build_python, is_started, start};
pub use object::{Handle, Object};

/// The README's Rust examples, compiled (and run where they can be) as doctests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
