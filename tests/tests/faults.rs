//! The fault matrix on the real kernel: each named test runs its body in a child process
//! (this binary run again, see `util::run_in_child`) under a seccomp filter
//! (`reseau_tests::seccomp`) that makes chosen syscalls fail with chosen errnos, as old
//! kernels and sandboxes do.
//!
//! - `epoll_create1` refused with `ENOSYS`/`EINVAL` → the legacy `epoll_create` path;
//!   with `EPERM` → the error surfaces, nothing leaks.
//! - `eventfd2` → `pipe2`; `eventfd2` + `pipe2` → `pipe()`; all three refused → the oldest
//!   path, which schedules, cancels, restarts and destroys correctly, with IO.
//! - `EMFILE` and `ENOMEM` at each creation step and at `epoll_ctl(ADD)` of the wakeup and
//!   of a subscription: the error names the call, the descriptor count is unchanged, and
//!   the loop, where one was built, still works.
//! - `epoll_wait` interrupted by a real signal storm → no task lost, one retry per signal
//!   (no hot spin); refused with `EBADF`/`EINVAL` → the loop stops with that error,
//!   reported once. (A seccomp `EINTR` would be permanent, which no kernel does: injected
//!   one-off `EINTR`s go through the syscall seam in `lifecycle.rs`, c28.)
//! - The tour and the echo server, end to end, on every descriptor path.
//!
//! x86_64 only: the filter names x86_64 syscall numbers, and the legacy calls exist only
//! where `__NR_epoll_create` and `__NR_pipe` do.
#![cfg(target_arch = "x86_64")]

#[allow(dead_code)]
#[path = "../../linux/examples/echo/client.rs"]
mod client;
#[allow(dead_code)]
#[path = "../../linux/examples/echo/server.rs"]
mod server;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::channel;
use std::thread;

use reseau_linux::{
    EpollBackend, Error, EventLoop, EventLoopOptions, Interest, IoControl, SubscribeErrorKind,
    SysError, TaskStatus, WakeupBackend,
};
use reseau_tests::seccomp::{self, Rule};
use reseau_tests::util::{
    GUARD, is_child, is_cloexec, is_nonblocking, open_fds, recv, run_in_child, run_in_child_with,
};

const MARKER: &str = "RESEAU_FAULT_CHILD";
const ERRNO_VAR: &str = "RESEAU_FAULT_ERRNO";

/// In the parent: runs test `name` in a child and returns false. In the child: true.
fn child(name: &str) -> bool {
    if is_child(MARKER) {
        return true;
    }
    run_in_child(MARKER, name);
    false
}

/// In the parent: runs test `name` in one child per errno and returns `None`. In a child:
/// `Some(errno)`, its errno.
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

fn errno(e: i32) -> reseau_linux::Errno {
    reseau_linux::Errno::from_raw_os_error(e)
}

const MODERN: [libc::c_long; 3] = [libc::SYS_epoll_create1, libc::SYS_eventfd2, libc::SYS_pipe2];

fn enosys(calls: &[libc::c_long]) -> Vec<Rule> {
    calls
        .iter()
        .map(|&nr| Rule::deny(nr, libc::ENOSYS))
        .collect()
}

