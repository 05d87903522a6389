//! One Python thread state per OS thread, kept for the thread's life: made on its first
//! acquisition, deleted when it exits, and shared with code that calls `PyGILState_Ensure`
//! (C extensions, PyO3) on the same thread.
//!
//! These tests count the interpreter's thread states, so they run one at a time (SERIAL) and
//! take the GIL only on threads they spawn and join, never on the test harness's own threads,
//! whose thread states would come and go at the harness's pace.

use std::cell::RefCell;
use std::sync::mpsc;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::thread;

use pyo3::prelude::*;
use pyo3_ffi as ffi;
use rs4py::{Gil, Handle};

#[path = "common/thread_states.rs"]
mod thread_states;

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Runs `body` on a new thread and returns once that thread has fully exited, its
/// thread-local destructors included (a native join).
fn on_new_thread<T: Send + 'static>(body: impl FnOnce() -> T + Send + 'static) -> T {
    thread::spawn(body).join().unwrap()
}

/// How many thread states the interpreter has, counted from a thread of its own (so the count
/// includes that thread's, deleted again before this returns).
fn thread_states() -> usize {
    on_new_thread(|| thread_states::thread_states(&Gil::acquire().unwrap()))
}

/// The unique id of the thread state the current thread holds the GIL with.
fn current_thread_state_id() -> i64 {
    // SAFETY: callers hold the GIL, so PyThreadState_Get returns the current state (never NULL).
    let state = unsafe { ffi::PyThreadState_Get() };
    // SAFETY: GIL held; PyThreadState_GetID only reads the state.
    unsafe { ffi::PyThreadState_GetID(state) }
}

/// Whether `PyGILState_Check` says this thread holds the GIL.
fn gilstate_check() -> bool {
    // SAFETY: Python runs (the callers have taken a guard before); PyGILState_Check may be
    // called without the GIL.
    unsafe { ffi::PyGILState_Check() != 0 }
}

/// Makes sure Python runs, from a thread that then exits.
fn start_python() {
    on_new_thread(|| drop(Gil::acquire().unwrap()));
}

/// Runs `body` on a new thread (one test at a time, Python started) and checks that the
/// thread's state went with the thread.
fn on_a_thread_leaving_no_thread_state(body: impl FnOnce() + Send + 'static) {
    let _serial = serial();
    start_python();
    let before = thread_states();
    on_new_thread(body);
    assert_eq!(thread_states(), before, "the thread's state went with it");
}

/// The id of the thread state this thread keeps, made by a guard if there is none yet.
fn kept_thread_state_id() -> i64 {
    let _gil = Gil::acquire().unwrap();
    current_thread_state_id()
}

#[test]
fn a_thread_keeps_one_thread_state_for_its_life_and_deletes_it_when_it_exits() {
    let _serial = serial();
    start_python();
    on_new_thread(|| Gil::acquire().unwrap().run("import threading\nper_thread = threading.local()\n").unwrap());
    let before = thread_states();
    let (idle_tx, idle_rx) = mpsc::channel();
    let (exit_tx, exit_rx) = mpsc::channel::<()>();
    let worker = thread::spawn(move || {
        let ids: Vec<i64> = (0..200)
            .map(|round| {
                let gil = Gil::acquire().unwrap();
                // threading.local data outlives each guard, since the thread state does.
                gil.run(&format!("try:\n    per_thread.n += 1\nexcept AttributeError:\n    per_thread.n = {round}\n"))
                    .unwrap();
                current_thread_state_id()
            })
            .collect();
        let n: i64 = Gil::acquire().unwrap().eval("per_thread.n").unwrap().extract().unwrap();
        idle_tx.send(()).unwrap();
        exit_rx.recv().unwrap();
        (ids, n)
    });
    idle_rx.recv().unwrap();
    assert_eq!(thread_states(), before + 1, "the idle thread keeps its thread state, and only one");
    exit_tx.send(()).unwrap();
    let (ids, n) = worker.join().unwrap();
    assert!(ids.iter().all(|&id| id == ids[0]), "one thread state for all 200 guards: {ids:?}");
    assert_eq!(n, 199, "threading.local data kept across guards (0 set, then 199 increments)");
    assert_eq!(thread_states(), before, "the thread's state went with it");
}

