//! Contract items 10-16, 22 and 23: scheduling, ordering, cancellation, capacity, wakeups,
//! panics and the tick order.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::channel;
use std::sync::{Arc, Mutex};

use reseau_linux::{EventLoop, EventLoopOptions, LoopHandle, ScheduleErrorKind, TaskStatus, When};
use reseau_tests::util::{hold_loop, recv};

fn running() -> EventLoop {
    let el = EventLoop::new(EventLoopOptions::default()).unwrap();
    el.run().unwrap();
    el
}

/// Runs `f` on the loop thread and returns its result.
fn on_loop<R: Send + 'static>(
    h: &LoopHandle,
    f: impl FnOnce(&LoopHandle) -> R + Send + 'static,
) -> R {
    let (tx, rx) = channel();
    h.schedule_now(move |h, _| {
        tx.send(f(h)).unwrap();
    })
    .unwrap();
    recv(&rx)
}

#[test]
fn c10_tasks_scheduled_from_another_thread_run_on_the_loop_thread() {
    let mut el = running();
    let h = el.handle();
    assert!(!h.is_on_loop_thread());
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        h.schedule_now(move |h, st| {
            let name = std::thread::current().name().map(str::to_owned);
            tx.send((h.is_on_loop_thread(), name, st)).unwrap();
        })
        .unwrap();
    })
    .join()
    .unwrap();
    let (on_loop, name, st) = recv(&rx);
    assert!(on_loop);
    assert_eq!(name.as_deref(), Some("reseau-el"));
    assert_eq!(st, TaskStatus::RunReady);
    el.destroy().unwrap();
}

#[test]
fn c11_serialized_order_equals_linearization_order_at_high_contention() {
    const PRODUCERS: u64 = 4;
    const PER: u64 = 10_000;
    let mut el = EventLoop::new(EventLoopOptions {
        capacity: 16384,
        ..EventLoopOptions::default()
    })
    .unwrap();
    el.run().unwrap();
    let record = Arc::new(Mutex::new(Vec::new()));
    let executed = Arc::new(Mutex::new(Vec::new()));
    let (done_tx, done_rx) = channel();
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|p| {
            let (h, record, executed, done_tx) = (
                el.handle(),
                record.clone(),
                executed.clone(),
                done_tx.clone(),
            );
            std::thread::spawn(move || {
                for i in 0..PER {
                    let id = p * PER + i;
                    let mut rec = record.lock().unwrap();
                    let (executed, done_tx) = (executed.clone(), done_tx.clone());
                    let mut attempt = h.schedule_now_serialized(move |_, st| {
                        assert_eq!(st, TaskStatus::RunReady);
                        let mut ex = executed.lock().unwrap();
                        ex.push(id);
                        if ex.len() as u64 == PRODUCERS * PER {
                            done_tx.send(()).unwrap();
                        }
                    });
                    // Retry on a full loop while still holding the record lock: the record
                    // stays the linearization order of successful schedules.
                    while let Err(e) = attempt {
                        assert!(matches!(e.kind, ScheduleErrorKind::Full { .. }));
                        assert_eq!(e.when, When::NowSerialized);
                        // The loop drains concurrently; let it.
                        std::thread::yield_now();
                        attempt = h.schedule_task(e.task, e.when);
                    }
                    rec.push(id);
                }
            })
        })
        .collect();
    for p in producers {
        p.join().unwrap();
    }
    recv(&done_rx);
    let record = record.lock().unwrap().clone();
    let executed = executed.lock().unwrap().clone();
    assert_eq!(executed.len(), record.len());
    assert!(
        executed == record,
        "execution order differs from the linearization order"
    );
    el.destroy().unwrap();
}

