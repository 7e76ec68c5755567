//! Futures on the loop: a small executor of reseau's own on the engine's tasks
//! ([`LoopHandle::spawn`], [`JoinHandle`]), with no runtime underneath (`std::task` only).
//!
//! # How a future runs
//! A spawned future lives in a task object, registered in its loop's table of live
//! futures. A poll is an ordinary engine task (`schedule_now`) that polls the future once
//! on the loop thread. The task's waker sets a *notified* flag and, only when it was clear,
//! submits one such poll task: at most one poll is pending per future, however many wakes.
//! A wake during the future's own poll (a self-wake) submits a task for a later tick; it
//! never polls recursively.
//!
//! # A wake that cannot schedule
//! - **Full loop**: the future goes on the loop's *overflow* list (at most once, thanks to
//!   the notified flag, so the list is bounded by the number of live futures), the loop is
//!   woken, and its next tick polls every future on the list directly, without a task slot.
//!   [`Stats::futures_overflowed`](crate::Stats::futures_overflowed) counts these.
//! - **Destroyed loop** (destroy has begun): the future is dropped at once, on the waking
//!   thread (futures are `Send`), and its [`JoinHandle`] resolves to
//!   [`JoinError::Canceled`]. Any later wake is a no-op.
//! - Destroy itself drops every future still alive on the destroying thread (the loop's
//!   thread for the duration), after the pending tasks ran canceled: every `JoinHandle`
//!   resolves, none hangs.
//!
//! # `!Send` futures
//! A task may be run canceled by whichever thread destroys the loop, so the engine's
//! tasks are `Send`; [`LoopHandle::spawn_local`] keeps a `!Send` future in a thread-local
//! table of the thread driving the loop instead, and its tasks carry only a key (see
//! that method for what happens when another thread drives or destroys the loop).

use std::any::Any;
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::task::{Context, Poll, Wake, Waker};

use reseau_core::{Operation, Platform, TaskStatus};

use crate::error::ScheduleErrorKind;
use crate::handle::LoopHandle;
use crate::platform::{lock, panic_message};
use crate::shared::{Shared, destroyed_error};
use crate::stats::Counters;

/// Why a [`JoinHandle`] resolved without the future's output.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum JoinError {
    /// The future was dropped before it completed: its loop was destroyed (or destroy had
    /// begun when it was woken), or [`JoinHandle::abort`] was called.
    Canceled,
    /// The future panicked while polled; the panic's message. The loop went on.
    Panicked(String),
    /// [`JoinHandle::join`] was called on the loop's own thread before the future
    /// finished: blocking there would stop the loop that must finish it. The future goes
    /// on, detached.
    WouldDeadlock,
}

impl fmt::Display for JoinError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JoinError::Canceled => f.write_str("the future was canceled (aborted, or its loop destroyed)"),
            JoinError::Panicked(msg) => write!(f, "the future panicked: {msg}"),
            JoinError::WouldDeadlock => f.write_str(
                "join on the loop's own thread before the future finished: it would block the loop that runs it",
            ),
        }
    }
}

impl std::error::Error for JoinError {}

/// A refused [`LoopHandle::spawn`]: why, and the future, handed back never polled.
pub struct SpawnError<F> {
    /// Why: the loop is full, or destroy has begun.
    pub kind: ScheduleErrorKind,
    /// The future, untouched.
    pub future: F,
}

impl<F> fmt::Debug for SpawnError<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpawnError")
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

impl<F> fmt::Display for SpawnError<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spawn refused ({}); the future is handed back",
            self.kind
        )
    }
}

impl<F> std::error::Error for SpawnError<F> {}

// ---- the join side ----

struct JoinState<T> {
    result: Option<Result<T, JoinError>>,
    done: bool,
    waker: Option<Waker>,
}

/// Where a future's outcome lands, for its [`JoinHandle`].
pub(crate) struct JoinCell<T> {
    state: Mutex<JoinState<T>>,
    cv: Condvar,
}

impl<T> JoinCell<T> {
    pub(crate) fn new() -> Self {
        Self {
            state: Mutex::new(JoinState {
                result: None,
                done: false,
                waker: None,
            }),
            cv: Condvar::new(),
        }
    }

