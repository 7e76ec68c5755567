//! Fork detection: a loop inherited by a forked child must not touch the parent's kernel
//! objects.
//!
//! After `fork(2)` the child holds copies of the loop's descriptors, and the epoll one
//! refers to the *same* open file description as the parent's: an `epoll_ctl(DEL)` in the
//! child (a destroy deregistering its sources, or a drop) removes the parent's
//! registrations, an `epoll_wait` in the child steals the parent's events, and a wakeup
//! written in the child wakes the parent. The child also has only the thread that forked:
//! the loop thread is gone, so a destroy there would wait for it forever.
//!
//! A `pthread_atfork` child handler, registered once when the first loop is created, bumps
//! a process-wide generation; each loop records the generation it was created in, and a
//! loop whose generation is stale belongs to an ancestor. Checking is one relaxed atomic
//! load, so it sits on every path that touches the kernel or waits for the loop thread.
//! Children made by the raw `clone`/`vfork` syscalls (or `posix_spawn`) skip the handlers;
//! they must not use the loop at all before they `exec`, as POSIX already requires.

use std::sync::Once;
use std::sync::atomic::{AtomicU64, Ordering};

/// How many forks this process is removed from the process that created its loops (bumped
/// in each child).
static GENERATION: AtomicU64 = AtomicU64::new(0);

extern "C" fn in_child() {
    // Async-signal-safe: one atomic add.
    GENERATION.fetch_add(1, Ordering::Relaxed);
}

/// The current generation, registering the fork handler first (once per process).
pub(crate) fn register() -> u64 {
    static REGISTER: Once = Once::new();
    REGISTER.call_once(|| {
        // SAFETY: `in_child` is an `extern "C" fn()` that lives for the whole program and
        // does only an atomic add; the prepare and parent handlers are absent.
        let r = unsafe { libc::pthread_atfork(None, None, Some(in_child)) };
        if r != 0 {
            crate::log_at!(
                error,
                "reseau: pthread_atfork failed ({r}); a forked child could disturb its parent's loops"
            );
        }
    });
    GENERATION.load(Ordering::Relaxed)
}

/// Whether a loop created in generation `created` was inherited through a fork.
#[inline]
pub(crate) fn inherited(created: u64) -> bool {
    GENERATION.load(Ordering::Relaxed) != created
}
