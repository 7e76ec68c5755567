//! A group of event loops: N loops on named threads, optionally pinned to CPUs, with
//! `next_loop` balancing by the power of two choices and a shutdown that is safe from any
//! thread, one of the group's own loop threads included.
//!
//! # Balancing
//! [`EventLoopGroup::next_loop`] draws two distinct loops at random and returns the one
//! with the lower [`load_factor`](LoopHandle::load_factor) (busy nanoseconds in the last
//! ~1 s window, as aws-c-io); a tie goes to the first drawn, so ties are broken at random
//! too. Two samples instead of a full scan keep the call O(1) and avoid the herd effect of
//! "always the least loaded": every caller that reads the same stale loads does not pile onto
//! the same loop. The random numbers come from a splitmix64 sequence on one `AtomicU64`
//! (one `fetch_add` per call, lock-free, seeded from the clock): no dependency, and a
//! balancing decision needs no cryptographic quality.
//!
//! # Shutdown
//! Destroying a loop waits for its thread to exit, so a task cannot destroy its own loop.
//! [`EventLoopGroup::shutdown`] called on one of the group's loop threads therefore hands the
//! destroys to a new thread, which finishes after the calling task has returned; called
//! anywhere else it destroys every loop before it returns.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::thread::JoinHandle;

use crate::{Error, EventLoop, EventLoopOptions, LoopHandle};

/// How to build an [`EventLoopGroup`].
#[derive(Clone, Debug, Default)]
pub struct EventLoopGroupOptions {
    /// How many loops (default 0: [`std::thread::available_parallelism`], or 1 when the
    /// system cannot say).
    pub loops: usize,
    /// CPU pinning: loop `i` is pinned to `cpus[i % cpus.len()]` with `sched_setaffinity`
    /// (default `None`: not pinned). The loop thread applies it when it starts; a CPU
    /// outside the process's allowed set is logged as a warning and the loop runs unpinned.
    pub cpus: Option<Vec<usize>>,
    /// The options of every loop. `thread_name` is the prefix of the threads' names: loop
    /// `i` (from 0) runs on a thread named `{thread_name}-{i + 1}` — `reseau-el-1`,
    /// `reseau-el-2`, … by default. `cpu` is replaced by the pinning above when `cpus` is
    /// set, and kept as is (every loop on that CPU) otherwise.
    pub loop_options: EventLoopOptions,
}

/// What a call to [`EventLoopGroup::shutdown`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownOutcome {
    /// Every loop was destroyed before `shutdown` returned, and the completion callback (if
    /// any) has run on the calling thread.
    Done,
    /// Called on one of the group's own loop threads: the destroys run on a new thread
    /// (`reseau-group-shutdown`), which finishes after the calling task returns; the
    /// completion callback runs there once every loop is destroyed.
    Started,
    /// An earlier call already shut the group down, or is doing so: this call did nothing,
    /// did not wait, and dropped its completion callback without calling it.
    AlreadyShutDown,
}

/// The completion callback of [`EventLoopGroup::shutdown`]: runs once every loop is
/// destroyed.
pub type ShutdownCallback = Box<dyn FnOnce() + Send + 'static>;

struct State {
    /// The loops, until a shutdown takes them.
    loops: Option<Vec<EventLoop>>,
    /// The thread a shutdown from a loop thread handed the destroys to.
    shutdown_thread: Option<JoinHandle<()>>,
}

