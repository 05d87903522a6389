//! The safe `Driver` end to end: many threads on one driver, every status of every call with
//! its message, capacity, each start method, a user's own Engine found through `python_path`,
//! `wait` beside other threads, task timeouts and killed workers, `finalize` and `Drop`, calls
//! from a thread that holds the GIL, `initialize` errors.
//!
//! Every result is checked against `workload::big_model`, computed in Rust.

#[allow(dead_code)]
#[path = "../examples/many_threads/workload.rs"]
mod workload;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Arc, Barrier, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use rs4py::{Driver, DriverOptions, Error, Gil, ResultStatus, StartMethod, SubmitStatus, TaskResult};
use workload::{Task, big_model, make_tasks};

#[path = "common/submit.rs"]
mod submit;
#[path = "common/within.rs"]
mod within;
#[path = "common/workers.rs"]
mod workers;
use submit::{CAPACITY_MESSAGE, submit_retrying};
use within::within;
use workers::{kill_worker, module_dir_with, process_exists};

const FLOAT_NAMES: [&str; 2] = ["f0", "f1"];
/// The demo workload's str features.
const STR_NAMES: [&str; 3] = ["name", "sentence", "uuid"];
/// The scripted engine's one str feature, which carries its command.
const COMMAND: [&str; 1] = ["command"];

const NOT_FINISHED_MESSAGE: &str = "The requested task is not finished";

/// Long enough for any single task here; a wait that needs it is a failure.
const PATIENCE: Duration = Duration::from_secs(30);

/// The user's own Engine module, written by the test into a fresh directory that only
/// `DriverOptions::python_path` names (no `PYTHONPATH`).
const USER_MODULE: &str = r#"
"""User Engines for rs4py's tests/driver.rs, found through DriverOptions::python_path."""
import os
import time

from py4cc.engine import Engine


class MyEngine:
    """Answers offset + scale * int_feature + len(str_features[0]), all from the config;
    the message tells what it was built with: label|float names|str names|pid."""

    def initialize(self, config, float_feature_names, str_feature_names, **extra):
        self.offset = config["offset"]
        self.scale = config["scale"]
        self.label = config["label"]
        self.float_names = list(float_feature_names)
        self.str_names = list(str_feature_names)

    def run(self, float_features, str_features, int_feature):
        value = self.offset + self.scale * int_feature + len(str_features[0])
        message = "|".join([self.label, ",".join(self.float_names), ",".join(self.str_names), str(os.getpid())])
        return value, message


class ScriptedEngine(Engine):
    """The demo Engine, obeying the first str feature: "sleep S" sleeps S seconds first,
    "raise" raises, "zero" answers 0; anything else is a plain demo task."""

    def run(self, float_features=(), str_features=(), int_feature=0):
        command = str_features[0] if str_features else ""
        if command.startswith("sleep "):
            time.sleep(float(command[len("sleep "):]))
        elif command == "raise":
            raise RuntimeError("the scripted engine raised on purpose")
        elif command == "zero":
            return 0, ""
        elif command == "huge":
            return 2 ** 70, ""
        return super().run(float_features, str_features, int_feature)


class FailingInitEngine:
    def initialize(self, **kwargs):
        raise RuntimeError("FailingInitEngine refuses to initialize")

    def run(self, **kwargs):
        return 1, ""


class HangingInitEngine:
    def initialize(self, config, **kwargs):
        time.sleep(config["init_seconds"])

    def run(self, **kwargs):
        return 1, ""
"#;

/// The directory holding `mymodule.py`, written once per test process under a fresh name.
fn user_module_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| module_dir_with("rs4py-driver-test", "mymodule.py", USER_MODULE)).clone()
}

fn options(start_method: StartMethod, n_subprocesses: usize, max_tasks: usize) -> DriverOptions {
    DriverOptions {
        max_tasks,
        n_subprocesses,
        start_method,
        worker_output: Some(workers::captured_output()),
        ..Default::default()
    }
}

/// A driver of the demo Engine with the workload's feature names, initialized.
fn demo_driver(options: DriverOptions) -> Driver {
    let driver = Driver::new(options).unwrap();
    driver.initialize("{}", &FLOAT_NAMES, &STR_NAMES).unwrap();
    driver
}

/// A driver of `mymodule:ScriptedEngine` (one str feature, its command), initialized.
fn scripted_driver(options: DriverOptions) -> Driver {
    let driver = Driver::new(DriverOptions {
        engine: "mymodule:ScriptedEngine".into(),
        python_path: vec![user_module_dir()],
        worker_output: Some(workers::captured_output()),
        ..options
    })
    .unwrap();
    driver.initialize("{}", &FLOAT_NAMES, &COMMAND).unwrap();
    driver
}

fn expected(task: &Task) -> i64 {
    big_model(&task.float_features, &task.str_features, task.int_feature).expect("a finite task")
}

/// What the scripted engine answers for a command (the demo model, command included).
fn scripted_value(floats: [f64; 2], command: &str, int_feature: i64) -> i64 {
    big_model(&floats, &[command], int_feature).unwrap()
}

/// Retrieves every millisecond until the task is no longer `NotReady`.
fn poll(driver: &Driver, key: i64) -> TaskResult {
    let start = Instant::now();
    loop {
        let result = driver.retrieve(key);
        assert_eq!(result.key, key);
        if result.status != ResultStatus::NotReady {
            return result;
        }
        assert_eq!((result.value, result.message.as_str()), (0, NOT_FINISHED_MESSAGE));
        assert!(start.elapsed() < PATIENCE, "task {key} never finished");
        thread::sleep(Duration::from_millis(1));
    }
}

fn wait_long(driver: &Driver, key: i64) -> TaskResult {
    let result = driver.wait(key, PATIENCE);
    assert_eq!(result.key, key);
    assert_ne!(result.status, ResultStatus::NotReady, "task {key} did not finish within {PATIENCE:?}");
    result
}

#[track_caller]
fn assert_done(result: &TaskResult, value: i64) {
    assert_eq!((result.status, result.value, result.message.as_str()), (ResultStatus::Done, value, ""), "{result:?}");
}

