//! The legacy syscalls rustix does not offer, issued by number.
//!
//! glibc's `epoll_create()` and `pipe()` wrappers may themselves call `epoll_create1` /
//! `pipe2` underneath, so with those refused (the case the fallback exists for) the
//! wrappers fail too: the numbered syscall is the only honest fallback. The numbers come
//! from linux-raw-sys. Only architectures that have `__NR_epoll_create` and `__NR_pipe`
//! (x86, x86_64, arm) compile the calls; elsewhere (aarch64, riscv64, which never lacked
//! the modern calls) the fallbacks answer `ENOSYS`.

use std::os::fd::{FromRawFd, OwnedFd};

use rustix::io::{Errno, Result};

#[cfg(any(target_arch = "x86_64", target_arch = "x86", target_arch = "arm"))]
fn check(ret: libc::c_long) -> Result<libc::c_long> {
    if ret < 0 {
        Err(Errno::from_raw_os_error(
            std::io::Error::last_os_error().raw_os_error().unwrap_or(0),
        ))
    } else {
        Ok(ret)
    }
}

/// Owns a descriptor the kernel just returned (one call site: one panic location for
/// `from_raw_fd`'s check, not three).
///
/// # Safety
/// `fd` is an open descriptor that nothing else owns.
#[cfg(any(target_arch = "x86_64", target_arch = "x86", target_arch = "arm"))]
#[inline(never)]
unsafe fn owned(fd: libc::c_int) -> OwnedFd {
    // SAFETY: the caller's contract.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// `epoll_create(1)`: an epoll descriptor *without* close-on-exec.
#[cfg(any(target_arch = "x86_64", target_arch = "x86", target_arch = "arm"))]
pub fn epoll_create() -> Result<OwnedFd> {
    // SAFETY: `epoll_create` takes one integer (a size hint > 0, ignored since 2.6.8) and
    // touches no user memory.
    let fd = check(unsafe {
        libc::syscall(
            libc::c_long::from(linux_raw_sys::general::__NR_epoll_create as i32),
            1 as libc::c_int,
        )
    })?;
    // SAFETY: on success the kernel returned a new descriptor that nothing else owns.
    Ok(unsafe { owned(fd as libc::c_int) })
}

/// `pipe(fds)`: (read end, write end), *without* close-on-exec or non-blocking.
#[cfg(any(target_arch = "x86_64", target_arch = "x86", target_arch = "arm"))]
pub fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    let mut fds = [-1 as libc::c_int; 2];
    // SAFETY: `pipe` writes exactly two ints into the array we pass, which lives until the
    // call returns.
    check(unsafe {
        libc::syscall(
            libc::c_long::from(linux_raw_sys::general::__NR_pipe as i32),
            fds.as_mut_ptr(),
        )
    })?;
    // SAFETY: on success both are new descriptors that nothing else owns.
    Ok(unsafe { (owned(fds[0]), owned(fds[1])) })
}

/// `epoll_create` does not exist on this architecture.
#[cfg(not(any(target_arch = "x86_64", target_arch = "x86", target_arch = "arm")))]
pub fn epoll_create() -> Result<OwnedFd> {
    Err(Errno::NOSYS)
}

/// `pipe` does not exist on this architecture.
#[cfg(not(any(target_arch = "x86_64", target_arch = "x86", target_arch = "arm")))]
pub fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    Err(Errno::NOSYS)
}
