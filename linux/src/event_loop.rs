//! The event loop: one dedicated thread blocked in `epoll_wait`, tasks from any thread.
//!
//! # The path of a task
//! [`LoopHandle::schedule_now`] on another thread reserves one of the loop's `capacity`
//! task slots, pushes a message into the core [`Inbox`](reseau_core::Inbox) (whose wake
//! protocol says whether to write the wakeup) and returns a [`TaskHandle`]. The loop thread
//! ([`Shared::run_loop`]) wakes from `epoll_wait`, drains the inbox into the core
//! [`Scheduler`](reseau_core::Scheduler), and runs the due batch. One tick:
//! 1. IO dispatch (the wakeup, and each subscription's callback);
//! 2. inbox drain (cross-thread schedules and cancels, in the order they linearized);
//! 3. the due batch: ASAP tasks, then due timed tasks in `(deadline, submission)` order;
//!    a task scheduled during the batch waits for the next tick.
//!
//! # Lifecycle
//! The decisions live in the core [`Lifecycle`]; this module does the blocking parts: spawn
//! the named thread, wait for its exit, cancel what remains at destroy (on the destroying
//! thread, which takes the loop's identity while it does so), release the descriptors once
//! the loop thread has exited.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use reseau_core::{Lifecycle, LifecycleError, Operation, State, StopOutcome, TaskStatus, Wake};
use rustix::event::epoll;
use rustix::io::Errno;

use crate::clock::{Clock, timeout_ms};
use crate::error::{Error, ScheduleError, ScheduleErrorKind};
use crate::io::{
    Entry, Found, Interest, IoControl, Readiness, Slab, SubscribeError, SubscribeErrorKind,
    Subscription, UnsubscribeError,
};
use crate::load::{Load, mono_now};
use crate::queues::{self, Msg, MsgQueue, TaskQueue};
use crate::stats::{Counters, Stats};
use crate::sys::{self, Backend, RealSyscalls, SysError, Syscalls};
use crate::task::{self, Job, Task, TaskHandle};
use crate::thread_id;
use crate::wakeup::Wakeup;

/// The epoll data of the wakeup descriptor; IO subscriptions use slab tokens below it.
pub(crate) const WAKEUP_TOKEN: u64 = u64::MAX;

/// How to build an [`EventLoop`].
#[derive(Clone)]
pub struct EventLoopOptions {
    /// The loop thread's name (default `reseau-el`).
    pub thread_name: String,
    /// How many tasks may be pending at once, scheduled or queued cross-thread (default
    /// 4096). Rounded up to the next offered size: 64, 256, 1024, 4096, 16384 or 65536.
    pub capacity: usize,
    /// Where the loop reads the time (default `CLOCK_MONOTONIC`).
    pub clock: Clock,
    /// The syscall seam (default the kernel); tests inject faults through it.
    pub syscalls: Arc<dyn Syscalls>,
    /// How long destroy waits for the loop thread to exit before giving up and reporting
    /// [`Error::LoopThreadAlive`] (default: no limit, like a join).
    pub teardown_timeout: Option<Duration>,
    /// The `epoll_wait` buffer's initial size (default 16); it doubles each time a wait
    /// fills it, up to `max_events`.
    pub initial_events: usize,
    /// The largest `epoll_wait` buffer (default 1024).
    pub max_events: usize,
    /// Pins the loop thread to this CPU with `sched_setaffinity` (default: not pinned).
    pub cpu: Option<usize>,
}

impl Default for EventLoopOptions {
    fn default() -> Self {
        Self {
            thread_name: "reseau-el".into(),
            capacity: 4096,
            clock: Clock::Monotonic,
            syscalls: Arc::new(RealSyscalls),
            teardown_timeout: None,
            initial_events: 16,
            max_events: 1024,
            cpu: None,
        }
    }
}

impl std::fmt::Debug for EventLoopOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventLoopOptions")
            .field("thread_name", &self.thread_name)
            .field("capacity", &self.capacity)
            .field("clock", &self.clock)
            .field("teardown_timeout", &self.teardown_timeout)
            .field("initial_events", &self.initial_events)
            .field("max_events", &self.max_events)
            .field("cpu", &self.cpu)
            .finish_non_exhaustive()
    }
}

/// State only the loop's identity touches (the loop thread, or the destroying thread).
struct Local {
    sched: Box<dyn TaskQueue>,
    wakeup_registered: bool,
}

#[derive(Default)]
struct Exit {
    /// The loop thread has finished (true when none was ever started).
    exited: bool,
    /// Destroy gave up waiting: the loop thread must tear down on its own at exit.
    abandoned: bool,
}

