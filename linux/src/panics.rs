//! What a loop does after user code panics: [`PanicPolicy`].

/// What a loop does when user code it runs panics: a task (run or canceled), an IO
/// callback, a signal callback (see [`LoopHandle::subscribe_signals`]), or a source's
/// `as_fd` or `Drop`. Set with [`EventLoopOptions::on_panic`].
///
/// Spawned futures are not covered: a panicking future completes its
/// [`JoinHandle`](crate::JoinHandle) with [`JoinError::Panicked`](crate::JoinError) under
/// either policy. A panic outside any of these (a custom clock) stops the loop with
/// [`Error::Panicked`](crate::Error::Panicked) under either policy.
///
/// ```
/// use reseau_linux::{EventLoopOptions, PanicPolicy};
///
/// let options = EventLoopOptions::default().on_panic(PanicPolicy::Abort);
/// assert_eq!(options.on_panic, PanicPolicy::Abort);
/// assert_eq!(EventLoopOptions::default().on_panic, PanicPolicy::Catch);
/// ```
///
/// [`LoopHandle::subscribe_signals`]: crate::LoopHandle::subscribe_signals
/// [`EventLoopOptions::on_panic`]: crate::EventLoopOptions::on_panic
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum PanicPolicy {
    /// The default: the panic is caught, counted (`Stats::panics_caught`) and logged with
    /// its message, and the loop goes on. A task that panicked is gone (its closure was
    /// consumed). An IO or signal callback that panicked keeps its subscription, with its
    /// source and its captured state as the panic left them (a half-read buffer stays
    /// half-read): it is called again on the next edge, and an interest change it recorded
    /// before panicking is applied. A signal subscription's callback is called for the
    /// signals still pending after the one whose call panicked in the loop's next tick. To drop a subscription on panic, catch the panic in the
    /// callback and return `IoControl::Unsubscribe`.
    #[default]
    Catch,
    /// Print `reseau: <what> panicked: <message>` to stderr, then `std::process::abort()`
    /// (the process ends with `SIGABRT`; no destructor runs). For services that prefer a
    /// crash and a restart to running on with state a panic may have left inconsistent.
    Abort,
}

/// Applies `policy` after a caught panic in `what` with `message`: returns under `Catch`,
/// never returns under `Abort`.
pub(crate) fn after_panic(policy: PanicPolicy, what: &str, message: &str) {
    if policy == PanicPolicy::Abort {
        eprintln!("reseau: {what} panicked: {message}; aborting (PanicPolicy::Abort)");
        std::process::abort();
    }
}
