//! Every guard operation and conversion leaves the reference counts of the objects it touches
//! as they were (or raised by exactly the references it hands out).

use std::collections::HashMap;

use rs4py::{Bytes, Gil, Handle, Object, ToPython};

/// A fresh list: not shared with anything else, so its count moves only with our guards.
fn fresh(gil: &Gil) -> Object<'_> {
    gil.eval("[object()]").unwrap()
}

/// Whether `object` is immortal (None, True, small ints... since CPython 3.12): its count is
/// fixed at a huge value that increfs and decrefs leave as it is. `sys._is_immortal` says so
/// from 3.14; before, such counts start at 2**32 - 1 or 3 * 2**30, out of reach of real
/// references.
fn is_immortal(gil: &Gil, object: &Object<'_>) -> bool {
    gil.eval(
        "lambda o, sys=__import__('sys'): sys._is_immortal(o) if hasattr(sys, '_is_immortal') \
         else sys.version_info >= (3, 12) and sys.getrefcount(o) >= 2 ** 30",
    )
    .unwrap()
    .call((object,), ())
    .unwrap()
    .extract()
    .unwrap()
}

/// How much `n` new references raise the count of `object`: `n`, or 0 if it is immortal.
fn expected_rise(gil: &Gil, object: &Object<'_>, n: isize) -> isize {
    if is_immortal(gil, object) { 0 } else { n }
}

/// `sys.getrefcount(obj)` as Python itself reports it, minus its own argument reference.
fn python_refcount(gil: &Gil, object: &Object<'_>) -> isize {
    let count: isize = gil.import("sys").unwrap().call_method("getrefcount", (object,), ()).unwrap().extract().unwrap();
    count - 1
}

#[test]
fn refcount_agrees_with_sys_getrefcount() {
    let gil = Gil::acquire().unwrap();
    let list = fresh(&gil);
    assert_eq!(list.refcount(), 1);
    assert_eq!(python_refcount(&gil, &list), list.refcount());
}

#[test]
fn clone_increfs_and_drop_decrefs() {
    let gil = Gil::acquire().unwrap();
    let list = fresh(&gil);
    let clones: Vec<_> = (0..5).map(|_| list.clone()).collect();
    assert_eq!(list.refcount(), 6);
    drop(clones);
    assert_eq!(list.refcount(), 1);
}

#[test]
fn handles_own_one_reference_and_release_it_on_any_thread() {
    let gil = Gil::acquire().unwrap();
    let list = fresh(&gil);
    let handle: Handle = list.clone().unbind();
    assert_eq!(list.refcount(), 2);
    let bound = handle.bind(&gil);
    assert_eq!(list.refcount(), 3);
    drop(bound);
    let second = handle.clone_ref(&gil);
    assert_eq!(list.refcount(), 3);
    // Dropped on another thread, which must take the GIL itself: this thread lets it go. Not
    // only until the drop: a thread that has taken the GIL takes it once more as it exits (to
    // delete its thread state), so a join with the GIL held would wait forever.
    drop(list);
    drop(gil);
    std::thread::spawn(move || drop(second)).join().unwrap();
    let gil = Gil::acquire().unwrap();
    let list = handle.bind(&gil);
    assert_eq!(list.refcount(), 2, "the handle's reference and this one");
    let back = handle.into_object(&gil);
    assert_eq!(list.refcount(), 2);
    drop(back);
    assert_eq!(list.refcount(), 1);
}

#[test]
fn getattr_call_and_call_method_leave_arguments_as_they_were() {
    let gil = Gil::acquire().unwrap();
    let list = fresh(&gil);
    // Only objects of this test's own: Python code may let other test threads run between
    // two statements here, and they may hold references to anything shared (builtins, ...).
    gil.run("class Namespace:\n    pass\n").unwrap();
    let namespace = gil.eval("Namespace()").unwrap();
    let counter = gil.eval("lambda items: len(items)").unwrap();
    namespace.setattr("counter", &counter).unwrap();
    let counter_count = counter.refcount();
    for _ in 0..100 {
        let n: usize = counter.call((&list,), ()).unwrap().extract().unwrap();
        assert_eq!(n, 1);
        let copy = list.call_method("copy", (), ()).unwrap();
        assert_eq!(copy.refcount(), 1, "a call's result is a new reference we own alone");
        let _ = namespace.getattr("counter").unwrap();
        let by_method: usize = namespace.call_method("counter", (&list,), ()).unwrap().extract().unwrap();
        assert_eq!(by_method, 1);
        let key = gil.eval("lambda item: 0").unwrap();
        gil.eval("sorted").unwrap().call((&list,), [("key", &key)]).unwrap();
    }
    assert_eq!(list.refcount(), 1);
    assert_eq!(counter.refcount(), counter_count);
}

