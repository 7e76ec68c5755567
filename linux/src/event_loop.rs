//! The event loop: reseau-core's engine over epoll, driven by a dedicated thread
//! ([`EventLoop::run`]) or by the caller ([`EventLoop::turn`], [`EventLoop::run_here`]).
//!
//! # The path of a task
//! [`LoopHandle::schedule_now`] on another thread stores the closure inline in a free slot
//! of the engine and pushes the slot's index into the engine's inbox ring, whose wake
//! protocol says whether to write the eventfd. The loop's driver wakes from `epoll_wait`
//! ([`LinuxPlatform::poll`](crate::platform)), drains the inbox into the engine's
//! scheduler, and runs the due batch. One tick:
//! 1. IO dispatch (the wakeup, and each subscription's callback);
//! 2. inbox drain (cross-thread schedules and cancels, in the order they linearized);
//! 3. the due batch: ASAP tasks, then due timed tasks in `(deadline, submission)` order;
//!    a task scheduled during the batch waits for the next tick.
//!
//! # Lifecycle
//! The engine decides (its [`Lifecycle`](reseau_core::Lifecycle) word) and publishes the
//! driver's exit on every path; this module spawns and joins the named thread and releases
//! the descriptors once no thread uses them.

use std::os::fd::{AsFd, BorrowedFd};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reseau_core::{DestroyError, DriveError, Operation, StartError, State};

use crate::clock::Clock;
use crate::error::Error;
pub(crate) use crate::handle::LoopHandle;
use crate::panics::PanicPolicy;
use crate::platform::{LinuxPlatform, lock};
use crate::shared::{Shared, alloc_slots, destroyed_error, next_loop_id};
use crate::sys::{self, Backend, RealSyscalls, Syscalls};
use crate::wakeup::Wakeup;

/// The largest [`EventLoopOptions::capacity`]: 2^24 pending tasks (16,777,216).
pub const MAX_CAPACITY: usize = 1 << 24;

/// How to build an [`EventLoop`].
#[derive(Clone)]
pub struct EventLoopOptions {
    /// The loop thread's name (default `reseau-el`).
    pub thread_name: String,
    /// How many tasks may be pending at once, scheduled or queued cross-thread: any value
    /// from 1 to [`MAX_CAPACITY`] (default 4096). The slots are one zeroed allocation made
    /// by [`EventLoop::new`], about 160 bytes each (see the crate docs); a slot's pages are
    /// touched only when it is first used. Nothing grows afterwards.
    pub capacity: usize,
    /// Where the loop reads the time (default `CLOCK_MONOTONIC`).
    pub clock: Clock,
    /// The syscall seam (default the kernel); tests inject faults through it.
    pub syscalls: Arc<dyn Syscalls>,
    /// How long destroy waits for the loop thread to exit before giving up and reporting
    /// [`Error::LoopThreadAlive`] (default: no limit, like a join). A duration too long to
    /// represent (`Duration::MAX`) means no limit.
    pub teardown_timeout: Option<Duration>,
    /// The `epoll_wait` buffer's initial size (default 16, at least 1, at most
    /// `max_events`); it doubles each time a wait fills it, up to `max_events`.
    pub initial_events: usize,
    /// The largest `epoll_wait` buffer (default 1024, at most 65,536 events).
    pub max_events: usize,
    /// Pins the loop thread to this CPU with `sched_setaffinity` (default: not pinned).
    pub cpu: Option<usize>,
    /// The loop thread's stack size in bytes (default: the standard library's, 2 MiB
    /// unless `RUST_MIN_STACK` says otherwise). Tasks and IO callbacks run on this stack.
    /// If the thread cannot be created with it, [`EventLoop::run`] returns
    /// [`Error::Spawn`] and the loop stays ready.
    pub stack_size: Option<usize>,
    /// What the loop does after user code panics (default [`PanicPolicy::Catch`]: log,
    /// count, go on; see [`PanicPolicy`]).
    pub on_panic: PanicPolicy,
    /// The loop thread's timer slack (`PR_SET_TIMERSLACK`), set when the thread starts
    /// (default 1 µs; `None` keeps the slack it inherits, 50 µs unless its creator changed
    /// it). The kernel may defer a thread's timed sleep by up to its slack to batch wakeups;
    /// that applies to the `epoll_pwait2` and `epoll_wait` timeouts, not to a timerfd's
    /// expiry. With the default 50 µs, an `epoll_pwait2` deadline fired a median 80–95 µs
    /// late against a timerfd's 37 µs (README "Timers"); at 1 µs the precise rung is as
    /// punctual as the timerfd without its extra descriptor and syscall per timed wait.
    /// The cost is fewer coalesced wakeups on the loop thread, only when it waits for a
    /// deadline. Not applied to a caller-driven loop ([`EventLoop::turn`]): that thread is
    /// the caller's.
    pub timer_slack: Option<Duration>,
    /// Spin before parking (default `None`: off): when the driver has nothing to do and
    /// would block, it first spins for up to this long — polling epoll without blocking
    /// and watching a flag that a cross-thread schedule sets instead of writing the wakeup
    /// — and blocks only if nothing came. A task bounced between two loops then never
    /// pays a thread's sleep and wake-up, and a producer's wake costs no syscall
    /// ([`Stats::wakeups_spun`](crate::Stats::wakeups_spun) counts them). The cost is CPU:
    /// an idle loop burns up to this long of one core after every burst of work, every
    /// time it goes idle (a loop idle for good spins once, then blocks). Never spins past
    /// the next deadline. A few tens of µs covers a round trip between loops.
    pub spin_before_park: Option<Duration>,
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
            stack_size: None,
            on_panic: PanicPolicy::Catch,
            timer_slack: Some(Duration::from_micros(1)),
            spin_before_park: None,
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
            .field("stack_size", &self.stack_size)
            .field("on_panic", &self.on_panic)
            .field("timer_slack", &self.timer_slack)
            .field("spin_before_park", &self.spin_before_park)
            .finish_non_exhaustive()
    }
}

