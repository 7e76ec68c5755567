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

use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use reseau_core::{Lifecycle, Operation, State};
use rustix::event::epoll;

use crate::clock::Clock;
use crate::error::Error;
pub(crate) use crate::handle::LoopHandle;
use crate::io::Slab;
use crate::load::Load;
use crate::queues;
use crate::shared::{Exit, Local, Shared, WAKEUP_TOKEN, destroyed_error, lock};
use crate::stats::{CachePadded, Counters};
use crate::sys::{self, Backend, RealSyscalls, SysError, Syscalls};
use crate::thread_id;
use crate::wakeup::Wakeup;

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
    /// The loop thread's stack size in bytes (default: the standard library's, 2 MiB
    /// unless `RUST_MIN_STACK` says otherwise). Tasks and IO callbacks run on this stack.
    /// If the thread cannot be created with it, [`EventLoop::run`] returns
    /// [`Error::Spawn`] and the loop stays ready.
    pub stack_size: Option<usize>,
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
            .finish_non_exhaustive()
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
            lifecycle: CachePadded(Lifecycle::new()),
            inbox,
            local: Mutex::new(Local {
                sched,
                wakeup_registered: false,
            }),
            subs: Mutex::new(Slab::new()),
            pending: CachePadded(AtomicUsize::new(0)),
            stop_hint: CachePadded(AtomicBool::new(false)),
            late_cancels: Mutex::new(Vec::new()),
            late_cancel_flag: AtomicBool::new(false),
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
        let mut builder = std::thread::Builder::new().name(s.options.thread_name.clone());
        if let Some(size) = s.options.stack_size {
            builder = builder.stack_size(size);
        }
        match builder.spawn(move || runner.thread_main()) {
            Ok(h) => {
                *thread = Some(h);
                Ok(())
            }
            Err(e) => {
                lock(&s.exit).exited = true;
                s.lifecycle.run_failed();
                Err(Error::Spawn(e))
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
    /// exactly once with [`TaskStatus::Canceled`](crate::TaskStatus::Canceled), synchronously, on this thread (which is
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
        s.stop_hint.store(true, Ordering::Release);
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
        s.cancel_and_release_everything(&self.handle);
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
            s.stop_hint.store(true, Ordering::Release);
            lock(&s.exit).abandoned = true;
            return;
        }
        if let Err(e) = self.destroy() {
            log::error!("reseau: destroying the loop on drop failed: {e}");
        }
    }
}
