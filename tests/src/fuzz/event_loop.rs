//! Fuzz target `event_loop`: a real reseau-linux loop driven by an arbitrary script.
//!
//! The driver thread owns the [`EventLoop`] and runs the lifecycle operations (run, stop,
//! wait, restart); schedules (now, at a deadline up to ~0.5 ms away, serialized, from a
//! task on the loop) and cancels come from the driver or from one of two worker threads,
//! concurrently; a subscribed pipe gets writes. The script always ends with destroy. Then:
//! - every task created (scheduled, or handed back by a refused schedule) ran **exactly
//!   once**, with `RunReady` or `Canceled`, on the loop's identity;
//! - a timed task that ran `RunReady` did not run before its deadline;
//! - the `RunReady` now-tasks of each scheduling thread ran in that thread's order;
//! - a task canceled on the loop thread before it ran ran `Canceled`;
//! - the pipe's callback never read more bytes than were written, and its source was
//!   dropped exactly once by destroy;
//! - the process has the descriptors it had before (no leak).
//!
//! Bounded per input (at most [`MAX_OPS`] operations, capacity 64, deadlines under a
//! millisecond) so each input runs in milliseconds.

use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Sender, channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use arbitrary::{Arbitrary, Unstructured};
use reseau_linux::{
    BoxedTask, EventLoop, EventLoopOptions, Interest, IoControl, LoopHandle, TaskHandle, TaskStatus,
};

/// The longest script.
pub const MAX_OPS: usize = 48;

/// Who performs a scheduling operation.
#[derive(Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Actor {
    /// The driver thread (which owns the loop).
    Driver,
    /// Worker thread 1.
    Worker1,
    /// Worker thread 2.
    Worker2,
}

/// One step of the script.
#[derive(Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `schedule_now`.
    Now(Actor),
    /// `schedule_at(now + delay µs)`, delay below 512 µs.
    At(Actor, u8, bool),
    /// `schedule_now_serialized`.
    Serialized(Actor),
    /// A task that, when it runs, schedules `n % 4` children from the loop thread (and
    /// cancels the first of them if the flag is set).
    Spawner(Actor, u8, bool),
    /// `cancel` the `i`-th task created so far, from an actor.
    Cancel(Actor, u8),
    /// `cancel` the `i`-th task created so far, from a task on the loop thread.
    CancelOnLoop(u8),
    /// `stop` (idempotent).
    Stop,
    /// `wait_for_stop_completion` (only when a stop was requested: it would block).
    Wait,
    /// `run` (refused when running: fine).
    Run,
    /// Writes a byte into the subscribed pipe.
    PipeWrite,
}

/// What the tasks record.
#[derive(Default)]
struct Log {
    /// Per task id: (status, ran on the loop's identity, not early).
    runs: HashMap<u64, Vec<(TaskStatus, bool, bool)>>,
    /// `RunReady` now-tasks by scheduling thread, in the order they ran.
    order: HashMap<u8, Vec<u64>>,
}

struct Shared {
    log: Mutex<Log>,
    next_id: AtomicU64,
    /// Every task created, with its handle when the schedule was accepted.
    created: Mutex<Vec<(u64, Option<TaskHandle>)>>,
    /// Per scheduling thread: the now-task ids in schedule order.
    scheduled_order: Mutex<HashMap<u8, Vec<u64>>>,
    /// Ids canceled on the loop thread before they ran.
    must_be_canceled: Mutex<Vec<u64>>,
}

impl Shared {
    fn id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    fn record(&self, id: u64, st: TaskStatus, on_loop: bool, not_early: bool, fifo: Option<u8>) {
        let mut log = self.log.lock().unwrap();
        log.runs
            .entry(id)
            .or_default()
            .push((st, on_loop, not_early));
        if let (Some(t), TaskStatus::RunReady) = (fifo, st) {
            log.order.entry(t).or_default().push(id);
        }
    }
}

/// Builds a task for `id`: records its run; a spawner also schedules children.
fn task(
    s: &Arc<Shared>,
    id: u64,
    deadline: Option<u64>,
    fifo: Option<u8>,
    spawn: Option<(u8, bool)>,
) -> BoxedTask {
    let s = s.clone();
    Box::new(move |h: &LoopHandle, st: TaskStatus| {
        let not_early = deadline.is_none_or(|d| st == TaskStatus::Canceled || h.now() >= d);
        s.record(id, st, h.is_on_loop_thread(), not_early, fifo);
        if let (Some((n, cancel_first)), TaskStatus::RunReady) = (spawn, st) {
            for k in 0..n % 4 {
                let child = s.id();
                let t = task(&s, child, None, None, None);
                match h.schedule_now(t) {
                    Ok(handle) => {
                        s.created.lock().unwrap().push((child, Some(handle)));
                        if k == 0 && cancel_first {
                            s.must_be_canceled.lock().unwrap().push(child);
                            h.cancel(&handle);
                        }
                    }
                    Err(e) => {
                        s.created.lock().unwrap().push((child, None));
                        e.into_task().run(h, TaskStatus::Canceled);
                    }
                }
            }
        }
    })
}

