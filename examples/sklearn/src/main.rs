//! A scikit-learn model served from Rust: trains a logistic regression on the iris data that
//! ships inside scikit-learn (`engine.py train`, in a child process), serves it through a
//! `Driver` from many threads with general tasks, and checks every answer against
//! scikit-learn's own `predict` and `predict_proba` on the same rows, computed afterwards in
//! this process through rs4py's embedding layer.
//!
//! ```text
//! rs4py-sklearn [--start-method fork|forkserver|spawn] [--workers 2] [--threads 8]
//!     [--requests 2000] [--batch-rows 2000] [--batch-requests 100]
//!     [--preload compare|none|module|engine] [--model-dir DIR]
//!     [--batch-max-size N --batch-max-wait-ms MS] [--batching-bench REQUESTS]
//! ```
//!
//! `--batch-max-size` / `--batch-max-wait-ms` turn on the Driver's dynamic batching
//! (`DriverOptions::batching`): the Engine's `run_batch` then predicts a whole batch of
//! requests with one `predict`. `--batching-bench REQUESTS` runs the batching benchmark
//! instead: REQUESTS one-row requests from `--threads` threads to `--workers` workers, with
//! batching off and at max_size 8, 32, 64 × max_wait 0.5, 2 ms, every answer checked, then
//! the limit (rows/s of the model predicting batches of 64 rows in a loop in one process, ×
//! workers); it prints a table.
//!
//! Each run measures how long the workers take to be ready, then four workloads: one row
//! per request and batches of rows, each sent as packed little-endian f64 bytes (read with
//! `np.frombuffer`, answered as bytes) and as a list of floats (answered as lists). With
//! `--preload compare` (the default) it runs itself once per preload the start method
//! allows, each in a fresh process (the fork server, and a module already imported, would
//! otherwise carry over from one run to the next), and prints a table of the figures.
//! Exits non-zero if any answer is missing or differs from scikit-learn's.

#[allow(dead_code)]
#[path = "../../many_threads/workload.rs"]
mod workload;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use rs4py::{
    Batching, Bytes, Driver, DriverOptions, Gil, Preload, ResultStatus, StartMethod, SubmitStatus, TaskReceipt,
};
use workload::percentile;

const USAGE: &str = "usage: rs4py-sklearn [--start-method fork|forkserver|spawn] [--workers N] [--threads N] \
                     [--requests N] [--batch-rows N] [--batch-requests N] \
                     [--preload compare|none|module|engine] [--model-dir DIR] \
                     [--batch-max-size N --batch-max-wait-ms MS] [--batching-bench REQUESTS]";

/// Long enough for any request; one that needs it is reported as a failure.
const PATIENCE: Duration = Duration::from_secs(60);

/// The Engine, `engine.py` next to this crate's manifest.
const ENGINE: &str = "engine:IrisEngine";

/// How far a probability of a row the Driver batched may be from the model's for that row's
/// request alone (without batching: bit for bit).
const TOLERANCE: f64 = 1e-12;

/// One BLAS thread per worker: N workers of a numpy model would otherwise each start a
/// thread per core.
const ONE_THREAD: [(&str, &str); 3] =
    [("OMP_NUM_THREADS", "1"), ("OPENBLAS_NUM_THREADS", "1"), ("MKL_NUM_THREADS", "1")];

struct Args {
    start_method: StartMethod,
    workers: usize,
    threads: usize,
    requests: usize,
    batch_rows: usize,
    batch_requests: usize,
    /// None: compare every preload the start method allows, each in a child process.
    preload: Option<Preload>,
    model_dir: Option<PathBuf>,
    batch_max_size: Option<usize>,
    batch_max_wait_ms: Option<f64>,
    /// Run the batching benchmark with this many one-row requests per configuration.
    batching_bench: Option<usize>,
}

