//! The loop itself: task slots, inbox, scheduler, lifecycle and the tick, over a
//! [`Platform`] and a slot storage.
//!
//! # Storage
//! An engine owns one array of [`Slot`]s, handed in by the caller (`S: AsRef<[Slot<T>]>`:
//! an owned `[Slot<T>; N]` on bare metal, a `Box<[Slot<T>]>` sized at run time on std, a
//! `&'static [Slot<T>]`). Its length is the capacity: how many tasks may be pending at
//! once. A slot holds one task inline (the payload `T`, e.g. a [`SmallTask`](crate::SmallTask)), its
//! deadline, its links in the scheduler, and one cell of each of the engine's two rings.
//! Nothing else is allocated, ever; a slot array is valid when zeroed, and slots never
//! used are never touched.
//!
//! # The path of a task
//! [`schedule`](Engine::schedule) on any thread pops a free slot index from the *free
//! ring* (or takes a never-used slot), writes the task into the slot, and — off the loop
//! thread — pushes the index into the *inbox* ring, whose push linearizes the schedule
//! (serialized FIFO) and tells the producer whether the loop must be woken (see
//! [Wake protocol](#wake-protocol)). The driver's tick drains the inbox into the scheduler
//! (an intrusive ready list, and for timers a wheel of 256 buckets in front of a 4-ary
//! heap keyed by `(deadline, submission)`, all inside the slots but the wheel's bucket
//! heads), runs the due batch, and pushes each finished slot back into the
//! free ring with its generation bumped. On the loop thread, `schedule` inserts into the
//! scheduler directly.
//!
//! # Handles
//! A [`TaskRef`] is plain data: the engine's id, the slot index and the slot's generation.
//! A slot's state word holds its generation and its *claim* (pending, run, canceled), so a
//! cancel is one compare-and-swap that fails for a stale handle, a handle of another
//! engine, or a task already claimed to run: never another task.
//!
//! # One tick
//! 1. the timeout: 0 if tasks are ready or the inbox is not empty, else until the next
//!    deadline (`None`: no limit), capped by the caller's;
//! 2. [`Platform::poll`]: wait, then dispatch IO;
//! 3. drain the inbox and the cross-thread cancels;
//! 4. the due batch: ASAP tasks, then timed tasks due at the batch's start, in
//!    `(deadline, submission)` order; a task scheduled during the batch waits for the next
//!    one; between tasks, a requested stop ends the batch.
//!
//! # Wake protocol
//! One flag, `notified`: a producer swaps it to 1 after its push and wakes the platform
//! only if it was 0; the driver, before it may block, swaps it to 0 (or finds it 0 already)
//! and *then* looks for published work (inbox head, cancel stack). Producers
//! read-modify-write the flag and only the driver clears it, so either a producer's swap
//! comes before the clear (whose Acquire makes the push visible: the driver does not
//! sleep) or after it (the first such producer sees 0 and wakes it): no wakeup is lost,
//! and a burst costs one wake per sleep. A loop woken only by IO or timers finds the flag
//! clear and pays no locked instruction for it.
//!
//! # Lifecycle
//! The [`Lifecycle`] word decides every transition; the engine adds the blocking parts
//! through the platform ([`Platform::block_until`] / [`Platform::notify`]) and publishes
//! the driver's exit on every path, panics included: `wait`, `destroy` and drop never hang.

use core::fmt;
use core::marker::PhantomData;
use core::mem::MaybeUninit;

use crate::lifecycle::{Lifecycle, LifecycleError, Operation, State, StopOutcome};
use crate::platform::Platform;
use crate::ring::{Empty, Ring, RingCell};
use crate::small_task::Runnable;
use crate::sync::{AtomicU8, AtomicU32, AtomicUsize, CachePadded, Ordering, UnsafeCell};
use crate::task::TaskStatus;

const NIL: u32 = u32::MAX;

/// The largest capacity (slot count) an engine accepts: 2^30 slots.
pub const MAX_CAPACITY: usize = 1 << 30;

// A slot's state word: generation << 2 | claim.
const CLAIM: u32 = 0b11;
const PENDING: u32 = 0;
const RUN: u32 = 1;
/// Canceled by the loop's own identity (or during destroy): no cancel-stack entry.
const CANCELED: u32 = 2;
/// Canceled from another thread: the slot is (or is about to be) on the cancel stack, and
/// is freed only once both the task has run canceled and the stack entry was taken.
const CANCELED_STACKED: u32 = 3;
const GEN_MASK: u32 = u32::MAX >> 2;

// Where a slot is, as the driver sees it.
/// Free, or in flight to the driver through the inbox.
const AWAY: u8 = 0;
const READY: u8 = 1;
const TIMED: u8 = 2;
/// Ran canceled; waits for its cancel-stack entry before it is freed.
const ZOMBIE: u8 = 3;
/// Its cancel-stack entry was taken while it was still in the inbox.
const STACK_SEEN: u8 = 4;
/// In a bucket of the timer wheel (`prev`/`next`: the bucket's list).
const WHEELED: u8 = 5;

/// Buckets of the timer wheel (a power of two, a multiple of 64).
const WHEEL_BUCKETS: usize = 256;
const WHEEL_WORDS: usize = WHEEL_BUCKETS / 64;

// How a task was scheduled (the slot owner writes it before publishing the slot).
const KIND_NOW: u8 = 0;
const KIND_AT: u8 = 1;

/// When a task is to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum When {
    /// As soon as possible. From the loop thread the task goes straight into the
    /// scheduler; from any other thread through the inbox.
    Now,
    /// As soon as possible, always through the inbox, even from the loop thread: one
    /// global FIFO with every other thread's schedules.
    NowSerialized,
    /// At a deadline of the platform's clock; never earlier.
    At(u64),
}

/// Identifies a task of one engine: the engine's id, the slot and the slot's generation.
///
/// Plain data (`Copy`, no reference count). A handle from another engine, or one whose
/// task has run or been canceled (its slot's generation has moved on), names no task:
/// [`Engine::cancel`] with it is a no-op. Generations wrap after 2^30 reuses of one slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TaskRef {
    loop_id: u64,
    slot: u32,
    generation: u32,
}

impl TaskRef {
    /// The id of the engine the task was scheduled on.
    pub const fn loop_id(&self) -> u64 {
        self.loop_id
    }

    /// The slot index.
    pub const fn slot(&self) -> u32 {
        self.slot
    }

    /// The slot's generation when the task was scheduled.
    pub const fn generation(&self) -> u32 {
        self.generation
    }
}

/// Why a schedule was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusedKind {
    /// Every slot holds a pending task.
    Full {
        /// The engine's capacity.
        capacity: usize,
    },
    /// Destroy has begun (or finished); the error names the state.
    Destroyed(LifecycleError),
}

impl fmt::Display for RefusedKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RefusedKind::Full { capacity } => {
                write!(f, "the loop already holds {capacity} pending tasks")
            }
            RefusedKind::Destroyed(e) => e.fmt(f),
        }
    }
}

/// A refused schedule: why, how the task was to run, and the task, untouched.
pub struct Refused<T> {
    /// Why.
    pub kind: RefusedKind,
    /// How the refused call asked the task to run.
    pub when: When,
    /// The task, never run.
    pub task: T,
}

impl<T> fmt::Debug for Refused<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Refused")
            .field("kind", &self.kind)
            .field("when", &self.when)
            .finish_non_exhaustive()
    }
}

impl<T> fmt::Display for Refused<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "schedule refused ({}); the task is handed back",
            self.kind
        )
    }
}

/// Deliberately broken variants of the engine's protocols, compiled only for loom builds:
/// the canaries proving that the loom models catch each kind of defect (see
/// `loom-tests/README.md`). Never use them.
#[cfg(loom)]
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Canary {
    /// The engine as shipped.
    None,
    /// Wake: `prepare_park` looks for work *before* clearing `notified` (a lost wakeup).
    ParkCheckThenClear,
    /// Cancel: the claim is a load and a store instead of one CAS (a task run twice, or
    /// canceled after it ran).
    CancelWithoutCas,
    /// Destroy: the teardown does not wait for producers still inside a schedule call (an
    /// accepted task lost).
    TeardownSkipsProducers,
    /// Lifecycle: a failed spawn does not wake the waiters (a waiter sleeps forever).
    SpawnFailureWithoutNotify,
}

