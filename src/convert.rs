//! Conversions between Rust and Python values: [`ToPython`] one way, [`FromPython`] the other,
//! and the argument lists of calls ([`IntoArgs`], [`IntoKwargs`]).
//!
//! | Rust | Python |
//! |---|---|
//! | `bool` | `bool` (only `bool` converts back) |
//! | `i8`..`i64`, `isize`, `u8`..`u64`, `usize` | `int` (out of range back: an error) |
//! | `f64` | `float` (`int` converts back too) |
//! | `&str`, `String` | `str`, any Unicode, embedded NUL included |
//! | [`Bytes`]`(&[u8])`, `Bytes<Vec<u8>>`, ... | `bytes` (`bytes` or `bytearray` convert back) |
//! | `Vec<T>`, `[T]`, `[T; N]` | `list` (`list` or `tuple` convert back) |
//! | tuples of up to 8 | `tuple` of the same length |
//! | `Option<T>` | `None` or the value |
//! | `HashMap<String, T>` | `dict` with `str` keys |
//! | `()` | `None` |
//! | [`Object`], [`Handle`] | the object itself |
//!
//! A byte string is wrapped in [`Bytes`]: a bare `Vec<u8>` or `&[u8]` is a sequence of
//! numbers like any other `Vec<T>`, and converts to a `list` of ints.

use std::collections::HashMap;
use std::hash::BuildHasher;

use pyo3_ffi as ffi;

use crate::error::{Error, Result};
use crate::exception;
use crate::gil::GilToken;
use crate::object::{Handle, Object};

/// A Rust value that can become a Python object.
///
/// ```
/// use rs4py::ToPython;
/// let gil = rs4py::Gil::acquire()?;
/// let text = "nul\0inside, and ✓".to_python(gil.token())?;
/// assert_eq!(text.call_method("__len__", (), ())?.extract::<usize>()?, 17);
/// # Ok::<(), rs4py::Error>(())
/// ```
pub trait ToPython {
    /// A new Python object for this value.
    fn to_python<'py>(&self, gil: GilToken<'py>) -> Result<Object<'py>>;
}

/// A Rust value that can be made from a Python object. A Python value of the wrong type, or a
/// number out of the Rust type's range, is an [`Error::Conversion`], never a silent wrap.
///
/// ```
/// let gil = rs4py::Gil::acquire()?;
/// let err = gil.eval("['not', 'a', 'str']")?.extract::<String>().unwrap_err();
/// assert_eq!(err.to_string(), "conversion failed: expected str, got list");
/// # Ok::<(), rs4py::Error>(())
/// ```
pub trait FromPython<'py>: Sized {
    /// The Rust value for `object`.
    fn from_python(object: &Object<'py>) -> Result<Self>;
}

/// The positional arguments of a call: `()` or a tuple of [`ToPython`] values (or a slice or
/// `Vec` of one type, for a count known only at run time).
pub trait IntoArgs {
    /// The converted arguments, in order: an array for a tuple, a `Vec` for a slice.
    type Objects<'py>: AsRef<[Object<'py>]>;

    /// Converts every argument.
    fn into_objects<'py>(self, gil: GilToken<'py>) -> Result<Self::Objects<'py>>;
}

/// The keyword arguments of a call: `()` for none, or `(name, value)` pairs as an array, a
/// slice or a `Vec`. Values of different types go as `&dyn ToPython`. A name given twice is an
/// [`Error::InvalidArgument`].
///
/// ```
/// use rs4py::ToPython;
/// let gil = rs4py::Gil::acquire()?;
/// let dict = gil.eval("dict")?;
/// let made = dict.call((), [("a", &1 as &dyn ToPython), ("b", &"two")])?;
/// assert_eq!(made.repr()?, "{'a': 1, 'b': 'two'}");
/// assert!(dict.call((), [("a", 1), ("a", 2)]).is_err());
/// # Ok::<(), rs4py::Error>(())
/// ```
pub trait IntoKwargs {
    /// The keyword arguments as a Python dict, or `None` for no keyword arguments.
    fn into_kwargs<'py>(self, gil: GilToken<'py>) -> Result<Option<Object<'py>>>;
}

fn wrong_type(expected: &str, object: &Object<'_>) -> Error {
    Error::Conversion(format!("expected {expected}, got {}", object.type_name()))
}

impl<T: ToPython + ?Sized> ToPython for &T {
    #[inline]
    fn to_python<'py>(&self, gil: GilToken<'py>) -> Result<Object<'py>> {
        (**self).to_python(gil)
    }
}

