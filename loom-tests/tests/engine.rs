//! Loom models of the shipped engine: `reseau_core::Engine` itself, driven through the loom
//! platform (`reseau_loom_tests::platform`) — the schedule path, the wake protocol, the
//! cancel claim and stack, and the run / stop / wait / destroy code as they ship, no copy.
//! Each model asserts that the race it is about was reached (`cover`), and each protocol
//! has a canary: the engine with that protocol broken on purpose (`Canary`), which the
//! model must catch. See `loom-tests/README.md`.
#![cfg(loom)]

use loom::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use loom::sync::{Arc, Condvar, Mutex};
use loom::thread;
use reseau_core::{
    Canary, DestroyError, Engine, RefusedKind, Slot, SmallTask, State, TaskRef, TaskStatus, When,
};
use reseau_loom_tests::harness::{check, check_bounded, cover};
use reseau_loom_tests::platform::LoomPlatform;

type Task = SmallTask<()>;
type Eng = Engine<LoomPlatform, Task, Vec<Slot<Task>>>;

fn engine(capacity: usize, id: u64, canary: Canary) -> Arc<Eng> {
    let slots = (0..capacity).map(|_| Slot::new()).collect();
    Arc::new(
        Engine::new(LoomPlatform::new(), slots, id)
            .unwrap()
            .with_canary(canary),
    )
}

/// How one task ended: runs with RunReady and with Canceled.
#[derive(Default)]
struct Fate {
    ready: AtomicUsize,
    canceled: AtomicUsize,
}

impl Fate {
    fn runs(&self) -> usize {
        self.ready.load(Ordering::SeqCst) + self.canceled.load(Ordering::SeqCst)
    }

    fn assert_once(&self) {
        assert_eq!(self.runs(), 1, "a task must run exactly once");
    }
}

/// `f` as a task: inline when it fits, boxed otherwise (as the Linux shim does).
fn small(f: impl FnOnce(&(), TaskStatus) + Send + 'static) -> Task {
    SmallTask::new(f).unwrap_or_else(|f| {
        let boxed = Box::new(f);
        SmallTask::new(move |cx: &(), status| boxed(cx, status))
            .unwrap_or_else(|_| unreachable!("a Box fits inline"))
    })
}

/// A task that records its fate.
fn task_of(fate: &Arc<Fate>) -> Task {
    let fate = fate.clone();
    small(move |_: &(), status| {
        let counter = match status {
            TaskStatus::RunReady => &fate.ready,
            TaskStatus::Canceled => &fate.canceled,
        };
        counter.fetch_add(1, Ordering::SeqCst);
    })
}

/// Schedules `task`, giving it back until the engine takes it (a full engine hands it
/// back; the driver frees slots meanwhile).
fn schedule_until_taken(e: &Eng, mut task: Task, when: When) -> TaskRef {
    loop {
        match e.schedule(task, when) {
            Ok(r) => return r,
            Err(refused) => {
                assert!(matches!(refused.kind, RefusedKind::Full { .. }));
                cover("a schedule was refused as full");
                task = refused.task;
                thread::yield_now();
            }
        }
    }
}

/// Wraps `body` in a task that, after running it, counts into `done` and stops the loop
/// when `done` reaches `total`. The task holds the engine; the cycle ends when it runs.
fn stopping(
    e: &Arc<Eng>,
    done: &Arc<AtomicUsize>,
    total: usize,
    body: impl FnOnce(TaskStatus) + Send + 'static,
) -> Task {
    let (e, done) = (e.clone(), done.clone());
    small(move |_: &(), status| {
        body(status);
        if done.fetch_add(1, Ordering::SeqCst) + 1 == total {
            e.stop().unwrap();
        }
    })
}

/// Turns the engine on this thread until `done()`; a lost wakeup blocks a turn forever,
/// which loom reports as a deadlock.
fn turn_until(e: &Eng, done: impl Fn() -> bool) {
    while !done() {
        e.turn(&(), None).unwrap();
    }
}

// ---- wake protocol ----