/// Why [`Engine::new`] refused a slot array.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CapacityError {
    /// The slot array's length.
    pub len: usize,
}

impl fmt::Display for CapacityError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "an engine needs between 1 and {MAX_CAPACITY} slots, not {}",
            self.len
        )
    }
}

/// Why a driver ([`Engine::drive`], [`Engine::turn`], [`Engine::run_here`]) stopped.
#[derive(Debug)]
pub enum DriveError<E> {
    /// The lifecycle refused (e.g. `turn` on a loop its own thread runs, or destroyed).
    Lifecycle(LifecycleError),
    /// `drive` was called without a successful [`Engine::start`] for it.
    NotStarted,
    /// [`Platform::poll`] failed; the loop stopped.
    Platform(E),
    /// Code outside any task's own guard panicked (the clock, the platform); the loop
    /// stopped, and its exit was published as usual.
    Panicked,
}

impl<E: fmt::Display> fmt::Display for DriveError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DriveError::Lifecycle(e) => e.fmt(f),
            DriveError::NotStarted => f.write_str("drive: called without a successful start"),
            DriveError::Platform(e) => write!(f, "the loop stopped: its platform failed: {e}"),
            DriveError::Panicked => f.write_str("the loop stopped: it panicked outside a task"),
        }
    }
}

/// Why [`Engine::start`] failed; the loop stays ready to run.
#[derive(Debug)]
pub enum StartError<E> {
    /// The lifecycle refused (running already, destroyed…).
    Lifecycle(LifecycleError),
    /// The caller's spawn failed; concurrent waiters were woken.
    Spawn(E),
}

impl<E: fmt::Display> fmt::Display for StartError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::Lifecycle(e) => e.fmt(f),
            StartError::Spawn(e) => write!(f, "run: starting the driver failed: {e}"),
        }
    }
}

/// Why [`Engine::destroy`] did not finish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DestroyError {
    /// The lifecycle refused (from the loop thread, or destroyed already).
    Lifecycle(LifecycleError),
    /// The driver outlived the timeout: nothing was released; the driver tears the loop
    /// down itself at its exit.
    Abandoned,
}

impl fmt::Display for DestroyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DestroyError::Lifecycle(e) => e.fmt(f),
            DestroyError::Abandoned => f.write_str(
                "destroy: the driver outlived the timeout; nothing was released (it tears the loop down at its exit)",
            ),
        }
    }
}

impl From<LifecycleError> for DestroyError {
    fn from(e: LifecycleError) -> Self {
        DestroyError::Lifecycle(e)
    }
}

#[derive(Debug, Clone, Copy)]
struct Owned {
    deadline: u64,
    kind: u8,
}

#[derive(Debug, Clone, Copy)]
struct SlotLocal {
    /// Submission sequence (the scheduler's tie-breaker and batch bound).
    seq: u64,
    /// Ready list: previous slot; timer heap: this slot's heap position.
    prev: u32,
    /// Ready list: next slot.
    next: u32,
    /// The timer heap's entry at position == this slot's index: the slot it names...
    heap: u32,
    loc: u8,
    /// ... and that slot's key, `(deadline, seq)`, kept here so a sift compares entries
    /// without visiting the slots they name (one cache line per heap position, not three).
    heap_key: (u64, u64),
}

/// One task slot; see the [module docs](self). Make arrays of them with
/// [`Slot::new`] (`[const { Slot::new() }; N]`) or zeroed memory.
pub struct Slot<T> {
    state: AtomicU32,
    cancel_next: AtomicU32,
    free_cell: RingCell,
    inbox_cell: RingCell,
    task: UnsafeCell<MaybeUninit<T>>,
    owned: UnsafeCell<Owned>,
    local: UnsafeCell<SlotLocal>,
}

// SAFETY: a slot moves its `T` between threads (so `T: Send`) and never shares it: the
// payload and `owned` are written only by the slot's owner (the thread that popped the
// slot from the free ring) before it publishes the slot through the inbox (Release/Acquire
// on the ring cell), and read only by the driver after that; `local` is the driver's alone.
unsafe impl<T: Send> Sync for Slot<T> {}
// SAFETY: as above.
unsafe impl<T: Send> Send for Slot<T> {}

impl<T> Slot<T> {
    /// An empty slot (all zeros).
    #[cfg(not(loom))]
    pub const fn new() -> Self {
        Self {
            state: AtomicU32::new(0),
            cancel_next: AtomicU32::new(0),
            free_cell: RingCell::new(),
            inbox_cell: RingCell::new(),
            task: UnsafeCell::new(MaybeUninit::uninit()),
            owned: UnsafeCell::new(Owned {
                deadline: 0,
                kind: 0,
            }),
            local: UnsafeCell::new(SlotLocal {
                seq: 0,
                prev: 0,
                next: 0,
                heap: 0,
                loc: AWAY,
                heap_key: (0, 0),
            }),
        }
    }

    /// An empty slot (all zeros).
    #[cfg(loom)]
    pub fn new() -> Self {
        Self {
            state: AtomicU32::new(0),
            cancel_next: AtomicU32::new(0),
            free_cell: RingCell::new(),
            inbox_cell: RingCell::new(),
            task: UnsafeCell::new(MaybeUninit::uninit()),
            owned: UnsafeCell::new(Owned {
                deadline: 0,
                kind: 0,
            }),
            local: UnsafeCell::new(SlotLocal {
                seq: 0,
                prev: 0,
                next: 0,
                heap: 0,
                loc: AWAY,
                heap_key: (0, 0),
            }),
        }
    }
}

impl<T> Default for Slot<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> fmt::Debug for Slot<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Slot")
            .field("state", &self.state.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Copy)]
struct Local {
    ready_head: u32,
    ready_tail: u32,
    ready_len: u32,
    heap_len: u32,
    zombies: u32,
    next_seq: u64,
    /// The last tick drained or ran something.
    busy: bool,
}

impl Local {
    const EMPTY: Local = Local {
        ready_head: NIL,
        ready_tail: NIL,
        ready_len: 0,
        heap_len: 0,
        zombies: 0,
        next_seq: 0,
        busy: false,
    };
}

/// The timer wheel in front of the heap (the driver's alone). A timer whose bucket tick
/// (`deadline >> P::TIMER_WHEEL_SHIFT`) is in `(cur, cur + WHEEL_BUCKETS)` waits in bucket
/// `tick % WHEEL_BUCKETS`, a doubly linked list through the slots (O(1) insert and
/// cancel); any other timer goes straight to the heap. Before the heap's minimum is
/// trusted (for a wait's timeout, a batch, a destroy), every bucket that starts at or
/// before it moves into the heap (`settle`), so the heap's minimum is always the earliest
/// deadline of all and the `(deadline, submission)` order is the heap's. With a million
/// timers over 200 ms the heap holds a bucket's worth (~5,000), whose top levels stay in
/// cache, instead of a million.
struct Wheel {
    /// Every bucketed timer's tick is above this.
    cur: u64,
    len: u32,
    /// At most the start of the first occupied bucket (a lower bound, raised lazily).
    next_start: u64,
    heads: [u32; WHEEL_BUCKETS],
    occupied: [u64; WHEEL_WORDS],
}

impl Wheel {
    const EMPTY: Wheel = Wheel {
        cur: 0,
        len: 0,
        next_start: u64::MAX,
        heads: [NIL; WHEEL_BUCKETS],
        occupied: [0; WHEEL_WORDS],
    };

