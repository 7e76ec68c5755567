//! Fuzz target `engine`: the real [`reseau_core::Engine`], single-threaded and fully
//! deterministic, on the simulated platform [`SimPlatform`], against a reference model.
//!
//! # The platform
//! `Wrap` owns a [`SimPlatform`] and delegates `now`, `wake`, `poll`, `current_thread`,
//! `block_until` and `notify` to it (virtual clock, scripted readiness, `EINTR` and failing
//! waits). It only adds what a std platform adds: `run_task` and `catch` use
//! [`std::panic::catch_unwind`], so a task that panics (with the `Expected` marker) is
//! caught and counted and the loop goes on; any other panic (an invariant failing inside a
//! task) is resumed and fails the input. It also records each `poll` (the timeout the engine
//! asked for, the clock before and after, what it dispatched) in the trace, can be armed to
//! panic in its next `poll` (a panic outside any task: the turn ends with
//! [`DriveError::Panicked`]), and holds *sources* that `release_sources` drops at destroy,
//! each performing an action (e.g. scheduling a task, which the teardown must cancel).
//!
//! # The script
//! The first byte picks the capacity (1, 2, 4 or 8 slots, so `Full` is common); then up to
//! [`MAX_OPS`] [`Op`]s: schedule `Now` / `NowSerialized` / `At(now ± delta)` (a task may
//! panic after it logs and acts); cancel one of the handles issued so far (pending, run, or
//! stale after its slot was reused); schedule on a second engine and cancel with *foreign*
//! handles both ways; `turn` with `max_wait` 0, small, large or unbounded; `run_here`;
//! clock jumps ([`SimPlatform::advance`]); scripted readiness (its callback performs an
//! action), `Interrupt`, `Fail`; a panicking `poll`; sources; `stop`, `wait`, `destroy`.
//! The script always ends with a `destroy` (refused if one already happened).
//!
//! Tasks, readiness callbacks and released sources reach the engine through the context
//! (`Cx` holds an `Rc` of it) and perform an [`Action`] from the loop's identity: schedule
//! a child, cancel a handle (the loop thread's cancel, which runs the task at once), `stop`
//! (ends the batch and `run_here`), `abandon_from_loop_thread` (destroy from inside a turn:
//! the turn tears the loop down at its end), or misuse (`turn`, `run_here`, `wait`,
//! `destroy` from the loop: each refused, changing nothing).
//!
//! # Invariants
//! Checked directly, on every input:
//! - every accepted task runs exactly once, `RunReady` or `Canceled` (a payload read twice
//!   runs twice; a task dropped unrun is recorded by its `Drop`); its payload arrives
//!   intact, with the status the platform's `run_task` was given; it runs `Canceled` only
//!   if a cancel of it returned (or is about to return) `true`, or destroy is under way;
//! - a task whose cancel returned `true` runs `Canceled` (or had, on the loop thread); no
//!   cancel returns `true` twice; a cancel that returns `false` changes nothing (pending
//!   count, trace) and names a task that already ran or was canceled (or whose cancel is
//!   under way: a cancel from the loop runs tasks before it returns);
//! - never early: a timed task run `RunReady` finds `now() >= deadline`;
//! - a refused schedule hands back the very task (run by the harness: it logs) with the
//!   `When` it was given; `Full` names the capacity; after destroy every schedule is refused
//!   with [`RefusedKind::Destroyed`];
//! - a slot is reused only after its previous task ran; handles are never issued twice;
//! - a foreign handle cancels nothing on either engine and changes nothing;
//! - after destroy: `pending() == 0`, every accepted task ran, no `poll` and no readiness
//!   callback happened afterwards; both engines end destroyed with nothing left.
//!
//! Against the [`Model`] (a plain list-based reference of the engine's documented
//! semantics), after every operation: the same trace (every schedule and its outcome, every
//! run and its status in order, every cancel and its result, each poll's timeout, each
//! readiness callback, stop and abandon results), the same `pending()`, the same state, the
//! same result of `turn` / `run_here` / `stop` / `wait` / `destroy`. The model fixes what the
//! batch order is (ASAP tasks in submission order before due timers, timers by `(deadline,
//! submission)`, a task scheduled during a batch waits for the next one, a stop ends the
//! batch after the current task), how long `poll` may wait (0 when work is queued, else up
//! to the next deadline, capped by `max_wait`), and what `turn` returns.
//!
//! Two orders the engine does not document are fixed by the model as the engine has them:
//! cancels from outside the loop are taken newest first (a stack), and destroy cancels the
//! ready list, then the timers by `(deadline, submission)`, then the inbox. The clock and
//! the script are the platform's (not under test): the model reads each poll's outcome and
//! the clock after it from the trace.
//!
//! Not modelled: subscribe / unsubscribe (the core engine has no IO sources of its own; the
//! simulated platform dispatches one-shot scripted events), threads (cross-thread schedules
//! and cancels are made from outside a drive, which takes the same inbox and cancel-stack
//! path, but never concurrently), `start` / `drive` (they need a second thread) and
//! `destroy` with a timeout (single-threaded, the loop is never live when destroy runs).

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet, VecDeque};
use std::panic::{self, AssertUnwindSafe};
use std::rc::Rc;
use std::sync::Once;

use arbitrary::{Arbitrary, Unstructured};
use reseau_core::sim::{Scripted, SimError, SimPlatform};
use reseau_core::{
    DestroyError, DriveError, Engine, Operation, Platform, Refused, RefusedKind, Runnable, Slot,
    State, TaskRef, TaskStatus, When,
};

/// The longest script.
pub const MAX_OPS: usize = 128;

/// The capacities the first byte picks from.
const CAPACITIES: [usize; 4] = [1, 2, 4, 8];
/// The second engine's capacity.
const FOREIGN_CAPACITY: usize = 4;
/// How many events the simulated platform's script holds.
const SCRIPT: usize = 8;
/// Panics can be caught (not so under `-C panic=abort`: then nothing panics on purpose).
const UNWIND: bool = cfg!(panic = "unwind");

type Eng = Engine<Wrap, Task, Box<[Slot<Task>]>>;

// ---- the script ----

/// How a task is scheduled.
#[derive(Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// [`When::Now`].
    Now,
    /// [`When::NowSerialized`].
    NowSerialized,
    /// [`When::At`] the clock plus this many ticks (negative: in the past).
    At(i16),
}