    /// Records the outcome (the first one wins) and wakes whoever waits for it.
    pub(crate) fn complete(&self, r: Result<T, JoinError>) {
        let waker = {
            let mut st = lock(&self.state);
            if st.done {
                return;
            }
            st.done = true;
            st.result = Some(r);
            st.waker.take()
        };
        self.cv.notify_all();
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// The handle of a spawned future: a [`Future`] of its output, a blocking
/// [`join`](Self::join) for code that is not async, and [`abort`](Self::abort).
///
/// Dropping it detaches the future: it runs on to completion, its output dropped.
///
/// ```
/// use reseau_linux::{EventLoop, EventLoopOptions, JoinError};
///
/// let el = EventLoop::new(EventLoopOptions::default())?;
/// el.run()?;
/// let answer = el.spawn(async { 6 * 7 })?;
/// // A JoinHandle is itself a future: await it from another spawned future.
/// let doubled = el.spawn(async move { answer.await.map(|x| x * 2) })?;
/// assert_eq!(doubled.join(), Ok(Ok(84)));
/// let failed = el.spawn(async { panic!("boom") })?;
/// assert_eq!(failed.join(), Err::<(), _>(JoinError::Panicked("boom".into())));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct JoinHandle<T> {
    cell: Arc<JoinCell<T>>,
    task: Arc<dyn Job>,
}

impl<T> fmt::Debug for JoinHandle<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinHandle")
            .field("loop", &self.task.handle().loop_id())
            .field("finished", &self.is_finished())
            .finish()
    }
}

impl<T> JoinHandle<T> {
    /// Whether the future has completed, panicked or been dropped (the outcome is there).
    pub fn is_finished(&self) -> bool {
        lock(&self.cell.state).done
    }

    /// Drops the future before it completes: on the loop thread in its next tick (at once
    /// if the loop is destroyed), and the handle resolves to [`JoinError::Canceled`]. A
    /// future that already completed keeps its output; aborting twice is a no-op.
    pub fn abort(&self) {
        self.task.clone().abort();
    }

    /// Blocks the calling thread until the future's outcome is there, and returns it. On a
    /// stopped loop that means until it runs again or is destroyed (which resolves it).
    ///
    /// # Errors
    /// [`JoinError::Canceled`] or [`JoinError::Panicked`] as the future ended;
    /// [`JoinError::WouldDeadlock`] when called on the loop's own thread before the future
    /// finished (the future goes on, detached).
    pub fn join(self) -> Result<T, JoinError> {
        let mut st = lock(&self.cell.state);
        if !st.done && self.task.handle().is_on_loop_thread() {
            return Err(JoinError::WouldDeadlock);
        }
        while !st.done {
            st = self.cell.cv.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        st.result
            .take()
            .expect("a JoinHandle's outcome is taken once: join consumes the handle")
    }
}

impl<T> Future for JoinHandle<T> {
    type Output = Result<T, JoinError>;

    /// # Panics
    /// When polled again after it returned `Ready` (as any future may).
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut st = lock(&self.cell.state);
        if st.done {
            return Poll::Ready(
                st.result
                    .take()
                    .expect("JoinHandle polled after it returned Ready"),
            );
        }
        match &st.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => st.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

// ---- the task side ----

/// A spawned future with its type erased, and how to get it back while never polled.
trait Erased: Send {
    /// Polls the future once (under a panic guard); `Ready` once it completed or panicked.
    ///
    /// # Safety
    /// `self` lives in a `Box` that is never moved out of afterwards: the future is
    /// pinned in place from its first poll until it is dropped.
    unsafe fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()>;

    /// The future itself (`Box<F>` as `Any`), if it was never polled.
    fn unpolled(&mut self) -> Option<Box<dyn Any + Send>>;
}

/// The typed future and where its outcome goes. Dropped before completing, it reports
/// [`JoinError::Canceled`].
struct Spawned<F: Future> {
    future: Option<F>,
    polled: bool,
    cell: Arc<JoinCell<F::Output>>,
}

impl<F> Erased for Spawned<F>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    unsafe fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Some(future) = self.future.as_mut() else {
            return Poll::Ready(());
        };
        self.polled = true;
        // SAFETY: by this method's contract the `Spawned` (and so `self.future`, inline in
        // it) stays at this address until dropped; the future is only ever dropped in
        // place (`self.future = None` below, or with the `Spawned`), never moved out after
        // this first poll (`unpolled` refuses once `polled` is set).
        let pinned = unsafe { Pin::new_unchecked(future) };
        match catch_unwind(AssertUnwindSafe(|| pinned.poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(v)) => {
                self.cell.complete(Ok(v));
                drop_guarded(|| self.future = None);
                Poll::Ready(())
            }
            Err(payload) => {
                let msg = panic_message(&*payload).to_owned();
                crate::log_at!(
                    error,
                    "reseau: a spawned future panicked: {msg}; the loop goes on"
                );
                self.cell.complete(Err(JoinError::Panicked(msg)));
                drop_guarded(|| self.future = None);
                Poll::Ready(())
            }
        }
    }

