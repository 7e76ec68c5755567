//! Signals as a source: a `signalfd` subscribed on the loop, with the signals blocked.
//!
//! A signal reaches a `signalfd` only while it is *blocked* and *pending*. A signal sent to
//! the process (`kill`) is delivered to one thread that does not block it, the default way
//! (terminate, for most): so every thread of the process must block the set, or the signal
//! may never reach the descriptor. [`LoopHandle::subscribe_signals`] blocks the set
//!
//! - on the calling thread, at once (threads it creates afterwards inherit the mask: block
//!   early, in `main`, before any other thread exists — a loop group included);
//! - on the loop thread, by a task it schedules from any other thread (a loop thread that
//!   the subscribing thread created after subscribing already inherited it). On a running
//!   loop, `subscribe_signals` returns only once that task has run, so a signal sent the
//!   moment it returns reaches the descriptor. On a loop that is not running the task runs
//!   first in its next run; a loop thread started by a thread that had not blocked the set
//!   may take a signal the default way until then.
//!
//! Threads created *before* the subscription (by other libraries, or the test harness)
//! must block the set themselves; reseau cannot change another thread's mask.
//!
//! Dropping the [`Signals`] (or [`Signals::unsubscribe`]) removes the subscription and
//! unblocks exactly the signals it blocked: on the dropping thread those that were not
//! already blocked there when it subscribed ([`Signals`] is `!Send`, so that is the
//! subscribing thread), and on the loop thread those its task blocked, by a task on the
//! loop (while the loop runs) or at once (on the loop thread); a caller-driven loop's
//! thread ([`EventLoop::turn`](crate::EventLoop::turn)) that blocked them is restored by
//! its next turn. Signals still pending when it is released (on the descriptor, or for a
//! thread about to unblock them) are discarded, never delivered the default way. Restore
//! in reverse order when two subscriptions share signals: the first to go unblocks what
//! it blocked.
//!
//! A blocked mask survives `exec`: a child process spawned from a thread with the set
//! blocked starts with it blocked, and most programs never unblock it (a shell's Ctrl-C
//! would not stop them). Spawn children through [`unblock_in_child`].

use std::fmt;
use std::marker::PhantomData;
use std::os::fd::OwnedFd;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::{Arc, Condvar, Mutex, OnceLock};

use reseau_core::{Operation, TaskStatus};
use rustix::io::Errno;

use crate::error::{Error, ScheduleErrorKind};
use crate::handle::LoopHandle;
use crate::io::{Interest, IoControl, SubscribeErrorKind, Subscription, UnsubscribeError};
use crate::platform::lock;
use crate::shared::destroyed_error;
use crate::sys::SysError;
use crate::sys::signal::{
    addable, current_mask, signalfd, sigset, thread_mask, unblock_discarding,
};

/// A set of signal numbers (1 to `SIGRTMAX`), for [`LoopHandle::subscribe_signals`].
///
/// ```
/// use reseau_linux::SignalSet;
///
/// let set = SignalSet::new().with(libc::SIGINT)?.with(libc::SIGTERM)?;
/// assert!(set.contains(libc::SIGTERM));
/// assert_eq!(set.iter().collect::<Vec<_>>(), [libc::SIGINT, libc::SIGTERM]);
/// assert!(SignalSet::new().with(libc::SIGKILL).is_err()); // cannot be blocked
/// # Ok::<(), reseau_linux::SignalError>(())
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SignalSet(u64);

impl SignalSet {
    /// The empty set.
    pub const fn new() -> Self {
        Self(0)
    }

    /// This set with `signo` added.
    ///
    /// # Errors
    /// [`SignalError::Invalid`]: not a signal number, `SIGKILL` or `SIGSTOP` (they cannot
    /// be blocked or read), or a real-time signal the C library reserves for itself.
    pub fn with(mut self, signo: i32) -> Result<Self, SignalError> {
        self.add(signo)?;
        Ok(self)
    }

    /// Adds `signo` to this set.
    ///
    /// # Errors
    /// As [`with`](Self::with); the set is unchanged.
    pub fn add(&mut self, signo: i32) -> Result<(), SignalError> {
        let reason = if !(1..=libc::SIGRTMAX().min(64)).contains(&signo) {
            Some("not a signal number")
        } else if signo == libc::SIGKILL || signo == libc::SIGSTOP {
            Some("SIGKILL and SIGSTOP cannot be blocked or read")
        } else if !addable(signo) {
            Some("reserved by the C library")
        } else {
            None
        };
        match reason {
            Some(reason) => Err(SignalError::Invalid { signo, reason }),
            None => {
                self.0 |= 1u64 << (signo - 1);
                Ok(())
            }
        }
    }

