//! What running the Driver in a service needs beyond submit and retrieve: `stats()` in every
//! state a task and a worker can be in, worker output and events through a callback,
//! `worker_env` in every start method, and `drain`.
//!
//! Model answers are checked against `workload::big_model`, computed in Rust.

#[allow(dead_code)]
#[path = "../examples/many_threads/workload.rs"]
mod workload;

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::thread;
use std::time::{Duration, Instant};

use rs4py::{
    Driver, DriverOptions, DriverState, DriverStats, Error, Gil, ResultStatus, StartMethod, SubmitStatus, WorkerLine,
    WorkerOutput, WorkerStream,
};
use workload::{big_model, make_tasks, percentile};

#[path = "common/workers.rs"]
mod workers;
use workers::{kill_worker, module_dir_with, process_exists};

const FLOAT_NAMES: [&str; 2] = ["f0", "f1"];
const STR_NAMES: [&str; 3] = ["name", "sentence", "uuid"];
const ONE_STR: [&str; 1] = ["what"];
const METHODS: [StartMethod; 3] = [StartMethod::Fork, StartMethod::Forkserver, StartMethod::Spawn];
const PATIENCE: Duration = Duration::from_secs(30);

/// Each task waits until the file `config["gate"]` exists, then answers `int_feature`.
const GATE_ENGINE: &str = "py4cc_user_engines:GateEngine";

const MODULE: &str = r#"
"""Engines for rs4py's tests/operations.rs."""
import ctypes
import os
import sys
import time

ENV_NAMES = ("RS4PY_TEST_ENV_A", "RS4PY_TEST_ENV_B", "OMP_NUM_THREADS")
AT_IMPORT = "|".join(f"{name}={os.environ.get(name)}" for name in ENV_NAMES)


class TalkEngine:
    """Prints as str_features[0] says: "lines" (Python and C, both streams), "sleep" (30 s),
    "die" (a last line, then SIGKILL); answers int_feature."""

    def initialize(self, **kwargs):
        print("talk engine ready")

    def run(self, float_features, str_features, int_feature):
        what = str_features[0]
        if what == "lines":
            print(f"stdout {int_feature}")
            print(f"stderr {int_feature}", file=sys.stderr)
            ctypes.CDLL(None).printf(b"printf %d\n", ctypes.c_int(int_feature))
        elif what == "sleep":
            time.sleep(30)
        elif what == "die":
            print("last words")
            os.kill(os.getpid(), 9)
        return int_feature, ""


class EnvEngine:
    """Answers (1, "<the variables at import>;<now, in os.environ>")."""

    def initialize(self, **kwargs):
        pass

    def run(self, float_features, str_features, int_feature):
        now = "|".join(f"{name}={os.environ.get(name)}" for name in ENV_NAMES)
        return 1, AT_IMPORT + ";" + now
"#;

/// A fresh directory for this test process, holding the engines' module (`opsmodule.py`).
fn module_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| module_dir_with("rs4py-operations", "opsmodule.py", MODULE)).clone()
}

/// A path whose file, once made, lets GateEngine's tasks finish (a new one per call).
fn gate_path() -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    module_dir().join(format!("gate-{}", NEXT.fetch_add(1, Ordering::SeqCst)))
}

/// py4cc's test engines, GateEngine among them.
fn engines_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("py4cc/tests/engines")
}

/// A driver's options for `engine`, `"module:Class"`, from `opsmodule` or py4cc's test engines.
fn engine_options(engine: &str, n_subprocesses: usize) -> DriverOptions {
    DriverOptions {
        engine: engine.into(),
        python_path: vec![module_dir(), engines_dir()],
        n_subprocesses,
        max_tasks: 16,
        worker_output: Some(workers::captured_output()),
        ..Default::default()
    }
}

