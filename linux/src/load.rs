//! A loop's load factor: how busy its thread was over the last ~1 s window.
//!
//! As in aws-c-io: the loop thread adds each tick's busy time (from the return of
//! `epoll_wait` to the end of the tick) to the current one-second window; when a tick ends
//! in a later second than the window's, the window's sum becomes the published load factor
//! and a new window starts. A loop that has not ticked for over a second (asleep: idle) reads
//! as 0, unless it is in the middle of a tick: a tick in progress counts as busy, so a loop
//! stuck in a long task is not mistaken for an idle one (which aws-c-io's would be). Only
//! the loop thread writes; any thread reads.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::clock::mono_now;

const SEC: u64 = 1_000_000_000;

/// Busy-time accounting for one loop.
#[derive(Debug, Default)]
pub(crate) struct Load {
    window_sec: AtomicU64,
    window_busy: AtomicU64,
    published: AtomicU64,
    last_tick_end: AtomicU64,
    /// When the tick in progress started (0: none): a loop stuck in a long task is busy,
    /// not idle.
    busy_since: AtomicU64,
}

impl Load {
    /// Marks the start of a tick (monotonic nanoseconds).
    pub(crate) fn tick_start(&self, start: u64) {
        self.busy_since.store(start.max(1), Ordering::Relaxed);
    }

    /// Ends the tick in progress, if any, at `end` (monotonic nanoseconds): the loop is
    /// about to wait again.
    pub(crate) fn tick_end(&self, end: u64) {
        let start = self.busy_since.load(Ordering::Relaxed);
        if start != 0 {
            self.tick(start, end);
        }
    }

    /// Records a tick that was busy from `start` to `end` (monotonic nanoseconds).
    pub(crate) fn tick(&self, start: u64, end: u64) {
        self.busy_since.store(0, Ordering::Relaxed);
        let busy = end.saturating_sub(start);
        let sec = end / SEC;
        // The driver is the only writer: loads and stores, no read-modify-write.
        let mut window = self.window_busy.load(Ordering::Relaxed);
        if sec != self.window_sec.load(Ordering::Relaxed) {
            self.published.store(window, Ordering::Relaxed);
            self.window_sec.store(sec, Ordering::Relaxed);
            window = 0;
        }
        self.window_busy.store(window + busy, Ordering::Relaxed);
        self.last_tick_end.store(end, Ordering::Relaxed);
    }

    /// Nanoseconds of busy time in the last complete window (or the current one, counting a
    /// tick still in progress, if that is more); 0 for a loop idle over a second.
    pub(crate) fn factor(&self) -> u64 {
        let now = mono_now();
        let since = self.busy_since.load(Ordering::Relaxed);
        let running = if since == 0 {
            0
        } else {
            now.saturating_sub(since)
        };
        let last = self.last_tick_end.load(Ordering::Relaxed);
        if running == 0 && now.saturating_sub(last) > SEC {
            return 0;
        }
        let current = self.window_busy.load(Ordering::Relaxed) + running;
        self.published.load(Ordering::Relaxed).max(current)
    }
}
