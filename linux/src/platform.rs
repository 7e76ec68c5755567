//! The Linux platform under reseau-core's engine: epoll, the wakeup, IO dispatch, the
//! clock, panic guards and the blocking waits of `wait` and `destroy`.
//!
//! Everything here is a syscall, a thread primitive or a guard around user code; every
//! decision (what runs when, which lifecycle transition is legal) is the engine's.

use std::os::fd::{AsFd, OwnedFd};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU8, AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use reseau_core::{Platform, TaskStatus};
use rustix::event::epoll;
use rustix::io::Errno;

use crate::clock::{Clock, boot_now, mono_now, wait_ms};
use crate::error::Error;
use crate::event_loop::EventLoopOptions;
use crate::futures::LoopFutures;
use crate::handle::LoopHandle;
use crate::io::{Found, Interest, IoControl, Readiness, Slab, Source, Subscription};
use crate::load::Load;
use crate::stats::{CachePadded, Counters};
use crate::sys::{Backend, SysError, Syscalls, TimerBackend};
use crate::thread_id;
use crate::wakeup::Wakeup;

/// The epoll data of the wakeup descriptor; IO subscriptions use slab tokens below it.
pub(crate) const WAKEUP_TOKEN: u64 = u64::MAX;
/// The epoll data of the timerfd, when the loop waits with one.
pub(crate) const TIMER_TOKEN: u64 = u64::MAX - 1;

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // User code never runs while one of these locks is held, but a poisoned lock must not
    // turn into a second panic.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The text of a caught panic's payload.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> &str {
    if let Some(s) = payload.downcast_ref::<&'static str>() {
        s
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s
    } else {
        "(a non-string panic payload)"
    }
}

/// The `epoll_wait` buffer: touched only inside [`Platform::poll`], which is the driver's
/// alone — the engine calls it from its tick, and one thread at a time drives (its
/// lifecycle admits one `run`/`turn` at a time and refuses one begun from inside a tick, so
/// no callback that `poll` runs can reach `poll` again). A cell, not a mutex: a mutex cost
/// two locked instructions per wait for an exclusion the engine already guarantees.
struct Events(std::cell::UnsafeCell<Vec<epoll::Event>>);

// SAFETY: an `epoll::Event`'s data is a union that may hold a pointer, which makes it
// `!Send`; reseau only ever stores and reads plain `u64` tokens in it, never a pointer.
unsafe impl Send for Events {}
// SAFETY: the vector is reached only through `Events::driver`, whose callers are on the
// driver (see the type's docs): never two threads at once, never re-entered.
unsafe impl Sync for Events {}

impl Events {
    /// The buffer.
    ///
    /// # Safety
    /// Only from [`Platform::poll`] (the driver), and not while another borrow from this
    /// method lives.
    #[allow(clippy::mut_from_ref)]
    unsafe fn driver(&self) -> &mut Vec<epoll::Event> {
        // SAFETY: the caller is the driver, the cell's only user (see above).
        unsafe { &mut *self.0.get() }
    }
}

/// Which of the loop's own descriptors are in its epoll set.
#[derive(Default)]
pub(crate) struct Registered {
    wakeup: bool,
    timer: bool,
}

/// The Linux platform of one loop.
pub(crate) struct LinuxPlatform {
    pub(crate) epoll: OwnedFd,
    pub(crate) wakeup: Wakeup,
    /// The timerfd of the `Timerfd`/`TimerfdBoottime` backends.
    pub(crate) timer: Option<OwnedFd>,
    /// Whether the timerfd is armed (the driver's alone).
    timer_armed: std::sync::atomic::AtomicBool,
    pub(crate) backend: Backend,
    pub(crate) sys: std::sync::Arc<dyn Syscalls>,
    pub(crate) clock: Clock,
    pub(crate) subs: Mutex<Slab>,
    pub(crate) wakeup_registered: Mutex<Registered>,
    /// The `epoll_wait` buffer (the driver's alone).
    events: Events,
    max_events: usize,
    pub(crate) counters: Counters,
    pub(crate) load: Load,
    /// The error that stopped the loop on its own (an `epoll_wait` failure, a panic outside
    /// the tasks), kept for `wait_for_stop_completion`. Stored before the exit is published.
    pub(crate) loop_error: Mutex<Option<Error>>,
    /// Bumped by [`notify`](Platform::notify); [`block_until`](Platform::block_until)
    /// sleeps on it with a futex.
    exit_epoch: AtomicU32,
    /// The loop's spawned futures and their overflow list (see [`crate::futures`]).
    pub(crate) futures: LoopFutures,
    /// What [`guard`](Self::guard) does after a caught panic.
    on_panic: crate::panics::PanicPolicy,
    /// `EventLoopOptions::spin_before_park`, in ns (0: off).
    spin_ns: u64,
    /// The spin-before-park handshake with producers: `IDLE`, `SPINNING` (the driver is
    /// spinning instead of blocking), `WOKEN` (a producer's wake landed during the spin).
    spinning: CachePadded<AtomicU8>,
    /// The monotonic time read when the last wait returned, kept for the engine's next
    /// [`Platform::now`] (its batch bound, read right after `poll`) so a tick reads the
    /// clock once there, not twice; 0 when taken or not on the monotonic clock. The
    /// driver's alone. It is at most the true time, so a batch never runs early; a timer
    /// that came due during the IO callbacks runs in the next tick, which does not wait.
    after_wait: std::sync::atomic::AtomicU64,
}

