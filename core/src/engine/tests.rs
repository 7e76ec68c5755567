//! Engine tests on a simulated platform (no OS): see [`Sim`]. (Function-pointer tasks over
//! a `[const { Slot::new() }; N]` array are the type's doc example.)

use super::*;
use crate::SmallTask;
use TaskStatus::{Canceled, RunReady};
use std::boxed::Box;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, mpsc};
use std::thread;
use std::time::{Duration, Instant};
use std::vec;
use std::vec::Vec;

/// A failure guard only: no test waits this long unless it is broken.
const GUARD: Duration = Duration::from_secs(20);

static THREADS: AtomicUsize = AtomicUsize::new(1);
static ENGINES: AtomicU64 = AtomicU64::new(1);
std::thread_local!(static TID: usize = THREADS.fetch_add(1, Ordering::Relaxed));

/// This std thread's identity: nonzero, unique.
fn tid() -> usize {
    TID.with(|t| *t)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn count(a: &AtomicUsize) -> usize {
    a.load(Ordering::Acquire)
}

/// Yields until `a` is nonzero (another thread reached a point), failing after [`GUARD`].
fn reached(a: &AtomicUsize) {
    let start = Instant::now();
    while count(a) == 0 {
        assert!(start.elapsed() < GUARD, "never reached");
        thread::yield_now();
    }
}

type Script = Box<dyn FnOnce(&Cx) + Send>;

/// The simulated platform. `poll` dispatches the scripted IO events, then returns at once
/// if there were any or a wake is pending; otherwise it moves the virtual clock by its
/// timeout (with `frozen`, a nonzero timeout blocks until woken instead, as `None` does).
#[derive(Default)]
struct Sim {
    clock: AtomicU64,
    clock_panics: AtomicBool,
    frozen: AtomicBool,
    wakes: AtomicUsize,
    notifies: AtomicUsize,
    panics: AtomicUsize,
    /// How many times `poll` began to block.
    parked: AtomicUsize,
    /// How many times `block_until` began to block.
    blocked: AtomicUsize,
    /// Whether a wake is pending; `cv` wakes `poll`, `gate` wakes `block_until`.
    woken: Mutex<bool>,
    cv: Condvar,
    gate: Condvar,
    io: Mutex<Vec<Script>>,
    sources: Mutex<Vec<Script>>,
}

impl Platform for Sim {
    type Cx = Cx;
    type Error = ();
    /// Buckets of 4 ticks: the tests' deadlines (tens to thousands of ticks) exercise the
    /// timer wheel, its buckets, its window and its overflow into the heap.
    const TIMER_WHEEL_SHIFT: u32 = 2;

    fn now(&self) -> u64 {
        assert!(!self.clock_panics.load(Ordering::Acquire), "on demand");
        self.clock.load(Ordering::Acquire)
    }

    fn wake(&self) {
        self.wakes.fetch_add(1, Ordering::AcqRel);
        *lock(&self.woken) = true;
        self.cv.notify_all();
    }

    fn poll(&self, cx: &Cx, timeout: Option<u64>) -> Result<(), ()> {
        let events = core::mem::take(&mut *lock(&self.io));
        let event = !events.is_empty();
        events.into_iter().for_each(|f| f(cx));
        let mut woken = lock(&self.woken);
        match timeout {
            _ if event || *woken => {}
            Some(t) if !self.frozen.load(Ordering::Acquire) => {
                self.clock.fetch_add(t, Ordering::AcqRel);
            }
            Some(0) => {}
            _ => {
                self.parked.fetch_add(1, Ordering::AcqRel);
                let wait = self.cv.wait_timeout_while(woken, GUARD, |w| !*w);
                let (w, res) = wait.unwrap_or_else(PoisonError::into_inner);
                assert!(!res.timed_out(), "poll: never woken (a lost wakeup)");
                woken = w;
            }
        }
        *woken = false;
        Ok(())
    }

    fn run_task(&self, _: TaskStatus, f: impl FnOnce()) -> bool {
        let ok = catch_unwind(AssertUnwindSafe(f)).is_ok();
        if !ok {
            self.panics.fetch_add(1, Ordering::AcqRel);
        }
        ok
    }

    fn catch<R>(&self, f: impl FnOnce() -> R) -> Option<R> {
        catch_unwind(AssertUnwindSafe(f)).ok()
    }

    fn current_thread(&self) -> usize {
        tid()
    }

    fn block_until(&self, done: &dyn Fn() -> bool, timeout: Option<u64>) -> bool {
        let limit = timeout.map(Duration::from_nanos);
        let start = Instant::now();
        let mut guard = lock(&self.woken);
        while !done() {
            let (waited, cap) = (start.elapsed(), limit.unwrap_or(GUARD));
            if waited >= cap {
                return false;
            }
            self.blocked.fetch_add(1, Ordering::AcqRel);
            let wait = self.gate.wait_timeout(guard, cap - waited);
            let (g, res) = wait.unwrap_or_else(PoisonError::into_inner);
            assert!(limit.is_some() || !res.timed_out(), "never notified");
            guard = g;
        }
        true
    }

    fn notify(&self) {
        self.notifies.fetch_add(1, Ordering::AcqRel);
        let _guard = lock(&self.woken);
        self.gate.notify_all();
    }

    fn pause(&self) {
        thread::yield_now();
    }

    fn release_sources(&self, cx: &Cx) -> usize {
        let sources = core::mem::take(&mut *lock(&self.sources));
        let n = sources.len();
        sources.into_iter().for_each(|f| f(cx));
        n
    }
}

/// What tasks, IO events and sources see: the engine, type-erased.
trait Ctx: Sync {
    fn schedule(&self, task: Task, when: When) -> Result<TaskRef, Refused<Task>>;
    fn cancel(&self, r: TaskRef) -> bool;
    fn stop(&self);
    fn now(&self) -> u64;
    fn is_driver(&self) -> bool;
}

/// The context type (`dyn Ctx + 'static`).
type Cx = dyn Ctx;
type Task = SmallTask<Cx>;
type Eng<S> = Engine<Sim, Task, S>;

/// Slot storage the tests use.
trait Store: AsRef<[Slot<Task>]> + Sync + 'static {}
impl<S: AsRef<[Slot<Task>]> + Sync + 'static> Store for S {}

impl<S: Store> Ctx for Eng<S> {
    fn schedule(&self, task: Task, when: When) -> Result<TaskRef, Refused<Task>> {
        Engine::schedule(self, task, when)
    }
    fn cancel(&self, r: TaskRef) -> bool {
        Engine::cancel(self, self, r)
    }
    fn stop(&self) {
        Engine::stop(self).unwrap();
    }
    fn now(&self) -> u64 {
        self.platform().now()
    }
    fn is_driver(&self) -> bool {
        Engine::is_driver(self)
    }
}

/// One task run, as the task saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    id: u32,
    status: TaskStatus,
    at: u64,
    driver: bool,
    thread: usize,
}