impl ToPython for Object<'_> {
    #[inline]
    fn to_python<'py>(&self, gil: GilToken<'py>) -> Result<Object<'py>> {
        // SAFETY: GIL held (gil, on this thread like self's); self is a live reference, the
        // borrowed pointer is incref'd into a new guard.
        unsafe { Object::from_borrowed_ptr(gil, self.as_ptr()) }
    }
}

impl<'py> FromPython<'py> for Object<'py> {
    #[inline]
    fn from_python(object: &Object<'py>) -> Result<Self> {
        Ok(object.clone())
    }
}

impl ToPython for Handle {
    #[inline]
    fn to_python<'py>(&self, gil: GilToken<'py>) -> Result<Object<'py>> {
        Ok(self.bind(gil))
    }
}

impl ToPython for () {
    #[inline]
    fn to_python<'py>(&self, gil: GilToken<'py>) -> Result<Object<'py>> {
        Ok(gil.none())
    }
}

impl FromPython<'_> for () {
    #[inline]
    fn from_python(object: &Object<'_>) -> Result<Self> {
        if object.is_none() { Ok(()) } else { Err(wrong_type("None", object)) }
    }
}

impl ToPython for bool {
    #[inline]
    fn to_python<'py>(&self, gil: GilToken<'py>) -> Result<Object<'py>> {
        // SAFETY: GIL held; PyBool_FromLong returns a new reference to True or False.
        let ptr = unsafe { ffi::PyBool_FromLong(libc::c_long::from(*self)) };
        // SAFETY: a new reference, as just said.
        unsafe { Object::from_owned_ptr(gil, ptr) }
    }
}

impl FromPython<'_> for bool {
    #[inline]
    fn from_python(object: &Object<'_>) -> Result<Self> {
        // SAFETY: GIL held (object); the check only reads the type of a live object.
        if unsafe { ffi::PyBool_Check(object.as_ptr()) } == 0 {
            return Err(wrong_type("bool", object));
        }
        // SAFETY: GIL held; reads the address of the static True object, compared by address.
        Ok(object.as_ptr() == unsafe { ffi::Py_True() })
    }
}

/// The two integer types CPython converts natively: its constructor, its extractor, and the
/// value the extractor returns (with an exception set) when the int does not fit.
macro_rules! native_int {
    ($($int:ty: $from:ident, $as:ident, $sentinel:expr;)*) => {$(
        impl ToPython for $int {
            #[inline]
            fn to_python<'py>(&self, gil: GilToken<'py>) -> Result<Object<'py>> {
                // SAFETY: GIL held; returns a new reference or NULL with an exception set.
                let ptr = unsafe { ffi::$from(*self) };
                // SAFETY: a new reference or NULL with an exception set, as just said.
                unsafe { Object::from_owned_ptr(gil, ptr) }
            }
        }

        impl FromPython<'_> for $int {
            #[inline]
            fn from_python(object: &Object<'_>) -> Result<Self> {
                // SAFETY: GIL held (object); the check only reads the type of a live object.
                if unsafe { ffi::PyLong_Check(object.as_ptr()) } == 0 {
                    return Err(wrong_type("int", object));
                }
                // SAFETY: GIL held; the extractor borrows an int and returns the sentinel with
                // an exception set when it does not fit.
                let value = unsafe { ffi::$as(object.as_ptr()) };
                // SAFETY: GIL held; only reads whether an exception is set.
                if value == $sentinel && !unsafe { ffi::PyErr_Occurred() }.is_null() {
                    let what = concat!("int does not fit in ", stringify!($int));
                    return Err(exception::fetch_conversion_error(object.gil(), what));
                }
                Ok(value)
            }
        }
    )*};
}
native_int! {
    i64: PyLong_FromLongLong, PyLong_AsLongLong, -1;
    u64: PyLong_FromUnsignedLongLong, PyLong_AsUnsignedLongLong, u64::MAX;
}