pub(crate) struct Shared {
    lifecycle: Lifecycle,
    inbox: Box<dyn MsgQueue>,
    local: Mutex<Local>,
    subs: Mutex<Slab>,
    pending: AtomicUsize,
    capacity: usize,
    epoll: OwnedFd,
    wakeup: Wakeup,
    backend: Backend,
    sys: Arc<dyn Syscalls>,
    clock: Clock,
    loop_thread: AtomicU64,
    counters: Counters,
    load: Load,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    exit: Mutex<Exit>,
    exit_cv: Condvar,
    loop_error: Mutex<Option<Error>>,
    options: EventLoopOptions,
    weak: Weak<Shared>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic never happens while one of these locks is held (tasks run unlocked), but a
    // poisoned lock must not turn into a second panic.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A cheap, cloneable, `Send + Sync` handle that schedules on a loop from any thread.
///
/// It does not keep the loop alive: once the loop is destroyed every call returns an
/// error (schedules hand the task back).
#[derive(Clone)]
pub struct LoopHandle {
    shared: Weak<Shared>,
}

impl std::fmt::Debug for LoopHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoopHandle")
            .field("alive", &(self.shared.strong_count() > 0))
            .finish()
    }
}

fn destroyed_error(op: Operation) -> LifecycleError {
    LifecycleError {
        op,
        state: State::Destroyed,
        on_loop_thread: false,
        live: false,
    }
}

impl LoopHandle {
    fn upgrade(&self) -> Option<Arc<Shared>> {
        self.shared.upgrade()
    }

    /// Whether the calling thread is the loop's thread (or the thread destroying it, while
    /// it cancels the remaining tasks).
    pub fn is_on_loop_thread(&self) -> bool {
        self.upgrade().is_some_and(|s| s.on_loop_thread())
    }

    /// The loop clock's current time in nanoseconds (the scale of deadlines).
    pub fn now(&self) -> u64 {
        match self.upgrade() {
            Some(s) => s.clock.now(),
            None => Clock::Monotonic.now(),
        }
    }

    /// A snapshot of the loop's counters (all zero once the loop is gone).
    pub fn stats(&self) -> Stats {
        self.upgrade()
            .map(|s| s.counters.snapshot())
            .unwrap_or_default()
    }

    /// The loop's load factor: nanoseconds its thread was busy (not waiting in
    /// `epoll_wait`) in the last ~1 s window; 0 for an idle or destroyed loop. Groups
    /// balance on it.
    pub fn load_factor(&self) -> u64 {
        self.upgrade().map_or(0, |s| s.load.factor())
    }

    /// Schedules `f` to run on the loop thread as soon as possible.
    ///
    /// From the loop thread the task goes straight into the scheduler (it runs in the next
    /// tick, after the current batch); from any other thread it goes through the inbox, in
    /// the order the calls linearize. A task scheduled on a stopped loop runs after the next
    /// `run`, or is canceled at destroy.
    ///
    /// # Errors
    /// The loop holds its capacity of pending tasks, or destroy has begun: the task is in
    /// the error, never run.
    pub fn schedule_now<F>(&self, f: F) -> Result<TaskHandle, ScheduleError>
    where
        F: FnOnce(&LoopHandle, TaskStatus) + Send + 'static,
    {
        self.schedule(task::job(f), None, false)
    }

    /// Like [`schedule_now`](Self::schedule_now), but always through the inbox, even from the
    /// loop thread: one global FIFO with every other thread's schedules.
    ///
    /// # Errors
    /// As [`schedule_now`](Self::schedule_now).
    pub fn schedule_now_serialized<F>(&self, f: F) -> Result<TaskHandle, ScheduleError>
    where
        F: FnOnce(&LoopHandle, TaskStatus) + Send + 'static,
    {
        self.schedule(task::job(f), None, true)
    }

    /// Schedules `f` to run on the loop thread at `deadline` (nanoseconds of the loop's
    /// clock, see [`now`](Self::now)); never earlier. Equal deadlines run in submission
    /// order; a past deadline runs in the next tick.
    ///
    /// # Errors
    /// As [`schedule_now`](Self::schedule_now).
    pub fn schedule_at<F>(&self, deadline: u64, f: F) -> Result<TaskHandle, ScheduleError>
    where
        F: FnOnce(&LoopHandle, TaskStatus) + Send + 'static,
    {
        self.schedule(task::job(f), Some(deadline), false)
    }

    fn schedule(
        &self,
        job: Job,
        deadline: Option<u64>,
        serialized: bool,
    ) -> Result<TaskHandle, ScheduleError> {
        let Some(shared) = self.upgrade() else {
            return Err(ScheduleError {
                kind: ScheduleErrorKind::Destroyed(destroyed_error(Operation::Schedule)),
                task: Task(job),
            });
        };
        shared.schedule(job, deadline, serialized)
    }