#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<Entry>>>);

impl Log {
    fn push(&self, cx: &Cx, id: u32, status: TaskStatus) {
        let (at, driver, thread) = (cx.now(), cx.is_driver(), tid());
        let entry = Entry {
            id,
            status,
            at,
            driver,
            thread,
        };
        lock(&self.0).push(entry);
    }
    fn entries(&self) -> Vec<Entry> {
        lock(&self.0).clone()
    }
    fn take(&self) -> Vec<Entry> {
        core::mem::take(&mut *lock(&self.0))
    }
    fn ids(&self) -> Vec<(u32, TaskStatus)> {
        self.entries().iter().map(|e| (e.id, e.status)).collect()
    }
    fn order(&self) -> Vec<u32> {
        self.entries().iter().map(|e| e.id).collect()
    }
    /// The entries sorted by id, as `(id, status, driver, thread)`.
    fn by_id(&self) -> Vec<(u32, TaskStatus, bool, usize)> {
        let mut v = self.entries();
        v.sort_by_key(|e| e.id);
        v.iter()
            .map(|e| (e.id, e.status, e.driver, e.thread))
            .collect()
    }
}

/// What a test task does.
trait Body: FnOnce(&Cx, TaskStatus) + Send + 'static {}
impl<F: FnOnce(&Cx, TaskStatus) + Send + 'static> Body for F {}

fn task(f: impl Body) -> Task {
    SmallTask::new(f).unwrap_or_else(|_| panic!("test closures fit inline"))
}

/// A task that records its run as `id`.
fn rec(log: &Log, id: u32) -> Task {
    let log = log.clone();
    task(move |cx, status| log.push(cx, id, status))
}

/// Schedules `f` from the calling thread.
fn go<S: Store>(e: &Eng<S>, when: When, f: impl Body) -> TaskRef {
    e.schedule(task(f), when).unwrap()
}

fn eng<S: Store>(slots: S) -> Eng<S> {
    let id = ENGINES.fetch_add(1, Ordering::Relaxed);
    Engine::new(Sim::default(), slots, id).unwrap()
}

fn arr<const N: usize>() -> [Slot<Task>; N] {
    [const { Slot::new() }; N]
}

fn slots(n: usize) -> Vec<Slot<Task>> {
    (0..n).map(|_| Slot::new()).collect()
}

/// One turn that does not wait; returns the turn's hint.
fn turn0<S: Store>(e: &Eng<S>) -> Option<u64> {
    e.turn(e, Some(0)).unwrap()
}

/// Turns (at most `max_wait` each) until nothing is pending.
fn run_out<S: Store>(e: &Eng<S>, max_wait: Option<u64>) {
    for _ in 0..1_000 {
        if e.pending() == 0 {
            return;
        }
        e.turn(e, max_wait).unwrap();
    }
    panic!("still {} pending", e.pending());
}

type Driver<'s> = thread::ScopedJoinHandle<'s, (Result<(), DriveError<()>>, usize)>;

/// Starts `e` on a scoped thread running `drive`; its handle gives the result and thread.
fn start_thread<'s, S: Store>(s: &'s thread::Scope<'s, '_>, e: &'s Eng<S>) -> Driver<'s> {
    let mut driver = None;
    let spawn = || {
        driver = Some(s.spawn(|| (e.drive(e), tid())));
        Ok::<_, ()>(())
    };
    e.start(spawn).unwrap();
    driver.unwrap()
}

// ---- order ----

