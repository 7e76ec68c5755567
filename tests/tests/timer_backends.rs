//! The timer chain (`reseau_linux::sys` module docs): `epoll_pwait2` (ns) → a
//! `CLOCK_MONOTONIC` timerfd → `epoll_wait` in whole ms; `Clock::Boottime` → a
//! `CLOCK_BOOTTIME` timerfd. Each rung is forced (a) in-process through the syscall seam
//! (`Faults`) and (b) on the real kernel under a seccomp filter in a child process; on
//! each, `backend().timer` names the rung, and a timer 300 µs away fires — never early,
//! and on the precise rungs within 5 ms (a loose failure guard, not a measurement: the
//! lateness numbers are the benchmark's, `bench/examples/lateness.rs`).
//!
//! `CLOCK_BOOTTIME`: a real suspend cannot be tested here. What the test proves instead,
//! in a time namespace whose boot time is 1000 s ahead of its monotonic time (`unshare
//! --user --time --boottime 1000`): the loop's clock reads the boottime scale (≈ 1000 s
//! ahead of `CLOCK_MONOTONIC`), and a deadline 20 ms away on that scale fires after about
//! 20 ms — neither at once (a boottime deadline mistaken for a monotonic one, 1000 s in the
//! past) nor after 1000 s (the reverse). So deadlines are armed on the clock they are
//! computed on; that the kernel's `CLOCK_BOOTTIME` timerfd counts suspend is the kernel's
//! documented behaviour.

use std::sync::Arc;
use std::sync::mpsc::channel;
use std::time::Duration;

use reseau_linux::sys::{RealSyscalls, Syscalls};
use reseau_linux::{Clock, Errno, Error, EventLoop, EventLoopOptions, SysError, TimerBackend};
use reseau_tests::util::{Faults, all_closed, is_child, is_cloexec, is_nonblocking, recv};

/// Whether this kernel has `epoll_pwait2` (outside any filter).
fn kernel_has_pwait2() -> bool {
    let epoll = RealSyscalls.epoll_create1().unwrap();
    let mut events = Vec::with_capacity(1);
    RealSyscalls
        .epoll_pwait2(
            std::os::fd::AsFd::as_fd(&epoll),
            &mut events,
            Some(Duration::ZERO),
        )
        .is_ok()
}

/// Runs `el` and checks a timer 300 µs away: fires, never early (on the loop's clock),
/// and on a precise rung within 5 ms of its deadline. Returns the lateness.
fn assert_a_300us_timer_fires(el: &EventLoop, precise: bool) -> Duration {
    el.run().unwrap();
    let (tx, rx) = channel();
    let h = el.handle();
    // Scheduled from the loop thread, so the deadline is taken right before it is armed.
    h.schedule_now(move |h, _| {
        let deadline = h.now_instant() + Duration::from_micros(300);
        h.schedule_at_instant(deadline, move |h, _| {
            tx.send(h.now_instant().as_nanos() as i128 - deadline.as_nanos() as i128)
                .unwrap()
        })
        .unwrap();
    })
    .unwrap();
    let late = recv(&rx);
    assert!(late >= 0, "fired {} ns early", -late);
    let late = Duration::from_nanos(late as u64);
    let limit = if precise {
        Duration::from_millis(5)
    } else {
        Duration::from_millis(200)
    };
    assert!(
        late < limit,
        "fired {late:?} late (failure guard {limit:?})"
    );
    late
}

fn assert_timerfd_listed(el: &EventLoop, listed: bool) {
    let fds = el.descriptors();
    let timerfd = fds.iter().find(|(name, _)| *name == "timerfd");
    assert_eq!(timerfd.is_some(), listed, "{:?}", el.backend());
    if let Some((_, fd)) = timerfd {
        assert!(is_cloexec(*fd), "the timerfd lacks FD_CLOEXEC");
        assert!(is_nonblocking(*fd), "the timerfd lacks O_NONBLOCK");
    }
}

