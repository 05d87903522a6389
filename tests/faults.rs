//! Faults of the Rust host process itself: killed while its workers are busy (no process it
//! started may outlive it), ending with or without finalizing its drivers (no `pymp-*`
//! directory may be left), and the thread that initialized a driver ending (its workers must
//! not go with it). Each host is this test binary run again in a child process. And a driver
//! whose workers cannot restart for a while, as the Rust side sees it.

#[allow(dead_code)]
#[path = "common/workers.rs"]
mod workers;
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use rs4py::{Driver, DriverOptions, ResultStatus, StartMethod, SubmitStatus};

/// A user Engine whose task holds the GIL in one long C call (`ctypes.PyDLL` keeps it),
/// after leaving a file named after its pid beside `config["marker"]`.
const ENGINE_MODULE: &str = r#"
import ctypes, os


class GilHoldingEngine:
    def initialize(self, config, **kwargs):
        self.marker = config["marker"]

    def run(self, float_features, str_features, int_feature):
        open(f"{self.marker}.{os.getpid()}", "w").close()
        ctypes.PyDLL(None).sleep(int(float_features[0]))
        return int_feature, "held"


class FlakyInitEngine:
    """Its initialize raises while the file config["marker"] exists."""

    def initialize(self, config, **kwargs):
        if os.path.exists(config["marker"]):
            raise RuntimeError("the model store is down")

    def run(self, float_features, str_features, int_feature):
        return int_feature + 1, ""
"#;

const METHODS: [StartMethod; 3] = [StartMethod::Fork, StartMethod::Forkserver, StartMethod::Spawn];

/// A fresh directory under the system's temporary directory, removed when this process exits.
fn fresh_dir(what: &str) -> PathBuf {
    workers::scratch_dir(&format!("rs4py-faults-{what}"))
}

/// This test binary, to run the ignored test `name` as a child host process.
fn child_host(name: &str) -> Command {
    let mut command = Command::new(std::env::current_exe().unwrap());
    // From a neutral directory: the crate's root holds a `py4cc/`.
    command.args(["--exact", name, "--ignored", "--nocapture", "--test-threads=1"]).current_dir(std::env::temp_dir());
    command
}

/// Every process below `pid` (children, grandchildren, ...), from /proc.
fn descendants(pid: u32) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(child) = entry.file_name().to_str().and_then(|name| name.parse::<u32>().ok()) else { continue };
        if let Some(parent) = parent_of(child) {
            children.entry(parent).or_default().push(child);
        }
    }
    let mut found = Vec::new();
    let mut todo = vec![pid];
    while let Some(next) = todo.pop() {
        for &child in children.get(&next).map(Vec::as_slice).unwrap_or_default() {
            found.push(child);
            todo.push(child);
        }
    }
    found
}

/// The fields of /proc/PID/stat after the command name: state first, then the parent's pid.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(stat.rsplit_once(')')?.1.split_whitespace().map(str::to_owned).collect())
}

fn parent_of(pid: u32) -> Option<u32> {
    stat_fields(pid)?.get(1)?.parse().ok()
}

/// True while `pid` runs: it exists and has not exited (a zombie has).
fn running(pid: u32) -> bool {
    stat_fields(pid).is_some_and(|fields| !matches!(fields.first().map(String::as_str), Some("Z" | "X")))
}

fn pymp_dirs(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|entry| entry.file_name().to_str().map(str::to_owned))
                .filter(|name| name.starts_with("pymp-"))
                .collect()
        })
        .unwrap_or_default()
}

/// Polls `done` every 10 ms for up to `limit`; whether it became true.
fn within(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if done() {
            return true;
        }
        thread::sleep(Duration::from_millis(10));
    }
    done()
}

