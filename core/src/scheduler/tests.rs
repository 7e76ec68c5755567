//! The aws-c-common task-scheduler behaviours, by name, plus reseau's own guarantees.

use super::*;
use std::vec::Vec;

/// What a test task does when it runs.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Action {
    Nothing,
    ScheduleNow(u32),
    ScheduleAt(u32, u64),
    Cancel(TaskId),
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Task {
    name: u32,
    action: Action,
}

fn t(name: u32) -> Task {
    Task {
        name,
        action: Action::Nothing,
    }
}

type Log = Vec<(u32, TaskStatus)>;

/// Runs `task` with `status`, recording it and performing its action.
fn exec<const N: usize>(s: &mut Scheduler<Task, N>, task: Task, status: TaskStatus, log: &mut Log) {
    log.push((task.name, status));
    // A canceled task still performs its action: that is how tasks scheduled by canceled
    // tasks come to exist.
    match task.action {
        Action::Nothing => {}
        Action::ScheduleNow(n) => {
            s.schedule_now(t(n)).unwrap();
        }
        Action::ScheduleAt(n, d) => {
            s.schedule_at(t(n), d).unwrap();
        }
        Action::Cancel(id) => {
            if let Some(victim) = s.cancel(id) {
                exec(s, victim, TaskStatus::Canceled, log);
            }
        }
    }
}

fn run<const N: usize>(s: &mut Scheduler<Task, N>, now: u64) -> Log {
    let mut log = Log::new();
    s.run_due(now, |s, task, st| exec(s, task, st, &mut log));
    log
}

fn cancel_all<const N: usize>(s: &mut Scheduler<Task, N>) -> Log {
    let mut log = Log::new();
    s.cancel_all(|s, task, st| exec(s, task, st, &mut log));
    log
}

use TaskStatus::{Canceled, RunReady};

#[test]
fn scheduler_ordering() {
    let mut s = Scheduler::<Task, 8>::new();
    s.schedule_at(t(2), 250).unwrap();
    s.schedule_now(t(1)).unwrap();
    s.schedule_at(t(3), 500).unwrap();
    assert_eq!(run(&mut s, 250), [(1, RunReady), (2, RunReady)]);
    assert_eq!(s.next_deadline(), Some(500));
    assert_eq!(run(&mut s, 500), [(3, RunReady)]);
    assert!(s.is_empty());
}

#[test]
fn scheduler_has_tasks_and_next_deadline_when_empty() {
    let mut s = Scheduler::<Task, 4>::new();
    assert!(s.is_empty());
    assert_eq!(s.len(), 0);
    assert_eq!(s.next_deadline(), None);
    assert_eq!(run(&mut s, u64::MAX), []);
    let id = s.schedule_at(t(1), 10).unwrap();
    assert!(!s.is_empty());
    assert_eq!(s.next_deadline(), Some(10));
    assert!(s.cancel(id).is_some());
    assert!(s.is_empty());
    assert_eq!(s.next_deadline(), None);
}

#[test]
fn scheduler_asap_only() {
    let mut s = Scheduler::<Task, 8>::new();
    for n in 0..5 {
        s.schedule_now(t(n)).unwrap();
    }
    assert_eq!(s.next_deadline(), Some(0));
    let log = run(&mut s, 0);
    assert_eq!(log, (0..5).map(|n| (n, RunReady)).collect::<Vec<_>>());
    assert!(s.is_empty());
}

#[test]
fn scheduler_timed_only_never_runs_early() {
    let mut s = Scheduler::<Task, 8>::new();
    s.schedule_at(t(1), 100).unwrap();
    s.schedule_at(t(2), 50).unwrap();
    assert_eq!(s.next_deadline(), Some(50));
    assert_eq!(run(&mut s, 49), []);
    assert_eq!(run(&mut s, 50), [(2, RunReady)]);
    assert_eq!(run(&mut s, 99), []);
    assert_eq!(run(&mut s, 100), [(1, RunReady)]);
}

