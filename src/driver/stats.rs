//! What [`Driver::stats`](super::Driver::stats) answers: py4cc's `Driver.stats()` dict, read
//! once into a plain struct.

use std::time::Duration;

use crate::error::{Error, Result};
use crate::object::Object;

/// Where a driver is in its life. Later versions may add states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DriverState {
    /// Built, not initialized yet: no worker runs.
    New,
    /// Initialized: accepting tasks.
    Running,
    /// [`Driver::drain`](super::Driver::drain) has begun: refusing new tasks while the held
    /// ones finish.
    Draining,
    /// Finalized (or drained): no worker runs; finished answers can still be retrieved.
    Finalized,
}

impl DriverState {
    /// The name py4cc gives it: `"new"`, `"running"`, `"draining"` or `"finalized"`.
    pub fn as_str(self) -> &'static str {
        match self {
            DriverState::New => "new",
            DriverState::Running => "running",
            DriverState::Draining => "draining",
            DriverState::Finalized => "finalized",
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        [DriverState::New, DriverState::Running, DriverState::Draining, DriverState::Finalized]
            .into_iter()
            .find(|state| state.as_str() == name)
    }
}

/// A snapshot of a driver: its tasks, its workers and what happened to them, and how long
/// the Engine takes. Read under one lock in py4cc, so the numbers agree with each other.
///
/// The gauges (`tasks_*` up to `tasks_finished`, `workers_*`) say how things stand now; the
/// counters (`worker_starts` and after) only grow, from the driver's start.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct DriverStats {
    /// Where the driver is in its life.
    pub state: DriverState,
    /// Tasks held: `tasks_queued + tasks_running + tasks_finished`, what counts against
    /// [`DriverOptions::max_tasks`](super::DriverOptions::max_tasks).
    pub tasks_held: usize,
    /// Tasks not started yet (in the driver's queue, or sent to a busy worker behind its
    /// current task).
    pub tasks_queued: usize,
    /// Tasks a worker is running (with batching, every task of its running batch).
    pub tasks_running: usize,
    /// Tasks finished whose answer has not been retrieved yet.
    pub tasks_finished: usize,
    /// How many worker processes the driver keeps
    /// ([`DriverOptions::n_subprocesses`](super::DriverOptions::n_subprocesses), resolved).
    pub workers_wanted: usize,
    /// Worker processes started and not known to have died (ready or still starting).
    pub workers_alive: usize,
    /// Worker processes ready to run tasks.
    pub workers_ready: usize,
    /// Worker processes started, the first ones and every replacement.
    pub worker_starts: u64,
    /// Worker processes that died while the driver ran (crashed, killed, timed out).
    pub worker_deaths: u64,
    /// How the latest of those died, e.g. "worker process 123 exited with exit code -9
    /// (killed by SIGKILL)"; empty if none did.
    pub last_death_cause: String,
    /// Replacement workers that never became ready (could not start, died or were killed
    /// while starting, or their Engine's `initialize` raised).
    pub replacement_failures: u64,
    /// Tasks answered `Done`.
    pub tasks_done: u64,
    /// Tasks answered `Failed`, for any reason (those timed out included). A general task
    /// whose answer does not convert to its key's type counts here once its answer is
    /// collected (until then, py4cc counts it in `tasks_done`).
    pub tasks_failed: u64,
    /// Tasks that ran past [`DriverOptions::task_timeout`](super::DriverOptions::task_timeout).
    pub tasks_timed_out: u64,
    /// Tasks cancelled before their answer was retrieved.
    pub tasks_cancelled: u64,
    /// Finished tasks dropped because nobody retrieved them in time.
    pub tasks_expired: u64,
    /// The median time `Engine.run` took, as the workers measured it, over the latest
    /// `run_time_samples` tasks (at most 1024); `None` before any. A task run in a batch
    /// counts its batch's time divided by the batch's size.
    pub run_time_p50: Option<Duration>,
    /// The 99th percentile of the same.
    pub run_time_p99: Option<Duration>,
    /// How many run times the percentiles are taken over.
    pub run_time_samples: usize,
    /// Worker slots whose latest start failed and that have had no ready worker since; each
    /// keeps retrying, waiting 0.1 s after a failure, doubling up to 30 s.
    pub workers_degraded: usize,
    /// Why the latest failed start failed (the Engine's traceback if its `initialize`
    /// raised); empty if none did.
    pub last_worker_failure: String,
    /// Where the Engines run with [`Backend::Ray`](super::Backend::Ray): "the Ray cluster at
    /// 10.0.0.5:6379" or "a local Ray instance"; empty with the local pool.
    pub cluster: String,
    /// Why the connection to the Ray cluster was lost, once it was (its unfinished tasks
    /// failed then, and submit refuses since); `None` while connected, and with the local
    /// pool.
    pub cluster_lost: Option<String>,
    /// Batches sent to a worker since the start, with
    /// [`DriverOptions::batching`](super::DriverOptions::batching) (0 without).
    pub batches: u64,
    /// The mean size of the latest batches (at most 1024 of them); `None` before any.
    pub batch_size_mean: Option<f64>,
    /// The median size of the same batches.
    pub batch_size_p50: Option<f64>,
    /// The 99th percentile of the same.
    pub batch_size_p99: Option<f64>,
    /// The median time the latest batched tasks (at most 1024) waited in the queue, from
    /// `submit` until their batch was sent to a worker; `None` before any batch.
    pub queue_wait_p50: Option<Duration>,
    /// The 99th percentile of the same.
    pub queue_wait_p99: Option<Duration>,
}

