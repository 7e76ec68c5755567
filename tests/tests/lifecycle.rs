//! Contract items 4-9 and 24-28: run, stop, wait, restart and destroy, and the places where
//! aws-c-io is loose and reseau is exact.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::channel;
use std::sync::{Arc, Barrier, Mutex};

use reseau_linux::{
    Errno, Error, EventLoop, EventLoopOptions, Operation, ScheduleErrorKind, State, SysError,
    TaskStatus,
};
use reseau_tests::util::{Faults, recv};

fn running() -> EventLoop {
    let el = EventLoop::new(EventLoopOptions::default()).unwrap();
    el.run().unwrap();
    el
}

fn invalid(e: Error) -> reseau_linux::LifecycleError {
    match e {
        Error::InvalidState(e) => e,
        other => panic!("expected an invalid-state error, got {other:?}"),
    }
}

#[test]
fn c04_run_on_a_running_loop_is_an_invalid_state_error() {
    let mut el = running();
    let e = invalid(el.run().unwrap_err());
    assert_eq!((e.op, e.state), (Operation::Run, State::Running));
    assert_eq!(e.to_string(), "run is invalid while the loop is running");
    el.destroy().unwrap();
}

#[test]
fn c04_stop_is_idempotent_from_any_thread() {
    let mut el = running();
    let h = el.handle();
    let barrier = Arc::new(Barrier::new(8));
    let stoppers: Vec<_> = (0..8)
        .map(|_| {
            let (h, b) = (h.clone(), barrier.clone());
            std::thread::spawn(move || {
                b.wait();
                h.stop()
            })
        })
        .collect();
    for s in stoppers {
        s.join().unwrap().unwrap();
    }
    for _ in 0..8 {
        el.stop().unwrap();
    }
    el.wait_for_stop_completion().unwrap();
    assert_eq!(el.state(), State::Ready);
    for _ in 0..8 {
        el.stop().unwrap();
    }
    el.destroy().unwrap();
}

#[test]
fn c04_stop_from_the_loop_thread_takes_effect_when_the_current_task_returns() {
    let mut el = running();
    let h = el.handle();
    let log = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = channel();
    let (l1, l2) = (log.clone(), log.clone());
    // Both tasks are in one batch: the first stops the loop and carries on; the second
    // must wait for the next run.
    h.schedule_now(move |h, _| {
        let (l1b, l2b) = (l1.clone(), l2.clone());
        let tx = tx.clone();
        h.schedule_now(move |h, _| {
            h.stop().unwrap();
            l1b.lock().unwrap().push("stopper continued after stop");
            tx.send(()).unwrap();
        })
        .unwrap();
        h.schedule_now(move |_, _| l2b.lock().unwrap().push("second task"))
            .unwrap();
    })
    .unwrap();
    recv(&rx);
    el.wait_for_stop_completion().unwrap();
    assert_eq!(*log.lock().unwrap(), ["stopper continued after stop"]);
    el.run().unwrap();
    let (tx, rx) = channel();
    h.schedule_now(move |_, _| tx.send(()).unwrap()).unwrap();
    recv(&rx);
    assert_eq!(
        *log.lock().unwrap(),
        ["stopper continued after stop", "second task"]
    );
    el.destroy().unwrap();
}

#[test]
fn c05_wait_from_the_loop_thread_is_an_invalid_state_error_not_a_deadlock() {
    let el = Arc::new(running());
    let (tx, rx) = channel();
    let el2 = el.clone();
    el.schedule_now(move |_, _| {
        tx.send(el2.wait_for_stop_completion()).unwrap();
    })
    .unwrap();
    let e = invalid(recv(&rx).unwrap_err());
    assert!(e.on_loop_thread);
    assert_eq!(e.op, Operation::Wait);
    el.stop().unwrap();
    el.wait_for_stop_completion().unwrap();
    let mut el = Arc::try_unwrap(el).expect("the task released its reference");
    el.destroy().unwrap();
}

