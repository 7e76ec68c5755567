//! Counters of what a loop did, readable from any thread.

use std::sync::atomic::{AtomicU64, Ordering};

/// A snapshot of a loop's counters (since creation).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Tasks run with `RunReady`.
    pub tasks_run: u64,
    /// Tasks run with `Canceled` (explicit cancels and destroy).
    pub tasks_canceled: u64,
    /// Wakeup signals written (eventfd or pipe writes).
    pub wakeups_written: u64,
    /// Cross-thread schedules that needed no wakeup (one was already pending or the loop
    /// was awake).
    pub wakeups_coalesced: u64,
    /// Cross-thread wakes delivered to a loop spinning before it parks
    /// (`EventLoopOptions::spin_before_park`): a flag, no wakeup write.
    pub wakeups_spun: u64,
    /// Calls to `epoll_wait`.
    pub epoll_waits: u64,
    /// Events returned by `epoll_wait` and dispatched (the wakeup's included).
    pub events_dispatched: u64,
    /// Tasks or callbacks that panicked; the loop caught each and went on.
    pub panics_caught: u64,
    /// Wakes of spawned futures that found the loop full: each future went on the
    /// overflow list and was polled in the next tick without a task slot.
    pub futures_overflowed: u64,
}

/// A value alone on its cache line (64 bytes on x86_64 and aarch64), so that writes to it
/// from one core do not invalidate the neighbours another core is reading.
#[derive(Debug, Default)]
#[repr(align(64))]
pub(crate) struct CachePadded<T>(pub T);

impl<T> std::ops::Deref for CachePadded<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

/// The loop's counters. The loop's identity writes the first five; producers write the
/// wakeup counters, which sit on a cache line of their own so that a producer's push and the
/// loop's counting never fight over one line.
#[derive(Debug, Default)]
#[repr(C, align(64))]
pub(crate) struct Counters {
    pub tasks_run: AtomicU64,
    pub tasks_canceled: AtomicU64,
    pub epoll_waits: AtomicU64,
    pub events_dispatched: AtomicU64,
    pub panics_caught: AtomicU64,
    pub producers: CachePadded<ProducerCounters>,
}

/// The counters producers write.
#[derive(Debug, Default)]
pub(crate) struct ProducerCounters {
    pub wakeups_written: AtomicU64,
    pub wakeups_coalesced: AtomicU64,
    pub wakeups_spun: AtomicU64,
}

impl Counters {
    pub(crate) fn bump(counter: &AtomicU64, by: u64) {
        counter.fetch_add(by, Ordering::Relaxed);
    }

    /// [`bump`](Self::bump) for a counter only the loop's driver writes (one thread at a
    /// time, handed over with a happens-before edge by the engine): a plain load and store,
    /// no locked read-modify-write on the task path. Readers on other threads see a value
    /// at most a few increments stale, as with `bump`.
    pub(crate) fn bump_driver(counter: &AtomicU64, by: u64) {
        counter.store(
            counter.load(Ordering::Relaxed).wrapping_add(by),
            Ordering::Relaxed,
        );
    }

    pub(crate) fn snapshot(&self) -> Stats {
        let r = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Stats {
            tasks_run: r(&self.tasks_run),
            tasks_canceled: r(&self.tasks_canceled),
            wakeups_written: r(&self.producers.wakeups_written),
            wakeups_coalesced: r(&self.producers.wakeups_coalesced),
            wakeups_spun: r(&self.producers.wakeups_spun),
            epoll_waits: r(&self.epoll_waits),
            events_dispatched: r(&self.events_dispatched),
            panics_caught: r(&self.panics_caught),
            futures_overflowed: 0,
        }
    }
}
