//! Runs py4cc's own unittest suite with the interpreter rs4py was built against, so that
//! `cargo test` covers the Python half too.

use std::process::Command;

#[test]
fn the_py4cc_unittest_suite_passes() {
    let python = rs4py::build_python().executable;
    let output = Command::new(python)
        .args(["-m", "unittest", "discover", "-s", "py4cc/tests", "-t", "."])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap_or_else(|e| panic!("could not run {python}: {e}"));
    let report = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "py4cc's unittest suite failed under {python}:\n{report}");
    // unittest ends with "Ran N tests" and "OK": make sure it found and ran the suite.
    let ran = report.lines().find_map(|line| line.strip_prefix("Ran ")?.split(' ').next()?.parse::<usize>().ok());
    assert!(ran.is_some_and(|count| count > 20), "the suite ran too few tests:\n{report}");
    println!("{}", report.lines().rev().take(3).collect::<Vec<_>>().join(" | "));
}
