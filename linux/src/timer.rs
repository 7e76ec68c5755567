//! Timers users can read: [`Instant`] on the loop's clock, [`LoopHandle::schedule_after`],
//! [`LoopHandle::schedule_at_instant`] and intervals ([`LoopHandle::schedule_every`]).
//!
//! An interval is one timed task at a time: each tick's task runs the callback, then
//! schedules the next tick's task (a fresh slot from the engine's timed tasks; the slot of
//! the tick that just ran is free again by then, so an interval re-arms even on a full
//! loop unless another thread takes that slot first). Its [`Interval`] handle cancels the
//! whole interval from any thread, or from inside its own callback.

use std::fmt;
use std::ops::{Add, AddAssign, Sub};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reseau_core::TaskStatus;

use crate::error::{ScheduleError, ScheduleErrorKind, When};
use crate::handle::LoopHandle;
use crate::platform::lock;
use crate::task::{self, TaskHandle};

/// A `Duration` in whole nanoseconds, saturating.
fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// A point in time on a loop's clock: nanoseconds of its [`Clock`](crate::Clock), the
/// scale of [`LoopHandle::schedule_at`]'s `u64` deadlines.
///
/// Only meaningful for the loop (or loops sharing a clock) it was read from.
///
/// ```
/// use reseau_linux::Instant;
/// use std::time::Duration;
///
/// let t = Instant::from_nanos(1_000);
/// let later = t + Duration::from_micros(2);
/// assert_eq!(later.as_nanos(), 3_000);
/// assert_eq!(later.duration_since(t), Duration::from_micros(2));
/// assert_eq!(t.duration_since(later), Duration::ZERO); // saturates, never panics
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Instant(u64);

impl Instant {
    /// The instant `ns` nanoseconds on the loop's clock.
    pub const fn from_nanos(ns: u64) -> Self {
        Instant(ns)
    }

    /// Nanoseconds on the loop's clock (a `u64` deadline for [`LoopHandle::schedule_at`]).
    pub const fn as_nanos(self) -> u64 {
        self.0
    }

    /// How long after `earlier` this is; zero if `earlier` is later.
    pub fn duration_since(self, earlier: Instant) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }

    /// `self + d`, or `None` past the end of the clock's range.
    pub fn checked_add(self, d: Duration) -> Option<Instant> {
        u64::try_from(d.as_nanos())
            .ok()
            .and_then(|n| self.0.checked_add(n))
            .map(Instant)
    }
}

impl Add<Duration> for Instant {
    type Output = Instant;
    /// Saturates at the end of the clock's range (a deadline that never comes).
    fn add(self, d: Duration) -> Instant {
        Instant(self.0.saturating_add(nanos(d)))
    }
}

impl AddAssign<Duration> for Instant {
    fn add_assign(&mut self, d: Duration) {
        *self = *self + d;
    }
}

impl Sub<Duration> for Instant {
    type Output = Instant;
    /// Saturates at zero.
    fn sub(self, d: Duration) -> Instant {
        Instant(self.0.saturating_sub(nanos(d)))
    }
}

impl Sub<Instant> for Instant {
    type Output = Duration;
    /// As [`duration_since`](Instant::duration_since): zero if `rhs` is later.
    fn sub(self, rhs: Instant) -> Duration {
        self.duration_since(rhs)
    }
}

impl From<Instant> for u64 {
    fn from(i: Instant) -> u64 {
        i.0
    }
}

/// What an interval does when ticks were missed (the loop was busy or stalled past one
/// or more deadlines). The semantics of tokio's `MissedTickBehavior`; the default is
/// [`Burst`](Self::Burst), as there.
///
/// With period `p`, a tick due at `d` that runs late, at `now ≥ d + p`:
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum MissedTickBehavior {
    /// Fire the missed ticks back to back (one per loop tick) at their original
    /// deadlines `d + p`, `d + 2p`, … until caught up; the schedule keeps its phase.
    #[default]
    Burst,
    /// Forget the missed ticks: the next is due at `now + p`; the phase shifts.
    Delay,
    /// Skip the missed ticks: the next is due at the first `d + k·p` after `now`; the
    /// phase is kept.
    Skip,
}

impl MissedTickBehavior {
    /// The deadline after a tick due at `due` that ran at `now`.
    fn next(self, due: u64, now: u64, period: u64) -> u64 {
        let next = due.saturating_add(period);
        if next > now {
            return next;
        }
        match self {
            MissedTickBehavior::Burst => next,
            MissedTickBehavior::Delay => now.saturating_add(period),
            MissedTickBehavior::Skip => now.saturating_add(period - (now - due) % period),
        }
    }
}

