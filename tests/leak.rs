//! Repeats a mix of imports, calls, conversions and raised exceptions many thousands of times
//! and checks that nothing leaks.
//!
//! On a debug build of CPython (`PYO3_PYTHON=python3.11-dbg`, as `.ci/run` does) it counts
//! every reference alive in the process with `sys.gettotalrefcount()`. On any build it checks
//! that the objects passed through every operation end with the reference counts they began
//! with, and that the number of objects the garbage collector tracks does not grow.
//!
//! The Driver's completion path gets the same check: the pool's notifier called from Python,
//! `retrieve` answered from the completion table, `cancel` in several states, results that
//! expire, and `wait_async` futures dropped while pending. So do a Driver's general tasks,
//! with every answer type, and tasks run in batches (`DriverOptions::batching`).

#[allow(dead_code)]
#[path = "common/workers.rs"]
mod workers;
use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use std::thread;
use std::time::{Duration, Instant};

use pyo3_ffi as ffi;
use rs4py::{
    Batching, Bytes, Driver, DriverOptions, Error, FromPython, Gil, Handle, IntoArgs, Object, ResultStatus,
    SubmitStatus, TaskResult, ToPython,
};

#[path = "common/submit.rs"]
mod submit;
#[path = "common/thread_states.rs"]
mod thread_states;
use submit::submit_retrying;
use thread_states::thread_states;

/// The tests read process-wide counts: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

const WARM_UP: usize = 2_000;
const ITERATIONS: usize = 20_000;