/// Performs a scheduling or cancel operation as `actor` (thread number `t`).
fn act(s: &Arc<Shared>, h: &LoopHandle, op: Op, t: u8) {
    let created_len = || s.created.lock().unwrap().len();
    match op {
        Op::Now(_) | Op::Serialized(_) | Op::At(..) | Op::Spawner(..) => {
            let id = s.id();
            let (deadline, fifo, spawn) = match op {
                Op::At(_, us, _) => (Some(h.now() + u64::from(us) * 2_000), None, None),
                Op::Spawner(_, n, c) => (None, Some(t), Some((n, c))),
                _ => (None, Some(t), None),
            };
            // Order is only promised among this thread's inbox schedules.
            let fifo = fifo.filter(|_| !h.is_on_loop_thread());
            if let Some(t) = fifo {
                s.scheduled_order
                    .lock()
                    .unwrap()
                    .entry(t)
                    .or_default()
                    .push(id);
            }
            let f = task(s, id, deadline, fifo, spawn);
            let result = match op {
                Op::At(..) => h.schedule_at(deadline.unwrap_or(0), f),
                Op::Serialized(_) => h.schedule_now_serialized(f),
                _ => h.schedule_now(f),
            };
            match result {
                Ok(handle) => s.created.lock().unwrap().push((id, Some(handle))),
                Err(e) => {
                    if let Some(t) = fifo {
                        let mut order = s.scheduled_order.lock().unwrap();
                        order.get_mut(&t).map(|v| v.pop());
                    }
                    s.created.lock().unwrap().push((id, None));
                    e.into_task().run(h, TaskStatus::Canceled);
                }
            }
        }
        Op::Cancel(_, i) => {
            let n = created_len();
            if n > 0 {
                let handle = s.created.lock().unwrap()[usize::from(i) % n].1;
                if let Some(handle) = handle {
                    h.cancel(&handle);
                }
            }
        }
        _ => {}
    }
}

/// A worker thread performing operations sent to it, concurrently with the driver.
fn worker(s: Arc<Shared>, h: LoopHandle, t: u8) -> (Sender<Op>, JoinHandle<()>) {
    let (tx, rx) = channel::<Op>();
    let j = std::thread::spawn(move || {
        for op in rx {
            act(&s, &h, op, t);
        }
    });
    (tx, j)
}

/// The subscribed pipe's read end, counting its drops.
struct PipeSource {
    fd: OwnedFd,
    drops: Arc<AtomicUsize>,
}

