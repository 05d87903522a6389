//! Flat combining of submissions: callers queue their tasks, and whichever finds no combiner
//! at work becomes it, takes the GIL once and hands everything queued to py4cc in one call;
//! the others wait for their answer (parked, holding neither the GIL nor the Driver's mutex).
//!
//! So N callers submitting at once cost one GIL acquisition and one Python call per batch
//! instead of N of each, and never queue on the Driver's mutex one behind the other. A
//! combiner serves at most [`ROUNDS`] batches, then wakes the owner of the oldest task still
//! queued to take over, so that no caller becomes a server for long.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, Thread};

use parking_lot::Mutex;

use crate::gil::Gil;

/// The most batches one combiner hands over before it leaves the rest to another caller.
const ROUNDS: usize = 4;

/// How many times a waiting caller yields its CPU before it parks.
const YIELDS: usize = 8;

/// Where a queued task's answer lands, and whom to wake then.
struct Slot<A> {
    answer: Mutex<Option<A>>,
    owner: Thread,
}

/// The submission queue and its combiner flag; `T` a queued task, `A` its answer.
pub(crate) struct Combiner<T, A> {
    queue: Mutex<Vec<(T, Arc<Slot<A>>)>>,
    active: AtomicBool,
}

impl<T, A> Default for Combiner<T, A> {
    fn default() -> Self {
        Combiner { queue: Mutex::new(Vec::new()), active: AtomicBool::new(false) }
    }
}

impl<T, A> Combiner<T, A> {
    /// Queues `task` and returns its answer: computed by `combine` (which answers a batch of
    /// tasks, one answer each, in order) on this thread or on another caller's. A thread that
    /// holds the GIL lets it go while it waits.
    pub(crate) fn submit(&self, task: T, combine: impl Fn(Vec<T>) -> Vec<A>) -> A {
        let slot = Arc::new(Slot { answer: Mutex::new(None), owner: thread::current() });
        self.queue.lock().push((task, Arc::clone(&slot)));
        loop {
            if let Some(answer) = slot.answer.lock().take() {
                return answer;
            }
            if self.active.compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst).is_ok() {
                self.combine(&combine);
                continue;
            }
            if Gil::is_held() {
                Gil::acquire_started().release_during(|| self.park_unless_answered(&slot));
            } else {
                self.park_unless_answered(&slot);
            }
        }
    }

    fn park_unless_answered(&self, slot: &Slot<A>) {
        // A batch takes one Python call: the answer usually comes within a few yields, which
        // cost less than a park and its wake (two futex calls and two context switches).
        for _ in 0..YIELDS {
            if slot.answer.lock().is_some() {
                return;
            }
            thread::yield_now();
        }
        if slot.answer.lock().is_none() {
            // A wake that came before the park makes it return at once (thread::park's token).
            thread::park();
        }
    }

    /// The combiner's work (`active` is set): up to [`ROUNDS`] batches, then lets go of
    /// `active`, and if tasks are still queued wakes their oldest owner to carry on.
    fn combine(&self, combine: &impl Fn(Vec<T>) -> Vec<A>) {
        for _ in 0..ROUNDS {
            let batch = std::mem::take(&mut *self.queue.lock());
            if batch.is_empty() {
                break;
            }
            let (tasks, slots): (Vec<T>, Vec<Arc<Slot<A>>>) = batch.into_iter().unzip();
            let answers = combine(tasks);
            debug_assert_eq!(answers.len(), slots.len());
            for (slot, answer) in slots.into_iter().zip(answers) {
                *slot.answer.lock() = Some(answer);
                slot.owner.unpark();
            }
        }
        self.active.store(false, Ordering::SeqCst);
        // A task queued after the last batch was taken, whose owner saw `active` set: it
        // must not wait for a combiner that has left.
        if let Some((_, slot)) = self.queue.lock().first() {
            slot.owner.unpark();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn every_task_gets_its_own_answer_and_batches_form() {
        let combiner = Arc::new(Combiner::<u64, u64>::default());
        let calls = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..16u64)
            .map(|thread_index| {
                let combiner = Arc::clone(&combiner);
                let calls = Arc::clone(&calls);
                thread::spawn(move || {
                    for n in 0..500u64 {
                        let task = thread_index * 1000 + n;
                        let answer = combiner.submit(task, |tasks| {
                            calls.fetch_add(1, Ordering::SeqCst);
                            tasks.iter().map(|task| task * 2 + 1).collect()
                        });
                        assert_eq!(answer, task * 2 + 1);
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        assert!(combiner.queue.lock().is_empty());
        assert!(!combiner.active.load(Ordering::SeqCst));
        assert!(calls.load(Ordering::SeqCst) >= 1);
    }

    #[test]
    fn tasks_queued_while_a_combiner_works_go_in_its_next_batch() {
        let combiner = Arc::new(Combiner::<u64, u64>::default());
        let batches = Arc::new(Mutex::new(Vec::new()));
        let combine = {
            let combiner = Arc::clone(&combiner);
            let batches = Arc::clone(&batches);
            move |tasks: Vec<u64>| {
                let first = batches.lock().is_empty();
                batches.lock().push(tasks.clone());
                if first {
                    // The first batch waits until three more tasks are queued behind it.
                    let start = std::time::Instant::now();
                    while combiner.queue.lock().len() < 3 {
                        assert!(start.elapsed() < std::time::Duration::from_secs(30), "the others never queued");
                        thread::yield_now();
                    }
                }
                tasks.iter().map(|task| task + 100).collect::<Vec<_>>()
            }
        };
        let first = {
            let combiner = Arc::clone(&combiner);
            let combine = combine.clone();
            thread::spawn(move || combiner.submit(1, combine))
        };
        while batches.lock().is_empty() {
            thread::yield_now();
        }
        let others: Vec<_> = (2..5u64)
            .map(|task| {
                let combiner = Arc::clone(&combiner);
                let combine = combine.clone();
                thread::spawn(move || combiner.submit(task, combine))
            })
            .collect();
        assert_eq!(first.join().unwrap(), 101);
        let mut answers: Vec<u64> = others.into_iter().map(|thread| thread.join().unwrap()).collect();
        answers.sort_unstable();
        assert_eq!(answers, [102, 103, 104]);
        let mut sizes: Vec<Vec<u64>> = batches.lock().clone();
        sizes[1].sort_unstable();
        assert_eq!(sizes, [vec![1], vec![2, 3, 4]], "one call for the three queued meanwhile");
    }
}