#[test]
fn thousands_of_acquisitions_on_threads_that_come_and_go_leave_no_thread_state() {
    let _serial = serial();
    start_python();
    on_new_thread(|| Gil::acquire().unwrap().run("churn_total = [0]\n").unwrap());
    let before = thread_states();
    const BATCHES: usize = 25;
    const THREADS: usize = 8;
    const ACQUISITIONS: usize = 20;
    for _ in 0..BATCHES {
        let workers: Vec<_> = (0..THREADS)
            .map(|_| {
                thread::spawn(|| {
                    for _ in 0..ACQUISITIONS {
                        Gil::acquire().unwrap().run("churn_total[0] += 1").unwrap();
                    }
                })
            })
            .collect();
        for worker in workers {
            worker.join().unwrap();
        }
    }
    assert_eq!(thread_states(), before, "{} threads came and went", BATCHES * THREADS);
    let total: usize = on_new_thread(|| Gil::acquire().unwrap().eval("churn_total[0]").unwrap().extract().unwrap());
    assert_eq!(total, BATCHES * THREADS * ACQUISITIONS);
}

#[test]
fn pygilstate_check_is_true_exactly_while_a_guard_is_held_on_a_spawned_thread() {
    on_a_thread_leaving_no_thread_state(|| {
        assert!(!gilstate_check(), "a new thread holds nothing");
        assert!(!Gil::is_held());
        for _ in 0..3 {
            let outer = Gil::acquire().unwrap();
            assert!(gilstate_check());
            let inner = Gil::acquire().unwrap();
            drop(outer);
            assert!(gilstate_check(), "the inner guard still holds the GIL");
            assert!(Gil::is_held());
            drop(inner);
            assert!(!gilstate_check(), "the last guard released the GIL");
            assert!(!Gil::is_held());
        }
    });
}

#[test]
fn c_style_gilstate_calls_share_the_kept_thread_state_inside_and_outside_a_guard() {
    on_a_thread_leaving_no_thread_state(|| {
        let kept = kept_thread_state_id();

        // Outside any guard: Ensure takes the GIL with the kept state, and a guard taken
        // inside leaves the GIL to Ensure's Release.
        // SAFETY: Python runs; each Ensure is paired with a Release on this thread.
        let state = unsafe { ffi::PyGILState_Ensure() };
        assert_eq!(state, ffi::PyGILState_STATE::PyGILState_UNLOCKED);
        assert_eq!(current_thread_state_id(), kept);
        {
            let gil = Gil::acquire().unwrap();
            assert_eq!(gil.eval("40 + 2").unwrap().extract::<i64>().unwrap(), 42);
        }
        assert!(gilstate_check(), "the guard did not release what Ensure took");
        // SAFETY: matches the Ensure above.
        unsafe { ffi::PyGILState_Release(state) };
        assert!(!gilstate_check(), "Release released the GIL");

        // Inside a guard: Ensure finds the GIL held; its Release leaves it to the guard.
        let gil = Gil::acquire().unwrap();
        // SAFETY: as above.
        let state = unsafe { ffi::PyGILState_Ensure() };
        assert_eq!(state, ffi::PyGILState_STATE::PyGILState_LOCKED);
        assert_eq!(current_thread_state_id(), kept);
        // SAFETY: matches the Ensure above.
        unsafe { ffi::PyGILState_Release(state) };
        assert!(gilstate_check());
        assert_eq!(gil.eval("'still held'").unwrap().extract::<String>().unwrap(), "still held");
        drop(gil);
        assert!(!gilstate_check());

        // Neither call deleted the kept state.
        let _gil = Gil::acquire().unwrap();
        assert_eq!(current_thread_state_id(), kept);
    });
}

