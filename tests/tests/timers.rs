//! Timers users can read: `Instant` on the loop's clock, `schedule_after`,
//! `schedule_at_instant`, and intervals (`schedule_every`) with their missed-tick
//! behaviours, cancel (from another thread, from inside the callback) and the re-arm
//! failure paths. Deterministic where possible: a manual `Clock::Custom` and a
//! caller-driven loop (`turn` with a zero timeout), so "when" is exact, not measured.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, channel};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use reseau_linux::{
    Clock, EventLoop, EventLoopOptions, Instant, Interval, IntervalControl, MissedTickBehavior,
    ScheduleErrorKind, TaskStatus, TickStatus,
};
use reseau_tests::util::recv;

/// A loop on a manual clock, driven by the caller.
fn manual(capacity: usize) -> (EventLoop, Arc<AtomicU64>) {
    let t = Arc::new(AtomicU64::new(0));
    let clock = t.clone();
    let el = EventLoop::new(EventLoopOptions {
        clock: Clock::Custom(Arc::new(move || clock.load(Ordering::SeqCst))),
        capacity,
        ..Default::default()
    })
    .unwrap();
    (el, t)
}

/// Turns the loop enough times (never blocking) to run everything due now, including
/// tasks due in the past scheduled by tasks (each runs on the next tick).
fn settle(el: &EventLoop) {
    for _ in 0..10 {
        el.turn(Some(Duration::ZERO)).unwrap();
    }
}

fn drain<T>(rx: &Receiver<T>) -> Vec<T> {
    rx.try_iter().collect()
}

const P: u64 = 10_000;

/// Each policy: ticks at 1P on time, then a stall of 3.5 periods (the clock jumps from
/// 1P to 4.5P), then the clock walks on. Returns (deadline, clock at the call) of each due
/// tick after the stall, up to clock 6P.
fn after_a_stall(missed: MissedTickBehavior) -> Vec<(u64, u64)> {
    let (el, t) = manual(16);
    let (tx, rx) = channel();
    let h = el.handle();
    let interval = el
        .schedule_every_with(Duration::from_nanos(P), missed, move |_, tick| {
            if tick.status == TickStatus::Due {
                tx.send((tick.deadline.as_nanos(), h.now())).unwrap();
            }
            IntervalControl::Continue
        })
        .unwrap();
    settle(&el);
    assert_eq!(drain(&rx), vec![], "nothing before the first period");
    t.store(P, Ordering::SeqCst);
    settle(&el);
    assert_eq!(drain(&rx), vec![(P, P)], "the first tick, on time");
    t.store(P + 35 * P / 10, Ordering::SeqCst);
    settle(&el);
    let mut seen = drain(&rx);
    // Walk the clock one nanosecond at a time would be slow; every 500 ns is enough to
    // see whether a tick runs before its deadline (it would show clock < deadline).
    let mut now = P + 35 * P / 10;
    while now < 6 * P {
        now += 500;
        t.store(now, Ordering::SeqCst);
        settle(&el);
        seen.extend(drain(&rx));
    }
    assert!(interval.cancel());
    seen
}

#[test]
fn burst_fires_the_missed_ticks_back_to_back_at_their_original_deadlines() {
    let seen = after_a_stall(MissedTickBehavior::Burst);
    assert_eq!(
        seen,
        vec![
            (2 * P, 45 * P / 10),
            (3 * P, 45 * P / 10),
            (4 * P, 45 * P / 10),
            (5 * P, 5 * P),
            (6 * P, 6 * P),
        ]
    );
}

#[test]
fn delay_fires_one_late_tick_then_one_period_after_it_ran() {
    let seen = after_a_stall(MissedTickBehavior::Delay);
    assert_eq!(seen, vec![(2 * P, 45 * P / 10), (55 * P / 10, 55 * P / 10)]);
}

#[test]
fn skip_fires_one_late_tick_then_the_next_multiple_of_the_period() {
    let seen = after_a_stall(MissedTickBehavior::Skip);
    assert_eq!(
        seen,
        vec![(2 * P, 45 * P / 10), (5 * P, 5 * P), (6 * P, 6 * P)]
    );
}

#[test]
fn the_default_missed_tick_behavior_is_burst() {
    assert_eq!(MissedTickBehavior::default(), MissedTickBehavior::Burst);
}

#[test]
fn schedule_after_runs_by_deadline_then_submission_order_and_never_early() {
    let (el, t) = manual(16);
    t.store(1_000, Ordering::SeqCst);
    let order = Arc::new(Mutex::new(Vec::new()));
    for (label, after) in [("30", 30), ("10a", 10), ("20", 20), ("10b", 10)] {
        let order = order.clone();
        el.schedule_after(Duration::from_nanos(after), move |h, st| {
            assert_eq!(st, TaskStatus::RunReady);
            order.lock().unwrap().push((label, h.now()));
        })
        .unwrap();
    }
    t.store(1_009, Ordering::SeqCst);
    settle(&el);
    assert!(order.lock().unwrap().is_empty(), "nothing runs early");
    t.store(1_100, Ordering::SeqCst);
    settle(&el);
    let labels: Vec<_> = order.lock().unwrap().iter().map(|(l, _)| *l).collect();
    assert_eq!(labels, ["10a", "10b", "20", "30"]);
}