#[test]
fn c12_timed_tasks_never_run_early() {
    let mut el = running();
    let h = el.handle();
    let (tx, rx) = channel();
    let now = h.now();
    for ms in [30u64, 5, 15, 1] {
        let deadline = now + ms * 1_000_000;
        let tx = tx.clone();
        h.schedule_at(deadline, move |h, st| {
            tx.send((ms, h.now() >= deadline, st)).unwrap();
        })
        .unwrap();
    }
    let got: Vec<_> = (0..4).map(|_| recv(&rx)).collect();
    assert_eq!(got.iter().map(|g| g.0).collect::<Vec<_>>(), [1, 5, 15, 30]);
    assert!(
        got.iter().all(|g| g.1 && g.2 == TaskStatus::RunReady),
        "{got:?}"
    );
    el.destroy().unwrap();
}

#[test]
fn c12_equal_deadlines_run_in_submission_order() {
    let mut el = running();
    let h = el.handle();
    let order = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = channel();
    let deadline = h.now() + 5_000_000;
    // Half from the loop thread (straight into the scheduler), half from here (inbox).
    let o = order.clone();
    on_loop(&h, move |h| {
        for i in 0..6 {
            let o = o.clone();
            h.schedule_at(deadline, move |_, _| o.lock().unwrap().push(i))
                .unwrap();
        }
    });
    for i in 6..12 {
        let (o, tx) = (order.clone(), tx.clone());
        h.schedule_at(deadline, move |_, _| {
            let mut o = o.lock().unwrap();
            o.push(i);
            if o.len() == 12 {
                tx.send(()).unwrap();
            }
        })
        .unwrap();
    }
    recv(&rx);
    assert_eq!(*order.lock().unwrap(), (0..12).collect::<Vec<_>>());
    el.destroy().unwrap();
}

#[test]
fn c12_sub_millisecond_deadline_does_not_busy_spin() {
    let mut el = running();
    let h = el.handle();
    let (tx, rx) = channel();
    // Schedule from the loop thread so no cross-thread wakeup is involved, and count the
    // epoll_wait calls between scheduling and running.
    let before = on_loop(&h, move |h| {
        let before = h.stats().epoll_waits;
        let deadline = h.now() + 500_000;
        h.schedule_at(deadline, move |h, _| {
            tx.send(h.stats().epoll_waits).unwrap()
        })
        .unwrap();
        before
    });
    let at_run = recv(&rx);
    let waits = at_run - before;
    assert!(
        waits <= 4,
        "a 0.5 ms deadline cost {waits} epoll_wait calls"
    );
    el.destroy().unwrap();
}

#[test]
fn c13_cancel_runs_once_with_canceled_and_twice_or_after_run_is_a_no_op() {
    let mut el = running();
    let h = el.handle();
    let runs = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = channel();
    let (r, t) = (runs.clone(), tx.clone());
    let far = h.now() + 3_600_000_000_000;
    let task = h
        .schedule_at(far, move |h, st| {
            r.lock().unwrap().push((st, h.is_on_loop_thread()));
            t.send(()).unwrap();
        })
        .unwrap();
    h.cancel(&task);
    recv(&rx);
    h.cancel(&task);
    // A later task proves the second cancel produced nothing before it.
    on_loop(&h, |_| ());
    assert_eq!(*runs.lock().unwrap(), [(TaskStatus::Canceled, true)]);

    // Cancel after run: a no-op.
    let (r, t) = (runs.clone(), tx.clone());
    let task = h
        .schedule_now(move |_, st| {
            r.lock().unwrap().push((st, true));
            t.send(()).unwrap();
        })
        .unwrap();
    recv(&rx);
    h.cancel(&task);
    on_loop(&h, |_| ());
    assert_eq!(runs.lock().unwrap().len(), 2);
    assert_eq!(runs.lock().unwrap()[1].0, TaskStatus::RunReady);

    // On the loop thread, cancel runs the task at once, before cancel returns.
    let ran_inside = on_loop(&h, move |h| {
        let flag = Arc::new(Mutex::new(None));
        let f = flag.clone();
        let t = h
            .schedule_at(far, move |_, st| *f.lock().unwrap() = Some(st))
            .unwrap();
        h.cancel(&t);
        *flag.lock().unwrap()
    });
    assert_eq!(ran_inside, Some(TaskStatus::Canceled));
    el.destroy().unwrap();
}