#[test]
fn a_thread_state_made_by_pygilstate_ensure_is_used_not_kept() {
    on_a_thread_leaving_no_thread_state(|| {
        // C code on this thread makes the thread state; a guard inside must not keep it, since
        // the matching Release deletes it.
        // SAFETY: Python runs; Ensure and Release pair up on this thread.
        let state = unsafe { ffi::PyGILState_Ensure() };
        let theirs = current_thread_state_id();
        {
            let gil = Gil::acquire().unwrap();
            assert_eq!(current_thread_state_id(), theirs);
            assert_eq!(gil.eval("6 * 7").unwrap().extract::<i64>().unwrap(), 42);
        }
        assert!(gilstate_check());
        // SAFETY: matches the Ensure above; it deletes the thread state it made.
        unsafe { ffi::PyGILState_Release(state) };
        assert!(!gilstate_check());
        // SAFETY: may be called without the GIL.
        assert!(unsafe { ffi::PyGILState_GetThisThreadState() }.is_null(), "Release deleted it");

        // The next guard makes the thread state that this thread keeps.
        let first = kept_thread_state_id();
        assert_ne!(first, theirs);
        let _gil = Gil::acquire().unwrap();
        assert_eq!(current_thread_state_id(), first);
    });
}

#[test]
fn pyo3_on_the_same_thread_inside_and_outside_a_guard() {
    on_a_thread_leaving_no_thread_state(|| {
        let kept = kept_thread_state_id();
        let doubled = Python::attach(|py| {
            assert_eq!(current_thread_state_id(), kept);
            let gil = Gil::acquire().unwrap();
            let value: i64 = gil.eval("21 * 2").unwrap().extract().unwrap();
            drop(gil);
            assert!(gilstate_check(), "PyO3 still holds the GIL");
            py.eval(c"21 * 2", None, None).unwrap().extract::<i64>().unwrap() + value
        });
        assert_eq!(doubled, 84);
        assert!(!gilstate_check());

        let gil = Gil::acquire().unwrap();
        let from_pyo3 = Python::attach(|py| {
            assert_eq!(current_thread_state_id(), kept);
            py.eval(c"'pyo3'", None, None).unwrap().extract::<String>().unwrap()
        });
        assert_eq!(from_pyo3, "pyo3");
        assert!(gilstate_check(), "PyO3 left the GIL to the guard");
        drop(gil);
        assert!(!gilstate_check());
    });
}

thread_local! {
    static LATE_GUARD: RefCell<Option<Gil>> = const { RefCell::new(None) };
    static LATE_HANDLE: RefCell<Option<Handle>> = const { RefCell::new(None) };
}

/// A guard and a handle kept in thread-locals are destroyed with the thread, before or after
/// the destructor that deletes its thread state, depending on which was registered first.
fn guard_and_handle_in_thread_locals(registered_before_first_acquisition: bool) {
    let _serial = serial();
    start_python();
    let (probe, held) = on_new_thread(|| {
        let gil = Gil::acquire().unwrap();
        let probe = gil.eval("object()").unwrap().unbind();
        let held = probe.clone_ref(&gil);
        (probe, held)
    });
    let before = thread_states();
    on_new_thread(move || {
        if registered_before_first_acquisition {
            LATE_GUARD.with(|_| ());
            LATE_HANDLE.with(|_| ());
        }
        let gil = Gil::acquire().unwrap();
        LATE_HANDLE.with(|slot| *slot.borrow_mut() = Some(held));
        LATE_GUARD.with(|slot| *slot.borrow_mut() = Some(gil));
    });
    assert_eq!(thread_states(), before, "the thread's state went with it");
    let refcount = on_new_thread(move || {
        let gil = Gil::acquire().unwrap();
        probe.bind(&gil).refcount()
    });
    assert_eq!(refcount, 2, "the handle in the thread-local was released: only `probe` and its binding remain");
}

#[test]
fn thread_locals_destroyed_after_the_thread_state_destructor_release_cleanly() {
    guard_and_handle_in_thread_locals(true);
}

#[test]
fn thread_locals_destroyed_before_the_thread_state_destructor_release_cleanly() {
    guard_and_handle_in_thread_locals(false);
}
