//! Every transition of the lifecycle, legal and illegal, in one table.

use super::*;
use std::vec::Vec;

/// The states a test can start from, built by legal transitions only.
#[derive(Debug, Clone, Copy, PartialEq)]
enum From {
    Ready,
    Running,
    Stopping,
    Stopped,
    Destroying,
    DestroyingLive,
    Destroyed,
}

fn build(from: From) -> Lifecycle {
    let l = Lifecycle::new();
    match from {
        From::Ready => {}
        From::Running => l.begin_run().unwrap(),
        From::Stopping => {
            l.begin_run().unwrap();
            assert_eq!(l.request_stop(), Ok(StopOutcome::Requested));
        }
        From::Stopped => {
            l.begin_run().unwrap();
            l.request_stop().unwrap();
            l.loop_exited();
        }
        From::Destroying => {
            l.begin_destroy(false).unwrap();
        }
        From::DestroyingLive => {
            l.begin_run().unwrap();
            assert_eq!(l.begin_destroy(false), Ok(State::Running));
        }
        From::Destroyed => {
            l.begin_destroy(false).unwrap();
            l.finish_destroy().unwrap();
        }
    }
    l
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Op {
    Run,
    RunFailed,
    Stop,
    LoopExited,
    Wait,
    WaitOnLoop,
    FinishWait,
    Destroy,
    DestroyOnLoop,
    FinishDestroy,
    Schedule,
}

/// `Ok(())` or the error's (state, on_loop_thread, live).
type Outcome = Result<(), (State, bool, bool)>;

fn apply(l: &Lifecycle, op: Op) -> (Outcome, Option<StopOutcome>) {
    let e = |e: LifecycleError| (e.state, e.on_loop_thread, e.live);
    match op {
        Op::Run => (l.begin_run().map_err(e), None),
        Op::RunFailed => {
            l.run_failed();
            (Ok(()), None)
        }
        Op::Stop => match l.request_stop() {
            Ok(o) => (Ok(()), Some(o)),
            Err(x) => (Err(e(x)), None),
        },
        Op::LoopExited => {
            l.loop_exited();
            (Ok(()), None)
        }
        Op::Wait => (l.begin_wait(false).map(|_| ()).map_err(e), None),
        Op::WaitOnLoop => (l.begin_wait(true).map(|_| ()).map_err(e), None),
        Op::FinishWait => {
            l.finish_wait();
            (Ok(()), None)
        }
        Op::Destroy => (l.begin_destroy(false).map(|_| ()).map_err(e), None),
        Op::DestroyOnLoop => (l.begin_destroy(true).map(|_| ()).map_err(e), None),
        Op::FinishDestroy => (l.finish_destroy().map_err(e), None),
        Op::Schedule => (l.enter_producer().map(drop).map_err(e), None),
    }
}

use State as S;

const OK: Outcome = Ok(());
fn bad(s: State) -> Outcome {
    Err((s, false, false))
}
fn on_loop(s: State) -> Outcome {
    Err((s, true, false))
}

#[test]
fn lifecycle_every_transition_legal_and_illegal() {
    // (from, op, outcome, stop outcome, state after, live after)
    #[rustfmt::skip]
    let table: Vec<(From, Op, Outcome, Option<StopOutcome>, State, bool)> = std::vec![
        // run
        (From::Ready, Op::Run, OK, None, S::Running, true),
        (From::Running, Op::Run, bad(S::Running), None, S::Running, true),
        (From::Stopping, Op::Run, bad(S::Stopping), None, S::Stopping, true),
        (From::Stopped, Op::Run, bad(S::Stopped), None, S::Stopped, false),
        (From::Destroying, Op::Run, bad(S::Destroying), None, S::Destroying, false),
        (From::Destroyed, Op::Run, bad(S::Destroyed), None, S::Destroyed, false),
        // run_failed undoes only a run, also one a stop or a destroy raced
        (From::Running, Op::RunFailed, OK, None, S::Ready, false),
        (From::Stopping, Op::RunFailed, OK, None, S::Ready, false),
        (From::DestroyingLive, Op::RunFailed, OK, None, S::Destroying, false),
        (From::Ready, Op::RunFailed, OK, None, S::Ready, false),
        (From::Stopped, Op::RunFailed, OK, None, S::Stopped, false),
        (From::Destroying, Op::RunFailed, OK, None, S::Destroying, false),
        // stop
        (From::Ready, Op::Stop, OK, Some(StopOutcome::NotRunning), S::Ready, false),
        (From::Running, Op::Stop, OK, Some(StopOutcome::Requested), S::Stopping, true),
        (From::Stopping, Op::Stop, OK, Some(StopOutcome::AlreadyStopping), S::Stopping, true),
        (From::Stopped, Op::Stop, OK, Some(StopOutcome::NotRunning), S::Stopped, false),
        (From::DestroyingLive, Op::Stop, OK, Some(StopOutcome::AlreadyStopping), S::Destroying, true),
        (From::Destroyed, Op::Stop, bad(S::Destroyed), None, S::Destroyed, false),
        // the loop thread's exit
        (From::Running, Op::LoopExited, OK, None, S::Stopped, false),
        (From::Stopping, Op::LoopExited, OK, None, S::Stopped, false),
        (From::DestroyingLive, Op::LoopExited, OK, None, S::Destroying, false),
        // wait
        (From::Ready, Op::Wait, OK, None, S::Ready, false),
        (From::Running, Op::Wait, OK, None, S::Running, true),
        (From::Stopped, Op::Wait, OK, None, S::Stopped, false),
        (From::Destroying, Op::Wait, OK, None, S::Destroying, false),
        (From::Destroyed, Op::Wait, bad(S::Destroyed), None, S::Destroyed, false),
        (From::Running, Op::WaitOnLoop, on_loop(S::Running), None, S::Running, true),
        (From::Stopping, Op::WaitOnLoop, on_loop(S::Stopping), None, S::Stopping, true),
        (From::Stopped, Op::FinishWait, OK, None, S::Ready, false),
        (From::Stopping, Op::FinishWait, OK, None, S::Stopping, true),
        (From::Destroying, Op::FinishWait, OK, None, S::Destroying, false),
        // destroy
        (From::Ready, Op::Destroy, OK, None, S::Destroying, false),
        (From::Running, Op::Destroy, OK, None, S::Destroying, true),
        (From::Stopped, Op::Destroy, OK, None, S::Destroying, false),
        (From::Destroying, Op::Destroy, bad(S::Destroying), None, S::Destroying, false),
        (From::Destroyed, Op::Destroy, bad(S::Destroyed), None, S::Destroyed, false),
        (From::Running, Op::DestroyOnLoop, on_loop(S::Running), None, S::Running, true),
        // teardown only without a live loop thread
        (From::Destroying, Op::FinishDestroy, OK, None, S::Destroyed, false),
        (From::DestroyingLive, Op::FinishDestroy, Err((S::Destroying, false, true)), None, S::Destroying, true),
        (From::Ready, Op::FinishDestroy, bad(S::Ready), None, S::Ready, false),
        (From::Destroyed, Op::FinishDestroy, bad(S::Destroyed), None, S::Destroyed, false),
        // schedule: allowed until destroy begins, including on a stopped loop
        (From::Ready, Op::Schedule, OK, None, S::Ready, false),
        (From::Running, Op::Schedule, OK, None, S::Running, true),
        (From::Stopped, Op::Schedule, OK, None, S::Stopped, false),
        (From::Destroying, Op::Schedule, bad(S::Destroying), None, S::Destroying, false),
        (From::Destroyed, Op::Schedule, bad(S::Destroyed), None, S::Destroyed, false),
    ];
    for (i, &(from, op, outcome, stop, state, live)) in table.iter().enumerate() {
        let l = build(from);
        let (got, got_stop) = apply(&l, op);
        assert_eq!(got, outcome, "row {i}: {op:?} from {from:?}");
        assert_eq!(got_stop, stop, "row {i}: {op:?} from {from:?}");
        assert_eq!(
            l.state(),
            state,
            "row {i}: state after {op:?} from {from:?}"
        );
        assert_eq!(
            l.is_live(),
            live,
            "row {i}: live after {op:?} from {from:?}"
        );
        assert_eq!(l.producers(), 0, "row {i}: a producer guard leaked");
    }
}

#[test]
fn lifecycle_full_cycle_and_restart() {
    let l = Lifecycle::new();
    for _ in 0..3 {
        l.begin_run().unwrap();
        assert!(l.should_run());
        assert_eq!(l.request_stop(), Ok(StopOutcome::Requested));
        for _ in 0..8 {
            assert_eq!(l.request_stop(), Ok(StopOutcome::AlreadyStopping));
        }
        assert!(!l.should_run());
        l.loop_exited();
        l.begin_wait(false).unwrap();
        l.finish_wait();
        assert_eq!(l.state(), State::Ready);
    }
}

#[test]
fn lifecycle_producers_are_counted_and_block_nothing_but_destroy() {
    let l = Lifecycle::new();
    let a = l.enter_producer().unwrap();
    let b = l.enter_producer().unwrap();
    assert_eq!(l.producers(), 2);
    assert_eq!(l.begin_destroy(false), Ok(State::Ready));
    assert_eq!(
        l.producers(),
        2,
        "destroy waits for in-flight producers itself"
    );
    assert!(l.enter_producer().is_err());
    drop(a);
    drop(b);
    assert_eq!(l.producers(), 0);
    assert_eq!(l.state(), State::Destroying);
}

#[test]
fn lifecycle_errors_name_operation_and_state() {
    use std::string::ToString;
    let l = build(From::Running);
    let e = l.begin_run().unwrap_err();
    assert_eq!(e.to_string(), "run is invalid while the loop is running");
    let e = l.begin_wait(true).unwrap_err();
    assert_eq!(
        e.to_string(),
        "wait_for_stop_completion called from the loop's own thread (loop running): it would wait for itself"
    );
    let l = build(From::DestroyingLive);
    let e = l.finish_destroy().unwrap_err();
    assert_eq!(
        e.to_string(),
        "teardown refused: the loop thread is still alive (loop being destroyed)"
    );
}

/// Found by the `lifecycle` fuzz target (shim mode): a `stop` or a `destroy` that lands
/// between `begin_run` and a failed thread start used to leave the live bit set with no
/// loop thread, so the loop could never run again and destroy's teardown was refused
/// forever (its descriptors leaked).
#[test]
fn lifecycle_run_failed_after_a_racing_stop_or_destroy_clears_the_live_bit() {
    // stop raced the failed start: the loop is ready to run again
    let l = Lifecycle::new();
    l.begin_run().unwrap();
    assert_eq!(l.request_stop(), Ok(StopOutcome::Requested));
    l.run_failed();
    assert_eq!(l.state(), State::Ready);
    assert!(!l.is_live());
    l.begin_run().unwrap();
    assert!(l.should_run());

    // destroy raced the failed start: teardown succeeds
    let l = Lifecycle::new();
    l.begin_run().unwrap();
    assert_eq!(l.begin_destroy(false), Ok(State::Running));
    l.run_failed();
    assert_eq!(l.state(), State::Destroying);
    assert!(!l.is_live());
    assert_eq!(l.finish_destroy(), Ok(()));
    assert_eq!(l.state(), State::Destroyed);
}