const IDLE: u8 = 0;
const SPINNING: u8 = 1;
const WOKEN: u8 = 2;

impl LinuxPlatform {
    /// The platform of the loop `loop_id`, over its descriptors; the clock, the syscall
    /// seam and the event buffer's sizes come from `options` (checked by the caller).
    pub(crate) fn new(
        epoll: OwnedFd,
        wakeup: Wakeup,
        timer: Option<OwnedFd>,
        backend: Backend,
        loop_id: u64,
        options: &EventLoopOptions,
    ) -> Self {
        let max_events = options.max_events.max(1);
        let initial_events = options.initial_events.clamp(1, max_events);
        Self {
            epoll,
            wakeup,
            timer,
            timer_armed: std::sync::atomic::AtomicBool::new(false),
            backend,
            sys: options.syscalls.clone(),
            clock: options.clock.clone(),
            subs: Mutex::new(Slab::new(loop_id)),
            wakeup_registered: Mutex::new(Registered::default()),
            events: Events(std::cell::UnsafeCell::new(Vec::with_capacity(
                initial_events,
            ))),
            max_events,
            counters: Counters::default(),
            load: Load::default(),
            loop_error: Mutex::new(None),
            exit_epoch: AtomicU32::new(0),
            futures: LoopFutures::default(),
            on_panic: options.on_panic,
            spin_ns: options
                .spin_before_park
                .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)),
            spinning: CachePadded(AtomicU8::new(IDLE)),
            after_wait: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Registers the wakeup (and the timerfd, when the loop has one) with epoll, once per
    /// loop. Each registration is recorded as it succeeds: after a failure, the next call
    /// (the next `run`) adds only what is still missing, never the wakeup twice (`EEXIST`).
    pub(crate) fn register_wakeup(&self) -> Result<(), Error> {
        let mut registered = lock(&self.wakeup_registered);
        let flags = epoll::EventFlags::IN | epoll::EventFlags::ET;
        if !registered.wakeup {
            self.sys
                .epoll_add(
                    self.epoll.as_fd(),
                    self.wakeup.read_fd(),
                    WAKEUP_TOKEN,
                    flags,
                )
                .map_err(|errno| {
                    Error::Sys(SysError {
                        call: "epoll_ctl(ADD wakeup)",
                        errno,
                    })
                })?;
            registered.wakeup = true;
        }
        if let Some(timer) = &self.timer
            && !registered.timer
        {
            self.sys
                .epoll_add(self.epoll.as_fd(), timer.as_fd(), TIMER_TOKEN, flags)
                .map_err(|errno| {
                    Error::Sys(SysError {
                        call: "epoll_ctl(ADD timerfd)",
                        errno,
                    })
                })?;
            registered.timer = true;
        }
        Ok(())
    }