impl EventLoopOptions {
    /// These options with [`on_panic`](Self::on_panic) set to `policy`.
    pub fn on_panic(mut self, policy: PanicPolicy) -> Self {
        self.on_panic = policy;
        self
    }
}

/// The largest [`EventLoopOptions::max_events`].
const MAX_EVENTS: usize = 1 << 16;

/// An epoll event loop. Dropping it destroys it.
///
/// Driven by its own thread ([`run`](Self::run)) or by the caller ([`turn`](Self::turn),
/// [`run_here`](Self::run_here)) — the same engine and the same tick either way. Its
/// epoll descriptor is exposed ([`AsFd`]) so the loop can be nested in another poller.
///
/// ```
/// use reseau_linux::{EventLoop, EventLoopOptions, TaskStatus};
/// use std::time::Duration;
///
/// let mut el = EventLoop::new(EventLoopOptions::default())?;
/// // Caller-driven: schedule, then turn the loop on this thread.
/// let (tx, rx) = std::sync::mpsc::channel();
/// el.schedule_now(move |h, status| {
///     assert!(h.is_on_loop_thread());
///     tx.send(status).unwrap();
/// })?;
/// while rx.try_recv().is_err() {
///     el.turn(Some(Duration::from_millis(10)))?;
/// }
/// // Or on its own thread.
/// el.run()?;
/// el.stop()?;
/// el.wait_for_stop_completion()?;
/// el.destroy()?;
/// # Ok::<(), reseau_linux::Error>(())
/// ```
pub struct EventLoop {
    shared: Option<Arc<Shared>>,
    handle: LoopHandle,
}

impl std::fmt::Debug for EventLoop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("EventLoop");
        if let Some(s) = &self.shared {
            d.field("id", &s.engine.id())
                .field("state", &s.engine.state())
                .field("backend", &s.platform().backend);
        } else {
            d.field("state", &State::Destroyed);
        }
        d.finish()
    }
}

