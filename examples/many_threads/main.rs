//! The reference workload from Rust: many threads share one `Driver`, submit the seeded task
//! list and check every result against the model computed in Rust.
//!
//! ```text
//! cargo run --release --example many_threads -- [--tasks 1000] [--threads 16] [--workers 0]
//!     [--seed 42] [--start-method forkserver|fork|spawn] [--mode poll|wait]
//!     [--backend local|ray] [--ray-address HOST:PORT]
//! ```
//!
//! `--backend ray` runs the Engines as Ray actors: on the cluster at `--ray-address`, or on a
//! local Ray instance without it (the build interpreter needs the `ray` package).
//!
//! Prints a short summary, then one JSON line with the keys of
//! `python3 -m py4cc.workload.harness`, whose `digest` matches the harness's for the same seed.
//! Exits non-zero on any wrong or missing result.

// The benchmarks use all of it; this example not `ray_cluster`.
#[allow(dead_code)]
mod workload;

use std::process::ExitCode;
use std::str::FromStr;
use std::time::Instant;

use rs4py::{Backend, Driver, DriverOptions, StartMethod};
use workload::{Mode, Report};

struct Args {
    tasks: usize,
    threads: usize,
    workers: usize,
    seed: u64,
    start_method: StartMethod,
    mode: Mode,
    backend: Backend,
}

const USAGE: &str = "usage: many_threads [--tasks N] [--threads N] [--workers N (0 = one per CPU)] [--seed N] \
                     [--start-method fork|forkserver|spawn] [--mode poll|wait] [--backend local|ray] \
                     [--ray-address HOST:PORT]";

/// Bounds that keep a typo from exhausting memory or threads; far above the reference run.
const MAX_TASKS: usize = 10_000_000;
const MAX_THREADS: usize = 4096;

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        tasks: 1000,
        threads: 16,
        workers: 0,
        seed: 42,
        start_method: StartMethod::Forkserver,
        mode: Mode::Poll,
        backend: Backend::Local,
    };
    let mut ray_address = None;
    let mut words = std::env::args().skip(1);
    while let Some(word) = words.next() {
        if word == "--help" || word == "-h" {
            return Err(USAGE.into());
        }
        // Both `--flag value` and `--flag=value`, as the harness's argparse takes them.
        let (flag, value) = match word.split_once('=') {
            Some((flag, value)) => (flag.to_string(), value.to_string()),
            None => {
                let value = words.next().ok_or_else(|| format!("{word} needs a value\n{USAGE}"))?;
                (word, value)
            }
        };
        fn number<T: FromStr>(flag: &str, value: &str) -> Result<T, String> {
            value.parse().map_err(|_| format!("{flag}: {value:?} is not a valid number\n{USAGE}"))
        }
        match flag.as_str() {
            "--tasks" => args.tasks = number(&flag, &value)?,
            "--threads" => args.threads = number(&flag, &value)?,
            // As the harness: 0 or less means one worker per CPU.
            "--workers" => args.workers = number::<i64>(&flag, &value)?.max(0) as usize,
            // As the harness: any integer, taken modulo 2^64 (a negative seed wraps).
            "--seed" => args.seed = number::<i128>(&flag, &value)? as u64,
            "--start-method" => args.start_method = value.parse().map_err(|e| format!("{e}\n{USAGE}"))?,
            "--mode" => {
                args.mode = match value.as_str() {
                    "poll" => Mode::Poll,
                    "wait" => Mode::Wait,
                    _ => return Err(format!("--mode: {value:?} is neither poll nor wait\n{USAGE}")),
                }
            }
            "--backend" => {
                args.backend = match value.as_str() {
                    "local" => Backend::Local,
                    "ray" => Backend::Ray { address: None },
                    _ => return Err(format!("--backend: {value:?} is neither local nor ray\n{USAGE}")),
                }
            }
            "--ray-address" => ray_address = Some(value),
            _ => return Err(format!("unknown flag {flag:?}\n{USAGE}")),
        }
    }
    if let Some(address) = ray_address {
        match &mut args.backend {
            Backend::Ray { address: slot } => *slot = Some(address),
            Backend::Local => return Err(format!("--ray-address needs --backend ray\n{USAGE}")),
        }
    }
    if args.threads == 0 || args.threads > MAX_THREADS {
        return Err(format!("--threads must be from 1 to {MAX_THREADS}\n{USAGE}"));
    }
    if args.tasks > MAX_TASKS {
        return Err(format!("--tasks must be at most {MAX_TASKS}\n{USAGE}"));
    }
    Ok(args)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(report) if report.problems.is_empty() => ExitCode::SUCCESS,
        Ok(_) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("many_threads: {error}");
            if let Some(traceback) = error.traceback() {
                eprintln!("{traceback}");
            }
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<Report, rs4py::Error> {
    let tasks = workload::make_tasks(args.tasks, args.seed);
    let driver = Driver::new(DriverOptions {
        n_subprocesses: args.workers,
        start_method: args.start_method,
        backend: args.backend.clone(),
        ..DriverOptions::default()
    })?;
    driver.initialize(r#"{"model": "big_model"}"#, &["f0", "f1"], &["name", "sentence", "uuid"])?;
    let workers = driver.n_subprocesses()?;

    let started = Instant::now();
    let outcomes = workload::run(&driver, &tasks, args.threads, args.mode);
    let elapsed = started.elapsed();
    driver.finalize();

    let report = Report::new(&tasks, args.threads, workers, args.mode, elapsed, &outcomes);
    println!(
        "rs4py many_threads: {} tasks, {} threads, {} workers ({}), mode {}: {:.3} s, {:.1} tasks/s, \
         p50 {:.2} ms, p99 {:.2} ms, limit {:.3} s (efficiency {:.2}), {} verified, {} errors",
        report.tasks,
        report.threads,
        report.workers,
        match args.backend {
            Backend::Local => args.start_method.to_string(),
            Backend::Ray { .. } => "ray".to_owned(),
        },
        report.mode.as_str(),
        report.seconds,
        report.tasks_per_s(),
        report.p50_ms,
        report.p99_ms,
        report.limit_s,
        report.efficiency(),
        report.verified,
        report.problems.len(),
    );
    for problem in report.problems.iter().take(10) {
        println!("  {problem}");
    }
    println!("{}", report.to_json());
    Ok(report)
}
