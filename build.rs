//! Finds the Python interpreter the way the PyO3 ecosystem does (`PYO3_PYTHON`, else an active
//! virtualenv, else `python3` on `PATH`; the search itself is `pyo3-build-config`'s, shared with
//! `pyo3-ffi`, which links its libpython), then:
//!
//! - sets the rpath of this package's binaries, tests, examples and benches to that
//!   interpreter's library directory, so they load the libpython they were built against;
//! - records the interpreter's executable, prefix and version for run time, so that the
//!   embedded interpreter reports and spawns the very Python found here, and the real path of
//!   its libpython, so that the run-time check can tell that very library from another one;
//! - publishes the library directory to dependent build scripts as `DEP_RS4PY_LIBDIR`;
//! - lists the `py4cc` package's modules for the copy compiled into the binary, so that the
//!   copy cannot miss one.
//!
//! With `DOCS_RS` set (a docs site's sandbox), a missing interpreter or shared libpython is no
//! error: the library is then compiled for its documentation only, with no rpath and
//! placeholder facts (`build_python()` reports no executable and version 0, and `start`
//! refuses to run). `pyo3-ffi`'s own build script still needs an interpreter or a
//! `PYO3_CONFIG_FILE`; see docs/operations.md.

use std::fmt::Write as _;
use std::path::Path;
use std::process::exit;

fn main() {
    // The `Py_3_N` cfgs (and their check-cfg declarations) that `pyo3-ffi` gates its items by,
    // so that this crate picks the C API of the interpreter it builds against.
    pyo3_build_config::use_pyo3_cfgs();
    println!("cargo:rerun-if-changed=build.rs");
    declare_source_tree();
    embed_py4cc();
    for var in ["PYO3_PYTHON", "VIRTUAL_ENV", "CONDA_PREFIX", "DOCS_RS"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    match python_facts() {
        Ok(facts) => {
            pyo3_build_config::add_libpython_rpath_link_args();
            record(&facts);
        }
        // A docs site builds in a sandbox with whatever Python it has, often one without a
        // shared libpython: there the library is compiled for its documentation only, nothing
        // is linked against libpython and the facts are placeholders (`start` would refuse them).
        Err(reason) if std::env::var_os("DOCS_RS").is_some() => {
            println!("cargo:warning=rs4py: DOCS_RS is set and {reason}: building for documentation only");
            record(&PythonFacts::for_docs_only());
        }
        Err(reason) => fail(&reason),
    }
}

/// What the build records about its interpreter, for run time.
struct PythonFacts {
    executable: String,
    prefix: String,
    version: String,
    hexversion: String,
    library: String,
    lib_dir: String,
}

impl PythonFacts {
    /// The facts of a documentation-only build: no interpreter, version 0.
    fn for_docs_only() -> Self {
        let none = "(none: built for documentation only, DOCS_RS)".to_owned();
        PythonFacts {
            executable: none.clone(),
            prefix: none.clone(),
            version: none.clone(),
            hexversion: "0".to_owned(),
            library: none.clone(),
            lib_dir: none,
        }
    }
}

/// Asks the interpreter that `pyo3-build-config` found for the facts rs4py records, checking
/// that it has the shared libpython rs4py embeds.
fn python_facts() -> Result<PythonFacts, String> {
    let config = pyo3_build_config::get();
    let Some(executable) = config.executable() else {
        return Err("pyo3-build-config found no Python executable; set PYO3_PYTHON to one".to_owned());
    };
    let Some(lib_dir) = config.lib_dir() else {
        return Err(
            "the Python interpreter reports no library directory (is it built with --enable-shared?)".to_owned()
        );
    };
    if !config.shared() {
        return Err("rs4py embeds a shared libpython; this interpreter was built without --enable-shared".to_owned());
    }
    // One fact per line. sys.version has a line break on some versions (3.9 puts the compiler
    // on its own line), so it is recorded on one line; the run-time check does not use it.
    let script = "import sys, sysconfig\n\
                  print(sys.prefix)\n\
                  print(' '.join(sys.version.splitlines()))\n\
                  print(sys.hexversion)\n\
                  print(sysconfig.get_config_var('INSTSONAME') or '')\n\
                  print(sysconfig.get_config_var('LDLIBRARY') or '')\n\
                  print(sysconfig.get_config_var('PYTHONFRAMEWORKPREFIX') or '')\n";
    let facts =
        config.run_python_script(script).map_err(|e| format!("could not ask {executable} for sys.prefix: {e}"))?;
    let lines: Vec<&str> = facts.lines().collect();
    let [prefix, version, hexversion, soname, ldlibrary, framework_prefix] = lines[..] else {
        return Err(format!("unexpected answer from {executable}: {facts:?}"));
    };
    if hexversion.parse::<u32>().is_err() {
        return Err(format!("{executable} reports sys.hexversion {hexversion:?}, not a number"));
    }
    // The file the loader opens: the soname the linker records (libpython3.X.so.1.0), else
    // the link-time name (a macOS framework's is relative to the framework prefix); resolved,
    // so that symlinks on either side compare equal.
    let Some(library) = [(lib_dir, soname), (lib_dir, ldlibrary), (framework_prefix, soname)]
        .into_iter()
        .filter(|(dir, name)| !dir.is_empty() && !name.is_empty())
        .find_map(|(dir, name)| std::fs::canonicalize(std::path::Path::new(dir).join(name)).ok())
    else {
        return Err(format!("no libpython named {soname:?} or {ldlibrary:?} in {lib_dir} (from {executable})"));
    };
    let Some(library) = library.to_str() else {
        return Err(format!("the libpython path {library:?} is not UTF-8"));
    };
    Ok(PythonFacts {
        executable: executable.to_owned(),
        prefix: prefix.to_owned(),
        version: version.to_owned(),
        hexversion: hexversion.to_owned(),
        library: library.to_owned(),
        lib_dir: lib_dir.to_owned(),
    })
}

/// Records the facts for `build_python()` and publishes the library directory.
fn record(facts: &PythonFacts) {
    println!("cargo:rustc-env=RS4PY_PYTHON_EXECUTABLE={}", facts.executable);
    println!("cargo:rustc-env=RS4PY_PYTHON_PREFIX={}", facts.prefix);
    println!("cargo:rustc-env=RS4PY_PYTHON_VERSION={}", facts.version);
    println!("cargo:rustc-env=RS4PY_PYTHON_HEXVERSION={}", facts.hexversion);
    println!("cargo:rustc-env=RS4PY_PYTHON_LIBRARY={}", facts.library);
    println!("cargo:rustc-env=RS4PY_PYTHON_LIBDIR={}", facts.lib_dir);
    // Read by dependents' build scripts as DEP_RS4PY_LIBDIR (see the crate docs).
    println!("cargo:libdir={}", facts.lib_dir);
}

/// Sets the cfg `rs4py_source_tree` when built from the repository: the published package
/// leaves out py4cc's test suites and `py4cc/workload/` (the Python twin of the reference
/// workload), and the tests that need them are then ignored, with the reason, instead of failing.
fn declare_source_tree() {
    println!("cargo::rustc-check-cfg=cfg(rs4py_source_tree)");
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| fail("CARGO_MANIFEST_DIR is not set"));
    let py4cc = Path::new(&manifest_dir).join("py4cc");
    println!("cargo:rerun-if-changed={}", py4cc.join("tests").display());
    println!("cargo:rerun-if-changed={}", py4cc.join("workload").display());
    if py4cc.join("tests/test_driver.py").is_file() && py4cc.join("workload/harness.py").is_file() {
        println!("cargo:rustc-cfg=rs4py_source_tree");
    }
}

