//! Futures on the loop (issue 11, item 4): spawn, JoinHandle, sleep, AsyncFd, and what a
//! waker does on a full or a destroyed loop.

use std::future::{Future, poll_fn};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::channel;
use std::sync::{Arc, Barrier, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use reseau_linux::{
    EventLoop, EventLoopOptions, Interest, JoinError, JoinHandle, LoopHandle, ScheduleErrorKind,
};
use reseau_tests::util::{hold_loop, recv};

fn running(capacity: usize) -> EventLoop {
    let el = EventLoop::new(EventLoopOptions {
        capacity,
        ..Default::default()
    })
    .unwrap();
    el.run().unwrap();
    el
}

fn spawn<F>(h: &LoopHandle, f: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    h.spawn(f).map_err(|e| e.kind).expect("spawn")
}

/// Counts its drops.
struct DropCounter(Arc<AtomicUsize>);

impl Drop for DropCounter {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// A waker slot a test controls: the future parks its waker here and waits for `go`.
#[derive(Default)]
struct Gate {
    waker: Mutex<Option<Waker>>,
    go: AtomicBool,
}

impl Gate {
    /// Resolves once `go` is set; reports its first poll on `polled`.
    fn wait(self: Arc<Self>, polled: std::sync::mpsc::Sender<()>) -> impl Future<Output = ()> {
        let mut first = Some(polled);
        poll_fn(move |cx| {
            *self.waker.lock().unwrap() = Some(cx.waker().clone());
            if let Some(tx) = first.take() {
                tx.send(()).unwrap();
            }
            if self.go.load(Ordering::SeqCst) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
    }

    fn open(&self) {
        self.go.store(true, Ordering::SeqCst);
        let w = self.waker.lock().unwrap().clone().expect("polled once");
        w.wake();
    }
}

#[test]
fn spawn_from_several_threads_each_future_completes_exactly_once() {
    const THREADS: usize = 4;
    const EACH: usize = 250;
    let el = running(4096);
    let runs: Arc<Vec<AtomicUsize>> =
        Arc::new((0..THREADS * EACH).map(|_| AtomicUsize::new(0)).collect());
    let barrier = Arc::new(Barrier::new(THREADS));
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let h = el.handle();
            let runs = runs.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                let joins: Vec<_> = (0..EACH)
                    .map(|i| {
                        let runs = runs.clone();
                        let h2 = h.clone();
                        spawn(&h, async move {
                            assert!(h2.is_on_loop_thread());
                            runs[t * EACH + i].fetch_add(1, Ordering::SeqCst);
                            t * EACH + i
                        })
                    })
                    .collect();
                for (i, j) in joins.into_iter().enumerate() {
                    assert_eq!(j.join(), Ok(t * EACH + i));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert!(runs.iter().all(|r| r.load(Ordering::SeqCst) == 1));
}

#[test]
fn a_future_that_wakes_itself_10000_times_is_polled_again_later_never_recursively() {
    let el = running(16);
    let polls = Arc::new(AtomicUsize::new(0));
    let in_poll = Arc::new(AtomicBool::new(false));
    let (p, flag) = (polls.clone(), in_poll.clone());
    let j = spawn(
        &el,
        poll_fn(move |cx| {
            assert!(!flag.swap(true, Ordering::SeqCst), "polled recursively");
            let n = p.fetch_add(1, Ordering::SeqCst) + 1;
            let out = if n > 10_000 {
                Poll::Ready(n)
            } else {
                cx.waker().wake_by_ref();
                cx.waker().wake_by_ref(); // a second wake while notified is absorbed
                Poll::Pending
            };
            flag.store(false, Ordering::SeqCst);
            out
        }),
    );
    assert_eq!(j.join(), Ok(10_001));
    assert_eq!(polls.load(Ordering::SeqCst), 10_001);
}

#[test]
fn sleeps_finish_in_deadline_order_never_early() {
    let el = running(64);
    let h = el.handle();
    let order = Arc::new(Mutex::new(Vec::new()));
    // Hold the loop while the sleeps are made and spawned, so none is polled before all
    // exist; their deadlines are fixed at creation.
    let hold = hold_loop(&h, |_| {});
    let joins: Vec<_> = [30u64, 10, 20]
        .into_iter()
        .map(|ms| {
            let sleep = h.sleep(Duration::from_millis(ms));
            let deadline = sleep.deadline();
            let (h2, order) = (h.clone(), order.clone());
            spawn(&h, async move {
                sleep.await;
                assert!(h2.now() >= deadline, "a sleep resolved early");
                order.lock().unwrap().push(ms);
            })
        })
        .collect();
    hold.release();
    for j in joins {
        j.join().unwrap();
    }
    assert_eq!(*order.lock().unwrap(), vec![10, 20, 30]);
}

#[test]
fn a_dropped_sleep_cancels_its_timer() {
    let el = running(64);
    let h = el.handle();
    let h2 = h.clone();
    let j = spawn(&h, async move {
        let mut sleep = Box::pin(h2.sleep(Duration::from_secs(3600)));
        // Poll it once (arming its timer), then drop it.
        poll_fn(|cx| {
            assert!(sleep.as_mut().poll(cx).is_pending());
            Poll::Ready(())
        })
        .await;
        let before = h2.stats().tasks_canceled;
        drop(sleep);
        h2.stats().tasks_canceled - before
    });
    // On the loop thread the cancel runs the timer canceled at once.
    assert_eq!(j.join(), Ok(1));
}

#[test]
fn async_fd_readable_resolves_on_a_socketpair_and_no_edge_is_lost() {
    let el = running(64);
    let h = el.handle();
    let (a, mut b) = UnixStream::pair().unwrap();
    a.set_nonblocking(true).unwrap();
    let a = h
        .async_fd(a, Interest::READABLE)
        .map_err(|e| e.kind)
        .unwrap();
    let (got_tx, got_rx) = channel();
    let j = spawn(&h, async move {
        let mut total = Vec::new();
        while total.len() < 6 {
            let ready = a.readable().await.unwrap();
            assert!(ready.is_readable() || ready.contains(reseau_linux::Readiness::REMOTE_HANG_UP));
            let mut buf = [0u8; 16];
            match a.try_io(Interest::READABLE, |mut s| s.read(&mut buf)) {
                Ok(n) => {
                    total.extend_from_slice(&buf[..n]);
                    got_tx.send(total.len()).unwrap();
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("read: {e}"),
            }
        }
        total
    });
    // Data written before and after the first wait, in separate rounds: each edge wakes.
    b.write_all(b"abc").unwrap();
    assert_eq!(recv(&got_rx), 3);
    b.write_all(b"def").unwrap();
    assert_eq!(recv(&got_rx), 6);
    assert_eq!(j.join().unwrap(), b"abcdef");
}

#[test]
fn async_fd_is_released_at_destroy_and_its_waiter_gets_not_connected() {
    let mut el = running(64);
    let h = el.handle();
    let (a, _b) = UnixStream::pair().unwrap();
    a.set_nonblocking(true).unwrap();
    let a = Arc::new(
        h.async_fd(a, Interest::READABLE)
            .map_err(|e| e.kind)
            .unwrap(),
    );
    // The waiter runs on another thread's poll (not on the loop), so it outlives destroy.
    let waiter = {
        let a = a.clone();
        std::thread::spawn(move || block_on(async move { a.readable().await.map(|_| ()) }))
    };
    el.destroy().unwrap();
    let err = waiter.join().unwrap().unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::NotConnected);
}

#[test]
fn a_wake_on_a_full_loop_is_not_lost() {
    let el = running(2);
    let h = el.handle();
    let gate = Arc::new(Gate::default());
    let (polled_tx, polled_rx) = channel();
    let j = spawn(&h, gate.clone().wait(polled_tx));
    recv(&polled_rx);
    // Fill the loop (a running task holds no slot): far timers take both slots.
    let hold = hold_loop(&h, |_| {});
    let far = fill(&h);
    assert_eq!(far.len(), 2);
    // The wake cannot schedule a poll task: the future goes on the overflow list.
    gate.open();
    assert_eq!(h.stats().futures_overflowed, 1);
    assert!(!j.is_finished());
    hold.release();
    assert_eq!(j.join(), Ok(()));
    for t in &far {
        assert!(h.cancel(t));
    }
}

/// Schedules far timers until the loop refuses one as full; returns their handles.
fn fill(h: &LoopHandle) -> Vec<reseau_linux::TaskHandle> {
    let mut far = Vec::new();
    loop {
        match h.schedule_at(h.now() + 3_600_000_000_000, |_, _| {}) {
            Ok(t) => far.push(t),
            Err(e) => {
                assert!(matches!(e.kind, ScheduleErrorKind::Full { .. }));
                return far;
            }
        }
    }
}

#[test]
fn a_wake_after_destroy_is_a_no_op_and_the_join_handle_says_canceled() {
    let mut el = running(64);
    let h = el.handle();
    let drops = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(Gate::default());
    let (polled_tx, polled_rx) = channel();
    let counter = DropCounter(drops.clone());
    let wait = gate.clone().wait(polled_tx);
    let j = spawn(&h, async move {
        let _counter = counter;
        wait.await;
    });
    recv(&polled_rx);
    el.destroy().unwrap();
    // Destroy dropped the pending future once, and its handle resolved.
    assert_eq!(drops.load(Ordering::SeqCst), 1);
    assert!(j.is_finished());
    assert_eq!(j.join(), Err(JoinError::Canceled));
    // Its waker outlives the loop: waking it is a no-op.
    gate.open();
    assert_eq!(drops.load(Ordering::SeqCst), 1);
}

#[test]
fn a_future_spawned_on_a_stopped_loop_is_canceled_by_destroy() {
    let mut el = EventLoop::new(EventLoopOptions::default()).unwrap();
    let drops = Arc::new(AtomicUsize::new(0));
    let counter = DropCounter(drops.clone());
    let j = spawn(&el, async move {
        let _c = counter;
    });
    el.destroy().unwrap();
    assert_eq!(drops.load(Ordering::SeqCst), 1);
    assert_eq!(j.join(), Err(JoinError::Canceled));
}

#[test]
fn a_panicking_future_gives_panicked_and_the_loop_goes_on() {
    let el = running(64);
    let j = spawn(&el, async { panic!("future boom") });
    assert_eq!(
        j.join(),
        Err::<(), _>(JoinError::Panicked("future boom".into()))
    );
    assert_eq!(spawn(&el, async { 1 }).join(), Ok(1));
}

#[test]
fn a_dropped_join_handle_detaches_the_future() {
    let el = running(64);
    let h = el.handle();
    let (tx, rx) = channel();
    let gate = Arc::new(Gate::default());
    let (polled_tx, polled_rx) = channel();
    let wait = gate.clone().wait(polled_tx);
    drop(spawn(&h, async move {
        wait.await;
        tx.send("ran").unwrap();
    }));
    recv(&polled_rx);
    gate.open();
    assert_eq!(recv(&rx), "ran");
}

#[test]
fn abort_drops_a_pending_future_and_the_handle_says_canceled() {
    let el = running(64);
    let drops = Arc::new(AtomicUsize::new(0));
    let counter = DropCounter(drops.clone());
    let gate = Arc::new(Gate::default());
    let (polled_tx, polled_rx) = channel();
    let wait = gate.clone().wait(polled_tx);
    let j = spawn(&el, async move {
        let _c = counter;
        wait.await;
    });
    recv(&polled_rx);
    j.abort();
    j.abort();
    assert_eq!(j.join(), Err(JoinError::Canceled));
    assert_eq!(drops.load(Ordering::SeqCst), 1);
}

#[test]
fn a_refused_spawn_hands_the_future_back() {
    // Full.
    let el = running(1);
    let h = el.handle();
    let far = fill(&h);
    let e = h.spawn(async { 5 }).unwrap_err();
    assert!(matches!(e.kind, ScheduleErrorKind::Full { capacity: 1 }));
    assert!(h.cancel(&far[0]));
    // The slot frees once the loop has run the cancel: retry with the handed-back future.
    let start = std::time::Instant::now();
    let mut future = e.future;
    let again = loop {
        match h.spawn(future) {
            Ok(j) => break j,
            Err(e) => {
                assert!(
                    start.elapsed() < reseau_tests::util::GUARD,
                    "no slot freed (failure guard)"
                );
                future = e.future;
                std::thread::yield_now();
            }
        }
    };
    assert_eq!(again.join(), Ok(5));
    // Destroyed.
    drop(el);
    let e = h.spawn(async { 6 }).unwrap_err();
    assert!(matches!(e.kind, ScheduleErrorKind::Destroyed(_)));
    assert_eq!(block_on(e.future), 6);
}

#[test]
fn join_on_the_loop_thread_says_would_deadlock() {
    let el = running(64);
    let h = el.handle();
    let gate = Arc::new(Gate::default());
    let (polled_tx, polled_rx) = channel();
    let pending = spawn(&h, gate.clone().wait(polled_tx));
    recv(&polled_rx);
    let (tx, rx) = channel();
    h.schedule_now(move |_, _| tx.send(pending.join()).unwrap())
        .unwrap();
    assert_eq!(recv(&rx), Err(JoinError::WouldDeadlock));
}

#[test]
fn a_join_handle_is_a_future() {
    let el = running(64);
    let h = el.handle();
    let inner = spawn(&h, async { 20 });
    let outer = spawn(&h, async move { inner.await.unwrap() + 1 });
    assert_eq!(outer.join(), Ok(21));
}

/// A minimal block_on for tests: polls on this thread, parks between wakes.
fn block_on<F: Future>(f: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut f: Pin<Box<F>> = Box::pin(f);
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}

/// Waits (bounded by the failure guard) until destroy has begun on `h`'s loop: a schedule
/// is then refused as destroyed.
fn until_destroy_began(h: &LoopHandle) {
    let start = std::time::Instant::now();
    loop {
        match h.schedule_now(|_, _| {}) {
            Err(e) if matches!(e.kind, ScheduleErrorKind::Destroyed(_)) => return,
            _ => {
                assert!(
                    start.elapsed() < reseau_tests::util::GUARD,
                    "destroy never began (failure guard)"
                );
                std::thread::yield_now();
            }
        }
    }
}

#[test]
fn a_wake_while_destroy_runs_drops_the_future_on_the_waking_thread() {
    let el = running(64);
    let h = el.handle();
    let drops = Arc::new(AtomicUsize::new(0));
    let counter = DropCounter(drops.clone());
    let gate = Arc::new(Gate::default());
    let (polled_tx, polled_rx) = channel();
    let wait = gate.clone().wait(polled_tx);
    let j = spawn(&h, async move {
        let _c = counter;
        wait.await;
    });
    recv(&polled_rx);
    // The loop thread is held, so destroy (on another thread) waits for it: the future
    // is still alive when the wake comes.
    let hold = hold_loop(&h, |_| {});
    let destroyer = std::thread::spawn(move || {
        let mut el = el;
        el.destroy()
    });
    until_destroy_began(&h);
    gate.open();
    // The wake could not schedule: the future was dropped here, at once.
    assert_eq!(drops.load(Ordering::SeqCst), 1);
    assert!(j.is_finished());
    hold.release();
    destroyer.join().unwrap().unwrap();
    assert_eq!(j.join(), Err(JoinError::Canceled));
    assert_eq!(drops.load(Ordering::SeqCst), 1);
}

#[test]
fn a_future_on_the_overflow_list_is_dropped_by_destroy() {
    let el = running(2);
    let h = el.handle();
    let drops = Arc::new(AtomicUsize::new(0));
    let counter = DropCounter(drops.clone());
    let gate = Arc::new(Gate::default());
    let (polled_tx, polled_rx) = channel();
    let wait = gate.clone().wait(polled_tx);
    let j = spawn(&h, async move {
        let _c = counter;
        wait.await;
    });
    recv(&polled_rx);
    let hold = hold_loop(&h, |_| {});
    let _far = fill(&h);
    gate.open();
    assert_eq!(h.stats().futures_overflowed, 1);
    let destroyer = std::thread::spawn(move || {
        let mut el = el;
        el.destroy()
    });
    until_destroy_began(&h);
    hold.release();
    destroyer.join().unwrap().unwrap();
    // The held task returned into a stopping loop: no tick polled the overflow list;
    // destroy dropped the future, once.
    assert_eq!(drops.load(Ordering::SeqCst), 1);
    assert_eq!(j.join(), Err(JoinError::Canceled));
}

// ---- !Send futures: spawn_local ----

/// Counts its drops, and is `!Send` (an `Rc`).
struct LocalDrop(std::marker::PhantomData<std::rc::Rc<()>>, Arc<AtomicUsize>);

impl Drop for LocalDrop {
    fn drop(&mut self) {
        self.1.fetch_add(1, Ordering::SeqCst);
    }
}

/// Pending once (waking itself), then ready.
fn yield_now() -> impl Future<Output = ()> {
    let mut yielded = false;
    poll_fn(move |cx| {
        if yielded {
            Poll::Ready(())
        } else {
            yielded = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    })
}

#[test]
fn spawn_local_runs_a_non_send_future_on_the_driving_thread() {
    let el = EventLoop::new(EventLoopOptions::default()).unwrap();
    let me = std::thread::current().id();
    let (tx, rx) = channel();
    el.schedule_now(move |h, _| {
        let h2 = h.clone();
        let j = h.spawn_local(async move {
            let count = std::rc::Rc::new(std::cell::Cell::new(0));
            for _ in 0..3 {
                yield_now().await;
                assert_eq!(std::thread::current().id(), me);
                count.set(count.get() + 1);
            }
            h2.sleep(Duration::from_millis(1)).await;
            h2.stop().unwrap();
            count.get()
        });
        tx.send(j.map_err(|e| e.kind)).unwrap();
    })
    .unwrap();
    el.run_here().unwrap();
    assert_eq!(recv(&rx).unwrap().join(), Ok(3));
}

#[test]
fn spawn_local_off_the_driving_thread_is_refused_with_the_future_back() {
    let el = running(64);
    let e = el.spawn_local(async { 7 }).unwrap_err();
    assert_eq!(e.kind, reseau_linux::LocalSpawnErrorKind::NotOnLoopThread);
    assert_eq!(block_on(e.future), 7);
}

#[test]
fn a_local_future_is_dropped_by_its_thread_when_the_loop_thread_exits() {
    let el = running(64);
    let drops = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(Gate::default());
    let (polled_tx, polled_rx) = channel();
    let (tx, rx) = channel();
    let (d, g) = (drops.clone(), gate.clone());
    el.schedule_now(move |h, _| {
        let wait = g.wait(polled_tx);
        let j = h.spawn_local(async move {
            let _d = LocalDrop(std::marker::PhantomData, d);
            wait.await;
        });
        tx.send(j.map_err(|e| e.kind).unwrap()).unwrap();
    })
    .unwrap();
    let j = recv(&rx);
    recv(&polled_rx);
    el.stop().unwrap();
    el.wait_for_stop_completion().unwrap(); // joins the loop thread
    assert_eq!(drops.load(Ordering::SeqCst), 1);
    assert_eq!(j.join(), Err(JoinError::Canceled));
    // A wake after a restart lands on the new loop thread: the future is gone; no-op.
    el.run().unwrap();
    gate.open();
    assert_eq!(drops.load(Ordering::SeqCst), 1);
}

#[test]
fn a_local_future_is_dropped_at_once_when_its_own_thread_destroys_the_loop() {
    let mut el = EventLoop::new(EventLoopOptions::default()).unwrap();
    let drops = Arc::new(AtomicUsize::new(0));
    let (tx, rx) = channel();
    let d = drops.clone();
    el.schedule_now(move |h, _| {
        let j = h.spawn_local(async move {
            let _d = LocalDrop(std::marker::PhantomData, d);
            std::future::pending::<()>().await;
        });
        tx.send(j.map_err(|e| e.kind).unwrap()).unwrap();
    })
    .unwrap();
    let j = loop {
        if let Ok(j) = rx.try_recv() {
            break j;
        }
        el.turn(Some(Duration::from_millis(10))).unwrap();
    };
    // Let its first poll happen.
    el.turn(Some(Duration::ZERO)).unwrap();
    el.destroy().unwrap();
    assert_eq!(drops.load(Ordering::SeqCst), 1);
    assert_eq!(j.join(), Err(JoinError::Canceled));
}

#[test]
fn a_local_future_orphaned_by_a_destroy_elsewhere_resolves_canceled_and_its_thread_drops_it() {
    let el = Arc::new(Mutex::new(Some(
        EventLoop::new(EventLoopOptions::default()).unwrap(),
    )));
    let drops = Arc::new(AtomicUsize::new(0));
    let (j_tx, j_rx) = channel();
    let (exit_tx, exit_rx) = channel::<()>();
    let owner = {
        let (el, drops) = (el.clone(), drops.clone());
        std::thread::spawn(move || {
            let guard = el.lock().unwrap();
            let el = guard.as_ref().unwrap();
            let gate = Arc::new(Gate::default());
            let (polled_tx, polled_rx) = channel();
            let wait = gate.clone().wait(polled_tx);
            el.schedule_now(move |h, _| {
                let j = h.spawn_local(async move {
                    let _d = LocalDrop(std::marker::PhantomData, drops);
                    wait.await;
                });
                j_tx.send(j.map_err(|e| e.kind).unwrap()).unwrap();
            })
            .unwrap();
            while polled_rx.try_recv().is_err() {
                el.turn(Some(Duration::from_millis(10))).unwrap();
            }
            drop(guard);
            recv(&exit_rx);
            // The thread exits: its thread-local table drops the orphaned future here.
        })
    };
    let j = recv(&j_rx);
    let mut loop_ = loop {
        if let Some(l) = el.lock().unwrap().take() {
            break l;
        }
    };
    loop_.destroy().unwrap();
    // Resolved by destroy on this thread; the future itself is out of reach here.
    assert_eq!(j.join(), Err(JoinError::Canceled));
    assert_eq!(drops.load(Ordering::SeqCst), 0);
    exit_tx.send(()).unwrap();
    owner.join().unwrap();
    assert_eq!(drops.load(Ordering::SeqCst), 1);
}

// ---- AsyncFd: the readiness bits and the version check ----

/// Polls `f` once with a waker that does nothing.
fn poll_once<F: Future + Unpin>(f: &mut F) -> Poll<F::Output> {
    let waker = Waker::noop();
    Pin::new(f).poll(&mut Context::from_waker(waker))
}

/// One task round trip: when it returns, the loop has dispatched every event the kernel
/// had for it when the task was queued (IO dispatch comes before the tick's tasks).
fn round_trip(h: &LoopHandle) {
    let (tx, rx) = channel();
    h.schedule_now(move |_, _| tx.send(()).unwrap()).unwrap();
    recv(&rx);
}

#[test]
fn async_fd_would_block_clears_the_readiness_unless_an_edge_arrived_meanwhile() {
    let el = running(64);
    let h = el.handle();
    let (a, mut b) = UnixStream::pair().unwrap();
    a.set_nonblocking(true).unwrap();
    let a = h.async_fd(a, Interest::READABLE).unwrap();
    b.write_all(b"x").unwrap();
    round_trip(&h);
    let mut buf = [0u8; 8];
    // The edge is stored: readable at once, and the read drains it.
    assert!(poll_once(&mut a.readable()).is_ready());
    assert_eq!(
        a.try_io(Interest::READABLE, |mut s| s.read(&mut buf))
            .unwrap(),
        1
    );
    // An attempt that would block with no edge meanwhile clears the readiness.
    let e = a
        .try_io(Interest::READABLE, |mut s| s.read(&mut buf))
        .unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock);
    assert!(poll_once(&mut a.readable()).is_pending());
    // An edge delivered while an attempt runs (between its read and its WouldBlock) is
    // kept: readable resolves at once instead of waiting for an edge that already came.
    let e = a
        .try_io(Interest::READABLE, |mut s| {
            let r = s.read(&mut buf);
            b.write_all(b"y").unwrap();
            round_trip(&h);
            r
        })
        .unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock);
    assert!(poll_once(&mut a.readable()).is_ready());
    assert_eq!(
        a.try_io(Interest::READABLE, |mut s| s.read(&mut buf))
            .unwrap(),
        1
    );
}

#[test]
fn dropping_an_async_fd_unsubscribes_it() {
    let el = running(64);
    let h = el.handle();
    let (a, _b) = UnixStream::pair().unwrap();
    a.set_nonblocking(true).unwrap();
    let a = h
        .async_fd(a, Interest::READABLE | Interest::WRITABLE)
        .unwrap();
    assert_eq!(h.subscriptions(), 1);
    // Off the loop thread while it runs: the unsubscribe goes through a task.
    drop(a);
    round_trip(&h);
    assert_eq!(h.subscriptions(), 0);
}

#[test]
fn a_sleep_on_a_full_loop_retries_until_a_slot_frees_and_never_resolves_early() {
    let el = running(2);
    let h = el.handle();
    let h2 = h.clone();
    let j = spawn(&h, async move {
        // Fill the loop from its own thread (a running poll task holds no slot).
        let far = fill(&h2);
        let mut sleep = Box::pin(h2.sleep(Duration::from_millis(1)));
        let deadline = sleep.deadline();
        // Its timer cannot be scheduled: pending, never ready early. Its retry wake finds
        // the loop full too, so this future goes on the overflow list.
        poll_fn(|cx| {
            assert!(sleep.as_mut().poll(cx).is_pending());
            Poll::Ready(())
        })
        .await;
        let overflowed = h2.stats().futures_overflowed;
        for t in &far {
            assert!(h2.cancel(t)); // on the loop thread: the slot frees at once
        }
        sleep.await;
        (h2.now() >= deadline, overflowed)
    });
    assert_eq!(j.join(), Ok((true, 1)));
}
