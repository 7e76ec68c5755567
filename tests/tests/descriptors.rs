//! Contract items 1-3, 8 and 29: descriptor flags, creation fallbacks, errors that surface,
//! leaks. These tests count the process's descriptors, so they run one at a time (a lock),
//! in their own test binary.

use std::os::fd::OwnedFd;
use std::process::Command;
use std::sync::mpsc::channel;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use reseau_linux::{
    EpollBackend, Errno, Error, EventLoop, EventLoopOptions, SysError, TaskStatus, WakeupBackend,
};
use reseau_tests::util::{
    Faults, all_closed, is_child, is_cloexec, is_nonblocking, loop_fds, open_fds, recv,
    run_in_child, threads_named,
};

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// Asserts the flags of every descriptor of `el`: all close-on-exec, the wakeup's
/// non-blocking.
fn assert_flags(el: &EventLoop) {
    let fds = el.descriptors();
    assert!(!fds.is_empty());
    for (name, fd) in fds {
        assert!(is_cloexec(fd), "{name} lacks FD_CLOEXEC");
        if name != "epoll" {
            assert!(is_nonblocking(fd), "{name} lacks O_NONBLOCK");
        }
    }
}

/// Runs one task on `el` and checks it ran on the loop thread.
fn assert_runs_a_task(el: &EventLoop) {
    el.run().unwrap();
    let (tx, rx) = channel();
    el.schedule_now(move |h, st| tx.send((h.is_on_loop_thread(), st)).unwrap())
        .unwrap();
    assert_eq!(recv(&rx), (true, TaskStatus::RunReady));
}

#[test]
fn c01_descriptors_are_cloexec_and_the_wakeup_nonblocking() {
    let _serial = reseau_tests::util::fd_serial();
    let _s = serial();
    let mut el = EventLoop::new(EventLoopOptions::default()).unwrap();
    let backend = el.backend().unwrap();
    assert_eq!(backend.epoll, EpollBackend::Create1);
    assert_eq!(backend.wakeup, WakeupBackend::EventFd);
    let names: Vec<_> = el.descriptors().iter().map(|d| d.0).collect();
    assert_eq!(names, ["epoll", "eventfd"]);
    assert_flags(&el);
    el.destroy().unwrap();
}

