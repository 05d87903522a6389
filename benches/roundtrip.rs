//! A no-op task's round trip (submit, then wait for its answer) through the Rust `Driver`,
//! beside its anchors from one run: py4cc's Driver from Python threads (same Engine, same
//! pool), `multiprocessing.Pool.apply_async`, `concurrent.futures.ProcessPoolExecutor`, and
//! the floor, the same tuple to one child over a `multiprocessing.Pipe` and back
//! (`benches/roundtrip_anchors.py`). 2 worker processes, forkserver; the Engine
//! (`benches/roundtrip_engine.py`) answers `(int_feature, "")`.
//!
//! # What each row shows
//!
//! - Wall time: tasks/s, p50 and p99 of a round trip, from the largest task count; the median
//!   of the rounds (the machine's load drifts).
//! - CPU per task, *marginal*: utime + stime of the host process (all its threads) and of its
//!   worker processes, measured around a small and a large run on the same pool, the least of
//!   the rounds for each, and divided as `(large - small) / (large tasks - small tasks)`, so
//!   that start-up, warm-up and thread spawning cancel out. The workers are children of the
//!   forkserver, itself the host's child: they are not in the host's `cutime` until the
//!   forkserver is reaped (at the host's exit), so the bench reads `/proc/<pid>/stat` of every
//!   live descendant of the host before and after a run (none exits during one).
//! - The Rust rows also count, per task and marginally as above: GIL acquisitions by Rust
//!   threads ([`rs4py::gil_acquisitions`]; Python's own threads, the dispatcher and the output
//!   relay, are not counted), and, in a separate pass with `perf stat -e
//!   syscalls:sys_enter_futex,context-switches -p <host>` attached (the host's threads only,
//!   not the workers), futex calls and context switches, in every round, the least taken too.
//! - Ratios side by side: the Rust row's tasks/s and p50 over the row's, and the row's host
//!   and workers' CPU per task over the Pipe floor's (the parent's side and the child's).
//!
//! With `RS4PY_RAY_ADDRESS` naming a Ray cluster (and `ray` in the build interpreter), the
//! Rust Driver's rows are measured again with `Backend::Ray`, one Engine actor per worker
//! (`python -m py4cc.tests.ray_cluster -- cargo bench --bench roundtrip` starts a loopback
//! cluster for the run); otherwise a note says why there is no Ray row. Their anchor, from the
//! same run and cluster: plain Ray actor calls from Python threads,
//! `ray.get(actor.run.remote(...))` against the same Engine as actors; a last block gives the
//! Ray rows' tasks/s as ratios to it. The actors are not the host's descendants, so the Ray
//! rows show no workers' CPU.
//!
//! `cargo bench --bench roundtrip [-- --tasks 3000,20000 --threads 1,16,64 --workers 2
//! --rounds 3 --rust-only --sync-only --no-futex --batching 32,0.5 --ray-only]`; `--batching
//! MAX_SIZE,MAX_WAIT_MS` adds rows of the Rust Driver (local, and on Ray with a cluster) with
//! `DriverOptions::batching` on (the no-op Engine has no `run_batch`: its worker calls `run`
//! per task of a batch); `--ray-only` measures the Ray rows and their anchor alone; `RS4PY_ROUNDTRIP_TASKS=500,3000` sets the
//! counts too (a quick run). One count alone gives the average CPU per task, start-up included.
//! `RS4PY_ROUNDTRIP_SHOW_THREADS=1` prints the host's Python threads and their thread ids, for
//! reading a profiler's per-thread figures.
//!
//! # Baseline (2026-12-03, before issue 17)
//!
//! `cargo bench --bench roundtrip` (3,000 and 20,000 tasks, 3 rounds) on the shared 2-core
//! machine, CPython 3.11.7, loaded by other work (so each figure is the range over four runs),
//! 16 client threads; CPU in µs per task:
//!
//! | row | tasks/s | host CPU | workers' CPU | GIL (Rust) | host futex |
//! |---|---|---|---|---|---|
//! | Rust `Driver` | 6,800–10,300 | 59–112 | 23–35 | 2.00 | 2.7–8.4 |
//! | py4cc from Python threads | 5,700–7,700 | 69–95 | 21–29 | | |
//! | `multiprocessing.Pool` | 4,000–6,400 | 119–278 | 18–37 | | |
//! | `ProcessPoolExecutor` | 3,500–5,700 | 178–250 | 35–76 | | |
//! | Pipe floor (1 thread) | 18,800–28,600 | 11–14 | 11–15 | | |
//!
//! Counting every `take_gil` of the host (a uprobe), a Rust task costs 4.0 GIL acquisitions at
//! 16 threads: 2 by the caller (submit, collect), plus one for each `os.read`/`os.write` py4cc
//! makes and one per dispatcher wake-up.
//!
//! After issue 17 (the host reads the workers' pipes itself, short tasks queue deeper in a
//! busy worker), one run: 16 threads 25,681 tasks/s, host CPU 45.3 µs, 1.55 futex calls per
//! task; the table and what remains are in `docs/benchmarks.md`.

