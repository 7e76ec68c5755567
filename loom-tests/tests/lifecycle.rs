//! Loom model of `reseau_core::Lifecycle`: run, stop, wait and destroy racing from several
//! threads, with the loop thread's own transitions. See `loom-tests/README.md`.
#![cfg(loom)]

use loom::sync::atomic::{AtomicUsize, Ordering};
use loom::sync::{Arc, Condvar, Mutex};
use loom::thread::{self, JoinHandle};
use reseau_core::{Lifecycle, LifecycleError, Operation, State, StopOutcome};
use reseau_loom_tests::harness::{Wakeup, check, cover};

/// Which `begin_run` the runners call.
#[derive(Clone, Copy)]
enum Run {
    /// The real one (one CAS).
    Correct,
    /// The canary: a load, then a `fetch_or`.
    WithoutCas,
}

/// What the shim around a `Lifecycle` holds, reduced to what the model needs.
struct Shim {
    lifecycle: Lifecycle,
    run: Run,
    /// The loop's eventfd.
    wakeup: Wakeup,
    /// Loop threads that exist and have not yet called `loop_exited` (counted by the runner
    /// that won `begin_run`, uncounted by the loop thread just before `loop_exited`).
    live_loops: AtomicUsize,
    /// Successful `begin_run`s.
    runs: AtomicUsize,
    /// `StopOutcome::Requested` answers.
    stop_requests: AtomicUsize,
    /// The "join": a loop thread notifies after its `loop_exited`.
    exited: Mutex<()>,
    exited_cv: Condvar,
    /// Loop threads, joined by the model's main thread at the end.
    loops: Mutex<Vec<JoinHandle<()>>>,
}

/// Every assertion of this model starts with this, so the canary's `should_panic` can
/// tell a caught invariant from any other failure (a deadlock, a loom limit).
const INV: &str = "lifecycle invariant";

impl Shim {
    fn new(run: Run) -> Self {
        Self {
            lifecycle: Lifecycle::new(),
            run,
            wakeup: Wakeup::new(),
            live_loops: AtomicUsize::new(0),
            runs: AtomicUsize::new(0),
            stop_requests: AtomicUsize::new(0),
            exited: Mutex::new(()),
            exited_cv: Condvar::new(),
            loops: Mutex::new(Vec::new()),
        }
    }

    /// `run`: whoever wins `begin_run` spawns the loop thread.
    fn run(this: &Arc<Self>) {
        let begun = match this.run {
            Run::Correct => this.lifecycle.begin_run(),
            Run::WithoutCas => this.lifecycle.canary_begin_run_without_cas(),
        };
        match begun {
            Ok(()) => {
                let before = this.live_loops.fetch_add(1, Ordering::AcqRel);
                assert_eq!(before, 0, "{INV}: two loop threads live at once");
                this.runs.fetch_add(1, Ordering::AcqRel);
                let shim = this.clone();
                let handle = thread::spawn(move || shim.loop_thread());
                this.loops.lock().unwrap().push(handle);
            }
            Err(e) => {
                assert_eq!(e.op, Operation::Run, "{INV}: {e}");
                assert_ne!(e.state, State::Ready, "{INV}: run refused while ready");
                cover(match e.state {
                    State::Destroying | State::Destroyed => "run refused: destroy begun",
                    _ => "run refused: loop not ready",
                });
            }
        }
    }

    /// The loop thread: check `should_run`, park on the wakeup, until told to stop.
    fn loop_thread(&self) {
        loop {
            let state = self.lifecycle.state();
            assert!(
                matches!(state, State::Running | State::Stopping | State::Destroying),
                "{INV}: loop thread alive in state {state}"
            );
            assert!(
                self.lifecycle.is_live(),
                "{INV}: loop thread alive, not live"
            );
            if !self.lifecycle.should_run() {
                break;
            }
            self.wakeup.park();
        }
        self.live_loops.fetch_sub(1, Ordering::AcqRel);
        self.lifecycle.loop_exited();
        let _guard = self.exited.lock().unwrap();
        self.exited_cv.notify_all();
    }

    /// `stop`: only the caller told `Requested` wakes the loop.
    fn stop(&self) {
        match self.lifecycle.request_stop() {
            Ok(StopOutcome::Requested) => {
                self.stop_requests.fetch_add(1, Ordering::AcqRel);
                self.wakeup.signal();
                cover("stop requested");
            }
            Ok(StopOutcome::AlreadyStopping) => cover("stop already in flight"),
            Ok(StopOutcome::NotRunning) => {}
            Err(e) => assert_eq!(e.state, State::Destroyed, "{INV}: {e}"),
        }
    }

    /// Blocks until no loop thread is live (the shim's join of the loop thread).
    fn join_loop(&self) {
        let mut guard = self.exited.lock().unwrap();
        while self.lifecycle.is_live() {
            guard = self.exited_cv.wait(guard).unwrap();
        }
        assert_eq!(
            self.live_loops.load(Ordering::Acquire),
            0,
            "{INV}: the loop looked exited before it called loop_exited"
        );
    }