/// Why an interval's callback runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TickStatus {
    /// A tick is due.
    Due,
    /// The interval was canceled ([`Interval::cancel`]) or its loop destroyed; the last
    /// call.
    Canceled,
    /// The next tick could not be scheduled: the loop was full (another thread took the
    /// slot this tick freed) or destroy had begun. The interval has ended; this is the
    /// last call. Start a new one to go on.
    Refused(ScheduleErrorKind),
}

/// One call of an interval's callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tick {
    /// The deadline this call was scheduled for (for `Canceled`/`Refused`, the deadline of
    /// the tick that will not run).
    pub deadline: Instant,
    /// Why the callback runs.
    pub status: TickStatus,
}

/// What an interval's callback asks for after a due tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntervalControl {
    /// Schedule the next tick.
    Continue,
    /// End the interval now (the callback is not called again).
    Stop,
}

type Callback = Box<dyn FnMut(&LoopHandle, Tick) -> IntervalControl + Send>;

const ACTIVE: u8 = 0;
const CANCELED: u8 = 1;
const ENDED: u8 = 2;

struct IntervalShared {
    /// ACTIVE until a cancel wins (CANCELED) or the interval ends by itself (ENDED).
    state: AtomicU8,
    /// The pending tick's task (the one to cancel).
    current: Mutex<Option<TaskHandle>>,
    /// Only ever locked on the thread driving the loop, never across a cancel.
    callback: Mutex<Callback>,
    period: u64,
    missed: MissedTickBehavior,
}

/// A running interval, from [`LoopHandle::schedule_every`]: cancel it from any thread.
///
/// Dropping it does not cancel the interval. The callback (and what it captures) is
/// dropped once the interval has ended and every clone of this handle is gone.
#[derive(Clone)]
pub struct Interval {
    shared: Arc<IntervalShared>,
    handle: LoopHandle,
}

impl fmt::Debug for Interval {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Interval")
            .field("loop", &self.handle.loop_id())
            .field("period_ns", &self.shared.period)
            .field("missed", &self.shared.missed)
            .field("active", &self.is_active())
            .finish()
    }
}

impl Interval {
    /// Cancels the whole interval: no tick runs after this returns `true`, except the
    /// callback's last call with [`TickStatus::Canceled`] (at once on the loop thread, in
    /// the loop's next tick otherwise; after the current call returns when called from the
    /// interval's own callback). Returns `true` if this call ended the interval; `false`
    /// (a no-op) if it had ended already (canceled, stopped, refused), or the loop was
    /// inherited through `fork` or is gone.
    pub fn cancel(&self) -> bool {
        match self.handle.upgrade() {
            Some(s) if !s.inherited() => {}
            _ => return false,
        }
        let won = self
            .shared
            .state
            .compare_exchange(ACTIVE, CANCELED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if !won {
            return false;
        }
        // The pending tick's task: if we cancel it, it runs `Canceled` and makes the last
        // call. If it is running right now, it sees CANCELED after its callback and makes
        // the last call itself instead of re-arming.
        let current = lock(&self.shared.current).take();
        if let Some(task) = current {
            self.handle.cancel(&task);
        }
        true
    }

    /// Whether the interval still runs (not canceled, stopped or refused).
    pub fn is_active(&self) -> bool {
        self.shared.state.load(Ordering::Acquire) == ACTIVE
    }
}

fn arm(
    h: &LoopHandle,
    shared: Arc<IntervalShared>,
    deadline: u64,
) -> Result<TaskHandle, ScheduleError> {
    h.schedule(
        task::payload(move |h: &LoopHandle, status| fire(h, shared, deadline, status)),
        When::At(deadline),
    )
}

fn call(
    h: &LoopHandle,
    shared: &IntervalShared,
    deadline: u64,
    status: TickStatus,
) -> IntervalControl {
    let tick = Tick {
        deadline: Instant(deadline),
        status,
    };
    (lock(&shared.callback))(h, tick)
}

/// The last call after a cancel (or destroy), made once whichever path gets here first.
fn last_canceled(h: &LoopHandle, shared: &IntervalShared, deadline: u64) {
    if shared.state.swap(ENDED, Ordering::AcqRel) != ENDED {
        call(h, shared, deadline, TickStatus::Canceled);
    }
}

/// One tick's task.
fn fire(h: &LoopHandle, shared: Arc<IntervalShared>, due: u64, status: TaskStatus) {
    match (status, shared.state.load(Ordering::Acquire)) {
        // Canceled by `Interval::cancel`, or by destroy: the last call either way.
        (TaskStatus::Canceled, _) => return last_canceled(h, &shared, due),
        (TaskStatus::RunReady, ACTIVE) => {}
        // A cancel won while this task was already claimed to run (its task cancel
        // failed): this run makes the last call.
        (TaskStatus::RunReady, CANCELED) => return last_canceled(h, &shared, due),
        (TaskStatus::RunReady, _) => return,
    }
    // A panicking callback ends the interval (the panic unwinds to the task's guard).
    struct EndOnPanic<'a>(&'a IntervalShared);
    impl Drop for EndOnPanic<'_> {
        fn drop(&mut self) {
            if std::thread::panicking() {
                self.0.state.store(ENDED, Ordering::Release);
            }
        }
    }
    let guard = EndOnPanic(&shared);
    let control = call(h, &shared, due, TickStatus::Due);
    drop(guard);
    let next = shared.missed.next(due, h.now(), shared.period);
    let mut current = lock(&shared.current);
    if shared.state.load(Ordering::Acquire) == CANCELED {
        // Canceled during the callback (by itself or another thread): the last call.
        drop(current);
        return last_canceled(h, &shared, next);
    }
    if control == IntervalControl::Stop {
        shared.state.store(ENDED, Ordering::Release);
        *current = None;
        return;
    }
    match arm(h, shared.clone(), next) {
        Ok(task) => *current = Some(task),
        Err(e) => {
            shared.state.store(ENDED, Ordering::Release);
            *current = None;
            drop(current);
            // The refused task holds only a clone of `shared`: drop it unrun.
            drop(e.task);
            crate::log_at!(
                warn,
                "reseau: an interval could not schedule its next tick ({:?}); it ends",
                e.kind
            );
            call(h, &shared, next, TickStatus::Refused(e.kind));
        }
    }
}

