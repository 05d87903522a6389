//! The one error type of rs4py: plain data, made without calling into Python (fetching a
//! pending exception and describing it is `exception.rs`'s work).

use std::fmt;

/// A Python exception, fetched from the interpreter and turned into plain Rust data.
///
/// The exception is fetched (and so cleared) the moment a C-API call reports failure: no
/// exception is ever left pending in the interpreter. Its message and traceback are formatted
/// only when it becomes an [`Error`]; a failure rs4py translates (an int out of range becomes
/// [`Error::Conversion`]) or drops is never formatted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PythonException {
    /// The exception's type: its qualified name, prefixed by its module unless that is
    /// `builtins` (`ValueError`, `json.decoder.JSONDecodeError`).
    pub type_name: String,
    /// `str()` of the exception value.
    pub message: String,
    /// The formatted traceback, as `traceback.format_exception` prints it (the last line
    /// repeats type and message). Empty if the exception carried no traceback and could not
    /// be formatted.
    pub traceback: String,
}

/// Everything that can go wrong in rs4py.
///
/// ```
/// let gil = rs4py::Gil::acquire()?;
/// let err = gil.eval("1 / 0").unwrap_err();
/// assert_eq!(err.to_string(), "ZeroDivisionError: division by zero");
/// assert_eq!(err.python_type(), Some("ZeroDivisionError"));
/// # Ok::<(), rs4py::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// Python raised an exception (boxed, so that results stay small on the fast path).
    Python(Box<PythonException>),
    /// A value could not be converted between Rust and Python: a wrong type, a number out of
    /// range, a sequence of the wrong length.
    Conversion(String),
    /// An argument that cannot be handed to Python as it is, such as source text with an
    /// embedded NUL.
    InvalidArgument(String),
    /// The interpreter could not be started, or runs a different libpython than the one
    /// rs4py was built against.
    Start(String),
    /// A [`Driver`](crate::Driver) cannot answer this call here or now: it belongs to another
    /// process (the one that made it, which this one was forked from), or another thread is
    /// running its `initialize`.
    Unavailable(String),
}

impl Error {
    /// The Python exception's type name, if this error is a Python exception.
    pub fn python_type(&self) -> Option<&str> {
        match self {
            Error::Python(exc) => Some(&exc.type_name),
            _ => None,
        }
    }

    /// The Python traceback, if this error is a Python exception.
    pub fn traceback(&self) -> Option<&str> {
        match self {
            Error::Python(exc) => Some(&exc.traceback),
            _ => None,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Python(exc) if exc.message.is_empty() => f.write_str(&exc.type_name),
            Error::Python(exc) => write!(f, "{}: {}", exc.type_name, exc.message),
            Error::Conversion(msg) => write!(f, "conversion failed: {msg}"),
            Error::InvalidArgument(msg) => write!(f, "invalid argument: {msg}"),
            Error::Start(msg) => write!(f, "Python interpreter could not start: {msg}"),
            Error::Unavailable(msg) => f.write_str(msg),
        }
    }
}

impl std::error::Error for Error {}

/// Shorthand for results whose error is [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
