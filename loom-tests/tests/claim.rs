//! Loom model of `reseau_core::Claim`: a cross-thread cancel against the loop thread
//! running the task. See `loom-tests/README.md`.
#![cfg(loom)]

use loom::sync::Arc;
use loom::sync::atomic::{AtomicUsize, Ordering};
use loom::thread;
use reseau_core::{Claim, ClaimOutcome, TaskStatus};
use reseau_loom_tests::harness::{check, cover};

/// The task: counts how often it ran with each status.
#[derive(Default)]
struct Task {
    claim: Claim,
    run_ready: AtomicUsize,
    canceled: AtomicUsize,
}

impl Task {
    fn run(&self, status: TaskStatus) {
        let counter = match status {
            TaskStatus::RunReady => &self.run_ready,
            TaskStatus::Canceled => &self.canceled,
        };
        counter.fetch_add(1, Ordering::AcqRel);
    }
}

/// The loop thread claims the task to run it while `cancelers` other threads (the main
/// thread among them) claim it to cancel it. Exactly one claim wins; the task runs exactly
/// once, with `RunReady` if the loop won and `Canceled` if a canceler did; every loser
/// learns who won.
fn cancel_against_run(cancelers: usize) {
    let task = Arc::new(Task::default());
    let loop_thread = {
        let task = task.clone();
        thread::spawn(move || {
            let outcome = task.claim.claim_run();
            if outcome == ClaimOutcome::Won {
                task.run(TaskStatus::RunReady);
            }
            outcome
        })
    };
    let others: Vec<_> = (1..cancelers)
        .map(|_| {
            let task = task.clone();
            thread::spawn(move || {
                let outcome = task.claim.claim_cancel();
                if outcome == ClaimOutcome::Won {
                    task.run(TaskStatus::Canceled);
                }
                outcome
            })
        })
        .collect();
    let mine = task.claim.claim_cancel();
    if mine == ClaimOutcome::Won {
        task.run(TaskStatus::Canceled);
    }
    let looped = loop_thread.join().unwrap();
    let mut cancels: Vec<_> = others.into_iter().map(|h| h.join().unwrap()).collect();
    cancels.push(mine);

    let ran = task.run_ready.load(Ordering::Acquire);
    let canceled = task.canceled.load(Ordering::Acquire);
    assert_eq!(
        ran + canceled,
        1,
        "claim model: ran {ran} times, canceled {canceled} times"
    );
    let winners = cancels.iter().filter(|&&o| o == ClaimOutcome::Won).count()
        + usize::from(looped == ClaimOutcome::Won);
    assert_eq!(winners, 1, "claim model: {winners} winners");
    if looped == ClaimOutcome::Won {
        cover("the loop won");
        assert_eq!(ran, 1);
        assert!(cancels.iter().all(|&o| o == ClaimOutcome::AlreadyRun));
        assert!(!task.claim.is_canceled());
    } else {
        cover("a cancel won");
        assert_eq!(looped, ClaimOutcome::AlreadyCanceled);
        assert_eq!(canceled, 1);
        assert!(
            cancels
                .iter()
                .all(|&o| matches!(o, ClaimOutcome::Won | ClaimOutcome::AlreadyCanceled))
        );
        assert!(task.claim.is_canceled());
    }
}

#[test]
fn cancel_against_run_one_canceler() {
    check("cancel_against_run_one_canceler", || cancel_against_run(1))
        .assert_covered(&["the loop won", "a cancel won"]);
}

#[test]
fn cancel_against_run_two_cancelers() {
    check("cancel_against_run_two_cancelers", || cancel_against_run(2))
        .assert_covered(&["the loop won", "a cancel won"]);
}