impl LoopHandle {
    /// The loop clock's current time as an [`Instant`] (as [`now`](Self::now)).
    pub fn now_instant(&self) -> Instant {
        Instant(self.now())
    }

    /// Schedules `f` to run on the loop thread `delay` from now (the loop's clock); never
    /// earlier. Tasks due at the same instant run in submission order.
    ///
    /// ```
    /// use reseau_linux::{EventLoop, EventLoopOptions};
    /// use std::time::Duration;
    ///
    /// let el = EventLoop::new(EventLoopOptions::default())?;
    /// el.run()?;
    /// let (tx, rx) = std::sync::mpsc::channel();
    /// let start = el.now_instant();
    /// el.schedule_after(Duration::from_millis(2), move |h, _| {
    ///     tx.send(h.now_instant().duration_since(start)).unwrap();
    /// })?;
    /// assert!(rx.recv().unwrap() >= Duration::from_millis(2));
    /// # Ok::<(), reseau_linux::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`schedule_now`](Self::schedule_now).
    pub fn schedule_after<F>(&self, delay: Duration, f: F) -> Result<TaskHandle, ScheduleError>
    where
        F: FnOnce(&LoopHandle, reseau_core::TaskStatus) + Send + 'static,
    {
        self.schedule_at((self.now_instant() + delay).as_nanos(), f)
    }

    /// Schedules `f` to run on the loop thread at `deadline`; never earlier. As
    /// [`schedule_at`](Self::schedule_at), with an [`Instant`].
    ///
    /// ```
    /// use reseau_linux::{EventLoop, EventLoopOptions};
    /// use std::time::Duration;
    ///
    /// let el = EventLoop::new(EventLoopOptions::default())?;
    /// el.run()?;
    /// let (tx, rx) = std::sync::mpsc::channel();
    /// let at = el.now_instant() + Duration::from_millis(2);
    /// el.schedule_at_instant(at, move |h, _| tx.send(h.now_instant()).unwrap())?;
    /// assert!(rx.recv().unwrap() >= at, "never early");
    /// # Ok::<(), reseau_linux::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`schedule_now`](Self::schedule_now).
    pub fn schedule_at_instant<F>(
        &self,
        deadline: Instant,
        f: F,
    ) -> Result<TaskHandle, ScheduleError>
    where
        F: FnOnce(&LoopHandle, reseau_core::TaskStatus) + Send + 'static,
    {
        self.schedule_at(deadline.as_nanos(), f)
    }

