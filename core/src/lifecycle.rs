//! The event loop's lifecycle: which operation is legal in which state, decided atomically.
//!
//! ```text
//!            begin_run              request_stop            loop_exited
//!   Ready ─────────────▶ Running ──────────────▶ Stopping ─────────────▶ Stopped
//!     ▲  ◀── run_failed ──┘  │ loop_exited (error)                          │
//!     │                      └──────────────────────────────────────────────┤
//!     └──────────────────────────── finish_wait ◀───────────────────────────┘
//!   any of the above ── begin_destroy ──▶ Destroying ── finish_destroy ──▶ Destroyed
//! ```
//!
//! One atomic word holds the state, a *live* bit (a loop thread, or a caller driving the
//! loop with `turn`, exists and has not exited), an *abandoned* bit (destroy gave up
//! waiting for that thread, which must tear down on its own at exit) and the number of producers currently inside a schedule call. Every transition is one
//! compare-and-swap on that word, so racing callers agree on a single order: only one `run`
//! wins, only one `stop` is told to wake the loop, and `destroy` learns exactly when the
//! last in-flight producer has left (so it can cancel what that producer queued).
//!
//! The core knows no threads: operations that must not come from the loop thread take a
//! `on_loop_thread` flag from the shim. The blocking parts (spawn, join, wait) are the
//! shim's; the decisions are here.

use core::fmt;

use crate::sync::{AtomicUsize, Ordering};

const STATE_MASK: usize = 0b111;
const LIVE: usize = 0b1000;
/// Destroy gave up waiting for the live loop thread: that thread tears down at its exit.
const ABANDONED: usize = 0b1_0000;
const PRODUCER: usize = 0b10_0000;

/// A state of the loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum State {
    /// Created or stopped and waited for: may run.
    Ready = 0,
    /// A loop thread runs.
    Running = 1,
    /// Stop was requested; the loop thread will exit after its current task.
    Stopping = 2,
    /// The loop thread has exited; `wait_for_stop_completion` returns it to `Ready`.
    Stopped = 3,
    /// Destroy has begun: no run, no schedule; pending tasks are being canceled.
    Destroying = 4,
    /// Destroyed: every operation is an error.
    Destroyed = 5,
}

impl State {
    fn from_bits(word: usize) -> Self {
        match word & STATE_MASK {
            0 => State::Ready,
            1 => State::Running,
            2 => State::Stopping,
            3 => State::Stopped,
            4 => State::Destroying,
            _ => State::Destroyed,
        }
    }

    /// The state's name, lower case.
    pub const fn name(self) -> &'static str {
        match self {
            State::Ready => "ready",
            State::Running => "running",
            State::Stopping => "stopping",
            State::Stopped => "stopped",
            State::Destroying => "being destroyed",
            State::Destroyed => "destroyed",
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An operation on the lifecycle, named in errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    /// `run`.
    Run,
    /// `stop`.
    Stop,
    /// `wait_for_stop_completion`.
    Wait,
    /// `destroy`.
    Destroy,
    /// Scheduling a task from any thread.
    Schedule,
    /// Releasing the loop's resources at the end of destroy.
    Teardown,
    /// Subscribing a source for IO readiness (in the shim).
    Subscribe,
    /// Removing an IO subscription (in the shim).
    Unsubscribe,
}

impl Operation {
    /// The operation's name as the shim's API spells it.
    pub const fn name(self) -> &'static str {
        match self {
            Operation::Run => "run",
            Operation::Stop => "stop",
            Operation::Wait => "wait_for_stop_completion",
            Operation::Destroy => "destroy",
            Operation::Schedule => "schedule",
            Operation::Teardown => "teardown",
            Operation::Subscribe => "subscribe",
            Operation::Unsubscribe => "unsubscribe",
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An operation that is not legal now, with the state that made it so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LifecycleError {
    /// What was attempted.
    pub op: Operation,
    /// The state found.
    pub state: State,
    /// The attempt came from the loop thread (waiting for or destroying a loop from its
    /// own thread would deadlock).
    pub on_loop_thread: bool,
    /// The loop thread was still alive (teardown refuses to close its descriptors).
    pub live: bool,
}

impl fmt::Display for LifecycleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.on_loop_thread {
            write!(
                f,
                "{} called from the loop's own thread (loop {}): it would wait for itself",
                self.op, self.state
            )
        } else if self.live {
            write!(
                f,
                "{} refused: the loop thread is still alive (loop {})",
                self.op, self.state
            )
        } else {
            write!(f, "{} is invalid while the loop is {}", self.op, self.state)
        }
    }
}

impl core::error::Error for LifecycleError {}

/// What a stop request did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopOutcome {
    /// This call moved the loop from running to stopping: wake the loop thread.
    Requested,
    /// A stop (or destroy) is already in flight; nothing to do.
    AlreadyStopping,
    /// The loop is not running; nothing to do, and the next `run` is unaffected.
    NotRunning,
}