/// Integer types converted through `i64` or `u64`, with a range check on the way back.
macro_rules! int_through {
    ($wide:ty: $($narrow:ty),*) => {$(
        impl ToPython for $narrow {
            #[inline]
            fn to_python<'py>(&self, gil: GilToken<'py>) -> Result<Object<'py>> {
                <$wide>::try_from(*self)
                    .map_err(|_| Error::Conversion(format!("{} does not fit in a Python int", self)))?
                    .to_python(gil)
            }
        }

        impl FromPython<'_> for $narrow {
            #[inline]
            fn from_python(object: &Object<'_>) -> Result<Self> {
                let wide = <$wide>::from_python(object)?;
                <$narrow>::try_from(wide).map_err(|_| {
                    Error::Conversion(format!("int {wide} does not fit in {}", stringify!($narrow)))
                })
            }
        }
    )*};
}
// Narrow unsigned types go through i64 too, so that a negative int is reported as itself.
int_through!(i64: i8, i16, i32, isize, u8, u16, u32);
int_through!(u64: usize);

impl ToPython for f64 {
    #[inline]
    fn to_python<'py>(&self, gil: GilToken<'py>) -> Result<Object<'py>> {
        // SAFETY: GIL held; returns a new reference or NULL with an exception set.
        let ptr = unsafe { ffi::PyFloat_FromDouble(*self) };
        // SAFETY: a new reference or NULL with an exception set, as just said.
        unsafe { Object::from_owned_ptr(gil, ptr) }
    }
}

impl FromPython<'_> for f64 {
    #[inline]
    fn from_python(object: &Object<'_>) -> Result<Self> {
        // SAFETY: GIL held (object); the check only reads the type of a live object.
        let is_float = unsafe { ffi::PyFloat_Check(object.as_ptr()) } != 0;
        // SAFETY: as above.
        if !is_float && unsafe { ffi::PyLong_Check(object.as_ptr()) } == 0 {
            return Err(wrong_type("float", object));
        }
        // SAFETY: GIL held; PyFloat_AsDouble borrows a float or int and returns -1.0 with an
        // exception set on failure (an int too large).
        let value = unsafe { ffi::PyFloat_AsDouble(object.as_ptr()) };
        // SAFETY: GIL held; only reads whether an exception is set.
        if value == -1.0 && !unsafe { ffi::PyErr_Occurred() }.is_null() {
            return Err(exception::fetch_conversion_error(object.gil(), "number does not fit in f64"));
        }
        Ok(value)
    }
}

impl ToPython for str {
    #[inline]
    fn to_python<'py>(&self, gil: GilToken<'py>) -> Result<Object<'py>> {
        Object::from_str(gil, self)
    }
}

impl ToPython for String {
    #[inline]
    fn to_python<'py>(&self, gil: GilToken<'py>) -> Result<Object<'py>> {
        Object::from_str(gil, self)
    }
}

impl FromPython<'_> for String {
    #[inline]
    fn from_python(object: &Object<'_>) -> Result<Self> {
        let mut len: ffi::Py_ssize_t = 0;
        // SAFETY: GIL held (object); the check only reads the type of a live object.
        if unsafe { ffi::PyUnicode_Check(object.as_ptr()) } == 0 {
            return Err(wrong_type("str", object));
        }
        // SAFETY: GIL held; borrows a str and returns a buffer it owns (alive while `object`
        // is) of `len` bytes of valid UTF-8, or NULL with an exception set (a lone surrogate
        // cannot be UTF-8).
        let data = unsafe { ffi::PyUnicode_AsUTF8AndSize(object.as_ptr(), &mut len) };
        if data.is_null() {
            return Err(exception::fetch_conversion_error(object.gil(), "str is not valid UTF-8"));
        }
        // SAFETY: `len` initialised bytes at `data`, owned by the live str; copied at once.
        let bytes = unsafe { std::slice::from_raw_parts(data.cast::<u8>(), len as usize) };
        // SAFETY: CPython's UTF-8 encoder produced these bytes (it fails rather than emit
        // invalid UTF-8), so they need no second validation.
        Ok(unsafe { std::str::from_utf8_unchecked(bytes) }.to_owned())
    }
}

/// A byte string: `bytes` in Python, where a bare `Vec<u8>` or `&[u8]` would be a `list` of
/// ints. `Bytes(&data[..])` (or any `AsRef<[u8]>`) converts to `bytes`; `Bytes<Vec<u8>>`
/// (the default) is what `bytes` or `bytearray` convert back to.
///
/// ```
/// use rs4py::{Bytes, ToPython};
/// let gil = rs4py::Gil::acquire()?;
/// let packed: Vec<u8> = [1.5f64, -2.0].iter().flat_map(|x| x.to_le_bytes()).collect();
/// let numbers = gil.eval("lambda data: list(__import__('struct').unpack('<2d', data))")?;
/// let back: Vec<f64> = numbers.call((Bytes(&packed[..]),), ())?.extract()?;
/// assert_eq!(back, [1.5, -2.0]);
/// let bytes: Bytes = gil.eval("bytearray(b'\\x00\\xff')")?.extract()?;
/// assert_eq!(bytes.0, [0, 255]);
/// assert_eq!(vec![0u8, 255].to_python(gil.token())?.repr()?, "[0, 255]");
/// # Ok::<(), rs4py::Error>(())
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Bytes<B = Vec<u8>>(pub B);

