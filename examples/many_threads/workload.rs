//! The reference workload, one file shared by rs4py's `many_threads` example (whose module it
//! is), its tests, benchmarks and the other examples (`#[path]` includes of this file, so that
//! it ships in the package with the example): the same seeded task list as
//! `py4cc.workload.taskgen`, the demo model's formula computed in Rust independently of Python,
//! the threaded submit/retrieve loop, and the report whose JSON line has the keys and meaning of
//! `python3 -m py4cc.workload.harness`'s. Not part of rs4py's API. Its tests are in
//! `tests/workload.rs`.

use std::fmt::Write as _;
use std::sync::LazyLock;
use std::thread;
use std::time::{Duration, Instant};

use rs4py::{Driver, ResultStatus, SubmitStatus};

/// One task: the three arguments of [`Driver::submit`].
#[derive(Debug, Clone, PartialEq)]
pub struct Task {
    /// Two floats of either sign.
    pub float_features: Vec<f64>,
    /// A person's name, a sentence and a UUID.
    pub str_features: Vec<String>,
    /// An integer in `0..=999`.
    pub int_feature: i64,
}

/// The SplitMix64 generator, as `py4cc.workload.taskgen.SplitMix64`.
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        SplitMix64 { state: seed }
    }

    /// The next 64-bit output.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A float in `[0, 1)` from the top 53 bits of one output.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// An integer in `[0, n)` (plain modulo, as the Python side).
    ///
    /// # Panics
    /// If `n` is 0, as Python's `below(0)` raises: there is no integer in `[0, 0)`.
    pub fn below(&mut self, n: usize) -> usize {
        assert!(n > 0, "SplitMix64::below needs a positive bound");
        (self.next_u64() % n as u64) as usize
    }
}

/// The word lists of `py4cc/workload/words.txt`: first names, last names, words.
pub struct WordLists {
    /// First names.
    pub first: Vec<&'static str>,
    /// Last names.
    pub last: Vec<&'static str>,
    /// Words of the sentences.
    pub words: Vec<&'static str>,
}

/// `py4cc/workload/words.txt`, shared with the Python task generator (the one file of
/// `py4cc/workload/` that the package ships).
const WORDS_TXT: &str = include_str!("../../py4cc/workload/words.txt");

pub static WORD_LISTS: LazyLock<WordLists> = LazyLock::new(|| {
    let mut lists = WordLists { first: Vec::new(), last: Vec::new(), words: Vec::new() };
    let mut section = None;
    for line in WORDS_TXT.lines().map(str::trim).filter(|line| !line.is_empty()) {
        match line.strip_prefix('[').and_then(|rest| rest.strip_suffix(']')) {
            Some(name) => section = Some(name),
            None => match section {
                Some("first") => lists.first.push(line),
                Some("last") => lists.last.push(line),
                Some("words") => lists.words.push(line),
                _ => {}
            },
        }
    }
    lists
});

/// The `n` tasks of a run for `seed`: identical, value for value, to
/// `py4cc.workload.taskgen.make_tasks(n, seed)`.
pub fn make_tasks(n: usize, seed: u64) -> Vec<Task> {
    let lists = &*WORD_LISTS;
    let mut rng = SplitMix64::new(seed);
    (0..n)
        .map(|_| {
            let f0 = rng.uniform() * 2000.0 - 1000.0;
            let f1 = rng.uniform() * 2000.0 - 1000.0;
            let name =
                format!("{} {}", lists.first[rng.below(lists.first.len())], lists.last[rng.below(lists.last.len())]);
            let word_count = 4 + rng.below(6);
            let words: Vec<&str> = (0..word_count).map(|_| lists.words[rng.below(lists.words.len())]).collect();
            let sentence = words.join(" ") + ".";
            let uuid = make_uuid(&mut rng);
            let int_feature = rng.below(1000) as i64;
            Task { float_features: vec![f0, f1], str_features: vec![name, sentence, uuid], int_feature }
        })
        .collect()
}