    /// Cancels a task: it runs exactly once with [`TaskStatus::Canceled`] — at once when
    /// called on the loop thread, on the loop thread soon after otherwise — unless it has
    /// already run (or been canceled), in which case this is a no-op.
    pub fn cancel(&self, task: &TaskHandle) {
        if let Some(shared) = self.upgrade() {
            shared.cancel(&self.clone(), &task.0);
        }
    }

    /// Subscribes `source` for edge-triggered readiness: `callback` runs on the loop thread
    /// with this handle, the source and the [`Readiness`] delivered, each time the kernel
    /// reports an edge of interest (read or write until `EAGAIN` before expecting the next).
    /// The subscription owns the source until [`unsubscribe`](Self::unsubscribe) hands it
    /// back, the callback returns [`IoControl::Unsubscribe`] (the source is dropped), or the
    /// loop is destroyed (dropped). From any thread, running or not.
    ///
    /// # Errors
    /// The source is blocking, the interest empty, the descriptor already subscribed here
    /// (the existing subscription is untouched), destroy has begun, or `epoll_ctl` failed;
    /// the source comes back in the error.
    pub fn subscribe<S, F>(
        &self,
        source: S,
        interest: Interest,
        callback: F,
    ) -> Result<Subscription, SubscribeError<S>>
    where
        S: AsFd + Send + 'static,
        F: FnMut(&LoopHandle, &mut S, Readiness) -> IoControl + Send + 'static,
    {
        let refuse = |kind, source| Err(SubscribeError { kind, source });
        if interest.is_empty() {
            return refuse(SubscribeErrorKind::EmptyInterest, source);
        }
        match rustix::fs::fcntl_getfl(source.as_fd()) {
            Ok(fl) if fl.contains(rustix::fs::OFlags::NONBLOCK) => {}
            Ok(_) => return refuse(SubscribeErrorKind::Blocking, source),
            Err(errno) => {
                let e = SysError {
                    call: "fcntl(F_GETFL)",
                    errno,
                };
                return refuse(SubscribeErrorKind::Sys(e), source);
            }
        }
        let Some(shared) = self.upgrade() else {
            let e = destroyed_error(Operation::Schedule);
            return refuse(SubscribeErrorKind::Destroyed(e), source);
        };
        let _guard = if shared.on_loop_thread() {
            None
        } else {
            match shared.lifecycle.enter_producer() {
                Ok(g) => Some(g),
                Err(e) => return refuse(SubscribeErrorKind::Destroyed(e), source),
            }
        };
        // Insert first, then register, under the lock: the loop cannot see an event for
        // this token before the entry exists.
        let mut subs = lock(&shared.subs);
        let sub = subs.insert(Box::new(Entry { source, callback }));
        let Found::Active(entry) = subs.find(sub) else {
            unreachable!("just inserted")
        };
        let added = shared.sys.epoll_add(
            shared.epoll.as_fd(),
            entry.fd(),
            sub.token(),
            interest.epoll_flags(),
        );
        match added {
            Ok(()) => Ok(sub),
            Err(errno) => {
                let entry = subs.remove(sub).expect("just inserted");
                drop(subs);
                let source = *entry
                    .into_source()
                    .downcast::<S>()
                    .unwrap_or_else(|_| unreachable!("the entry holds an S"));
                let kind = if errno == Errno::EXIST {
                    SubscribeErrorKind::AlreadySubscribed
                } else {
                    SubscribeErrorKind::Sys(SysError {
                        call: "epoll_ctl(ADD)",
                        errno,
                    })
                };
                refuse(kind, source)
            }
        }
    }

    /// Removes a subscription and hands its source back; no callback for it runs after this
    /// returns (an event already in the current batch is dropped).
    ///
    /// Allowed on the loop thread (from a task or another subscription's callback), or from
    /// any thread while the loop is not running. Off the loop thread while it runs it fails
    /// ([`UnsubscribeError::OffLoopThreadWhileRunning`]) rather than race a callback: schedule
    /// the unsubscribe on the loop instead.
    ///
    /// # Errors
    /// See [`UnsubscribeError`]; and once the loop is destroyed.
    pub fn unsubscribe<S: AsFd + Send + 'static>(&self, sub: Subscription) -> Result<S, Error> {
        let shared = self
            .upgrade()
            .ok_or(Error::InvalidState(destroyed_error(Operation::Schedule)))?;
        let on_loop = shared.on_loop_thread();
        if !on_loop && shared.lifecycle.is_live() {
            return Err(Error::Unsubscribe(
                UnsubscribeError::OffLoopThreadWhileRunning,
            ));
        }
        let mut subs = lock(&shared.subs);
        match subs.find(sub) {
            Found::Missing => return Err(Error::Unsubscribe(UnsubscribeError::NotSubscribed)),
            Found::InCallback => return Err(Error::Unsubscribe(UnsubscribeError::InOwnCallback)),
            Found::Active(entry) if entry.source_type() != std::any::TypeId::of::<S>() => {
                return Err(Error::Unsubscribe(UnsubscribeError::WrongSourceType));
            }
            Found::Active(_) => {}
        }
        let entry = subs.remove(sub).expect("found active above");
        drop(subs);
        shared.deregister(&*entry);
        Ok(*entry
            .into_source()
            .downcast::<S>()
            .unwrap_or_else(|_| unreachable!("type checked above")))
    }

    /// How many subscriptions are live on the loop.
    pub fn subscriptions(&self) -> usize {
        self.upgrade().map_or(0, |s| lock(&s.subs).len())
    }

    /// Asks the loop to stop; idempotent, from any thread. From the loop thread it takes
    /// effect when the current task returns; the loop's remaining tasks stay scheduled for
    /// the next `run`. Stopping a loop that is not running does nothing (and does not
    /// affect the next `run`).
    ///
    /// # Errors
    /// Once the loop is destroyed.
    pub fn stop(&self) -> Result<(), Error> {
        let shared = self
            .upgrade()
            .ok_or(Error::InvalidState(destroyed_error(Operation::Stop)))?;
        shared.stop()
    }
}

