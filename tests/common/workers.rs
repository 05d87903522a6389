//! Worker processes seen from outside the driver, and Engine modules written for a test
//! process. Included by path (not through `common`) by the binaries that use them.

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

/// Whether a process with this pid exists (a zombie counts: it has not been reaped).
pub fn process_exists(pid: u32) -> bool {
    let pid = libc::pid_t::try_from(pid).unwrap();
    assert!(pid > 1, "not a worker pid: {pid}");
    // SAFETY: signal 0 sends nothing, it only checks that the process exists; pid is a single
    // positive process id (never 0 or negative, which would name process groups).
    let status = unsafe { libc::kill(pid, 0) };
    status == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Kills a worker process with SIGKILL, as a crash would.
pub fn kill_worker(pid: u32) {
    let pid = libc::pid_t::try_from(pid).unwrap();
    assert!(pid > 1 && pid != libc::pid_t::try_from(std::process::id()).unwrap(), "not a worker pid: {pid}");
    // SAFETY: kill has no memory effects; pid is one positive process id, a worker of the
    // driver under test (checked above not to be 0, -1, init or this process).
    let status = unsafe { libc::kill(pid, libc::SIGKILL) };
    assert_eq!(status, 0, "kill({pid}): {}", std::io::Error::last_os_error());
}

/// A [`scratch_dir`] holding the Python module `file_name` with `source` (a directory for
/// `python_path`).
pub fn module_dir_with(prefix: &str, file_name: &str, source: &str) -> PathBuf {
    let dir = scratch_dir(prefix);
    std::fs::write(dir.join(file_name), source).unwrap();
    dir
}

/// Worker output for the tests: kept in memory (the latest lines), and printed only when a test
/// of this binary panics, from a panic hook, into that test's captured output. What the tests
/// provoke on purpose (tracebacks, "killed by SIGKILL" events) then stays off the terminal on
/// a green run.
pub fn captured_output() -> rs4py::WorkerOutput {
    use std::sync::{Mutex, Once, PoisonError};
    static LINES: Mutex<Vec<String>> = Mutex::new(Vec::new());
    static HOOK: Once = Once::new();
    const KEPT_LINES: usize = 400;
    HOOK.call_once(|| {
        let default_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let lines = LINES.lock().unwrap_or_else(PoisonError::into_inner).clone();
            if !lines.is_empty() {
                eprintln!("worker output of this test binary so far:\n{}", lines.join("\n"));
            }
            default_hook(info);
        }));
    });
    rs4py::WorkerOutput::new(|line| {
        let mut lines = LINES.lock().unwrap_or_else(PoisonError::into_inner);
        if lines.len() == KEPT_LINES {
            lines.remove(0);
        }
        lines.push(format!("[py4cc worker {} {:?}] {}", line.pid, line.stream, line.text));
    })
}

/// A scratch directory under the temporary one, its name from `prefix`, this process and the
/// time; removed, with what is in it, when this process exits (so a `OnceLock` may share it).
pub fn scratch_dir(prefix: &str) -> PathBuf {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
    let dir = std::env::temp_dir().join(format!("{prefix}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    remove_at_exit(dir.clone());
    dir
}

/// Directories to remove at exit, with the pid that registered them: a forked child that
/// exits must not remove its parent's.
static REMOVE_AT_EXIT: std::sync::Mutex<Vec<(u32, PathBuf)>> = std::sync::Mutex::new(Vec::new());

fn remove_at_exit(dir: PathBuf) {
    static REGISTERED: std::sync::Once = std::sync::Once::new();
    REGISTERED.call_once(|| {
        // SAFETY: atexit only records a function pointer; `remove_registered` is an
        // `extern "C"` function that never unwinds (it ignores every error and poisoning).
        let status = unsafe { libc::atexit(remove_registered) };
        assert_eq!(status, 0, "atexit failed");
    });
    REMOVE_AT_EXIT.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push((std::process::id(), dir));
}

extern "C" fn remove_registered() {
    let dirs = std::mem::take(&mut *REMOVE_AT_EXIT.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
    for (pid, dir) in dirs {
        if pid == std::process::id() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