#[track_caller]
fn assert_gone(pids: &[u32]) {
    for &pid in pids {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        assert!(!process_exists(pid), "worker {pid} is still there after finalize: {stat}");
    }
}

/// Waits until the driver lists `n` workers, none of them in `old`.
fn wait_for_new_workers(driver: &Driver, n: usize, old: &[u32]) -> Vec<u32> {
    let start = Instant::now();
    loop {
        let pids = driver.worker_pids().unwrap();
        if pids.len() == n && pids.iter().all(|pid| !old.contains(pid)) {
            return pids;
        }
        assert!(start.elapsed() < PATIENCE, "workers {pids:?} were not replaced (old {old:?})");
        thread::sleep(Duration::from_millis(5));
    }
}

// ------------------------------------------------------------------------------- many threads

#[test]
fn many_threads_share_one_driver_and_every_result_is_right() {
    const THREADS: usize = 8;
    let mut tasks = make_tasks(240, 2024);
    // Hand-made ones too: negative int, signed zero, case mappings that change the length,
    // an embedded NUL.
    tasks.push(Task {
        float_features: vec![-0.0, -999.75],
        str_features: vec!["Straße".into(), "ﬁx ŉ ǆ".into(), "nul\0inside".into()],
        int_feature: -5,
    });
    tasks.push(Task {
        float_features: vec![0.5, 0.5],
        str_features: vec![String::new(), "Zoë".into(), "✓".into()],
        int_feature: 999,
    });
    let tasks = Arc::new(tasks);
    let driver = Arc::new(demo_driver(options(StartMethod::Forkserver, 2, 12)));
    assert_eq!(driver.n_subprocesses().unwrap(), 2);
    let keys = Arc::new(Mutex::new(Vec::new()));
    let barrier = Arc::new(Barrier::new(THREADS));
    let workers: Vec<_> = (0..THREADS)
        .map(|first| {
            let (driver, tasks, keys, barrier) = (driver.clone(), tasks.clone(), keys.clone(), barrier.clone());
            thread::spawn(move || {
                barrier.wait();
                let mine: Vec<&Task> = tasks.iter().skip(first).step_by(THREADS).collect();
                let mut verified = 0;
                // Up to 3 tasks held at once per thread; at capacity a thread first collects
                // what it holds (or, holding nothing, sleeps 1 ms), so that the threads cannot
                // all sit on places while waiting for one. Half the threads poll, half wait.
                let mut held: Vec<(i64, &Task)> = Vec::new();
                let mut next = mine.iter().peekable();
                let start = Instant::now();
                while next.peek().is_some() || !held.is_empty() {
                    let mut drain = held.len() == 3 || next.peek().is_none();
                    if let Some(task) = next.peek() {
                        if !drain {
                            let receipt = driver.submit(&task.float_features, &task.str_features, task.int_feature);
                            match receipt.status {
                                SubmitStatus::Accepted => {
                                    assert!(receipt.key > 0 && receipt.message.is_empty(), "{receipt:?}");
                                    keys.lock().unwrap().push(receipt.key);
                                    held.push((receipt.key, next.next().unwrap()));
                                }
                                SubmitStatus::AtCapacity => {
                                    assert_eq!((receipt.key, receipt.message.as_str()), (0, CAPACITY_MESSAGE));
                                    assert!(start.elapsed() < PATIENCE, "at capacity for too long");
                                    drain = !held.is_empty();
                                    if !drain {
                                        thread::sleep(Duration::from_millis(1));
                                    }
                                }
                                _ => panic!("submit answered {receipt:?}"),
                            }
                        }
                    }
                    if drain {
                        for (key, task) in held.drain(..) {
                            let result = if first % 2 == 0 { poll(&driver, key) } else { wait_long(&driver, key) };
                            assert_done(&result, expected(task));
                            verified += 1;
                        }
                    }
                }
                verified
            })
        })
        .collect();
    let verified: usize = within(Duration::from_secs(50), "the threads", move || {
        workers.into_iter().map(|worker| worker.join().unwrap()).sum()
    });
    assert_eq!(verified, tasks.len());
    let keys = keys.lock().unwrap();
    // py4cc issues increasing keys, so they are unique over the whole run, not only among
    // the tasks held at one time (which is what the protocol promises).
    assert_eq!(keys.iter().collect::<HashSet<_>>().len(), tasks.len(), "keys repeat: {keys:?}");
    assert!(keys.iter().all(|&key| key > 0));
}

// ------------------------------------------------------------------------- submit's statuses

