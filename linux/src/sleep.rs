//! [`Sleep`]: a future that resolves at a deadline of the loop's clock, on one of the
//! loop's timers (a `schedule_at` task). Dropping it cancels the timer.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use crate::error::ScheduleErrorKind;
use crate::handle::LoopHandle;
use crate::platform::lock;
use crate::task::TaskHandle;

#[derive(Default)]
struct Timer {
    /// The deadline passed (or the loop is gone: it can keep no more time).
    fired: bool,
    waker: Option<Waker>,
}

/// A future that resolves once the loop's clock reaches its deadline; never earlier.
///
/// Made by [`LoopHandle::sleep`] / [`LoopHandle::sleep_until`]. Its first poll schedules a
/// timer task on the loop (any thread, any executor may poll it); the timer wakes the
/// last waker that polled. Dropped before it fires, it cancels its timer.
///
/// - On a **full** loop the timer cannot be scheduled yet: the sleep wakes itself and
///   tries again at its next poll (for a future spawned on the loop, the next tick),
///   until a slot frees. It never resolves early.
/// - Once its loop is **destroyed** (or its timer canceled by destroy), it resolves at
///   once: the loop can keep no more time. A future spawned on that loop never sees
///   this (destroy drops it).
///
/// ```
/// use reseau_linux::{EventLoop, EventLoopOptions};
/// use std::time::Duration;
///
/// let el = EventLoop::new(EventLoopOptions::default())?;
/// el.run()?;
/// let h = el.handle();
/// let start = h.now();
/// let slept = el
///     .spawn(async move {
///         h.sleep(Duration::from_millis(2)).await;
///         h.now() - start
///     })?;
/// assert!(slept.join()? >= 2_000_000);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[must_use = "a Sleep does nothing unless polled"]
pub struct Sleep {
    handle: LoopHandle,
    deadline: u64,
    shared: Arc<Mutex<Timer>>,
    timer: Option<TaskHandle>,
}

impl fmt::Debug for Sleep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sleep")
            .field("loop", &self.handle.loop_id())
            .field("deadline", &self.deadline)
            .field("armed", &self.timer.is_some())
            .finish()
    }
}

impl Sleep {
    /// The deadline, in nanoseconds of the loop's clock.
    pub fn deadline(&self) -> u64 {
        self.deadline
    }
}

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        {
            let mut t = lock(&self.shared);
            if t.fired {
                return Poll::Ready(());
            }
            match &t.waker {
                Some(w) if w.will_wake(cx.waker()) => {}
                _ => t.waker = Some(cx.waker().clone()),
            }
        }
        if self.timer.is_some() {
            return Poll::Pending;
        }
        let shared = self.shared.clone();
        let scheduled = self.handle.schedule_at(self.deadline, move |_, _status| {
            // RunReady: the deadline passed. Canceled: by our own drop (the waker is gone
            // then) or by destroy (resolve: the loop keeps no more time).
            let waker = {
                let mut t = lock(&shared);
                t.fired = true;
                t.waker.take()
            };
            if let Some(w) = waker {
                w.wake();
            }
        });
        match scheduled {
            Ok(timer) => {
                self.timer = Some(timer);
                Poll::Pending
            }
            Err(e) => match e.kind {
                ScheduleErrorKind::Full { .. } => {
                    // Try again at the next poll; never resolve early.
                    drop(e);
                    cx.waker().wake_by_ref();
                    Poll::Pending
                }
                // Destroyed, or inherited through fork: this process keeps no time for it.
                ScheduleErrorKind::Destroyed(_) | ScheduleErrorKind::Forked => Poll::Ready(()),
            },
        }
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        let fired = {
            let mut t = lock(&self.shared);
            t.waker = None;
            t.fired
        };
        if let Some(timer) = self.timer.take()
            && !fired
        {
            self.handle.cancel(&timer);
        }
    }
}

/// A `Duration` in nanoseconds, saturating.
fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl LoopHandle {
    /// A future that resolves `duration` from now (the deadline is taken now, not at the
    /// first poll) on the loop's clock. See [`Sleep`].
    pub fn sleep(&self, duration: Duration) -> Sleep {
        self.sleep_until(self.now().saturating_add(nanos(duration)))
    }

    /// A future that resolves once the loop's clock reaches `deadline` (nanoseconds, see
    /// [`now`](Self::now)); a past deadline resolves on the timer's first tick. See
    /// [`Sleep`].
    ///
    /// ```
    /// use reseau_linux::{EventLoop, EventLoopOptions};
    ///
    /// let el = EventLoop::new(EventLoopOptions::default())?;
    /// el.run()?;
    /// let h = el.handle();
    /// let deadline = h.now() + 1_000_000; // 1 ms on the loop clock
    /// let late = el.spawn(async move {
    ///     h.sleep_until(deadline).await;
    ///     h.now() >= deadline
    /// })?;
    /// assert_eq!(late.join(), Ok(true));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn sleep_until(&self, deadline: u64) -> Sleep {
        Sleep {
            handle: self.clone(),
            deadline,
            shared: Arc::new(Mutex::new(Timer::default())),
            timer: None,
        }
    }
}
