//! A thread that has taken the GIL takes it once more as it exits, to delete the thread state
//! kept for it: it must not be joined by a thread that holds a guard. These tests pin that
//! down, then churn threads that take the GIL, drop handles made on other threads and exit,
//! while another thread runs Python I/O that lets the GIL go around its system calls.
//!
//! They run one at a time (SERIAL): the first holds the GIL for a while on purpose, and the
//! second counts the interpreter's thread states.

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use pyo3_ffi as ffi;
use rs4py::{Gil, Handle};

/// Long enough for any of these threads to finish on a loaded machine; reached only if they
/// wait for each other forever.
const PATIENCE: Duration = Duration::from_secs(300);

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Joins `thread` on a thread of its own, whose channel says when `thread` has fully exited
/// (thread-local destructors included), so that the caller can watch without blocking.
fn join_in_background<T: Send + 'static>(thread: JoinHandle<T>) -> mpsc::Receiver<T> {
    let (exited_tx, exited_rx) = mpsc::channel();
    thread::spawn(move || exited_tx.send(thread.join().unwrap()).unwrap());
    exited_rx
}

/// Lets the GIL go (`time.sleep` releases it) until `receiver` has a value.
fn sleep_until<T>(gil: &Gil, receiver: &mpsc::Receiver<T>) -> T {
    let sleep = gil.eval("__import__('time').sleep").unwrap();
    loop {
        match receiver.try_recv() {
            Ok(value) => return value,
            Err(_) => {
                sleep.call((0.001,), ()).unwrap();
            }
        }
    }
}

#[test]
fn a_thread_that_took_the_gil_takes_it_once_more_as_it_exits() {
    let _serial = serial();
    let gil = Gil::acquire().unwrap();

    // A thread that used rs4py without taking the GIL exits while it is held here.
    let exited = join_in_background(thread::spawn(Gil::is_held));
    assert_eq!(exited.recv_timeout(PATIENCE), Ok(false));

    let (done_tx, done_rx) = mpsc::channel();
    let (exit_tx, exit_rx) = mpsc::channel::<()>();
    let child = thread::spawn(move || {
        let answer = Gil::acquire().unwrap().eval("6 * 7").unwrap().extract::<i64>().unwrap();
        done_tx.send(answer).unwrap();
        exit_rx.recv().unwrap();
    });
    assert_eq!(sleep_until(&gil, &done_rx), 42);
    // The child's work is done and its guard gone; told to exit now, it waits for the GIL held
    // here.
    exit_tx.send(()).unwrap();
    let exited = join_in_background(child);
    assert_eq!(
        exited.recv_timeout(Duration::from_millis(300)),
        Err(RecvTimeoutError::Timeout),
        "the thread exited while another held the GIL: its thread state was not deleted"
    );
    drop(gil);
    assert_eq!(exited.recv_timeout(PATIENCE), Ok(()), "the thread exits once the GIL is free");
}

/// How many thread states the interpreter has (the caller's guard proves the GIL is held).
fn thread_states(_gil: &Gil) -> usize {
    let mut count = 0;
    // SAFETY: the GIL is held (_gil); the walk only reads the interpreter's list of thread
    // states, which threads change only under the runtime's own lock, taken by no thread
    // between two steps here while this thread holds the GIL and runs no Python code.
    let interpreter = unsafe { ffi::PyInterpreterState_Main() };
    // SAFETY: as above; the main interpreter lives as long as the process.
    let mut state = unsafe { ffi::PyInterpreterState_ThreadHead(interpreter) };
    while !state.is_null() {
        count += 1;
        // SAFETY: as above; `state` is a live entry of the list.
        state = unsafe { ffi::PyThreadState_Next(state) };
    }
    count
}

const IO_ROUND: &str = "
def thread_exit_io_round(path, os=__import__('os'), time=__import__('time')):
    with open(path, 'wb') as f:
        f.write(b'x' * 4096)
    with open(path, 'rb') as f:
        size = len(f.read())
    os.stat(path)
    time.sleep(0)
    return size
";