#[test]
fn asap_tasks_run_in_fifo_order_and_a_burst_costs_one_wake() {
    let (e, log) = (eng(arr::<8>()), Log::default());
    for id in 0..8 {
        e.schedule(rec(&log, id), When::Now).unwrap();
    }
    assert_eq!(count(&e.platform().wakes), 1);
    turn0(&e);
    assert_eq!(log.order(), (0..8).collect::<Vec<_>>());
    // From the loop thread: straight into the scheduler, still FIFO. A serialized one
    // (14, by 13) goes through the inbox: the turn's hint says work is waiting.
    let l = log.clone();
    go(&e, When::Now, move |cx, _| {
        for id in 10..13 {
            cx.schedule(rec(&l, id), When::Now).unwrap();
        }
        let thirteen = task(move |cx, status| {
            l.push(cx, 13, status);
            cx.schedule(rec(&l, 14), When::NowSerialized).unwrap();
        });
        cx.schedule(thirteen, When::Now).unwrap();
    });
    assert_eq!(count(&e.platform().wakes), 2, "the turn re-armed the wake");
    assert_eq!((turn0(&e), turn0(&e), turn0(&e)), (Some(0), Some(0), None));
    assert_eq!(log.order()[8..], [10, 11, 12, 13, 14]);
}

#[test]
fn timed_tasks_run_at_their_deadline_never_before() {
    let (e, log) = (eng(slots(8)), Log::default());
    let deadlines = [40u64, 5, 23, 5, 90, 0, 61];
    for (id, &d) in (0..).zip(&deadlines) {
        e.schedule(rec(&log, id), When::At(d)).unwrap();
    }
    run_out(&e, Some(7)); // capped waits: several steps between deadlines
    let got = log.entries();
    assert_eq!(got.len(), deadlines.len());
    for en in &got {
        let deadline = deadlines[en.id as usize];
        assert_eq!((en.status, en.at), (RunReady, deadline), "{en:?}");
    }
    let mut order: Vec<u32> = (0..7).collect();
    order.sort_by_key(|&i| deadlines[i as usize]);
    assert_eq!(log.order(), order);
    // A clock one tick short of a deadline runs nothing.
    e.schedule(rec(&log, 7), When::At(200)).unwrap();
    e.platform().clock.store(199, Ordering::Release);
    assert_eq!(turn0(&e), Some(1), "the hint: one tick to go");
    assert_eq!(log.entries().len(), 7);
    run_out(&e, None);
    assert_eq!(log.entries()[7].at, 200);
}

#[test]
fn equal_deadlines_run_in_submission_order() {
    let (e, log) = (eng(arr::<16>()), Log::default());
    let at = |id: u32| When::At(if id.is_multiple_of(3) { 50 } else { 100 });
    for id in 0..6 {
        e.schedule(rec(&log, id), at(id)).unwrap();
    }
    turn0(&e); // the first six are in the heap before the rest arrive
    for id in 6..14 {
        e.schedule(rec(&log, id), at(id)).unwrap();
    }
    run_out(&e, None);
    assert_eq!(log.order(), [0, 3, 6, 9, 12, 1, 2, 4, 5, 7, 8, 10, 11, 13]);
}

#[test]
fn asap_tasks_run_before_due_timers_in_a_batch() {
    let (e, log) = (eng(arr::<4>()), Log::default());
    e.schedule(rec(&log, 0), When::At(10)).unwrap();
    e.schedule(rec(&log, 1), When::At(10)).unwrap();
    turn0(&e);
    e.platform().clock.store(10, Ordering::Release);
    e.schedule(rec(&log, 2), When::Now).unwrap();
    e.schedule(rec(&log, 3), When::Now).unwrap();
    turn0(&e);
    assert_eq!(log.order(), [2, 3, 0, 1]);
}

#[test]
fn a_task_scheduled_during_a_batch_waits_for_the_next_turn() {
    let (e, log) = (eng(arr::<4>()), Log::default());
    let l = log.clone();
    go(&e, When::Now, move |cx, status| {
        l.push(cx, 0, status);
        cx.schedule(rec(&l, 1), When::Now).unwrap();
        cx.schedule(rec(&l, 2), When::At(0)).unwrap(); // due already
    });
    e.schedule(rec(&log, 3), When::Now).unwrap();
    turn0(&e);
    assert_eq!(log.order(), [0, 3]);
    turn0(&e);
    assert_eq!(log.order(), [0, 3, 1, 2]);
}

#[test]
fn now_from_the_loop_thread_skips_the_inbox_but_now_serialized_joins_it() {
    let (e, log) = (eng(arr::<4>()), Log::default());
    let l = log.clone();
    go(&e, When::Now, move |cx, _| {
        // Another thread's schedule is in the inbox (0) before the loop thread's own.
        thread::scope(|s| {
            let other = s.spawn(|| cx.schedule(rec(&l, 0), When::Now).is_ok());
            assert!(other.join().unwrap());
        });
        cx.schedule(rec(&l, 1), When::Now).unwrap();
        cx.schedule(rec(&l, 2), When::NowSerialized).unwrap();
    });
    run_out(&e, Some(0));
    assert_eq!(log.order(), [1, 0, 2]);
    assert_eq!(count(&e.platform().panics), 0);
}

#[test]
fn io_events_run_in_poll_and_their_tasks_in_the_same_turn() {
    let (e, log) = (eng(arr::<4>()), Log::default());
    let l = log.clone();
    let event = move |cx: &Cx| assert!(cx.schedule(rec(&l, 0), When::Now).is_ok());
    lock(&e.platform().io).push(Box::new(event));
    e.turn(&e, None).unwrap(); // the event ends the wait: no hang, no clock jump
    assert_eq!(log.by_id(), [(0, RunReady, true, tid())]);
}