fn wake_protocol(producers: usize, canary: Canary) {
    // Nothing of loom's is dropped while unwinding from a deadlock: a loom `Arc` or handle
    // dropped then finds no active thread and aborts the test binary instead of failing the
    // model (see `failed_start_against_waiter`). A normal execution drops it all at the end.
    let state = std::mem::ManuallyDrop::new({
        let e = engine(producers, 1, canary);
        let done = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..producers)
            .map(|_| {
                let task = stopping(&e, &done, producers, |status| {
                    assert_eq!(status, TaskStatus::RunReady)
                });
                let e = Arc::clone(&e);
                thread::spawn(move || {
                    e.schedule(task, When::Now).unwrap();
                })
            })
            .collect();
        (e, done, threads)
    });
    let (e, done, _) = &*state;
    // The driver sleeps in `poll` whenever it finds nothing: a wake the protocol loses
    // leaves it asleep with every producer done, which loom reports as a deadlock.
    e.run_here(&()).unwrap();
    let (e, done, threads) = std::mem::ManuallyDrop::into_inner(state);
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(done.load(Ordering::SeqCst), producers);
    let wakes = e.platform().wakes.load(Ordering::SeqCst);
    if wakes < producers {
        cover("a wake was coalesced");
    }
    if wakes > 0 {
        cover("a producer woke the driver");
    }
    assert_eq!(e.pending(), 0);
}

#[test]
fn engine_wake_protocol_two_producers() {
    check("engine wake protocol, 2 producers", || {
        wake_protocol(2, Canary::None)
    })
    .assert_covered(&["a wake was coalesced", "a producer woke the driver"]);
}

#[test]
#[should_panic(expected = "deadlock")]
fn canary_engine_park_check_then_clear_loses_a_wakeup() {
    check("canary: park checks then clears", || {
        wake_protocol(2, Canary::ParkCheckThenClear)
    });
}

// ---- serialized FIFO and a full engine ----

#[test]
fn engine_serialized_fifo_per_producer() {
    // Bound 1: at bound 2 this model does not fit the CI budget (see the README).
    check_bounded("engine serialized FIFO", 1, || {
        let e = engine(3, 1, Canary::None);
        // Each task records when it ran (a shared counter). Producer 0 schedules tasks 0
        // and 1, producer 1 schedules task 2, all serialized.
        let (clock, done) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let ran_at: Arc<Vec<AtomicUsize>> = Arc::new((0..3).map(|_| AtomicUsize::new(0)).collect());
        let record = |k: usize| {
            let (clock, ran_at) = (clock.clone(), ran_at.clone());
            stopping(&e, &done, 3, move |_| {
                let t = clock.fetch_add(1, Ordering::SeqCst) + 1;
                ran_at[k].store(t, Ordering::SeqCst);
            })
        };
        let (first, second, other) = (record(0), record(1), record(2));
        let p0 = {
            let e = e.clone();
            thread::spawn(move || {
                e.schedule(first, When::NowSerialized).unwrap();
                e.schedule(second, When::NowSerialized).unwrap();
            })
        };
        let p1 = {
            let e = e.clone();
            thread::spawn(move || {
                e.schedule(other, When::NowSerialized).unwrap();
            })
        };
        e.run_here(&()).unwrap();
        p0.join().unwrap();
        p1.join().unwrap();
        let at = |k: usize| ran_at[k].load(Ordering::SeqCst);
        assert!(at(0) < at(1), "producer 0's tasks ran out of order");
        if at(0) < at(2) && at(2) < at(1) {
            cover("the other producer's task ran between them");
        }
    })
    .assert_covered(&["the other producer's task ran between them"]);
}

#[test]
fn engine_a_full_engine_hands_tasks_back() {
    check("engine full", || {
        let e = engine(1, 1, Canary::None);
        let done = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let task = stopping(&e, &done, 2, |status| {
                    assert_eq!(status, TaskStatus::RunReady)
                });
                let e = e.clone();
                thread::spawn(move || {
                    schedule_until_taken(&e, task, When::Now);
                })
            })
            .collect();
        e.run_here(&()).unwrap();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(done.load(Ordering::SeqCst), 2);
    })
    .assert_covered(&["a schedule was refused as full"]);
}

