//! The loop's shared state and its thread: the tick (IO dispatch, inbox drain, due batch),
//! task execution, cancellation and teardown. [`LoopHandle`](crate::LoopHandle) and
//! [`EventLoop`](crate::EventLoop) are thin fronts over [`Shared`].

use std::os::fd::{AsFd, OwnedFd};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::Instant;

use reseau_core::{Lifecycle, LifecycleError, Operation, State, StopOutcome, TaskStatus, Wake};
use rustix::event::epoll;
use rustix::io::Errno;

use crate::clock::{Clock, timeout_ms};
use crate::error::{Error, ScheduleError, ScheduleErrorKind, When};
use crate::event_loop::EventLoopOptions;
use crate::handle::LoopHandle;
use crate::io::{IoControl, Readiness, Slab, Subscription};
use crate::load::{Load, mono_now};
use crate::queues::{Msg, MsgQueue, TaskQueue};
use crate::stats::{CachePadded, Counters};
use crate::sys::{Backend, SysError, Syscalls};
use crate::task::{self, Job, Task, TaskHandle};
use crate::thread_id;
use crate::wakeup::Wakeup;

/// The epoll data of the wakeup descriptor; IO subscriptions use slab tokens below it.
pub(crate) const WAKEUP_TOKEN: u64 = u64::MAX;

/// State only the loop's identity touches (the loop thread, or the destroying thread).
pub(crate) struct Local {
    pub(crate) sched: Box<dyn TaskQueue>,
    pub(crate) wakeup_registered: bool,
}

#[derive(Default)]
pub(crate) struct Exit {
    /// The loop thread has finished (true when none was ever started).
    pub(crate) exited: bool,
    /// Destroy gave up waiting: the loop thread must tear down on its own at exit.
    pub(crate) abandoned: bool,
}

pub(crate) struct Shared {
    pub(crate) lifecycle: CachePadded<Lifecycle>,
    pub(crate) inbox: Box<dyn MsgQueue>,
    pub(crate) local: Mutex<Local>,
    pub(crate) subs: Mutex<Slab>,
    pub(crate) pending: CachePadded<AtomicUsize>,
    /// Set (after the lifecycle transition) by a stop or destroy request, cleared by the
    /// loop thread when it exits: lets the loop check "stop?" between tasks on a line that
    /// producers do not write, confirming with the lifecycle only when it is set.
    pub(crate) stop_hint: CachePadded<AtomicBool>,
    /// Cross-thread cancels that found the inbox full, taken out by the next drain; the
    /// flag lets the loop skip the lock when there are none (the usual case).
    pub(crate) late_cancels: Mutex<Vec<Job>>,
    pub(crate) late_cancel_flag: AtomicBool,
    pub(crate) capacity: usize,
    pub(crate) epoll: OwnedFd,
    pub(crate) wakeup: Wakeup,
    pub(crate) backend: Backend,
    pub(crate) sys: Arc<dyn Syscalls>,
    pub(crate) clock: Clock,
    pub(crate) loop_thread: AtomicU64,
    pub(crate) counters: Counters,
    pub(crate) load: Load,
    pub(crate) thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    pub(crate) exit: Mutex<Exit>,
    pub(crate) exit_cv: Condvar,
    pub(crate) loop_error: Mutex<Option<Error>>,
    pub(crate) options: EventLoopOptions,
    pub(crate) weak: Weak<Shared>,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic never happens while one of these locks is held (tasks run unlocked), but a
    // poisoned lock must not turn into a second panic.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub(crate) fn destroyed_error(op: Operation) -> LifecycleError {
    LifecycleError {
        op,
        state: State::Destroyed,
        on_loop_thread: false,
        live: false,
    }
}

impl Shared {
    pub(crate) fn on_loop_thread(&self) -> bool {
        self.loop_thread.load(Ordering::Acquire) == thread_id::current()
    }

    pub(crate) fn handle(&self) -> LoopHandle {
        LoopHandle {
            shared: self.weak.clone(),
        }
    }