/// Every key read from py4cc's dict (its `DRIVER_CONTRACT["stats"]`).
#[cfg(test)]
pub(super) const KEYS: [&str; 30] = [
    "state",
    "tasks_held",
    "tasks_queued",
    "tasks_running",
    "tasks_finished",
    "workers_wanted",
    "workers_alive",
    "workers_ready",
    "worker_starts",
    "worker_deaths",
    "last_death_cause",
    "replacement_failures",
    "tasks_done",
    "tasks_failed",
    "tasks_timed_out",
    "tasks_cancelled",
    "tasks_expired",
    "run_time_p50",
    "run_time_p99",
    "run_time_samples",
    "workers_degraded",
    "last_worker_failure",
    "cluster",
    "cluster_lost",
    "batches",
    "batch_size_mean",
    "batch_size_p50",
    "batch_size_p99",
    "queue_wait_p50_s",
    "queue_wait_p99_s",
];

impl DriverStats {
    /// Reads py4cc's stats dict: every key must be there (an error names the missing one),
    /// keys this version does not know are ignored.
    pub(super) fn from_dict(dict: &Object<'_>) -> Result<DriverStats> {
        let get = |key: &str| dict.get_item(key).map_err(|error| missing(key, error));
        let state: String = get("state")?.extract()?;
        let state = DriverState::from_name(&state)
            .ok_or_else(|| Error::Conversion(format!("py4cc's stats: unknown state {state:?}")))?;
        let count = |key: &str| -> Result<usize> { get(key)?.extract().map_err(|error| wrong(key, error)) };
        let total = |key: &str| -> Result<u64> { get(key)?.extract().map_err(|error| wrong(key, error)) };
        let size = |key: &str| -> Result<Option<f64>> { get(key)?.extract().map_err(|error| wrong(key, error)) };
        let seconds = |key: &str| -> Result<Option<Duration>> {
            let value: Option<f64> = get(key)?.extract().map_err(|error| wrong(key, error))?;
            value
                .map(|seconds| {
                    Duration::try_from_secs_f64(seconds)
                        .map_err(|error| wrong(key, Error::Conversion(error.to_string())))
                })
                .transpose()
        };
        Ok(DriverStats {
            state,
            tasks_held: count("tasks_held")?,
            tasks_queued: count("tasks_queued")?,
            tasks_running: count("tasks_running")?,
            tasks_finished: count("tasks_finished")?,
            workers_wanted: count("workers_wanted")?,
            workers_alive: count("workers_alive")?,
            workers_ready: count("workers_ready")?,
            worker_starts: total("worker_starts")?,
            worker_deaths: total("worker_deaths")?,
            last_death_cause: get("last_death_cause")?.extract().map_err(|error| wrong("last_death_cause", error))?,
            replacement_failures: total("replacement_failures")?,
            tasks_done: total("tasks_done")?,
            tasks_failed: total("tasks_failed")?,
            tasks_timed_out: total("tasks_timed_out")?,
            tasks_cancelled: total("tasks_cancelled")?,
            tasks_expired: total("tasks_expired")?,
            run_time_p50: seconds("run_time_p50")?,
            run_time_p99: seconds("run_time_p99")?,
            run_time_samples: count("run_time_samples")?,
            workers_degraded: count("workers_degraded")?,
            last_worker_failure: get("last_worker_failure")?
                .extract()
                .map_err(|error| wrong("last_worker_failure", error))?,
            cluster: get("cluster")?.extract().map_err(|error| wrong("cluster", error))?,
            cluster_lost: get("cluster_lost")?.extract().map_err(|error| wrong("cluster_lost", error))?,
            batches: total("batches")?,
            batch_size_mean: size("batch_size_mean")?,
            batch_size_p50: size("batch_size_p50")?,
            batch_size_p99: size("batch_size_p99")?,
            queue_wait_p50: seconds("queue_wait_p50_s")?,
            queue_wait_p99: seconds("queue_wait_p99_s")?,
        })
    }
}

fn missing(key: &str, error: Error) -> Error {
    match error.python_type() {
        Some("KeyError") => Error::Conversion(format!("py4cc's stats have no {key:?}")),
        _ => Error::Conversion(format!("py4cc's stats: cannot read {key:?}: {error}")),
    }
}

