//! Owned references: [`Object`] (tied to the GIL by a [`GilToken`]) and [`Handle`] (storable,
//! any thread).
//!
//! This is the one room where raw `PyObject*` pointers are taken into ownership or given
//! away; everything else in the crate borrows them through `Object::as_ptr`.

use std::fmt;
use std::ptr::NonNull;

use pyo3_ffi as ffi;

use crate::convert::{FromPython, IntoArgs, IntoKwargs, ToPython};
use crate::error::{Error, Result};
use crate::exception;
use crate::gil::{Gil, GilToken};

/// One owned reference to a Python object, valid while the [`Gil`] it is tied to is held.
///
/// Dropping it decrefs; cloning increfs. It carries the [`GilToken`] of that `Gil` (zero-sized:
/// an `Object` is one pointer), so it cannot leave its thread or outlive the guard's borrow;
/// for that, [`unbind`](Object::unbind) it into a [`Handle`].
///
/// ```
/// let gil = rs4py::Gil::acquire()?;
/// let list = gil.eval("[]")?;
/// let before = list.refcount();
/// let copy = list.clone();
/// assert_eq!(list.refcount(), before + 1);
/// drop(copy);
/// assert_eq!(list.refcount(), before);
/// # Ok::<(), rs4py::Error>(())
/// ```
#[repr(transparent)]
pub struct Object<'py> {
    ptr: NonNull<ffi::PyObject>,
    gil: GilToken<'py>,
}

impl<'py> Object<'py> {
    /// Takes ownership of a new reference, or fetches the pending exception if `ptr` is NULL.
    ///
    /// # Safety
    /// `ptr` is NULL or a new (owned) reference that nothing else will decref, and the
    /// current thread holds the GIL (which `gil` proves).
    #[inline]
    pub(crate) unsafe fn from_owned_ptr(gil: GilToken<'py>, ptr: *mut ffi::PyObject) -> Result<Self> {
        match NonNull::new(ptr) {
            Some(ptr) => Ok(Object::from_non_null(gil, ptr)),
            None => Err(exception::fetch_error(gil)),
        }
    }

    /// Like [`from_owned_ptr`](Self::from_owned_ptr), but a NULL means "no object", not an
    /// error (as for the parts of a fetched exception).
    ///
    /// # Safety
    /// As for `from_owned_ptr`.
    #[inline]
    pub(crate) unsafe fn from_owned_ptr_or_none(gil: GilToken<'py>, ptr: *mut ffi::PyObject) -> Option<Self> {
        NonNull::new(ptr).map(|ptr| Object::from_non_null(gil, ptr))
    }

    #[inline]
    fn from_non_null(gil: GilToken<'py>, ptr: NonNull<ffi::PyObject>) -> Self {
        Object { ptr, gil }
    }

    /// Takes a new reference to a borrowed one, or fetches the pending exception if `ptr` is
    /// NULL.
    ///
    /// # Safety
    /// `ptr` is NULL or a borrowed reference that stays valid until the incref here, and the
    /// current thread holds the GIL.
    #[inline]
    pub(crate) unsafe fn from_borrowed_ptr(gil: GilToken<'py>, ptr: *mut ffi::PyObject) -> Result<Self> {
        // SAFETY: per this function's contract; the guard made here owns the reference once
        // the incref below has made one for it (nothing runs in between).
        let object = unsafe { Self::from_owned_ptr(gil, ptr) }?;
        // SAFETY: GIL held; `ptr` is live (borrowed, per the contract) and not NULL here.
        unsafe { ffi::Py_INCREF(ptr) };
        Ok(object)
    }

    /// Hands the reference over to a C-API function that steals it.
    #[inline]
    pub(crate) fn into_ptr(self) -> *mut ffi::PyObject {
        let ptr = self.ptr.as_ptr();
        std::mem::forget(self);
        ptr
    }

    /// The raw pointer, borrowed: valid while `self` lives; never decref it. Crate-private:
    /// raw pointers stay inside rs4py, so its API does not depend on pyo3-ffi's types.
    #[inline]
    pub(crate) fn as_ptr(&self) -> *mut ffi::PyObject {
        self.ptr.as_ptr()
    }

