//! Errors: values with context (operation, state, errno), and the task handed back.

use std::fmt;

pub use reseau_core::When;
use reseau_core::{LifecycleError, Operation, RefusedKind};

use crate::sys::SysError;
use crate::task::Task;

/// An error of the event loop.
#[non_exhaustive]
pub enum Error {
    /// A syscall failed; names the call and the errno.
    Sys(SysError),
    /// The operation is not legal in the loop's current state (names both), or was called
    /// from a thread where it would deadlock.
    InvalidState(LifecycleError),
    /// A thread (the loop thread, or a group's shutdown thread) could not be spawned; the
    /// error from the standard library, with its errno (`EAGAIN`, `ENOMEM`).
    Spawn(std::io::Error),
    /// An option is out of range.
    InvalidOption(&'static str),
    /// An unsubscribe was refused.
    Unsubscribe(crate::io::UnsubscribeError),
    /// A subscribe was refused (the kind only: converting a
    /// [`SubscribeError`](crate::SubscribeError) with `?` drops the source it handed back,
    /// closing it; take `e.source` first to keep it).
    Subscribe(crate::io::SubscribeErrorKind),
    /// An interest change was refused.
    Modify(crate::io::ModifyError),
    /// A signal subscription was refused.
    Signal(crate::signals::SignalError),
    /// Destroy gave up waiting for the loop thread to exit (a task is still running); no
    /// descriptor was closed: the loop thread keeps them, cancels what remains and closes
    /// them itself when it exits.
    LoopThreadAlive,
    /// The loop stopped because code outside any task's own guard panicked (a custom
    /// clock, say); the panic's message. The loop's exit was published as usual.
    Panicked(String),
    /// A schedule was refused (see [`ScheduleError`]; the task itself stays there).
    Schedule(ScheduleErrorKind),
    /// The loop was inherited through `fork`: it belongs to the parent process, whose
    /// epoll set and wakeup this process shares, so the operation was refused untouched.
    /// Only dropping (or destroying) the loop is allowed in the child: it releases the
    /// memory without touching the kernel objects.
    Forked(Operation),
    /// A [`spawn_local`](crate::LoopHandle::spawn_local) was refused (see
    /// [`LocalSpawnError`](crate::LocalSpawnError); the future itself stays there).
    LocalSpawn(crate::LocalSpawnErrorKind),
}

/// The variant's name and the error's message, as in `Sys(epoll_create1 failed: Too many
/// open files (os error 24))`: the facts a derived `Debug` would print, written once by the
/// `Display` implementation, so that a binary that prints an error (a `main` returning one)
/// carries one formatter per error type rather than two (the README's "Size and bare metal":
/// about 4.6 KB of a static binary). The nested values keep their derived `Debug`.
impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Error::Sys(_) => "Sys",
            Error::InvalidState(_) => "InvalidState",
            Error::Spawn(_) => "Spawn",
            Error::InvalidOption(_) => "InvalidOption",
            Error::Unsubscribe(_) => "Unsubscribe",
            Error::Subscribe(_) => "Subscribe",
            Error::Modify(_) => "Modify",
            Error::Signal(_) => "Signal",
            Error::LoopThreadAlive => return f.write_str("LoopThreadAlive"),
            Error::Panicked(_) => "Panicked",
            Error::Schedule(_) => "Schedule",
            Error::Forked(_) => "Forked",
            Error::LocalSpawn(_) => "LocalSpawn",
        };
        f.debug_tuple(name).field(&format_args!("{self}")).finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Sys(e) => e.fmt(f),
            Error::InvalidState(e) => e.fmt(f),
            Error::Spawn(e) => write!(f, "spawning a thread failed: {e}"),
            Error::InvalidOption(what) => write!(f, "invalid option: {what}"),
            Error::Unsubscribe(e) => e.fmt(f),
            Error::Subscribe(kind) => kind.fmt(f),
            Error::Modify(e) => e.fmt(f),
            Error::Signal(e) => e.fmt(f),
            Error::LoopThreadAlive => f.write_str(
                "destroy: the loop thread is still alive after the teardown timeout; nothing was closed",
            ),
            Error::Panicked(msg) => write!(f, "the loop stopped: it panicked outside a task: {msg}"),
            Error::Schedule(kind) => write!(f, "schedule refused: {kind}"),
            Error::Forked(op) => write!(
                f,
                "{op} refused: the loop was inherited through fork and belongs to the parent"
            ),
            Error::LocalSpawn(kind) => write!(f, "spawn_local refused: {kind}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Sys(e) => Some(e),
            Error::InvalidState(e) => Some(e),
            Error::Unsubscribe(e) => Some(e),
            Error::Subscribe(kind) => Some(kind),
            Error::Modify(e) => Some(e),
            Error::Signal(e) => Some(e),
            Error::Spawn(e) => Some(e),
            Error::LocalSpawn(kind) => Some(kind),
            _ => None,
        }
    }
}