// ---- cancel ----

fn cancel_against_run(canary: Canary) {
    let e = engine(2, 1, canary);
    let fate = Arc::new(Fate::default());
    let r = e.schedule(task_of(&fate), When::Now).unwrap();
    let canceler = {
        let e = e.clone();
        thread::spawn(move || e.cancel(&(), r))
    };
    turn_until(&e, || fate.runs() == 1);
    let won = canceler.join().unwrap();
    // The cancel's answer and the task's status agree; the task ran exactly once.
    fate.assert_once();
    assert_eq!(
        won,
        fate.canceled.load(Ordering::SeqCst) == 1,
        "cancel said {won}"
    );
    cover(if won { "the cancel won" } else { "the run won" });
    // Whatever won, a later turn finds nothing left (the cancel stack entry included).
    e.turn(&(), Some(0)).unwrap();
    fate.assert_once();
    assert_eq!(e.pending(), 0);
}

#[test]
fn engine_cancel_from_another_thread_against_the_run_exactly_once() {
    check("engine cancel against run", || {
        cancel_against_run(Canary::None)
    })
    .assert_covered(&["the cancel won", "the run won"]);
}

#[test]
#[should_panic]
fn canary_engine_cancel_without_cas_runs_a_task_twice_or_lies() {
    check("canary: cancel without CAS", || {
        cancel_against_run(Canary::CancelWithoutCas)
    });
}

#[test]
fn engine_cancel_with_a_stale_or_foreign_handle_touches_nothing() {
    check("engine stale and foreign handles", || {
        let a = engine(1, 1, Canary::None);
        let b = engine(1, 2, Canary::None);
        let first = Arc::new(Fate::default());
        let stale = a.schedule(task_of(&first), When::Now).unwrap();
        turn_until(&a, || first.runs() == 1);
        // Slot 0 of A again (generation moved on), and slot 0 of B.
        let (second, theirs) = (Arc::new(Fate::default()), Arc::new(Fate::default()));
        let reused = a.schedule(task_of(&second), When::Now).unwrap();
        assert_eq!((reused.slot(), stale.slot()), (0, 0));
        b.schedule(task_of(&theirs), When::Now).unwrap();
        let canceler = {
            let (a, b) = (a.clone(), b.clone());
            thread::spawn(move || (a.cancel(&(), stale), b.cancel(&(), stale)))
        };
        turn_until(&a, || second.runs() == 1);
        turn_until(&b, || theirs.runs() == 1);
        assert_eq!(canceler.join().unwrap(), (false, false));
        assert_eq!(second.ready.load(Ordering::SeqCst), 1);
        assert_eq!(theirs.ready.load(Ordering::SeqCst), 1);
        cover("checked");
    })
    .assert_covered(&["checked"]);
}

// ---- lifecycle ----

/// Starts a driver thread for `e` through the engine's own `start`.
fn start_driver(e: &Arc<Eng>) -> Option<thread::JoinHandle<()>> {
    let mut handle = None;
    let runner = e.clone();
    let started = e.start(|| {
        handle = Some(thread::spawn(move || {
            let _ = runner.drive(&());
        }));
        Ok::<(), ()>(())
    });
    started.ok().and(handle)
}

#[test]
fn engine_run_stop_wait_destroy_race() {
    check("engine run/stop/wait/destroy", || {
        let e = engine(2, 1, Canary::None);
        let fate = Arc::new(Fate::default());
        e.schedule(task_of(&fate), When::Now).unwrap();
        let starter = {
            let e = e.clone();
            thread::spawn(move || start_driver(&e))
        };
        let stopper = {
            let e = e.clone();
            thread::spawn(move || e.stop().unwrap())
        };
        stopper.join().unwrap();
        let driver = starter.join().unwrap().expect("the only start succeeds");
        e.stop().unwrap();
        e.wait().unwrap();
        driver.join().unwrap();
        e.destroy(&(), None).unwrap();
        fate.assert_once();
        assert_eq!(e.state(), State::Destroyed);
        assert_eq!(e.pending(), 0);
        cover(if fate.ready.load(Ordering::SeqCst) == 1 {
            "the task ran"
        } else {
            "the task was canceled"
        });
    })
    .assert_covered(&["the task ran", "the task was canceled"]);
}

