//! The embedded interpreter is the build interpreter, in the parent and in `multiprocessing`
//! workers of every start method; a start that cannot succeed is an error, not an abort.

mod common;

#[allow(dead_code)]
#[path = "common/workers.rs"]
mod workers;
use std::os::unix::process::CommandExt;

use rs4py::{Error, Gil, build_python};

/// `(sys.version, sys.prefix, sys.executable)` of the interpreter that evaluates it.
const IDENTITY: &str = "(__import__('sys').version, __import__('sys').prefix, __import__('sys').executable)";

fn parent_identity() -> (String, String, String) {
    let gil = Gil::acquire().unwrap();
    gil.eval(IDENTITY).unwrap().extract().unwrap()
}

#[test]
fn the_embedded_interpreter_is_the_build_interpreter() {
    let (version, prefix, executable) = parent_identity();
    let build = build_python();
    // 3.9's sys.version has a line break; the build records it on one line.
    assert_eq!(version.lines().collect::<Vec<_>>().join(" "), build.version);
    let gil = Gil::acquire().unwrap();
    let hexversion: u32 = gil.eval("__import__('sys').hexversion").unwrap().extract().unwrap();
    drop(gil);
    assert_eq!(hexversion, build.hexversion);
    // The kernel lists mapped files by their resolved path.
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    assert!(maps.lines().any(|line| line.ends_with(&format!(" {}", build.library))), "{} not mapped", build.library);
    assert_eq!(prefix, build.prefix);
    assert_eq!(executable, build.executable);
    assert!(!executable.contains("shims"), "a pyenv shim is not an interpreter: {executable}");
    assert_ne!(std::path::Path::new(&executable), std::env::current_exe().unwrap());
}