fn make_uuid(rng: &mut SplitMix64) -> String {
    let hex = format!("{:016x}{:016x}", rng.next_u64(), rng.next_u64());
    let variant = b"89ab"[(u8::from_str_radix(&hex[16..17], 16).unwrap_or(0) & 3) as usize] as char;
    format!("{}-{}-4{}-{variant}{}-{}", &hex[0..8], &hex[8..12], &hex[13..16], &hex[17..20], &hex[20..32])
}

/// FNV-1a, 64-bit, over `data`, continuing from `hash` (start from `0xcbf29ce484222325`).
pub fn fnv1a64(data: &[u8], hash: u64) -> u64 {
    data.iter().fold(hash, |hash, byte| (hash ^ u64::from(*byte)).wrapping_mul(0x100_0000_01b3))
}

/// The digest of a task list, as `py4cc.workload.taskgen.task_digest`: FNV-1a 64 over each
/// float as a little-endian double, each string's UTF-8 and a NUL, and the int as a
/// little-endian i64.
pub fn task_digest(tasks: &[Task]) -> String {
    let mut hash = 0xcbf2_9ce4_8422_2325;
    for task in tasks {
        for value in &task.float_features {
            hash = fnv1a64(&value.to_le_bytes(), hash);
        }
        for text in &task.str_features {
            hash = fnv1a64(text.as_bytes(), hash);
            hash = fnv1a64(&[0], hash);
        }
        hash = fnv1a64(&task.int_feature.to_le_bytes(), hash);
    }
    format!("{hash:016x}")
}

/// The demo model, computed in Rust: `int(sum of |v|) + sum of len(s.upper()) +
/// max(0, int_feature)`, with lengths in code points after full Unicode upper-casing.
/// `None` where Python's `int()` would raise (a NaN or infinite sum) or the answer does not
/// fit in an `i64` (Python's would be a larger int).
pub fn big_model(float_features: &[f64], str_features: &[impl AsRef<str>], int_feature: i64) -> Option<i64> {
    let total = float_features.iter().fold(0.0, |total, value| total + value.abs()).trunc();
    // 2^63 is exact as an f64; anything below it converts to i64 without loss of the integer.
    if total.is_nan() || total >= 9_223_372_036_854_775_808.0 {
        return None; // NaN, infinite, or too large
    }
    let upper_len: usize = str_features.iter().map(|text| text.as_ref().to_uppercase().chars().count()).sum();
    (total as i64).checked_add(i64::try_from(upper_len).ok()?)?.checked_add(int_feature.max(0))
}

/// How long, in seconds, the demo Engine sleeps for a task whose answer is `z`:
/// `(z % 100 + 1) * 0.1 ms`, computed as `py4cc.engine.task_sleep_seconds` does.
pub fn task_sleep_seconds(z: i64) -> f64 {
    (z.rem_euclid(100) + 1) as f64 * 0.0001
}

/// How each thread waits for its results.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Sleep 1 ms after submitting and between retrieves (a client without `wait`).
    Poll,
    /// `Driver::wait`, which returns as soon as the task finishes.
    Wait,
}

impl Mode {
    /// `"poll"` or `"wait"`, as the harness's `--mode`.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Poll => "poll",
            Mode::Wait => "wait",
        }
    }
}

/// The polling client's 1 ms sleep (at capacity, after submitting, between retrieves).
const POLL_SLEEP: Duration = Duration::from_millis(1);
/// How long one `wait` call blocks before trying again, in [`Mode::Wait`].
const WAIT_SLICE: Duration = Duration::from_secs(1);
/// A task not answered after this long counts as missing (guards against a hang).
const GIVE_UP: Duration = Duration::from_secs(600);

/// What one task came back with, and how long it took from its first submit to its result.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The final status (`Done` for a good run).
    pub status: ResultStatus,
    /// The model's answer.
    pub value: i64,
    /// The message that came with the status.
    pub message: String,
    /// First submit to result.
    pub latency: Duration,
}