fn failed_start_against_waiter(canary: Canary) {
    // Not dropped while unwinding: when the canary strands the waiter, loom's deadlock
    // panic unwinds through this frame, and any loom operation then (a loom `Arc`'s count,
    // the engine's own drop) finds no active thread and aborts the test binary instead of
    // failing the model. A normal execution drops it at the end.
    let e = std::mem::ManuallyDrop::new(std::sync::Arc::new(
        Engine::new(LoomPlatform::new(), vec![Slot::<Task>::new()], 1)
            .unwrap()
            .with_canary(canary),
    ));
    let starter = {
        let e = std::sync::Arc::clone(&e);
        thread::spawn(move || assert!(e.start(|| Err::<(), ()>(())).is_err()))
    };
    // The waiter is the main thread: when the canary strands it, loom reports the deadlock
    // from inside its wait (a joiner blocked on a stranded thread would abort instead).
    // The yield gives loom a branch before the wait: loom 0.7 otherwise misses the
    // orderings where the starter goes first (tokio-rs/loom#392; see the README).
    thread::yield_now();
    e.wait().unwrap();
    starter.join().unwrap();
    assert_eq!(e.state(), State::Ready);
    if e.platform().waits.load(Ordering::SeqCst) > 0 {
        cover("the waiter slept while the start was failing");
    }
    drop(std::mem::ManuallyDrop::into_inner(e));
}

#[test]
fn engine_a_failed_start_wakes_a_concurrent_waiter() {
    check("engine failed start vs waiter", || {
        failed_start_against_waiter(Canary::None)
    })
    .assert_covered(&["the waiter slept while the start was failing"]);
}

#[test]
#[should_panic(expected = "deadlock")]
fn canary_engine_spawn_failure_without_notify_strands_the_waiter() {
    check("canary: spawn failure without notify", || {
        failed_start_against_waiter(Canary::SpawnFailureWithoutNotify)
    });
}

#[test]
fn engine_wait_racing_run_never_returns_while_the_loop_runs() {
    check("engine wait racing run", || {
        let e = engine(1, 1, Canary::None);
        let stop_called = Arc::new(AtomicBool::new(false));
        let starter = {
            let e = e.clone();
            thread::spawn(move || start_driver(&e))
        };
        let waiter = {
            let (e, stop_called) = (e.clone(), stop_called.clone());
            thread::spawn(move || {
                let before = e.lifecycle().is_live();
                e.wait().unwrap();
                let early = !stop_called.load(Ordering::SeqCst);
                assert!(!(before && early), "wait returned while the loop ran");
                cover(if before {
                    "the waiter waited for a live loop"
                } else {
                    "the waiter came first"
                });
            })
        };
        let driver = starter.join().unwrap().expect("started");
        stop_called.store(true, Ordering::SeqCst);
        e.stop().unwrap();
        waiter.join().unwrap();
        e.wait().unwrap();
        driver.join().unwrap();
    })
    .assert_covered(&["the waiter waited for a live loop", "the waiter came first"]);
}

// ---- destroy ----

fn destroy_against_producer(canary: Canary) {
    let e = engine(2, 1, canary);
    let fate = Arc::new(Fate::default());
    let producer = {
        let (e, fate) = (e.clone(), fate.clone());
        thread::spawn(move || match e.schedule(task_of(&fate), When::Now) {
            Ok(_) => true,
            Err(refused) => {
                assert!(matches!(refused.kind, RefusedKind::Destroyed(_)));
                false
            }
        })
    };
    e.destroy(&(), None).unwrap();
    let accepted = producer.join().unwrap();
    if accepted {
        fate.assert_once();
        assert_eq!(fate.canceled.load(Ordering::SeqCst), 1);
        cover("an accepted task was canceled by destroy");
    } else {
        assert_eq!(fate.runs(), 0, "a refused task never runs");
        cover("the schedule was refused");
    }
    assert_eq!(e.pending(), 0);
}

