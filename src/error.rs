//! The one error type of rs4py: plain data, made without calling into Python (fetching a
//! pending exception and describing it is `exception.rs`'s work).

use std::fmt;
use std::fmt::Write as _;

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
    /// repeats type and message), without py4cc's own frames: one line says how many were left
    /// out. With the environment variable `RS4PY_FULL_TRACEBACKS=1` they are kept. Empty if the
    /// exception carried no traceback and could not be formatted.
    pub traceback: String,
}

/// Everything that can go wrong in rs4py.
///
/// `Display` is one line; `Debug` (what `fn main() -> Result<(), rs4py::Error>` prints) is the
/// same line followed, for a Python exception, by its traceback, on lines of their own.
///
/// ```
/// let gil = rs4py::Gil::acquire()?;
/// let err = gil.eval("1 / 0").unwrap_err();
/// assert_eq!(err.to_string(), "ZeroDivisionError: division by zero");
/// assert_eq!(err.python_type(), Some("ZeroDivisionError"));
/// # Ok::<(), rs4py::Error>(())
/// ```
#[derive(Clone, PartialEq, Eq)]
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

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)?;
        match self {
            Error::Python(exc) if !exc.traceback.trim().is_empty() => write!(f, "\n\n{}", exc.traceback.trim_end()),
            _ => Ok(()),
        }
    }
}

impl std::error::Error for Error {}

/// The environment variable that keeps py4cc's own frames in the tracebacks rs4py reports.
pub(crate) const FULL_TRACEBACKS_VARIABLE: &str = "RS4PY_FULL_TRACEBACKS";

/// `traceback` (as `traceback.format_exception` prints it) without the frames of py4cc's own
/// modules, which say how the call travelled, not where the user's code failed; one line in
/// their place says how many were left out. A frame is py4cc's when its file is a module of a
/// directory named `py4cc` or of one of its sub-packages, except its `tests` and `workload`
/// and the demo model (`py4cc/engine.py`).
/// Unchanged when `RS4PY_FULL_TRACEBACKS=1`.
pub(crate) fn without_py4cc_frames(traceback: &str) -> String {
    if std::env::var(FULL_TRACEBACKS_VARIABLE).is_ok_and(|value| value == "1") {
        return traceback.to_owned();
    }
    let mut kept = String::with_capacity(traceback.len());
    let mut left_out = 0;
    let mut in_py4cc_frame = false;
    let flush = |kept: &mut String, left_out: &mut usize| {
        if *left_out > 0 {
            let frames = if *left_out == 1 { "frame" } else { "frames" };
            let _ =
                writeln!(kept, "  [{left_out} {frames} of py4cc left out; {FULL_TRACEBACKS_VARIABLE}=1 shows them]");
            *left_out = 0;
        }
    };
    for line in traceback.split_inclusive('\n') {
        if let Some(rest) = line.strip_prefix("  File \"") {
            in_py4cc_frame = rest.split('"').next().is_some_and(is_py4cc_module);
            if in_py4cc_frame {
                left_out += 1;
                continue;
            }
            flush(&mut kept, &mut left_out);
        } else if in_py4cc_frame && line.starts_with("    ") {
            continue; // the frame's source line and its carets
        } else {
            in_py4cc_frame = false;
            flush(&mut kept, &mut left_out);
        }
        kept.push_str(line);
    }
    flush(&mut kept, &mut left_out);
    kept
}

/// Whether `path` is a module of py4cc itself (see [`without_py4cc_frames`]).
fn is_py4cc_module(path: &str) -> bool {
    let mut parts = path.rsplit(['/', '\\']);
    let (Some(file), Some(parent)) = (parts.next(), parts.next()) else { return false };
    if !file.ends_with(".py") {
        return false;
    }
    // The demo Engine is the model in the demo protocol: its frames are the user's story.
    (parent == "py4cc" && file != "engine.py")
        || (parts.next() == Some("py4cc") && !matches!(parent, "tests" | "workload"))
}

/// Shorthand for results whose error is [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    const TRACEBACK: &str = "\
Traceback (most recent call last):
  File \"/home/me/.cache/rs4py/abc/py4cc/driver.py\", line 311, in initialize
    options = build_options(
              ^^^^^^^^^^^^^^
  File \"/home/me/.cache/rs4py/abc/py4cc/core/options.py\", line 97, in build_options
    engine = check_engine(engine)
  File \"/srv/models/my_model.py\", line 3, in initialize
    raise ValueError(\"no weights\")
  File \"/repo/py4cc/tests/engines/py4cc_user_engines.py\", line 9, in run
    1 / 0
ValueError: no weights
";

    #[test]
    fn py4cc_frames_are_left_out_and_counted() {
        let short = without_py4cc_frames(TRACEBACK);
        assert_eq!(
            short,
            "Traceback (most recent call last):\n  [2 frames of py4cc left out; RS4PY_FULL_TRACEBACKS=1 shows them]\n  \
             File \"/srv/models/my_model.py\", line 3, in initialize\n    raise ValueError(\"no weights\")\n  \
             File \"/repo/py4cc/tests/engines/py4cc_user_engines.py\", line 9, in run\n    1 / 0\n\
             ValueError: no weights\n"
        );
        assert_eq!(without_py4cc_frames("ValueError: x\n"), "ValueError: x\n");
    }

    #[test]
    fn debug_is_display_then_the_traceback_on_lines_of_their_own() {
        let err = Error::Python(Box::new(PythonException {
            type_name: "ValueError".into(),
            message: "no weights".into(),
            traceback:
                "Traceback (most recent call last):\n  File \"m.py\", line 1, in <module>\nValueError: no weights\n"
                    .into(),
        }));
        let debug = format!("{err:?}");
        assert_eq!(
            debug,
            "ValueError: no weights\n\nTraceback (most recent call last):\n  File \"m.py\", line 1, in <module>\nValueError: no weights"
        );
        assert!(!debug.contains("\\n"));
        assert_eq!(format!("{:?}", Error::Conversion("bad".into())), "conversion failed: bad");
    }
}