/// A `Duration` in whole nanoseconds, saturating (`Duration::MAX` is "no limit" in practice).
fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn drive_error(e: DriveError<Error>) -> Error {
    match e {
        DriveError::Lifecycle(e) => Error::InvalidState(e),
        DriveError::Platform(e) => e,
        DriveError::Panicked => Error::Panicked("the loop panicked outside a task".into()),
        DriveError::NotStarted => Error::InvalidState(destroyed_error(Operation::Run)),
    }
}

impl EventLoop {
    /// Creates a loop: its epoll descriptor, its wakeup and its task slots. The loop does
    /// not run until [`run`](Self::run) (or [`turn`](Self::turn)).
    ///
    /// ```
    /// use reseau_linux::{EventLoop, EventLoopOptions};
    ///
    /// let el = EventLoop::new(EventLoopOptions { capacity: 1 << 20, ..Default::default() })?;
    /// assert_eq!(el.capacity(), 1 << 20);
    /// println!("descriptors from {}", el.backend().unwrap());
    /// # Ok::<(), reseau_linux::Error>(())
    /// ```
    ///
    /// # Errors
    /// A descriptor could not be created (names the call and errno; nothing is leaked), the
    /// slots could not be allocated, or an option is out of range (`capacity` 0 or above
    /// [`MAX_CAPACITY`], `max_events` above 65,536, a `cpu` beyond the CPU set, a thread
    /// name with a NUL byte).
    pub fn new(options: EventLoopOptions) -> Result<Self, Error> {
        if options.capacity == 0 {
            return Err(Error::InvalidOption("capacity must be at least 1"));
        }
        if options.capacity > MAX_CAPACITY {
            return Err(Error::InvalidOption("capacity exceeds MAX_CAPACITY (2^24)"));
        }
        if options.max_events > MAX_EVENTS {
            return Err(Error::InvalidOption("max_events exceeds 65536"));
        }
        if options
            .cpu
            .is_some_and(|cpu| cpu >= rustix::thread::CpuSet::MAX_CPU)
        {
            return Err(Error::InvalidOption("cpu beyond the CPU set size"));
        }
        if options.thread_name.contains('\0') {
            return Err(Error::InvalidOption("thread name contains a NUL byte"));
        }
        let fork_generation = crate::fork::register();
        let slots = alloc_slots(options.capacity)?;
        let sys = options.syscalls.clone();
        let (epoll, epoll_backend) = sys::create_epoll(&*sys)?;
        let (wakeup_fds, wakeup_backend) = sys::create_wakeup(&*sys)?;
        let boottime = matches!(options.clock, Clock::Boottime);
        let (timer, timer_backend) = sys::create_timer(&*sys, epoll.as_fd(), boottime)?;
        let backend = Backend {
            epoll: epoll_backend,
            wakeup: wakeup_backend,
            timer: timer_backend,
        };
        let id = next_loop_id();
        crate::log_at!(info, "reseau: loop {id} created: {backend}");
        let platform =
            LinuxPlatform::new(epoll, Wakeup::new(wakeup_fds), timer, backend, id, &options);
        let engine = reseau_core::Engine::new(platform, slots, id)
            .map_err(|_| Error::InvalidOption("capacity out of range"))?;
        let shared = Arc::new_cyclic(|weak| Shared {
            engine,
            thread: Mutex::new(None),
            options,
            weak: weak.clone(),
            fork_generation,
        });
        let handle = shared.handle();
        Ok(Self {
            shared: Some(shared),
            handle,
        })
    }

    fn shared(&self, op: Operation) -> Result<&Arc<Shared>, Error> {
        match &self.shared {
            Some(s) if s.inherited() => Err(Error::Forked(op)),
            Some(s) => Ok(s),
            None => Err(Error::InvalidState(destroyed_error(op))),
        }
    }

