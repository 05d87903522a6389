//! A no-op task's round trip (submit, then wait for its answer) through the Rust `Driver`,
//! beside its anchors from one run: py4cc's Driver from Python threads (same Engine, same
//! pool), `multiprocessing.Pool.apply_async`, `concurrent.futures.ProcessPoolExecutor`, and
//! the floor, the same tuple to one child over a `multiprocessing.Pipe` and back
//! (`benches/roundtrip_anchors.py`). 2 worker processes, forkserver; the Engine
//! (`benches/roundtrip_engine.py`) answers `(int_feature, "")`.
//!
//! The whole set is measured `--rounds` times, one after the other (the machine's load
//! drifts): each figure printed is the median of its rounds.
//!
//! With `RS4PY_RAY_ADDRESS` naming a Ray cluster (and `ray` in the build interpreter), the
//! Rust Driver's rows are measured again with `Backend::Ray`, one Engine actor per worker
//! (`python -m py4cc.tests.ray_cluster -- cargo bench --bench roundtrip` starts a loopback
//! cluster for the run); otherwise a note says why there is no Ray row.
//!
//! `cargo bench --bench roundtrip [-- --tasks 2000 --threads 1,16 --workers 2 --rounds 7]`

#[allow(dead_code)]
#[path = "../examples/many_threads/workload.rs"]
mod workload;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::task::{Context, Poll};
use std::thread;
use std::time::{Duration, Instant};

use rs4py::{Backend, Driver, DriverOptions, ResultStatus, StartMethod, SubmitStatus};

const FLOATS: [f64; 2] = [1.5, -2.25];
const STRS: [&str; 3] = ["abc", "de", "f"];

/// One measurement: `threads` client threads (or requests in flight), `tasks` round trips.
#[derive(Clone)]
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
    row(name, threads, elapsed, &mut latencies)
}

fn row(name: &str, threads: usize, elapsed: Duration, latencies: &mut [Duration]) -> Row {
    latencies.sort();
    let at = |p: f64| workload::percentile(latencies, p);
    Row {
        name: name.to_owned(),
        threads,
        tasks_per_s: latencies.len() as f64 / elapsed.as_secs_f64(),
        p50_us: at(50.0).as_secs_f64() * 1e6,
        p99_us: at(99.0).as_secs_f64() * 1e6,
    }
}

/// A future's polls, timed: the longest is how long it held its executor thread.
struct Timed<'a, F> {
    inner: F,
    longest_ns: &'a AtomicU64,
}

impl<F: Future + Unpin> Future for Timed<'_, F> {
    type Output = F::Output;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let began = Instant::now();
        let answer = Pin::new(&mut self.inner).poll(cx);
        self.longest_ns.fetch_max(began.elapsed().as_nanos() as u64, Ordering::Relaxed);
        answer
    }
}

/// `in_flight` requests at a time through `wait_async` on a 2-thread tokio runtime; also
/// answers the longest single poll of a `TaskFuture` (what it blocked its executor thread).
fn measure_async(driver: &Arc<Driver>, in_flight: usize, tasks: usize) -> (Row, Duration) {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).build().expect("tokio");
    let longest_ns = Arc::new(AtomicU64::new(0));
    let per_request = tasks / in_flight;
    let began = Instant::now();
    let mut latencies: Vec<Duration> = runtime.block_on(async {
        let requests: Vec<_> = (0..in_flight)
            .map(|index| {
                let (driver, longest_ns) = (Arc::clone(driver), Arc::clone(&longest_ns));
                tokio::spawn(async move {
                    let mut mine = Vec::with_capacity(per_request);
                    for i in 0..per_request {
                        let n = (index * per_request + i + 1) as i64;
                        let began = Instant::now();
                        let receipt = driver.submit(&FLOATS, &STRS, n);
                        assert_eq!(receipt.status, SubmitStatus::Accepted, "{receipt:?}");
                        let result = Timed { inner: driver.wait_async(receipt.key), longest_ns: &longest_ns }.await;
                        mine.push(began.elapsed());
                        assert_eq!((result.status, result.value), (ResultStatus::Done, n), "{result:?}");
                    }
                    mine
                })
            })
            .collect();
        let mut latencies = Vec::with_capacity(tasks);
        for request in requests {
            latencies.extend(request.await.expect("a request"));
        }
        latencies
    });
    let elapsed = began.elapsed();
    let row = row("Rust Driver (submit, wait_async)", in_flight, elapsed, &mut latencies);
    (row, Duration::from_nanos(longest_ns.load(Ordering::Relaxed)))
}

