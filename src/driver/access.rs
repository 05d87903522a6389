//! Whether a Driver call may go on: only in the process that made the Driver, and a task call
//! not while another thread runs `initialize`.
//!
//! After a raw `fork()` (a pre-forking server, a library that forks) the child holds a copy of
//! the Driver whose pipes lead to the parent's workers and whose task numbers repeat the
//! parent's: a task sent from there would be answered to the parent. Nor can the child take
//! the GIL or the Driver's locks safely (another thread of the parent may have held them at
//! the fork). So in any other process every call answers at once, touching nothing.

use std::sync::atomic::{AtomicU8, Ordering};

/// `initialize` has not succeeded yet.
const NEW: u8 = 0;
/// A thread is in `initialize`.
const INITIALIZING: u8 = 1;
/// `initialize` has succeeded.
const INITIALIZED: u8 = 2;

/// The message of a task call made while another thread initializes the Driver.
pub(super) const INITIALIZING_MESSAGE: &str =
    "the Driver is initializing (initialize runs on another thread): try again once it has returned";

/// The process a Driver belongs to, and whether `initialize` runs.
pub(super) struct Access {
    owner: u32,
    phase: AtomicU8,
}

impl Access {
    /// For a Driver made by this process now.
    pub(super) fn new() -> Access {
        Access { owner: std::process::id(), phase: AtomicU8::new(NEW) }
    }

    /// Whether this is the process that made the Driver; `Err` says whose it is.
    pub(super) fn check_process(&self) -> Result<(), String> {
        let here = std::process::id();
        if here == self.owner {
            return Ok(());
        }
        Err(format!("this Driver belongs to process {}: process {here}, a fork of it, cannot use it", self.owner))
    }

    /// Whether this is the process that made the Driver, and no thread runs `initialize`.
    pub(super) fn check_task_call(&self) -> Result<(), String> {
        self.check_process()?;
        if self.initializing() {
            return Err(INITIALIZING_MESSAGE.to_owned());
        }
        Ok(())
    }

    /// Whether a thread runs `initialize` now.
    pub(super) fn initializing(&self) -> bool {
        self.phase.load(Ordering::SeqCst) == INITIALIZING
    }

    /// Marks `initialize` as running until the guard drops; `Err` if another thread runs it.
    pub(super) fn begin_initialize(&self) -> Result<Initializing<'_>, String> {
        match self.phase.compare_exchange(NEW, INITIALIZING, Ordering::SeqCst, Ordering::SeqCst) {
            Ok(_) => Ok(Initializing { phase: Some(&self.phase) }),
            Err(INITIALIZING) => Err(INITIALIZING_MESSAGE.to_owned()),
            // Initialized already: py4cc says what it says of a second initialize.
            Err(_) => Ok(Initializing { phase: None }),
        }
    }
}

/// While it lives, task calls answer "initializing"; then the Driver is initialized if
/// [`succeeded`](Self::succeeded) was called, else back to new.
pub(super) struct Initializing<'a> {
    phase: Option<&'a AtomicU8>,
}

impl Initializing<'_> {
    /// `initialize` succeeded.
    pub(super) fn succeeded(mut self) {
        if let Some(phase) = self.phase.take() {
            phase.store(INITIALIZED, Ordering::SeqCst);
        }
    }
}

impl Drop for Initializing<'_> {
    fn drop(&mut self) {
        if let Some(phase) = self.phase {
            phase.store(NEW, Ordering::SeqCst);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initialize_marks_the_phase_until_it_returns() {
        let access = Access::new();
        assert_eq!(access.check_task_call(), Ok(()));
        let first = access.begin_initialize().unwrap();
        assert_eq!(access.check_task_call(), Err(INITIALIZING_MESSAGE.to_owned()));
        assert_eq!(access.begin_initialize().err(), Some(INITIALIZING_MESSAGE.to_owned()), "one at a time");
        drop(first); // failed: new again, initialize may be tried again
        assert!(!access.initializing());
        access.begin_initialize().unwrap().succeeded();
        assert_eq!(access.check_task_call(), Ok(()));
        let again = access.begin_initialize().unwrap(); // py4cc refuses a second initialize
        assert_eq!(access.check_task_call(), Ok(()), "a running driver is not initializing again");
        drop(again);
        assert_eq!(access.check_task_call(), Ok(()));
    }

    #[test]
    fn another_process_is_refused_by_number() {
        let access = Access { owner: std::process::id() + 1, phase: AtomicU8::new(INITIALIZED) };
        let refusal = access.check_task_call().unwrap_err();
        assert!(refusal.starts_with(&format!("this Driver belongs to process {}", access.owner)), "{refusal}");
        assert!(access.check_process().is_err());
    }
}
