//! Tasks as the shim stores them: a closure inline in its engine slot (boxed only when it
//! is larger than [`INLINE_BYTES`](reseau_core::INLINE_BYTES)), and the plain-data handle
//! that names it.

use std::fmt;

use reseau_core::{Runnable, SmallTask, TaskRef, TaskStatus};

use crate::handle::LoopHandle;

/// A boxed task closure, for code that stores tasks of different types together.
pub type BoxedTask = Box<dyn FnOnce(&LoopHandle, TaskStatus) + Send + 'static>;

/// The payload of an engine slot.
pub(crate) type Payload = SmallTask<LoopHandle>;

/// Stores `f` inline when it fits (no allocation), boxed otherwise.
pub(crate) fn payload<F>(f: F) -> Payload
where
    F: FnOnce(&LoopHandle, TaskStatus) + Send + 'static,
{
    match SmallTask::new(f) {
        Ok(task) => task,
        Err(f) => {
            let boxed = Box::new(f);
            SmallTask::new(move |h: &LoopHandle, status| boxed(h, status))
                .unwrap_or_else(|_| unreachable!("a closure holding one Box fits inline"))
        }
    }
}

/// A handle on a scheduled task, for [`LoopHandle::cancel`].
///
/// Plain data (`Copy`): the loop's identity, the task's slot and the slot's generation. It
/// keeps nothing alive; used on another loop, or after its task ran or was canceled, it
/// names no task and `cancel` is a no-op.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TaskHandle(pub(crate) TaskRef);

impl fmt::Debug for TaskHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskHandle")
            .field("loop", &self.0.loop_id())
            .field("slot", &self.0.slot())
            .field("generation", &self.0.generation())
            .finish()
    }
}

/// A task handed back by a refused schedule, never run.
///
/// Schedule it again as it is with [`LoopHandle::schedule_task`], run it yourself with
/// [`run`](Self::run), or drop it (its closure is dropped unrun).
pub struct Task(pub(crate) Payload);

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