    /// [`wait`](Self::wait), after spinning for up to `spin_ns` (never past `timeout`)
    /// when the wait would block: the spin polls epoll without blocking (IO readiness, and
    /// a wakeup written before it began) and watches the `spinning` flag, which a producer's
    /// [`wake`](Platform::wake) turns to `WOKEN` instead of writing the wakeup. A wake that
    /// lands after the spin ends finds `IDLE` and writes the wakeup as usual, so none is
    /// lost: the flag's last transition is either the driver's swap to `IDLE` (then the
    /// producer writes) or the producer's CAS to `WOKEN` (then the driver's swap sees it).
    fn spin_then_wait(
        &self,
        events: &mut Vec<epoll::Event>,
        timeout: Option<u64>,
    ) -> Result<usize, Errno> {
        if self.spin_ns == 0 || timeout == Some(0) {
            return self.wait(events, timeout);
        }
        let budget = timeout.map_or(self.spin_ns, |t| t.min(self.spin_ns));
        let start = mono_now();
        self.spinning.store(SPINNING, Ordering::SeqCst);
        let mut spent;
        loop {
            match self.wait(events, Some(0)) {
                Ok(0) => {}
                other => {
                    self.spinning.store(IDLE, Ordering::Release);
                    return other;
                }
            }
            if self.spinning.load(Ordering::Acquire) == WOKEN {
                self.spinning.store(IDLE, Ordering::Release);
                return Ok(0);
            }
            spent = mono_now().saturating_sub(start);
            if spent >= budget {
                break;
            }
            std::hint::spin_loop();
        }
        if self.spinning.swap(IDLE, Ordering::AcqRel) == WOKEN {
            return Ok(0);
        }
        self.wait(events, timeout.map(|t| t.saturating_sub(spent)))
    }

    /// Waits in the kernel for events, at most `timeout` ns, by the loop's timer backend.
    fn wait(&self, events: &mut Vec<epoll::Event>, timeout: Option<u64>) -> Result<usize, Errno> {
        let epoll_fd = self.epoll.as_fd();
        match (self.backend.timer, &self.timer) {
            (TimerBackend::Pwait2, _) => {
                self.sys
                    .epoll_pwait2(epoll_fd, events, timeout.map(Duration::from_nanos))
            }
            (TimerBackend::Timerfd | TimerBackend::TimerfdBoottime, Some(timer)) => {
                use std::sync::atomic::Ordering::Relaxed;
                match timeout {
                    // Nothing to arm for a poll or for no deadline (a stale arm is only
                    // disarmed, to save a spurious wakeup).
                    Some(0) => {}
                    None => {
                        // The driver's alone: a load and a store, no locked swap per wait.
                        if self.timer_armed.load(Relaxed) {
                            self.timer_armed.store(false, Relaxed);
                            let _ = self.sys.timerfd_settime(timer.as_fd(), None);
                        }
                    }
                    Some(ns) => {
                        let now = if self.backend.timer == TimerBackend::TimerfdBoottime {
                            boot_now()
                        } else {
                            mono_now()
                        };
                        match self
                            .sys
                            .timerfd_settime(timer.as_fd(), Some(now.saturating_add(ns)))
                        {
                            Ok(()) => self.timer_armed.store(true, Relaxed),
                            // The millisecond backstop below still wakes the loop.
                            Err(errno) => crate::log_at!(
                                warn,
                                "reseau: timerfd_settime failed with {errno}; this wait \
                                 rounds up to whole milliseconds"
                            ),
                        }
                    }
                }
                // The ms timeout (never shorter) is a backstop: the timerfd fires first.
                self.sys.epoll_wait(epoll_fd, events, wait_ms(timeout))
            }
            _ => self.sys.epoll_wait(epoll_fd, events, wait_ms(timeout)),
        }
    }

    /// Runs user code under the panic guard, counting and logging a panic with its message;
    /// under `PanicPolicy::Abort` it aborts instead.
    pub(crate) fn guard<R>(&self, what: &str, f: impl FnOnce() -> R) -> Option<R> {
        match catch_unwind(AssertUnwindSafe(f)) {
            Ok(r) => Some(r),
            Err(payload) => {
                Counters::bump(&self.counters.panics_caught, 1);
                let message = panic_message(&*payload);
                crate::panics::after_panic(self.on_panic, what, message);
                crate::log_at!(
                    error,
                    "reseau: {what} panicked: {message}; the loop goes on"
                );
                None
            }
        }
    }

    /// `EPOLL_CTL_DEL` for a source about to leave; `ENOENT`/`EBADF` mean it is gone already.
    pub(crate) fn deregister(&self, entry: &dyn Source) {
        let result = self.guard("a source's as_fd", || {
            self.sys.epoll_del(self.epoll.as_fd(), entry.fd())
        });
        match result {
            Some(Ok(()) | Err(Errno::NOENT) | Err(Errno::BADF)) | None => {}
            Some(Err(errno)) => crate::log_at!(
                warn,
                "reseau: epoll_ctl(DEL) failed with {errno}; dropping the subscription anyway"
            ),
        }
    }

