//! The reference workload (`examples/many_threads/workload.rs`): its own rules, then against
//! its Python twin: the task list, digest and model equal, value for value,
//! `py4cc.workload.taskgen`'s and `py4cc.engine`'s, imported from this repository's source tree
//! (this test binary starts Python with the repository first on `sys.path`, and builds no
//! Driver). `py4cc/workload/` is not in the published package: there the comparison with the
//! task generator is ignored, with that reason.

#[allow(dead_code)]
#[path = "../examples/many_threads/workload.rs"]
mod workload;

use std::path::Path;
use std::time::Duration;

use rs4py::{Gil, ResultStatus, StartOptions};
use workload::{Mode, Outcome, Report, SplitMix64, WORD_LISTS, big_model, make_tasks, percentile, round, task_digest};

/// Python, with this repository's `py4cc` (workload included) importable.
fn python() -> Gil {
    rs4py::start(&StartOptions { python_path: vec![env!("CARGO_MANIFEST_DIR").into()] }).unwrap();
    Gil::acquire().unwrap()
}

/// Imports `name`, checking it is the source tree's `relative_path`.
fn source_module<'py>(gil: &'py Gil, name: &str, relative_path: &str) -> rs4py::Object<'py> {
    let module = gil.import(name).unwrap();
    let path: String = module.getattr("__file__").unwrap().extract().unwrap();
    assert_eq!(Path::new(&path), Path::new(env!("CARGO_MANIFEST_DIR")).join(relative_path), "{name}");
    module
}

#[test]
#[cfg_attr(not(rs4py_source_tree), ignore = "py4cc/workload/ is not in the published package")]
fn the_task_list_and_digest_equal_the_python_ones() {
    let gil = python();
    let taskgen = source_module(&gil, "py4cc.workload.taskgen", "py4cc/workload/taskgen.py");

    assert_eq!(task_digest(&[]), "cbf29ce484222325");
    for seed in [0, 1, 42, 12_345, 2_024, u64::MAX] {
        let tasks = make_tasks(1000, seed);
        let python_tasks = taskgen.call_method("make_tasks", (1000, seed), ()).unwrap();
        let python_digest: String = taskgen.call_method("task_digest", (python_tasks,), ()).unwrap().extract().unwrap();
        assert_eq!(task_digest(&tasks), python_digest, "seed {seed}");
    }
    assert_ne!(task_digest(&make_tasks(1000, 1)), task_digest(&make_tasks(1000, 2)));

    // Field by field, floats bit for bit, and the model's value on both sides.
    const N: usize = 2000;
    for seed in [7, 42] {
        let tasks = make_tasks(N, seed);
        let python: Vec<(Vec<f64>, Vec<String>, i64)> = gil
            .eval(&format!(
                "[(list(t.float_features), list(t.str_features), t.int_feature) \
                 for t in __import__('py4cc.workload.taskgen').workload.taskgen.make_tasks({N}, {seed})]"
            ))
            .unwrap()
            .extract()
            .unwrap();
        assert_eq!(python.len(), N);
        let python_values: Vec<i64> = gil
            .eval(&format!(
                "[__import__('py4cc.engine').engine.big_model(*t) \
                 for t in __import__('py4cc.workload.taskgen').workload.taskgen.make_tasks({N}, {seed})]"
            ))
            .unwrap()
            .extract()
            .unwrap();
        for (index, (task, (floats, strs, int_feature))) in tasks.iter().zip(&python).enumerate() {
            let bits = |values: &[f64]| values.iter().map(|value| value.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&task.float_features), bits(floats), "seed {seed} task {index}");
            assert_eq!(&task.str_features, strs, "seed {seed} task {index}");
            assert_eq!(task.int_feature, *int_feature, "seed {seed} task {index}");
            assert_eq!(Some(python_values[index]), big_model(floats, strs, *int_feature), "seed {seed} task {index}");
        }
    }
}

