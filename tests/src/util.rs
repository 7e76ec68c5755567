//! Helpers the integration tests share: descriptor inspection, a fault-injecting syscall
//! seam, and bounded waits (a timeout is only ever a failure guard, never synchronisation).

use std::collections::{BTreeSet, VecDeque};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reseau_linux::sys::{RealSyscalls, Syscalls, TimerClock};
use reseau_linux::{Errno, EventLoop, EventLoopOptions, LoopHandle};
use rustix::event::epoll;

/// How long a test waits for something that should happen at once before failing.
pub const GUARD: Duration = Duration::from_secs(20);

/// Receives from `rx`, failing the test if nothing arrives within [`GUARD`].
pub fn recv<T>(rx: &Receiver<T>) -> T {
    rx.recv_timeout(GUARD)
        .expect("timed out waiting for the loop (failure guard)")
}

/// The loop thread, held inside a task until [`Hold::release`] (or drop): work that
/// arrives meanwhile (IO readiness, inbox messages, due timers) all waits for the same
/// later tick.
#[must_use = "the loop is released when the Hold is dropped"]
pub struct Hold(Option<Sender<()>>);

impl Hold {
    /// Lets the holding task return.
    pub fn release(mut self) {
        self.send();
    }

    fn send(&mut self) {
        if let Some(tx) = self.0.take() {
            // The task may be gone already (its loop destroyed): nothing to release.
            let _ = tx.send(());
        }
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.send();
    }
}

/// Schedules a task that runs `first` on the loop thread and then blocks it; returns once
/// the loop thread is held.
pub fn hold_loop(h: &LoopHandle, first: impl FnOnce(&LoopHandle) + Send + 'static) -> Hold {
    let (release_tx, release_rx) = channel::<()>();
    let (held_tx, held_rx) = channel();
    h.schedule_now(move |h, _| {
        first(h);
        held_tx.send(()).unwrap();
        recv(&release_rx);
    })
    .map_err(|e| e.kind)
    .expect("schedule the holding task");
    recv(&held_rx);
    Hold(Some(release_tx))
}

/// Whether this process is the child that [`run_in_child`] started with `marker` set.
pub fn is_child(marker: &str) -> bool {
    std::env::var_os(marker).is_some()
}

/// Runs the test `name` of the current test binary alone in a child process, with the
/// environment variable `marker` set (see [`is_child`]), and fails unless it passed.
///
/// For tests that change process-wide state (rlimits, a seccomp filter). The child's
/// report is indented in the failure message, so its own `test result:` line is not
/// mistaken for this binary's by whoever counts them (`.ci/run` does).
pub fn run_in_child(marker: &str, name: &str) {
    run_in_child_with(marker, name, &[]);
}

/// [`run_in_child`], with more environment variables for the child (a scenario's
/// parameters).
pub fn run_in_child_with(marker: &str, name: &str, env: &[(&str, &str)]) {
    let out = std::process::Command::new(std::env::current_exe().expect("current_exe"))
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env(marker, "1")
        .envs(env.iter().copied())
        .output()
        .expect("spawn the child test process");
    let indent = |b: &[u8]| {
        String::from_utf8_lossy(b)
            .lines()
            .map(|l| format!("    | {l}\n"))
            .collect::<String>()
    };
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("1 passed"),
        "child test {name} failed:\n{}{}",
        indent(&out.stdout),
        indent(&out.stderr)
    );
}

/// The process's open descriptors, from `/proc/self/fd` (the directory's own descriptor
/// excluded).
pub fn open_fds() -> BTreeSet<i32> {
    let dir = std::fs::read_dir("/proc/self/fd").expect("read /proc/self/fd");
    let mut fds: BTreeSet<i32> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    // The iterator's own descriptor was open while listing; drop those no longer open.
    fds.retain(|&fd| rustix::io::fcntl_getfd(unsafe_borrow(fd)).is_ok());
    fds
}

fn unsafe_borrow(fd: i32) -> BorrowedFd<'static> {
    // SAFETY: only used for `fcntl(F_GETFD)` on a number just listed; if it was closed in
    // between, the call fails with EBADF, which is the answer we want.
    unsafe { BorrowedFd::borrow_raw(fd) }
}

