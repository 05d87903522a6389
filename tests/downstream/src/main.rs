//! Exits 0 only if the embedded interpreter is the one rs4py was built against.

fn main() -> Result<(), rs4py::Error> {
    let gil = rs4py::Gil::acquire()?;
    let (version, executable): (String, String) =
        gil.eval("(__import__('sys').version, __import__('sys').executable)")?.extract()?;
    let build = rs4py::build_python();
    assert_eq!((version.as_str(), executable.as_str()), (build.version, build.executable));
    println!("downstream crate runs {executable}: {version}");
    Ok(())
}