impl Args {
    /// The Driver's batching, from `--batch-max-size` and `--batch-max-wait-ms` (0 ms if only
    /// the size is given).
    fn batching(&self) -> Result<Option<Batching>, String> {
        match (self.batch_max_size, self.batch_max_wait_ms) {
            (None, None) => Ok(None),
            (None, Some(_)) => Err(format!("--batch-max-wait-ms needs --batch-max-size\n{USAGE}")),
            (Some(max_size), wait_ms) => {
                let max_wait = Duration::try_from_secs_f64(wait_ms.unwrap_or(0.0) / 1e3)
                    .map_err(|e| format!("--batch-max-wait-ms: {e}\n{USAGE}"))?;
                Ok(Some(Batching { max_size, max_wait }))
            }
        }
    }
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        start_method: StartMethod::Forkserver,
        workers: 2,
        threads: 8,
        requests: 2000,
        batch_rows: 2000,
        batch_requests: 100,
        preload: None,
        model_dir: None,
        batch_max_size: None,
        batch_max_wait_ms: None,
        batching_bench: None,
    };
    let mut words = std::env::args().skip(1);
    while let Some(flag) = words.next() {
        if flag == "--help" || flag == "-h" {
            return Err(USAGE.into());
        }
        let value = words.next().ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        fn number<T: FromStr>(flag: &str, value: &str) -> Result<T, String> {
            value.parse().map_err(|_| format!("{flag}: {value:?} is not a valid number\n{USAGE}"))
        }
        match flag.as_str() {
            "--start-method" => args.start_method = value.parse().map_err(|e| format!("{e}\n{USAGE}"))?,
            "--workers" => args.workers = number(&flag, &value)?,
            "--threads" => args.threads = number(&flag, &value)?,
            "--requests" => args.requests = number(&flag, &value)?,
            "--batch-rows" => args.batch_rows = number(&flag, &value)?,
            "--batch-requests" => args.batch_requests = number(&flag, &value)?,
            "--preload" => {
                args.preload = match value.as_str() {
                    "compare" => None,
                    "none" => Some(Preload::Nothing),
                    "module" => Some(Preload::Module),
                    "engine" => Some(Preload::Engine),
                    _ => return Err(format!("--preload: {value:?} is not compare, none, module or engine\n{USAGE}")),
                }
            }
            "--model-dir" => args.model_dir = Some(PathBuf::from(value)),
            "--batch-max-size" => args.batch_max_size = Some(number(&flag, &value)?),
            "--batch-max-wait-ms" => args.batch_max_wait_ms = Some(number(&flag, &value)?),
            "--batching-bench" => args.batching_bench = Some(number(&flag, &value)?),
            _ => return Err(format!("unknown flag {flag:?}\n{USAGE}")),
        }
    }
    if args.workers == 0 || args.threads == 0 || args.batch_rows == 0 {
        return Err(format!("--workers, --threads and --batch-rows must be at least 1\n{USAGE}"));
    }
    args.batching()?; // checked here, once
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
    let outcome = match (args.batching_bench, args.preload) {
        (Some(requests), _) => batching_bench(&args, requests),
        (None, Some(preload)) => serve_and_check(&args, preload).map(|_| ()),
        (None, None) => compare(&args),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("rs4py-sklearn: {message}");
            ExitCode::FAILURE
        }
    }
}

fn example_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The `--preload` name of `preload` (the names the argument parser reads).
fn preload_name(preload: Preload) -> &'static str {
    match preload {
        Preload::Module => "module",
        Preload::Engine => "engine",
        _ => "none",
    }
}

/// Trains the model into `dir` with the interpreter rs4py is built against.
fn train(dir: &Path) -> Result<(), String> {
    let python = rs4py::build_python().executable;
    let status = Command::new(python)
        .arg(example_dir().join("engine.py"))
        .arg("train")
        .arg(dir)
        .status()
        .map_err(|e| format!("could not run {python}: {e}"))?;
    if !status.success() {
        return Err(format!(
            "training failed ({status}): does {python} have numpy, scikit-learn and joblib? See examples/sklearn/README.md"
        ));
    }
    Ok(())
}

/// The model's directory: `--model-dir`, else a fresh one, trained into here.
fn model_dir(args: &Args) -> Result<PathBuf, String> {
    if let Some(dir) = &args.model_dir {
        if !dir.join("iris.joblib").exists() {
            train(dir)?;
        }
        return Ok(dir.clone());
    }
    let dir = std::env::temp_dir().join(format!("rs4py-sklearn-{}", std::process::id()));
    train(&dir)?;
    Ok(dir)
}

