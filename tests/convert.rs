//! Conversions both ways, checked against Python's own literals, and refused when the value
//! does not fit.

use std::collections::HashMap;

use rs4py::{Bytes, Error, FromPython, Gil, GilToken, Object, ToPython};

/// Converts `value` to Python and checks it equals the Python `literal`, type included; then
/// converts the literal back and checks it equals `value`.
fn round_trip<T>(gil: &Gil, value: T, literal: &str)
where
    T: ToPython + for<'py> FromPython<'py> + PartialEq + std::fmt::Debug,
{
    let converted = value.to_python(gil.token()).unwrap();
    let expected = gil.eval(literal).unwrap();
    let same = gil.eval("lambda a, b: type(a) is type(b) and a == b").unwrap();
    let equal: bool = same.call((&converted, &expected), ()).unwrap().extract().unwrap();
    assert!(equal, "{value:?} became {converted:?}, expected {literal}");
    assert_eq!(expected.extract::<T>().unwrap(), value, "from {literal}");
}

fn conversion_error<'py, T: FromPython<'py> + std::fmt::Debug>(object: &Object<'py>) -> String {
    match object.extract::<T>() {
        Err(Error::Conversion(message)) => message,
        other => panic!("expected a conversion error, got {other:?}"),
    }
}

#[test]
fn scalars_round_trip() {
    let gil = Gil::acquire().unwrap();
    round_trip(&gil, true, "True");
    round_trip(&gil, false, "False");
    round_trip(&gil, -7i32, "-7");
    round_trip(&gil, i32::MIN, "-2**31");
    round_trip(&gil, i64::MIN, "-2**63");
    round_trip(&gil, i64::MAX, "2**63 - 1");
    round_trip(&gil, u64::MAX, "2**64 - 1");
    round_trip(&gil, 255u8, "255");
    round_trip(&gil, usize::MAX, "2**64 - 1");
    round_trip(&gil, 0.1f64, "0.1");
    round_trip(&gil, -0.0f64, "-0.0");
    round_trip(&gil, f64::INFINITY, "float('inf')");
    round_trip(&gil, f64::MAX, "1.7976931348623157e308");
    round_trip(&gil, (), "None");
}

#[test]
fn nan_goes_through_as_nan() {
    let gil = Gil::acquire().unwrap();
    let nan = f64::NAN.to_python(gil.token()).unwrap();
    assert!(gil.eval("__import__('math').isnan").unwrap().call((&nan,), ()).unwrap().extract::<bool>().unwrap());
    assert!(gil.eval("float('nan')").unwrap().extract::<f64>().unwrap().is_nan());
}

#[test]
fn strings_keep_every_code_point() {
    let gil = Gil::acquire().unwrap();
    round_trip(&gil, String::new(), "''");
    round_trip(&gil, "embedded\0nul".to_string(), "'embedded\\x00nul'");
    round_trip(&gil, "Straße ﬁnal Ωμέγα 🦀 \u{10FFFF}".to_string(), "'Straße ﬁnal Ωμέγα 🦀 \\U0010ffff'");
    round_trip(&gil, "e\u{301} combining".to_string(), "'e\\u0301 combining'");
    let len: usize = gil.eval("len").unwrap().call(("🦀\0x",), ()).unwrap().extract().unwrap();
    assert_eq!(len, 3, "Python counts code points");
}

#[test]
fn a_lone_surrogate_is_a_conversion_error() {
    let gil = Gil::acquire().unwrap();
    let message = conversion_error::<String>(&gil.eval("'a\\ud800b'").unwrap());
    assert!(message.starts_with("str is not valid UTF-8: UnicodeEncodeError:"), "{message}");
}

#[test]
fn containers_round_trip() {
    let gil = Gil::acquire().unwrap();
    round_trip(&gil, vec![1i64, -2, 3], "[1, -2, 3]");
    round_trip(&gil, Vec::<String>::new(), "[]");
    round_trip(&gil, vec![vec![1.5f64], vec![]], "[[1.5], []]");
    round_trip(&gil, (1i64, "a".to_string(), Some(2.5f64), None::<i64>), "(1, 'a', 2.5, None)");
    round_trip(&gil, (true,), "(True,)");
    round_trip(&gil, Some(vec![Some(1i32), None]), "[1, None]");
    round_trip(&gil, HashMap::from([("ключ".to_string(), vec![1i64]), ("b".into(), vec![])]), "{'ключ': [1], 'b': []}");
    let slice: &[i64] = &[4, 5];
    let list = slice.to_python(gil.token()).unwrap();
    assert_eq!(list.repr().unwrap(), "[4, 5]");
    assert_eq!(["x", "y"].to_python(gil.token()).unwrap().repr().unwrap(), "['x', 'y']");
}