    /// Runs `f` on the loop thread every `period`, the first time one period from now,
    /// with [`MissedTickBehavior::Burst`] (see
    /// [`schedule_every_with`](Self::schedule_every_with)).
    ///
    /// ```
    /// use reseau_linux::{EventLoop, EventLoopOptions, IntervalControl, TickStatus};
    /// use std::time::Duration;
    ///
    /// let el = EventLoop::new(EventLoopOptions::default())?;
    /// el.run()?;
    /// let (tx, rx) = std::sync::mpsc::channel();
    /// let mut n = 0;
    /// let interval = el.schedule_every(Duration::from_millis(1), move |_, tick| {
    ///     if tick.status == TickStatus::Due {
    ///         n += 1;
    ///         tx.send(n).unwrap();
    ///     }
    ///     IntervalControl::Continue
    /// })?;
    /// while rx.recv().unwrap() < 3 {}
    /// assert!(interval.cancel(), "the first cancel wins");
    /// assert!(!interval.cancel(), "a second one is a no-op");
    /// # Ok::<(), reseau_linux::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`schedule_every_with`](Self::schedule_every_with).
    pub fn schedule_every<F>(&self, period: Duration, f: F) -> Result<Interval, ScheduleError>
    where
        F: FnMut(&LoopHandle, Tick) -> IntervalControl + Send + 'static,
    {
        self.schedule_every_with(period, MissedTickBehavior::default(), f)
    }

    /// Runs `f` on the loop thread every `period` (at least 1 ns; a zero period counts as
    /// 1 ns), the first time at `now + period`, the missed ticks handled by `missed`.
    ///
    /// `f` is called with [`TickStatus::Due`] for each tick, and once more, last, with
    /// [`TickStatus::Canceled`] when the interval is canceled or the loop destroyed, or
    /// [`TickStatus::Refused`] when the next tick could not be scheduled. Returning
    /// [`IntervalControl::Stop`] from a due tick ends the interval without a last call;
    /// so does a panic in `f` (the loop reports the panic and goes on).
    ///
    /// ```
    /// use reseau_linux::{EventLoop, EventLoopOptions, IntervalControl, MissedTickBehavior};
    /// use std::time::Duration;
    ///
    /// let el = EventLoop::new(EventLoopOptions::default())?;
    /// el.run()?;
    /// let (tx, rx) = std::sync::mpsc::channel();
    /// // A heartbeat that never bursts after a stall: the next tick is a period after it ran.
    /// let heartbeat = el.schedule_every_with(
    ///     Duration::from_millis(1),
    ///     MissedTickBehavior::Delay,
    ///     move |h, tick| {
    ///         assert!(h.now_instant() >= tick.deadline, "never early");
    ///         let _ = tx.send(tick.status);
    ///         IntervalControl::Continue
    ///     },
    /// )?;
    /// rx.recv().unwrap();
    /// heartbeat.cancel();
    /// # Ok::<(), reseau_linux::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`schedule_now`](Self::schedule_now), for the first tick; `f` is dropped uncalled
    /// (the error's task holds only the interval's bookkeeping).
    pub fn schedule_every_with<F>(
        &self,
        period: Duration,
        missed: MissedTickBehavior,
        f: F,
    ) -> Result<Interval, ScheduleError>
    where
        F: FnMut(&LoopHandle, Tick) -> IntervalControl + Send + 'static,
    {
        let period = nanos(period).max(1);
        let shared = Arc::new(IntervalShared {
            state: AtomicU8::new(ACTIVE),
            current: Mutex::new(None),
            callback: Mutex::new(Box::new(f)),
            period,
            missed,
        });
        let first = self.now().saturating_add(period);
        // Hold `current` while arming, so a cancel racing the first tick finds its handle.
        let mut current = lock(&shared.current);
        let task = arm(self, shared.clone(), first)?;
        *current = Some(task);
        drop(current);
        Ok(Interval {
            shared,
            handle: self.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missed_tick_behaviors_compute_the_documented_next_deadline() {
        // Period 10, tick due at 20 running at 45 (2.5 periods late).
        assert_eq!(MissedTickBehavior::Burst.next(20, 45, 10), 30);
        assert_eq!(MissedTickBehavior::Delay.next(20, 45, 10), 55);
        assert_eq!(MissedTickBehavior::Skip.next(20, 45, 10), 50);
        // On time: all agree on due + period.
        for m in [
            MissedTickBehavior::Burst,
            MissedTickBehavior::Delay,
            MissedTickBehavior::Skip,
        ] {
            assert_eq!(m.next(20, 21, 10), 30);
        }
        // Exactly on a later multiple: Skip goes strictly after now.
        assert_eq!(MissedTickBehavior::Skip.next(20, 40, 10), 50);
    }
}
