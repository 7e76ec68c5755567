//! The only module that talks to the kernel.
//!
//! Every syscall reseau makes goes through the [`Syscalls`] trait. [`RealSyscalls`] is the
//! kernel; tests implement the trait over it to force a fallback or inject an errno
//! in-process (see `EventLoopOptions::syscalls`). The signal calls (`pthread_sigmask`,
//! `signalfd4`, in `signal`) are the exception: they go straight to libc, and their
//! failures are tested under seccomp.
//!
//! # Descriptor creation
//! Preference chains, each step taken only when the one before fails with `ENOSYS` or
//! `EINVAL` (the kernel or the sandbox lacks the call or the flag); any other errno
//! (`EMFILE`, `ENFILE`, `ENOMEM`, `EPERM`, …) is returned with the call's name, never masked:
//! - epoll: `epoll_create1(EPOLL_CLOEXEC)` (Linux ≥ 2.6.27) → `epoll_create(1)` +
//!   `F_SETFD FD_CLOEXEC`. The legacy call exists only on architectures that have
//!   `__NR_epoll_create` (x86, x86_64, arm); see [`legacy`].
//! - wakeup: `eventfd(0, EFD_CLOEXEC|EFD_NONBLOCK)` (Linux ≥ 2.6.27) →
//!   `pipe2(O_NONBLOCK|O_CLOEXEC)` → `pipe()` + `F_SETFD FD_CLOEXEC` + `FIONBIO` on both
//!   ends. Sandboxes that filter `eventfd2` (some seccomp profiles answer `ENOSYS`) take
//!   the pipe path.
//!
//! - timer (how a deadline is waited for), probed once per loop at creation:
//!   `epoll_pwait2` with a nanosecond timeout (Linux ≥ 5.11; probed by one zero-timeout
//!   call) → a `CLOCK_MONOTONIC` `timerfd` (`TFD_CLOEXEC|TFD_NONBLOCK`, Linux ≥ 2.6.25)
//!   in the epoll set, armed with the absolute next deadline (`TFD_TIMER_ABSTIME`), the
//!   `epoll_wait` timeout (whole ms, rounded up) left as a backstop → `epoll_wait` alone,
//!   whole milliseconds rounded up ([`TimerBackend`]). With
//!   [`Clock::Boottime`](crate::Clock::Boottime) the chain starts at a `CLOCK_BOOTTIME`
//!   timerfd (Linux ≥ 3.15), so a suspend does not delay due tasks. A rung is skipped
//!   when its call fails with `ENOSYS` (the kernel lacks it), `EPERM` (container seccomp
//!   profiles, Docker's among them, answer syscalls they do not know with `EPERM` rather
//!   than `ENOSYS`) or `EINVAL` (`timerfd_create` on a kernel without `CLOCK_BOOTTIME`).
//!   Masking `EPERM` here costs only precision, never correctness, which is why this chain
//!   allows it and the descriptor chains above do not. Any other errno (`EMFILE`, …)
//!   is returned. Every rung is exact about "never early"; they differ in lateness (the
//!   README's "Timers" has the measured numbers).
//!
//! Every descriptor is held as an `OwnedFd` from the moment it exists, so a failure at any
//! later step closes what was already opened. aws-c-io's epoll fd is never close-on-exec,
//! and its pipe fallback "sets" `FD_CLOEXEC` with `F_SETFL` (a no-op); here every path
//! uses `F_SETFD`, and the flags are checked by tests with `fcntl`.

pub mod legacy;
pub(crate) mod signal;
mod timer;

pub use timer::TimerClock;
pub(crate) use timer::create_timer;

use std::fmt;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::event::epoll;
use rustix::io::Errno;

/// Which call created the epoll descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EpollBackend {
    /// `epoll_create1(EPOLL_CLOEXEC)`, the preferred call.
    Create1,
    /// `epoll_create(size)` + `F_SETFD FD_CLOEXEC`, for kernels or sandboxes without
    /// `epoll_create1`.
    Create,
}

/// Which mechanism wakes the loop thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WakeupBackend {
    /// `eventfd(0, EFD_CLOEXEC|EFD_NONBLOCK)`, the preferred call.
    EventFd,
    /// `pipe2(O_NONBLOCK|O_CLOEXEC)`.
    Pipe2,
    /// `pipe()` + `F_SETFD FD_CLOEXEC` + non-blocking on both ends.
    Pipe,
}