#[test]
fn engine_destroy_against_an_in_flight_producer() {
    check("engine destroy vs producer", || {
        destroy_against_producer(Canary::None)
    })
    .assert_covered(&[
        "an accepted task was canceled by destroy",
        "the schedule was refused",
    ]);
}

#[test]
#[should_panic]
fn canary_engine_teardown_that_skips_producers_loses_a_task() {
    check("canary: teardown skips producers", || {
        destroy_against_producer(Canary::TeardownSkipsProducers)
    });
}

#[test]
fn engine_abandoned_destroy_against_an_in_flight_producer() {
    check("engine abandoned destroy vs producer", || {
        let e = engine(2, 1, Canary::None);
        // The driver is held in a task until the main thread opens the gate (a blocking
        // wait: loom explores it without the unbounded branches of a spin).
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        let held = {
            let gate = gate.clone();
            small(move |_: &(), status| {
                // Canceled (by a teardown on the main thread, when the driver exited before
                // its first tick), it must not wait for a gate only the main thread opens.
                if status == TaskStatus::Canceled {
                    return;
                }
                let (open, cv) = &*gate;
                let mut open = open.lock().unwrap();
                while !*open {
                    open = cv.wait(open).unwrap();
                }
            })
        };
        e.schedule(held, When::Now).unwrap();
        let driver = start_driver(&e).expect("started");
        let fate = Arc::new(Fate::default());
        let producer = {
            let (e, fate) = (e.clone(), fate.clone());
            thread::spawn(move || e.schedule(task_of(&fate), When::Now).is_ok())
        };
        match e.destroy(&(), Some(0)) {
            Err(DestroyError::Abandoned) => cover("destroy abandoned the live driver"),
            Ok(()) => cover("the driver exited before destroy gave up"),
            Err(other) => panic!("destroy failed: {other:?}"),
        }
        *gate.0.lock().unwrap() = true;
        gate.1.notify_all();
        let accepted = producer.join().unwrap();
        driver.join().unwrap();
        assert_eq!(e.state(), State::Destroyed);
        if accepted {
            fate.assert_once();
        } else {
            assert_eq!(fate.runs(), 0);
        }
        assert_eq!(e.pending(), 0);
    })
    .assert_covered(&["destroy abandoned the live driver"]);
}

#[test]
fn engine_a_task_scheduled_by_a_canceled_task_during_destroy_is_canceled() {
    check(
        "engine destroy cancels what canceled tasks schedule",
        || {
            let e = engine(3, 1, Canary::None);
            let child = Arc::new(Fate::default());
            let parent = Arc::new(Fate::default());
            let task = {
                let (e2, child, parent) = (e.clone(), child.clone(), parent.clone());
                small(move |_: &(), status| {
                    assert_eq!(status, TaskStatus::Canceled);
                    parent.canceled.fetch_add(1, Ordering::SeqCst);
                    // On the destroying thread, the loop's identity: accepted, then canceled.
                    assert!(e2.is_driver());
                    e2.schedule(task_of(&child), When::Now).unwrap();
                })
            };
            e.schedule(task, When::At(1_000)).unwrap();
            let late = Arc::new(Fate::default());
            let producer = {
                let (e, late) = (e.clone(), late.clone());
                thread::spawn(move || e.schedule(task_of(&late), When::Now).is_ok())
            };
            e.destroy(&(), None).unwrap();
            let accepted = producer.join().unwrap();
            parent.assert_once();
            child.assert_once();
            assert_eq!(child.canceled.load(Ordering::SeqCst), 1);
            assert_eq!(late.runs(), usize::from(accepted));
            cover(if accepted {
                "the late task was canceled"
            } else {
                "the late task was refused"
            });
            assert_eq!(e.pending(), 0);
        },
    )
    .assert_covered(&["the late task was canceled", "the late task was refused"]);
}
