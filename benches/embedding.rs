//! The embedding layer's overhead against its anchors, in one run: the raw C API (the least
//! work possible: vectorcall, no checks, no guards) and PyO3 doing the same thing.
//!
//! `cargo bench --bench embedding`

// The raw C API floor is written as a C caller would: each timed body is one unsafe block.
#![allow(clippy::multiple_unsafe_ops_per_block)]

use std::hint::black_box;
use std::time::Instant;

use pyo3::prelude::*;
use pyo3::types::PyAnyMethods;
use pyo3_ffi as ffi;
use rs4py::Gil;

const ROUNDS: usize = 15;

/// One timed round of `iterations` calls, in nanoseconds per call.
fn one_round(iterations: usize, body: &mut impl FnMut()) -> f64 {
    let start = Instant::now();
    for _ in 0..iterations {
        body();
    }
    start.elapsed().as_nanos() as f64 / iterations as f64
}

/// The best of several timed rounds of `iterations` calls, in nanoseconds per call.
fn nanos_per_call(iterations: usize, mut body: impl FnMut()) -> f64 {
    (0..ROUNDS).map(|_| one_round(iterations, &mut body)).fold(f64::INFINITY, f64::min)
}

/// Like `nanos_per_call` for two bodies whose rounds alternate, so that both meet the same
/// load on a shared machine.
fn nanos_per_call_side_by_side(iterations: usize, mut a: impl FnMut(), mut b: impl FnMut()) -> (f64, f64) {
    (0..ROUNDS).fold((f64::INFINITY, f64::INFINITY), |(best_a, best_b), _| {
        (best_a.min(one_round(iterations, &mut a)), best_b.min(one_round(iterations, &mut b)))
    })
}

fn report(case: &str, raw: f64, rs4py: f64, pyo3: f64) {
    println!(
        "{case:<44} raw C API {raw:>8.1} ns | rs4py {rs4py:>8.1} ns ({:>4.2}x raw) | PyO3 {pyo3:>8.1} ns ({:>4.2}x raw) | rs4py/PyO3 {:>4.2}",
        rs4py / raw,
        pyo3 / raw,
        rs4py / pyo3
    );
}

/// Nanoseconds per GIL take-and-release on the current thread, by each party.
struct GilRoundTrips {
    /// The raw C API at its best: `PyEval_RestoreThread`/`PyEval_SaveThread` with the thread's
    /// state kept.
    raw: f64,
    rs4py: f64,
    pyo3: f64,
    /// `PyGILState_Ensure`/`Release`, which, on a thread without a thread state of its own,
    /// makes and frees one each time.
    gilstate: f64,
}

/// Measures taking and releasing the GIL on the calling thread. PyGILState and PyO3 go first,
/// meeting the thread as they would without rs4py; then the raw C API and rs4py take turns
/// with the same thread state, the one rs4py keeps for the thread (on the main thread, the
/// interpreter's own).
fn gil_round_trips(iterations: usize) -> GilRoundTrips {
    let gilstate = nanos_per_call(iterations, || {
        // SAFETY: Python is initialised; Ensure/Release pair up on this thread.
        unsafe {
            let state = ffi::PyGILState_Ensure();
            ffi::PyGILState_Release(state);
        }
    });
    let pyo3 = nanos_per_call(iterations, || Python::attach(|py| _ = black_box(py)));
    drop(Gil::acquire().unwrap());
    // SAFETY: may be called without the GIL; rs4py has just made (or found) this thread's
    // state, and keeps it while the thread lives.
    let thread_state = unsafe { ffi::PyGILState_GetThisThreadState() };
    assert!(!thread_state.is_null());
    let (raw, rs4py) = nanos_per_call_side_by_side(
        iterations,
        || {
            // SAFETY: thread_state is this thread's and not current (no guard is held); the
            // pair takes and releases the GIL with it.
            unsafe {
                ffi::PyEval_RestoreThread(thread_state);
                black_box(ffi::PyEval_SaveThread());
            }
        },
        || drop(black_box(Gil::acquire().unwrap())),
    );
    GilRoundTrips { raw, rs4py, pyo3, gilstate }
}