impl Shared {
    fn on_loop_thread(&self) -> bool {
        self.loop_thread.load(Ordering::Acquire) == thread_id::current()
    }

    fn handle(&self) -> LoopHandle {
        LoopHandle {
            shared: self.weak.clone(),
        }
    }

    fn reserve(&self) -> bool {
        let prev = self.pending.fetch_add(1, Ordering::AcqRel);
        if prev >= self.capacity {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        true
    }

    fn wake(&self) {
        if let Err(errno) = self.wakeup.wake() {
            log::error!("reseau: writing the wakeup failed: {errno}");
        }
        Counters::bump(&self.counters.wakeups_written, 1);
    }

    fn note_push(&self, wake: Wake) {
        match wake {
            Wake::Needed => self.wake(),
            Wake::Coalesced => Counters::bump(&self.counters.wakeups_coalesced, 1),
        }
    }

    fn schedule(
        &self,
        job: Job,
        deadline: Option<u64>,
        serialized: bool,
    ) -> Result<TaskHandle, ScheduleError> {
        let handle = TaskHandle(job.clone());
        let on_loop = self.on_loop_thread();
        // Off the loop thread, a producer guard keeps destroy from finishing (and the
        // descriptors open) until this push is done; the loop's own identity needs none.
        let _guard = if on_loop {
            None
        } else {
            match self.lifecycle.enter_producer() {
                Ok(g) => Some(g),
                Err(e) => {
                    return Err(ScheduleError {
                        kind: ScheduleErrorKind::Destroyed(e),
                        task: Task(job),
                    });
                }
            }
        };
        if !self.reserve() {
            return Err(ScheduleError {
                kind: ScheduleErrorKind::Full {
                    capacity: self.capacity,
                },
                task: Task(job),
            });
        }
        if on_loop && !serialized {
            let mut local = lock(&self.local);
            let result = match deadline {
                None => local.sched.schedule_now(job),
                Some(d) => local.sched.schedule_at(job, d),
            };
            match result {
                Ok(id) => task::set_id(&handle.0, id),
                Err(full) => {
                    drop(local);
                    self.pending.fetch_sub(1, Ordering::AcqRel);
                    return Err(ScheduleError {
                        kind: ScheduleErrorKind::Full {
                            capacity: self.capacity,
                        },
                        task: Task(full.into_inner()),
                    });
                }
            }
            return Ok(handle);
        }
        let msg = match deadline {
            None => Msg::Now(job),
            Some(d) => Msg::At(job, d),
        };
        match self.inbox.push(msg) {
            Ok(wake) => {
                if !on_loop {
                    self.note_push(wake);
                }
                Ok(handle)
            }
            Err(full) => {
                self.pending.fetch_sub(1, Ordering::AcqRel);
                let (Msg::Now(job) | Msg::At(job, _) | Msg::Cancel(job)) = full.into_inner();
                Err(ScheduleError {
                    kind: ScheduleErrorKind::Full {
                        capacity: self.capacity,
                    },
                    task: Task(job),
                })
            }
        }
    }

    fn cancel(&self, handle: &LoopHandle, job: &Job) {
        if job.claim().claim_cancel() != reseau_core::ClaimOutcome::Won {
            return;
        }
        if self.on_loop_thread() {
            // Bring cross-thread schedules in first, so a task still in the inbox is found.
            self.drain_inbox(handle);
            if let Some(id) = task::get_id(job) {
                let found = lock(&self.local).sched.cancel(id);
                if let Some(found) = found {
                    self.execute(handle, found, TaskStatus::Canceled);
                }
            }
            return;
        }
        // The claim is ours: the task will run canceled whatever happens next. The message
        // only makes it prompt; if it cannot be queued (inbox full, destroy begun) the task
        // runs canceled when it comes due, or at destroy.
        let Ok(_guard) = self.lifecycle.enter_producer() else {
            return;
        };
        if let Ok(wake) = self.inbox.push(Msg::Cancel(job.clone())) {
            self.note_push(wake);
        }
    }

    fn stop(&self) -> Result<(), Error> {
        let on_loop = self.on_loop_thread();
        let guard = match self.lifecycle.enter_producer() {
            Ok(g) => g,
            // Destroy is stopping the loop already.
            Err(e) if e.state == State::Destroying => return Ok(()),
            Err(e) => {
                return Err(Error::InvalidState(LifecycleError {
                    op: Operation::Stop,
                    ..e
                }));
            }
        };
        if self.lifecycle.request_stop()? == StopOutcome::Requested && !on_loop {
            self.wake();
        }
        drop(guard);
        Ok(())
    }

    /// `EPOLL_CTL_DEL` for a source about to leave; `ENOENT`/`EBADF` mean it is gone already.
    fn deregister(&self, entry: &dyn crate::io::Source) {
        match self.sys.epoll_del(self.epoll.as_fd(), entry.fd()) {
            Ok(()) | Err(Errno::NOENT) | Err(Errno::BADF) => {}
            Err(errno) => log::warn!(
                "reseau: epoll_ctl(DEL) failed with {errno}; dropping the subscription anyway"
            ),
        }
    }

    /// Runs the callback of the subscription behind `token`, if it is still live.
    fn dispatch_io(&self, handle: &LoopHandle, token: u64, readiness: Readiness) {
        let sub = Subscription::from_token(token);
        let entry = lock(&self.subs).take_for_callback(sub);
        // Gone (unsubscribed earlier in this batch, or a stale registration): drop the event.
        let Some(mut entry) = entry else { return };
        let control = match catch_unwind(AssertUnwindSafe(|| entry.dispatch(handle, readiness))) {
            Ok(c) => c,
            Err(_) => {
                Counters::bump(&self.counters.panics_caught, 1);
                log::error!("reseau: an IO callback panicked; the subscription is kept");
                IoControl::Keep
            }
        };
        match control {
            IoControl::Keep => lock(&self.subs).put_back(sub, entry),
            IoControl::Unsubscribe => {
                self.deregister(&*entry);
                lock(&self.subs).release_in_callback(sub);
                drop(entry);
            }
        }
    }

    /// Deregisters and drops every remaining subscription (closing sources it owns).
    fn release_subscriptions(&self) {
        let entries = lock(&self.subs).drain();
        for entry in entries {
            self.deregister(&*entry);
        }
    }

    /// Runs a task taken out of the queues, exactly once, counting it and catching a panic.
    fn execute(&self, handle: &LoopHandle, job: Job, status: TaskStatus) {
        self.pending.fetch_sub(1, Ordering::AcqRel);
        match status {
            TaskStatus::RunReady => Counters::bump(&self.counters.tasks_run, 1),
            TaskStatus::Canceled => Counters::bump(&self.counters.tasks_canceled, 1),
        }
        if catch_unwind(AssertUnwindSafe(|| job.run(handle, status))).is_err() {
            Counters::bump(&self.counters.panics_caught, 1);
            log::error!("reseau: a task panicked (status {status:?}); the loop goes on");
        }
    }

    /// Moves every queued cross-thread message into the scheduler (or executes it).
    fn drain_inbox(&self, handle: &LoopHandle) {
        while let Some(msg) = self.inbox.pop() {
            let (job, deadline) = match msg {
                Msg::Now(job) => (job, None),
                Msg::At(job, d) => (job, Some(d)),
                Msg::Cancel(job) => {
                    if let Some(id) = task::get_id(&job) {
                        let found = lock(&self.local).sched.cancel(id);
                        if let Some(found) = found {
                            self.execute(handle, found, TaskStatus::Canceled);
                        }
                    }
                    continue;
                }
            };
            if job.claim().is_canceled() {
                self.execute(handle, job, TaskStatus::Canceled);
                continue;
            }
            let id_holder = job.clone();
            let mut local = lock(&self.local);
            let result = match deadline {
                None => local.sched.schedule_now(job),
                Some(d) => local.sched.schedule_at(job, d),
            };
            drop(local);
            match result {
                Ok(id) => task::set_id(&id_holder, id),
                Err(full) => {
                    // Cannot happen: reservations keep scheduled + queued ≤ capacity. Never
                    // drop a task silently all the same.
                    log::error!("reseau: scheduler full while draining; task canceled");
                    self.execute(handle, full.into_inner(), TaskStatus::Canceled);
                }
            }
        }
    }

    /// The loop thread's ticks, until stopped or an `epoll_wait` error.
    fn run_loop(&self, handle: &LoopHandle) -> Result<(), Error> {
        let mut events: Vec<epoll::Event> = Vec::with_capacity(self.options.initial_events.max(1));
        let max_events = self.options.max_events.max(events.capacity());
        while self.lifecycle.should_run() {
            let next = lock(&self.local).sched.next_deadline();
            let mut timeout = timeout_ms(next, self.clock.now());
            if timeout != Some(0) && (!self.inbox.is_empty() || !self.inbox.prepare_park()) {
                timeout = Some(0);
            }
            events.clear();
            Counters::bump(&self.counters.epoll_waits, 1);
            match self
                .sys
                .epoll_wait(self.epoll.as_fd(), &mut events, timeout)
            {
                Ok(_) => {}
                Err(Errno::INTR) => continue,
                Err(errno) => {
                    log::error!("reseau: epoll_wait failed with {errno}; the loop stops");
                    return Err(Error::Sys(SysError {
                        call: "epoll_wait",
                        errno,
                    }));
                }
            }
            let tick_start = mono_now();
            Counters::bump(&self.counters.events_dispatched, events.len() as u64);
            for event in &events {
                let token = event.data.u64();
                if token == WAKEUP_TOKEN {
                    self.wakeup.drain();
                } else {
                    self.dispatch_io(handle, token, Readiness::from_epoll(event.flags));
                }
            }
            if events.len() == events.capacity() && events.capacity() < max_events {
                let grow = events.capacity().min(max_events - events.capacity());
                events.reserve_exact(grow);
            }
            self.drain_inbox(handle);
            let batch = lock(&self.local).sched.begin(self.clock.now());
            while self.lifecycle.should_run() {
                let job = lock(&self.local).sched.pop_due(&batch);
                let Some(job) = job else { break };
                let status = task::due_status(&job);
                self.execute(handle, job, status);
            }
            self.load.tick(tick_start, mono_now());
        }
        Ok(())
    }

    /// Cancels every remaining task, scheduler first, then inbox, until both are empty.
    /// Called by the loop's identity only.
    fn cancel_everything(&self, handle: &LoopHandle) {
        loop {
            let mut any = false;
            loop {
                let job = lock(&self.local).sched.pop_any();
                let Some(job) = job else { break };
                any = true;
                let _ = job.claim().claim_cancel();
                self.execute(handle, job, TaskStatus::Canceled);
            }
            while let Some(msg) = self.inbox.pop() {
                any = true;
                match msg {
                    Msg::Now(job) | Msg::At(job, _) => {
                        let _ = job.claim().claim_cancel();
                        self.execute(handle, job, TaskStatus::Canceled);
                    }
                    Msg::Cancel(job) => {
                        if let Some(id) = task::get_id(&job) {
                            let found = lock(&self.local).sched.cancel(id);
                            if let Some(found) = found {
                                self.execute(handle, found, TaskStatus::Canceled);
                            }
                        }
                    }
                }
            }
            if !any {
                break;
            }
        }
    }

    fn thread_main(self: Arc<Self>) {
        let me = thread_id::current();
        self.loop_thread.store(me, Ordering::Release);
        let handle = self.handle();
        if let Some(cpu) = self.options.cpu {
            let mut set = rustix::thread::CpuSet::new();
            set.set(cpu);
            if let Err(e) = rustix::thread::sched_setaffinity(None, &set) {
                log::warn!("reseau: pinning the loop thread to CPU {cpu} failed: {e}");
            }
        }
        log::debug!("reseau: loop thread started");
        if let Err(e) = self.run_loop(&handle) {
            *lock(&self.loop_error) = Some(e);
        }
        let mut exit = lock(&self.exit);
        if exit.abandoned {
            drop(exit);
            // Destroy gave up waiting for us: cancel on the loop's behalf and finish the
            // teardown here; the descriptors close when this thread drops the last `Arc`.
            self.cancel_everything(&handle);
            self.release_subscriptions();
            self.loop_thread.store(0, Ordering::Release);
            self.lifecycle.loop_exited();
            let _ = self.lifecycle.finish_destroy();
            return;
        }
        self.loop_thread.store(0, Ordering::Release);
        self.lifecycle.loop_exited();
        exit.exited = true;
        self.exit_cv.notify_all();
    }

    /// Blocks until the loop thread (if any) has exited, at most until `deadline`.
    /// Returns false on timeout, marking the loop abandoned.
    fn wait_exit(&self, deadline: Option<Instant>) -> bool {
        let mut exit = lock(&self.exit);
        while !exit.exited {
            match deadline {
                None => exit = self.exit_cv.wait(exit).unwrap_or_else(|p| p.into_inner()),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        exit.abandoned = true;
                        return false;
                    }
                    exit = self
                        .exit_cv
                        .wait_timeout(exit, d - now)
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                }
            }
        }
        true
    }

    fn join(&self) {
        let handle = lock(&self.thread).take();
        if let Some(h) = handle
            && h.join().is_err()
        {
            log::error!("reseau: the loop thread panicked outside a task");
        }
    }
}

