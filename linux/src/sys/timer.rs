//! The timer calls (`epoll_pwait2`, `timerfd_create`, `timerfd_settime`) and the chain
//! that picks a loop's [`TimerBackend`] (see the module docs of [`crate::sys`]).

use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::time::Duration;

use rustix::event::epoll;
use rustix::io::Errno;
use rustix::time::{
    Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags, Timespec,
    timerfd_settime as settime,
};

use super::{SysError, Syscalls, TimerBackend};

/// The clock of a timerfd.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TimerClock {
    /// `CLOCK_MONOTONIC`: stops while the system is suspended.
    Monotonic,
    /// `CLOCK_BOOTTIME`: counts the time spent suspended (Linux ≥ 3.15 for timerfds).
    Boottime,
}

/// The kernel's `struct __kernel_timespec`: 64-bit on every architecture, unlike libc's
/// `timespec` on 32-bit ones.
#[repr(C)]
struct KernelTimespec {
    tv_sec: i64,
    tv_nsec: i64,
}

// The event buffer is handed to the kernel as `struct epoll_event[]`.
const _: () = assert!(size_of::<epoll::Event>() == size_of::<libc::epoll_event>());

pub(super) fn epoll_pwait2(
    epoll_fd: BorrowedFd<'_>,
    events: &mut Vec<epoll::Event>,
    timeout: Option<Duration>,
) -> rustix::io::Result<usize> {
    let ts = timeout.map(|d| KernelTimespec {
        tv_sec: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        tv_nsec: i64::from(d.subsec_nanos()),
    });
    let ts_ptr = ts
        .as_ref()
        .map_or(std::ptr::null(), |t| t as *const KernelTimespec);
    // `ts_ptr` stays valid for the call: `ts` lives until the end of this function.
    raw_epoll_wait(libc::SYS_epoll_pwait2, epoll_fd, events, ts_ptr as usize)
}

/// `epoll_pwait(fd, events, max, timeout_ms, NULL)` with no signal mask, issued as a raw
/// syscall, into `events`' spare capacity (appending): `timeout_ms` `None` waits without a
/// limit. Returns how many events were appended.
pub(super) fn epoll_pwait(
    epoll_fd: BorrowedFd<'_>,
    events: &mut Vec<epoll::Event>,
    timeout_ms: Option<u32>,
) -> rustix::io::Result<usize> {
    // The kernel reads an `int`: -1 is no limit; the callers keep `timeout_ms` below i32::MAX.
    let ms = timeout_ms.map_or(-1, |ms| i32::try_from(ms).unwrap_or(i32::MAX));
    raw_epoll_wait(
        libc::SYS_epoll_pwait,
        epoll_fd,
        events,
        ms as isize as usize,
    )
}

/// The one body of `epoll_pwait` and `epoll_pwait2` (same arguments but the fourth: an
/// `int` of milliseconds, or a pointer to a `__kernel_timespec` or null), with a null
/// signal mask, into `events`' spare capacity.
fn raw_epoll_wait(
    nr: libc::c_long,
    epoll_fd: BorrowedFd<'_>,
    events: &mut Vec<epoll::Event>,
    timeout: usize,
) -> rustix::io::Result<usize> {
    let len = events.len();
    let spare = events.capacity() - len;
    let max = libc::c_int::try_from(spare).unwrap_or(libc::c_int::MAX);
    // SAFETY: the kernel writes at most `max` events, each the layout of `epoll::Event`
    // (asserted above), into the vector's spare capacity starting at `len`; `timeout` is an
    // `int` for `epoll_pwait`, and for `epoll_pwait2` null or a pointer its caller keeps
    // alive across this call; the signal mask is null (size 0).
    let n = unsafe {
        libc::syscall(
            nr,
            epoll_fd.as_raw_fd(),
            events.as_mut_ptr().add(len),
            max,
            timeout,
            std::ptr::null::<libc::sigset_t>(),
            0usize,
        )
    };
    if n < 0 {
        return Err(Errno::from_raw_os_error(
            std::io::Error::last_os_error().raw_os_error().unwrap_or(0),
        ));
    }
    let n = n as usize;
    // SAFETY: the kernel initialised `n ≤ spare` events after `len`.
    unsafe { events.set_len(len + n) };
    Ok(n)
}

