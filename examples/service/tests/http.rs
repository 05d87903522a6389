//! The service's check, over real HTTP: starts `rs4py-service` on 127.0.0.1, sends it many
//! concurrent requests with a real client (good ones, ones that time out, bad JSON, wrong
//! feature counts, one the model fails on, whose 500 carries a request id and no traceback
//! while the log has the traceback under that id), checks every answer against the model
//! computed in Rust, checks through `/stats` that nothing is left held, then sends SIGTERM
//! while requests are in flight and checks that they are answered and the service exits
//! cleanly, having printed its pid.

#[allow(dead_code)]
#[path = "../../many_threads/workload.rs"]
mod workload;

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::{Client, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use workload::{Task, big_model, make_tasks};

const PATIENCE: Duration = Duration::from_secs(60);
const MAX_TASKS: usize = 16;

struct Service {
    child: Child,
    base: String,
    /// Everything the service writes to stderr, read as it comes (a full pipe would block it).
    stderr: tokio::task::JoinHandle<String>,
}

/// Starts the service on a free port and waits until it listens.
async fn start_service() -> Service {
    start_service_with(&[]).await
}

/// [`start_service`], with more flags.
async fn start_service_with(flags: &[&str]) -> Service {
    let mut child = Command::new(env!("CARGO_BIN_EXE_rs4py-service"))
        .args(["--workers", "2", "--max-tasks", &MAX_TASKS.to_string(), "--timeout-ms", "20000"])
        .args(flags)
        .env("RS4PY_SERVICE_PORT", "0")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the service binary starts");
    let mut stderr = child.stderr.take().unwrap();
    let stderr = tokio::spawn(async move {
        let mut text = String::new();
        stderr.read_to_string(&mut text).await.unwrap();
        text
    });
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(PATIENCE, lines.next_line())
        .await
        .expect("the service listens within a minute")
        .unwrap()
        .expect("the service printed where it listens");
    let base = line.strip_prefix("listening on ").unwrap_or_else(|| panic!("unexpected first line {line:?}"));
    assert!(base.starts_with("http://127.0.0.1:"), "{base}");
    Service { child, base: base.to_owned(), stderr }
}

fn body(task: &Task) -> Value {
    json!({ "float_features": task.float_features, "str_features": task.str_features, "int_feature": task.int_feature })
}

fn expected(task: &Task) -> i64 {
    big_model(&task.float_features, &task.str_features, task.int_feature).unwrap()
}

/// Posts a task until it is not refused for capacity; answers the status and the JSON body.
async fn score(client: &Client, base: &str, task: &Task, query: &str) -> (StatusCode, Value, usize) {
    let mut refusals = 0;
    loop {
        let response = client.post(format!("{base}/score{query}")).json(&body(task)).send().await.unwrap();
        let status = response.status();
        let retry_after = response.headers().get("retry-after").map(|value| value.to_str().unwrap().to_owned());
        let answer: Value = response.json().await.unwrap();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            assert_eq!(answer, json!({ "error": "Model engine is working at capacity. Try again later." }));
            assert_eq!(retry_after.as_deref(), Some("1"));
            refusals += 1;
            tokio::time::sleep(Duration::from_millis(2)).await;
            continue;
        }
        return (status, answer, refusals);
    }
}