#[test]
fn submit_answers_accepted_at_capacity_and_error_with_their_messages() {
    let driver = Driver::new(options(StartMethod::Forkserver, 1, 3)).unwrap();

    // Before initialize: an error, not a panic nor an Err; no workers yet.
    let early = driver.submit(&[1.0, 2.0], &["a", "b", "c"], 3);
    assert_eq!((early.status, early.key), (SubmitStatus::Error, 0));
    assert!(early.message.contains("not initialized"), "{early:?}");
    let early = driver.retrieve(1); // a number the driver did not issue (it has issued none)
    assert_eq!((early.status, early.value), (ResultStatus::Error, 0));
    assert!(early.message.starts_with("unknown key 1: this Driver did not issue it"), "{early:?}");
    assert_eq!(driver.wait(1, Duration::from_millis(10)).status, ResultStatus::Error);
    assert_eq!(driver.worker_pids().unwrap(), Vec::<u32>::new());
    assert_eq!(driver.n_subprocesses().unwrap(), 1, "as given, before any runs");

    driver.initialize("{}", &FLOAT_NAMES, &STR_NAMES).unwrap();
    assert_eq!(driver.worker_pids().unwrap().len(), 1);
    assert_eq!(driver.n_subprocesses().unwrap(), 1);

    // Wrong feature counts: the message names the list, the expected and the given count.
    let wrong = driver.submit(&[1.0], &["a", "b", "c"], 0);
    assert_eq!((wrong.status, wrong.key), (SubmitStatus::Error, 0));
    assert_eq!(wrong.message, "wrong number of float features: expected 2 (f0, f1), got 1");
    let wrong = driver.submit(&[1.0, 2.0, 3.0], &["a", "b", "c"], 0);
    assert_eq!(wrong.message, "wrong number of float features: expected 2 (f0, f1), got 3");
    let wrong = driver.submit(&[1.0, 2.0], &["a", "b"], 0);
    assert_eq!((wrong.status, wrong.key), (SubmitStatus::Error, 0));
    assert_eq!(wrong.message, "wrong number of str features: expected 3 (name, sentence, uuid), got 2");
    let wrong = driver.submit(&[1.0, 2.0], &[] as &[&str], 0);
    assert!(wrong.message.contains("str features") && wrong.message.contains("got 0"), "{wrong:?}");

    // Fill max_tasks (3) with tasks that finish but are not retrieved: they still count.
    let tasks = make_tasks(5, 11);
    let keys: Vec<i64> = tasks[..3]
        .iter()
        .map(|task| {
            let receipt = driver.submit(&task.float_features, &task.str_features, task.int_feature);
            assert_eq!((receipt.status, receipt.message.as_str()), (SubmitStatus::Accepted, ""), "{receipt:?}");
            receipt.key
        })
        .collect();
    assert!(keys.iter().all(|&key| key > 0));
    assert_eq!(keys.iter().collect::<HashSet<_>>().len(), 3, "{keys:?}");
    thread::sleep(Duration::from_millis(300)); // each demo task takes at most 10 ms
    for _ in 0..3 {
        let full = driver.submit(&tasks[3].float_features, &tasks[3].str_features, tasks[3].int_feature);
        assert_eq!((full.status, full.key, full.message.as_str()), (SubmitStatus::AtCapacity, 0, CAPACITY_MESSAGE));
    }
    // A refused submit changed nothing; retrieving one frees one place, and only one.
    assert_done(&driver.retrieve(keys[0]), expected(&tasks[0]));
    let fourth = driver.submit(&tasks[3].float_features, &tasks[3].str_features, tasks[3].int_feature);
    assert_eq!(fourth.status, SubmitStatus::Accepted);
    assert!(!keys.contains(&fourth.key), "{fourth:?} reuses a held key");
    let full = driver.submit(&tasks[4].float_features, &tasks[4].str_features, tasks[4].int_feature);
    assert_eq!(full.status, SubmitStatus::AtCapacity);
    // A failed task frees its place too (and a wrong-count submit never took one).
    assert_done(&wait_long(&driver, keys[1]), expected(&tasks[1]));
    let nan = driver.submit(&[f64::NAN, 1.0], &["a", "b", "c"], 1);
    assert_eq!(nan.status, SubmitStatus::Accepted);
    assert_eq!(driver.submit(&[1.0, 1.0], &["a", "b", "c"], 1).status, SubmitStatus::AtCapacity);
    assert_eq!(wait_long(&driver, nan.key).status, ResultStatus::Failed);
    assert_done(&wait_long(&driver, keys[2]), expected(&tasks[2]));
    assert_done(&wait_long(&driver, fourth.key), expected(&tasks[3]));
    // Empty again: max_tasks places.
    let again: Vec<i64> = tasks
        .iter()
        .take(3)
        .map(|t| submit_retrying(&driver, &t.float_features, &t.str_features, t.int_feature))
        .collect();
    assert_eq!(driver.submit(&[0.0, 0.0], &["", "", ""], 0).status, SubmitStatus::AtCapacity);
    for (key, task) in again.into_iter().zip(&tasks) {
        assert_done(&wait_long(&driver, key), expected(task));
    }

    // After finalize.
    driver.finalize();
    let late = driver.submit(&[1.0, 2.0], &["a", "b", "c"], 3);
    assert_eq!((late.status, late.key), (SubmitStatus::Error, 0));
    assert!(late.message.contains("finalized"), "{late:?}");
}

#[test]
fn capacity_counts_running_tasks_and_is_released_by_retrieval() {
    let driver = scripted_driver(options(StartMethod::Forkserver, 2, 2));
    let slow = ["sleep 0.4"];
    let first = submit_retrying(&driver, &[1.0, 2.0], &slow, 1);
    let second = submit_retrying(&driver, &[3.0, 4.0], &slow, 2);
    let full = driver.submit(&[5.0, 6.0], &["fast"], 3);
    assert_eq!((full.status, full.key, full.message.as_str()), (SubmitStatus::AtCapacity, 0, CAPACITY_MESSAGE));
    // NotReady keeps the task, so still full.
    let not_yet = driver.retrieve(first);
    assert_eq!(
        (not_yet.status, not_yet.value, not_yet.message.as_str()),
        (ResultStatus::NotReady, 0, NOT_FINISHED_MESSAGE)
    );
    assert_eq!(driver.submit(&[5.0, 6.0], &["fast"], 3).status, SubmitStatus::AtCapacity);
    assert_done(&wait_long(&driver, first), scripted_value([1.0, 2.0], slow[0], 1));
    let third = submit_retrying(&driver, &[5.0, 6.0], &["fast"], 3);
    assert_eq!(driver.submit(&[5.0, 6.0], &["fast"], 4).status, SubmitStatus::AtCapacity);
    assert_done(&wait_long(&driver, second), scripted_value([3.0, 4.0], slow[0], 2));
    assert_done(&wait_long(&driver, third), scripted_value([5.0, 6.0], "fast", 3));
}

// ----------------------------------------------------------------------- retrieve's statuses