/// Whether `fd` has `FD_CLOEXEC`.
pub fn is_cloexec(fd: BorrowedFd<'_>) -> bool {
    rustix::io::fcntl_getfd(fd)
        .expect("F_GETFD")
        .contains(rustix::io::FdFlags::CLOEXEC)
}

/// Whether `fd` has `O_NONBLOCK`.
pub fn is_nonblocking(fd: BorrowedFd<'_>) -> bool {
    rustix::fs::fcntl_getfl(fd)
        .expect("F_GETFL")
        .contains(rustix::fs::OFlags::NONBLOCK)
}

/// The raw numbers of a loop's descriptors.
pub fn loop_fds(el: &EventLoop) -> Vec<i32> {
    el.descriptors()
        .iter()
        .map(|(_, fd)| fd.as_raw_fd())
        .collect()
}

/// A syscall seam that fails chosen calls with chosen errnos and counts calls.
#[derive(Default)]
pub struct Faults {
    /// Fail `epoll_create1`.
    pub epoll_create1: Option<Errno>,
    /// Fail the legacy `epoll_create`.
    pub epoll_create: Option<Errno>,
    /// Fail `eventfd`.
    pub eventfd: Option<Errno>,
    /// Fail `pipe2`.
    pub pipe2: Option<Errno>,
    /// Fail the legacy `pipe`.
    pub pipe: Option<Errno>,
    /// Fail `fcntl(F_SETFD)`.
    pub set_cloexec: Option<Errno>,
    /// Fail `epoll_ctl(ADD)`.
    pub epoll_add: Option<Errno>,
    /// Fail `epoll_ctl(DEL)`.
    pub epoll_del: Option<Errno>,
    /// Errors the loop's next waits return, in order (then the real call): its
    /// `epoll_wait` calls, or its `epoll_pwait2` calls after the creation probe (the first
    /// `epoll_pwait2` through this seam, which only [`Faults::epoll_pwait2`] affects).
    pub epoll_wait: Mutex<VecDeque<Errno>>,
    /// How many waits (`epoll_wait`, or `epoll_pwait2` after the probe) were made.
    pub waits: AtomicUsize,
    /// Descriptors opened through this seam that a failure path should have closed.
    pub opened: Mutex<Vec<i32>>,
    /// Fail `epoll_pwait2` (the creation probe and every wait).
    pub epoll_pwait2: Option<Errno>,
    /// Fail `timerfd_create(CLOCK_MONOTONIC)`.
    pub timerfd_monotonic: Option<Errno>,
    /// Fail `timerfd_create(CLOCK_BOOTTIME)`.
    pub timerfd_boottime: Option<Errno>,
    /// How many `timerfd_settime` calls were made.
    pub settimes: AtomicUsize,
    /// Whether the creation probe (the first `epoll_pwait2`) was made.
    pub probed: std::sync::atomic::AtomicBool,
}

impl Faults {
    /// Options using this seam.
    pub fn options(self: &Arc<Self>) -> EventLoopOptions {
        EventLoopOptions {
            syscalls: self.clone(),
            ..EventLoopOptions::default()
        }
    }

    fn note(&self, fd: &OwnedFd) {
        self.opened.lock().unwrap().push(fd.as_raw_fd());
    }
}

fn fail_or<T>(
    e: Option<Errno>,
    f: impl FnOnce() -> rustix::io::Result<T>,
) -> rustix::io::Result<T> {
    match e {
        Some(e) => Err(e),
        None => f(),
    }
}

