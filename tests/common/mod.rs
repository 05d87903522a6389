//! Helpers shared by the integration tests.

use std::process::Command;

/// Runs the ignored test `name` of the current test binary in a child process, from the
/// temporary directory, with its environment set by `configure`, and fails unless it ran and passed. For what must happen
/// in a fresh process: an interpreter start that fails, or starts under other conditions.
pub fn run_in_child_process(name: &str, configure: impl FnOnce(&mut Command) -> &mut Command) {
    let mut command = Command::new(std::env::current_exe().unwrap());
    // From a neutral directory, not the crate's root (which holds a `py4cc/`), unless
    // `configure` says otherwise.
    command.args(["--exact", name, "--ignored", "--nocapture"]).current_dir(std::env::temp_dir());
    let output = configure(&mut command).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{name} failed in its child process (it must not crash or abort):\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("1 passed"), "{name} did not run:\n{stdout}");
}
