//! reseau-linux: the Linux platform under reseau-core's engine — an epoll event loop
//! driven by a dedicated thread or by the caller.
//!
//! ```
//! use reseau_linux::{EventLoop, EventLoopOptions, TaskStatus};
//!
//! let mut el = EventLoop::new(EventLoopOptions::default())?;
//! el.run()?;
//! let (tx, rx) = std::sync::mpsc::channel();
//! el.schedule_now(move |handle, status| {
//!     assert!(handle.is_on_loop_thread());
//!     tx.send(status).unwrap();
//! })?;
//! assert_eq!(rx.recv().unwrap(), TaskStatus::RunReady);
//! el.destroy()?;
//! # Ok::<(), reseau_linux::Error>(())
//! ```
//!
//! - [`EventLoop`] / [`LoopHandle`]: run on a thread of its own, or [`turn`] /
//!   [`run_here`] on the caller's; stop, wait, destroy; schedule now, at a deadline or
//!   serialized; cancel. The loop is reseau-core's [`Engine`](reseau_core::Engine): tasks
//!   live inline in a slot array allocated once (capacity chosen at run time, up to
//!   [`MAX_CAPACITY`]), so scheduling a closure of up to [`INLINE_BYTES`] bytes allocates
//!   nothing. Memory: 160 bytes per pending task, plus the epoll event buffer (12 bytes per
//!   event, 16 growing to `max_events`).
//! - IO: [`LoopHandle::subscribe`] registers an owned, non-blocking source for
//!   edge-triggered readiness ([`Interest`], [`Readiness`], [`IoControl`]).
//! - Futures ([`futures`]): [`LoopHandle::spawn`] runs a `Send` future on the loop
//!   ([`JoinHandle`]); [`LoopHandle::sleep`] ([`Sleep`]) waits on the loop's timers;
//!   [`LoopHandle::async_fd`] ([`AsyncFd`]) awaits a subscribed source's readiness;
//!   [`LoopHandle::spawn_local`] runs a `!Send` future on the thread driving the loop.
//! - [`EventLoopGroup`]: N loops on named threads, balanced by the power of two choices.
//! - [`sys`]: every syscall, behind the [`sys::Syscalls`] seam, with the descriptor
//!   creation fallbacks for old kernels and sandboxes.
//!
//!
//! Features: `log` (default) reports fallbacks, caught panics and failed syscalls through
//! the [`log`](https://docs.rs/log) crate; without it those lines compile to nothing, and
//! the same facts stay observable as values ([`EventLoop::backend`], [`Stats`], the errors
//! returned). A program that installs no logger pays nothing for it either way: with LTO
//! the calls go, since the log level is never raised (README "Size and bare metal").
//!
//! [`turn`]: EventLoop::turn
//! [`run_here`]: EventLoop::run_here

/// Logs through the `log` crate when the `log` feature is on (the default); without it the
/// arguments are only type-checked and nothing is compiled in.
macro_rules! log_at {
    ($level:ident, $($arg:tt)+) => {{
        #[cfg(feature = "log")]
        ::log::$level!($($arg)+);
        #[cfg(not(feature = "log"))]
        {
            let _ = format_args!($($arg)+);
        }
    }};
}
pub(crate) use log_at;

mod async_fd;
mod clock;
mod error;
mod event_loop;
mod fork;
pub mod futures;
mod group;
mod handle;
mod io;
mod load;
mod local;
mod panics;
mod platform;
mod shared;
pub mod signals;
mod sleep;
mod stats;
pub mod sys;
mod task;
mod thread_id;
mod timer;
mod wakeup;

pub use async_fd::{AsyncFd, ReadyFuture};
pub use clock::{Clock, timeout_ms};
pub use error::{Error, ScheduleError, ScheduleErrorKind, When};
pub use event_loop::{EventLoop, EventLoopOptions, MAX_CAPACITY};
pub use futures::{JoinError, JoinHandle, SpawnError};
pub use group::{EventLoopGroup, EventLoopGroupOptions, ShutdownCallback, ShutdownOutcome};
pub use handle::LoopHandle;
pub use io::{
    Interest, IoControl, ModifyError, Readiness, SubscribeError, SubscribeErrorKind, Subscription,
    UnsubscribeError,
};
pub use local::{LocalSpawnError, LocalSpawnErrorKind};
pub use panics::PanicPolicy;
pub use reseau_core::INLINE_BYTES;
pub use reseau_core::{LifecycleError, Operation, State, TaskStatus};
pub use rustix::io::Errno;
pub use signals::{SignalError, SignalInfo, SignalSet, Signals};
pub use sleep::Sleep;
pub use stats::Stats;
pub use sys::{Backend, EpollBackend, SysError, TimerBackend, WakeupBackend};
pub use task::{BoxedTask, Task, TaskHandle};
pub use timer::{Instant, Interval, IntervalControl, MissedTickBehavior, Tick, TickStatus};

/// The README's Rust snippets, compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