    /// Whether `signo` is in the set.
    pub fn contains(self, signo: i32) -> bool {
        (1..=64).contains(&signo) && self.0 & (1u64 << (signo - 1)) != 0
    }

    /// Whether the set is empty.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The signal numbers in the set, in increasing order.
    pub fn iter(self) -> impl Iterator<Item = i32> {
        (1..=64).filter(move |&s| self.contains(s))
    }

    pub(crate) fn bits(self) -> u64 {
        self.0
    }
}

impl IntoIterator for SignalSet {
    type Item = i32;
    type IntoIter = Box<dyn Iterator<Item = i32>>;
    fn into_iter(self) -> Self::IntoIter {
        Box::new(self.iter())
    }
}

impl fmt::Debug for SignalSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

/// One signal read from the descriptor: the fields of its `signalfd_siginfo`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct SignalInfo {
    /// The signal number (`ssi_signo`).
    pub signo: i32,
    /// How it was sent (`ssi_code`): `SI_USER` for `kill`, `SI_TKILL` for `tgkill`,
    /// `SI_QUEUE` for `sigqueue`, `CLD_EXITED`… for `SIGCHLD`.
    pub code: i32,
    /// The sender's process id (`ssi_pid`), for signals sent by a process.
    pub pid: i32,
    /// The sender's real user id (`ssi_uid`).
    pub uid: u32,
    /// The errno field (`ssi_errno`, usually 0).
    pub errno: i32,
    /// The exit status or signal of a child (`ssi_status`, `SIGCHLD`).
    pub status: i32,
    /// The integer sent with `sigqueue` (`ssi_int`).
    pub value: i32,
    /// The pointer-sized value sent with `sigqueue` (`ssi_ptr`).
    pub ptr: u64,
}

impl SignalInfo {
    fn parse(b: &[u8; 128]) -> Self {
        let u32_at = |o: usize| u32::from_ne_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let i32_at = |o: usize| u32_at(o) as i32;
        let mut p = [0u8; 8];
        p.copy_from_slice(&b[48..56]);
        Self {
            signo: i32_at(0),
            errno: i32_at(4),
            code: i32_at(8),
            pid: i32_at(12),
            uid: u32_at(16),
            status: i32_at(40),
            value: i32_at(44),
            ptr: u64::from_ne_bytes(p),
        }
    }
}

/// Why [`LoopHandle::subscribe_signals`] (or a [`SignalSet`]) refused; the calling thread's
/// signal mask is as it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SignalError {
    /// Not a signal one can block and read (names the number and why).
    Invalid {
        /// The number refused.
        signo: i32,
        /// Why.
        reason: &'static str,
    },
    /// The set was empty.
    EmptySet,
    /// A call failed: `pthread_sigmask` or `signalfd4`, with its errno. The descriptor, if
    /// made, is closed.
    Sys(SysError),
    /// Subscribing the descriptor was refused (destroyed or forked loop, `epoll_ctl`).
    Subscribe(SubscribeErrorKind),
    /// The task that blocks the set on the loop thread could not be scheduled.
    Schedule(ScheduleErrorKind),
}

impl fmt::Display for SignalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SignalError::Invalid { signo, reason } => {
                write!(f, "subscribe_signals: signal {signo} refused: {reason}")
            }
            SignalError::EmptySet => f.write_str("subscribe_signals: the signal set is empty"),
            SignalError::Sys(e) => write!(f, "subscribe_signals: {e}"),
            SignalError::Subscribe(kind) => write!(f, "subscribe_signals: {kind}"),
            SignalError::Schedule(kind) => write!(
                f,
                "subscribe_signals: blocking the signals on the loop thread could not be scheduled: {kind}"
            ),
        }
    }
}

impl std::error::Error for SignalError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SignalError::Sys(e) => Some(e),
            _ => None,
        }
    }
}

/// What the loop thread blocked for one subscription.
#[derive(Default)]
struct LoopMask {
    /// Cleared when the subscription goes: a blocking task that runs later does nothing.
    active: bool,
    /// The signals the task blocked on the loop thread (not blocked there before).
    added: u64,
    /// The thread whose mask the task changed (`thread_id::current`; 0: none yet). Only
    /// that thread unblocks `added`: the loop may be driven by another thread by then (a
    /// restarted loop's new thread inherited its mask from elsewhere).
    thread: u64,
}

