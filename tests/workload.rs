//! The workload crate against its Python twin: `rs4py_workload`'s task list, digest and model
//! equal, value for value, `py4cc.workload.taskgen`'s and `py4cc.engine`'s, imported from this
//! repository's source tree (this test binary starts Python with the repository first on
//! `sys.path`, and builds no Driver).

use std::path::Path;

use rs4py::{Gil, StartOptions};
use rs4py_workload::{big_model, make_tasks, task_digest};

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
fn the_task_list_digest_and_model_equal_the_python_ones() {
    let gil = python();
    let taskgen = source_module(&gil, "py4cc.workload.taskgen", "py4cc/workload/taskgen.py");
    let engine = source_module(&gil, "py4cc.engine", "py4cc/engine.py");

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
