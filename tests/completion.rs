//! The completion path end to end: a finished task wakes its Rust waiter directly, `retrieve`
//! and `wait` of a running task answer without the GIL, `cancel` in every state of a task,
//! `result_ttl`, `wait_async` under tokio, and thousands of abandoned tasks that leave
//! nothing held.
//!
//! Answers are checked against `workload::big_model`, computed in Rust.

#[allow(dead_code)]
#[path = "../examples/many_threads/workload.rs"]
mod workload;

#[allow(dead_code)]
#[path = "common/workers.rs"]
mod workers;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::task::{Context, Poll, Waker};
use std::thread;
use std::time::{Duration, Instant};

use rs4py::{Driver, DriverOptions, Gil, ResultStatus, SubmitStatus, TaskFuture, TaskResult};
use workload::{big_model, make_tasks};

#[path = "common/submit.rs"]
mod submit;
#[path = "common/within.rs"]
mod within;
use submit::{CAPACITY_MESSAGE, submit_retrying};
use within::within;

const FLOAT_NAMES: [&str; 2] = ["f0", "f1"];
const STR_NAMES: [&str; 3] = ["name", "sentence", "uuid"];
const NOT_FINISHED_MESSAGE: &str = "The requested task is not finished";

/// Long enough for anything here; needing it is a failure.
const PATIENCE: Duration = Duration::from_secs(60);

/// py4cc's test engines: `SleepEngine` sleeps `float_features[0]` seconds, then answers
/// `(int_feature, "slept")`.
fn engines_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("py4cc/tests/engines")
}

fn sleep_driver(n_subprocesses: usize, max_tasks: usize, result_ttl: Option<Duration>) -> Driver {
    let driver = Driver::new(DriverOptions {
        engine: "py4cc_user_engines:SleepEngine".into(),
        python_path: vec![engines_dir()],
        n_subprocesses,
        max_tasks,
        result_ttl,
        worker_output: Some(workers::captured_output()),
        ..Default::default()
    })
    .unwrap();
    driver.initialize("{}", &FLOAT_NAMES, &STR_NAMES).unwrap();
    driver
}

fn demo_driver(n_subprocesses: usize, max_tasks: usize) -> Driver {
    let driver = Driver::new(DriverOptions {
        n_subprocesses,
        max_tasks,
        worker_output: Some(workers::captured_output()),
        ..Default::default()
    })
    .unwrap();
    driver.initialize("{}", &FLOAT_NAMES, &STR_NAMES).unwrap();
    driver
}

/// Submits a task of the sleep engine; panics unless accepted.
fn submit_sleep(driver: &Driver, seconds: f64, value: i64) -> i64 {
    let receipt = driver.submit(&[seconds, 0.0], &["a", "b", "c"], value);
    assert_eq!(receipt.status, SubmitStatus::Accepted, "{receipt:?}");
    receipt.key
}

#[track_caller]
fn assert_error_containing(result: &TaskResult, text: &str) {
    assert_eq!((result.status, result.value), (ResultStatus::Error, 0), "{result:?}");
    assert!(result.message.contains(text), "{result:?} does not say {text:?}");
}

/// Polls until `done` holds, for at most PATIENCE.
fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < PATIENCE, "{what}: not within {PATIENCE:?}");
        thread::sleep(Duration::from_millis(5));
    }
}

/// Polls a future once with a waker that does nothing.
fn poll_once<F: Future + Unpin>(future: &mut F) -> Poll<F::Output> {
    Pin::new(future).poll(&mut Context::from_waker(Waker::noop()))
}