impl Error {
    /// The errno this error carries, if a syscall failing is its cause (directly, or inside
    /// a refused subscribe, interest change or signal subscription).
    pub fn errno(&self) -> Option<rustix::io::Errno> {
        match self {
            Error::Sys(e)
            | Error::Subscribe(crate::io::SubscribeErrorKind::Sys(e))
            | Error::Modify(crate::io::ModifyError::Sys(e))
            | Error::Signal(crate::signals::SignalError::Sys(e)) => Some(e.errno),
            Error::Spawn(e) => e.raw_os_error().map(rustix::io::Errno::from_raw_os_error),
            _ => None,
        }
    }

    /// The [`std::io::ErrorKind`] the conversion into [`std::io::Error`] uses for an error
    /// that is not an errno.
    fn io_kind(&self) -> std::io::ErrorKind {
        use std::io::ErrorKind;
        match self {
            Error::InvalidOption(_) => ErrorKind::InvalidInput,
            Error::Subscribe(
                crate::io::SubscribeErrorKind::Blocking
                | crate::io::SubscribeErrorKind::EmptyInterest,
            )
            | Error::Modify(crate::io::ModifyError::EmptyInterest)
            | Error::Signal(
                crate::signals::SignalError::Invalid { .. } | crate::signals::SignalError::EmptySet,
            ) => ErrorKind::InvalidInput,
            Error::Subscribe(crate::io::SubscribeErrorKind::AlreadySubscribed) => {
                ErrorKind::AlreadyExists
            }
            Error::Unsubscribe(crate::io::UnsubscribeError::NotSubscribed)
            | Error::Modify(crate::io::ModifyError::NotSubscribed) => ErrorKind::NotFound,
            Error::LoopThreadAlive => ErrorKind::TimedOut,
            _ => ErrorKind::Other,
        }
    }
}

/// Into the standard library's error, for code written against `std::io::Result` (as
/// mio's and tokio's users are used to): `?` works on reseau's results in such a function.
///
/// - An error caused by a failed syscall ([`Error::Sys`], and the `Sys` cases inside
///   [`Error::Subscribe`], [`Error::Modify`] and [`Error::Signal`]) becomes
///   [`std::io::Error::from_raw_os_error`] of its errno, like the standard library's own
///   failed calls: [`raw_os_error`](std::io::Error::raw_os_error) and
///   [`kind`](std::io::Error::kind) are exact and nothing is allocated, but the call's name
///   ([`SysError::call`]) is not kept.
/// - [`Error::Spawn`] is the standard library's error itself, handed back.
/// - Anything else keeps its kind and its message (the [`Display`](fmt::Display) text; the
///   `Debug` text is the error's): the kind is `InvalidInput` for a refused argument (an
///   option, an empty interest, a blocking descriptor, an invalid signal), `AlreadyExists`
///   for a descriptor subscribed twice, `NotFound` for an unknown subscription, `TimedOut`
///   for [`Error::LoopThreadAlive`] and `Other` for the rest (invalid states, a forked loop,
///   a full loop, a panic).
///
/// The [`Error`] value is not reachable through the `io::Error` (it is boxed in a private
/// wrapper without a `source`): reaching it would link every nested error type's
/// formatting and `source` chain into any binary that converts, about 6.5 KB of a static
/// one (README "Size and bare metal"), for a value `io::Error` users rarely downcast. To
/// keep it, match on the [`Error`] before converting, or convert explicitly with
/// `.map_err(std::io::Error::other)` (then `get_ref()` and `downcast_ref::<Error>()` reach
/// it).
impl From<Error> for std::io::Error {
    #[cold]
    fn from(e: Error) -> Self {
        match e {
            Error::Spawn(e) => e,
            e => match e.errno() {
                Some(errno) => std::io::Error::from_raw_os_error(errno.raw_os_error()),
                None => std::io::Error::new(e.io_kind(), Message(e)),
            },
        }
    }
}