fn wrong(key: &str, error: Error) -> Error {
    Error::Conversion(format!("py4cc's stats: {key:?}: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gil::Gil;

    const A_DICT: &str = "dict(state='draining', tasks_held=5, tasks_queued=1, tasks_running=2, tasks_finished=2, \
        workers_wanted=3, workers_alive=2, workers_ready=1, worker_starts=4, worker_deaths=1, \
        last_death_cause='worker process 9 exited with exit code 3', replacement_failures=0, tasks_done=10, \
        tasks_failed=3, tasks_timed_out=1, tasks_cancelled=7, tasks_expired=8, run_time_p50=0.0015, \
        run_time_p99=None, run_time_samples=13, workers_degraded=1, last_worker_failure='Traceback ...', \
        cluster='the Ray cluster at 10.0.0.5:6379', cluster_lost='lost the connection', batches=6, batch_size_mean=7.5, \
        batch_size_p50=8.0, batch_size_p99=None, queue_wait_p50_s=0.0005, queue_wait_p99_s=0.002, something_newer=[1, 2])";

    #[test]
    fn every_field_is_read_and_unknown_keys_are_ignored() {
        let gil = Gil::acquire().unwrap();
        let dict = gil.eval(A_DICT).unwrap();
        let list = gil.eval("list").unwrap();
        let values: Vec<Object<'_>> =
            list.call((dict.call_method("values", (), ()).unwrap(),), ()).unwrap().extract().unwrap();
        let counts: Vec<isize> = values.iter().map(Object::refcount).collect();
        let stats = DriverStats::from_dict(&dict).unwrap();
        assert_eq!(values.iter().map(Object::refcount).collect::<Vec<_>>(), counts, "every value is as before");
        assert_eq!(
            stats,
            DriverStats {
                state: DriverState::Draining,
                tasks_held: 5,
                tasks_queued: 1,
                tasks_running: 2,
                tasks_finished: 2,
                workers_wanted: 3,
                workers_alive: 2,
                workers_ready: 1,
                worker_starts: 4,
                worker_deaths: 1,
                last_death_cause: "worker process 9 exited with exit code 3".into(),
                replacement_failures: 0,
                tasks_done: 10,
                tasks_failed: 3,
                tasks_timed_out: 1,
                tasks_cancelled: 7,
                tasks_expired: 8,
                run_time_p50: Some(Duration::from_micros(1500)),
                run_time_p99: None,
                run_time_samples: 13,
                workers_degraded: 1,
                last_worker_failure: "Traceback ...".into(),
                cluster: "the Ray cluster at 10.0.0.5:6379".into(),
                cluster_lost: Some("lost the connection".into()),
                batches: 6,
                batch_size_mean: Some(7.5),
                batch_size_p50: Some(8.0),
                batch_size_p99: None,
                queue_wait_p50: Some(Duration::from_micros(500)),
                queue_wait_p99: Some(Duration::from_millis(2)),
            }
        );
    }

    #[test]
    fn a_missing_key_or_a_wrong_value_is_an_error_naming_it() {
        let gil = Gil::acquire().unwrap();
        for key in KEYS {
            let dict = gil.eval(A_DICT).unwrap();
            dict.call_method("pop", (key,), ()).unwrap();
            let err = DriverStats::from_dict(&dict).unwrap_err();
            assert_eq!(err, Error::Conversion(format!("py4cc's stats have no {key:?}")));
        }
        let wrong = |key: &str, value: &str| {
            let dict = gil.eval(A_DICT).unwrap();
            dict.call_method("__setitem__", (key, gil.eval(value).unwrap()), ()).unwrap();
            match DriverStats::from_dict(&dict).unwrap_err() {
                Error::Conversion(message) => message,
                other => panic!("not a conversion error: {other:?}"),
            }
        };
        assert_eq!(wrong("state", "'asleep'"), r#"py4cc's stats: unknown state "asleep""#);
        let cases = [
            ("tasks_held", "-1"),
            ("run_time_p99", "-0.5"),
            ("last_death_cause", "None"),
            ("cluster", "None"),
            ("cluster_lost", "5"),
            ("batches", "-2"),
            ("batch_size_mean", "'big'"),
            ("queue_wait_p99_s", "-1.0"),
        ];
        for (key, value) in cases {
            let message = wrong(key, value);
            assert!(message.starts_with(&format!("py4cc's stats: {key:?}: ")), "{message}");
        }
        let err = DriverStats::from_dict(&gil.eval("[1, 2]").unwrap()).unwrap_err();
        assert!(err.to_string().contains("cannot read \"state\""), "{err}");
    }

    #[test]
    fn state_names_are_py4cc_s() {
        for state in [DriverState::New, DriverState::Running, DriverState::Draining, DriverState::Finalized] {
            assert_eq!(DriverState::from_name(state.as_str()), Some(state));
        }
        assert_eq!(DriverState::from_name("Running"), None);
    }
}
