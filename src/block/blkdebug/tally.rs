//! Counts the blkdebug events a run raises, for fault sweeps: the sweep runs its workload once
//! with counting on, then fails each occurrence in turn. Per thread (each scenario runs on one),
//! summed over every blkdebug node; off unless started.

use super::events::Event;
use std::cell::RefCell;

thread_local! {
    static COUNTS: RefCell<Option<Vec<u64>>> = const { RefCell::new(None) };
}

/// Starts counting on this thread, from zero.
pub fn start() {
    COUNTS.with(|c| *c.borrow_mut() = Some(vec![0; Event::ALL.len()]));
}

/// Stops counting; returns how often each event occurred (indexed as [`Event::ALL`]).
pub fn finish() -> Vec<u64> {
    COUNTS
        .with(|c| c.borrow_mut().take())
        .unwrap_or_else(|| vec![0; Event::ALL.len()])
}

/// Notes one occurrence of `event`, if counting is on.
pub fn note(event: Event) {
    COUNTS.with(|c| {
        if let Some(counts) = c.borrow_mut().as_mut() {
            counts[event.index()] += 1;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_only_while_started() {
        note(Event::ALL[0]);
        start();
        note(Event::ALL[1]);
        note(Event::ALL[1]);
        let counts = finish();
        assert_eq!((counts[0], counts[1]), (0, 2));
        assert_eq!(finish()[1], 0);
    }
}