pub(super) fn timerfd_create(clock: TimerClock) -> rustix::io::Result<OwnedFd> {
    let id = match clock {
        TimerClock::Monotonic => TimerfdClockId::Monotonic,
        TimerClock::Boottime => TimerfdClockId::Boottime,
    };
    rustix::time::timerfd_create(id, TimerfdFlags::CLOEXEC | TimerfdFlags::NONBLOCK)
}

pub(super) fn timerfd_settime(
    fd: BorrowedFd<'_>,
    deadline_ns: Option<u64>,
) -> rustix::io::Result<()> {
    let zero = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    let value = match deadline_ns {
        // A zero `it_value` disarms: an absolute time of 0 is 1 ns, long past.
        Some(ns) => {
            let ns = ns.max(1);
            Timespec {
                tv_sec: (ns / 1_000_000_000) as i64,
                tv_nsec: (ns % 1_000_000_000) as i64,
            }
        }
        None => zero,
    };
    let spec = Itimerspec {
        it_interval: zero,
        it_value: value,
    };
    settime(fd, TimerfdTimerFlags::ABSTIME, &spec).map(drop)
}

/// Whether a timer rung's call failing with `errno` means "not here": take the next rung.
fn absent(errno: Errno) -> bool {
    errno == Errno::NOSYS || errno == Errno::PERM || errno == Errno::INVAL
}

/// Picks the loop's timer backend by the chain in the module docs: a `CLOCK_BOOTTIME`
/// timerfd first when `boottime`, then one zero-timeout `epoll_pwait2` on `epoll_fd`, then
/// a `CLOCK_MONOTONIC` timerfd, then milliseconds. Returns the timerfd when one is used
/// (registered with epoll later, with the wakeup).
pub(crate) fn create_timer(
    sys: &dyn Syscalls,
    epoll_fd: BorrowedFd<'_>,
    boottime: bool,
) -> Result<(Option<OwnedFd>, TimerBackend), SysError> {
    if boottime {
        match sys.timerfd_create(TimerClock::Boottime) {
            Ok(fd) => {
                crate::log_at!(info, "reseau: deadlines on a CLOCK_BOOTTIME timerfd");
                return Ok((Some(fd), TimerBackend::TimerfdBoottime));
            }
            Err(errno) if absent(errno) => crate::log_at!(
                warn,
                "reseau: timerfd_create(CLOCK_BOOTTIME) failed with {errno}; deadlines \
                 fall back to CLOCK_MONOTONIC waits (a suspend delays due tasks)"
            ),
            Err(errno) => {
                return Err(SysError {
                    call: "timerfd_create(CLOCK_BOOTTIME)",
                    errno,
                });
            }
        }
    }
    let mut probe = Vec::with_capacity(1);
    match sys.epoll_pwait2(epoll_fd, &mut probe, Some(Duration::ZERO)) {
        Ok(_) => {
            crate::log_at!(info, "reseau: deadlines by epoll_pwait2 (ns timeouts)");
            return Ok((None, TimerBackend::Pwait2));
        }
        Err(errno) if errno == Errno::NOSYS || errno == Errno::PERM => crate::log_at!(
            debug,
            "reseau: epoll_pwait2 failed with {errno}; trying a timerfd"
        ),
        Err(errno) => {
            return Err(SysError {
                call: "epoll_pwait2 (probe)",
                errno,
            });
        }
    }
    match sys.timerfd_create(TimerClock::Monotonic) {
        Ok(fd) => {
            crate::log_at!(info, "reseau: deadlines on a CLOCK_MONOTONIC timerfd");
            Ok((Some(fd), TimerBackend::Timerfd))
        }
        Err(errno) if absent(errno) => {
            crate::log_at!(
                warn,
                "reseau: timerfd_create failed with {errno}; deadlines in whole \
                 milliseconds, rounded up"
            );
            Ok((None, TimerBackend::Millis))
        }
        Err(errno) => Err(SysError {
            call: "timerfd_create",
            errno,
        }),
    }
}
