//! What the loom models share: a model runner that reports how much loom explored and
//! which situations the executions reached, and the modelled eventfd.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize as StdAtomicUsize, Ordering as StdOrdering};
use std::time::Instant;

use loom::sync::{Condvar, Mutex};

/// The preemption bound used when `LOOM_MAX_PREEMPTIONS` is not set.
///
/// An unbounded search of these models does not finish in reasonable time; 2 is the
/// bound the README's command sets and the bound the canaries are known to fail under.
pub const DEFAULT_PREEMPTIONS: usize = 2;

std::thread_local! {
    /// Per test thread (loom runs a model's threads as coroutines on the thread that called
    /// [`check`]): how many executions reached each situation named by [`cover`].
    static COVERED: RefCell<BTreeMap<&'static str, usize>> = const { RefCell::new(BTreeMap::new()) };
    /// The situations the current execution has reached so far.
    static REACHED: RefCell<BTreeSet<&'static str>> = const { RefCell::new(BTreeSet::new()) };
}

/// Records that the current execution reached `situation`. Any thread of the model may
/// call it, any number of times: an execution counts once per situation, when the model
/// returns.
///
/// The counts come back in [`Stats`], so a test can assert that its model is not vacuous:
/// that the interleaving it is about (a restart, a coalesced signal, a refused push…) was
/// actually explored.
pub fn cover(situation: &'static str) {
    REACHED.with(|r| r.borrow_mut().insert(situation));
}

/// What one [`check`] explored.
#[derive(Debug, Clone)]
pub struct Stats {
    /// Executions (interleavings) loom ran.
    pub executions: usize,
    /// For each situation passed to [`cover`], the number of executions that reached it.
    pub covered: BTreeMap<&'static str, usize>,
}

impl Stats {
    /// Panics unless every one of `situations` was reached by at least one execution.
    pub fn assert_covered(&self, situations: &[&str]) {
        for s in situations {
            assert!(
                self.covered.get(s).copied().unwrap_or(0) > 0,
                "vacuous model: no execution reached \"{s}\" (covered: {:?})",
                self.covered
            );
        }
    }
}

/// Runs `model` under loom, exploring every interleaving allowed by the preemption bound
/// (`LOOM_MAX_PREEMPTIONS`, default [`DEFAULT_PREEMPTIONS`]); the other loom variables
/// (`LOOM_MAX_BRANCHES`, `LOOM_CHECKPOINT_FILE`…) apply as usual.
///
/// Prints, on stderr, the model's name, how many executions loom ran, how long it took and
/// what [`cover`] recorded (visible with `--nocapture`, and always for a failing or
/// `should_panic` test).
///
/// # Panics
/// When loom finds an execution in which `model` panics (a failed assertion) or every
/// thread is blocked (a deadlock: `"deadlock; threads = …"`).
pub fn check<F>(name: &'static str, model: F) -> Stats
where
    F: Fn() + Sync + Send + 'static,
{
    check_bounded(name, DEFAULT_PREEMPTIONS, model)
}

/// As [`check`], with `bound` as the preemption bound when `LOOM_MAX_PREEMPTIONS` is not
/// set: for the models whose state space at bound 2 would not fit the CI budget (the
/// README lists them and the bound each uses).
pub fn check_bounded<F>(name: &'static str, bound: usize, model: F) -> Stats
where
    F: Fn() + Sync + Send + 'static,
{
    let mut builder = loom::model::Builder::new();
    if std::env::var_os("LOOM_MAX_PREEMPTIONS").is_none() {
        builder.preemption_bound = Some(bound);
    } else if builder.preemption_bound.is_none() {
        builder.preemption_bound = Some(DEFAULT_PREEMPTIONS);
    }
    COVERED.with(|c| c.borrow_mut().clear());
    REACHED.with(|r| r.borrow_mut().clear());
    let report = Report {
        name,
        bound: builder.preemption_bound,
        executions: std::sync::Arc::new(StdAtomicUsize::new(0)),
        start: Instant::now(),
    };
    let executions = report.executions.clone();
    builder.check(move || {
        executions.fetch_add(1, StdOrdering::Relaxed);
        REACHED.with(|r| r.borrow_mut().clear());
        model();
        let reached = REACHED.with(|r| std::mem::take(&mut *r.borrow_mut()));
        COVERED.with(|c| {
            let mut c = c.borrow_mut();
            for s in reached {
                *c.entry(s).or_default() += 1;
            }
        });
    });
    Stats {
        executions: report.executions.load(StdOrdering::Relaxed),
        covered: COVERED.with(|c| c.borrow().clone()),
    }
}

/// Prints the exploration statistics when the check ends, by success or by panic.
struct Report {
    name: &'static str,
    bound: Option<usize>,
    executions: std::sync::Arc<StdAtomicUsize>,
    start: Instant,
}

impl Drop for Report {
    fn drop(&mut self) {
        let n = self.executions.load(StdOrdering::Relaxed);
        let outcome = if std::thread::panicking() {
            "FAILED at execution"
        } else {
            "passed,"
        };
        let covered = COVERED.with(|c| format!("{:?}", c.borrow()));
        std::eprintln!(
            "loom model {}: {outcome} {n} executions explored (preemption bound {:?}) in \
             {:.2?}; executions reaching each situation: {covered}",
            self.name,
            self.bound,
            self.start.elapsed(),
        );
    }
}

/// The modelled wakeup of the loop: an eventfd used as a counter.
///
/// [`signal`](Self::signal) is the producer's `write(eventfd, 1)`; [`park`](Self::park) is
/// the loop's `epoll_wait` on it followed by the `read` that resets it: it returns at once
/// when a signal is pending (even one written before the park began), and otherwise blocks
/// until one is written. A parked thread that nobody will ever signal is a loom deadlock.
#[derive(Debug)]
pub struct Wakeup {
    pending: Mutex<usize>,
    cv: Condvar,
}

impl Default for Wakeup {
    fn default() -> Self {
        Self::new()
    }
}

impl Wakeup {
    /// No signal pending.
    pub fn new() -> Self {
        Self {
            pending: Mutex::new(0),
            cv: Condvar::new(),
        }
    }

    /// Writes one signal (the eventfd write).
    pub fn signal(&self) {
        let mut pending = self.pending.lock().unwrap();
        *pending += 1;
        self.cv.notify_one();
    }

    /// Blocks until a signal is pending, then consumes all pending signals (the eventfd
    /// read); returns how many there were.
    pub fn park(&self) -> usize {
        let mut pending = self.pending.lock().unwrap();
        while *pending == 0 {
            pending = self.cv.wait(pending).unwrap();
        }
        std::mem::take(&mut *pending)
    }
}
