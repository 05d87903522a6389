//! General tasks (`Driver::submit_call`), `initialize_with` and `preload` end to end: every
//! answer type read as the Rust type asked for (0 and negative numbers are answers like any
//! other), an answer of the wrong type, keyword arguments, bytes with every byte value, an
//! Engine that raises, capacity and keys shared with the demo protocol, each start method.
//!
//! The Engine is py4cc's own test module `py4cc_general_engines` (its `CommandEngine.run`
//! does what its first argument says), reached through `DriverOptions::python_path`.

#[allow(dead_code)]
#[path = "../examples/many_threads/workload.rs"]
mod workload;

#[allow(dead_code)]
#[path = "common/workers.rs"]
mod workers;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use rs4py::{
    Bytes, Driver, DriverOptions, Error, FromPython, Key, Preload, ResultStatus, StartMethod, SubmitStatus, TaskResult,
    ToPython,
};
use workload::big_model;

mod common;

#[allow(dead_code)]
#[path = "common/within.rs"]
mod within;

/// Long enough for any single task here; a wait that needs it is a failure.
const PATIENCE: Duration = Duration::from_secs(30);

const CAPACITY_MESSAGE: &str = "Model engine is working at capacity. Try again later.";
const NOT_FINISHED_MESSAGE: &str = "The requested task is not finished";

fn engines_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("py4cc/tests/engines")
}

fn options(start_method: StartMethod) -> DriverOptions {
    DriverOptions {
        engine: "py4cc_general_engines:CommandEngine".into(),
        python_path: vec![engines_dir()],
        n_subprocesses: 1,
        start_method,
        worker_output: Some(workers::captured_output()),
        ..Default::default()
    }
}

const NO_NAMES: [&str; 0] = [];