/// What a converted [`Error`] carries inside a `std::io::Error`: the error, displayed as
/// itself, with no `source` (see the conversion).
struct Message(Error);

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl std::error::Error for Message {}

impl From<ScheduleError> for std::io::Error {
    /// As [`Error`]'s conversion (kind `Other`); the refused task is dropped unrun (take
    /// `e.task` first to keep it).
    #[cold]
    fn from(e: ScheduleError) -> Self {
        Error::from(e).into()
    }
}

impl<S> From<crate::io::SubscribeError<S>> for std::io::Error {
    /// As [`Error`]'s conversion (a failed `epoll_ctl` becomes its errno); the source
    /// handed back is dropped (closed): take `e.source` first to keep it.
    #[cold]
    fn from(e: crate::io::SubscribeError<S>) -> Self {
        Error::Subscribe(e.kind).into()
    }
}

impl From<SysError> for Error {
    fn from(e: SysError) -> Self {
        Error::Sys(e)
    }
}

impl From<LifecycleError> for Error {
    fn from(e: LifecycleError) -> Self {
        Error::InvalidState(e)
    }
}

impl From<crate::io::UnsubscribeError> for Error {
    fn from(e: crate::io::UnsubscribeError) -> Self {
        Error::Unsubscribe(e)
    }
}

impl<S> From<crate::io::SubscribeError<S>> for Error {
    /// Keeps why; the source handed back is dropped (closed). Take `e.source` first to
    /// keep it.
    fn from(e: crate::io::SubscribeError<S>) -> Self {
        Error::Subscribe(e.kind)
    }
}

impl From<crate::io::ModifyError> for Error {
    fn from(e: crate::io::ModifyError) -> Self {
        Error::Modify(e)
    }
}

impl From<crate::signals::SignalError> for Error {
    fn from(e: crate::signals::SignalError) -> Self {
        Error::Signal(e)
    }
}

impl<F> From<crate::SpawnError<F>> for Error {
    /// Keeps why; the refused future is dropped unpolled (take `e.future` first to keep it).
    fn from(e: crate::SpawnError<F>) -> Self {
        Error::Schedule(e.kind)
    }
}

impl<F> From<crate::LocalSpawnError<F>> for Error {
    /// Keeps why; the refused future is dropped unpolled (take `e.future` first to keep it).
    fn from(e: crate::LocalSpawnError<F>) -> Self {
        Error::LocalSpawn(e.kind)
    }
}

impl From<ScheduleError> for Error {
    /// Keeps why; the refused task is dropped unrun (take `e.task` first to keep it).
    fn from(e: ScheduleError) -> Self {
        Error::Schedule(e.kind)
    }
}

/// Why a schedule was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScheduleErrorKind {
    /// The loop already holds its capacity of pending tasks.
    Full {
        /// The loop's capacity.
        capacity: usize,
    },
    /// Destroy has begun (or finished); the lifecycle error names the state.
    Destroyed(LifecycleError),
    /// The loop was inherited through `fork` (see [`Error::Forked`]).
    Forked,
}

impl From<RefusedKind> for ScheduleErrorKind {
    fn from(kind: RefusedKind) -> Self {
        match kind {
            RefusedKind::Full { capacity } => ScheduleErrorKind::Full { capacity },
            RefusedKind::Destroyed(e) => ScheduleErrorKind::Destroyed(e),
        }
    }
}

impl fmt::Display for ScheduleErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScheduleErrorKind::Full { capacity } => {
                write!(f, "the loop already holds {capacity} pending tasks")
            }
            ScheduleErrorKind::Destroyed(e) => e.fmt(f),
            ScheduleErrorKind::Forked => {
                f.write_str("the loop was inherited through fork and belongs to the parent")
            }
        }
    }
}