    /// The tick of the first occupied bucket after `cur`, if any.
    fn first_tick(&self) -> Option<u64> {
        if self.len == 0 {
            return None;
        }
        let start = (self.cur.wrapping_add(1) as usize) & (WHEEL_BUCKETS - 1);
        let (word0, bit0) = (start / 64, start % 64);
        // Words from `start`'s, wrapping round to it again for the bits below `start`.
        for step in 0..=WHEEL_WORDS {
            let w = (word0 + step) % WHEEL_WORDS;
            let mut bits = self.occupied[w];
            if step == 0 {
                bits &= u64::MAX << bit0;
            } else if step == WHEEL_WORDS {
                bits &= !(u64::MAX << bit0);
            }
            if bits != 0 {
                let b = w * 64 + bits.trailing_zeros() as usize;
                let dist = b.wrapping_sub(start) & (WHEEL_BUCKETS - 1);
                return Some(self.cur + 1 + dist as u64);
            }
        }
        None
    }

    fn set(&mut self, b: usize, occupied: bool) {
        if occupied {
            self.occupied[b / 64] |= 1 << (b % 64);
        } else {
            self.occupied[b / 64] &= !(1 << (b % 64));
        }
    }
}

/// Proof that the calling thread is the loop's driver (its thread, a `turn` caller, or the
/// thread destroying it). Only the engine makes one, after checking; every access to the
/// driver-only state takes it.
#[derive(Clone, Copy)]
struct Drv(());

/// The batch bound: tasks with a submission sequence below it are due in this batch.
#[derive(Clone, Copy)]
struct Batch(u64);

/// The event loop engine; see the [module docs](self).
///
/// `P` is the platform, `T` the task payload (run with `&P::Cx`), `S` the slot storage.
///
/// ```
/// use reseau_core::engine::{Engine, Slot, When};
/// use reseau_core::{Platform, TaskStatus};
/// use std::cell::Cell;
///
/// /// A platform with no OS: a clock that jumps to whatever `poll` is asked to wait for.
/// struct Sim(Cell<u64>);
/// impl Platform for Sim {
///     type Cx = ();
///     type Error = ();
///     fn now(&self) -> u64 { self.0.get() }
///     fn wake(&self) {}
///     fn poll(&self, _: &(), timeout: Option<u64>) -> Result<(), ()> {
///         if let Some(t) = timeout { self.0.set(self.0.get() + t) }
///         Ok(())
///     }
///     fn run_task(&self, _: TaskStatus, f: impl FnOnce()) -> bool { f(); true }
///     fn catch<R>(&self, f: impl FnOnce() -> R) -> Option<R> { Some(f()) }
///     fn current_thread(&self) -> usize { 1 }
///     fn block_until(&self, done: &dyn Fn() -> bool, _: Option<u64>) -> bool { done() }
///     fn notify(&self) {}
/// }
///
/// fn hello(_: &(), status: TaskStatus) { assert_eq!(status, TaskStatus::RunReady) }
///
/// let slots: [Slot<fn(&(), TaskStatus)>; 8] = [const { Slot::new() }; 8];
/// let engine = Engine::new(Sim(Cell::new(0)), slots, 1).unwrap();
/// engine.schedule(hello, When::At(5_000)).unwrap();
/// engine.turn(&(), None).unwrap(); // drains the inbox into the timer heap
/// engine.turn(&(), None).unwrap(); // waits 5000 ticks of the simulated clock, runs it
/// assert_eq!(engine.pending(), 0);
/// assert_eq!(engine.platform().now(), 5_000);
/// ```
pub struct Engine<P, T, S>
where
    P: Platform,
    T: Runnable<P::Cx>,
    S: AsRef<[Slot<T>]>,
{
    platform: P,
    id: u64,
    cap: usize,
    one_lap: usize,
    lifecycle: CachePadded<Lifecycle>,
    driver: CachePadded<AtomicUsize>,
    stop_hint: CachePadded<AtomicU8>,
    notified: CachePadded<AtomicU8>,
    cancels: CachePadded<AtomicU32>,
    fresh: CachePadded<AtomicUsize>,
    free: Ring,
    inbox: Ring,
    local: UnsafeCell<Local>,
    wheel: UnsafeCell<Wheel>,
    slots: S,
    #[cfg(loom)]
    canary: Canary,
    _task: PhantomData<fn(T) -> T>,
}

// SAFETY: the engine's cells are accessed under its protocol: the driver-only state
// (`local`, each slot's `local`) by the one driver (the `driver` word makes it unique and
// a `Drv` token proves it), slot payloads by their owner then the driver (see `Slot`).
// Tasks cross threads, hence `T: Send`; the platform is shared, hence `P: Sync`.
unsafe impl<P, T, S> Sync for Engine<P, T, S>
where
    P: Platform + Sync,
    T: Runnable<P::Cx> + Send,
    S: AsRef<[Slot<T>]> + Sync,
{
}
// SAFETY: as above; moving the engine moves its tasks and platform.
unsafe impl<P, T, S> Send for Engine<P, T, S>
where
    P: Platform + Send,
    T: Runnable<P::Cx> + Send,
    S: AsRef<[Slot<T>]> + Send,
{
}

impl<P, T, S> fmt::Debug for Engine<P, T, S>
where
    P: Platform,
    T: Runnable<P::Cx>,
    S: AsRef<[Slot<T>]>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine")
            .field("id", &self.id)
            .field("capacity", &self.cap)
            .field("lifecycle", &*self.lifecycle)
            .finish_non_exhaustive()
    }
}

#[cfg(not(loom))]
impl<P, T, const N: usize> Engine<P, T, [Slot<T>; N]>
where
    P: Platform,
    T: Runnable<P::Cx>,
{
    /// An engine holding its `N` slots inline, built at compile time: what a `static`
    /// needs on a target without an allocator. `N` is checked at compile time (1 to
    /// [`MAX_CAPACITY`]); otherwise the same engine as [`new`](Self::new) returns.
    ///
    /// ```
    /// use reseau_core::sim::SimPlatform;
    /// use reseau_core::{Engine, Slot, TaskStatus, When};
    ///
    /// type Job = fn(&(), TaskStatus);
    /// // A `static` needs a `Sync` platform; a local works with any.
    /// let engine: Engine<SimPlatform<(), 4>, Job, [Slot<Job>; 8]> =
    ///     Engine::new_inline(SimPlatform::new(|_, _| {}), 1);
    /// assert_eq!(engine.capacity(), 8);
    /// engine.schedule(|_, status| assert_eq!(status, TaskStatus::RunReady), When::Now)
    ///     .map_err(|r| r.kind)
    ///     .unwrap();
    /// ```
    pub const fn new_inline(platform: P, id: u64) -> Self {
        const { assert!(N >= 1 && N <= MAX_CAPACITY, "capacity out of range") };
        Self {
            platform,
            id,
            cap: N,
            one_lap: (N + 1).next_power_of_two(),
            lifecycle: CachePadded(Lifecycle::new()),
            driver: CachePadded(AtomicUsize::new(0)),
            stop_hint: CachePadded(AtomicU8::new(0)),
            notified: CachePadded(AtomicU8::new(0)),
            cancels: CachePadded(AtomicU32::new(NIL)),
            fresh: CachePadded(AtomicUsize::new(0)),
            free: Ring::new(),
            inbox: Ring::new(),
            local: UnsafeCell::new(Local::EMPTY),
            wheel: UnsafeCell::new(Wheel::EMPTY),
            slots: [const { Slot::new() }; N],
            _task: PhantomData,
        }
    }
}