#[test]
fn a_running_task_answers_not_ready_while_another_thread_holds_the_gil() {
    let driver = Arc::new(sleep_driver(1, 4, None));
    let key = submit_sleep(&driver, 2.0, 5);
    let gil = Gil::acquire().unwrap();
    // If retrieve or wait needed the GIL, they would block until it is released below.
    let asker = {
        let driver = Arc::clone(&driver);
        thread::spawn(move || {
            let mut answers = Vec::new();
            for _ in 0..1000 {
                answers.push(driver.retrieve(key));
            }
            answers.push(driver.wait(key, Duration::from_millis(20)));
            answers
        })
    };
    let start = Instant::now();
    while !asker.is_finished() && start.elapsed() < PATIENCE {
        thread::sleep(Duration::from_millis(1));
    }
    assert!(asker.is_finished(), "retrieve/wait of a running task waited for the GIL");
    drop(gil);
    for answer in asker.join().unwrap() {
        assert_eq!(
            answer,
            TaskResult { status: ResultStatus::NotReady, key, value: 0, message: NOT_FINISHED_MESSAGE.into() }
        );
    }
    let done = driver.wait(key, PATIENCE);
    assert_eq!((done.status, done.value, done.message.as_str()), (ResultStatus::Done, 5, "slept"));
    assert_eq!(driver.held_tasks().unwrap(), 0);
}

#[test]
fn cancel_drops_a_task_in_every_state_and_frees_its_place() {
    // One worker, which holds one task running and (py4cc's prefetch) one more in its pipe.
    let driver = sleep_driver(1, 4, None);
    let running = submit_sleep(&driver, 1.0, 1);
    let prefetched = submit_sleep(&driver, 0.0, 2);
    let queued = submit_sleep(&driver, 0.0, 3);
    let fourth = submit_sleep(&driver, 0.0, 4);
    let full = driver.submit(&[0.0, 0.0], &["a", "b", "c"], 5);
    assert_eq!((full.status, full.message.as_str()), (SubmitStatus::AtCapacity, CAPACITY_MESSAGE));
    thread::sleep(Duration::from_millis(100)); // the first one has started
    assert!(driver.cancel(queued), "queued");
    assert!(driver.cancel(prefetched), "prefetched in the worker's pipe");
    assert!(driver.cancel(running), "running");
    assert_eq!(driver.held_tasks().unwrap(), 1);
    let later = submit_sleep(&driver, 0.0, 6); // places are free at once
    let last = driver.wait(later, PATIENCE);
    assert_eq!((last.status, last.value), (ResultStatus::Done, 6), "{last:?}");
    // `fourth` ran before `later` (one worker, in order): finished, not retrieved.
    assert!(driver.cancel(fourth), "finished");
    for key in [running, prefetched, queued, fourth] {
        assert!(!driver.cancel(key), "cancelled twice");
        assert_error_containing(&driver.retrieve(key), &format!("task {key} was cancelled"));
        assert_error_containing(&driver.wait(key, Duration::from_secs(1)), "was cancelled");
    }
    assert!(!driver.cancel(1_000_000), "never issued");
    assert!(!driver.cancel(-3));
    assert_error_containing(&driver.retrieve(1_000_000), "unknown key");
    assert_eq!(driver.held_tasks().unwrap(), 0);
    // The running task's answer, when it comes, is discarded without a trace.
    thread::sleep(Duration::from_millis(1200));
    assert_eq!(driver.held_tasks().unwrap(), 0);
}

#[test]
fn a_cancel_wakes_the_threads_waiting_for_that_task() {
    let driver = Arc::new(sleep_driver(1, 4, None));
    let key = submit_sleep(&driver, 30.0, 1);
    let barrier = Arc::new(Barrier::new(3));
    let waiters: Vec<_> = (0..2)
        .map(|_| {
            let (driver, barrier) = (Arc::clone(&driver), Arc::clone(&barrier));
            thread::spawn(move || {
                barrier.wait();
                driver.wait(key, PATIENCE)
            })
        })
        .collect();
    barrier.wait();
    thread::sleep(Duration::from_millis(50));
    let answers = within(Duration::from_secs(20), "waiters woken by cancel", move || {
        assert!(driver.cancel(key));
        waiters.into_iter().map(|waiter| waiter.join().unwrap()).collect::<Vec<_>>()
    });
    for answer in answers {
        assert_error_containing(&answer, "was cancelled");
    }
}