#[allow(dead_code)]
#[path = "../examples/many_threads/workload.rs"]
mod workload;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::task::{Context, Poll};
use std::thread;
use std::time::{Duration, Instant};

use rs4py::{Backend, Batching, Driver, DriverOptions, ResultStatus, StartMethod, SubmitStatus};

const FLOATS: [f64; 2] = [1.5, -2.25];
const STRS: [&str; 3] = ["abc", "de", "f"];
const RUST_SYNC: &str = "Rust Driver (submit, wait)";
const PIPE_FLOOR: &str = "Pipe round trip, one child";
const RAY_ANCHOR: &str = "plain Ray actor calls, Python threads";
const RUST_RAY: &str = "Rust Driver on Ray (submit, wait)";

/// One measurement: `threads` client threads (or requests in flight), `tasks` round trips, and
/// what the host, its workers and (for the Rust rows) the GIL and futexes spent on them.
#[derive(Clone, Default)]
struct Row {
    name: String,
    threads: usize,
    tasks: usize,
    tasks_per_s: f64,
    p50_us: f64,
    p99_us: f64,
    host_ticks: Option<u64>,
    workers_ticks: Option<u64>,
    gil_acquisitions: Option<u64>,
    futex_calls: Option<u64>,
    context_switches: Option<u64>,
}

/// What the host and its descendants had spent so far.
#[derive(Clone, Copy)]
struct Usage {
    host_ticks: u64,
    workers_ticks: u64,
    gil_acquisitions: u64,
}

/// `(utime + stime in clock ticks, parent pid)` from `/proc/<pid>/stat`; the name (field 2)
/// may hold spaces and parentheses, so the fields are read after its last `)`.
fn process_ticks(pid: &str) -> Option<(u64, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let number = |at: usize| fields.get(at)?.parse::<u64>().ok();
    Some((number(11)? + number(12)?, number(1)? as u32))
}

impl Usage {
    /// This process's CPU ticks, its live descendants' (each read while alive), and the GIL
    /// acquisitions so far.
    fn now() -> Usage {
        let host_ticks = process_ticks("self").map_or(0, |(ticks, _)| ticks);
        let mut processes: Vec<(u32, u64, u32)> = Vec::new();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let name = entry.file_name();
            let Some(pid) = name.to_str().and_then(|name| name.parse::<u32>().ok()) else { continue };
            if let Some((ticks, parent)) = process_ticks(&pid.to_string()) {
                processes.push((pid, ticks, parent));
            }
        }
        let (mut workers_ticks, mut pending) = (0, vec![std::process::id()]);
        while let Some(parent) = pending.pop() {
            for &(pid, ticks, _) in processes.iter().filter(|process| process.2 == parent) {
                workers_ticks += ticks;
                pending.push(pid);
            }
        }
        Usage { host_ticks, workers_ticks, gil_acquisitions: rs4py::gil_acquisitions() }
    }

    /// Records into `row` what was spent since `self`.
    fn spent_since(self, row: &mut Row, with_workers: bool) {
        let now = Usage::now();
        row.host_ticks = Some(now.host_ticks - self.host_ticks);
        row.workers_ticks = with_workers.then(|| now.workers_ticks.saturating_sub(self.workers_ticks));
        row.gil_acquisitions = Some(now.gil_acquisitions - self.gil_acquisitions);
    }
}

