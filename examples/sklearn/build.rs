//! The rpath of this crate's binary: it links rs4py, hence libpython.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    // rs4py publishes its libpython directory to dependents' build scripts (`links = "rs4py"`).
    println!(
        "cargo:rustc-link-arg=-Wl,-rpath,{}",
        std::env::var("DEP_RS4PY_LIBDIR").expect("rs4py publishes DEP_RS4PY_LIBDIR")
    );
}
