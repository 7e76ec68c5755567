//! Fuzz target `lifecycle`: [`Lifecycle`] against an explicit transition table.
//!
//! The first byte picks a mode:
//! - **table** (even): any [`RawOp`] in any order, legal or not, protocol or not. Every
//!   call's result, and the state, live bit and producer count after it, must be what
//!   [`table`] says.
//! - **shim** (odd): the calls the Linux shim makes, in the orders its actors can make
//!   them ([`ShimOp`]): a caller runs the loop and then either starts the loop thread or
//!   fails to (`run_failed`); the loop thread ticks and exits once it should not run;
//!   other threads stop, wait (which joins an exited thread), destroy and tear down;
//!   producers enter and leave. Each call is still checked against [`table`], and the
//!   shim's own invariants hold after every step: the live bit is set exactly while a loop
//!   thread is starting or running; a running or stopping loop has such a thread; and
//!   whatever the script left behind, destroy (wake, join, teardown) always completes.

use core::fmt;

use arbitrary::{Arbitrary, Unstructured};
use reseau_core::{Lifecycle, LifecycleError, Operation, ProducerGuard, State, StopOutcome};

/// One call on the lifecycle, with its arguments.
#[derive(Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
pub enum RawOp {
    /// `begin_run`.
    BeginRun,
    /// `run_failed`.
    RunFailed,
    /// `request_stop`.
    RequestStop,
    /// `should_run`.
    ShouldRun,
    /// `loop_exited`.
    LoopExited,
    /// `begin_wait(on_loop_thread)`.
    BeginWait(bool),
    /// `finish_wait`.
    FinishWait,
    /// `begin_destroy(on_loop_thread)`.
    BeginDestroy(bool),
    /// `finish_destroy`.
    FinishDestroy,
    /// `enter_producer`; a guard obtained is held.
    EnterProducer,
    /// Drops the `i % held`-th held producer guard.
    LeaveProducer(u8),
}

/// What a call returned, in comparable form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Res {
    /// `Ok(())` or a call returning nothing.
    Unit,
    /// `should_run`'s answer.
    Bool(bool),
    /// `request_stop`'s outcome.
    Stop(StopOutcome),
    /// The state `begin_wait` or `begin_destroy` returned.
    Was(State),
    /// An error.
    Err(LifecycleError),
}

/// A row of the transition table: the result, then the state and live bit after the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Row {
    /// The call's result.
    pub res: Res,
    /// The state after the call.
    pub state: State,
    /// The live bit after the call.
    pub live: bool,
}

fn err(op: Operation, state: State) -> Res {
    Res::Err(LifecycleError {
        op,
        state,
        on_loop_thread: false,
        live: false,
    })
}

fn from_loop(op: Operation, state: State) -> Res {
    Res::Err(LifecycleError {
        op,
        state,
        on_loop_thread: true,
        live: false,
    })
}