/// `perf stat` attached to this process's threads (those spawned later included), counting
/// futex calls and context switches until stopped.
struct FutexCount {
    perf: Child,
    output: PathBuf,
}

impl FutexCount {
    /// Attaches perf, or `None` (after saying why) if it cannot run here.
    fn attach() -> Option<FutexCount> {
        let output = std::env::temp_dir().join(format!("rs4py-roundtrip-perf-{}.csv", std::process::id()));
        let perf = Command::new("perf")
            .args(["stat", "-x", ",", "-e", "syscalls:sys_enter_futex,context-switches", "-o"])
            .arg(&output)
            .args(["-p", &std::process::id().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        match perf {
            Ok(perf) => {
                thread::sleep(Duration::from_millis(300)); // perf says nothing once attached
                Some(FutexCount { perf, output })
            }
            Err(error) => {
                println!("(no futex counts: perf does not run: {error})");
                None
            }
        }
    }

    /// Stops perf and answers `(futex calls, context switches)` of the host since it attached.
    fn stop(mut self) -> Option<(u64, u64)> {
        // SAFETY: kill only sends SIGINT (perf's cue to print its counts and exit) to perf,
        // our child, not yet waited for, so its pid is still its own.
        unsafe { libc::kill(self.perf.id() as libc::pid_t, libc::SIGINT) };
        self.perf.wait().ok()?;
        let text = std::fs::read_to_string(&self.output).ok()?;
        let _ = std::fs::remove_file(&self.output);
        let count = |event: &str| {
            text.lines()
                .find(|line| line.split(',').nth(2) == Some(event))
                .and_then(|line| line.split(',').next()?.parse::<u64>().ok())
        };
        let counts = count("syscalls:sys_enter_futex").zip(count("context-switches"));
        if counts.is_none() {
            println!("(no futex counts: perf said {:?})", text.trim());
        }
        counts
    }
}

fn benches_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("benches")
}

/// Warms up with `one`, then measures `threads` threads once per count of `counts`.
fn measure(
    name: &str,
    threads: usize,
    counts: &[usize],
    with_workers: bool,
    one: impl Fn(i64) -> i64 + Sync,
) -> Vec<Row> {
    for n in 1..=200 {
        assert_eq!(one(n), n, "warm-up");
    }
    counts.iter().map(|&tasks| measure_once(name, threads, tasks, with_workers, &one)).collect()
}

/// The round trips of `threads` threads, each doing its share of `tasks` in a loop with
/// `one(n)`, which must answer `n`.
fn measure_once(
    name: &str,
    threads: usize,
    tasks: usize,
    with_workers: bool,
    one: &(impl Fn(i64) -> i64 + Sync),
) -> Row {
    let per_thread = tasks / threads;
    let start_line = Barrier::new(threads + 1);
    let before = Usage::now();
    let (elapsed, mut latencies) = thread::scope(|scope| {
        let clients: Vec<_> = (0..threads)
            .map(|index| {
                let start_line = &start_line;
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
    let mut row = row(name, threads, elapsed, &mut latencies);
    before.spent_since(&mut row, with_workers);
    row
}

fn row(name: &str, threads: usize, elapsed: Duration, latencies: &mut [Duration]) -> Row {
    latencies.sort();
    let at = |p: f64| workload::percentile(latencies, p);
    Row {
        name: name.to_owned(),
        threads,
        tasks: latencies.len(),
        tasks_per_s: latencies.len() as f64 / elapsed.as_secs_f64(),
        p50_us: at(50.0).as_secs_f64() * 1e6,
        p99_us: at(99.0).as_secs_f64() * 1e6,
        ..Row::default()
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

/// `in_flight` requests at a time through `wait_async` on a 2-thread tokio runtime, once per
/// count; also answers the longest single poll of a `TaskFuture` (what it blocked its executor
/// thread).
fn measure_async(driver: &Arc<Driver>, in_flight: usize, counts: &[usize]) -> (Vec<Row>, Duration) {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).build().expect("tokio");
    let longest_ns = Arc::new(AtomicU64::new(0));
    let rows = counts
        .iter()
        .map(|&tasks| {
            let per_request = tasks / in_flight;
            let before = Usage::now();
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
                                let result =
                                    Timed { inner: driver.wait_async(receipt.key), longest_ns: &longest_ns }.await;
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
            let mut row = row("Rust Driver (submit, wait_async)", in_flight, began.elapsed(), &mut latencies);
            before.spent_since(&mut row, true);
            row
        })
        .collect();
    (rows, Duration::from_nanos(longest_ns.load(Ordering::Relaxed)))
}

/// What a run of the Rust Driver measures.
#[derive(Clone, Copy, PartialEq)]
enum Pass {
    /// Wall time, CPU and GIL acquisitions (and the async row).
    Timing { with_async: bool },
    /// Futex calls and context switches, with perf attached (which costs CPU of its own).
    Futex,
}

/// The Rust Driver's rows (and the longest poll of its async row), with the local pool or,
/// given a cluster's address, Ray actors.
fn rust_driver(
    threads: &[usize],
    counts: &[usize],
    workers: usize,
    pass: Pass,
    ray: Option<&str>,
    batching: Option<Batching>,
) -> (Vec<Row>, Duration) {
    let (name, backend) = match (ray, batching) {
        (None, None) => (RUST_SYNC.to_owned(), Backend::Local),
        (None, Some(batching)) => (batching_name("Rust Driver", batching), Backend::Local),
        (Some(address), None) => (RUST_RAY.to_owned(), Backend::Ray { address: Some(address.into()) }),
        (Some(address), Some(batching)) => {
            (batching_name("Rust Driver on Ray", batching), Backend::Ray { address: Some(address.into()) })
        }
    };
    let name = name.as_str();
    let driver = Arc::new(
        Driver::new(DriverOptions {
            engine: "roundtrip_engine:NoopEngine".into(),
            python_path: vec![benches_dir()],
            n_subprocesses: workers,
            start_method: StartMethod::Forkserver,
            max_tasks: 1024,
            backend,
            batching,
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
    if std::env::var_os("RS4PY_ROUNDTRIP_SHOW_THREADS").is_some() {
        show_threads();
    }
    let with_workers = ray.is_none();
    let mut rows = Vec::new();
    let mut longest_poll = Duration::ZERO;
    match pass {
        Pass::Timing { with_async } => {
            for &count in threads {
                rows.extend(measure(name, count, counts, with_workers, one));
            }
            if with_async {
                let async_rows;
                (async_rows, longest_poll) = measure_async(&driver, threads.iter().copied().max().unwrap_or(1), counts);
                rows.extend(async_rows);
            }
        }
        Pass::Futex => {
            for &count in threads {
                measure(name, count, &[], with_workers, one); // the warm-up
                for &tasks in counts {
                    let Some(perf) = FutexCount::attach() else { break };
                    let mut row = measure_once(name, count, tasks, with_workers, &one);
                    (row.futex_calls, row.context_switches) = perf.stop().unzip();
                    rows.push(row);
                }
            }
        }
    }
    driver.finalize();
    (rows, longest_poll)
}

/// The name of the Rust Driver's rows (`driver`: on which backend) with `batching`.
fn batching_name(driver: &str, batching: Batching) -> String {
    format!("{driver}, batching {}/{:.1}ms", batching.max_size, batching.max_wait.as_secs_f64() * 1e3)
}

/// For profiling (`RS4PY_ROUNDTRIP_SHOW_THREADS=1`): prints this process's id and its
/// Python threads' names and thread ids, so that a profiler's per-thread figures can be read
/// (Rust client threads are the other ones, spawned per measurement).
fn show_threads() {
    let gil = rs4py::Gil::acquire().expect("python");
    let threads: Vec<(String, i64)> = gil
        .eval("[(t.name, t.native_id or 0) for t in __import__('threading').enumerate()]")
        .and_then(|threads| threads.extract())
        .expect("threading.enumerate()");
    println!("threads of {}: {threads:?}", std::process::id());
}

/// The median of `values`.
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Runs the Python anchors and reads their rows: the local ones, or, given a cluster's
/// address, plain Ray actor calls.
fn python_anchors(threads: &[usize], counts: &[usize], workers: usize, ray: Option<&str>) -> Vec<Row> {
    let join = |numbers: &[usize]| numbers.iter().map(usize::to_string).collect::<Vec<_>>().join(",");
    let mut anchors = Command::new(rs4py::build_python().executable);
    anchors.arg(benches_dir().join("roundtrip_anchors.py")).args([
        "--threads",
        &join(threads),
        "--tasks",
        &join(counts),
        "--workers",
        &workers.to_string(),
    ]);
    if let Some(address) = ray {
        anchors.args(["--only", "ray", "--ray-address", address]);
    }
    let output = anchors.output().expect("the anchors run");
    assert!(output.status.success(), "the anchors failed:\n{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.strip_prefix("row\t")?.split('\t').collect();
            let number = |at: usize| fields[at].parse::<f64>().expect("a number");
            Some(Row {
                name: fields[0].to_owned(),
                threads: fields[1].parse().expect("threads"),
                tasks: fields[2].parse().expect("tasks"),
                tasks_per_s: number(3),
                p50_us: number(4),
                p99_us: number(5),
                host_ticks: Some(fields[6].parse().expect("host ticks")),
                // Ray's actors are no descendants of the anchors' process: no workers' CPU.
                workers_ticks: (fields[0] != RAY_ANCHOR).then(|| fields[7].parse().expect("workers' ticks")),
                ..Row::default()
            })
        })
        .collect()
}

/// One row of the table: wall time from the largest count (median of the rounds), and per
/// task, marginally, what the host, the workers, the GIL and futexes spent.
struct Summary {
    name: String,
    threads: usize,
    tasks_per_s: f64,
    p50_us: f64,
    p99_us: f64,
    host_us: Option<f64>,
    workers_us: Option<f64>,
    gil: Option<f64>,
    futex: Option<f64>,
    context_switches: Option<f64>,
}

/// Per task, the difference of `measure` between the largest and the smallest count of
/// `rows` (the least of the rounds for each), over the difference of their tasks; with one
/// count, `measure` over its tasks.
fn marginal(rows: &[&Row], measure: impl Fn(&Row) -> Option<u64>) -> Option<f64> {
    let mut least: BTreeMap<usize, u64> = BTreeMap::new();
    for row in rows {
        let value = measure(row)?;
        least.entry(row.tasks).and_modify(|least| *least = (*least).min(value)).or_insert(value);
    }
    let (&large_tasks, &large) = least.last_key_value()?;
    let (small_tasks, small) = if least.len() > 1 { least.first_key_value().map(|(t, v)| (*t, *v))? } else { (0, 0) };
    Some((large as f64 - small as f64) / (large_tasks - small_tasks) as f64)
}

fn summarize(name: &str, threads: usize, rows: &[&Row], futex_rows: &[&Row]) -> Summary {
    let largest = rows.iter().map(|row| row.tasks).max().unwrap_or(0);
    let wall: Vec<&&Row> = rows.iter().filter(|row| row.tasks == largest).collect();
    let tick_us = 1e6 / clock_ticks_per_second();
    Summary {
        name: name.to_owned(),
        threads,
        tasks_per_s: median(wall.iter().map(|row| row.tasks_per_s).collect()),
        p50_us: median(wall.iter().map(|row| row.p50_us).collect()),
        p99_us: median(wall.iter().map(|row| row.p99_us).collect()),
        host_us: marginal(rows, |row| row.host_ticks).map(|ticks| ticks * tick_us),
        workers_us: marginal(rows, |row| row.workers_ticks).map(|ticks| ticks * tick_us),
        gil: marginal(rows, |row| row.gil_acquisitions),
        futex: marginal(futex_rows, |row| row.futex_calls),
        context_switches: marginal(futex_rows, |row| row.context_switches),
    }
}

/// The Rust Driver's Ray rows beside their anchor, plain Ray actor calls from Python threads
/// at the same threads: tasks/s, and the ratio to the anchor's.
fn print_ray_ratios(table: &[Summary]) {
    let rust_rows: Vec<&Summary> = table.iter().filter(|row| row.name.starts_with("Rust Driver on Ray")).collect();
    if rust_rows.is_empty() {
        return;
    }
    println!("Ray, tasks/s beside (3) = {RAY_ANCHOR} (ray.get(actor.run.remote(...))) at the same threads:");
    println!("{:<40} {:>4} {:>8} {:>8} {:>8}", "", "thr", "tasks/s", "(3) t/s", "x/(3)");
    for row in rust_rows {
        let anchor = table.iter().find(|anchor| anchor.name == RAY_ANCHOR && anchor.threads == row.threads);
        let (anchor_rate, ratio) = match anchor {
            Some(anchor) => {
                (format!("{:.0}", anchor.tasks_per_s), format!("{:.2}x", row.tasks_per_s / anchor.tasks_per_s))
            }
            None => ("-".to_owned(), "-".to_owned()),
        };
        println!("{:<40} {:>4} {:>8.0} {:>8} {:>8}", row.name, row.threads, row.tasks_per_s, anchor_rate, ratio);
    }
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf only reads a system constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

fn main() {
    let mut counts: Vec<usize> = match std::env::var("RS4PY_ROUNDTRIP_TASKS") {
        Ok(counts) => counts.split(',').map(|t| t.parse().expect("RS4PY_ROUNDTRIP_TASKS=3000,20000")).collect(),
        Err(_) => vec![3000, 20000],
    };
    let mut threads = vec![1, 16, 64];
    let mut workers = 2;
    let mut rounds = 3;
    let mut anchors = true;
    let mut with_async = true;
    let mut with_futex = true;
    let mut batching = None;
    let mut local = true;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| panic!("{arg} wants a value"));
        match arg.as_str() {
            "--tasks" => counts = value().split(',').map(|t| t.parse().expect("--tasks 3000,20000")).collect(),
            "--threads" => threads = value().split(',').map(|t| t.parse().expect("--threads 1,16")).collect(),
            "--workers" => workers = value().parse().expect("--workers N"),
            "--rounds" => rounds = value().parse().expect("--rounds N"),
            "--rust-only" => anchors = false, // for profiling
            "--sync-only" => with_async = false,
            "--no-futex" => with_futex = false,
            "--ray-only" => local = false, // the Ray rows and their anchor alone
            "--batching" => {
                let text = value();
                let (size, wait_ms) = text.split_once(',').expect("--batching MAX_SIZE,MAX_WAIT_MS");
                batching = Some(Batching {
                    max_size: size.parse().expect("--batching MAX_SIZE,MAX_WAIT_MS"),
                    max_wait: Duration::from_secs_f64(
                        wait_ms.parse::<f64>().expect("--batching MAX_SIZE,MAX_WAIT_MS") / 1e3,
                    ),
                });
            }
            _ => {} // cargo bench passes --bench
        }
    }
    counts.sort();
    let mut rows: Vec<Row> = Vec::new();
    let mut futex_rows: Vec<Row> = Vec::new();
    let mut longest_polls = Vec::new();
    let ray = workload::ray_cluster();
    if !local && ray.is_none() {
        println!("(--ray-only without a Ray cluster: nothing to measure)");
        return;
    }
    let with_async = with_async && local;
    let timing = Pass::Timing { with_async: false };
    for _ in 0..rounds {
        if local {
            let (ours, longest_poll) = rust_driver(&threads, &counts, workers, Pass::Timing { with_async }, None, None);
            longest_polls.push(longest_poll);
            rows.extend(ours);
            if batching.is_some() {
                rows.extend(rust_driver(&threads, &counts, workers, timing, None, batching).0);
            }
        }
        if let Some(address) = &ray {
            rows.extend(rust_driver(&threads, &counts, workers, timing, Some(address), None).0);
            if batching.is_some() {
                rows.extend(rust_driver(&threads, &counts, workers, timing, Some(address), batching).0);
            }
            if anchors {
                rows.extend(python_anchors(&threads, &counts, workers, Some(address)));
            }
        }
        if anchors && local {
            rows.extend(python_anchors(&threads, &counts, workers, None));
        }
        if with_futex && local {
            futex_rows.extend(rust_driver(&threads, &counts, workers, Pass::Futex, None, None).0);
        }
    }

    // (name, threads) in the order first met.
    let mut order: Vec<(String, usize)> = Vec::new();
    for row in &rows {
        if !order.iter().any(|(name, threads)| *name == row.name && *threads == row.threads) {
            order.push((row.name.clone(), row.threads));
        }
    }
    let table: Vec<Summary> = order
        .iter()
        .map(|(name, count)| {
            let same = |row: &&Row| row.name == *name && row.threads == *count;
            let mine: Vec<&Row> = rows.iter().filter(same).collect();
            let futex: Vec<&Row> = futex_rows.iter().filter(same).collect();
            summarize(name, *count, &mine, &futex)
        })
        .collect();

    println!(
        "round trip of a no-op task: {counts:?} tasks per row, {workers} workers (forkserver), CPython {}; wall time \
         from {} tasks, median of {rounds} rounds; CPU per task marginal between the counts, least of the rounds",
        rs4py::build_python().version.split_whitespace().next().unwrap_or_default(),
        counts.last().copied().unwrap_or_default(),
    );
    println!(
        "{:<40} {:>4} {:>8} {:>8} {:>8} {:>7} {:>7} {:>5} {:>6} {:>6} {:>9} {:>9} {:>9} {:>9}",
        "",
        "thr",
        "tasks/s",
        "p50 us",
        "p99 us",
        "host us",
        "wrk us",
        "GIL",
        "futex",
        "ctxsw",
        "(1)/x t/s",
        "(1)/x p50",
        "host/(2)",
        "wrk/(2)"
    );
    let rust = |threads: usize| table.iter().find(|row| row.name == RUST_SYNC && row.threads == threads);
    let floor = table.iter().find(|row| row.name == PIPE_FLOOR);
    let figure = |value: Option<f64>, digits: usize| value.map_or("-".to_owned(), |value| format!("{value:.digits$}"));
    let ratio = |over: Option<f64>, under: Option<f64>| match (over, under) {
        (Some(over), Some(under)) if under > 0.0 => format!("{:.2}x", over / under),
        _ => "-".to_owned(),
    };
    for row in &table {
        let versus_rust = match rust(row.threads) {
            Some(rust) if !std::ptr::eq(rust, row) => {
                (ratio(Some(rust.tasks_per_s), Some(row.tasks_per_s)), ratio(Some(rust.p50_us), Some(row.p50_us)))
            }
            _ => ("".to_owned(), "".to_owned()),
        };
        println!(
            "{:<40} {:>4} {:>8.0} {:>8.1} {:>8.1} {:>7} {:>7} {:>5} {:>6} {:>6} {:>9} {:>9} {:>9} {:>9}",
            row.name,
            row.threads,
            row.tasks_per_s,
            row.p50_us,
            row.p99_us,
            figure(row.host_us, 1),
            figure(row.workers_us, 1),
            figure(row.gil, 2),
            figure(row.futex, 2),
            figure(row.context_switches, 2),
            versus_rust.0,
            versus_rust.1,
            ratio(row.host_us, floor.and_then(|floor| floor.host_us)),
            ratio(row.workers_us, floor.and_then(|floor| floor.workers_us)),
        );
    }
    println!(
        "columns: host us / wrk us = CPU (utime+stime) per task of the host process / its worker processes; GIL = \
         GIL acquisitions by Rust threads per task; futex, ctxsw = the host's futex calls and context switches per \
         task (perf stat, a separate pass); (1) = {RUST_SYNC} at the same threads; (2) = {PIPE_FLOOR}"
    );
    if let Some(address) = &ray {
        println!("(the Ray rows: the same Engine as {workers} actors on the Ray cluster at {address})");
        print_ray_ratios(&table);
    }
    if !longest_polls.is_empty() && with_async {
        longest_polls.sort();
        println!(
            "wait_async: the longest single poll of a TaskFuture (collecting its answer: the driver's mutex and the \
             GIL) took {:?} (median over rounds; the most {:?})",
            longest_polls[longest_polls.len() / 2],
            longest_polls[longest_polls.len() - 1]
        );
    }
}