/// The whole contract on one loop, on whatever path the filter left it: flags, tasks
/// from another thread, a cross-thread cancel, IO on a pipe made by the same fallback
/// chain, stop / wait / restart, and a destroy that cancels what is left; the process's
/// descriptors back to where they were.
fn exercise(epoll: EpollBackend, wakeup: WakeupBackend) {
    let fds_before = open_fds();
    let mut el = EventLoop::new(EventLoopOptions::default()).expect("a loop on this path");
    let backend = el.backend().unwrap();
    assert_eq!((backend.epoll, backend.wakeup), (epoll, wakeup));
    for (name, fd) in el.descriptors() {
        assert!(is_cloexec(fd), "{name} lacks FD_CLOEXEC");
        if name != "epoll" {
            assert!(is_nonblocking(fd), "{name} lacks O_NONBLOCK");
        }
    }
    let h = el.handle();
    let (tx, rx) = channel();
    let far = h.now() + 3_600_000_000_000;
    let t = tx.clone();
    let to_cancel = h
        .schedule_at(far, move |_, st| t.send(("canceled", st)).unwrap())
        .unwrap();
    let t = tx.clone();
    h.schedule_at(far, move |_, st| t.send(("left", st)).unwrap())
        .unwrap();
    el.run().unwrap();

    let (h2, t) = (h.clone(), tx.clone());
    thread::spawn(move || {
        h2.schedule_now(move |h, st| {
            assert!(h.is_on_loop_thread());
            t.send(("now", st)).unwrap();
        })
        .map_err(|e| e.kind)
        .unwrap();
    })
    .join()
    .unwrap();
    assert_eq!(recv(&rx), ("now", TaskStatus::RunReady));
    let h2 = h.clone();
    assert!(thread::spawn(move || h2.cancel(&to_cancel)).join().unwrap());
    assert_eq!(recv(&rx), ("canceled", TaskStatus::Canceled));

    let (read, write) = reseau_linux::sys::nonblocking_pipe().expect("a pipe on this path");
    let (io_tx, io_rx) = channel();
    h.subscribe(read, Interest::READABLE, move |_, fd, _| {
        let mut buf = [0u8; 16];
        while let Ok(n @ 1..) = rustix::io::read(&*fd, &mut buf) {
            io_tx.send(buf[..n].to_vec()).unwrap();
        }
        IoControl::Keep
    })
    .map_err(|e| e.kind)
    .unwrap();
    let write = Arc::new(write);
    let w = write.clone();
    thread::spawn(move || rustix::io::write(&*w, b"x").unwrap())
        .join()
        .unwrap();
    assert_eq!(recv(&io_rx), b"x");

    el.stop().unwrap();
    el.wait_for_stop_completion().unwrap();
    el.run().unwrap();
    let t = tx.clone();
    h.schedule_now(move |_, st| t.send(("restarted", st)).unwrap())
        .unwrap();
    assert_eq!(recv(&rx), ("restarted", TaskStatus::RunReady));
    rustix::io::write(&*write, b"y").unwrap();
    assert_eq!(recv(&io_rx), b"y");

    el.destroy().unwrap();
    assert_eq!(recv(&rx), ("left", TaskStatus::Canceled));
    assert!(rx.try_recv().is_err(), "a task ran twice");
    drop(write);
    assert_eq!(open_fds(), fds_before, "descriptors leaked");
}

/// `EventLoop::new` fails with `call` and `errno`, leaving the descriptors as they were.
fn new_fails_with(call: &str, e: i32) {
    let before = open_fds();
    match EventLoop::new(EventLoopOptions::default()) {
        Err(Error::Sys(SysError {
            call: c,
            errno: got,
        })) => {
            assert_eq!((c, got), (call, errno(e)));
        }
        Err(other) => panic!("expected {call} failing with {e}, got {other:?}"),
        Ok(_) => panic!("expected {call} failing with {e}, got a loop"),
    }
    assert_eq!(open_fds(), before, "a failed new leaked descriptors");
}

#[test]
fn f01_epoll_create1_enosys_takes_the_legacy_epoll_create_and_everything_works() {
    if child("f01_epoll_create1_enosys_takes_the_legacy_epoll_create_and_everything_works") {
        seccomp::install(&enosys(&[libc::SYS_epoll_create1]));
        exercise(EpollBackend::Create, WakeupBackend::EventFd);
    }
}

#[test]
fn f01_epoll_create1_einval_takes_the_legacy_epoll_create_and_everything_works() {
    if child("f01_epoll_create1_einval_takes_the_legacy_epoll_create_and_everything_works") {
        seccomp::install(&[Rule::deny(libc::SYS_epoll_create1, libc::EINVAL)]);
        exercise(EpollBackend::Create, WakeupBackend::EventFd);
    }
}