impl Kind {
    fn when(self, now: u64) -> When {
        match self {
            Kind::Now => When::Now,
            Kind::NowSerialized => When::NowSerialized,
            Kind::At(delta) => When::At(now.saturating_add_signed(i64::from(delta))),
        }
    }
}

/// A task to schedule.
#[derive(Arbitrary, Debug, Clone)]
pub struct Spec {
    /// When it is to run.
    pub kind: Kind,
    /// The task panics (after it logs and acts) when `flags % 8 == 7`.
    pub flags: u8,
    /// What it does when it runs (with either status).
    pub action: Action,
}

impl Spec {
    fn panics(&self) -> bool {
        UNWIND && self.flags % 8 == 7
    }
}

/// What a task, a readiness callback or a released source does, from the loop's identity.
///
/// Decoded from one byte, weighted so that most tasks do little (byte 0, what an exhausted
/// input reads, is `Nothing`): `Abandon` (which destroys the loop) is rare.
#[derive(Debug, Clone)]
pub enum Action {
    /// Nothing.
    Nothing,
    /// Schedules a child task.
    Child(Box<Spec>),
    /// Cancels the `i % count`-th handle issued so far (the loop thread's cancel).
    Cancel(u8),
    /// [`Engine::stop`].
    Stop,
    /// `turn`, `run_here`, `wait` and `destroy` from the loop: each must be refused.
    Misuse,
    /// [`Engine::abandon_from_loop_thread`].
    Abandon,
}

impl<'a> Arbitrary<'a> for Action {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        Ok(match u8::arbitrary(u)? {
            0..=95 => Action::Nothing,
            96..=159 => Action::Child(Box::new(u.arbitrary()?)),
            160..=207 => Action::Cancel(u.arbitrary()?),
            208..=235 => Action::Stop,
            236..=249 => Action::Misuse,
            250..=255 => Action::Abandon,
        })
    }
}

/// The `max_wait` of a turn.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum MaxWait {
    /// `Some(0)`.
    Zero,
    /// `Some(n)`, small.
    Small(u8),
    /// `Some(n)`, up to 65535 ticks.
    Ticks(u16),
    /// `None`: until something happens (the simulated platform refuses to wait forever).
    Unbounded,
}

impl MaxWait {
    fn get(self) -> Option<u64> {
        match self {
            MaxWait::Zero => Some(0),
            MaxWait::Small(n) => Some(u64::from(n)),
            MaxWait::Ticks(n) => Some(u64::from(n)),
            MaxWait::Unbounded => None,
        }
    }
}

/// One step of the script, from outside any drive (the harness is "another thread").
///
/// Decoded from one byte, weighted: mostly schedules, cancels and turns; `Destroy` is rare
/// (1 in 128), so that a script of [`MAX_OPS`] steps usually lives long before it.
#[derive(Debug, Clone)]
pub enum Op {
    /// Schedules a task on the engine.
    Schedule(Spec),
    /// Cancels the `i % count`-th handle issued so far.
    Cancel(u8),
    /// [`Engine::turn`].
    Turn(MaxWait),
    /// [`Engine::run_here`]: until a task stops it or the platform fails.
    RunHere,
    /// The clock jumps forward.
    Advance(u16),
    /// Scripts a readiness that many ticks from now; its callback performs the action.
    Ready(u16, Action),
    /// Scripts an interrupted wait.
    Interrupt,
    /// Scripts a failing wait.
    Fail,
    /// The next `poll` panics.
    PollPanics,
    /// The platform holds a source until destroy; releasing it performs the action.
    Source(Action),
    /// Schedules a task on the second engine (never driven until the end).
    ScheduleForeign(Kind),
    /// Cancels a second-engine handle on the engine, and an engine handle on the second.
    CancelForeign(u8, u8),
    /// [`Engine::stop`].
    Stop,
    /// [`Engine::wait`].
    Wait,
    /// [`Engine::destroy`].
    Destroy,
}

impl<'a> Arbitrary<'a> for Op {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        Ok(match u8::arbitrary(u)? {
            0..=63 => Op::Schedule(u.arbitrary()?),
            64..=95 => Op::Cancel(u.arbitrary()?),
            96..=135 => Op::Turn(u.arbitrary()?),
            136..=147 => Op::RunHere,
            148..=163 => Op::Advance(u.arbitrary()?),
            164..=183 => Op::Ready(u.arbitrary()?, u.arbitrary()?),
            184..=191 => Op::Interrupt,
            192..=195 => Op::Fail,
            196..=199 => Op::PollPanics,
            200..=209 => Op::Source(u.arbitrary()?),
            210..=221 => Op::ScheduleForeign(u.arbitrary()?),
            222..=237 => Op::CancelForeign(u.arbitrary()?, u.arbitrary()?),
            238..=245 => Op::Stop,
            246..=253 => Op::Wait,
            254..=255 => Op::Destroy,
        })
    }
}

/// Decodes `data` into the capacity and the script `run` executes (for reading a failing
/// input).
pub fn script(data: &[u8]) -> (usize, Vec<Op>) {
    let mut u = Unstructured::new(data);
    let cap = CAPACITIES[usize::from(u.arbitrary::<u8>().unwrap_or(0)) % CAPACITIES.len()];
    let mut ops = Vec::new();
    while !u.is_empty() && ops.len() < MAX_OPS {
        let Ok(op) = Op::arbitrary(&mut u) else { break };
        ops.push(op);
    }
    (cap, ops)
}

// ---- what the trace records ----

/// Why a schedule was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Why {
    Full,
    Destroyed(State),
}

/// What a `poll` returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Polled {
    Ok,
    Err(SimError),
    Panicked,
}

/// One `poll`: what the engine asked for, and what the platform did.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PollRec {
    timeout: Option<u64>,
    before: u64,
    after: u64,
    outcome: Polled,
    dispatched: Vec<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Ev {
    /// A schedule of the task of that name: accepted, or refused (then `HandedBack`).
    Sched(u32, Option<Why>),
    /// The harness ran a refused task it was handed back.
    HandedBack(u32),
    /// The engine ran the task.
    Ran(u32, TaskStatus),
    /// The task is about to panic (after its action).
    Panics(u32),
    /// A cancel of the task of that name, and what it returned.
    Cancel(u32, bool),
    /// A stop from the loop, and what it returned.
    Stop(Result<(), State>),
    /// `abandon_from_loop_thread`, and what it returned.
    Abandon(bool),
    /// `turn`, `run_here`, `wait` and `destroy` from the loop were refused.
    Misuse,
    Poll(PollRec),
    /// A readiness callback with that token.
    Io(u32),
    /// The platform released the source of that id.
    Released(u32),
}