    /// The token of the `Gil` this object is tied to: for converting values and making new
    /// objects alongside this one.
    ///
    /// ```
    /// use rs4py::ToPython;
    /// let gil = rs4py::Gil::acquire()?;
    /// let list = gil.eval("[1]")?;
    /// list.call_method("append", (2.to_python(list.gil())?,), ())?;
    /// assert_eq!(list.gil().eval("sum")?.call((&list,), ())?.extract::<i64>()?, 3);
    /// # Ok::<(), rs4py::Error>(())
    /// ```
    #[inline]
    pub fn gil(&self) -> GilToken<'py> {
        self.gil
    }

    /// The object's current reference count (`sys.getrefcount` minus its own argument).
    #[inline]
    pub fn refcount(&self) -> isize {
        // SAFETY: GIL held (self.gil()); the pointer is a live owned reference.
        unsafe { ffi::Py_REFCNT(self.as_ptr()) }
    }

    /// A Python `str` from Rust text; any Unicode, embedded NUL included. `gil` is a `&Gil` or
    /// a [`GilToken`].
    #[inline]
    pub fn from_str(gil: impl Into<GilToken<'py>>, text: &str) -> Result<Self> {
        let gil = gil.into();
        let len = isize::try_from(text.len()).map_err(|_| Error::Conversion("str too long for Python".into()))?;
        // SAFETY: GIL held (gil); reads `len` bytes of valid UTF-8 and returns a new
        // reference or NULL with an exception set.
        let ptr = unsafe { ffi::PyUnicode_FromStringAndSize(text.as_ptr().cast(), len) };
        // SAFETY: a new reference or NULL with an exception set, as just said.
        unsafe { Self::from_owned_ptr(gil, ptr) }
    }

    /// `getattr(self, name)`.
    ///
    /// ```
    /// let gil = rs4py::Gil::acquire()?;
    /// let math = gil.import("math")?;
    /// assert_eq!(math.getattr("pi")?.extract::<f64>()?, std::f64::consts::PI);
    /// let err = math.getattr("tau2").unwrap_err();
    /// assert_eq!(err.to_string(), "AttributeError: module 'math' has no attribute 'tau2'");
    /// # Ok::<(), rs4py::Error>(())
    /// ```
    pub fn getattr(&self, name: &str) -> Result<Object<'py>> {
        let name = Object::from_str(self.gil(), name)?;
        // SAFETY: GIL held; both pointers are live and borrowed for the call, which returns a
        // new reference or NULL with an exception set.
        let ptr = unsafe { ffi::PyObject_GetAttr(self.as_ptr(), name.as_ptr()) };
        // SAFETY: a new reference or NULL with an exception set, as just said.
        unsafe { Object::from_owned_ptr(self.gil(), ptr) }
    }

    /// `setattr(self, name, value)`.
    pub fn setattr(&self, name: &str, value: impl ToPython) -> Result<()> {
        let name = Object::from_str(self.gil(), name)?;
        let value = value.to_python(self.gil())?;
        // SAFETY: GIL held; all three pointers are borrowed for the call (it increfs what it
        // keeps), which returns -1 with an exception set on failure.
        let status = unsafe { ffi::PyObject_SetAttr(self.as_ptr(), name.as_ptr(), value.as_ptr()) };
        self.check_status(status).map(drop)
    }

    /// Calls the object: `self(*args, **kwargs)`. `args` is a tuple of convertible values
    /// (`()` for none); `kwargs` a list of `(name, value)` pairs (`()` for none).
    ///
    /// ```
    /// let gil = rs4py::Gil::acquire()?;
    /// let int = gil.eval("int")?;
    /// assert_eq!(int.call(("ff",), [("base", 16)])?.extract::<i64>()?, 255);
    /// let sorted = gil.eval("sorted")?;
    /// let out: Vec<i64> = sorted.call((vec![3, 1, 2],), [("reverse", true)])?.extract()?;
    /// assert_eq!(out, [3, 2, 1]);
    /// # Ok::<(), rs4py::Error>(())
    /// ```
    pub fn call(&self, args: impl IntoArgs, kwargs: impl IntoKwargs) -> Result<Object<'py>> {
        let args = args.into_objects(self.gil())?;
        let kwargs = kwargs.into_kwargs(self.gil())?;
        self.vectorcall(args.as_ref(), kwargs.as_ref())
    }

    /// Calls a method: `self.name(*args, **kwargs)`.
    ///
    /// ```
    /// let gil = rs4py::Gil::acquire()?;
    /// let text = gil.eval("'a-b-c'")?;
    /// let parts: Vec<String> = text.call_method("split", ("-",), [("maxsplit", 1)])?.extract()?;
    /// assert_eq!(parts, ["a", "b-c"]);
    /// # Ok::<(), rs4py::Error>(())
    /// ```
    pub fn call_method(&self, name: &str, args: impl IntoArgs, kwargs: impl IntoKwargs) -> Result<Object<'py>> {
        let args = args.into_objects(self.gil())?;
        let args = args.as_ref();
        if let Some(kwargs) = kwargs.into_kwargs(self.gil())? {
            return self.getattr(name)?.vectorcall(args, Some(&kwargs));
        }
        // Without keywords, PyObject_VectorcallMethod skips making a bound method. It takes
        // the receiver as the first argument: copy the pointers, on the stack when few.
        const ON_STACK: usize = 8;
        let mut stack = [std::ptr::null_mut(); ON_STACK];
        let mut heap = Vec::new();
        let receiver_and_args = if args.len() < ON_STACK {
            &mut stack[..=args.len()]
        } else {
            heap.resize(args.len() + 1, std::ptr::null_mut());
            &mut heap[..]
        };
        receiver_and_args[0] = self.as_ptr();
        for (slot, arg) in receiver_and_args[1..].iter_mut().zip(args) {
            *slot = arg.as_ptr();
        }
        let name = Object::from_str(self.gil(), name)?;
        // SAFETY: GIL held; the name, the receiver and the arguments are borrowed references
        // kept alive by their guards for the call; returns a new reference or NULL.
        let result = unsafe {
            ffi::PyObject_VectorcallMethod(
                name.as_ptr(),
                receiver_and_args.as_ptr(),
                receiver_and_args.len(),
                std::ptr::null_mut(),
            )
        };
        // SAFETY: a new reference or NULL with an exception set, as just said.
        unsafe { Object::from_owned_ptr(self.gil(), result) }
    }

    fn vectorcall(&self, args: &[Object<'_>], kwargs: Option<&Object<'_>>) -> Result<Object<'py>> {
        let (callable, argv, nargs) = (self.as_ptr(), args.as_ptr().cast::<*mut ffi::PyObject>(), args.len());
        // Object is repr(transparent) over a non-null PyObject pointer, so `argv` is an array
        // of `nargs` borrowed references, alive for the call.
        let result = match kwargs {
            // SAFETY: GIL held; the callable and the arguments are borrowed for the call, which
            // returns a new reference or NULL with an exception set.
            None => unsafe { ffi::PyObject_Vectorcall(callable, argv, nargs, std::ptr::null_mut()) },
            // SAFETY: as above; the dict is borrowed too.
            Some(kwargs) => unsafe { ffi::PyObject_VectorcallDict(callable, argv, nargs, kwargs.as_ptr()) },
        };
        // SAFETY: a new reference or NULL with an exception set, as just said.
        unsafe { Object::from_owned_ptr(self.gil(), result) }
    }

    /// Converts to a Rust value.
    ///
    /// ```
    /// let gil = rs4py::Gil::acquire()?;
    /// assert_eq!(gil.eval("(1, 'x')")?.extract::<(i64, String)>()?, (1, "x".to_string()));
    /// assert!(gil.eval("2 ** 64")?.extract::<i64>().is_err());
    /// # Ok::<(), rs4py::Error>(())
    /// ```
    #[inline]
    pub fn extract<T: FromPython<'py>>(&self) -> Result<T> {
        T::from_python(self)
    }

    /// `str(self)`.
    pub fn str(&self) -> Result<String> {
        // SAFETY: GIL held; PyObject_Str borrows self and returns a new reference or NULL.
        let ptr = unsafe { ffi::PyObject_Str(self.as_ptr()) };
        // SAFETY: a new reference or NULL with an exception set, as just said.
        unsafe { Object::from_owned_ptr(self.gil(), ptr) }?.extract()
    }

    /// `repr(self)`.
    pub fn repr(&self) -> Result<String> {
        // SAFETY: GIL held; PyObject_Repr borrows self and returns a new reference or NULL.
        let ptr = unsafe { ffi::PyObject_Repr(self.as_ptr()) };
        // SAFETY: a new reference or NULL with an exception set, as just said.
        unsafe { Object::from_owned_ptr(self.gil(), ptr) }?.extract()
    }

    /// The name of the object's type (`type(self).__name__`), for messages.
    pub fn type_name(&self) -> String {
        // SAFETY: GIL held; reads the type of a live object.
        let ty = unsafe { ffi::Py_TYPE(self.as_ptr()) };
        // SAFETY: GIL held; every object has a type, which self keeps alive.
        unsafe { type_object_name(ty) }
    }

    /// The name of the class this object is, if it is a type; else of its type.
    pub(crate) fn class_name(&self) -> String {
        // SAFETY: GIL held; PyType_Check only reads the type's flags.
        if unsafe { ffi::PyType_Check(self.as_ptr()) } != 0 {
            // SAFETY: GIL held; a type object may be viewed as a PyTypeObject, and self keeps
            // it alive.
            unsafe { type_object_name(self.as_ptr().cast()) }
        } else {
            self.type_name()
        }
    }

    /// Whether this is Python's `None`.
    #[inline]
    pub fn is_none(&self) -> bool {
        // SAFETY: GIL held; Py_None is a static object, compared by address only.
        self.as_ptr() == unsafe { ffi::Py_None() }
    }

    /// `self == other` (Python's `==`, which may run `__eq__`).
    ///
    /// ```
    /// let gil = rs4py::Gil::acquire()?;
    /// assert!(gil.eval("1.0")?.eq(&gil.eval("1")?)?);
    /// # Ok::<(), rs4py::Error>(())
    /// ```
    pub fn eq(&self, other: &Object<'_>) -> Result<bool> {
        // SAFETY: GIL held; both borrowed; returns -1 with an exception set on error.
        let status = unsafe { ffi::PyObject_RichCompareBool(self.as_ptr(), other.as_ptr(), ffi::Py_EQ) };
        self.check_status(status).map(|equal| equal == 1)
    }

    /// `self is other`: the same object.
    #[inline]
    pub fn is(&self, other: &Object<'_>) -> bool {
        self.as_ptr() == other.as_ptr()
    }

    /// `item in self`.
    pub fn contains(&self, item: &Object<'_>) -> Result<bool> {
        // SAFETY: GIL held; both are borrowed for the call, which returns -1 on error.
        let status = unsafe { ffi::PySequence_Contains(self.as_ptr(), item.as_ptr()) };
        self.check_status(status).map(|found| found == 1)
    }

    /// `len(self)`.
    pub fn len(&self) -> Result<usize> {
        // SAFETY: GIL held; PyObject_Size borrows self and returns -1 on error.
        let len = unsafe { ffi::PyObject_Size(self.as_ptr()) };
        self.check_status(len).map(|len| len as usize)
    }

    /// `len(self) == 0`.
    pub fn is_empty(&self) -> Result<bool> {
        self.len().map(|len| len == 0)
    }

    /// `self[key]`.
    pub fn get_item(&self, key: impl ToPython) -> Result<Object<'py>> {
        let key = key.to_python(self.gil())?;
        // SAFETY: GIL held; both borrowed; returns a new reference or NULL with an exception.
        let ptr = unsafe { ffi::PyObject_GetItem(self.as_ptr(), key.as_ptr()) };
        // SAFETY: a new reference or NULL with an exception set, as just said.
        unsafe { Object::from_owned_ptr(self.gil(), ptr) }
    }

    /// Turns this reference into a [`Handle`] that can be stored and sent to other threads.
    pub fn unbind(self) -> Handle {
        Handle { ptr: NonNull::new(self.into_ptr()).expect("an Object is never NULL") }
    }

    /// A C-API status (`-1` with an exception set means failure) as a `Result`.
    #[inline]
    pub(crate) fn check_status<N: PartialEq + From<i8>>(&self, status: N) -> Result<N> {
        if status == N::from(-1) { Err(exception::fetch_error(self.gil())) } else { Ok(status) }
    }

    /// A new tuple of the converted `items`; the first failed conversion fails it all.
    pub(crate) fn new_tuple<I>(gil: GilToken<'py>, items: I) -> Result<Self>
    where
        I: IntoIterator<Item = Result<Object<'py>>>,
        I::IntoIter: ExactSizeIterator,
    {
        Self::new_sequence(gil, items, ffi::PyTuple_New, ffi::PyTuple_SET_ITEM)
    }

    /// A new list of the converted `items`; the first failed conversion fails it all.
    pub(crate) fn new_list<I>(gil: GilToken<'py>, items: I) -> Result<Self>
    where
        I: IntoIterator<Item = Result<Object<'py>>>,
        I::IntoIter: ExactSizeIterator,
    {
        Self::new_sequence(gil, items, ffi::PyList_New, ffi::PyList_SET_ITEM)
    }

    /// Makes the sequence, then fills it as the items convert. Conversions may run Python
    /// code; while the sequence has empty slots it is untracked by the garbage collector and
    /// referenced by nothing else, so no Python code can find it.
    fn new_sequence<I>(
        gil: GilToken<'py>,
        items: I,
        new: unsafe extern "C" fn(ffi::Py_ssize_t) -> *mut ffi::PyObject,
        set_item: unsafe fn(*mut ffi::PyObject, ffi::Py_ssize_t, *mut ffi::PyObject),
    ) -> Result<Self>
    where
        I: IntoIterator<Item = Result<Object<'py>>>,
        I::IntoIter: ExactSizeIterator,
    {
        let items = items.into_iter();
        let len = ffi::Py_ssize_t::try_from(items.len()).map_err(|_| Error::Conversion("too many items".into()))?;
        // SAFETY: GIL held; PyTuple_New / PyList_New return a new reference or NULL.
        let sequence = unsafe { new(len) };
        // SAFETY: a new reference or NULL with an exception set, as just said.
        let sequence = unsafe { Object::from_owned_ptr(gil, sequence) }?;
        if len == 0 {
            return Ok(sequence); // possibly a shared empty singleton: leave its tracking alone
        }
        // SAFETY: a new tuple or list with items is GC-tracked; untracking it is allowed, and
        // its deallocation (on an early return below) handles both untracked and NULL slots.
        unsafe { ffi::PyObject_GC_UnTrack(sequence.as_ptr().cast()) };
        let mut filled = 0;
        for item in items.take(len as usize) {
            let item = item?;
            // SAFETY: the sequence is new, ours alone, and its slot `filled` < len is empty;
            // the SET_ITEM macros store the item's reference there (into_ptr gives it up).
            unsafe { set_item(sequence.as_ptr(), filled, item.into_ptr()) };
            filled += 1;
        }
        if filled != len {
            return Err(Error::Conversion(format!("expected {len} items, got {filled}")));
        }
        // SAFETY: full now, and untracked since the untrack above.
        unsafe { ffi::PyObject_GC_Track(sequence.as_ptr().cast()) };
        Ok(sequence)
    }

    /// Item `index` of a tuple, as a new reference.
    ///
    /// # Safety
    /// `self` is a tuple (`PyTuple_Check`) and `index` is below its length.
    #[inline]
    pub(crate) unsafe fn tuple_item(&self, index: usize) -> Result<Object<'py>> {
        // SAFETY: per the contract (a tuple, `index` in range); returns a borrowed reference.
        let item = unsafe { ffi::PyTuple_GetItem(self.as_ptr(), index as ffi::Py_ssize_t) };
        // SAFETY: the immutable tuple keeps the borrowed item alive until the incref here.
        unsafe { Object::from_borrowed_ptr(self.gil(), item) }
    }

    /// The length of a tuple.
    ///
    /// # Safety
    /// `self` is a tuple (`PyTuple_Check`).
    #[inline]
    pub(crate) unsafe fn tuple_len(&self) -> usize {
        // SAFETY: per the contract; PyTuple_Size cannot fail on a tuple.
        unsafe { ffi::PyTuple_Size(self.as_ptr()) as usize }
    }
}