#[test]
fn scheduler_task_popped_late_still_runs() {
    let mut s = Scheduler::<Task, 4>::new();
    s.schedule_at(t(1), 10).unwrap();
    assert_eq!(run(&mut s, 1_000_000), [(1, RunReady)]);
}

#[test]
fn scheduler_reentrant_schedule_waits_for_next_call() {
    let mut s = Scheduler::<Task, 8>::new();
    s.schedule_now(Task {
        name: 1,
        action: Action::ScheduleNow(2),
    })
    .unwrap();
    s.schedule_now(Task {
        name: 3,
        action: Action::ScheduleAt(4, 0),
    })
    .unwrap();
    assert_eq!(run(&mut s, 100), [(1, RunReady), (3, RunReady)]);
    assert_eq!(s.len(), 2);
    assert_eq!(run(&mut s, 100), [(2, RunReady), (4, RunReady)]);
}

#[test]
fn scheduler_cleanup_cancels_everything_including_tasks_scheduled_by_canceled_tasks() {
    let mut s = Scheduler::<Task, 8>::new();
    s.schedule_now(Task {
        name: 1,
        action: Action::ScheduleNow(10),
    })
    .unwrap();
    s.schedule_at(
        Task {
            name: 2,
            action: Action::ScheduleAt(20, 5),
        },
        1_000,
    )
    .unwrap();
    s.schedule_at(t(3), u64::MAX).unwrap();
    let log = cancel_all(&mut s);
    assert_eq!(
        log,
        [
            (1, Canceled),
            (10, Canceled),
            (2, Canceled),
            (20, Canceled),
            (3, Canceled)
        ]
    );
    assert!(s.is_empty());
}

#[test]
fn scheduler_cleanup_twice_is_fine() {
    let mut s = Scheduler::<Task, 4>::new();
    s.schedule_now(t(1)).unwrap();
    assert_eq!(cancel_all(&mut s), [(1, Canceled)]);
    assert_eq!(cancel_all(&mut s), []);
    s.schedule_now(t(2)).unwrap();
    assert_eq!(run(&mut s, 0), [(2, RunReady)]);
}

#[test]
fn scheduler_cancel_inside_batch_gives_canceled_and_never_runs() {
    let mut s = Scheduler::<Task, 8>::new();
    s.schedule_now(t(1)).unwrap();
    s.schedule_at(t(2), 5).unwrap();
    let t4 = s.schedule_at(t(4), 11).unwrap();
    s.schedule_at(
        Task {
            name: 3,
            action: Action::Cancel(t4),
        },
        10,
    )
    .unwrap();
    // One snapshot holds t1, t2, t3 and t4; t3 cancels t4 before t4's turn.
    let log = run(&mut s, 11);
    assert_eq!(
        log,
        [(1, RunReady), (2, RunReady), (3, RunReady), (4, Canceled)]
    );
    assert!(s.is_empty());
}

#[test]
fn scheduler_equal_deadlines_run_in_submission_order() {
    let mut s = Scheduler::<Task, 16>::new();
    for n in 0..12 {
        s.schedule_at(t(n), 777).unwrap();
    }
    let log = run(&mut s, 777);
    assert_eq!(log, (0..12).map(|n| (n, RunReady)).collect::<Vec<_>>());
}

#[test]
fn scheduler_full_hands_the_task_back() {
    let mut s = Scheduler::<Task, 2>::new();
    s.schedule_now(t(1)).unwrap();
    s.schedule_at(t(2), 9).unwrap();
    assert_eq!(s.schedule_now(t(3)), Err(Full(t(3))));
    assert_eq!(s.schedule_at(t(4), 1).unwrap_err().into_inner(), t(4));
    assert_eq!(s.len(), 2);
    assert_eq!(run(&mut s, 9), [(1, RunReady), (2, RunReady)]);
    s.schedule_now(t(5)).unwrap();
}

