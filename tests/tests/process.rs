//! Process hygiene: `fork` (a child that inherits a loop cannot disturb the parent's),
//! create/destroy cycles on every descriptor path returning descriptors and threads to
//! the baseline, and loops and handles outliving each other. (Exec hygiene — no loop
//! descriptor crosses an `exec` on any path — is `descriptors.rs`, c01.)

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::mpsc::channel;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use reseau_linux::{
    Errno, Error, EventLoop, EventLoopOptions, Interest, IoControl, LoopHandle, ScheduleErrorKind,
    State, SubscribeErrorKind, TaskStatus,
};
use reseau_tests::util::{Faults, GUARD, open_fds, recv};

/// One test at a time: they count the process's descriptors and threads, and fork.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// Everything a forked child may try with an inherited loop: each is refused with
/// `Forked`, touching nothing; then the loop is dropped.
fn in_forked_child(el: EventLoop) -> bool {
    let checks = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let h = el.handle();
        let e = h.schedule_now(|_, _| ()).unwrap_err();
        assert_eq!(e.kind, ScheduleErrorKind::Forked);
        let e = h.spawn(async {}).unwrap_err();
        assert_eq!(e.kind, ScheduleErrorKind::Forked);
        let e = h
            .schedule_after(std::time::Duration::from_millis(1), |_, _| ())
            .unwrap_err();
        assert_eq!(e.kind, ScheduleErrorKind::Forked);
        let e = h
            .schedule_at_instant(h.now_instant(), |_, _| ())
            .unwrap_err();
        assert_eq!(e.kind, ScheduleErrorKind::Forked);
        let e = h
            .schedule_every(std::time::Duration::from_millis(1), |_, _| {
                reseau_linux::IntervalControl::Continue
            })
            .unwrap_err();
        assert_eq!(e.kind, ScheduleErrorKind::Forked);
        let (mine, _theirs) = UnixStream::pair().unwrap();
        mine.set_nonblocking(true).unwrap();
        let e = h
            .subscribe(mine, Interest::READABLE, |_, _, _| IoControl::Keep)
            .unwrap_err();
        assert_eq!(e.kind, SubscribeErrorKind::Forked);
        assert!(matches!(el.run(), Err(Error::Forked(_))));
        assert!(matches!(
            el.turn(Some(std::time::Duration::ZERO)),
            Err(Error::Forked(_))
        ));
        assert!(matches!(h.stop(), Err(Error::Forked(_))));
        assert!(matches!(
            el.wait_for_stop_completion(),
            Err(Error::Forked(_))
        ));
        drop(el);
    }));
    checks.is_ok()
}

/// Forks; the child runs [`in_forked_child`] on its copy of `el` and exits 0 if every
/// check held. Returns the child's exit status, failing the test if the child is not done
/// within the guard (a child waiting for a loop thread that does not exist there).
fn fork_and_drop_in_child(el: EventLoop) -> (EventLoop, i32) {
    // SAFETY: the child only runs this test's code on memory it owns and exits with
    // `_exit`, never returning into the test harness.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        let ok = in_forked_child(el);
        // SAFETY: ends the child at once, without running the parent's atexit handlers.
        unsafe { libc::_exit(if ok { 0 } else { 1 }) };
    }
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        let mut status = 0;
        // SAFETY: `status` is a valid out-pointer; `pid` is our child.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        assert_eq!(r, pid);
        tx.send(status).unwrap();
    });
    let status = match rx.recv_timeout(GUARD) {
        Ok(s) => s,
        Err(_) => {
            // SAFETY: kills our own child, which hangs.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            panic!("the forked child hung with the inherited loop");
        }
    };
    (el, status)
}

#[test]
fn p04_a_forked_child_cannot_cancel_an_inherited_interval_and_the_parent_still_can() {
    let _s = serial();
    let mut el = EventLoop::new(EventLoopOptions::default()).unwrap();
    el.run().unwrap();
    let (tx, rx) = channel();
    let interval = el
        .schedule_every(std::time::Duration::from_secs(3600), move |_, tick| {
            tx.send(tick.status).unwrap();
            reseau_linux::IntervalControl::Continue
        })
        .unwrap();
    // SAFETY: the child only reads atomics of memory it owns (the cancel is refused before
    // any lock is taken) and exits with `_exit`.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        let refused = !interval.cancel() && interval.is_active();
        // SAFETY: ends the child at once, without running the parent's atexit handlers.
        unsafe { libc::_exit(if refused { 0 } else { 1 }) };
    }
    let mut status = 0;
    // SAFETY: `status` is a valid out-pointer; `pid` is our child, which never blocks.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert_eq!(status, 0, "the child's cancel was not refused");
    assert!(interval.cancel(), "the parent's interval was untouched");
    assert_eq!(recv(&rx), reseau_linux::TickStatus::Canceled);
    el.destroy().unwrap();
}

/// A subscription on one end of a socketpair that reports each readable edge.
fn subscribed(h: &LoopHandle) -> (UnixStream, std::sync::mpsc::Receiver<Vec<u8>>) {
    let (ours, theirs) = UnixStream::pair().unwrap();
    ours.set_nonblocking(true).unwrap();
    let (tx, rx) = channel();
    h.subscribe(ours, Interest::READABLE, move |_, s, _| {
        let mut buf = [0u8; 64];
        while let Ok(n @ 1..) = std::io::Read::read(s, &mut buf) {
            tx.send(buf[..n].to_vec()).unwrap();
        }
        IoControl::Keep
    })
    .map_err(|e| e.kind)
    .unwrap();
    (theirs, rx)
}