/// N event loops, each on its own named thread, balanced by the power of two choices.
///
/// `Send + Sync`: share it (e.g. in an `Arc`) and call [`next_loop`](Self::next_loop) or
/// [`shutdown`](Self::shutdown) from any thread. Dropping it shuts it down (see
/// [`Drop`](#impl-Drop-for-EventLoopGroup)).
///
/// ```
/// use reseau_linux::{EventLoopGroup, EventLoopGroupOptions, ShutdownOutcome};
///
/// let group = EventLoopGroup::new(EventLoopGroupOptions { loops: 2, ..Default::default() })?;
/// let (tx, rx) = std::sync::mpsc::channel();
/// for _ in 0..4 {
///     let tx = tx.clone();
///     // The less loaded of two loops drawn at random.
///     group.next_loop().schedule_now(move |h, _| tx.send(h.loop_id()).unwrap())?;
/// }
/// let ids: Vec<u64> = (0..4).map(|_| rx.recv().unwrap()).collect();
/// assert!(ids.iter().all(|id| (0..2).any(|i| group.loop_at(i).unwrap().loop_id() == *id)));
/// assert_eq!(group.shutdown(None)?, ShutdownOutcome::Done);
/// # Ok::<(), reseau_linux::Error>(())
/// ```
pub struct EventLoopGroup {
    /// Weak handles, one per loop, readable without a lock; they stay valid (and refuse
    /// everything) after shutdown.
    handles: Vec<LoopHandle>,
    state: Mutex<State>,
    rng: AtomicU64,
}

impl std::fmt::Debug for EventLoopGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventLoopGroup")
            .field("len", &self.handles.len())
            .field("shut_down", &self.lock().loops.is_none())
            .finish()
    }
}

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// One step of splitmix64's output function on a Weyl-sequence state.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Two distinct indices in `0..n` (`n >= 2`) from one random word: the first from the low
/// half, the second an offset of `1..n` from it taken from the high half.
fn two_distinct(n: usize, r: u64) -> (usize, usize) {
    debug_assert!(n >= 2);
    let a = (r as u32 as usize) % n;
    let offset = 1 + ((r >> 32) as usize) % (n - 1);
    (a, (a + offset) % n)
}

/// The power of two choices: of two distinct loops drawn from `r`, the one with the lower
/// load; on a tie, the first drawn. `n` must be at least 1.
fn choose(n: usize, r: u64, load: impl Fn(usize) -> u64) -> usize {
    if n <= 1 {
        return 0;
    }
    let (a, b) = two_distinct(n, r);
    if load(b) < load(a) { b } else { a }
}

