//! Counting the interpreter's thread states, for the tests that check none is left behind.
//! Included by path (not through `common`) so that only the binaries that count compile it.

use pyo3_ffi as ffi;
use rs4py::Gil;

/// How many thread states the main interpreter has (the calling thread holds the GIL).
/// Callers make sure no other thread adds or deletes one meanwhile.
pub fn thread_states(_gil: &Gil) -> usize {
    let mut count = 0;
    // SAFETY: the GIL is held (_gil); the walk only reads the interpreter's list of thread
    // states, which no other thread changes meanwhile (the callers' promise).
    let interpreter = unsafe { ffi::PyInterpreterState_Main() };
    // SAFETY: as above; the main interpreter lives as long as the process.
    let mut state = unsafe { ffi::PyInterpreterState_ThreadHead(interpreter) };
    while !state.is_null() {
        count += 1;
        // SAFETY: as above; `state` is a live entry of the list.
        state = unsafe { ffi::PyThreadState_Next(state) };
    }
    count
}