#[test]
fn by_default_deadlines_wait_with_epoll_pwait2_when_the_kernel_has_it() {
    let _serial = reseau_tests::util::fd_serial();
    let mut el = EventLoop::new(EventLoopOptions::default()).unwrap();
    let expected = if kernel_has_pwait2() {
        TimerBackend::Pwait2
    } else {
        TimerBackend::Timerfd
    };
    assert_eq!(el.backend().unwrap().timer, expected);
    assert!(el.backend().unwrap().to_string().contains("timer: "));
    assert_timerfd_listed(&el, expected != TimerBackend::Pwait2);
    assert_a_300us_timer_fires(&el, true);
    el.destroy().unwrap();
}

#[test]
fn epoll_pwait2_refused_with_enosys_or_eperm_takes_the_monotonic_timerfd() {
    let _serial = reseau_tests::util::fd_serial();
    for errno in [Errno::NOSYS, Errno::PERM] {
        let faults = Arc::new(Faults {
            epoll_pwait2: Some(errno),
            ..Faults::default()
        });
        let mut el = EventLoop::new(faults.options()).unwrap();
        assert_eq!(
            el.backend().unwrap().timer,
            TimerBackend::Timerfd,
            "{errno}"
        );
        assert_timerfd_listed(&el, true);
        assert_a_300us_timer_fires(&el, true);
        assert!(
            faults.settimes.load(std::sync::atomic::Ordering::SeqCst) > 0,
            "the deadline was armed on the timerfd"
        );
        el.destroy().unwrap();
        assert!(all_closed(&faults), "the timerfd is closed at destroy");
    }
}

/// The kernel without `epoll_pwait2` (the timerfd rung), whose second `epoll_ctl(ADD)`
/// (the timerfd's, in the first `run`: the wakeup's is the first) fails once with ENOMEM.
struct TimerfdAddFailsOnce {
    adds: std::sync::atomic::AtomicUsize,
}

impl Syscalls for TimerfdAddFailsOnce {
    fn epoll_pwait2(
        &self,
        _: std::os::fd::BorrowedFd<'_>,
        _: &mut Vec<rustix::event::epoll::Event>,
        _: Option<Duration>,
    ) -> rustix::io::Result<usize> {
        Err(Errno::NOSYS)
    }
    fn epoll_add(
        &self,
        epoll_fd: std::os::fd::BorrowedFd<'_>,
        fd: std::os::fd::BorrowedFd<'_>,
        data: u64,
        flags: rustix::event::epoll::EventFlags,
    ) -> rustix::io::Result<()> {
        if self.adds.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 1 {
            return Err(Errno::NOMEM);
        }
        RealSyscalls.epoll_add(epoll_fd, fd, data, flags)
    }
}

#[test]
fn a_run_refused_by_the_timerfds_registration_leaves_the_loop_ready_to_run_again() {
    let _serial = reseau_tests::util::fd_serial();
    let sys = Arc::new(TimerfdAddFailsOnce {
        adds: Default::default(),
    });
    let mut el = EventLoop::new(EventLoopOptions {
        syscalls: sys,
        ..EventLoopOptions::default()
    })
    .unwrap();
    assert_eq!(el.backend().unwrap().timer, TimerBackend::Timerfd);
    match el.run().unwrap_err() {
        Error::Sys(SysError { call, errno }) => {
            assert_eq!((call, errno), ("epoll_ctl(ADD timerfd)", Errno::NOMEM));
        }
        other => panic!("unexpected {other:?}"),
    }
    // The fault is gone: the next run registers what is missing, and deadlines work.
    assert_a_300us_timer_fires(&el, true);
    el.destroy().unwrap();
}

