//! A Driver used from the wrong place or at the wrong time: in a child made by a raw
//! `fork()`, with another Driver's keys, from another thread while `initialize` runs; and
//! `stats()` after an answer that does not convert to the caller's type.

use std::io::Read;
use std::os::fd::FromRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use rs4py::{Driver, DriverOptions, Error, ResultStatus, SubmitStatus, ToPython};

#[path = "common/within.rs"]
mod within;
#[path = "common/workers.rs"]
#[allow(dead_code)] // kill_worker is for other binaries
mod workers;
use within::within;
use workers::{module_dir_with, process_exists};

/// Long enough for anything here; needing it is a failure.
const PATIENCE: Duration = Duration::from_secs(60);

/// A demo-model Driver with one worker, initialized: `submit(&[x], &[""], 0)` answers `x`
/// (the floor of `|x|`, for `x >= 1`).
fn demo_driver() -> Driver {
    let driver = Driver::new(DriverOptions { n_subprocesses: 1, ..Default::default() }).unwrap();
    driver.initialize("{}", &["f"], &["s"]).unwrap();
    driver
}

fn accepted(driver: &Driver, answer: f64) -> i64 {
    let receipt = driver.submit(&[answer], &[""], 0);
    assert_eq!((receipt.status, receipt.message.as_str()), (SubmitStatus::Accepted, ""), "{receipt:?}");
    receipt.key
}

fn assert_done(driver: &Driver, key: i64, value: i64) {
    let result = driver.wait(key, PATIENCE);
    assert_eq!((result.status, result.key, result.value), (ResultStatus::Done, key, value), "{result:?}");
}

// ------------------------------------------------------------------------ a raw fork() child

/// What the child saw, one line per call, written to the parent through a pipe.
fn child_observations(driver: Driver, parents_key: i64) -> String {
    let submitted = driver.submit(&[1.0], &[""], 0);
    let general = driver.submit_call::<i64>((), ());
    let retrieved = driver.retrieve(parents_key);
    let waited = driver.wait(parents_key, Duration::from_millis(1));
    let cancelled = driver.cancel(parents_key);
    let stats = driver.stats().map(|stats| stats.tasks_held);
    let pids = driver.worker_pids();
    let initialized = driver.initialize("{}", &["f"], &["s"]);
    let drained = driver.drain(Duration::ZERO);
    driver.finalize();
    drop(driver);
    [
        format!("submit {:?} {} {}", submitted.status, submitted.key, submitted.message),
        format!("submit_call {:?} {} {}", general.status, general.key.raw(), general.message),
        format!("retrieve {:?} {}", retrieved.status, retrieved.message),
        format!("wait {:?} {}", waited.status, waited.message),
        format!("cancel {cancelled}"),
        format!("stats {stats:?}"),
        format!("worker_pids {pids:?}"),
        format!("initialize {initialized:?}"),
        format!("drain {drained}"),
    ]
    .join("\n")
}