/// The loop's state machine; see the [module docs](self).
///
/// ```
/// use reseau_core::{Lifecycle, State, StopOutcome};
///
/// let life = Lifecycle::new();
/// life.begin_run().unwrap();
/// assert!(life.begin_run().is_err(), "only one run wins");
/// assert_eq!(life.request_stop().unwrap(), StopOutcome::Requested);
/// assert_eq!(life.request_stop().unwrap(), StopOutcome::AlreadyStopping);
/// life.loop_exited(); // the loop thread's last step
/// assert_eq!(life.state(), State::Stopped);
/// assert!(life.begin_wait(true).is_err(), "the loop thread cannot wait for itself");
/// life.begin_wait(false).unwrap();
/// life.finish_wait();
/// assert_eq!(life.state(), State::Ready, "and it may run again");
/// life.begin_destroy(false).unwrap();
/// life.finish_destroy().unwrap();
/// assert!(life.begin_run().is_err(), "nothing runs after destroy");
/// ```
pub struct Lifecycle {
    word: AtomicUsize,
}

impl fmt::Debug for Lifecycle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let w = self.word.load(Ordering::Acquire);
        f.debug_struct("Lifecycle")
            .field("state", &State::from_bits(w))
            .field("live", &(w & LIVE != 0))
            .field("abandoned", &(w & ABANDONED != 0))
            .field("producers", &(w / PRODUCER))
            .finish()
    }
}

impl Default for Lifecycle {
    fn default() -> Self {
        Self::new()
    }
}

/// Proof that a producer is inside a schedule call; dropping it leaves.
#[must_use = "dropping the guard ends the producer's schedule call"]
#[derive(Debug)]
pub struct ProducerGuard<'a>(&'a Lifecycle);

impl Drop for ProducerGuard<'_> {
    fn drop(&mut self) {
        self.0.word.fetch_sub(PRODUCER, Ordering::AcqRel);
    }
}

impl Lifecycle {
    /// A loop that has never run.
    #[cfg(not(loom))]
    pub const fn new() -> Self {
        Self {
            word: AtomicUsize::new(State::Ready as usize),
        }
    }

    /// A loop that has never run.
    #[cfg(loom)]
    pub fn new() -> Self {
        Self {
            word: AtomicUsize::new(State::Ready as usize),
        }
    }

    /// The current state (a snapshot).
    pub fn state(&self) -> State {
        State::from_bits(self.word.load(Ordering::Acquire))
    }

    /// Whether a loop thread exists and has not yet exited.
    pub fn is_live(&self) -> bool {
        self.word.load(Ordering::Acquire) & LIVE != 0
    }

    /// How many producers are inside a schedule call.
    pub fn producers(&self) -> usize {
        self.word.load(Ordering::Acquire) / PRODUCER
    }

    /// Applies `f` to the word atomically; `f` returns the new word or an error.
    fn update<E>(&self, mut f: impl FnMut(usize) -> Result<usize, E>) -> Result<usize, E> {
        let mut cur = self.word.load(Ordering::Acquire);
        loop {
            let new = f(cur)?;
            match self
                .word
                .compare_exchange(cur, new, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(prev) => return Ok(prev),
                Err(actual) => cur = actual,
            }
        }
    }

    fn err(op: Operation, word: usize) -> LifecycleError {
        LifecycleError {
            op,
            state: State::from_bits(word),
            on_loop_thread: false,
            live: false,
        }
    }

    fn with_state(word: usize, state: State) -> usize {
        (word & !STATE_MASK) | state as usize
    }

    /// `run`: Ready → Running, and marks the loop thread live. The caller then starts the
    /// thread, or calls [`run_failed`](Self::run_failed) if it cannot.
    ///
    /// # Errors
    /// In any other state (running, stopping, stopped and not yet waited for, destroyed).
    pub fn begin_run(&self) -> Result<(), LifecycleError> {
        self.update(|w| match State::from_bits(w) {
            State::Ready => Ok(Self::with_state(w, State::Running) | LIVE),
            _ => Err(Self::err(Operation::Run, w)),
        })
        .map(|_| ())
    }

