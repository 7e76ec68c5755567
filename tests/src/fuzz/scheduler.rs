//! Fuzz target `scheduler`: [`Scheduler`] against a plain reference model.
//!
//! The script is a sequence of [`Op`]s: `schedule_now`, `schedule_at` (past, present,
//! future and `u64::MAX` deadlines), `cancel` (ids that are live, stale, or were never
//! issued), clock advances, `run_due`, a batch abandoned half way (`begin` + a few
//! `pop_due`), `pop_any` and `cancel_all`, at capacity [`N`]. Every task carries an
//! [`Action`] it performs when it runs (or is canceled): schedule another task, or cancel
//! one, on the same scheduler, so batches are modified while they run.
//!
//! The first byte picks how the scheduler is built: [`Scheduler::new`] or, in a
//! `Box::new_uninit()`, [`Scheduler::init_in`] (checked under AddressSanitizer by the
//! campaigns).
//!
//! After every operation the real scheduler and the [`Model`] must have produced the same
//! log of events (which task ran, with which status, in which order, and which schedule
//! was refused as full with the task handed back), the same length, the same next
//! deadline, and agree on which issued id is still live. Independently of the model: ids
//! are never reused, no task runs before its deadline, and at the end (after a final
//! `cancel_all`) every task ever created has run exactly once or was refused exactly once.

use std::collections::{HashMap, HashSet};

use arbitrary::{Arbitrary, Unstructured};
use reseau_core::{Full, Scheduler, TaskId, TaskStatus};

/// The capacity under test: small, so that `Full` is common.
pub const N: usize = 8;

/// When a task is due, relative to the clock at the moment it is scheduled.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum When {
    /// That many ticks ago (saturating at 0).
    Past(u8),
    /// Exactly now.
    Now,
    /// That many ticks ahead (saturating at `u64::MAX`).
    Ahead(u16),
    /// `u64::MAX`, reachable only by [`Op::AdvanceToEnd`].
    Max,
}

impl When {
    fn at(self, now: u64) -> u64 {
        match self {
            When::Past(d) => now.saturating_sub(u64::from(d)),
            When::Now => now,
            When::Ahead(d) => now.saturating_add(u64::from(d)),
            When::Max => u64::MAX,
        }
    }
}

/// Names a task id to cancel.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum IdRef {
    /// The id returned by the `i % count`-th successful schedule (live or stale).
    Issued(u8),
    /// An id never issued: a slot (possibly in range) with a generation no slot reaches
    /// in a run of this size (high bit set).
    Unknown(u8, u32),
}

/// What a task does when it runs or is canceled.
#[derive(Arbitrary, Debug, Clone)]
pub enum Action {
    /// Nothing.
    Nothing,
    /// Schedules a new task, ASAP, that will perform the inner action.
    ScheduleNow(Box<Action>),
    /// Schedules a new timed task that will perform the inner action.
    ScheduleAt(When, Box<Action>),
    /// Cancels a task (the canceled task runs at once with `Canceled`).
    Cancel(IdRef),
}

/// One step of the script.
#[derive(Arbitrary, Debug)]
pub enum Op {
    /// `schedule_now` of a new task.
    ScheduleNow(Action),
    /// `schedule_at` of a new task.
    ScheduleAt(When, Action),
    /// `cancel`; a canceled task runs with `Canceled`.
    Cancel(IdRef),
    /// The clock moves forward.
    Advance(u16),
    /// The clock jumps to `u64::MAX`.
    AdvanceToEnd,
    /// `run_due(now)`.
    RunDue,
    /// `begin(now)` and at most that many `pop_due`; the rest of the batch is abandoned.
    PartialBatch(u8),
    /// `pop_any`; the popped task runs with `Canceled`.
    PopAny,
    /// `cancel_all`.
    CancelAll,
}

/// What the log records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The task of that name ran with that status.
    Ran(u32, TaskStatus),
    /// Scheduling the task of that name failed with `Full`, and the task came back.
    Refused(u32),
}

