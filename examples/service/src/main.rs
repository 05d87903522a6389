//! `rs4py-service`: the demo model behind HTTP, the way a team would serve a Python model
//! from an axum service.
//!
//! - `POST /score` with `{"float_features": [f0, f1], "str_features": [name, sentence, uuid],
//!   "int_feature": n}` answers `200 {"value": z}`. The request waits for its task at most
//!   `--timeout-ms` (or `?timeout_ms=N`, at most a minute): past it, `504`, and the task's
//!   slot is freed. Bad JSON answers `400`/`415`/`422`, wrong feature counts `422`, each with
//!   `{"error": reason}`; a full driver (`--max-tasks` held) `503` with `Retry-After: 1`; a
//!   draining one `503`; a model failure `500` with `{"error": reason, "request_id": id}`:
//!   the client learns no traceback and no server path; the service's log (stderr) has the
//!   traceback, each of its lines starting `[request ID]`.
//! - `GET /stats` answers the driver's [`rs4py::DriverStats`] as JSON.
//! - SIGTERM (or SIGINT): stop accepting connections, let the requests in flight finish,
//!   drain the driver (at most `--drain-ms`), exit 0.
//!
//! It prints `rs4py-service: pid PID` on stderr as it starts (the pid to send SIGTERM to).
//! It listens on 127.0.0.1, on `--port` or `$RS4PY_SERVICE_PORT` (default 8080; 0 picks a free
//! port), and prints `listening on http://127.0.0.1:PORT` on stdout once it accepts requests.
//! Worker output and events go to stderr as `[worker PID STREAM] line`.
//! `--batch-max-size N` (and `--batch-max-wait-ms MS`, default 0) turn on the driver's
//! dynamic batching ([`rs4py::Batching`]): concurrent requests then reach the model in
//! batches of up to N, each still answered on its own.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rs4py::{Batching, Driver, DriverOptions, DriverStats, ResultStatus, StartMethod, SubmitStatus, WorkerOutput};
use serde::Deserialize;
use serde_json::json;

const FLOAT_NAMES: [&str; 2] = ["f0", "f1"];
const STR_NAMES: [&str; 3] = ["name", "sentence", "uuid"];
/// The longest wait a request may ask for with `?timeout_ms=`.
const MAX_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

const USAGE: &str = "usage: rs4py-service [--port N] [--workers N] [--max-tasks N] [--timeout-ms N] \
[--drain-ms N] [--start-method fork|forkserver|spawn] [--batch-max-size N [--batch-max-wait-ms MS]]   \
(port also from $RS4PY_SERVICE_PORT)";

/// The command line, parsed.
#[derive(Debug, Clone)]
struct Config {
    port: u16,
    workers: usize,
    max_tasks: usize,
    request_timeout: Duration,
    drain_timeout: Duration,
    start_method: StartMethod,
    /// The driver's batching (`--batch-max-size`, `--batch-max-wait-ms`); None: off.
    batching: Option<Batching>,
}