impl<P, T, S> Engine<P, T, S>
where
    P: Platform,
    T: Runnable<P::Cx>,
    S: AsRef<[Slot<T>]>,
{
    /// An engine over `slots` (their number is the capacity, 1 to [`MAX_CAPACITY`]), with
    /// the identity `id` its [`TaskRef`]s carry: give every engine of a process its own.
    ///
    /// # Errors
    /// The slot array is empty or longer than [`MAX_CAPACITY`].
    pub fn new(platform: P, slots: S, id: u64) -> Result<Self, CapacityError> {
        let cap = slots.as_ref().len();
        if cap == 0 || cap > MAX_CAPACITY {
            return Err(CapacityError { len: cap });
        }
        Ok(Self {
            platform,
            id,
            cap,
            one_lap: (cap + 1).next_power_of_two(),
            lifecycle: CachePadded(Lifecycle::new()),
            driver: CachePadded(AtomicUsize::new(0)),
            stop_hint: CachePadded(AtomicU8::new(0)),
            notified: CachePadded(AtomicU8::new(0)),
            cancels: CachePadded(AtomicU32::new(NIL)),
            fresh: CachePadded(AtomicUsize::new(0)),
            free: Ring::new(),
            inbox: Ring::new(),
            local: UnsafeCell::new(Local::EMPTY),
            wheel: UnsafeCell::new(Wheel::EMPTY),
            slots,
            #[cfg(loom)]
            canary: Canary::None,
            _task: PhantomData,
        })
    }

    /// Breaks one protocol on purpose (loom builds only); see [`Canary`].
    #[cfg(loom)]
    #[doc(hidden)]
    pub fn with_canary(mut self, canary: Canary) -> Self {
        self.canary = canary;
        self
    }

    #[cfg(loom)]
    fn canary(&self, c: Canary) -> bool {
        self.canary == c
    }

    /// The id this engine's [`TaskRef`]s carry.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// How many tasks may be pending at once (the slot count).
    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// The platform.
    pub fn platform(&self) -> &P {
        &self.platform
    }

    /// The lifecycle (read its [`state`](Lifecycle::state), [`is_live`](Lifecycle::is_live)).
    pub fn lifecycle(&self) -> &Lifecycle {
        &self.lifecycle
    }

    /// The loop's state.
    pub fn state(&self) -> State {
        self.lifecycle.state()
    }

    /// Whether the calling thread drives the loop now (its thread, a `turn` caller, or the
    /// thread destroying it).
    pub fn is_driver(&self) -> bool {
        self.driver.load(Ordering::Acquire) == self.platform.current_thread()
    }

    fn drv(&self) -> Option<Drv> {
        self.is_driver().then_some(Drv(()))
    }

    /// Slots in use: tasks scheduled, queued in the inbox, or awaiting a cross-thread
    /// cancel's bookkeeping (a snapshot).
    pub fn pending(&self) -> usize {
        let fresh = self.fresh.load(Ordering::Acquire);
        fresh.saturating_sub(self.free.len(self.cap, self.one_lap))
    }

    // ---- scheduling, any thread ----

    /// Schedules `task`; see [`When`]. From the loop thread (not serialized) it goes
    /// straight into the scheduler; otherwise through the inbox, waking the driver when the
    /// wake protocol says so.
    ///
    /// # Errors
    /// Every slot is taken ([`RefusedKind::Full`]) or destroy has begun
    /// ([`RefusedKind::Destroyed`]); the task comes back untouched.
    pub fn schedule(&self, task: T, when: When) -> Result<TaskRef, Refused<T>> {
        let drv = self.drv();
        let _guard = match drv {
            Some(_) => None,
            None => match self.lifecycle.enter_producer() {
                Ok(g) => Some(g),
                Err(e) => {
                    return Err(Refused {
                        kind: RefusedKind::Destroyed(e),
                        when,
                        task,
                    });
                }
            },
        };
        let Some(i) = self.alloc() else {
            return Err(Refused {
                kind: RefusedKind::Full { capacity: self.cap },
                when,
                task,
            });
        };
        let slot = self.slot(i);
        let owned = match when {
            When::Now | When::NowSerialized => Owned {
                deadline: 0,
                kind: KIND_NOW,
            },
            When::At(deadline) => Owned {
                deadline,
                kind: KIND_AT,
            },
        };
        // SAFETY: popping `i` from the free ring (or taking it fresh) made this thread the
        // slot's only owner until it publishes the slot below; the slot holds no task.
        slot.task.with_mut(|p| unsafe { (*p).write(task) });
        // SAFETY: as above.
        slot.owned.with_mut(|p| unsafe { *p = owned });
        let generation = slot.state.load(Ordering::Acquire) >> 2;
        let r = TaskRef {
            loop_id: self.id,
            slot: i,
            generation,
        };
        match drv {
            Some(d) if when != When::NowSerialized => self.insert(d, i),
            _ => {
                let pushed = self.inbox.push(
                    self.cap,
                    self.one_lap,
                    |k| &self.slot(k as u32).inbox_cell,
                    i,
                );
                debug_assert!(pushed.is_ok(), "the inbox holds every slot");
                if drv.is_none() {
                    self.after_push();
                }
            }
        }
        Ok(r)
    }

    /// Cancels the task `r` names: it will run exactly once with
    /// [`TaskStatus::Canceled`] — at once on the loop thread, in the driver's next tick
    /// otherwise (or at destroy) — and this returns `true`. Returns `false`, changing
    /// nothing, when `r` names no pending task of this engine: stale, of another engine, or
    /// already claimed to run.
    pub fn cancel(&self, cx: &P::Cx, r: TaskRef) -> bool {
        if r.loop_id != self.id || r.slot as usize >= self.cap || r.generation > GEN_MASK {
            return false;
        }
        let slot = self.slot(r.slot);
        let pending = r.generation << 2 | PENDING;
        if let Some(d) = self.drv() {
            if slot
                .state
                .compare_exchange(
                    pending,
                    r.generation << 2 | CANCELED,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_err()
            {
                return false;
            }
            // Bring the inbox in first, so a task still queued there is found.
            self.drain(d, cx);
            if slot.state.load(Ordering::Acquire) >> 2 != r.generation {
                // The drain met the task in the inbox, ran it canceled and freed its slot —
                // which a task it ran may already have reused: leave that one alone (found
                // by the `engine` fuzz target).
                return true;
            }
            match self.sl(d, r.slot).loc {
                READY => {
                    self.ready_unlink(d, r.slot);
                    self.finish(d, cx, r.slot, TaskStatus::Canceled);
                }
                TIMED => {
                    let pos = self.sl(d, r.slot).prev;
                    self.heap_remove(d, pos);
                    self.finish(d, cx, r.slot, TaskStatus::Canceled);
                }
                WHEELED => {
                    self.wheel_unlink(d, r.slot);
                    self.finish(d, cx, r.slot, TaskStatus::Canceled);
                }
                // Still behind an unpublished push in the inbox, or already run canceled
                // by the drain above: the drain that meets it runs it canceled.
                _ => {}
            }
            return true;
        }
        let Ok(_guard) = self.lifecycle.enter_producer() else {
            // Destroy has begun: it cancels every task it finds; claiming is all we do.
            return slot
                .state
                .compare_exchange(
                    pending,
                    r.generation << 2 | CANCELED,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_ok();
        };
        if !self.claim_cancel_stacked(slot, pending, r.generation) {
            return false;
        }
        // The claim is ours: push the slot on the cancel stack so the driver takes it out
        // promptly. The slot cannot be freed until the driver has taken this entry.
        let mut head = self.cancels.load(Ordering::Relaxed);
        loop {
            slot.cancel_next.store(head, Ordering::Relaxed);
            match self.cancels.compare_exchange_weak(
                head,
                r.slot,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(h) => head = h,
            }
        }
        self.after_push();
        true
    }

    /// The cross-thread cancel's claim: pending → canceled (stacked), one CAS.
    fn claim_cancel_stacked(&self, slot: &Slot<T>, pending: u32, generation: u32) -> bool {
        let canceled = generation << 2 | CANCELED_STACKED;
        #[cfg(loom)]
        if self.canary(Canary::CancelWithoutCas) {
            if slot.state.load(Ordering::Acquire) != pending {
                return false;
            }
            slot.state.store(canceled, Ordering::Release);
            return true;
        }
        slot.state
            .compare_exchange(pending, canceled, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    fn after_push(&self) {
        if self.notified.swap(1, Ordering::AcqRel) == 0 {
            self.platform.wake();
        } else {
            self.platform.wake_coalesced();
        }
    }

    fn alloc(&self) -> Option<u32> {
        loop {
            match self
                .free
                .pop(self.cap, self.one_lap, |k| &self.slot(k as u32).free_cell)
            {
                Ok(i) => return Some(i),
                // The driver is in the middle of freeing a slot: it will be there at once.
                Err(Empty::Unpublished) => self.platform.pause(),
                Err(Empty::Empty) => break,
            }
        }
        let mut fresh = self.fresh.load(Ordering::Relaxed);
        loop {
            if fresh >= self.cap {
                return None;
            }
            match self.fresh.compare_exchange_weak(
                fresh,
                fresh + 1,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Some(fresh as u32),
                Err(f) => fresh = f,
            }
        }
    }

    // ---- lifecycle ----

    /// Asks the loop to stop; idempotent, any thread. From the loop thread it takes effect
    /// when the current task returns; pending tasks stay for the next run. A loop not
    /// running is unaffected (the next run is not stopped by it).
    ///
    /// # Errors
    /// Once destroyed.
    pub fn stop(&self) -> Result<(), LifecycleError> {
        let _guard = match self.lifecycle.enter_producer() {
            Ok(g) => g,
            // Destroy is stopping the loop already.
            Err(e) if e.state == State::Destroying => return Ok(()),
            Err(e) => {
                return Err(LifecycleError {
                    op: Operation::Stop,
                    ..e
                });
            }
        };
        if self.lifecycle.request_stop()? == StopOutcome::Requested {
            self.stop_hint.store(1, Ordering::Release);
            if !self.is_driver() {
                self.platform.wake();
            }
        }
        Ok(())
    }

    /// Starts the loop on a thread of the caller's: moves the lifecycle to running, then
    /// calls `spawn`, which must start a thread that calls [`drive`](Self::drive). If
    /// `spawn` fails the loop is ready again and every waiter is woken.
    ///
    /// # Errors
    /// The lifecycle refused, or `spawn` failed.
    pub fn start<E>(&self, spawn: impl FnOnce() -> Result<(), E>) -> Result<(), StartError<E>> {
        self.lifecycle.begin_run().map_err(StartError::Lifecycle)?;
        match spawn() {
            Ok(()) => Ok(()),
            Err(e) => {
                self.lifecycle.run_failed();
                #[cfg(loom)]
                if self.canary(Canary::SpawnFailureWithoutNotify) {
                    return Err(StartError::Spawn(e));
                }
                self.platform.notify();
                Err(StartError::Spawn(e))
            }
        }
    }

    /// The body of the thread [`start`](Self::start) spawned: publishes this thread as the
    /// driver, ticks until stopped, then publishes the exit (also when something panicked
    /// or `poll` failed) and wakes the waiters. If destroy gave up waiting meanwhile, this
    /// thread tears the loop down before it returns.
    ///
    /// # Errors
    /// [`DriveError::NotStarted`] without a `start`; otherwise why the loop stopped on its
    /// own (a `poll` error, a panic outside the tasks).
    pub fn drive(&self, cx: &P::Cx) -> Result<(), DriveError<P::Error>> {
        let me = self.platform.current_thread();
        if !self.lifecycle.is_live()
            || self
                .driver
                .compare_exchange(0, me, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
        {
            return Err(DriveError::NotStarted);
        }
        let d = Drv(());
        let result = self.platform.catch(|| self.ticks(d, cx));
        self.stop_hint.store(0, Ordering::Release);
        self.driver.store(0, Ordering::Release);
        if self.lifecycle.loop_exit() {
            self.abandoned_teardown(cx, me);
        }
        self.platform.notify();
        flatten(result)
    }

    /// Runs one tick on the calling thread (the caller-driven mode, like mio's `poll` or
    /// calloop's `dispatch`): waits at most `max_wait` (platform ticks; `None`: until
    /// something happens), dispatches IO, drains the inbox and runs what is due.
    ///
    /// Returns how long the caller may block before the next turn is due: `Some(0)` when
    /// work is already waiting, the time to the next deadline, or `None` when nothing is
    /// scheduled. Before returning, the turn re-arms the wake protocol, so a task queued
    /// from another thread afterwards calls [`Platform::wake`] (on Linux: the loop's
    /// descriptor becomes readable for an outer poller).
    ///
    /// # Errors
    /// The loop runs on its own thread or another caller's turn, or is destroyed
    /// ([`DriveError::Lifecycle`]); `poll` failed; something outside the tasks panicked.
    pub fn turn(
        &self,
        cx: &P::Cx,
        max_wait: Option<u64>,
    ) -> Result<Option<u64>, DriveError<P::Error>> {
        self.drive_here(cx, |d| {
            self.tick(d, cx, max_wait, false)?;
            if !self.prepare_park() {
                return Ok(Some(0));
            }
            Ok(self
                .next_deadline(d)
                .map(|deadline| deadline.saturating_sub(self.platform.now())))
        })
    }

    /// Runs ticks on the calling thread until [`stop`](Self::stop) (from a task, a
    /// callback or another thread); the loop is then ready to run again.
    ///
    /// # Errors
    /// As [`turn`](Self::turn).
    pub fn run_here(&self, cx: &P::Cx) -> Result<(), DriveError<P::Error>> {
        self.drive_here(cx, |d| self.ticks(d, cx))
    }

    fn drive_here<R>(
        &self,
        cx: &P::Cx,
        body: impl FnOnce(Drv) -> Result<R, P::Error>,
    ) -> Result<R, DriveError<P::Error>> {
        self.lifecycle.begin_run().map_err(DriveError::Lifecycle)?;
        let me = self.platform.current_thread();
        self.driver.store(me, Ordering::Release);
        let result = self.platform.catch(|| body(Drv(())));
        self.stop_hint.store(0, Ordering::Release);
        self.driver.store(0, Ordering::Release);
        if self.lifecycle.end_turn() {
            self.abandoned_teardown(cx, me);
        }
        self.platform.notify();
        flatten(result)
    }

    fn ticks(&self, d: Drv, cx: &P::Cx) -> Result<(), P::Error> {
        while self.lifecycle.should_run() {
            self.tick(d, cx, None, true)?;
        }
        Ok(())
    }

    /// Blocks until the loop's driver has exited (after a [`stop`](Self::stop), or on its
    /// own), then makes the loop ready to run again. Returns at once if no driver is live.
    ///
    /// # Errors
    /// From the loop thread (it would wait for itself), or once destroyed.
    pub fn wait(&self) -> Result<(), LifecycleError> {
        self.lifecycle.begin_wait(self.is_driver())?;
        let lifecycle = &self.lifecycle;
        self.platform.block_until(&|| !lifecycle.is_live(), None);
        lifecycle.finish_wait();
        Ok(())
    }

    /// Destroys the loop: stops it, waits for its driver to exit (at most `timeout`), waits
    /// for producers still inside a schedule call, then — on this thread, which is the
    /// loop's driver meanwhile — runs every pending task exactly once with
    /// [`TaskStatus::Canceled`] and releases the platform's sources, until nothing is
    /// left (a canceled task or a dropped source may schedule more). Every slot is free
    /// afterwards.
    ///
    /// # Errors
    /// From the loop thread, or destroyed already ([`DestroyError::Lifecycle`]); or the
    /// driver outlived `timeout` ([`DestroyError::Abandoned`]: nothing was released; the
    /// driver tears down at its exit).
    pub fn destroy(&self, cx: &P::Cx, timeout: Option<u64>) -> Result<(), DestroyError> {
        let from = self.lifecycle.begin_destroy(self.is_driver())?;
        self.stop_hint.store(1, Ordering::Release);
        if matches!(from, State::Running | State::Stopping) {
            self.platform.wake();
        }
        let lifecycle = &self.lifecycle;
        if !self.platform.block_until(&|| !lifecycle.is_live(), timeout) && lifecycle.abandon() {
            return Err(DestroyError::Abandoned);
        }
        let me = self.platform.current_thread();
        self.driver.store(me, Ordering::Release);
        let _reset = ResetDriver(&self.driver);
        self.teardown(Drv(()), cx);
        lifecycle.finish_destroy()?;
        Ok(())
    }

    /// Destroy from the loop thread itself (its owner dropped it inside one of its own
    /// tasks): the loop stops after the current task and tears itself down at its exit.
    /// Returns `false` when not on a live loop thread or destroy has begun.
    pub fn abandon_from_loop_thread(&self) -> bool {
        if !self.is_driver() || !self.lifecycle.abandon_from_loop_thread() {
            return false;
        }
        self.stop_hint.store(1, Ordering::Release);
        true
    }

    fn abandoned_teardown(&self, cx: &P::Cx, me: usize) {
        self.driver.store(me, Ordering::Release);
        let _reset = ResetDriver(&self.driver);
        self.platform.catch(|| self.teardown(Drv(()), cx));
        let _ = self.lifecycle.finish_destroy();
    }

    fn teardown(&self, d: Drv, cx: &P::Cx) {
        // A producer inside a schedule call may still push: wait for it, so what it queued
        // is canceled rather than lost.
        #[cfg(loom)]
        let skip = self.canary(Canary::TeardownSkipsProducers);
        #[cfg(not(loom))]
        let skip = false;
        while !skip && self.lifecycle.producers() > 0 {
            self.platform.pause();
        }
        loop {
            let any = self.cancel_everything(d, cx);
            let released = self.platform.release_sources(cx);
            if !any && released == 0 {
                break;
            }
        }
    }

    // ---- the tick (driver only) ----

    fn stop_requested(&self) -> bool {
        self.stop_hint.load(Ordering::Acquire) != 0 && !self.lifecycle.should_run()
    }

    fn prepare_park(&self) -> bool {
        #[cfg(loom)]
        if self.canary(Canary::ParkCheckThenClear) {
            let idle = !self
                .inbox
                .head_ready(self.one_lap, |k| &self.slot(k as u32).inbox_cell)
                && self.cancels.load(Ordering::Acquire) == NIL;
            self.notified.store(0, Ordering::Release);
            return idle;
        }
        // Clear `notified` only when set: a loop nobody woke (IO readiness, timers) finds
        // it clear and saves a locked instruction per tick. Reading 0 is as good as
        // writing it: a push after the 0 we read either reads that 0 in its own swap and
        // wakes us, or follows another push that did; a push before it was seen by the
        // swap that wrote the 0, whose Acquire made its task visible to us.
        if self.notified.load(Ordering::Relaxed) != 0 {
            self.notified.swap(0, Ordering::AcqRel);
        }
        !self.published()
    }

    /// Whether a schedule or a cross-thread cancel is published for the driver to take.
    fn published(&self) -> bool {
        self.inbox
            .head_ready(self.one_lap, |k| &self.slot(k as u32).inbox_cell)
            || self.cancels.load(Ordering::Acquire) != NIL
    }

    /// One tick. `eager` (a loop that keeps ticking, not a single `turn`): after a tick
    /// that found work, while more is already published, look again without blocking
    /// (and without clearing `notified`, so producers meanwhile need not wake us): a
    /// steady producer keeps the driver awake, and a burst costs a handful of wakes, not
    /// one per catch-up. When nothing is published the driver parks at once — an extra
    /// non-blocking `epoll_wait` there found nothing in a ping-pong between two loops and
    /// cost a syscall per hop. A blocking wait always follows `prepare_park`.
    fn tick(&self, d: Drv, cx: &P::Cx, max_wait: Option<u64>, eager: bool) -> Result<(), P::Error> {
        let mut timeout = self
            .next_deadline(d)
            .map(|deadline| deadline.saturating_sub(self.platform.now()));
        if timeout != Some(0)
            && ((eager && self.el(d).busy && self.published()) || !self.prepare_park())
        {
            timeout = Some(0);
        }
        if let Some(max) = max_wait {
            timeout = Some(timeout.map_or(max, |t| t.min(max)));
        }
        self.platform.poll(cx, timeout)?;
        let mut busy = self.drain(d, cx);
        let batch = self.begin(d, self.platform.now());
        while !self.stop_requested() {
            let Some(i) = self.pop_due(d, batch) else {
                break;
            };
            busy = true;
            let status = self.claim_run(i);
            self.finish(d, cx, i, status);
        }
        self.el_update(d, |l| l.busy = busy);
        Ok(())
    }

    /// Moves the inbox into the scheduler (a task canceled meanwhile runs canceled), then
    /// takes the cross-thread cancels. Returns whether anything was found.
    fn drain(&self, d: Drv, cx: &P::Cx) -> bool {
        let mut any = false;
        // Look at the head before popping: a pop that finds the ring empty tells "empty"
        // from "claimed but unpublished" with a SeqCst fence (an `mfence` on x86), which
        // the drain does not need — it stops at either — and most ticks end the drain so.
        while self
            .inbox
            .head_ready(self.one_lap, |k| &self.slot(k as u32).inbox_cell)
        {
            let Ok(i) = self.pop_inbox() else { break };
            any = true;
            if self.slot(i).state.load(Ordering::Acquire) & CLAIM != PENDING {
                self.finish(d, cx, i, TaskStatus::Canceled);
            } else {
                self.insert(d, i);
            }
        }
        // The empty stack's check here, inline: the call is not (most ticks find it empty).
        (self.cancels.load(Ordering::Acquire) != NIL && self.drain_cancels(d, cx)) || any
    }

    fn drain_cancels(&self, d: Drv, cx: &P::Cx) -> bool {
        // Look before taking: most ticks find the stack empty, and a load costs less than
        // a swap (a locked instruction on x86).
        if self.cancels.load(Ordering::Acquire) == NIL {
            return false;
        }
        let mut i = self.cancels.swap(NIL, Ordering::Acquire);
        let any = i != NIL;
        while i != NIL {
            let next = self.slot(i).cancel_next.load(Ordering::Relaxed);
            let local = self.sl(d, i);
            match local.loc {
                READY => {
                    self.ready_unlink(d, i);
                    self.set_loc(d, i, STACK_SEEN);
                    self.finish(d, cx, i, TaskStatus::Canceled);
                }
                TIMED => {
                    self.heap_remove(d, local.prev);
                    self.set_loc(d, i, STACK_SEEN);
                    self.finish(d, cx, i, TaskStatus::Canceled);
                }
                WHEELED => {
                    self.wheel_unlink(d, i);
                    self.set_loc(d, i, STACK_SEEN);
                    self.finish(d, cx, i, TaskStatus::Canceled);
                }
                ZOMBIE => {
                    self.el_update(d, |l| l.zombies -= 1);
                    self.free_slot(d, i);
                }
                _ => self.set_loc(d, i, STACK_SEEN),
            }
            i = next;
        }
        any
    }

    /// Cancels every task the driver can find: scheduler, inbox, cancel stack. Returns
    /// whether there was any.
    fn cancel_everything(&self, d: Drv, cx: &P::Cx) -> bool {
        let mut any = false;
        loop {
            let mut found = false;
            while let Some(i) = self.pop_any(d) {
                found = true;
                self.claim_cancel_any(i);
                self.finish(d, cx, i, TaskStatus::Canceled);
            }
            while let Ok(i) = self.pop_inbox() {
                found = true;
                self.claim_cancel_any(i);
                self.finish(d, cx, i, TaskStatus::Canceled);
            }
            found |= self.drain_cancels(d, cx);
            if !found {
                return any;
            }
            any = true;
        }
    }

    fn claim_run(&self, i: u32) -> TaskStatus {
        let state = &self.slot(i).state;
        let s = state.load(Ordering::Acquire);
        if s & CLAIM == PENDING
            && state
                .compare_exchange(s, s | RUN, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            TaskStatus::RunReady
        } else {
            TaskStatus::Canceled
        }
    }

    fn claim_cancel_any(&self, i: u32) {
        let state = &self.slot(i).state;
        let s = state.load(Ordering::Acquire);
        if s & CLAIM == PENDING {
            // Fails only if a cross-thread cancel wins meanwhile: canceled either way.
            let _ = state.compare_exchange(s, s | CANCELED, Ordering::AcqRel, Ordering::Acquire);
        }
    }

    /// Takes the task out of slot `i`, frees the slot (unless a cancel-stack entry for it
    /// is still to come), and runs the task with `status` under the platform's guard.
    fn finish(&self, d: Drv, cx: &P::Cx, i: u32, status: TaskStatus) {
        let slot = self.slot(i);
        // SAFETY: the driver reached slot `i` through the inbox or its scheduler, so the
        // slot holds a task (written by its owner before publishing it), and nobody else
        // touches the payload until the slot is freed below.
        let task = slot.task.with(|p| unsafe { (*p).assume_init_read() });
        let stacked = slot.state.load(Ordering::Acquire) & CLAIM == CANCELED_STACKED;
        if stacked && self.sl(d, i).loc != STACK_SEEN {
            self.set_loc(d, i, ZOMBIE);
            self.el_update(d, |l| l.zombies += 1);
        } else {
            self.free_slot(d, i);
        }
        self.platform.run_task(status, || task.run(cx, status));
    }

    fn free_slot(&self, d: Drv, i: u32) {
        let slot = self.slot(i);
        let generation = slot.state.load(Ordering::Relaxed) >> 2;
        slot.state
            .store(((generation + 1) & GEN_MASK) << 2, Ordering::Release);
        self.set_loc(d, i, AWAY);
        let pushed = self.free.push_single(
            self.cap,
            self.one_lap,
            |k| &self.slot(k as u32).free_cell,
            i,
        );
        debug_assert!(pushed.is_ok(), "the free ring holds every slot");
    }

    // ---- driver-only state ----

    /// Pops the inbox's head. One method for every caller: each call of the ring's generic
    /// `pop` with its own closure would be a copy of it.
    /// The driver is the inbox's only consumer, so the pop advances the head by a store.
    fn pop_inbox(&self) -> Result<u32, Empty> {
        self.inbox
            .pop_single(self.cap, self.one_lap, |k| &self.slot(k as u32).inbox_cell)
    }

    #[inline(always)]
    fn slot(&self, i: u32) -> &Slot<T> {
        // Every index comes from the engine's own lists or from a key it checked against
        // the capacity; a miss is a bug. Its panic is one out-of-line call, not one panic
        // location per inlined use (about 25 of them).
        match self.slots.as_ref().get(i as usize) {
            Some(slot) => slot,
            None => slot_out_of_range(),
        }
    }

    #[inline(always)]
    fn el(&self, _d: Drv) -> Local {
        // SAFETY: `Drv` proves the caller is the driver, the only thread touching `local`.
        self.local.with(|p| unsafe { *p })
    }

    #[inline(always)]
    fn el_update(&self, _d: Drv, f: impl FnOnce(&mut Local)) {
        // SAFETY: as in `el`; `f` gets no access to anything that could alias `local`.
        self.local.with_mut(|p| f(unsafe { &mut *p }))
    }

    #[inline(always)]
    fn sl(&self, _d: Drv, i: u32) -> SlotLocal {
        // SAFETY: a slot's `local` is touched only by the driver (`Drv` proves it is us).
        self.slot(i).local.with(|p| unsafe { *p })
    }

    #[inline(always)]
    fn sl_update(&self, _d: Drv, i: u32, f: impl FnOnce(&mut SlotLocal)) {
        // SAFETY: as in `sl`; `f` gets no access to anything that could alias it.
        self.slot(i).local.with_mut(|p| f(unsafe { &mut *p }))
    }

    fn set_loc(&self, d: Drv, i: u32, loc: u8) {
        self.sl_update(d, i, |s| s.loc = loc);
    }

    fn owned(&self, _d: Drv, i: u32) -> Owned {
        // SAFETY: the driver reads `owned` only for a slot it reached through the inbox or
        // its own scheduler: the owner's writes happened before (ring Release/Acquire).
        self.slot(i).owned.with(|p| unsafe { *p })
    }

    fn take_seq(&self, d: Drv) -> u64 {
        let seq = self.el(d).next_seq;
        self.el_update(d, |l| l.next_seq += 1);
        seq
    }

    fn insert(&self, d: Drv, i: u32) {
        let seq = self.take_seq(d);
        self.sl_update(d, i, |s| s.seq = seq);
        if self.owned(d, i).kind == KIND_AT {
            self.timer_push(d, i);
        } else {
            self.ready_push_back(d, i);
        }
    }

    fn next_deadline(&self, d: Drv) -> Option<u64> {
        let l = self.el(d);
        if l.ready_len > 0 {
            return Some(0);
        }
        self.settle(d);
        (self.el(d).heap_len > 0).then(|| self.sl(d, 0).heap_key.0)
    }

    fn begin(&self, d: Drv, now: u64) -> Batch {
        loop {
            self.settle(d);
            if self.el(d).heap_len == 0 {
                break;
            }
            let SlotLocal {
                heap: top,
                heap_key,
                ..
            } = self.sl(d, 0);
            if heap_key.0 > now {
                break;
            }
            self.heap_remove(d, 0);
            let seq = self.take_seq(d);
            self.sl_update(d, top, |s| s.seq = seq);
            self.ready_push_back(d, top);
        }
        // Every bucketed timer is due after `now`'s bucket now (`settle` moved the earlier
        // ones), so the wheel's window can start there: timers armed later land in it.
        let t = Self::tick_of(now);
        self.wh(d, |w| w.cur = w.cur.max(t));
        Batch(self.el(d).next_seq)
    }

    fn pop_due(&self, d: Drv, batch: Batch) -> Option<u32> {
        let head = self.el(d).ready_head;
        if head == NIL || self.sl(d, head).seq >= batch.0 {
            return None;
        }
        self.ready_unlink(d, head);
        Some(head)
    }

    fn pop_any(&self, d: Drv) -> Option<u32> {
        let l = self.el(d);
        if l.ready_head != NIL {
            let head = l.ready_head;
            self.ready_unlink(d, head);
            return Some(head);
        }
        self.settle(d);
        if self.el(d).heap_len > 0 {
            let top = self.sl(d, 0).heap;
            self.heap_remove(d, 0);
            return Some(top);
        }
        None
    }

    fn ready_push_back(&self, d: Drv, i: u32) {
        let tail = self.el(d).ready_tail;
        self.sl_update(d, i, |s| {
            s.loc = READY;
            s.prev = tail;
            s.next = NIL;
        });
        if tail == NIL {
            self.el_update(d, |l| l.ready_head = i);
        } else {
            self.sl_update(d, tail, |s| s.next = i);
        }
        self.el_update(d, |l| {
            l.ready_tail = i;
            l.ready_len += 1;
        });
    }

    fn ready_unlink(&self, d: Drv, i: u32) {
        let SlotLocal { prev, next, .. } = self.sl(d, i);
        if prev == NIL {
            self.el_update(d, |l| l.ready_head = next);
        } else {
            self.sl_update(d, prev, |s| s.next = next);
        }
        if next == NIL {
            self.el_update(d, |l| l.ready_tail = prev);
        } else {
            self.sl_update(d, next, |s| s.prev = prev);
        }
        self.el_update(d, |l| l.ready_len -= 1);
        self.set_loc(d, i, AWAY);
    }

    // The timer wheel (see `Wheel`).

    fn tick_of(deadline: u64) -> u64 {
        const {
            assert!(
                P::TIMER_WHEEL_SHIFT < 64,
                "TIMER_WHEEL_SHIFT must be below 64"
            )
        };
        deadline >> P::TIMER_WHEEL_SHIFT
    }

    fn tick_start(tick: u64) -> u64 {
        tick.saturating_mul(1 << P::TIMER_WHEEL_SHIFT)
    }

    #[inline(always)]
    fn wh<R>(&self, _d: Drv, f: impl FnOnce(&mut Wheel) -> R) -> R {
        // SAFETY: `Drv` proves the caller is the driver, the only thread touching `wheel`;
        // `f` gets no access to anything that could alias it.
        self.wheel.with_mut(|p| f(unsafe { &mut *p }))
    }

    /// A timer into its wheel bucket, or into the heap when its bucket is the current one
    /// (or earlier) or beyond the wheel's reach.
    fn timer_push(&self, d: Drv, i: u32) {
        let t = Self::tick_of(self.owned(d, i).deadline);
        let head = self.wh(d, |w| {
            if t <= w.cur || t - w.cur >= WHEEL_BUCKETS as u64 {
                return None;
            }
            let b = t as usize & (WHEEL_BUCKETS - 1);
            let head = w.heads[b];
            w.heads[b] = i;
            w.set(b, true);
            w.len += 1;
            w.next_start = w.next_start.min(Self::tick_start(t));
            Some(head)
        });
        let Some(head) = head else {
            self.heap_push(d, i);
            return;
        };
        self.sl_update(d, i, |s| {
            s.loc = WHEELED;
            s.prev = NIL;
            s.next = head;
        });
        if head != NIL {
            self.sl_update(d, head, |s| s.prev = i);
        }
    }

    fn wheel_unlink(&self, d: Drv, i: u32) {
        let SlotLocal { prev, next, .. } = self.sl(d, i);
        if prev == NIL {
            let b = Self::tick_of(self.owned(d, i).deadline) as usize & (WHEEL_BUCKETS - 1);
            self.wh(d, |w| {
                w.heads[b] = next;
                if next == NIL {
                    w.set(b, false);
                }
            });
        } else {
            self.sl_update(d, prev, |s| s.next = next);
        }
        if next != NIL {
            self.sl_update(d, next, |s| s.prev = prev);
        }
        self.wh(d, |w| w.len -= 1);
        self.set_loc(d, i, AWAY);
    }

    /// Moves wheel buckets into the heap until the heap's minimum comes before every
    /// bucketed timer (or the wheel is empty): then it is the earliest deadline of all.
    fn settle(&self, d: Drv) {
        loop {
            let (len, lower) = self.wh(d, |w| (w.len, w.next_start));
            if len == 0 {
                return;
            }
            let min = (self.el(d).heap_len > 0).then(|| self.sl(d, 0).heap_key.0);
            if min.is_some_and(|m| m < lower) {
                return;
            }
            let Some(t) = self.wh(d, |w| w.first_tick()) else {
                return;
            };
            let start = Self::tick_start(t);
            if min.is_some_and(|m| m < start) {
                self.wh(d, |w| w.next_start = start);
                return;
            }
            // Bucket `t` comes next: into the heap, all of it.
            let b = t as usize & (WHEEL_BUCKETS - 1);
            let mut i = self.wh(d, |w| {
                let head = w.heads[b];
                w.heads[b] = NIL;
                w.set(b, false);
                w.cur = t;
                w.next_start = Self::tick_start(t.saturating_add(1));
                head
            });
            while i != NIL {
                let next = self.sl(d, i).next;
                self.wh(d, |w| w.len -= 1);
                self.heap_push(d, i);
                i = next;
            }
        }
    }

    // The timer heap: 4-ary, its entry at position `p` kept in slot `p`'s local part (the
    // named slot and its key). Four children sit in four adjacent slots, loaded in
    // parallel, and a pop descends half the levels of a binary heap: with a million timers
    // the heap is far bigger than the cache, and the descent is what a pop pays for.

    fn heap_entry(&self, d: Drv, pos: u32) -> (u32, (u64, u64)) {
        let s = self.sl(d, pos);
        (s.heap, s.heap_key)
    }

    fn heap_set(&self, d: Drv, pos: u32, (i, key): (u32, (u64, u64))) {
        self.sl_update(d, pos, |s| {
            s.heap = i;
            s.heap_key = key;
        });
        self.sl_update(d, i, |s| {
            s.loc = TIMED;
            s.prev = pos;
        });
    }

    fn heap_push(&self, d: Drv, i: u32) {
        let pos = self.el(d).heap_len;
        self.el_update(d, |l| l.heap_len += 1);
        let key = (self.owned(d, i).deadline, self.sl(d, i).seq);
        self.sift_up(d, pos, (i, key));
    }

    fn heap_remove(&self, d: Drv, pos: u32) {
        let removed = self.sl(d, pos).heap;
        let last = self.el(d).heap_len - 1;
        self.el_update(d, |l| l.heap_len -= 1);
        if pos < last {
            let moved = self.heap_entry(d, last);
            let parent_key = (pos > 0).then(|| self.sl(d, (pos - 1) / 4).heap_key);
            if parent_key.is_some_and(|k| moved.1 < k) {
                self.sift_up(d, pos, moved);
            } else {
                self.sift_down(d, pos, moved);
            }
        }
        self.set_loc(d, removed, AWAY);
    }

    /// Places `entry` at `pos` or above, moving greater ancestors down.
    fn sift_up(&self, d: Drv, mut pos: u32, entry: (u32, (u64, u64))) {
        while pos > 0 {
            let parent = (pos - 1) / 4;
            let p = self.heap_entry(d, parent);
            if p.1 <= entry.1 {
                break;
            }
            self.heap_set(d, pos, p);
            pos = parent;
        }
        self.heap_set(d, pos, entry);
    }

    /// Places `entry` at `pos` or below, moving lesser children up.
    fn sift_down(&self, d: Drv, mut pos: u32, entry: (u32, (u64, u64))) {
        let len = u64::from(self.el(d).heap_len);
        loop {
            // u64: `4 * pos + 4` may pass u32::MAX for the largest capacities.
            let first = 4 * u64::from(pos) + 1;
            if first >= len {
                break;
            }
            let end = (first + 4).min(len);
            let mut best = self.heap_entry(d, first as u32);
            let mut best_pos = first as u32;
            for c in first + 1..end {
                let e = self.heap_entry(d, c as u32);
                if e.1 < best.1 {
                    best = e;
                    best_pos = c as u32;
                }
            }
            if entry.1 <= best.1 {
                break;
            }
            self.heap_set(d, pos, best);
            pos = best_pos;
        }
        self.heap_set(d, pos, entry);
    }
}

impl<P, T, S> Drop for Engine<P, T, S>
where
    P: Platform,
    T: Runnable<P::Cx>,
    S: AsRef<[Slot<T>]>,
{
    fn drop(&mut self) {
        // An engine dropped without `destroy` (the shim always destroys): drop the tasks
        // still held, unrun. `&mut self` makes this thread the only one, hence the driver.
        let d = Drv(());
        let drop_task = |i: u32| {
            // SAFETY: slot `i` came out of the scheduler or the inbox: it holds a task, and
            // with `&mut self` nothing else can touch it.
            self.slot(i)
                .task
                .with(|p| unsafe { drop((*p).assume_init_read()) });
        };
        while let Some(i) = self.pop_any(d) {
            drop_task(i);
        }
        while let Ok(i) = self.pop_inbox() {
            drop_task(i);
        }
    }
}

/// The panic of [`Engine::slot`]'s miss (an engine bug).
#[cold]
#[inline(never)]
fn slot_out_of_range() -> ! {
    panic!("reseau-core: a slot index out of range (an engine bug)")
}

fn flatten<R, E>(result: Option<Result<R, E>>) -> Result<R, DriveError<E>> {
    match result {
        Some(Ok(r)) => Ok(r),
        Some(Err(e)) => Err(DriveError::Platform(e)),
        None => Err(DriveError::Panicked),
    }
}

/// Clears the driver identity when dropped (also while unwinding), so a panic in destroy
/// never leaves its thread as the loop's identity.
struct ResetDriver<'a>(&'a AtomicUsize);

impl Drop for ResetDriver<'_> {
    fn drop(&mut self) {
        self.0.store(0, Ordering::Release);
    }
}

#[cfg(all(test, not(loom)))]
mod tests;
