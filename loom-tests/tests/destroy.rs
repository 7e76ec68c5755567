//! Loom model of destroy against a late schedule: `Lifecycle::enter_producer` and the
//! `Inbox` together. See `loom-tests/README.md`.
#![cfg(loom)]

use loom::sync::Arc;
use loom::thread;
use reseau_core::{Inbox, Lifecycle, Operation, State};
use reseau_loom_tests::harness::{check, cover};

const PRODUCERS: usize = 2;
const PER_PRODUCER: usize = 2;
const TASKS: usize = PRODUCERS * PER_PRODUCER;

/// How the destroyer ends the producers' window.
#[derive(Clone, Copy)]
enum Destroyer {
    /// As the shim must: wait until no producer is inside a schedule call, then drain.
    WaitsForProducers,
    /// Canary: drains at once, without waiting for producers in flight.
    DrainsAtOnce,
}

/// Two producers schedule two tasks each (enter the lifecycle, push into the inbox, leave)
/// while the main thread, after one loop tick that runs what it pops, destroys: begins
/// destroy, waits for in-flight producers, then cancels everything left in the inbox.
/// Every task is run, canceled by the destroyer, or handed back to its producer (whose
/// `enter_producer` failed), exactly once; nothing stays in the inbox.
fn destroy_against_late_schedule(destroyer: Destroyer) {
    let lifecycle = Arc::new(Lifecycle::new());
    let inbox = Arc::new(Inbox::<usize, 4>::new());
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|p| {
            let (lifecycle, inbox) = (lifecycle.clone(), inbox.clone());
            thread::spawn(move || {
                let mut handed_back = Vec::new();
                for i in 0..PER_PRODUCER {
                    let task = p * PER_PRODUCER + i;
                    match lifecycle.enter_producer() {
                        Ok(_inside) => {
                            // The wake signal does not matter here: destroy drains anyway.
                            let _ = inbox.push(task).expect("capacity 4 holds every task");
                        }
                        Err(e) => {
                            assert_eq!(e.op, Operation::Schedule);
                            assert!(matches!(e.state, State::Destroying | State::Destroyed));
                            handed_back.push(task);
                            cover("a schedule was handed back");
                        }
                    }
                }
                handed_back
            })
        })
        .collect();

    let mut fate = [0usize; TASKS];
    // One loop tick before destroy: whatever it pops runs normally. The yield lets loom
    // schedule producers before the tick (see "loom's own limits" in the README).
    thread::yield_now();
    if let Some(task) = inbox.pop() {
        fate[task] += 1;
        cover("a task ran before destroy");
    }
    lifecycle.begin_destroy(false).expect("the only destroy");
    if let Destroyer::WaitsForProducers = destroyer {
        while lifecycle.producers() != 0 {
            cover("destroy waited for a producer in flight");
            thread::yield_now();
        }
    }
    while let Some(task) = inbox.pop() {
        fate[task] += 1; // canceled
        cover("destroy canceled a task");
    }
    lifecycle
        .finish_destroy()
        .expect("no loop thread in this model");

    for p in producers {
        for task in p.join().unwrap() {
            fate[task] += 1;
        }
    }
    let late = inbox.pop();
    assert_eq!(
        late, None,
        "destroy model: task {late:?} queued after destroy drained: lost"
    );
    assert_eq!(
        fate, [1; TASKS],
        "destroy model: a task lost or handled twice"
    );
    assert_eq!(lifecycle.producers(), 0);
}

#[test]
fn destroy_against_late_schedule_cancels_or_hands_back() {
    check("destroy_against_late_schedule", || {
        destroy_against_late_schedule(Destroyer::WaitsForProducers)
    })
    .assert_covered(&[
        "a schedule was handed back",
        "a task ran before destroy",
        "destroy waited for a producer in flight",
        "destroy canceled a task",
    ]);
}

/// Canary (of the model, not of the core): a destroyer that drains without waiting for
/// producers already inside a schedule call misses the task such a producer pushes after
/// the drain.
#[test]
#[should_panic(expected = "lost")]
fn canary_destroy_without_waiting_for_producers_loses_a_task() {
    check("canary_destroy_without_waiting_for_producers", || {
        destroy_against_late_schedule(Destroyer::DrainsAtOnce)
    });
}