#[test]
fn c06_stop_then_restart_runs_tasks_on_a_new_loop_thread() {
    let mut el = running();
    let h = el.handle();
    let mut threads = Vec::new();
    for _ in 0..3 {
        let (tx, rx) = channel();
        h.schedule_now(move |h, st| {
            tx.send((std::thread::current().id(), h.is_on_loop_thread(), st))
                .unwrap()
        })
        .unwrap();
        let (id, on_loop, st) = recv(&rx);
        assert!(on_loop);
        assert_eq!(st, TaskStatus::RunReady);
        threads.push(id);
        el.stop().unwrap();
        el.wait_for_stop_completion().unwrap();
        assert!(!h.is_on_loop_thread());
        el.run().unwrap();
    }
    assert_ne!(threads[0], threads[1]);
    assert_ne!(threads[1], threads[2]);
    el.destroy().unwrap();
}

#[test]
fn c07_destroy_cancels_every_task_exactly_once_synchronously_on_the_destroying_thread() {
    let mut el = running();
    let h = el.handle();
    let me = std::thread::current().id();
    let log = Arc::new(Mutex::new(Vec::new()));
    let far = h.now() + 3_600_000_000_000;
    // Scheduled on the loop thread, straight into the scheduler. When canceled, it
    // schedules another task, which must be canceled too.
    let (tx, rx) = channel();
    let l = log.clone();
    h.schedule_now(move |h, _| {
        let l2 = l.clone();
        h.schedule_at(far, move |h, st| {
            l2.lock().unwrap().push((
                "timer",
                st,
                h.is_on_loop_thread(),
                std::thread::current().id(),
            ));
            let l3 = l2.clone();
            h.schedule_now(move |h, st| {
                l3.lock().unwrap().push((
                    "child",
                    st,
                    h.is_on_loop_thread(),
                    std::thread::current().id(),
                ));
            })
            .unwrap();
        })
        .unwrap();
        tx.send(()).unwrap();
    })
    .unwrap();
    recv(&rx);
    // Queued cross-thread while the loop is stopped: still in the inbox at destroy.
    el.stop().unwrap();
    el.wait_for_stop_completion().unwrap();
    for name in ["queued 1", "queued 2"] {
        let l = log.clone();
        h.schedule_now(move |h, st| {
            l.lock()
                .unwrap()
                .push((name, st, h.is_on_loop_thread(), std::thread::current().id()));
        })
        .unwrap();
    }
    assert!(log.lock().unwrap().is_empty());
    el.destroy().unwrap();
    // Synchronously inside destroy: everything is there the moment it returns.
    let log = log.lock().unwrap().clone();
    let names: Vec<_> = log.iter().map(|e| e.0).collect();
    // Scheduler first (including what canceled tasks schedule), then the inbox.
    assert_eq!(names, ["timer", "child", "queued 1", "queued 2"]);
    for (name, st, on_loop, thread) in log {
        assert_eq!(st, TaskStatus::Canceled, "{name}");
        assert!(on_loop, "{name} did not see is_on_loop_thread()");
        assert_eq!(thread, me, "{name} ran off the destroying thread");
    }
    assert_eq!(
        h.stats().tasks_canceled,
        0,
        "the handle outlives the loop: zeros"
    );
}

#[test]
fn c07_destroy_from_the_loop_thread_is_an_invalid_state_error_not_a_deadlock() {
    let el = Arc::new(Mutex::new(Some(running())));
    let h = el.lock().unwrap().as_ref().unwrap().handle();
    let (tx, rx) = channel();
    let el2 = el.clone();
    h.schedule_now(move |_, _| {
        let mut guard = el2.lock().unwrap();
        let r = guard.as_mut().unwrap().destroy();
        tx.send(r).unwrap();
    })
    .unwrap();
    let e = invalid(recv(&rx).unwrap_err());
    assert!(e.on_loop_thread);
    assert_eq!(e.op, Operation::Destroy);
    let mut el = el.lock().unwrap().take().unwrap();
    assert_eq!(el.state(), State::Running);
    el.destroy().unwrap();
}

#[test]
fn c09_a_schedule_after_destroy_began_is_refused_with_the_task() {
    let mut el = running();
    let h = el.handle();
    el.destroy().unwrap();
    let (tx, rx) = channel();
    let err = h
        .schedule_now(move |_, st| tx.send(st).unwrap())
        .unwrap_err();
    assert!(matches!(err.kind, ScheduleErrorKind::Destroyed(_)));
    err.into_task().run(&h, TaskStatus::Canceled);
    assert_eq!(rx.try_recv(), Ok(TaskStatus::Canceled));
    let e = invalid(el.run().unwrap_err());
    assert_eq!((e.op, e.state), (Operation::Run, State::Destroyed));
    assert!(el.destroy().is_err());
}

