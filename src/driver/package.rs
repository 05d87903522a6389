//! rs4py's own copy of the `py4cc` Python package, compiled into the binary and written out
//! once to a directory that the interpreter and every worker process can import from, so that
//! neither a user nor a deployment needs `PYTHONPATH`.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use once_cell::sync::OnceCell;

use crate::error::{Error, Result};

/// The package's modules, `(path, contents)` sorted by path: every `py4cc/*.py` and those of its
/// sub-packages (`core/tasks.py`, ...: relative to `py4cc/`, `/` between parts), as `build.rs`
/// listed them (its `tests/` and `workload/` stay in the source tree).
const FILES: &[(&str, &str)] = include!(concat!(env!("OUT_DIR"), "/py4cc_files.rs"));

/// The directory to put on `sys.path` for `import py4cc`: written on first use, checked on
/// every process start, rewritten file by file if anything differs.
///
/// It lives under `$XDG_CACHE_HOME/rs4py`, else `$HOME/.cache/rs4py`, else (also when those
/// cannot be written) `rs4py-<uid>` in the temporary directory, in a folder named after this crate's version and a hash of the files, so that
/// binaries built from different versions never share one.
pub(crate) fn package_parent_dir() -> Result<&'static Path> {
    static DIR: OnceCell<PathBuf> = OnceCell::new();
    DIR.get_or_try_init(|| {
        let folder = format!("py4cc-{}-{:016x}", env!("CARGO_PKG_VERSION"), files_hash());
        let mut failures = Vec::new();
        for root in package_roots() {
            let parent = root.join(&folder);
            match ensure_private(&root).and_then(|()| write_package(&parent.join("py4cc"))) {
                Ok(()) => return Ok(parent),
                Err(e) => failures.push(format!("{}: {e}", parent.display())),
            }
        }
        Err(Error::Start(format!("could not write the py4cc package anywhere: {}", failures.join("; "))))
    })
    .map(PathBuf::as_path)
}

/// Where the package may go, in order of preference: the user's cache, else (for a service
/// whose home is read-only) a directory of this user's own in the temporary directory.
fn package_roots() -> Vec<PathBuf> {
    let non_empty = |name: &str| std::env::var_os(name).filter(|value| !value.is_empty()).map(PathBuf::from);
    let user_cache = non_empty("XDG_CACHE_HOME").or_else(|| non_empty("HOME").map(|home| home.join(".cache")));
    // SAFETY: geteuid cannot fail and touches no memory.
    let user = unsafe { libc::geteuid() };
    user_cache
        .map(|cache| cache.join("rs4py"))
        .into_iter()
        .chain([std::env::temp_dir().join(format!("rs4py-{user}"))])
        .collect()
}

/// Creates `root` (private to this user when new) and refuses it unless this user owns it and
/// nobody else can write to it: its contents go first on `sys.path`, so whoever could add a
/// module there could run code in this process.
fn ensure_private(root: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    if let Some(parent) = root.parent() {
        fs::create_dir_all(parent)?;
    }
    match fs::DirBuilder::new().mode(0o700).create(root) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(e),
        _ => {}
    }
    let metadata = fs::symlink_metadata(root)?;
    // SAFETY: geteuid cannot fail and touches no memory.
    let user = unsafe { libc::geteuid() };
    if !metadata.is_dir() || metadata.uid() != user || metadata.mode() & 0o022 != 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!(
                "not a directory of this user's that only they can write (uid {}, mode {:o})",
                metadata.uid(),
                metadata.mode() & 0o7777
            ),
        ));
    }
    Ok(())
}

/// Names the folder after the files' contents. FNV-1a 64 rather than std's `DefaultHasher`,
/// whose output may change between Rust releases: the same files must give the same folder.
fn files_hash() -> u64 {
    fn fnv1a64(data: &[u8], hash: u64) -> u64 {
        data.iter().fold(hash, |hash, byte| (hash ^ u64::from(*byte)).wrapping_mul(0x100_0000_01b3))
    }
    FILES.iter().fold(0xcbf2_9ce4_8422_2325, |hash, (name, text)| {
        fnv1a64(text.as_bytes(), fnv1a64(&[0], fnv1a64(name.as_bytes(), hash)))
    })
}