#[test]
fn f01_epoll_create1_eperm_surfaces_and_leaks_nothing() {
    if child("f01_epoll_create1_eperm_surfaces_and_leaks_nothing") {
        seccomp::install(&[Rule::deny(libc::SYS_epoll_create1, libc::EPERM)]);
        new_fails_with("epoll_create1", libc::EPERM);
    }
}

#[test]
fn f02_eventfd2_enosys_takes_pipe2_and_everything_works() {
    if child("f02_eventfd2_enosys_takes_pipe2_and_everything_works") {
        seccomp::install(&enosys(&[libc::SYS_eventfd2]));
        exercise(EpollBackend::Create1, WakeupBackend::Pipe2);
    }
}

#[test]
fn f02_eventfd2_and_pipe2_enosys_take_pipe_and_everything_works() {
    if child("f02_eventfd2_and_pipe2_enosys_take_pipe_and_everything_works") {
        seccomp::install(&enosys(&[libc::SYS_eventfd2, libc::SYS_pipe2]));
        exercise(EpollBackend::Create1, WakeupBackend::Pipe);
    }
}

#[test]
fn f02_all_three_refused_the_oldest_path_schedules_cancels_restarts_destroys_with_io() {
    if child("f02_all_three_refused_the_oldest_path_schedules_cancels_restarts_destroys_with_io") {
        seccomp::install(&enosys(&MODERN));
        exercise(EpollBackend::Create, WakeupBackend::Pipe);
    }
}

const EMFILE_ENOMEM: [i32; 2] = [libc::EMFILE, libc::ENOMEM];

#[test]
fn f03_emfile_enomem_at_epoll_create1_name_the_call_and_leak_nothing() {
    let name = "f03_emfile_enomem_at_epoll_create1_name_the_call_and_leak_nothing";
    if let Some(e) = child_per_errno(name, &EMFILE_ENOMEM) {
        seccomp::install(&[Rule::deny(libc::SYS_epoll_create1, e)]);
        new_fails_with("epoll_create1", e);
    }
}

#[test]
fn f03_emfile_enomem_at_the_legacy_epoll_create_name_the_call_and_leak_nothing() {
    let name = "f03_emfile_enomem_at_the_legacy_epoll_create_name_the_call_and_leak_nothing";
    if let Some(e) = child_per_errno(name, &EMFILE_ENOMEM) {
        seccomp::install(&[
            Rule::deny(libc::SYS_epoll_create1, libc::ENOSYS),
            Rule::deny(libc::SYS_epoll_create, e),
        ]);
        new_fails_with("epoll_create", e);
    }
}

#[test]
fn f03_emfile_enomem_at_eventfd2_name_the_call_and_leak_nothing() {
    let name = "f03_emfile_enomem_at_eventfd2_name_the_call_and_leak_nothing";
    if let Some(e) = child_per_errno(name, &EMFILE_ENOMEM) {
        seccomp::install(&[Rule::deny(libc::SYS_eventfd2, e)]);
        new_fails_with("eventfd", e);
    }
}

#[test]
fn f03_emfile_enomem_at_pipe2_name_the_call_and_leak_nothing() {
    let name = "f03_emfile_enomem_at_pipe2_name_the_call_and_leak_nothing";
    if let Some(e) = child_per_errno(name, &EMFILE_ENOMEM) {
        seccomp::install(&[
            Rule::deny(libc::SYS_eventfd2, libc::ENOSYS),
            Rule::deny(libc::SYS_pipe2, e),
        ]);
        new_fails_with("pipe2", e);
    }
}

#[test]
fn f03_emfile_enomem_at_the_legacy_pipe_name_the_call_and_leak_nothing() {
    let name = "f03_emfile_enomem_at_the_legacy_pipe_name_the_call_and_leak_nothing";
    if let Some(e) = child_per_errno(name, &EMFILE_ENOMEM) {
        seccomp::install(&[
            Rule::deny(libc::SYS_eventfd2, libc::ENOSYS),
            Rule::deny(libc::SYS_pipe2, libc::ENOSYS),
            Rule::deny(libc::SYS_pipe, e),
        ]);
        new_fails_with("pipe", e);
    }
}