// ---- capacity, storage, slot reuse ----

/// Fills the engine, checks the refusal, runs everything, and refills the same slots.
fn fill_run_refill<S: Store>(slots: S) {
    let (e, log) = (eng(slots), Log::default());
    let cap = e.capacity() as u32;
    let fill = |base: u32| -> Vec<TaskRef> {
        let one = |i| e.schedule(rec(&log, base + i), When::Now).unwrap();
        let mut v: Vec<TaskRef> = (0..cap).map(one).collect();
        v.sort_by_key(TaskRef::slot);
        v
    };
    let first = fill(0);
    assert_eq!(e.pending(), cap as usize);
    let refused = e.schedule(rec(&log, 99), When::At(7)).unwrap_err();
    let full = RefusedKind::Full {
        capacity: cap as usize,
    };
    assert_eq!((refused.kind, refused.when), (full, When::At(7)));
    refused.task.run(&e, Canceled); // handed back untouched: it still runs
    turn0(&e);
    let expected: Vec<u32> = core::iter::once(99).chain(0..cap).collect();
    assert_eq!((log.order(), e.pending()), (expected, 0));
    let again = fill(100);
    for (a, b) in first.iter().zip(&again) {
        assert_eq!(b.slot(), a.slot());
        assert_eq!(b.generation(), a.generation() + 1);
    }
    let refused = e.schedule(rec(&log, 98), When::Now).unwrap_err();
    assert_eq!(refused.kind, full);
    turn0(&e);
    assert_eq!(log.entries().len(), 2 * cap as usize + 1);
    assert_eq!(e.pending(), 0);
}

#[test]
fn a_full_engine_hands_the_task_back_and_freed_slots_are_reused() {
    fill_run_refill(arr::<4>());
    fill_run_refill(arr::<1>());
}

#[test]
fn storage_may_be_a_zeroed_array_a_vec_or_a_boxed_slice_of_run_time_length() {
    fill_run_refill([const { Slot::new() }; 3]);
    fill_run_refill((0..5).map(|_| Slot::new()).collect::<Vec<_>>());
    fill_run_refill(slots(core::hint::black_box(9)).into_boxed_slice());
    let empty = Engine::new(Sim::default(), slots(0), 1);
    assert_eq!(empty.err(), Some(CapacityError { len: 0 }));
}

/// xorshift64*: deterministic, no crates.
fn next(s: &mut u64) -> u64 {
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    s.wrapping_mul(0x2545_F491_4F6C_DD1D)
}

#[derive(Debug, Clone, Copy)]
struct Model {
    id: u32,
    deadline: Option<u64>,
    r: TaskRef,
    canceled: bool,
}

/// The reference model: pending tasks (in submission order) and recently finished handles.
#[derive(Default)]
struct Reference {
    pending: Vec<Model>,
    done: Vec<TaskRef>,
    /// A schedule or cancel reached the engine since the last turn.
    moved: bool,
}

impl Reference {
    /// One turn checked against the model: the clock moves exactly as far as the engine
    /// may wait; the canceled tasks run first (canceled, in any order), then Now tasks in
    /// submission order, then the due timers by (deadline, submission); the turn's hint is
    /// the time to the next deadline.
    fn turn<S: Store>(&mut self, e: &Eng<S>, log: &Log, max_wait: u64) {
        let now = e.platform().now();
        let live = self.pending.iter().filter(|m| !m.canceled);
        let earliest = live.filter_map(|m| m.deadline).min();
        let wait = earliest.map_or(max_wait, |d| (d - now).min(max_wait));
        let hint = e.turn(e, Some(max_wait)).unwrap();
        let now2 = e.platform().now();
        // A single turn waits whenever nothing is queued (only a driving loop looks again
        // without waiting after a busy tick).
        let idle = !self.moved;
        assert_eq!(now2, if idle { now + wait } else { now }, "the clock");
        let (canceled, mut due): (Vec<Model>, Vec<Model>) = self
            .pending
            .iter()
            .filter(|m| m.canceled || m.deadline.is_none_or(|d| d <= now2))
            .partition(|m| m.canceled);
        due.sort_by_key(|m| (m.deadline.is_some(), m.deadline, m.id));
        let got: Vec<(u32, TaskStatus)> = log.take().iter().map(|en| (en.id, en.status)).collect();
        let (got_canceled, got_run) = got.split_at(canceled.len().min(got.len()));
        let mut got_canceled = got_canceled.to_vec();
        got_canceled.sort_unstable_by_key(|g| g.0);
        let canceled_ids: Vec<_> = canceled.iter().map(|m| (m.id, Canceled)).collect();
        assert_eq!(got_canceled, canceled_ids);
        let due_ids: Vec<_> = due.iter().map(|m| (m.id, RunReady)).collect();
        assert_eq!(got_run, due_ids);
        self.done.extend(canceled.iter().chain(&due).map(|m| m.r));
        self.done.drain(..self.done.len().saturating_sub(16));
        let gone = |m: &Model| m.canceled || due.iter().any(|d| d.id == m.id);
        self.pending.retain(|m| !gone(m));
        let next = self.pending.iter().filter_map(|m| m.deadline).min();
        assert_eq!(hint, next.map(|d| d - now2), "the turn's hint");
        self.moved = false;
    }
}

