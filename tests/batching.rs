//! Dynamic batching through the Rust Driver: `DriverOptions::batching` reaches py4cc (a bad
//! one is refused at `initialize`), batches run the demo model and a user's `run_batch`, each
//! task keeps its own answer, and `DriverStats` reports the batches.
//!
//! Demo answers are checked against `workload::big_model`, computed in Rust.

#[allow(dead_code)]
#[path = "../examples/many_threads/workload.rs"]
mod workload;

#[allow(dead_code)]
#[path = "common/workers.rs"]
mod workers;

use std::path::PathBuf;
use std::time::Duration;

use rs4py::{Batching, Driver, DriverOptions, Error, ResultStatus, StartMethod, SubmitStatus};
use workload::big_model;

const PATIENCE: Duration = Duration::from_secs(30);
/// A max_wait no test waits out: a batch that forms did so because it was full.
const LONG_WAIT: Duration = Duration::from_secs(60);
const FLOAT_NAMES: [&str; 2] = ["f0", "f1"];
const STR_NAMES: [&str; 1] = ["s"];
const NO_NAMES: [&str; 0] = [];

fn engines_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("py4cc/tests/engines")
}

fn options(engine: &str, batching: Option<Batching>) -> DriverOptions {
    DriverOptions {
        engine: engine.into(),
        python_path: vec![engines_dir()],
        n_subprocesses: 1,
        start_method: StartMethod::Fork,
        worker_output: Some(workers::captured_output()),
        batching,
        ..Default::default()
    }
}

#[test]
fn demo_tasks_run_in_batches_each_with_its_own_answer_and_the_stats_count_them() {
    let batching = Batching { max_size: 4, max_wait: LONG_WAIT };
    let driver = Driver::new(options("py4cc.engine:Engine", Some(batching))).unwrap();
    driver.initialize("{}", &FLOAT_NAMES, &STR_NAMES).unwrap();
    let rows: Vec<(Vec<f64>, Vec<String>, i64)> =
        (0u32..8).map(|i| (vec![f64::from(i) * 1.5, -2.25], vec!["ab".repeat(i as usize)], i64::from(i) + 1)).collect();
    let keys: Vec<_> = rows
        .iter()
        .map(|(floats, strs, n)| {
            let receipt = driver.submit(floats, strs, *n);
            assert_eq!((receipt.status, receipt.message.as_str()), (SubmitStatus::Accepted, ""));
            receipt.key
        })
        .collect();
    for (key, (floats, strs, n)) in keys.into_iter().zip(&rows) {
        let result = driver.wait(key, PATIENCE);
        assert_eq!(
            (result.status, result.value, result.message.as_str()),
            (ResultStatus::Done, big_model(floats, strs, *n).unwrap(), "")
        );
    }
    let stats = driver.stats().unwrap();
    assert_eq!(stats.batches, 2, "{stats:?}");
    assert_eq!((stats.batch_size_mean, stats.batch_size_p50, stats.batch_size_p99), (Some(4.0), Some(4.0), Some(4.0)));
    let (p50, p99) = (stats.queue_wait_p50.unwrap(), stats.queue_wait_p99.unwrap());
    assert!(p50 <= p99, "{p50:?} > {p99:?}");
    assert_eq!((stats.tasks_done, stats.tasks_failed), (8, 0));
    driver.finalize();
}

#[test]
fn a_user_run_batch_answers_each_task_and_an_exception_item_fails_its_task_alone() {
    let batching = Batching { max_size: 3, max_wait: LONG_WAIT };
    let driver = Driver::new(options("py4cc_batch_engines:BatchEngine", Some(batching))).unwrap();
    driver.initialize("{}", &NO_NAMES, &NO_NAMES).unwrap();
    let one = driver.submit_call::<i64>((1i64,), ());
    let bad = driver.submit_call::<i64>(("raise",), ());
    let three = driver.submit_call::<i64>((3i64,), ());
    for receipt in [&one, &bad, &three] {
        assert_eq!(receipt.status, SubmitStatus::Accepted, "{}", receipt.message);
    }
    let answer = driver.wait(one.key, PATIENCE);
    assert_eq!((answer.status, answer.value), (ResultStatus::Done, 2));
    let failed = driver.wait(bad.key, PATIENCE);
    assert_eq!((failed.status, failed.message.as_str()), (ResultStatus::Failed, "ValueError: bad item at 1"));
    let answer = driver.wait(three.key, PATIENCE);
    assert_eq!((answer.status, answer.value), (ResultStatus::Done, 6));
    assert_eq!(driver.stats().unwrap().batches, 1);
    driver.finalize();
}

