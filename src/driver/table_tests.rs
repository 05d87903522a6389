//! End to end, inside the crate: the completion table holds exactly the keys py4cc holds,
//! whatever becomes of each task (the table's size is not part of the API).

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Waker};
use std::time::{Duration, Instant};

use super::{Driver, DriverOptions, ResultStatus, SubmitStatus};

#[test]
fn the_table_forgets_every_key_py4cc_forgets() {
    // py4cc's test SleepEngine (sleeps `float_features[0]` s, answers `int_feature`), so that
    // the future dropped below is certainly pending: one worker runs the tasks in order.
    let driver = Driver::new(DriverOptions {
        engine: "py4cc_user_engines:SleepEngine".into(),
        python_path: vec![std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("py4cc/tests/engines")],
        n_subprocesses: 1,
        max_tasks: 8,
        result_ttl: Some(Duration::from_millis(300)),
        ..Default::default()
    })
    .unwrap();
    driver.initialize("{}", &["seconds"], &["unused"]).unwrap();
    let seconds = [0.3, 0.0, 0.0, 0.5, 0.0, 0.0];
    let keys: Vec<i64> = (0..6)
        .map(|n| {
            let receipt = driver.submit(&[seconds[n]], &[""], 100 + n as i64);
            assert_eq!(receipt.status, SubmitStatus::Accepted, "{receipt:?}");
            receipt.key
        })
        .collect();
    assert_eq!((driver.held_tasks().unwrap(), driver.tracked_tasks()), (6, 6));
    // Cancelled while queued or running; a future dropped while pending (which cancels);
    // collected; waited for; abandoned (it expires).
    assert!(driver.cancel(keys[1]));
    assert!(driver.cancel(keys[2]));
    {
        let mut future = pin!(driver.wait_async(keys[3]));
        let polled = future.as_mut().poll(&mut Context::from_waker(Waker::noop()));
        assert!(polled.is_pending(), "task 3 runs after task 0's 0.3 s and sleeps 0.5 s: {polled:?}");
    }
    let done = driver.wait(keys[0], Duration::from_secs(30));
    assert_eq!((done.status, done.value), (ResultStatus::Done, 100));
    let waited = driver.wait(keys[4], Duration::from_secs(30));
    assert_eq!((waited.status, waited.value), (ResultStatus::Done, 104));
    let refused = driver.retrieve(keys[3]);
    assert!(refused.message.contains("was cancelled"), "{refused:?}");
    let start = Instant::now();
    while (driver.held_tasks().unwrap(), driver.tracked_tasks()) != (0, 0) {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{} held, {} tracked",
            driver.held_tasks().unwrap(),
            driver.tracked_tasks()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(driver.retrieve(keys[5]).message.contains("expired"));
}

#[test]
fn combined_submissions_answer_exactly_as_one_by_one() {
    let driver = std::sync::Arc::new(
        Driver::new(DriverOptions { n_subprocesses: 1, max_tasks: 5, ..Default::default() }).unwrap(),
    );
    driver.initialize("{}", &["a"], &["b"]).unwrap();
    let start = std::sync::Arc::new(std::sync::Barrier::new(16));
    let threads: Vec<_> = (0..16)
        .map(|n| {
            let driver = std::sync::Arc::clone(&driver);
            let start = std::sync::Arc::clone(&start);
            std::thread::spawn(move || {
                start.wait();
                let wrong = driver.submit(&[1.0, 2.0], &["x"], n); // two floats: refused whatever the rest
                assert_eq!(wrong.status, SubmitStatus::Error, "{wrong:?}");
                assert!(wrong.message.contains("wrong number of float features"), "{wrong:?}");
                (n, driver.submit(&[30.0], &["x".repeat(70)], n))
            })
        })
        .collect();
    let receipts: Vec<_> = threads.into_iter().map(|thread| thread.join().unwrap()).collect();
    let accepted: Vec<_> = receipts.iter().filter(|(_, receipt)| receipt.status == SubmitStatus::Accepted).collect();
    // Finished tasks count until collected: exactly max_tasks are accepted, whatever the timing.
    assert_eq!(accepted.len(), 5, "{receipts:?}");
    for (_, receipt) in receipts.iter().filter(|(_, receipt)| receipt.status != SubmitStatus::Accepted) {
        assert_eq!(receipt.status, SubmitStatus::AtCapacity, "{receipt:?}");
        assert_eq!(receipt.key, 0);
    }
    let mut keys: Vec<i64> = accepted.iter().map(|(_, receipt)| receipt.key).collect();
    keys.sort_unstable();
    keys.dedup();
    assert_eq!(keys.len(), 5, "distinct keys");
    for (n, receipt) in accepted {
        let result = driver.wait(receipt.key, Duration::from_secs(30));
        assert_eq!((result.status, result.value), (ResultStatus::Done, 100 + n));
    }
    driver.finalize();
    let late = driver.submit(&[1.0], &["x"], 0);
    assert_eq!(late.status, SubmitStatus::Error);
    assert!(late.message.contains("finalized"), "{late:?}");
}
