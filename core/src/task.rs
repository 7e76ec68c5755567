//! Task status and task identity.

/// What a task is run with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TaskStatus {
    /// The task is due and runs normally.
    RunReady,
    /// The task was canceled (explicitly, or because its loop is being destroyed); it runs
    /// once with this status so it can release what it holds.
    Canceled,
}

/// Identifies a task in a [`Scheduler`](crate::Scheduler): a slot index and the slot's
/// generation.
///
/// A slot's generation changes every time the slot is freed, so an id kept after its task
/// ran or was canceled is *stale*: every operation given a stale or unknown id is a no-op,
/// never an operation on whichever task reuses the slot. Generations wrap after 2^32 reuses
/// of one slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TaskId {
    pub(crate) slot: u32,
    pub(crate) generation: u32,
}

impl TaskId {
    /// Packs the id into 64 bits (slot in the high half), e.g. to keep it in an atomic.
    pub const fn to_bits(self) -> u64 {
        ((self.slot as u64) << 32) | self.generation as u64
    }

    /// Unpacks an id made by [`to_bits`](Self::to_bits). Any value is accepted: a value that
    /// names no live task is simply unknown to the scheduler.
    pub const fn from_bits(bits: u64) -> Self {
        Self {
            slot: (bits >> 32) as u32,
            generation: bits as u32,
        }
    }
}