#[test]
fn c13_schedule_cancel_churn_64_rounds_yields_exactly_64_cancels() {
    let mut el = running();
    let h = el.handle();
    let canceled = Arc::new(AtomicUsize::new(0));
    let ran = Arc::new(AtomicUsize::new(0));
    let far = h.now() + 3_600_000_000_000;
    for round in 0..64 {
        let (c, r) = (canceled.clone(), ran.clone());
        let task = h
            .schedule_at(far, move |_, st| {
                match st {
                    TaskStatus::Canceled => c.fetch_add(1, Ordering::SeqCst),
                    TaskStatus::RunReady => r.fetch_add(1, Ordering::SeqCst),
                };
            })
            .unwrap();
        // Alternate where the cancel comes from.
        if round % 2 == 0 {
            h.cancel(&task);
        } else {
            on_loop(&h, move |h| h.cancel(&task));
        }
    }
    // The off-thread cancels travel through the inbox ahead of this round trip: by its
    // end every task has run canceled, an hour before its deadline and before destroy.
    on_loop(&h, |_| ());
    assert_eq!(canceled.load(Ordering::SeqCst), 64);
    assert_eq!(ran.load(Ordering::SeqCst), 0);
    // Destroy finds nothing left to cancel: still exactly 64, each task once.
    el.destroy().unwrap();
    assert_eq!(canceled.load(Ordering::SeqCst), 64);
    assert_eq!(ran.load(Ordering::SeqCst), 0);
}

#[test]
fn c13_a_cross_thread_cancel_is_prompt_even_when_the_inbox_is_full() {
    let mut el = EventLoop::new(EventLoopOptions {
        capacity: 64,
        ..EventLoopOptions::default()
    })
    .unwrap();
    el.run().unwrap();
    let h = el.handle();
    // The target, an hour away, already in the scheduler (a task still in the inbox would
    // be caught by its drain anyway).
    let (tx, rx) = channel();
    let target = h
        .schedule_at(h.now() + 3_600_000_000_000, move |_, st| {
            tx.send(st).unwrap()
        })
        .unwrap();
    on_loop(&h, |_| ());
    // Hold the loop thread in a task, so nothing leaves the inbox meanwhile.
    let hold = hold_loop(&h, |_| ());
    // Fillers until the loop holds its 64 tasks: every slot is taken, the inbox is as full
    // as it gets. (The engine's cross-thread cancels travel on a stack threaded through
    // the slots themselves, so they never need room the fillers took.)
    let mut fillers = Vec::new();
    while let Ok(f) = h.schedule_now(|_, _| {}) {
        fillers.push(f);
    }
    assert!(
        fillers.len() >= 62,
        "the loop took {} fillers",
        fillers.len()
    );
    assert!(h.schedule_now(|_, _| {}).is_err(), "the loop is full");
    assert!(h.cancel(&fillers[0]));
    assert!(h.cancel(&fillers[1]));
    // This cancel finds no room anywhere but must still be prompt.
    assert!(h.cancel(&target));
    hold.release();
    // Canceled in the next ticks, not an hour from now (nor at destroy).
    assert_eq!(recv(&rx), TaskStatus::Canceled);
    assert!(el.destroy().is_ok());
    assert!(rx.try_recv().is_err(), "canceled exactly once");
}

#[test]
fn c14_a_full_loop_hands_the_task_back() {
    let mut el = EventLoop::new(EventLoopOptions {
        capacity: 64,
        ..EventLoopOptions::default()
    })
    .unwrap();
    assert_eq!(el.capacity(), 64);
    let count = Arc::new(AtomicUsize::new(0));
    for _ in 0..64 {
        let c = count.clone();
        el.schedule_now(move |_, _| {
            c.fetch_add(1, Ordering::SeqCst);
        })
        .unwrap();
    }
    let (tx, rx) = channel();
    let err = el
        .schedule_now(move |_, st| tx.send(st).unwrap())
        .unwrap_err();
    assert_eq!(err.kind, ScheduleErrorKind::Full { capacity: 64 });
    assert!(err.to_string().contains("64 pending tasks"), "{err}");
    // The task came back intact: run it ourselves, canceled.
    err.into_task().run(&el.handle(), TaskStatus::Canceled);
    assert_eq!(rx.try_recv(), Ok(TaskStatus::Canceled));
    el.run().unwrap();
    let (tx, rx) = channel();
    // Everything queued ran; the loop is usable again once there is room.
    loop {
        let tx = tx.clone();
        match el.schedule_now(move |_, _| tx.send(()).unwrap()) {
            Ok(_) => break,
            Err(e) => drop(e.into_task()),
        }
        std::thread::yield_now();
    }
    recv(&rx);
    assert_eq!(count.load(Ordering::SeqCst), 64);
    el.destroy().unwrap();
}