#[test]
fn unretrieved_results_expire_after_result_ttl_and_free_capacity() {
    let driver = sleep_driver(1, 3, Some(Duration::from_millis(300)));
    let keys: Vec<i64> = (1..=3).map(|value| submit_sleep(&driver, 0.0, value)).collect();
    assert_eq!(driver.submit(&[0.0, 0.0], &["a", "b", "c"], 9).status, SubmitStatus::AtCapacity);
    eventually("the results expire", || driver.held_tasks().unwrap() == 0);
    for &key in &keys {
        let expired = driver.retrieve(key);
        assert_error_containing(&expired, &format!("task {key} expired"));
        assert!(expired.message.contains("within 0.3 s (result_ttl)"), "{expired:?}");
        assert!(!driver.cancel(key), "gone already");
    }
    let key = submit_sleep(&driver, 0.0, 7);
    let result = driver.wait(key, PATIENCE);
    assert_eq!((result.status, result.value), (ResultStatus::Done, 7));
}

#[test]
fn a_waiter_learns_that_its_result_expired() {
    // A waiter whose deadline came too early for its result, which then expires unretrieved.
    let driver = sleep_driver(1, 3, Some(Duration::from_millis(200)));
    let key = submit_sleep(&driver, 0.3, 1);
    assert_eq!(driver.wait(key, Duration::from_millis(10)).status, ResultStatus::NotReady);
    eventually("the result expires", || driver.held_tasks().unwrap() == 0);
    assert_error_containing(&driver.wait(key, PATIENCE), "expired");
}

#[test]
fn without_result_ttl_abandoned_results_hold_their_places_until_retrieved() {
    let driver = sleep_driver(1, 2, None);
    let keys: Vec<i64> = (1..=2).map(|value| submit_sleep(&driver, 0.0, value)).collect();
    thread::sleep(Duration::from_millis(800));
    let refused = driver.submit(&[0.0, 0.0], &["a", "b", "c"], 3);
    assert_eq!((refused.status, refused.message.as_str()), (SubmitStatus::AtCapacity, CAPACITY_MESSAGE));
    assert_eq!(driver.held_tasks().unwrap(), 2);
    for (key, value) in keys.into_iter().zip(1..) {
        let result = driver.retrieve(key);
        assert_eq!((result.status, result.value), (ResultStatus::Done, value), "{result:?}");
    }
    assert_eq!(driver.submit(&[0.0, 0.0], &["a", "b", "c"], 3).status, SubmitStatus::Accepted);
}

#[test]
fn the_default_result_ttl_is_sixty_seconds() {
    assert_eq!(DriverOptions::default().result_ttl, Some(Duration::from_secs(60)));
}

/// A future's poll, timed: how long each poll held its executor thread.
struct Timed<F> {
    inner: F,
    longest_poll_ns: Arc<AtomicU64>,
}

impl<F: Future + Unpin> Future for Timed<F> {
    type Output = F::Output;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let start = Instant::now();
        let answer = Pin::new(&mut self.inner).poll(cx);
        self.longest_poll_ns.fetch_max(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
        answer
    }
}