/// The transition table: what `op` does from `state` with the live bit `live`.
///
/// Written from the lifecycle's documentation, not from its code. (Producer guards only
/// change the producer count, which [`Checked`] tracks; they never change a row.)
pub fn table(state: State, live: bool, op: RawOp) -> Row {
    use RawOp as O;
    use State as S;
    let row = |res, state, live| Row { res, state, live };
    let same = |res| Row { res, state, live };
    match (op, state, live) {
        // run: only from Ready; marks the loop thread live.
        (O::BeginRun, S::Ready, _) => row(Res::Unit, S::Running, true),
        (O::BeginRun, s, _) => same(err(Operation::Run, s)),
        // run_failed: undoes the run that set the live bit; whatever happened meanwhile
        // (a stop, a destroy) no thread exists, so the bit goes. A stop that raced the
        // failed start leaves the loop ready to run again; a destroy goes on.
        (O::RunFailed, S::Running | S::Stopping, true) => row(Res::Unit, S::Ready, false),
        (O::RunFailed, S::Destroying, true) => row(Res::Unit, S::Destroying, false),
        (O::RunFailed, _, _) => same(Res::Unit),
        // stop: idempotent; only Running → Stopping asks for a wake.
        (O::RequestStop, S::Running, _) => {
            row(Res::Stop(StopOutcome::Requested), S::Stopping, live)
        }
        (O::RequestStop, S::Stopping | S::Destroying, _) => {
            same(Res::Stop(StopOutcome::AlreadyStopping))
        }
        (O::RequestStop, S::Ready | S::Stopped, _) => same(Res::Stop(StopOutcome::NotRunning)),
        (O::RequestStop, S::Destroyed, _) => same(err(Operation::Stop, S::Destroyed)),
        // the loop thread's questions and its exit
        (O::ShouldRun, s, _) => same(Res::Bool(s == S::Running)),
        (O::LoopExited, S::Running | S::Stopping, _) => row(Res::Unit, S::Stopped, false),
        (O::LoopExited, s, _) => row(Res::Unit, s, false),
        // wait: never from the loop thread, never after destroy
        (O::BeginWait(true), s, _) => same(from_loop(Operation::Wait, s)),
        (O::BeginWait(false), S::Destroyed, _) => same(err(Operation::Wait, S::Destroyed)),
        (O::BeginWait(false), s, _) => same(Res::Was(s)),
        (O::FinishWait, S::Stopped, false) => row(Res::Unit, S::Ready, false),
        (O::FinishWait, _, _) => same(Res::Unit),
        // destroy: never from the loop thread, once; keeps the live bit
        (O::BeginDestroy(true), s, _) => same(from_loop(Operation::Destroy, s)),
        (O::BeginDestroy(false), s @ (S::Destroying | S::Destroyed), _) => {
            same(err(Operation::Destroy, s))
        }
        (O::BeginDestroy(false), s, l) => row(Res::Was(s), S::Destroying, l),
        // teardown: only while destroying, only once the loop thread is gone
        (O::FinishDestroy, S::Destroying, true) => same(Res::Err(LifecycleError {
            op: Operation::Teardown,
            state: S::Destroying,
            on_loop_thread: false,
            live: true,
        })),
        (O::FinishDestroy, S::Destroying, false) => row(Res::Unit, S::Destroyed, false),
        (O::FinishDestroy, s, _) => same(err(Operation::Teardown, s)),
        // producers: admitted until destroy begins
        (O::EnterProducer, s @ (S::Destroying | S::Destroyed), _) => {
            same(err(Operation::Schedule, s))
        }
        (O::EnterProducer, _, _) | (O::LeaveProducer(_), _, _) => same(Res::Unit),
    }
}

/// A real [`Lifecycle`] beside its table model; every call goes through [`call`](Self::call).
pub struct Checked<'a> {
    l: &'a Lifecycle,
    state: State,
    live: bool,
    guards: Vec<ProducerGuard<'a>>,
    calls: usize,
}

impl<'a> Checked<'a> {
    /// Starts from a new lifecycle: ready, not live, no producer.
    pub fn new(l: &'a Lifecycle) -> Self {
        assert_eq!(l.state(), State::Ready);
        assert!(!l.is_live());
        Self {
            l,
            state: State::Ready,
            live: false,
            guards: Vec::new(),
            calls: 0,
        }
    }

    /// Makes the call, checks it and the resulting state against [`table`], and returns
    /// its result.
    pub fn call(&mut self, op: RawOp) -> Res {
        let want = table(self.state, self.live, op);
        let l = self.l;
        let res = match op {
            RawOp::BeginRun => l.begin_run().map_or_else(Res::Err, |()| Res::Unit),
            RawOp::RunFailed => {
                l.run_failed();
                Res::Unit
            }
            RawOp::RequestStop => l.request_stop().map_or_else(Res::Err, Res::Stop),
            RawOp::ShouldRun => Res::Bool(l.should_run()),
            RawOp::LoopExited => {
                l.loop_exited();
                Res::Unit
            }
            RawOp::BeginWait(on) => l.begin_wait(on).map_or_else(Res::Err, Res::Was),
            RawOp::FinishWait => {
                l.finish_wait();
                Res::Unit
            }
            RawOp::BeginDestroy(on) => l.begin_destroy(on).map_or_else(Res::Err, Res::Was),
            RawOp::FinishDestroy => l.finish_destroy().map_or_else(Res::Err, |()| Res::Unit),
            RawOp::EnterProducer => match l.enter_producer() {
                Ok(g) => {
                    self.guards.push(g);
                    Res::Unit
                }
                Err(e) => Res::Err(e),
            },
            RawOp::LeaveProducer(i) => {
                if !self.guards.is_empty() {
                    let i = i as usize % self.guards.len();
                    drop(self.guards.swap_remove(i));
                }
                Res::Unit
            }
        };
        // Formatted only when an assertion fails (keeps the target fast).
        let ctx = CallCtx {
            call: self.calls,
            op,
            state: self.state,
            live: self.live,
        };
        assert_eq!(res, want.res, "result of {ctx}");
        if let Res::Err(e) = res {
            let text = e.to_string();
            assert!(
                text.contains(e.op.name()) && text.contains(e.state.name()),
                "error text {text:?} names neither operation nor state ({ctx})"
            );
        }
        assert_eq!(l.state(), want.state, "state after {ctx}");
        assert_eq!(l.is_live(), want.live, "live bit after {ctx}");
        assert_eq!(l.producers(), self.guards.len(), "producers after {ctx}");
        // State-level invariants the table implies: a running or stopping loop has a live
        // thread; a ready, stopped or destroyed one has none.
        match want.state {
            State::Running | State::Stopping => assert!(want.live, "{ctx}"),
            State::Ready | State::Stopped | State::Destroyed => assert!(!want.live, "{ctx}"),
            State::Destroying => {}
        }
        self.state = want.state;
        self.live = want.live;
        self.calls += 1;
        res
    }