/// A CommandEngine driver, initialized with `extra`.
fn command_driver(options: DriverOptions, extra: &[(&str, &dyn ToPython)]) -> Driver {
    let driver = Driver::new(options).unwrap();
    driver.initialize_with(r#"{"c": 1}"#, &NO_NAMES, &NO_NAMES, extra).unwrap();
    driver
}

/// Submits `args` (the command first) and waits for the answer, read as a `T`.
fn call<T>(driver: &Driver, args: impl rs4py::IntoArgs) -> TaskResult<T>
where
    T: for<'py> FromPython<'py> + Default,
{
    let receipt = driver.submit_call::<T>(args, ());
    assert_eq!((receipt.status, receipt.message.as_str()), (SubmitStatus::Accepted, ""));
    assert!(receipt.key.raw() > 0);
    driver.wait(receipt.key, PATIENCE)
}

/// `call`, which must succeed; its answer.
fn answer<T>(driver: &Driver, args: impl rs4py::IntoArgs) -> T
where
    T: for<'py> FromPython<'py> + Default + std::fmt::Debug,
{
    let result = call::<T>(driver, args);
    assert_eq!((result.status, result.message.as_str()), (ResultStatus::Done, ""), "{result:?}");
    result.value
}

#[test]
fn every_answer_type_reads_as_the_rust_type_asked_for() {
    let driver = command_driver(options(StartMethod::Forkserver), &[]);
    for value in [0i64, -1, -7, 42, i64::MIN, i64::MAX] {
        assert_eq!(answer::<i64>(&driver, ("value", value)), value, "i64 {value}");
    }
    for value in [0.0f64, -0.5, 3.7, f64::MAX, f64::NEG_INFINITY] {
        assert_eq!(answer::<f64>(&driver, ("value", value)), value, "f64 {value}");
    }
    assert_eq!(answer::<f64>(&driver, ("value", 3)), 3.0, "an int answer reads as a float");
    assert_eq!(answer::<String>(&driver, ("value", "versicolor 🌸")), "versicolor 🌸");
    assert_eq!(answer::<String>(&driver, ("value", "")), "");
    assert_eq!(answer::<Vec<f64>>(&driver, ("value", vec![0.25, -1.0, 0.0])), [0.25, -1.0, 0.0]);
    assert_eq!(answer::<Vec<f64>>(&driver, ("value", Vec::<f64>::new())), Vec::<f64>::new());
    let probabilities = HashMap::from([("setosa".to_string(), 0.5), ("virginica".to_string(), 0.0)]);
    assert_eq!(answer::<HashMap<String, f64>>(&driver, ("value", &probabilities)), probabilities);
    let triple = (0i64, "zero".to_string(), vec![1.5]);
    assert_eq!(answer::<(i64, String, Vec<f64>)>(&driver, ("value", &triple)), triple);
    assert_eq!(answer::<Option<f64>>(&driver, ("value", Some(-2.0))), Some(-2.0));
    assert_eq!(answer::<Option<f64>>(&driver, ("value", None::<f64>)), None);
    assert_eq!(answer::<Option<Vec<i64>>>(&driver, ("value", vec![0, -3])), Some(vec![0, -3]));
    assert!(!answer::<bool>(&driver, ("value", false)));
    answer::<()>(&driver, ("value", ()));
    let nested = vec![Some((1i64, "a".to_string())), None];
    assert_eq!(answer::<Vec<Option<(i64, String)>>>(&driver, ("value", &nested)), nested);
}

#[test]
fn an_answer_of_the_wrong_type_fails_naming_both_types() {
    let driver = command_driver(options(StartMethod::Forkserver), &[]);
    let result = call::<f64>(&driver, ("value", "3.7"));
    assert_eq!((result.status, result.value), (ResultStatus::Failed, 0.0));
    assert_eq!(
        result.message,
        "the engine's answer '3.7' is a Python str, which does not convert to the Rust type f64: \
         conversion failed: expected float, got str"
    );
    let result = call::<Vec<f64>>(&driver, ("value", HashMap::from([("a", 1.0)])));
    assert_eq!(result.status, ResultStatus::Failed);
    assert!(result.message.contains("is a Python dict, which does not convert to the Rust type alloc::vec::Vec<f64>"));
    let result = call::<i64>(&driver, ("value", 2.5));
    assert_eq!(
        result.message,
        "the engine's answer 2.5 is a Python float, which does not convert to the Rust type i64: \
         conversion failed: expected int, got float"
    );
    let huge = call::<i64>(&driver, ("value", u64::MAX));
    assert_eq!(huge.status, ResultStatus::Failed);
    assert!(huge.message.contains("18446744073709551615 is a Python int"), "{}", huge.message);
    assert!(huge.message.contains("int does not fit in i64"), "{}", huge.message);
    let receipt = driver.submit_call::<(i64, String)>(("value", (1, 2)), ());
    let result = driver.wait(receipt.key, PATIENCE);
    assert!(result.message.ends_with("item 1: expected str, got int"), "{}", result.message);
    // The task is gone like any finished one, and the worker serves on.
    assert_eq!(driver.retrieve(receipt.key).status, ResultStatus::Error);
    assert_eq!(answer::<i64>(&driver, ("value", 1)), 1);
}

#[test]
fn keyword_arguments_arrive_by_name() {
    let driver = command_driver(options(StartMethod::Forkserver), &[]);
    type Echo = (Vec<f64>, HashMap<String, String>);
    let receipt = driver.submit_call::<Echo>(("echo", 1.5, -2.0), [("model", "iris"), ("unit", "cm")]);
    let result = driver.wait(receipt.key, PATIENCE);
    assert_eq!(result.status, ResultStatus::Done, "{}", result.message);
    let expected = HashMap::from([("model".to_string(), "iris".to_string()), ("unit".into(), "cm".into())]);
    assert_eq!(result.value, (vec![1.5, -2.0], expected));
    // Mixed types go as &dyn ToPython; a runtime-sized list as a Vec.
    let kwargs: Vec<(String, Box<dyn ToPython>)> =
        vec![("n".into(), Box::new(3)), ("names".into(), Box::new(vec!["a", "b"]))];
    let kwargs: Vec<(&str, &dyn ToPython)> = kwargs.iter().map(|(name, value)| (name.as_str(), &**value)).collect();
    let receipt = driver.submit_call::<(Vec<i64>, HashMap<String, Vec<String>>)>(("echo",), kwargs);
    let result = driver.wait(receipt.key, PATIENCE);
    assert_eq!(result.status, ResultStatus::Failed, "n is an int, not a list of str: {}", result.message);
    assert!(result.message.contains("value of \"n\": expected list or tuple, got int"), "{}", result.message);
    // A keyword given twice is refused before it reaches Python.
    let refused = driver.submit_call::<()>(("echo",), [("a", 1), ("a", 2)]);
    assert_eq!((refused.status, refused.key.raw()), (SubmitStatus::Error, 0));
    assert_eq!(refused.message, "submit_call failed: invalid argument: keyword argument key \"a\" given twice");
}

#[test]
fn bytes_carry_every_byte_value_to_the_engine_and_back() {
    let driver = command_driver(options(StartMethod::Forkserver), &[]);
    let every: Vec<u8> = (0..=255).collect();
    let reversed: Vec<u8> = every.iter().rev().copied().collect();
    assert_eq!(answer::<Bytes>(&driver, ("reverse", Bytes(&every[..]))), Bytes(reversed));
    let large: Vec<u8> = (0..1_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let back = answer::<Bytes>(&driver, ("reverse", Bytes(&large)));
    assert!(back.0.iter().rev().eq(large.iter()), "a megabyte each way");
    assert_eq!(answer::<Bytes>(&driver, ("value", Bytes(b""))), Bytes(Vec::new()));
    // A Vec<u8> is a list of ints, not bytes: the Engine's bytes() reverses it all the same.
    assert_eq!(answer::<Bytes>(&driver, ("reverse", vec![1u8, 2, 255])), Bytes(vec![255, 2, 1]));
    let as_list = call::<Vec<u8>>(&driver, ("value", Bytes(&[1u8, 2][..])));
    assert_eq!(as_list.status, ResultStatus::Failed);
    assert!(as_list.message.contains("b'\\x01\\x02' is a Python bytes, which does not convert to the Rust type"));
}

#[test]
fn an_engine_that_raises_fails_its_task_with_the_traceback() {
    let driver = command_driver(options(StartMethod::Forkserver), &[]);
    let pids = driver.worker_pids().unwrap();
    let result = call::<f64>(&driver, ("raise", "no model for you"));
    assert_eq!((result.status, result.value), (ResultStatus::Failed, 0.0));
    assert!(result.message.starts_with("Traceback (most recent call last):"), "{}", result.message);
    assert!(result.message.contains("in run"), "{}", result.message);
    assert!(result.message.trim_end().ends_with("ValueError: no model for you"), "{}", result.message);
    // The worker's own frames say how the call travelled, not where the model failed.
    assert!(!result.message.contains("worker.py"), "{}", result.message);
    assert!(result.message.contains("of py4cc left out; RS4PY_FULL_TRACEBACKS=1 shows them]"), "{}", result.message);
    let result = call::<f64>(&driver, ("unpicklable",));
    assert_eq!(result.status, ResultStatus::Failed);
    assert!(result.message.contains("cannot be pickled"), "{}", result.message);
    let result = call::<f64>(&driver, ("unknown command",));
    assert!(result.message.contains("KeyError: \"unknown command 'unknown command'\""), "{}", result.message);
    assert_eq!(answer::<f64>(&driver, ("value", -0.5)), -0.5, "the worker serves on");
    assert_eq!(driver.worker_pids().unwrap(), pids);
}

#[test]
fn initialize_with_passes_any_convertible_extra_arguments() {
    let packed = Bytes(vec![0u8, 128, 255]);
    let sizes = vec![0i64, -1];
    let weights = HashMap::from([("w".to_string(), 0.5)]);
    let extra: [(&str, &dyn ToPython); 5] =
        [("path", &"/srv/model.joblib"), ("packed", &packed), ("sizes", &sizes), ("weights", &weights), ("none", &())];
    let driver = command_driver(options(StartMethod::Spawn), &extra);
    assert_eq!(answer::<String>(&driver, ("extra", "path")), "/srv/model.joblib");
    assert_eq!(answer::<Bytes>(&driver, ("extra", "packed")), packed);
    assert_eq!(answer::<Vec<i64>>(&driver, ("extra", "sizes")), sizes);
    assert_eq!(answer::<HashMap<String, f64>>(&driver, ("extra", "weights")), weights);
    assert_eq!(answer::<Option<i64>>(&driver, ("extra", "none")), None);

    // An argument the Engine's initialize does not take fails initialize like any error.
    let driver = Driver::new(DriverOptions {
        engine: "py4cc_user_engines:SleepEngine".into(),
        worker_output: Some(workers::captured_output()),
        ..options(StartMethod::default())
    })
    .unwrap();
    driver.initialize_with("{}", &NO_NAMES, &NO_NAMES, [("threshold", 0.5)]).unwrap();
    let driver = Driver::new(DriverOptions {
        engine: "py4cc_user_engines:EchoEngine".into(),
        worker_output: Some(workers::captured_output()),
        ..options(StartMethod::default())
    })
    .unwrap();
    driver.initialize_with(r#"{"add": 0}"#, &["f"], &NO_NAMES, [("bonus", "yes")]).unwrap();
    let receipt = driver.submit(&[1.0], &NO_NAMES, 0);
    let result = driver.wait(receipt.key, PATIENCE);
    assert_eq!(result.status, ResultStatus::Done);
    assert!(result.message.contains(r#""extra": {"bonus": "yes"}"#), "{}", result.message);
    let error = Driver::new(options(StartMethod::Forkserver))
        .unwrap()
        .initialize_with("{}", &NO_NAMES, &NO_NAMES, [("a", 1), ("a", 2)])
        .unwrap_err();
    assert!(matches!(error, Error::InvalidArgument(_)), "{error:?}");
}

#[test]
fn demo_and_general_tasks_share_keys_capacity_and_status_rules() {
    let driver = Driver::new(DriverOptions {
        n_subprocesses: 1,
        max_tasks: 2,
        worker_output: Some(workers::captured_output()),
        ..Default::default()
    })
    .unwrap();
    let general = driver.submit_call::<f64>(("not", "initialized"), ());
    assert_eq!(
        (general.status, general.key.raw(), general.message.as_str()),
        (SubmitStatus::Error, 0, "the driver is not initialized; call initialize() first")
    );
    driver.initialize("{}", &["x"], &["s"]).unwrap();
    let demo = driver.submit(&[2.5], &["ab"], 1);
    let kwargs = [("float_features", &[2.5] as &dyn ToPython), ("str_features", &["ab"]), ("int_feature", &1)];
    let general = driver.submit_call::<(i64, String)>((), kwargs);
    assert_eq!((demo.status, general.status), (SubmitStatus::Accepted, SubmitStatus::Accepted));
    assert_eq!(general.key.raw(), demo.key + 1, "one sequence of keys");
    let full = driver.submit_call::<f64>((), ());
    assert_eq!(
        (full.status, full.key, full.message.as_str()),
        (SubmitStatus::AtCapacity, Key::new(0), CAPACITY_MESSAGE)
    );
    let expected = big_model(&[2.5], &["ab"], 1).unwrap();
    // An early retrieve answers NotReady, or Done when the worker was quicker (the task is
    // then collected by it, and waiting again would find no such key).
    let early = driver.retrieve(general.key);
    let result = if early.status == ResultStatus::NotReady {
        assert_eq!((early.value, early.message.as_str()), ((0, String::new()), NOT_FINISHED_MESSAGE));
        driver.wait(general.key, PATIENCE)
    } else {
        early
    };
    assert_eq!(result.status, ResultStatus::Done, "{}", result.message);
    assert_eq!((result.key, result.value), (general.key.raw(), (expected, String::new())));
    assert_eq!(driver.wait(demo.key, PATIENCE).value, expected);
    // Zero is a general answer like any other, where the demo protocol calls it a failure.
    let zero = [("float_features", &[0.0] as &dyn ToPython), ("str_features", &[""]), ("int_feature", &0)];
    let general = driver.submit_call::<(i64, String)>((), zero);
    assert_eq!(driver.wait(general.key, PATIENCE).value, (0, String::new()));
    let demo = driver.submit(&[0.0], &[""], 0);
    assert_eq!(driver.wait(demo.key, PATIENCE).status, ResultStatus::Failed);
    // Unknown keys, of either kind.
    let unknown = driver.retrieve(Key::<f64>::new(general.key.raw()));
    assert_eq!((unknown.status, unknown.value), (ResultStatus::Error, 0.0));
    assert!(unknown.message.starts_with("unknown key"), "{}", unknown.message);
    driver.finalize();
    let late = driver.submit_call::<f64>((), ());
    assert_eq!(late.status, SubmitStatus::Error);
    assert!(late.message.contains("finalized"), "{}", late.message);
}

#[test]
fn wait_and_retrieve_answer_not_ready_then_done_for_a_general_task() {
    let driver = command_driver(options(StartMethod::Forkserver), &[]);
    let receipt = driver.submit_call::<String>(("sleep", 0.5, "late"), ());
    let early = driver.wait(receipt.key, Duration::from_millis(10));
    assert_eq!(
        (early.status, early.value.as_str(), early.message.as_str()),
        (ResultStatus::NotReady, "", NOT_FINISHED_MESSAGE)
    );
    assert_eq!(driver.retrieve(receipt.key).status, ResultStatus::NotReady);
    let done = driver.wait(receipt.key, PATIENCE);
    assert_eq!((done.status, done.value.as_str()), (ResultStatus::Done, "late"));
    assert_eq!(driver.retrieve(receipt.key).status, ResultStatus::Error, "retrieved once");
}

#[test]
fn a_general_task_past_its_timeout_fails_and_the_next_one_succeeds() {
    let driver = command_driver(
        DriverOptions {
            task_timeout: Some(Duration::from_millis(500)),
            worker_output: Some(workers::captured_output()),
            ..options(StartMethod::Forkserver)
        },
        &[],
    );
    let result = call::<String>(&driver, ("sleep", 60.0, "never"));
    assert_eq!((result.status, result.value.as_str()), (ResultStatus::Failed, ""));
    assert!(result.message.contains("timed out after 0.5 s"), "{}", result.message);
    assert_eq!(answer::<i64>(&driver, ("value", -3)), -3);
}

#[test]
fn call_method_names_the_method_general_tasks_call() {
    let driver = command_driver(
        DriverOptions {
            call_method: "predict".into(),
            worker_output: Some(workers::captured_output()),
            ..options(StartMethod::Fork)
        },
        &[],
    );
    let rows = vec![vec![1.0, 2.0], vec![0.5, -0.5]];
    let receipt = driver.submit_call::<Vec<f64>>((&rows,), [("scale", 2.0)]);
    assert_eq!(driver.wait(receipt.key, PATIENCE).value, [6.0, 0.0]);
    let missing = Driver::new(DriverOptions {
        call_method: "predict_proba".into(),
        worker_output: Some(workers::captured_output()),
        ..options(StartMethod::Fork)
    })
    .unwrap()
    .initialize("{}", &NO_NAMES, &NO_NAMES)
    .unwrap_err();
    let Error::Python(exception) = missing else { panic!("{missing:?}") };
    assert_eq!(exception.type_name, "RuntimeError");
    assert!(exception.message.contains("has no method 'predict_proba' (call_method)"), "{}", exception.message);
}

#[test]
fn many_threads_share_general_and_demo_tasks_on_each_start_method() {
    for start_method in [StartMethod::Fork, StartMethod::Forkserver, StartMethod::Spawn] {
        let driver = Arc::new(command_driver(
            DriverOptions {
                n_subprocesses: 2,
                max_tasks: 8,
                worker_output: Some(workers::captured_output()),
                ..options(start_method)
            },
            &[("scale", &3.0)],
        ));
        let threads: Vec<_> = (0..6)
            .map(|thread| {
                let driver = Arc::clone(&driver);
                thread::spawn(move || {
                    for round in 0..15i64 {
                        let value = thread as i64 * 100 - round;
                        let receipt = loop {
                            let receipt = driver.submit_call::<(Vec<i64>, HashMap<String, f64>)>(
                                ("echo", value, 0),
                                [("x", value as f64 / 4.0)],
                            );
                            if receipt.status != SubmitStatus::AtCapacity {
                                break receipt;
                            }
                            thread::sleep(Duration::from_millis(1));
                        };
                        assert_eq!(receipt.status, SubmitStatus::Accepted, "{}", receipt.message);
                        let result = driver.wait(receipt.key, PATIENCE);
                        assert_eq!(result.status, ResultStatus::Done, "{}", result.message);
                        let expected = HashMap::from([("x".to_string(), value as f64 / 4.0)]);
                        assert_eq!(result.value, (vec![value, 0], expected), "{start_method:?}");
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        driver.finalize();
    }
}

/// `(imported_in, initialized_in, pid)` of the worker that ran the task: the processes that
/// imported the Engine's module and initialised the Engine, and its own.
fn where_it_ran(driver: &Driver) -> (u32, u32, u32) {
    answer::<(u32, u32, u32)>(driver, ("pids",))
}

/// Whether this process has imported the Engine's module.
fn imported_here() -> bool {
    let gil = rs4py::Gil::acquire().unwrap();
    gil.eval("'py4cc_general_engines' in __import__('sys').modules").unwrap().extract().unwrap()
}

// Each preload test runs in a child process of its own: the module must not have been
// imported here by another test, or every forked worker would inherit it anyway.

#[test]
fn preload_engine_with_fork_builds_one_engine_here_that_workers_inherit() {
    common::run_in_child_process("preload_engine_in_a_fresh_process", |command| command);
}

#[test]
#[ignore = "run by preload_engine_with_fork_builds_one_engine_here_that_workers_inherit"]
fn preload_engine_in_a_fresh_process() {
    let options = DriverOptions {
        n_subprocesses: 2,
        preload: Preload::Engine,
        worker_output: Some(workers::captured_output()),
        ..options(StartMethod::Fork)
    };
    let driver = Driver::new(options).unwrap();
    assert!(!imported_here());
    driver.initialize_with("{}", &NO_NAMES, &NO_NAMES, [("scale", 2.0)]).unwrap();
    assert!(imported_here());
    let here = std::process::id();
    for _ in 0..4 {
        let (imported_in, initialized_in, pid) = where_it_ran(&driver);
        assert_eq!((imported_in, initialized_in), (here, here), "imported and initialised here only");
        assert_ne!(pid, here);
        assert!(driver.worker_pids().unwrap().contains(&pid));
    }
    assert_eq!(answer::<f64>(&driver, ("extra", "scale")), 2.0, "initialized with the extra arguments");
}

#[test]
fn preload_module_with_fork_imports_it_here_and_each_worker_builds_its_engine() {
    common::run_in_child_process("preload_module_in_a_fresh_process", |command| command);
}

#[test]
#[ignore = "run by preload_module_with_fork_imports_it_here_and_each_worker_builds_its_engine"]
fn preload_module_in_a_fresh_process() {
    let here = std::process::id();
    let driver = command_driver(
        DriverOptions {
            n_subprocesses: 2,
            worker_output: Some(workers::captured_output()),
            ..options(StartMethod::Fork)
        },
        &[],
    );
    let (imported_in, initialized_in, pid) = where_it_ran(&driver);
    assert_eq!((imported_in, initialized_in), (pid, pid), "without preload, each worker does both");
    driver.finalize();
    assert!(!imported_here());

    let driver = command_driver(
        DriverOptions {
            n_subprocesses: 2,
            preload: Preload::Module,
            worker_output: Some(workers::captured_output()),
            ..options(StartMethod::Fork)
        },
        &[],
    );
    assert!(imported_here());
    let (imported_in, initialized_in, pid) = where_it_ran(&driver);
    assert_eq!(imported_in, here);
    assert_eq!(initialized_in, pid);
    assert_ne!(pid, here);
}

#[test]
fn preload_is_refused_with_spawn() {
    let error = Driver::new(DriverOptions {
        preload: Preload::Module,
        worker_output: Some(workers::captured_output()),
        ..options(StartMethod::Spawn)
    })
    .unwrap()
    .initialize("{}", &NO_NAMES, &NO_NAMES)
    .unwrap_err();
    let Error::Python(exception) = error else { panic!("{error:?}") };
    assert_eq!(exception.type_name, "ValueError");
    assert!(exception.message.starts_with("preload='module' needs start_method 'fork' or 'forkserver'"));
    assert_eq!(Preload::default(), Preload::Nothing);
}

#[test]
fn wait_async_and_cancel_take_a_typed_key_too() {
    let driver = Arc::new(command_driver(
        DriverOptions {
            n_subprocesses: 2,
            worker_output: Some(workers::captured_output()),
            ..options(StartMethod::Forkserver)
        },
        &[],
    ));
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_time().build().unwrap();
    let answers = runtime.block_on(async {
        let tasks: Vec<_> = (0..20i64)
            .map(|n| {
                let driver = Arc::clone(&driver);
                tokio::spawn(async move {
                    let receipt = driver.submit_call::<(i64, String)>(("value", (-n, format!("n{n}"))), ());
                    assert_eq!(receipt.status, SubmitStatus::Accepted, "{}", receipt.message);
                    let result = driver.wait_async(receipt.key).await;
                    assert_eq!(result.status, ResultStatus::Done, "{}", result.message);
                    result.value
                })
            })
            .collect();
        let mut answers = Vec::new();
        for task in tasks {
            answers.push(task.await.unwrap());
        }
        answers
    });
    assert_eq!(answers, (0..20i64).map(|n| (-n, format!("n{n}"))).collect::<Vec<_>>());

    // A wrong type fails through the future as through wait.
    let receipt = driver.submit_call::<Vec<f64>>(("value", "text"), ());
    let result = runtime.block_on(driver.wait_async(receipt.key));
    assert_eq!((result.status, result.value), (ResultStatus::Failed, Vec::new()));
    assert!(result.message.contains("is a Python str, which does not convert to the Rust type"), "{}", result.message);

    // Cancelled while it runs: the key then answers Error, saying so.
    let running = driver.submit_call::<String>(("sleep", 5.0, "never read"), ());
    assert!(driver.cancel(running.key));
    let result = driver.wait(running.key, PATIENCE);
    assert_eq!((result.status, result.value.as_str()), (ResultStatus::Error, ""));
    assert!(result.message.contains("cancel"), "{}", result.message);
    assert!(!driver.cancel(running.key), "cancelled once");
    // A future dropped before its answer cancels the task, a typed one too.
    let dropped = driver.submit_call::<f64>(("sleep", 5.0, 1.0), ());
    drop(driver.wait_async(dropped.key));
    assert_eq!(driver.retrieve(dropped.key).status, ResultStatus::Error);
}

#[test]
fn stats_and_drain_count_general_tasks_as_they_count_demo_ones() {
    let driver = command_driver(
        DriverOptions {
            n_subprocesses: 2,
            worker_output: Some(workers::captured_output()),
            ..options(StartMethod::Forkserver)
        },
        &[],
    );
    for n in 0..3i64 {
        assert_eq!(answer::<i64>(&driver, ("value", -n)), -n);
    }
    assert_eq!(call::<f64>(&driver, ("raise", "counted")).status, ResultStatus::Failed);
    // Python answered this one; only the Rust side finds it the wrong type: failed, as its
    // caller was told (py4cc counted it done; the Driver moves it).
    assert_eq!(call::<f64>(&driver, ("value", "text")).status, ResultStatus::Failed);
    // Long enough not to answer before the stats are read (its answer would add a run time).
    let cancelled = driver.submit_call::<f64>(("sleep", 10.0, 1.0), ());
    assert!(driver.cancel(cancelled.key));
    let stats = driver.stats().unwrap();
    assert_eq!((stats.tasks_done, stats.tasks_failed, stats.tasks_cancelled), (3, 2, 1));
    assert_eq!(stats.run_time_samples, 5, "every general task the Engine ran to an answer");
    let waiting = driver.submit_call::<String>(("sleep", 0.2, "drained"), ());
    let waiter = {
        let key = waiting.key;
        let driver = &driver;
        thread::scope(|scope| {
            let waiter = scope.spawn(move || driver.wait(key, PATIENCE));
            assert_eq!(driver.drain(PATIENCE), 0, "drain lets the running general task finish");
            waiter.join().unwrap()
        })
    };
    assert_eq!((waiter.status, waiter.value.as_str()), (ResultStatus::Done, "drained"));
}

/// Issue 16, item 1, through the Rust host (its `wait_readable` polls the worker's pipe for
/// output): a SIGSTOPped worker sent an 8 MB task blocks neither `submit`, `stats` nor
/// `finalize`, and the task fails once the worker has taken in nothing for `task_timeout`.
#[test]
fn a_stopped_worker_sent_8_mb_blocks_no_call_and_its_task_fails_after_the_bound() {
    let driver = Arc::new(command_driver(
        DriverOptions { task_timeout: Some(Duration::from_secs(2)), ..options(StartMethod::Forkserver) },
        &[],
    ));
    let [pid] = driver.worker_pids().unwrap()[..] else { panic!("one worker") };
    // SAFETY: sends SIGSTOP to this test's own worker process.
    assert_eq!(unsafe { libc::kill(pid as libc::pid_t, libc::SIGSTOP) }, 0);
    let big = vec![7u8; 8 << 20];
    let key = {
        let driver = Arc::clone(&driver);
        within::within(Duration::from_secs(10), "submit", move || driver.submit_call::<i64>(("length", Bytes(big)), ()))
    };
    assert_eq!((key.status, key.message.as_str()), (SubmitStatus::Accepted, ""));
    let stats = {
        let driver = Arc::clone(&driver);
        within::within(Duration::from_secs(5), "stats", move || driver.stats().unwrap())
    };
    assert_eq!(stats.tasks_held, 1);
    let failed = driver.wait(key.key, PATIENCE);
    assert_eq!(failed.status, ResultStatus::Failed);
    assert!(failed.message.contains(&format!("its worker process (pid {pid}) took in none of")), "{}", failed.message);
    assert!(!workers::process_exists(pid), "the stopped worker was killed");
    assert_eq!(answer::<i64>(&driver, ("length", Bytes(vec![1u8; 8 << 20]))), 8 << 20, "its replacement runs");
    let stopped = driver.worker_pids().unwrap()[0];
    // SAFETY: sends SIGSTOP to this test's own (replacement) worker process.
    assert_eq!(unsafe { libc::kill(stopped as libc::pid_t, libc::SIGSTOP) }, 0);
    assert_eq!(driver.submit_call::<i64>(("length", Bytes(vec![2u8; 8 << 20])), ()).status, SubmitStatus::Accepted);
    within::within(Duration::from_secs(15), "finalize", move || driver.finalize());
    assert!(!workers::process_exists(stopped), "finalize killed the stopped worker");
}