#[test]
fn c09_schedules_racing_destroy_are_run_canceled_or_handed_back_never_lost() {
    for _ in 0..20 {
        let mut el = running();
        let h = el.handle();
        let accounted = Arc::new(AtomicUsize::new(0));
        let barrier = Arc::new(Barrier::new(3));
        let producers: Vec<_> = (0..2)
            .map(|_| {
                let (h, a, b) = (h.clone(), accounted.clone(), barrier.clone());
                std::thread::spawn(move || {
                    b.wait();
                    let mut attempts = 0;
                    loop {
                        attempts += 1;
                        let a2 = a.clone();
                        match h.schedule_at(u64::MAX, move |_, _| {
                            a2.fetch_add(1, Ordering::SeqCst);
                        }) {
                            Ok(_) => {}
                            Err(e) => {
                                let destroyed = matches!(e.kind, ScheduleErrorKind::Destroyed(_));
                                drop(e.into_task());
                                a.fetch_add(1, Ordering::SeqCst);
                                if destroyed {
                                    return attempts;
                                }
                            }
                        }
                    }
                })
            })
            .collect();
        barrier.wait();
        el.destroy().unwrap();
        let attempts: usize = producers.into_iter().map(|p| p.join().unwrap()).sum();
        assert_eq!(accounted.load(Ordering::SeqCst), attempts);
    }
}

#[test]
fn c24_stop_before_any_run_does_not_poison_the_next_run() {
    let mut el = EventLoop::new(EventLoopOptions::default()).unwrap();
    el.stop().unwrap();
    el.stop().unwrap();
    el.run().unwrap();
    let (tx, rx) = channel();
    el.schedule_now(move |_, st| tx.send(st).unwrap()).unwrap();
    assert_eq!(recv(&rx), TaskStatus::RunReady);
    assert_eq!(el.state(), State::Running);
    el.destroy().unwrap();
}

#[test]
fn c25_pending_timers_keep_their_deadlines_across_a_restart() {
    let mut el = running();
    let h = el.handle();
    let deadline = h.now() + 50_000_000;
    let (tx, rx) = channel();
    h.schedule_at(deadline, move |h, st| {
        tx.send((h.now() >= deadline, st)).unwrap()
    })
    .unwrap();
    el.stop().unwrap();
    el.wait_for_stop_completion().unwrap();
    el.run().unwrap();
    // aws-c-io's first wait after a restart is 100 s: this would hit the failure guard.
    assert_eq!(recv(&rx), (true, TaskStatus::RunReady));
    el.destroy().unwrap();
}