/// Runs this program once per preload (each in a process of its own), then prints a table.
fn compare(args: &Args) -> Result<(), String> {
    let dir = model_dir(args)?;
    let preloads: &[Preload] = match args.start_method {
        StartMethod::Fork => &[Preload::Nothing, Preload::Module, Preload::Engine],
        StartMethod::Forkserver => &[Preload::Nothing, Preload::Module],
        StartMethod::Spawn => &[Preload::Nothing],
    };
    let mut rows = Vec::new();
    for &preload in preloads {
        let mut command = Command::new(std::env::current_exe().map_err(|e| e.to_string())?);
        command.args(std::env::args().skip(1)).args(["--preload", preload_name(preload)]).arg("--model-dir").arg(&dir);
        // The fork server is a fresh interpreter that knows PYTHONPATH but not
        // DriverOptions::python_path: with forkserver, preloading engine.py needs it there.
        let mut path = std::env::split_paths(&std::env::var_os("PYTHONPATH").unwrap_or_default()).collect::<Vec<_>>();
        path.insert(0, example_dir().to_path_buf());
        command.env("PYTHONPATH", std::env::join_paths(path).map_err(|e| e.to_string())?);
        // worker_env reaches a worker before it imports numpy, but a preloaded module was
        // imported by the service itself, whose BLAS the forked workers inherit: the service
        // gets the same limit from the start (an environment set here, for the new process,
        // not with set_var behind running threads).
        command.envs(ONE_THREAD);
        let output = command.stderr(Stdio::inherit()).output().map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&output.stdout);
        print!("{text}");
        if !output.status.success() {
            return Err(format!("the run with preload {} failed ({})", preload_name(preload), output.status));
        }
        let figures = text.lines().find_map(|line| line.strip_prefix("figures: ")).ok_or("a run printed no figures")?;
        rows.push((preload, figures.to_owned()));
    }
    if args.model_dir.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    println!(
        "\n| start method | preload | workers ready (s) | replaced (s) | PSS, all processes (MiB) | \
         1 row, bytes: req/s, p50, p99 (ms) | 1 row, list | {} rows, bytes | {} rows, list |",
        args.batch_rows, args.batch_rows
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for (preload, figures) in rows {
        println!("| {} | {} | {} |", args.start_method, preload_name(preload), figures);
    }
    Ok(())
}

/// How a request carries its rows, and how it is answered.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Form {
    /// Packed little-endian f64 in, bytes out.
    Bytes,
    /// A list of floats in, lists out.
    List,
}

/// What the Engine answered for one request: a label and every class's probability per row.
#[derive(Default)]
struct Answer {
    labels: Vec<i64>,
    probabilities: Vec<f64>,
}

/// One workload's requests (rows, flattened) and what each was answered, with its latency.
struct Phase {
    name: String,
    requests: Arc<Vec<Vec<f64>>>,
    answers: Vec<Answer>,
    latencies: Vec<Duration>,
    elapsed: Duration,
}

impl Phase {
    fn figures(&self) -> (f64, f64, f64) {
        let mut sorted = self.latencies.clone();
        sorted.sort();
        let at = |p: f64| percentile(&sorted, p).as_secs_f64() * 1e3;
        (self.requests.len() as f64 / self.elapsed.as_secs_f64(), at(50.0), at(99.0))
    }
}

fn pack(values: &[f64]) -> Vec<u8> {
    values.iter().flat_map(|value| value.to_le_bytes()).collect()
}

fn unpack<T, const N: usize>(bytes: &[u8], from: fn([u8; N]) -> T) -> Result<Vec<T>, String> {
    if bytes.len() % N != 0 {
        return Err(format!("{} bytes are not a whole number of {N}-byte values", bytes.len()));
    }
    Ok(bytes.chunks_exact(N).map(|chunk| from(chunk.try_into().expect("N bytes"))).collect())
}

/// Submits until the driver has room (a full driver answers at once: try again shortly).
fn submit_retrying<K>(submit: impl Fn() -> TaskReceipt<K>) -> Result<K, String> {
    loop {
        let receipt = submit();
        match receipt.status {
            SubmitStatus::Accepted => return Ok(receipt.key),
            SubmitStatus::AtCapacity => thread::sleep(Duration::from_micros(200)),
            _ => return Err(receipt.message), // SubmitStatus::Error
        }
    }
}