#[test]
fn random_churn_agrees_with_a_reference_model() {
    churn(7, 4, 40);
}

/// A deep timer heap (up to 200 pending, four levels of the 4-ary heap) churned by
/// cancels at every position: removals from the middle sift both ways.
#[test]
fn random_churn_of_a_deep_timer_heap_agrees_with_the_reference_model() {
    churn(200, 1, 40);
}

/// Deadlines up to 3,000 ticks ahead against the test platform's wheel of 256 buckets of
/// 4 ticks (a 1,024-tick window): timers in buckets, in the heap behind them (the current
/// bucket) and beyond them (past the window), cancels from every bucket position, and
/// the window moving round the wheel many times; the order and every wait's timeout are
/// the reference model's.
#[test]
fn random_churn_across_the_timer_wheel_agrees_with_the_reference_model() {
    churn(200, 2, 3_000);
}

/// Random schedules, cancels (also stale ones) and turns on an engine of `cap` slots,
/// checked against [`Reference`]; `turns` in 10 steps are turns (fewer: more pending);
/// deadlines up to `spread` ticks ahead, the clock moving up to ¾ of that per turn.
fn churn(cap: usize, turns: u64, spread: u64) {
    let (e, log) = (eng(slots(cap)), Log::default());
    let mut model = Reference::default();
    let (mut seed, mut id) = (0x9E37_79B9_7F4A_7C15_u64, 0);
    for _ in 0..if cfg!(miri) { 300 } else { 30_000 } {
        assert_eq!(e.pending(), model.pending.len());
        let now = e.platform().now();
        let roll = next(&mut seed) % 10;
        // 0..=3 schedule, 4..=5 cancel, the rest a turn (or a schedule, past `turns`).
        let roll = if roll >= 6 && roll - 6 >= turns {
            roll % 4
        } else {
            roll
        };
        match roll {
            0..=3 => {
                let timed = !next(&mut seed).is_multiple_of(3);
                let deadline = timed.then(|| now + next(&mut seed) % spread);
                let when = deadline.map_or(When::Now, When::At);
                match e.schedule(rec(&log, id), when) {
                    Ok(r) => {
                        assert!(model.pending.len() < cap);
                        let canceled = false;
                        model.pending.push(Model {
                            id,
                            deadline,
                            r,
                            canceled,
                        });
                        model.moved = true;
                    }
                    Err(refused) => {
                        assert_eq!(model.pending.len(), cap);
                        let full = RefusedKind::Full { capacity: cap };
                        assert_eq!((refused.kind, refused.when), (full, when));
                    }
                }
                id += 1;
            }
            4..=5 if !model.pending.is_empty() => {
                let n = model.pending.len() + model.done.len();
                let k = (next(&mut seed) % n as u64) as usize;
                match model.pending.get_mut(k) {
                    Some(m) => {
                        assert_eq!(e.cancel(&e, m.r), !m.canceled, "{m:?}");
                        model.moved |= !m.canceled;
                        m.canceled = true;
                    }
                    None => {
                        let stale = model.done[k - model.pending.len()];
                        assert!(!e.cancel(&e, stale), "a stale cancel");
                    }
                }
            }
            _ => model.turn(&e, &log, next(&mut seed) % (spread * 3 / 4)),
        }
    }
    while !model.pending.is_empty() {
        model.turn(&e, &log, spread + 10);
    }
    assert_eq!(e.pending(), 0);
}

// ---- cancel ----

#[test]
fn cancel_own_handle_runs_the_task_once_canceled_and_returns_true() {
    let (e, log) = (eng(arr::<4>()), Log::default());
    // Off the loop thread: the claim; the next turn runs it canceled, long before 1000.
    let r = e.schedule(rec(&log, 0), When::At(1_000)).unwrap();
    assert!(e.cancel(&e, r));
    assert!(!e.cancel(&e, r), "a second cancel finds it claimed");
    e.turn(&e, None).unwrap();
    assert_eq!(log.ids(), [(0, Canceled)]);
    assert_eq!((log.entries()[0].at, e.pending()), (0, 0));
    assert!(!e.cancel(&e, r), "after it ran canceled");
    // On the loop thread: it runs canceled inside the cancel call, whether it is in the
    // timer heap (1) or still in the inbox (4, serialized from the loop thread).
    let victim = e.schedule(rec(&log, 1), When::At(1_000)).unwrap();
    turn0(&e);
    let l = log.clone();
    go(&e, When::Now, move |cx, status| {
        l.push(cx, 2, status);
        assert!(cx.cancel(victim) && !cx.cancel(victim));
        l.push(cx, 3, status);
        let queued = cx.schedule(rec(&l, 4), When::NowSerialized);
        assert!(cx.cancel(queued.unwrap()));
        l.push(cx, 5, status);
    });
    turn0(&e);
    let statuses = [RunReady, Canceled, RunReady, Canceled, RunReady];
    let expected: Vec<_> = [2, 1, 3, 4, 5].into_iter().zip(statuses).collect();
    assert_eq!(log.ids()[1..], expected);
    let r = e.schedule(rec(&log, 6), When::Now).unwrap();
    turn0(&e);
    assert!(!e.cancel(&e, r), "after it ran normally");
    assert_eq!(log.ids().last(), Some(&(6, RunReady)));
    assert_eq!(e.pending(), 0);
    assert_eq!(count(&e.platform().panics), 0);
}