#[test]
fn an_epoll_pwait2_probe_failing_otherwise_surfaces_and_leaks_nothing() {
    let _serial = reseau_tests::util::fd_serial();
    let faults = Arc::new(Faults {
        epoll_pwait2: Some(Errno::ACCESS),
        ..Faults::default()
    });
    match EventLoop::new(faults.options()).unwrap_err() {
        Error::Sys(SysError { call, errno }) => {
            assert_eq!((call, errno), ("epoll_pwait2 (probe)", Errno::ACCESS));
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(all_closed(&faults));
}

#[test]
fn without_epoll_pwait2_and_timerfd_deadlines_round_up_to_milliseconds() {
    let _serial = reseau_tests::util::fd_serial();
    for errno in [Errno::NOSYS, Errno::PERM, Errno::INVAL] {
        let faults = Arc::new(Faults {
            epoll_pwait2: Some(Errno::NOSYS),
            timerfd_monotonic: Some(errno),
            ..Faults::default()
        });
        let mut el = EventLoop::new(faults.options()).unwrap();
        assert_eq!(el.backend().unwrap().timer, TimerBackend::Millis, "{errno}");
        assert_timerfd_listed(&el, false);
        assert_a_300us_timer_fires(&el, false);
        el.destroy().unwrap();
    }
}

#[test]
fn a_timerfd_create_failing_with_emfile_surfaces_and_leaks_nothing() {
    let _serial = reseau_tests::util::fd_serial();
    let faults = Arc::new(Faults {
        epoll_pwait2: Some(Errno::NOSYS),
        timerfd_monotonic: Some(Errno::MFILE),
        ..Faults::default()
    });
    match EventLoop::new(faults.options()).unwrap_err() {
        Error::Sys(SysError { call, errno }) => {
            assert_eq!((call, errno), ("timerfd_create", Errno::MFILE));
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(all_closed(&faults));
}

#[test]
fn clock_boottime_arms_deadlines_on_a_boottime_timerfd() {
    let _serial = reseau_tests::util::fd_serial();
    let faults = Arc::new(Faults::default());
    let mut el = EventLoop::new(EventLoopOptions {
        clock: Clock::Boottime,
        ..faults.options()
    })
    .unwrap();
    assert_eq!(el.backend().unwrap().timer, TimerBackend::TimerfdBoottime);
    assert_timerfd_listed(&el, true);
    assert_a_300us_timer_fires(&el, true);
    el.destroy().unwrap();
    assert!(all_closed(&faults));
}

#[test]
fn clock_boottime_without_a_boottime_timerfd_takes_the_monotonic_chain() {
    let _serial = reseau_tests::util::fd_serial();
    let faults = Arc::new(Faults {
        timerfd_boottime: Some(Errno::INVAL),
        ..Faults::default()
    });
    let mut el = EventLoop::new(EventLoopOptions {
        clock: Clock::Boottime,
        ..faults.options()
    })
    .unwrap();
    let expected = if kernel_has_pwait2() {
        TimerBackend::Pwait2
    } else {
        TimerBackend::Timerfd
    };
    assert_eq!(el.backend().unwrap().timer, expected);
    assert_a_300us_timer_fires(&el, true);
    el.destroy().unwrap();
}

/// The real kernel under seccomp, in a child process (x86_64: the filter names x86_64
/// syscall numbers).
#[cfg(target_arch = "x86_64")]
mod seccomp {
    use super::*;
    use reseau_tests::seccomp::{self, Rule};
    use reseau_tests::util::run_in_child_with;

    const MARKER: &str = "RESEAU_TIMER_CHILD";
    const ERRNO_VAR: &str = "RESEAU_TIMER_ERRNO";

    /// In the parent: runs test `name` once per errno in a child and returns `None`. In
    /// the child: `Some(errno)`.
    fn child_per_errno(name: &str, errnos: &[i32]) -> Option<i32> {
        if is_child(MARKER) {
            let v = std::env::var(ERRNO_VAR).expect("the errno variable");
            return Some(v.parse().expect("an errno"));
        }
        for errno in errnos {
            run_in_child_with(MARKER, name, &[(ERRNO_VAR, &errno.to_string())]);
        }
        None
    }

    #[test]
    fn under_seccomp_epoll_pwait2_refused_takes_the_timerfd_on_the_real_kernel() {
        let name =
            "seccomp::under_seccomp_epoll_pwait2_refused_takes_the_timerfd_on_the_real_kernel";
        if let Some(e) = child_per_errno(name, &[libc::ENOSYS, libc::EPERM]) {
            seccomp::install(&[Rule::deny(libc::SYS_epoll_pwait2, e)]);
            let mut el = EventLoop::new(EventLoopOptions::default()).unwrap();
            assert_eq!(el.backend().unwrap().timer, TimerBackend::Timerfd);
            assert_timerfd_listed(&el, true);
            let late = assert_a_300us_timer_fires(&el, true);
            println!("timerfd rung (epoll_pwait2 → errno {e}): 300 µs timer {late:?} late");
            el.destroy().unwrap();
        }
    }

    #[test]
    fn under_seccomp_without_epoll_pwait2_and_timerfd_deadlines_take_milliseconds() {
        let name =
            "seccomp::under_seccomp_without_epoll_pwait2_and_timerfd_deadlines_take_milliseconds";
        if let Some(e) = child_per_errno(name, &[libc::ENOSYS, libc::EPERM]) {
            seccomp::install(&[
                Rule::deny(libc::SYS_epoll_pwait2, e),
                Rule::deny(libc::SYS_timerfd_create, e),
            ]);
            let mut el = EventLoop::new(EventLoopOptions::default()).unwrap();
            assert_eq!(el.backend().unwrap().timer, TimerBackend::Millis);
            assert_timerfd_listed(&el, false);
            let late = assert_a_300us_timer_fires(&el, false);
            println!("millis rung (errno {e}): 300 µs timer {late:?} late");
            el.destroy().unwrap();
        }
    }

    #[test]
    fn under_seccomp_the_preferred_rung_is_epoll_pwait2_when_nothing_is_refused() {
        let name =
            "seccomp::under_seccomp_the_preferred_rung_is_epoll_pwait2_when_nothing_is_refused";
        if child_per_errno(name, &[0]).is_some() {
            // A filter that refuses an unrelated call: the chain is untouched.
            seccomp::install(&[Rule::deny(libc::SYS_timerfd_create, libc::ENOSYS)]);
            let mut el = EventLoop::new(EventLoopOptions::default()).unwrap();
            assert_eq!(el.backend().unwrap().timer, TimerBackend::Pwait2);
            assert_a_300us_timer_fires(&el, true);
            el.destroy().unwrap();
        }
    }
}

const BOOT_MARKER: &str = "RESEAU_BOOTTIME_CHILD";
const BOOT_NAME: &str = "clock_boottime_deadlines_are_computed_and_armed_on_the_boottime_scale";
const OFFSET_S: u64 = 1000;

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    assert_eq!(unsafe { libc::clock_gettime(clock, &mut ts) }, 0);
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[test]
fn clock_boottime_deadlines_are_computed_and_armed_on_the_boottime_scale() {
    let _serial = reseau_tests::util::fd_serial();
    if !is_child(BOOT_MARKER) {
        // This binary again, in a new user + time namespace whose boot time is 1000 s
        // ahead (`timens_offsets` must be written before a process enters the namespace,
        // so the `unshare` tool does it and execs this binary as the first process there).
        let out = std::process::Command::new("unshare")
            .args(["--user", "--time", "--boottime", &OFFSET_S.to_string()])
            .arg(std::env::current_exe().unwrap())
            .args(["--exact", BOOT_NAME, "--nocapture", "--test-threads=1"])
            .env(BOOT_MARKER, "1")
            .output()
            .expect("run unshare(1) (util-linux)");
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        assert!(
            out.status.success() && text(&out.stdout).contains("1 passed"),
            "the child in the time namespace failed:\n{}\n{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        return;
    }
    // In the namespace: boot time is ~1000 s ahead of monotonic time (the second read
    // comes later, hence the margin; suspended time adds to it).
    let margin = 1_000_000_000;
    let ahead = clock_ns(libc::CLOCK_BOOTTIME) - clock_ns(libc::CLOCK_MONOTONIC);
    assert!(
        ahead + margin >= OFFSET_S * 1_000_000_000,
        "CLOCK_BOOTTIME is only {ahead} ns ahead: not in the namespace"
    );
    let armed = Arc::new(ArmRecorder::default());
    let mut el = EventLoop::new(EventLoopOptions {
        clock: Clock::Boottime,
        syscalls: armed.clone(),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(el.backend().unwrap().timer, TimerBackend::TimerfdBoottime);
    // The loop reads the boottime scale.
    let mono = clock_ns(libc::CLOCK_MONOTONIC);
    let now = el.now();
    assert!(
        now + margin >= mono + OFFSET_S * 1_000_000_000,
        "the loop's now ({now}) is not on the boottime scale (monotonic {mono})"
    );
    el.run().unwrap();
    let (tx, rx) = channel();
    let waits_before = el.stats().epoll_waits;
    let start = std::time::Instant::now();
    // 20 ms: long enough that the loop reaches its timed wait before the deadline even on
    // a loaded machine (with 2 ms, the deadline was sometimes already due, so never armed).
    let deadline = el.now_instant() + Duration::from_millis(20);
    el.schedule_at_instant(deadline, move |h, _| {
        tx.send((h.now_instant(), std::time::Instant::now()))
            .unwrap()
    })
    .unwrap();
    let (ran_at, wall) = recv(&rx);
    let waited = wall - start;
    assert!(ran_at >= deadline, "ran before its deadline");
    assert!(
        waited >= Duration::from_millis(20),
        "fired after {waited:?}: a boottime deadline armed as monotonic fires at once"
    );
    assert!(
        waited < Duration::from_secs(1),
        "fired after {waited:?} (failure guard: a monotonic deadline armed as boottime would wait 1000 s)"
    );
    // The timerfd was armed at the deadline on the boottime scale (a monotonic-scale
    // value would be 1000 s off), and the loop did not spin meanwhile.
    let arms: Vec<u64> = armed.0.lock().unwrap().iter().flatten().copied().collect();
    assert!(!arms.is_empty(), "the deadline was never armed");
    for at in &arms {
        let off = *at as i128 - deadline.as_nanos() as i128;
        assert!(
            (0..5_000_000).contains(&off),
            "armed {off} ns from the boottime deadline"
        );
    }
    let waits = el.stats().epoll_waits - waits_before;
    assert!(
        waits <= 5,
        "{waits} waits for one 20 ms timer: the loop spun"
    );
    println!("boottime namespace: a 20 ms timer fired after {waited:?}");
    el.destroy().unwrap();
}

/// The real kernel, recording every `timerfd_settime` deadline.
#[derive(Default)]
struct ArmRecorder(std::sync::Mutex<Vec<Option<u64>>>);

impl Syscalls for ArmRecorder {
    fn timerfd_settime(
        &self,
        fd: std::os::fd::BorrowedFd<'_>,
        deadline_ns: Option<u64>,
    ) -> rustix::io::Result<()> {
        self.0.lock().unwrap().push(deadline_ns);
        RealSyscalls.timerfd_settime(fd, deadline_ns)
    }
}

/// The loop thread's timer slack, read by a task on it.
fn loop_thread_slack(el: &EventLoop) -> u64 {
    let (tx, rx) = channel();
    el.schedule_now(move |_, _| {
        tx.send(rustix::thread::current_timer_slack().unwrap())
            .unwrap()
    })
    .unwrap();
    recv(&rx)
}

#[test]
fn the_loop_thread_takes_the_configured_timer_slack_and_none_keeps_the_inherited_one() {
    let _serial = reseau_tests::util::fd_serial();
    let inherited = rustix::thread::current_timer_slack().unwrap();
    let mut el = EventLoop::new(EventLoopOptions::default()).unwrap();
    el.run().unwrap();
    assert_eq!(loop_thread_slack(&el), 1_000, "the default: 1 µs");
    el.destroy().unwrap();

    let mut el = EventLoop::new(EventLoopOptions {
        timer_slack: Some(Duration::from_micros(7)),
        ..Default::default()
    })
    .unwrap();
    el.run().unwrap();
    assert_eq!(loop_thread_slack(&el), 7_000);
    el.destroy().unwrap();

    // Zero would mean "reset to the default" to the kernel: it is taken as 1 ns.
    let mut el = EventLoop::new(EventLoopOptions {
        timer_slack: Some(Duration::ZERO),
        ..Default::default()
    })
    .unwrap();
    el.run().unwrap();
    assert_eq!(loop_thread_slack(&el), 1);
    el.destroy().unwrap();

    let mut el = EventLoop::new(EventLoopOptions {
        timer_slack: None,
        ..Default::default()
    })
    .unwrap();
    el.run().unwrap();
    assert_eq!(
        loop_thread_slack(&el),
        inherited,
        "None keeps what the thread inherits"
    );
    el.destroy().unwrap();
}