/// The result of an operation from outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Drove {
    Ok(Option<u64>),
    Refused(State),
    Platform(SimError),
    Panicked,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Out {
    None,
    Drove(Drove),
    Life(Result<(), State>),
}

// ---- panics ----

/// The payload of every panic the script asks for; the panic hook stays quiet for it.
struct Expected;

static HOOK: Once = Once::new();

/// Silences the panic hook for [`Expected`] panics only (others, e.g. an invariant failing,
/// reach the previous hook: libFuzzer's aborts).
fn quiet_expected_panics() {
    HOOK.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if !info.payload().is::<Expected>() {
                previous(info);
            }
        }));
    });
}

thread_local! {
    /// Tasks dropped without being run.
    static LOST: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
}

// ---- the platform ----

/// The simulated platform, with std's panic guards; see the [module docs](self).
struct Wrap {
    sim: SimPlatform<Cx, SCRIPT>,
    panic_next_poll: Cell<bool>,
    dispatched: RefCell<Vec<u32>>,
    /// The status of the task `run_task` is running.
    status: Cell<Option<TaskStatus>>,
    caught: Cell<usize>,
    sources: RefCell<Vec<(u32, Action)>>,
}

impl Wrap {
    fn new() -> Self {
        Self {
            sim: SimPlatform::new(on_ready),
            panic_next_poll: Cell::new(false),
            dispatched: RefCell::new(Vec::new()),
            status: Cell::new(None),
            caught: Cell::new(0),
            sources: RefCell::new(Vec::new()),
        }
    }
}

fn on_ready(cx: &Cx, token: u32) {
    cx.engine.platform().dispatched.borrow_mut().push(token);
    cx.push(Ev::Io(token));
    let action = cx.io.borrow()[token as usize].clone();
    perform(cx, &action);
}

impl Platform for Wrap {
    type Cx = Cx;
    type Error = SimError;
    /// The simulated platform's (small buckets, so fuzz inputs reach the timer wheel).
    const TIMER_WHEEL_SHIFT: u32 = 2;

    fn now(&self) -> u64 {
        self.sim.now()
    }

    fn wake(&self) {
        self.sim.wake();
    }

    fn wake_coalesced(&self) {
        self.sim.wake_coalesced();
    }

    fn poll(&self, cx: &Cx, timeout: Option<u64>) -> Result<(), SimError> {
        let before = self.sim.now();
        let at = cx.push(Ev::Poll(PollRec {
            timeout,
            before,
            after: before,
            outcome: Polled::Panicked,
            dispatched: Vec::new(),
        }));
        if self.panic_next_poll.replace(false) {
            panic::panic_any(Expected);
        }
        self.dispatched.borrow_mut().clear();
        let result = self.sim.poll(cx, timeout);
        let dispatched = self.dispatched.take();
        if let Ev::Poll(rec) = &mut cx.trace.borrow_mut()[at] {
            rec.after = self.sim.now();
            rec.outcome = match result {
                Ok(()) => Polled::Ok,
                Err(e) => Polled::Err(e),
            };
            rec.dispatched = dispatched;
        }
        result
    }

    fn run_task(&self, status: TaskStatus, f: impl FnOnce()) -> bool {
        let outer = self.status.replace(Some(status));
        let result = panic::catch_unwind(AssertUnwindSafe(f));
        self.status.set(outer);
        match result {
            Ok(()) => true,
            Err(payload) if payload.is::<Expected>() => {
                self.caught.set(self.caught.get() + 1);
                false
            }
            Err(payload) => panic::resume_unwind(payload),
        }
    }

    fn catch<R>(&self, f: impl FnOnce() -> R) -> Option<R> {
        match panic::catch_unwind(AssertUnwindSafe(f)) {
            Ok(r) => Some(r),
            Err(payload) if payload.is::<Expected>() => None,
            Err(payload) => panic::resume_unwind(payload),
        }
    }

    fn current_thread(&self) -> usize {
        self.sim.current_thread()
    }

    fn block_until(&self, done: &dyn Fn() -> bool, timeout: Option<u64>) -> bool {
        self.sim.block_until(done, timeout)
    }

    fn notify(&self) {
        self.sim.notify();
    }

    fn release_sources(&self, cx: &Cx) -> usize {
        let sources = self.sources.take();
        for (id, action) in &sources {
            cx.push(Ev::Released(*id));
            perform(cx, action);
        }
        sources.len()
    }
}

// ---- the real engine ----

/// What tasks receive: their engine, and the harness's records.
struct Cx {
    engine: Rc<Eng>,
    trace: RefCell<Vec<Ev>>,
    next_name: Cell<u32>,
    /// Accepted schedules, in order: the handle and the task's name.
    handles: RefCell<Vec<(TaskRef, u32)>>,
    issued: RefCell<HashSet<(u32, u32)>>,
    /// The last task each slot was given.
    slot_last: RefCell<HashMap<u32, u32>>,
    deadlines: RefCell<HashMap<u32, u64>>,
    ran: RefCell<HashMap<u32, TaskStatus>>,
    /// Tasks whose cancel returned `true`.
    canceled: RefCell<HashSet<u32>>,
    /// Tasks whose cancel is under way (a cancel from the loop runs tasks before it returns).
    canceling: RefCell<Vec<u32>>,
    /// Readiness callbacks' actions, by token.
    io: RefCell<Vec<Action>>,
    next_source: Cell<u32>,
}

impl Cx {
    fn new(capacity: usize, id: u64) -> Self {
        let slots: Box<[Slot<Task>]> = (0..capacity).map(|_| Slot::new()).collect();
        let engine = Engine::new(Wrap::new(), slots, id).expect("a valid capacity");
        Self {
            engine: Rc::new(engine),
            trace: RefCell::new(Vec::new()),
            next_name: Cell::new(0),
            handles: RefCell::new(Vec::new()),
            issued: RefCell::new(HashSet::new()),
            slot_last: RefCell::new(HashMap::new()),
            deadlines: RefCell::new(HashMap::new()),
            ran: RefCell::new(HashMap::new()),
            canceled: RefCell::new(HashSet::new()),
            canceling: RefCell::new(Vec::new()),
            io: RefCell::new(Vec::new()),
            next_source: Cell::new(0),
        }
    }

