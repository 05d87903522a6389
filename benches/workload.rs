//! The reference workload (1000 tasks, 16 threads) from Rust against its anchors, in one run:
//! the same workload in pure Python (`python3 -m py4cc.workload.harness`, same seed, same
//! digest) and the theoretical limit (every task's sleep, summed, divided by the workers).
//!
//! With `RS4PY_RAY_ADDRESS` naming a Ray cluster (and `ray` in the build interpreter), a row
//! for the Rust run with `Backend::Ray` (one Engine actor per worker) joins them, where the
//! cluster has a CPU per worker (`python -m py4cc.tests.ray_cluster -- cargo bench --bench
//! workload -- --workers 2` starts a loopback cluster of two one-CPU nodes for the run).
//!
//! `cargo bench --bench workload [-- --tasks N --threads N --workers N]` (workers default 2 and 8)

#[allow(dead_code)]
#[path = "../examples/many_threads/workload.rs"]
mod workload;

use std::process::Command;
use std::time::Instant;

use rs4py::{Backend, Driver, DriverOptions};
use workload::{Mode, Report};

struct Row {
    seconds: f64,
    tasks_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: usize,
    digest: String,
}

fn rust_run(tasks: usize, threads: usize, workers: usize, mode: Mode) -> Row {
    rust_run_on(tasks, threads, workers, mode, Backend::Local).expect("initialize")
}

/// The Rust run with `backend`; Err if the driver could not start (a cluster too small).
fn rust_run_on(
    tasks: usize,
    threads: usize,
    workers: usize,
    mode: Mode,
    backend: Backend,
) -> Result<Row, rs4py::Error> {
    let task_list = workload::make_tasks(tasks, 42);
    let driver = Driver::new(DriverOptions { n_subprocesses: workers, backend, ..Default::default() }).expect("driver");
    driver.initialize("{}", &["f0", "f1"], &["name", "sentence", "uuid"])?;
    let started = Instant::now();
    let outcomes = workload::run(&driver, &task_list, threads, mode);
    let elapsed = started.elapsed();
    driver.finalize();
    let report = Report::new(&task_list, threads, workers, mode, elapsed, &outcomes);
    Ok(Row {
        seconds: report.seconds,
        tasks_per_s: report.tasks_per_s(),
        p50_ms: report.p50_ms,
        p99_ms: report.p99_ms,
        errors: report.problems.len(),
        digest: report.digest,
    })
}

/// Runs the pure-Python harness and reads the figures from its JSON line.
fn python_run(tasks: usize, threads: usize, workers: usize, mode: Mode) -> Row {
    let output = Command::new(rs4py::build_python().executable)
        .args(["-m", "py4cc.workload.harness", "--seed", "42", "--mode", mode.as_str()])
        .args(["--tasks", &tasks.to_string(), "--threads", &threads.to_string(), "--workers", &workers.to_string()])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("the harness runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    let field = |key: &str| -> String {
        let start = line.find(&format!("\"{key}\": ")).map(|at| at + key.len() + 4).unwrap_or(line.len());
        line[start..].split([',', '}']).next().unwrap_or_default().trim().trim_matches('"').to_string()
    };
    let number = |key: &str| field(key).parse::<f64>().unwrap_or(f64::NAN);
    Row {
        seconds: number("seconds"),
        tasks_per_s: number("tasks_per_s"),
        p50_ms: number("p50_ms"),
        p99_ms: number("p99_ms"),
        errors: field("errors").parse().unwrap_or(usize::MAX),
        digest: field("digest"),
    }
}

fn main() {
    let mut tasks = 1000;
    let mut threads = 16;
    let mut worker_counts = vec![2, 8];
    let args: Vec<String> = std::env::args().skip(1).filter(|arg| arg != "--bench").collect();
    for pair in args.chunks(2) {
        let value = pair.get(1).and_then(|value| value.parse().ok());
        match (pair[0].as_str(), value) {
            ("--tasks", Some(value)) => tasks = value,
            ("--threads", Some(value)) => threads = value,
            ("--workers", Some(value)) => worker_counts = vec![value],
            _ => {}
        }
    }
    let limit_for = |workers: usize| {
        let task_list = workload::make_tasks(tasks, 42);
        let sleep: f64 = task_list
            .iter()
            .filter_map(|t| workload::big_model(&t.float_features, &t.str_features, t.int_feature))
            .map(workload::task_sleep_seconds)
            .sum();
        sleep / workers as f64
    };
    let ray = workload::ray_cluster();
    println!("rs4py workload benchmark: {tasks} tasks, {threads} threads, seed 42, forkserver");
    println!(
        "{:<8} {:<5} {:<18} {:>8} {:>9} {:>8} {:>8} {:>7} {:>10} {:>10}",
        "workers", "mode", "run", "seconds", "tasks/s", "p50 ms", "p99 ms", "errors", "vs python", "vs limit"
    );
    for &workers in &worker_counts {
        let limit = limit_for(workers);
        for mode in [Mode::Poll, Mode::Wait] {
            let rust = rust_run(tasks, threads, workers, mode);
            let python = python_run(tasks, threads, workers, mode);
            assert_eq!(rust.digest, python.digest, "the two runs did different work");
            let on_ray = ray.as_ref().and_then(|address| {
                let backend = Backend::Ray { address: Some(address.clone()) };
                rust_run_on(tasks, threads, workers, mode, backend)
                    .inspect_err(|error| println!("(no Ray row for {workers} workers: {error})"))
                    .ok()
            });
            if let Some(row) = &on_ray {
                assert_eq!(row.digest, python.digest, "the Ray run did different work");
            }
            let mut rows = vec![("rs4py (Rust)", &rust)];
            rows.extend(on_ray.as_ref().map(|row| ("rs4py on Ray", row)));
            rows.push(("py4cc harness", &python));
            for (name, row) in rows {
                println!(
                    "{workers:<8} {:<5} {name:<18} {:>8.3} {:>9.1} {:>8.2} {:>8.2} {:>7} {:>9.2}x {:>9.2}x",
                    mode.as_str(),
                    row.seconds,
                    row.tasks_per_s,
                    row.p50_ms,
                    row.p99_ms,
                    row.errors,
                    python.seconds / row.seconds,
                    limit / row.seconds,
                );
            }
            println!(
                "{workers:<8} {:<5} {:<18} {limit:>8.3} {:>9.1}",
                mode.as_str(),
                "theoretical limit",
                tasks as f64 / limit
            );
        }
    }
    println!(
        "(vs python: harness seconds / these seconds, >1 is faster; vs limit: limit / seconds, 1.0 is the ceiling)"
    );
}