/// An epoll event loop with its own thread. Dropping it destroys it.
pub struct EventLoop {
    shared: Option<Arc<Shared>>,
    handle: LoopHandle,
}

impl std::fmt::Debug for EventLoop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("EventLoop");
        if let Some(s) = &self.shared {
            d.field("state", &s.lifecycle.state())
                .field("backend", &s.backend);
        } else {
            d.field("state", &State::Destroyed);
        }
        d.finish()
    }
}

impl EventLoop {
    /// Creates a loop: its epoll descriptor, its wakeup and its task storage. The loop does
    /// not run until [`run`](Self::run).
    ///
    /// # Errors
    /// A descriptor could not be created (names the call and errno; nothing is leaked), or
    /// `capacity` exceeds the largest offered size.
    pub fn new(options: EventLoopOptions) -> Result<Self, Error> {
        let (sched, inbox, capacity) =
            queues::make(options.capacity).ok_or(Error::InvalidOption("capacity exceeds 65536"))?;
        if options
            .cpu
            .is_some_and(|cpu| cpu >= rustix::thread::CpuSet::MAX_CPU)
        {
            return Err(Error::InvalidOption("cpu beyond the CPU set size"));
        }
        if options.thread_name.contains('\0') {
            return Err(Error::InvalidOption("thread name contains a NUL byte"));
        }
        let sys = options.syscalls.clone();
        let (epoll, epoll_backend) = sys::create_epoll(&*sys)?;
        let (wakeup_fds, wakeup_backend) = sys::create_wakeup(&*sys)?;
        let backend = Backend {
            epoll: epoll_backend,
            wakeup: wakeup_backend,
        };
        let shared = Arc::new_cyclic(|weak| Shared {
            lifecycle: Lifecycle::new(),
            inbox,
            local: Mutex::new(Local {
                sched,
                wakeup_registered: false,
            }),
            subs: Mutex::new(Slab::new()),
            pending: AtomicUsize::new(0),
            capacity,
            epoll,
            wakeup: Wakeup::new(wakeup_fds),
            backend,
            sys,
            clock: options.clock.clone(),
            loop_thread: AtomicU64::new(0),
            counters: Counters::default(),
            load: Load::default(),
            thread: Mutex::new(None),
            exit: Mutex::new(Exit {
                exited: true,
                abandoned: false,
            }),
            exit_cv: Condvar::new(),
            loop_error: Mutex::new(None),
            options,
            weak: weak.clone(),
        });
        let handle = shared.handle();
        Ok(Self {
            shared: Some(shared),
            handle,
        })
    }