#[test]
fn cancel_with_a_stale_handle_leaves_the_slots_new_task_alone() {
    let (e, log) = (eng(arr::<1>()), Log::default());
    let old = e.schedule(rec(&log, 0), When::Now).unwrap();
    turn0(&e);
    let new = e.schedule(rec(&log, 1), When::At(5)).unwrap();
    assert_eq!(new.slot(), old.slot());
    assert_eq!(new.generation(), old.generation() + 1);
    assert!(!e.cancel(&e, old), "off the loop thread");
    run_out(&e, None);
    assert_eq!(log.ids(), [(0, RunReady), (1, RunReady)]);
    assert_eq!(log.entries()[1].at, 5);
    let l = log.clone();
    go(&e, When::Now, move |cx, status| {
        assert!(!cx.cancel(new), "on the loop thread");
        l.push(cx, 2, status);
    });
    turn0(&e);
    assert_eq!(log.ids().last(), Some(&(2, RunReady)));
}

#[test]
fn cancel_with_another_engines_handle_changes_nothing() {
    let (a, b, log) = (eng(arr::<2>()), eng(arr::<2>()), Log::default());
    let ra = a.schedule(rec(&log, 0), When::At(5)).unwrap();
    let rb = b.schedule(rec(&log, 1), When::At(5)).unwrap();
    assert_eq!((ra.slot(), ra.generation()), (rb.slot(), rb.generation()));
    assert_ne!(ra.loop_id(), rb.loop_id());
    assert!(!b.cancel(&b, ra));
    let loop_id = a.id();
    let forged = |slot, generation| TaskRef {
        loop_id,
        slot,
        generation,
    };
    assert!(!a.cancel(&a, forged(7, 0)), "no such slot");
    assert!(!a.cancel(&a, forged(0, u32::MAX)), "no such generation");
    run_out(&b, None);
    assert_eq!(log.ids(), [(1, RunReady)]);
    assert!(a.cancel(&a, ra));
    turn0(&a);
    assert_eq!(log.ids(), [(1, RunReady), (0, Canceled)]);
}

// ---- other threads ----

#[test]
fn cross_thread_schedules_and_cancels_run_exactly_once_in_producer_order() {
    const PRODUCERS: u32 = 3;
    let per: u32 = if cfg!(miri) { 12 } else { 2_000 };
    let total = (PRODUCERS * per) as usize;
    let e = eng(slots(8)); // far fewer slots than tasks: producers meet Full and retry
    e.platform().frozen.store(true, Ordering::Release); // timers are never due
    let (log, ran) = (Log::default(), Arc::new(AtomicUsize::new(0)));
    let counted = |id: u32| {
        let (log, ran) = (log.clone(), ran.clone());
        task(move |cx, status| {
            log.push(cx, id, status);
            if ran.fetch_add(1, Ordering::AcqRel) + 1 == total {
                cx.stop();
            }
        })
    };
    thread::scope(|s| {
        for p in 0..PRODUCERS {
            let (e, counted) = (&e, &counted);
            s.spawn(move || {
                for i in 0..per {
                    // Every fourth is a timer, canceled at once (often still in the inbox).
                    let timed = i % 4 == 3;
                    let when = if timed { When::At(u64::MAX) } else { When::Now };
                    let (mut t, start) = (counted(p * per + i), Instant::now());
                    let r = loop {
                        match e.schedule(t, when) {
                            Ok(r) => break r,
                            Err(refused) => t = refused.task,
                        }
                        assert!(start.elapsed() < GUARD, "no slot came free");
                        thread::yield_now();
                    };
                    assert!(!timed || e.cancel(e, r));
                }
            });
        }
        e.run_here(&e).unwrap();
    });
    let got = log.entries();
    assert_eq!(got.len(), total);
    let mut seen = vec![false; total];
    let mut last = [None::<u32>; PRODUCERS as usize];
    for en in &got {
        let again = core::mem::replace(&mut seen[en.id as usize], true);
        assert!(!again, "{} ran twice", en.id);
        let (p, i) = ((en.id / per) as usize, en.id % per);
        assert_eq!(en.status, if i % 4 == 3 { Canceled } else { RunReady });
        assert_eq!((en.driver, en.thread, en.at), (true, tid(), 0));
        if en.status == RunReady {
            assert!(last[p] < Some(i), "producer {p}: {i} after {:?}", last[p]);
            last[p] = Some(i);
        }
    }
    assert_eq!((e.pending(), e.state()), (0, State::Ready));
}

#[test]
fn cross_thread_cancel_runs_the_task_canceled_at_the_next_turn() {
    let (e, log) = (eng(arr::<4>()), Log::default());
    let r = e.schedule(rec(&log, 0), When::At(1_000)).unwrap();
    turn0(&e); // in the timer heap now
    thread::scope(|s| s.spawn(|| assert!(e.cancel(&e, r))).join().unwrap());
    // Still in the inbox when its cancel arrives: both from another thread, before a turn.
    thread::scope(|s| {
        s.spawn(|| {
            let r = e.schedule(rec(&log, 1), When::At(1_000));
            assert!(e.cancel(&e, r.unwrap()));
        });
    });
    assert_eq!(e.pending(), 2);
    turn0(&e);
    let me = tid();
    assert_eq!(
        log.by_id(),
        [(0, Canceled, true, me), (1, Canceled, true, me)]
    );
    assert_eq!(e.platform().now(), 0, "long before the deadline");
    assert_eq!(e.pending(), 0, "the cancel-stack entries were taken");
}