fn run_one(driver: &Driver, task: &Task, mode: Mode) -> Outcome {
    let start = Instant::now();
    let finish = |status, value, message| Outcome { status, value, message, latency: start.elapsed() };
    let receipt = loop {
        let receipt = driver.submit(&task.float_features, &task.str_features, task.int_feature);
        if receipt.status != SubmitStatus::AtCapacity || start.elapsed() > GIVE_UP {
            break receipt;
        }
        thread::sleep(POLL_SLEEP);
    };
    if receipt.status != SubmitStatus::Accepted {
        return finish(ResultStatus::Error, 0, format!("submit answered {:?}: {}", receipt.status, receipt.message));
    }
    if mode == Mode::Poll {
        thread::sleep(POLL_SLEEP);
    }
    loop {
        let result = match mode {
            Mode::Poll => driver.retrieve(receipt.key),
            Mode::Wait => driver.wait(receipt.key, WAIT_SLICE),
        };
        if result.status != ResultStatus::NotReady || start.elapsed() > GIVE_UP {
            return finish(result.status, result.value, result.message);
        }
        if mode == Mode::Poll {
            thread::sleep(POLL_SLEEP);
        }
    }
}

/// Runs every task on `threads` threads sharing `driver` (thread `t` takes tasks `t`,
/// `t + threads`, ...); returns the outcomes in task order.
pub fn run(driver: &Driver, tasks: &[Task], threads: usize, mode: Mode) -> Vec<Outcome> {
    let threads = threads.max(1);
    let mut outcomes: Vec<Option<Outcome>> = vec![None; tasks.len()];
    thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|first| {
                // A thread the system refuses leaves its tasks without a result: reported,
                // not a panic.
                thread::Builder::new()
                    .spawn_scoped(scope, move || {
                        (first..tasks.len())
                            .step_by(threads)
                            .map(|index| (index, run_one(driver, &tasks[index], mode)))
                            .collect::<Vec<_>>()
                    })
                    .ok()
            })
            .collect();
        for worker in workers.into_iter().flatten() {
            // run_one never panics; a panicking thread would leave its tasks as missing.
            for (index, outcome) in worker.join().unwrap_or_default() {
                outcomes[index] = Some(outcome);
            }
        }
    });
    outcomes
        .into_iter()
        .map(|outcome| {
            outcome.unwrap_or(Outcome {
                status: ResultStatus::Error,
                value: 0,
                message: "no result".into(),
                latency: Duration::ZERO,
            })
        })
        .collect()
}

/// The figures of one run, as the harness reports them.
#[derive(Debug, Clone)]
pub struct Report {
    /// How many tasks.
    pub tasks: usize,
    /// How many client threads.
    pub threads: usize,
    /// How many worker processes.
    pub workers: usize,
    /// Poll or wait.
    pub mode: Mode,
    /// Wall time of the whole run.
    pub seconds: f64,
    /// Median per-task latency, first submit to result.
    pub p50_ms: f64,
    /// 99th percentile of the same.
    pub p99_ms: f64,
    /// Results equal to [`big_model`] computed here.
    pub verified: usize,
    /// Wrong, failed or missing results, each described.
    pub problems: Vec<String>,
    /// Every task's sleep, summed, divided by the workers: no run can be faster.
    pub limit_s: f64,
    /// The task list's [`task_digest`].
    pub digest: String,
}