#[test]
fn retrieve_answers_done_not_ready_failed_and_error_with_their_messages() {
    let driver = scripted_driver(options(StartMethod::Forkserver, 2, 16));

    // Done, and the task is then gone.
    let key = submit_retrying(&driver, &[-1.5, 2.7], &["Straße"], 4);
    let done = poll(&driver, key);
    assert_done(&done, 4 + 7 + 4);
    let again = driver.retrieve(key);
    assert_eq!((again.status, again.key, again.value), (ResultStatus::Error, key, 0));
    assert!(again.message.contains("unknown key"), "{again:?}");

    // NotReady keeps the task: asking again later gives its answer.
    let slow = submit_retrying(&driver, &[0.0, 0.0], &["sleep 0.3"], 8);
    for _ in 0..3 {
        let result = driver.retrieve(slow);
        assert_eq!(
            (result.status, result.key, result.value, result.message.as_str()),
            (ResultStatus::NotReady, slow, 0, NOT_FINISHED_MESSAGE)
        );
    }
    assert_done(&poll(&driver, slow), scripted_value([0.0, 0.0], "sleep 0.3", 8));

    // Failed: the demo model raises on NaN (and infinity); the message is its traceback.
    assert_eq!(big_model(&[f64::NAN, 1.0], &["x"], 1), None, "Rust agrees the model cannot answer");
    for (floats, exception) in [([f64::NAN, 1.0], "ValueError"), ([f64::INFINITY, 1.0], "OverflowError")] {
        let key = submit_retrying(&driver, &floats, &["x"], 1);
        let failed = wait_long(&driver, key);
        assert_eq!((failed.status, failed.value), (ResultStatus::Failed, -1), "{failed:?}");
        assert!(failed.message.starts_with("Traceback (most recent call last):"), "{failed:?}");
        assert!(failed.message.contains("big_model"), "{failed:?}");
        assert!(failed.message.contains(exception), "{failed:?}");
        assert_eq!(driver.retrieve(key).status, ResultStatus::Error, "a failed task is removed");
    }
    // Failed: the user's run raises.
    let key = submit_retrying(&driver, &[1.0, 1.0], &["raise"], 1);
    let failed = poll(&driver, key);
    assert_eq!((failed.status, failed.value), (ResultStatus::Failed, -1), "{failed:?}");
    assert!(failed.message.starts_with("Traceback (most recent call last):"), "{failed:?}");
    assert!(failed.message.contains("RuntimeError: the scripted engine raised on purpose"), "{failed:?}");
    assert!(failed.message.contains("mymodule.py"), "{failed:?}");
    // Failed: the model answered a value <= 0.
    let key = submit_retrying(&driver, &[1.0, 1.0], &["zero"], 1);
    let failed = poll(&driver, key);
    assert_eq!((failed.status, failed.value), (ResultStatus::Failed, 0), "{failed:?}");
    assert!(failed.message.contains("answered 0"), "{failed:?}");

    // Error: keys never issued, zero, negative; nothing changes for the tasks held.
    let held = submit_retrying(&driver, &[2.0, 3.0], &["sleep 0.2"], 5);
    for bad in [0, -1, -held, i64::MIN, i64::MAX, held + 1_000_000] {
        let result = driver.retrieve(bad);
        assert_eq!((result.status, result.key, result.value), (ResultStatus::Error, bad, 0), "{result:?}");
        assert!(result.message.contains("unknown key"), "{result:?}");
        let waited = driver.wait(bad, Duration::from_millis(50));
        assert_eq!((waited.status, waited.key, waited.value), (ResultStatus::Error, bad, 0), "{waited:?}");
        assert!(waited.message.contains("unknown key"), "{waited:?}");
    }
    assert_done(&wait_long(&driver, held), scripted_value([2.0, 3.0], "sleep 0.2", 5));
    // And the driver still serves.
    let key = submit_retrying(&driver, &[10.25, -20.5], &["après"], 7);
    assert_done(&wait_long(&driver, key), 30 + 5 + 7);
}

// ----------------------------------------------------------------------------- start methods

fn runs_real_tasks_with(start_method: StartMethod) {
    let driver = demo_driver(options(start_method, 2, 64));
    let pids = driver.worker_pids().unwrap();
    assert_eq!(pids.len(), 2, "{start_method:?}: {pids:?}");
    assert_eq!(driver.n_subprocesses().unwrap(), 2);
    assert!(pids.iter().all(|&pid| pid != std::process::id() && process_exists(pid)), "{pids:?}");
    let tasks = make_tasks(40, start_method as u64 + 100);
    let keys: Vec<i64> =
        tasks.iter().map(|t| submit_retrying(&driver, &t.float_features, &t.str_features, t.int_feature)).collect();
    for (key, task) in keys.into_iter().zip(&tasks) {
        assert_done(&wait_long(&driver, key), expected(task));
    }
    driver.finalize();
    assert_gone(&pids);
}

#[test]
fn fork_workers_run_real_tasks() {
    runs_real_tasks_with(StartMethod::Fork);
}

#[test]
fn forkserver_workers_run_real_tasks() {
    runs_real_tasks_with(StartMethod::Forkserver);
}

#[test]
fn spawn_workers_run_real_tasks() {
    runs_real_tasks_with(StartMethod::Spawn);
}

#[test]
fn start_methods_parse_and_default_to_forkserver() {
    assert_eq!(DriverOptions::default().start_method, StartMethod::Forkserver);
    for (method, name) in
        [(StartMethod::Fork, "fork"), (StartMethod::Forkserver, "forkserver"), (StartMethod::Spawn, "spawn")]
    {
        assert_eq!(name.parse::<StartMethod>().unwrap(), method);
        assert_eq!(method.to_string(), name);
    }
    assert!(matches!("thread".parse::<StartMethod>(), Err(Error::InvalidArgument(_))));
}

// --------------------------------------------------------------------------- a user's Engine

