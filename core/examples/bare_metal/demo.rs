//! The bare-metal demo's logic, shared by the firmware (`main.rs`, built for
//! `thumbv7em-none-eabihf`) and the host test (`core/tests/bare_metal.rs`).
//!
//! The engine is a `static`, built at compile time by [`Engine::new_inline`]: 16 task
//! slots inline, no allocator. Tasks are an enum. The platform is a board with a fake
//! clock (a tick counter that `poll` advances to the next deadline, as a timer interrupt
//! waking a `wfi` would) and one static event source (an interrupt line whose handler
//! sets a pending bit; `poll` dispatches it by scheduling a task).

use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use reseau_core::{Engine, Platform, Runnable, Slot, TaskStatus, When};

/// The board: a fake clock and one interrupt line.
pub struct Board {
    ticks: AtomicU32,
    irq_pending: AtomicBool,
    woken: AtomicBool,
}

impl Board {
    /// A board at tick 0 with no interrupt pending.
    pub const fn new() -> Self {
        Board {
            ticks: AtomicU32::new(0),
            irq_pending: AtomicBool::new(false),
            woken: AtomicBool::new(false),
        }
    }

    /// What the button's interrupt handler does: marks the line pending and wakes the
    /// loop.
    pub fn fire_irq(&self) {
        self.irq_pending.store(true, Ordering::Release);
        self.wake();
    }
}

impl Default for Board {
    fn default() -> Self {
        Self::new()
    }
}

impl Platform for Board {
    type Cx = ();
    type Error = ();

    fn now(&self) -> u64 {
        u64::from(self.ticks.load(Ordering::Relaxed))
    }

    fn wake(&self) {
        self.woken.store(true, Ordering::Release);
    }

    fn poll(&self, _: &(), timeout: Option<u64>) -> Result<(), ()> {
        let woken = self.woken.swap(false, Ordering::AcqRel);
        if !woken && let Some(t) = timeout {
            // "Sleep" until the timer interrupt: the fake clock jumps to the deadline.
            let t = u32::try_from(t).unwrap_or(u32::MAX);
            self.ticks.fetch_add(t, Ordering::Relaxed);
        }
        if self.irq_pending.swap(false, Ordering::AcqRel) {
            // The event source's "callback": a task for the button, on the loop.
            let _ = ENGINE.schedule(Job::Button, When::Now);
        }
        Ok(())
    }

    fn run_task(&self, _: TaskStatus, f: impl FnOnce()) -> bool {
        f(); // panic = abort on the target: nothing to catch
        true
    }

    fn catch<R>(&self, f: impl FnOnce() -> R) -> Option<R> {
        Some(f())
    }

    fn current_thread(&self) -> usize {
        1 // one thread of execution
    }

    fn block_until(&self, done: &dyn Fn() -> bool, _: Option<u64>) -> bool {
        done() // single-threaded: nothing else can make it true meanwhile
    }

    fn notify(&self) {}
}

/// The firmware's tasks: plain data, no closures.
pub enum Job {
    /// Toggles the LED, and again after 500 ticks while `left > 1`.
    Blink {
        /// Toggles still to do, this one included.
        left: u32,
    },
    /// The button was pressed (scheduled by the event source).
    Button,
}

/// The LED's toggles and the button's presses seen so far.
pub static TOGGLES: AtomicU32 = AtomicU32::new(0);
/// How many `Button` tasks ran.
pub static PRESSES: AtomicU32 = AtomicU32::new(0);

impl Runnable<()> for Job {
    fn run(self, _: &(), status: TaskStatus) {
        if status == TaskStatus::Canceled {
            return;
        }
        match self {
            Job::Blink { left } => {
                TOGGLES.fetch_add(1, Ordering::Relaxed);
                if left > 1 {
                    let at = ENGINE.platform().now() + 500;
                    let _ = ENGINE.schedule(Job::Blink { left: left - 1 }, When::At(at));
                }
            }
            Job::Button => {
                PRESSES.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// The loop: 16 slots of `Job`, inline, in a `static`.
pub static ENGINE: Engine<Board, Job, [Slot<Job>; 16]> = Engine::new_inline(Board::new(), 1);

/// Runs the firmware's script: five blinks 500 ticks apart, the button pressed after the
/// first; turns the loop until nothing is pending. Returns (toggles, presses, final tick):
/// (5, 1, 2000).
pub fn run() -> (u32, u32, u64) {
    let _ = ENGINE.schedule(Job::Blink { left: 5 }, When::Now);
    let mut turns = 0;
    while ENGINE.pending() > 0 && turns < 100 {
        if turns == 1 {
            ENGINE.platform().fire_irq();
        }
        let _ = ENGINE.turn(&(), None);
        turns += 1;
    }
    (
        TOGGLES.load(Ordering::Relaxed),
        PRESSES.load(Ordering::Relaxed),
        ENGINE.platform().now(),
    )
}
