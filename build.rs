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
    for var in ["PYO3_PYTHON", "VIRTUAL_ENV", "CONDA_PREFIX"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    let config = pyo3_build_config::get();
    let Some(executable) = config.executable() else {
        fail("pyo3-build-config found no Python executable; set PYO3_PYTHON to one");
    };
    let Some(lib_dir) = config.lib_dir() else {
        fail("the Python interpreter reports no library directory (is it built with --enable-shared?)");
    };
    if !config.shared() {
        fail("rs4py embeds a shared libpython; this interpreter was built without --enable-shared");
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
    let facts = match config.run_python_script(script) {
        Ok(out) => out,
        Err(e) => fail(&format!("could not ask {executable} for sys.prefix: {e}")),
    };
    let lines: Vec<&str> = facts.lines().collect();
    let [prefix, version, hexversion, soname, ldlibrary, framework_prefix] = lines[..] else {
        fail(&format!("unexpected answer from {executable}: {facts:?}"));
    };
    if hexversion.parse::<u32>().is_err() {
        fail(&format!("{executable} reports sys.hexversion {hexversion:?}, not a number"));
    }
    // The file the loader opens: the soname the linker records (libpython3.X.so.1.0), else
    // the link-time name (a macOS framework's is relative to the framework prefix); resolved,
    // so that symlinks on either side compare equal.
    let Some(library) = [(lib_dir, soname), (lib_dir, ldlibrary), (framework_prefix, soname)]
        .into_iter()
        .filter(|(dir, name)| !dir.is_empty() && !name.is_empty())
        .find_map(|(dir, name)| std::fs::canonicalize(std::path::Path::new(dir).join(name)).ok())
    else {
        fail(&format!("no libpython named {soname:?} or {ldlibrary:?} in {lib_dir} (from {executable})"));
    };
    let Some(library) = library.to_str() else {
        fail(&format!("the libpython path {library:?} is not UTF-8"));
    };

    pyo3_build_config::add_libpython_rpath_link_args();
    println!("cargo:rustc-env=RS4PY_PYTHON_EXECUTABLE={executable}");
    println!("cargo:rustc-env=RS4PY_PYTHON_PREFIX={prefix}");
    println!("cargo:rustc-env=RS4PY_PYTHON_VERSION={version}");
    println!("cargo:rustc-env=RS4PY_PYTHON_HEXVERSION={hexversion}");
    println!("cargo:rustc-env=RS4PY_PYTHON_LIBRARY={library}");
    println!("cargo:rustc-env=RS4PY_PYTHON_LIBDIR={lib_dir}");
    // Read by dependents' build scripts as DEP_RS4PY_LIBDIR (see the crate docs).
    println!("cargo:libdir={lib_dir}");
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

/// Writes `$OUT_DIR/py4cc_files.rs`: the `(name, contents)` table of every top-level `*.py` of
/// `py4cc/`, read by `src/driver/package.rs`. Its subdirectories stay out: `tests/` runs from
/// the source tree, `workload/` is the benchmark side, not the library's.
fn embed_py4cc() {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| fail("CARGO_MANIFEST_DIR is not set"));
    let package = Path::new(&manifest_dir).join("py4cc");
    // The directory itself, so that a module added or removed is seen too.
    println!("cargo:rerun-if-changed={}", package.display());
    let entries =
        std::fs::read_dir(&package).unwrap_or_else(|e| fail(&format!("cannot list {}: {e}", package.display())));
    let mut modules = Vec::new();
    for entry in entries {
        let path = entry.unwrap_or_else(|e| fail(&format!("cannot list {}: {e}", package.display()))).path();
        if path.is_file() && path.extension().is_some_and(|extension| extension == "py") {
            let (Some(name), Some(full)) = (path.file_name().and_then(|name| name.to_str()), path.to_str()) else {
                fail(&format!("{} is not a UTF-8 path", path.display()));
            };
            println!("cargo:rerun-if-changed={full}");
            modules.push((name.to_owned(), full.to_owned()));
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
