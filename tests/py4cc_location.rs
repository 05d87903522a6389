//! rs4py finds its own py4cc without help: no PYTHONPATH, no install, whatever the working
//! directory, for the interpreter and for workers of every start method.

#[allow(dead_code)]
#[path = "../examples/many_threads/workload.rs"]
mod workload;

#[allow(dead_code)]
#[path = "common/workers.rs"]
mod workers;
use std::path::Path;
use std::time::Duration;

mod common;

use rs4py::{Driver, DriverOptions, Gil, ResultStatus, StartMethod};

/// Runs one task through a fresh driver and checks its answer against the Rust model.
fn one_task_through(start_method: StartMethod) {
    let driver = Driver::new(DriverOptions {
        n_subprocesses: 1,
        start_method,
        worker_output: Some(workers::captured_output()),
        ..Default::default()
    })
    .unwrap();
    driver.initialize("{}", &["x"], &["s"]).unwrap();
    let receipt = driver.submit(&[2.5], &["ﬁx"], 3);
    let result = driver.wait(receipt.key, Duration::from_secs(60));
    assert_eq!(result.status, ResultStatus::Done, "{}", result.message);
    assert_eq!(Some(result.value), workload::big_model(&[2.5], &["ﬁx"], 3));
}

#[test]
fn the_driver_imports_the_copy_inside_the_binary() {
    assert!(std::env::var_os("PYTHONPATH").is_none(), "run without PYTHONPATH");
    let _driver = Driver::new(DriverOptions::default()).unwrap();
    let gil = Gil::acquire().unwrap();
    let file: String = gil.import("py4cc.driver").unwrap().getattr("__file__").unwrap().extract().unwrap();
    let file = Path::new(&file);
    assert!(!file.starts_with(env!("CARGO_MANIFEST_DIR")), "{}", file.display());
    // Every module of the source tree and of its sub-packages, as it is there; the workload
    // and the tests stay out.
    let package = file.parent().unwrap();
    let source_tree = Path::new(env!("CARGO_MANIFEST_DIR")).join("py4cc");
    let mut modules = Vec::new();
    files_under(&source_tree, "", &["tests", "workload"], &mut modules);
    modules.retain(|name| name.ends_with(".py"));
    let mut written = Vec::new();
    files_under(package, "", &[], &mut written);
    assert_eq!(written, modules, "the written package holds the modules and nothing else");
    for name in &modules {
        let text = std::fs::read(package.join(name)).unwrap();
        assert_eq!(text, std::fs::read(source_tree.join(name)).unwrap(), "{name} differs from the source tree");
    }
    for name in ["engine.py", "core/tasks.py", "local/pool.py", "ray/backend.py"] {
        assert!(modules.iter().any(|module| module == name), "{name} missing from {modules:?}");
    }
}

/// Every file under `dir` (paths relative to it, `/` between parts, sorted), other than dot
/// files and `__pycache__`, leaving out the sub-directories named in `skip`.
fn files_under(dir: &Path, prefix: &str, skip: &[&str], found: &mut Vec<String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        if name.starts_with('.') || name == "__pycache__" {
            continue;
        }
        if path.is_dir() {
            if !skip.contains(&name.as_str()) {
                files_under(&path, &format!("{prefix}{name}/"), skip, found);
            }
        } else {
            found.push(format!("{prefix}{name}"));
        }
    }
    found.sort();
}

#[test]
fn workers_of_every_start_method_import_it() {
    for method in [StartMethod::Fork, StartMethod::Forkserver, StartMethod::Spawn] {
        one_task_through(method);
    }
}

#[test]
fn an_unwritable_home_falls_back_to_the_temporary_directory() {
    // The child's temporary directory is a scratch one, so that the package it writes there
    // is removed with it.
    let tmp = workers::scratch_dir("rs4py-location");
    common::run_in_child_process("child_with_an_unwritable_home", |child| {
        child
            .env("HOME", "/proc/rs4py-cannot-write-here")
            .env_remove("XDG_CACHE_HOME")
            .env("TMPDIR", &tmp)
            .current_dir("/")
    });
}

#[test]
#[ignore = "run by an_unwritable_home_falls_back_to_the_temporary_directory in a child process"]
fn child_with_an_unwritable_home() {
    one_task_through(StartMethod::Spawn);
    let gil = Gil::acquire().unwrap();
    let file: String = gil.import("py4cc").unwrap().getattr("__file__").unwrap().extract().unwrap();
    // SAFETY: geteuid cannot fail and touches no memory.
    let private = std::env::temp_dir().join(format!("rs4py-{}", unsafe { libc::geteuid() }));
    assert!(Path::new(&file).starts_with(&private), "{file}");
}
