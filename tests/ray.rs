//! The Driver with `Backend::Ray`: the same calls and answers as with the local pool, on a
//! real Ray cluster on 127.0.0.1.
//!
//! The cluster tests run only when `RS4PY_RAY_ADDRESS` names a running cluster (`.ci/run`
//! starts one, a head and two one-CPU worker nodes, inside a network namespace with only the
//! loopback interface, builds these tests with a Python that has `ray` and runs them with
//! `--include-ignored`); otherwise `cargo test` lists them as ignored, with that reason, and
//! one run anyway without the address prints why it is skipped. They take turns: the cluster's two CPUs go to one Driver at a
//! time. `missing_ray_is_a_clear_error` runs where the build interpreter has no `ray`.

#[allow(dead_code)]
#[path = "../examples/many_threads/workload.rs"]
mod workload;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use rs4py::{Backend, Driver, DriverOptions, Error, Gil, ResultStatus, SubmitStatus};
use workload::{Mode, Report, big_model, make_tasks};

#[path = "common/workers.rs"]
mod workers;

const FLOAT_NAMES: [&str; 2] = ["f0", "f1"];
const STR_NAMES: [&str; 3] = ["name", "sentence", "uuid"];
const PATIENCE: Duration = Duration::from_secs(120);
const ADDRESS_VARIABLE: &str = "RS4PY_RAY_ADDRESS";

const MODULE: &str = r#"
"""Engines for rs4py's tests/ray.rs: on the cluster, from the actors' runtime environment."""
import os
import time


class SleepEngine:
    """Sleeps float_features[0] seconds, then answers (int_feature, str(pid))."""

    def initialize(self, **kwargs):
        pass

    def run(self, float_features, str_features, int_feature):
        time.sleep(float_features[0])
        return int_feature, str(os.getpid())
"#;

/// The cluster's address, and the turn to use it; None (with a note) when the cluster tests
/// are not to run here.
fn cluster(test: &str) -> Option<(String, MutexGuard<'static, ()>)> {
    static TURN: Mutex<()> = Mutex::new(());
    let Ok(address) = std::env::var(ADDRESS_VARIABLE) else {
        note(&format!("{test}: skipped: {ADDRESS_VARIABLE} is not set (.ci/run sets it to a loopback Ray cluster)"));
        return None;
    };
    assert!(
        ray_importable(),
        "{ADDRESS_VARIABLE} is set, but the build interpreter ({}) cannot import ray",
        rs4py::build_python().executable
    );
    Some((address, TURN.lock().unwrap_or_else(|poisoned| poisoned.into_inner())))
}

/// A line on stderr that the test harness does not capture: a skip must be seen.
fn note(text: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{text}");
}

fn ray_importable() -> bool {
    let gil = Gil::acquire().unwrap();
    let util = gil.import("importlib.util").unwrap();
    !util.call_method("find_spec", ("ray",), ()).unwrap().is_none()
}

/// A fresh directory holding the engines' module (`raymodule.py`).
fn module_dir() -> PathBuf {
    workers::module_dir_with("rs4py-ray", "raymodule.py", MODULE)
}

fn ray_driver(address: &str, options: DriverOptions) -> Driver {
    let driver = Driver::new(DriverOptions {
        backend: Backend::Ray { address: Some(address.to_owned()) },
        init_timeout: Some(PATIENCE),
        worker_output: Some(workers::captured_output()),
        ..options
    })
    .unwrap();
    driver.initialize("{}", &FLOAT_NAMES, &STR_NAMES).unwrap();
    driver
}

fn sleep_options(n_subprocesses: usize) -> DriverOptions {
    DriverOptions {
        engine: "raymodule:SleepEngine".into(),
        python_path: vec![module_dir()],
        n_subprocesses,
        max_tasks: 256,
        worker_output: Some(workers::captured_output()),
        ..Default::default()
    }
}

fn accepted(driver: &Driver, seconds: f64, int_feature: i64) -> i64 {
    let receipt = driver.submit(&[seconds, 0.0], &["a", "b", "c"], int_feature);
    assert_eq!(receipt.status, SubmitStatus::Accepted, "{receipt:?}");
    receipt.key
}

#[track_caller]
fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < PATIENCE, "{what}: not within {PATIENCE:?}");
        thread::sleep(Duration::from_millis(20));
    }
}

/// The pid the answer of a SleepEngine task names: the actor that ran it.
fn ran_on(message: &str) -> u32 {
    message.parse().unwrap_or_else(|_| panic!("not a pid: {message:?}"))
}