/// A refused schedule: why, how the task was to run, and the task itself, handed back
/// untouched.
///
/// To retry, give the same task back with [`LoopHandle::schedule_task`]
/// (`h.schedule_task(e.task, e.when)`): the task is resubmitted as it is, not wrapped in a
/// new closure, so a retry loop costs no allocation and no stack depth.
///
/// [`LoopHandle::schedule_task`]: crate::LoopHandle::schedule_task
pub struct ScheduleError {
    /// Why the schedule was refused.
    pub kind: ScheduleErrorKind,
    /// How the refused call asked the task to run.
    pub when: When,
    /// The task, never run: run it canceled, schedule it again, or drop it.
    pub task: Task,
}

impl ScheduleError {
    /// The task that was refused.
    pub fn into_task(self) -> Task {
        self.task
    }
}

impl fmt::Debug for ScheduleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScheduleError")
            .field("kind", &self.kind)
            .field("when", &self.when)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for ScheduleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "schedule refused ({}); the task is handed back",
            self.kind
        )
    }
}

impl std::error::Error for ScheduleError {}

#[cfg(test)]
mod tests {
    use super::*;
    use reseau_core::Operation;
    use std::io::ErrorKind;

    #[test]
    fn a_failed_syscall_converts_to_its_errno() {
        let sys = SysError {
            call: "epoll_create1",
            errno: rustix::io::Errno::MFILE,
        };
        let io: std::io::Error = Error::Sys(sys).into();
        assert_eq!(io.raw_os_error(), Some(libc::EMFILE));
        let io: std::io::Error = Error::Subscribe(crate::io::SubscribeErrorKind::Sys(sys)).into();
        assert_eq!(io.raw_os_error(), Some(libc::EMFILE));
        assert_eq!(
            Error::Modify(crate::io::ModifyError::Sys(sys)).errno(),
            Some(sys.errno)
        );
    }

    #[test]
    fn other_errors_keep_a_kind_and_their_message() {
        let e = Error::InvalidOption("capacity must be at least 1");
        let message = e.to_string();
        let io: std::io::Error = e.into();
        assert_eq!(io.kind(), ErrorKind::InvalidInput);
        assert_eq!(io.raw_os_error(), None);
        assert_eq!(io.to_string(), message);
        assert!(format!("{io:?}").contains("InvalidOption(invalid option: capacity"));
        // The explicit conversion keeps the value.
        let io = std::io::Error::other(Error::LoopThreadAlive);
        let inner = io.get_ref().and_then(|e| e.downcast_ref::<Error>());
        assert!(matches!(inner, Some(Error::LoopThreadAlive)));

        let io: std::io::Error = Error::Forked(Operation::Run).into();
        assert_eq!(io.kind(), ErrorKind::Other);
        let io: std::io::Error = Error::LoopThreadAlive.into();
        assert_eq!(io.kind(), ErrorKind::TimedOut);
        let io: std::io::Error =
            Error::Subscribe(crate::io::SubscribeErrorKind::AlreadySubscribed).into();
        assert_eq!(io.kind(), ErrorKind::AlreadyExists);
    }

    #[test]
    fn debug_names_the_variant_and_says_the_message() {
        use std::error::Error as _;
        let e = Error::Sys(SysError {
            call: "epoll_create1",
            errno: rustix::io::Errno::MFILE,
        });
        let debug = format!("{e:?}");
        assert!(debug.starts_with("Sys(epoll_create1 failed: "), "{debug}");
        assert!(debug.ends_with(')'), "{debug}");
        assert_eq!(format!("{:?}", Error::LoopThreadAlive), "LoopThreadAlive");
        assert!(e.source().is_some(), "the chain reaches the SysError");
    }

    #[test]
    fn a_spawn_error_is_handed_back_as_it_is() {
        let spawn = std::io::Error::from_raw_os_error(libc::EAGAIN);
        let io: std::io::Error = Error::Spawn(spawn).into();
        assert_eq!(io.raw_os_error(), Some(libc::EAGAIN));
    }

    #[test]
    fn question_mark_works_in_an_io_result_function() {
        fn probe() -> std::io::Result<()> {
            let mut el = crate::EventLoop::new(crate::EventLoopOptions::default())?;
            let h = el.handle();
            el.destroy()?;
            h.schedule_now(|_, _| {})?;
            Ok(())
        }
        let e = probe().expect_err("a destroyed loop refuses the schedule");
        assert_eq!(e.kind(), ErrorKind::Other);
        assert!(e.to_string().starts_with("schedule refused"), "{e}");
    }
}