/// The last dotted part of a type's `tp_name` (its `__name__`).
///
/// # Safety
/// The GIL is held and `ty` is a live type object.
unsafe fn type_object_name(ty: *mut ffi::PyTypeObject) -> String {
    // SAFETY: per the contract, `ty` points to a live type object.
    let name = unsafe { (*ty).tp_name };
    // SAFETY: tp_name is a NUL-terminated C string owned by the type, alive while it is.
    let full = unsafe { std::ffi::CStr::from_ptr(name) }.to_string_lossy();
    full.rsplit('.').next().unwrap_or_default().to_owned()
}

impl Clone for Object<'_> {
    #[inline]
    fn clone(&self) -> Self {
        // SAFETY: GIL held; the incref makes the new guard's reference its own.
        unsafe { ffi::Py_INCREF(self.as_ptr()) };
        Object { ptr: self.ptr, gil: self.gil }
    }
}

impl Drop for Object<'_> {
    #[inline]
    fn drop(&mut self) {
        // SAFETY: GIL held (the token's Gil outlives 'py); this guard owns exactly one reference.
        unsafe { ffi::Py_DECREF(self.as_ptr()) };
    }
}

impl fmt::Debug for Object<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match exception::lossy_repr(self) {
            Some(repr) => f.write_str(&repr),
            None => write!(f, "<{} object at {:p}>", self.type_name(), self.as_ptr()),
        }
    }
}

