//! `DriverOptions::python_path` does not shadow the standard library: modules named like
//! stdlib ones in a `python_path` directory are never imported (by py4cc in the host or the
//! workers, nor by the Engine), while the Engine's module there and its own helper module
//! still load and come before site-packages, under every start method.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rs4py::{Driver, DriverOptions, ResultStatus, StartMethod, SubmitStatus};

#[path = "common/workers.rs"]
#[allow(dead_code)] // the process helpers are for other binaries
mod workers;
use workers::module_dir_with;

/// Standard library modules py4cc imports in the host or the workers (json parses the
/// config; fcntl and select arm the lifeline).
const SHADOWS: [&str; 6] = ["json", "pickle", "threading", "traceback", "fcntl", "select"];

/// Each shadow leaves a marker beside itself, then refuses to load.
const SHADOW_SOURCE: &str = r#"
open(__file__ + ".imported", "w").close()
raise ImportError("the user's " + __name__ + " shadowed the standard library")
"#;

/// Answers only where its directory comes before site-packages on `sys.path` (a user's
/// copy of an installed library takes precedence) and after the standard library.
const ENGINE_SOURCE: &str = r#"
import json
import os
import sys
import sysconfig

import user_helper

HERE = os.path.dirname(os.path.abspath(__file__))


class Engine:
    def initialize(self, config, float_feature_names, str_feature_names, **extra):
        self.add = config["add"]

    def run(self, float_features, str_features, int_feature):
        order = [sys.path.index(sysconfig.get_path(name)) for name in ("stdlib", "purelib")]
        here = sys.path.index(HERE)
        if not order[0] < here < order[1]:
            raise RuntimeError(f"{HERE} is not between the stdlib and site-packages: {sys.path}")
        return user_helper.BASE + self.add + int_feature, json.dumps(str_features)
"#;

fn shadowing_dir() -> PathBuf {
    let dir = module_dir_with("rs4py-python-path", "user_engine.py", ENGINE_SOURCE);
    std::fs::write(dir.join("user_helper.py"), "BASE = 100\n").unwrap();
    for name in SHADOWS {
        std::fs::write(dir.join(format!("{name}.py")), SHADOW_SOURCE).unwrap();
    }
    dir
}

fn imported_shadows(dir: &Path) -> Vec<String> {
    SHADOWS
        .iter()
        .filter(|name| dir.join(format!("{name}.py.imported")).exists())
        .map(|name| name.to_string())
        .collect()
}

fn check(start_method: StartMethod) {
    let dir = shadowing_dir();
    let driver = Driver::new(DriverOptions {
        n_subprocesses: 1,
        start_method,
        engine: "user_engine:Engine".into(),
        python_path: vec![dir.clone()],
        ..Default::default()
    })
    .unwrap();
    driver.initialize(r#"{"add": 5}"#, &["f"], &["s"]).unwrap();
    let receipt = driver.submit(&[0.5], &["x"], 7);
    assert_eq!(receipt.status, SubmitStatus::Accepted, "{}", receipt.message);
    let result = driver.wait(receipt.key, Duration::from_secs(30));
    driver.finalize();
    assert_eq!(result.status, ResultStatus::Done, "{start_method:?}: {}", result.message);
    assert_eq!(result.value, 100 + 5 + 7, "{start_method:?}");
    assert_eq!(imported_shadows(&dir), Vec::<String>::new(), "{start_method:?}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn stdlib_names_in_python_path_are_not_imported_fork() {
    check(StartMethod::Fork);
}

#[test]
fn stdlib_names_in_python_path_are_not_imported_forkserver() {
    check(StartMethod::Forkserver);
}

#[test]
fn stdlib_names_in_python_path_are_not_imported_spawn() {
    check(StartMethod::Spawn);
}