impl EventLoopGroup {
    /// Creates the loops and runs each one on its own thread.
    ///
    /// # Errors
    /// A loop could not be created or run (the first such error), or `cpus` is empty or
    /// names a CPU beyond what `sched_setaffinity` can express ([`Error::InvalidOption`]).
    /// Every loop created before the failure is destroyed first.
    pub fn new(options: EventLoopGroupOptions) -> Result<Self, Error> {
        let n = match options.loops {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        if let Some(cpus) = &options.cpus {
            if cpus.is_empty() {
                return Err(Error::InvalidOption("cpus is empty"));
            }
            if cpus.iter().any(|&c| c >= rustix::thread::CpuSet::MAX_CPU) {
                return Err(Error::InvalidOption("a CPU in cpus is beyond CPU_SETSIZE"));
            }
        }
        let mut loops: Vec<EventLoop> = Vec::with_capacity(n);
        for i in 0..n {
            let mut o = options.loop_options.clone();
            o.thread_name = format!("{}-{}", options.loop_options.thread_name, i + 1);
            if let Some(cpus) = &options.cpus {
                o.cpu = Some(cpus[i % cpus.len()]);
            }
            let started = EventLoop::new(o).and_then(|el| el.run().map(|()| el));
            match started {
                Ok(el) => loops.push(el),
                Err(e) => {
                    for mut el in loops {
                        if let Err(e) = el.destroy() {
                            crate::log_at!(
                                error,
                                "reseau: destroying a group loop after a failed new: {e}"
                            );
                        }
                    }
                    return Err(e);
                }
            }
        }
        crate::log_at!(debug, "reseau: event-loop group of {n} loops started");
        Ok(Self {
            handles: loops.iter().map(EventLoop::handle).collect(),
            state: Mutex::new(State {
                loops: Some(loops),
                shutdown_thread: None,
            }),
            rng: AtomicU64::new(mix(crate::clock::mono_now())),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while the lock is held; a poisoned lock must not panic again.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn random(&self) -> u64 {
        mix(self
            .rng
            .fetch_add(GOLDEN, Ordering::Relaxed)
            .wrapping_add(GOLDEN))
    }

    /// The loop to give new work to: of two distinct loops drawn at random, the one with the
    /// lower [`load_factor`](LoopHandle::load_factor) (the power of two choices; a tie goes
    /// to either at random). With one loop, that loop. O(1), lock-free, from any thread.
    ///
    /// After [`shutdown`](Self::shutdown) it still returns a handle, one whose calls all
    /// fail (schedules hand the task back).
    pub fn next_loop(&self) -> LoopHandle {
        self.handles[self.next_index()].clone()
    }

    /// The index of the loop [`next_loop`](Self::next_loop) would return (same draw, same
    /// rule), for callers that keep per-loop state in a `Vec` beside the group; see
    /// [`loop_at`](Self::loop_at).
    pub fn next_index(&self) -> usize {
        let n = self.handles.len();
        choose(n, self.random(), |i| self.handles[i].load_factor())
    }

    /// The handle of loop `i` (from 0; its thread is named `…-{i + 1}`), or `None` when
    /// `i >= len()`.
    pub fn loop_at(&self, i: usize) -> Option<LoopHandle> {
        self.handles.get(i).cloned()
    }

    /// How many loops the group has (the same before and after shutdown).
    pub fn len(&self) -> usize {
        self.handles.len()
    }

    /// Whether the group has no loop; never true, since a group has at least one.
    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }

    /// Whether the calling thread is the thread of one of the group's loops.
    pub fn is_on_loop_thread(&self) -> bool {
        self.handles.iter().any(LoopHandle::is_on_loop_thread)
    }

    /// Destroys every loop (each one's pending tasks run canceled, as
    /// [`EventLoop::destroy`] does), then calls `on_complete`. From any thread; idempotent.
    ///
    /// - Off the group's loop threads: blocks until every loop is destroyed, calls
    ///   `on_complete` on this thread and returns [`ShutdownOutcome::Done`].
    /// - On one of the group's loop threads (in a task): a loop cannot wait for itself, so
    ///   the destroys are handed to a new thread and this returns
    ///   [`ShutdownOutcome::Started`] at once; that thread waits for the calling task to
    ///   return, destroys every loop and then calls `on_complete`.
    /// - After a first call (finished or not): does nothing and returns
    ///   [`ShutdownOutcome::AlreadyShutDown`]; `on_complete` is dropped uncalled.
    ///
    /// # Errors
    /// Off the loop threads: the first error a destroy returned (every loop is still
    /// destroyed; `on_complete` still runs). On a loop thread: the shutdown thread could not
    /// be spawned ([`Error::Spawn`]): nothing was destroyed, the group is as before and a
    /// later call may retry; `on_complete` is dropped uncalled. Destroy errors on the
    /// shutdown thread are logged.
    pub fn shutdown(
        &self,
        on_complete: Option<ShutdownCallback>,
    ) -> Result<ShutdownOutcome, Error> {
        let on_loop = self.is_on_loop_thread();
        let mut state = self.lock();
        let Some(loops) = state.loops.take() else {
            return Ok(ShutdownOutcome::AlreadyShutDown);
        };
        if !on_loop {
            drop(state);
            let result = destroy_all(loops);
            if let Some(f) = on_complete {
                f();
            }
            return result.map(|()| ShutdownOutcome::Done);
        }
        // The loops travel to the shutdown thread through this slot, so that a failed spawn
        // (which drops the closure) can put them back.
        let slot = std::sync::Arc::new(Mutex::new(Some(loops)));
        let theirs = slot.clone();
        let spawned = std::thread::Builder::new()
            .name("reseau-group-shutdown".into())
            .spawn(move || {
                let loops = theirs.lock().unwrap_or_else(|p| p.into_inner()).take();
                if let Err(e) = destroy_all(loops.unwrap_or_default()) {
                    crate::log_at!(error, "reseau: group shutdown: {e}");
                }
                if let Some(f) = on_complete {
                    f();
                }
            });
        match spawned {
            Ok(h) => {
                state.shutdown_thread = Some(h);
                Ok(ShutdownOutcome::Started)
            }
            Err(e) => {
                state.loops = slot.lock().unwrap_or_else(|p| p.into_inner()).take();
                Err(Error::Spawn(e))
            }
        }
    }
}

/// Destroys every loop, in order; returns the first error.
fn destroy_all(loops: Vec<EventLoop>) -> Result<(), Error> {
    let mut first = Ok(());
    for mut el in loops {
        if let Err(e) = el.destroy() {
            crate::log_at!(error, "reseau: destroying a group loop failed: {e}");
            if first.is_ok() {
                first = Err(e);
            }
        }
    }
    first
}

/// Dropping the group shuts it down. Off the group's loop threads it blocks until every loop
/// is destroyed, including a shutdown handed off earlier by a loop task (it joins that
/// thread). On one of its loop threads it hands the work to a new thread and returns at once,
/// as [`EventLoopGroup::shutdown`] does.
impl Drop for EventLoopGroup {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown(None) {
            crate::log_at!(error, "reseau: shutting the group down on drop: {e}");
        }
        let on_loop = self.is_on_loop_thread();
        let Some(h) = self.lock().shutdown_thread.take() else {
            return;
        };
        // The shutdown thread itself may drop the group (a canceled task, or the completion
        // callback, holding the last reference): it cannot join itself.
        if on_loop || h.thread().id() == std::thread::current().id() {
            return;
        }
        if let Err(payload) = h.join() {
            crate::log_at!(
                error,
                "reseau: the group shutdown thread panicked: {}",
                crate::platform::panic_message(&*payload)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_distinct_indices_are_distinct_and_in_range() {
        for n in 2..9 {
            let mut seen = std::collections::BTreeSet::new();
            let mut r = 1u64;
            for _ in 0..4096 {
                r = mix(r.wrapping_add(GOLDEN));
                let (a, b) = two_distinct(n, r);
                assert!(a < n && b < n && a != b, "n={n}: {a}, {b}");
                seen.insert((a, b));
            }
            // Every ordered pair of distinct indices is drawn.
            assert_eq!(seen.len(), n * (n - 1), "n={n}");
        }
    }

    #[test]
    fn choose_picks_the_lower_load_of_the_two_drawn() {
        let loads = [50u64, 10, 30, 10];
        let mut r = 7u64;
        for _ in 0..4096 {
            r = mix(r.wrapping_add(GOLDEN));
            let (a, b) = two_distinct(loads.len(), r);
            let c = choose(loads.len(), r, |i| loads[i]);
            assert!(c == a || c == b);
            assert_eq!(loads[c], loads[a].min(loads[b]));
            // The most loaded loop is never chosen while the others are lighter.
            assert_ne!(c, 0);
        }
    }

    #[test]
    fn choose_breaks_ties_by_the_random_draw() {
        let loads = [0u64; 4];
        let mut hits = [0usize; 4];
        let mut r = 11u64;
        for _ in 0..4000 {
            r = mix(r.wrapping_add(GOLDEN));
            let c = choose(loads.len(), r, |i| loads[i]);
            assert_eq!(c, two_distinct(4, r).0, "a tie goes to the first drawn");
            hits[c] += 1;
        }
        assert!(hits.iter().all(|&h| h > 800), "ties spread: {hits:?}");
    }

    #[test]
    fn choose_with_one_loop_is_that_loop() {
        for r in [0, 1, u64::MAX] {
            assert_eq!(choose(1, r, |_| 5), 0);
        }
    }
}