#[test]
fn a_forked_child_cannot_use_the_driver_nor_disturb_the_parents_workers() {
    let driver = demo_driver();
    let workers = driver.worker_pids().unwrap();
    // A task of the parent's, still held at the fork: the child must not touch it.
    let parents_key = accepted(&driver, 10.0);
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe(2) writes.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    let [read_end, write_end] = fds;
    // SAFETY: the child runs only the Driver's calls (which, in a process that does not own
    // the Driver, take no lock and call no Python), formats and writes to the pipe, then
    // `_exit`s without running the parent's destructors or test harness.
    let child = unsafe { libc::fork() };
    assert!(child >= 0, "fork: {}", std::io::Error::last_os_error());
    if child == 0 {
        let observed =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| child_observations(driver, parents_key)))
                .unwrap_or_else(|_| "the child panicked".to_owned());
        // SAFETY: writes from a live buffer of that length to the pipe's write end (the
        // observations are far below the pipe's buffer: the write does not block).
        unsafe { libc::write(write_end, observed.as_ptr().cast(), observed.len()) };
        // SAFETY: ends the child at once, running none of the parent's exit handlers.
        unsafe { libc::_exit(0) }
    }
    // SAFETY: the parent's copy of the write end, closed once so that the read sees EOF.
    unsafe { libc::close(write_end) };
    let started = Instant::now();
    let mut status = 0;
    // SAFETY: waits for the child just forked (WNOHANG: never blocks); `status` is writable.
    while unsafe { libc::waitpid(child, &mut status, libc::WNOHANG) } == 0 {
        if started.elapsed() > PATIENCE {
            // SAFETY: kills the child this test forked (a positive pid), which has hung.
            unsafe { libc::kill(child, libc::SIGKILL) };
            panic!("the forked child did not finish (it blocked on the Driver)");
        }
        thread::sleep(Duration::from_millis(10));
    }
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "child status {status}");
    let mut observed = String::new();
    // SAFETY: the read end is ours alone from here; the File closes it.
    unsafe { std::fs::File::from_raw_fd(read_end) }.read_to_string(&mut observed).unwrap();

    let refusal = format!("this Driver belongs to process {}", std::process::id());
    let lines: Vec<&str> = observed.lines().collect();
    assert_eq!(lines.len(), 9, "{observed}");
    assert!(lines[0].starts_with(&format!("submit Error 0 {refusal}")), "{observed}");
    assert!(lines[1].starts_with(&format!("submit_call Error 0 {refusal}")), "{observed}");
    assert!(lines[2].starts_with(&format!("retrieve Error {refusal}")), "{observed}");
    assert!(lines[3].starts_with(&format!("wait Error {refusal}")), "{observed}");
    assert_eq!(lines[4], "cancel false");
    for (line, call) in lines[5..8].iter().zip(["stats", "worker_pids", "initialize"]) {
        // An Error's Debug is its message (Error::Unavailable's: the refusal itself).
        assert!(line.starts_with(&format!("{call} Err({refusal}")), "{observed}");
    }
    assert_eq!(lines[8], "drain 0");

    // The parent's workers, task and answers are untouched.
    assert_eq!(driver.worker_pids().unwrap(), workers);
    assert!(workers.iter().all(|&pid| process_exists(pid)));
    assert_done(&driver, parents_key, 10);
    let next = accepted(&driver, 10.0);
    assert_done(&driver, next, 10);
    let stats = driver.stats().unwrap();
    assert_eq!((stats.worker_deaths, stats.tasks_done, stats.tasks_held), (0, 2, 0));
}

// ------------------------------------------------------------------------ two Drivers' keys

#[test]
fn a_key_of_another_driver_answers_error_and_consumes_nothing() {
    let (a, b) = (demo_driver(), demo_driver());
    let a_key = accepted(&a, 10.0);
    let b_key = accepted(&b, 20.0);
    let kwargs = [("float_features", &[3.0] as &dyn ToPython), ("str_features", &[""]), ("int_feature", &0)];
    let b_general = b.submit_call::<(i64, String)>((), kwargs);
    assert_eq!(b_general.status, SubmitStatus::Accepted, "{b_general:?}");
    assert_ne!(a_key, b_key, "each Driver issues its own keys");

    let unknown = |key: i64| format!("unknown key {key}: this Driver did not issue it");
    // b's keys, and numbers no Driver issued (py4cc's own numbering starts at 1).
    for key in [b_key, b_general.key.raw(), 0, -1, 1, 2, i64::MAX] {
        let retrieved = a.retrieve(key);
        assert_eq!((retrieved.status, retrieved.key), (ResultStatus::Error, key), "{retrieved:?}");
        assert!(retrieved.message.starts_with(&unknown(key)), "{retrieved:?}");
        let waited = a.wait(key, Duration::from_secs(1));
        assert_eq!((waited.status, waited.message), (retrieved.status, retrieved.message));
        assert!(!a.cancel(key), "{key}");
    }
    let general = a.retrieve(b_general.key);
    assert_eq!(general.status, ResultStatus::Error, "{general:?}");
    assert!(general.message.starts_with(&unknown(b_general.key.raw())), "{general:?}");

    // Nothing was consumed: each task answers its own Driver.
    assert_eq!((a.held_tasks().unwrap(), b.held_tasks().unwrap()), (1, 2));
    assert_done(&a, a_key, 10);
    assert_done(&b, b_key, 20);
    let b_answer = b.wait(b_general.key, PATIENCE);
    assert_eq!((b_answer.status, &b_answer.value), (ResultStatus::Done, &(3, String::new())), "{b_answer:?}");
    assert_eq!((a.stats().unwrap().tasks_cancelled, b.stats().unwrap().tasks_cancelled), (0, 0));
}

// ------------------------------------------------------------------------ during initialize

/// An Engine whose `initialize` waits (up to two minutes) until the file `config["go"]`
/// exists.
const WAITING_ENGINE: &str = r#"
import os
import time


class WaitsForGo:
    def initialize(self, config, float_feature_names, str_feature_names, **extra):
        deadline = time.monotonic() + 120
        while not os.path.exists(config["go"]) and time.monotonic() < deadline:
            time.sleep(0.01)

    def run(self, float_features, str_features, int_feature):
        return int_feature, ""