/// An owned reference that outlives any [`Gil`]: storable in structs and statics, and `Send`
/// and `Sync`. Dropping it takes the GIL itself to decref, on whatever thread that happens.
///
/// ```
/// let handle = {
///     let gil = rs4py::Gil::acquire()?;
///     gil.eval("[1, 2, 3]")?.unbind()
/// };
/// std::thread::spawn(move || {
///     let gil = rs4py::Gil::acquire().unwrap();
///     assert_eq!(handle.bind(&gil).extract::<Vec<i64>>().unwrap(), [1, 2, 3]);
/// })
/// .join()
/// .unwrap();
/// # Ok::<(), rs4py::Error>(())
/// ```
///
/// Functions that need proof of the GIL take a `&Gil` or a [`GilToken`] alike.
pub struct Handle {
    ptr: NonNull<ffi::PyObject>,
}

// SAFETY: a Handle touches its object only while holding the GIL (bind, clone_ref, drop),
// which serialises every access across threads.
unsafe impl Send for Handle {}
// SAFETY: as above; &Handle offers no access without a Gil.
unsafe impl Sync for Handle {}

impl Handle {
    /// A new `Object` reference to the same object, tied to `gil` (a `&Gil` or a
    /// [`GilToken`]).
    #[inline]
    pub fn bind<'py>(&self, gil: impl Into<GilToken<'py>>) -> Object<'py> {
        // SAFETY: GIL held (gil); the handle's own reference keeps the object alive until the
        // incref gives the Object one of its own.
        unsafe { ffi::Py_INCREF(self.ptr.as_ptr()) };
        Object::from_non_null(gil.into(), self.ptr)
    }

    /// Turns the handle back into an `Object` without touching the reference count.
    pub fn into_object<'py>(self, gil: impl Into<GilToken<'py>>) -> Object<'py> {
        let ptr = self.ptr;
        std::mem::forget(self);
        Object::from_non_null(gil.into(), ptr)
    }

    /// A second handle to the same object (an incref; needs the GIL, which `gil` proves).
    pub fn clone_ref<'py>(&self, gil: impl Into<GilToken<'py>>) -> Handle {
        self.bind(gil).unbind()
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        // A Handle exists only once Python runs, so acquiring cannot fail; if it ever did, the
        // reference is leaked rather than released without the GIL.
        if let Ok(gil) = Gil::acquire() {
            drop(Object::from_non_null(gil.token(), self.ptr));
        }
    }
}

impl fmt::Debug for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Handle({:p})", self.ptr.as_ptr())
    }
}

/// `None` as a new reference, for a C function made callable from Python to return (a
/// function of this crate's own, so that it also builds on 3.9, which has no `Py_NewRef`).
///
/// # Safety
/// The GIL is held, and the caller hands the reference over to CPython.
pub(crate) unsafe fn new_none_reference() -> *mut ffi::PyObject {
    // SAFETY: the caller holds the GIL; reads the address of the static None object.
    let none = unsafe { ffi::Py_None() };
    // SAFETY: GIL held; the reference taken here is the one the caller hands over.
    unsafe { ffi::Py_INCREF(none) };
    none
}