    /// Applies an interest change recorded while `sub`'s callback ran (`LoopHandle::modify`
    /// from the callback itself, or from another thread meanwhile). Nobody waits for it, so
    /// a failure is logged and counted as a failed syscall; the previous interest stays.
    fn apply_deferred_modify(&self, subs: &Slab, sub: Subscription, interest: Interest) {
        let Found::Active(entry) = subs.find(sub) else {
            return;
        };
        let result = self.guard("a source's as_fd", || {
            self.sys.epoll_mod(
                self.epoll.as_fd(),
                entry.fd(),
                sub.token(),
                interest.epoll_flags(),
            )
        });
        if let Some(Err(errno)) = result {
            crate::log_at!(
                error,
                "reseau: epoll_ctl(MOD) of a deferred interest change failed with {errno}; the previous interest is kept"
            );
        }
    }

    /// Runs the callback of the subscription behind `token`, if it is still live.
    fn dispatch_io(&self, cx: &LoopHandle, token: u64, readiness: Readiness) {
        let sub = Subscription::from_token(cx.loop_id(), token);
        let entry = lock(&self.subs).take_for_callback(sub);
        // Gone (unsubscribed earlier in this batch, or a stale registration): drop the event.
        let Some(mut entry) = entry else { return };
        let control = self
            .guard("an IO callback", || entry.dispatch(cx, readiness))
            .unwrap_or(IoControl::Keep);
        match control {
            IoControl::Keep => {
                let mut subs = lock(&self.subs);
                if let Some(interest) = subs.put_back(sub, entry) {
                    self.apply_deferred_modify(&subs, sub, interest);
                }
            }
            IoControl::Unsubscribe => {
                self.deregister(&*entry);
                lock(&self.subs).release_in_callback(sub);
                self.guard("dropping a subscription", || drop(entry));
            }
        }
    }
}

impl Platform for LinuxPlatform {
    type Cx = LoopHandle;
    type Error = Error;

    fn now(&self) -> u64 {
        use std::sync::atomic::Ordering::Relaxed;
        // Only the driver calls `Platform::now` (handles read `clock` themselves), and
        // only the driver stores `after_wait`: a load and a store, no read-modify-write.
        let t = self.after_wait.load(Relaxed);
        if t != 0 {
            self.after_wait.store(0, Relaxed);
            return t;
        }
        self.clock.now()
    }

    fn wake(&self) {
        // A driver spinning before it parks sees this flag: no write, no read, no syscall.
        if self.spin_ns != 0
            && self
                .spinning
                .compare_exchange(SPINNING, WOKEN, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            Counters::bump(&self.counters.producers.wakeups_spun, 1);
            return;
        }
        if let Err(errno) = self.wakeup.wake() {
            crate::log_at!(error, "reseau: writing the wakeup failed: {errno}");
        }
        Counters::bump(&self.counters.producers.wakeups_written, 1);
    }

    fn wake_coalesced(&self) {
        Counters::bump(&self.counters.producers.wakeups_coalesced, 1);
    }

    fn poll(&self, cx: &LoopHandle, timeout: Option<u64>) -> Result<(), Error> {
        let idle_from = mono_now();
        self.load.tick_end(idle_from);
        // SAFETY: `poll` is the driver's alone and not re-entered (`Events`' docs); this is
        // the only borrow of the buffer, and it ends with this call.
        let events = unsafe { self.events.driver() };
        events.clear();
        Counters::bump_driver(&self.counters.epoll_waits, 1);
        let result = self.spin_then_wait(events, timeout);
        let woke = mono_now();
        self.load.tick_start(woke);
        if matches!(self.clock, Clock::Monotonic) {
            self.after_wait
                .store(woke, std::sync::atomic::Ordering::Relaxed);
        }
        let outcome = match result {
            Ok(_) => {
                Counters::bump_driver(&self.counters.events_dispatched, events.len() as u64);
                for event in events.iter() {
                    let token = event.data.u64();
                    if token == WAKEUP_TOKEN {
                        self.wakeup.consume();
                    } else if token == TIMER_TOKEN {
                        // Edge-triggered and re-armed (which resets its count) before each
                        // timed wait: nothing to read. The engine runs what is due.
                    } else {
                        self.dispatch_io(cx, token, Readiness::from_epoll(event.flags));
                    }
                }
                if events.len() == events.capacity() && events.capacity() < self.max_events {
                    let grow = events.capacity().min(self.max_events - events.capacity());
                    events.reserve_exact(grow.max(1));
                }
                Ok(())
            }
            // Interrupted by a signal: the engine recomputes the timeout and waits again.
            Err(Errno::INTR) => Ok(()),
            Err(errno) => {
                let call = if self.backend.timer == TimerBackend::Pwait2 {
                    "epoll_pwait2"
                } else {
                    "epoll_wait"
                };
                crate::log_at!(error, "reseau: {call} failed with {errno}; the loop stops");
                let e = SysError { call, errno };
                *lock(&self.loop_error) = Some(Error::Sys(e));
                Err(Error::Sys(e))
            }
        };
        // Futures woken while the loop was full: polled here, without a task slot.
        self.futures.drain_overflow();
        outcome
    }