    fn push(&self, e: Ev) -> usize {
        let mut trace = self.trace.borrow_mut();
        trace.push(e);
        trace.len() - 1
    }

    fn len(&self) -> usize {
        self.trace.borrow().len()
    }

    fn handle(&self, i: u8) -> Option<(TaskRef, u32)> {
        let handles = self.handles.borrow();
        (!handles.is_empty()).then(|| handles[usize::from(i) % handles.len()])
    }

    fn sim(&self) -> &SimPlatform<Cx, SCRIPT> {
        &self.engine.platform().sim
    }
}

fn seal(name: u32) -> u64 {
    u64::from(name).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x5EA1
}

/// The engine's payload.
struct Task {
    name: u32,
    seal: u64,
    panics: bool,
    action: Action,
    /// Not run yet (its `Drop` records a task dropped unrun).
    armed: bool,
    /// Refused and handed back: running it only logs.
    handed_back: bool,
}

impl Runnable<Cx> for Task {
    fn run(mut self, cx: &Cx, status: TaskStatus) {
        self.armed = false;
        let name = self.name;
        assert_eq!(self.seal, seal(name), "task {name}'s payload is corrupted");
        if self.handed_back {
            cx.push(Ev::HandedBack(name));
            return;
        }
        assert_eq!(
            cx.engine.platform().status.get(),
            Some(status),
            "task {name} got a status other than its run_task's"
        );
        if status == TaskStatus::RunReady {
            let now = cx.engine.platform().now();
            if let Some(&deadline) = cx.deadlines.borrow().get(&name) {
                assert!(
                    now >= deadline,
                    "task {name} ran at {now}, before its deadline {deadline}"
                );
            }
            assert!(
                !cx.canceled.borrow().contains(&name),
                "task {name} ran RunReady after its cancel returned true"
            );
        }
        if status == TaskStatus::Canceled {
            assert!(
                cx.engine.state() == State::Destroying
                    || cx.canceled.borrow().contains(&name)
                    || cx.canceling.borrow().contains(&name),
                "task {name} ran Canceled, but nobody canceled it and no destroy is under way"
            );
        }
        let first = cx.ran.borrow_mut().insert(name, status).is_none();
        assert!(first, "task {name} ran twice");
        cx.push(Ev::Ran(name, status));
        perform(cx, &self.action);
        if self.panics {
            cx.push(Ev::Panics(name));
            panic::panic_any(Expected);
        }
    }
}

impl Drop for Task {
    fn drop(&mut self) {
        if self.armed {
            LOST.with(|l| l.borrow_mut().push(self.name));
        }
    }
}

fn perform(cx: &Cx, action: &Action) {
    match action {
        Action::Nothing => {}
        Action::Child(spec) => schedule(cx, spec),
        Action::Cancel(i) => cancel(cx, *i),
        Action::Stop => {
            let r = cx.engine.stop().map_err(|e| {
                assert_eq!(e.op, Operation::Stop);
                e.state
            });
            cx.push(Ev::Stop(r));
        }
        Action::Abandon => {
            let r = cx.engine.abandon_from_loop_thread();
            cx.push(Ev::Abandon(r));
        }
        Action::Misuse => {
            let e = &cx.engine;
            let before = (e.state(), e.pending(), cx.len());
            assert!(
                matches!(e.turn(cx, Some(0)), Err(DriveError::Lifecycle(_))),
                "turn from the loop"
            );
            assert!(
                matches!(e.run_here(cx), Err(DriveError::Lifecycle(_))),
                "run_here from the loop"
            );
            assert!(
                e.wait().is_err_and(|err| err.on_loop_thread),
                "wait from the loop"
            );
            assert!(
                matches!(e.destroy(cx, None), Err(DestroyError::Lifecycle(err)) if err.on_loop_thread),
                "destroy from the loop"
            );
            assert_eq!(
                (e.state(), e.pending(), cx.len()),
                before,
                "a refused call from the loop changed something"
            );
            cx.push(Ev::Misuse);
        }
    }
}

fn schedule(cx: &Cx, spec: &Spec) {
    let e = &cx.engine;
    let name = cx.next_name.get();
    cx.next_name.set(name + 1);
    let when = spec.kind.when(e.platform().now());
    let destroyed = e.state() == State::Destroyed;
    let task = Task {
        name,
        seal: seal(name),
        panics: spec.panics(),
        action: spec.action.clone(),
        armed: true,
        handed_back: false,
    };
    match e.schedule(task, when) {
        Ok(r) => {
            assert!(!destroyed, "a destroyed engine accepted task {name}");
            assert_eq!(
                r.loop_id(),
                e.id(),
                "task {name}'s handle names another engine"
            );
            assert!((r.slot() as usize) < e.capacity(), "slot out of range");
            let fresh = cx.issued.borrow_mut().insert((r.slot(), r.generation()));
            assert!(fresh, "handle {r:?} (task {name}) issued twice");
            if let Some(prev) = cx.slot_last.borrow_mut().insert(r.slot(), name) {
                assert!(
                    cx.ran.borrow().contains_key(&prev),
                    "task {name} got slot {} while task {prev} had not run",
                    r.slot()
                );
            }
            if let When::At(deadline) = when {
                cx.deadlines.borrow_mut().insert(name, deadline);
            }
            cx.handles.borrow_mut().push((r, name));
            cx.push(Ev::Sched(name, None));
        }
        Err(Refused {
            kind,
            when: asked,
            mut task,
        }) => {
            assert_eq!(asked, when, "a refusal changed task {name}'s When");
            assert_eq!(task.name, name, "a refusal handed back another task");
            let why = match kind {
                RefusedKind::Full { capacity } => {
                    assert_eq!(capacity, e.capacity());
                    assert!(!destroyed, "a destroyed engine refused with Full");
                    Why::Full
                }
                RefusedKind::Destroyed(err) => {
                    assert_eq!(err.op, Operation::Schedule);
                    Why::Destroyed(err.state)
                }
            };
            cx.push(Ev::Sched(name, Some(why)));
            task.handed_back = true;
            task.run(cx, TaskStatus::Canceled);
        }
    }
}