fn user_engine_runs_with(start_method: StartMethod) {
    let dir = user_module_dir();
    let driver = Driver::new(DriverOptions {
        engine: "mymodule:MyEngine".into(),
        python_path: vec![dir.clone()],
        worker_output: Some(workers::captured_output()),
        ..options(start_method, 2, 16)
    })
    .unwrap();
    let config = r#"{"offset": 1000, "scale": 3, "label": "Zo\u00eb \u2713"}"#;
    driver.initialize(config, &["alpha", "beta"], &["word"]).unwrap();
    let pids = driver.worker_pids().unwrap();
    assert_eq!(pids.len(), 2);
    let inputs: Vec<(String, i64)> = (0..12).map(|i| ("x".repeat(i % 5), i as i64 * 7)).collect();
    let keys: Vec<i64> =
        inputs.iter().map(|(word, n)| submit_retrying(&driver, &[0.25, -0.5], &[word.as_str()], *n)).collect();
    for (key, (word, n)) in keys.into_iter().zip(&inputs) {
        let result = wait_long(&driver, key);
        assert_eq!((result.status, result.value), (ResultStatus::Done, 1000 + 3 * n + word.len() as i64), "{result:?}");
        // The engine got the parsed config and both name lists in initialize.
        let (built_with, pid) = result.message.rsplit_once('|').unwrap();
        assert_eq!(built_with, "Zoë ✓|alpha,beta|word", "{start_method:?}");
        assert!(pids.contains(&pid.parse().unwrap()), "ran in {pid}, workers {pids:?}");
    }
    drop(driver);
    assert_gone(&pids);
    assert!(std::env::var_os("PYTHONPATH").is_none_or(|p| !p.to_string_lossy().contains(&*dir.to_string_lossy())));
}

#[test]
fn a_user_engine_from_python_path_runs_in_spawned_workers() {
    user_engine_runs_with(StartMethod::Spawn);
}

#[test]
fn a_user_engine_from_python_path_runs_in_forkserver_workers() {
    user_engine_runs_with(StartMethod::Forkserver);
}

// ------------------------------------------------------------------------------------- wait

#[test]
fn wait_on_a_slow_task_does_not_hold_up_other_threads() {
    let driver = Arc::new(scripted_driver(options(StartMethod::Forkserver, 2, 8)));
    let slow_key = submit_retrying(&driver, &[1.0, 2.0], &["sleep 2.5"], 3);
    let (started_sender, started) = mpsc::channel();
    let waiter = {
        let driver = driver.clone();
        thread::spawn(move || {
            started_sender.send(()).unwrap();
            let result = wait_long(&driver, slow_key);
            (result, Instant::now())
        })
    };
    started.recv().unwrap();
    // Let the slow task run long past the typical task, so no fast task queues behind it.
    thread::sleep(Duration::from_millis(200));
    let tasks = Arc::new(make_tasks(45, 5));
    let fast: Vec<_> = (0..3)
        .map(|first| {
            let (driver, tasks) = (driver.clone(), tasks.clone());
            thread::spawn(move || {
                for task in tasks.iter().skip(first).step_by(3) {
                    // The str feature is the command: a sentence is a plain demo task.
                    let command = &task.str_features[1];
                    let key = submit_retrying(&driver, &task.float_features, &[command], task.int_feature);
                    let result = if first == 0 { wait_long(&driver, key) } else { poll(&driver, key) };
                    let floats = [task.float_features[0], task.float_features[1]];
                    assert_done(&result, scripted_value(floats, command, task.int_feature));
                }
                Instant::now()
            })
        })
        .collect();
    let fast_done: Vec<Instant> = fast.into_iter().map(|thread| thread.join().unwrap()).collect();
    assert!(!waiter.is_finished(), "the slow task's wait returned before the fast threads were done");
    let (slow, slow_done) = waiter.join().unwrap();
    assert_done(&slow, scripted_value([1.0, 2.0], "sleep 2.5", 3));
    assert!(fast_done.iter().all(|done| *done < slow_done));
}

#[test]
fn wait_times_out_with_not_ready_and_errors_on_unknown_keys() {
    let driver = scripted_driver(options(StartMethod::Forkserver, 1, 4));
    let key = submit_retrying(&driver, &[0.0, 0.0], &["sleep 1.0"], 2);
    let start = Instant::now();
    let result = driver.wait(key, Duration::from_millis(150));
    let waited = start.elapsed();
    assert_eq!(
        (result.status, result.key, result.value, result.message.as_str()),
        (ResultStatus::NotReady, key, 0, NOT_FINISHED_MESSAGE)
    );
    assert!(waited >= Duration::from_millis(140) && waited < Duration::from_millis(900), "{waited:?}");
    // A zero timeout does not block.
    assert_eq!(driver.wait(key, Duration::ZERO).status, ResultStatus::NotReady);
    // The task was kept.
    assert_done(&wait_long(&driver, key), scripted_value([0.0, 0.0], "sleep 1.0", 2));
    assert!(start.elapsed() >= Duration::from_millis(900));
    for unknown in [key, 0, -3, key + 100] {
        let result = driver.wait(unknown, Duration::from_secs(5));
        assert_eq!((result.status, result.key, result.value), (ResultStatus::Error, unknown, 0), "{result:?}");
        assert!(result.message.contains("unknown key"), "{result:?}");
    }
    assert!(start.elapsed() < Duration::from_secs(4), "waits on unknown keys must not block");
}

// --------------------------------------------------------------------- timeouts, dead workers

#[test]
fn a_task_past_its_timeout_fails_and_the_next_one_succeeds() {
    let driver = scripted_driver(DriverOptions {
        task_timeout: Some(Duration::from_millis(300)),
        worker_output: Some(workers::captured_output()),
        ..options(StartMethod::Forkserver, 1, 4)
    });
    let before = driver.worker_pids().unwrap();
    let start = Instant::now();
    let key = submit_retrying(&driver, &[1.0, 1.0], &["sleep 20"], 1);
    let result = wait_long(&driver, key);
    assert_eq!(result.status, ResultStatus::Failed, "{result:?}");
    assert!(result.message.contains("timed out"), "{result:?}");
    assert!(result.message.contains(&before[0].to_string()), "names its worker: {result:?}");
    assert!(start.elapsed() < Duration::from_secs(10), "{:?}", start.elapsed());
    // The next task runs on a replacement worker.
    let key = submit_retrying(&driver, &[1.0, 1.0], &["ok"], 1);
    assert_done(&wait_long(&driver, key), scripted_value([1.0, 1.0], "ok", 1));
    let after = wait_for_new_workers(&driver, 1, &before);
    assert_gone(&before);
    // Tasks under the limit are unaffected.
    let key = submit_retrying(&driver, &[1.0, 1.0], &["sleep 0.05"], 1);
    assert_done(&wait_long(&driver, key), scripted_value([1.0, 1.0], "sleep 0.05", 1));
    driver.finalize();
    assert_gone(&after);
}

