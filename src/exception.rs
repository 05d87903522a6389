//! Taking the pending Python exception out of the interpreter.
//!
//! A C-API call that fails leaves an exception set; [`PendingException::fetch`] takes it (and
//! so clears it) as owned Python objects. Nothing is formatted yet: an exception that rs4py
//! translates into its own terms (an int out of range becomes [`Error::Conversion`]) needs only
//! its type name and message, and one that is thrown away needs nothing. Only
//! [`PendingException::into_error`], for an exception that reaches the caller as an
//! [`Error::Python`], formats the traceback with Python's `traceback` module.
//!
//! Describing an exception calls into Python and may fail in turn (a `__str__` that raises, a
//! `MemoryError`). Such a second failure is cleared on the spot and the description goes on
//! without that part: it is never fetched and described itself, so describing cannot recurse.

use std::ffi::CStr;

use pyo3_ffi as ffi;

use crate::error::{Error, PythonException, without_py4cc_frames};
use crate::gil::GilToken;
use crate::object::Object;

/// Fetches the pending exception and surfaces it as an [`Error`], traceback formatted. For a
/// C-API call that reported failure whose exception goes to the caller (kept out of line: the
/// calls' fast paths stay small).
#[cold]
#[inline(never)]
pub(crate) fn fetch_error(gil: GilToken<'_>) -> Error {
    PendingException::fetch(gil).into_error()
}

/// Fetches the pending exception and reports it as a failed conversion of `what`, with the
/// exception's type and message but no traceback.
#[cold]
#[inline(never)]
pub(crate) fn fetch_conversion_error(gil: GilToken<'_>, what: &str) -> Error {
    PendingException::fetch(gil).into_conversion_error(what)
}

/// The exception that was pending, taken out of the interpreter: its type, value and
/// traceback as owned objects, none of them formatted yet.
pub(crate) struct PendingException<'py> {
    gil: GilToken<'py>,
    /// `None` when the failed call set no exception at all (a bug in the callee).
    ptype: Option<Object<'py>>,
    value: Option<Object<'py>>,
    traceback: Option<Object<'py>>,
}

impl<'py> PendingException<'py> {
    /// Takes (and clears) the pending exception, normalised: `value` is an instance of `ptype`
    /// whenever Python could make one.
    #[cfg(Py_3_12)]
    pub(crate) fn fetch(gil: GilToken<'py>) -> Self {
        // SAFETY: GIL held (gil). PyErr_GetRaisedException hands over the raised exception
        // (always normalised since 3.12) as a new reference and clears the indicator, or
        // returns NULL when none is set.
        let raised = unsafe { ffi::PyErr_GetRaisedException() };
        // SAFETY: a new reference or NULL, owned by this guard from here.
        let Some(value) = (unsafe { Object::from_owned_ptr_or_none(gil, raised) }) else {
            return PendingException { gil, ptype: None, value: None, traceback: None };
        };
        // SAFETY: GIL held; Py_TYPE reads the type of a live object, never NULL.
        let ptype = unsafe { ffi::Py_TYPE(value.as_ptr()) };
        // SAFETY: a borrowed reference kept alive by `value` until the incref here.
        let ptype = unsafe { Object::from_borrowed_ptr(gil, ptype.cast()) }.ok();
        // SAFETY: GIL held; the check only reads the type of `value`, which is borrowed.
        let traceback = if unsafe { ffi::PyExceptionInstance_Check(value.as_ptr()) } != 0 {
            // SAFETY: GIL held; `value` is an exception instance, borrowed; the traceback
            // comes back as a new reference, or NULL (no exception set) when it has none.
            let traceback = unsafe { ffi::PyException_GetTraceback(value.as_ptr()) };
            // SAFETY: a new reference or NULL, owned by this guard from here.
            unsafe { Object::from_owned_ptr_or_none(gil, traceback) }
        } else {
            None
        };
        PendingException { gil, ptype, value: Some(value), traceback }
    }