async fn stats(client: &Client, base: &str) -> Value {
    let response = client.get(format!("{base}/stats")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.unwrap()
}

async fn post_raw(client: &Client, base: &str, content_type: Option<&str>, text: &str) -> (StatusCode, Value) {
    let mut request = client.post(format!("{base}/score")).body(text.to_owned());
    if let Some(content_type) = content_type {
        request = request.header("content-type", content_type);
    }
    let response = request.send().await.unwrap();
    (response.status(), response.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_answers_right_frees_every_slot_and_drains_on_sigterm() {
    let mut service = start_service().await;
    let base = Arc::new(service.base.clone());
    let client = Client::new();

    // Good requests, 24 in flight at once: more than MAX_TASKS, so some are refused for a
    // while (503, retried). And requests whose 1 ms limit is shorter than the model's sleep
    // for them (at least 5 ms), which time out (504) unless the machine stalls past the
    // sleep, when they may answer right.
    let good = make_tasks(300, 11);
    let slow: Vec<Task> = make_tasks(400, 12).into_iter().filter(|task| expected(task) % 100 >= 49).take(40).collect();
    assert_eq!(slow.len(), 40);
    let in_flight = Arc::new(Semaphore::new(24));
    let mut requests = JoinSet::new();
    for (task, query) in good.iter().map(|task| (task, "")).chain(slow.iter().map(|task| (task, "?timeout_ms=1"))) {
        let (client, base, in_flight, task) = (client.clone(), Arc::clone(&base), Arc::clone(&in_flight), task.clone());
        requests.spawn(async move {
            let _permit = in_flight.acquire_owned().await.unwrap();
            let (status, answer, refusals) = score(&client, &base, &task, query).await;
            (task, query, status, answer, refusals)
        });
    }
    let (mut done, mut timed_out, mut refused) = (0, 0, 0);
    while let Some(outcome) = requests.join_next().await {
        let (task, query, status, answer, refusals) = outcome.unwrap();
        refused += refusals;
        match status {
            StatusCode::OK => {
                assert_eq!(answer, json!({ "value": expected(&task) }), "{task:?}");
                done += 1;
            }
            StatusCode::GATEWAY_TIMEOUT if !query.is_empty() => {
                assert_eq!(answer, json!({ "error": "the model did not answer within 1 ms" }));
                timed_out += 1;
            }
            _ => panic!("{task:?}{query} answered {status}: {answer}"),
        }
    }
    assert_eq!(done + timed_out, good.len() + slow.len());
    assert!(timed_out > 0, "no request timed out: the timeout path was never taken");
    eprintln!("{done} answered, {timed_out} timed out, {refused} refusals at capacity (retried)");

    // Requests the service refuses, each with its reason.
    let (status, answer) = post_raw(&client, &base, Some("application/json"), r#"{"float_features": [1.0,"#).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(answer["error"].as_str().unwrap().starts_with("Failed to parse the request body as JSON"), "{answer}");
    let (status, answer) = post_raw(&client, &base, None, "{}").await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(answer, json!({ "error": "Expected request with `Content-Type: application/json`" }));
    let (status, answer) = post_raw(
        &client,
        &base,
        Some("application/json"),
        r#"{"float_features": ["x", 1], "str_features": [], "int_feature": 1}"#,
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(answer["error"].as_str().unwrap().contains("invalid type: string \"x\", expected f64"), "{answer}");
    let wrong_counts =
        json!({ "float_features": [1.0, 2.0, 3.0], "str_features": ["a"], "int_feature": 1 }).to_string();
    let (status, answer) = post_raw(&client, &base, Some("application/json"), &wrong_counts).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        answer,
        json!({ "error": "expected 2 float features (f0, f1) and 3 str features (name, sentence, uuid), got 3 and 1" })
    );
    let response = client.get(format!("{base}/nowhere")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);

    // A task the model fails on (the features' sum is infinite, which int() refuses): the
    // client gets a request id, not the traceback with the server's paths.
    let overflow = json!({ "float_features": [1e308, 1e308], "str_features": ["a", "b", "c"], "int_feature": 1 });
    let (status, failure) = post_raw(&client, &base, Some("application/json"), &overflow.to_string()).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{failure}");
    let request_id = failure["request_id"].as_u64().unwrap_or_else(|| panic!("no request id: {failure}"));
    assert_eq!(
        failure["error"],
        json!(format!("the model failed (request {request_id}; details in the service's log)")),
        "{failure}"
    );
    assert_eq!(failure.as_object().unwrap().len(), 2, "{failure}");

    // Nothing is held: the timed-out tasks' slots were freed too.
    let started = Instant::now();
    let settled = loop {
        let stats = stats(&client, &base).await;
        if stats["tasks_held"] == json!(0) {
            break stats;
        }
        assert!(started.elapsed() < PATIENCE, "tasks still held: {stats}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(settled["state"], json!("running"));
    // Each timed-out request dropped its future, which cancelled its task (one that finished
    // just before the cancel counts as done too).
    assert_eq!(settled["tasks_cancelled"], json!(timed_out), "{settled}");
    let tasks_done = settled["tasks_done"].as_u64().unwrap() as usize;
    assert!((done..=done + timed_out).contains(&tasks_done), "{settled}");
    assert_eq!(settled["tasks_expired"], json!(0), "{settled}");
    assert_eq!((settled["tasks_failed"].clone(), settled["worker_deaths"].clone()), (json!(1), json!(0)));
    assert_eq!((settled["workers_ready"].clone(), settled["workers_wanted"].clone()), (json!(2), json!(2)));
    assert!(settled["run_time_p99_s"].as_f64().unwrap() >= settled["run_time_p50_s"].as_f64().unwrap());

    // SIGTERM with requests in flight: each is answered, then the service exits 0.
    let last: Vec<Task> = make_tasks(8, 13);
    let mut requests = JoinSet::new();
    for task in last.clone() {
        let (client, base) = (client.clone(), Arc::clone(&base));
        requests.spawn(async move {
            let response = client.post(format!("{base}/score")).json(&body(&task)).send().await.unwrap();
            (task, response.status(), response.json::<Value>().await.unwrap())
        });
    }
    let started = Instant::now();
    while stats(&client, &base).await["tasks_held"] == json!(0) && started.elapsed() < Duration::from_secs(5) {
        tokio::task::yield_now().await;
    }
    let pid = libc::pid_t::try_from(service.child.id().unwrap()).unwrap();
    // SAFETY: kill has no memory effects; pid is the service this test started (positive).
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    while let Some(outcome) = requests.join_next().await {
        let (task, status, answer) = outcome.unwrap();
        match status {
            StatusCode::OK => assert_eq!(answer, json!({ "value": expected(&task) })),
            // Sent after the drain began: refused, not dropped.
            StatusCode::SERVICE_UNAVAILABLE => {
                assert!(answer["error"].as_str().unwrap().contains("draining"), "{answer}")
            }
            _ => panic!("{task:?} answered {status} during the drain: {answer}"),
        }
    }
    let exit = tokio::time::timeout(PATIENCE, service.child.wait()).await.expect("the service exits").unwrap();
    let stderr = service.stderr.await.unwrap();
    assert!(exit.success(), "the service exited with {exit}:\n{stderr}");
    assert!(stderr.contains("rs4py-service: SIGTERM: draining\n"), "{stderr}");
    assert!(stderr.contains("rs4py-service: drained; 0 unfinished tasks failed; bye\n"), "{stderr}");
    assert!(stderr.starts_with(&format!("rs4py-service: pid {pid}\n")), "{stderr}");
    let prefix = format!("[request {request_id}] ");
    let logged: Vec<&str> = stderr.lines().filter_map(|line| line.strip_prefix(&prefix)).collect();
    assert_eq!(logged.first(), Some(&"the model failed"), "{stderr}");
    assert_eq!(logged.get(1), Some(&"Traceback (most recent call last):"), "{stderr}");
    assert!(logged.iter().any(|line| line.contains("engine.py")), "{stderr}");
    assert_eq!(logged.last(), Some(&"OverflowError: cannot convert float infinity to integer"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_batching_concurrent_requests_are_batched_and_each_answered_right() {
    let mut service = start_service_with(&["--batch-max-size", "8", "--batch-max-wait-ms", "2"]).await;
    let base = Arc::new(service.base.clone());
    let client = Client::new();
    let tasks = make_tasks(200, 21);
    let in_flight = Arc::new(Semaphore::new(MAX_TASKS));
    let mut requests = JoinSet::new();
    for task in tasks {
        let (client, base, in_flight) = (client.clone(), Arc::clone(&base), Arc::clone(&in_flight));
        requests.spawn(async move {
            let _permit = in_flight.acquire_owned().await.unwrap();
            let (status, answer, _) = score(&client, &base, &task, "").await;
            (status, answer, expected(&task))
        });
    }
    while let Some(done) = requests.join_next().await {
        let (status, answer, want) = done.unwrap();
        assert_eq!((status, answer), (StatusCode::OK, json!({ "value": want })));
    }
    let stats = stats(&client, &base).await;
    assert_eq!(stats["tasks_done"], 200, "{stats}");
    let batches = stats["batches"].as_u64().unwrap();
    assert!((25..=200).contains(&batches), "200 tasks in batches of at most 8: {stats}");
    let mean = stats["batch_size_mean"].as_f64().unwrap();
    assert!((1.0..=8.0).contains(&mean), "{stats}");
    assert!(stats["queue_wait_p99_s"].as_f64().is_some(), "{stats}");
    let pid = libc::pid_t::try_from(service.child.id().unwrap()).unwrap();
    // SAFETY: kill has no memory effects; pid is the service this test started (positive).
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let exit = tokio::time::timeout(PATIENCE, service.child.wait()).await.expect("the service exits").unwrap();
    assert!(exit.success(), "the service exited with {exit}");
}
