//! Exits 0 only if the embedded interpreter is the one rs4py was built against.

fn main() -> Result<(), rs4py::Error> {
    let gil = rs4py::Gil::acquire()?;
    let (version, hexversion, executable): (String, u32, String) =
        gil.eval("(__import__('sys').version, __import__('sys').hexversion, __import__('sys').executable)")?.extract()?;
    let build = rs4py::build_python();
    assert_eq!((hexversion, executable.as_str()), (build.hexversion, build.executable));
    println!("downstream crate runs {executable}: {version}");
    Ok(())
}