    fn shared(&self, op: Operation) -> Result<&Arc<Shared>, Error> {
        self.shared
            .as_ref()
            .ok_or(Error::InvalidState(destroyed_error(op)))
    }

    /// A handle that schedules on this loop from any thread.
    pub fn handle(&self) -> LoopHandle {
        self.handle.clone()
    }

    /// Which calls created the descriptors (the preferred ones, or which fallback).
    pub fn backend(&self) -> Option<Backend> {
        self.shared.as_ref().map(|s| s.backend)
    }

    /// The loop's descriptors, named (`epoll`, `eventfd`, `pipe read`, `pipe write`), for
    /// inspection such as close-on-exec checks. Empty once destroyed.
    pub fn descriptors(&self) -> Vec<(&'static str, BorrowedFd<'_>)> {
        let Some(s) = &self.shared else {
            return Vec::new();
        };
        let mut v = vec![("epoll", s.epoll.as_fd())];
        let names: &[&'static str] = match s.backend.wakeup {
            sys::WakeupBackend::EventFd => &["eventfd"],
            _ => &["pipe read", "pipe write"],
        };
        v.extend(names.iter().copied().zip(s.wakeup.fds()));
        v
    }

    /// The loop's current lifecycle state.
    pub fn state(&self) -> State {
        self.shared
            .as_ref()
            .map_or(State::Destroyed, |s| s.lifecycle.state())
    }