/// Lists, from a child process started by exec, the targets of the child's open
/// descriptors.
fn child_fd_targets() -> Vec<String> {
    let out = Command::new("/bin/sh")
        .arg("-c")
        .arg("for f in /proc/$$/fd/*; do readlink \"$f\" || true; done; exit 0")
        .output()
        .expect("spawn /bin/sh");
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn fd_target(fd: i32) -> String {
    std::fs::read_link(format!("/proc/self/fd/{fd}"))
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

#[test]
fn c01_no_descriptor_leaks_across_exec_on_any_path() {
    let _serial = reseau_tests::util::fd_serial();
    let _s = serial();
    // The default path; the pipe2 wakeup; the legacy pipe() wakeup with legacy epoll.
    let pipe2_path = Arc::new(Faults {
        eventfd: Some(Errno::NOSYS),
        ..Faults::default()
    });
    let legacy_path = Arc::new(Faults {
        eventfd: Some(Errno::NOSYS),
        pipe2: Some(Errno::NOSYS),
        epoll_create1: Some(Errno::INVAL),
        ..Faults::default()
    });
    for options in [
        EventLoopOptions::default(),
        pipe2_path.options(),
        legacy_path.options(),
    ] {
        let mut el = EventLoop::new(options).unwrap();
        el.run().unwrap();
        let ours: Vec<String> = loop_fds(&el).into_iter().map(fd_target).collect();
        let child = child_fd_targets();
        for target in &ours {
            assert!(
                !child.contains(target),
                "{target} leaked across exec (child has {child:?})"
            );
        }
        assert!(
            !child
                .iter()
                .any(|t| t.contains("eventpoll") || t.contains("eventfd")),
            "an epoll or eventfd descriptor leaked across exec: {child:?}"
        );
        el.destroy().unwrap();
    }
}

#[test]
fn c02_each_fallback_is_taken_on_enosys_or_einval_with_the_same_flags_and_runs_tasks() {
    let _serial = reseau_tests::util::fd_serial();
    let _s = serial();
    type Case = (Faults, EpollBackend, WakeupBackend, &'static [&'static str]);
    let cases: Vec<Case> = vec![
        (
            Faults {
                epoll_create1: Some(Errno::NOSYS),
                ..Faults::default()
            },
            EpollBackend::Create,
            WakeupBackend::EventFd,
            &["epoll", "eventfd"],
        ),
        (
            Faults {
                epoll_create1: Some(Errno::INVAL),
                eventfd: Some(Errno::NOSYS),
                ..Faults::default()
            },
            EpollBackend::Create,
            WakeupBackend::Pipe2,
            &["epoll", "pipe read", "pipe write"],
        ),
        (
            Faults {
                eventfd: Some(Errno::INVAL),
                pipe2: Some(Errno::NOSYS),
                ..Faults::default()
            },
            EpollBackend::Create1,
            WakeupBackend::Pipe,
            &["epoll", "pipe read", "pipe write"],
        ),
        (
            Faults {
                eventfd: Some(Errno::NOSYS),
                pipe2: Some(Errno::INVAL),
                epoll_create1: Some(Errno::NOSYS),
                ..Faults::default()
            },
            EpollBackend::Create,
            WakeupBackend::Pipe,
            &["epoll", "pipe read", "pipe write"],
        ),
    ];
    for (faults, epoll, wakeup, names) in cases {
        let faults = Arc::new(faults);
        let mut el = EventLoop::new(faults.options()).unwrap();
        let backend = el.backend().unwrap();
        assert_eq!((backend.epoll, backend.wakeup), (epoll, wakeup));
        let got: Vec<_> = el.descriptors().iter().map(|d| d.0).collect();
        assert_eq!(got, names);
        assert_flags(&el);
        assert_runs_a_task(&el);
        // Wakeups work on this path too: a cross-thread schedule reaches a sleeping loop.
        let (tx, rx) = channel();
        let h = el.handle();
        std::thread::spawn(move || h.schedule_now(move |_, st| tx.send(st).unwrap()).unwrap())
            .join()
            .unwrap();
        assert_eq!(recv(&rx), TaskStatus::RunReady);
        el.destroy().unwrap();
        assert!(
            all_closed(&faults),
            "a descriptor of path {backend} stayed open"
        );
    }
}

#[test]
fn c02_other_errnos_surface_with_the_call_and_close_what_was_opened() {
    let _serial = reseau_tests::util::fd_serial();
    let _s = serial();
    let before = open_fds();
    let cases: Vec<(Faults, &str, Errno)> = vec![
        (
            Faults {
                epoll_create1: Some(Errno::MFILE),
                ..Faults::default()
            },
            "epoll_create1",
            Errno::MFILE,
        ),
        (
            Faults {
                eventfd: Some(Errno::NFILE),
                ..Faults::default()
            },
            "eventfd",
            Errno::NFILE,
        ),
        (
            Faults {
                eventfd: Some(Errno::NOSYS),
                pipe2: Some(Errno::PERM),
                ..Faults::default()
            },
            "pipe2",
            Errno::PERM,
        ),
        (
            Faults {
                eventfd: Some(Errno::NOSYS),
                pipe2: Some(Errno::NOSYS),
                pipe: Some(Errno::NOMEM),
                ..Faults::default()
            },
            "pipe",
            Errno::NOMEM,
        ),
        (
            Faults {
                epoll_create1: Some(Errno::NOSYS),
                set_cloexec: Some(Errno::BADF),
                ..Faults::default()
            },
            "fcntl(F_SETFD, FD_CLOEXEC)",
            Errno::BADF,
        ),
        (
            Faults {
                epoll_create1: Some(Errno::NOSYS),
                epoll_create: Some(Errno::MFILE),
                ..Faults::default()
            },
            "epoll_create",
            Errno::MFILE,
        ),
        (
            Faults {
                eventfd: Some(Errno::NOSYS),
                pipe2: Some(Errno::NOSYS),
                set_cloexec: Some(Errno::BADF),
                ..Faults::default()
            },
            // The legacy epoll path is not taken here, so the first F_SETFD is the pipe's.
            "fcntl(F_SETFD, FD_CLOEXEC)",
            Errno::BADF,
        ),
    ];
    for (faults, call, errno) in cases {
        let faults = Arc::new(faults);
        match EventLoop::new(faults.options()).unwrap_err() {
            Error::Sys(e) => assert_eq!(e, SysError { call, errno }),
            other => panic!("expected {call} failing with {errno}, got {other:?}"),
        }
        assert!(
            all_closed(&faults),
            "a failure in {call} leaked a descriptor"
        );
    }
    assert_eq!(open_fds(), before);
}

#[test]
fn c02_emfile_from_a_lowered_rlimit_surfaces_and_leaks_nothing() {
    let _serial = reseau_tests::util::fd_serial();
    if !is_child("RESEAU_CHILD") {
        let _s = serial();
        return run_in_child(
            "RESEAU_CHILD",
            "c02_emfile_from_a_lowered_rlimit_surfaces_and_leaks_nothing",
        );
    }
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let before = open_fds();
    let highest = *before.iter().max().unwrap() as u64;
    let old = getrlimit(Resource::Nofile);
    // One number above the highest open descriptor, so at least one filler exists even
    // when the process holds no gap (a CI child often has only 0, 1 and 2 open).
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(highest + 2),
            maximum: old.maximum,
        },
    )
    .unwrap();
    // Fill every free descriptor number below the limit, so the next one fails.
    let mut fillers: Vec<OwnedFd> = Vec::new();
    let filled = loop {
        match rustix::io::fcntl_dupfd_cloexec(std::io::stderr(), 0) {
            Ok(fd) => fillers.push(fd),
            Err(errno) => break errno,
        }
    };
    assert_eq!(filled, Errno::MFILE, "filling stopped for another reason");
    assert!(!fillers.is_empty(), "the limit left no number to free");
    // Room for no descriptor at all: epoll_create1 fails.
    match EventLoop::new(EventLoopOptions::default()).unwrap_err() {
        Error::Sys(e) => assert_eq!(
            e,
            SysError {
                call: "epoll_create1",
                errno: Errno::MFILE
            }
        ),
        other => panic!("{other:?}"),
    }
    // Room for the epoll descriptor only: eventfd fails, and the epoll fd is closed.
    drop(fillers.pop());
    match EventLoop::new(EventLoopOptions::default()).unwrap_err() {
        Error::Sys(e) => assert_eq!(
            e,
            SysError {
                call: "eventfd",
                errno: Errno::MFILE
            }
        ),
        other => panic!("{other:?}"),
    }
    drop(fillers);
    setrlimit(Resource::Nofile, old).unwrap();
    assert_eq!(open_fds(), before);
}