#[test]
fn p01_a_forked_child_dropping_an_inherited_running_loop_leaves_the_parent_working() {
    let _s = serial();
    let el = EventLoop::new(EventLoopOptions::default()).unwrap();
    let (mut peer, readable) = subscribed(&el.handle());
    el.run().unwrap();
    peer.write_all(b"before").unwrap();
    assert_eq!(recv(&readable), b"before");

    let (mut el, status) = fork_and_drop_in_child(el);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "the child's checks failed (status {status:#x})"
    );
    // The parent's registration and wakeup are intact.
    peer.write_all(b"after").unwrap();
    assert_eq!(recv(&readable), b"after");
    let (tx, rx) = channel();
    el.schedule_now(move |_, st| tx.send(st).unwrap()).unwrap();
    assert_eq!(recv(&rx), TaskStatus::RunReady);
    el.destroy().unwrap();
}

#[test]
fn p01_a_forked_child_dropping_an_inherited_stopped_loop_leaves_the_parent_working() {
    let _s = serial();
    // Not running at the fork: the child's copy is its last reference, so its drop frees
    // the memory; it must still not deregister the sources (the epoll set is shared).
    let el = EventLoop::new(EventLoopOptions::default()).unwrap();
    let (mut peer, readable) = subscribed(&el.handle());
    let (tx, rx) = channel();
    let t = tx.clone();
    el.schedule_now(move |_, st| t.send(st).unwrap()).unwrap();
    let (mut el, status) = fork_and_drop_in_child(el);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "the child's checks failed (status {status:#x})"
    );
    el.run().unwrap();
    // The task pending at the fork runs once, here.
    assert_eq!(recv(&rx), TaskStatus::RunReady);
    peer.write_all(b"after").unwrap();
    assert_eq!(recv(&readable), b"after");
    el.destroy().unwrap();
    assert!(rx.try_recv().is_err());
}

/// The loop threads named `name` still listed, re-read until none is (a joined thread
/// leaves `/proc/self/task` a moment after `pthread_join` returns), bounded by the guard.
fn threads_settle(name: &str) -> usize {
    let start = Instant::now();
    loop {
        let n = reseau_tests::util::threads_named(name);
        if n == 0 || start.elapsed() > GUARD {
            return n;
        }
        std::thread::yield_now();
    }
}

#[test]
fn p02_ten_thousand_create_destroy_cycles_on_every_path_return_fds_and_threads_to_baseline() {
    let _s = serial();
    let paths = [
        ("modern", Arc::new(Faults::default())),
        (
            "timerfd",
            Arc::new(Faults {
                epoll_pwait2: Some(Errno::NOSYS),
                ..Faults::default()
            }),
        ),
        (
            "pipe2",
            Arc::new(Faults {
                eventfd: Some(Errno::NOSYS),
                ..Faults::default()
            }),
        ),
        (
            "legacy",
            Arc::new(Faults {
                epoll_create1: Some(Errno::NOSYS),
                eventfd: Some(Errno::NOSYS),
                pipe2: Some(Errno::NOSYS),
                ..Faults::default()
            }),
        ),
    ];
    let fds = open_fds();
    for (path, faults) in paths {
        let name = format!("p02-{path}");
        for i in 0..10_000 {
            let mut el = EventLoop::new(EventLoopOptions {
                capacity: 16,
                thread_name: name.clone(),
                ..faults.options()
            })
            .unwrap();
            if i % 100 == 0 {
                el.run().unwrap();
                el.schedule_now(|_, _| ()).unwrap();
            }
            if i % 2 == 0 {
                el.destroy().unwrap();
            } else {
                drop(el);
            }
        }
        assert_eq!(open_fds(), fds, "descriptors leaked on the {path} path");
        assert_eq!(
            threads_settle(&name),
            0,
            "loop threads left on the {path} path"
        );
    }
}

#[test]
fn p03_handles_outliving_the_loop_are_refused_clearly_and_the_loop_outlives_its_handles() {
    let _s = serial();
    let mut el = EventLoop::new(EventLoopOptions::default()).unwrap();
    el.run().unwrap();
    // Handles come and go; the loop does not care.
    for _ in 0..100 {
        let h = el.handle();
        let (tx, rx) = channel();
        h.schedule_now(move |_, st| tx.send(st).unwrap()).unwrap();
        assert_eq!(recv(&rx), TaskStatus::RunReady);
    }
    let h = el.handle();
    let (tx, rx) = channel();
    let far = h
        .schedule_at(h.now() + 3_600_000_000_000, move |_, st| {
            tx.send(st).unwrap()
        })
        .unwrap();
    el.destroy().unwrap();
    assert_eq!(recv(&rx), TaskStatus::Canceled);
    // After destroy: every operation through the surviving handle is refused with the
    // task or source handed back, never a panic.
    let e = h.schedule_now(|_, _| ()).unwrap_err();
    assert!(matches!(e.kind, ScheduleErrorKind::Destroyed(_)));
    assert!(!h.cancel(&far));
    let (s, _peer) = UnixStream::pair().unwrap();
    s.set_nonblocking(true).unwrap();
    let e = h
        .subscribe(s, Interest::READABLE, |_, _, _| IoControl::Keep)
        .unwrap_err();
    assert!(matches!(e.kind, SubscribeErrorKind::Destroyed(_)));
    assert!(matches!(h.stop(), Err(Error::InvalidState(_))));
    assert!(!h.is_on_loop_thread());
    assert_eq!(el.state(), State::Destroyed);
}