#[test]
fn a_tuple_converts_to_vec_too() {
    let gil = Gil::acquire().unwrap();
    assert_eq!(gil.eval("(1, 2)").unwrap().extract::<Vec<i64>>().unwrap(), [1, 2]);
}

#[test]
fn numbers_that_do_not_fit_are_refused() {
    let gil = Gil::acquire().unwrap();
    let big = gil.eval("2 ** 63").unwrap();
    assert!(conversion_error::<i64>(&big).starts_with("int does not fit in i64: OverflowError: "));
    assert_eq!(big.extract::<u64>().unwrap(), 1 << 63);
    let negative = gil.eval("-1").unwrap();
    assert!(conversion_error::<u64>(&negative).starts_with("int does not fit in u64: OverflowError"));
    assert_eq!(conversion_error::<u8>(&gil.eval("256").unwrap()), "int 256 does not fit in u8");
    assert_eq!(conversion_error::<u32>(&gil.eval("-1").unwrap()), "int -1 does not fit in u32");
    assert_eq!(conversion_error::<i32>(&gil.eval("2**31").unwrap()), "int 2147483648 does not fit in i32");
    let huge = gil.eval("10 ** 400").unwrap();
    assert!(conversion_error::<f64>(&huge).starts_with("number does not fit in f64: OverflowError"));
    let enormous = gil.eval("1 << 100000").unwrap();
    assert!(conversion_error::<i64>(&enormous).contains("OverflowError"));
}

#[test]
fn wrong_types_are_refused_with_what_was_found() {
    let gil = Gil::acquire().unwrap();
    assert_eq!(conversion_error::<String>(&gil.eval("['a']").unwrap()), "expected str, got list");
    assert_eq!(conversion_error::<String>(&gil.eval("b'bytes'").unwrap()), "expected str, got bytes");
    assert_eq!(conversion_error::<i64>(&gil.eval("1.5").unwrap()), "expected int, got float");
    assert_eq!(conversion_error::<i64>(&gil.eval("'1'").unwrap()), "expected int, got str");
    assert_eq!(conversion_error::<f64>(&gil.eval("'1.0'").unwrap()), "expected float, got str");
    assert_eq!(conversion_error::<bool>(&gil.eval("1").unwrap()), "expected bool, got int");
    assert_eq!(conversion_error::<Vec<String>>(&gil.eval("'abc'").unwrap()), "expected list or tuple, got str");
    assert_eq!(conversion_error::<Vec<i64>>(&gil.eval("[1, 'x']").unwrap()), "item 1: expected int, got str");
    assert_eq!(
        conversion_error::<(i64, i64)>(&gil.eval("(1, 2, 3)").unwrap()),
        "expected a tuple of length 2, got length 3"
    );
    assert_eq!(conversion_error::<(i64, String)>(&gil.eval("(1, 2)").unwrap()), "item 1: expected str, got int");
    assert_eq!(
        conversion_error::<HashMap<String, i64>>(&gil.eval("{1: 2}").unwrap()),
        "dict key: expected str, got int"
    );
    assert_eq!(
        conversion_error::<HashMap<String, i64>>(&gil.eval("{'k': 'v'}").unwrap()),
        "value of \"k\": expected int, got str"
    );
    assert_eq!(conversion_error::<()>(&gil.eval("0").unwrap()), "expected None, got int");
}

#[test]
fn bool_is_an_int_in_python_and_converts_as_one() {
    let gil = Gil::acquire().unwrap();
    assert_eq!(gil.eval("True").unwrap().extract::<i64>().unwrap(), 1);
    assert_eq!(gil.eval("3").unwrap().extract::<f64>().unwrap(), 3.0);
}

#[test]
fn a_sequence_mutated_by_an_items_conversion_is_read_as_a_snapshot() {
    let gil = Gil::acquire().unwrap();
    gil.run(concat!(
        "class Shrinker(int):\n",
        "    def __float__(self):\n",
        "        victim.clear()\n",
        "        return 1.0\n",
        "victim = [1.0, 2.0]\n",
        "victim.insert(0, Shrinker(0))\n",
    ))
    .unwrap();
    let values: Vec<f64> = gil.eval("victim").unwrap().extract().unwrap();
    assert_eq!(values, [1.0, 1.0, 2.0]);
    assert!(gil.eval("victim").unwrap().is_empty().unwrap(), "the conversion really ran __float__");
}