#[test]
fn c27_a_failure_to_register_the_wakeup_is_returned_by_run() {
    let faults = Arc::new(Faults {
        epoll_add: Some(Errno::PERM),
        ..Faults::default()
    });
    let mut el = EventLoop::new(faults.options()).unwrap();
    match el.run().unwrap_err() {
        Error::Sys(SysError { call, errno }) => {
            assert_eq!(call, "epoll_ctl(ADD wakeup)");
            assert_eq!(errno, Errno::PERM);
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(
        el.state(),
        State::Ready,
        "a failed run leaves the loop ready"
    );
    el.destroy().unwrap();
}

#[test]
fn c27_a_failure_to_spawn_the_loop_thread_is_returned_by_run() {
    // A stack larger than any user address space (2^50 bytes; x86_64 has 2^47): the
    // loop thread cannot be created, so `pthread_create` fails (EAGAIN from glibc, whose
    // stack mmap fails).
    let huge = usize::try_from(1u64 << 50).unwrap_or(usize::MAX / 2);
    let mut el = EventLoop::new(EventLoopOptions {
        stack_size: Some(huge),
        ..EventLoopOptions::default()
    })
    .unwrap();
    let (tx, rx) = channel();
    el.schedule_now(move |h, st| tx.send((st, h.is_on_loop_thread())).unwrap())
        .unwrap();
    for attempt in 0..2 {
        match el.run().unwrap_err() {
            Error::Spawn(e) => {
                let errno = e.raw_os_error();
                assert!(
                    errno == Some(libc::EAGAIN) || errno == Some(libc::ENOMEM),
                    "attempt {attempt}: {e:?}"
                );
                assert!(
                    Error::Spawn(e)
                        .to_string()
                        .contains("spawning a thread failed"),
                    "attempt {attempt}"
                );
            }
            other => panic!("attempt {attempt}: expected a spawn error, got {other:?}"),
        }
        // The failed start left no trace: still ready (the second attempt fails the same
        // way, not with "already running"), and the task queued before it has not run.
        assert_eq!(el.state(), State::Ready, "attempt {attempt}");
        assert!(rx.try_recv().is_err(), "attempt {attempt}: the task ran");
    }
    el.destroy().unwrap();
    assert_eq!(recv(&rx), (TaskStatus::Canceled, true));
}

#[test]
fn c27_an_invalid_thread_name_is_refused_up_front() {
    let e = EventLoop::new(EventLoopOptions {
        thread_name: "bad\0name".into(),
        ..EventLoopOptions::default()
    })
    .unwrap_err();
    assert!(matches!(e, Error::InvalidOption(_)), "{e:?}");
}

#[test]
fn c28_epoll_wait_eintr_is_retried_and_other_errors_stop_the_loop_visibly() {
    let faults = Arc::new(Faults::default());
    faults
        .epoll_wait
        .lock()
        .unwrap()
        .extend([Errno::INTR, Errno::INTR, Errno::INTR]);
    let mut el = EventLoop::new(faults.options()).unwrap();
    el.run().unwrap();
    let h = el.handle();
    let (tx, rx) = channel();
    let t = tx.clone();
    h.schedule_now(move |_, st| t.send(st).unwrap()).unwrap();
    assert_eq!(recv(&rx), TaskStatus::RunReady, "EINTR must be retried");
    assert_eq!(el.state(), State::Running);
    // Now a real failure: the next epoll_wait fails with EBADF.
    faults.epoll_wait.lock().unwrap().push_back(Errno::BADF);
    let waits_before = faults.waits.load(Ordering::SeqCst);
    h.schedule_now(|_, _| ()).unwrap();
    match el.wait_for_stop_completion().unwrap_err() {
        Error::Sys(SysError { call, errno }) => {
            assert_eq!((call, errno), (wait_call(&el), Errno::BADF));
        }
        other => panic!("unexpected {other:?}"),
    }
    // No hot spin: the failure stopped the loop after a handful of waits.
    assert!(faults.waits.load(Ordering::SeqCst) - waits_before <= 3);
    assert_eq!(el.state(), State::Ready);
    // The error is reported once; the loop can run again.
    el.run().unwrap();
    h.schedule_now(move |_, st| tx.send(st).unwrap()).unwrap();
    assert_eq!(recv(&rx), TaskStatus::RunReady);
    el.destroy().unwrap();
}

#[test]
fn c29_thread_identity_is_published_by_the_loop_thread_before_its_first_task() {
    let mut el = EventLoop::new(EventLoopOptions::default()).unwrap();
    let h = el.handle();
    assert!(
        !h.is_on_loop_thread(),
        "a loop that never ran has no thread"
    );
    // Queued before `run`: the very first task the new thread runs already sees itself as
    // the loop thread, with no help from the thread that called `run`.
    let report = |tx: std::sync::mpsc::Sender<_>| {
        move |h: &reseau_linux::LoopHandle, _| {
            tx.send((h.is_on_loop_thread(), std::thread::current().id()))
                .unwrap()
        }
    };
    let (tx, rx) = channel();
    h.schedule_now(report(tx.clone())).unwrap();
    el.run().unwrap();
    let (on_loop, first) = recv(&rx);
    assert!(on_loop);
    assert_ne!(first, std::thread::current().id());
    assert!(
        !h.is_on_loop_thread(),
        "the caller of run is not the loop thread"
    );
    // After a restart the identity is the new thread's.
    el.stop().unwrap();
    el.wait_for_stop_completion().unwrap();
    assert!(!h.is_on_loop_thread());
    h.schedule_now(report(tx)).unwrap();
    el.run().unwrap();
    let (on_loop, second) = recv(&rx);
    assert!(on_loop);
    assert_ne!(second, first, "a restart runs on a new thread");
    el.destroy().unwrap();
}

/// The name a failed wait reports: the call the loop's timer backend waits with.
fn wait_call(el: &EventLoop) -> &'static str {
    match el.backend().unwrap().timer {
        reseau_linux::TimerBackend::Pwait2 => "epoll_pwait2",
        _ => "epoll_wait",
    }
}
