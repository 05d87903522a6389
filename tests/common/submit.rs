//! Submitting through a full driver. Included by path (not through `common`) by the
//! binaries that use it.

use std::thread;
use std::time::{Duration, Instant};

use rs4py::{Driver, SubmitStatus};

/// What `submit` answers while the driver holds `max_tasks` tasks.
pub const CAPACITY_MESSAGE: &str = "Model engine is working at capacity. Try again later.";

/// Submits, sleeping 1 ms while at capacity (for a minute at most); panics on anything but
/// `Accepted`, and checks the key and message of each answer.
#[track_caller]
pub fn submit_retrying(driver: &Driver, floats: &[f64], strs: &[impl AsRef<str>], int_feature: i64) -> i64 {
    let start = Instant::now();
    loop {
        let receipt = driver.submit(floats, strs, int_feature);
        match receipt.status {
            SubmitStatus::Accepted => {
                assert!(receipt.key > 0, "{receipt:?}");
                assert_eq!(receipt.message, "");
                return receipt.key;
            }
            SubmitStatus::AtCapacity if start.elapsed() < Duration::from_secs(60) => {
                assert_eq!((receipt.key, receipt.message.as_str()), (0, CAPACITY_MESSAGE));
                thread::sleep(Duration::from_millis(1));
            }
            _ => panic!("submit answered {receipt:?}"),
        }
    }
}