impl AsFd for PipeSource {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Drop for PipeSource {
    fn drop(&mut self) {
        self.drops.fetch_add(1, Ordering::SeqCst);
    }
}

fn open_fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

/// Decodes `data` into a script, runs it against a real loop and checks the invariants.
///
/// # Panics
/// On the first violated invariant.
pub fn run(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let mut ops = Vec::new();
    while ops.len() < MAX_OPS && !u.is_empty() {
        match u.arbitrary::<Op>() {
            Ok(op) => ops.push(op),
            Err(_) => break,
        }
    }
    let fds_before = open_fd_count();
    {
        run_script(&ops);
    }
    assert_eq!(open_fd_count(), fds_before, "descriptors leaked by {ops:?}");
}

fn run_script(ops: &[Op]) {
    let mut el = EventLoop::new(EventLoopOptions {
        capacity: 64,
        ..EventLoopOptions::default()
    })
    .expect("EventLoop::new");
    let h = el.handle();
    let s = Arc::new(Shared {
        log: Mutex::default(),
        next_id: AtomicU64::new(0),
        created: Mutex::default(),
        scheduled_order: Mutex::default(),
        must_be_canceled: Mutex::default(),
    });
    // The pipe, subscribed before the first run.
    let (r, w) = rustix::pipe::pipe_with(
        rustix::pipe::PipeFlags::NONBLOCK | rustix::pipe::PipeFlags::CLOEXEC,
    )
    .expect("pipe2");
    let drops = Arc::new(AtomicUsize::new(0));
    let read = Arc::new(AtomicUsize::new(0));
    let mut written = 0usize;
    let rd = read.clone();
    h.subscribe(
        PipeSource {
            fd: r,
            drops: drops.clone(),
        },
        Interest::READABLE,
        move |_, src: &mut PipeSource, _| {
            let mut buf = [0u8; 64];
            while let Ok(n) = rustix::io::read(src.fd.as_fd(), &mut buf) {
                if n == 0 {
                    break;
                }
                rd.fetch_add(n, Ordering::SeqCst);
            }
            IoControl::Keep
        },
    )
    .map_err(|e| e.kind)
    .expect("subscribe");

    let workers = [
        worker(s.clone(), h.clone(), 1),
        worker(s.clone(), h.clone(), 2),
    ];
    let mut stop_requested = false;
    for &op in ops {
        let actor = match op {
            Op::Now(a)
            | Op::At(a, _, _)
            | Op::Serialized(a)
            | Op::Spawner(a, _, _)
            | Op::Cancel(a, _) => Some(a),
            _ => None,
        };
        match (op, actor) {
            (_, Some(Actor::Worker1)) => workers[0].0.send(op).expect("worker 1"),
            (_, Some(Actor::Worker2)) => workers[1].0.send(op).expect("worker 2"),
            (_, Some(Actor::Driver)) => act(&s, &h, op, 0),
            (Op::CancelOnLoop(i), _) => {
                let s2 = s.clone();
                let f: BoxedTask = Box::new(move |h: &LoopHandle, st| {
                    if st != TaskStatus::RunReady {
                        return;
                    }
                    let n = s2.created.lock().unwrap().len();
                    if n == 0 {
                        return;
                    }
                    let (id, handle) = s2.created.lock().unwrap()[usize::from(i) % n];
                    let already = s2.log.lock().unwrap().runs.contains_key(&id);
                    if let Some(handle) = handle {
                        h.cancel(&handle);
                        if !already {
                            s2.must_be_canceled.lock().unwrap().push(id);
                        }
                    }
                });
                if let Err(e) = h.schedule_now(f) {
                    e.into_task().run(&h, TaskStatus::Canceled);
                }
            }
            (Op::Stop, _) => {
                el.stop().expect("stop");
                stop_requested = true;
            }
            (Op::Wait, _) if stop_requested => {
                el.wait_for_stop_completion().expect("wait");
                stop_requested = false;
            }
            (Op::Run, _) if !stop_requested => {
                let _ = el.run();
            }
            (Op::PipeWrite, _) => {
                written += usize::from(rustix::io::write(&w, b"!").is_ok());
            }
            _ => {}
        }
    }
    for (tx, j) in workers {
        drop(tx);
        j.join().expect("worker panicked");
    }
    el.destroy().expect("destroy");
    drop(w);
    check(
        &s,
        read.load(Ordering::SeqCst),
        written,
        drops.load(Ordering::SeqCst),
    );
}

fn check(s: &Shared, read: usize, written: usize, drops: usize) {
    let log = s.log.lock().unwrap();
    let created = s.created.lock().unwrap();
    for (id, _) in created.iter() {
        let runs = log.runs.get(id).map_or(&[][..], Vec::as_slice);
        assert_eq!(
            runs.len(),
            1,
            "task {id} ran {} times: {runs:?}",
            runs.len()
        );
        let (_, on_loop, not_early) = runs[0];
        assert!(not_early, "task {id} ran before its deadline");
        // Handed-back tasks are run by the caller itself; all others on the loop identity.
        let accepted = created.iter().any(|(i, h)| i == id && h.is_some());
        assert!(on_loop || !accepted, "task {id} ran off the loop thread");
    }
    assert_eq!(
        log.runs.len(),
        created.len(),
        "a task ran that was never created"
    );
    for id in s.must_be_canceled.lock().unwrap().iter() {
        assert_eq!(
            log.runs[id][0].0,
            TaskStatus::Canceled,
            "task {id} canceled on the loop ran"
        );
    }
    for (t, scheduled) in s.scheduled_order.lock().unwrap().iter() {
        let ran = log.order.get(t).map_or(&[][..], Vec::as_slice);
        let expected: Vec<u64> = scheduled
            .iter()
            .copied()
            .filter(|id| ran.contains(id))
            .collect();
        assert_eq!(
            ran,
            expected.as_slice(),
            "thread {t}'s tasks ran out of order"
        );
    }
    assert!(read <= written, "read {read} bytes of {written} written");
    assert_eq!(drops, 1, "the pipe source was dropped {drops} times");
}