#[test]
#[ignore = "needs a Ray cluster: RS4PY_RAY_ADDRESS (.ci/ray runs it with --include-ignored)"]
fn reference_workload_answers_as_with_the_local_pool() {
    let Some((address, _turn)) = cluster("reference_workload_answers_as_with_the_local_pool") else { return };
    let tasks = make_tasks(300, 42);
    let mut reports = Vec::new();
    for backend in [Backend::Local, Backend::Ray { address: Some(address.clone()) }] {
        let driver = Driver::new(DriverOptions {
            n_subprocesses: 2,
            backend: backend.clone(),
            init_timeout: Some(PATIENCE),
            worker_output: Some(workers::captured_output()),
            ..Default::default()
        })
        .unwrap();
        driver.initialize(r#"{"model": "big_model"}"#, &FLOAT_NAMES, &STR_NAMES).unwrap();
        let started = Instant::now();
        let outcomes = workload::run(&driver, &tasks, 8, Mode::Wait);
        let report = Report::new(&tasks, 8, 2, Mode::Wait, started.elapsed(), &outcomes);
        assert_eq!(report.problems, Vec::<String>::new(), "{backend:?}");
        assert_eq!(report.verified, tasks.len());
        for (task, outcome) in tasks.iter().zip(&outcomes) {
            let expected = big_model(&task.float_features, &task.str_features, task.int_feature).unwrap();
            assert_eq!((outcome.status, outcome.value), (ResultStatus::Done, expected));
        }
        driver.finalize();
        reports.push(report);
    }
    assert_eq!(reports[0].digest, reports[1].digest);
    eprintln!("local: {}\nray:   {}", reports[0].to_json(), reports[1].to_json());
}

#[test]
#[ignore = "needs a Ray cluster: RS4PY_RAY_ADDRESS (.ci/ray runs it with --include-ignored)"]
fn killed_actor_costs_exactly_its_running_task() {
    let Some((address, _turn)) = cluster("killed_actor_costs_exactly_its_running_task") else { return };
    let driver = ray_driver(&address, sleep_options(2));
    let pids = driver.worker_pids().unwrap();
    assert_eq!(pids.len(), 2);
    let long = accepted(&driver, 60.0, 7);
    // Past the moment a task could be queued behind the long one (prefetch), the short ones
    // all go to the other actor: the long task's actor is the one that answers none of them.
    thread::sleep(Duration::from_millis(500));
    let short: Vec<(i64, i64)> = (0..20).map(|i| (accepted(&driver, 0.01, 100 + i), 100 + i)).collect();
    let answered: Vec<u32> = short
        .iter()
        .map(|&(key, want)| {
            let result = driver.wait(key, PATIENCE);
            assert_eq!((result.status, result.value), (ResultStatus::Done, want), "{result:?}");
            ran_on(&result.message)
        })
        .collect();
    let victim = *pids.iter().find(|pid| !answered.contains(pid)).expect("one actor is busy with the long task");
    assert!(answered.iter().all(|&pid| pid != victim));
    workers::kill_worker(victim);
    let failed = driver.wait(long, PATIENCE);
    assert_eq!(failed.status, ResultStatus::Failed, "{failed:?}");
    assert!(failed.message.contains(&format!("the Ray actor running this task (pid {victim} ")), "{failed:?}");
    assert!(failed.message.contains("died; it is being replaced"), "{failed:?}");
    eventually("a replacement actor", || {
        let now = driver.worker_pids().unwrap();
        now.len() == 2 && !now.contains(&victim)
    });
    // 100 fresh tasks, half through wait_async on a tokio runtime.
    let fresh: Vec<(i64, i64)> = (0..100).map(|i| (accepted(&driver, 0.0, 1000 + i), 1000 + i)).collect();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    for (i, &(key, want)) in fresh.iter().enumerate() {
        let result = if i % 2 == 0 {
            runtime.block_on(async { tokio::time::timeout(PATIENCE, driver.wait_async(key)).await.unwrap() })
        } else {
            driver.wait(key, PATIENCE)
        };
        assert_eq!((result.status, result.value), (ResultStatus::Done, want), "{result:?}");
    }
    let stats = driver.stats().unwrap();
    assert_eq!((stats.worker_deaths, stats.tasks_held), (1, 0));
    assert!(stats.last_death_cause.contains(&format!("Ray actor pid {victim} ")), "{stats:?}");
    assert_eq!(stats.cluster, format!("the Ray cluster at {address}"));
    assert_eq!(stats.cluster_lost, None);
}

#[test]
#[ignore = "needs a Ray cluster: RS4PY_RAY_ADDRESS (.ci/ray runs it with --include-ignored)"]
fn cancel_and_task_timeout() {
    let Some((address, _turn)) = cluster("cancel_and_task_timeout") else { return };
    let driver = ray_driver(
        &address,
        DriverOptions {
            task_timeout: Some(Duration::from_millis(1500)),
            worker_output: Some(workers::captured_output()),
            ..sleep_options(1)
        },
    );
    let slow = accepted(&driver, 60.0, 1);
    let queued = accepted(&driver, 0.0, 2);
    assert!(driver.cancel(queued));
    let gone = driver.retrieve(queued);
    assert_eq!(gone.status, ResultStatus::Error);
    assert!(gone.message.contains("was cancelled"), "{gone:?}");
    let pid = driver.worker_pids().unwrap()[0];
    let timed_out = driver.wait(slow, PATIENCE);
    assert_eq!(timed_out.status, ResultStatus::Failed);
    assert!(timed_out.message.contains("the task timed out after 1.5 s; its Ray actor (pid"), "{timed_out:?}");
    eventually("the timed-out actor's process to end", || !workers::process_exists(pid));
    let after = driver.wait(accepted(&driver, 0.0, 3), PATIENCE);
    assert_eq!((after.status, after.value), (ResultStatus::Done, 3), "{after:?}");
    assert_ne!(ran_on(&after.message), pid);
    let stats = driver.stats().unwrap();
    assert_eq!((stats.tasks_timed_out, stats.tasks_cancelled), (1, 1));
}

#[test]
#[ignore = "needs a Ray cluster: RS4PY_RAY_ADDRESS (.ci/ray runs it with --include-ignored)"]
fn finalize_leaves_no_actor_behind() {
    let Some((address, _turn)) = cluster("finalize_leaves_no_actor_behind") else { return };
    let driver = ray_driver(&address, sleep_options(2));
    let pids = driver.worker_pids().unwrap();
    let running = accepted(&driver, 30.0, 1);
    driver.finalize();
    let result = driver.retrieve(running);
    assert_eq!(result.status, ResultStatus::Failed);
    assert!(result.message.contains("finalized"), "{result:?}");
    eventually("every actor's process to end", || pids.iter().all(|&pid| !workers::process_exists(pid)));
    assert_eq!(driver.submit(&[0.0, 0.0], &["a", "b", "c"], 1).status, SubmitStatus::Error);
}

#[test]
#[ignore = "needs a Ray cluster: RS4PY_RAY_ADDRESS (.ci/ray runs it with --include-ignored)"]
fn a_local_ray_instance_for_this_process() {
    let Some((_, _turn)) = cluster("a_local_ray_instance_for_this_process") else { return };
    let driver = Driver::new(DriverOptions {
        n_subprocesses: 2,
        backend: Backend::Ray { address: None },
        init_timeout: Some(PATIENCE),
        worker_output: Some(workers::captured_output()),
        ..sleep_options(2)
    })
    .unwrap();
    driver.initialize("{}", &FLOAT_NAMES, &STR_NAMES).unwrap();
    let keys: HashMap<i64, i64> = (0..20).map(|i| (accepted(&driver, 0.0, 50 + i), 50 + i)).collect();
    for (key, want) in keys {
        let result = driver.wait(key, PATIENCE);
        assert_eq!((result.status, result.value), (ResultStatus::Done, want), "{result:?}");
    }
    assert_eq!(driver.stats().unwrap().cluster, "a local Ray instance");
    let pids = driver.worker_pids().unwrap();
    driver.finalize();
    eventually("the local instance's actors to end", || pids.iter().all(|&pid| !workers::process_exists(pid)));
}

#[test]
fn missing_ray_is_a_clear_error() {
    if ray_importable() {
        note("missing_ray_is_a_clear_error: skipped: the build interpreter has ray");
        return;
    }
    let driver = Driver::new(DriverOptions {
        backend: Backend::Ray { address: None },
        worker_output: Some(workers::captured_output()),
        ..Default::default()
    })
    .unwrap();
    let err = driver.initialize("{}", &FLOAT_NAMES, &STR_NAMES).unwrap_err();
    let python = rs4py::build_python().executable;
    match &err {
        Error::Python(exception) => {
            assert_eq!(exception.type_name, "ImportError");
            assert!(exception.message.contains(&format!("{python} -m pip install ray")), "{err}");
        }
        other => panic!("not a Python error: {other:?}"),
    }
}