    /// How many tasks the loop can hold pending.
    pub fn capacity(&self) -> usize {
        self.shared.as_ref().map_or(0, |s| s.capacity)
    }

    /// Starts the loop thread.
    ///
    /// # Errors
    /// The loop is running, stopping, stopped and not yet waited for, or destroyed
    /// (invalid state); the wakeup could not be registered with epoll; the thread could not
    /// be spawned. On error the loop stays ready to run.
    pub fn run(&self) -> Result<(), Error> {
        let s = self.shared(Operation::Run)?;
        s.lifecycle.begin_run()?;
        {
            let mut local = lock(&s.local);
            if !local.wakeup_registered {
                let flags = epoll::EventFlags::IN | epoll::EventFlags::ET;
                if let Err(errno) =
                    s.sys
                        .epoll_add(s.epoll.as_fd(), s.wakeup.read_fd(), WAKEUP_TOKEN, flags)
                {
                    drop(local);
                    s.lifecycle.run_failed();
                    return Err(Error::Sys(SysError {
                        call: "epoll_ctl(ADD wakeup)",
                        errno,
                    }));
                }
                local.wakeup_registered = true;
            }
        }
        let mut thread = lock(&s.thread);
        lock(&s.exit).exited = false;
        let runner = s.clone();
        match std::thread::Builder::new()
            .name(s.options.thread_name.clone())
            .spawn(move || runner.thread_main())
        {
            Ok(h) => {
                *thread = Some(h);
                Ok(())
            }
            Err(e) => {
                lock(&s.exit).exited = true;
                s.lifecycle.run_failed();
                Err(Error::Spawn(e.kind()))
            }
        }
    }

