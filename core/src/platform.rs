//! The platform under the engine: what is a syscall, a thread or a clock.
//!
//! The [`Engine`](crate::Engine) is the whole loop — task slots, inbox, scheduler,
//! lifecycle and the tick — but it cannot sleep, read a clock, wake a sleeping thread,
//! catch a panic or block a caller. A [`Platform`] does those, and nothing else: epoll and
//! an eventfd on Linux (`reseau-linux`), `WFE`/`SEV` and a timer on bare metal, loom's
//! `Mutex`/`Condvar` and a virtual clock under loom, a script under the fuzzer. The same
//! engine code runs on each (the shape of embassy-executor's `raw::Executor` with its
//! `Pender`).

use crate::TaskStatus;

/// The platform services the engine needs; see the [module docs](self).
///
/// Methods marked *driver only* are called only by the thread driving the loop (its own
/// thread, a `turn` caller, or the thread destroying it), never concurrently with each
/// other; the rest may be called from any thread.
pub trait Platform {
    /// What tasks and IO callbacks receive (the Linux shim passes its `LoopHandle`).
    type Cx: ?Sized;
    /// An error of [`poll`](Self::poll) that stops the loop (e.g. `epoll_wait` failing with
    /// something other than `EINTR`).
    type Error;

    /// The width of a bucket of the engine's timer wheel, as a power of two of
    /// [`now`](Self::now)'s unit. A timer due more than one bucket ahead (and less than
    /// 256 ahead) waits in its bucket, unsorted, and moves into the engine's timer heap
    /// when its bucket's time comes, so the heap holds only the near timers. Order and
    /// punctuality do not depend on it (the heap orders every timer before it runs); it
    /// sets what is cheap. Below 64. The default, 20, is about 1 ms of nanoseconds.
    const TIMER_WHEEL_SHIFT: u32 = 20;

    /// The current time, in the unit of deadlines (nanoseconds on Linux). Must not go back.
    fn now(&self) -> u64;

    /// Wakes the driver if it is blocked in [`poll`](Self::poll) (or makes its next `poll`
    /// return at once). Any thread. The engine calls it only when its wake protocol says
    /// the driver may be asleep and nobody has woken it yet.
    fn wake(&self);

    /// Counts a push that needed no wake (one was pending, or the driver was awake). For
    /// statistics; the default does nothing.
    fn wake_coalesced(&self) {}

    /// *Driver only.* Blocks until an event, a [`wake`](Self::wake), or `timeout` ticks of
    /// [`now`](Self::now) have passed (`None`: no limit; `Some(0)`: do not block), then
    /// dispatches the events that arrived (IO readiness callbacks receive `cx`). An
    /// interrupted wait (`EINTR`) returns `Ok`: the engine recomputes its timeout.
    ///
    /// # Errors
    /// A failure that must stop the loop; the engine stops and hands it to its driver.
    fn poll(&self, cx: &Self::Cx, timeout: Option<u64>) -> Result<(), Self::Error>;

    /// *Driver only.* Runs user code (a task run with `status`) and catches a panic where
    /// the platform can (std: `catch_unwind`, counting and logging it); returns whether `f`
    /// returned normally.
    fn run_task(&self, status: TaskStatus, f: impl FnOnce()) -> bool;

    /// Runs `f` and catches a panic where the platform can, returning `None` if it
    /// panicked. The engine wraps every driving loop in it, so that whatever panics, the
    /// loop's exit is published and no waiter hangs.
    fn catch<R>(&self, f: impl FnOnce() -> R) -> Option<R>;

    /// A nonzero identity of the calling thread, unique while the thread lives. The engine
    /// compares it with the driver's to answer "am I on the loop thread?".
    fn current_thread(&self) -> usize;

    /// Blocks the calling thread until `done()` is true, re-checking it after every
    /// [`notify`](Self::notify); gives up after `timeout` ticks of a real-time clock
    /// (`None`: no limit) and returns whether `done()` became true. Used by `wait` and
    /// `destroy` to wait for the loop's thread to exit.
    fn block_until(&self, done: &dyn Fn() -> bool, timeout: Option<u64>) -> bool;

    /// Wakes every thread blocked in [`block_until`](Self::block_until) so it re-checks
    /// its condition. The engine calls it after each change a waiter may wait for.
    fn notify(&self);

    /// A short pause while waiting for another thread's progress (the producers still
    /// inside a schedule call when destroy wants to drain): a spin hint, a yield.
    fn pause(&self) {
        crate::sync::spin_hint();
    }

    /// *Driver only*, at destroy: releases every IO source the platform holds (dropping a
    /// source may schedule tasks, which the engine cancels in turn); returns how many were
    /// released. The default holds none.
    fn release_sources(&self, cx: &Self::Cx) -> usize {
        let _ = cx;
        0
    }
}
