//! `!Send` futures on the loop ([`LoopHandle::spawn_local`]), without `unsafe`.
//!
//! The engine's tasks must be `Send` (whichever thread destroys the loop runs them
//! canceled), so a `!Send` future never goes into a task. It lives in a thread-local
//! table of the thread that spawned it — which must be the thread driving the loop at
//! the time — keyed by the loop and a key; the task, the waker and the loop's table of
//! live futures carry only `Send + Sync` parts (the key, the loop handle, flags, and a
//! way to resolve the `JoinHandle` as canceled). So the future is only ever polled and
//! dropped by its own thread: that is what makes it sound, and the compiler checks it.
//!
//! A poll that lands on another thread (the loop restarted on a new dedicated thread,
//! another caller turning it, destroy from another thread) cannot reach the future: the
//! future is then *orphaned* — its `JoinHandle` resolves to [`JoinError::Canceled`] at
//! once, and the future itself is dropped by its own thread later: at its next
//! `spawn_local`, or when that thread exits (thread-local destructors). Until then it
//! stays in that thread's memory, documented rather than leaked for good.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

use reseau_core::TaskStatus;

use crate::error::ScheduleErrorKind;
use crate::futures::{Job, JoinCell, JoinError, JoinHandle, drop_guarded};
use crate::handle::LoopHandle;
use crate::platform::{lock, panic_message};

/// A local future with its type erased: polled under a panic guard.
trait LocalPoll {
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()>;
}

struct LocalSpawned<F: Future> {
    future: Option<Pin<Box<F>>>,
    cell: Arc<JoinCell<F::Output>>,
}

impl<F: Future> LocalPoll for LocalSpawned<F> {
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Some(future) = self.future.as_mut() else {
            return Poll::Ready(());
        };
        match catch_unwind(AssertUnwindSafe(|| future.as_mut().poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(v)) => {
                self.cell.complete(Ok(v));
                drop_guarded(|| self.future = None);
                Poll::Ready(())
            }
            Err(payload) => {
                let msg = panic_message(&*payload).to_owned();
                crate::log_at!(
                    error,
                    "reseau: a local future panicked: {msg}; the loop goes on"
                );
                self.cell.complete(Err(JoinError::Panicked(msg)));
                drop_guarded(|| self.future = None);
                Poll::Ready(())
            }
        }
    }
}

impl<F: Future> Drop for LocalSpawned<F> {
    fn drop(&mut self) {
        drop_guarded(|| self.future = None);
        self.cell.complete(Err(JoinError::Canceled));
    }
}

struct Entry {
    task: Arc<LocalTask>,
    future: Box<dyn LocalPoll>,
}

thread_local! {
    /// This thread's local futures, by (loop id, key).
    static LOCAL: RefCell<HashMap<(u64, u64), Entry>> = RefCell::new(HashMap::new());
}

/// Takes this thread's entry for a task out of the table (`None`: another thread's, gone,
/// or the table is being destroyed with the thread).
fn take_entry(loop_id: u64, key: u64) -> Option<Entry> {
    LOCAL
        .try_with(|m| m.try_borrow_mut().ok()?.remove(&(loop_id, key)))
        .ok()
        .flatten()
}

fn put_entry(loop_id: u64, key: u64, entry: Entry) -> Result<(), Entry> {
    let mut slot = Some(entry);
    let _ = LOCAL.try_with(|m| {
        if let Ok(mut m) = m.try_borrow_mut() {
            let e = slot.take().expect("put once");
            m.insert((loop_id, key), e);
        }
    });
    match slot {
        None => Ok(()),
        Some(e) => Err(e),
    }
}

/// Drops this thread's entries whose task is closed (orphaned by a poll elsewhere).
fn purge() {
    let dead: Vec<Entry> = LOCAL
        .try_with(|m| {
            let Ok(mut m) = m.try_borrow_mut() else {
                return Vec::new();
            };
            let keys: Vec<_> = m
                .iter()
                .filter(|(_, e)| lock(&e.task.state).closed)
                .map(|(k, _)| *k)
                .collect();
            keys.iter().filter_map(|k| m.remove(k)).collect()
        })
        .unwrap_or_default();
    for e in dead {
        drop_guarded(|| drop(e));
    }
}

