//! A loom [`Platform`]: the engine's sleeping, waking and blocking on loom's `Mutex` and
//! `Condvar`, with a virtual clock, so the models drive the shipped `Engine` itself.
//!
//! - `poll` with no timeout blocks until [`wake`](Platform::wake) (the eventfd write): a
//!   wake the engine's protocol loses leaves the driver blocked, and loom reports the
//!   deadlock. A timed `poll` does not block: it moves the virtual clock by the timeout
//!   (loom has no time), so deadlines are reached without real waiting.
//! - `block_until` with no timeout blocks on a condvar until `done()`; with a timeout it
//!   checks once (the timeout "expires" at once: the model explores the give-up path).
//! - Thread identities come from a counter that loom resets with every execution.
//! - Tasks and `catch` run user code directly: the models' tasks do not panic.

use std::cell::Cell;

use loom::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use loom::sync::{Condvar, Mutex};
use reseau_core::{Platform, TaskStatus};

loom::lazy_static! {
    static ref NEXT_THREAD: AtomicUsize = AtomicUsize::new(1);
}

loom::thread_local! {
    static THREAD: Cell<usize> = Cell::new(0);
}

/// The loom platform; see the [module docs](self).
#[derive(Debug)]
pub struct LoomPlatform {
    now: AtomicU64,
    woken: Mutex<bool>,
    wake_cv: Condvar,
    exit: Mutex<()>,
    exit_cv: Condvar,
    /// How many times the engine woke the platform.
    pub wakes: AtomicUsize,
    /// How many times a `block_until` caller actually went to sleep (the condition was
    /// false): models use it to prove a waiter really waited.
    pub waits: AtomicUsize,
}

impl Default for LoomPlatform {
    fn default() -> Self {
        Self::new()
    }
}

impl LoomPlatform {
    /// Virtual time 0, nobody woken.
    pub fn new() -> Self {
        Self {
            now: AtomicU64::new(0),
            woken: Mutex::new(false),
            wake_cv: Condvar::new(),
            exit: Mutex::new(()),
            exit_cv: Condvar::new(),
            wakes: AtomicUsize::new(0),
            waits: AtomicUsize::new(0),
        }
    }
}

impl Platform for LoomPlatform {
    type Cx = ();
    type Error = ();

    fn now(&self) -> u64 {
        self.now.load(Ordering::SeqCst)
    }

    fn wake(&self) {
        self.wakes.fetch_add(1, Ordering::SeqCst);
        let mut woken = self.woken.lock().unwrap();
        *woken = true;
        self.wake_cv.notify_all();
    }

    fn poll(&self, _cx: &(), timeout: Option<u64>) -> Result<(), ()> {
        let mut woken = self.woken.lock().unwrap();
        match timeout {
            None => {
                while !*woken {
                    woken = self.wake_cv.wait(woken).unwrap();
                }
            }
            Some(t) => {
                if !*woken {
                    self.now.fetch_add(t, Ordering::SeqCst);
                }
            }
        }
        *woken = false;
        Ok(())
    }

    fn run_task(&self, _status: TaskStatus, f: impl FnOnce()) -> bool {
        f();
        true
    }

    fn catch<R>(&self, f: impl FnOnce() -> R) -> Option<R> {
        Some(f())
    }

    fn current_thread(&self) -> usize {
        THREAD.with(|id| {
            if id.get() == 0 {
                id.set(NEXT_THREAD.fetch_add(1, Ordering::Relaxed));
            }
            id.get()
        })
    }

    fn block_until(&self, done: &dyn Fn() -> bool, timeout: Option<u64>) -> bool {
        let mut guard = self.exit.lock().unwrap();
        if timeout.is_some() {
            return done();
        }
        while !done() {
            self.waits.fetch_add(1, Ordering::SeqCst);
            guard = self.exit_cv.wait(guard).unwrap();
        }
        true
    }

    fn notify(&self) {
        let _guard = self.exit.lock().unwrap();
        self.exit_cv.notify_all();
    }

    fn pause(&self) {
        loom::thread::yield_now();
    }
}