#[test]
fn c03_ten_thousand_create_destroy_cycles_leave_the_fd_count_unchanged() {
    let _serial = reseau_tests::util::fd_serial();
    let _s = serial();
    let before = open_fds();
    for i in 0..10_000 {
        let mut el = EventLoop::new(EventLoopOptions {
            capacity: 64,
            ..EventLoopOptions::default()
        })
        .unwrap();
        if i % 100 == 0 {
            el.run().unwrap();
        }
        el.destroy().unwrap();
    }
    // Dropping without destroy destroys too.
    for _ in 0..100 {
        let el = EventLoop::new(EventLoopOptions::default()).unwrap();
        el.run().unwrap();
        drop(el);
    }
    assert_eq!(open_fds(), before);
}

/// Whether no thread named `name` is left, once the kernel has reaped the joined ones.
///
/// `pthread_join` returns when the kernel clears the thread's tid (`CLONE_CHILD_CLEARTID`,
/// in `exit_mm`), a moment *before* the exiting task leaves `/proc/self/task`
/// (`release_task`): a joined thread may still be listed for a few microseconds. No
/// primitive tells when it is gone, so this re-reads the list, bounded by the failure guard.
fn thread_gone(name: &str) -> bool {
    let deadline = std::time::Instant::now() + reseau_tests::util::GUARD;
    while threads_named(name) != 0 {
        if std::time::Instant::now() > deadline {
            return false;
        }
        std::thread::yield_now();
    }
    true
}

#[test]
fn c29_running_and_stopping_many_times_or_never_leaks_no_thread_and_no_descriptor() {
    let _serial = reseau_tests::util::fd_serial();
    let _s = serial();
    let fds = open_fds();
    let options = EventLoopOptions {
        thread_name: "reseau-c29".into(),
        ..EventLoopOptions::default()
    };
    let mut never_ran = EventLoop::new(options.clone()).unwrap();
    never_ran.destroy().unwrap();
    let mut el = EventLoop::new(options).unwrap();
    for _ in 0..100 {
        el.run().unwrap();
        // Once a task has run, the thread has named itself.
        let (tx, rx) = channel();
        el.schedule_now(move |_, _| tx.send(()).unwrap()).unwrap();
        recv(&rx);
        assert_eq!(threads_named("reseau-c29"), 1);
        el.stop().unwrap();
        el.wait_for_stop_completion().unwrap();
        assert!(thread_gone("reseau-c29"), "a stopped loop left its thread");
    }
    el.run().unwrap();
    el.destroy().unwrap();
    assert_eq!(open_fds(), fds);
    assert!(thread_gone("reseau-c29"));
}

