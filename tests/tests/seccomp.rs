//! Contract item 2 against the real kernel: under a seccomp filter that answers `ENOSYS`
//! to `epoll_create1`, `eventfd2` and `pipe2` (as an old kernel or a strict sandbox would),
//! a loop still comes up — through the legacy numbered `epoll_create` and `pipe` syscalls —
//! with every descriptor close-on-exec and the wakeup non-blocking, and runs tasks.
//!
//! The filter applies to the installing thread and the threads it spawns afterwards, so it
//! is installed in a child process (this test binary re-executed), never in the test runner.
//! x86_64 only: the legacy syscalls exist only where `__NR_epoll_create` does, and the
//! filter checks the x86_64 audit architecture.
#![cfg(target_arch = "x86_64")]

use std::sync::mpsc::channel;

use reseau_linux::{EpollBackend, EventLoop, EventLoopOptions, TaskStatus, WakeupBackend};
use reseau_tests::seccomp::{self, Rule};
use reseau_tests::util::{is_child, is_cloexec, is_nonblocking, recv, run_in_child};

/// `ENOSYS` for the modern descriptor calls, everything else allowed.
fn deny_modern_calls() {
    seccomp::install(&[
        Rule::deny(libc::SYS_epoll_create1, libc::ENOSYS),
        Rule::deny(libc::SYS_eventfd2, libc::ENOSYS),
        Rule::deny(libc::SYS_pipe2, libc::ENOSYS),
    ]);
}

#[test]
fn c02_under_seccomp_enosys_the_legacy_fallbacks_work_against_the_real_kernel() {
    if !is_child("RESEAU_SECCOMP_CHILD") {
        return run_in_child(
            "RESEAU_SECCOMP_CHILD",
            "c02_under_seccomp_enosys_the_legacy_fallbacks_work_against_the_real_kernel",
        );
    }
    deny_modern_calls();
    // The filter answers: the modern calls are gone for this process from here on.
    assert_eq!(
        rustix::event::epoll::create(rustix::event::epoll::CreateFlags::CLOEXEC).unwrap_err(),
        rustix::io::Errno::NOSYS
    );
    let mut el = EventLoop::new(EventLoopOptions::default()).unwrap();
    let backend = el.backend().unwrap();
    assert_eq!(backend.epoll, EpollBackend::Create);
    assert_eq!(backend.wakeup, WakeupBackend::Pipe);
    for (name, fd) in el.descriptors() {
        assert!(is_cloexec(fd), "{name} lacks FD_CLOEXEC");
        if name != "epoll" {
            assert!(is_nonblocking(fd), "{name} lacks O_NONBLOCK");
        }
    }
    el.run().unwrap();
    let (tx, rx) = channel();
    let h = el.handle();
    std::thread::spawn(move || {
        h.schedule_now(move |h, st| tx.send((h.is_on_loop_thread(), st)).unwrap())
            .unwrap()
    })
    .join()
    .unwrap();
    assert_eq!(recv(&rx), (true, TaskStatus::RunReady));
    el.destroy().unwrap();
}