"#;

#[test]
fn task_calls_answer_initializing_at_once_while_initialize_runs() {
    let dir = module_dir_with("rs4py-misuse", "rs4py_waits_for_go.py", WAITING_ENGINE);
    let go = dir.join("go");
    let driver = Arc::new(
        Driver::new(DriverOptions {
            n_subprocesses: 1,
            engine: "rs4py_waits_for_go:WaitsForGo".into(),
            python_path: vec![dir.clone()],
            worker_output: Some(workers::captured_output()),
            ..Default::default()
        })
        .unwrap(),
    );
    let returned = Arc::new(AtomicBool::new(false));
    let initializer = {
        let (driver, returned) = (Arc::clone(&driver), Arc::clone(&returned));
        let config = format!(r#"{{"go": {:?}}}"#, go.to_str().unwrap());
        thread::spawn(move || {
            let outcome = driver.initialize(&config, &["f"], &["s"]);
            returned.store(true, Ordering::SeqCst);
            outcome
        })
    };
    // Before the fix each call below blocked until initialize returned, which it does only
    // once the file exists: `within` turns that into a failure.
    let observed = within(PATIENCE, "the calls during initialize", {
        let driver = Arc::clone(&driver);
        move || {
            let started = Instant::now();
            let receipt = loop {
                let receipt = driver.submit(&[1.0], &[""], 5);
                if receipt.message.contains("initializing") || started.elapsed() > PATIENCE {
                    break receipt;
                }
                thread::sleep(Duration::from_millis(5)); // "not initialized": not begun yet
            };
            let general = driver.submit_call::<i64>((), ());
            let retrieved = driver.retrieve(1);
            let waited = driver.wait(1, Duration::from_secs(1));
            let cancelled = driver.cancel(1);
            let second = driver.initialize("{}", &["f"], &["s"]);
            let state = driver.stats().map(|stats| stats.state);
            (receipt, general, retrieved, waited, cancelled, second, state)
        }
    });
    let still_initializing = !returned.load(Ordering::SeqCst);
    std::fs::write(&go, "").unwrap();
    within(PATIENCE, "initialize", move || initializer.join().unwrap()).unwrap();
    let (receipt, general, retrieved, waited, cancelled, second, state) = observed;
    assert!(still_initializing, "initialize had returned before the answers were checked");
    let message = "the Driver is initializing (initialize runs on another thread): try again once it has returned";
    assert_eq!((receipt.status, receipt.key, receipt.message.as_str()), (SubmitStatus::Error, 0, message));
    assert_eq!((general.status, general.message.as_str()), (SubmitStatus::Error, message));
    assert_eq!((retrieved.status, retrieved.message.as_str()), (ResultStatus::Error, message));
    assert_eq!((waited.status, waited.message.as_str()), (ResultStatus::Error, message));
    assert!(!cancelled);
    assert_eq!(second, Err(Error::Unavailable(message.into())), "one initialize at a time");
    assert!(state.is_ok(), "stats answers during initialize: {state:?}");

    // Once initialize has returned, the Driver serves.
    let receipt = driver.submit(&[1.0], &[""], 5);
    assert_eq!(receipt.status, SubmitStatus::Accepted, "{receipt:?}");
    let result = driver.wait(receipt.key, PATIENCE);
    assert_eq!((result.status, result.value), (ResultStatus::Done, 5), "{result:?}");
    std::fs::remove_dir_all(dir).unwrap();
}

// ------------------------------------------------------------------------ stats

#[test]
fn an_answer_that_does_not_convert_counts_as_failed_in_stats() {
    let driver = demo_driver();
    let kwargs = [("float_features", &[3.0] as &dyn ToPython), ("str_features", &["ab"]), ("int_feature", &0)];
    let good = driver.submit_call::<(i64, String)>((), kwargs);
    let wrong = driver.submit_call::<f64>((), kwargs);
    let demo = accepted(&driver, 7.0);
    let good = driver.wait(good.key, PATIENCE);
    assert_eq!((good.status, &good.value), (ResultStatus::Done, &(5, String::new())), "{good:?}");
    let wrong = driver.wait(wrong.key, PATIENCE);
    assert_eq!(wrong.status, ResultStatus::Failed, "{wrong:?}");
    assert!(wrong.message.contains("which does not convert to the Rust type f64"), "{wrong:?}");
    assert_done(&driver, demo, 7);
    let stats = driver.stats().unwrap();
    assert_eq!((stats.tasks_done, stats.tasks_failed, stats.tasks_held), (2, 1, 0), "{stats:?}");
}