impl Report {
    /// Checks every outcome against [`big_model`] and computes the figures.
    pub fn new(
        tasks: &[Task],
        threads: usize,
        workers: usize,
        mode: Mode,
        elapsed: Duration,
        outcomes: &[Outcome],
    ) -> Report {
        let mut problems = Vec::new();
        let mut sleep_total = 0.0;
        for (index, task) in tasks.iter().enumerate() {
            let expected = big_model(&task.float_features, &task.str_features, task.int_feature);
            sleep_total += expected.map(task_sleep_seconds).unwrap_or_default();
            let Some(outcome) = outcomes.get(index) else {
                problems.push(format!("task {index}: no result"));
                continue;
            };
            if outcome.status != ResultStatus::Done || Some(outcome.value) != expected {
                let message = outcome.message.trim();
                let tail_start = message.char_indices().rev().nth(299).map_or(0, |(index, _)| index);
                let tail = &message[tail_start..];
                problems.push(format!(
                    "task {index}: {:?}, value {}, expected {expected:?}: {tail}",
                    outcome.status, outcome.value
                ));
            }
        }
        let mut latencies: Vec<f64> = outcomes.iter().map(|outcome| outcome.latency.as_secs_f64() * 1000.0).collect();
        latencies.sort_by(f64::total_cmp);
        Report {
            tasks: tasks.len(),
            threads,
            workers,
            mode,
            seconds: elapsed.as_secs_f64(),
            p50_ms: percentile(&latencies, 50.0),
            p99_ms: percentile(&latencies, 99.0),
            verified: tasks.len() - problems.len(),
            problems,
            limit_s: sleep_total / workers.max(1) as f64,
            digest: task_digest(tasks),
        }
    }

    /// Tasks per second.
    pub fn tasks_per_s(&self) -> f64 {
        if self.seconds > 0.0 { self.tasks as f64 / self.seconds } else { 0.0 }
    }

    /// `limit_s / seconds`: 1.0 would be every worker busy all the time.
    pub fn efficiency(&self) -> f64 {
        if self.seconds > 0.0 { self.limit_s / self.seconds } else { 0.0 }
    }

    /// The one JSON line, with the harness's keys in its order.
    pub fn to_json(&self) -> String {
        let mut json = String::from("{");
        let _ = write!(
            json,
            "\"tasks\": {}, \"threads\": {}, \"workers\": {}, \"mode\": \"{}\", \"seconds\": {:?}, \
             \"tasks_per_s\": {:?}, \"p50_ms\": {:?}, \"p99_ms\": {:?}, \"verified\": {}, \"errors\": {}, \
             \"limit_s\": {:?}, \"efficiency\": {:?}, \"digest\": \"{}\"}}",
            self.tasks,
            self.threads,
            self.workers,
            self.mode.as_str(),
            round(self.seconds, 4),
            round(self.tasks_per_s(), 1),
            round(self.p50_ms, 3),
            round(self.p99_ms, 3),
            self.verified,
            self.problems.len(),
            round(self.limit_s, 4),
            round(self.efficiency(), 4),
            self.digest,
        );
        json
    }
}

/// The `p`th percentile of `sorted` (ascending) by nearest rank: `sorted[ceil(p / 100 * n) - 1]`,
/// the default (zero) if empty. The one definition the report, the examples, the benchmarks
/// and the tests use.
pub fn percentile<T: Copy + Default>(sorted: &[T], p: f64) -> T {
    if sorted.is_empty() {
        return T::default();
    }
    let rank = ((p / 100.0 * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Python's `round(value, digits)`: the exact binary value rounded to that many decimals
/// (Rust's formatting does the same), so that both sides print the same figures.
pub fn round(value: f64, digits: usize) -> f64 {
    format!("{value:.digits$}").parse().unwrap_or(value)
}

/// The Ray cluster for the benchmarks' Ray rows: `RS4PY_RAY_ADDRESS`, if set and the build interpreter
/// has `ray`; else None, once a note has said why.
pub fn ray_cluster() -> Option<String> {
    let Ok(address) = std::env::var("RS4PY_RAY_ADDRESS") else {
        println!("(no Ray row: RS4PY_RAY_ADDRESS does not name a Ray cluster)");
        return None;
    };
    let gil = rs4py::Gil::acquire().expect("python");
    let spec = gil.import("importlib.util").and_then(|util| util.call_method("find_spec", ("ray",), ()));
    if spec.map(|spec| spec.is_none()).unwrap_or(true) {
        println!("(no Ray row: ray is not installed for {})", rs4py::build_python().executable);
        return None;
    }
    Some(address)
}