#[test]
fn python_leaves_sigint_as_the_program_had_it() {
    // In child processes whose dispositions are known: a test run in the background inherits
    // SIGINT ignored.
    for (handler, name) in [(libc::SIG_DFL, "SIG_DFL"), (libc::SIG_IGN, "SIG_IGN")] {
        common::run_in_child_process("child_start_with_sigint_as_set", |child| {
            let set_dispositions = move || {
                for (signal, handler) in [(libc::SIGINT, handler), (libc::SIGXFSZ, libc::SIG_DFL)] {
                    // SAFETY: signal() is async-signal-safe, as code between fork and exec must be.
                    if unsafe { libc::signal(signal, handler) } == libc::SIG_ERR {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            };
            // SAFETY: the hook runs between fork and exec and calls only signal(), which is
            // async-signal-safe; dispositions set to default or ignore survive exec.
            unsafe { child.pre_exec(set_dispositions) }.env("RS4PY_TEST_SIGINT", name)
        });
    }
}

#[test]
#[ignore = "run by python_leaves_sigint_as_the_program_had_it in a child process"]
fn child_start_with_sigint_as_set() {
    let name = std::env::var("RS4PY_TEST_SIGINT").unwrap();
    let expected = if name == "SIG_IGN" { libc::SIG_IGN } else { libc::SIG_DFL };
    assert_eq!(os_signal_handler(libc::SIGINT), expected, "the parent set {name}");
    let gil = Gil::acquire().unwrap();
    // multiprocessing imports signal, which installs Python's SIGINT handler over a default one.
    gil.import("multiprocessing").unwrap();
    let python_view: bool = gil
        .eval(&format!("__import__('signal').getsignal(2) == __import__('signal').{name}"))
        .unwrap()
        .extract()
        .unwrap();
    assert!(python_view, "Python's own view of SIGINT agrees");
    drop(gil);
    assert_eq!(os_signal_handler(libc::SIGINT), expected, "Python left SIGINT to the Rust program");
    assert_eq!(os_signal_handler(libc::SIGXFSZ), libc::SIG_DFL, "Python left SIGXFSZ to the Rust program");
}

/// The handler the operating system has for `signal` in this process.
fn os_signal_handler(signal: libc::c_int) -> libc::sighandler_t {
    let mut current = std::mem::MaybeUninit::<libc::sigaction>::zeroed();
    // SAFETY: a null new action only queries; `current` is written by the call.
    let status = unsafe { libc::sigaction(signal, std::ptr::null(), current.as_mut_ptr()) };
    assert_eq!(status, 0);
    // SAFETY: sigaction succeeded and filled `current`.
    unsafe { current.assume_init() }.sa_sigaction
}

/// Runs `IDENTITY` in two pool workers of `method` and checks they match the parent.
fn workers_match_parent(method: &str) {
    let parent = parent_identity();
    let gil = Gil::acquire().unwrap();
    // multiprocessing's own directory (the forkserver's socket) is removed by its exit
    // handler, which an embedded interpreter never runs: give it one removed at exit.
    static TEMPDIR: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let tempdir = TEMPDIR.get_or_init(|| workers::scratch_dir("rs4py-start").to_str().unwrap().to_owned());
    gil.import("tempfile").unwrap().setattr("tempdir", tempdir.as_str()).unwrap();
    let context = gil.import("multiprocessing").unwrap().call_method("get_context", (method,), ()).unwrap();
    let pool = context.call_method("Pool", (2,), ()).unwrap();
    // The builtin eval pickles by name, so every start method can ship it to the workers.
    let results = pool.call_method("map", (gil.eval("eval").unwrap(), vec![IDENTITY; 4]), ());
    pool.call_method("terminate", (), ()).unwrap();
    pool.call_method("join", (), ()).unwrap();
    let workers: Vec<(String, String, String)> = results.unwrap().extract().unwrap();
    assert_eq!(workers.len(), 4);
    for worker in workers {
        assert_eq!(worker, parent, "{method} worker differs from its parent");
    }
}

#[test]
fn fork_workers_run_the_parents_interpreter() {
    workers_match_parent("fork");
}

#[test]
fn forkserver_workers_run_the_parents_interpreter() {
    workers_match_parent("forkserver");
}

#[test]
fn spawn_workers_run_the_parents_interpreter() {
    workers_match_parent("spawn");
}

#[test]
fn a_venv_built_binary_sees_the_venv() {
    // Meaningful when built with a venv's python as PYO3_PYTHON (.ci/run does): its prefix
    // is the venv's, and the venv's site-packages is on sys.path.
    let build = build_python();
    let gil = Gil::acquire().unwrap();
    let in_venv: bool =
        gil.eval("__import__('sys').prefix != __import__('sys').base_prefix").unwrap().extract().unwrap();
    let expected_venv = std::path::Path::new(build.prefix).join("pyvenv.cfg").exists();
    assert_eq!(in_venv, expected_venv);
    if in_venv {
        let site: Vec<String> = gil.eval("__import__('site').getsitepackages()").unwrap().extract().unwrap();
        let path: Vec<String> = gil.eval("__import__('sys').path").unwrap().extract().unwrap();
        assert!(site.iter().all(|dir| dir.starts_with(build.prefix) && path.contains(dir)), "{site:?} {path:?}");
        // A module installed into the venv imports from there.
        std::fs::write(std::path::Path::new(&site[0]).join("rs4py_venv_probe.py"), "WHERE = __file__\n").unwrap();
        let location: String = gil.import("rs4py_venv_probe").unwrap().getattr("WHERE").unwrap().extract().unwrap();
        assert!(location.starts_with(build.prefix), "{location}");
    }
}

#[test]
fn an_interpreter_that_cannot_start_is_an_error() {
    // In a child process, so that this process's interpreter is unaffected.
    common::run_in_child_process("child_start_with_a_broken_home", |child| {
        child.env("PYTHONHOME", "/nonexistent/python/home")
    });
}

#[test]
#[ignore = "run by an_interpreter_that_cannot_start_is_an_error in a child process"]
fn child_start_with_a_broken_home() {
    let first = Gil::acquire().err().expect("Python cannot start without its standard library");
    let Error::Start(message) = &first else { panic!("expected Error::Start, got {first:?}") };
    assert!(message.contains("encoding"), "{message}");
    // The failure is remembered: later callers get the same error, no second attempt.
    assert_eq!(rs4py::start(&Default::default()).unwrap_err(), first);
    assert!(!rs4py::is_started());
}

#[test]
fn another_libpython_at_run_time_is_refused() {
    // Debian's libpython has the same file name as the build interpreter's on this kind of
    // machine; LD_LIBRARY_PATH overrides the rpath (RUNPATH) and makes the loader pick it.
    let build = build_python();
    let other_dir = "/usr/lib/x86_64-linux-gnu";
    let library = std::path::Path::new(other_dir).join("libpython3.11.so.1.0");
    if build.lib_dir == other_dir || !library.exists() || !build.version.starts_with("3.11") {
        println!("no other libpython3.11 on this machine: nothing to mix up");
        return;
    }
    common::run_in_child_process("child_start_with_another_libpython", |child| child.env("LD_LIBRARY_PATH", other_dir));
}

#[test]
#[ignore = "run by another_libpython_at_run_time_is_refused in a child process"]
fn child_start_with_another_libpython() {
    let err = Gil::acquire().err().expect("a different libpython is refused");
    let Error::Start(message) = &err else { panic!("expected Error::Start, got {err:?}") };
    let build = build_python();
    assert!(message.contains("rpath") && message.contains(build.version), "{message}");
    assert!(message.contains(build.library), "{message}");
    assert!(message.contains("/usr/lib/x86_64-linux-gnu/libpython3.11.so.1.0"), "{message}");
}

#[test]
fn starting_under_the_c_locale_leaves_the_environment_alone() {
    common::run_in_child_process("child_start_under_the_c_locale", |child| child.env_clear().env("LANG", "C"));
}

#[test]
#[ignore = "run by starting_under_the_c_locale_leaves_the_environment_alone in a child process"]
fn child_start_under_the_c_locale() {
    assert!(std::env::var_os("LC_CTYPE").is_none());
    let gil = Gil::acquire().unwrap();
    // CPython's locale coercion would have set LC_CTYPE, racing other threads' getenv.
    assert_eq!(std::env::var_os("LC_CTYPE"), None);
    let utf8_mode: i64 = gil.eval("__import__('sys').flags.utf8_mode").unwrap().extract().unwrap();
    assert_eq!(utf8_mode, 1, "UTF-8 mode still covers the C locale");
    let text: String = gil.eval("'Zoë ' + '🦀'").unwrap().extract().unwrap();
    assert_eq!(text, "Zoë 🦀");
}