#[test]
fn wait_async_under_tokio_keeps_the_executor_free_and_every_answer_is_right() {
    const IN_FLIGHT: usize = 256;
    const PER_REQUESTER: usize = 4;
    let driver = Arc::new(demo_driver(2, IN_FLIGHT));
    let tasks = Arc::new(make_tasks(IN_FLIGHT * PER_REQUESTER, 77));
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_time().build().unwrap();
    let longest_poll_ns = Arc::new(AtomicU64::new(0));
    let (worst_stall, answers) = runtime.block_on(async {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let heartbeat = {
            let stop = Arc::clone(&stop);
            tokio::spawn(async move {
                let mut worst = Duration::ZERO;
                while !stop.load(Ordering::Relaxed) {
                    let start = Instant::now();
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    worst = worst.max(start.elapsed().saturating_sub(Duration::from_millis(1)));
                }
                worst
            })
        };
        let requesters: Vec<_> = (0..IN_FLIGHT)
            .map(|requester| {
                let (driver, tasks, longest) = (Arc::clone(&driver), Arc::clone(&tasks), Arc::clone(&longest_poll_ns));
                tokio::spawn(async move {
                    let mut answers = Vec::new();
                    for index in (requester..tasks.len()).step_by(IN_FLIGHT) {
                        let task = &tasks[index];
                        let receipt = driver.submit(&task.float_features, &task.str_features, task.int_feature);
                        assert_eq!(receipt.status, SubmitStatus::Accepted, "{receipt:?}");
                        let future = driver.wait_async(receipt.key);
                        let result = Timed { inner: future, longest_poll_ns: Arc::clone(&longest) }.await;
                        answers.push((index, result));
                    }
                    answers
                })
            })
            .collect();
        let mut answers = Vec::new();
        for requester in requesters {
            answers.extend(requester.await.unwrap());
        }
        stop.store(true, Ordering::Relaxed);
        (heartbeat.await.unwrap(), answers)
    });
    assert_eq!(answers.len(), tasks.len());
    for (index, result) in answers {
        let task = &tasks[index];
        let expected = big_model(&task.float_features, &task.str_features, task.int_feature).unwrap();
        assert_eq!((result.status, result.value, result.message.as_str()), (ResultStatus::Done, expected, ""));
    }
    println!(
        "wait_async: {} requests, {IN_FLIGHT} in flight on 2 executor threads; worst 1 ms heartbeat stall \
         {worst_stall:?}; longest single poll of a TaskFuture {:?}",
        tasks.len(),
        Duration::from_nanos(longest_poll_ns.load(Ordering::Relaxed))
    );
    assert_eq!(driver.held_tasks().unwrap(), 0);
}

#[test]
fn a_dropped_future_cancels_its_task_and_a_finished_one_does_not() {
    // Cancelled tasks still run to their end on the worker (it is not interrupted): short ones.
    let driver = sleep_driver(1, 4, None);
    let slow = submit_sleep(&driver, 0.5, 1);
    let mut future: TaskFuture<'_> = driver.wait_async(slow);
    assert_eq!(future.key(), slow);
    assert!(poll_once(&mut future).is_pending());
    drop(future);
    assert_error_containing(&driver.retrieve(slow), "was cancelled");
    // Never polled at all: dropped all the same.
    let never_polled = submit_sleep(&driver, 0.5, 2);
    drop(driver.wait_async(never_polled));
    assert_error_containing(&driver.retrieve(never_polled), "was cancelled");
    // Answered: nothing to cancel, and a poll after the answer says so.
    let quick = submit_sleep(&driver, 0.0, 3);
    let mut future = driver.wait_async(quick);
    let start = Instant::now();
    let result = loop {
        if let Poll::Ready(result) = poll_once(&mut future) {
            break result;
        }
        assert!(start.elapsed() < PATIENCE);
        thread::sleep(Duration::from_millis(1));
    };
    assert_eq!((result.status, result.value), (ResultStatus::Done, 3));
    let again = poll_once(&mut future);
    assert!(matches!(again, Poll::Ready(TaskResult { status: ResultStatus::Error, .. })), "{again:?}");
    drop(future);
    assert_error_containing(&driver.retrieve(quick), "unknown key"); // collected, not cancelled
    // Dropped while this thread holds the GIL: the cancel lets it go for the driver's mutex.
    let gil = Gil::acquire().unwrap();
    let held = submit_sleep(&driver, 0.5, 4);
    let mut future = driver.wait_async(held);
    assert!(poll_once(&mut future).is_pending());
    drop(future);
    assert!(Gil::is_held());
    drop(gil);
    assert_error_containing(&driver.retrieve(held), "was cancelled");
    assert_eq!(driver.held_tasks().unwrap(), 0);
}

#[test]
fn a_thread_holding_the_gil_can_wait() {
    let driver = Arc::new(sleep_driver(1, 4, None));
    within(Duration::from_secs(30), "wait with the GIL held", move || {
        let gil = Gil::acquire().unwrap();
        let key = submit_sleep(&driver, 0.05, 8);
        let result = driver.wait(key, PATIENCE);
        assert_eq!((result.status, result.value), (ResultStatus::Done, 8));
        assert!(Gil::is_held());
        assert_eq!(gil.eval("6 * 7").unwrap().extract::<i64>().unwrap(), 42);
    });
}