/// How the loop waits for its next deadline (see the module docs for the chain).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TimerBackend {
    /// `epoll_pwait2` with the timeout in nanoseconds: precise, no extra descriptor.
    Pwait2,
    /// A `CLOCK_MONOTONIC` timerfd in the epoll set, armed with the absolute deadline.
    Timerfd,
    /// A `CLOCK_BOOTTIME` timerfd ([`Clock::Boottime`](crate::Clock::Boottime)): time spent
    /// suspended counts, so due tasks run at resume.
    TimerfdBoottime,
    /// `epoll_wait` with the timeout in whole milliseconds, rounded up (late by up to 1 ms
    /// plus the kernel's slack; never early).
    Millis,
}

impl TimerBackend {
    /// Whether this backend waits with a timerfd (one more descriptor in the loop).
    pub fn uses_timerfd(self) -> bool {
        matches!(self, TimerBackend::Timerfd | TimerBackend::TimerfdBoottime)
    }
}

/// The path descriptor creation took; see [`EventLoop::backend`](crate::EventLoop::backend).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Backend {
    /// How the epoll descriptor was created.
    pub epoll: EpollBackend,
    /// How the wakeup was created.
    pub wakeup: WakeupBackend,
    /// How deadlines are waited for.
    pub timer: TimerBackend,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let epoll = match self.epoll {
            EpollBackend::Create1 => "epoll_create1(EPOLL_CLOEXEC)",
            EpollBackend::Create => "epoll_create + F_SETFD(FD_CLOEXEC)",
        };
        let wakeup = match self.wakeup {
            WakeupBackend::EventFd => "eventfd(EFD_CLOEXEC|EFD_NONBLOCK)",
            WakeupBackend::Pipe2 => "pipe2(O_NONBLOCK|O_CLOEXEC)",
            WakeupBackend::Pipe => "pipe + F_SETFD(FD_CLOEXEC) + FIONBIO",
        };
        let timer = match self.timer {
            TimerBackend::Pwait2 => "epoll_pwait2 (ns timeout)",
            TimerBackend::Timerfd => "timerfd(CLOCK_MONOTONIC, TFD_TIMER_ABSTIME)",
            TimerBackend::TimerfdBoottime => "timerfd(CLOCK_BOOTTIME, TFD_TIMER_ABSTIME)",
            TimerBackend::Millis => "epoll_wait (ms timeout, rounded up)",
        };
        write!(f, "epoll: {epoll}; wakeup: {wakeup}; timer: {timer}")
    }
}

/// A failed syscall: which call, and the errno it returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SysError {
    /// The call's name as in its man page (`epoll_create1`, `eventfd`, `epoll_ctl(ADD)`, …).
    pub call: &'static str,
    /// The errno.
    pub errno: Errno,
}

impl fmt::Display for SysError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} failed: {}", self.call, self.errno)
    }
}

impl std::error::Error for SysError {}

/// Attaches a call's name to an errno.
pub(crate) trait Context<T> {
    fn call(self, call: &'static str) -> Result<T, SysError>;
}

impl<T> Context<T> for rustix::io::Result<T> {
    fn call(self, call: &'static str) -> Result<T, SysError> {
        self.map_err(|errno| SysError { call, errno })
    }
}

/// The syscalls reseau makes: the seam for fault injection.
///
/// Every method defaults to the real call; a test implements the trait, overrides the call
/// it wants to break (return `Err(Errno::NOSYS)` from `epoll_create1`, say) and passes it in
/// `EventLoopOptions::syscalls`. Production code uses [`RealSyscalls`].
pub trait Syscalls: Send + Sync + 'static {
    /// `epoll_create1(EPOLL_CLOEXEC)`.
    fn epoll_create1(&self) -> rustix::io::Result<OwnedFd> {
        epoll::create(epoll::CreateFlags::CLOEXEC)
    }

    /// The legacy `epoll_create(1)`, without `CLOEXEC` (the caller sets it).
    fn epoll_create(&self) -> rustix::io::Result<OwnedFd> {
        legacy::epoll_create()
    }

    /// `eventfd(0, EFD_CLOEXEC|EFD_NONBLOCK)`.
    fn eventfd(&self) -> rustix::io::Result<OwnedFd> {
        rustix::event::eventfd(
            0,
            rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK,
        )
    }