fn main() {
    {
        let gil = Gil::acquire().expect("Python starts");
        gil.run(
            "def three_args(a, b, c):\n    return 1\n\ndef submit_shaped(floats, strs, n):\n    return (0, n, '')\n",
        )
        .expect("definitions run");
    }
    println!("rs4py embedding benchmark (best of {ROUNDS} rounds; lower is better)");

    let iterations = 100_000;
    let main_thread = gil_round_trips(iterations);
    report("take and release the GIL, main thread", main_thread.raw, main_thread.rs4py, main_thread.pyo3);
    // A long-lived thread of the Rust program, as a service's worker threads are.
    let spawned = std::thread::spawn(move || gil_round_trips(iterations)).join().unwrap();
    report("take and release the GIL, spawned thread", spawned.raw, spawned.rs4py, spawned.pyo3);
    println!(
        "{:<44} raw C API {:>4.2}x | rs4py {:>4.2}x | PyO3 {:>4.2}x   (PyGILState_Ensure/Release: main {:.1} ns, spawned {:.1} ns)",
        "  spawned thread / main thread",
        spawned.raw / main_thread.raw,
        spawned.rs4py / main_thread.rs4py,
        spawned.pyo3 / main_thread.pyo3,
        main_thread.gilstate,
        spawned.gilstate,
    );

    let gil = Gil::acquire().unwrap();
    let three_args = gil.eval("three_args").unwrap();
    let submit_shaped = gil.eval("submit_shaped").unwrap();
    // The raw pointers come from PyO3 (rs4py keeps its own inside the crate); same objects.
    let raw_pointer = |name: &std::ffi::CStr| Python::attach(|py| py.eval(name, None, None).unwrap().unbind());
    let three_args_raw = raw_pointer(c"three_args");
    let function = three_args_raw.as_ptr();
    let (raw, ours) = nanos_per_call_side_by_side(
        iterations,
        || {
            // SAFETY: GIL held (gil); every new reference made here is released here. No error checks: this is the floor, not production code.
            unsafe {
                let args = [
                    ffi::PyLong_FromLongLong(1),
                    ffi::PyFloat_FromDouble(2.5),
                    ffi::PyUnicode_FromStringAndSize(c"x".as_ptr(), 1),
                ];
                let result = ffi::PyObject_Vectorcall(function, args.as_ptr(), 3, std::ptr::null_mut());
                black_box(ffi::PyLong_AsLongLong(result));
                ffi::Py_DECREF(result);
                for arg in args {
                    ffi::Py_DECREF(arg);
                }
            }
        },
        || {
            black_box(three_args.call((1, 2.5, "x"), ()).unwrap().extract::<i64>().unwrap());
        },
    );
    let theirs = Python::attach(|py| {
        let three_args = py.eval(c"three_args", None, None).unwrap();
        nanos_per_call(iterations, || {
            black_box(three_args.call1((1, 2.5, "x")).unwrap().extract::<i64>().unwrap());
        })
    });
    report("call f(1, 2.5, 'x'), extract the int", raw, ours, theirs);

    let floats = [12.5, -3.25];
    let strs = ["Zoë Ødegaard", "a naïve façade of straße.", "0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9"];
    let submit_shaped_raw = raw_pointer(c"submit_shaped");
    let function = submit_shaped_raw.as_ptr();
    let (raw, ours) = nanos_per_call_side_by_side(
        iterations,
        || {
            // SAFETY: as above; PyList_SetItem steals the items; PyTuple_GetItem borrows from `result`,
            // which outlives every use of the borrowed items; the UTF-8 buffer is copied at once.
            unsafe {
                let float_list = ffi::PyList_New(2);
                for (index, value) in floats.iter().enumerate() {
                    ffi::PyList_SetItem(float_list, index as isize, ffi::PyFloat_FromDouble(*value));
                }
                let str_list = ffi::PyList_New(3);
                for (index, text) in strs.iter().enumerate() {
                    let item = ffi::PyUnicode_FromStringAndSize(text.as_ptr().cast(), text.len() as isize);
                    ffi::PyList_SetItem(str_list, index as isize, item);
                }
                let args = [float_list, str_list, ffi::PyLong_FromLongLong(7)];
                let result = ffi::PyObject_Vectorcall(function, args.as_ptr(), 3, std::ptr::null_mut());
                let flag = ffi::PyLong_AsLongLong(ffi::PyTuple_GetItem(result, 0));
                let key = ffi::PyLong_AsLongLong(ffi::PyTuple_GetItem(result, 1));
                let mut len = 0;
                let data = ffi::PyUnicode_AsUTF8AndSize(ffi::PyTuple_GetItem(result, 2), &mut len);
                let message =
                    String::from_utf8_lossy(std::slice::from_raw_parts(data.cast::<u8>(), len as usize)).into_owned();
                black_box((flag, key, message));
                ffi::Py_DECREF(result);
                for arg in args {
                    ffi::Py_DECREF(arg);
                }
            }
        },
        || {
            let answer = submit_shaped.call((&floats[..], &strs[..], 7), ()).unwrap();
            black_box(answer.extract::<(i64, i64, String)>().unwrap());
        },
    );
    let theirs = Python::attach(|py| {
        let submit_shaped = py.eval(c"submit_shaped", None, None).unwrap();
        nanos_per_call(iterations, || {
            let answer = submit_shaped.call1((floats.to_vec(), strs.to_vec(), 7)).unwrap();
            black_box(answer.extract::<(i64, i64, String)>().unwrap());
        })
    });
    report("submit-shaped call: 2 floats, 3 strs, an int", raw, ours, theirs);

    // A failure that is translated and dropped: no traceback is worth making for it.
    let big = gil.eval("2 ** 70").unwrap();
    let big_raw = raw_pointer(c"2 ** 70");
    let number = big_raw.as_ptr();
    let iterations = 100_000;
    let raw = nanos_per_call(iterations, || {
        // SAFETY: GIL held (gil); `number` is a live int; the OverflowError it raises is cleared.
        unsafe {
            black_box(ffi::PyLong_AsLongLong(number));
            black_box(ffi::PyErr_Occurred());
            ffi::PyErr_Clear();
        }
    });
    let ours = nanos_per_call(iterations, || _ = black_box(big.extract::<i64>().is_err()));
    let theirs = Python::attach(|py| {
        let big = py.eval(c"2 ** 70", None, None).unwrap();
        nanos_per_call(iterations, || _ = black_box(big.extract::<i64>().is_err()))
    });
    report("extract an int out of range (error dropped)", raw, ours, theirs);
}
