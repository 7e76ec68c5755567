//! `EventLoopOptions::spin_before_park`: a loop about to block spins first, polling epoll
//! without blocking and watching a flag that a cross-thread wake sets instead of writing
//! the wakeup. Nothing may be lost or delayed past its time by the spin: cross-thread
//! tasks, IO readiness, deadlines and stop all reach a spinning loop.

use std::os::fd::BorrowedFd;
use std::sync::mpsc::channel;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use reseau_linux::sys::{RealSyscalls, Syscalls};
use reseau_linux::{EventLoop, EventLoopOptions, Interest, IoControl, LoopHandle};
use reseau_tests::util::{GUARD, recv};
use rustix::event::epoll;
use rustix::pipe::{PipeFlags, pipe_with};

/// A spin far longer than any test: only a wake, an event or a deadline ends it.
const LONG: Duration = Duration::from_secs(30);

fn spinning_loop(spin: Option<Duration>) -> EventLoop {
    let el = EventLoop::new(EventLoopOptions {
        spin_before_park: spin,
        ..Default::default()
    })
    .unwrap();
    el.run().unwrap();
    el
}

fn round_trip(h: &LoopHandle) {
    let (tx, rx) = channel();
    h.schedule_now(move |_, _| tx.send(()).unwrap()).unwrap();
    recv(&rx);
}

/// The kernel, counting the non-blocking polls a spin makes; `spinning()` returns once the
/// loop has made `n` more of them in a row — it is then spinning, not about to.
#[derive(Default)]
struct SpinWatch {
    polls: Mutex<u64>,
    cv: Condvar,
}

impl SpinWatch {
    fn saw(&self, timeout_is_zero: bool) {
        let mut polls = self.polls.lock().unwrap();
        *polls = if timeout_is_zero { *polls + 1 } else { 0 };
        self.cv.notify_all();
    }

    fn spinning(&self, n: u64) {
        let start = *self.polls.lock().unwrap();
        let guard = self
            .cv
            .wait_timeout_while(self.polls.lock().unwrap(), GUARD, |p| *p < start + n)
            .unwrap();
        assert!(!guard.1.timed_out(), "the loop never spun");
    }
}

impl Syscalls for SpinWatch {
    fn epoll_wait(
        &self,
        epoll_fd: BorrowedFd<'_>,
        events: &mut Vec<epoll::Event>,
        timeout_ms: Option<u32>,
    ) -> rustix::io::Result<usize> {
        self.saw(timeout_ms == Some(0));
        RealSyscalls.epoll_wait(epoll_fd, events, timeout_ms)
    }

    fn epoll_pwait2(
        &self,
        epoll_fd: BorrowedFd<'_>,
        events: &mut Vec<epoll::Event>,
        timeout: Option<Duration>,
    ) -> rustix::io::Result<usize> {
        self.saw(timeout == Some(Duration::ZERO));
        RealSyscalls.epoll_pwait2(epoll_fd, events, timeout)
    }
}

#[test]
fn a_wake_that_finds_the_loop_spinning_sets_the_flag_and_writes_nothing() {
    let watch = Arc::new(SpinWatch::default());
    let mut el = EventLoop::new(EventLoopOptions {
        spin_before_park: Some(LONG),
        syscalls: watch.clone(),
        ..Default::default()
    })
    .unwrap();
    el.run().unwrap();
    let h = el.handle();
    for round in 1..=20 {
        watch.spinning(3);
        let before = h.stats();
        round_trip(&h);
        let after = h.stats();
        assert_eq!(
            after.wakeups_spun,
            before.wakeups_spun + 1,
            "round {round}: {after:?}"
        );
        assert_eq!(
            after.wakeups_written, before.wakeups_written,
            "round {round}"
        );
    }
    el.destroy().unwrap();
}

#[test]
fn cross_thread_schedules_to_a_spinning_loop_all_run() {
    let mut el = spinning_loop(Some(LONG));
    let h = el.handle();
    for _ in 0..1000 {
        round_trip(&h);
    }
    let stats = h.stats();
    // How many wakes went through the flag, were coalesced (the loop still awake) or were
    // written (a wake landing before the first spin, or between the engine's
    // `prepare_park` and the spin's start) depends on the two threads' timing: only that
    // the flag path is taken, and that nothing is lost, is exact.
    assert_eq!(stats.tasks_run, 1000, "{stats:?}");
    el.destroy().unwrap();
}

#[test]
fn without_spin_no_wake_goes_through_the_flag() {
    let mut el = spinning_loop(None);
    let h = el.handle();
    for _ in 0..200 {
        round_trip(&h);
    }
    assert_eq!(h.stats().wakeups_spun, 0);
    el.destroy().unwrap();
}

#[test]
fn io_readiness_reaches_a_spinning_loop() {
    let mut el = spinning_loop(Some(LONG));
    let h = el.handle();
    let (r, w) = pipe_with(PipeFlags::NONBLOCK | PipeFlags::CLOEXEC).unwrap();
    let (tx, rx) = channel();
    h.subscribe(r, Interest::READABLE, move |_, fd, _| {
        let mut b = [0u8; 8];
        while let Ok(1..) = rustix::io::read(&*fd, &mut b) {}
        tx.send(()).unwrap();
        IoControl::Keep
    })
    .unwrap();
    for _ in 0..100 {
        round_trip(&h); // the loop is idle (spinning) again after each
        assert_eq!(rustix::io::write(&w, b"x").unwrap(), 1);
        recv(&rx);
    }
    el.destroy().unwrap();
}

#[test]
fn a_spinning_loop_never_spins_past_a_deadline() {
    let mut el = spinning_loop(Some(LONG));
    let h = el.handle();
    round_trip(&h);
    let (tx, rx) = channel();
    let start = Instant::now();
    h.schedule_after(Duration::from_millis(5), move |_, _| tx.send(()).unwrap())
        .unwrap();
    recv(&rx);
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(5), "early: {took:?}");
    assert!(took < LONG / 2, "the spin ran past the deadline: {took:?}");
    el.destroy().unwrap();
}

#[test]
fn stop_and_destroy_reach_a_spinning_loop() {
    let mut el = spinning_loop(Some(LONG));
    let h = el.handle();
    round_trip(&h);
    let start = Instant::now();
    el.stop().unwrap();
    el.wait_for_stop_completion().unwrap();
    el.run().unwrap();
    round_trip(&h);
    el.destroy().unwrap();
    assert!(
        start.elapsed() < LONG / 2,
        "stop or destroy waited for the spin: {:?}",
        start.elapsed()
    );
}

#[test]
fn a_caller_driven_turn_spins_too_and_a_cross_thread_task_ends_it() {
    let el = EventLoop::new(EventLoopOptions {
        spin_before_park: Some(LONG),
        ..Default::default()
    })
    .unwrap();
    let h = el.handle();
    el.turn(Some(Duration::ZERO)).unwrap();
    let (tx, rx) = channel();
    let producer = std::thread::spawn(move || {
        h.schedule_now(move |_, _| tx.send(()).unwrap()).unwrap();
    });
    let start = Instant::now();
    while rx.try_recv().is_err() {
        assert!(start.elapsed() < LONG / 2, "the turn never returned");
        el.turn(Some(LONG)).unwrap();
    }
    producer.join().unwrap();
}
