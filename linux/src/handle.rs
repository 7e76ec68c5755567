//! [`LoopHandle`]: schedule, cancel, stop and subscribe from any thread.

use std::os::fd::AsFd;
use std::sync::{Arc, Weak};

use reseau_core::{Operation, TaskStatus};
use rustix::io::Errno;

use crate::clock::Clock;
use crate::error::{Error, ScheduleError, ScheduleErrorKind, When};
use crate::io::{
    Entry, Found, Interest, IoControl, ModifyError, Readiness, SubscribeError, SubscribeErrorKind,
    Subscription, UnsubscribeError,
};
use crate::platform::lock;
use crate::shared::{Shared, destroyed_error};
use crate::stats::Stats;
use crate::sys::SysError;
use crate::task::{self, Payload, Task, TaskHandle};

/// A cheap, cloneable, `Send + Sync` handle that schedules on a loop from any thread.
///
/// It does not keep the loop alive: once the loop is destroyed every call returns an
/// error (schedules hand the task back).
///
/// ```
/// use reseau_linux::{EventLoop, EventLoopOptions, TaskStatus};
///
/// let mut el = EventLoop::new(EventLoopOptions::default())?;
/// el.run()?;
/// let handle = el.handle(); // Clone + Send + Sync
/// let (tx, rx) = std::sync::mpsc::channel();
/// std::thread::spawn(move || {
///     handle.schedule_now(move |h, status| {
///         assert!(h.is_on_loop_thread());
///         tx.send(status).unwrap();
///     })
/// })
/// .join()
/// .unwrap()?;
/// assert_eq!(rx.recv().unwrap(), TaskStatus::RunReady);
/// el.destroy()?;
/// # Ok::<(), reseau_linux::Error>(())
/// ```
#[derive(Clone)]
pub struct LoopHandle {
    pub(crate) shared: Weak<Shared>,
    pub(crate) id: u64,
}

impl std::fmt::Debug for LoopHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoopHandle")
            .field("loop", &self.id)
            .field("alive", &(self.shared.strong_count() > 0))
            .finish()
    }
}

impl LoopHandle {
    pub(crate) fn upgrade(&self) -> Option<Arc<Shared>> {
        self.shared.upgrade()
    }

    /// Whether the loop is running (on its own thread or driven by a caller).
    pub(crate) fn is_running(&self) -> bool {
        self.upgrade()
            .is_some_and(|s| s.engine.state() == reseau_core::State::Running)
    }

    /// The loop's identity: what its [`TaskHandle`]s and [`Subscription`]s carry.
    pub fn loop_id(&self) -> u64 {
        self.id
    }

    /// Whether the calling thread drives the loop: its own thread, a caller inside
    /// [`EventLoop::turn`](crate::EventLoop::turn), or the thread destroying it while it
    /// cancels the remaining tasks.
    pub fn is_on_loop_thread(&self) -> bool {
        self.upgrade().is_some_and(|s| s.engine.is_driver())
    }

    /// The loop clock's current time in nanoseconds (the scale of deadlines).
    pub fn now(&self) -> u64 {
        match self.upgrade() {
            Some(s) => s.platform().clock.now(),
            None => Clock::Monotonic.now(),
        }
    }

    /// A snapshot of the loop's counters (all zero once the loop is gone).
    pub fn stats(&self) -> Stats {
        self.upgrade()
            .map(|s| {
                let p = s.platform();
                Stats {
                    futures_overflowed: p.futures.overflowed(),
                    ..p.counters.snapshot()
                }
            })
            .unwrap_or_default()
    }

    /// The loop's load factor: nanoseconds its thread was busy (not waiting in
    /// `epoll_wait`) in the last ~1 s window; 0 for an idle or destroyed loop. Groups
    /// balance on it.
    pub fn load_factor(&self) -> u64 {
        self.upgrade().map_or(0, |s| s.platform().load.factor())
    }