    /// `pipe2(O_NONBLOCK|O_CLOEXEC)`: (read end, write end).
    fn pipe2(&self) -> rustix::io::Result<(OwnedFd, OwnedFd)> {
        rustix::pipe::pipe_with(
            rustix::pipe::PipeFlags::CLOEXEC | rustix::pipe::PipeFlags::NONBLOCK,
        )
    }

    /// The legacy `pipe()`, without flags (the caller sets them): (read end, write end).
    fn pipe(&self) -> rustix::io::Result<(OwnedFd, OwnedFd)> {
        legacy::pipe()
    }

    /// `fcntl(fd, F_SETFD, FD_CLOEXEC)`.
    fn set_cloexec(&self, fd: BorrowedFd<'_>) -> rustix::io::Result<()> {
        rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::CLOEXEC)
    }

    /// `ioctl(fd, FIONBIO, 1)`: non-blocking.
    fn set_nonblocking(&self, fd: BorrowedFd<'_>) -> rustix::io::Result<()> {
        rustix::io::ioctl_fionbio(fd, true)
    }

    /// `epoll_ctl(EPOLL_CTL_ADD)`.
    fn epoll_add(
        &self,
        epoll_fd: BorrowedFd<'_>,
        fd: BorrowedFd<'_>,
        data: u64,
        flags: epoll::EventFlags,
    ) -> rustix::io::Result<()> {
        epoll::add(epoll_fd, fd, epoll::EventData::new_u64(data), flags)
    }

    /// `epoll_ctl(EPOLL_CTL_DEL)`.
    fn epoll_del(&self, epoll_fd: BorrowedFd<'_>, fd: BorrowedFd<'_>) -> rustix::io::Result<()> {
        epoll::delete(epoll_fd, fd)
    }

    /// `epoll_wait` into `events`' spare capacity (appending), for at most `timeout_ms`
    /// milliseconds (`None`: no limit), with no signal mask: `epoll_pwait`, issued as a
    /// raw syscall (the body it shares with [`epoll_pwait2`](Self::epoll_pwait2)).
    /// `timeout_ms` is below `i32::MAX`. Returns how many events were appended.
    fn epoll_wait(
        &self,
        epoll_fd: BorrowedFd<'_>,
        events: &mut Vec<epoll::Event>,
        timeout_ms: Option<u32>,
    ) -> rustix::io::Result<usize> {
        timer::epoll_pwait(epoll_fd, events, timeout_ms)
    }

    /// `epoll_ctl(EPOLL_CTL_MOD)`: changes a registration's event mask (and data).
    fn epoll_mod(
        &self,
        epoll_fd: BorrowedFd<'_>,
        fd: BorrowedFd<'_>,
        data: u64,
        flags: epoll::EventFlags,
    ) -> rustix::io::Result<()> {
        epoll::modify(epoll_fd, fd, epoll::EventData::new_u64(data), flags)
    }

    /// `epoll_pwait2` (Linux ≥ 5.11) into `events`' spare capacity (appending), for at
    /// most `timeout` (`None`: no limit), with no signal mask; issued as a raw syscall.
    /// Returns how many events were appended.
    fn epoll_pwait2(
        &self,
        epoll_fd: BorrowedFd<'_>,
        events: &mut Vec<epoll::Event>,
        timeout: Option<std::time::Duration>,
    ) -> rustix::io::Result<usize> {
        timer::epoll_pwait2(epoll_fd, events, timeout)
    }

    /// `timerfd_create(clock, TFD_CLOEXEC|TFD_NONBLOCK)`.
    fn timerfd_create(&self, clock: TimerClock) -> rustix::io::Result<OwnedFd> {
        timer::timerfd_create(clock)
    }

    /// `timerfd_settime(fd, TFD_TIMER_ABSTIME, deadline)`, one-shot: `Some(ns)` arms the
    /// timer for that absolute time of its clock (a past time expires at once), `None`
    /// disarms it.
    fn timerfd_settime(
        &self,
        fd: BorrowedFd<'_>,
        deadline_ns: Option<u64>,
    ) -> rustix::io::Result<()> {
        timer::timerfd_settime(fd, deadline_ns)
    }
}

/// The kernel itself.
#[derive(Debug, Clone, Copy, Default)]
pub struct RealSyscalls;

impl Syscalls for RealSyscalls {}

fn fallback_allowed(errno: Errno) -> bool {
    errno == Errno::NOSYS || errno == Errno::INVAL
}