impl<B: AsRef<[u8]>> AsRef<[u8]> for Bytes<B> {
    #[inline]
    fn as_ref(&self) -> &[u8] {
        self.0.as_ref()
    }
}

impl<B: AsRef<[u8]>> ToPython for Bytes<B> {
    #[inline]
    fn to_python<'py>(&self, gil: GilToken<'py>) -> Result<Object<'py>> {
        let data = self.0.as_ref();
        let len = ffi::Py_ssize_t::try_from(data.len())
            .map_err(|_| Error::Conversion(format!("{} bytes do not fit in a Python bytes", data.len())))?;
        // SAFETY: GIL held; copies `len` bytes from a live slice (a dangling but non-NULL
        // pointer when empty, which is never read) and returns a new reference or NULL
        // with an exception set.
        let ptr = unsafe { ffi::PyBytes_FromStringAndSize(data.as_ptr().cast(), len) };
        // SAFETY: a new reference or NULL with an exception set, as just said.
        unsafe { Object::from_owned_ptr(gil, ptr) }
    }
}

impl FromPython<'_> for Bytes<Vec<u8>> {
    #[inline]
    fn from_python(object: &Object<'_>) -> Result<Self> {
        let ptr = object.as_ptr();
        // SAFETY: GIL held (object); the checks only read the type of a live object.
        let is_bytes = unsafe { ffi::PyBytes_Check(ptr) } != 0;
        // SAFETY: as above.
        let is_bytearray = !is_bytes && unsafe { ffi::PyByteArray_Check(ptr) } != 0;
        let (data, len) = if is_bytes {
            let mut data: *mut libc::c_char = std::ptr::null_mut();
            let mut len: ffi::Py_ssize_t = 0;
            // SAFETY: GIL held; borrows a bytes object and points `data` at its own buffer
            // (alive while `object` is); returns -1 with an exception set on failure.
            object.check_status(unsafe { ffi::PyBytes_AsStringAndSize(ptr, &mut data, &mut len) })?;
            (data, len)
        } else if is_bytearray {
            // SAFETY: GIL held; borrows a bytearray and returns its size (no failure for one).
            let len = unsafe { ffi::PyByteArray_Size(ptr) };
            // SAFETY: GIL held; borrows a bytearray and returns its buffer, owned by it and
            // unchanged until Python code runs, which nothing below does before the copy.
            (unsafe { ffi::PyByteArray_AsString(ptr) }, len)
        } else {
            return Err(wrong_type("bytes or bytearray", object));
        };
        if len <= 0 || data.is_null() {
            return Ok(Bytes(Vec::new()));
        }
        // SAFETY: `len` initialised bytes at `data`, owned by the live object; copied at once.
        Ok(Bytes(unsafe { std::slice::from_raw_parts(data.cast::<u8>(), len as usize) }.to_vec()))
    }
}

impl<T: ToPython> ToPython for [T] {
    #[inline]
    fn to_python<'py>(&self, gil: GilToken<'py>) -> Result<Object<'py>> {
        Object::new_list(gil, self.iter().map(|item| item.to_python(gil)))
    }
}

impl<T: ToPython, const N: usize> ToPython for [T; N] {
    #[inline]
    fn to_python<'py>(&self, gil: GilToken<'py>) -> Result<Object<'py>> {
        self.as_slice().to_python(gil)
    }
}

impl<T: ToPython> ToPython for Vec<T> {
    #[inline]
    fn to_python<'py>(&self, gil: GilToken<'py>) -> Result<Object<'py>> {
        self.as_slice().to_python(gil)
    }
}