/// Decodes `data` into a script and checks [`Scheduler`] against the [`Model`].
///
/// # Panics
/// On the first divergence or violated invariant.
pub fn run(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let in_place = u.arbitrary::<u8>().unwrap_or(0) % 2 == 1;
    let mut real = Real {
        s: new_scheduler(in_place),
        cx: Ctx::default(),
    };
    let mut model = Model::default();
    let mut step = 0usize;
    let mut checked = 0usize;
    while !u.is_empty() {
        let Ok(op) = Op::arbitrary(&mut u) else { break };
        real.apply(&op);
        model.apply(&op);
        check(&real, &model, &mut checked, step, &op);
        step += 1;
    }
    // Teardown: whatever is left is canceled, like a loop's destroy.
    let last = Op::CancelAll;
    real.apply(&last);
    model.apply(&last);
    check(&real, &model, &mut checked, step, &last);
    assert!(real.s.is_empty(), "cancel_all left tasks behind");
    for &id in &real.cx.ids {
        assert!(!real.s.contains(id), "{id:?} still live after cancel_all");
    }

    // Every task ever created ended exactly once: ran (with either status) or was refused.
    let mut ends = vec![0u32; real.cx.next_name as usize];
    for e in &real.cx.log {
        let (Event::Ran(n, _) | Event::Refused(n)) = *e;
        ends[n as usize] += 1;
    }
    for (name, &count) in ends.iter().enumerate() {
        assert_eq!(count, 1, "task {name} ended {count} times");
    }
}

/// Compares the real scheduler with the model after a step; `checked` is how much of the
/// event logs earlier steps compared already.
fn check(real: &Real, model: &Model, checked: &mut usize, step: usize, op: &Op) {
    let ctx = || format!("after step {step} ({op:?})");
    let from = (*checked).min(model.log.len());
    assert_eq!(
        real.cx.log[from..],
        model.log[from..],
        "event logs differ {}",
        ctx()
    );
    *checked = real.cx.log.len();
    assert_eq!(real.s.len(), model.len(), "len differs {}", ctx());
    assert_eq!(real.s.is_empty(), model.len() == 0, "is_empty {}", ctx());
    assert_eq!(
        real.s.next_deadline(),
        model.next_deadline(),
        "next_deadline differs {}",
        ctx()
    );
    assert_eq!(real.cx.ids.len(), model.ids.len(), "issued ids {}", ctx());
    // The ids issued lately (a stale id stays stale; `run` checks every id at the end).
    let recent = real.cx.ids.len().saturating_sub(4 * N);
    for (&id, &name) in real.cx.ids[recent..].iter().zip(&model.ids[recent..]) {
        assert_eq!(
            real.s.contains(id),
            model.contains(name),
            "contains({id:?}) (task {name}) {}",
            ctx()
        );
    }
}

// ---- the real scheduler ----

#[derive(Debug)]
struct Task {
    name: u32,
    action: Action,
}

struct Real {
    s: Box<Scheduler<Task, N>>,
    cx: Ctx,
}

fn new_scheduler(in_place: bool) -> Box<Scheduler<Task, N>> {
    if !in_place {
        return Box::new(Scheduler::new());
    }
    let mut place = Box::<Scheduler<Task, N>>::new_uninit();
    Scheduler::init_in(&mut place);
    // SAFETY: `init_in` initialized the whole value.
    unsafe { place.assume_init() }
}

/// Everything a running task can reach besides the scheduler itself.
#[derive(Default)]
struct Ctx {
    now: u64,
    next_name: u32,
    ids: Vec<TaskId>,
    issued: HashSet<TaskId>,
    deadlines: HashMap<u32, u64>,
    log: Vec<Event>,
}