#[test]
fn a_worker_killed_mid_task_fails_that_task_and_the_next_one_succeeds() {
    let driver = scripted_driver(options(StartMethod::Forkserver, 1, 4));
    let before = driver.worker_pids().unwrap();
    assert_eq!(before.len(), 1);
    let key = submit_retrying(&driver, &[1.0, 1.0], &["sleep 20"], 1);
    thread::sleep(Duration::from_millis(200));
    assert_eq!(driver.retrieve(key).status, ResultStatus::NotReady);
    let start = Instant::now();
    kill_worker(before[0]);
    let result = wait_long(&driver, key);
    assert_eq!((result.status, result.value), (ResultStatus::Failed, -1), "{result:?}");
    assert!(result.message.contains("died"), "{result:?}");
    assert!(result.message.contains("SIGKILL"), "{result:?}");
    assert!(result.message.contains(&before[0].to_string()), "{result:?}");
    assert!(start.elapsed() < Duration::from_secs(5), "the death was noticed late: {:?}", start.elapsed());
    let tasks = make_tasks(5, 77);
    for task in &tasks {
        let key = submit_retrying(&driver, &task.float_features, &[&task.str_features[0]], task.int_feature);
        let floats = [task.float_features[0], task.float_features[1]];
        assert_done(&wait_long(&driver, key), scripted_value(floats, &task.str_features[0], task.int_feature));
    }
    let after = wait_for_new_workers(&driver, 1, &before);
    drop(driver);
    assert_gone(&after);
}

// ----------------------------------------------------------------------- finalize and Drop

#[test]
fn finalize_stops_every_worker_is_idempotent_and_later_calls_answer_errors() {
    let driver = Arc::new(scripted_driver(options(StartMethod::Forkserver, 2, 8)));
    let pids = driver.worker_pids().unwrap();
    assert_eq!(pids.len(), 2);
    assert!(pids.iter().all(|&pid| process_exists(pid)));
    // One task finished but not retrieved, one still running with a thread waiting on it.
    let finished = submit_retrying(&driver, &[3.0, 4.0], &["quick"], 5);
    thread::sleep(Duration::from_millis(200));
    let running = submit_retrying(&driver, &[1.0, 1.0], &["sleep 20"], 1);
    let waiter = {
        let driver = driver.clone();
        thread::spawn(move || driver.wait(running, PATIENCE))
    };
    thread::sleep(Duration::from_millis(100));
    let start = Instant::now();
    driver.finalize();
    assert!(start.elapsed() < Duration::from_secs(10));
    assert_gone(&pids);
    assert_eq!(driver.worker_pids().unwrap(), Vec::<u32>::new());
    // The waiter was released with Failed, not left hanging.
    let interrupted = waiter.join().unwrap();
    assert_eq!(interrupted.status, ResultStatus::Failed, "{interrupted:?}");
    assert!(interrupted.message.contains("finalized"), "{interrupted:?}");
    assert!(start.elapsed() < Duration::from_secs(10));
    // A finished task keeps its answer, once.
    assert_done(&driver.retrieve(finished), scripted_value([3.0, 4.0], "quick", 5));
    assert_eq!(driver.retrieve(finished).status, ResultStatus::Error);

    driver.finalize();
    driver.finalize();
    let late = driver.submit(&[1.0, 2.0], &["x"], 1);
    assert_eq!((late.status, late.key), (SubmitStatus::Error, 0));
    assert!(late.message.contains("finalized"), "{late:?}");
    let late = driver.retrieve(running);
    assert_eq!((late.status, late.value), (ResultStatus::Error, 0), "{late:?}");
    assert_eq!(driver.wait(1_000, Duration::from_millis(100)).status, ResultStatus::Error);
    let again = driver.initialize("{}", &FLOAT_NAMES, &COMMAND).unwrap_err();
    assert_eq!(again.python_type(), Some("RuntimeError"), "{again}");
    assert!(again.to_string().contains("finalized"), "{again}");
    assert_eq!(driver.worker_pids().unwrap(), Vec::<u32>::new());
}

#[test]
fn finalize_from_two_threads_at_once_returns_when_the_workers_are_gone() {
    for _ in 0..3 {
        let driver = Arc::new(scripted_driver(options(StartMethod::Forkserver, 2, 8)));
        let pids = driver.worker_pids().unwrap();
        // Busy workers, so that stopping them takes a moment.
        let keys = [
            submit_retrying(&driver, &[1.0, 1.0], &["sleep 20"], 1),
            submit_retrying(&driver, &[1.0, 1.0], &["sleep 20"], 1),
        ];
        thread::sleep(Duration::from_millis(100));
        let barrier = Arc::new(Barrier::new(2));
        let finalizers: Vec<_> = (0..2)
            .map(|_| {
                let (driver, barrier, pids) = (driver.clone(), barrier.clone(), pids.clone());
                thread::spawn(move || {
                    barrier.wait();
                    driver.finalize();
                    // Whichever call returns, the workers are gone by then.
                    assert_gone(&pids);
                })
            })
            .collect();
        for finalizer in finalizers {
            finalizer.join().unwrap();
        }
        for key in keys {
            assert_eq!(driver.retrieve(key).status, ResultStatus::Failed);
        }
    }
}

#[test]
fn finalize_before_initialize_is_harmless_and_final() {
    let driver = Driver::new(options(StartMethod::Forkserver, 1, 4)).unwrap();
    driver.finalize();
    driver.finalize();
    let late = driver.submit(&[1.0], &["x"], 1);
    assert_eq!(late.status, SubmitStatus::Error);
    assert!(late.message.contains("finalized"), "{late:?}");
    let err = driver.initialize("{}", &["f"], &["s"]).unwrap_err();
    assert_eq!(err.python_type(), Some("RuntimeError"));
    assert!(err.to_string().contains("finalized"), "{err}");
}

