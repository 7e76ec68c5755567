//! A one-shot decision between running and canceling a task.

use crate::sync::{AtomicU8, Ordering};

const PENDING: u8 = 0;
const RUN: u8 = 1;
const CANCELED: u8 = 2;

/// Decides, exactly once, whether a task runs with `RunReady` or `Canceled`.
///
/// The loop thread calls [`claim_run`](Self::claim_run) when the task is due; a canceler on
/// any thread calls [`claim_cancel`](Self::claim_cancel). Whichever comes first wins; the
/// other learns it lost. This is how a cross-thread cancel races a run and the task still
/// runs exactly once, never both, never neither.
#[derive(Debug)]
pub struct Claim(AtomicU8);

/// The result of a claim attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimOutcome {
    /// This caller won: the task is now decided by this caller.
    Won,
    /// The task had already been claimed to run.
    AlreadyRun,
    /// The task had already been claimed for cancellation.
    AlreadyCanceled,
}

impl Default for Claim {
    fn default() -> Self {
        Self::new()
    }
}

impl Claim {
    /// A task not yet decided.
    #[cfg(not(loom))]
    pub const fn new() -> Self {
        Self(AtomicU8::new(PENDING))
    }

    /// A task not yet decided.
    #[cfg(loom)]
    pub fn new() -> Self {
        Self(AtomicU8::new(PENDING))
    }

    fn claim(&self, to: u8) -> ClaimOutcome {
        match self
            .0
            .compare_exchange(PENDING, to, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => ClaimOutcome::Won,
            Err(RUN) => ClaimOutcome::AlreadyRun,
            Err(_) => ClaimOutcome::AlreadyCanceled,
        }
    }

    /// Claims the task for running with `RunReady`.
    pub fn claim_run(&self) -> ClaimOutcome {
        self.claim(RUN)
    }

    /// Claims the task for cancellation.
    pub fn claim_cancel(&self) -> ClaimOutcome {
        self.claim(CANCELED)
    }

    /// Whether a cancel has won the claim.
    pub fn is_canceled(&self) -> bool {
        self.0.load(Ordering::Acquire) == CANCELED
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn first_claim_wins_and_the_second_learns_which() {
        let c = Claim::new();
        assert_eq!(c.claim_run(), ClaimOutcome::Won);
        assert_eq!(c.claim_cancel(), ClaimOutcome::AlreadyRun);
        assert_eq!(c.claim_run(), ClaimOutcome::AlreadyRun);
        let c = Claim::new();
        assert_eq!(c.claim_cancel(), ClaimOutcome::Won);
        assert!(c.is_canceled());
        assert_eq!(c.claim_run(), ClaimOutcome::AlreadyCanceled);
    }
}
