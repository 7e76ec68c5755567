//! The wakeup: how another thread interrupts the loop thread's `epoll_wait`.
//!
//! Two small backends behind one API (`wake`, `drain`, `read_fd`):
//! - **eventfd**: a 64-bit kernel counter; `wake` adds 1, `drain` reads (and zeroes) it. A
//!   write that would overflow the counter fails with `EAGAIN`, which only means a wake is
//!   already pending — fine.
//! - **pipe**: `wake` writes one byte, `drain` reads until `EAGAIN`. A full pipe (64 KiB of
//!   unread wakes) answers `EAGAIN` the same way.
//!
//! Both ends are non-blocking, so neither call can block the loop or a producer.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::io::Errno;

use crate::sys::WakeupFds;

/// The loop's wakeup, owning its descriptors.
#[derive(Debug)]
pub(crate) struct Wakeup {
    fds: WakeupFds,
}

impl Wakeup {
    pub(crate) fn new(fds: WakeupFds) -> Self {
        Self { fds }
    }

    /// The descriptor the loop registers with epoll (the eventfd, or the pipe's read end).
    pub(crate) fn read_fd(&self) -> BorrowedFd<'_> {
        match &self.fds {
            WakeupFds::EventFd(fd) => fd.as_fd(),
            WakeupFds::Pipe { read, .. } => read.as_fd(),
        }
    }

    /// Every descriptor of the wakeup (for descriptor-hygiene checks).
    pub(crate) fn fds(&self) -> Vec<BorrowedFd<'_>> {
        match &self.fds {
            WakeupFds::EventFd(fd) => vec![fd.as_fd()],
            WakeupFds::Pipe { read, write } => vec![read.as_fd(), write.as_fd()],
        }
    }

    fn write_fd(&self) -> &OwnedFd {
        match &self.fds {
            WakeupFds::EventFd(fd) => fd,
            WakeupFds::Pipe { write, .. } => write,
        }
    }

    /// Signals the loop thread. `EAGAIN` (counter or pipe full) means a signal is already
    /// pending, so it counts as success; `EINTR` is retried.
    pub(crate) fn wake(&self) -> Result<(), Errno> {
        let one = 1u64.to_ne_bytes();
        let buf: &[u8] = match self.fds {
            WakeupFds::EventFd(_) => &one,
            WakeupFds::Pipe { .. } => &one[..1],
        };
        loop {
            match rustix::io::write(self.write_fd(), buf) {
                Ok(_) | Err(Errno::AGAIN) => return Ok(()),
                Err(Errno::INTR) => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Consumes every pending signal, so the next `wake` makes the descriptor readable anew.
    pub(crate) fn drain(&self) {
        let mut buf = [0u8; 64];
        loop {
            match rustix::io::read(self.read_fd(), &mut buf) {
                Ok(n) if n > 0 && matches!(self.fds, WakeupFds::Pipe { .. }) => continue,
                Err(Errno::INTR) => continue,
                _ => return,
            }
        }
    }
}
