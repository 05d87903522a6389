//! A no-op task's round trip (submit, then wait for its answer) through the Rust `Driver`,
//! beside its anchors from one run: py4cc's Driver from Python threads (same Engine, same
//! pool), `multiprocessing.Pool.apply_async`, `concurrent.futures.ProcessPoolExecutor`, and
//! the floor, the same tuple to one child over a `multiprocessing.Pipe` and back
//! (`benches/roundtrip_anchors.py`). 2 worker processes, forkserver; the Engine
//! (`benches/roundtrip_engine.py`) answers `(int_feature, "")`.
//!
//! `cargo bench --bench roundtrip [-- --tasks N --threads 1,16 --workers 2]`

use std::path::PathBuf;
use std::process::Command;
use std::sync::Barrier;
use std::thread;
use std::time::{Duration, Instant};

use rs4py::{Driver, DriverOptions, ResultStatus, StartMethod, SubmitStatus};

const FLOATS: [f64; 2] = [1.5, -2.25];
const STRS: [&str; 3] = ["abc", "de", "f"];

/// One measurement: `threads` client threads, `tasks` round trips in all.
struct Row {
    name: String,
    threads: usize,
    tasks_per_s: f64,
    p50_us: f64,
    p99_us: f64,
}

fn benches_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("benches")
}

/// The round trips of `threads` threads, each doing its share in a loop with `one(n)`, which
/// must answer `n`.
fn measure(name: &str, threads: usize, tasks: usize, one: impl Fn(i64) -> i64 + Sync) -> Row {
    for n in 1..=200 {
        assert_eq!(one(n), n, "warm-up");
    }
    let per_thread = tasks / threads;
    let start_line = Barrier::new(threads + 1);
    let (elapsed, mut latencies) = thread::scope(|scope| {
        let clients: Vec<_> = (0..threads)
            .map(|index| {
                let (one, start_line) = (&one, &start_line);
                scope.spawn(move || {
                    let mut mine = Vec::with_capacity(per_thread);
                    start_line.wait();
                    for i in 0..per_thread {
                        let n = (index * per_thread + i + 1) as i64;
                        let began = Instant::now();
                        let answer = one(n);
                        mine.push(began.elapsed());
                        assert_eq!(answer, n, "{name}: task {n}");
                    }
                    mine
                })
            })
            .collect();
        start_line.wait();
        let began = Instant::now();
        let latencies: Vec<Duration> = clients.into_iter().flat_map(|client| client.join().unwrap()).collect();
        (began.elapsed(), latencies)
    });
    latencies.sort();
    let at = |per_cent: usize| latencies[(latencies.len() * per_cent / 100).min(latencies.len() - 1)];
    Row {
        name: name.to_owned(),
        threads,
        tasks_per_s: latencies.len() as f64 / elapsed.as_secs_f64(),
        p50_us: at(50).as_secs_f64() * 1e6,
        p99_us: at(99).as_secs_f64() * 1e6,
    }
}

fn rust_driver(threads: &[usize], tasks: usize, workers: usize) -> Vec<Row> {
    let driver = Driver::new(DriverOptions {
        engine: "roundtrip_engine:NoopEngine".into(),
        python_path: vec![benches_dir()],
        n_subprocesses: workers,
        start_method: StartMethod::Forkserver,
        max_tasks: 1024,
        ..Default::default()
    })
    .expect("driver");
    driver.initialize("{}", &["f0", "f1"], &["a", "b", "c"]).expect("initialize");
    let one = |n: i64| {
        let receipt = driver.submit(&FLOATS, &STRS, n);
        assert_eq!(receipt.status, SubmitStatus::Accepted, "{receipt:?}");
        let result = driver.wait(receipt.key, Duration::from_secs(60));
        assert_eq!(result.status, ResultStatus::Done, "{result:?}");
        result.value
    };
    let rows = threads.iter().map(|&count| measure("Rust Driver (submit, wait)", count, tasks, one)).collect();
    driver.finalize();
    rows
}

/// Runs the Python anchors and reads their rows.
fn python_anchors(threads: &[usize], tasks: usize, workers: usize) -> Vec<Row> {
    let threads: Vec<String> = threads.iter().map(usize::to_string).collect();
    let output = Command::new(rs4py::build_python().executable)
        .arg(benches_dir().join("roundtrip_anchors.py"))
        .args(["--threads", &threads.join(","), "--tasks", &tasks.to_string(), "--workers", &workers.to_string()])
        .output()
        .expect("the anchors run");
    assert!(output.status.success(), "the anchors failed:\n{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.strip_prefix("row\t")?.split('\t').collect();
            let number = |at: usize| fields[at].parse::<f64>().expect("a number");
            Some(Row {
                name: fields[0].to_owned(),
                threads: fields[1].parse().expect("threads"),
                tasks_per_s: number(3),
                p50_us: number(4),
                p99_us: number(5),
            })
        })
        .collect()
}

fn main() {
    let mut tasks = 4000;
    let mut threads = vec![1, 16];
    let mut workers = 2;
    let mut anchors = true;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| panic!("{arg} wants a value"));
        match arg.as_str() {
            "--tasks" => tasks = value().parse().expect("--tasks N"),
            "--threads" => threads = value().split(',').map(|t| t.parse().expect("--threads 1,16")).collect(),
            "--workers" => workers = value().parse().expect("--workers N"),
            "--rust-only" => anchors = false, // for profiling

            _ => {} // cargo bench passes --bench
        }
    }
    let ours = rust_driver(&threads, tasks, workers);
    let anchors = if anchors { python_anchors(&threads, tasks, workers) } else { Vec::new() };

    println!(
        "round trip of a no-op task: {tasks} tasks per row, {workers} workers (forkserver), CPython {}",
        rs4py::build_python().version.split_whitespace().next().unwrap_or_default()
    );
    println!(
        "{:<36} {:>7} {:>10} {:>9} {:>9} {:>16} {:>16}",
        "", "threads", "tasks/s", "p50 us", "p99 us", "(1) tasks/s / x", "(1) p50 / x"
    );
    for row in ours.iter().chain(&anchors) {
        let reference = ours.iter().find(|rust| rust.threads == row.threads);
        let ratios = match reference {
            Some(rust) if !std::ptr::eq(rust, row) => format!(
                "{:>16} {:>16}",
                format!("{:.2}x", rust.tasks_per_s / row.tasks_per_s),
                format!("{:.2}x", rust.p50_us / row.p50_us)
            ),
            _ => String::new(),
        };
        println!(
            "{:<36} {:>7} {:>10.0} {:>9.1} {:>9.1} {ratios}",
            row.name, row.threads, row.tasks_per_s, row.p50_us, row.p99_us
        );
    }
}
