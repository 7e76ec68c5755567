//! Signal masks and `signalfd`: the raw calls under [`crate::signals`].
//!
//! rustix has neither, so these go through libc: `pthread_sigmask` (the calling thread's
//! mask) and `signalfd` (glibc's wrapper issues `signalfd4` with the flags).

use std::os::fd::{FromRawFd, OwnedFd};

use rustix::io::Errno;

/// A `sigset_t` holding exactly the signals whose bits are set in `bits` (bit `n - 1` is
/// signal `n`; every bit must be a signal `sigaddset` accepts).
pub(crate) fn sigset(bits: u64) -> libc::sigset_t {
    // SAFETY: an all-zero `sigset_t` is a plain value that `sigemptyset` then initialises.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid, exclusively borrowed `sigset_t`.
    unsafe { libc::sigemptyset(&mut set) };
    for signo in 1..=64 {
        if bits & (1u64 << (signo - 1)) != 0 {
            // SAFETY: as above; an invalid number only makes it return -1 (EINVAL).
            unsafe { libc::sigaddset(&mut set, signo) };
        }
    }
    set
}

/// The bits (as in [`sigset`]) of the signals 1..=64 that `set` holds.
pub(crate) fn bits_of(set: &libc::sigset_t) -> u64 {
    let mut bits = 0;
    for signo in 1..=64 {
        // SAFETY: `set` is an initialised `sigset_t`, only read.
        if unsafe { libc::sigismember(set, signo) } == 1 {
            bits |= 1u64 << (signo - 1);
        }
    }
    bits
}

/// Whether libc accepts `signo` in a `sigset_t` (glibc refuses the two real-time signals
/// it reserves for itself, 32 and 33).
pub(crate) fn addable(signo: i32) -> bool {
    // SAFETY: an all-zero `sigset_t` is a plain value that `sigemptyset` then initialises.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid, exclusively borrowed `sigset_t`; an invalid number only
    // makes `sigaddset` return -1.
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, signo) == 0
    }
}

/// `pthread_sigmask(how, bits)` on the calling thread; returns the previous mask's bits.
/// `how` is `SIG_BLOCK`, `SIG_UNBLOCK` or `SIG_SETMASK`.
pub(crate) fn thread_mask(how: libc::c_int, bits: u64) -> Result<u64, Errno> {
    let set = sigset(bits);
    // SAFETY: as in `sigset`.
    let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is initialised and only read; `old` is valid for the kernel to write.
    let rc = unsafe { libc::pthread_sigmask(how, &set, &mut old) };
    if rc != 0 {
        return Err(Errno::from_raw_os_error(rc));
    }
    Ok(bits_of(&old))
}

/// The calling thread's blocked signals (bits as in [`sigset`]).
pub(crate) fn current_mask() -> Result<u64, Errno> {
    // SAFETY: as in `sigset`.
    let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: a null new set only queries; `old` is valid for the kernel to write.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut old) };
    if rc != 0 {
        return Err(Errno::from_raw_os_error(rc));
    }
    Ok(bits_of(&old))
}

/// `signalfd4(-1, set, SFD_CLOEXEC|SFD_NONBLOCK)`: a new descriptor reading the signals in
/// `bits`.
pub(crate) fn signalfd(bits: u64) -> Result<OwnedFd, Errno> {
    let set = sigset(bits);
    // SAFETY: -1 asks for a new descriptor; `set` is initialised and only read.
    let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK) };
    if fd < 0 {
        return Err(Errno::from_io_error(&std::io::Error::last_os_error()).unwrap_or(Errno::INVAL));
    }
    // SAFETY: `fd` was just returned by `signalfd`: open, and owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Unblocks `bits` on the calling thread, after taking every signal of `bits` still
/// pending (for this thread or the process) off the pending sets undelivered
/// (`sigtimedwait` with a zero timeout, until none is left). Without that, the unblock
/// itself would deliver a pending signal the default way (for most: the process ends).
pub(crate) fn unblock_discarding(bits: u64) {
    if bits == 0 {
        return;
    }
    let set = sigset(bits);
    let zero = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    loop {
        // SAFETY: `set` and `zero` are initialised and only read; a null `siginfo_t`
        // pointer asks for no details.
        let rc = unsafe { libc::sigtimedwait(&set, std::ptr::null_mut(), &zero) };
        let interrupted =
            rc < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR);
        if rc <= 0 && !interrupted {
            break; // EAGAIN: nothing of `bits` is pending any more
        }
    }
    let _ = thread_mask(libc::SIG_UNBLOCK, bits);
}