#[test]
fn every_process_of_a_killed_host_exits_even_when_busy_holding_the_gil() {
    let dir = fresh_dir("busy");
    let mut child = child_host("child_host_with_busy_workers")
        .env("RS4PY_FAULTS_DIR", &dir)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (lines, received) = mpsc::channel();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            let _ = lines.send(line);
        }
    });
    let busy = loop {
        match received.recv_timeout(Duration::from_secs(120)) {
            // The harness's own "test NAME ... " may come first on the line.
            Ok(line) if line.contains("busy ") => break line,
            Ok(_) => continue,
            Err(error) => {
                let _ = child.kill();
                panic!("the child host never had its workers busy: {error}");
            }
        }
    };
    let processes = descendants(child.id());
    child.kill().unwrap();
    child.wait().unwrap();
    // Two workers per start method (one busy, one idle), the forkserver, the resource tracker.
    assert!(processes.len() >= 8, "{busy}: only {processes:?} under the host");
    let start = Instant::now();
    let gone = within(Duration::from_secs(2), || !processes.iter().any(|&pid| running(pid)));
    let left: Vec<u32> = processes.iter().copied().filter(|&pid| running(pid)).collect();
    assert!(gone, "still running 2 s after the host was killed: {left:?} ({busy})");
    println!("{} processes gone {:?} after their host", processes.len(), start.elapsed());
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
#[ignore = "the host process of every_process_of_a_killed_host_exits_even_when_busy_holding_the_gil"]
fn child_host_with_busy_workers() {
    let dir = PathBuf::from(std::env::var_os("RS4PY_FAULTS_DIR").unwrap());
    std::fs::write(dir.join("faultengines.py"), ENGINE_MODULE).unwrap();
    let mut drivers = Vec::new();
    for method in METHODS {
        let driver = Driver::new(DriverOptions {
            n_subprocesses: 2,
            start_method: method,
            engine: "faultengines:GilHoldingEngine".into(),
            python_path: vec![dir.clone()],
            worker_output: Some(workers::captured_output()),
            ..Default::default()
        })
        .unwrap();
        let marker = dir.join(format!("busy-{method}"));
        let config = format!(r#"{{"marker": "{}"}}"#, marker.display());
        driver.initialize(&config, &["seconds"], &["name"]).unwrap();
        assert_eq!(driver.submit(&[3600.0], &["x"], 1).status, SubmitStatus::Accepted);
        drivers.push(driver);
    }
    let busy = || {
        std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("busy-"))
            .count()
    };
    assert!(within(Duration::from_secs(60), || busy() == METHODS.len()), "the tasks did not start");
    println!("busy {}", busy());
    thread::sleep(Duration::from_secs(3600));
}

fn no_pymp_directory_left_by(how: &str) {
    let tmp = fresh_dir(&format!("pymp-{how}"));
    // Run from `/`: the lifeline the forkserver preloads must come from the embedded py4cc,
    // not from a working directory that happens to hold one (the crate's root does).
    let output = child_host("child_host_ending")
        .current_dir("/")
        .env("TMPDIR", &tmp)
        .env("RS4PY_FAULTS_HOW", how)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{how}: {stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("ending by"), "{how}: the child host did not run:\n{stdout}");
    // Without finalize the forkserver removes it as it exits, right after the host.
    assert!(within(Duration::from_secs(10), || pymp_dirs(&tmp).is_empty()), "{how}: left {:?}", pymp_dirs(&tmp));
    std::fs::remove_dir_all(&tmp).unwrap();
}

#[test]
fn no_pymp_directory_is_left_by_a_finalized_driver() {
    no_pymp_directory_left_by("finalize");
}

#[test]
fn no_pymp_directory_is_left_by_a_dropped_driver() {
    no_pymp_directory_left_by("drop");
}

#[test]
fn no_pymp_directory_is_left_by_a_host_that_exits_with_its_driver_running() {
    no_pymp_directory_left_by("exit");
}

#[test]
#[ignore = "the host process of the no_pymp_directory_is_left_by_* tests"]
fn child_host_ending() {
    let how = std::env::var("RS4PY_FAULTS_HOW").unwrap();
    let tmp = std::env::temp_dir();
    let driver = Driver::new(DriverOptions {
        n_subprocesses: 1,
        worker_output: Some(workers::captured_output()),
        ..Default::default()
    })
    .unwrap();
    driver.initialize("{}", &["a"], &["b"]).unwrap();
    let receipt = driver.submit(&[1.0], &["x"], 1);
    assert_eq!(driver.wait(receipt.key, Duration::from_secs(30)).status, ResultStatus::Done);
    assert_eq!(pymp_dirs(&tmp).len(), 1, "the forkserver's directory is under TMPDIR");
    println!("ending by {how}");
    match how.as_str() {
        "finalize" => driver.finalize(),
        "drop" => drop(driver),
        _ => {
            // As a service that keeps its driver in a static: no finalize, no drop.
            std::mem::forget(driver);
            std::process::exit(0);
        }
    }
    // While this host still runs: its driver's forkserver and directory are gone already.
    assert_eq!(pymp_dirs(&tmp), Vec::<String>::new(), "{how}");
}

