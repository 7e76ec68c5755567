//! reseau-core: the part of the reseau event loop that needs no operating system.
//!
//! `#![no_std]`, no allocator: every structure here has a capacity fixed by a const
//! generic, never allocates, and hands an item back (`Full(item)`) instead of dropping it
//! when it is full. The Linux shim (`reseau-linux`) builds its event loop from these pieces;
//! an embedded user can use them directly with plain function pointers or enums as tasks.
//!
//! - [`Scheduler`]: the loop thread's task queue: ASAP FIFO plus timed tasks ordered by
//!   (deadline, submission sequence); O(log N) schedule, cancel and pop.
//! - [`Inbox`]: the bounded multi-producer queue that carries work from other threads to
//!   the loop, with the wake protocol that tells a producer when it must wake the loop.
//! - [`Lifecycle`]: the loop's state machine (run, stop, wait, destroy) in one atomic word.
//! - [`Claim`]: a one-shot atomic that decides whether a task runs or is canceled.
//! - [`sync`]: the facade through which all concurrent code reaches its atomics, so that
//!   `--cfg loom` model-checks every one of them.
#![no_std]
#![deny(unsafe_op_in_unsafe_fn)]

#[cfg(any(test, loom))]
extern crate std;

mod claim;
pub mod engine;
mod full;
pub mod inbox;
pub mod lifecycle;
pub mod platform;
mod ring;
pub mod scheduler;
mod small_task;
pub mod sync;
mod task;

pub use claim::{Claim, ClaimOutcome};
pub use engine::{
    CapacityError, DestroyError, DriveError, Engine, MAX_CAPACITY, Refused, RefusedKind, Slot,
    StartError, TaskRef, When,
};
pub use full::Full;
pub use inbox::{Inbox, Wake};
pub use lifecycle::{Lifecycle, LifecycleError, Operation, ProducerGuard, State, StopOutcome};
pub use platform::Platform;
pub use scheduler::{Batch, Scheduler};
pub use small_task::{INLINE_BYTES, Runnable, SmallTask};
pub use task::{TaskId, TaskStatus};