    /// See [`LoopHandle::stop`].
    ///
    /// # Errors
    /// Once the loop is destroyed.
    pub fn stop(&self) -> Result<(), Error> {
        self.shared(Operation::Stop)?.stop()
    }

    /// Blocks until the loop thread has exited (after a [`stop`](Self::stop), or on its
    /// own after an `epoll_wait` error), then makes the loop ready to run again. Returns at
    /// once if the loop is not running.
    ///
    /// # Errors
    /// Called from the loop thread (it would wait for itself: invalid state, never a
    /// deadlock); the loop is destroyed; or the loop stopped because `epoll_wait` failed
    /// (that error, reported once).
    pub fn wait_for_stop_completion(&self) -> Result<(), Error> {
        let s = self.shared(Operation::Wait)?;
        s.lifecycle.begin_wait(s.on_loop_thread())?;
        s.wait_exit(None);
        s.join();
        s.lifecycle.finish_wait();
        match lock(&s.loop_error).take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Destroys the loop: stop + wait, then every task still scheduled or queued runs
    /// exactly once with [`TaskStatus::Canceled`], synchronously, on this thread (which is
    /// the loop's thread for the duration: `is_on_loop_thread()` is true); tasks those tasks
    /// schedule are canceled too. Then every remaining subscription is deregistered and its
    /// source dropped, and the loop's descriptors close. Schedules racing destroy are
    /// refused with the task handed back.
    ///
    /// # Errors
    /// Called from the loop thread (invalid state; nothing happens); already destroyed; or
    /// the loop thread outlived `teardown_timeout` ([`Error::LoopThreadAlive`]: nothing is
    /// closed, and the loop thread cancels the remaining tasks and closes the descriptors
    /// itself when its current task returns).
    pub fn destroy(&mut self) -> Result<(), Error> {
        let s = self.shared(Operation::Destroy)?.clone();
        let from = s.lifecycle.begin_destroy(s.on_loop_thread())?;
        if matches!(from, State::Running | State::Stopping) {
            s.wake();
        }
        let deadline = s.options.teardown_timeout.map(|t| Instant::now() + t);
        if !s.wait_exit(deadline) {
            self.shared = None;
            return Err(Error::LoopThreadAlive);
        }
        s.join();
        while s.lifecycle.producers() > 0 {
            std::thread::yield_now();
        }
        s.loop_thread.store(thread_id::current(), Ordering::Release);
        s.cancel_everything(&self.handle);
        s.release_subscriptions();
        s.loop_thread.store(0, Ordering::Release);
        let result = s.lifecycle.finish_destroy();
        // Our references are the last strong ones (handles are weak): the descriptors close
        // here, after the loop thread has exited.
        self.shared = None;
        drop(s);
        result.map_err(Error::from)
    }
}

impl std::ops::Deref for EventLoop {
    type Target = LoopHandle;

    fn deref(&self) -> &LoopHandle {
        &self.handle
    }
}

impl Drop for EventLoop {
    fn drop(&mut self) {
        let Some(s) = &self.shared else { return };
        if s.on_loop_thread() {
            // Dropped by one of its own tasks: it cannot wait for itself. Orphan it: the
            // loop stops after this task and tears itself down at exit.
            log::error!(
                "reseau: EventLoop dropped on its own thread; it will tear down after this task"
            );
            let _ = s.lifecycle.begin_destroy(false);
            lock(&s.exit).abandoned = true;
            return;
        }
        if let Err(e) = self.destroy() {
            log::error!("reseau: destroying the loop on drop failed: {e}");
        }
    }
}
