//! A simulated platform: no OS, one thread, fully deterministic.
//!
//! [`SimPlatform`] runs the real [`Engine`](crate::Engine) on a virtual clock and a script
//! of platform events — IO readiness at a virtual time, an interrupted wait (`EINTR`), a
//! failing wait — so a host test, a bare-metal build or a fuzzer drives exactly the code
//! the Linux loop runs, and replays it bit for bit. `poll` never sleeps: it moves the
//! clock to the next scripted event or by the timeout it is given, and refuses to wait
//! forever ([`SimError::WouldBlockForever`]) instead of hanging.
//!
//! The script is a `heapless::Deque` of `N` entries (no allocation); a full script hands
//! the entry back.
//!
//! ```
//! use reseau_core::sim::{Scripted, SimPlatform};
//! use reseau_core::{Engine, Platform, Slot, TaskStatus, When};
//!
//! use core::sync::atomic::{AtomicU32, Ordering};
//!
//! static SEEN: AtomicU32 = AtomicU32::new(0);
//! fn on_ready(_: &(), token: u32) { SEEN.store(token, Ordering::Relaxed) }
//! fn tick(_: &(), _: TaskStatus) {}
//!
//! let sim = SimPlatform::<(), 4>::new(on_ready);
//! sim.script(Scripted::Ready { at: 7_000, token: 42 }).unwrap();
//! let engine = Engine::new(sim, [const { Slot::<fn(&(), TaskStatus)>::new() }; 4], 1).unwrap();
//! engine.schedule(tick, When::At(10_000)).unwrap();
//! engine.turn(&(), None).unwrap(); // the inbox drains into the timer heap
//! engine.turn(&(), None).unwrap(); // the clock jumps to the IO event at 7000
//! assert_eq!(SEEN.load(Ordering::Relaxed), 42);
//! assert_eq!(engine.platform().now(), 7_000);
//! engine.turn(&(), None).unwrap(); // then to the timer at 10000
//! assert_eq!(engine.pending(), 0);
//! ```

use core::cell::{Cell, RefCell};
use core::fmt;

use heapless::Deque;

use crate::TaskStatus;
use crate::platform::Platform;

/// One scripted platform event, in script order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scripted {
    /// A source becomes ready at virtual time `at`: `poll` moves the clock there (if its
    /// timeout allows) and calls the platform's readiness callback with `token`.
    Ready {
        /// When (virtual time).
        at: u64,
        /// What the readiness callback receives.
        token: u32,
    },
    /// The next wait is interrupted (`EINTR`): `poll` returns at once, no time passes.
    Interrupt,
    /// The next wait fails: `poll` returns [`SimError::Failed`] and the loop stops.
    Fail,
}

/// Why a simulated `poll` failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimError {
    /// A scripted failure ([`Scripted::Fail`]).
    Failed,
    /// The engine asked to wait with no timeout, no pending wake and nothing scripted: on
    /// a real platform it would sleep forever.
    WouldBlockForever,
}

impl fmt::Display for SimError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SimError::Failed => "the scripted wait failed",
            SimError::WouldBlockForever => "the loop would wait forever: nothing is scripted",
        })
    }
}

/// The simulated platform; see the [module docs](self). `Cx` is what tasks receive, `N`
/// the script's capacity.
pub struct SimPlatform<Cx, const N: usize> {
    now: Cell<u64>,
    woken: Cell<bool>,
    wakes: Cell<u32>,
    polls: Cell<u32>,
    script: RefCell<Deque<Scripted, N>>,
    on_ready: fn(&Cx, u32),
}

impl<Cx, const N: usize> fmt::Debug for SimPlatform<Cx, N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimPlatform")
            .field("now", &self.now.get())
            .field("wakes", &self.wakes.get())
            .field("polls", &self.polls.get())
            .finish_non_exhaustive()
    }
}

impl<Cx, const N: usize> SimPlatform<Cx, N> {
    /// A platform at virtual time 0 with an empty script; `on_ready` receives scripted
    /// readiness.
    pub const fn new(on_ready: fn(&Cx, u32)) -> Self {
        Self {
            now: Cell::new(0),
            woken: Cell::new(false),
            wakes: Cell::new(0),
            polls: Cell::new(0),
            script: RefCell::new(Deque::new()),
            on_ready,
        }
    }

    /// Appends `event` to the script; hands it back when the script is full.
    ///
    /// # Errors
    /// The script already holds `N` events.
    pub fn script(&self, event: Scripted) -> Result<(), Scripted> {
        self.script.borrow_mut().push_back(event)
    }

    /// Moves the virtual clock forward by `by` (a clock jump; it never goes back).
    pub fn advance(&self, by: u64) {
        self.now.set(self.now.get().saturating_add(by));
    }

    /// How many times the engine woke the platform.
    pub fn wakes(&self) -> u32 {
        self.wakes.get()
    }

    /// How many times the engine polled.
    pub fn polls(&self) -> u32 {
        self.polls.get()
    }

    /// How many scripted events are left.
    pub fn scripted(&self) -> usize {
        self.script.borrow().len()
    }
}

impl<Cx, const N: usize> Platform for SimPlatform<Cx, N> {
    type Cx = Cx;
    type Error = SimError;
    /// Buckets of 4 ticks of the simulated clock, so that scripts and fuzz inputs with
    /// small deadlines exercise the timer wheel as well as the heap.
    const TIMER_WHEEL_SHIFT: u32 = 2;