/// What a thread did with one of its tasks.
#[derive(Clone, Copy, Debug)]
enum Fate {
    /// Submitted and never asked about again: it expires.
    Abandoned,
    /// Waited for briefly (`NotReady`, perhaps), then abandoned.
    GaveUp,
    /// Its future was polled once, then dropped: cancelled, unless it had answered.
    DroppedFuture,
    /// Cancelled at once (likely queued), after a moment (likely running) or later (likely
    /// finished).
    Cancelled(u64),
    /// Retrieved as usual.
    Retrieved,
}

#[test]
fn thousands_of_abandoned_tasks_from_many_threads_leave_nothing_held() {
    const THREADS: usize = 8;
    const PER_THREAD: usize = 300;
    // Long enough that a thread waiting for its answer collects it before it expires even
    // under valgrind, where eight threads queue for the GIL for tenths of a second.
    let ttl = Duration::from_secs(1);
    let driver = Arc::new(sleep_driver(2, 128, Some(ttl)));
    let threads: Vec<_> = (0..THREADS)
        .map(|thread_index| {
            let driver = Arc::clone(&driver);
            thread::spawn(move || {
                let mut kept = Vec::new();
                for round in 0..PER_THREAD {
                    let seed = (thread_index * PER_THREAD + round) as u64;
                    let value = seed as i64 + 1;
                    let sleep = (seed % 4) as f64 * 0.0005;
                    let key = submit_retrying(&driver, &[sleep, 0.0], &["a", "b", "c"], value);
                    let fate = match seed % 7 {
                        0 | 1 => Fate::Abandoned,
                        2 => Fate::GaveUp,
                        3 => Fate::DroppedFuture,
                        4 => Fate::Cancelled(0),
                        5 => Fate::Cancelled(1 + seed % 3),
                        _ => Fate::Retrieved,
                    };
                    let mut answered = None;
                    match fate {
                        Fate::Abandoned => {}
                        Fate::GaveUp => {
                            let result = driver.wait(key, Duration::from_micros(200));
                            if result.status != ResultStatus::NotReady {
                                answered = Some(result);
                            }
                        }
                        Fate::DroppedFuture => {
                            let mut future = driver.wait_async(key);
                            if let Poll::Ready(result) = poll_once(&mut future) {
                                answered = Some(result);
                            }
                        }
                        Fate::Cancelled(pause_ms) => {
                            thread::sleep(Duration::from_millis(pause_ms));
                            let found = driver.cancel(key);
                            // Only a result that expired first (a very slow thread) is gone.
                            if !found {
                                assert_error_containing(&driver.retrieve(key), "expired");
                                continue;
                            }
                        }
                        Fate::Retrieved => answered = Some(driver.wait(key, PATIENCE)),
                    }
                    if let Some(result) = &answered {
                        assert_eq!((result.status, result.value), (ResultStatus::Done, value), "{result:?}");
                    }
                    kept.push((key, fate, answered.is_some()));
                }
                kept
            })
        })
        .collect();
    let fates: Vec<(i64, Fate, bool)> = threads.into_iter().flat_map(|thread| thread.join().unwrap()).collect();
    eventually("nothing held after result_ttl", || driver.held_tasks().unwrap() == 0);
    let mut counts = [0usize; 3];
    for (key, fate, answered) in fates {
        let after = driver.retrieve(key);
        let expected = match fate {
            _ if answered => "unknown key",
            Fate::Abandoned | Fate::GaveUp => "expired",
            Fate::DroppedFuture | Fate::Cancelled(_) => "was cancelled",
            Fate::Retrieved => unreachable!("a retrieved task answered"),
        };
        assert_error_containing(&after, expected);
        counts[match expected {
            "expired" => 0,
            "was cancelled" => 1,
            _ => 2,
        }] += 1;
    }
    println!("abandoned: {} expired, {} cancelled, {} answered", counts[0], counts[1], counts[2]);
    assert!(counts[0] > 500 && counts[1] > 500, "{counts:?}");
    let key = submit_sleep(&driver, 0.0, 42);
    let result = driver.wait(key, PATIENCE);
    assert_eq!((result.status, result.value), (ResultStatus::Done, 42));
    assert_eq!(driver.held_tasks().unwrap(), 0);
}