#[test]
fn c14_a_refused_task_is_scheduled_again_as_is_however_often_it_comes_back() {
    let mut el = EventLoop::new(EventLoopOptions {
        capacity: 64,
        ..EventLoopOptions::default()
    })
    .unwrap();
    for _ in 0..64 {
        el.schedule_now(|_, _| {}).unwrap();
    }
    let (tx, rx) = channel();
    let deadline = el.now();
    let mut err = el
        .schedule_at(deadline, move |h, st| {
            tx.send((st, h.is_on_loop_thread())).unwrap()
        })
        .unwrap_err();
    assert_eq!(err.when, When::At(deadline));
    // Refused again and again: the same task comes back each time, with how it was asked
    // to run. A retry that wrapped the task in a new closure would nest 100,000 deep and
    // overflow the loop thread's stack when it finally ran.
    for _ in 0..100_000 {
        err = el.schedule_task(err.task, err.when).unwrap_err();
        assert_eq!(err.kind, ScheduleErrorKind::Full { capacity: 64 });
        assert_eq!(err.when, When::At(deadline));
    }
    el.run().unwrap();
    let mut attempt = el.schedule_task(err.task, err.when);
    while let Err(e) = attempt {
        std::thread::yield_now();
        attempt = el.schedule_task(e.task, e.when);
    }
    assert_eq!(recv(&rx), (TaskStatus::RunReady, true));
    el.destroy().unwrap();
    // Run exactly once: the sender is gone with the closure, and nothing else arrived.
    assert!(rx.try_recv().is_err());
}

#[test]
fn c15_a_burst_of_cross_thread_schedules_loses_no_wakeup_and_coalesces() {
    const TASKS: usize = 100_000;
    let mut el = EventLoop::new(EventLoopOptions {
        capacity: 16384,
        ..EventLoopOptions::default()
    })
    .unwrap();
    el.run().unwrap();
    let h = el.handle();
    let count = Arc::new(AtomicUsize::new(0));
    let (tx, rx) = channel();
    let producer = {
        let (count, h) = (count.clone(), h.clone());
        std::thread::spawn(move || {
            for _ in 0..TASKS {
                let (count, tx) = (count.clone(), tx.clone());
                let mut attempt = h.schedule_now(move |_, _| {
                    if count.fetch_add(1, Ordering::SeqCst) + 1 == TASKS {
                        tx.send(()).unwrap();
                    }
                });
                // A full loop hands the task back; give the same task back until it fits.
                while let Err(e) = attempt {
                    std::thread::yield_now();
                    attempt = h.schedule_task(e.task, e.when);
                }
            }
        })
    };
    producer.join().unwrap();
    recv(&rx);
    let stats = h.stats();
    eprintln!("burst of {TASKS}: {stats:?}");
    assert_eq!(stats.tasks_run as usize, TASKS);
    // How often a free-running loop parks between pushes depends on the scheduling of two
    // threads (a loop that keeps up parks, and the next push must wake it): a loose bound
    // here (1,765 per 100,000 was seen on a loaded 2-core machine; the benchmark reports
    // the figure), and an exact one below, where the loop cannot park.
    assert!(
        (stats.wakeups_written as usize) * 10 < TASKS,
        "{} wakeups written for {TASKS} tasks: {stats:?}",
        stats.wakeups_written
    );
    el.destroy().unwrap();
}