    /// Schedules `f` to run on the loop thread as soon as possible.
    ///
    /// From the loop thread the task goes straight into the scheduler (it runs in the next
    /// tick, after the current batch); from any other thread it goes through the inbox, in
    /// the order the calls linearize. A task scheduled on a stopped loop runs after the next
    /// `run`, or is canceled at destroy.
    ///
    /// ```
    /// use reseau_linux::{EventLoop, EventLoopOptions, TaskStatus};
    ///
    /// let mut el = EventLoop::new(EventLoopOptions::default())?;
    /// el.run()?;
    /// let (tx, rx) = std::sync::mpsc::channel();
    /// for i in 0..3 {
    ///     let tx = tx.clone();
    ///     el.handle().schedule_now(move |_, status| {
    ///         assert_eq!(status, TaskStatus::RunReady);
    ///         tx.send(i).unwrap();
    ///     })?;
    /// }
    /// // One thread's schedules run in the order they were made.
    /// assert_eq!([rx.recv().unwrap(), rx.recv().unwrap(), rx.recv().unwrap()], [0, 1, 2]);
    /// el.destroy()?;
    /// # Ok::<(), reseau_linux::Error>(())
    /// ```
    ///
    /// # Errors
    /// The loop holds its capacity of pending tasks, or destroy has begun: the task is in
    /// the error, never run.
    pub fn schedule_now<F>(&self, f: F) -> Result<TaskHandle, ScheduleError>
    where
        F: FnOnce(&LoopHandle, TaskStatus) + Send + 'static,
    {
        self.schedule(task::payload(f), When::Now)
    }

    /// Like [`schedule_now`](Self::schedule_now), but always through the inbox, even from the
    /// loop thread: one global FIFO with every other thread's schedules.
    ///
    /// ```
    /// use reseau_linux::{EventLoop, EventLoopOptions};
    /// use std::sync::{Arc, Mutex};
    ///
    /// let el = EventLoop::new(EventLoopOptions::default())?;
    /// el.run()?;
    /// let order = Arc::new(Mutex::new(Vec::new()));
    /// let (tx, rx) = std::sync::mpsc::channel();
    /// let o = order.clone();
    /// el.schedule_now(move |h, _| {
    ///     // On the loop thread: "late" goes through the inbox behind "other", which another
    ///     // thread queued first; a plain schedule_now would have gone straight in.
    ///     let (o1, o2) = (o.clone(), o.clone());
    ///     let h2 = h.clone();
    ///     std::thread::spawn(move || {
    ///         h2.schedule_now_serialized(move |_, _| o1.lock().unwrap().push("other")).unwrap();
    ///     })
    ///     .join()
    ///     .unwrap();
    ///     h.schedule_now_serialized(move |_, _| {
    ///         o2.lock().unwrap().push("late");
    ///         tx.send(()).unwrap();
    ///     })
    ///     .unwrap();
    /// })?;
    /// rx.recv().unwrap();
    /// assert_eq!(*order.lock().unwrap(), ["other", "late"]);
    /// # Ok::<(), reseau_linux::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`schedule_now`](Self::schedule_now).
    pub fn schedule_now_serialized<F>(&self, f: F) -> Result<TaskHandle, ScheduleError>
    where
        F: FnOnce(&LoopHandle, TaskStatus) + Send + 'static,
    {
        self.schedule(task::payload(f), When::NowSerialized)
    }

    /// Schedules `f` to run on the loop thread at `deadline` (nanoseconds of the loop's
    /// clock, see [`now`](Self::now)); never earlier. Equal deadlines run in submission
    /// order; a past deadline runs in the next tick.
    ///
    /// ```
    /// use reseau_linux::{EventLoop, EventLoopOptions};
    ///
    /// let mut el = EventLoop::new(EventLoopOptions::default())?;
    /// el.run()?;
    /// let h = el.handle();
    /// let (tx, rx) = std::sync::mpsc::channel();
    /// let deadline = h.now() + 2_000_000; // 2 ms on the loop's clock
    /// h.schedule_at(deadline, move |h, _| tx.send(h.now()).unwrap())?;
    /// assert!(rx.recv().unwrap() >= deadline, "never early");
    /// el.destroy()?;
    /// # Ok::<(), reseau_linux::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`schedule_now`](Self::schedule_now).
    pub fn schedule_at<F>(&self, deadline: u64, f: F) -> Result<TaskHandle, ScheduleError>
    where
        F: FnOnce(&LoopHandle, TaskStatus) + Send + 'static,
    {
        self.schedule(task::payload(f), When::At(deadline))
    }