fn fail(message: &str) -> ! {
    eprintln!("rs4py build: {message}");
    exit(1)
}

/// Writes `$OUT_DIR/py4cc_files.rs`: the `(path, contents)` table of every `*.py` of `py4cc/`
/// and of its sub-packages (`core/`, `local/`, `ray/`, ...), paths relative to `py4cc/` with
/// `/` between parts, read by `src/driver/package.rs`. `tests/` and `workload/` stay out:
/// `tests/` runs from the source tree, `workload/` is the benchmark side, not the library's.
fn embed_py4cc() {
    const LEFT_OUT: [&str; 3] = ["tests", "workload", "__pycache__"];
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| fail("CARGO_MANIFEST_DIR is not set"));
    let package = Path::new(&manifest_dir).join("py4cc");
    let mut modules = Vec::new();
    // Depth first from the package; each directory itself is watched, so that a module added
    // or removed is seen too.
    let mut folders = vec![(package.clone(), String::new())];
    while let Some((folder, prefix)) = folders.pop() {
        println!("cargo:rerun-if-changed={}", folder.display());
        let entries =
            std::fs::read_dir(&folder).unwrap_or_else(|e| fail(&format!("cannot list {}: {e}", folder.display())));
        for entry in entries {
            let path = entry.unwrap_or_else(|e| fail(&format!("cannot list {}: {e}", folder.display()))).path();
            let (Some(name), Some(full)) = (path.file_name().and_then(|name| name.to_str()), path.to_str()) else {
                fail(&format!("{} is not a UTF-8 path", path.display()));
            };
            if path.is_dir() {
                if !LEFT_OUT.contains(&name) && path.join("__init__.py").is_file() {
                    folders.push((path.clone(), format!("{prefix}{name}/")));
                }
            } else if path.is_file() && path.extension().is_some_and(|extension| extension == "py") {
                println!("cargo:rerun-if-changed={full}");
                modules.push((format!("{prefix}{name}"), full.to_owned()));
            }
        }
    }
    modules.sort();
    let mut table = String::from("// Written by build.rs from the listing of py4cc/.\n&[\n");
    for (name, full) in &modules {
        let _ = writeln!(table, "    ({name:?}, include_str!({full:?})),");
    }
    table.push_str("]\n");
    let out_dir = std::env::var("OUT_DIR").unwrap_or_else(|_| fail("OUT_DIR is not set"));
    let target = Path::new(&out_dir).join("py4cc_files.rs");
    if let Err(e) = std::fs::write(&target, table) {
        fail(&format!("cannot write {}: {e}", target.display()));
    }
}