impl<'py, T: FromPython<'py>> FromPython<'py> for Vec<T> {
    #[inline]
    fn from_python(object: &Object<'py>) -> Result<Self> {
        // SAFETY: GIL held (object); the check only reads the type of a live object.
        let is_list = unsafe { ffi::PyList_Check(object.as_ptr()) } != 0;
        // SAFETY: as above.
        if !is_list && unsafe { ffi::PyTuple_Check(object.as_ptr()) } == 0 {
            return Err(wrong_type("list or tuple", object));
        }
        // SAFETY: GIL held; borrows the sequence and returns a new reference (a snapshot that
        // item conversions running Python code cannot change) or NULL with an exception set.
        let items = unsafe { ffi::PySequence_Tuple(object.as_ptr()) };
        // SAFETY: a new reference or NULL with an exception set, as just said.
        let items = unsafe { Object::from_owned_ptr(object.gil(), items) }?;
        // SAFETY: `items` is a tuple (PySequence_Tuple's result).
        (0..unsafe { items.tuple_len() })
            .map(|index| {
                // SAFETY: `items` is a tuple and `index` is below its length.
                let item = unsafe { items.tuple_item(index) }?;
                T::from_python(&item).map_err(|e| in_item(e, &format!("item {index}")))
            })
            .collect()
    }
}

/// Says where in a container a conversion failed.
fn in_item(error: Error, place: &str) -> Error {
    match error {
        Error::Conversion(msg) => Error::Conversion(format!("{place}: {msg}")),
        other => other,
    }
}

impl<T: ToPython> ToPython for Option<T> {
    #[inline]
    fn to_python<'py>(&self, gil: GilToken<'py>) -> Result<Object<'py>> {
        match self {
            Some(value) => value.to_python(gil),
            None => Ok(gil.none()),
        }
    }
}

impl<'py, T: FromPython<'py>> FromPython<'py> for Option<T> {
    #[inline]
    fn from_python(object: &Object<'py>) -> Result<Self> {
        if object.is_none() { Ok(None) } else { T::from_python(object).map(Some) }
    }
}

/// A new dict from `(name, value)` pairs; a name given twice is an error.
fn dict_from_pairs<'py, K: AsRef<str>, V: ToPython>(gil: GilToken<'py>, pairs: &[(K, V)]) -> Result<Object<'py>> {
    // SAFETY: GIL held; PyDict_New returns a new reference or NULL.
    let dict = unsafe { ffi::PyDict_New() };
    // SAFETY: a new reference or NULL with an exception set, as just said.
    let dict = unsafe { Object::from_owned_ptr(gil, dict) }?;
    for (name, value) in pairs {
        let key = Object::from_str(gil, name.as_ref())?;
        let value = value.to_python(gil)?;
        // SAFETY: GIL held; all borrowed; PyDict_Contains returns -1 on error.
        let present = dict.check_status(unsafe { ffi::PyDict_Contains(dict.as_ptr(), key.as_ptr()) })?;
        if present == 1 {
            return Err(Error::InvalidArgument(format!("key {:?} given twice", name.as_ref())));
        }
        // SAFETY: GIL held; all borrowed; PyDict_SetItem increfs what it keeps and returns -1
        // on error.
        dict.check_status(unsafe { ffi::PyDict_SetItem(dict.as_ptr(), key.as_ptr(), value.as_ptr()) })?;
    }
    Ok(dict)
}

impl<K: AsRef<str>, V: ToPython, S: BuildHasher> ToPython for HashMap<K, V, S> {
    #[inline]
    fn to_python<'py>(&self, gil: GilToken<'py>) -> Result<Object<'py>> {
        let pairs: Vec<(&str, &V)> = self.iter().map(|(key, value)| (key.as_ref(), value)).collect();
        dict_from_pairs(gil, &pairs)
    }
}

impl<'py, V: FromPython<'py>, S: BuildHasher + Default> FromPython<'py> for HashMap<String, V, S> {
    #[inline]
    fn from_python(object: &Object<'py>) -> Result<Self> {
        // SAFETY: GIL held (object); the check only reads the type of a live object.
        if unsafe { ffi::PyDict_Check(object.as_ptr()) } == 0 {
            return Err(wrong_type("dict", object));
        }
        // SAFETY: GIL held; borrows a dict and returns a new list of (key, value) tuples, a
        // snapshot that conversions cannot disturb, or NULL with an exception set.
        let items = unsafe { ffi::PyDict_Items(object.as_ptr()) };
        // SAFETY: a new reference or NULL with an exception set, as just said.
        let items = unsafe { Object::from_owned_ptr(object.gil(), items) }?;
        let pairs: Vec<(Object<'py>, Object<'py>)> = items.extract()?;
        pairs
            .iter()
            .map(|(key, value)| {
                let key = String::from_python(key).map_err(|e| in_item(e, "dict key"))?;
                let value = V::from_python(value).map_err(|e| in_item(e, &format!("value of {key:?}")))?;
                Ok((key, value))
            })
            .collect()
    }
}