    fn run_task(&self, status: TaskStatus, f: impl FnOnce()) -> bool {
        match status {
            TaskStatus::RunReady => Counters::bump_driver(&self.counters.tasks_run, 1),
            TaskStatus::Canceled => Counters::bump_driver(&self.counters.tasks_canceled, 1),
        }
        let what = match status {
            TaskStatus::RunReady => "a task",
            TaskStatus::Canceled => "a canceled task",
        };
        self.guard(what, f).is_some()
    }

    fn catch<R>(&self, f: impl FnOnce() -> R) -> Option<R> {
        match catch_unwind(AssertUnwindSafe(f)) {
            Ok(r) => Some(r),
            Err(payload) => {
                Counters::bump(&self.counters.panics_caught, 1);
                let msg = panic_message(&*payload).to_owned();
                crate::log_at!(
                    error,
                    "reseau: the loop panicked outside a task: {msg}; it stops"
                );
                *lock(&self.loop_error) = Some(Error::Panicked(msg));
                None
            }
        }
    }

    fn current_thread(&self) -> usize {
        thread_id::current() as usize
    }

    fn block_until(&self, done: &dyn Fn() -> bool, timeout: Option<u64>) -> bool {
        use rustix::thread::futex;
        // A futex on the exit epoch, with the deadline absolute on CLOCK_MONOTONIC (the
        // clock the loop already reads; `FUTEX_WAIT_BITSET` takes an absolute time on it,
        // so a wake-up early or spurious needs no recomputation). Smaller in a static binary
        // than a mutex and a condition variable with std's timeout arithmetic. A deadline
        // past u64 nanoseconds (~584 years) is no limit at all.
        let deadline = timeout.and_then(|ns| mono_now().checked_add(ns));
        let at = deadline.map(|d| futex::Timespec {
            tv_sec: (d / 1_000_000_000) as i64,
            tv_nsec: (d % 1_000_000_000) as i64,
        });
        loop {
            // Read before `done`: a `notify` after this read changes the value, so the
            // kernel refuses to sleep on the stale one (EAGAIN) and `done` is checked again.
            let seen = self.exit_epoch.load(Ordering::SeqCst);
            if done() {
                return true;
            }
            if deadline.is_some_and(|d| mono_now() >= d) {
                return done();
            }
            // EAGAIN, EINTR and ETIMEDOUT all mean "look again".
            let _ = futex::wait_bitset(
                &self.exit_epoch,
                futex::Flags::PRIVATE,
                seen,
                at.as_ref(),
                std::num::NonZeroU32::MAX,
            );
        }
    }

    fn notify(&self) {
        // After the caller published what `done` reads: see `block_until`.
        self.exit_epoch.fetch_add(1, Ordering::SeqCst);
        let _ = rustix::thread::futex::wake(
            &self.exit_epoch,
            rustix::thread::futex::Flags::PRIVATE,
            i32::MAX as u32,
        );
    }

    fn pause(&self) {
        std::thread::yield_now();
    }

    fn release_sources(&self, _cx: &LoopHandle) -> usize {
        let entries = lock(&self.subs).drain();
        let released = entries.len();
        for entry in entries {
            self.deregister(&*entry);
            self.guard("dropping a subscription", || drop(entry));
        }
        released + self.futures.close_all()
    }
}