#[test]
fn c15_pushes_while_the_loop_is_busy_write_at_most_one_wakeup() {
    const TASKS: usize = 10_000;
    let mut el = EventLoop::new(EventLoopOptions {
        capacity: 16384,
        ..EventLoopOptions::default()
    })
    .unwrap();
    el.run().unwrap();
    let h = el.handle();
    let hold = reseau_tests::util::hold_loop(&h, |_| {});
    let before = h.stats().wakeups_written;
    let count = Arc::new(AtomicUsize::new(0));
    let (tx, rx) = channel();
    for _ in 0..TASKS {
        let (count, tx) = (count.clone(), tx.clone());
        h.schedule_now(move |_, _| {
            if count.fetch_add(1, Ordering::SeqCst) + 1 == TASKS {
                tx.send(()).unwrap();
            }
        })
        .map_err(|e| e.kind)
        .unwrap();
    }
    let during = h.stats().wakeups_written - before;
    hold.release();
    recv(&rx);
    // The loop was awake (running the holding task): the first push may still signal
    // (nobody had signaled since its last park), every later one is coalesced.
    assert!(
        during <= 1,
        "{during} wakeups written for {TASKS} pushes to a busy loop"
    );
    el.destroy().unwrap();
}

/// A loop woken for one task runs it and parks again with one wait: it looks for more
/// without blocking only when more is already published (a blocking wait follows every
/// park). A task handed back and forth (ping-pong) costs one `epoll_wait` per hop, where a
/// second, non-blocking one after every busy tick cost a syscall per hop.
#[test]
fn c15_a_loop_woken_for_one_task_parks_again_with_one_wait() {
    const HOPS: u64 = 200;
    let mut el = running();
    let h = el.handle();
    on_loop(&h, |_| ());
    let before = h.stats().epoll_waits;
    for _ in 0..HOPS {
        on_loop(&h, |_| ());
    }
    let waits = h.stats().epoll_waits - before;
    assert!(
        waits <= HOPS + HOPS / 4,
        "{waits} epoll_waits for {HOPS} tasks sent one at a time"
    );
    el.destroy().unwrap();
}

#[test]
fn c16_a_panicking_task_is_caught_counted_and_the_loop_goes_on() {
    let mut el = running();
    let h = el.handle();
    h.schedule_now(|_, _| panic!("task panics on purpose"))
        .unwrap();
    let (tx, rx) = channel();
    h.schedule_now(move |h, st| tx.send((st, h.is_on_loop_thread())).unwrap())
        .unwrap();
    assert_eq!(recv(&rx), (TaskStatus::RunReady, true));
    assert_eq!(h.stats().panics_caught, 1);
    // A panic in a task canceled at destroy is caught too, and the teardown goes on to
    // cancel the task after it.
    h.schedule_at(u64::MAX, |_, _| panic!("canceled task panics on purpose"))
        .unwrap();
    let (tx, rx) = channel();
    h.schedule_at(u64::MAX, move |_, st| tx.send(st).unwrap())
        .unwrap();
    el.destroy().unwrap();
    assert_eq!(recv(&rx), TaskStatus::Canceled);
}

#[test]
fn c22_asap_runs_before_due_timed_and_a_past_deadline_runs_next_tick() {
    let mut el = running();
    let h = el.handle();
    let order = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = channel();
    let o = order.clone();
    on_loop(&h, move |h| {
        let o1 = o.clone();
        let now = h.now();
        // Scheduled first, at a past deadline: waits for the next tick, then runs after
        // that tick's ASAP tasks.
        h.schedule_at(now.saturating_sub(1), move |_, _| {
            o1.lock().unwrap().push("timed")
        })
        .unwrap();
        let o2 = o.clone();
        h.schedule_now(move |_, _| o2.lock().unwrap().push("asap"))
            .unwrap();
        // The same past deadline, submitted later: runs right after "timed" and tells the
        // test thread the batch is over.
        h.schedule_at(now.saturating_sub(1), move |_, _| tx.send(()).unwrap())
            .unwrap();
        o.lock().unwrap().push("scheduler task");
    });
    recv(&rx);
    assert_eq!(*order.lock().unwrap(), ["scheduler task", "asap", "timed"]);
    el.destroy().unwrap();
}

