//! Tasks as the shim stores them: one allocation holding the closure, its run/cancel
//! [`Claim`] and its scheduler id.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use reseau_core::{Claim, ClaimOutcome, TaskId, TaskStatus};

use crate::handle::LoopHandle;

const NO_ID: u64 = u64::MAX;

/// The type-erased side of a task cell.
pub(crate) trait Runnable: Send + Sync {
    fn claim(&self) -> &Claim;
    fn id(&self) -> &AtomicU64;
    /// Runs the closure (at most once over the cell's life).
    fn run(&self, handle: &LoopHandle, status: TaskStatus);
}

struct Cell<F> {
    claim: Claim,
    id: AtomicU64,
    f: Mutex<Option<F>>,
}

impl<F> Runnable for Cell<F>
where
    F: FnOnce(&LoopHandle, TaskStatus) + Send + 'static,
{
    fn claim(&self) -> &Claim {
        &self.claim
    }

    fn id(&self) -> &AtomicU64 {
        &self.id
    }

    fn run(&self, handle: &LoopHandle, status: TaskStatus) {
        let f = self.f.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(f) = f {
            f(handle, status);
        }
    }
}

/// A boxed task closure, for code that stores tasks of different types together.
pub type BoxedTask = Box<dyn FnOnce(&LoopHandle, TaskStatus) + Send + 'static>;

/// A task as it travels through the inbox and sits in the scheduler.
pub(crate) type Job = Arc<dyn Runnable>;

pub(crate) fn job<F>(f: F) -> Job
where
    F: FnOnce(&LoopHandle, TaskStatus) + Send + 'static,
{
    Arc::new(Cell {
        claim: Claim::new(),
        id: AtomicU64::new(NO_ID),
        f: Mutex::new(Some(f)),
    })
}

pub(crate) fn set_id(job: &Job, id: TaskId) {
    job.id().store(id.to_bits(), Ordering::Release);
}

pub(crate) fn get_id(job: &Job) -> Option<TaskId> {
    match job.id().load(Ordering::Acquire) {
        NO_ID => None,
        bits => Some(TaskId::from_bits(bits)),
    }
}

/// The status a task taken from a queue because it is due runs with: `RunReady` if this
/// run wins its claim, `Canceled` if a cancel got there first.
pub(crate) fn due_status(job: &Job) -> TaskStatus {
    match job.claim().claim_run() {
        ClaimOutcome::Won => TaskStatus::RunReady,
        _ => TaskStatus::Canceled,
    }
}

/// A handle on a scheduled task, for [`LoopHandle::cancel`].
///
/// Cheap to clone; keeping it does not keep the task's closure alive past its run.
#[derive(Clone)]
pub struct TaskHandle(pub(crate) Job);

impl fmt::Debug for TaskHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskHandle")
            .field("id", &get_id(&self.0))
            .finish()
    }
}

/// A task handed back by a refused schedule, never run.
///
/// Schedule it again as it is with [`LoopHandle::schedule_task`], run it yourself with
/// [`run`](Self::run), or drop it (its closure is dropped unrun).
pub struct Task(pub(crate) Job);

impl Task {
    /// Runs the task now, on this thread, with `status` (typically
    /// [`TaskStatus::Canceled`], so it can release what it holds).
    pub fn run(self, handle: &LoopHandle, status: TaskStatus) {
        self.0.run(handle, status);
    }
}

impl fmt::Debug for Task {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Task(..)")
    }
}