impl IntoArgs for () {
    type Objects<'py> = [Object<'py>; 0];

    #[inline]
    fn into_objects<'py>(self, _gil: GilToken<'py>) -> Result<Self::Objects<'py>> {
        Ok([])
    }
}

impl<T: ToPython> IntoArgs for &[T] {
    type Objects<'py> = Vec<Object<'py>>;

    #[inline]
    fn into_objects<'py>(self, gil: GilToken<'py>) -> Result<Self::Objects<'py>> {
        self.iter().map(|item| item.to_python(gil)).collect()
    }
}

impl<T: ToPython> IntoArgs for Vec<T> {
    type Objects<'py> = Vec<Object<'py>>;

    #[inline]
    fn into_objects<'py>(self, gil: GilToken<'py>) -> Result<Self::Objects<'py>> {
        self.as_slice().into_objects(gil)
    }
}

/// Tuples: to and from Python tuples, and as positional arguments.
macro_rules! tuples {
    ($($len:literal: ($($name:ident $index:tt),+);)*) => {$(
        impl<$($name: ToPython),+> ToPython for ($($name,)+) {
            #[inline]
            fn to_python<'py>(&self, gil: GilToken<'py>) -> Result<Object<'py>> {
                Object::new_tuple(gil, [$(self.$index.to_python(gil)),+])
            }
        }

        impl<$($name: ToPython),+> IntoArgs for ($($name,)+) {
            type Objects<'py> = [Object<'py>; $len];


            #[inline]
            fn into_objects<'py>(self, gil: GilToken<'py>) -> Result<Self::Objects<'py>> {
                Ok([$(self.$index.to_python(gil)?),+])
            }
        }

        impl<'py, $($name: FromPython<'py>),+> FromPython<'py> for ($($name,)+) {
            #[inline]
            fn from_python(object: &Object<'py>) -> Result<Self> {
                // SAFETY: GIL held (object); the check only reads the type of a live object.
                if unsafe { ffi::PyTuple_Check(object.as_ptr()) } == 0 {
                    return Err(wrong_type("tuple", object));
                }
                // SAFETY: `object` is a tuple (checked above).
                let len = unsafe { object.tuple_len() };
                if len != $len {
                    return Err(Error::Conversion(format!("expected a tuple of length {}, got length {len}", $len)));
                }
                Ok(($({
                    // SAFETY: `object` is a tuple of the length checked above, which every
                    // index here is below.
                    let item = unsafe { object.tuple_item($index) }?;
                    $name::from_python(&item).map_err(|e| in_item(e, &format!("item {}", $index)))?
                },)+))
            }
        }
    )*};
}
tuples! {
    1: (A 0);
    2: (A 0, B 1);
    3: (A 0, B 1, C 2);
    4: (A 0, B 1, C 2, D 3);
    5: (A 0, B 1, C 2, D 3, E 4);
    6: (A 0, B 1, C 2, D 3, E 4, F 5);
    7: (A 0, B 1, C 2, D 3, E 4, F 5, G 6);
    8: (A 0, B 1, C 2, D 3, E 4, F 5, G 6, H 7);
}

impl IntoKwargs for () {
    #[inline]
    fn into_kwargs<'py>(self, _gil: GilToken<'py>) -> Result<Option<Object<'py>>> {
        Ok(None)
    }
}

impl<K: AsRef<str>, V: ToPython> IntoKwargs for &[(K, V)] {
    #[inline]
    fn into_kwargs<'py>(self, gil: GilToken<'py>) -> Result<Option<Object<'py>>> {
        dict_from_pairs(gil, self).map(Some).map_err(keyword_error)
    }
}

impl<K: AsRef<str>, V: ToPython, const N: usize> IntoKwargs for [(K, V); N] {
    #[inline]
    fn into_kwargs<'py>(self, gil: GilToken<'py>) -> Result<Option<Object<'py>>> {
        self.as_slice().into_kwargs(gil)
    }
}

impl<K: AsRef<str>, V: ToPython> IntoKwargs for Vec<(K, V)> {
    #[inline]
    fn into_kwargs<'py>(self, gil: GilToken<'py>) -> Result<Option<Object<'py>>> {
        self.as_slice().into_kwargs(gil)
    }
}

fn keyword_error(error: Error) -> Error {
    match error {
        Error::InvalidArgument(msg) => Error::InvalidArgument(format!("keyword argument {msg}")),
        other => other,
    }
}