    /// In a forked child: lets go of the loop without touching the kernel objects it
    /// shares with the parent. The pending tasks are dropped unrun and the subscriptions'
    /// sources closed (closing a descriptor copy leaves the parent's registrations alone)
    /// once the last reference goes — unless the loop was running when the process forked:
    /// the loop thread's reference then stays, since that thread does not exist here, and
    /// the memory is the child's until it exits or execs.
    fn release_after_fork(&mut self) {
        let Some(s) = self.shared.take() else { return };
        // The loop thread does not exist in the child: never join it (detaching a copy of
        // a parent thread's handle is not meaningful either). The lock may have been held
        // by a parent thread at the fork, so only try it.
        if let Ok(mut thread) = s.thread.try_lock() {
            std::mem::forget(thread.take());
        }
        drop(s);
    }

    /// A handle that schedules on this loop from any thread.
    pub fn handle(&self) -> LoopHandle {
        self.handle.clone()
    }

    /// Which calls created the descriptors (the preferred ones, or which fallback), and
    /// how deadlines are waited for ([`Backend::timer`]).
    pub fn backend(&self) -> Option<Backend> {
        self.shared.as_ref().map(|s| s.platform().backend)
    }

    /// The loop's descriptors, named (`epoll`, `eventfd`, `pipe read`, `pipe write`, and
    /// `timerfd` when the [`TimerBackend`](sys::TimerBackend) uses one), for
    /// inspection such as close-on-exec checks. Empty once destroyed.
    pub fn descriptors(&self) -> Vec<(&'static str, BorrowedFd<'_>)> {
        let Some(s) = &self.shared else {
            return Vec::new();
        };
        let p = s.platform();
        let mut v = vec![("epoll", p.epoll.as_fd())];
        let names: &[&'static str] = match p.backend.wakeup {
            sys::WakeupBackend::EventFd => &["eventfd"],
            _ => &["pipe read", "pipe write"],
        };
        v.extend(names.iter().copied().zip(p.wakeup.fds()));
        if let Some(timer) = &p.timer {
            v.push(("timerfd", timer.as_fd()));
        }
        v
    }

    /// The loop's current lifecycle state.
    pub fn state(&self) -> State {
        self.shared
            .as_ref()
            .map_or(State::Destroyed, |s| s.engine.state())
    }

    /// How many tasks the loop can hold pending.
    pub fn capacity(&self) -> usize {
        self.shared.as_ref().map_or(0, |s| s.engine.capacity())
    }

    /// How many task slots are in use now: pending tasks (a snapshot).
    pub fn pending(&self) -> usize {
        self.shared.as_ref().map_or(0, |s| s.engine.pending())
    }

    /// Starts the loop thread.
    ///
    /// ```
    /// use reseau_linux::{EventLoop, EventLoopOptions};
    ///
    /// let mut el = EventLoop::new(EventLoopOptions::default())?;
    /// el.run()?;
    /// assert!(el.run().is_err(), "already running");
    /// el.stop()?;
    /// el.wait_for_stop_completion()?;
    /// el.run()?; // a stopped and waited-for loop runs again
    /// el.destroy()?;
    /// # Ok::<(), reseau_linux::Error>(())
    /// ```
    ///
    /// # Errors
    /// The loop is running, stopping, stopped and not yet waited for, or destroyed
    /// (invalid state); the wakeup could not be registered with epoll; the thread could not
    /// be spawned. On error the loop stays ready to run.
    pub fn run(&self) -> Result<(), Error> {
        let s = self.shared(Operation::Run)?;
        s.platform().register_wakeup()?;
        let spawn = || {
            let mut thread = lock(&s.thread);
            // The previous run's thread has published its exit (the lifecycle let this run
            // begin): joining it is quick, and leaves no thread behind.
            if let Some(old) = thread.take() {
                let _ = old.join();
            }
            let runner = s.clone();
            let mut builder = std::thread::Builder::new().name(s.options.thread_name.clone());
            if let Some(size) = s.options.stack_size {
                builder = builder.stack_size(size);
            }
            *thread = Some(builder.spawn(move || thread_main(runner))?);
            Ok::<(), std::io::Error>(())
        };
        s.engine.start(spawn).map_err(|e| match e {
            StartError::Lifecycle(e) => Error::InvalidState(e),
            StartError::Spawn(e) => Error::Spawn(e),
        })
    }