impl Syscalls for Faults {
    fn epoll_create1(&self) -> rustix::io::Result<OwnedFd> {
        fail_or(self.epoll_create1, || RealSyscalls.epoll_create1()).inspect(|fd| self.note(fd))
    }
    fn epoll_create(&self) -> rustix::io::Result<OwnedFd> {
        fail_or(self.epoll_create, || RealSyscalls.epoll_create()).inspect(|fd| self.note(fd))
    }
    fn eventfd(&self) -> rustix::io::Result<OwnedFd> {
        fail_or(self.eventfd, || RealSyscalls.eventfd()).inspect(|fd| self.note(fd))
    }
    fn pipe2(&self) -> rustix::io::Result<(OwnedFd, OwnedFd)> {
        fail_or(self.pipe2, || RealSyscalls.pipe2()).inspect(|(r, w)| {
            self.note(r);
            self.note(w);
        })
    }
    fn pipe(&self) -> rustix::io::Result<(OwnedFd, OwnedFd)> {
        fail_or(self.pipe, || RealSyscalls.pipe()).inspect(|(r, w)| {
            self.note(r);
            self.note(w);
        })
    }
    fn set_cloexec(&self, fd: BorrowedFd<'_>) -> rustix::io::Result<()> {
        fail_or(self.set_cloexec, || RealSyscalls.set_cloexec(fd))
    }
    fn epoll_add(
        &self,
        epoll_fd: BorrowedFd<'_>,
        fd: BorrowedFd<'_>,
        data: u64,
        flags: epoll::EventFlags,
    ) -> rustix::io::Result<()> {
        fail_or(self.epoll_add, || {
            RealSyscalls.epoll_add(epoll_fd, fd, data, flags)
        })
    }
    fn epoll_del(&self, epoll_fd: BorrowedFd<'_>, fd: BorrowedFd<'_>) -> rustix::io::Result<()> {
        fail_or(self.epoll_del, || RealSyscalls.epoll_del(epoll_fd, fd))
    }
    fn epoll_wait(
        &self,
        epoll_fd: BorrowedFd<'_>,
        events: &mut Vec<epoll::Event>,
        timeout_ms: Option<u32>,
    ) -> rustix::io::Result<usize> {
        self.waits.fetch_add(1, Ordering::SeqCst);
        if let Some(e) = self.epoll_wait.lock().unwrap().pop_front() {
            return Err(e);
        }
        RealSyscalls.epoll_wait(epoll_fd, events, timeout_ms)
    }
    fn epoll_pwait2(
        &self,
        epoll_fd: BorrowedFd<'_>,
        events: &mut Vec<epoll::Event>,
        timeout: Option<Duration>,
    ) -> rustix::io::Result<usize> {
        if let Some(e) = self.epoll_pwait2 {
            return Err(e);
        }
        if self.probed.swap(true, Ordering::SeqCst) {
            self.waits.fetch_add(1, Ordering::SeqCst);
            if let Some(e) = self.epoll_wait.lock().unwrap().pop_front() {
                return Err(e);
            }
        }
        RealSyscalls.epoll_pwait2(epoll_fd, events, timeout)
    }
    fn timerfd_create(&self, clock: TimerClock) -> rustix::io::Result<OwnedFd> {
        let fault = match clock {
            TimerClock::Monotonic => self.timerfd_monotonic,
            TimerClock::Boottime => self.timerfd_boottime,
        };
        fail_or(fault, || RealSyscalls.timerfd_create(clock)).inspect(|fd| self.note(fd))
    }
    fn timerfd_settime(
        &self,
        fd: BorrowedFd<'_>,
        deadline_ns: Option<u64>,
    ) -> rustix::io::Result<()> {
        self.settimes.fetch_add(1, Ordering::SeqCst);
        RealSyscalls.timerfd_settime(fd, deadline_ns)
    }
}

/// Serializes the tests of one test binary that check descriptor *numbers* (with
/// [`all_closed`] or [`open_fds`]): tests run on parallel threads of one process, and a
/// number a loop closed may be reused at once by a neighbour's new descriptor, which would
/// read as a leak. Every test of such a binary takes this guard first.
pub fn fd_serial() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// Whether every descriptor this seam opened is closed now (see [`fd_serial`]).
pub fn all_closed(faults: &Faults) -> bool {
    faults
        .opened
        .lock()
        .unwrap()
        .iter()
        .all(|&fd| rustix::io::fcntl_getfd(unsafe_borrow(fd)).is_err())
}

/// How many of this process's threads are named `name` (`/proc/self/task/*/comm`).
pub fn threads_named(name: &str) -> usize {
    std::fs::read_dir("/proc/self/task")
        .expect("/proc/self/task")
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|comm| comm.trim_end() == name)
        .count()
}