#[test]
fn cross_thread_cancel_wakes_a_driver_parked_until_the_deadline() {
    let (e, log) = (eng(arr::<4>()), Log::default());
    e.platform().frozen.store(true, Ordering::Release); // a timed poll blocks until woken
    let l = log.clone();
    let r = go(&e, When::At(1_000), move |cx, status| {
        l.push(cx, 0, status);
        cx.stop();
    });
    thread::scope(|s| {
        s.spawn(|| {
            reached(&e.platform().parked);
            assert!(e.cancel(&e, r));
        });
        e.run_here(&e).unwrap(); // fails on the guard if the cancel does not wake it
    });
    assert_eq!(log.ids(), [(0, Canceled)]);
    assert_eq!(log.entries()[0].at, 0);
}

// ---- lifecycle ----

#[test]
fn start_whose_spawn_fails_leaves_the_loop_ready_and_notifies() {
    let e = eng(arr::<2>());
    let result = e.start(|| Err::<(), _>("no threads"));
    assert!(matches!(result, Err(StartError::Spawn("no threads"))));
    assert_eq!(e.state(), State::Ready);
    assert!(!e.lifecycle().is_live());
    assert_eq!(count(&e.platform().notifies), 1);
    e.wait().unwrap();
    turn0(&e);
}

#[test]
fn turn_while_a_started_driver_is_live_is_refused() {
    let (e, log) = (eng(arr::<2>()), Log::default());
    assert!(matches!(e.drive(&e), Err(DriveError::NotStarted)));
    e.schedule(rec(&log, 0), When::Now).unwrap();
    e.start(|| Ok::<(), ()>(())).unwrap(); // its thread is yet to call drive
    let again = e.start(|| Ok::<(), ()>(()));
    assert!(matches!(again, Err(StartError::Lifecycle(_))));
    let refused = |result: Result<(), DriveError<()>>| match result {
        Err(DriveError::Lifecycle(err)) => (err.op, err.state) == (Operation::Run, State::Running),
        _ => false,
    };
    assert!(refused(e.turn(&e, Some(0)).map(drop)));
    assert!(refused(e.run_here(&e)));
    e.stop().unwrap();
    e.drive(&e).unwrap(); // the "thread": sees the stop and exits at once
    assert_eq!(e.state(), State::Stopped);
    e.wait().unwrap();
    assert_eq!((e.state(), e.pending()), (State::Ready, 1));
    turn0(&e);
    assert_eq!(log.ids(), [(0, RunReady)]);
}

#[test]
fn stop_before_any_run_does_not_affect_the_next_run() {
    let (e, log) = (eng(arr::<4>()), Log::default());
    e.stop().unwrap();
    e.stop().unwrap();
    e.schedule(rec(&log, 0), When::Now).unwrap();
    e.schedule(rec(&log, 1), When::At(30)).unwrap();
    go(&e, When::At(31), |cx, _| cx.stop());
    e.schedule(rec(&log, 2), When::At(31)).unwrap();
    e.run_here(&e).unwrap();
    // A stop from a task ends the batch after it; the rest waits for the next run.
    assert_eq!(log.ids(), [(0, RunReady), (1, RunReady)]);
    assert_eq!((e.state(), e.pending()), (State::Ready, 1));
    turn0(&e);
    assert_eq!(log.ids().last(), Some(&(2, RunReady)));
}

#[test]
fn wait_returns_at_once_when_no_driver_is_live() {
    let e = eng(arr::<2>());
    e.wait().unwrap();
    turn0(&e);
    e.wait().unwrap();
    assert_eq!(e.state(), State::Ready);
}

#[test]
fn destroy_runs_every_pending_task_once_canceled_on_the_destroying_thread() {
    let (e, log) = (eng(arr::<16>()), Log::default());
    let l = log.clone();
    go(&e, When::Now, move |cx, status| {
        l.push(cx, 0, status);
        cx.schedule(rec(&l, 1), When::Now).unwrap(); // left in the ready list
    });
    e.schedule(rec(&log, 2), When::At(1_000)).unwrap(); // timer heap
    let r3 = e.schedule(rec(&log, 3), When::At(1_000)).unwrap(); // heap + cancel stack
    turn0(&e);
    assert_eq!(log.ids(), [(0, RunReady)]);
    assert!(e.cancel(&e, r3));
    e.schedule(rec(&log, 4), When::Now).unwrap(); // inbox
    let r5 = e.schedule(rec(&log, 5), When::At(1_000)).unwrap(); // inbox + cancel stack
    assert!(e.cancel(&e, r5));
    let l = log.clone();
    go(&e, When::Now, move |cx, status| {
        l.push(cx, 6, status); // schedules 7, which schedules 8
        let seven = task(move |cx, status| {
            l.push(cx, 7, status);
            cx.schedule(rec(&l, 8), When::At(5)).unwrap();
        });
        cx.schedule(seven, When::Now).unwrap();
    });
    let l = log.clone();
    let source = move |cx: &Cx| assert!(cx.schedule(rec(&l, 9), When::Now).is_ok());
    lock(&e.platform().sources).push(Box::new(source)); // released at destroy
    assert_eq!(e.pending(), 6);
    e.destroy(&e, None).unwrap();
    let expected: Vec<_> = (1..10).map(|id| (id, Canceled, true, tid())).collect();
    assert_eq!(log.by_id()[1..], expected);
    assert_eq!((e.state(), e.pending()), (State::Destroyed, 0));
    assert!(!e.is_driver());
    let refused = e.schedule(rec(&log, 10), When::At(3)).unwrap_err();
    let RefusedKind::Destroyed(err) = refused.kind else {
        panic!("{refused:?}")
    };
    assert_eq!((err.op, err.state), (Operation::Schedule, State::Destroyed));
    assert_eq!(refused.when, When::At(3));
    refused.task.run(&e, Canceled); // handed back untouched
    assert_eq!(log.ids().last(), Some(&(10, Canceled)));
    assert!(!e.cancel(&e, r3) && e.stop().is_err() && e.wait().is_err());
    let turned = e.turn(&e, Some(0));
    assert!(matches!(turned, Err(DriveError::Lifecycle(_))));
    let again = e.destroy(&e, None);
    assert!(matches!(again, Err(DestroyError::Lifecycle(_))));
}