    /// Runs one tick on the calling thread: waits at most `timeout` (`None`: until an
    /// event or a wakeup), dispatches IO, drains the inbox and runs what is due — the same
    /// tick the loop thread runs. The calling thread is the loop thread meanwhile
    /// (`is_on_loop_thread()` is true in tasks and callbacks).
    ///
    /// Returns how long the caller may wait before the next turn is needed (the next
    /// deadline; `Some(ZERO)` when work is already waiting; `None` when nothing is
    /// scheduled): pass it to an outer poller that watches this loop's descriptor
    /// ([`AsFd`]), which becomes readable whenever a task is queued from another thread or
    /// a subscribed source is ready.
    ///
    /// Tasks must be `Send` in this mode too: a slot may be drained by whichever thread
    /// drives or destroys the loop, so a `!Send` task could not be made sound.
    ///
    /// ```
    /// use reseau_linux::{EventLoop, EventLoopOptions};
    /// use std::time::Duration;
    ///
    /// let el = EventLoop::new(EventLoopOptions::default())?;
    /// let h = el.handle();
    /// let (tx, rx) = std::sync::mpsc::channel();
    /// h.schedule_at(h.now() + 1_000_000, move |_, _| tx.send(()).unwrap())?;
    /// // An outer poller would wait on `el.as_fd()` for at most `next`.
    /// let mut next = el.turn(Some(Duration::ZERO))?;
    /// assert!(next.is_some_and(|d| d <= Duration::from_millis(1)));
    /// while rx.try_recv().is_err() {
    ///     next = el.turn(next)?;
    /// }
    /// assert_eq!(next, None, "nothing left to wait for");
    /// # Ok::<(), reseau_linux::Error>(())
    /// ```
    ///
    /// # Errors
    /// The loop runs on its own thread, or is destroyed (invalid state); `epoll_wait`
    /// failed; the clock or the platform panicked.
    pub fn turn(&self, timeout: Option<Duration>) -> Result<Option<Duration>, Error> {
        let s = self.shared(Operation::Run)?;
        s.platform().register_wakeup()?;
        s.engine
            .turn(&self.handle, timeout.map(nanos))
            .map(|next| next.map(Duration::from_nanos))
            .map_err(drive_error)
    }

    /// Runs the loop on the calling thread until [`stop`](LoopHandle::stop) is called (by
    /// a task, a callback, or another thread); the loop is then ready to run again. The
    /// same tick as [`run`](Self::run)'s thread, without the thread.
    ///
    /// # Errors
    /// As [`turn`](Self::turn).
    pub fn run_here(&self) -> Result<(), Error> {
        let s = self.shared(Operation::Run)?;
        s.platform().register_wakeup()?;
        s.engine.run_here(&self.handle).map_err(drive_error)
    }

    /// See [`LoopHandle::stop`].
    ///
    /// # Errors
    /// Once the loop is destroyed.
    pub fn stop(&self) -> Result<(), Error> {
        Ok(self.shared(Operation::Stop)?.engine.stop()?)
    }

