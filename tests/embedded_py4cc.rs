//! Issue 16, item 4: workers run exactly the py4cc rs4py embeds, whatever the working
//! directory or `PYTHONPATH` hold, with each start method. Each host is this test binary run
//! again in a child process, from a directory (or with a `PYTHONPATH`) holding an impostor
//! `py4cc/` that leaves a file behind when it is imported.

#[allow(dead_code)]
#[path = "common/workers.rs"]
mod workers;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use rs4py::{Driver, DriverOptions, ResultStatus, StartMethod};

mod common;

const IMPOSTOR: &str = r#"
import os
open(os.path.join(os.path.dirname(__file__), "imported-" + str(os.getpid())), "w").close()
"#;

/// A scratch directory holding the impostor package `py4cc/`.
fn impostor_parent(what: &str) -> PathBuf {
    let parent = workers::scratch_dir(&format!("rs4py-impostor-{what}"));
    std::fs::create_dir(parent.join("py4cc")).unwrap();
    std::fs::write(parent.join("py4cc/__init__.py"), IMPOSTOR).unwrap();
    parent
}

/// The files the impostor left: one per process that imported it.
fn impostor_imports(parent: &Path) -> Vec<String> {
    std::fs::read_dir(parent.join("py4cc"))
        .unwrap()
        .flatten()
        .filter_map(|entry| entry.file_name().into_string().ok())
        .filter(|name| name.starts_with("imported-"))
        .collect()
}

fn run_host(configure: impl FnOnce(&mut Command) -> &mut Command) {
    common::run_in_child_process("host_runs_a_task_with_each_start_method", configure);
}

#[test]
fn a_py4cc_in_the_working_directory_is_not_what_workers_run() {
    let parent = impostor_parent("cwd");
    run_host(|command| command.current_dir(&parent).env_remove("PYTHONPATH"));
    assert_eq!(impostor_imports(&parent), Vec::<String>::new());
}

#[test]
fn a_py4cc_on_pythonpath_is_not_what_workers_run() {
    let parent = impostor_parent("pythonpath");
    run_host(|command| command.current_dir("/").env("PYTHONPATH", &parent));
    assert_eq!(impostor_imports(&parent), Vec::<String>::new());
}

#[test]
#[ignore = "the host process of the tests above"]
fn host_runs_a_task_with_each_start_method() {
    for start_method in [StartMethod::Forkserver, StartMethod::Spawn, StartMethod::Fork] {
        let driver = Driver::new(DriverOptions {
            n_subprocesses: 1,
            start_method,
            worker_output: Some(workers::captured_output()),
            ..Default::default()
        })
        .unwrap();
        driver.initialize("{}", &["a"], &["b"]).unwrap_or_else(|error| panic!("{start_method:?}: {error}"));
        let receipt = driver.submit(&[2.5], &["xy"], 4);
        let answer = driver.wait(receipt.key, Duration::from_secs(30));
        // The demo model: floor(2.5) + len("XY") + 4.
        assert_eq!((answer.status, answer.value), (ResultStatus::Done, 8), "{start_method:?}: {}", answer.message);
        driver.finalize();
    }
}