    /// Schedules a task handed back by a refused schedule (see [`ScheduleError`]) again,
    /// as it is: no new allocation, no wrapping closure. `when` is usually the error's own
    /// [`When`], but any is accepted. A task is scheduled at most once: the only way to
    /// hold a [`Task`] is to have had it refused.
    ///
    /// # Errors
    /// As [`schedule_now`](Self::schedule_now): the task comes back again.
    pub fn schedule_task(&self, task: Task, when: When) -> Result<TaskHandle, ScheduleError> {
        self.schedule(task.0, when)
    }

    pub(crate) fn schedule(
        &self,
        payload: Payload,
        when: When,
    ) -> Result<TaskHandle, ScheduleError> {
        let Some(shared) = self.upgrade() else {
            return Err(ScheduleError {
                kind: ScheduleErrorKind::Destroyed(destroyed_error(Operation::Schedule)),
                when,
                task: Task(payload),
            });
        };
        if shared.inherited() {
            return Err(ScheduleError {
                kind: ScheduleErrorKind::Forked,
                when,
                task: Task(payload),
            });
        }
        shared
            .engine
            .schedule(payload, when)
            .map(TaskHandle)
            .map_err(|r| ScheduleError {
                kind: r.kind.into(),
                when: r.when,
                task: Task(r.task),
            })
    }

    /// Cancels a task: it runs exactly once with [`TaskStatus::Canceled`] — at once when
    /// called on the loop thread, on the loop thread in its next tick otherwise (or at
    /// destroy) — and this returns `true`. Returns `false`, a no-op, when the task has
    /// already run or been canceled, or the handle is of another loop (or the loop was
    /// inherited through `fork`: see [`Error::Forked`]).
    ///
    /// ```
    /// use reseau_linux::{EventLoop, EventLoopOptions, TaskStatus};
    /// use std::time::Duration;
    ///
    /// let el = EventLoop::new(EventLoopOptions::default())?;
    /// let (tx, rx) = std::sync::mpsc::channel();
    /// let task = el.schedule_after(Duration::from_secs(60), move |_, st| tx.send(st).unwrap())?;
    /// assert!(el.cancel(&task), "the first cancel wins");
    /// assert!(!el.cancel(&task), "a second one is a no-op");
    /// el.turn(Some(Duration::ZERO))?; // the canceled task runs in the next tick
    /// assert_eq!(rx.try_recv().unwrap(), TaskStatus::Canceled);
    /// # Ok::<(), reseau_linux::Error>(())
    /// ```
    pub fn cancel(&self, task: &TaskHandle) -> bool {
        match self.upgrade() {
            Some(shared) if !shared.inherited() => shared.engine.cancel(self, task.0),
            _ => false,
        }
    }