/// Creates the epoll descriptor, close-on-exec, by the preference chain in the module docs.
pub(crate) fn create_epoll(sys: &dyn Syscalls) -> Result<(OwnedFd, EpollBackend), SysError> {
    match sys.epoll_create1() {
        Ok(fd) => {
            crate::log_at!(
                info,
                "reseau: epoll descriptor from epoll_create1(EPOLL_CLOEXEC)"
            );
            Ok((fd, EpollBackend::Create1))
        }
        Err(errno) if fallback_allowed(errno) => {
            crate::log_at!(
                warn,
                "reseau: epoll_create1 failed with {errno}; falling back to epoll_create + F_SETFD"
            );
            let fd = sys.epoll_create().call("epoll_create")?;
            sys.set_cloexec(fd.as_fd())
                .call("fcntl(F_SETFD, FD_CLOEXEC)")?;
            Ok((fd, EpollBackend::Create))
        }
        Err(errno) => Err(SysError {
            call: "epoll_create1",
            errno,
        }),
    }
}

/// The wakeup's descriptors: one eventfd, or a pipe's two ends.
#[derive(Debug)]
pub(crate) enum WakeupFds {
    EventFd(OwnedFd),
    Pipe { read: OwnedFd, write: OwnedFd },
}

/// Creates the wakeup, close-on-exec and non-blocking, by the preference chain in the
/// module docs.
pub(crate) fn create_wakeup(sys: &dyn Syscalls) -> Result<(WakeupFds, WakeupBackend), SysError> {
    let errno = match sys.eventfd() {
        Ok(fd) => {
            crate::log_at!(
                info,
                "reseau: wakeup from eventfd(EFD_CLOEXEC|EFD_NONBLOCK)"
            );
            return Ok((WakeupFds::EventFd(fd), WakeupBackend::EventFd));
        }
        Err(errno) if fallback_allowed(errno) => errno,
        Err(errno) => {
            return Err(SysError {
                call: "eventfd",
                errno,
            });
        }
    };
    crate::log_at!(
        warn,
        "reseau: eventfd failed with {errno}; falling back to pipe2"
    );
    let ((read, write), legacy) = pipe_by_chain(sys)?;
    let backend = if legacy {
        WakeupBackend::Pipe
    } else {
        WakeupBackend::Pipe2
    };
    Ok((WakeupFds::Pipe { read, write }, backend))
}

/// A pipe, both ends non-blocking and close-on-exec: `pipe2(O_NONBLOCK|O_CLOEXEC)`, or on
/// `ENOSYS`/`EINVAL` the legacy `pipe()` + `fcntl(F_SETFD)` + `ioctl(FIONBIO)`. The second
/// value says whether the legacy path was taken.
fn pipe_by_chain(sys: &dyn Syscalls) -> Result<((OwnedFd, OwnedFd), bool), SysError> {
    match sys.pipe2() {
        Ok(ends) => Ok((ends, false)),
        Err(errno) if fallback_allowed(errno) => {
            crate::log_at!(
                warn,
                "reseau: pipe2 failed with {errno}; falling back to pipe + fcntl"
            );
            let (read, write) = sys.pipe().call("pipe")?;
            for fd in [read.as_fd(), write.as_fd()] {
                sys.set_cloexec(fd).call("fcntl(F_SETFD, FD_CLOEXEC)")?;
                sys.set_nonblocking(fd).call("ioctl(FIONBIO)")?;
            }
            Ok(((read, write), true))
        }
        Err(errno) => Err(SysError {
            call: "pipe2",
            errno,
        }),
    }
}

/// A pipe for the application, by the same chain as the loop's own wakeup pipe:
/// `pipe2(O_NONBLOCK|O_CLOEXEC)`, or on kernels and sandboxes without it (`ENOSYS`,
/// `EINVAL`) the legacy `pipe()` with the flags set afterwards. Returns (read end, write
/// end), both non-blocking and close-on-exec, ready to [`subscribe`](crate::LoopHandle::subscribe).
///
/// ```
/// let (read, write) = reseau_linux::sys::nonblocking_pipe()?;
/// rustix::io::write(&write, b"x").unwrap();
/// # Ok::<(), reseau_linux::SysError>(())
/// ```
///
/// # Errors
/// The call that failed last, with its errno (`EMFILE`, `ENFILE`, …); nothing stays open.
pub fn nonblocking_pipe() -> Result<(OwnedFd, OwnedFd), SysError> {
    pipe_by_chain(&RealSyscalls).map(|(ends, _)| ends)
}