    /// Takes (and clears) the pending exception, normalised: `value` is an instance of `ptype`
    /// whenever Python could make one.
    #[cfg(not(Py_3_12))]
    pub(crate) fn fetch(gil: GilToken<'py>) -> Self {
        let (mut ptype, mut pvalue, mut ptraceback) =
            (std::ptr::null_mut(), std::ptr::null_mut(), std::ptr::null_mut());
        // SAFETY: GIL held (gil). PyErr_Fetch hands over new references (or NULL) and clears
        // the indicator.
        unsafe { ffi::PyErr_Fetch(&mut ptype, &mut pvalue, &mut ptraceback) };
        // SAFETY: GIL held; replaces the three in place by their normalised form, still new
        // references owned here (a failure to normalise puts that failure in their place).
        unsafe { ffi::PyErr_NormalizeException(&mut ptype, &mut pvalue, &mut ptraceback) };
        // SAFETY: a new reference or NULL, owned by this guard from here.
        let ptype = unsafe { Object::from_owned_ptr_or_none(gil, ptype) };
        // SAFETY: as above.
        let value = unsafe { Object::from_owned_ptr_or_none(gil, pvalue) };
        // SAFETY: as above.
        let traceback = unsafe { Object::from_owned_ptr_or_none(gil, ptraceback) };
        if let (Some(value), Some(traceback)) = (&value, &traceback) {
            // SAFETY: GIL held; the check only reads the type of `value` (a C extension may
            // raise anything), borrowed.
            let is_instance = unsafe { ffi::PyExceptionInstance_Check(value.as_ptr()) } != 0;
            // SAFETY: GIL held; both borrowed; the exception increfs the traceback it keeps,
            // so that it carries it as `__traceback__`, as a raised exception does.
            if is_instance && unsafe { ffi::PyException_SetTraceback(value.as_ptr(), traceback.as_ptr()) } < 0 {
                // Only a non-traceback object makes it fail; report the exception without.
                discard_failure(gil);
            }
        }
        PendingException { gil, ptype, value, traceback }
    }

    /// The exception as an [`Error::Python`]: type name, message and formatted traceback.
    pub(crate) fn into_error(self) -> Error {
        let Some(ptype) = &self.ptype else {
            return Error::Python(Box::new(PythonException {
                type_name: "SystemError".into(),
                message: "a Python C-API call failed without setting an exception".into(),
                traceback: String::new(),
            }));
        };
        let type_name = type_name(ptype);
        let message = self.message(&type_name);
        let traceback = self.format_traceback(ptype).map(|text| without_py4cc_frames(&text)).unwrap_or_default();
        Error::Python(Box::new(PythonException { type_name, message, traceback }))
    }

    /// The exception as an [`Error::Conversion`] of `what`, saying the exception's type and
    /// message (`int does not fit in i64: OverflowError: ...`), with no traceback made.
    pub(crate) fn into_conversion_error(self, what: &str) -> Error {
        let Some(ptype) = &self.ptype else {
            return Error::Conversion(format!("{what}: the conversion failed without saying why"));
        };
        let type_name = type_name(ptype);
        let message = self.message(&type_name);
        Error::Conversion(format!("{what}: {type_name}: {message}"))
    }

    /// `str()` of the exception value; a stand-in when that raises.
    fn message(&self, type_name: &str) -> String {
        match &self.value {
            Some(value) => lossy_str(value).unwrap_or_else(|| format!("<unprintable {type_name} object>")),
            None => String::new(),
        }
    }