fn parse_args(args: impl IntoIterator<Item = String>, env_port: Option<String>) -> Result<Config, String> {
    fn number<T: std::str::FromStr>(flag: &str, value: Option<String>) -> Result<T, String> {
        let value = value.ok_or_else(|| format!("{flag} needs a value"))?;
        value.parse().map_err(|_| format!("{flag}: {value:?} is not a valid number"))
    }
    let port = match env_port {
        Some(port) => number("RS4PY_SERVICE_PORT", Some(port))?,
        None => 8080,
    };
    let mut config = Config {
        port,
        workers: 2,
        max_tasks: 64,
        request_timeout: Duration::from_secs(2),
        drain_timeout: Duration::from_secs(10),
        start_method: StartMethod::Forkserver,
        batching: None,
    };
    let mut batch_max_size: Option<usize> = None;
    let mut batch_max_wait_ms: Option<f64> = None;
    let mut args = args.into_iter();
    while let Some(flag) = args.next() {
        match flag.as_str() {
            "--port" => config.port = number(&flag, args.next())?,
            "--workers" => config.workers = number(&flag, args.next())?,
            "--max-tasks" => config.max_tasks = number(&flag, args.next())?,
            "--timeout-ms" => config.request_timeout = Duration::from_millis(number(&flag, args.next())?),
            "--drain-ms" => config.drain_timeout = Duration::from_millis(number(&flag, args.next())?),
            "--start-method" => {
                let name = args.next().ok_or("--start-method needs a value")?;
                config.start_method = name.parse().map_err(|error: rs4py::Error| error.to_string())?;
            }
            "--batch-max-size" => batch_max_size = Some(number(&flag, args.next())?),
            "--batch-max-wait-ms" => batch_max_wait_ms = Some(number(&flag, args.next())?),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    config.batching = match (batch_max_size, batch_max_wait_ms) {
        (None, None) => None,
        (None, Some(_)) => return Err("--batch-max-wait-ms needs --batch-max-size".into()),
        (Some(0), _) => return Err("--batch-max-size must be at least 1".into()),
        (Some(max_size), wait_ms) => {
            let max_wait = Duration::try_from_secs_f64(wait_ms.unwrap_or(0.0) / 1e3)
                .map_err(|_| "--batch-max-wait-ms must be a finite number of milliseconds >= 0".to_owned())?;
            Some(Batching { max_size, max_wait })
        }
    };
    if config.workers == 0 || config.max_tasks == 0 {
        return Err("--workers and --max-tasks must be at least 1".into());
    }
    Ok(config)
}

/// What the handlers share.
struct App {
    driver: Arc<Driver>,
    request_timeout: Duration,
    /// The last request id given to a `500`.
    last_request_id: AtomicU64,
}

impl App {
    /// A `500` that tells the client `reason` and a request id, and logs `detail` (a
    /// traceback, which names server files) on stderr, each line led by that id.
    fn internal_error(&self, reason: &str, detail: &str) -> Response {
        let id = self.last_request_id.fetch_add(1, Ordering::Relaxed) + 1;
        let mut log = format!("[request {id}] {reason}\n");
        for line in detail.lines() {
            log.push_str(&format!("[request {id}] {line}\n"));
        }
        eprint!("{log}");
        let body =
            json!({ "error": format!("{reason} (request {id}; details in the service's log)"), "request_id": id });
        (StatusCode::INTERNAL_SERVER_ERROR, Json(body)).into_response()
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScoreRequest {
    float_features: Vec<f64>,
    str_features: Vec<String>,
    int_feature: i64,
}

#[derive(Debug, Deserialize)]
struct ScoreQuery {
    timeout_ms: Option<u64>,
}

fn error(status: StatusCode, reason: impl Into<String>) -> Response {
    (status, Json(json!({ "error": reason.into() }))).into_response()
}

async fn score(
    State(app): State<Arc<App>>,
    query: Result<Query<ScoreQuery>, QueryRejection>,
    body: Result<Json<ScoreRequest>, JsonRejection>,
) -> Response {
    let timeout = match query {
        Ok(Query(ScoreQuery { timeout_ms: Some(ms) })) => Duration::from_millis(ms).min(MAX_REQUEST_TIMEOUT),
        Ok(Query(ScoreQuery { timeout_ms: None })) => app.request_timeout,
        Err(rejection) => return error(rejection.status(), rejection.body_text()),
    };
    let Json(request) = match body {
        Ok(body) => body,
        Err(rejection) => return error(rejection.status(), rejection.body_text()),
    };
    if request.float_features.len() != FLOAT_NAMES.len() || request.str_features.len() != STR_NAMES.len() {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                "expected {} float features ({}) and {} str features ({}), got {} and {}",
                FLOAT_NAMES.len(),
                FLOAT_NAMES.join(", "),
                STR_NAMES.len(),
                STR_NAMES.join(", "),
                request.float_features.len(),
                request.str_features.len()
            ),
        );
    }
    // A submit takes the driver's mutex and the GIL for a few microseconds: cheap enough to
    // make on the executor.
    let receipt = app.driver.submit(&request.float_features, &request.str_features, request.int_feature);
    match receipt.status {
        SubmitStatus::Accepted => {}
        SubmitStatus::AtCapacity => {
            let mut response = error(StatusCode::SERVICE_UNAVAILABLE, receipt.message);
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            return response;
        }
        // The features were checked above: the driver is draining, finalized or broken
        // (SubmitStatus::Error, or a status of a later rs4py).
        _ => return error(StatusCode::SERVICE_UNAVAILABLE, receipt.message),
    }
    // Woken by the task's completion, holding no thread while it waits. If the time runs
    // out (or the client goes away and axum drops this handler), the future is dropped,
    // which cancels the task: its slot is free at once.
    let Ok(result) = tokio::time::timeout(timeout, app.driver.wait_async(receipt.key)).await else {
        return error(
            StatusCode::GATEWAY_TIMEOUT,
            format!("the model did not answer within {} ms", timeout.as_millis()),
        );
    };
    match result.status {
        ResultStatus::Done => (StatusCode::OK, Json(json!({ "value": result.value }))).into_response(),
        ResultStatus::Failed => app.internal_error("the model failed", &result.message),
        // wait_async answers once the task is finished: NotReady cannot come, and Error would
        // be a bug (the key was just issued to this request alone).
        _ => app.internal_error("the driver answered an error", &result.message),
    }
}

fn stats_json(stats: &DriverStats) -> serde_json::Value {
    let seconds = |duration: Option<Duration>| duration.map(|duration| duration.as_secs_f64());
    json!({
        "state": stats.state.as_str(),
        "tasks_held": stats.tasks_held,
        "tasks_queued": stats.tasks_queued,
        "tasks_running": stats.tasks_running,
        "tasks_finished": stats.tasks_finished,
        "workers_wanted": stats.workers_wanted,
        "workers_alive": stats.workers_alive,
        "workers_ready": stats.workers_ready,
        "worker_starts": stats.worker_starts,
        "worker_deaths": stats.worker_deaths,
        "last_death_cause": stats.last_death_cause,
        "replacement_failures": stats.replacement_failures,
        "tasks_done": stats.tasks_done,
        "tasks_failed": stats.tasks_failed,
        "tasks_timed_out": stats.tasks_timed_out,
        "tasks_cancelled": stats.tasks_cancelled,
        "tasks_expired": stats.tasks_expired,
        "run_time_p50_s": seconds(stats.run_time_p50),
        "run_time_p99_s": seconds(stats.run_time_p99),
        "run_time_samples": stats.run_time_samples,
        "workers_degraded": stats.workers_degraded,
        "last_worker_failure": stats.last_worker_failure,
        "batches": stats.batches,
        "batch_size_mean": stats.batch_size_mean,
        "batch_size_p50": stats.batch_size_p50,
        "batch_size_p99": stats.batch_size_p99,
        "queue_wait_p50_s": seconds(stats.queue_wait_p50),
        "queue_wait_p99_s": seconds(stats.queue_wait_p99),
    })
}

async fn stats(State(app): State<Arc<App>>) -> Response {
    match app.driver.stats() {
        Ok(stats) => Json(stats_json(&stats)).into_response(),
        Err(err) => app.internal_error("the driver's stats are unavailable", &err.to_string()),
    }
}

fn router(app: Arc<App>) -> Router {
    Router::new().route("/score", post(score)).route("/stats", get(stats)).with_state(app)
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("a SIGTERM handler can be installed");
    tokio::select! {
        _ = terminate.recv() => eprintln!("rs4py-service: SIGTERM: draining"),
        _ = tokio::signal::ctrl_c() => eprintln!("rs4py-service: SIGINT: draining"),
    }
}

async fn serve(config: Config, driver: Arc<Driver>) -> std::io::Result<usize> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", config.port)).await?;
    println!("listening on http://{}", listener.local_addr()?);
    let app = Arc::new(App {
        driver: Arc::clone(&driver),
        request_timeout: config.request_timeout,
        last_request_id: AtomicU64::new(0),
    });
    let (drained_sender, drained) = tokio::sync::oneshot::channel();
    let draining = Arc::clone(&driver);
    let shutdown = async move {
        shutdown_signal().await;
        // From here submit answers "draining" (503), while the tasks in flight finish and
        // their requests get their answers; axum stops accepting connections meanwhile.
        let drain = tokio::task::spawn_blocking(move || draining.drain(config.drain_timeout));
        let _ = drained_sender.send(drain);
    };
    axum::serve(listener, router(app)).with_graceful_shutdown(shutdown).await?;
    let drain = drained.await.map_err(|_| std::io::Error::other("the server stopped without a signal"))?;
    drain.await.map_err(std::io::Error::other)
}

fn main() -> ExitCode {
    let config = match parse_args(std::env::args().skip(1), std::env::var("RS4PY_SERVICE_PORT").ok()) {
        Ok(config) => config,
        Err(problem) => {
            eprintln!("rs4py-service: {problem}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    eprintln!("rs4py-service: pid {}", std::process::id());
    // Python starts on this, the main thread, before the runtime's threads exist.
    let options = DriverOptions {
        n_subprocesses: config.workers,
        max_tasks: config.max_tasks,
        start_method: config.start_method,
        worker_env: vec![("OMP_NUM_THREADS".into(), "1".into())],
        batching: config.batching,
        worker_output: Some(WorkerOutput::new(|line| {
            eprintln!("[worker {} {}] {}", line.pid, line.stream.as_str(), line.text);
        })),
        ..DriverOptions::default()
    };
    let driver = match Driver::new(options).and_then(|driver| {
        driver.initialize("{}", &FLOAT_NAMES, &STR_NAMES)?;
        Ok(driver)
    }) {
        Ok(driver) => Arc::new(driver),
        Err(err) => {
            eprintln!("rs4py-service: the model could not start: {err}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("rs4py-service: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(config, driver)) {
        Ok(unfinished) => {
            eprintln!("rs4py-service: drained; {unfinished} unfinished tasks failed; bye");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("rs4py-service: {err}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(text: &str) -> Vec<String> {
        text.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn flags_and_the_port_variable() {
        let config = parse_args(args("--workers 3 --max-tasks 9 --timeout-ms 250 --start-method spawn"), None).unwrap();
        assert_eq!((config.port, config.workers, config.max_tasks), (8080, 3, 9));
        assert_eq!((config.request_timeout, config.start_method), (Duration::from_millis(250), StartMethod::Spawn));
        assert_eq!(parse_args(args(""), Some("0".into())).unwrap().port, 0);
        assert_eq!(parse_args(args("--port 7"), Some("9".into())).unwrap().port, 7, "the flag wins");
        assert_eq!(parse_args(args(""), None).unwrap().batching, None);
        let batched = parse_args(args("--batch-max-size 16 --batch-max-wait-ms 0.5"), None).unwrap();
        assert_eq!(batched.batching, Some(Batching { max_size: 16, max_wait: Duration::from_micros(500) }));
        let no_wait = parse_args(args("--batch-max-size 4"), None).unwrap();
        assert_eq!(no_wait.batching, Some(Batching { max_size: 4, max_wait: Duration::ZERO }));
    }

    #[test]
    fn bad_arguments_say_what_is_wrong() {
        let problem = |text: &str, env: Option<&str>| parse_args(args(text), env.map(str::to_owned)).unwrap_err();
        assert_eq!(problem("--port", None), "--port needs a value");
        assert_eq!(problem("--port 99999", None), r#"--port: "99999" is not a valid number"#);
        assert_eq!(problem("", Some("http")), r#"RS4PY_SERVICE_PORT: "http" is not a valid number"#);
        assert_eq!(problem("--verbose", None), r#"unknown argument "--verbose""#);
        assert_eq!(problem("--workers 0", None), "--workers and --max-tasks must be at least 1");
        assert!(problem("--start-method thread", None).contains("unknown start method \"thread\""));
        assert_eq!(problem("--batch-max-wait-ms 2", None), "--batch-max-wait-ms needs --batch-max-size");
        assert_eq!(problem("--batch-max-size 0", None), "--batch-max-size must be at least 1");
        assert_eq!(
            problem("--batch-max-size 2 --batch-max-wait-ms -1", None),
            "--batch-max-wait-ms must be a finite number of milliseconds >= 0"
        );
    }
}