    pub(crate) fn reserve(&self) -> bool {
        let prev = self.pending.fetch_add(1, Ordering::AcqRel);
        if prev >= self.capacity {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        true
    }

    pub(crate) fn wake(&self) {
        if let Err(errno) = self.wakeup.wake() {
            log::error!("reseau: writing the wakeup failed: {errno}");
        }
        Counters::bump(&self.counters.producers.wakeups_written, 1);
    }

    pub(crate) fn note_push(&self, wake: Wake) {
        match wake {
            Wake::Needed => self.wake(),
            Wake::Coalesced => Counters::bump(&self.counters.producers.wakeups_coalesced, 1),
        }
    }

    pub(crate) fn schedule(&self, job: Job, when: When) -> Result<TaskHandle, ScheduleError> {
        let (deadline, serialized) = match when {
            When::Now => (None, false),
            When::NowSerialized => (None, true),
            When::At(d) => (Some(d), false),
        };
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
                        when,
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
                when,
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
                        when,
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
                    when,
                    task: Task(job),
                })
            }
        }
    }

    /// Takes a task whose cancel claim was won out of the scheduler, if it is there, and
    /// runs it canceled. A task no longer there has run already (canceled, since the claim
    /// is lost to its run) or is still in the inbox (and runs canceled when drained).
    fn take_out_canceled(&self, handle: &LoopHandle, job: &Job) {
        let Some(id) = task::get_id(job) else { return };
        let found = lock(&self.local).sched.cancel(id);
        if let Some(found) = found {
            self.execute(handle, found, TaskStatus::Canceled);
        }
    }

    pub(crate) fn cancel(&self, handle: &LoopHandle, job: &Job) {
        if job.claim().claim_cancel() != reseau_core::ClaimOutcome::Won {
            return;
        }
        if self.on_loop_thread() {
            // Bring cross-thread schedules in first, so a task still in the inbox is found.
            self.drain_inbox(handle);
            self.take_out_canceled(handle, job);
            return;
        }
        // The claim is ours: the task will run canceled whatever happens next; the message
        // makes it prompt (rather than at its deadline). Once destroy has begun, destroy
        // cancels it.
        let Ok(_guard) = self.lifecycle.enter_producer() else {
            return;
        };
        match self.inbox.push(Msg::Cancel(job.clone())) {
            Ok(wake) => self.note_push(wake),
            Err(_) => {
                // The inbox is full (the loop is behind): the rare path may allocate. The
                // next drain takes the task out; the write makes sure there is one.
                lock(&self.late_cancels).push(job.clone());
                self.late_cancel_flag.store(true, Ordering::Release);
                self.wake();
            }
        }
    }

    /// Takes out and runs canceled the tasks of cross-thread cancels that found the inbox
    /// full. A task not in the scheduler yet is still in the inbox, where its drain sees
    /// the lost claim and runs it canceled.
    fn take_late_cancels(&self, handle: &LoopHandle) {
        if !self.late_cancel_flag.swap(false, Ordering::Acquire) {
            return;
        }
        let jobs = std::mem::take(&mut *lock(&self.late_cancels));
        for job in &jobs {
            self.take_out_canceled(handle, job);
        }
    }

    pub(crate) fn stop(&self) -> Result<(), Error> {
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
        if self.lifecycle.request_stop()? == StopOutcome::Requested {
            self.stop_hint.store(true, Ordering::Release);
            if !on_loop {
                self.wake();
            }
        }
        drop(guard);
        Ok(())
    }

    /// `EPOLL_CTL_DEL` for a source about to leave; `ENOENT`/`EBADF` mean it is gone already.
    pub(crate) fn deregister(&self, entry: &dyn crate::io::Source) {
        match self.sys.epoll_del(self.epoll.as_fd(), entry.fd()) {
            Ok(()) | Err(Errno::NOENT) | Err(Errno::BADF) => {}
            Err(errno) => log::warn!(
                "reseau: epoll_ctl(DEL) failed with {errno}; dropping the subscription anyway"
            ),
        }
    }

    /// Runs the callback of the subscription behind `token`, if it is still live.
    pub(crate) fn dispatch_io(&self, handle: &LoopHandle, token: u64, readiness: Readiness) {
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

    /// Deregisters and drops every remaining subscription (closing sources it owns);
    /// returns how many.
    pub(crate) fn release_subscriptions(&self) -> usize {
        let entries = lock(&self.subs).drain();
        let released = entries.len();
        for entry in entries {
            self.deregister(&*entry);
        }
        released
    }

    /// The end of destroy, on the loop's identity: cancels every task and releases every
    /// subscription, repeating until both are gone — dropping a subscription's source or
    /// callback may schedule a task (which must be canceled, not lost), and a canceled task
    /// may subscribe.
    pub(crate) fn cancel_and_release_everything(&self, handle: &LoopHandle) {
        loop {
            self.cancel_everything(handle);
            if self.release_subscriptions() == 0 {
                break;
            }
        }
    }

    /// Runs a task taken out of the queues, exactly once, counting it, catching a panic, and
    /// releasing its reservation.
    pub(crate) fn execute(&self, handle: &LoopHandle, job: Job, status: TaskStatus) {
        self.release(1);
        self.run_job(handle, job, status);
    }

    /// Gives `n` task reservations back to producers.
    pub(crate) fn release(&self, n: usize) {
        if n > 0 {
            self.pending.fetch_sub(n, Ordering::AcqRel);
        }
    }

    /// Runs a task, counting it and catching a panic; its reservation is the caller's.
    pub(crate) fn run_job(&self, handle: &LoopHandle, job: Job, status: TaskStatus) {
        match status {
            TaskStatus::RunReady => Counters::bump(&self.counters.tasks_run, 1),
            TaskStatus::Canceled => Counters::bump(&self.counters.tasks_canceled, 1),
        }
        if catch_unwind(AssertUnwindSafe(|| job.run(handle, status))).is_err() {
            Counters::bump(&self.counters.panics_caught, 1);
            log::error!("reseau: a task panicked (status {status:?}); the loop goes on");
        }
    }

    /// Whether the loop should stop before its next task: the cheap hint first, the
    /// lifecycle only when the hint is set.
    fn stop_requested(&self) -> bool {
        self.stop_hint.load(Ordering::Acquire) && !self.lifecycle.should_run()
    }

    /// Moves every queued cross-thread message into the scheduler (or executes it).
    pub(crate) fn drain_inbox(&self, handle: &LoopHandle) {
        while let Some(msg) = self.inbox.pop() {
            let (job, deadline) = match msg {
                Msg::Now(job) => (job, None),
                Msg::At(job, d) => (job, Some(d)),
                Msg::Cancel(job) => {
                    self.take_out_canceled(handle, &job);
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
        self.take_late_cancels(handle);
    }

    /// The loop thread's ticks, until stopped or an `epoll_wait` error.
    pub(crate) fn run_loop(&self, handle: &LoopHandle) -> Result<(), Error> {
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
            self.load.tick_start(tick_start);
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
            // Reservations go back in bulk: one contended `fetch_sub` per 64 tasks rather
            // than per task (a producer may meanwhile see the loop full a little early).
            let mut ran = 0;
            while !self.stop_requested() {
                let job = lock(&self.local).sched.pop_due(&batch);
                let Some(job) = job else { break };
                let status = task::due_status(&job);
                self.run_job(handle, job, status);
                ran += 1;
                if ran == 64 {
                    self.release(ran);
                    ran = 0;
                }
            }
            self.release(ran);
            self.load.tick(tick_start, mono_now());
        }
        Ok(())
    }

    /// Cancels every remaining task, scheduler first, then inbox, until both are empty.
    /// Called by the loop's identity only.
    pub(crate) fn cancel_everything(&self, handle: &LoopHandle) {
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
                    Msg::Cancel(job) => self.take_out_canceled(handle, &job),
                }
            }
            self.take_late_cancels(handle);
            if !any {
                break;
            }
        }
    }

    pub(crate) fn thread_main(self: Arc<Self>) {
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
        // The stop (if any) has been seen; the next run starts without it.
        self.stop_hint.store(false, Ordering::Release);
        let mut exit = lock(&self.exit);
        if exit.abandoned {
            drop(exit);
            // Destroy gave up waiting for us: cancel on the loop's behalf and finish the
            // teardown here; the descriptors close when this thread drops the last `Arc`.
            self.cancel_and_release_everything(&handle);
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
    pub(crate) fn wait_exit(&self, deadline: Option<Instant>) -> bool {
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

    pub(crate) fn join(&self) {
        let handle = lock(&self.thread).take();
        if let Some(h) = handle
            && h.join().is_err()
        {
            log::error!("reseau: the loop thread panicked outside a task");
        }
    }
}
