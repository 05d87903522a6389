//! Runs py4cc's own unittest suite with the interpreter rs4py was built against, so that
//! `cargo test` covers the Python half too.
//!
//! The suite's test classes are independent (each sets up its own Drivers and workers) and
//! spend most of their time waiting on worker processes, so they run in parallel, one Python
//! process per class, a few at a time, the slowest of the previous run first (their times are
//! kept under cargo's target directory); what they print (tracebacks and worker events that
//! the tests provoke on purpose) is kept and shown only for a class that fails.
//!
//! The published package leaves py4cc's test suites out: there this test is ignored, with that
//! reason (see `rs4py_source_tree` in build.rs).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

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
run = unittest.main(module=None, argv=['py4cc-suite'] + sys.argv[1:], exit=False)
# Not main's exit status: from 3.12 a class whose tests were all skipped exits 5.
sys.exit(0 if run.result.wasSuccessful() else 1)
";

fn python(args: &[&str]) -> Output {
    let python = rs4py::build_python().executable;
    Command::new(python)
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap_or_else(|e| panic!("could not run {python}: {e}"))
}

/// Where each class's time in the previous run is kept: `<seconds> <class>` per line.
fn times_file() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("py4cc-suite-class-times.txt")
}

/// The classes' times in the previous run (none on a first run).
fn previous_times() -> HashMap<String, f64> {
    let text = std::fs::read_to_string(times_file()).unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let (seconds, class) = line.split_once(' ')?;
            Some((class.to_owned(), seconds.parse().ok()?))
        })
        .collect()
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
    let mut classes: Vec<String> = listed.lines().map(str::to_owned).collect();
    assert!(classes.len() > 20, "discovery found too few test classes: {classes:?}");
    // The slowest first, so that no long class starts last; new classes count as slow.
    let previous = previous_times();
    classes.sort_by(|a, b| {
        let time = |class: &String| previous.get(class).copied().unwrap_or(f64::INFINITY);
        time(b).total_cmp(&time(a))
    });

    let queue = Mutex::new(classes.iter());
    let results = Mutex::new(Vec::new());
    thread::scope(|scope| {
        for _ in 0..PARALLEL_CLASSES {
            scope.spawn(|| {
                loop {
                    let Some(class) = queue.lock().unwrap().next() else { return };
                    let started = Instant::now();
                    let output = python(&["-c", RUN_CLASS, class]);
                    results.lock().unwrap().push((class.clone(), output, started.elapsed()));
                }
            });
        }
    });

    let results: Vec<(String, Output, Duration)> = results.into_inner().unwrap();
    assert_eq!(results.len(), classes.len());
    let times: String =
        results.iter().map(|(class, _, elapsed)| format!("{:.2} {class}\n", elapsed.as_secs_f64())).collect();
    // Only an ordering hint: a run that cannot write it is no worse than a first run.
    let _ = std::fs::write(times_file(), times);
    let failed: Vec<String> = results
        .iter()
        .filter(|(_, output, _)| !output.status.success())
        .map(|(class, output, _)| format!("== {class}\n{}", String::from_utf8_lossy(&output.stderr)))
        .collect();
    assert!(failed.is_empty(), "py4cc's unittest suite failed:\n{}", failed.join("\n"));
    let mut ran = 0;
    for (class, output, _) in &results {
        let report = String::from_utf8_lossy(&output.stderr);
        ran += tests_ran(&report).unwrap_or_else(|| panic!("{class} printed no \"Ran N tests\":\n{report}"));
    }
    assert!(ran > 100, "the suite ran too few tests: {ran}");
    println!("py4cc suite: {ran} tests in {} classes, all passed", classes.len());
}