/// One request: its rows in, the Engine's answer back.
fn ask(driver: &Driver, rows: &[f64], form: Form) -> Result<Answer, String> {
    match form {
        Form::Bytes => {
            let packed = pack(rows);
            let key = submit_retrying(|| driver.submit_call::<(Bytes, Bytes)>((), [("packed", Bytes(&packed[..]))]))?;
            let result = driver.wait(key, PATIENCE);
            if result.status != ResultStatus::Done {
                return Err(format!("{:?}: {}", result.status, result.message));
            }
            let (labels, probabilities) = result.value;
            Ok(Answer {
                labels: unpack(&labels.0, i64::from_le_bytes)?,
                probabilities: unpack(&probabilities.0, f64::from_le_bytes)?,
            })
        }
        Form::List => {
            let key = submit_retrying(|| driver.submit_call::<(Vec<i64>, Vec<f64>)>((), [("rows", rows)]))?;
            let result = driver.wait(key, PATIENCE);
            if result.status != ResultStatus::Done {
                return Err(format!("{:?}: {}", result.status, result.message));
            }
            let (labels, probabilities) = result.value;
            Ok(Answer { labels, probabilities })
        }
    }
}

/// Sends every request from `threads` threads (each takes the next request not yet sent).
fn run_phase(
    driver: &Arc<Driver>,
    name: &str,
    requests: Vec<Vec<f64>>,
    form: Form,
    threads: usize,
) -> Result<Phase, String> {
    let requests = Arc::new(requests);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let (driver, requests, next) = (Arc::clone(driver), Arc::clone(&requests), Arc::clone(&next));
            thread::spawn(move || -> Result<Vec<(usize, Answer, Duration)>, String> {
                let mut done = Vec::new();
                loop {
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    let Some(rows) = requests.get(index) else { return Ok(done) };
                    let asked = Instant::now();
                    let answer = ask(&driver, rows, form).map_err(|e| format!("request {index}: {e}"))?;
                    done.push((index, answer, asked.elapsed()));
                }
            })
        })
        .collect();
    let mut answers: Vec<Answer> = (0..requests.len()).map(|_| Answer::default()).collect();
    let mut latencies = Vec::with_capacity(requests.len());
    for worker in workers {
        for (index, answer, latency) in worker.join().map_err(|_| "a thread panicked")?? {
            answers[index] = answer;
            latencies.push(latency);
        }
    }
    let elapsed = started.elapsed();
    Ok(Phase { name: name.to_owned(), requests, answers, latencies, elapsed })
}

/// The iris rows written by the training, with the feature names (the file's header).
fn read_rows(dir: &Path) -> Result<(Vec<String>, Vec<Vec<f64>>), String> {
    let text = std::fs::read_to_string(dir.join("rows.txt")).map_err(|e| format!("rows.txt: {e}"))?;
    let mut lines = text.lines();
    let header = lines.next().ok_or("rows.txt is empty")?;
    let features = header.split('|').next().unwrap_or_default().split('\t').map(str::to_owned).collect();
    let rows = lines
        .map(|line| line.split(' ').map(|x| x.parse::<f64>().map_err(|e| format!("rows.txt: {x:?}: {e}"))).collect())
        .collect::<Result<_, _>>()?;
    Ok((features, rows))
}

/// `count` requests of `per_request` rows each: the data's rows in turn, each moved a little
/// (deterministically) so that the requests differ and some land near the classes' borders.
fn make_requests(data: &[Vec<f64>], count: usize, per_request: usize, salt: usize) -> Vec<Vec<f64>> {
    (0..count)
        .map(|request| {
            (0..per_request)
                .flat_map(|r| {
                    let n = request * per_request + r + salt;
                    data[n % data.len()]
                        .iter()
                        .enumerate()
                        .map(move |(i, x)| x + ((n * 7919 + i * 104_729) % 21) as f64 * 0.02 - 0.2)
                })
                .collect()
        })
        .collect()
}

