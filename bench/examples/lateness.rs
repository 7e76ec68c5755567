//! Timer lateness: how long after its deadline a timer's callback runs, for reseau on each
//! rung of its timer chain, tokio's current_thread `sleep`, calloop's `Timer`, and the machine's
//! floor (a bare thread in `clock_nanosleep`).
//!
//! Each row is a chain of one-shot timers: every callback records `now − deadline` and
//! arms the next timer `period` after its own now, so the loop is idle between firings
//! (a timer waited for, not a busy loop). 10,000 firings at 100 µs and 1 ms, 1,000 at
//! 10 ms (`RESEAU_LATENESS_SCALE=0.1` runs a tenth of each).
//!
//! ```text
//! cd bench && cargo run --release --example lateness
//! ```
//!
//! Lateness is measured on `CLOCK_MONOTONIC` (reseau's loop clock; std's and tokio's
//! `Instant`), in microseconds; a negative value would be an early firing (none is
//! possible: the minimum is printed too).

use std::sync::Arc;
use std::sync::mpsc::channel;
use std::time::{Duration, Instant};

use reseau_linux::sys::{RealSyscalls, Syscalls, TimerClock};
use reseau_linux::{Clock, Errno, EventLoop, EventLoopOptions, LoopHandle, TimerBackend};

/// The kernel, with the precise rungs refused on demand, to force a rung.
struct Force {
    no_pwait2: bool,
    no_timerfd: bool,
}

impl Syscalls for Force {
    fn epoll_pwait2(
        &self,
        epoll_fd: std::os::fd::BorrowedFd<'_>,
        events: &mut Vec<rustix::event::epoll::Event>,
        timeout: Option<Duration>,
    ) -> rustix::io::Result<usize> {
        if self.no_pwait2 {
            return Err(Errno::NOSYS);
        }
        RealSyscalls.epoll_pwait2(epoll_fd, events, timeout)
    }
    fn timerfd_create(&self, clock: TimerClock) -> rustix::io::Result<std::os::fd::OwnedFd> {
        if self.no_timerfd {
            return Err(Errno::NOSYS);
        }
        RealSyscalls.timerfd_create(clock)
    }
}

fn chain(h: &LoopHandle, period: Duration, left: usize, out: std::sync::mpsc::Sender<Vec<i64>>) {
    fn step(
        h: &LoopHandle,
        period: Duration,
        left: usize,
        mut acc: Vec<i64>,
        out: std::sync::mpsc::Sender<Vec<i64>>,
    ) {
        let deadline = h.now_instant() + period;
        h.schedule_at_instant(deadline, move |h, _| {
            acc.push(h.now() as i64 - deadline.as_nanos() as i64);
            if left <= 1 {
                out.send(acc).unwrap();
            } else {
                step(h, period, left - 1, acc, out);
            }
        })
        .unwrap();
    }
    step(h, period, left, Vec::with_capacity(left), out);
}

fn reseau(period: Duration, n: usize, force: Force, clock: Clock) -> (TimerBackend, Vec<i64>) {
    let el = EventLoop::new(EventLoopOptions {
        syscalls: Arc::new(force),
        clock,
        ..Default::default()
    })
    .unwrap();
    let backend = el.backend().unwrap().timer;
    el.run().unwrap();
    let (tx, rx) = channel();
    let h = el.handle();
    h.schedule_now(move |h, _| chain(h, period, n, tx)).unwrap();
    let v = rx.recv().unwrap();
    drop(el);
    (backend, v)
}

fn tokio_sleep(period: Duration, n: usize) -> Vec<i64> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async move {
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            let deadline = tokio::time::Instant::now() + period;
            tokio::time::sleep_until(deadline).await;
            v.push((tokio::time::Instant::now() - deadline).as_nanos() as i64);
        }
        v
    })
}

fn calloop_timer(period: Duration, n: usize) -> Vec<i64> {
    use calloop::timer::{TimeoutAction, Timer};
    let mut event_loop: calloop::EventLoop<Vec<i64>> = calloop::EventLoop::try_new().unwrap();
    event_loop
        .handle()
        .insert_source(Timer::from_duration(period), move |deadline, _, v| {
            v.push(
                Instant::now()
                    .saturating_duration_since(deadline)
                    .as_nanos() as i64,
            );
            TimeoutAction::ToDuration(period)
        })
        .unwrap();
    let mut v = Vec::with_capacity(n);
    while v.len() < n {
        event_loop.dispatch(None, &mut v).unwrap();
    }
    v.truncate(n);
    v
}

/// The machine's floor: a plain thread sleeping to each absolute deadline with
/// `clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME)` at a 1 ns timer slack — no loop, no
/// queue, no epoll. What remains is the kernel's and the hypervisor's wake-up latency.
fn raw_floor(period: Duration, n: usize) -> Vec<i64> {
    std::thread::spawn(move || {
        use rustix::thread::{ClockId, clock_nanosleep_absolute, set_current_timer_slack};
        set_current_timer_slack(std::num::NonZeroU64::new(1)).unwrap();
        let mono = || rustix::time::clock_gettime(ClockId::Monotonic);
        let ns = |t: rustix::time::Timespec| t.tv_sec * 1_000_000_000 + t.tv_nsec;
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            let deadline = ns(mono()) + period.as_nanos() as i64;
            let ts = rustix::time::Timespec {
                tv_sec: deadline / 1_000_000_000,
                tv_nsec: deadline % 1_000_000_000,
            };
            while clock_nanosleep_absolute(ClockId::Monotonic, &ts).is_err() {}
            v.push(ns(mono()) - deadline);
        }
        v
    })
    .join()
    .unwrap()
}

fn row(name: &str, period: Duration, mut v: Vec<i64>) {
    v.sort_unstable();
    let us = |ns: i64| ns as f64 / 1000.0;
    let q = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
    println!(
        "| {name} | {period:?} | {} | {:.1} | {:.1} | {:.1} | {:.1} |",
        v.len(),
        us(v[0]),
        us(q(0.5)),
        us(q(0.99)),
        us(*v.last().unwrap())
    );
}

fn main() {
    let scale: f64 = std::env::var("RESEAU_LATENESS_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    let count = |n: usize| ((n as f64 * scale) as usize).max(10);
    println!("| loop | timer | firings | min µs | p50 µs | p99 µs | max µs |");
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for (period, n) in [
        (Duration::from_micros(100), count(10_000)),
        (Duration::from_millis(1), count(10_000)),
        (Duration::from_millis(10), count(1_000)),
    ] {
        let rungs = [
            (false, false, Clock::Monotonic),
            (true, false, Clock::Monotonic),
            (false, false, Clock::Boottime),
            (true, true, Clock::Monotonic),
        ];
        for (no_pwait2, no_timerfd, clock) in rungs {
            let force = Force {
                no_pwait2,
                no_timerfd,
            };
            let (backend, v) = reseau(period, n, force, clock);
            row(&format!("reseau {backend:?}"), period, v);
        }
        row("tokio current_thread sleep", period, tokio_sleep(period, n));
        row("calloop Timer", period, calloop_timer(period, n));
        row(
            "floor: clock_nanosleep thread",
            period,
            raw_floor(period, n),
        );
    }
}