#[test]
fn a_worker_killed_during_a_batch_fails_that_batch_naming_its_size() {
    let batching = Batching { max_size: 2, max_wait: LONG_WAIT };
    let driver = Driver::new(options("py4cc_batch_engines:PlainEngine", Some(batching))).unwrap();
    driver.initialize("{}", &NO_NAMES, &NO_NAMES).unwrap();
    let slow = driver.submit_call::<i64>(((5i64, 60.0f64),), ());
    let quick = driver.submit_call::<i64>((7i64,), ());
    let deadline = std::time::Instant::now() + PATIENCE;
    while driver.stats().unwrap().tasks_running < 2 {
        assert!(std::time::Instant::now() < deadline, "the batch never started");
        std::thread::sleep(Duration::from_millis(10));
    }
    let pid = driver.worker_pids().unwrap()[0];
    workers::kill_worker(pid);
    for key in [slow.key, quick.key] {
        let result = driver.wait(key, PATIENCE);
        assert_eq!(result.status, ResultStatus::Failed);
        let expected = format!("the worker process (pid {pid}) running this task's batch of 2 tasks died");
        assert!(result.message.contains(&expected), "{}", result.message);
    }
    driver.finalize();
}

#[test]
fn without_batching_no_batch_is_counted_and_a_bad_batching_is_refused_at_initialize() {
    let driver = Driver::new(options("py4cc.engine:Engine", None)).unwrap();
    driver.initialize("{}", &FLOAT_NAMES, &STR_NAMES).unwrap();
    let receipt = driver.submit(&[1.0, 2.0], &["x"], 3);
    assert_eq!(driver.wait(receipt.key, PATIENCE).value, big_model(&[1.0, 2.0], &["x"], 3).unwrap());
    let stats = driver.stats().unwrap();
    assert_eq!((stats.batches, stats.batch_size_mean, stats.queue_wait_p50), (0, None, None));
    driver.finalize();

    let zero = Batching { max_size: 0, max_wait: Duration::from_millis(1) };
    let driver = Driver::new(options("py4cc.engine:Engine", Some(zero))).unwrap();
    match driver.initialize("{}", &FLOAT_NAMES, &STR_NAMES) {
        Err(error @ Error::Python(_)) => {
            assert!(error.to_string().contains("batching: max_size must be an int >= 1, got 0"), "{error}")
        }
        other => panic!("expected py4cc's ValueError, got {other:?}"),
    }
}

#[test]
fn a_caller_whose_answer_came_is_woken_when_the_dispatcher_then_crashes() {
    // With batching the host holds the wakes of the answers it reads until the dispatcher next
    // waits. A dispatcher that crashes instead (a bug: injected here, for this Driver alone,
    // once it has one answer) must still wake them, not leave them to their timeouts.
    let batching = Batching { max_size: 1, max_wait: Duration::from_micros(1234) };
    let driver = Driver::new(options("py4cc.engine:Engine", Some(batching))).unwrap();
    driver.initialize("{}", &FLOAT_NAMES, &STR_NAMES).unwrap();
    rs4py::Gil::acquire()
        .unwrap()
        .run(
            "import py4cc.local.pool as pool_module\n\
             if not hasattr(pool_module.Pool, 'unbroken_dispatch_batches'):\n\
             \x20   pool_module.Pool.unbroken_dispatch_batches = pool_module.Pool.dispatch_batches\n\
             \x20   def dispatch_batches(self, *args):\n\
             \x20       if self.options.batching == (1, 0.001234) and self.counters.tasks_done >= 1:\n\
             \x20           raise RuntimeError('injected: a bug in the dispatcher')\n\
             \x20       return self.unbroken_dispatch_batches(*args)\n\
             \x20   pool_module.Pool.dispatch_batches = dispatch_batches\n",
        )
        .unwrap();
    let receipt = driver.submit(&[1.5, -2.25], &["ab"], 3);
    assert_eq!(receipt.status, SubmitStatus::Accepted, "{receipt:?}");
    let start = std::time::Instant::now();
    let result = driver.wait(receipt.key, PATIENCE);
    let expected = big_model(&[1.5, -2.25], &["ab"], 3).expect("the model answers this row");
    assert_eq!((result.status, result.value), (ResultStatus::Done, expected), "{result:?}");
    assert!(start.elapsed() < PATIENCE / 2, "woken, not timed out: {:?}", start.elapsed());
    let refused = driver.submit(&[1.5, -2.25], &["ab"], 4);
    assert!(refused.message.contains("dispatcher thread crashed"), "the bug is reported: {refused:?}");
}
