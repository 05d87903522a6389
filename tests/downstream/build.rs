fn main() {
    // The one line the rs4py README tells dependents to add.
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", std::env::var("DEP_RS4PY_LIBDIR").unwrap());
}