#[test]
fn dropping_the_driver_finalizes_it() {
    let driver = demo_driver(options(StartMethod::Forkserver, 2, 8));
    let pids = driver.worker_pids().unwrap();
    assert_eq!(pids.len(), 2);
    let task = &make_tasks(1, 3)[0];
    let key = submit_retrying(&driver, &task.float_features, &task.str_features, task.int_feature);
    assert_done(&wait_long(&driver, key), expected(task));
    // Dropped with a task still held, too.
    submit_retrying(&driver, &task.float_features, &task.str_features, task.int_feature);
    drop(driver);
    assert_gone(&pids);
    // An uninitialized driver drops quietly.
    drop(Driver::new(DriverOptions::default()).unwrap());
}

// ------------------------------------------------------------------- a thread holding the GIL

#[test]
fn a_thread_holding_the_gil_uses_the_driver_while_other_threads_do() {
    let driver = Arc::new(demo_driver(options(StartMethod::Forkserver, 2, 6)));
    let tasks = Arc::new(make_tasks(120, 31));
    within(Duration::from_secs(50), "the GIL-holding thread and the others", move || {
        const OTHERS: usize = 3;
        let others: Vec<_> = (0..OTHERS)
            .map(|first| {
                let (driver, tasks) = (driver.clone(), tasks.clone());
                thread::spawn(move || {
                    for task in tasks.iter().skip(first).step_by(OTHERS + 1) {
                        let key = submit_retrying(&driver, &task.float_features, &task.str_features, task.int_feature);
                        assert_done(&poll(&driver, key), expected(task));
                    }
                })
            })
            .collect();
        // This thread takes the GIL and keeps it across every driver call; it lets it go
        // only while it sleeps, as any thread must not sleep holding the GIL.
        let mut gil = Gil::acquire().unwrap();
        let mut count = 0;
        for (index, task) in tasks.iter().enumerate().skip(OTHERS).step_by(OTHERS + 1) {
            let key = loop {
                let receipt = driver.submit(&task.float_features, &task.str_features, task.int_feature);
                if receipt.status == SubmitStatus::Accepted {
                    break receipt.key;
                }
                assert_eq!(receipt.status, SubmitStatus::AtCapacity, "{receipt:?}");
                gil = sleep_without_gil(gil);
            };
            let result = if index % 2 == 0 {
                driver.wait(key, PATIENCE)
            } else {
                loop {
                    let result = driver.retrieve(key);
                    if result.status != ResultStatus::NotReady {
                        break result;
                    }
                    gil = sleep_without_gil(gil);
                }
            };
            assert_done(&result, expected(task));
            assert!(Gil::is_held());
            assert_eq!(gil.eval("6 * 7").unwrap().extract::<i64>().unwrap(), 42);
            assert_eq!(driver.worker_pids().unwrap().len(), 2);
            count += 1;
        }
        assert_eq!(count, 30);
        // A whole driver's life, with the GIL held throughout.
        let second = Driver::new(options(StartMethod::Forkserver, 1, 2)).unwrap();
        second.initialize("{}", &FLOAT_NAMES, &STR_NAMES).unwrap();
        let task = &tasks[0];
        let receipt = second.submit(&task.float_features, &task.str_features, task.int_feature);
        assert_eq!(receipt.status, SubmitStatus::Accepted, "{receipt:?}");
        let key = receipt.key;
        assert_done(&second.wait(key, PATIENCE), expected(task));
        let second_pids = second.worker_pids().unwrap();
        second.finalize();
        drop(second);
        assert!(Gil::is_held());
        // Joining blocks: not with the GIL held, or the others could never finish.
        drop(gil);
        for other in others {
            other.join().unwrap();
        }
        assert_gone(&second_pids);
    });
}

/// Lets the GIL go for a 1 ms sleep (no thread should sleep holding it), then takes it back.
fn sleep_without_gil(gil: Gil) -> Gil {
    drop(gil);
    thread::sleep(Duration::from_millis(1));
    Gil::acquire().unwrap()
}

// --------------------------------------------------------------------------- initialize errors

#[track_caller]
fn python_error(error: Error, type_name: &str) -> rs4py::PythonException {
    match error {
        Error::Python(exception) => {
            assert_eq!(exception.type_name, type_name, "{exception:?}");
            *exception
        }
        other => panic!("expected a Python {type_name}, got {other:?}"),
    }
}

