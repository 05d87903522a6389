//! The one error type of rs4py.

use std::fmt;
use std::ptr::null_mut;

use pyo3_ffi as ffi;

use crate::gil::GilToken;
use crate::object::Object;

/// A Python exception, fetched from the interpreter and turned into plain Rust data.
///
/// The exception is fetched (and so cleared) the moment a C-API call reports failure: no
/// exception is ever left pending in the interpreter.
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
        }
    }
}

impl std::error::Error for Error {}

/// Shorthand for results whose error is [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

thread_local! {
    /// Set while this thread fetches an exception, so that a failure while describing it
    /// (say, a MemoryError while formatting the traceback) cannot recurse.
    static FETCHING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

impl Error {
    /// Fetches (and clears) the pending Python exception. Called right after a C-API call
    /// reported failure (kept out of line: the calls' fast paths stay small).
    #[cold]
    #[inline(never)]
    pub(crate) fn fetch(gil: GilToken<'_>) -> Error {
        Error::Python(Box::new(PythonException::fetch(gil)))
    }
}

impl PythonException {
    fn fetch(gil: GilToken<'_>) -> PythonException {
        let (mut ptype, mut pvalue, mut ptraceback) = (null_mut(), null_mut(), null_mut());
        // SAFETY: GIL held (gil). PyErr_Fetch hands over new references (or NULL) and clears
        // the indicator; PyErr_NormalizeException replaces them in place, still owned.
        unsafe {
            ffi::PyErr_Fetch(&mut ptype, &mut pvalue, &mut ptraceback);
            ffi::PyErr_NormalizeException(&mut ptype, &mut pvalue, &mut ptraceback);
        }
        // SAFETY: the three are new references or NULL, each owned by one guard from here.
        let (ptype, pvalue, ptraceback) = unsafe {
            (
                Object::from_owned_ptr_or_none(gil, ptype),
                Object::from_owned_ptr_or_none(gil, pvalue),
                Object::from_owned_ptr_or_none(gil, ptraceback),
            )
        };
        let Some(ptype) = ptype else {
            return PythonException {
                type_name: "SystemError".into(),
                message: "a Python C-API call failed without setting an exception".into(),
                traceback: String::new(),
            };
        };
        if let (Some(value), Some(traceback)) = (&pvalue, &ptraceback) {
            // SAFETY: GIL held; both borrowed; the check makes sure `value` really is an
            // exception (a C extension may raise anything); it increfs the traceback it keeps.
            unsafe {
                if ffi::PyExceptionInstance_Check(value.as_ptr()) != 0
                    && ffi::PyException_SetTraceback(value.as_ptr(), traceback.as_ptr()) < 0
                {
                    // Only a non-traceback object makes it fail; report the exception without.
                    ffi::PyErr_Clear();
                }
            }
        }
        if FETCHING.with(|fetching| fetching.replace(true)) {
            // Describing an exception failed: report that one plainly, without Python calls.
            return PythonException { type_name: ptype.class_name(), message: String::new(), traceback: String::new() };
        }
        struct DoneFetching;
        impl Drop for DoneFetching {
            fn drop(&mut self) {
                FETCHING.with(|fetching| fetching.set(false));
            }
        }
        let _done = DoneFetching;
        describe(gil, &ptype, pvalue.as_ref(), ptraceback.as_ref())
    }
}

fn describe(
    gil: GilToken<'_>,
    ptype: &Object<'_>,
    value: Option<&Object<'_>>,
    traceback: Option<&Object<'_>>,
) -> PythonException {
    let qualname = ptype.getattr("__qualname__").and_then(|name| name.extract::<String>());
    let module = ptype.getattr("__module__").and_then(|name| name.extract::<String>());
    let type_name = match (module, qualname) {
        (Ok(module), Ok(qualname)) if module != "builtins" => format!("{module}.{qualname}"),
        (_, Ok(qualname)) => qualname,
        _ => ptype.class_name(),
    };
    let message = match value {
        Some(value) => lossy_text(value).unwrap_or_else(|_| format!("<unprintable {type_name} object>")),
        None => String::new(),
    };
    let traceback = format_traceback(gil, ptype, value, traceback).unwrap_or_default();
    PythonException { type_name, message, traceback }
}

fn format_traceback(
    gil: GilToken<'_>,
    ptype: &Object<'_>,
    value: Option<&Object<'_>>,
    traceback: Option<&Object<'_>>,
) -> Result<String> {
    let none = gil.none();
    let lines = gil.import("traceback")?.call_method(
        "format_exception",
        (ptype, value.unwrap_or(&none), traceback.unwrap_or(&none)),
        (),
    )?;
    lossy_text(&Object::from_str(gil, "")?.call_method("join", (lines,), ())?)
}

/// `str(object)` as Rust text, whatever it holds: a lone surrogate (say, from bytes decoded
/// with `surrogateescape`) becomes a `\udc80`-style escape instead of failing the whole text.
fn lossy_text(object: &Object<'_>) -> Result<String> {
    // SAFETY: GIL held (object); PyObject_Str and PyUnicode_AsEncodedString borrow their
    // argument and return a new reference or NULL; the bytes object owns the buffer
    // PyBytes_AsString points to (of PyBytes_Size bytes), copied before it goes.
    unsafe {
        let text = Object::from_owned_ptr(object.gil(), ffi::PyObject_Str(object.as_ptr()))?;
        let encoded = ffi::PyUnicode_AsEncodedString(text.as_ptr(), c"utf-8".as_ptr(), c"backslashreplace".as_ptr());
        let bytes = Object::from_owned_ptr(object.gil(), encoded)?;
        let data = ffi::PyBytes_AsString(bytes.as_ptr());
        let len = ffi::PyBytes_Size(bytes.as_ptr());
        if data.is_null() || len < 0 {
            return Err(Error::fetch(object.gil()));
        }
        Ok(String::from_utf8_lossy(std::slice::from_raw_parts(data.cast::<u8>(), len as usize)).into_owned())
    }
}