    /// Undoes [`begin_run`](Self::begin_run) when the loop thread could not be started:
    /// not live any more, and back to Ready — also when a `stop` raced the failed start
    /// (Stopping: nothing is left to stop). When a `destroy` raced it (Destroying), the
    /// state stays and only the live bit goes, so that destroy's teardown can proceed.
    /// A no-op when the live bit is clear (no run is pending).
    pub fn run_failed(&self) {
        let _ = self.update(|w| {
            if w & LIVE == 0 {
                return Err(());
            }
            match State::from_bits(w) {
                State::Running | State::Stopping => Ok(Self::with_state(w, State::Ready) & !LIVE),
                State::Destroying => Ok(w & !LIVE),
                _ => Err(()),
            }
        });
    }

    /// `stop`, from any thread: Running → Stopping. Only the caller that gets
    /// [`StopOutcome::Requested`] wakes the loop, so at most one stop is in flight.
    ///
    /// # Errors
    /// After destroy has finished.
    pub fn request_stop(&self) -> Result<StopOutcome, LifecycleError> {
        let mut outcome = StopOutcome::Requested;
        let result = self.update(|w| match State::from_bits(w) {
            State::Running => {
                outcome = StopOutcome::Requested;
                Ok(Self::with_state(w, State::Stopping))
            }
            State::Stopping | State::Destroying => {
                outcome = StopOutcome::AlreadyStopping;
                Err(None)
            }
            State::Ready | State::Stopped => {
                outcome = StopOutcome::NotRunning;
                Err(None)
            }
            State::Destroyed => Err(Some(Self::err(Operation::Stop, w))),
        });
        match result {
            Ok(_) | Err(None) => Ok(outcome),
            Err(Some(e)) => Err(e),
        }
    }

    /// For the loop thread, once per tick: whether to keep running.
    pub fn should_run(&self) -> bool {
        self.state() == State::Running
    }

    /// For the loop thread, its very last step: not live any more; Running or Stopping →
    /// Stopped (a loop that stops itself on an error goes straight from Running).
    pub fn loop_exited(&self) {
        let _ = self.update(|w| -> Result<usize, ()> {
            let w = w & !LIVE;
            Ok(match State::from_bits(w) {
                State::Running | State::Stopping => Self::with_state(w, State::Stopped),
                _ => w,
            })
        });
    }

    /// Checks that `wait_for_stop_completion` may block now; the caller then joins the loop
    /// thread (if any) and calls [`finish_wait`](Self::finish_wait).
    ///
    /// # Errors
    /// From the loop thread (it would wait for itself), or after destroy.
    pub fn begin_wait(&self, on_loop_thread: bool) -> Result<State, LifecycleError> {
        let w = self.word.load(Ordering::Acquire);
        let state = State::from_bits(w);
        if on_loop_thread {
            return Err(LifecycleError {
                on_loop_thread: true,
                ..Self::err(Operation::Wait, w)
            });
        }
        match state {
            State::Destroyed => Err(Self::err(Operation::Wait, w)),
            s => Ok(s),
        }
    }

    /// After the loop thread was joined: Stopped → Ready. A no-op in other states.
    pub fn finish_wait(&self) {
        let _ = self.update(|w| match State::from_bits(w) {
            State::Stopped if w & LIVE == 0 => Ok(Self::with_state(w, State::Ready)),
            _ => Err(()),
        });
    }

    /// `destroy`: any state but Destroying/Destroyed → Destroying. From then on `run` and
    /// schedules are refused. Returns the state destroy started from (Running means the
    /// caller must wake the loop thread so it sees the request).
    ///
    /// # Errors
    /// From the loop thread, or when destroy has already begun.
    pub fn begin_destroy(&self, on_loop_thread: bool) -> Result<State, LifecycleError> {
        if on_loop_thread {
            let w = self.word.load(Ordering::Acquire);
            return Err(LifecycleError {
                on_loop_thread: true,
                ..Self::err(Operation::Destroy, w)
            });
        }
        self.update(|w| match State::from_bits(w) {
            State::Destroying | State::Destroyed => Err(Self::err(Operation::Destroy, w)),
            _ => Ok(Self::with_state(w, State::Destroying)),
        })
        .map(State::from_bits)
    }