    /// The state the table says the lifecycle is in.
    pub fn state(&self) -> State {
        self.state
    }
}

/// Describes a call in an assertion message.
#[derive(Clone, Copy)]
struct CallCtx {
    call: usize,
    op: RawOp,
    state: State,
    live: bool,
}

impl fmt::Display for CallCtx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "call {} {:?} from {:?} (live {})",
            self.call, self.op, self.state, self.live
        )
    }
}

/// Describes a step of the shim script in an assertion message.
struct StepCtx(&'static str, usize, ShimOp);

impl fmt::Display for StepCtx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} ({:?})", self.0, self.1, self.2)
    }
}

/// One step of an actor of the shim.
#[derive(Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShimOp {
    /// A caller's `run`: `begin_run`; on success that caller owes a thread start.
    Run,
    /// The owed thread start succeeds: the loop thread exists.
    SpawnOk,
    /// The owed thread start fails: the caller calls `run_failed`.
    SpawnFail,
    /// Another thread's `stop`.
    Stop,
    /// The loop thread's own `stop` (from a task).
    StopOnLoop,
    /// The loop thread's tick: asks `should_run`, exits (`loop_exited`) when told not to.
    Tick,
    /// Another thread's `wait_for_stop_completion`: `begin_wait`, then, unless the loop
    /// thread is starting or running (the wait would block; it is retried by a later
    /// `Wait`), join it and `finish_wait`.
    Wait,
    /// `wait_for_stop_completion` from the loop thread: refused.
    WaitOnLoop,
    /// Another thread's `destroy`: `begin_destroy`.
    Destroy,
    /// `destroy` from the loop thread: refused.
    DestroyOnLoop,
    /// The destroyer, once the loop thread is gone (else blocked: retried later), joins it
    /// and calls `finish_destroy`, which must succeed.
    FinishDestroy,
    /// A producer enters a schedule call.
    Enter,
    /// A producer leaves.
    Leave(u8),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Thread {
    /// No loop thread, none owed.
    None,
    /// `begin_run` succeeded; the thread is not started yet (nor has the start failed).
    Starting,
    /// The loop thread runs.
    Alive,
    /// The loop thread has exited and was not joined yet.
    Exited,
}

/// Decodes `data` and checks a [`Lifecycle`] in the mode its first byte selects.
///
/// # Panics
/// On the first divergence from the table or violated invariant.
pub fn run(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let shim = u.arbitrary::<u8>().unwrap_or(0) % 2 == 1;
    let l = Lifecycle::new();
    let mut c = Checked::new(&l);
    if shim {
        run_shim(&mut c, &mut u);
    } else {
        while !u.is_empty() {
            let Ok(op) = RawOp::arbitrary(&mut u) else {
                break;
            };
            c.call(op);
        }
    }
}

struct Shim<'c, 'a> {
    c: &'c mut Checked<'a>,
    thread: Thread,
    destroying: bool,
}

fn run_shim(c: &mut Checked<'_>, u: &mut Unstructured<'_>) {
    let mut s = Shim {
        c,
        thread: Thread::None,
        destroying: false,
    };
    let mut step = 0usize;
    while !u.is_empty() {
        let Ok(op) = ShimOp::arbitrary(u) else { break };
        s.apply(op);
        s.check(StepCtx("step", step, op));
        step += 1;
    }
    // Whatever the script left behind, destroy completes: start or fail the owed thread,
    // begin destroy if nobody did, let the loop thread see it and exit, join, tear down.
    let mut ends = vec![ShimOp::SpawnOk, ShimOp::Destroy, ShimOp::Tick];
    if step % 2 == 1 {
        ends[0] = ShimOp::SpawnFail;
    }
    for (i, op) in ends.into_iter().enumerate() {
        s.apply(op);
        s.check(StepCtx("teardown step", i, op));
    }
    assert!(matches!(s.thread, Thread::None | Thread::Exited));
    s.apply(ShimOp::FinishDestroy);
    s.check(StepCtx("teardown step", 3, ShimOp::FinishDestroy));
    assert_eq!(s.c.state(), State::Destroyed, "destroy did not complete");
    while !s.c.guards.is_empty() {
        s.apply(ShimOp::Leave(0));
    }
    assert_eq!(s.c.l.producers(), 0);
}

