//! Finds the Python interpreter the way the PyO3 ecosystem does (`PYO3_PYTHON`, else an active
//! virtualenv, else `python3` on `PATH`; the search itself is `pyo3-build-config`'s, shared with
//! `pyo3-ffi`, which links its libpython), then:
//!
//! - sets the rpath of this package's binaries, tests, examples and benches to that
//!   interpreter's library directory, so they load the libpython they were built against;
//! - records the interpreter's executable, prefix and version for run time, so that the
//!   embedded interpreter reports and spawns the very Python found here, and the real path of
//!   its libpython, so that the run-time check can tell that very library from another one;
//! - publishes the library directory to dependent build scripts as `DEP_RS4PY_LIBDIR`.

use std::process::exit;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
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

fn fail(message: &str) -> ! {
    eprintln!("rs4py build: {message}");
    exit(1)
}