/// Runs Python file I/O (each system call lets the GIL go) until `stop`; returns the rounds.
fn python_io(stop: &AtomicBool) -> usize {
    let path = std::env::temp_dir().join(format!("rs4py-thread-exit-{}", std::process::id()));
    let path = path.to_str().unwrap();
    Gil::acquire().unwrap().run(IO_ROUND).unwrap();
    let mut rounds = 0;
    while !stop.load(Ordering::SeqCst) {
        let gil = Gil::acquire().unwrap();
        let round = gil.eval("thread_exit_io_round").unwrap();
        for _ in 0..10 {
            assert_eq!(round.call((path,), ()).unwrap().extract::<usize>().unwrap(), 4096);
        }
        rounds += 1;
    }
    std::fs::remove_file(path).unwrap();
    rounds
}

thread_local! {
    /// A handle released by the thread's exit, before or after its thread state is deleted
    /// (depending on whether it was set before or after the thread's first acquisition).
    static UNTIL_EXIT: RefCell<Option<Handle>> = const { RefCell::new(None) };
}

const ROUNDS: usize = 100;
const THREADS_AT_ONCE: usize = 8;
const HANDLES_PER_THREAD: usize = 20;

/// What one short-lived thread does: puts a batch of handles to `shared` in the mailbox, takes
/// out another thread's batch (or its own) and drops it handle by handle, each drop taking
/// the GIL by itself; some threads take the GIL first through such a drop, some leave a
/// handle to the thread's exit.
fn churn_thread(shared: &Handle, mailbox: &Mutex<Vec<Vec<Handle>>>, index: usize) {
    let late = |gil: &Gil| UNTIL_EXIT.set(Some(shared.clone_ref(gil)));
    if index % 4 == 1 {
        // Set before the first acquisition (so the thread-local outlives the thread state's
        // destructor or not, as the platform orders them), dropped at exit.
        UNTIL_EXIT.set(None);
    }
    let mine: Vec<Handle> = if index % 4 == 0 {
        // No guard of its own: the only acquisitions are the handle drops below.
        Vec::new()
    } else {
        let gil = Gil::acquire().unwrap();
        assert_eq!(shared.bind(&gil).len().unwrap(), 1);
        if index % 4 != 3 {
            late(&gil);
        }
        (0..HANDLES_PER_THREAD).map(|_| shared.clone_ref(&gil)).collect()
    };
    let theirs = {
        let mut mailbox = mailbox.lock().unwrap();
        mailbox.push(mine);
        let pick = index % mailbox.len();
        mailbox.swap_remove(pick)
    };
    drop(theirs);
}

#[test]
fn threads_that_take_the_gil_drop_foreign_handles_and_exit_while_another_does_python_io() {
    let _serial = serial();
    let shared: Handle = Gil::acquire().unwrap().eval("[object()]").unwrap().unbind();
    let stop = Arc::new(AtomicBool::new(false));
    let (io_started_tx, io_started_rx) = mpsc::channel();
    let io = {
        let stop = Arc::clone(&stop);
        thread::spawn(move || {
            drop(Gil::acquire().unwrap());
            io_started_tx.send(()).unwrap();
            python_io(&stop)
        })
    };
    io_started_rx.recv().unwrap();
    let before = thread_states(&Gil::acquire().unwrap());

    let shared = Arc::new(shared);
    let churn = {
        let shared = Arc::clone(&shared);
        thread::spawn(move || {
            for round in 0..ROUNDS {
                let mailbox = Mutex::new(Vec::new());
                // Joined at the scope's end without the GIL, which each thread's exit needs.
                thread::scope(|scope| {
                    for index in 0..THREADS_AT_ONCE {
                        let (shared, mailbox) = (&shared, &mailbox);
                        scope.spawn(move || churn_thread(shared, mailbox, round * THREADS_AT_ONCE + index));
                    }
                });
                drop(mailbox); // the batches left over, dropped here
            }
        })
    };
    // A deadlock fails the test rather than hanging it.
    let churned = join_in_background(churn).recv_timeout(PATIENCE);
    stop.store(true, Ordering::SeqCst);
    assert_eq!(churned, Ok(()), "the churning threads did not finish");
    let io_rounds = join_in_background(io).recv_timeout(PATIENCE).expect("the I/O thread did not finish");
    assert!(io_rounds > 0);

    let gil = Gil::acquire().unwrap();
    assert_eq!(shared.bind(&gil).refcount(), 2, "every handle made by the threads was released");
    // The I/O thread, which kept its state until it exited, is gone too.
    assert_eq!(thread_states(&gil), before - 1, "every exited thread's state was deleted");
}