#[derive(Default)]
struct LocalState {
    notified: bool,
    polling: bool,
    closed: bool,
    aborted: bool,
}

/// The `Send + Sync` side of a local future: what tasks, wakers and the loop's table hold.
struct LocalTask {
    handle: LoopHandle,
    key: u64,
    state: Mutex<LocalState>,
    /// Resolves the `JoinHandle` as canceled, from any thread.
    cancel: Box<dyn Fn() + Send + Sync>,
}

impl LocalTask {
    fn forget(&self) {
        if let Some(shared) = self.handle.upgrade() {
            shared.platform().futures.get().forget(self.key);
        }
    }

    fn close_now(self: &Arc<Self>) {
        let polling = {
            let mut st = lock(&self.state);
            st.closed = true;
            st.polling
        };
        if !polling {
            // On its own thread: dropped here (its drop resolves the handle). Elsewhere:
            // orphaned, resolved now, dropped later by its own thread.
            match take_entry(self.handle.loop_id(), self.key) {
                Some(e) => drop_guarded(|| drop(e)),
                None => (self.cancel)(),
            }
        }
        self.forget();
    }

    fn poll_once(self: &Arc<Self>, status: TaskStatus) {
        if status == TaskStatus::Canceled {
            self.close_now();
            return;
        }
        {
            let mut st = lock(&self.state);
            st.notified = false;
            if st.closed || st.polling {
                debug_assert!(!st.polling, "a future is never polled recursively");
                return;
            }
            if st.aborted {
                drop(st);
                self.close_now();
                return;
            }
            st.polling = true;
        }
        let Some(mut entry) = take_entry(self.handle.loop_id(), self.key) else {
            // Another thread drives the loop now: the future is out of reach.
            lock(&self.state).polling = false;
            crate::log_at!(
                warn,
                "reseau: a local future was woken while another thread drives its loop; it is canceled"
            );
            self.close_now();
            return;
        };
        let waker = Waker::from(self.clone());
        let mut cx = Context::from_waker(&waker);
        let ready = entry.future.poll(&mut cx).is_ready();
        let finished = {
            let mut st = lock(&self.state);
            st.polling = false;
            ready || st.closed || st.aborted
        };
        if finished {
            lock(&self.state).closed = true;
            drop_guarded(|| drop(entry));
            self.forget();
        } else if let Err(entry) = put_entry(self.handle.loop_id(), self.key, entry) {
            drop_guarded(|| drop(entry));
            self.close_now();
        }
    }

    fn wake_inner(self: &Arc<Self>) {
        {
            let mut st = lock(&self.state);
            if st.notified || st.closed {
                return;
            }
            st.notified = true;
        }
        let me = self.clone();
        let refused = match self
            .handle
            .schedule_now(move |_, status| me.poll_once(status))
        {
            Ok(_) => return,
            Err(e) => e.kind,
        };
        if let ScheduleErrorKind::Full { .. } = refused
            && let Some(shared) = self.handle.upgrade()
            && shared
                .platform()
                .futures
                .get()
                .overflow(&shared, self.clone())
        {
            return;
        }
        self.close_now();
    }
}

impl Wake for LocalTask {
    fn wake(self: Arc<Self>) {
        self.wake_inner();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.wake_inner();
    }
}

impl Job for LocalTask {
    fn run(self: Arc<Self>, status: TaskStatus) {
        self.poll_once(status);
    }
    fn close(self: Arc<Self>) {
        self.close_now();
    }
    fn abort(self: Arc<Self>) {
        lock(&self.state).aborted = true;
        self.wake_inner();
    }
    fn handle(&self) -> &LoopHandle {
        &self.handle
    }
}

/// Why [`LoopHandle::spawn_local`] refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum LocalSpawnErrorKind {
    /// Not called on the thread driving the loop (a task, a callback, a future on it, or
    /// inside [`turn`](crate::EventLoop::turn) / [`run_here`](crate::EventLoop::run_here)).
    NotOnLoopThread,
    /// The loop is full, or destroy has begun.
    Schedule(ScheduleErrorKind),
}

impl fmt::Display for LocalSpawnErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LocalSpawnErrorKind::NotOnLoopThread => {
                f.write_str("spawn_local off the thread driving the loop")
            }
            LocalSpawnErrorKind::Schedule(k) => k.fmt(f),
        }
    }
}