#[test]
fn the_model_equals_the_python_one() {
    let gil = python();
    let engine = source_module(&gil, "py4cc.engine", "py4cc/engine.py");
    // The model on inputs where upper-casing changes the length, and at the edges.
    let cases: Vec<(Vec<f64>, Vec<&str>, i64)> = vec![
        (vec![-1.5, 2.7], vec!["straße"], -4),
        (vec![0.1, 0.2, 0.3], vec!["ﬁ", "ŉ", "ǆ", "ΐ"], 0),
        (vec![-0.0, 1e-300], vec!["", "Zoë\0x", "✓"], 999),
        (vec![999.999_999_999, 0.000_000_001], vec!["İ"], i64::MIN),
        (vec![1e15, 1e15], vec![], i64::MAX - 10_000_000_000_000_000),
    ];
    let big_model_py = engine.getattr("big_model").unwrap();
    for (floats, strs, int_feature) in cases {
        let python: i64 = big_model_py.call((&floats, &strs, int_feature), ()).unwrap().extract().unwrap();
        assert_eq!(Some(python), big_model(&floats, &strs, int_feature), "{floats:?} {strs:?} {int_feature}");
    }
}

#[test]
fn splitmix64_matches_the_reference_sequence() {
    let mut rng = SplitMix64::new(0);
    assert_eq!(
        [rng.next_u64(), rng.next_u64(), rng.next_u64()],
        [0xe220a8397b1dcdaf, 0x6e789e6aa1b965f4, 0x06c45d188009454f]
    );
}

#[test]
fn rounding_follows_the_exact_binary_value_as_python_does() {
    // 0.10825 is stored as 0.108249999..., which Python's round(x, 4) makes 0.1082.
    assert_eq!(round(0.10825, 4), 0.1082);
    assert_eq!(round(2.675, 2), 2.67);
    assert_eq!(round(1457.04, 1), 1457.0);
}

#[test]
fn a_wrong_failed_or_missing_result_is_a_problem() {
    let tasks = make_tasks(4, 3);
    let expected: Vec<i64> =
        tasks.iter().map(|t| big_model(&t.float_features, &t.str_features, t.int_feature).unwrap()).collect();
    let outcome = |status, value| Outcome { status, value, message: String::new(), latency: Duration::ZERO };
    let outcomes = [
        outcome(ResultStatus::Done, expected[0]),
        outcome(ResultStatus::Done, expected[1] + 1),
        outcome(ResultStatus::Failed, expected[2]),
    ];
    let report = Report::new(&tasks, 2, 1, Mode::Poll, Duration::from_secs(1), &outcomes);
    assert_eq!(report.verified, 1);
    assert_eq!(report.problems.len(), 3, "{:?}", report.problems);
    assert!(report.problems[0].starts_with("task 1: Done"), "{:?}", report.problems);
    assert!(report.problems[1].starts_with("task 2: Failed"), "{:?}", report.problems);
    assert_eq!(report.problems[2], "task 3: no result");
    assert!(report.to_json().contains("\"verified\": 1, \"errors\": 3"), "{}", report.to_json());
}

#[test]
fn percentile_is_nearest_rank() {
    let values: Vec<f64> = (1..=10).map(f64::from).collect();
    assert_eq!(percentile(&values, 50.0), 5.0);
    assert_eq!(percentile(&values, 99.0), 10.0);
    assert_eq!(percentile::<f64>(&[], 50.0), 0.0);
}

#[test]
fn uuids_have_the_version_4_shape() {
    for task in make_tasks(50, 7) {
        let uuid = &task.str_features[2];
        let parts: Vec<&str> = uuid.split('-').collect();
        assert_eq!(parts.iter().map(|p| p.len()).collect::<Vec<_>>(), [8, 4, 4, 4, 12], "{uuid}");
        assert!(parts[2].starts_with('4') && "89ab".contains(&parts[3][..1]), "{uuid}");
    }
}

#[test]
fn every_word_list_is_filled() {
    assert!(WORD_LISTS.first.len() >= 10 && WORD_LISTS.last.len() >= 10 && WORD_LISTS.words.len() >= 40);
}

#[test]
fn the_generator_and_model_keep_their_documented_examples() {
    let tasks = make_tasks(3, 42);
    assert_eq!(tasks, make_tasks(3, 42));
    assert!(tasks.iter().all(|task| (0..1000).contains(&task.int_feature)));
    assert_eq!(big_model(&[-1.5, 2.7], &["straße"], -4), Some(4 + 7));
    assert_eq!(big_model(&[f64::NAN], &[] as &[&str], 0), None);
    assert_eq!(big_model(&[1e19], &[] as &[&str], 0), None);
    assert_eq!(big_model(&[1.0], &[] as &[&str], i64::MAX), None);
    assert_eq!(workload::task_sleep_seconds(199), 100.0 * 0.0001);
}