    /// Blocks until the loop thread has exited (after a [`stop`](Self::stop), or on its
    /// own after an `epoll_wait` error), then makes the loop ready to run again. Returns at
    /// once if the loop is not running.
    ///
    /// # Errors
    /// Called from the loop thread (it would wait for itself: invalid state, never a
    /// deadlock); the loop is destroyed; or the loop stopped on its own (`epoll_wait`
    /// failed, or something outside a task panicked: that error, reported once).
    pub fn wait_for_stop_completion(&self) -> Result<(), Error> {
        let s = self.shared(Operation::Wait)?;
        s.engine.wait()?;
        {
            let mut thread = lock(&s.thread);
            if !s.engine.lifecycle().is_live()
                && let Some(h) = thread.take()
            {
                let _ = h.join();
            }
        }
        match lock(&s.platform().loop_error).take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Destroys the loop: stop + wait, then every task still scheduled or queued runs
    /// exactly once with [`TaskStatus::Canceled`](crate::TaskStatus::Canceled),
    /// synchronously, on this thread (which is the loop's thread for the duration:
    /// `is_on_loop_thread()` is true); tasks those tasks schedule are canceled too. Then
    /// every remaining subscription is deregistered and its source dropped, and the loop's
    /// descriptors close. Schedules racing destroy are refused with the task handed back.
    ///
    /// # Errors
    /// Called from the loop thread (invalid state; nothing happens); already destroyed; or
    /// the loop thread outlived `teardown_timeout` ([`Error::LoopThreadAlive`]: nothing is
    /// closed, and the loop thread cancels the remaining tasks and closes the descriptors
    /// itself when its current task returns).
    pub fn destroy(&mut self) -> Result<(), Error> {
        if self.shared.as_ref().is_some_and(|s| s.inherited()) {
            self.release_after_fork();
            return Ok(());
        }
        let s = self.shared(Operation::Destroy)?.clone();
        let timeout = s.options.teardown_timeout.map(nanos);
        match s.engine.destroy(&self.handle, timeout) {
            Ok(()) => {}
            Err(DestroyError::Abandoned) => {
                self.shared = None;
                return Err(Error::LoopThreadAlive);
            }
            Err(DestroyError::Lifecycle(e)) => return Err(Error::InvalidState(e)),
        }
        let thread = lock(&s.thread).take();
        if let Some(h) = thread {
            let _ = h.join();
        }
        // Ours are the last strong references (handles are weak, the thread is joined):
        // the descriptors close here.
        self.shared = None;
        drop(s);
        Ok(())
    }
}

/// The loop thread: pins itself if asked, then drives the engine until it stops. The
/// engine publishes the exit whatever happens (a poll error or a panic is kept for
/// `wait_for_stop_completion` by the platform, before the exit is published).
fn thread_main(shared: Arc<Shared>) {
    if let Some(cpu) = shared.options.cpu {
        let mut set = rustix::thread::CpuSet::new();
        set.set(cpu);
        if let Err(e) = rustix::thread::sched_setaffinity(None, &set) {
            crate::log_at!(
                warn,
                "reseau: pinning the loop thread to CPU {cpu} failed: {e}"
            );
        }
    }
    if let Some(slack) = shared.options.timer_slack {
        // At least 1 ns: 0 would mean "reset to the default slack" to the kernel.
        let ns = u64::try_from(slack.as_nanos()).unwrap_or(u64::MAX).max(1);
        if let Err(e) = rustix::thread::set_current_timer_slack(std::num::NonZeroU64::new(ns)) {
            crate::log_at!(
                warn,
                "reseau: setting the loop thread's timer slack to {ns} ns failed: {e}"
            );
        }
    }
    crate::log_at!(debug, "reseau: loop thread started");
    let handle = shared.handle();
    let _ = shared.engine.drive(&handle);
}

impl AsFd for EventLoop {
    /// The loop's epoll descriptor: readable when a subscribed source is ready or a task
    /// was queued from another thread. Register it in another poller to nest the loop, and
    /// call [`turn`](EventLoop::turn) when it fires.
    ///
    /// # Panics
    /// After [`destroy`](EventLoop::destroy) (there is no descriptor any more).
    fn as_fd(&self) -> BorrowedFd<'_> {
        match &self.shared {
            Some(s) => s.platform().epoll.as_fd(),
            None => panic!("EventLoop::as_fd after destroy: the loop has no descriptor"),
        }
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
        if s.inherited() {
            self.release_after_fork();
            return;
        }
        if s.engine.is_driver() {
            // Dropped by one of its own tasks: it cannot wait for itself. Orphan it: the
            // loop stops after this task and tears itself down at exit.
            if s.engine.abandon_from_loop_thread() {
                crate::log_at!(
                    error,
                    "reseau: EventLoop dropped on its own thread; it will tear down after this task"
                );
            }
            return;
        }
        if let Err(e) = self.destroy() {
            crate::log_at!(error, "reseau: destroying the loop on drop failed: {e}");
        }
    }
}