impl Real {
    fn apply(&mut self, op: &Op) {
        let (s, cx) = (&mut *self.s, &mut self.cx);
        match op {
            Op::ScheduleNow(a) => cx.schedule(s, None, a.clone()),
            Op::ScheduleAt(w, a) => cx.schedule(s, Some(w.at(cx.now)), a.clone()),
            Op::Cancel(r) => cx.cancel(s, *r),
            Op::Advance(d) => cx.now = cx.now.saturating_add(u64::from(*d)),
            Op::AdvanceToEnd => cx.now = u64::MAX,
            Op::RunDue => {
                let now = cx.now;
                let before = cx.log.len();
                let ran = s.run_due(now, |s, task, status| cx.exec(s, task, status));
                let top = cx.log[before..]
                    .iter()
                    .filter(|e| matches!(e, Event::Ran(_, TaskStatus::RunReady)))
                    .count();
                assert_eq!(ran, top, "run_due's count is not the tasks it ran");
            }
            Op::PartialBatch(k) => {
                let batch = s.begin(cx.now);
                for _ in 0..*k {
                    let Some(task) = s.pop_due(&batch) else { break };
                    cx.exec(s, task, TaskStatus::RunReady);
                }
            }
            Op::PopAny => {
                if let Some(task) = s.pop_any() {
                    cx.exec(s, task, TaskStatus::Canceled);
                }
            }
            Op::CancelAll => {
                let before = cx.log.len();
                let n = s.cancel_all(|s, task, status| cx.exec(s, task, status));
                assert!(n <= cx.log.len() - before, "cancel_all's count");
            }
        }
    }
}

impl Ctx {
    fn exec(&mut self, s: &mut Scheduler<Task, N>, task: Task, status: TaskStatus) {
        if status == TaskStatus::RunReady {
            let due = self.deadlines.get(&task.name).copied().unwrap_or(0);
            assert!(
                due <= self.now,
                "task {} ran at {} before its deadline {due}",
                task.name,
                self.now
            );
        }
        self.log.push(Event::Ran(task.name, status));
        match task.action {
            Action::Nothing => {}
            Action::ScheduleNow(a) => self.schedule(s, None, *a),
            Action::ScheduleAt(w, a) => self.schedule(s, Some(w.at(self.now)), *a),
            Action::Cancel(r) => self.cancel(s, r),
        }
    }

    fn schedule(&mut self, s: &mut Scheduler<Task, N>, deadline: Option<u64>, action: Action) {
        let name = self.next_name;
        self.next_name += 1;
        let task = Task { name, action };
        let result = match deadline {
            None => s.schedule_now(task),
            Some(d) => s.schedule_at(task, d),
        };
        match result {
            Ok(id) => {
                assert!(self.issued.insert(id), "id {id:?} issued twice");
                assert_eq!(TaskId::from_bits(id.to_bits()), id, "id bits round trip");
                self.ids.push(id);
                if let Some(d) = deadline {
                    self.deadlines.insert(name, d);
                }
            }
            Err(Full(back)) => {
                assert_eq!(back.name, name, "Full handed back another task");
                self.log.push(Event::Refused(name));
            }
        }
    }

    fn cancel(&mut self, s: &mut Scheduler<Task, N>, r: IdRef) {
        let id = match r {
            IdRef::Issued(i) if !self.ids.is_empty() => self.ids[i as usize % self.ids.len()],
            IdRef::Issued(_) => TaskId::from_bits(u64::MAX),
            IdRef::Unknown(slot, generation) => {
                TaskId::from_bits((u64::from(slot) << 32) | u64::from(generation | 1 << 31))
            }
        };
        if let Some(task) = s.cancel(id) {
            assert!(!s.contains(id), "a canceled id is still live");
            self.exec(s, task, TaskStatus::Canceled);
        }
    }
}

// ---- the reference model ----

#[derive(Debug)]
struct MTask {
    name: u32,
    action: Action,
    /// Submission order, the tie-break between equal deadlines.
    sub: u64,
    deadline: u64,
}

/// The reference scheduler, written for clarity rather than speed: a `Vec` of tasks to
/// run now (in order) and an unsorted `Vec` of timed tasks.
#[derive(Debug, Default)]
pub struct Model {
    now: u64,
    next_name: u32,
    next_sub: u64,
    /// Names of the tasks successfully scheduled, in order (the model's "ids").
    ids: Vec<u32>,
    ready: Vec<MTask>,
    timed: Vec<MTask>,
    log: Vec<Event>,
}

impl Model {
    fn len(&self) -> usize {
        self.ready.len() + self.timed.len()
    }