impl Shim<'_, '_> {
    fn apply(&mut self, op: ShimOp) {
        let c = &mut *self.c;
        match op {
            ShimOp::Run => {
                if c.call(RawOp::BeginRun) == Res::Unit {
                    assert_eq!(
                        self.thread,
                        Thread::None,
                        "run won while a loop thread exists or is owed"
                    );
                    self.thread = Thread::Starting;
                }
            }
            ShimOp::SpawnOk => {
                if self.thread == Thread::Starting {
                    self.thread = Thread::Alive;
                }
            }
            ShimOp::SpawnFail => {
                if self.thread == Thread::Starting {
                    c.call(RawOp::RunFailed);
                    self.thread = Thread::None;
                }
            }
            ShimOp::Stop => {
                let r = c.call(RawOp::RequestStop);
                assert!(matches!(r, Res::Stop(_)) || c.state() == State::Destroyed);
            }
            ShimOp::StopOnLoop => {
                if self.thread == Thread::Alive {
                    let r = c.call(RawOp::RequestStop);
                    assert!(
                        matches!(r, Res::Stop(_)),
                        "stop from the loop thread: {r:?}"
                    );
                }
            }
            ShimOp::Tick => {
                if self.thread == Thread::Alive && c.call(RawOp::ShouldRun) == Res::Bool(false) {
                    c.call(RawOp::LoopExited);
                    self.thread = Thread::Exited;
                }
            }
            ShimOp::Wait => {
                if matches!(c.call(RawOp::BeginWait(false)), Res::Was(_))
                    && matches!(self.thread, Thread::None | Thread::Exited)
                {
                    self.thread = Thread::None;
                    c.call(RawOp::FinishWait);
                    assert!(
                        !matches!(c.state(), State::Running | State::Stopping | State::Stopped),
                        "wait returned with the loop {:?} and no loop thread",
                        c.state()
                    );
                }
            }
            ShimOp::WaitOnLoop => {
                if self.thread == Thread::Alive {
                    let r = c.call(RawOp::BeginWait(true));
                    assert!(matches!(r, Res::Err(e) if e.on_loop_thread));
                }
            }
            ShimOp::Destroy => {
                if matches!(c.call(RawOp::BeginDestroy(false)), Res::Was(_)) {
                    self.destroying = true;
                }
            }
            ShimOp::DestroyOnLoop => {
                if self.thread == Thread::Alive {
                    let r = c.call(RawOp::BeginDestroy(true));
                    assert!(matches!(r, Res::Err(e) if e.on_loop_thread));
                }
            }
            ShimOp::FinishDestroy => {
                if self.destroying && matches!(self.thread, Thread::None | Thread::Exited) {
                    self.thread = Thread::None;
                    let r = c.call(RawOp::FinishDestroy);
                    assert_eq!(r, Res::Unit, "teardown refused with no loop thread left");
                    self.destroying = false;
                }
            }
            ShimOp::Enter => {
                c.call(RawOp::EnterProducer);
            }
            ShimOp::Leave(i) => {
                c.call(RawOp::LeaveProducer(i));
            }
        }
    }

    fn check(&self, ctx: StepCtx) {
        let state = self.c.state();
        let owed_or_running = matches!(self.thread, Thread::Starting | Thread::Alive);
        assert_eq!(
            self.c.l.is_live(),
            owed_or_running,
            "live bit with loop thread {:?}, loop {state:?}, at {ctx}",
            self.thread
        );
        if matches!(state, State::Running | State::Stopping) {
            assert!(
                owed_or_running,
                "loop {state:?} without a loop thread ({:?}) at {ctx}",
                self.thread
            );
        }
        if state == State::Destroyed {
            assert_eq!(
                self.thread,
                Thread::None,
                "destroyed with a loop thread at {ctx}"
            );
        }
    }
}