/// The proportional set size (a shared page counted once among the processes sharing it)
/// of this process and every process it started (workers, fork server, resource tracker),
/// from /proc; None where there is no /proc. Preloading moves memory from the workers to
/// this process and shares it, so only the total compares.
fn service_pss_mib() -> Option<f64> {
    fn pss_kib(pid: u32) -> Option<u64> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
        let line = text.lines().find(|line| line.starts_with("Pss:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }
    fn children(pid: u32) -> Vec<u32> {
        let Ok(threads) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return Vec::new() };
        threads
            .flatten()
            .filter_map(|thread| std::fs::read_to_string(thread.path().join("children")).ok())
            .flat_map(|text| text.split_whitespace().filter_map(|child| child.parse().ok()).collect::<Vec<u32>>())
            .collect()
    }
    let mut pending = vec![std::process::id()];
    let mut total_kib = 0;
    while let Some(pid) = pending.pop() {
        total_kib += pss_kib(pid)?;
        pending.extend(children(pid));
    }
    Some(total_kib as f64 / 1024.0)
}

/// Kills every worker, then times how long the driver takes to answer again, one request per
/// worker: how fast replacement workers start (after a crash, or a task past its timeout).
fn replacement_seconds(driver: &Driver, rows: &[f64]) -> Result<f64, String> {
    let old = driver.worker_pids().map_err(|e| e.to_string())?;
    let killed = Instant::now();
    for pid in &old {
        Command::new("kill").args(["-KILL", &pid.to_string()]).status().map_err(|e| format!("kill {pid}: {e}"))?;
    }
    // Requests sent before the driver notices the exits could go to a dead worker (and fail
    // with it): wait until it has replaced them all (the new ones may still be starting).
    loop {
        let pids = driver.worker_pids().map_err(|e| e.to_string())?;
        if pids.len() == old.len() && pids.iter().all(|pid| !old.contains(pid)) {
            break;
        }
        if killed.elapsed() > PATIENCE {
            return Err("the killed workers were not replaced".into());
        }
        thread::sleep(Duration::from_millis(1));
    }
    let keys = (0..old.len())
        .map(|_| submit_retrying(|| driver.submit_call::<(Vec<i64>, Vec<f64>)>((), [("rows", rows)])))
        .collect::<Result<Vec<_>, String>>()?;
    for key in keys {
        let result = driver.wait(key, PATIENCE);
        if result.status != ResultStatus::Done {
            return Err(format!("after the replacement: {:?}: {}", result.status, result.message));
        }
    }
    Ok(killed.elapsed().as_secs_f64())
}

/// One preload: start the workers (timed), run the four workloads, replace the workers
/// (timed), check every answer.
fn serve_and_check(args: &Args, preload: Preload) -> Result<(), String> {
    let dir = model_dir(args)?;
    let model_path = dir.join("iris.joblib");
    let (features, data) = read_rows(&dir)?;
    let driver = Arc::new(
        Driver::new(DriverOptions {
            engine: ENGINE.into(),
            python_path: vec![example_dir().to_path_buf()],
            n_subprocesses: args.workers,
            start_method: args.start_method,
            max_tasks: 2 * args.threads,
            init_timeout: Some(Duration::from_secs(300)),
            task_timeout: Some(PATIENCE),
            worker_env: ONE_THREAD.iter().map(|(name, value)| (name.to_string(), value.to_string())).collect(),
            preload,
            batching: args.batching()?,
            ..Default::default()
        })
        .map_err(|e| e.to_string())?,
    );
    let started = Instant::now();
    let no_names: [&str; 0] = [];
    driver
        .initialize_with("{}", &features, &no_names, [("model_path", model_path.to_string_lossy().as_ref())])
        .map_err(|e| format!("initialize: {e}"))?;
    let ready = started.elapsed().as_secs_f64();
    let pss = service_pss_mib();

    let n_features = features.len();
    let phases = [
        ("1 row, bytes", make_requests(&data, args.requests, 1, 0), Form::Bytes),
        ("1 row, list", make_requests(&data, args.requests, 1, 1), Form::List),
        ("batch, bytes", make_requests(&data, args.batch_requests, args.batch_rows, 2), Form::Bytes),
        ("batch, list", make_requests(&data, args.batch_requests, args.batch_rows, 3), Form::List),
    ]
    .into_iter()
    .map(|(name, requests, form)| run_phase(&driver, name, requests, form, args.threads))
    .collect::<Result<Vec<Phase>, String>>()?;
    let replaced = replacement_seconds(&driver, &data[0])?;
    driver.finalize();

    println!(
        "{} with preload {}: {} workers ready in {ready:.2} s{}; all killed, answering again after {replaced:.2} s",
        args.start_method,
        preload_name(preload),
        args.workers,
        pss.map(|mib| format!(" (PSS with this process {mib:.0} MiB)")).unwrap_or_default()
    );
    let pss = pss.map(|mib| format!("{mib:.0}")).unwrap_or_else(|| "-".into());
    let mut figures = vec![format!("{ready:.2}"), format!("{replaced:.2}"), pss];
    for phase in &phases {
        let (per_second, p50, p99) = phase.figures();
        let rows = phase.requests[0].len() / n_features;
        println!(
            "  {:<13} {} requests of {rows} rows from {} threads: {per_second:.0} requests/s, p50 {p50:.2} ms, p99 {p99:.2} ms",
            phase.name,
            phase.requests.len(),
            args.threads
        );
        figures.push(format!("{per_second:.0}, {p50:.2}, {p99:.2}"));
    }
    let checked = if args.batching()?.is_some() {
        let (checked, largest) = check_within(&model_path, n_features, &phases, TOLERANCE)?;
        println!(
            "  checked {checked} rows: labels identical to scikit-learn's predict, probabilities within {TOLERANCE:e} \
             of its predict_proba (largest difference {largest:e}; the Driver's batches stack requests' rows)"
        );
        checked
    } else {
        check(&model_path, n_features, &phases)?
    };
    if args.batching()?.is_none() {
        println!(
            "  checked {checked} rows: labels and probabilities identical to scikit-learn's predict and predict_proba"
        );
    }
    println!("figures: {}", figures.join(" | "));
    if args.model_dir.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(())
}

/// Compares every answer with scikit-learn's own prediction for the same rows, computed
/// here (the Driver finalized) on the same batches; returns the number of rows checked.
fn check(model_path: &Path, n_features: usize, phases: &[Phase]) -> Result<usize, String> {
    check_within(model_path, n_features, phases, 0.0).map(|(rows, _)| rows)
}

/// [`check`], the labels identical and each probability within `tolerance` of
/// scikit-learn's (0.0: bit for bit); also answers the largest difference seen. Rows that
/// the Driver's batching stacked with other requests' rows may differ in the last bits: a
/// BLAS sums a matrix product in its own order for a taller matrix.
fn check_within(
    model_path: &Path,
    n_features: usize,
    phases: &[Phase],
    tolerance: f64,
) -> Result<(usize, f64), String> {
    let mut largest_difference = 0.0f64;
    let failed = |e: rs4py::Error| format!("checking with scikit-learn here: {e}");
    let gil = Gil::acquire().map_err(failed)?;
    let numpy = gil.import("numpy").map_err(failed)?;
    let model = gil
        .import("joblib")
        .and_then(|joblib| joblib.call_method("load", (model_path.to_string_lossy().as_ref(),), ()))
        .map_err(failed)?;
    let mut rows_checked = 0;
    for phase in phases {
        for (index, (rows, answer)) in phase.requests.iter().zip(&phase.answers).enumerate() {
            let features = numpy
                .call_method("frombuffer", (Bytes(pack(rows)),), [("dtype", "<f8")])
                .and_then(|array| array.call_method("reshape", (-1, n_features as i64), ()))
                .map_err(failed)?;
            let labels: Vec<i64> = model
                .call_method("predict", (&features,), ())
                .and_then(|labels| labels.call_method("tolist", (), ())?.extract())
                .map_err(failed)?;
            let probabilities: Vec<f64> = model
                .call_method("predict_proba", (&features,), ())
                .and_then(|p| p.call_method("ravel", (), ())?.call_method("tolist", (), ())?.extract())
                .map_err(failed)?;
            if answer.labels != labels {
                return Err(format!(
                    "{}, request {index}: labels {:?}, scikit-learn says {labels:?}",
                    phase.name, answer.labels
                ));
            }
            // Bit for bit (tolerance 0): the same model on the same rows, batched the same way.
            let same = answer.probabilities.len() == probabilities.len()
                && answer.probabilities.iter().zip(&probabilities).all(|(got, want)| {
                    let difference = (got - want).abs();
                    largest_difference = largest_difference.max(difference);
                    got.to_bits() == want.to_bits() || difference <= tolerance
                });
            if !same {
                return Err(format!(
                    "{}, request {index}: probabilities differ from scikit-learn's (tolerance {tolerance:e})",
                    phase.name
                ));
            }
            rows_checked += labels.len();
        }
    }
    Ok((rows_checked, largest_difference))
}

/// The batching benchmark: `requests` one-row requests (lists of floats) from `--threads`
/// threads to `--workers` workers, with batching off and on (max_size 8, 32, 64 × max_wait
/// 0.5, 2 ms), each configuration with a fresh Driver and every answer checked against the
/// model's own prediction of that row; then the limit, rows/s of the model predicting
/// batches of 64 rows in a loop in one process, × workers. Prints a markdown table.
fn batching_bench(args: &Args, requests: usize) -> Result<(), String> {
    let dir = model_dir(args)?;
    let model_path = dir.join("iris.joblib");
    let (features, data) = read_rows(&dir)?;
    let mut configurations = vec![None];
    for max_size in [8, 32, 64] {
        for wait_ms in [0.5, 2.0] {
            configurations.push(Some((max_size, wait_ms)));
        }
    }
    println!(
        "{requests} one-row requests from {} threads, {} workers, start method {}:\n",
        args.threads, args.workers, args.start_method
    );
    let mut largest_difference = 0.0f64;
    println!("| batching | requests/s | p50 (ms) | p99 (ms) | mean batch |");
    println!("|---|---|---|---|---|");
    for (salt, configuration) in configurations.into_iter().enumerate() {
        let batching = configuration
            .map(|(max_size, wait_ms)| Batching { max_size, max_wait: Duration::from_secs_f64(wait_ms / 1e3) });
        let driver = Arc::new(
            Driver::new(DriverOptions {
                engine: ENGINE.into(),
                python_path: vec![example_dir().to_path_buf()],
                n_subprocesses: args.workers,
                start_method: args.start_method,
                max_tasks: 2 * args.threads,
                init_timeout: Some(Duration::from_secs(300)),
                task_timeout: Some(PATIENCE),
                worker_env: ONE_THREAD.iter().map(|(name, value)| (name.to_string(), value.to_string())).collect(),
                batching,
                ..Default::default()
            })
            .map_err(|e| e.to_string())?,
        );
        let no_names: [&str; 0] = [];
        driver
            .initialize_with("{}", &features, &no_names, [("model_path", model_path.to_string_lossy().as_ref())])
            .map_err(|e| format!("initialize: {e}"))?;
        let name = match configuration {
            None => "off".to_owned(),
            Some((max_size, wait_ms)) => format!("max_size {max_size}, max_wait {wait_ms} ms"),
        };
        let phase = run_phase(&driver, &name, make_requests(&data, requests, 1, salt), Form::List, args.threads)?;
        let stats = driver.stats().map_err(|e| e.to_string())?;
        driver.finalize();
        let (_, difference) = check_within(&model_path, features.len(), std::slice::from_ref(&phase), TOLERANCE)?;
        largest_difference = largest_difference.max(difference);
        let (per_second, p50, p99) = phase.figures();
        let mean = stats.batch_size_mean.map(|mean| format!("{mean:.1}")).unwrap_or_else(|| "-".into());
        println!("| {name} | {per_second:.0} | {p50:.2} | {p99:.2} | {mean} |");
    }
    let limit = model_limit(&model_path, &dir)?;
    println!(
        "\nlimit: the model alone predicts {limit:.0} rows/s in batches of 64 in one process; × {} workers = {:.0} rows/s",
        args.workers,
        limit * args.workers as f64
    );
    println!(
        "every answer checked against the model's own prediction of its row: labels identical, probabilities \
         within {TOLERANCE:e} (largest difference {largest_difference:e})"
    );
    if args.model_dir.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(())
}

/// Rows/s of the model predicting (labels and probabilities) batches of 64 rows in a loop for
/// about a second, in a child process of the build interpreter with one BLAS thread.
fn model_limit(model_path: &Path, dir: &Path) -> Result<f64, String> {
    const SCRIPT: &str = r#"
import sys, time, joblib, numpy as np
model = joblib.load(sys.argv[1])
with open(sys.argv[2]) as f:
    rows = [list(map(float, line.split())) for line in f.read().splitlines()[1:]]
batch = np.asarray((rows * 64)[:64], dtype=np.float64)
done, start = 0, time.perf_counter()
while time.perf_counter() - start < 1.0:
    model.predict(batch); model.predict_proba(batch); done += 64
print(done / (time.perf_counter() - start))
"#;
    let python = rs4py::build_python().executable;
    let output = Command::new(python)
        .arg("-c")
        .arg(SCRIPT)
        .arg(model_path)
        .arg(dir.join("rows.txt"))
        .envs(ONE_THREAD)
        .output()
        .map_err(|e| format!("could not run {python}: {e}"))?;
    if !output.status.success() {
        return Err(format!("the limit's measurement failed: {}", String::from_utf8_lossy(&output.stderr)));
    }
    String::from_utf8_lossy(&output.stdout).trim().parse().map_err(|e| format!("the limit's measurement: {e}"))
}