impl LoopMask {
    /// Unblocks what the task blocked, if the calling thread is the one it blocked.
    fn restore_here(&mut self) {
        if self.added != 0 && self.thread == crate::thread_id::current() {
            unblock_discarding(std::mem::take(&mut self.added));
        }
    }
}

/// A live signal subscription (see [`LoopHandle::subscribe_signals`]); dropping it (or
/// [`unsubscribe`](Self::unsubscribe)) removes the subscription and restores the masks
/// (the rules are in the module docs). `!Send`: the mask it restores is the subscribing
/// thread's.
#[must_use = "dropping Signals unsubscribes at once"]
pub struct Signals {
    handle: LoopHandle,
    sub: Option<Subscription>,
    set: SignalSet,
    /// The signals this subscription blocked on the subscribing thread.
    added_here: u64,
    loop_mask: Arc<Mutex<LoopMask>>,
    _not_send: PhantomData<*const ()>,
}

impl fmt::Debug for Signals {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signals")
            .field("set", &self.set)
            .field("subscription", &self.sub)
            .finish_non_exhaustive()
    }
}

impl Signals {
    /// The signals subscribed.
    pub fn set(&self) -> SignalSet {
        self.set
    }

    /// The IO subscription of the signalfd (counted in `LoopHandle::subscriptions`).
    pub fn subscription(&self) -> Option<Subscription> {
        self.sub
    }

    /// Removes the subscription and restores the masks; the same as dropping it.
    pub fn unsubscribe(mut self) {
        self.release();
    }

    fn release(&mut self) {
        let Some(sub) = self.sub.take() else { return };
        let state = self.loop_mask.clone();
        // On the loop thread: remove, discard what is pending, unblock what the task blocked.
        let finish = move |h: &LoopHandle, unblock: bool| {
            if let Ok(fd) = h.unsubscribe::<OwnedFd>(sub) {
                drain(&fd, |_| {});
            }
            let mut m = lock(&state);
            m.active = false;
            if unblock {
                m.restore_here();
            }
        };
        if self.handle.is_on_loop_thread() {
            finish(&self.handle, true);
        } else {
            match self.handle.unsubscribe::<OwnedFd>(sub) {
                Ok(fd) => {
                    // The loop is not running. A loop thread that ran it is gone, but a
                    // caller-driven loop's thread (`turn`, `run_here`) lives on with the
                    // set blocked: its next turn restores it.
                    drain(&fd, |_| {});
                    let mut m = lock(&self.loop_mask);
                    m.active = false;
                    if m.added != 0 {
                        drop(m);
                        let state = self.loop_mask.clone();
                        let _ = self.handle.schedule_now(move |_, st| {
                            if st == TaskStatus::RunReady {
                                lock(&state).restore_here();
                            }
                        });
                    }
                }
                Err(Error::Unsubscribe(UnsubscribeError::OffLoopThreadWhileRunning)) => {
                    let scheduled = self
                        .handle
                        .schedule_now(move |h, st| finish(h, st == TaskStatus::RunReady));
                    if scheduled.is_err() {
                        crate::log_at!(
                            warn,
                            "reseau: dropping Signals: the loop refused the unsubscribe task; destroy releases the signalfd"
                        );
                    }
                }
                // Destroyed or forked: nothing of ours is registered any more.
                Err(_) => lock(&self.loop_mask).active = false,
            }
        }
        // Signals of the set still pending here are discarded, not delivered the default
        // way by this unblock (the loop may not have drained the descriptor yet).
        unblock_discarding(self.added_here);
    }
}

impl Drop for Signals {
    fn drop(&mut self) {
        self.release();
    }
}

/// Reads `signalfd_siginfo` records until `EAGAIN`, handing each to `f`.
fn drain(fd: &OwnedFd, mut f: impl FnMut(SignalInfo)) {
    let mut buf = [0u8; 128];
    loop {
        match rustix::io::read(fd, &mut buf) {
            Ok(128) => f(SignalInfo::parse(&buf)),
            Err(Errno::INTR) => {}
            Err(Errno::AGAIN) => return,
            Ok(n) => {
                crate::log_at!(error, "reseau: a signalfd read returned {n} bytes");
                return;
            }
            Err(errno) => {
                crate::log_at!(error, "reseau: reading a signalfd failed with {errno}");
                return;
            }
        }
    }
}