    fn contains(&self, name: u32) -> bool {
        self.ready.iter().chain(&self.timed).any(|t| t.name == name)
    }

    fn next_deadline(&self) -> Option<u64> {
        if !self.ready.is_empty() {
            return Some(0);
        }
        self.timed.iter().map(|t| t.deadline).min()
    }

    /// Index of the earliest timed task: smallest deadline, then earliest submission.
    fn earliest_timed(&self) -> Option<usize> {
        (0..self.timed.len()).min_by_key(|&i| (self.timed[i].deadline, self.timed[i].sub))
    }

    /// Moves the due timed tasks, earliest first, behind the ready ones, and returns the
    /// names making up the batch: everything ready at this moment.
    fn begin(&mut self) -> Vec<u32> {
        while let Some(i) = self.earliest_timed() {
            if self.timed[i].deadline > self.now {
                break;
            }
            let t = self.timed.remove(i);
            self.ready.push(t);
        }
        self.ready.iter().map(|t| t.name).collect()
    }

    /// The front ready task, if it belongs to `batch` (tasks scheduled during the batch
    /// are behind every batch member).
    fn pop_due(&mut self, batch: &[u32]) -> Option<MTask> {
        let front = self.ready.first()?;
        batch.contains(&front.name).then(|| self.ready.remove(0))
    }

    fn pop_any(&mut self) -> Option<MTask> {
        if !self.ready.is_empty() {
            return Some(self.ready.remove(0));
        }
        let i = self.earliest_timed()?;
        Some(self.timed.remove(i))
    }

    fn apply(&mut self, op: &Op) {
        match op {
            Op::ScheduleNow(a) => self.schedule(None, a.clone()),
            Op::ScheduleAt(w, a) => self.schedule(Some(w.at(self.now)), a.clone()),
            Op::Cancel(r) => self.cancel(*r),
            Op::Advance(d) => self.now = self.now.saturating_add(u64::from(*d)),
            Op::AdvanceToEnd => self.now = u64::MAX,
            Op::RunDue => {
                let batch = self.begin();
                while let Some(t) = self.pop_due(&batch) {
                    self.exec(t, TaskStatus::RunReady);
                }
            }
            Op::PartialBatch(k) => {
                let batch = self.begin();
                for _ in 0..*k {
                    let Some(t) = self.pop_due(&batch) else { break };
                    self.exec(t, TaskStatus::RunReady);
                }
            }
            Op::PopAny => {
                if let Some(t) = self.pop_any() {
                    self.exec(t, TaskStatus::Canceled);
                }
            }
            Op::CancelAll => {
                while let Some(t) = self.pop_any() {
                    self.exec(t, TaskStatus::Canceled);
                }
            }
        }
    }

    fn exec(&mut self, t: MTask, status: TaskStatus) {
        self.log.push(Event::Ran(t.name, status));
        match t.action {
            Action::Nothing => {}
            Action::ScheduleNow(a) => self.schedule(None, *a),
            Action::ScheduleAt(w, a) => self.schedule(Some(w.at(self.now)), *a),
            Action::Cancel(r) => self.cancel(r),
        }
    }

    fn schedule(&mut self, deadline: Option<u64>, action: Action) {
        let name = self.next_name;
        self.next_name += 1;
        if self.len() == N {
            self.log.push(Event::Refused(name));
            return;
        }
        let t = MTask {
            name,
            action,
            sub: self.next_sub,
            deadline: deadline.unwrap_or(0),
        };
        self.next_sub += 1;
        self.ids.push(name);
        match deadline {
            None => self.ready.push(t),
            Some(_) => self.timed.push(t),
        }
    }

    fn cancel(&mut self, r: IdRef) {
        let name = match r {
            IdRef::Issued(i) if !self.ids.is_empty() => self.ids[i as usize % self.ids.len()],
            _ => return,
        };
        let t = if let Some(i) = self.ready.iter().position(|t| t.name == name) {
            self.ready.remove(i)
        } else if let Some(i) = self.timed.iter().position(|t| t.name == name) {
            self.timed.remove(i)
        } else {
            return;
        };
        self.exec(t, TaskStatus::Canceled);
    }
}