/// A GateEngine driver, initialized, and its gate.
fn gated_driver(n_subprocesses: usize) -> (Driver, PathBuf) {
    let gate = gate_path();
    let driver = Driver::new(engine_options(GATE_ENGINE, n_subprocesses)).unwrap();
    let config = format!(r#"{{"gate": "{}"}}"#, gate.display());
    driver.initialize(&config, &FLOAT_NAMES, &ONE_STR).unwrap();
    (driver, gate)
}

fn accepted(driver: &Driver, floats: &[f64], strs: &[&str], int_feature: i64) -> i64 {
    let receipt = driver.submit(floats, strs, int_feature);
    assert_eq!(receipt.status, SubmitStatus::Accepted, "{receipt:?}");
    receipt.key
}

/// Polls `stats()` until `ready` holds (or panics after PATIENCE); returns those stats.
#[track_caller]
fn stats_when(driver: &Driver, ready: impl Fn(&DriverStats) -> bool) -> DriverStats {
    let start = Instant::now();
    loop {
        let stats = driver.stats().unwrap();
        if ready(&stats) {
            return stats;
        }
        assert!(start.elapsed() < PATIENCE, "stats never got there: {stats:?}");
        thread::sleep(Duration::from_millis(5));
    }
}

/// Collects every worker line, noting whether the callback ever ran with the GIL held.
#[derive(Default)]
struct Lines {
    lines: Mutex<Vec<WorkerLine>>,
    with_gil: AtomicUsize,
}

impl Lines {
    fn output(self: &Arc<Self>) -> WorkerOutput {
        let lines = Arc::clone(self);
        WorkerOutput::new(move |line| {
            if Gil::is_held() {
                lines.with_gil.fetch_add(1, Ordering::SeqCst);
            }
            lines.lines.lock().unwrap().push(line);
        })
    }

    fn of(&self, pid: u32, stream: WorkerStream) -> Vec<String> {
        let lines = self.lines.lock().unwrap();
        lines.iter().filter(|line| line.pid == pid && line.stream == stream).map(|line| line.text.clone()).collect()
    }

    fn position(&self, pid: u32, stream: WorkerStream, text: &str) -> Option<usize> {
        let lines = self.lines.lock().unwrap();
        lines.iter().position(|line| line.pid == pid && line.stream == stream && line.text == text)
    }

    #[track_caller]
    fn wait_for(&self, pid: u32, stream: WorkerStream, text: &str) -> usize {
        let start = Instant::now();
        loop {
            if let Some(position) = self.position(pid, stream, text) {
                return position;
            }
            assert!(start.elapsed() < PATIENCE, "no {stream:?} line {text:?} from {pid}: {:?}", self.lines);
            thread::sleep(Duration::from_millis(5));
        }
    }
}

#[test]
fn stats_count_tasks_in_every_state() {
    let (driver, gate) = gated_driver(1);
    let fresh = driver.stats().unwrap();
    assert_eq!(
        (fresh.state, fresh.workers_wanted, fresh.workers_alive, fresh.workers_ready),
        (DriverState::Running, 1, 1, 1)
    );
    assert_eq!((fresh.worker_starts, fresh.worker_deaths, fresh.last_death_cause.as_str()), (1, 0, ""));
    let keys: Vec<i64> = (1..=3).map(|n| accepted(&driver, &[0.0, 0.0], &["gated"], n)).collect();
    let stats = stats_when(&driver, |stats| stats.tasks_running == 1);
    // One runs; behind it one waits in the worker's pipe (prefetch) and one in the queue.
    assert_eq!((stats.tasks_held, stats.tasks_queued, stats.tasks_running, stats.tasks_finished), (3, 2, 1, 0));
    assert_eq!((stats.tasks_done, stats.run_time_samples, stats.run_time_p50), (0, 0, None));
    std::fs::write(&gate, "").unwrap();
    let stats = stats_when(&driver, |stats| stats.tasks_finished == 3);
    assert_eq!((stats.tasks_held, stats.tasks_queued, stats.tasks_running), (3, 0, 0));
    assert_eq!((stats.tasks_done, stats.tasks_failed, stats.run_time_samples), (3, 0, 3));
    let (p50, p99) = (stats.run_time_p50.unwrap(), stats.run_time_p99.unwrap());
    assert!(p50 > Duration::ZERO && p99 >= p50, "{stats:?}");
    for (key, n) in keys.iter().zip(1..) {
        assert_eq!(driver.retrieve(*key).value, n);
    }
    let stats = driver.stats().unwrap();
    assert_eq!((stats.tasks_held, stats.tasks_finished, stats.tasks_cancelled, stats.tasks_expired), (0, 0, 0, 0));
    driver.finalize();
    let stats = driver.stats().unwrap();
    assert_eq!((stats.state, stats.workers_alive, stats.tasks_done), (DriverState::Finalized, 0, 3));
}

#[test]
fn cancelled_expired_and_dropped_futures_show_in_stats() {
    let gate = gate_path();
    let driver = Driver::new(DriverOptions {
        result_ttl: Some(Duration::from_millis(300)),
        worker_output: Some(workers::captured_output()),
        ..engine_options(GATE_ENGINE, 1)
    })
    .unwrap();
    driver.initialize(&format!(r#"{{"gate": "{}"}}"#, gate.display()), &FLOAT_NAMES, &ONE_STR).unwrap();
    let counts = |stats: &DriverStats| {
        (
            stats.tasks_held,
            stats.tasks_queued,
            stats.tasks_running,
            stats.tasks_finished,
            stats.tasks_cancelled,
            stats.tasks_expired,
        )
    };
    let [running, prefetched, queued] = [1, 2, 3].map(|n| accepted(&driver, &[0.0, 0.0], &["gated"], n));
    let stats = stats_when(&driver, |stats| stats.tasks_running == 1);
    assert_eq!(counts(&stats), (3, 2, 1, 0, 0, 0));
    assert!(driver.cancel(running), "its worker still runs it, but it is no longer held");
    assert_eq!(counts(&driver.stats().unwrap()), (2, 2, 0, 0, 1, 0));
    // A future dropped before it answers cancels its task too.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
    let timed_out =
        runtime.block_on(async { tokio::time::timeout(Duration::from_millis(20), driver.wait_async(queued)).await });
    assert!(timed_out.is_err(), "a gated task cannot have finished: {timed_out:?}");
    assert_eq!(counts(&driver.stats().unwrap()), (1, 1, 0, 0, 2, 0));
    std::fs::write(&gate, "").unwrap();
    let stats = stats_when(&driver, |stats| stats.tasks_finished == 1);
    assert_eq!(counts(&stats), (1, 0, 0, 1, 2, 0));
    let stats = stats_when(&driver, |stats| stats.tasks_expired == 1); // nobody retrieved it in 300 ms
    assert_eq!(counts(&stats), (0, 0, 0, 0, 2, 1));
    assert_eq!(driver.retrieve(prefetched).status, ResultStatus::Error);
    // The cancelled running task's answer was discarded, not counted.
    assert_eq!((stats.tasks_done, stats.tasks_failed), (1, 0));
}

#[test]
fn run_time_percentiles_are_at_least_the_models_sleeps() {
    // Every demo task sleeps (z % 100 + 1) * 0.1 ms: each run time is at least its task's
    // sleep, so each percentile of run times is at least the same percentile of sleeps.
    let driver = Arc::new(
        Driver::new(DriverOptions {
            n_subprocesses: 2,
            worker_output: Some(workers::captured_output()),
            ..Default::default()
        })
        .unwrap(),
    );
    driver.initialize("{}", &FLOAT_NAMES, &STR_NAMES).unwrap();
    let tasks = Arc::new(make_tasks(200, 7));
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let (driver, tasks) = (Arc::clone(&driver), Arc::clone(&tasks));
            thread::spawn(move || {
                for task in tasks.iter().skip(t).step_by(4) {
                    let key = loop {
                        let receipt = driver.submit(&task.float_features, &task.str_features, task.int_feature);
                        if receipt.status == SubmitStatus::Accepted {
                            break receipt.key;
                        }
                        assert_eq!(receipt.status, SubmitStatus::AtCapacity, "{receipt:?}");
                        thread::sleep(Duration::from_millis(1));
                    };
                    let result = driver.wait(key, PATIENCE);
                    let expected = big_model(&task.float_features, &task.str_features, task.int_feature).unwrap();
                    assert_eq!((result.status, result.value), (ResultStatus::Done, expected), "{result:?}");
                }
            })
        })
        .collect();
    threads.into_iter().for_each(|thread| thread.join().unwrap());
    let stats = driver.stats().unwrap();
    assert_eq!((stats.tasks_done, stats.tasks_held, stats.run_time_samples), (200, 0, 200));
    let mut sleeps: Vec<f64> = tasks
        .iter()
        .map(|task| {
            let z = big_model(&task.float_features, &task.str_features, task.int_feature).unwrap();
            (z % 100 + 1) as f64 * 1e-4
        })
        .collect();
    sleeps.sort_by(f64::total_cmp);
    let (p50, p99) = (stats.run_time_p50.unwrap().as_secs_f64(), stats.run_time_p99.unwrap().as_secs_f64());
    assert!(p50 >= percentile(&sleeps, 50.0), "p50 {p50} below the sleeps' p50");
    assert!(p99 >= percentile(&sleeps, 99.0), "p99 {p99} below the sleeps' p99");
    assert!(p99 >= p50);
}

#[test]
fn worker_lines_reach_the_callback_with_their_pid_in_every_start_method() {
    for method in METHODS {
        let lines = Arc::new(Lines::default());
        let driver = Driver::new(DriverOptions {
            start_method: method,
            worker_output: Some(lines.output()),
            ..engine_options("opsmodule:TalkEngine", 1)
        })
        .unwrap();
        driver.initialize("{}", &FLOAT_NAMES, &ONE_STR).unwrap();
        let pid = driver.worker_pids().unwrap()[0];
        let key = accepted(&driver, &[0.0, 0.0], &["lines"], 7);
        assert_eq!(driver.wait(key, PATIENCE).value, 7);
        driver.finalize(); // the output thread reads the pipes to their end
        assert_eq!(lines.of(pid, WorkerStream::Stdout), ["talk engine ready", "stdout 7", "printf 7"], "{method:?}");
        assert_eq!(lines.of(pid, WorkerStream::Stderr), ["stderr 7"], "{method:?}");
        assert!(lines.lines.lock().unwrap().iter().all(|line| line.pid == pid));
        assert_eq!(lines.with_gil.load(Ordering::SeqCst), 0, "the callback ran with the GIL held");
    }
}

#[test]
fn deaths_timeouts_and_replacements_are_events_and_counted() {
    let lines = Arc::new(Lines::default());
    let driver = Driver::new(DriverOptions {
        worker_output: Some(lines.output()),
        task_timeout: Some(Duration::from_millis(500)),
        ..engine_options("opsmodule:TalkEngine", 1)
    })
    .unwrap();
    driver.initialize("{}", &FLOAT_NAMES, &ONE_STR).unwrap();

    // A task that dies: its last line, then its death, then its replacement.
    let first = driver.worker_pids().unwrap()[0];
    let key = accepted(&driver, &[0.0, 0.0], &["die"], 1);
    let result = driver.wait(key, PATIENCE);
    assert_eq!(result.status, ResultStatus::Failed);
    assert_eq!(
        result.message,
        format!(
            "the worker process (pid {first}) running this task died with exit code -9 (killed by SIGKILL); it is being replaced"
        )
    );
    let death_text = format!("exited with exit code -9 (killed by SIGKILL) while running task {key}");
    let death = lines.wait_for(first, WorkerStream::Event, &death_text);
    assert!(lines.position(first, WorkerStream::Stdout, "last words").unwrap() < death, "{:?}", lines.lines);
    let stats = stats_when(&driver, |stats| stats.workers_ready == 1);
    let second = driver.worker_pids().unwrap()[0];
    lines.wait_for(second, WorkerStream::Event, &format!("started, replacing worker process {first}"));
    assert_eq!((stats.worker_deaths, stats.worker_starts, stats.tasks_failed), (1, 2, 1));
    assert_eq!(stats.last_death_cause, format!("worker process {first} exited with exit code -9 (killed by SIGKILL)"));

    // A task that runs past task_timeout.
    let key = accepted(&driver, &[0.0, 0.0], &["sleep"], 2);
    assert_eq!(driver.wait(key, PATIENCE).status, ResultStatus::Failed);
    lines.wait_for(
        second,
        WorkerStream::Event,
        &format!("task {key} ran past task_timeout (0.5 s): killing the worker"),
    );
    let stats = stats_when(&driver, |stats| stats.worker_deaths == 2 && stats.workers_ready == 1);
    assert_eq!((stats.tasks_timed_out, stats.tasks_failed, stats.worker_starts), (1, 2, 3));
    assert_eq!(
        stats.last_death_cause,
        format!(
            "worker process {second} exited with exit code -9 (killed by SIGKILL), killed because its task ran past task_timeout (0.5 s)"
        )
    );

    // An idle worker killed from outside.
    let third = driver.worker_pids().unwrap()[0];
    kill_worker(third);
    lines.wait_for(third, WorkerStream::Event, "exited with exit code -9 (killed by SIGKILL) while idle");
    let stats = stats_when(&driver, |stats| stats.worker_deaths == 3 && stats.workers_ready == 1);
    assert_eq!((stats.worker_starts, stats.tasks_failed, stats.replacement_failures), (4, 2, 0));
}

#[test]
fn the_callback_may_call_the_driver() {
    static DRIVER: OnceLock<Weak<Driver>> = OnceLock::new();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let kept = Arc::clone(&seen);
    let output = WorkerOutput::new(move |line| {
        if let Some(driver) = DRIVER.get().and_then(Weak::upgrade) {
            // Takes the GIL (the callback runs without it) while the pool hands on lines.
            let stats = driver.stats().unwrap();
            kept.lock().unwrap().push((line.text, stats.workers_wanted));
        }
    });
    let driver = Arc::new(
        Driver::new(DriverOptions { worker_output: Some(output), ..engine_options("opsmodule:TalkEngine", 1) })
            .unwrap(),
    );
    DRIVER.set(Arc::downgrade(&driver)).unwrap();
    driver.initialize("{}", &FLOAT_NAMES, &ONE_STR).unwrap();
    let key = accepted(&driver, &[0.0, 0.0], &["lines"], 3);
    assert_eq!(driver.wait(key, PATIENCE).value, 3);
    driver.finalize();
    let seen = seen.lock().unwrap();
    for text in ["stdout 3", "stderr 3", "printf 3"] {
        assert!(seen.contains(&(text.to_owned(), 1)), "{text:?} not seen: {seen:?}");
    }
}

#[test]
fn worker_env_is_set_before_the_engine_is_imported_in_every_start_method() {
    let env = [("RS4PY_TEST_ENV_A", "zoë = 1"), ("RS4PY_TEST_ENV_B", ""), ("OMP_NUM_THREADS", "1")];
    let expected = "RS4PY_TEST_ENV_A=zoë = 1|RS4PY_TEST_ENV_B=|OMP_NUM_THREADS=1";
    for method in METHODS {
        let driver = Driver::new(DriverOptions {
            start_method: method,
            worker_env: env.iter().map(|(name, value)| (name.to_string(), value.to_string())).collect(),
            worker_output: Some(workers::captured_output()),
            ..engine_options("opsmodule:EnvEngine", 2)
        })
        .unwrap();
        driver.initialize("{}", &FLOAT_NAMES, &ONE_STR).unwrap();
        for n in 0..4 {
            let key = accepted(&driver, &[0.0, 0.0], &["env"], n);
            let result = driver.wait(key, PATIENCE);
            assert_eq!(result.status, ResultStatus::Done, "{result:?}");
            assert_eq!(result.message, format!("{expected};{expected}"), "{method:?}");
        }
        driver.finalize();
    }
    assert!(std::env::var_os("RS4PY_TEST_ENV_A").is_none(), "the host's environment is untouched");
}

#[test]
fn a_bad_worker_env_fails_initialize() {
    for (name, value, message) in [
        ("A=B", "1", "worker_env: 'A=B' is not an environment variable name (empty, or holds '=' or NUL)"),
        ("", "1", "worker_env: '' is not an environment variable name (empty, or holds '=' or NUL)"),
        ("A", "x\0y", "worker_env: the value of 'A' holds a NUL character"),
    ] {
        let driver = Driver::new(DriverOptions {
            worker_env: vec![(name.into(), value.into())],
            worker_output: Some(workers::captured_output()),
            ..Default::default()
        })
        .unwrap();
        let err = driver.initialize("{}", &FLOAT_NAMES, &STR_NAMES).unwrap_err();
        assert_eq!(err.python_type(), Some("ValueError"), "{err}");
        assert_eq!(err.to_string(), format!("ValueError: {message}"));
        assert_eq!(driver.worker_pids().unwrap(), Vec::<u32>::new());
    }
}

#[test]
fn drain_lets_held_tasks_finish_and_refuses_new_ones() {
    let (driver, gate) = gated_driver(1);
    let driver = Arc::new(driver);
    let pids = driver.worker_pids().unwrap();
    let keys: Vec<i64> = (1..=4).map(|n| accepted(&driver, &[0.0, 0.0], &["gated"], n)).collect();
    let drainer = {
        let driver = Arc::clone(&driver);
        thread::spawn(move || driver.drain(PATIENCE))
    };
    stats_when(&driver, |stats| stats.state == DriverState::Draining);
    let refused = driver.submit(&[0.0, 0.0], &["late"], 5);
    assert_eq!((refused.status, refused.key), (SubmitStatus::Error, 0));
    assert_eq!(
        refused.message,
        "the driver is draining (it finishes the tasks it holds, then stops); submit is no longer accepted"
    );
    assert_eq!(driver.retrieve(keys[0]).status, ResultStatus::NotReady, "calls still work while draining");
    std::fs::write(&gate, "").unwrap();
    assert_eq!(drainer.join().unwrap(), 0, "every held task finished in time");
    for (key, n) in keys.iter().zip(1..) {
        let result = driver.retrieve(*key);
        assert_eq!((result.status, result.value), (ResultStatus::Done, n), "{result:?}");
    }
    let refused = driver.submit(&[0.0, 0.0], &["later"], 6);
    assert_eq!(refused.message, "the driver is finalized; submit is no longer accepted");
    assert_eq!(driver.stats().unwrap().state, DriverState::Finalized);
    assert!(pids.iter().all(|&pid| !process_exists(pid)), "workers left behind");
}

#[test]
fn drain_does_not_wait_for_a_cancelled_task() {
    let (driver, _gate) = gated_driver(1);
    let driver = Arc::new(driver);
    let key = accepted(&driver, &[0.0, 0.0], &["gated"], 1);
    let drainer = {
        let driver = Arc::clone(&driver);
        thread::spawn(move || driver.drain(Duration::from_secs(3600)))
    };
    stats_when(&driver, |stats| stats.state == DriverState::Draining);
    assert!(driver.cancel(key));
    let start = Instant::now();
    while !drainer.is_finished() {
        assert!(start.elapsed() < PATIENCE, "drain still waits for a cancelled task");
        thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(drainer.join().unwrap(), 0);
    assert_eq!(driver.stats().unwrap().state, DriverState::Finalized);
}

#[test]
fn drain_fails_what_is_unfinished_at_its_timeout() {
    let (driver, _gate) = gated_driver(1);
    let keys: Vec<i64> = (1..=3).map(|n| accepted(&driver, &[0.0, 0.0], &["gated"], n)).collect();
    assert_eq!(driver.drain(Duration::from_millis(300)), 3);
    for key in keys {
        let result = driver.retrieve(key);
        assert_eq!((result.status, result.value), (ResultStatus::Failed, -1));
        assert_eq!(result.message, "the driver was finalized before this task finished");
    }
    assert_eq!(driver.drain(Duration::from_secs(1)), 0, "a second drain has nothing to do");
    let never = Driver::new(DriverOptions::default()).unwrap();
    assert_eq!(never.drain(Duration::from_secs(1)), 0);
    assert_eq!(never.stats().unwrap().state, DriverState::Finalized);
    let err = never.initialize("{}", &FLOAT_NAMES, &STR_NAMES).unwrap_err();
    assert!(matches!(err, Error::Python(_)));
    assert_eq!(err.to_string(), "RuntimeError: Driver.initialize: the driver is finalized; create a new Driver");
}