#[test]
fn c22_loop_thread_schedule_now_is_direct_and_serialized_goes_through_the_inbox() {
    let mut el = running();
    let h = el.handle();
    let order = Arc::new(Mutex::new(Vec::new()));
    let o = order.clone();
    on_loop(&h, move |h| {
        let o1 = o.clone();
        h.schedule_now_serialized(move |_, _| o1.lock().unwrap().push("serialized"))
            .unwrap();
        let o2 = o.clone();
        h.schedule_now(move |_, _| o2.lock().unwrap().push("direct"))
            .unwrap();
    });
    // The direct task is already in the scheduler; the serialized one joins it when the
    // next tick drains the inbox, behind it.
    on_loop(&h, |_| ());
    on_loop(&h, |_| ());
    assert_eq!(*order.lock().unwrap(), ["direct", "serialized"]);
    el.destroy().unwrap();
}

#[test]
fn c23_tasks_queued_while_stopped_run_after_the_next_run() {
    let mut el = EventLoop::new(EventLoopOptions::default()).unwrap();
    let (tx, rx) = channel();
    for i in 0..3 {
        let tx = tx.clone();
        el.schedule_now(move |_, st| tx.send((i, st)).unwrap())
            .unwrap();
    }
    assert!(rx.try_recv().is_err());
    el.run().unwrap();
    let got: Vec<_> = (0..3).map(|_| recv(&rx)).collect();
    assert_eq!(
        got,
        [
            (0, TaskStatus::RunReady),
            (1, TaskStatus::RunReady),
            (2, TaskStatus::RunReady)
        ]
    );
    el.stop().unwrap();
    el.wait_for_stop_completion().unwrap();
    let t = tx.clone();
    el.schedule_now(move |_, st| t.send((3, st)).unwrap())
        .unwrap();
    assert!(rx.try_recv().is_err());
    el.run().unwrap();
    assert_eq!(recv(&rx), (3, TaskStatus::RunReady));
    el.destroy().unwrap();
}

#[test]
fn c23_a_finished_tasks_closure_is_gone() {
    let mut el = running();
    let h = el.handle();
    let token = Arc::new(());
    let (tx, rx) = channel();
    let t = token.clone();
    let handle = h
        .schedule_now(move |_, _| {
            let _keep = &t;
            tx.send(()).unwrap();
        })
        .unwrap();
    recv(&rx);
    on_loop(&h, |_| ());
    // The TaskHandle is still held, but the closure (and what it captured) is dropped.
    assert_eq!(Arc::strong_count(&token), 1);
    // The handle names no task any more: canceling it is a no-op.
    assert!(!h.cancel(&handle));
    el.destroy().unwrap();
}

#[test]
fn c12_a_custom_clock_drives_deadlines() {
    use std::sync::atomic::AtomicU64;
    let now = Arc::new(AtomicU64::new(1_000));
    let n = now.clone();
    let mut el = EventLoop::new(EventLoopOptions {
        clock: reseau_linux::Clock::Custom(Arc::new(move || n.load(Ordering::SeqCst))),
        ..EventLoopOptions::default()
    })
    .unwrap();
    el.run().unwrap();
    let h = el.handle();
    assert_eq!(h.now(), 1_000);
    let (tx, rx) = channel();
    // Due at 2_000 on the custom clock: a real millisecond of waiting changes nothing.
    h.schedule_at(2_000, move |h, st| tx.send((h.now(), st)).unwrap())
        .unwrap();
    on_loop(&h, |_| ());
    on_loop(&h, |_| ());
    assert!(
        rx.try_recv().is_err(),
        "ran before the custom clock reached its deadline"
    );
    now.store(2_000, Ordering::SeqCst);
    // Any wakeup lets the loop see the new time.
    on_loop(&h, |_| ());
    assert_eq!(recv(&rx), (2_000, TaskStatus::RunReady));
    el.destroy().unwrap();
}