    fn unpolled(&mut self) -> Option<Box<dyn Any + Send>> {
        if self.polled {
            return None;
        }
        self.future
            .take()
            .map(|f| Box::new(f) as Box<dyn Any + Send>)
    }
}

impl<F: Future> Drop for Spawned<F> {
    fn drop(&mut self) {
        // Drop the future first (its own `Drop` may panic: keep going), then report.
        drop_guarded(|| self.future = None);
        self.cell.complete(Err(JoinError::Canceled));
    }
}

/// Runs a drop of user code, logging a panic instead of unwinding into the loop.
pub(crate) fn drop_guarded(f: impl FnOnce()) {
    if let Err(payload) = catch_unwind(AssertUnwindSafe(f)) {
        crate::log_at!(
            error,
            "reseau: dropping a spawned future panicked: {}",
            panic_message(&*payload)
        );
    }
}

/// A spawned future as the loop's table, its overflow list and its `JoinHandle` see it
/// (`Send` futures here, `!Send` ones in [`crate::local`]).
pub(crate) trait Job: Send + Sync + 'static {
    /// Polls the future once (`RunReady`), or drops it (`Canceled`: destroy).
    fn run(self: Arc<Self>, status: TaskStatus);
    /// Drops the future (it reports `Canceled` unless it finished) and forgets the task.
    fn close(self: Arc<Self>);
    /// Marks the future aborted and wakes it, so it is dropped.
    fn abort(self: Arc<Self>);
    /// The loop it runs on.
    fn handle(&self) -> &LoopHandle;
}

impl<T> JoinHandle<T> {
    pub(crate) fn new(cell: Arc<JoinCell<T>>, task: Arc<dyn Job>) -> Self {
        Self { cell, task }
    }
}

struct TaskState {
    /// The future; `None` while polled (taken out) or once finished.
    future: Option<Box<dyn Erased>>,
    /// A poll is pending: a poll task scheduled, or an overflow entry.
    notified: bool,
    /// The future is taken out for its poll right now.
    polling: bool,
    /// Finished or dropped: wakes are no-ops.
    closed: bool,
    /// `abort` was called: the next poll drops the future instead.
    aborted: bool,
}

/// A spawned future: its state, its loop, and its key in the loop's table.
pub(crate) struct FutureTask {
    handle: LoopHandle,
    key: u64,
    state: Mutex<TaskState>,
}

impl FutureTask {
    /// Takes the future out and marks the task closed; the caller drops it (outside the lock).
    fn take_closed(&self) -> Option<Box<dyn Erased>> {
        let mut st = lock(&self.state);
        st.closed = true;
        st.future.take()
    }

    /// Drops the future (it reports `Canceled` unless it completed) and forgets the task.
    fn close_now(self: &Arc<Self>) {
        if let Some(f) = self.take_closed() {
            drop_guarded(|| drop(f));
        }
        if let Some(shared) = self.handle.upgrade() {
            shared.platform().futures.get().forget(self.key);
        }
    }

    /// Polls the future once, on the loop thread (a poll task, or the overflow drain).
    fn poll_once(self: &Arc<Self>, status: TaskStatus) {
        if status == TaskStatus::Canceled {
            // Destroy is canceling the loop's tasks.
            self.close_now();
            return;
        }
        let mut future = {
            let mut st = lock(&self.state);
            st.notified = false;
            if st.closed || st.polling {
                debug_assert!(!st.polling, "a future is never polled recursively");
                return;
            }
            if st.aborted {
                drop(st);
                self.close_now();
                return;
            }
            let Some(f) = st.future.take() else { return };
            st.polling = true;
            f
        };
        let waker = Waker::from(self.clone());
        let mut cx = Context::from_waker(&waker);
        // SAFETY: `future` is the `Box` the future lives in; it goes back into the state
        // or is dropped below, the box moved, never its contents.
        let ready = unsafe { future.poll(&mut cx) }.is_ready();
        let finished = {
            let mut st = lock(&self.state);
            st.polling = false;
            if ready || st.closed || st.aborted {
                st.closed = true;
                true
            } else {
                st.future = Some(future);
                return;
            }
        };
        if finished {
            drop_guarded(|| drop(future));
            if let Some(shared) = self.handle.upgrade() {
                shared.platform().futures.get().forget(self.key);
            }
        }
    }