impl LoopHandle {
    /// Subscribes to the signals in `set`: blocks them (see the module docs of
    /// [`signals`](crate::signals) for which threads, and what you must do for the others),
    /// creates a `signalfd` (`SFD_CLOEXEC | SFD_NONBLOCK`) and subscribes it for
    /// readability; `callback` runs on the loop thread once for each signal received, with
    /// its [`SignalInfo`]. Dropping the returned [`Signals`] undoes all of it.
    ///
    /// (`no_run`: doc tests share one process with other threads that do not block the
    /// signal; `tests/signals.rs` runs this in processes of their own.)
    ///
    /// ```no_run
    /// use reseau_linux::{EventLoop, EventLoopOptions, SignalSet};
    ///
    /// let el = EventLoop::new(EventLoopOptions::default())?;
    /// let set = SignalSet::new().with(libc::SIGUSR1)?;
    /// let (tx, rx) = std::sync::mpsc::channel();
    /// let signals = el.subscribe_signals(set, move |_h, info| {
    ///     tx.send(info.signo).unwrap();
    /// })?;
    /// // The loop thread starts after the subscription, so it inherits the blocked mask.
    /// el.run()?;
    /// rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::USR1)?;
    /// assert_eq!(rx.recv().unwrap(), libc::SIGUSR1);
    /// drop(signals); // unsubscribes, unblocks SIGUSR1 again
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`SignalError`]: an empty set; the loop is destroyed or was inherited through fork;
    /// `pthread_sigmask`, `signalfd4` or `epoll_ctl` failed. Nothing stays changed: the
    /// mask is restored and the descriptor closed.
    pub fn subscribe_signals<F>(&self, set: SignalSet, callback: F) -> Result<Signals, SignalError>
    where
        F: FnMut(&LoopHandle, SignalInfo) + Send + 'static,
    {
        if set.is_empty() {
            return Err(SignalError::EmptySet);
        }
        let Some(shared) = self.upgrade() else {
            let e = destroyed_error(Operation::Subscribe);
            return Err(SignalError::Subscribe(SubscribeErrorKind::Destroyed(e)));
        };
        if shared.inherited() {
            return Err(SignalError::Subscribe(SubscribeErrorKind::Forked));
        }
        drop(shared);
        let bits = set.bits();
        let before = thread_mask(libc::SIG_BLOCK, bits).map_err(|errno| {
            SignalError::Sys(SysError {
                call: "pthread_sigmask",
                errno,
            })
        })?;
        let added_here = bits & !before;
        let undo = || {
            if added_here != 0 {
                let _ = thread_mask(libc::SIG_UNBLOCK, added_here);
            }
        };
        let fd = match signalfd(bits) {
            Ok(fd) => fd,
            Err(errno) => {
                undo();
                return Err(SignalError::Sys(SysError {
                    call: "signalfd4",
                    errno,
                }));
            }
        };
        let loop_mask = Arc::new(Mutex::new(LoopMask {
            active: true,
            added: 0,
            thread: 0,
        }));
        // Off the loop thread, the task that blocks the set there is scheduled before the
        // descriptor is subscribed: a refused schedule (a full loop) then has nothing to
        // take back from a running loop, whose subscriptions only its thread may remove.
        let off_loop = !self.is_on_loop_thread();
        let applied = Arc::new((Mutex::new(false), Condvar::new()));
        if off_loop {
            let state = loop_mask.clone();
            let done = applied.clone();
            let scheduled = self.schedule_now(move |_, status| {
                let mut m = lock(&state);
                if status == TaskStatus::RunReady && m.active {
                    match thread_mask(libc::SIG_BLOCK, bits) {
                        Ok(old) => {
                            m.added = bits & !old;
                            m.thread = crate::thread_id::current();
                        }
                        Err(errno) => crate::log_at!(
                            error,
                            "reseau: blocking signals on the loop thread failed with {errno}"
                        ),
                    }
                }
                drop(m);
                *lock(&done.0) = true;
                done.1.notify_all();
            });
            if let Err(e) = scheduled {
                let kind = e.kind;
                drop(e);
                drop(fd);
                undo();
                // A loop being destroyed refuses the subscription itself too: say so, as
                // when the descriptor was subscribed first.
                return Err(match kind {
                    ScheduleErrorKind::Destroyed(e) => {
                        let e = reseau_core::LifecycleError {
                            op: Operation::Subscribe,
                            ..e
                        };
                        SignalError::Subscribe(SubscribeErrorKind::Destroyed(e))
                    }
                    ScheduleErrorKind::Forked => SignalError::Subscribe(SubscribeErrorKind::Forked),
                    kind => SignalError::Schedule(kind),
                });
            }
        }
        // The subscription, once known, for the callback: see the panic case below.
        let own: Arc<OnceLock<Subscription>> = Arc::new(OnceLock::new());
        let own_in_callback = own.clone();
        let mut callback = callback;
        let subscribed = self.subscribe(fd, Interest::READABLE, move |h, fd, _ready| {
            let drained = catch_unwind(AssertUnwindSafe(|| drain(fd, |info| callback(h, info))));
            if let Err(payload) = drained {
                // The records after the one whose callback panicked are still unread, and
                // an edge-triggered descriptor would not report them again before the next
                // signal: re-arm it (applied when this returns) so the next tick reads them.
                if let Some(sub) = own_in_callback.get() {
                    let _ = h.modify(sub, Interest::READABLE);
                }
                resume_unwind(payload);
            }
            IoControl::Keep
        });
        let sub = match subscribed {
            Ok(sub) => sub,
            Err(e) => {
                let mut m = lock(&loop_mask);
                m.active = false;
                if m.added != 0 {
                    // The blocking task ran already: undo it on the loop thread.
                    drop(m);
                    let state = loop_mask.clone();
                    let _ = self.schedule_now(move |_, st| {
                        if st == TaskStatus::RunReady {
                            lock(&state).restore_here();
                        }
                    });
                }
                undo();
                return Err(SignalError::Subscribe(e.kind));
            }
        };
        let _ = own.set(sub);
        if off_loop {
            // A running loop thread must have blocked the set before this returns: a
            // signal sent right after would otherwise find that thread unblocked and take
            // its default action (for SIGUSR1, ending the process). A loop that is not
            // running has no thread to wait for: the task runs first in its next run (and
            // a loop thread started by this thread inherits the mask anyway). The wait
            // re-checks the state every 10 ms, so a stop racing this call cannot hang it.
            let mut ran = lock(&applied.0);
            while !*ran && self.is_running() {
                ran = applied
                    .1
                    .wait_timeout(ran, std::time::Duration::from_millis(10))
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
        }
        Ok(Signals {
            handle: self.clone(),
            sub: Some(sub),
            set,
            added_here,
            loop_mask,
            _not_send: PhantomData,
        })
    }
}