#[test]
fn c08_teardown_closes_nothing_while_the_loop_thread_is_alive() {
    let _serial = reseau_tests::util::fd_serial();
    let _s = serial();
    let before = open_fds();
    let mut el = EventLoop::new(EventLoopOptions {
        teardown_timeout: Some(Duration::from_millis(50)),
        ..EventLoopOptions::default()
    })
    .unwrap();
    el.run().unwrap();
    let fds = loop_fds(&el);
    let targets: Vec<String> = fds.iter().map(|&fd| fd_target(fd)).collect();
    let (stuck_tx, stuck_rx) = channel::<()>();
    let (entered_tx, entered_rx) = channel();
    el.schedule_now(move |_, _| {
        entered_tx.send(()).unwrap();
        // Blocks until the test lets it go: the loop thread stays alive through destroy.
        let _ = stuck_rx.recv();
    })
    .unwrap();
    let (canceled_tx, canceled_rx) = channel();
    el.schedule_at(u64::MAX, move |h, st| {
        canceled_tx.send((st, h.is_on_loop_thread())).unwrap()
    })
    .unwrap();
    recv(&entered_rx);
    assert!(matches!(el.destroy(), Err(Error::LoopThreadAlive)));
    // Nothing closed: the descriptors still name the same objects.
    for (fd, target) in fds.iter().zip(&targets) {
        assert_eq!(
            &fd_target(*fd),
            target,
            "fd {fd} changed while the loop lived"
        );
    }
    assert!(
        canceled_rx.try_recv().is_err(),
        "nothing canceled under a live loop"
    );
    // Let the loop go: it cancels what remains on its own thread and closes its fds.
    stuck_tx.send(()).unwrap();
    assert_eq!(recv(&canceled_rx), (TaskStatus::Canceled, true));
    let deadline = std::time::Instant::now() + reseau_tests::util::GUARD;
    while open_fds() != before {
        assert!(
            std::time::Instant::now() < deadline,
            "the loop's fds never closed"
        );
        std::thread::yield_now();
    }
    assert!(
        el.descriptors().is_empty(),
        "a destroyed loop reports no descriptors"
    );
}

#[test]
fn c16_panicking_tasks_and_callbacks_leak_no_descriptor() {
    let _serial = reseau_tests::util::fd_serial();
    let _s = serial();
    let before = open_fds();
    let mut el = EventLoop::new(EventLoopOptions::default()).unwrap();
    el.run().unwrap();
    let h = el.handle();
    let (r, w) = rustix::pipe::pipe_with(
        rustix::pipe::PipeFlags::NONBLOCK | rustix::pipe::PipeFlags::CLOEXEC,
    )
    .unwrap();
    h.subscribe(
        r,
        reseau_linux::Interest::READABLE,
        |_, _: &mut OwnedFd, _| panic!("IO callback panics on purpose"),
    )
    .unwrap();
    h.schedule_now(|_, _| panic!("task panics on purpose"))
        .unwrap();
    assert_eq!(rustix::io::write(&w, b"x").unwrap(), 1);
    h.schedule_at(u64::MAX, |_, _| panic!("canceled task panics on purpose"))
        .unwrap();
    // Both run-time panics are behind us once a later task has run in a later tick.
    // Both run-time panics are behind us once a later task sees them counted (the IO
    // event may come a tick after the write).
    let (tx, rx) = channel();
    let caught = (0..1000)
        .map(|_| {
            let tx = tx.clone();
            h.schedule_now(move |h, _| tx.send(h.stats().panics_caught).unwrap())
                .unwrap();
            recv(&rx)
        })
        .find(|&n| n >= 2);
    assert_eq!(caught, Some(2));
    el.destroy().unwrap();
    drop(el);
    drop(w);
    // The epoll fd, the wakeup and the subscribed read end are all closed.
    assert_eq!(open_fds(), before);
}
