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
use reseau_tests::util::{is_child, is_cloexec, is_nonblocking, recv, run_in_child};

const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;
const BPF_LD_W_ABS: u16 = 0x20;
const BPF_JEQ_K: u16 = 0x15;
const BPF_RET_K: u16 = 0x06;
const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;

fn stmt(code: u16, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jeq(k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter {
        code: BPF_JEQ_K,
        jt,
        jf,
        k,
    }
}

/// Installs a filter on this thread (and its future children): `ENOSYS` for the modern
/// descriptor calls, everything else allowed.
fn deny_modern_calls() {
    let enosys = SECCOMP_RET_ERRNO | libc::ENOSYS as u32;
    let filter = [
        // seccomp_data.arch is at offset 4; another architecture: allow (no-op filter).
        stmt(BPF_LD_W_ABS, 4),
        jeq(AUDIT_ARCH_X86_64, 0, 4),
        // seccomp_data.nr is at offset 0.
        stmt(BPF_LD_W_ABS, 0),
        jeq(libc::SYS_epoll_create1 as u32, 3, 0),
        jeq(libc::SYS_eventfd2 as u32, 2, 0),
        jeq(libc::SYS_pipe2 as u32, 1, 0),
        stmt(BPF_RET_K, SECCOMP_RET_ALLOW),
        stmt(BPF_RET_K, enosys),
    ];
    let prog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: PR_SET_NO_NEW_PRIVS takes integer arguments only.
    let r = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    assert_eq!(r, 0, "PR_SET_NO_NEW_PRIVS");
    // SAFETY: `prog` points to `filter`, which outlives the call; the kernel copies it.
    let r = unsafe {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER,
            &prog as *const libc::sock_fprog,
        )
    };
    assert_eq!(r, 0, "PR_SET_SECCOMP: {}", std::io::Error::last_os_error());
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