#[test]
fn a_call_that_raises_releases_its_arguments() {
    let gil = Gil::acquire().unwrap();
    let list = fresh(&gil);
    gil.run("def keep_and_raise(x):\n    raise ValueError('no')\n").unwrap();
    let function = gil.eval("keep_and_raise").unwrap();
    for _ in 0..100 {
        let err = function.call((&list,), ()).unwrap_err();
        assert_eq!(err.python_type(), Some("ValueError"));
    }
    assert_eq!(list.refcount(), 1, "neither the args tuple nor the fetched traceback keeps the list");
}

#[test]
fn setattr_keeps_exactly_one_new_reference() {
    let gil = Gil::acquire().unwrap();
    gil.run("class Holder: pass\nholder = Holder()\n").unwrap();
    let holder = gil.eval("holder").unwrap();
    let list = fresh(&gil);
    holder.setattr("value", &list).unwrap();
    assert_eq!(list.refcount(), 2);
    holder.setattr("value", 0).unwrap();
    assert_eq!(list.refcount(), 1);
}

#[test]
fn converting_containers_takes_references_only_for_the_container() {
    let gil = Gil::acquire().unwrap();
    let item = fresh(&gil);
    let as_list = vec![item.clone(), item.clone()].to_python(gil.token()).unwrap();
    assert_eq!(item.refcount(), 3, "the list holds two references, the clones were stolen");
    let as_tuple = (&item, 1, "x").to_python(gil.token()).unwrap();
    assert_eq!(item.refcount(), 4);
    let as_dict = HashMap::from([("k".to_string(), &item)]).to_python(gil.token()).unwrap();
    assert_eq!(item.refcount(), 5);
    let some = Some(&item).to_python(gil.token()).unwrap();
    assert_eq!(item.refcount(), 6);
    drop((as_list, as_tuple, as_dict, some));
    assert_eq!(item.refcount(), 1);
}

#[test]
fn extracting_containers_leaves_the_source_untouched() {
    let gil = Gil::acquire().unwrap();
    let source = gil.eval("[[object()], [object()]]").unwrap();
    let inner = source.get_item(0).unwrap();
    let before = inner.refcount();
    let objects: Vec<Object<'_>> = source.extract().unwrap();
    assert_eq!(inner.refcount(), before + 1);
    drop(objects);
    assert_eq!(inner.refcount(), before);
    assert_eq!(source.refcount(), 1);
    let pairs = gil.eval("{'a': [1], 'b': [2]}").unwrap();
    let map: HashMap<String, Vec<i64>> = pairs.extract().unwrap();
    assert_eq!(map["b"], [2]);
    assert_eq!(pairs.refcount(), 1);
    let tuple = gil.eval("(1, 'two', 3.0)").unwrap();
    let _: (i64, String, f64) = tuple.extract().unwrap();
    assert_eq!(tuple.refcount(), 1);
}

#[test]
fn failed_extraction_leaks_nothing() {
    let gil = Gil::acquire().unwrap();
    // Fresh objects only: a literal like 'text' is shared (deep-frozen) with other threads' code.
    let source = gil.eval("[object(), ''.join(['te', 'xt ', str(id(object()))]), 2 ** 70 + 1]").unwrap();
    let items: Vec<Object<'_>> = source.extract().unwrap();
    let counts: Vec<isize> = items.iter().map(Object::refcount).collect();
    for _ in 0..50 {
        assert!(source.extract::<Vec<i64>>().is_err());
        assert!(source.extract::<Bytes>().is_err());
        assert!(source.extract::<(i64, i64)>().is_err());
        assert!(items[2].extract::<i64>().is_err());
        assert!(items[1].extract::<HashMap<String, i64>>().is_err());
    }
    assert_eq!(items.iter().map(Object::refcount).collect::<Vec<_>>(), counts);
}

#[test]
fn borrowed_references_are_increfed_and_released() {
    let gil = Gil::acquire().unwrap();
    // A mortal object, taken from a borrowed pointer (an Object converts by increfing its own).
    let list = fresh(&gil);
    let many: Vec<_> = (0..10).map(|_| list.to_python(gil.token()).unwrap()).collect();
    assert_eq!(list.refcount(), 11);
    drop(many);
    assert_eq!(list.refcount(), 1);

    // None, borrowed from the interpreter: immortal since 3.12, its count then stays put.
    // None is shared with other threads: no Python code may run (and so switch threads)
    // between the two readings, so the expected rise is worked out first.
    let none = gil.none();
    let rise = expected_rise(&gil, &none, 10);
    let before = none.refcount();
    let many: Vec<_> = (0..10).map(|_| gil.none()).collect();
    assert_eq!(none.refcount(), before + rise);
    drop(many);
    assert_eq!(none.refcount(), before);
}

