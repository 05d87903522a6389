//! The soak run: a million no-op tasks through one `Driver`, with the resident memory (RSS) of
//! the host process and of the worker processes after `initialize`, after a warm-up, and at
//! the end, so that a leak on either side shows as growth.
//!
//! ```text
//! cargo run --release --example soak -- [--tasks 1000000] [--threads 8] [--workers 2]
//!     [--start-method forkserver|fork|spawn]
//! ```
//!
//! Prints its progress, then one JSON line. Exits non-zero if a task fails, answers a wrong
//! value, or a worker had to be replaced. docs/reliability.md holds the latest figures.

use std::process::ExitCode;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use rs4py::{Driver, DriverOptions, ResultStatus, StartMethod, SubmitStatus};

/// The Engine: no work at all, so that the run measures rs4py and py4cc only.
const ENGINE_MODULE: &str = r#"
class NoopEngine:
    def initialize(self, **kwargs):
        pass

    def run(self, float_features, str_features, int_feature):
        return int_feature + 1, ""
"#;

const WARM_UP_TASKS: u64 = 10_000;

struct Args {
    tasks: u64,
    threads: usize,
    workers: usize,
    start_method: StartMethod,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args { tasks: 1_000_000, threads: 8, workers: 2, start_method: StartMethod::Forkserver };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let number = || value.parse::<u64>().map_err(|e| format!("{flag} {value}: {e}"));
        match flag.as_str() {
            "--tasks" => args.tasks = number()?.max(WARM_UP_TASKS + 1),
            "--threads" => args.threads = number()?.clamp(1, 256) as usize,
            "--workers" => args.workers = number()?.clamp(1, 64) as usize,
            "--start-method" => args.start_method = StartMethod::from_str(&value).map_err(|e| e.to_string())?,
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    Ok(args)
}

/// The resident set size of process `pid`, in kB (0 if it cannot be read).
fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// `(host kB, every worker's kB)` now.
fn memory(driver: &Driver) -> (u64, Vec<u64>) {
    let workers = driver.worker_pids().unwrap_or_default();
    (rss_kb(std::process::id()), workers.into_iter().map(rss_kb).collect())
}

/// Runs tasks `from..to` over `threads` threads; counts the wrong answers.
fn run_tasks(driver: &Arc<Driver>, from: u64, to: u64, threads: usize, wrong: &Arc<AtomicU64>) {
    let next = Arc::new(AtomicU64::new(from));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (driver, next, wrong) = (Arc::clone(driver), Arc::clone(&next), Arc::clone(wrong));
            thread::spawn(move || {
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= to {
                        return;
                    }
                    let int_feature = (n % 1_000_000) as i64;
                    let receipt = loop {
                        let receipt = driver.submit(&[0.5], &["soak"], int_feature);
                        if receipt.status != SubmitStatus::AtCapacity {
                            break receipt;
                        }
                        thread::sleep(Duration::from_micros(100));
                    };
                    let result = driver.wait(receipt.key, Duration::from_secs(60));
                    let right = receipt.status == SubmitStatus::Accepted
                        && result.status == ResultStatus::Done
                        && result.value == int_feature + 1;
                    if !right && wrong.fetch_add(1, Ordering::Relaxed) < 5 {
                        eprintln!("task {n}: {receipt:?} {result:?}");
                    }
                }
            })
        })
        .collect();
    for handle in handles {
        handle.join().unwrap();
    }
}

fn json_list(values: &[u64]) -> String {
    format!("[{}]", values.iter().map(u64::to_string).collect::<Vec<_>>().join(", "))
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("soak: {message}");
            return ExitCode::from(2);
        }
    };
    let dir = std::env::temp_dir().join(format!("rs4py-soak-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("soak_engine.py"), ENGINE_MODULE).unwrap();
    let driver = Arc::new(
        Driver::new(DriverOptions {
            engine: "soak_engine:NoopEngine".into(),
            python_path: vec![dir.clone()],
            n_subprocesses: args.workers,
            start_method: args.start_method,
            max_tasks: 4 * args.threads,
            ..Default::default()
        })
        .unwrap(),
    );
    driver.initialize("{}", &["x"], &["s"]).unwrap();
    let initialized = memory(&driver);
    let wrong = Arc::new(AtomicU64::new(0));
    run_tasks(&driver, 0, WARM_UP_TASKS, args.threads, &wrong);
    let warm = memory(&driver);
    let start = Instant::now();
    let step = (args.tasks / 10).max(1);
    let mut done = WARM_UP_TASKS;
    while done < args.tasks {
        let to = (done + step).min(args.tasks);
        run_tasks(&driver, done, to, args.threads, &wrong);
        done = to;
        let (host, workers) = memory(&driver);
        eprintln!(
            "soak: {done} tasks, {:.0} tasks/s, host {host} kB, workers {} kB",
            (done - WARM_UP_TASKS) as f64 / start.elapsed().as_secs_f64(),
            json_list(&workers)
        );
    }
    let seconds = start.elapsed().as_secs_f64();
    let end = memory(&driver);
    let stats = driver.stats().unwrap();
    driver.finalize();
    let _ = std::fs::remove_dir_all(&dir);
    let wrong = wrong.load(Ordering::Relaxed);
    println!(
        "{{\"tasks\": {}, \"threads\": {}, \"workers\": {}, \"start_method\": \"{}\", \"seconds\": {seconds:.1}, \
         \"tasks_per_s\": {:.0}, \"wrong\": {wrong}, \"worker_starts\": {}, \"worker_deaths\": {}, \
         \"host_rss_kb\": {{\"initialized\": {}, \"warm\": {}, \"end\": {}}}, \
         \"worker_rss_kb\": {{\"initialized\": {}, \"warm\": {}, \"end\": {}}}}}",
        args.tasks,
        args.threads,
        args.workers,
        args.start_method,
        (args.tasks - WARM_UP_TASKS) as f64 / seconds,
        stats.worker_starts,
        stats.worker_deaths,
        initialized.0,
        warm.0,
        end.0,
        json_list(&initialized.1),
        json_list(&warm.1),
        json_list(&end.1),
    );
    if wrong == 0 && stats.worker_deaths == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}