#[test]
fn schedule_at_instant_is_schedule_at_on_the_same_scale() {
    let (el, t) = manual(16);
    t.store(500, Ordering::SeqCst);
    let now = el.now_instant();
    assert_eq!(now, Instant::from_nanos(500));
    let (tx, rx) = channel();
    el.schedule_at_instant(now + Duration::from_nanos(100), move |h, _| {
        tx.send(h.now()).unwrap()
    })
    .unwrap();
    t.store(599, Ordering::SeqCst);
    settle(&el);
    assert!(rx.try_recv().is_err(), "not before its instant");
    t.store(600, Ordering::SeqCst);
    settle(&el);
    assert_eq!(rx.try_recv().unwrap(), 600);
}

#[test]
fn instant_arithmetic_adds_subtracts_and_saturates() {
    let a = Instant::from_nanos(1_500);
    assert_eq!((a + Duration::from_micros(1)).as_nanos(), 2_500);
    assert_eq!((a - Duration::from_nanos(500)).as_nanos(), 1_000);
    assert_eq!(a - Duration::from_secs(1), Instant::from_nanos(0));
    assert_eq!(
        Instant::from_nanos(u64::MAX) + Duration::from_secs(1),
        Instant::from_nanos(u64::MAX)
    );
    assert_eq!(
        Instant::from_nanos(u64::MAX).checked_add(Duration::from_nanos(1)),
        None
    );
    assert_eq!(
        a.checked_add(Duration::from_nanos(1)),
        Some(Instant::from_nanos(1_501))
    );
    let b = a + Duration::from_millis(3);
    assert_eq!(b.duration_since(a), Duration::from_millis(3));
    assert_eq!(b - a, Duration::from_millis(3));
    assert_eq!(a.duration_since(b), Duration::ZERO);
    assert!(a < b);
    let mut c = a;
    c += Duration::from_nanos(5);
    assert_eq!(u64::from(c), 1_505);
}

/// An interval on a running loop that reports each call.
fn reporting_interval(el: &EventLoop) -> (Interval, Receiver<TickStatus>) {
    let (tx, rx) = channel();
    let interval = el
        .schedule_every(Duration::from_micros(200), move |_, tick| {
            let _ = tx.send(tick.status);
            IntervalControl::Continue
        })
        .unwrap();
    (interval, rx)
}

/// After the last call, a task scheduled three periods later is the next thing seen: no
/// tick ran in between.
fn assert_no_tick_after_the_last_call(el: &EventLoop, rx: &Receiver<TickStatus>) {
    let (tx, marker) = channel();
    el.schedule_after(Duration::from_millis(1), move |_, _| tx.send(()).unwrap())
        .unwrap();
    recv(&marker);
    assert_eq!(drain(rx), vec![], "no call after the last one");
}

