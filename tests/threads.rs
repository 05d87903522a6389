//! Many threads at once: starting races, the GIL taken and released many times, objects made
//! on one thread and dropped on another.

use std::sync::{Arc, Barrier};
use std::thread;

use rs4py::{Gil, Handle};

const THREADS: usize = 8;

#[test]
fn threads_race_to_start_and_all_get_the_gil() {
    // All threads call in at once; whichever comes first starts Python, exactly once.
    let barrier = Arc::new(Barrier::new(THREADS));
    let workers: Vec<_> = (0..THREADS)
        .map(|index| {
            let barrier = Arc::clone(&barrier);
            thread::spawn(move || {
                barrier.wait();
                let gil = Gil::acquire().unwrap();
                gil.eval(&format!("{index} * 2")).unwrap().extract::<i64>().unwrap()
            })
        })
        .collect();
    let results: Vec<i64> = workers.into_iter().map(|w| w.join().unwrap()).collect();
    assert_eq!(results, (0..THREADS as i64).map(|i| i * 2).collect::<Vec<_>>());
}

#[test]
fn the_gil_is_taken_and_released_many_times_from_many_threads() {
    {
        let gil = Gil::acquire().unwrap();
        gil.run("import threading\ncounter_lock = threading.Lock()\ncounter = [0]\n").unwrap();
    }
    const ROUNDS: usize = 2000;
    let workers: Vec<_> = (0..THREADS)
        .map(|_| {
            thread::spawn(|| {
                for _ in 0..ROUNDS {
                    let gil = Gil::acquire().unwrap();
                    assert!(Gil::is_held());
                    gil.run("counter[0] += 1").unwrap();
                }
                assert!(!Gil::is_held(), "the last guard released the GIL");
            })
        })
        .collect();
    for worker in workers {
        worker.join().unwrap();
    }
    let gil = Gil::acquire().unwrap();
    // counter[0] += 1 is not atomic in Python, but the GIL is held across each whole `run`.
    let count: usize = gil.eval("counter[0]").unwrap().extract().unwrap();
    assert_eq!(count, THREADS * ROUNDS);
}

#[test]
fn handles_made_on_one_thread_are_used_and_dropped_on_others() {
    let handles: Vec<Handle> = {
        let gil = Gil::acquire().unwrap();
        (0..THREADS).map(|i| gil.eval(&format!("[{i}] * 3")).unwrap().unbind()).collect()
    };
    let probe = {
        let gil = Gil::acquire().unwrap();
        handles[0].clone_ref(&gil)
    };
    let workers: Vec<_> = handles
        .into_iter()
        .enumerate()
        .map(|(index, handle)| {
            thread::spawn(move || {
                let gil = Gil::acquire().unwrap();
                let values: Vec<usize> = handle.bind(&gil).extract().unwrap();
                assert_eq!(values, [index; 3]);
                drop(gil);
                drop(handle); // takes the GIL by itself
            })
        })
        .collect();
    for worker in workers {
        worker.join().unwrap();
    }
    let gil = Gil::acquire().unwrap();
    assert_eq!(probe.bind(&gil).refcount(), 2, "only `probe` and this binding remain");
}

#[test]
fn nested_guards_release_in_any_order() {
    let outer = Gil::acquire().unwrap();
    let inner = Gil::acquire().unwrap();
    drop(outer);
    assert!(Gil::is_held());
    assert_eq!(inner.eval("2 + 2").unwrap().extract::<i64>().unwrap(), 4);
    drop(inner);
    assert!(!Gil::is_held());
}

#[test]
fn a_thread_that_drops_its_guard_lets_others_run_python() {
    let gil = Gil::acquire().unwrap();
    let list = gil.eval("[]").unwrap().unbind();
    drop(gil);
    let filler = thread::spawn(|| Gil::acquire().unwrap().eval("'ran'").unwrap().extract::<String>().unwrap());
    assert_eq!(filler.join().unwrap(), "ran");
    let gil = Gil::acquire().unwrap();
    assert_eq!(list.bind(&gil).len().unwrap(), 0);
}

#[test]
fn python_threads_progress_while_rust_threads_hold_no_gil() {
    let gil = Gil::acquire().unwrap();
    gil.run(concat!(
        "import threading, time\n",
        "ticks = []\n",
        "def tick():\n",
        "    for _ in range(5):\n",
        "        ticks.append(1)\n",
        "        time.sleep(0.001)\n",
        "ticker = threading.Thread(target=tick)\n",
        "ticker.start()\n",
    ))
    .unwrap();
    drop(gil);
    thread::sleep(std::time::Duration::from_millis(200));
    let gil = Gil::acquire().unwrap();
    gil.run("ticker.join()").unwrap();
    assert_eq!(gil.eval("len(ticks)").unwrap().extract::<usize>().unwrap(), 5);
}