/// Writes each file whose content differs (its sub-package's directory made first), through a
/// uniquely named temporary file beside it and a rename, so that processes racing to do the
/// same never see a half-written file.
fn write_package(dir: &Path) -> std::io::Result<()> {
    fs::create_dir_all(dir)?;
    for (name, text) in FILES {
        let path = dir.join(name);
        if fs::read(&path).is_ok_and(|current| current == text.as_bytes()) {
            continue;
        }
        let (folder, file_name) = match name.rsplit_once('/') {
            Some((sub, file_name)) => (dir.join(sub), file_name),
            None => (dir.to_path_buf(), *name),
        };
        fs::create_dir_all(&folder)?;
        let temporary =
            folder.join(format!(".{file_name}.{}.{:?}.tmp", std::process::id(), std::thread::current().id()));
        let mut file = fs::File::create(&temporary)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        fs::rename(&temporary, &path)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_package_is_written_and_repaired() {
        let dir = std::env::temp_dir().join(format!("rs4py-py4cc-test-{}", std::process::id()));
        let package = dir.join("py4cc");
        write_package(&package).unwrap();
        for (name, text) in FILES {
            assert_eq!(fs::read_to_string(package.join(name)).unwrap(), *text);
        }
        fs::write(package.join("driver.py"), "raise SystemExit('tampered')\n").unwrap();
        fs::remove_dir_all(package.join("core")).unwrap();
        write_package(&package).unwrap();
        assert_eq!(fs::read_to_string(package.join("driver.py")).unwrap(), include_str!("../../py4cc/driver.py"));
        assert_eq!(
            fs::read_to_string(package.join("core/tasks.py")).unwrap(),
            include_str!("../../py4cc/core/tasks.py")
        );
        fs::remove_dir_all(dir).unwrap();
    }

    /// Every `*.py` under `dir`, as paths relative to `py4cc/` (`prefix`), leaving out
    /// `tests/` and `workload/`: an independent walk of the source tree.
    fn source_modules(dir: &Path, prefix: &str, found: &mut Vec<String>) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_str().unwrap().to_owned();
            if path.is_dir() {
                if !["tests", "workload", "__pycache__"].contains(&name.as_str()) {
                    source_modules(&path, &format!("{prefix}{name}/"), found);
                }
            } else if path.extension().is_some_and(|extension| extension == "py") {
                found.push(format!("{prefix}{name}"));
            }
        }
    }

    #[test]
    fn the_table_holds_every_module_of_the_source_tree_and_nothing_else() {
        let source = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("py4cc");
        let mut modules = Vec::new();
        source_modules(&source, "", &mut modules);
        modules.sort();
        let names: Vec<&str> = FILES.iter().map(|(name, _)| *name).collect();
        assert_eq!(names, modules);
        for (name, text) in FILES {
            assert_eq!(*text, fs::read_to_string(source.join(name)).unwrap(), "{name}");
        }
        // The package, its layers' sub-packages among them, is there; the workload and the tests are not.
        for name in [
            "__init__.py",
            "driver.py",
            "engine.py",
            "core/__init__.py",
            "core/tasks.py",
            "local/pool.py",
            "ray/backend.py",
        ] {
            assert!(names.contains(&name), "{name} missing from {names:?}");
        }
        assert!(names.iter().all(|name| !name.starts_with("tests/") && !name.starts_with("workload/")), "{names:?}");
    }

    #[test]
    fn a_root_others_can_write_to_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let root = std::env::temp_dir().join(format!("rs4py-root-test-{}", std::process::id()));
        ensure_private(&root).unwrap();
        let mode = fs::metadata(&root).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "a new root is private");
        fs::set_permissions(&root, fs::Permissions::from_mode(0o777)).unwrap();
        let err = ensure_private(&root).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied, "{err}");
        fs::remove_dir(&root).unwrap();
        assert!(ensure_private(Path::new("/proc/rs4py-cannot-be-made")).is_err());
    }
}