    fn now(&self) -> u64 {
        self.now.get()
    }

    fn wake(&self) {
        self.wakes.set(self.wakes.get() + 1);
        self.woken.set(true);
    }

    fn poll(&self, cx: &Cx, timeout: Option<u64>) -> Result<(), SimError> {
        self.polls.set(self.polls.get() + 1);
        let woken = self.woken.replace(false);
        let front = self.script.borrow().front().copied();
        match front {
            Some(Scripted::Interrupt) => {
                self.script.borrow_mut().pop_front();
                return Ok(());
            }
            Some(Scripted::Fail) => {
                self.script.borrow_mut().pop_front();
                return Err(SimError::Failed);
            }
            Some(Scripted::Ready { at, .. }) => {
                let now = self.now.get();
                let reach = match (woken, timeout) {
                    (true, _) => now,
                    (false, None) => at.max(now),
                    (false, Some(t)) => at.max(now).min(now.saturating_add(t)),
                };
                self.now.set(reach);
            }
            None if woken => {}
            None => match timeout {
                Some(t) => self.advance(t),
                None => return Err(SimError::WouldBlockForever),
            },
        }
        // Dispatch every readiness due by now, in script order.
        loop {
            let due = match self.script.borrow().front() {
                Some(&Scripted::Ready { at, token }) if at <= self.now.get() => Some(token),
                _ => None,
            };
            let Some(token) = due else { break };
            self.script.borrow_mut().pop_front();
            (self.on_ready)(cx, token);
        }
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
        1
    }

    fn block_until(&self, done: &dyn Fn() -> bool, _timeout: Option<u64>) -> bool {
        // One thread: nobody else can make `done` true while we would block.
        done()
    }

    fn notify(&self) {}
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::{DriveError, Engine, Slot, When};
    use core::cell::RefCell as StdRefCell;
    use std::vec::Vec;

    std::thread_local! {
        static LOG: StdRefCell<Vec<(&'static str, u64)>> = const { StdRefCell::new(Vec::new()) };
    }

    type Task = fn(&(), TaskStatus);
    type Sim = SimPlatform<(), 8>;

    fn on_ready(_: &(), token: u32) {
        LOG.with(|l| l.borrow_mut().push(("io", u64::from(token))));
    }

    fn timer(_: &(), status: TaskStatus) {
        assert_eq!(status, TaskStatus::RunReady);
        LOG.with(|l| l.borrow_mut().push(("timer", 0)));
    }

    fn engine() -> Engine<Sim, Task, [Slot<Task>; 8]> {
        LOG.with(|l| l.borrow_mut().clear());
        Engine::new(Sim::new(on_ready), [const { Slot::new() }; 8], 9).unwrap()
    }

    fn log() -> Vec<(&'static str, u64)> {
        LOG.with(|l| l.borrow().clone())
    }

    #[test]
    fn sim_moves_the_clock_to_the_next_scripted_event_then_the_deadline() {
        let e = engine();
        e.platform()
            .script(Scripted::Ready { at: 300, token: 5 })
            .unwrap();
        e.schedule(timer, When::At(1_000)).unwrap();
        e.turn(&(), None).unwrap();
        e.turn(&(), None).unwrap();
        assert_eq!(e.platform().now(), 300);
        assert_eq!(log(), [("io", 5)]);
        e.turn(&(), None).unwrap();
        assert_eq!(e.platform().now(), 1_000);
        assert_eq!(log(), [("io", 5), ("timer", 0)]);
    }

    #[test]
    fn sim_an_interrupted_wait_loses_nothing_and_a_failed_wait_stops_the_turn() {
        let e = engine();
        e.schedule(timer, When::At(50)).unwrap();
        e.turn(&(), None).unwrap();
        e.platform().script(Scripted::Interrupt).unwrap();
        e.platform().script(Scripted::Fail).unwrap();
        e.turn(&(), None).unwrap();
        assert_eq!(e.platform().now(), 0, "an interrupted wait takes no time");
        assert!(matches!(
            e.turn(&(), None),
            Err(DriveError::Platform(SimError::Failed))
        ));
        e.turn(&(), None).unwrap();
        assert_eq!(log(), [("timer", 0)]);
        assert_eq!(e.pending(), 0);
    }

    #[test]
    fn sim_refuses_to_wait_forever() {
        let e = engine();
        assert!(matches!(
            e.turn(&(), None),
            Err(DriveError::Platform(SimError::WouldBlockForever))
        ));
        assert_eq!(e.turn(&(), Some(10)).unwrap(), None);
        assert_eq!(e.platform().now(), 10);
    }

    #[test]
    fn sim_the_slots_may_live_in_a_heapless_vec() {
        let mut slots = heapless::Vec::<Slot<Task>, 4>::new();
        while slots.push(Slot::new()).is_ok() {}
        let e = Engine::new(Sim::new(on_ready), slots, 3).unwrap();
        LOG.with(|l| l.borrow_mut().clear());
        e.schedule(timer, When::Now).unwrap();
        e.turn(&(), Some(0)).unwrap();
        assert_eq!(log(), [("timer", 0)]);
        assert_eq!(e.capacity(), 4);
    }

    #[test]
    fn sim_a_full_script_hands_the_event_back() {
        let sim = SimPlatform::<(), 1>::new(|_, _| {});
        sim.script(Scripted::Interrupt).unwrap();
        assert_eq!(sim.script(Scripted::Fail), Err(Scripted::Fail));
        assert_eq!(sim.scripted(), 1);
    }
}
