//! Keys that say how a task's answer is read: an `i64` key is a demo-protocol task, whose
//! answer is an `i64` (> 0 for a result); a [`Key<T>`] is a general task's, whose answer is
//! any value that converts to `T`. [`Driver::retrieve`](super::Driver::retrieve) and
//! [`Driver::wait`](super::Driver::wait) take either, through [`TaskKey`].

use std::any::type_name;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::marker::PhantomData;

use crate::convert::FromPython;
use crate::driver::completion::AnswerValue;
use crate::object::Object;

/// The key of a general task ([`Driver::submit_call`](super::Driver::submit_call)), typed by
/// the Rust type `T` its answer is read as. `Copy`, `Send` and `Sync` whatever `T` is.
pub struct Key<T> {
    raw: i64,
    answer: PhantomData<fn() -> T>,
}

impl<T> Key<T> {
    /// The key numbered `raw` (as [`raw`](Self::raw) gave it), read as a `T`.
    pub fn new(raw: i64) -> Self {
        Key { raw, answer: PhantomData }
    }

    /// The key's number (0 for a task not accepted).
    pub fn raw(self) -> i64 {
        self.raw
    }
}

impl<T> Clone for Key<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for Key<T> {}

impl<T> PartialEq for Key<T> {
    fn eq(&self, other: &Self) -> bool {
        self.raw == other.raw
    }
}

impl<T> Eq for Key<T> {}

impl<T> Hash for Key<T> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.raw.hash(state);
    }
}

impl<T> Default for Key<T> {
    /// The key of a task not accepted: 0.
    fn default() -> Self {
        Key::new(0)
    }
}

impl<T> fmt::Debug for Key<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key<{}>({})", type_name::<T>(), self.raw)
    }
}

mod sealed {
    use crate::driver::completion::AnswerValue;
    use crate::object::Object;

    /// What only rs4py's own key types do: read a task's answer. In a private module, so
    /// that [`TaskKey`](super::TaskKey) has no implementations but rs4py's, and this method
    /// is not part of the API.
    pub trait Sealed {
        /// The answer in `value`, given the flag py4cc answered with; `Err` says why it cannot
        /// be read (the task then answers `Failed`, if it was done or failed).
        fn read_answer(flag: i64, value: &Object<'_>) -> Result<<Self as super::TaskKey>::Answer, String>
        where
            Self: super::TaskKey;

        /// The answer read from a delivered value without Python, when it needs none.
        fn read_plain(flag: i64, value: &AnswerValue) -> Option<<Self as super::TaskKey>::Answer>
        where
            Self: super::TaskKey;
    }
}

/// What [`Driver::retrieve`](super::Driver::retrieve) and [`Driver::wait`](super::Driver::wait)
/// take: an `i64` (a demo-protocol task, answered as [`TaskResult<i64>`](super::TaskResult))
/// or a [`Key<T>`] (a general task, answered as `TaskResult<T>`). Not for other types.
pub trait TaskKey: Copy + sealed::Sealed {
    /// The type of [`TaskResult::value`](super::TaskResult::value); its default value
    /// unless the task is `Done`.
    type Answer: Default;

    /// The key's number, as [`TaskReceipt::key`](super::TaskReceipt::key) gave it.
    fn raw(self) -> i64;
}

impl TaskKey for i64 {
    type Answer = i64;

    fn raw(self) -> i64 {
        self
    }
}

impl sealed::Sealed for i64 {
    /// The demo protocol's value, whatever the flag (a failed task's is the model's own).
    fn read_answer(_flag: i64, value: &Object<'_>) -> Result<i64, String> {
        value.extract().map_err(|error| format!("the model's answer cannot be an i64 value ({error})"))
    }

    fn read_plain(_flag: i64, value: &AnswerValue) -> Option<i64> {
        match value {
            AnswerValue::Int(number) => Some(*number),
            _ => None,
        }
    }
}

impl<T> TaskKey for Key<T>
where
    T: for<'py> FromPython<'py> + Default,
{
    type Answer = T;

    fn raw(self) -> i64 {
        self.raw
    }
}

impl<T> sealed::Sealed for Key<T>
where
    T: for<'py> FromPython<'py> + Default,
{
    /// The answer of a done task, as a `T`; the default `T` otherwise.
    fn read_plain(flag: i64, _value: &AnswerValue) -> Option<<Self as TaskKey>::Answer> {
        // Only a result is converted; any other answer reads as the default.
        (flag != super::ResultStatus::Done.code()).then(T::default)
    }

    fn read_answer(flag: i64, value: &Object<'_>) -> Result<<Self as TaskKey>::Answer, String> {
        if flag != super::ResultStatus::Done.code() {
            return Ok(T::default());
        }
        value.extract().map_err(|error| {
            let shown = value.repr().map(|text| shorten(&text)).unwrap_or_else(|_| "<repr() failed>".into());
            format!(
                "the engine's answer {shown} is a Python {}, which does not convert to the Rust type {}: {error}",
                value.type_name(),
                type_name::<T>()
            )
        })
    }
}

/// At most 200 characters of `text`, for a message.
fn shorten(text: &str) -> String {
    match text.char_indices().nth(200) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text.to_owned(),
    }
}