#[test]
fn scheduler_stale_and_unknown_ids_are_no_ops() {
    let mut s = Scheduler::<Task, 2>::new();
    let a = s.schedule_now(t(1)).unwrap();
    assert_eq!(run(&mut s, 0), [(1, RunReady)]);
    // Cancel after run: no-op.
    assert_eq!(s.cancel(a), None);
    // The slot is reused by another task: the old id must not reach it.
    let b = s.schedule_now(t(2)).unwrap();
    assert_eq!(b.slot, a.slot);
    assert_ne!(b, a);
    assert!(!s.contains(a));
    assert_eq!(s.cancel(a), None);
    assert!(s.contains(b));
    // Cancel twice: second is a no-op.
    assert_eq!(s.cancel(b), Some(t(2)));
    assert_eq!(s.cancel(b), None);
    // Unknown ids.
    assert_eq!(s.cancel(TaskId::from_bits(u64::MAX)), None);
    assert_eq!(
        s.cancel(TaskId {
            slot: 1,
            generation: 0
        }),
        None
    );
    assert_eq!(TaskId::from_bits(b.to_bits()), b);
}

#[test]
fn scheduler_generation_wraps_without_reviving_old_ids() {
    let mut s = Scheduler::<Task, 1>::new();
    let first = s.schedule_now(t(0)).unwrap();
    assert!(s.cancel(first).is_some());
    s.set_generation(first.slot, u32::MAX);
    let before_wrap = s.schedule_now(t(1)).unwrap();
    assert_eq!(before_wrap.generation, u32::MAX);
    assert!(s.cancel(before_wrap).is_some());
    let after_wrap = s.schedule_now(t(2)).unwrap();
    assert_eq!(after_wrap.generation, 0);
    assert_eq!(s.cancel(before_wrap), None);
    assert!(s.contains(after_wrap));
}

#[test]
fn scheduler_max_deadline_is_fine() {
    let mut s = Scheduler::<Task, 4>::new();
    s.schedule_at(t(1), u64::MAX).unwrap();
    s.schedule_at(t(2), u64::MAX - 1).unwrap();
    assert_eq!(s.next_deadline(), Some(u64::MAX - 1));
    assert_eq!(run(&mut s, u64::MAX - 2), []);
    assert_eq!(run(&mut s, u64::MAX), [(2, RunReady), (1, RunReady)]);
}

/// A deterministic xorshift so the property test needs no dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn scheduler_matches_a_sorted_reference_under_random_churn() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut s = Scheduler::<Task, 64>::new();
    // Reference: (is_timed, key, name) for live tasks; ids to cancel.
    let mut live: Vec<(TaskId, u32)> = Vec::new();
    let mut expected: Vec<(u64, u64, u32)> = Vec::new(); // (deadline, seq, name)
    let mut seq = 0u64;
    let mut name = 0u32;
    for _round in 0..if cfg!(miri) { 3 } else { 200 } {
        for _ in 0..rng.next() % 48 {
            let deadline = 1_000 + rng.next() % 50;
            if let Ok(id) = s.schedule_at(t(name), deadline) {
                live.push((id, name));
                expected.push((deadline, seq, name));
                seq += 1;
                name += 1;
            }
        }
        for _ in 0..rng.next() % 16 {
            if live.is_empty() {
                break;
            }
            let k = (rng.next() % live.len() as u64) as usize;
            let (id, n) = live.swap_remove(k);
            assert_eq!(s.cancel(id).map(|x| x.name), Some(n));
            expected.retain(|e| e.2 != n);
        }
        expected.sort();
        let want: Vec<(u32, TaskStatus)> = expected.iter().map(|e| (e.2, RunReady)).collect();
        assert_eq!(run(&mut s, u64::MAX), want);
        expected.clear();
        live.clear();
        assert!(s.is_empty());
    }
}

#[test]
fn scheduler_init_in_place_equals_new() {
    let mut place = core::mem::MaybeUninit::<Scheduler<Task, 16>>::uninit();
    let s = Scheduler::init_in(&mut place);
    assert!(s.is_empty());
    assert_eq!(s.next_deadline(), None);
    s.schedule_at(t(2), 5).unwrap();
    s.schedule_now(t(1)).unwrap();
    assert_eq!(run(s, 5), [(1, RunReady), (2, RunReady)]);
    // SAFETY: `init_in` initialized it; dropping it in place releases nothing twice.
    unsafe { place.assume_init_drop() };
}
