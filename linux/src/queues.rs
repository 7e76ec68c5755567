//! The core's fixed-capacity structures at a capacity chosen at run time.
//!
//! reseau-core sizes its `Scheduler` and `Inbox` with const generics; the shim offers a
//! handful of sizes (powers of two from 64 to 65536) behind two small object-safe traits,
//! and boxes the chosen pair once per loop. Nothing grows afterwards.

use std::mem::MaybeUninit;

use reseau_core::{Batch, Full, Inbox, Scheduler, TaskId, Wake};

use crate::task::Job;

/// A message from any thread to the loop thread.
pub(crate) enum Msg {
    /// Run as soon as possible.
    Now(Job),
    /// Run at the deadline (clock nanoseconds).
    At(Job, u64),
    /// The task's cancel claim was won by another thread: take it out and run it canceled.
    Cancel(Job),
}

pub(crate) trait TaskQueue: Send {
    fn schedule_now(&mut self, job: Job) -> Result<TaskId, Full<Job>>;
    fn schedule_at(&mut self, job: Job, deadline: u64) -> Result<TaskId, Full<Job>>;
    fn cancel(&mut self, id: TaskId) -> Option<Job>;
    fn next_deadline(&self) -> Option<u64>;
    fn begin(&mut self, now: u64) -> Batch;
    fn pop_due(&mut self, batch: &Batch) -> Option<Job>;
    fn pop_any(&mut self) -> Option<Job>;
}

pub(crate) trait MsgQueue: Send + Sync {
    fn push(&self, msg: Msg) -> Result<Wake, Full<Msg>>;
    fn pop(&self) -> Option<Msg>;
    fn prepare_park(&self) -> bool;
    fn is_empty(&self) -> bool;
}

impl<const N: usize> TaskQueue for Scheduler<Job, N> {
    fn schedule_now(&mut self, job: Job) -> Result<TaskId, Full<Job>> {
        Scheduler::schedule_now(self, job)
    }
    fn schedule_at(&mut self, job: Job, deadline: u64) -> Result<TaskId, Full<Job>> {
        Scheduler::schedule_at(self, job, deadline)
    }
    fn cancel(&mut self, id: TaskId) -> Option<Job> {
        Scheduler::cancel(self, id)
    }
    fn next_deadline(&self) -> Option<u64> {
        Scheduler::next_deadline(self)
    }
    fn begin(&mut self, now: u64) -> Batch {
        Scheduler::begin(self, now)
    }
    fn pop_due(&mut self, batch: &Batch) -> Option<Job> {
        Scheduler::pop_due(self, batch)
    }
    fn pop_any(&mut self) -> Option<Job> {
        Scheduler::pop_any(self)
    }
}

impl<const N: usize> MsgQueue for Inbox<Msg, N> {
    fn push(&self, msg: Msg) -> Result<Wake, Full<Msg>> {
        Inbox::push(self, msg)
    }
    fn pop(&self) -> Option<Msg> {
        Inbox::pop(self)
    }
    fn prepare_park(&self) -> bool {
        Inbox::prepare_park(self)
    }
    fn is_empty(&self) -> bool {
        Inbox::is_empty(self)
    }
}

/// The capacities offered, smallest first.
pub const CAPACITIES: [usize; 6] = [64, 256, 1024, 4096, 16384, 65536];

/// Boxes a value built in place by `init`, with no full-size temporary on the stack (a
/// 65536-slot scheduler is megabytes: far more than a thread's stack in a debug build).
fn boxed<S>(init: impl FnOnce(&mut MaybeUninit<S>) -> &mut S) -> Box<S> {
    let mut place = Box::<S>::new_uninit();
    init(&mut place);
    // SAFETY: the core's `init_in` functions initialize every field of the value they are
    // given before returning a reference to it, so `*place` is initialized.
    unsafe { place.assume_init() }
}

/// A loop's scheduler, its inbox, and their capacity.
pub(crate) type Queues = (Box<dyn TaskQueue>, Box<dyn MsgQueue>, usize);

/// Builds a scheduler and an inbox of the smallest offered capacity ≥ `wanted`; `None` if
/// `wanted` exceeds the largest.
pub(crate) fn make(wanted: usize) -> Option<Queues> {
    fn pair<const N: usize>() -> Queues {
        (
            boxed(Scheduler::<Job, N>::init_in),
            boxed(Inbox::<Msg, N>::init_in),
            N,
        )
    }
    Some(match CAPACITIES.iter().find(|&&c| c >= wanted.max(1))? {
        64 => pair::<64>(),
        256 => pair::<256>(),
        1024 => pair::<1024>(),
        4096 => pair::<4096>(),
        16384 => pair::<16384>(),
        _ => pair::<65536>(),
    })
}