#[test]
fn canceling_an_interval_from_another_thread_wins_once_and_makes_one_last_call() {
    let el = EventLoop::new(EventLoopOptions::default()).unwrap();
    el.run().unwrap();
    let (interval, rx) = reporting_interval(&el);
    assert_eq!(recv(&rx), TickStatus::Due);
    assert_eq!(recv(&rx), TickStatus::Due);
    let other = interval.clone();
    let won = std::thread::spawn(move || other.cancel()).join().unwrap();
    assert!(won, "the first cancel wins");
    assert!(!interval.cancel(), "a second cancel is a no-op");
    assert!(!interval.is_active());
    // Ticks already on their way may precede the last call, never follow it.
    loop {
        match recv(&rx) {
            TickStatus::Due => continue,
            TickStatus::Canceled => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_no_tick_after_the_last_call(&el, &rx);
}

#[test]
fn canceling_an_interval_from_its_own_callback_ends_it_after_that_call() {
    let el = EventLoop::new(EventLoopOptions::default()).unwrap();
    el.run().unwrap();
    let me: Arc<OnceLock<Interval>> = Arc::new(OnceLock::new());
    let (tx, rx) = channel();
    let mine = me.clone();
    let mut n = 0;
    let interval = el
        .schedule_every(Duration::from_micros(200), move |_, tick| {
            if tick.status == TickStatus::Due {
                n += 1;
                if n == 3 {
                    let won = mine.get().expect("set before the first tick").cancel();
                    tx.send((tick.status, Some(won))).unwrap();
                    return IntervalControl::Continue;
                }
            }
            tx.send((tick.status, None)).unwrap();
            IntervalControl::Continue
        })
        .unwrap();
    me.set(interval.clone()).unwrap();
    assert_eq!(recv(&rx), (TickStatus::Due, None));
    assert_eq!(recv(&rx), (TickStatus::Due, None));
    assert_eq!(
        recv(&rx),
        (TickStatus::Due, Some(true)),
        "the cancel inside wins"
    );
    assert_eq!(
        recv(&rx),
        (TickStatus::Canceled, None),
        "then one last call"
    );
    assert!(!interval.cancel());
    let (done_tx, done) = channel();
    el.schedule_after(Duration::from_millis(1), move |_, _| {
        done_tx.send(()).unwrap()
    })
    .unwrap();
    recv(&done);
    assert_eq!(drain(&rx), vec![], "no call after the last one");
}

#[test]
fn returning_stop_ends_an_interval_without_a_last_call() {
    let (el, t) = manual(16);
    let (tx, rx) = channel();
    let interval = el
        .schedule_every(Duration::from_nanos(10), move |_, tick| {
            tx.send(tick.status).unwrap();
            IntervalControl::Stop
        })
        .unwrap();
    t.store(100, Ordering::SeqCst);
    settle(&el);
    assert_eq!(drain(&rx), vec![TickStatus::Due]);
    assert!(!interval.is_active());
    assert!(!interval.cancel(), "nothing left to cancel");
    assert_eq!(el.pending(), 0);
}

#[test]
fn an_interval_whose_rearm_finds_the_loop_full_ends_with_one_refused_call() {
    // Capacity 1: the tick's own slot is free while its callback runs; the callback takes
    // it with another task, so the re-arm is refused.
    let (el, t) = manual(1);
    let (tx, rx) = channel();
    let interval = el
        .schedule_every(Duration::from_nanos(10), move |h, tick| {
            if tick.status == TickStatus::Due {
                h.schedule_now(|_, _| {}).unwrap();
            }
            tx.send(tick.status).unwrap();
            IntervalControl::Continue
        })
        .unwrap();
    t.store(10, Ordering::SeqCst);
    settle(&el);
    assert_eq!(
        drain(&rx),
        vec![
            TickStatus::Due,
            TickStatus::Refused(ScheduleErrorKind::Full { capacity: 1 })
        ]
    );
    assert!(!interval.is_active());
    assert!(!interval.cancel());
}

#[test]
fn without_a_full_loop_an_interval_rearms_at_capacity_one() {
    let (el, t) = manual(1);
    let (tx, rx) = channel();
    let _interval = el
        .schedule_every(Duration::from_nanos(10), move |_, tick| {
            tx.send(tick.status).unwrap();
            IntervalControl::Continue
        })
        .unwrap();
    for now in [10, 20, 30] {
        t.store(now, Ordering::SeqCst);
        settle(&el);
    }
    assert_eq!(drain(&rx), vec![TickStatus::Due; 3]);
}

#[test]
fn destroying_the_loop_ends_an_interval_with_a_canceled_call() {
    let (mut el, _t) = manual(16);
    let (tx, rx) = channel();
    let interval = el
        .schedule_every(Duration::from_secs(1), move |h, tick| {
            tx.send((tick.status, h.is_on_loop_thread())).unwrap();
            IntervalControl::Continue
        })
        .unwrap();
    el.destroy().unwrap();
    assert_eq!(drain(&rx), vec![(TickStatus::Canceled, true)]);
    assert!(!interval.cancel(), "the loop is gone");
}

#[test]
fn cancel_of_a_task_handle_says_whether_it_won() {
    let (el, _t) = manual(16);
    let (tx, rx) = channel();
    let task = el
        .schedule_after(Duration::from_secs(1), move |_, st| tx.send(st).unwrap())
        .unwrap();
    assert!(el.cancel(&task), "the first cancel wins");
    assert!(!el.cancel(&task), "the second is a no-op");
    settle(&el);
    assert_eq!(drain(&rx), vec![TaskStatus::Canceled]);
}

#[test]
fn an_interval_canceled_while_its_ticks_race_makes_exactly_one_last_call() {
    // Fast ticks, so a cancel often lands while a tick's task is claimed or running.
    let el = EventLoop::new(EventLoopOptions::default()).unwrap();
    el.run().unwrap();
    for round in 0..200 {
        let (tx, rx) = channel();
        let interval = el
            .schedule_every(Duration::from_micros(5), move |_, tick| {
                let _ = tx.send(tick.status);
                IntervalControl::Continue
            })
            .unwrap();
        assert_eq!(recv(&rx), TickStatus::Due);
        let other = interval.clone();
        assert!(std::thread::spawn(move || other.cancel()).join().unwrap());
        // Ticks already on their way may precede the last call, never follow it.
        loop {
            match recv(&rx) {
                TickStatus::Due => continue,
                TickStatus::Canceled => break,
                other => panic!("round {round}: unexpected {other:?}"),
            }
        }
        drop(interval);
        // A second last call, or a tick after it, would be queued by now: let the loop
        // pass one more tick, then check.
        let (done_tx, done) = channel();
        el.schedule_now(move |_, _| done_tx.send(()).unwrap())
            .unwrap();
        recv(&done);
        assert_eq!(
            drain(&rx),
            vec![],
            "round {round}: calls after the last one"
        );
    }
}
