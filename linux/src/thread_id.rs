//! A cheap, unique, never-reused identity for the current thread.
//!
//! `std::thread::ThreadId` cannot be stored in an atomic on stable Rust; this is a `u64`
//! from a global counter, assigned on first use in each thread. 0 means "no thread".

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

/// The last identity handed out (0: none yet; zero-initialised, so it takes no file space).
static LAST: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static ID: Cell<u64> = const { Cell::new(0) };
}

/// The current thread's identity (never 0). One out-of-line copy: the engine asks at many
/// places, and the thread-local access inlined at each was ~300 bytes of a small binary.
#[inline(never)]
pub(crate) fn current() -> u64 {
    ID.with(|id| {
        if id.get() == 0 {
            id.set(LAST.fetch_add(1, Ordering::Relaxed) + 1);
        }
        id.get()
    })
}