    /// `wait_for_stop_completion` from another thread.
    fn wait(&self) {
        match self.lifecycle.begin_wait(false) {
            Ok(State::Running | State::Stopping) => {
                self.join_loop();
                cover("wait joined a live loop");
            }
            Ok(State::Ready | State::Stopped | State::Destroying) => {}
            Ok(State::Destroyed) => panic!("{INV}: begin_wait accepted a destroyed loop"),
            Err(e) => assert_eq!(e.state, State::Destroyed, "{INV}: {e}"),
        }
        self.lifecycle.finish_wait();
    }

    /// `destroy` from another thread: begin, wake the loop if it was running, wait for its
    /// thread, then release.
    fn destroy(&self) {
        let from = self
            .lifecycle
            .begin_destroy(false)
            .expect("the only destroy");
        if from == State::Running {
            self.wakeup.signal();
        }
        // Teardown straight away: refused exactly while a loop thread is live.
        match self.lifecycle.finish_destroy() {
            Ok(()) => assert_eq!(
                self.live_loops.load(Ordering::Acquire),
                0,
                "{INV}: finish_destroy succeeded while a loop thread was live"
            ),
            Err(LifecycleError { live, state, .. }) => {
                assert!(
                    live,
                    "{INV}: finish_destroy refused in {state} with no live loop"
                );
                cover("teardown refused while the loop was live");
                self.join_loop();
                let done = self.lifecycle.finish_destroy();
                assert_eq!(done, Ok(()), "{INV}: finish_destroy after the loop exited");
            }
        }
    }
}

/// Who does what, besides the loop threads.
#[derive(Clone, Copy)]
enum Scenario {
    /// Thread A runs then stops; thread B waits then runs (a restart, when A's stop and
    /// B's wait came first); the main thread stops, then destroys. Up to two loop threads.
    Restart,
    /// Thread A runs; threads B and C stop, racing each other and the run; the main thread
    /// destroys. One loop thread. (Waiting is in `Restart`: with it here too the model
    /// grows past the time budget.)
    TwoStoppers,
}

/// Whether the main thread yields right after spawning the others: loom 0.7's DPOR does
/// not reorder a thread's first atomic load with another thread's later accesses
/// (tokio-rs/loom#392, see the README), so each scenario runs both ways to let either
/// side go first.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Start {
    MainFirst,
    MainYields,
}

fn lifecycle_model(run: Run, scenario: Scenario, start: Start) {
    let shim = Arc::new(Shim::new(run));
    let spawn = |f: fn(&Arc<Shim>)| {
        let shim = shim.clone();
        thread::spawn(move || f(&shim))
    };
    let threads = match scenario {
        Scenario::Restart => {
            let a = spawn(|shim| {
                Shim::run(shim);
                shim.stop();
            });
            let b = spawn(|shim| {
                shim.wait();
                Shim::run(shim);
            });
            if start == Start::MainYields {
                thread::yield_now();
            }
            shim.stop();
            vec![a, b]
        }
        Scenario::TwoStoppers => {
            let a = spawn(Shim::run);
            let b = spawn(|shim| shim.stop());
            let c = spawn(|shim| shim.stop());
            if start == Start::MainYields {
                thread::yield_now();
            }
            vec![a, b, c]
        }
    };
    shim.destroy();
    for t in threads {
        t.join().unwrap();
    }
    let loops = std::mem::take(&mut *shim.loops.lock().unwrap());
    for l in loops {
        l.join().unwrap();
    }

    let lc = &shim.lifecycle;
    assert_eq!(
        lc.state(),
        State::Destroyed,
        "{INV}: not destroyed at the end"
    );
    assert!(!lc.is_live(), "{INV}: live after destroy");
    assert_eq!(
        shim.live_loops.load(Ordering::Acquire),
        0,
        "{INV}: loop left"
    );
    let (runs, stops) = (
        shim.runs.load(Ordering::Acquire),
        shim.stop_requests.load(Ordering::Acquire),
    );
    assert!(
        stops <= runs,
        "{INV}: {stops} stop requests for {runs} runs"
    );
    if runs == 2 {
        cover("restarted");
    }
    assert!(lc.begin_run().is_err(), "{INV}: run after destroy");
    assert!(
        lc.enter_producer().is_err(),
        "{INV}: schedule after destroy"
    );
}