/// One round of everything the embedding layer does, all through `shared`, a list that every
/// operation borrows, so a leaked reference shows in its count.
fn one_round(gil: &Gil, shared: &Object<'_>, round: usize) {
    let json = gil.import("json").unwrap();
    let text: String = json.call_method("dumps", (shared,), [("sort_keys", true)]).unwrap().extract().unwrap();
    let back: Vec<Object<'_>> = json.call_method("loads", (&text,), ()).unwrap().extract().unwrap();
    assert_eq!(back.len(), 3);
    assert_eq!(gil.eval("len").unwrap().call((shared,), ()).unwrap().extract::<usize>().unwrap(), 3);

    let map = HashMap::from([("round".to_string(), round as i64), ("ключ\0".to_string(), -1)]);
    let dict = map.to_python(gil.token()).unwrap();
    assert_eq!(dict.extract::<HashMap<String, i64>>().unwrap(), map);
    let nested = (shared, vec![Some(1.5), None], "Straße 🦀", round as u64);
    let (_, floats, text, number): (Object<'_>, Vec<Option<f64>>, String, u64) =
        nested.to_python(gil.token()).unwrap().extract().unwrap();
    assert_eq!((floats.len(), text.as_str(), number), (2, "Straße 🦀", round as u64));

    let raised = gil.eval("raiser").unwrap().call((shared, round), ()).unwrap_err();
    assert_eq!(raised.python_type(), Some("ValueError"));
    assert!(raised.traceback().unwrap().contains("in raiser"));
    assert!(matches!(gil.import("no_such_module_for_leaks"), Err(Error::Python(_))));
    assert!(matches!(json.getattr("no_such_attribute"), Err(Error::Python(_))));
    assert!(matches!(gil.eval("2 ** 80").unwrap().extract::<i64>(), Err(Error::Conversion(_))));
    assert!(matches!(shared.extract::<Vec<String>>(), Err(Error::Conversion(_))));
    assert!(matches!(gil.eval("'\\ud800'").unwrap().extract::<String>(), Err(Error::Conversion(_))));

    let handle = shared.clone().unbind();
    assert!(handle.bind(gil).is(shared));
    drop(handle);
}

fn total_refcount(gil: &Gil) -> Option<isize> {
    let sys = gil.import("sys").unwrap();
    sys.getattr("gettotalrefcount").ok().map(|count| count.call((), ()).unwrap().extract().unwrap())
}

fn tracked_objects(gil: &Gil) -> usize {
    gil.eval("len(__import__('gc').get_objects())").unwrap().extract().unwrap()
}

/// The process-wide counts after a full collection: gc-tracked objects, and the total refcount
/// on a debug build of CPython.
#[derive(Clone, Copy)]
struct Counts {
    objects: usize,
    total: Option<isize>,
}

fn collect_and_count(gil: &Gil) -> Counts {
    gil.run("__import__('gc').collect()").unwrap();
    Counts { objects: tracked_objects(gil), total: total_refcount(gil) }
}

/// Prints the counts before and after `over` (e.g. "2000 rounds") and checks that the total
/// refcount grew by at most `refcount_slack` and the gc-tracked objects by at most 50.
#[track_caller]
fn assert_counts_kept(over: &str, before: Counts, after: Counts, refcount_slack: isize) {
    println!("gc-tracked objects: before {}, after {}", before.objects, after.objects);
    match (before.total, after.total) {
        (Some(before), Some(after)) => {
            println!("sys.gettotalrefcount(): before {before}, after {after}, growth {}", after - before);
            assert!(after - before <= refcount_slack, "total refcount grew from {before} to {after} over {over}");
        }
        _ => println!("sys.gettotalrefcount(): not available (not a debug build of CPython)"),
    }
    assert!(
        after.objects <= before.objects + 50,
        "gc-tracked objects grew from {} to {} over {over}",
        before.objects,
        after.objects
    );
}

#[test]
fn a_long_mix_of_operations_leaks_no_reference() {
    let _serial = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
    let gil = Gil::acquire().unwrap();
    gil.run("def raiser(items, n):\n    raise ValueError(f'round {n} with {len(items)} items')\n").unwrap();
    let shared = gil.eval("[1, 'two', [3.0]]").unwrap();
    for round in 0..WARM_UP {
        one_round(&gil, &shared, round);
    }
    let before = collect_and_count(&gil);
    let shared_before = shared.refcount();

    for round in 0..ITERATIONS {
        one_round(&gil, &shared, round);
    }
    let after = collect_and_count(&gil);

    println!("iterations: {ITERATIONS} (after {WARM_UP} to warm up)");
    println!("shared object's refcount: before {shared_before}, after {}", shared.refcount());
    assert_eq!(shared.refcount(), shared_before);
    // A leak of one reference per round would grow the total by ITERATIONS; allow only for the
    // few a cache of Python's own might keep (measured growth: 0).
    assert_counts_kept(&format!("{ITERATIONS} rounds"), before, after, 10);
}

const DRIVER_WARM_UP: usize = 500;
const DRIVER_ROUNDS: usize = 2_000;
/// More than the pool remembers of dropped keys (10,000): cancelled before the warm-up, so
/// that what it remembers is at its fixed size when the count begins.
const REMEMBERED_KEYS: usize = 11_000;

/// Submits a task of py4cc's test SleepEngine (it sleeps `seconds`, answers `value`).
fn submit(driver: &Driver, seconds: f64, value: i64) -> i64 {
    submit_retrying(driver, &[seconds, 0.0], &["a", "b", "c"], value)
}

/// One round of the completion path: collected by wait, answered NotReady by the table,
/// cancelled (queued or running), a future dropped while pending, a result left to expire
/// (the pool remembers the last 10,000 dropped keys: a fixed amount once filled).
fn one_driver_round(driver: &Driver, round: usize) {
    let value = round as i64 + 1;
    let waited = submit(driver, 0.0, value);
    let slow = submit(driver, 0.001, value);
    let cancelled = submit(driver, 0.0, value);
    assert!(driver.cancel(cancelled));
    let dropped = submit(driver, 0.0, value);
    let mut future = driver.wait_async(dropped);
    if let Poll::Ready(result) = Pin::new(&mut future).poll(&mut Context::from_waker(Waker::noop())) {
        check(&result, value);
    }
    drop(future);
    let _abandoned = submit(driver, 0.0, value);
    check(&driver.wait(waited, Duration::from_secs(60)), value);
    let early = driver.retrieve(slow);
    if early.status == ResultStatus::NotReady {
        check(&driver.wait(slow, Duration::from_secs(60)), value);
    } else {
        check(&early, value);
    }
}

/// Done with `value`, or (on a machine slow enough to let `result_ttl` pass before the
/// answer was asked for) expired.
#[track_caller]
fn check(result: &TaskResult, value: i64) {
    let expired = result.status == ResultStatus::Error && result.message.contains("expired");
    assert!((result.status, result.value) == (ResultStatus::Done, value) || expired, "{result:?}");
}

/// Waits until the driver holds nothing (the abandoned results have expired), then lets
/// the pool's threads settle.
fn quiesce(driver: &Driver) {
    let start = Instant::now();
    while driver.held_tasks().unwrap() != 0 {
        assert!(start.elapsed() < Duration::from_secs(60), "tasks still held");
        thread::sleep(Duration::from_millis(10));
    }
    thread::sleep(Duration::from_millis(200));
}

#[test]
fn the_completion_path_leaks_no_reference() {
    let _serial = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
    let driver = Driver::new(DriverOptions {
        engine: "py4cc_user_engines:SleepEngine".into(),
        python_path: vec![PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("py4cc/tests/engines")],
        n_subprocesses: 1,
        max_tasks: 1024,
        result_ttl: Some(Duration::from_millis(250)),
        worker_output: Some(workers::captured_output()),
        ..Default::default()
    })
    .unwrap();
    driver.initialize("{}", &["f0", "f1"], &["a", "b", "c"]).unwrap();
    for value in 0..REMEMBERED_KEYS {
        assert!(driver.cancel(submit(&driver, 0.0, value as i64 + 1)));
    }
    for round in 0..DRIVER_WARM_UP {
        one_driver_round(&driver, round);
    }
    quiesce(&driver);
    let before = collect_and_count(&Gil::acquire().unwrap());
    for round in DRIVER_WARM_UP..DRIVER_WARM_UP + DRIVER_ROUNDS {
        one_driver_round(&driver, round);
    }
    quiesce(&driver);
    let after = collect_and_count(&Gil::acquire().unwrap());
    println!("driver rounds: {DRIVER_ROUNDS} (after {DRIVER_WARM_UP} to warm up), 5 tasks each");
    // One reference per round would be DRIVER_ROUNDS; allow for the pool's own state of the
    // moment (a worker's moving average, a buffer).
    assert_counts_kept(&format!("{DRIVER_ROUNDS} rounds"), before, after, 100);
    driver.finalize();
}
/// What one short-lived thread does: guards that reach `shared` and leave a reference to it in
/// the thread's `threading.local` data (released only when the thread's state is cleared), a
/// C-style `PyGILState_Ensure` outside and inside a guard, and a handle dropped on the thread.
fn churn_thread(shared: &Handle, round: usize) {
    for step in 0..ACQUISITIONS_PER_THREAD {
        let gil = Gil::acquire().unwrap();
        let shared = shared.bind(&gil);
        gil.eval("per_thread").unwrap().setattr("kept", (&shared, round, step)).unwrap();
        let raised = gil.eval("raiser").unwrap().call((&shared, round), ()).unwrap_err();
        assert_eq!(raised.python_type(), Some("ValueError"));
    }
    // SAFETY: Python runs; each Ensure is paired with a Release on this thread.
    let state = unsafe { ffi::PyGILState_Ensure() };
    {
        let gil = Gil::acquire().unwrap();
        // SAFETY: as above; an Ensure inside the guard finds the GIL held.
        let inner = unsafe { ffi::PyGILState_Ensure() };
        assert_eq!(shared.bind(&gil).len().unwrap(), 3);
        // SAFETY: matches the inner Ensure.
        unsafe { ffi::PyGILState_Release(inner) };
    }
    // SAFETY: matches the outer Ensure.
    unsafe { ffi::PyGILState_Release(state) };
    let copy = {
        let gil = Gil::acquire().unwrap();
        shared.clone_ref(&gil)
    };
    drop(copy); // takes the GIL by itself
}

const THREAD_WARM_UP: usize = 200;
const THREADS: usize = 2_000;
const THREADS_AT_ONCE: usize = 8;
const ACQUISITIONS_PER_THREAD: usize = 5;

fn churn(shared: &Handle, threads: usize) {
    for batch in 0..threads / THREADS_AT_ONCE {
        thread::scope(|scope| {
            let workers: Vec<_> = (0..THREADS_AT_ONCE)
                .map(|index| scope.spawn(move || churn_thread(shared, batch * THREADS_AT_ONCE + index)))
                .collect();
            // An explicit join waits for the thread to exit, its thread-local destructors included.
            for worker in workers {
                worker.join().unwrap();
            }
        });
    }
}

/// (shared list's refcount, the counts after a collection, thread states), measured on a
/// thread of its own.
fn measure(shared: &Handle) -> (isize, Counts, usize) {
    thread::scope(|scope| {
        scope
            .spawn(|| {
                let gil = Gil::acquire().unwrap();
                let counts = collect_and_count(&gil);
                (shared.bind(&gil).refcount(), counts, thread_states(&gil))
            })
            .join()
            .unwrap()
    })
}

#[test]
fn threads_that_come_and_go_leak_no_reference_and_no_thread_state() {
    let _serial = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
    let shared = thread::spawn(|| {
        let gil = Gil::acquire().unwrap();
        gil.run("import threading\nper_thread = threading.local()\n").unwrap();
        gil.run("def raiser(items, n):\n    raise ValueError(f'round {n} with {len(items)} items')\n").unwrap();
        gil.eval("[1, 'two', [3.0]]").unwrap().unbind()
    })
    .join()
    .unwrap();
    churn(&shared, THREAD_WARM_UP);
    let (shared_before, before, states_before) = measure(&shared);

    churn(&shared, THREADS);
    let (shared_after, after, states_after) = measure(&shared);

    println!(
        "threads: {THREADS} ({ACQUISITIONS_PER_THREAD} guards and two PyGILState_Ensure each, {THREADS_AT_ONCE} at once; after {THREAD_WARM_UP} to warm up)"
    );
    println!("shared object's refcount: before {shared_before}, after {shared_after}");
    println!("thread states: before {states_before}, after {states_after}");
    // Each thread's threading.local data held a reference to `shared` until its state was cleared.
    assert_eq!(shared_after, shared_before);
    // Fewer is fine: another test's thread may have exited meanwhile, its thread state with it.
    assert!(states_after <= states_before, "thread states grew from {states_before} to {states_after}");
    // One leaked reference per thread would grow the total by THREADS.
    assert_counts_kept(&format!("{THREADS} threads"), before, after, 10);
}

/// More tasks than the pool's run-time window keeps (1024), so that it is full before the
/// count begins.
const GENERAL_WARM_UP: usize = 100;
const GENERAL_ROUNDS: usize = 300;

/// Runs one general task and checks its status, and its value when done.
fn general<T>(driver: &Driver, args: impl IntoArgs, status: ResultStatus, expected: T)
where
    T: for<'py> FromPython<'py> + Default + PartialEq + std::fmt::Debug,
{
    let receipt = driver.submit_call::<T>(args, [("unused", ())]);
    assert_eq!(receipt.status, SubmitStatus::Accepted, "{}", receipt.message);
    let result = driver.wait(receipt.key, Duration::from_secs(30));
    assert_eq!(result.status, status, "{}", result.message);
    assert_eq!(result.value, expected);
}

/// One round of general tasks of every answer type (and the failures: a wrong type, an
/// Engine that raises; one read through `wait_async`), and a demo task.
fn driver_round(driver: &Driver, round: usize) {
    let n = round as i64;
    general(driver, ("value", -n), ResultStatus::Done, -n);
    general(driver, ("value", 0), ResultStatus::Done, 0i64);
    general(driver, ("value", n as f64 / 8.0), ResultStatus::Done, n as f64 / 8.0);
    general(driver, ("value", format!("round {n} ✓")), ResultStatus::Done, format!("round {n} ✓"));
    general(driver, ("value", vec![n as f64, -0.5]), ResultStatus::Done, vec![n as f64, -0.5]);
    let map = HashMap::from([("p".to_string(), 0.25), (format!("k{n}"), -1.0)]);
    general(driver, ("value", &map), ResultStatus::Done, map.clone());
    general(driver, ("value", (n, "t", Some(1.5))), ResultStatus::Done, (n, "t".to_string(), Some(1.5)));
    general(driver, ("value", None::<i64>), ResultStatus::Done, None::<i64>);
    let data: Vec<u8> = (0..=255).collect();
    general(driver, ("value", Bytes(&data[..])), ResultStatus::Done, Bytes(data.clone()));
    general(driver, ("value", "not a number"), ResultStatus::Failed, 0.0f64);
    general(driver, ("raise", "on purpose"), ResultStatus::Failed, Vec::<f64>::new());
    // Through a future too.
    let receipt = driver.submit_call::<String>(("value", "async"), ());
    let mut future = driver.wait_async(receipt.key);
    let result = loop {
        if let Poll::Ready(result) = Pin::new(&mut future).poll(&mut Context::from_waker(Waker::noop())) {
            break result;
        }
        thread::sleep(Duration::from_millis(1));
    };
    assert_eq!((result.status, result.value.as_str()), (ResultStatus::Done, "async"));
    // A demo task too: this Engine's run wants a command, so it fails with the traceback.
    let receipt = driver.submit(&[1.5], &["ab"], 3);
    let result = driver.wait(receipt.key, Duration::from_secs(30));
    assert_eq!((result.status, result.value), (ResultStatus::Failed, -1));
    assert!(result.message.contains("TypeError"), "{}", result.message);
}

#[test]
fn general_tasks_of_every_answer_type_leak_no_reference() {
    let _serial = SERIAL.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let driver = Driver::new(DriverOptions {
        engine: "py4cc_general_engines:CommandEngine".into(),
        python_path: vec![PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("py4cc/tests/engines")],
        n_subprocesses: 1,
        worker_output: Some(workers::captured_output()),
        ..Default::default()
    })
    .unwrap();
    driver.initialize_with("{}", &["x"], &["s"], [("extra", Bytes(&[0u8, 255][..]))]).unwrap();
    for round in 0..GENERAL_WARM_UP {
        driver_round(&driver, round);
    }
    let before = collect_and_count(&Gil::acquire().unwrap());
    for round in 0..GENERAL_ROUNDS {
        driver_round(&driver, round);
    }
    let after = collect_and_count(&Gil::acquire().unwrap());
    driver.finalize();

    println!("general task rounds: {GENERAL_ROUNDS} of 13 tasks (after {GENERAL_WARM_UP} to warm up)");
    // One reference leaked per task would grow the total by 13 * GENERAL_ROUNDS.
    assert_counts_kept(&format!("{GENERAL_ROUNDS} rounds"), before, after, 50);
}

/// More batches than the pool's batch-size window keeps (1024), so that it is full before the
/// count begins.
const BATCH_WARM_UP: usize = 1_100;
const BATCH_ROUNDS: usize = 300;

/// One round of the batch path: a task cancelled while it waits for its batch, then one full
/// batch of 4 (one item failing alone), each answer read with `wait`.
fn batch_round(driver: &Driver, round: usize) {
    let n = round as i64;
    let cancelled = driver.submit_call::<i64>((n,), ());
    assert!(driver.cancel(cancelled.key));
    let keys: Vec<_> = [Some(n), None, Some(n + 1), Some(n + 2)]
        .into_iter()
        .map(|item| match item {
            Some(value) => driver.submit_call::<i64>((value,), ()).key,
            None => driver.submit_call::<i64>(("raise",), ()).key,
        })
        .collect();
    for (key, want) in keys.into_iter().zip([Some(2 * n), None, Some(2 * n + 2), Some(2 * n + 4)]) {
        let result = driver.wait(key, Duration::from_secs(30));
        match want {
            Some(value) => assert_eq!((result.status, result.value), (ResultStatus::Done, value), "{}", result.message),
            None => assert_eq!(
                (result.status, result.message.as_str()),
                (ResultStatus::Failed, "ValueError: bad item at 1")
            ),
        }
    }
}

#[test]
fn batched_tasks_leak_no_reference() {
    let _serial = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
    let driver = Driver::new(DriverOptions {
        engine: "py4cc_batch_engines:BatchEngine".into(),
        python_path: vec![PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("py4cc/tests/engines")],
        n_subprocesses: 1,
        // A batch forms only once full: exactly one batch of 4 per round.
        batching: Some(Batching { max_size: 4, max_wait: Duration::from_secs(60) }),
        worker_output: Some(workers::captured_output()),
        ..Default::default()
    })
    .unwrap();
    driver.initialize("{}", &["x"], &["s"]).unwrap();
    // Each round cancels a task: the pool's memory of dropped keys must be full first.
    for value in 0..REMEMBERED_KEYS {
        assert!(driver.cancel(driver.submit_call::<i64>((value as i64,), ()).key));
    }
    for round in 0..BATCH_WARM_UP {
        batch_round(&driver, round);
    }
    let before = collect_and_count(&Gil::acquire().unwrap());
    for round in BATCH_WARM_UP..BATCH_WARM_UP + BATCH_ROUNDS {
        batch_round(&driver, round);
    }
    let after = collect_and_count(&Gil::acquire().unwrap());
    assert_eq!(driver.stats().unwrap().batches, (BATCH_WARM_UP + BATCH_ROUNDS) as u64);
    driver.finalize();

    println!("batch rounds: {BATCH_ROUNDS} of a cancelled task and a batch of 4 (after {BATCH_WARM_UP} to warm up)");
    // One reference leaked per task would grow the total by 5 * BATCH_ROUNDS.
    assert_counts_kept(&format!("{BATCH_ROUNDS} rounds"), before, after, 50);
}