fn cancel(cx: &Cx, i: u8) {
    let Some((r, name)) = cx.handle(i) else {
        return;
    };
    let e = &cx.engine;
    let before = (e.pending(), cx.len());
    cx.canceling.borrow_mut().push(name);
    let ok = e.cancel(cx, r);
    cx.canceling.borrow_mut().pop();
    if ok {
        let first = cx.canceled.borrow_mut().insert(name);
        assert!(first, "a cancel of task {name} returned true twice");
        if let Some(&status) = cx.ran.borrow().get(&name) {
            assert_eq!(
                status,
                TaskStatus::Canceled,
                "cancel of task {name} returned true after it ran"
            );
        }
    } else {
        assert_eq!(
            (e.pending(), cx.len()),
            before,
            "a cancel of task {name} returned false and changed something"
        );
        assert!(
            cx.ran.borrow().contains_key(&name)
                || cx.canceled.borrow().contains(&name)
                || cx.canceling.borrow().contains(&name),
            "a cancel of pending task {name} returned false"
        );
    }
    cx.push(Ev::Cancel(name, ok));
}

fn drove(r: Result<Option<u64>, DriveError<SimError>>) -> Drove {
    match r {
        Ok(t) => Drove::Ok(t),
        Err(DriveError::Lifecycle(e)) => {
            assert_eq!(e.op, Operation::Run);
            Drove::Refused(e.state)
        }
        Err(DriveError::Platform(e)) => Drove::Platform(e),
        Err(DriveError::Panicked) => Drove::Panicked,
        Err(DriveError::NotStarted) => panic!("a turn answered NotStarted"),
    }
}

/// The engine under test (`cx`) and the second engine (`fx`) whose handles are foreign.
struct Real {
    cx: Cx,
    fx: Cx,
}

impl Real {
    fn apply(&self, op: &Op) -> Out {
        let (cx, e) = (&self.cx, &self.cx.engine);
        match op {
            Op::Schedule(spec) => schedule(cx, spec),
            Op::Cancel(i) => cancel(cx, *i),
            Op::ScheduleForeign(kind) => {
                let spec = Spec {
                    kind: *kind,
                    flags: 0,
                    action: Action::Nothing,
                };
                schedule(&self.fx, &spec);
            }
            Op::CancelForeign(i, j) => self.cancel_foreign(*i, *j),
            Op::Turn(w) => return Out::Drove(drove(e.turn(cx, w.get()))),
            Op::RunHere => return Out::Drove(drove(e.run_here(cx).map(|()| None))),
            Op::Advance(by) => cx.sim().advance(u64::from(*by)),
            Op::Ready(delta, action) => {
                let token = cx.io.borrow().len() as u32;
                cx.io.borrow_mut().push(action.clone());
                let at = e.platform().now().saturating_add(u64::from(*delta));
                let _ = cx.sim().script(Scripted::Ready { at, token });
            }
            Op::Interrupt => {
                let _ = cx.sim().script(Scripted::Interrupt);
            }
            Op::Fail => {
                let _ = cx.sim().script(Scripted::Fail);
            }
            Op::PollPanics => e.platform().panic_next_poll.set(UNWIND),
            Op::Source(action) => {
                if e.state() != State::Destroyed {
                    let id = cx.next_source.get();
                    cx.next_source.set(id + 1);
                    e.platform().sources.borrow_mut().push((id, action.clone()));
                }
            }
            Op::Stop => return Out::Life(e.stop().map_err(|err| err.state)),
            Op::Wait => return Out::Life(e.wait().map_err(|err| err.state)),
            Op::Destroy => {
                return Out::Life(match e.destroy(cx, None) {
                    Ok(()) => Ok(()),
                    Err(DestroyError::Lifecycle(err)) => Err(err.state),
                    Err(DestroyError::Abandoned) => panic!("destroy abandoned a loop not live"),
                });
            }
        }
        Out::None
    }

    fn cancel_foreign(&self, i: u8, j: u8) {
        let snapshot = |cx: &Cx| (cx.engine.pending(), cx.engine.state(), cx.len());
        let before = (snapshot(&self.cx), snapshot(&self.fx));
        if let Some((r, name)) = self.fx.handle(i) {
            assert!(
                !self.cx.engine.cancel(&self.cx, r),
                "the second engine's handle {r:?} (its task {name}) canceled a task"
            );
        }
        if let Some((r, name)) = self.cx.handle(j) {
            assert!(
                !self.fx.engine.cancel(&self.fx, r),
                "handle {r:?} (task {name}) canceled a task of the second engine"
            );
        }
        assert_eq!(
            (snapshot(&self.cx), snapshot(&self.fx)),
            before,
            "a cancel with a foreign handle changed something"
        );
    }
}

