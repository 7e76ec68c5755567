//! Fault injection on the real kernel: a seccomp-BPF filter that makes chosen syscalls fail
//! with chosen errnos, for the fault-matrix tests (`tests/faults.rs`, `tests/seccomp.rs`).
//!
//! A filter is installed with `PR_SET_NO_NEW_PRIVS` + `PR_SET_SECCOMP` on the calling
//! thread and is inherited by the threads it spawns afterwards and across `exec`; it can
//! never be removed. So it is installed only in a child process (this test binary run
//! again by [`crate::util::run_in_child`]), never in the test runner. Threads that existed
//! before the filter (a loop thread already running) are not filtered: that is how a test
//! fails a call on one thread only (a subscribe on the caller's thread, say).
//!
//! The program: if the audit architecture is not x86_64, allow everything (the filter is
//! then a no-op, and the tests say so); otherwise, for each [`Rule`] in order, if the
//! syscall number matches (and the rule's `arg1`, when set, matches the low 32 bits of
//! argument 1 — `epoll_ctl`'s op), return `SECCOMP_RET_ERRNO | errno`; at the end, allow.
//! x86_64 only, because the rules name x86_64 syscall numbers (`libc::SYS_*`).

/// One refused call.
#[derive(Debug, Clone, Copy)]
pub struct Rule {
    /// The syscall number (`libc::SYS_*`).
    pub nr: libc::c_long,
    /// When set, only calls whose argument 1 (low 32 bits) equals it are refused.
    pub arg1: Option<u32>,
    /// The errno the call returns.
    pub errno: i32,
}

impl Rule {
    /// Refuses every call of `nr` with `errno`.
    pub const fn deny(nr: libc::c_long, errno: i32) -> Self {
        Rule {
            nr,
            arg1: None,
            errno,
        }
    }

    /// Refuses `epoll_ctl(op)` (`libc::EPOLL_CTL_ADD`, …) with `errno`.
    pub const fn epoll_ctl(op: i32, errno: i32) -> Self {
        Rule {
            nr: libc::SYS_epoll_ctl,
            arg1: Some(op as u32),
            errno,
        }
    }
}

/// Every syscall an epoll wait may be issued as (rustix picks `epoll_pwait`; `epoll_wait`
/// and `epoll_pwait2` for completeness), each refused with `errno`.
pub fn epoll_waits(errno: i32) -> [Rule; 3] {
    [
        Rule::deny(libc::SYS_epoll_wait, errno),
        Rule::deny(libc::SYS_epoll_pwait, errno),
        Rule::deny(libc::SYS_epoll_pwait2, errno),
    ]
}

const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;
const BPF_LD_W_ABS: u16 = 0x20;
const BPF_JEQ_K: u16 = 0x15;
const BPF_RET_K: u16 = 0x06;
const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
/// Offsets in `struct seccomp_data`: nr, arch, then args[6] from 16 (little endian: the
/// low half of args[1] is at 24).
const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;
const OFF_ARG1_LO: u32 = 24;

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

/// The BPF program for `rules` (see the module docs).
pub fn program(rules: &[Rule]) -> Vec<libc::sock_filter> {
    let mut p = vec![
        stmt(BPF_LD_W_ABS, OFF_ARCH),
        // x86_64: skip the next instruction (allow); otherwise allow.
        jeq(AUDIT_ARCH_X86_64, 1, 0),
        stmt(BPF_RET_K, SECCOMP_RET_ALLOW),
    ];
    for r in rules {
        let ret = stmt(BPF_RET_K, SECCOMP_RET_ERRNO | (r.errno as u32 & 0xffff));
        p.push(stmt(BPF_LD_W_ABS, OFF_NR));
        match r.arg1 {
            None => {
                // Match: fall into the return; no match: jump over it.
                p.push(jeq(r.nr as u32, 0, 1));
                p.push(ret);
            }
            Some(arg) => {
                p.push(jeq(r.nr as u32, 0, 3));
                p.push(stmt(BPF_LD_W_ABS, OFF_ARG1_LO));
                p.push(jeq(arg, 0, 1));
                p.push(ret);
            }
        }
    }
    p.push(stmt(BPF_RET_K, SECCOMP_RET_ALLOW));
    p
}

/// Installs the filter for `rules` on this thread, its future threads and whatever it
/// executes. Panics if the kernel refuses the filter (the test cannot run as designed).
pub fn install(rules: &[Rule]) {
    let filter = program(rules);
    let prog = libc::sock_fprog {
        len: u16::try_from(filter.len()).expect("a short program"),
        filter: filter.as_ptr().cast_mut(),
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