/// Blocks `set` on the calling thread; the threads it creates afterwards inherit the mask.
/// Call it in `main` before creating threads (an [`EventLoopGroup`](crate::EventLoopGroup)
/// say) that a later [`LoopHandle::subscribe_signals`] cannot reach. A [`Signals`] never
/// unblocks signals that were blocked before it subscribed.
///
/// # Errors
/// `pthread_sigmask` failed.
pub fn block_on_this_thread(set: SignalSet) -> Result<(), SignalError> {
    thread_mask(libc::SIG_BLOCK, set.bits())
        .map(drop)
        .map_err(|errno| {
            SignalError::Sys(SysError {
                call: "pthread_sigmask",
                errno,
            })
        })
}

/// The signals blocked on the calling thread (`pthread_sigmask` query), as far as a
/// [`SignalSet`] can hold them (1 to 64).
///
/// # Errors
/// `pthread_sigmask` failed (it does not, on Linux, for a query).
pub fn blocked_on_this_thread() -> Result<SignalSet, SignalError> {
    current_mask().map(SignalSet).map_err(|errno| {
        SignalError::Sys(SysError {
            call: "pthread_sigmask",
            errno,
        })
    })
}

/// Makes `command`'s child start with an empty signal mask: a `pre_exec` hook that
/// unblocks every signal between `fork` and `exec`. A blocked mask is inherited across
/// `fork` and kept across `exec`, so without this a child spawned from a thread that
/// subscribed signals starts with them blocked (and, say, ignores Ctrl-C's `SIGINT`).
///
/// ```
/// use std::process::Command;
///
/// let mut cmd = Command::new("true");
/// reseau_linux::signals::unblock_in_child(&mut cmd);
/// assert!(cmd.status()?.success());
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn unblock_in_child(command: &mut std::process::Command) -> &mut std::process::Command {
    use std::os::unix::process::CommandExt;
    let empty = sigset(0);
    // SAFETY: the hook runs in the forked child before `exec`; it only calls
    // `pthread_sigmask` (async-signal-safe) on a set prepared before the fork, and
    // allocates nothing.
    unsafe {
        command.pre_exec(move || {
            let rc = libc::pthread_sigmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
            if rc == 0 {
                Ok(())
            } else {
                Err(std::io::Error::from_raw_os_error(rc))
            }
        })
    }
}