#[test]
fn f03_emfile_enomem_at_epoll_ctl_add_of_the_wakeup_surface_from_run_and_turn() {
    let name = "f03_emfile_enomem_at_epoll_ctl_add_of_the_wakeup_surface_from_run_and_turn";
    if let Some(e) = child_per_errno(name, &EMFILE_ENOMEM) {
        seccomp::install(&[Rule::epoll_ctl(libc::EPOLL_CTL_ADD, e)]);
        let before = open_fds();
        let mut el = EventLoop::new(EventLoopOptions::default()).unwrap();
        let (tx, rx) = channel();
        el.schedule_now(move |_, st| tx.send(st).unwrap()).unwrap();
        let expect = |r: Result<(), Error>| match r {
            Err(Error::Sys(SysError { call, errno: got })) => {
                assert_eq!((call, got), ("epoll_ctl(ADD wakeup)", errno(e)));
            }
            other => panic!("expected epoll_ctl(ADD wakeup) failing, got {other:?}"),
        };
        expect(el.run());
        expect(el.turn(Some(std::time::Duration::ZERO)).map(|_| ()));
        expect(el.run_here());
        // Nothing ran and nothing was lost: the loop is still ready, and its destroy
        // cancels the task exactly once.
        assert_eq!(el.state(), reseau_linux::State::Ready);
        el.destroy().unwrap();
        assert_eq!(recv(&rx), TaskStatus::Canceled);
        assert_eq!(open_fds(), before, "descriptors leaked");
    }
}

#[test]
fn f03_emfile_enomem_at_epoll_ctl_add_of_a_subscription_hand_the_source_back() {
    let name = "f03_emfile_enomem_at_epoll_ctl_add_of_a_subscription_hand_the_source_back";
    if let Some(e) = child_per_errno(name, &EMFILE_ENOMEM) {
        // The loop thread exists before the filter, so only this thread's calls fail.
        let mut el = EventLoop::new(EventLoopOptions::default()).unwrap();
        el.run().unwrap();
        let (read, write) = reseau_linux::sys::nonblocking_pipe().unwrap();
        let before = open_fds();
        seccomp::install(&[Rule::epoll_ctl(libc::EPOLL_CTL_ADD, e)]);
        let err = el
            .subscribe(read, Interest::READABLE, |_, _, _| IoControl::Keep)
            .unwrap_err();
        assert_eq!(
            err.kind,
            SubscribeErrorKind::Sys(SysError {
                call: "epoll_ctl(ADD)",
                errno: errno(e)
            })
        );
        assert_eq!(el.subscriptions(), 0);
        // The source came back, open; nothing else was opened or closed.
        assert!(rustix::io::fcntl_getfd(&err.source).is_ok());
        assert_eq!(open_fds(), before);
        // The loop still works.
        let (tx, rx) = channel();
        el.schedule_now(move |_, st| tx.send(st).unwrap()).unwrap();
        assert_eq!(recv(&rx), TaskStatus::RunReady);
        drop((err, write));
        el.destroy().unwrap();
    }
}

extern "C" fn on_sigusr1(_: libc::c_int) {}