/// The Rust Driver's rows (and the longest poll of its async row), with the local pool or,
/// given a cluster's address, Ray actors.
fn rust_driver(
    threads: &[usize],
    tasks: usize,
    workers: usize,
    with_async: bool,
    ray: Option<&str>,
) -> (Vec<Row>, Duration) {
    let (name, backend) = match ray {
        None => ("Rust Driver (submit, wait)", Backend::Local),
        Some(address) => ("Rust Driver on Ray (submit, wait)", Backend::Ray { address: Some(address.into()) }),
    };
    let driver = Arc::new(
        Driver::new(DriverOptions {
            engine: "roundtrip_engine:NoopEngine".into(),
            python_path: vec![benches_dir()],
            n_subprocesses: workers,
            start_method: StartMethod::Forkserver,
            max_tasks: 1024,
            backend,
            ..Default::default()
        })
        .expect("driver"),
    );
    driver.initialize("{}", &["f0", "f1"], &["a", "b", "c"]).expect("initialize");
    let one = |n: i64| {
        let receipt = driver.submit(&FLOATS, &STRS, n);
        assert_eq!(receipt.status, SubmitStatus::Accepted, "{receipt:?}");
        let result = driver.wait(receipt.key, Duration::from_secs(60));
        assert_eq!(result.status, ResultStatus::Done, "{result:?}");
        result.value
    };
    let mut rows: Vec<Row> = threads.iter().map(|&count| measure(name, count, tasks, one)).collect();
    let mut longest_poll = Duration::ZERO;
    if with_async {
        let async_row;
        (async_row, longest_poll) = measure_async(&driver, threads.iter().copied().max().unwrap_or(1), tasks);
        rows.push(async_row);
    }
    driver.finalize();
    (rows, longest_poll)
}

/// The median of `values`.
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
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
    let mut tasks = 2000;
    let mut threads = vec![1, 16];
    let mut workers = 2;
    let mut rounds = 7;
    let mut anchors = true;
    let mut with_async = true;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| panic!("{arg} wants a value"));
        match arg.as_str() {
            "--tasks" => tasks = value().parse().expect("--tasks N"),
            "--threads" => threads = value().split(',').map(|t| t.parse().expect("--threads 1,16")).collect(),
            "--workers" => workers = value().parse().expect("--workers N"),
            "--rounds" => rounds = value().parse().expect("--rounds N"),
            "--rust-only" => anchors = false, // for profiling
            "--sync-only" => with_async = false,
            _ => {} // cargo bench passes --bench
        }
    }
    // (name, threads) -> that row of every round, in the order first met.
    let mut order: Vec<(String, usize)> = Vec::new();
    let mut measured: BTreeMap<(String, usize), Vec<Row>> = BTreeMap::new();
    let mut longest_polls = Vec::new();
    let ray = workload::ray_cluster();
    for _ in 0..rounds {
        let (ours, longest_poll) = rust_driver(&threads, tasks, workers, with_async, None);
        longest_polls.push(longest_poll);
        let on_ray = match &ray {
            Some(address) => rust_driver(&threads, tasks, workers, false, Some(address)).0,
            None => Vec::new(),
        };
        let theirs = if anchors { python_anchors(&threads, tasks, workers) } else { Vec::new() };
        for row in ours.into_iter().chain(on_ray).chain(theirs) {
            let id = (row.name.clone(), row.threads);
            if !measured.contains_key(&id) {
                order.push(id.clone());
            }
            measured.entry(id).or_default().push(row);
        }
    }
    let rows: Vec<Row> = order
        .iter()
        .map(|id| {
            let all = &measured[id];
            Row {
                name: id.0.clone(),
                threads: id.1,
                tasks_per_s: median(all.iter().map(|row| row.tasks_per_s).collect()),
                p50_us: median(all.iter().map(|row| row.p50_us).collect()),
                p99_us: median(all.iter().map(|row| row.p99_us).collect()),
            }
        })
        .collect();

    println!(
        "round trip of a no-op task: {tasks} tasks per row, {workers} workers (forkserver), CPython {}, \
         median of {rounds} rounds",
        rs4py::build_python().version.split_whitespace().next().unwrap_or_default()
    );
    println!(
        "{:<36} {:>7} {:>10} {:>9} {:>9} {:>16} {:>16}",
        "", "threads", "tasks/s", "p50 us", "p99 us", "(1) tasks/s / x", "(1) p50 / x"
    );
    let reference =
        |threads: usize| rows.iter().find(|row| row.name == "Rust Driver (submit, wait)" && row.threads == threads);
    for row in &rows {
        let ratios = match reference(row.threads) {
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
    if let Some(address) = &ray {
        println!("(the Ray row: the same Engine as {workers} actors on the Ray cluster at {address})");
    }
    longest_polls.sort();
    println!(
        "wait_async: the longest single poll of a TaskFuture (collecting its answer: the driver's mutex and the \
         GIL) took {:?} (median over rounds; the most {:?})",
        longest_polls[longest_polls.len() / 2],
        longest_polls[longest_polls.len() - 1]
    );
}