    /// Subscribes `source` for edge-triggered readiness: `callback` runs on the loop thread
    /// with this handle, the source and the [`Readiness`] delivered, each time the kernel
    /// reports an edge of interest (read or write until `EAGAIN` before expecting the next).
    /// The subscription owns the source until [`unsubscribe`](Self::unsubscribe) hands it
    /// back, the callback returns [`IoControl::Unsubscribe`] (the source is dropped), or the
    /// loop is destroyed (dropped). From any thread, running or not.
    ///
    /// ```
    /// use reseau_linux::{EventLoop, EventLoopOptions, Interest, IoControl};
    /// use std::io::{Read, Write};
    /// use std::os::unix::net::UnixStream;
    ///
    /// let mut el = EventLoop::new(EventLoopOptions::default())?;
    /// el.run()?;
    /// let (ours, mut theirs) = UnixStream::pair()?;
    /// ours.set_nonblocking(true)?;
    /// let (tx, rx) = std::sync::mpsc::channel();
    /// el.handle()
    ///     .subscribe(ours, Interest::READABLE, move |_, sock, readiness| {
    ///         assert!(readiness.is_readable());
    ///         let mut buf = [0; 16];
    ///         // Edge-triggered: read until WouldBlock.
    ///         while let Ok(n @ 1..) = sock.read(&mut buf) {
    ///             tx.send(buf[..n].to_vec()).unwrap();
    ///         }
    ///         IoControl::Keep
    ///     })
    ///     .expect("subscribe");
    /// theirs.write_all(b"ping")?;
    /// assert_eq!(rx.recv().unwrap(), b"ping");
    /// el.destroy()?; // drops the subscription and its socket
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// The source is blocking, the interest empty, the descriptor already subscribed here
    /// (the existing subscription is untouched), destroy has begun, or `epoll_ctl` failed;
    /// the source comes back in the error.
    pub fn subscribe<S, F>(
        &self,
        source: S,
        interest: Interest,
        callback: F,
    ) -> Result<Subscription, SubscribeError<S>>
    where
        S: AsFd + Send + 'static,
        F: FnMut(&LoopHandle, &mut S, Readiness) -> IoControl + Send + 'static,
    {
        let refuse = |kind, source| Err(SubscribeError { kind, source });
        if interest.is_empty() {
            return refuse(SubscribeErrorKind::EmptyInterest, source);
        }
        match rustix::fs::fcntl_getfl(source.as_fd()) {
            Ok(fl) if fl.contains(rustix::fs::OFlags::NONBLOCK) => {}
            Ok(_) => return refuse(SubscribeErrorKind::Blocking, source),
            Err(errno) => {
                let e = SysError {
                    call: "fcntl(F_GETFL)",
                    errno,
                };
                return refuse(SubscribeErrorKind::Sys(e), source);
            }
        }
        let Some(shared) = self.upgrade() else {
            let e = destroyed_error(Operation::Subscribe);
            return refuse(SubscribeErrorKind::Destroyed(e), source);
        };
        if shared.inherited() {
            return refuse(SubscribeErrorKind::Forked, source);
        }
        let _guard = if shared.engine.is_driver() {
            None
        } else {
            match shared.engine.lifecycle().enter_producer() {
                Ok(g) => Some(g),
                Err(e) => {
                    let e = reseau_core::LifecycleError {
                        op: Operation::Subscribe,
                        ..e
                    };
                    return refuse(SubscribeErrorKind::Destroyed(e), source);
                }
            }
        };
        // Register, then insert, under the lock: the loop cannot dispatch an event for this
        // token before the entry is there (dispatch takes the lock), and a refused
        // registration hands the source back untouched, never boxed.
        let platform = shared.platform();
        let mut subs = lock(&platform.subs);
        let sub = subs.next_subscription();
        let added = platform.sys.epoll_add(
            platform.epoll.as_fd(),
            source.as_fd(),
            sub.token(),
            interest.epoll_flags(),
        );
        match added {
            Ok(()) => {
                subs.insert(Box::new(Entry { source, callback }));
                Ok(sub)
            }
            Err(errno) => {
                drop(subs);
                let kind = if errno == Errno::EXIST {
                    SubscribeErrorKind::AlreadySubscribed
                } else {
                    SubscribeErrorKind::Sys(SysError {
                        call: "epoll_ctl(ADD)",
                        errno,
                    })
                };
                refuse(kind, source)
            }
        }
    }