    /// The waker's work: submit one poll unless one is pending or the task is closed.
    fn wake_by_ref_inner(self: &Arc<Self>) {
        {
            let mut st = lock(&self.state);
            if st.notified || st.closed {
                return;
            }
            st.notified = true;
        }
        self.submit();
    }

    /// Schedules a poll task; on a full loop, the overflow list; on a destroyed one, close.
    fn submit(self: &Arc<Self>) {
        let me = self.clone();
        let refused = match self
            .handle
            .schedule_now(move |_, status| me.poll_once(status))
        {
            Ok(_) => return,
            Err(e) => e.kind,
        };
        if let ScheduleErrorKind::Full { .. } = refused
            && let Some(shared) = self.handle.upgrade()
            && shared
                .platform()
                .futures
                .get()
                .overflow(&shared, self.clone())
        {
            return;
        }
        self.close_now();
    }
}

impl Job for FutureTask {
    fn run(self: Arc<Self>, status: TaskStatus) {
        self.poll_once(status);
    }
    fn close(self: Arc<Self>) {
        self.close_now();
    }
    fn abort(self: Arc<Self>) {
        lock(&self.state).aborted = true;
        self.wake_by_ref_inner();
    }
    fn handle(&self) -> &LoopHandle {
        &self.handle
    }
}

impl Wake for FutureTask {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref_inner();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.wake_by_ref_inner();
    }
}

/// A loop's futures, created by its first spawn ([`LoopHandle::spawn`] or
/// [`spawn_local`](LoopHandle::spawn_local)). The tick and the teardown reach them through
/// a trait object whose table only a spawn instantiates, so a program that never spawns a
/// future links neither the live-futures table (a `HashMap`, with its seeded hasher) nor
/// the overflow list: about 3 KB of a static binary (README "Size and bare metal").
#[derive(Default)]
pub(crate) struct LoopFutures(OnceLock<Box<dyn FutureHooks>>);

/// What the loop calls on its futures without knowing their type.
trait FutureHooks: Send + Sync {
    fn futures(&self) -> &Futures;
    fn drain_overflow(&self);
    fn close_all(&self) -> usize;
}

impl FutureHooks for Futures {
    fn futures(&self) -> &Futures {
        self
    }
    fn drain_overflow(&self) {
        Futures::drain_overflow(self);
    }
    fn close_all(&self) -> usize {
        Futures::close_all(self)
    }
}

impl LoopFutures {
    /// The loop's futures, created on first use (by a spawn: a live future implies they
    /// exist).
    pub(crate) fn get(&self) -> &Futures {
        self.0
            .get_or_init(|| Box::new(Futures::default()))
            .futures()
    }

    /// The driver's tick: polls the futures woken while the loop was full, if any.
    pub(crate) fn drain_overflow(&self) {
        if let Some(hooks) = self.0.get() {
            hooks.drain_overflow();
        }
    }

    /// At destroy, on the driver: drops every future still alive. Returns how many.
    pub(crate) fn close_all(&self) -> usize {
        self.0.get().map_or(0, |hooks| hooks.close_all())
    }

    /// How many wakes went to the overflow list (0 if no future was ever spawned).
    pub(crate) fn overflowed(&self) -> u64 {
        self.0.get().map_or(0, |hooks| {
            hooks.futures().overflowed.load(Ordering::Relaxed)
        })
    }
}

/// A loop's live futures and its overflow list (in the platform: the loop's shared state).
#[derive(Default)]
pub(crate) struct Futures {
    live: Mutex<HashMap<u64, Arc<dyn Job>>>,
    overflow: Mutex<Vec<Arc<dyn Job>>>,
    /// Whether the overflow list may be non-empty: the tick's fast path skips the lock.
    overflow_hint: AtomicBool,
    next_key: AtomicU64,
    pub(crate) overflowed: AtomicU64,
}

impl Futures {
    /// A key for a new future, unique on this loop.
    pub(crate) fn key(&self) -> u64 {
        self.next_key.fetch_add(1, Ordering::Relaxed)
    }

    /// Registers a live future (under a producer guard, or on the driver).
    pub(crate) fn register(&self, key: u64, job: Arc<dyn Job>) {
        lock(&self.live).insert(key, job);
    }

    pub(crate) fn forget(&self, key: u64) {
        let task = lock(&self.live).remove(&key);
        drop(task);
    }

