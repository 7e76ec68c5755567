//! The wakeup: how another thread interrupts the loop thread's `epoll_wait`.
//!
//! Two small backends behind one API (`wake`, `consume`, `read_fd`), both registered
//! edge-triggered:
//! - **eventfd**: a 64-bit kernel counter; `wake` adds 1. The loop never reads it: every
//!   successful write to an eventfd wakes its wait queue (`eventfd_write` calls
//!   `wake_up_locked_poll` on each write), and epoll queues an edge-triggered item again on
//!   every such wake-up (`ep_poll_callback`), so each write is an event whether or not the
//!   counter was read — one syscall per wake-up saved on the loop side (mio's waker does the
//!   same). The counter only grows; a write that would take it past `u64::MAX - 1` fails
//!   with `EAGAIN` and raises no event, so `wake` then reads the counter (resetting it to 0)
//!   and writes again. At one wake per nanosecond that takes 584 years to happen, but it is
//!   handled, and tested.
//! - **pipe** (kernels without eventfd): `wake` writes one byte, `consume` reads until
//!   `EAGAIN`. A pipe is drained on every event: whether a write to a non-empty pipe raises
//!   an edge has changed between kernels (5.5 stopped it, 5.10 partly restored it), and a
//!   full pipe (64 KiB of unread wakes) would stop them; a full pipe's `EAGAIN` means a
//!   wake is pending — fine.
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
                Ok(_) => return Ok(()),
                // The eventfd's counter is saturated (it is never read in passing): this
                // write raised no event. Reset the counter and write again.
                Err(Errno::AGAIN) if matches!(self.fds, WakeupFds::EventFd(_)) => self.drain(),
                Err(Errno::AGAIN) => return Ok(()),
                Err(Errno::INTR) => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// What the loop does when its wakeup reported an event: nothing for an eventfd (see
    /// the module docs); a pipe is drained.
    pub(crate) fn consume(&self) {
        if matches!(self.fds, WakeupFds::Pipe { .. }) {
            self.drain();
        }
    }

    /// Consumes every pending signal.
    fn drain(&self) {
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

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use rustix::event::epoll;

    use super::*;

    /// An epoll set watching `w`'s read end edge-triggered, as the loop registers it.
    fn watched(w: &Wakeup) -> OwnedFd {
        let ep = epoll::create(epoll::CreateFlags::CLOEXEC).expect("epoll_create1");
        epoll::add(
            &ep,
            w.read_fd(),
            epoll::EventData::new_u64(7),
            epoll::EventFlags::IN | epoll::EventFlags::ET,
        )
        .expect("epoll_ctl(ADD)");
        ep
    }

    /// How many events one non-blocking wait returns.
    fn events(ep: &OwnedFd) -> usize {
        let mut buf = Vec::<epoll::Event>::with_capacity(4);
        let zero = rustix::time::Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        epoll::wait(
            ep.as_fd(),
            rustix::buffer::spare_capacity(&mut buf),
            Some(&zero),
        )
        .expect("epoll_wait");
        buf.len()
    }

    fn eventfd() -> Wakeup {
        let fd = rustix::event::eventfd(
            0,
            rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK,
        )
        .expect("eventfd");
        Wakeup::new(WakeupFds::EventFd(fd))
    }

    #[test]
    fn an_unread_eventfd_raises_an_edge_on_every_wake() {
        let w = eventfd();
        let ep = watched(&w);
        assert_eq!(events(&ep), 0);
        for round in 0..100 {
            w.wake().expect("wake");
            assert_eq!(events(&ep), 1, "wake {round} raised no event");
            w.consume();
            assert_eq!(events(&ep), 0, "an edge is reported once");
        }
    }

    #[test]
    fn a_saturated_eventfd_counter_is_reset_and_the_wake_still_lands() {
        let w = eventfd();
        let ep = watched(&w);
        // The largest count an eventfd holds: the next write of 1 fails with EAGAIN.
        rustix::io::write(w.write_fd(), &(u64::MAX - 1).to_ne_bytes()).expect("saturate");
        assert_eq!(events(&ep), 1);
        assert_eq!(
            rustix::io::write(w.write_fd(), &1u64.to_ne_bytes()),
            Err(Errno::AGAIN),
            "the counter is saturated"
        );
        assert_eq!(events(&ep), 0, "a refused write raises no event");
        w.wake().expect("wake");
        assert_eq!(events(&ep), 1, "the wake reset the counter and landed");
        let mut count = [0u8; 8];
        rustix::io::read(w.read_fd(), &mut count).expect("read");
        assert_eq!(
            u64::from_ne_bytes(count),
            1,
            "the counter holds just the new wake"
        );
    }

    #[test]
    fn a_pipe_wakeup_is_drained_on_consume_and_wakes_again() {
        let (read, write) = rustix::pipe::pipe_with(
            rustix::pipe::PipeFlags::CLOEXEC | rustix::pipe::PipeFlags::NONBLOCK,
        )
        .expect("pipe2");
        let w = Wakeup::new(WakeupFds::Pipe { read, write });
        let ep = watched(&w);
        for _ in 0..3 {
            w.wake().expect("wake");
            w.wake().expect("wake");
            assert_eq!(events(&ep), 1);
            w.consume();
            let mut byte = [0u8; 1];
            assert_eq!(
                rustix::io::read(w.read_fd(), &mut byte),
                Err(Errno::AGAIN),
                "consume emptied the pipe"
            );
        }
    }
}