#[test]
fn f04_a_real_signal_storm_interrupts_epoll_wait_without_losing_a_task_or_spinning() {
    if !child("f04_a_real_signal_storm_interrupts_epoll_wait_without_losing_a_task_or_spinning") {
        return;
    }
    // A handler (not SIG_IGN, which never interrupts): every delivery to a thread blocked
    // in epoll_wait makes it return EINTR, SA_RESTART or not (epoll_wait is never
    // restarted after a handler, signal(7)).
    // SAFETY: a zeroed sigaction is a valid "no flags, empty mask"; the handler is an
    // extern "C" fn that does nothing, async-signal-safe.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_sigusr1 as *const () as libc::sighandler_t;
        assert_eq!(libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut()), 0);
    }
    let mut el = EventLoop::new(EventLoopOptions::default()).unwrap();
    el.run().unwrap();
    let h = el.handle();
    let (tid_tx, tid_rx) = channel();
    // SAFETY: pthread_self has no preconditions.
    h.schedule_now(move |_, _| tid_tx.send(unsafe { libc::pthread_self() }).unwrap())
        .unwrap();
    let loop_thread = recv(&tid_rx) as usize;
    let kill = move |n: usize| {
        for _ in 0..n {
            // SAFETY: the loop thread is alive until destroy, after the storms end.
            let r = unsafe { libc::pthread_kill(loop_thread as libc::pthread_t, libc::SIGUSR1) };
            assert_eq!(r, 0);
        }
    };

    // A storm while tasks flow: every task runs.
    const TASKS: usize = 20_000;
    let ran = Arc::new(AtomicUsize::new(0));
    let storm = thread::spawn(move || kill(20_000));
    for _ in 0..TASKS {
        let r = ran.clone();
        let mut result = h.schedule_now(move |_, st| {
            assert_eq!(st, TaskStatus::RunReady);
            r.fetch_add(1, Ordering::Relaxed);
        });
        // Full: the task comes back as it is; hand it in again.
        while let Err(e) = result {
            result = h.schedule_task(e.task, e.when);
        }
    }
    storm.join().unwrap();
    let (tx, rx) = channel();
    let t = tx.clone();
    h.schedule_now(move |_, _| t.send(()).unwrap()).unwrap();
    recv(&rx);
    assert_eq!(ran.load(Ordering::Relaxed), TASKS, "a task was lost");

    // An idle loop: each signal costs at most one more wait, never a spin.
    const SIGNALS: u64 = 1_000;
    let waits_before = el.stats().epoll_waits;
    kill(SIGNALS as usize);
    h.schedule_now(move |_, _| tx.send(()).unwrap()).unwrap();
    recv(&rx);
    let waits = el.stats().epoll_waits - waits_before;
    assert!(
        waits <= SIGNALS + 4,
        "{waits} epoll_waits for {SIGNALS} signals and one task: the loop spins"
    );
    el.destroy().unwrap();
}

#[test]
fn f04_epoll_wait_ebadf_or_einval_stops_the_loop_with_that_error_reported_once() {
    let name = "f04_epoll_wait_ebadf_or_einval_stops_the_loop_with_that_error_reported_once";
    if let Some(e) = child_per_errno(name, &[libc::EBADF, libc::EINVAL]) {
        let mut el = EventLoop::new(EventLoopOptions::default()).unwrap();
        let (tx, rx) = channel();
        el.schedule_at(el.now() + 3_600_000_000_000, move |_, st| {
            tx.send(st).unwrap()
        })
        .unwrap();
        // The loop thread, spawned after the filter, inherits it.
        seccomp::install(&seccomp::epoll_waits(e));
        el.run().unwrap();
        match el.wait_for_stop_completion() {
            Err(Error::Sys(SysError { call, errno: got })) => {
                let expected = match el.backend().unwrap().timer {
                    reseau_linux::TimerBackend::Pwait2 => "epoll_pwait2",
                    _ => "epoll_wait",
                };
                assert_eq!((call, got), (expected, errno(e)));
            }
            other => panic!("expected epoll_wait failing with {e}, got {other:?}"),
        }
        // Reported once: the next wait is clean, the loop is ready, nothing was lost.
        el.wait_for_stop_completion().unwrap();
        assert_eq!(el.state(), reseau_linux::State::Ready);
        assert!(el.stats().epoll_waits <= 2, "the failing wait was retried");
        el.destroy().unwrap();
        assert_eq!(recv(&rx), TaskStatus::Canceled);
    }
}