#[test]
fn destroy_cancels_what_releasing_a_source_schedules() {
    let (e, log) = (eng(arr::<2>()), Log::default());
    let l = log.clone();
    let source = move |cx: &Cx| assert!(cx.schedule(rec(&l, 0), When::Now).is_ok());
    lock(&e.platform().sources).push(Box::new(source));
    e.destroy(&e, None).unwrap(); // nothing pending until the source is released
    assert_eq!(log.by_id(), [(0, Canceled, true, tid())]);
    assert_eq!(e.pending(), 0);
}

#[test]
fn destroy_with_a_timeout_abandons_a_stuck_driver_that_tears_down_at_its_exit() {
    let (e, log) = (eng(arr::<8>()), Log::default());
    let (entered, entered_rx) = mpsc::channel::<()>();
    let (release, release_rx) = mpsc::channel::<()>();
    let l = log.clone();
    go(&e, When::Now, move |cx, status| {
        l.push(cx, 0, status);
        entered.send(()).unwrap();
        release_rx.recv_timeout(GUARD).unwrap();
    });
    thread::scope(|s| {
        let driver = start_thread(s, &e);
        entered_rx.recv_timeout(GUARD).unwrap();
        e.schedule(rec(&log, 1), When::Now).unwrap();
        let r2 = e.schedule(rec(&log, 2), When::At(50)).unwrap();
        let r3 = e.schedule(rec(&log, 3), When::At(60)).unwrap();
        assert!(e.cancel(&e, r3)); // on the cancel stack
        let destroyed = e.destroy(&e, Some(1_000_000));
        assert_eq!(destroyed, Err(DestroyError::Abandoned));
        assert_eq!(e.state(), State::Destroying);
        assert!(e.cancel(&e, r2), "destroy has begun: the claim is all");
        let refused = e.schedule(rec(&log, 9), When::Now).unwrap_err();
        let RefusedKind::Destroyed(err) = refused.kind else {
            panic!("{refused:?}")
        };
        assert_eq!(err.state, State::Destroying);
        release.send(()).unwrap();
        let (result, t) = driver.join().unwrap();
        result.unwrap();
        let canceled = |id| (id, Canceled, true, t);
        let expected = [
            (0, RunReady, true, t),
            canceled(1),
            canceled(2),
            canceled(3),
        ];
        assert_eq!(log.by_id(), expected);
    });
    assert_eq!((e.state(), e.pending()), (State::Destroyed, 0));
    assert!(e.wait().is_err());
}

// ---- panics ----

#[test]
fn a_panicking_task_does_not_stop_the_loop() {
    let (e, log) = (eng(arr::<4>()), Log::default());
    go(&e, When::Now, |_, _| panic!("a task panics on purpose"));
    e.schedule(rec(&log, 0), When::Now).unwrap();
    go(&e, When::At(9), |_, _| panic!("a timer panics on purpose"));
    go(&e, When::At(10), |cx, _| cx.stop());
    e.run_here(&e).unwrap();
    assert_eq!(log.ids(), [(0, RunReady)]);
    assert_eq!((count(&e.platform().panics), e.pending()), (2, 0));
}

#[test]
fn a_panic_in_the_clock_ends_drive_with_panicked_and_publishes_the_exit() {
    let (e, log) = (eng(arr::<4>()), Log::default());
    thread::scope(|s| {
        let driver = start_thread(s, &e);
        let waiter = s.spawn(|| e.wait());
        reached(&e.platform().blocked); // the waiter waits for the driver's exit
        e.platform().clock_panics.store(true, Ordering::Release);
        e.schedule(rec(&log, 0), When::Now).unwrap(); // the tick that takes it reads the clock
        let (result, _) = driver.join().unwrap();
        assert!(matches!(result, Err(DriveError::Panicked)));
        waiter.join().unwrap().unwrap();
    });
    assert_eq!(e.state(), State::Ready);
    assert!(!e.lifecycle().is_live() && !e.is_driver());
    assert!(log.entries().is_empty());
    e.platform().clock_panics.store(false, Ordering::Release);
    turn0(&e); // the loop is whole: the task it had drained runs
    assert_eq!(log.ids(), [(0, RunReady)]);
}
