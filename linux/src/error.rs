//! Errors: values with context (operation, state, errno), and the task handed back.

use std::fmt;

use reseau_core::LifecycleError;

use crate::sys::SysError;
use crate::task::Task;

/// An error of the event loop.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// A syscall failed; names the call and the errno.
    Sys(SysError),
    /// The operation is not legal in the loop's current state (names both), or was called
    /// from a thread where it would deadlock.
    InvalidState(LifecycleError),
    /// A thread (the loop thread, or a group's shutdown thread) could not be spawned; the
    /// error from the standard library, with its errno (`EAGAIN`, `ENOMEM`).
    Spawn(std::io::Error),
    /// An option is out of range.
    InvalidOption(&'static str),
    /// An unsubscribe was refused.
    Unsubscribe(crate::io::UnsubscribeError),
    /// Destroy gave up waiting for the loop thread to exit (a task is still running); no
    /// descriptor was closed: the loop thread keeps them, cancels what remains and closes
    /// them itself when it exits.
    LoopThreadAlive,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Sys(e) => e.fmt(f),
            Error::InvalidState(e) => e.fmt(f),
            Error::Spawn(e) => write!(f, "spawning a thread failed: {e}"),
            Error::InvalidOption(what) => write!(f, "invalid option: {what}"),
            Error::Unsubscribe(e) => e.fmt(f),
            Error::LoopThreadAlive => f.write_str(
                "destroy: the loop thread is still alive after the teardown timeout; nothing was closed",
            ),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Sys(e) => Some(e),
            Error::InvalidState(e) => Some(e),
            Error::Unsubscribe(e) => Some(e),
            Error::Spawn(e) => Some(e),
            _ => None,
        }
    }
}

impl From<SysError> for Error {
    fn from(e: SysError) -> Self {
        Error::Sys(e)
    }
}

impl From<LifecycleError> for Error {
    fn from(e: LifecycleError) -> Self {
        Error::InvalidState(e)
    }
}

/// When a task is to run: what [`LoopHandle::schedule_task`] takes, and what a
/// [`ScheduleError`] records of the refused call.
///
/// [`LoopHandle::schedule_task`]: crate::LoopHandle::schedule_task
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    /// As soon as possible, as [`LoopHandle::schedule_now`](crate::LoopHandle::schedule_now).
    Now,
    /// As soon as possible, always through the inbox, as
    /// [`LoopHandle::schedule_now_serialized`](crate::LoopHandle::schedule_now_serialized).
    NowSerialized,
    /// At a deadline of the loop's clock, as
    /// [`LoopHandle::schedule_at`](crate::LoopHandle::schedule_at).
    At(u64),
}

/// Why a schedule was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScheduleErrorKind {
    /// The loop already holds its capacity of pending tasks.
    Full {
        /// The loop's capacity.
        capacity: usize,
    },
    /// Destroy has begun (or finished); the lifecycle error names the state.
    Destroyed(LifecycleError),
}

/// A refused schedule: why, how the task was to run, and the task itself, handed back
/// untouched.
///
/// To retry, give the same task back with [`LoopHandle::schedule_task`]
/// (`h.schedule_task(e.task, e.when)`): the task is resubmitted as it is, not wrapped in a
/// new closure, so a retry loop costs no allocation and no stack depth.
///
/// [`LoopHandle::schedule_task`]: crate::LoopHandle::schedule_task
pub struct ScheduleError {
    /// Why the schedule was refused.
    pub kind: ScheduleErrorKind,
    /// How the refused call asked the task to run.
    pub when: When,
    /// The task, never run: run it canceled, schedule it again, or drop it.
    pub task: Task,
}

impl ScheduleError {
    /// The task that was refused.
    pub fn into_task(self) -> Task {
        self.task
    }
}

impl fmt::Debug for ScheduleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScheduleError")
            .field("kind", &self.kind)
            .field("when", &self.when)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for ScheduleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            ScheduleErrorKind::Full { capacity } => write!(
                f,
                "schedule refused: the loop already holds {capacity} pending tasks; the task is handed back"
            ),
            ScheduleErrorKind::Destroyed(e) => {
                write!(f, "schedule refused ({e}); the task is handed back")
            }
        }
    }
}

impl std::error::Error for ScheduleError {}
