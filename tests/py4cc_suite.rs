//! Runs py4cc's own unittest suite with the interpreter rs4py was built against, so that
//! `cargo test` covers the Python half too.
//!
//! The suite's test classes are independent (each sets up its own Drivers and workers) and
//! spend most of their time waiting on worker processes, so they run in parallel, one Python
//! process per class, a few at a time; what they print (tracebacks and worker events that the
//! tests provoke on purpose) is kept and shown only for a class that fails.
//!
//! The published package leaves py4cc's test suites out: there this test is ignored, with that
//! reason (see `rs4py_source_tree` in build.rs).

use std::path::Path;
use std::process::{Command, Output};
use std::sync::Mutex;
use std::thread;

/// Processes at once: the classes mostly wait on their workers, so a few more than the
/// two cores this suite is sized for.
const PARALLEL_CLASSES: usize = 4;

/// Prints `module.Class` for every test class that unittest's discovery finds, in order.
const LIST_CLASSES: &str = "\
import sys, unittest
def walk(suite):
    for test in suite:
        if isinstance(test, unittest.TestSuite):
            yield from walk(test)
        else:
            yield type(test).__module__ + '.' + type(test).__qualname__
suite = unittest.TestLoader().discover('py4cc/tests', top_level_dir='.')
seen = []
for name in walk(suite):
    if name not in seen:
        seen.append(name)
print('\\n'.join(seen))
";

/// Runs the classes named in argv with py4cc's test Engines importable, as `discover` has them
/// once any test put their directory on `sys.path` (a class run alone would miss them).
const RUN_CLASS: &str = "\
import sys, unittest
sys.path.insert(0, 'py4cc/tests/engines')
unittest.main(module=None, argv=['py4cc-suite'] + sys.argv[1:])
";

fn python(args: &[&str]) -> Output {
    let python = rs4py::build_python().executable;
    Command::new(python)
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap_or_else(|e| panic!("could not run {python}: {e}"))
}

/// unittest's closing count: "Ran N tests".
fn tests_ran(report: &str) -> Option<usize> {
    report.lines().find_map(|line| line.strip_prefix("Ran ")?.split(' ').next()?.parse().ok())
}

#[test]
#[cfg_attr(not(rs4py_source_tree), ignore = "py4cc's test suites are not in the published package")]
fn the_py4cc_unittest_suite_passes() {
    assert!(Path::new(env!("CARGO_MANIFEST_DIR")).join("py4cc/tests").is_dir());
    let listing = python(&["-c", LIST_CLASSES]);
    let listed = String::from_utf8_lossy(&listing.stdout);
    assert!(listing.status.success(), "unittest discovery failed:\n{}", String::from_utf8_lossy(&listing.stderr));
    let classes: Vec<String> = listed.lines().map(str::to_owned).collect();
    assert!(classes.len() > 20, "discovery found too few test classes: {classes:?}");

    let queue = Mutex::new(classes.iter());
    let results = Mutex::new(Vec::new());
    thread::scope(|scope| {
        for _ in 0..PARALLEL_CLASSES {
            scope.spawn(|| {
                loop {
                    let Some(class) = queue.lock().unwrap().next() else { return };
                    let output = python(&["-c", RUN_CLASS, class]);
                    results.lock().unwrap().push((class.clone(), output));
                }
            });
        }
    });

    let results = results.into_inner().unwrap();
    assert_eq!(results.len(), classes.len());
    let failed: Vec<String> = results
        .iter()
        .filter(|(_, output)| !output.status.success())
        .map(|(class, output)| format!("== {class}\n{}", String::from_utf8_lossy(&output.stderr)))
        .collect();
    assert!(failed.is_empty(), "py4cc's unittest suite failed:\n{}", failed.join("\n"));
    let mut ran = 0;
    for (class, output) in &results {
        let report = String::from_utf8_lossy(&output.stderr);
        ran += tests_ran(&report).unwrap_or_else(|| panic!("{class} printed no \"Ran N tests\":\n{report}"));
    }
    assert!(ran > 100, "the suite ran too few tests: {ran}");
    println!("py4cc suite: {ran} tests in {} classes, all passed", classes.len());
}
