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

/// A new directory under the temporary one, its name from `prefix`, this process and the
/// time, holding the Python module `file_name` with `source` (a directory for `python_path`).
pub fn module_dir_with(prefix: &str, file_name: &str, source: &str) -> PathBuf {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
    let dir = std::env::temp_dir().join(format!("{prefix}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(file_name), source).unwrap();
    dir
}