#[test]
fn initialize_errors_are_python_exceptions_of_the_right_type() {
    // Bad JSON: ValueError, and the driver can still be initialized properly afterwards.
    let driver = Driver::new(options(StartMethod::Forkserver, 1, 4)).unwrap();
    let bad = python_error(driver.initialize("{not json", &FLOAT_NAMES, &STR_NAMES).unwrap_err(), "ValueError");
    assert!(bad.message.contains("not valid JSON"), "{bad:?}");
    assert!(bad.traceback.starts_with("Traceback (most recent call last):"), "{bad:?}");
    assert_eq!(driver.submit(&[1.0, 2.0], &["a", "b", "c"], 1).status, SubmitStatus::Error);
    driver.initialize(r#"{"fine": [1, 2]}"#, &FLOAT_NAMES, &STR_NAMES).unwrap();
    // Twice: RuntimeError, and the running driver is unharmed.
    let twice = python_error(driver.initialize("{}", &FLOAT_NAMES, &STR_NAMES).unwrap_err(), "RuntimeError");
    assert!(twice.message.contains("already initialized"), "{twice:?}");
    let task = &make_tasks(1, 8)[0];
    let key = submit_retrying(&driver, &task.float_features, &task.str_features, task.int_feature);
    assert_done(&wait_long(&driver, key), expected(task));
    drop(driver);

    // An engine module that does not exist: ImportError naming it.
    let driver = Driver::new(DriverOptions {
        engine: "no_such_module_rs4py:Engine".into(),
        worker_output: Some(workers::captured_output()),
        ..options(StartMethod::Spawn, 1, 4)
    })
    .unwrap();
    let missing = python_error(driver.initialize("{}", &FLOAT_NAMES, &STR_NAMES).unwrap_err(), "ImportError");
    assert!(missing.message.contains("no_such_module_rs4py"), "{missing:?}");
    assert_eq!(driver.worker_pids().unwrap(), Vec::<u32>::new());

    // A malformed engine name: ValueError.
    let driver = Driver::new(DriverOptions {
        engine: "no colon".into(),
        worker_output: Some(workers::captured_output()),
        ..options(StartMethod::Spawn, 1, 4)
    })
    .unwrap();
    let malformed = python_error(driver.initialize("{}", &FLOAT_NAMES, &STR_NAMES).unwrap_err(), "ValueError");
    assert!(malformed.message.contains("module:Class"), "{malformed:?}");

    // An Engine whose initialize raises, in the worker: RuntimeError carrying its traceback.
    let driver = Driver::new(DriverOptions {
        engine: "mymodule:FailingInitEngine".into(),
        python_path: vec![user_module_dir()],
        worker_output: Some(workers::captured_output()),
        ..options(StartMethod::Forkserver, 2, 4)
    })
    .unwrap();
    let failed = python_error(driver.initialize("{}", &FLOAT_NAMES, &STR_NAMES).unwrap_err(), "RuntimeError");
    assert!(failed.message.contains("failed to build and initialise"), "{failed:?}");
    assert!(failed.message.contains("Traceback (most recent call last):"), "{failed:?}");
    assert!(failed.message.contains("mymodule.py"), "{failed:?}");
    assert!(failed.message.contains("RuntimeError: FailingInitEngine refuses to initialize"), "{failed:?}");
    assert_eq!(driver.worker_pids().unwrap(), Vec::<u32>::new());
    let refused = driver.submit(&[1.0, 2.0], &["a", "b", "c"], 1);
    assert_eq!(refused.status, SubmitStatus::Error, "{refused:?}");
}

#[test]
fn the_driver_handles_and_errors_can_be_shared_across_threads() {
    fn shared_across_threads<T: Send + Sync>() {}
    shared_across_threads::<Driver>();
    shared_across_threads::<rs4py::Handle>();
    shared_across_threads::<Error>();
}

#[test]
fn an_engine_that_hangs_in_initialize_fails_at_the_start_up_limit() {
    let driver = Driver::new(DriverOptions {
        engine: "mymodule:HangingInitEngine".into(),
        python_path: vec![user_module_dir()],
        init_timeout: Some(Duration::from_millis(500)),
        worker_output: Some(workers::captured_output()),
        ..options(StartMethod::Forkserver, 2, 4)
    })
    .unwrap();
    let started = std::time::Instant::now();
    let failed = python_error(
        driver.initialize(r#"{"init_seconds": 60}"#, &FLOAT_NAMES, &STR_NAMES).unwrap_err(),
        "RuntimeError",
    );
    assert!(started.elapsed() < Duration::from_secs(20), "took {:?}", started.elapsed());
    assert!(failed.message.contains("did not become ready within 0.5 s"), "{failed:?}");
    assert_eq!(driver.worker_pids().unwrap(), Vec::<u32>::new(), "no worker is left behind");

    // A start within the limit works as usual.
    let patient = Driver::new(DriverOptions {
        engine: "mymodule:HangingInitEngine".into(),
        python_path: vec![user_module_dir()],
        init_timeout: Some(Duration::from_secs(20)),
        worker_output: Some(workers::captured_output()),
        ..options(StartMethod::Forkserver, 1, 4)
    })
    .unwrap();
    patient.initialize(r#"{"init_seconds": 0.1}"#, &FLOAT_NAMES, &STR_NAMES).unwrap();
    let receipt = patient.submit(&[1.0, 2.0], &["a", "b", "c"], 0);
    assert_eq!(receipt.status, SubmitStatus::Accepted, "{receipt:?}");
    assert_eq!(wait_long(&patient, receipt.key).value, 1);
}

#[test]
fn an_answer_too_large_for_i64_fails_its_task_with_a_reason() {
    let driver = scripted_driver(options(StartMethod::Forkserver, 1, 4));
    let receipt = driver.submit(&[1.0, 2.0], &["huge"], 0);
    assert_eq!(receipt.status, SubmitStatus::Accepted, "{receipt:?}");
    let result = wait_long(&driver, receipt.key);
    assert_eq!((result.status, result.value), (ResultStatus::Failed, 0), "{result:?}");
    assert!(result.message.starts_with("the model's answer cannot be an i64 value"), "{result:?}");
    assert!(result.message.contains("int does not fit in i64"), "{result:?}");
    // The task is gone, as for any failure, and the driver goes on.
    assert_eq!(driver.retrieve(receipt.key).status, ResultStatus::Error);
    let next = driver.submit(&[1.0, 2.0], &["fine"], 5);
    assert_done(&wait_long(&driver, next.key), scripted_value([1.0, 2.0], "fine", 5));
}

#[test]
fn absurd_options_are_refused_at_initialize_with_the_reason() {
    let cases = [
        (
            DriverOptions {
                n_subprocesses: usize::MAX,
                worker_output: Some(workers::captured_output()),
                ..Default::default()
            },
            "at most 1024",
        ),
        (
            DriverOptions { max_tasks: 0, worker_output: Some(workers::captured_output()), ..Default::default() },
            "max_tasks",
        ),
        (
            DriverOptions {
                task_timeout: Some(Duration::ZERO),
                worker_output: Some(workers::captured_output()),
                ..Default::default()
            },
            "task_timeout",
        ),
        (
            DriverOptions {
                engine: "not an engine name".into(),
                worker_output: Some(workers::captured_output()),
                ..Default::default()
            },
            "module:Class",
        ),
    ];
    for (options, reason) in cases {
        let driver = Driver::new(options).unwrap();
        let refused = python_error(driver.initialize("{}", &FLOAT_NAMES, &STR_NAMES).unwrap_err(), "ValueError");
        assert!(refused.message.contains(reason), "{refused:?}");
        assert_eq!(driver.worker_pids().unwrap(), Vec::<u32>::new());
    }
}