#[test]
fn immortal_objects_are_told_apart() {
    let gil = Gil::acquire().unwrap();
    let version: (u32, u32) = gil.eval("__import__('sys').version_info[:2]").unwrap().extract().unwrap();
    assert_eq!(is_immortal(&gil, &gil.none()), version >= (3, 12));
    assert!(!is_immortal(&gil, &fresh(&gil)));
}

#[test]
fn each_scalar_conversion_hands_over_exactly_one_reference_and_extraction_takes_none() {
    let gil = Gil::acquire().unwrap();
    // Values outside CPython's caches (small ints, one-character strings), so that the new
    // object's count is ours alone.
    let converted = [
        123_456_789_i64.to_python(gil.token()).unwrap(),
        (u64::MAX - 1).to_python(gil.token()).unwrap(),
        (-70_000_i32).to_python(gil.token()).unwrap(),
        2.5f64.to_python(gil.token()).unwrap(),
        "Straße ﬁnal\0".to_python(gil.token()).unwrap(),
        String::from("ключ 🦀").to_python(gil.token()).unwrap(),
        vec![1.5, 2.5].to_python(gil.token()).unwrap(),
        (1.5, "two").to_python(gil.token()).unwrap(),
        Bytes(&b"bytes \0\xff, not shared"[..]).to_python(gil.token()).unwrap(),
    ];
    for object in &converted {
        assert_eq!(object.refcount(), 1, "{object:?}");
    }
    let _: i64 = converted[0].extract().unwrap();
    let _: u64 = converted[1].extract().unwrap();
    let _: i32 = converted[2].extract().unwrap();
    let _: f64 = converted[3].extract().unwrap();
    let _: String = converted[4].extract().unwrap();
    let _: String = converted[5].extract().unwrap();
    let _: Vec<f64> = converted[6].extract().unwrap();
    let _: (f64, String) = converted[7].extract().unwrap();
    let _: Bytes = converted[8].extract().unwrap();
    assert!(converted[4].extract::<i64>().is_err());
    for object in &converted {
        assert_eq!(object.refcount(), 1, "extraction left {object:?} as it was");
    }
}

#[test]
fn import_and_the_object_protocol_calls_leave_counts_as_they_were() {
    let gil = Gil::acquire().unwrap();
    // A module of this test's own, so that no other thread holds references to it.
    let module = gil.import("types").unwrap().call_method("ModuleType", ("rs4py_refcount_probe",), ()).unwrap();
    gil.import("sys")
        .unwrap()
        .getattr("modules")
        .unwrap()
        .call_method("__setitem__", ("rs4py_refcount_probe", &module), ())
        .unwrap();
    let before = module.refcount();
    for _ in 0..50 {
        let again = gil.import("rs4py_refcount_probe").unwrap();
        assert!(again.is(&module));
    }
    assert_eq!(module.refcount(), before, "import hands back one reference per call, released on drop");

    let list = gil.eval("[object(), object()]").unwrap();
    let item = list.get_item(0).unwrap();
    let item_count = item.refcount();
    for _ in 0..50 {
        assert!(list.contains(&item).unwrap());
        assert!(item.eq(&item).unwrap());
        assert!(list.get_item(0).unwrap().is(&item));
        let _ = (item.str().unwrap(), item.repr().unwrap(), list.len().unwrap());
        let truth = true.to_python(gil.token()).unwrap();
        assert!(truth.extract::<bool>().unwrap());
    }
    assert_eq!(item.refcount(), item_count);
    assert_eq!(list.refcount(), 1);
    // True is shared with other threads: nothing runs Python code between the readings.
    let truth = true.to_python(gil.token()).unwrap();
    let rise = expected_rise(&gil, &truth, 10);
    let true_count = truth.refcount();
    let more: Vec<_> = (0..10).map(|_| true.to_python(gil.token()).unwrap()).collect();
    assert_eq!(truth.refcount(), true_count + rise, "each bool conversion owns one reference to True");
    drop(more);
    assert_eq!(truth.refcount(), true_count);
}

#[test]
fn bytes_and_bytearrays_are_copied_out_and_left_as_they_were() {
    let gil = Gil::acquire().unwrap();
    let sources = [gil.eval("bytes(range(256)) * 3").unwrap(), gil.eval("bytearray(range(256))").unwrap()];
    for source in &sources {
        assert_eq!(source.refcount(), 1);
        for _ in 0..50 {
            let copied: Bytes = source.extract().unwrap();
            assert_eq!(copied.0.len(), source.len().unwrap());
        }
        assert_eq!(source.refcount(), 1, "{source:?}");
    }
}