    /// `''.join(traceback.format_exception(type, value, traceback))`, or `None` if any step
    /// fails (that failure discarded).
    fn format_traceback(&self, ptype: &Object<'py>) -> Option<String> {
        let gil = self.gil;
        // SAFETY: GIL held; returns a new reference to the module or NULL with an exception set.
        let module = unsafe { ffi::PyImport_ImportModule(c"traceback".as_ptr()) };
        // SAFETY: a new reference or NULL, as just said.
        let module = unsafe { owned_or_discard(gil, module) }?;
        // SAFETY: GIL held; borrows the module, returns a new reference or NULL.
        let format = unsafe { ffi::PyObject_GetAttrString(module.as_ptr(), c"format_exception".as_ptr()) };
        // SAFETY: a new reference or NULL, as just said.
        let format = unsafe { owned_or_discard(gil, format) }?;
        let none = gil.none();
        let args =
            [ptype, self.value.as_ref().unwrap_or(&none), self.traceback.as_ref().unwrap_or(&none)].map(Object::as_ptr);
        // SAFETY: GIL held; the callable and the three arguments are borrowed references kept
        // alive by their guards for the call, which returns a new reference or NULL.
        let lines =
            unsafe { ffi::PyObject_Vectorcall(format.as_ptr(), args.as_ptr(), args.len(), std::ptr::null_mut()) };
        // SAFETY: a new reference or NULL, as just said.
        let lines = unsafe { owned_or_discard(gil, lines) }?;
        // SAFETY: GIL held; reads zero bytes and returns a new reference (the empty str) or NULL.
        let empty = unsafe { ffi::PyUnicode_FromStringAndSize(c"".as_ptr(), 0) };
        // SAFETY: a new reference or NULL, as just said.
        let empty = unsafe { owned_or_discard(gil, empty) }?;
        // SAFETY: GIL held; both borrowed; returns a new reference or NULL (say, a line that
        // is not a str).
        let joined = unsafe { ffi::PyUnicode_Join(empty.as_ptr(), lines.as_ptr()) };
        // SAFETY: a new reference or NULL, as just said.
        let joined = unsafe { owned_or_discard(gil, joined) }?;
        lossy_str(&joined)
    }
}

/// The type's qualified name, prefixed by its module unless that is `builtins`; the bare
/// `tp_name` if the attributes cannot be read.
fn type_name(ptype: &Object<'_>) -> String {
    if let Some(name) = static_type_name(ptype) {
        return name;
    }
    match (str_attribute(ptype, c"__module__"), str_attribute(ptype, c"__qualname__")) {
        (Some(module), Some(qualname)) if module != "builtins" => format!("{module}.{qualname}"),
        (_, Some(qualname)) => qualname,
        _ => ptype.class_name(),
    }
}

/// The name of a static (C) type, such as every built-in exception: Python derives its
/// `__module__` and `__qualname__` from its `tp_name`, split at the last dot (`builtins` when
/// there is none), so `tp_name` is the name, read without a call. `None` for other objects.
fn static_type_name(ptype: &Object<'_>) -> Option<String> {
    // SAFETY: GIL held (ptype); the check only reads the type of a live object.
    if unsafe { ffi::PyType_Check(ptype.as_ptr()) } == 0 {
        return None;
    }
    let ty = ptype.as_ptr().cast::<ffi::PyTypeObject>();
    // SAFETY: GIL held; reads the flags of a live type object.
    if unsafe { ffi::PyType_HasFeature(ty, ffi::Py_TPFLAGS_HEAPTYPE) } != 0 {
        return None;
    }
    // SAFETY: `ty` is a live type object (checked above), kept alive by `ptype`.
    let name = unsafe { (*ty).tp_name };
    // SAFETY: tp_name is a NUL-terminated C string owned by the type, alive while it is.
    Some(unsafe { CStr::from_ptr(name) }.to_string_lossy().into_owned())
}

/// The attribute `name` of `object` if it is a `str`; `None` if it is not, or reading it fails
/// (that failure discarded).
fn str_attribute(object: &Object<'_>, name: &CStr) -> Option<String> {
    // SAFETY: GIL held (object); borrows the object, returns a new reference or NULL.
    let attribute = unsafe { ffi::PyObject_GetAttrString(object.as_ptr(), name.as_ptr()) };
    // SAFETY: a new reference or NULL, as just said.
    let attribute = unsafe { owned_or_discard(object.gil(), attribute) }?;
    // SAFETY: GIL held; the check only reads the type of the borrowed attribute.
    if unsafe { ffi::PyUnicode_Check(attribute.as_ptr()) } == 0 {
        return None;
    }
    lossy_str(&attribute)
}

/// `str(object)` as Rust text, whatever it holds: a lone surrogate (say, from bytes decoded
/// with `surrogateescape`) becomes a `\udc80`-style escape instead of failing the whole text.
/// `None` if `str()` raises (that failure discarded).
fn lossy_str(object: &Object<'_>) -> Option<String> {
    lossy_text(object, ffi::PyObject_Str)
}

