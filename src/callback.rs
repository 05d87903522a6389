//! Rust state made callable from Python: a C function (`METH_FASTCALL`) whose `self` is a
//! capsule holding an `Arc` of the state it works on, released when Python drops the function.
//!
//! The Driver hands py4cc five of them (the completion table's `notify`, `deliver` and
//! `host_held`, the dispatcher's wait and the worker-output sink); this module is the one place
//! that builds and frees them.

use std::ffi::{CStr, c_void};
use std::marker::PhantomData;
use std::sync::Arc;

use pyo3_ffi as ffi;

use crate::error::Result;
use crate::gil::GilToken;
use crate::object::Object;

/// The name every capsule made here carries, checked when its state is read back.
const CAPSULE_NAME: &CStr = c"rs4py.callback_state";

/// A `PyMethodDef` in a static, for a C function that works on a `T`.
#[repr(transparent)]
pub(crate) struct MethodDef<T> {
    def: ffi::PyMethodDef,
    state: PhantomData<fn(&T)>,
}

// SAFETY: the definition is never written after its constant initialisation; CPython reads its
// name, flags, doc and function pointer, all of which are static.
unsafe impl<T> Sync for MethodDef<T> {}

impl<T: Send + Sync + 'static> MethodDef<T> {
    /// A `METH_FASTCALL` function named `name`; `function` must read its state with
    /// [`bound_state::<T>`](bound_state).
    pub(crate) const fn fastcall(name: &'static CStr, function: ffi::PyCFunctionFast, doc: &'static CStr) -> Self {
        MethodDef {
            def: ffi::PyMethodDef {
                ml_name: name.as_ptr(),
                ml_meth: ffi::PyMethodDefPointer { PyCFunctionFast: function },
                ml_flags: ffi::METH_FASTCALL,
                ml_doc: doc.as_ptr(),
            },
            state: PhantomData,
        }
    }

    /// The Python function, bound to `state` (one strong count, held by its capsule).
    pub(crate) fn bind<'py>(&'static self, gil: GilToken<'py>, state: Arc<T>) -> Result<Object<'py>> {
        let pointer = Arc::into_raw(state).cast_mut().cast::<c_void>();
        // SAFETY: GIL held (gil). PyCapsule_New returns a new reference or NULL; on success the
        // capsule owns `pointer` (one strong count) and its destructor releases it.
        let capsule = unsafe { ffi::PyCapsule_New(pointer, CAPSULE_NAME.as_ptr(), Some(release::<T>)) };
        // SAFETY: a new reference (or NULL with an exception set), owned by the guard from here.
        let capsule = match unsafe { Object::from_owned_ptr(gil, capsule) } {
            Ok(capsule) => capsule,
            Err(error) => {
                // SAFETY: no capsule was made, so `pointer` still owns the count taken above.
                drop(unsafe { Arc::from_raw(pointer.cast::<T>()) });
                return Err(error);
            }
        };
        let def = std::ptr::from_ref(&self.def).cast_mut();
        // SAFETY: GIL held. `def` is a static that outlives every function made from it (CPython
        // only reads it); PyCFunction_NewEx keeps its own reference to the capsule as `self` and
        // returns a new reference or NULL.
        let function = unsafe { ffi::PyCFunction_NewEx(def, capsule.as_ptr(), std::ptr::null_mut()) };
        // SAFETY: a new reference (or NULL with an exception set), owned by the guard from here.
        unsafe { Object::from_owned_ptr(gil, function) }
    }
}

/// The state a function made by [`MethodDef::bind`] works on, read from its `self`; `None`
/// (with an exception set) if `capsule` is not such a capsule.
///
/// # Safety
/// The GIL is held, `capsule` is the `self` CPython passed to a function bound by a
/// `MethodDef<T>` (the same `T`), and the borrow does not outlive the call.
pub(crate) unsafe fn bound_state<'call, T>(capsule: *mut ffi::PyObject) -> Option<&'call T> {
    // SAFETY: GIL held (the caller's guarantee); PyCapsule_GetPointer checks the name and
    // answers NULL with an exception set for anything else.
    let state = unsafe { ffi::PyCapsule_GetPointer(capsule, CAPSULE_NAME.as_ptr()) }.cast::<T>();
    // SAFETY: a non-NULL pointer came from Arc::into_raw of an Arc<T> that the capsule keeps
    // alive, and CPython keeps the capsule (the function's `self`) alive for the whole call.
    unsafe { state.as_ref() }
}

/// The positional arguments of a `METH_FASTCALL` call, or `None` (with a TypeError set that
/// says `usage`) if there are not `expected` of them.
///
/// # Safety
/// The GIL is held, and `args` and `nargs` are what CPython passed to the function; the slice
/// does not outlive the call.
pub(crate) unsafe fn fastcall_args<'call>(
    args: *mut *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    expected: usize,
    usage: &CStr,
) -> Option<&'call [*mut ffi::PyObject]> {
    if usize::try_from(nargs).ok() != Some(expected) {
        // SAFETY: GIL held (the caller's guarantee); reads a static exception type.
        let type_error = unsafe { ffi::PyExc_TypeError };
        // SAFETY: GIL held; TypeError is an exception type.
        unsafe { crate::exception::raise(type_error, usage) };
        return None;
    }
    if expected == 0 {
        return Some(&[]);
    }
    // SAFETY: CPython passes `nargs` (= expected) borrowed argument pointers in a C array.
    Some(unsafe { std::slice::from_raw_parts(args, expected) })
}

/// An argument's truth, as Python's `bool(argument)`; None with the exception its `__bool__`
/// raised left set.
///
/// # Safety
/// The GIL is held and `argument` is a valid (borrowed) object pointer.
pub(crate) unsafe fn truth_argument(argument: *mut ffi::PyObject) -> Option<bool> {
    // SAFETY: GIL held and `argument` borrowed (the caller's guarantee); -1 means raised.
    match unsafe { ffi::PyObject_IsTrue(argument) } {
        -1 => None,
        truth => Some(truth == 1),
    }
}

/// A capsule's destructor: gives back the state's strong count.
unsafe extern "C" fn release<T>(capsule: *mut ffi::PyObject) {
    // SAFETY: CPython calls this once, with the GIL held, for a capsule made by `bind` under
    // CAPSULE_NAME.
    let state = unsafe { ffi::PyCapsule_GetPointer(capsule, CAPSULE_NAME.as_ptr()) };
    if state.is_null() {
        // SAFETY: GIL held; a destructor must not leave an exception set.
        unsafe { ffi::PyErr_Clear() };
        return;
    }
    // SAFETY: the pointer came from Arc::into_raw of an Arc<T> in `bind`, released once here.
    drop(unsafe { Arc::from_raw(state.cast::<T>()) });
}
