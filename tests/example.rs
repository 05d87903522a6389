//! The main job end to end: `examples/many_threads` and `python3 -m py4cc.workload.harness` run
//! the same workload and print the same JSON line (same keys, in order, and the same task
//! digest). `py4cc/workload/` is not in the published package: there the comparisons with the
//! harness are ignored, with that reason, and the example is checked on its own.

#[allow(dead_code)]
#[path = "../examples/many_threads/workload.rs"]
mod workload;

use std::path::PathBuf;
use std::process::{Command, Output};

/// The example binary, built (if `cargo test` was told to build only this test, or it is
/// stale) with the profile of this test binary, into the same target directory.
fn example_binary() -> PathBuf {
    static BUILT: std::sync::Once = std::sync::Once::new();
    let deps = std::env::current_exe().unwrap();
    let profile_dir = deps.parent().and_then(|d| d.parent()).unwrap();
    BUILT.call_once(|| {
        let mut cargo = Command::new(env!("CARGO"));
        cargo.args(["build", "--quiet", "--example", "many_threads"]).current_dir(env!("CARGO_MANIFEST_DIR"));
        if profile_dir.file_name().is_some_and(|name| name == "release") {
            cargo.arg("--release");
        }
        let status = cargo.status().expect("cargo runs");
        assert!(status.success(), "could not build the example");
    });
    profile_dir.join("examples").join("many_threads")
}

const FLAGS: [&str; 10] = ["--tasks", "40", "--threads", "4", "--workers", "2", "--seed", "7", "--mode", "wait"];

/// The keys of a one-line JSON object, in order, and the value of each as text.
fn json_fields(line: &str) -> Vec<(String, String)> {
    let body = line
        .trim()
        .strip_prefix('{')
        .and_then(|l| l.strip_suffix('}'))
        .unwrap_or_else(|| panic!("not a JSON object: {line}"));
    body.split(", \"")
        .map(|field| {
            let (key, value) = field.split_once("\": ").unwrap_or_else(|| panic!("bad field {field:?} in {line}"));
            (key.trim_start_matches('"').to_string(), value.trim_matches('"').to_string())
        })
        .collect()
}

fn last_line(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).lines().last().unwrap_or_default().to_string()
}

/// Runs the example with `FLAGS`, which must succeed.
fn run_example() -> Output {
    let example = Command::new(example_binary()).args(FLAGS).output().expect("the example runs");
    assert!(
        example.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&example.stdout),
        String::from_utf8_lossy(&example.stderr)
    );
    example
}

#[test]
fn the_example_runs_the_reference_workload_and_verifies_every_answer() {
    let example = run_example();
    let fields = json_fields(&last_line(&example));
    let value = |key: &str| fields.iter().find(|(k, _)| k == key).unwrap_or_else(|| panic!("no {key}")).1.clone();
    assert_eq!((value("tasks"), value("verified"), value("errors")), ("40".into(), "40".into(), "0".into()));
    assert_eq!(value("digest"), workload::task_digest(&workload::make_tasks(40, 7)));
    assert!(
        String::from_utf8_lossy(&example.stdout).starts_with("rs4py many_threads: 40 tasks"),
        "a summary comes first"
    );
}

#[test]
#[cfg_attr(not(rs4py_source_tree), ignore = "py4cc/workload/ is not in the published package")]
fn the_example_and_the_harness_print_the_same_record_for_the_same_work() {
    let example = run_example();
    let harness = Command::new(rs4py::build_python().executable)
        .args(["-m", "py4cc.workload.harness"])
        .args(FLAGS)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("the harness runs");
    assert!(harness.status.success(), "{}", String::from_utf8_lossy(&harness.stderr));

    let ours = json_fields(&last_line(&example));
    let theirs = json_fields(&last_line(&harness));
    let keys = |fields: &[(String, String)]| fields.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>();
    assert_eq!(keys(&ours), keys(&theirs));
    let value = |fields: &[(String, String)], key: &str| fields.iter().find(|(k, _)| k == key).unwrap().1.clone();
    for key in ["tasks", "threads", "workers", "mode", "verified", "errors", "limit_s", "digest"] {
        assert_eq!(value(&ours, key), value(&theirs, key), "{key}");
    }
}

#[test]
fn bad_flags_get_the_usage_and_exit_code_2() {
    for args in [
        &["--tasks", "many"][..],
        &["--mode", "fast"],
        &["--threads", "0"],
        &["--threads=100000"],
        &["--tasks", "18446744073709551615"],
        &["--start-method", "thread"],
        &["--bogus", "1"],
        &["--tasks"],
    ] {
        let output = Command::new(example_binary()).args(args).output().unwrap();
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("usage: many_threads"), "{args:?}: {stderr}");
        assert!(output.stdout.is_empty(), "{args:?}");
    }
}

#[test]
#[cfg_attr(not(rs4py_source_tree), ignore = "py4cc/workload/ is not in the published package")]
fn flags_are_read_as_the_harness_reads_them() {
    // `--flag=value`, a negative seed (taken modulo 2^64) and workers <= 0 (one per CPU).
    let flags = ["--tasks=6", "--threads=2", "--workers=-1", "--seed=-1", "--mode=poll"];
    let example = Command::new(example_binary()).args(flags).output().unwrap();
    assert!(example.status.success(), "{}", String::from_utf8_lossy(&example.stderr));
    let harness = Command::new(rs4py::build_python().executable)
        .args(["-m", "py4cc.workload.harness"])
        .args(flags)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(harness.status.success(), "{}", String::from_utf8_lossy(&harness.stderr));
    let field = |output: &Output, key: &str| {
        json_fields(&last_line(output)).into_iter().find(|(k, _)| k == key).map(|(_, v)| v).unwrap()
    };
    for key in ["tasks", "threads", "workers", "digest"] {
        assert_eq!(field(&example, key), field(&harness, key), "{key}");
    }
    assert_eq!(workload::task_digest(&workload::make_tasks(6, u64::MAX)), field(&example, "digest"));
}