/// `repr(object)` as Rust text, as [`lossy_str`] makes it; for `Debug`, which has no error to
/// give back.
pub(crate) fn lossy_repr(object: &Object<'_>) -> Option<String> {
    lossy_text(object, ffi::PyObject_Repr)
}

fn lossy_text(
    object: &Object<'_>,
    to_text: unsafe extern "C" fn(*mut ffi::PyObject) -> *mut ffi::PyObject,
) -> Option<String> {
    let gil = object.gil();
    // SAFETY: GIL held; PyObject_Str and PyObject_Repr borrow their argument and return a new
    // reference or NULL.
    let text = unsafe { to_text(object.as_ptr()) };
    // SAFETY: a new reference or NULL, as just said.
    let text = unsafe { owned_or_discard(gil, text) }?;
    let mut len: ffi::Py_ssize_t = 0;
    // SAFETY: GIL held; `text` is a str (what str() and repr() return), borrowed; returns a
    // buffer it owns of `len` bytes of UTF-8, or NULL with an exception set (a lone surrogate).
    let data = unsafe { ffi::PyUnicode_AsUTF8AndSize(text.as_ptr(), &mut len) };
    if let (false, Ok(len)) = (data.is_null(), usize::try_from(len)) {
        // SAFETY: `len` initialised bytes owned by `text`, alive until the copy here.
        let data = unsafe { std::slice::from_raw_parts(data.cast::<u8>(), len) };
        return Some(String::from_utf8_lossy(data).into_owned());
    }
    // Not UTF-8 as it is: escape what cannot be.
    discard_failure(gil);
    // SAFETY: GIL held; borrows the str, returns a new bytes reference or NULL.
    let encoded =
        unsafe { ffi::PyUnicode_AsEncodedString(text.as_ptr(), c"utf-8".as_ptr(), c"backslashreplace".as_ptr()) };
    // SAFETY: a new reference or NULL, as just said.
    let bytes = unsafe { owned_or_discard(gil, encoded) }?;
    // SAFETY: GIL held; `bytes` is a bytes object (the encoder's result), so this cannot fail;
    // the buffer it points to belongs to `bytes`, alive until the copy below.
    let data = unsafe { ffi::PyBytes_AsString(bytes.as_ptr()) };
    // SAFETY: as above; the buffer's length.
    let len = unsafe { ffi::PyBytes_Size(bytes.as_ptr()) };
    let Ok(len) = usize::try_from(len) else {
        discard_failure(gil);
        return None;
    };
    if data.is_null() {
        discard_failure(gil);
        return None;
    }
    // SAFETY: `data` points to `len` initialised bytes owned by `bytes`, which outlives this
    // slice (copied at once).
    let data = unsafe { std::slice::from_raw_parts(data.cast::<u8>(), len) };
    Some(String::from_utf8_lossy(data).into_owned())
}

/// Takes ownership of a new reference; for NULL, discards the exception the failed call set
/// and gives `None`.
///
/// # Safety
/// As for [`Object::from_owned_ptr`]: `ptr` is NULL or a new reference nothing else will
/// decref, and the GIL is held.
unsafe fn owned_or_discard<'py>(gil: GilToken<'py>, ptr: *mut ffi::PyObject) -> Option<Object<'py>> {
    // SAFETY: per this function's contract.
    let object = unsafe { Object::from_owned_ptr_or_none(gil, ptr) };
    if object.is_none() {
        discard_failure(gil);
    }
    object
}

/// Clears the pending exception, if any: a failure while describing another one.
fn discard_failure(_gil: GilToken<'_>) {
    // SAFETY: GIL held (the token proves it); clearing with nothing set is a no-op.
    unsafe { ffi::PyErr_Clear() };
}

/// Sets `kind(message)` as the pending exception and answers NULL, as a failing C function
/// made callable from Python does.
///
/// # Safety
/// The GIL is held and `kind` is an exception type.
pub(crate) unsafe fn raise(kind: *mut ffi::PyObject, message: &CStr) -> *mut ffi::PyObject {
    // SAFETY: the caller holds the GIL and passes an exception type; PyErr_SetString copies
    // the NUL-terminated message.
    unsafe { ffi::PyErr_SetString(kind, message.as_ptr()) };
    std::ptr::null_mut()
}