// ---- the reference model ----

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Claim {
    Pending,
    Run,
    /// Canceled from the loop (or by destroy).
    Canceled,
    /// Canceled from outside: on the cancel stack until the driver takes it.
    Stacked,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Loc {
    /// In the inbox, running, or done.
    Away,
    Ready,
    Timed,
    /// Ran canceled; its slot waits for its cancel-stack entry.
    Zombie,
    /// Its cancel-stack entry was taken before it ran.
    StackSeen,
}

#[derive(Debug)]
struct MTask {
    deadline: Option<u64>,
    action: Action,
    panics: bool,
    claim: Claim,
    loc: Loc,
    seq: u64,
}

/// The second engine: scheduled from outside only, never driven until its destroy.
#[derive(Debug, Default)]
struct Foreign {
    next: u32,
    accepted: Vec<u32>,
    trace: Vec<Ev>,
}

impl Foreign {
    fn schedule(&mut self) {
        let name = self.next;
        self.next += 1;
        if self.accepted.len() < FOREIGN_CAPACITY {
            self.accepted.push(name);
            self.trace.push(Ev::Sched(name, None));
        } else {
            self.trace.push(Ev::Sched(name, Some(Why::Full)));
            self.trace.push(Ev::HandedBack(name));
        }
    }

    fn destroy(&mut self) {
        for &name in &self.accepted {
            self.trace.push(Ev::Ran(name, TaskStatus::Canceled));
        }
    }
}

/// The reference engine: plain lists, written from the engine's documentation (see the
/// [module docs](self)).
#[derive(Debug)]
pub struct Model {
    cap: usize,
    now: u64,
    /// By name; `None` for a refused schedule.
    tasks: Vec<Option<MTask>>,
    /// Names of the accepted tasks, in order (the handles).
    ids: Vec<u32>,
    inbox: VecDeque<u32>,
    /// The ready list, head first.
    ready: Vec<u32>,
    /// Timed tasks, unordered.
    timed: Vec<u32>,
    /// The cancel stack, newest last.
    stack: Vec<u32>,
    /// Slots in use.
    held: usize,
    next_seq: u64,
    busy: bool,
    state: State,
    live: bool,
    abandoned: bool,
    driver: bool,
    stop_hint: bool,
    io: Vec<Action>,
    sources: Vec<(u32, Action)>,
    next_source: u32,
    trace: Vec<Ev>,
    foreign: Foreign,
}

impl Model {
    fn new(cap: usize) -> Self {
        Self {
            cap,
            now: 0,
            tasks: Vec::new(),
            ids: Vec::new(),
            inbox: VecDeque::new(),
            ready: Vec::new(),
            timed: Vec::new(),
            stack: Vec::new(),
            held: 0,
            next_seq: 0,
            busy: false,
            state: State::Ready,
            live: false,
            abandoned: false,
            driver: false,
            stop_hint: false,
            io: Vec::new(),
            sources: Vec::new(),
            next_source: 0,
            trace: Vec::new(),
            foreign: Foreign::default(),
        }
    }

    fn t(&mut self, name: u32) -> &mut MTask {
        self.tasks[name as usize]
            .as_mut()
            .expect("the model names only accepted tasks")
    }

    fn apply(&mut self, op: &Op, real: &[Ev]) -> Out {
        match op {
            Op::Schedule(spec) => self.schedule(spec),
            Op::Cancel(i) => self.cancel(*i),
            Op::ScheduleForeign(_) => self.foreign.schedule(),
            Op::CancelForeign(..) | Op::Interrupt | Op::Fail | Op::PollPanics => {}
            Op::Turn(w) => return Out::Drove(self.turn(w.get(), real)),
            Op::RunHere => return Out::Drove(self.run_here(real)),
            Op::Advance(by) => self.now = self.now.saturating_add(u64::from(*by)),
            Op::Ready(_, action) => self.io.push(action.clone()),
            Op::Source(action) => {
                if self.state != State::Destroyed {
                    self.sources.push((self.next_source, action.clone()));
                    self.next_source += 1;
                }
            }
            Op::Stop => return Out::Life(self.stop()),
            Op::Wait => {
                return Out::Life(match self.state {
                    State::Destroyed => Err(State::Destroyed),
                    _ => Ok(()),
                });
            }
            Op::Destroy => return Out::Life(self.destroy()),
        }
        Out::None
    }

    // -- scheduling and canceling --

    fn schedule(&mut self, spec: &Spec) {
        let name = self.tasks.len() as u32;
        let when = spec.kind.when(self.now);
        let refused = if !self.driver && matches!(self.state, State::Destroying | State::Destroyed)
        {
            Some(Why::Destroyed(self.state))
        } else if self.held == self.cap {
            Some(Why::Full)
        } else {
            None
        };
        if let Some(why) = refused {
            self.tasks.push(None);
            self.trace.push(Ev::Sched(name, Some(why)));
            self.trace.push(Ev::HandedBack(name));
            return;
        }
        self.held += 1;
        self.tasks.push(Some(MTask {
            deadline: match when {
                When::At(d) => Some(d),
                _ => None,
            },
            action: spec.action.clone(),
            panics: spec.panics(),
            claim: Claim::Pending,
            loc: Loc::Away,
            seq: 0,
        }));
        self.ids.push(name);
        self.trace.push(Ev::Sched(name, None));
        if self.driver && when != When::NowSerialized {
            self.insert(name);
        } else {
            self.inbox.push_back(name);
        }
    }

    fn cancel(&mut self, i: u8) {
        if self.ids.is_empty() {
            return;
        }
        let name = self.ids[usize::from(i) % self.ids.len()];
        let ok = self.cancel_task(name);
        self.trace.push(Ev::Cancel(name, ok));
    }

    fn cancel_task(&mut self, name: u32) -> bool {
        if self.t(name).claim != Claim::Pending {
            return false;
        }
        if self.driver {
            self.t(name).claim = Claim::Canceled;
            // The inbox first, so a task still queued there is found.
            self.drain();
            match self.t(name).loc {
                Loc::Ready => {
                    self.unlink(name);
                    self.finish(name, TaskStatus::Canceled);
                }
                Loc::Timed => {
                    self.untime(name);
                    self.finish(name, TaskStatus::Canceled);
                }
                _ => {}
            }
        } else if matches!(self.state, State::Destroying | State::Destroyed) {
            self.t(name).claim = Claim::Canceled;
        } else {
            self.t(name).claim = Claim::Stacked;
            self.stack.push(name);
        }
        true
    }

    fn stop(&mut self) -> Result<(), State> {
        match self.state {
            State::Destroying => Ok(()),
            State::Destroyed => Err(State::Destroyed),
            State::Running => {
                self.state = State::Stopping;
                self.stop_hint = true;
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn abandon(&mut self) -> bool {
        if !self.driver || !self.live || matches!(self.state, State::Destroying | State::Destroyed)
        {
            return false;
        }
        self.state = State::Destroying;
        self.abandoned = true;
        self.stop_hint = true;
        true
    }

    fn perform(&mut self, action: &Action) {
        match action {
            Action::Nothing => {}
            Action::Child(spec) => self.schedule(spec),
            Action::Cancel(i) => self.cancel(*i),
            Action::Stop => {
                let r = self.stop();
                self.trace.push(Ev::Stop(r));
            }
            Action::Abandon => {
                let r = self.abandon();
                self.trace.push(Ev::Abandon(r));
            }
            Action::Misuse => self.trace.push(Ev::Misuse),
        }
    }

    /// Frees the slot (unless a cancel-stack entry is still to come) and runs the task.
    fn finish(&mut self, name: u32, status: TaskStatus) {
        let t = self.t(name);
        if t.claim == Claim::Stacked && t.loc != Loc::StackSeen {
            t.loc = Loc::Zombie;
        } else {
            t.loc = Loc::Away;
            self.held -= 1;
        }
        let t = self.t(name);
        let (action, panics) = (t.action.clone(), t.panics);
        self.trace.push(Ev::Ran(name, status));
        self.perform(&action);
        if panics {
            self.trace.push(Ev::Panics(name));
        }
    }

    // -- the scheduler --

    fn insert(&mut self, name: u32) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let t = self.t(name);
        t.seq = seq;
        if t.deadline.is_some() {
            t.loc = Loc::Timed;
            self.timed.push(name);
        } else {
            t.loc = Loc::Ready;
            self.ready.push(name);
        }
    }

    fn unlink(&mut self, name: u32) {
        let at = self.ready.iter().position(|&n| n == name).expect("ready");
        self.ready.remove(at);
        self.t(name).loc = Loc::Away;
    }

    fn untime(&mut self, name: u32) {
        let at = self.timed.iter().position(|&n| n == name).expect("timed");
        self.timed.remove(at);
        self.t(name).loc = Loc::Away;
    }

    fn key(&self, name: u32) -> (u64, u64) {
        let t = self.tasks[name as usize].as_ref().expect("accepted");
        (t.deadline.unwrap_or(0), t.seq)
    }

    fn earliest_timed(&self) -> Option<u32> {
        self.timed.iter().copied().min_by_key(|&n| self.key(n))
    }

    fn next_deadline(&self) -> Option<u64> {
        if !self.ready.is_empty() {
            return Some(0);
        }
        self.earliest_timed().map(|n| self.key(n).0)
    }

    fn idle(&self) -> bool {
        self.inbox.is_empty() && self.stack.is_empty()
    }

    /// Moves the due timers behind the ready tasks; returns the batch bound.
    fn begin(&mut self) -> u64 {
        while let Some(n) = self.earliest_timed() {
            if self.key(n).0 > self.now {
                break;
            }
            self.untime(n);
            let seq = self.next_seq;
            self.next_seq += 1;
            self.t(n).seq = seq;
            self.t(n).loc = Loc::Ready;
            self.ready.push(n);
        }
        self.next_seq
    }

    fn pop_due(&mut self, bound: u64) -> Option<u32> {
        let &head = self.ready.first()?;
        if self.key(head).1 >= bound {
            return None;
        }
        self.unlink(head);
        Some(head)
    }

    fn pop_any(&mut self) -> Option<u32> {
        if let Some(&head) = self.ready.first() {
            self.unlink(head);
            return Some(head);
        }
        let n = self.earliest_timed()?;
        self.untime(n);
        Some(n)
    }

    // -- the driver --

    fn drain(&mut self) -> bool {
        let mut any = false;
        while let Some(n) = self.inbox.pop_front() {
            any = true;
            if self.t(n).claim == Claim::Pending {
                self.insert(n);
            } else {
                self.finish(n, TaskStatus::Canceled);
            }
        }
        self.drain_cancels() || any
    }

    fn drain_cancels(&mut self) -> bool {
        let stack = std::mem::take(&mut self.stack);
        for &n in stack.iter().rev() {
            match self.t(n).loc {
                Loc::Ready => {
                    self.unlink(n);
                    self.t(n).loc = Loc::StackSeen;
                    self.finish(n, TaskStatus::Canceled);
                }
                Loc::Timed => {
                    self.untime(n);
                    self.t(n).loc = Loc::StackSeen;
                    self.finish(n, TaskStatus::Canceled);
                }
                Loc::Zombie => {
                    self.t(n).loc = Loc::Away;
                    self.held -= 1;
                }
                _ => self.t(n).loc = Loc::StackSeen,
            }
        }
        !stack.is_empty()
    }

    fn diverged(&self, real: &[Ev], expected: &str) -> ! {
        let at = self.trace.len();
        panic!(
            "expected {expected} at trace position {at}; the engine's trace from there: {:?}; \
             the model's last events: {:?}",
            &real[at.min(real.len())..],
            &self.trace[at.saturating_sub(8)..]
        );
    }

    fn tick(&mut self, max_wait: Option<u64>, eager: bool, real: &[Ev]) -> Result<(), Drove> {
        let mut timeout = self
            .next_deadline()
            .map(|deadline| deadline.saturating_sub(self.now));
        // As the engine: after a busy tick, look again without blocking only if more is
        // published; otherwise park, where work published also makes the wait a poll.
        let look_again = eager && self.busy && !self.idle();
        if timeout != Some(0) && (look_again || !self.idle()) {
            timeout = Some(0);
        }
        if let Some(max) = max_wait {
            timeout = Some(timeout.map_or(max, |t| t.min(max)));
        }
        let Some(Ev::Poll(rec)) = real.get(self.trace.len()) else {
            self.diverged(real, "a poll")
        };
        assert_eq!(
            (rec.timeout, rec.before),
            (timeout, self.now),
            "poll's (timeout, clock) differ from the model's at trace position {}",
            self.trace.len()
        );
        let rec = rec.clone();
        self.trace.push(Ev::Poll(rec.clone()));
        match rec.outcome {
            Polled::Ok => {}
            Polled::Err(e) => return Err(Drove::Platform(e)),
            Polled::Panicked => return Err(Drove::Panicked),
        }
        self.now = rec.after;
        for token in rec.dispatched {
            self.trace.push(Ev::Io(token));
            let action = self.io[token as usize].clone();
            self.perform(&action);
        }
        let mut busy = self.drain();
        let bound = self.begin();
        while !(self.stop_hint && self.state != State::Running) {
            let Some(n) = self.pop_due(bound) else { break };
            busy = true;
            let status = if self.t(n).claim == Claim::Pending {
                self.t(n).claim = Claim::Run;
                TaskStatus::RunReady
            } else {
                TaskStatus::Canceled
            };
            self.finish(n, status);
        }
        self.busy = busy;
        Ok(())
    }

    fn begin_drive(&mut self) -> Result<(), Drove> {
        if self.state != State::Ready {
            return Err(Drove::Refused(self.state));
        }
        self.state = State::Running;
        self.live = true;
        self.driver = true;
        Ok(())
    }

    fn end_drive(&mut self) {
        self.stop_hint = false;
        self.driver = false;
        self.live = false;
        if matches!(
            self.state,
            State::Running | State::Stopping | State::Stopped
        ) {
            self.state = State::Ready;
        }
        if std::mem::take(&mut self.abandoned) {
            self.driver = true;
            self.teardown();
            self.state = State::Destroyed;
            self.driver = false;
        }
    }

    fn turn(&mut self, max_wait: Option<u64>, real: &[Ev]) -> Drove {
        if let Err(refused) = self.begin_drive() {
            return refused;
        }
        let r = match self.tick(max_wait, false, real) {
            Ok(()) if !self.idle() => Drove::Ok(Some(0)),
            Ok(()) => Drove::Ok(
                self.next_deadline()
                    .map(|deadline| deadline.saturating_sub(self.now)),
            ),
            Err(e) => e,
        };
        self.end_drive();
        r
    }

    fn run_here(&mut self, real: &[Ev]) -> Drove {
        if let Err(refused) = self.begin_drive() {
            return refused;
        }
        let mut r = Drove::Ok(None);
        while self.state == State::Running {
            if let Err(e) = self.tick(None, true, real) {
                r = e;
                break;
            }
        }
        self.end_drive();
        r
    }

    fn destroy(&mut self) -> Result<(), State> {
        if matches!(self.state, State::Destroying | State::Destroyed) {
            return Err(self.state);
        }
        self.state = State::Destroying;
        self.stop_hint = true;
        self.driver = true;
        self.teardown();
        self.state = State::Destroyed;
        self.driver = false;
        Ok(())
    }

    fn teardown(&mut self) {
        loop {
            let any = self.cancel_everything();
            let sources = std::mem::take(&mut self.sources);
            for (id, action) in &sources {
                self.trace.push(Ev::Released(*id));
                self.perform(action);
            }
            if !any && sources.is_empty() {
                break;
            }
        }
    }

    fn cancel_everything(&mut self) -> bool {
        let mut any = false;
        loop {
            let mut found = false;
            while let Some(n) = self.pop_any() {
                found = true;
                self.claim_cancel_any(n);
                self.finish(n, TaskStatus::Canceled);
            }
            while let Some(n) = self.inbox.pop_front() {
                found = true;
                self.claim_cancel_any(n);
                self.finish(n, TaskStatus::Canceled);
            }
            found |= self.drain_cancels();
            if !found {
                return any;
            }
            any = true;
        }
    }

    fn claim_cancel_any(&mut self, name: u32) {
        if self.t(name).claim == Claim::Pending {
            self.t(name).claim = Claim::Canceled;
        }
    }
}

// ---- the harness ----

/// Decodes `data` into a script and runs it on the real engine and the [`Model`].
///
/// # Panics
/// On the first divergence or violated invariant.
pub fn run(data: &[u8]) {
    quiet_expected_panics();
    LOST.with(|l| l.borrow_mut().clear());
    let (cap, mut ops) = script(data);
    // The script always ends with a destroy (refused if one already happened).
    ops.push(Op::Destroy);

    let real = Real {
        cx: Cx::new(cap, 1),
        fx: Cx::new(FOREIGN_CAPACITY, 2),
    };
    let mut model = Model::new(cap);
    let mut checked = 0;
    let mut destroyed_at = None;
    for (step, op) in ops.iter().enumerate() {
        let out = real.apply(op);
        let expected = model.apply(op, &real.cx.trace.borrow());
        let ctx = || format!("after step {step} ({op:?}) of capacity {cap}");
        assert_eq!(out, expected, "results differ {}", ctx());
        compare(&real.cx.trace.borrow(), &model.trace, checked, &ctx);
        checked = model.trace.len();
        compare(&real.fx.trace.borrow(), &model.foreign.trace, 0, &ctx);
        let e = &real.cx.engine;
        assert_eq!(e.pending(), model.held, "pending() differs {}", ctx());
        assert_eq!(e.state(), model.state, "state differs {}", ctx());
        assert!(
            !e.is_driver() && !e.lifecycle().is_live(),
            "a drive left traces {}",
            ctx()
        );
        assert_eq!(
            real.fx.engine.pending(),
            model.foreign.accepted.len(),
            "the second engine's pending() {}",
            ctx()
        );
        if destroyed_at.is_none() && e.state() == State::Destroyed {
            destroyed_at = Some(checked);
        }
    }
    finish(
        &real,
        &mut model,
        destroyed_at.expect("the last step destroys"),
    );
}

fn compare(real: &[Ev], model: &[Ev], from: usize, ctx: &dyn Fn() -> String) {
    if real != model {
        let from = from.min(real.len()).min(model.len());
        panic!(
            "traces differ {}:\n  engine: {:?}\n  model:  {:?}",
            ctx(),
            &real[from..],
            &model[from..]
        );
    }
}

fn finish(real: &Real, model: &mut Model, destroyed_at: usize) {
    let cx = &real.cx;
    let e = &cx.engine;
    assert_eq!(e.pending(), 0, "slots still in use after destroy");
    assert_eq!(model.held, 0, "the model holds slots after destroy");
    assert!(
        model.ready.is_empty()
            && model.timed.is_empty()
            && model.inbox.is_empty()
            && model.stack.is_empty()
    );
    let ran = cx.ran.borrow();
    for &(r, name) in cx.handles.borrow().iter() {
        assert!(ran.contains_key(&name), "task {name} ({r:?}) never ran");
    }
    for name in cx.canceled.borrow().iter() {
        assert_eq!(ran[name], TaskStatus::Canceled, "canceled task {name}");
    }
    let trace = cx.trace.borrow();
    let panics = trace.iter().filter(|e| matches!(e, Ev::Panics(_))).count();
    assert_eq!(e.platform().caught.get(), panics, "caught task panics");
    assert!(
        !trace[destroyed_at..]
            .iter()
            .any(|e| matches!(e, Ev::Poll(_) | Ev::Io(_))),
        "a poll or a readiness callback after destroy"
    );

    // The second engine: every task it accepted runs canceled at its destroy.
    let fx = &real.fx;
    assert!(
        fx.engine.destroy(fx, None).is_ok(),
        "the second engine's destroy"
    );
    model.foreign.destroy();
    compare(&fx.trace.borrow(), &model.foreign.trace, 0, &|| {
        "after the second engine's destroy".to_string()
    });
    assert_eq!(fx.engine.pending(), 0);
    for &(_, name) in fx.handles.borrow().iter() {
        assert_eq!(fx.ran.borrow().get(&name), Some(&TaskStatus::Canceled));
    }

    let lost = LOST.with(|l| std::mem::take(&mut *l.borrow_mut()));
    assert!(lost.is_empty(), "tasks dropped without running: {lost:?}");
}
