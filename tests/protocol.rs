//! The flags of the Rust–Python contract agree: `SubmitStatus` and `ResultStatus` carry the
//! codes `py4cc.protocol` defines, in the copy of py4cc the Driver and its workers run.
//! (The names the Driver uses in Python are checked against `py4cc.protocol.DRIVER_CONTRACT`
//! beside their private constants, in `src/driver/protocol.rs`.)

use std::path::Path;

use rs4py::{Driver, DriverOptions, Gil, ResultStatus, SubmitStatus};

#[test]
fn the_status_codes_are_the_flags_of_py4cc_protocol() {
    // Driver::new puts rs4py's own py4cc first on sys.path.
    drop(Driver::new(DriverOptions::default()).unwrap());
    let gil = Gil::acquire().unwrap();
    let protocol = gil.import("py4cc.protocol").unwrap();
    let file: String = protocol.getattr("__file__").unwrap().extract().unwrap();
    assert!(!Path::new(&file).starts_with(env!("CARGO_MANIFEST_DIR")), "{file} is not the embedded copy");
    let flag = |name: &str| -> i64 { protocol.getattr(name).unwrap().extract().unwrap() };

    let submit =
        [(SubmitStatus::Accepted, "OK"), (SubmitStatus::AtCapacity, "AT_CAPACITY"), (SubmitStatus::Error, "ERROR")];
    for (status, name) in submit {
        assert_eq!(status.code(), flag(name), "{status:?} vs py4cc.protocol.{name}");
        assert_eq!(SubmitStatus::from_code(flag(name)), Some(status), "{name}");
    }
    let result = [
        (ResultStatus::Done, "OK"),
        (ResultStatus::NotReady, "NOT_FINISHED"),
        (ResultStatus::Failed, "FAILED"),
        (ResultStatus::Error, "ERROR"),
    ];
    for (status, name) in result {
        assert_eq!(status.code(), flag(name), "{status:?} vs py4cc.protocol.{name}");
        assert_eq!(ResultStatus::from_code(flag(name)), Some(status), "{name}");
    }
    // Python's flags are distinct where the Rust statuses are (one call's answers).
    assert_eq!([flag("OK"), flag("AT_CAPACITY"), flag("ERROR")], [0, 1, 9]);
    assert_eq!([flag("OK"), flag("NOT_FINISHED"), flag("FAILED"), flag("ERROR")], [0, 1, 2, 9]);
}