impl std::error::Error for LocalSpawnErrorKind {}

/// A refused [`LoopHandle::spawn_local`]: why, and the future, never polled.
pub struct LocalSpawnError<F> {
    /// Why.
    pub kind: LocalSpawnErrorKind,
    /// The future, untouched.
    pub future: F,
}

impl<F> fmt::Debug for LocalSpawnError<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalSpawnError")
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

impl<F> fmt::Display for LocalSpawnError<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spawn_local refused ({}); the future is handed back",
            self.kind
        )
    }
}

impl<F> std::error::Error for LocalSpawnError<F> {}

impl LoopHandle {
    /// Spawns a future that need not be `Send` (it may hold an `Rc`, a `RefCell`…) from
    /// the thread driving the loop; it is polled and dropped on this thread only. Meant
    /// for the caller-driven mode ([`run_here`](crate::EventLoop::run_here),
    /// [`turn`](crate::EventLoop::turn)), where the caller's thread stays the loop's.
    ///
    /// If another thread drives the loop when the future is woken (a restart on a new
    /// loop thread, another caller's `turn`, destroy from elsewhere), the future is
    /// orphaned: its handle resolves to [`JoinError::Canceled`] at once, and the future
    /// is dropped by this thread at its next `spawn_local` or when it exits. When this
    /// thread is the one that destroys the loop (or, for a dedicated loop thread, when it
    /// exits), the future is dropped at once. The output must be `Send` (the handle may be
    /// resolved from another thread).
    ///
    /// ```
    /// use std::rc::Rc;
    /// use reseau_linux::{EventLoop, EventLoopOptions};
    ///
    /// let el = EventLoop::new(EventLoopOptions::default())?;
    /// let (tx, rx) = std::sync::mpsc::channel();
    /// el.schedule_now(move |h, _| {
    ///     let h2 = h.clone();
    ///     let job = h.spawn_local(async move {
    ///         let shared = Rc::new(20); // !Send
    ///         let n = *shared + 1;
    ///         h2.stop().unwrap();
    ///         n
    ///     });
    ///     tx.send(job.map_err(|e| e.kind)).unwrap();
    /// })?;
    /// el.run_here()?; // this thread drives the loop until the future stops it
    /// assert_eq!(rx.recv()??.join(), Ok(21));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// Called off the loop's driving thread, the loop is full, or destroy has begun: the
    /// future comes back, never polled.
    pub fn spawn_local<F>(&self, future: F) -> Result<JoinHandle<F::Output>, LocalSpawnError<F>>
    where
        F: Future + 'static,
        F::Output: Send + 'static,
    {
        let refuse = |kind, future| Err(LocalSpawnError { kind, future });
        let Some(shared) = self.upgrade() else {
            return refuse(LocalSpawnErrorKind::NotOnLoopThread, future);
        };
        if !shared.engine.is_driver() {
            return refuse(LocalSpawnErrorKind::NotOnLoopThread, future);
        }
        purge();
        let futures = shared.platform().futures.get();
        let key = futures.key();
        let cell = Arc::new(JoinCell::new());
        let cancel_cell = cell.clone();
        let task = Arc::new(LocalTask {
            handle: self.clone(),
            key,
            state: Mutex::new(LocalState {
                notified: true,
                ..LocalState::default()
            }),
            cancel: Box::new(move || cancel_cell.complete(Err(JoinError::Canceled))),
        });
        // The driver runs no task before this returns: the future is in the table before
        // its first poll can look for it.
        let me = task.clone();
        if let Err(e) = self.schedule_now(move |_, status| me.poll_once(status)) {
            return refuse(LocalSpawnErrorKind::Schedule(e.kind), future);
        }
        futures.register(key, task.clone());
        let entry = Entry {
            task: task.clone(),
            future: Box::new(LocalSpawned {
                future: Some(Box::pin(future)),
                cell: cell.clone(),
            }),
        };
        if let Err(entry) = put_entry(self.loop_id(), key, entry) {
            // This thread's table is gone (the thread is exiting): nothing can poll it.
            drop_guarded(|| drop(entry));
            task.close_now();
        }
        Ok(JoinHandle::new(cell, task))
    }
}