/// The filters of the four descriptor paths: the modern calls, then each fallback.
fn path_rules(path: &str) -> Vec<Rule> {
    match path {
        "modern" => Vec::new(),
        "pipe2" => enosys(&[libc::SYS_eventfd2]),
        "pipe" => enosys(&[libc::SYS_eventfd2, libc::SYS_pipe2]),
        "legacy" => enosys(&MODERN),
        other => panic!("unknown path {other}"),
    }
}

const PATHS: [&str; 4] = ["modern", "pipe2", "pipe", "legacy"];

/// The tour example, built by `cargo test --workspace` beside this binary.
fn tour_binary() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(|d| d.parent()).unwrap();
    let tour = dir.join("examples").join("tour");
    assert!(
        tour.exists(),
        "{} is missing: build the examples first (`cargo test --workspace` does)",
        tour.display()
    );
    tour
}

#[test]
fn f05_the_tour_runs_end_to_end_on_every_descriptor_path() {
    let name = "f05_the_tour_runs_end_to_end_on_every_descriptor_path";
    if !is_child(MARKER) {
        let tour = tour_binary();
        for path in PATHS {
            run_in_child_with(
                MARKER,
                name,
                &[
                    ("RESEAU_PATH", path),
                    ("RESEAU_TOUR", tour.to_str().unwrap()),
                ],
            );
        }
        return;
    }
    let path = std::env::var("RESEAU_PATH").unwrap();
    seccomp::install(&path_rules(&path));
    // The tour's output goes to a file: capturing it would need pipe2 in the spawner.
    let out_path = std::env::temp_dir().join(format!("reseau-tour-{}", std::process::id()));
    let out = std::fs::File::create(&out_path).unwrap();
    let status = std::process::Command::new(std::env::var("RESEAU_TOUR").unwrap())
        .stdout(out)
        .status()
        .expect("spawn the tour under the filter");
    let printed = std::fs::read_to_string(&out_path).unwrap();
    let _ = std::fs::remove_file(&out_path);
    assert!(
        status.success(),
        "the tour failed on the {path} path:\n{printed}"
    );
    let expect = match path.as_str() {
        "modern" => "eventfd(",
        "pipe2" => "pipe2(",
        _ => "pipe + F_SETFD",
    };
    let backend_line = printed.lines().next().unwrap_or_default();
    assert!(
        backend_line.starts_with("backend:") && backend_line.contains(expect),
        "the tour did not report the {path} path: {backend_line:?}"
    );
}

#[test]
fn f05_the_echo_server_runs_end_to_end_on_every_descriptor_path() {
    let name = "f05_the_echo_server_runs_end_to_end_on_every_descriptor_path";
    if !is_child(MARKER) {
        for path in PATHS {
            run_in_child_with(MARKER, name, &[("RESEAU_PATH", path)]);
        }
        return;
    }
    let path = std::env::var("RESEAU_PATH").unwrap();
    seccomp::install(&path_rules(&path));
    let before = open_fds();
    let options = server::ServerOptions {
        loops: 2,
        ..server::ServerOptions::default()
    };
    let srv = server::Server::start("127.0.0.1:0".parse().unwrap(), &options).unwrap();
    let msg: Vec<u8> = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
    let mut conns: Vec<TcpStream> = (0..4)
        .map(|_| {
            let c = TcpStream::connect(srv.local_addr()).unwrap();
            c.set_read_timeout(Some(GUARD)).unwrap();
            c.set_write_timeout(Some(GUARD)).unwrap();
            c
        })
        .collect();
    for c in &mut conns {
        let mut w = c.try_clone().unwrap();
        let m = msg.clone();
        let writer = thread::spawn(move || w.write_all(&m).unwrap());
        let mut got = vec![0u8; msg.len()];
        c.read_exact(&mut got).unwrap();
        writer.join().unwrap();
        assert!(got == msg, "the echo differs on the {path} path");
    }
    drop(conns);
    srv.shutdown().unwrap();
    assert_eq!(open_fds(), before, "descriptors leaked on the {path} path");
}