    /// The end of destroy: Destroying → Destroyed, only once the loop thread has exited.
    ///
    /// # Errors
    /// When the loop thread is still live (release nothing: it may still use the loop's
    /// descriptors), or when destroy has not begun.
    pub fn finish_destroy(&self) -> Result<(), LifecycleError> {
        self.update(|w| match State::from_bits(w) {
            State::Destroying if w & LIVE != 0 => Err(LifecycleError {
                live: true,
                ..Self::err(Operation::Teardown, w)
            }),
            State::Destroying => Ok(Self::with_state(w, State::Destroyed)),
            _ => Err(Self::err(Operation::Teardown, w)),
        })
        .map(|_| ())
    }

    /// Whether destroy gave up waiting for the live loop thread (see
    /// [`abandon`](Self::abandon)).
    pub fn is_abandoned(&self) -> bool {
        self.word.load(Ordering::Acquire) & ABANDONED != 0
    }

    /// For a destroy whose wait for the loop thread timed out: marks the loop *abandoned*
    /// if — in the same atomic step — the loop thread is still live. Returns `true` when it
    /// did: the loop thread now owns the teardown and will run it at its exit
    /// ([`loop_exit`](Self::loop_exit) tells it). Returns `false` when the thread exited
    /// meanwhile: the caller tears down as usual. Only in `Destroying`.
    pub fn abandon(&self) -> bool {
        self.update(|w| match State::from_bits(w) {
            State::Destroying if w & LIVE != 0 => Ok(w | ABANDONED),
            _ => Err(()),
        })
        .is_ok()
    }

    /// Destroy requested from the loop thread itself (the loop's owner dropped it inside one
    /// of its own tasks): → `Destroying` and abandoned in one step, so the loop thread
    /// stops after the current task and tears down at its exit. Returns `false` (and
    /// changes nothing) when destroy has already begun or no loop thread is live.
    pub fn abandon_from_loop_thread(&self) -> bool {
        self.update(|w| match State::from_bits(w) {
            State::Destroying | State::Destroyed => Err(()),
            _ if w & LIVE == 0 => Err(()),
            _ => Ok(Self::with_state(w, State::Destroying) | ABANDONED),
        })
        .is_ok()
    }

    /// The loop thread's very last step, as [`loop_exited`](Self::loop_exited), telling it
    /// whether it was abandoned: `true` means destroy gave up waiting for it and this
    /// thread must now tear the loop down itself (wait for producers, cancel everything,
    /// release) and then call [`finish_destroy`](Self::finish_destroy).
    pub fn loop_exit(&self) -> bool {
        let prev = self
            .update(|w| -> Result<usize, ()> {
                let w = w & !LIVE;
                Ok(match State::from_bits(w) {
                    State::Running | State::Stopping => Self::with_state(w, State::Stopped),
                    _ => w,
                })
            })
            .unwrap_or(0);
        prev & ABANDONED != 0
    }

    /// The end of a caller-driven turn (or of `run` on the caller's thread): not live any
    /// more, and `Running`/`Stopping` → `Ready` in one step (a stop requested during the
    /// turn is consumed by it). In `Destroying` only the live bit goes. Returns whether the
    /// loop was abandoned (as [`loop_exit`](Self::loop_exit)).
    pub fn end_turn(&self) -> bool {
        let prev = self.update(|w| -> Result<usize, ()> {
            let w = w & !LIVE;
            Ok(match State::from_bits(w) {
                State::Running | State::Stopping | State::Stopped => {
                    Self::with_state(w, State::Ready)
                }
                _ => w,
            })
        });
        prev.unwrap_or(0) & ABANDONED != 0
    }

    /// Enters a schedule call from any thread; the guard leaves it when dropped. Destroy
    /// waits until no producer is inside before its last drain, so whatever a producer
    /// queued is canceled rather than lost.
    ///
    /// # Errors
    /// Once destroy has begun: the caller must hand the task back (or run it canceled).
    pub fn enter_producer(&self) -> Result<ProducerGuard<'_>, LifecycleError> {
        self.update(|w| match State::from_bits(w) {
            State::Destroying | State::Destroyed => Err(Self::err(Operation::Schedule, w)),
            _ => Ok(w + PRODUCER),
        })
        .map(|_| ProducerGuard(self))
    }
}

#[cfg(all(test, not(loom)))]
mod tests;
