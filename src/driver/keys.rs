//! Each Driver's own range of keys, so that a key of one Driver is not a key of another.
//!
//! py4cc numbers every Driver's tasks 1, 2, 3, ...; two Drivers therefore issue the same
//! numbers, and a key of Driver B handed to Driver A would collect (and remove) A's task.
//! So the keys a user sees are py4cc's number plus a base of the Driver's own: the Driver's
//! number in this process times [`KEY_SPAN`]. A key outside a Driver's range never reaches its
//! Python side.

use std::sync::atomic::{AtomicI64, Ordering};

/// How many keys each Driver can issue; py4cc's numbers run from 1 to `KEY_SPAN - 1`. A power
/// of ten, so that py4cc's own number (which worker events name) is the key's last 12 digits.
pub(super) const KEY_SPAN: i64 = 1_000_000_000_000;

/// How many Drivers get distinct ranges before the numbers come round again (the largest
/// count whose ranges all fit in a positive `i64`).
const RANGES: i64 = i64::MAX / KEY_SPAN - 1;

/// The number the next Driver of this process takes.
static NEXT_DRIVER: AtomicI64 = AtomicI64::new(0);

/// One Driver's range of keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct KeyRange {
    base: i64,
}

impl KeyRange {
    /// A range that no other Driver of this process has (until `RANGES` Drivers have been
    /// made: a Driver that outlived millions of others could then meet its numbers again).
    pub(super) fn new() -> KeyRange {
        let number = NEXT_DRIVER.fetch_add(1, Ordering::Relaxed).rem_euclid(RANGES) + 1;
        KeyRange { base: number * KEY_SPAN }
    }

    /// The key a user sees for py4cc's task number `python`, if it fits in the range (a
    /// number `<= 0` is py4cc's "no task", and stays 0).
    pub(super) fn public(self, python: i64) -> Option<i64> {
        match python {
            ..=0 => Some(0),
            1..KEY_SPAN => Some(self.base + python),
            _ => None,
        }
    }

    /// py4cc's number for `key`, if this range issued it.
    pub(super) fn python(self, key: i64) -> Option<i64> {
        let python = key.checked_sub(self.base)?;
        (1..KEY_SPAN).contains(&python).then_some(python)
    }

    /// A message py4cc wrote about task `python` (it begins "unknown key N" or "task N ..."),
    /// with the user's key for `N`.
    pub(super) fn message_about(self, python: i64, message: String) -> String {
        let Some(key) = self.public(python) else { return message };
        for (theirs, ours) in [
            (format!("unknown key {python}"), format!("unknown key {key}")),
            (format!("task {python} "), format!("task {key} ")),
        ] {
            if let Some(rest) = message.strip_prefix(&theirs) {
                return format!("{ours}{rest}");
            }
        }
        message
    }

    /// An event's text about workers (py4cc's), with the user's key for every "task N" in it.
    pub(super) fn event_text(self, text: &str) -> String {
        const MENTION: &str = "task ";
        let mut out = String::with_capacity(text.len() + 16);
        let mut rest = text;
        while let Some(at) = rest.find(MENTION) {
            let (before, after) = rest.split_at(at + MENTION.len());
            out.push_str(before);
            let digits = after.find(|c: char| !c.is_ascii_digit()).unwrap_or(after.len());
            match after[..digits].parse().ok().and_then(|python| self.public(python)) {
                Some(key) if key > 0 => out.push_str(&key.to_string()),
                _ => out.push_str(&after[..digits]),
            }
            rest = &after[digits..];
        }
        out.push_str(rest);
        out
    }
}

/// The message for a key that `range` did not issue.
pub(super) fn not_ours(key: i64) -> String {
    format!("unknown key {key}: this Driver did not issue it (a key of another Driver, or a number made up)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_ranges_share_no_key_and_each_reads_back_its_own() {
        let (a, b) = (KeyRange::new(), KeyRange::new());
        assert_ne!(a, b);
        for python in [1, 2, 77, KEY_SPAN - 1] {
            let key = a.public(python).unwrap();
            assert!(key > 0);
            assert_eq!(a.python(key), Some(python));
            assert_eq!(b.python(key), None, "{key} is a's, not b's");
        }
        assert_eq!(a.public(0), Some(0));
        assert_eq!(a.public(-3), Some(0));
        assert_eq!(a.public(KEY_SPAN), None, "beyond the range");
        for made_up in [0, -1, 1, 5, KEY_SPAN, i64::MAX, i64::MIN] {
            assert_eq!(a.python(made_up), None, "{made_up}");
        }
    }

    #[test]
    fn the_last_range_fits_in_an_i64() {
        let last = KeyRange { base: RANGES * KEY_SPAN };
        assert_eq!(last.python(last.public(KEY_SPAN - 1).unwrap()), Some(KEY_SPAN - 1));
    }

    #[test]
    fn py4cc_s_messages_name_the_users_key() {
        let range = KeyRange { base: 3 * KEY_SPAN };
        let key = 3 * KEY_SPAN + 7;
        assert_eq!(
            range.message_about(7, "unknown key 7: it was never issued".into()),
            format!("unknown key {key}: it was never issued")
        );
        assert_eq!(
            range.message_about(7, "task 7 was cancelled: ...".into()),
            format!("task {key} was cancelled: ...")
        );
        assert_eq!(range.message_about(7, "task 71 was cancelled".into()), "task 71 was cancelled", "another task");
        assert_eq!(range.message_about(7, "Traceback: task 7 ".into()), "Traceback: task 7 ", "only a leading mention");
    }

    #[test]
    fn worker_events_name_the_users_keys() {
        let range = KeyRange { base: 3 * KEY_SPAN };
        assert_eq!(
            range.event_text("exited with exit code -9 while running task 1"),
            format!("exited with exit code -9 while running task {}", 3 * KEY_SPAN + 1)
        );
        assert_eq!(
            range.event_text("task 12 ran past task_timeout (0.5 s): killing the worker"),
            format!("task {} ran past task_timeout (0.5 s): killing the worker", 3 * KEY_SPAN + 12)
        );
        for unchanged in
            ["started, replacing worker process 77", "task x", "task ", "task 0 ", "a task 99999999999999999999"]
        {
            assert_eq!(range.event_text(unchanged), unchanged);
        }
    }
}