#[test]
fn workers_outlive_the_thread_that_initialized_their_driver() {
    // A parent-death signal (PR_SET_PDEATHSIG) would fire when that thread ends.
    for method in METHODS {
        let driver = thread::spawn(move || {
            let driver = Driver::new(DriverOptions {
                n_subprocesses: 1,
                start_method: method,
                worker_output: Some(workers::captured_output()),
                ..Default::default()
            })
            .unwrap();
            driver.initialize("{}", &["a", "b"], &["name"]).unwrap();
            driver
        })
        .join()
        .unwrap();
        thread::sleep(Duration::from_millis(300));
        let pids = driver.worker_pids().unwrap();
        assert!(pids.iter().all(|&pid| running(pid)), "{method:?}: {pids:?}");
        let receipt = driver.submit(&[1.5, -2.5], &["Zoë"], 7);
        let result = driver.wait(receipt.key, Duration::from_secs(30));
        assert_eq!((result.status, result.value), (ResultStatus::Done, 4 + 3 + 7), "{method:?}: {}", result.message);
        assert_eq!(driver.worker_pids().unwrap(), pids, "{method:?}: no worker was replaced");
    }
}

#[test]
fn a_driver_whose_restarts_fail_says_why_and_comes_back_by_itself() {
    let dir = fresh_dir("flaky");
    std::fs::write(dir.join("faultengines.py"), ENGINE_MODULE).unwrap();
    let marker = dir.join("store-down");
    let driver = Driver::new(DriverOptions {
        n_subprocesses: 1,
        engine: "faultengines:FlakyInitEngine".into(),
        python_path: vec![dir.clone()],
        worker_output: Some(workers::captured_output()),
        ..Default::default()
    })
    .unwrap();
    driver.initialize(&format!(r#"{{"marker": "{}"}}"#, marker.display()), &["x"], &["s"]).unwrap();
    std::fs::write(&marker, "").unwrap();
    let [worker] = driver.worker_pids().unwrap()[..] else { panic!("one worker") };
    // SAFETY: kill has no memory effects; worker is the positive pid of the driver's worker.
    assert_eq!(unsafe { libc::kill(libc::pid_t::try_from(worker).unwrap(), libc::SIGKILL) }, 0);
    assert!(within(Duration::from_secs(30), || driver.stats().unwrap().replacement_failures >= 2));
    let stats = driver.stats().unwrap();
    assert_eq!((stats.workers_ready, stats.workers_degraded), (0, 1));
    assert!(stats.last_worker_failure.contains("RuntimeError: the model store is down"), "{stats:?}");
    let refused = driver.submit(&[0.0], &["s"], 1);
    assert_eq!(refused.status, SubmitStatus::Error);
    assert!(refused.message.contains("no worker process is ready"), "{}", refused.message);
    assert!(refused.message.contains("the model store is down"), "{}", refused.message);
    std::fs::remove_file(&marker).unwrap();
    let mut receipt = driver.submit(&[0.0], &["s"], 1);
    assert!(
        within(Duration::from_secs(30), || {
            receipt = driver.submit(&[0.0], &["s"], 1);
            receipt.status == SubmitStatus::Accepted
        }),
        "{receipt:?}"
    );
    let result = driver.wait(receipt.key, Duration::from_secs(30));
    assert_eq!((result.status, result.value), (ResultStatus::Done, 2), "{}", result.message);
    assert_eq!(driver.stats().unwrap().workers_degraded, 0);
    driver.finalize();
    std::fs::remove_dir_all(dir).unwrap();
}
