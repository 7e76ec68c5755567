//! The loop's clock: `CLOCK_MONOTONIC` in nanoseconds, or a test's own.

use std::fmt;
use std::sync::Arc;

/// Where a loop reads the time, in nanoseconds; deadlines are on this scale.
#[derive(Clone, Default)]
pub enum Clock {
    /// `clock_gettime(CLOCK_MONOTONIC)`.
    #[default]
    Monotonic,
    /// A function of the caller's, e.g. a manual clock in tests. It must never go back.
    Custom(Arc<dyn Fn() -> u64 + Send + Sync>),
    /// `clock_gettime(CLOCK_BOOTTIME)`: like `Monotonic`, but it counts the time the
    /// system spends suspended, and the loop arms its deadlines on a `CLOCK_BOOTTIME`
    /// timerfd (`TFD_TIMER_ABSTIME`) — so a task due during a suspend runs at resume,
    /// not one suspend-length later (aws-c-io issue #838). Opt-in: an `epoll_wait`
    /// timeout alone is measured on `CLOCK_MONOTONIC`, which stops while suspended. If the
    /// kernel has no `CLOCK_BOOTTIME` timerfd (before 3.15, or filtered), the loop still
    /// reads this clock but waits by the monotonic chain (logged; see
    /// [`TimerBackend`](crate::sys::TimerBackend)).
    Boottime,
}

impl Clock {
    /// The current time in nanoseconds.
    pub fn now(&self) -> u64 {
        match self {
            Clock::Monotonic => mono_now(),
            Clock::Custom(f) => f(),
            Clock::Boottime => boot_now(),
        }
    }
}

/// `CLOCK_MONOTONIC` in nanoseconds, through libc's `clock_gettime`.
///
/// Not rustix's: its vDSO lookup parses the auxiliary vector's `AT_SYSINFO_EHDR` image,
/// which valgrind does not provide as a real ELF image, so every reseau program died with
/// SIGSEGV at its first clock read under memcheck or callgrind (rustix issue #1559, open).
/// glibc and musl find the vDSO their own way (and fall back to the syscall).
pub(crate) fn mono_now() -> u64 {
    read(libc::CLOCK_MONOTONIC)
}

/// `CLOCK_BOOTTIME` in nanoseconds (monotonic, counting suspend), through libc.
pub(crate) fn boot_now() -> u64 {
    read(libc::CLOCK_BOOTTIME)
}

fn read(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable `timespec`; CLOCK_MONOTONIC and CLOCK_BOOTTIME
    // (2.6.39) always exist on Linux, so the call cannot fail (if it did, `ts` stays zero).
    unsafe { libc::clock_gettime(clock, &mut ts) };
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Clock::Monotonic => f.write_str("Clock::Monotonic"),
            Clock::Custom(_) => f.write_str("Clock::Custom(..)"),
            Clock::Boottime => f.write_str("Clock::Boottime"),
        }
    }
}

/// The `epoll_wait` timeout, in whole milliseconds, for a deadline `deadline` seen at
/// `now`: rounded **up** (a deadline 0.5 ms away waits 1 ms rather than spinning at 0, the
/// busy-spin aws-c-io's floored conversion causes) and clamped below `i32::MAX` ms, so
/// rustix never switches to `epoll_pwait2`. `None` means no deadline: wait indefinitely.
pub fn timeout_ms(deadline: Option<u64>, now: u64) -> Option<u32> {
    wait_ms(deadline.map(|d| d.saturating_sub(now)))
}

/// As [`timeout_ms`], for a timeout already in nanoseconds (what the engine asks for).
pub(crate) fn wait_ms(timeout_ns: Option<u64>) -> Option<u32> {
    let ms = timeout_ns?.div_ceil(1_000_000);
    Some(ms.min(i32::MAX as u64 - 1) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_round_up_to_whole_milliseconds_and_clamp_below_i32_max() {
        assert_eq!(timeout_ms(None, 5), None);
        assert_eq!(timeout_ms(Some(5), 5), Some(0));
        assert_eq!(
            timeout_ms(Some(4), 5),
            Some(0),
            "a past deadline does not wait"
        );
        assert_eq!(
            timeout_ms(Some(500_000), 0),
            Some(1),
            "0.5 ms waits 1 ms, not 0"
        );
        assert_eq!(timeout_ms(Some(1), 0), Some(1));
        assert_eq!(timeout_ms(Some(1_000_000), 0), Some(1));
        assert_eq!(timeout_ms(Some(1_000_001), 0), Some(2));
        assert_eq!(timeout_ms(Some(u64::MAX), 0), Some(i32::MAX as u32 - 1));
    }

    #[test]
    fn the_custom_clock_is_read() {
        let clock = Clock::Custom(Arc::new(|| 42));
        assert_eq!(clock.now(), 42);
        assert!(Clock::Monotonic.now() > 0);
        // Boottime counts suspend too: never behind the monotonic clock.
        let mono = Clock::Monotonic.now();
        assert!(Clock::Boottime.now() >= mono);
    }
}
