//! A loop's load factor: how busy its thread was over the last ~1 s window.
//!
//! As in aws-c-io: the loop thread adds each tick's busy time (from the return of
//! `epoll_wait` to the end of the tick) to the current one-second window; when a tick ends
//! in a later second than the window's, the window's sum becomes the published load factor
//! and a new window starts. A loop that has not ticked for over a second (asleep: idle) reads
//! as 0. Only the loop thread writes; any thread reads.

use std::sync::atomic::{AtomicU64, Ordering};

const SEC: u64 = 1_000_000_000;

/// Busy-time accounting for one loop.
#[derive(Debug, Default)]
pub(crate) struct Load {
    window_sec: AtomicU64,
    window_busy: AtomicU64,
    published: AtomicU64,
    last_tick_end: AtomicU64,
}

/// `CLOCK_MONOTONIC` in nanoseconds (busy time is real time, whatever the loop's clock).
pub(crate) fn mono_now() -> u64 {
    crate::clock::Clock::Monotonic.now()
}

impl Load {
    /// Records a tick that was busy from `start` to `end` (monotonic nanoseconds).
    pub(crate) fn tick(&self, start: u64, end: u64) {
        let busy = end.saturating_sub(start);
        let sec = end / SEC;
        if sec != self.window_sec.load(Ordering::Relaxed) {
            let sum = self.window_busy.swap(0, Ordering::Relaxed);
            self.published.store(sum, Ordering::Relaxed);
            self.window_sec.store(sec, Ordering::Relaxed);
        }
        self.window_busy.fetch_add(busy, Ordering::Relaxed);
        self.last_tick_end.store(end, Ordering::Relaxed);
    }

    /// Nanoseconds of busy time in the last complete window; 0 for a loop idle over a second.
    pub(crate) fn factor(&self) -> u64 {
        let last = self.last_tick_end.load(Ordering::Relaxed);
        if mono_now().saturating_sub(last) > SEC {
            return 0;
        }
        self.published
            .load(Ordering::Relaxed)
            .max(self.window_busy.load(Ordering::Relaxed))
    }
}