/// A run whose loop thread cannot be started (`begin_run`, then `run_failed`) racing a
/// stop and a destroy: thread A's start fails; thread B stops, then runs and fails too;
/// the main thread destroys and retries teardown until no run is pending. `run_failed`
/// must always clear the live bit (or teardown would be refused forever: loom reports a
/// livelock as "Model exceeded maximum number of branches") and never resurrect a loop
/// being destroyed.
fn run_failed_model(start: Start) {
    let lifecycle = Arc::new(Lifecycle::new());
    let pending = Arc::new(AtomicUsize::new(0));
    let failing_run = |lifecycle: &Lifecycle, pending: &AtomicUsize| match lifecycle.begin_run() {
        Ok(()) => {
            // The window in which the runner tries to spawn its loop thread.
            pending.fetch_add(1, Ordering::AcqRel);
            pending.fetch_sub(1, Ordering::AcqRel);
            lifecycle.run_failed();
            cover("run failed");
        }
        Err(e) => assert_ne!(e.state, State::Ready, "{INV}: run refused while ready"),
    };
    let a = {
        let (lifecycle, pending) = (lifecycle.clone(), pending.clone());
        thread::spawn(move || failing_run(&lifecycle, &pending))
    };
    let b = {
        let (lifecycle, pending) = (lifecycle.clone(), pending.clone());
        thread::spawn(move || {
            if let Ok(StopOutcome::Requested) = lifecycle.request_stop() {
                cover("stop raced a failing start");
            }
            failing_run(&lifecycle, &pending);
        })
    };
    if start == Start::MainYields {
        thread::yield_now();
    }
    let from = lifecycle.begin_destroy(false).expect("the only destroy");
    if from == State::Running {
        cover("destroy raced a failing start");
    }
    loop {
        match lifecycle.finish_destroy() {
            Ok(()) => break,
            Err(e) => {
                assert!(e.live, "{INV}: teardown refused with no pending run: {e}");
                thread::yield_now();
            }
        }
    }
    assert_eq!(
        pending.load(Ordering::Acquire),
        0,
        "{INV}: teardown while a run was pending"
    );
    a.join().unwrap();
    b.join().unwrap();
    assert_eq!(
        lifecycle.state(),
        State::Destroyed,
        "{INV}: not destroyed at the end"
    );
    assert!(!lifecycle.is_live(), "{INV}: live after destroy");
}

const RESTART_SITUATIONS: [&str; 5] = [
    "restarted",
    "run refused: destroy begun",
    "stop requested",
    "wait joined a live loop",
    "teardown refused while the loop was live",
];

const TWO_STOPPERS_SITUATIONS: [&str; 3] = [
    "stop requested",
    "stop already in flight",
    "teardown refused while the loop was live",
];

#[test]
fn lifecycle_run_stop_wait_restart_destroy() {
    check("lifecycle_run_stop_wait_restart_destroy", || {
        lifecycle_model(Run::Correct, Scenario::Restart, Start::MainFirst)
    })
    .assert_covered(&RESTART_SITUATIONS);
}

#[test]
fn lifecycle_run_stop_wait_restart_destroy_main_yields() {
    check(
        "lifecycle_run_stop_wait_restart_destroy_main_yields",
        || lifecycle_model(Run::Correct, Scenario::Restart, Start::MainYields),
    )
    .assert_covered(&RESTART_SITUATIONS);
}

#[test]
fn lifecycle_two_stoppers_destroy() {
    check("lifecycle_two_stoppers_destroy", || {
        lifecycle_model(Run::Correct, Scenario::TwoStoppers, Start::MainFirst)
    })
    .assert_covered(&TWO_STOPPERS_SITUATIONS);
}

#[test]
fn lifecycle_two_stoppers_destroy_main_yields() {
    check("lifecycle_two_stoppers_destroy_main_yields", || {
        lifecycle_model(Run::Correct, Scenario::TwoStoppers, Start::MainYields)
    })
    .assert_covered(&TWO_STOPPERS_SITUATIONS);
}

const RUN_FAILED_SITUATIONS: [&str; 3] = [
    "run failed",
    "stop raced a failing start",
    "destroy raced a failing start",
];

#[test]
fn lifecycle_run_failed_against_stop_and_destroy() {
    check("lifecycle_run_failed_against_stop_and_destroy", || {
        run_failed_model(Start::MainFirst)
    })
    .assert_covered(&RUN_FAILED_SITUATIONS);
}

#[test]
fn lifecycle_run_failed_against_stop_and_destroy_main_yields() {
    check(
        "lifecycle_run_failed_against_stop_and_destroy_main_yields",
        || run_failed_model(Start::MainYields),
    )
    .assert_covered(&RUN_FAILED_SITUATIONS);
}

/// Canary: `begin_run` as a load then a `fetch_or`. Two runs that both see Ready both win
/// (two loop threads), and a run racing destroy turns Destroying into Destroyed with a live
/// loop; either way an invariant of the model fails.
#[test]
#[should_panic(expected = "lifecycle invariant")]
fn canary_lifecycle_begin_run_without_cas() {
    check("canary_lifecycle_begin_run_without_cas", || {
        lifecycle_model(Run::WithoutCas, Scenario::Restart, Start::MainFirst)
    });
}