    /// Removes a subscription and hands its source back; no callback for it runs after this
    /// returns (an event already in the current batch is dropped).
    ///
    /// Allowed on the loop thread (from a task or another subscription's callback), or from
    /// any thread while the loop is not running. Off the loop thread while it runs it fails
    /// ([`UnsubscribeError::OffLoopThreadWhileRunning`]) rather than race a callback: schedule
    /// the unsubscribe on the loop instead.
    ///
    /// # Errors
    /// See [`UnsubscribeError`]; and once the loop is destroyed.
    pub fn unsubscribe<S: AsFd + Send + 'static>(&self, sub: Subscription) -> Result<S, Error> {
        let shared = self
            .upgrade()
            .ok_or(Error::InvalidState(destroyed_error(Operation::Unsubscribe)))?;
        if shared.inherited() {
            return Err(Error::Forked(Operation::Unsubscribe));
        }
        let on_loop = shared.engine.is_driver();
        if !on_loop && shared.engine.lifecycle().is_live() {
            return Err(Error::Unsubscribe(
                UnsubscribeError::OffLoopThreadWhileRunning,
            ));
        }
        let platform = shared.platform();
        let mut subs = lock(&platform.subs);
        match subs.find(sub) {
            Found::Missing => return Err(Error::Unsubscribe(UnsubscribeError::NotSubscribed)),
            // Off the loop thread, a callback in flight means a `run` raced this call.
            Found::InCallback if !on_loop => {
                return Err(Error::Unsubscribe(
                    UnsubscribeError::OffLoopThreadWhileRunning,
                ));
            }
            Found::InCallback => return Err(Error::Unsubscribe(UnsubscribeError::InOwnCallback)),
            Found::Active(entry) if entry.source_type() != std::any::TypeId::of::<S>() => {
                return Err(Error::Unsubscribe(UnsubscribeError::WrongSourceType));
            }
            Found::Active(_) => {}
        }
        let entry = subs.remove(sub).expect("found active above");
        drop(subs);
        platform.deregister(&*entry);
        Ok(*entry
            .into_source()
            .downcast::<S>()
            .unwrap_or_else(|_| unreachable!("type checked above")))
    }

    /// Changes what a subscription wants to hear about (`EPOLL_CTL_MOD`, still
    /// edge-triggered, with hang-up and error always reported). From any thread, running or
    /// not, and from the subscription's own callback.
    ///
    /// While the subscription's callback runs (it is the caller, or another thread raced
    /// it), its source is out of the loop's hands: the change is recorded and applied when
    /// the callback returns `IoControl::Keep` (the last change recorded wins; returning
    /// `Unsubscribe` discards it), and this returns `Ok`. A deferred `epoll_ctl` failure is
    /// logged, not returned. Otherwise the change is made before this returns. A changed
    /// registration reports the current state again: an fd already writable fires
    /// `WRITABLE` once after a change to `WRITABLE`.
    ///
    /// ```
    /// use reseau_linux::{EventLoop, EventLoopOptions, Interest, IoControl};
    ///
    /// let el = EventLoop::new(EventLoopOptions::default())?;
    /// let (read, _write) = reseau_linux::sys::nonblocking_pipe()?;
    /// let sub = el.subscribe(read, Interest::READABLE, |_, _, _| IoControl::Keep)
    ///     .map_err(|e| e.kind)
    ///     .unwrap();
    /// el.modify(&sub, Interest::READABLE | Interest::WRITABLE)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// See [`ModifyError`]: a stale, foreign or removed subscription, an empty interest, a
    /// destroyed or forked loop, or `epoll_ctl(MOD)` failing (the previous interest stays).
    pub fn modify(&self, sub: &Subscription, interest: Interest) -> Result<(), ModifyError> {
        if interest.is_empty() {
            return Err(ModifyError::EmptyInterest);
        }
        let shared = self.upgrade().ok_or(ModifyError::Destroyed)?;
        if shared.inherited() {
            return Err(ModifyError::Forked);
        }
        let platform = shared.platform();
        let mut subs = lock(&platform.subs);
        match subs.find(*sub) {
            Found::Missing => Err(ModifyError::NotSubscribed),
            Found::InCallback => {
                subs.defer_modify(*sub, interest);
                Ok(())
            }
            Found::Active(entry) => platform
                .sys
                .epoll_mod(
                    platform.epoll.as_fd(),
                    entry.fd(),
                    sub.token(),
                    interest.epoll_flags(),
                )
                .map_err(|errno| {
                    ModifyError::Sys(SysError {
                        call: "epoll_ctl(MOD)",
                        errno,
                    })
                }),
        }
    }

    /// How many subscriptions are live on the loop.
    pub fn subscriptions(&self) -> usize {
        self.upgrade().map_or(0, |s| lock(&s.platform().subs).len())
    }

    /// Asks the loop to stop; idempotent, from any thread. From the loop thread it takes
    /// effect when the current task returns; the loop's remaining tasks stay scheduled for
    /// the next `run`. Stopping a loop that is not running does nothing (and does not
    /// affect the next `run`).
    ///
    /// # Errors
    /// Once the loop is destroyed.
    pub fn stop(&self) -> Result<(), Error> {
        let shared = self
            .upgrade()
            .ok_or(Error::InvalidState(destroyed_error(Operation::Stop)))?;
        if shared.inherited() {
            return Err(Error::Forked(Operation::Stop));
        }
        Ok(shared.engine.stop()?)
    }
}