/// A value whose conversion runs Python code that looks at every list alive.
struct ListSnooper;

impl ToPython for ListSnooper {
    fn to_python<'py>(&self, gil: GilToken<'py>) -> rs4py::Result<Object<'py>> {
        gil.eval("sum(len(list(o)) for o in __import__('gc').get_objects() if type(o) is list)")
    }
}

#[test]
fn a_list_under_construction_is_never_visible_to_python() {
    // Were the list made before its items, the snooper would find it with empty slots and
    // crash the process reading them.
    let gil = Gil::acquire().unwrap();
    let list = vec![ListSnooper, ListSnooper, ListSnooper].to_python(gil.token()).unwrap();
    assert_eq!(list.len().unwrap(), 3);
    let tuple = (ListSnooper, ListSnooper).to_python(gil.token()).unwrap();
    assert_eq!(tuple.len().unwrap(), 2);
}

#[test]
fn bytes_carry_every_byte_value_both_ways() {
    let gil = Gil::acquire().unwrap();
    let every: Vec<u8> = (0..=255).collect();
    let converted = Bytes(&every[..]).to_python(gil.token()).unwrap();
    let expected = gil.eval("bytes(range(256))").unwrap();
    assert_eq!(converted.type_name(), "bytes");
    assert!(converted.eq(&expected).unwrap(), "{converted:?}");
    assert_eq!(expected.extract::<Bytes>().unwrap(), Bytes(every.clone()));
    // Each value alone too, so that no byte is special (NUL, 0x80, 0xff...).
    let single = gil.eval("lambda data: len(data) == 1 and data[0]").unwrap();
    for byte in 0..=255u8 {
        let object = Bytes([byte]).to_python(gil.token()).unwrap();
        assert_eq!(single.call((&object,), ()).unwrap().extract::<i64>().unwrap(), i64::from(byte));
        assert_eq!(object.extract::<Bytes>().unwrap().0, [byte]);
    }
    round_trip(&gil, Bytes(Vec::new()), "b''");
    round_trip(&gil, Bytes(b"nul\0inside\xff".to_vec()), "b'nul\\x00inside\\xff'");
    round_trip(&gil, (Bytes(vec![1u8]), vec![2u8]), "(b'\\x01', [2])");
}

#[test]
fn a_vec_of_u8_is_a_list_of_ints_not_bytes() {
    let gil = Gil::acquire().unwrap();
    round_trip(&gil, vec![0u8, 1, 255], "[0, 1, 255]");
    let slice: &[u8] = b"ab";
    assert_eq!(slice.to_python(gil.token()).unwrap().repr().unwrap(), "[97, 98]");
    assert_eq!(conversion_error::<Vec<u8>>(&gil.eval("b'ab'").unwrap()), "expected list or tuple, got bytes");
    assert_eq!(conversion_error::<Bytes>(&gil.eval("[97, 98]").unwrap()), "expected bytes or bytearray, got list");
    assert_eq!(conversion_error::<Bytes>(&gil.eval("'ab'").unwrap()), "expected bytes or bytearray, got str");
}

#[test]
fn a_bytearray_and_a_bytes_subclass_convert_to_bytes() {
    let gil = Gil::acquire().unwrap();
    let every: Vec<u8> = (0..=255).rev().collect();
    let array = gil.eval("bytearray(range(255, -1, -1))").unwrap();
    assert_eq!(array.extract::<Bytes>().unwrap().0, every);
    assert_eq!(gil.eval("bytearray()").unwrap().extract::<Bytes>().unwrap().0, Vec::<u8>::new());
    gil.run("class Tagged(bytes):\n    pass\n").unwrap();
    assert_eq!(gil.eval("Tagged(b'\\x00\\x7f')").unwrap().extract::<Bytes>().unwrap().0, [0, 127]);
    let packed: Vec<u8> = [0.5f64, -1e300, f64::MIN_POSITIVE].iter().flat_map(|x| x.to_le_bytes()).collect();
    let unpack = gil.eval("lambda data: list(__import__('struct').unpack('<3d', data))").unwrap();
    let floats: Vec<f64> = unpack.call((Bytes(packed.as_slice()),), ()).unwrap().extract().unwrap();
    assert_eq!(floats, [0.5, -1e300, f64::MIN_POSITIVE]);
}