    /// Puts a woken future on the overflow list and wakes the loop; `false` when destroy
    /// has begun (the caller drops the future).
    pub(crate) fn overflow(&self, shared: &Shared, task: Arc<dyn Job>) -> bool {
        let _guard = if shared.engine.is_driver() {
            None
        } else {
            match shared.engine.lifecycle().enter_producer() {
                Ok(g) => Some(g),
                Err(_) => return false,
            }
        };
        lock(&self.overflow).push(task);
        self.overflow_hint.store(true, Ordering::Release);
        Counters::bump(&self.overflowed, 1);
        shared.platform().wake();
        true
    }

    /// The driver's tick: polls every future on the overflow list (no task slot needed).
    pub(crate) fn drain_overflow(&self) {
        // The push stores the hint after its push (under the list's lock); a hint seen
        // late is seen by the next tick, which the pusher's wake guarantees.
        if !self.overflow_hint.swap(false, Ordering::AcqRel) {
            return;
        }
        let list = std::mem::take(&mut *lock(&self.overflow));
        for task in list {
            task.run(TaskStatus::RunReady);
        }
    }

    /// At destroy, on the driver: drops every future still alive. Returns how many.
    pub(crate) fn close_all(&self) -> usize {
        let overflow = std::mem::take(&mut *lock(&self.overflow));
        let live: Vec<_> = lock(&self.live).drain().map(|(_, t)| t).collect();
        let n = live.len();
        for task in live.into_iter().chain(overflow) {
            task.close();
        }
        n
    }
}

impl LoopHandle {
    /// Spawns `future` on the loop: it is polled on the loop thread, first in the next
    /// tick, then each time its waker is woken. From any thread, running or not (a stopped
    /// loop polls it after the next `run`). The [`JoinHandle`] gives its output.
    ///
    /// What a waker does when the loop cannot take a task (full, destroyed) is in the
    /// [module docs](crate::futures): a wake is never silently lost.
    ///
    /// ```
    /// use reseau_linux::{EventLoop, EventLoopOptions};
    /// use std::time::Duration;
    ///
    /// let el = EventLoop::new(EventLoopOptions::default())?;
    /// el.run()?;
    /// let h = el.handle();
    /// let job = el.spawn(async move {
    ///     h.sleep(Duration::from_millis(1)).await;
    ///     "slept"
    /// })?;
    /// assert_eq!(job.join(), Ok("slept"));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// The loop is full or destroy has begun: the future comes back in the error, never
    /// polled.
    pub fn spawn<F>(&self, future: F) -> Result<JoinHandle<F::Output>, SpawnError<F>>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let refuse = |kind, future| Err(SpawnError { kind, future });
        let Some(shared) = self.upgrade() else {
            let e = destroyed_error(Operation::Schedule);
            return refuse(ScheduleErrorKind::Destroyed(e), future);
        };
        if shared.inherited() {
            return refuse(ScheduleErrorKind::Forked, future);
        }
        // Registered under a producer guard: destroy's teardown waits for it, then finds
        // the future in the table.
        let _guard = if shared.engine.is_driver() {
            None
        } else {
            match shared.engine.lifecycle().enter_producer() {
                Ok(g) => Some(g),
                Err(e) => return refuse(ScheduleErrorKind::Destroyed(e), future),
            }
        };
        let futures = shared.platform().futures.get();
        let cell = Arc::new(JoinCell::new());
        let key = futures.key();
        let task = Arc::new(FutureTask {
            handle: self.clone(),
            key,
            state: Mutex::new(TaskState {
                future: Some(Box::new(Spawned {
                    future: Some(future),
                    polled: false,
                    cell: cell.clone(),
                })),
                notified: true,
                polling: false,
                closed: false,
                aborted: false,
            }),
        });
        futures.register(key, task.clone());
        let me = task.clone();
        match self.schedule_now(move |_, status| me.poll_once(status)) {
            Ok(_) => Ok(JoinHandle::new(cell, task)),
            Err(e) => {
                drop(e.task);
                futures.forget(key);
                let mut erased = task
                    .take_closed()
                    .expect("never polled: the future is there");
                let future = erased
                    .unpolled()
                    .expect("never polled")
                    .downcast::<F>()
                    .unwrap_or_else(|_| unreachable!("a Spawned<F> holds an F"));
                drop(erased);
                // The cell's `Canceled` goes nowhere: no handle was given out.
                refuse(e.kind, *future)
            }
        }
    }
}
