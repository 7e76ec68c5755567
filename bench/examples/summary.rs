//! One table of reseau beside its peers, every scenario (README "Benchmarks"):
//!
//! ```text
//! cd bench && cargo run --release --example summary
//! ```
//!
//! Each scenario runs `RESEAU_BENCH_RUNS` times (default 3) per loop, the loops interleaved,
//! and the median is printed; `RESEAU_BENCH_SCALE` (default 1) multiplies every count
//! (`0.1` for a quick look). Every run asserts that every task, timer or round trip ran.
//!
//! - `xthread`: 1 producer thread → 1 loop, 1,000,000 tiny tasks (each bumps a counter),
//!   timed from the first schedule until the last has run, after a warm-up of 20,000. For
//!   reseau also: schedules refused as full (the producer retries the task it got back,
//!   default capacity 4096) and eventfd writes per 100 tasks (`LoopHandle::stats()`).
//! - `xthread4`: 4 producers × 250,000 → 1 loop (reseau: `schedule_now_serialized`).
//! - `pingpong`: one task bounced between two loops on two threads, 20,000 round trips; the
//!   floor is two threads blocked in `epoll_wait` on their own eventfd, each writing the
//!   other's.
//! - `timers`: 50,000 and 1,000,000 one-shot timers, deadlines spread at random over 200 ms,
//!   armed from the loop thread; the process CPU time (`CLOCK_PROCESS_CPUTIME_ID`) from the
//!   first arm until the last has fired, per timer. reseau `schedule_at` (capacity sized
//!   to fit), tokio a spawned task per timer awaiting `sleep_until`, and a std
//!   `BinaryHeap` loop (boxed callbacks, `thread::sleep` to the earliest deadline).
//! - `io`: a 1-byte ping-pong over a Unix socketpair, each end on its own loop and thread,
//!   200,000 round trips: reseau `subscribe` (edge-triggered), tokio `UnixStream`
//!   (`read_exact` / `write_all`), a hand-rolled mio loop; the floor is two threads in
//!   blocking `read` / `write`. `io1`: one loop owns both ends (floor: one thread doing
//!   both ends' blocking calls in turn).
//! - allocations per task (`xthread`, after warm-up) and per round trip, counted by this
//!   binary's `#[global_allocator]` in a run of their own (counting is off while timing).
//!
//! Peers use their ordinary cross-thread APIs: tokio current_thread `Handle::spawn` of an
//! `async` block, a `calloop::channel` of boxed jobs, a hand-rolled mio loop
//! (`Mutex<VecDeque<Box<dyn FnOnce>>>` + `Waker::wake` per push, as in `benches/peers.rs`);
//! the raw floor is the same queue with an eventfd write per push, read in `epoll_wait`.
//! "reseau / best peer" compares with the best of tokio, calloop and mio (not the floor).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use reseau_linux::{EventLoop, EventLoopOptions, Interest, IoControl, LoopHandle};

// ---------------------------------------------------------------------------------------
// Counting allocator: on only for the allocation runs.

struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCS: AtomicU64 = AtomicU64::new(0);

fn note_alloc() {
    if COUNTING.load(Ordering::Relaxed) {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged; the
// counter is an atomic, touched by no allocation of its own.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note_alloc();
        // SAFETY: forwarded as is; the caller upholds `GlobalAlloc::alloc`'s contract.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note_alloc();
        // SAFETY: as in `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator, hence from `System`, with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note_alloc();
        // SAFETY: as in `dealloc`, and `new_size` is the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Runs `f` with allocation counting on; returns its result and the allocations made (by
/// any thread) meanwhile.
fn counting<T>(f: impl FnOnce() -> T) -> (T, u64) {
    ALLOCS.store(0, Ordering::SeqCst);
    COUNTING.store(true, Ordering::SeqCst);
    let out = f();
    COUNTING.store(false, Ordering::SeqCst);
    (out, ALLOCS.load(Ordering::SeqCst))
}

// ---------------------------------------------------------------------------------------
// Completion: a leaked counter that wakes the waiting thread when it reaches its target.

struct Done {
    count: AtomicU64,
    target: u64,
    flag: Mutex<bool>,
    cv: Condvar,
}

impl Done {
    /// A fresh one, `'static` so that a task captures it as one plain reference (8 bytes,
    /// no reference count). Leaks a few bytes per run.
    fn new(target: u64) -> &'static Done {
        Box::leak(Box::new(Done {
            count: AtomicU64::new(0),
            target,
            flag: Mutex::new(false),
            cv: Condvar::new(),
        }))
    }

    fn hit(&self) {
        if self.count.fetch_add(1, Ordering::AcqRel) + 1 == self.target {
            *self.flag.lock().unwrap() = true;
            self.cv.notify_all();
        }
    }

    /// Waits until the target is reached (a minute at most), then checks that nothing
    /// more ran.
    fn wait(&self, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut flag = self.flag.lock().unwrap();
        while !*flag {
            let left = deadline
                .checked_duration_since(Instant::now())
                .unwrap_or_else(|| {
                    panic!(
                        "{what}: {} of {} ran",
                        self.count.load(Ordering::SeqCst),
                        self.target
                    )
                });
            flag = self.cv.wait_timeout(flag, left).unwrap().0;
        }
        assert_eq!(self.count.load(Ordering::SeqCst), self.target, "{what}");
    }
}

// ---------------------------------------------------------------------------------------
// The loops, behind one small interface: start one, get a cloneable spawner, stop it.

trait Spawner: Clone + Send + Sync + 'static {
    fn spawn<F: FnOnce() + Send + 'static>(&self, f: F);
    /// One global FIFO with the other producers' (reseau's `schedule_now_serialized`).
    fn spawn_serialized<F: FnOnce() + Send + 'static>(&self, f: F) {
        self.spawn(f)
    }
}

trait Loop {
    type S: Spawner;
    fn start() -> Self;
    fn spawner(&self) -> Self::S;
    /// Eventfd writes so far (reseau only).
    fn wakeups(&self) -> Option<u64> {
        None
    }
}

type Job = Box<dyn FnOnce() + Send>;

/// Schedules refused as full, summed over reseau's spawners (each retried as it came back).
static REFUSED: AtomicU64 = AtomicU64::new(0);

struct Reseau(EventLoop);

#[derive(Clone)]
struct ReseauS(LoopHandle);

impl ReseauS {
    fn retry(&self, mut attempt: Result<reseau_linux::TaskHandle, reseau_linux::ScheduleError>) {
        while let Err(e) = attempt {
            assert!(
                matches!(e.kind, reseau_linux::ScheduleErrorKind::Full { .. }),
                "{}",
                e.kind
            );
            REFUSED.fetch_add(1, Ordering::Relaxed);
            std::thread::yield_now();
            attempt = self.0.schedule_task(e.task, e.when);
        }
    }
}

impl Spawner for ReseauS {
    fn spawn<F: FnOnce() + Send + 'static>(&self, f: F) {
        self.retry(self.0.schedule_now(move |_, _| f()));
    }
    fn spawn_serialized<F: FnOnce() + Send + 'static>(&self, f: F) {
        self.retry(self.0.schedule_now_serialized(move |_, _| f()));
    }
}

impl Loop for Reseau {
    type S = ReseauS;
    fn start() -> Self {
        let el = EventLoop::new(EventLoopOptions::default()).unwrap();
        el.run().unwrap();
        Reseau(el)
    }
    fn spawner(&self) -> ReseauS {
        ReseauS(self.0.handle())
    }
    fn wakeups(&self) -> Option<u64> {
        Some(self.0.handle().stats().wakeups_written)
    }
}

struct Tokio {
    handle: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Spawner for tokio::runtime::Handle {
    fn spawn<F: FnOnce() + Send + 'static>(&self, f: F) {
        tokio::runtime::Handle::spawn(self, async move { f() });
    }
}

impl Loop for Tokio {
    type S = tokio::runtime::Handle;
    fn start() -> Self {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let handle = rt.handle().clone();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let _ = rt.block_on(rx);
        });
        Tokio {
            handle,
            stop: Some(tx),
            thread: Some(thread),
        }
    }
    fn spawner(&self) -> tokio::runtime::Handle {
        self.handle.clone()
    }
}

impl Drop for Tokio {
    fn drop(&mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.thread.take().unwrap().join().unwrap();
    }
}

/// calloop: a channel of boxed jobs; `None` stops the loop.
struct Calloop {
    tx: calloop::channel::Sender<Option<Job>>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Clone)]
struct CalloopS(calloop::channel::Sender<Option<Job>>);

impl Spawner for CalloopS {
    fn spawn<F: FnOnce() + Send + 'static>(&self, f: F) {
        self.0.send(Some(Box::new(f))).unwrap();
    }
}

impl Loop for Calloop {
    type S = CalloopS;
    fn start() -> Self {
        let (tx, rx) = calloop::channel::channel::<Option<Job>>();
        let thread = std::thread::spawn(move || {
            let mut event_loop: calloop::EventLoop<bool> = calloop::EventLoop::try_new().unwrap();
            event_loop
                .handle()
                .insert_source(rx, |event, _, done: &mut bool| match event {
                    calloop::channel::Event::Msg(Some(job)) => job(),
                    calloop::channel::Event::Msg(None) | calloop::channel::Event::Closed => {
                        *done = true
                    }
                })
                .unwrap();
            let mut done = false;
            while !done {
                event_loop.dispatch(None, &mut done).unwrap();
            }
        });
        Calloop {
            tx,
            thread: Some(thread),
        }
    }
    fn spawner(&self) -> CalloopS {
        CalloopS(self.tx.clone())
    }
}

impl Drop for Calloop {
    fn drop(&mut self) {
        self.tx.send(None).unwrap();
        self.thread.take().unwrap().join().unwrap();
    }
}

/// The queue both hand-rolled loops share, and how each wakes its thread.
struct Queue<W> {
    jobs: Mutex<VecDeque<Job>>,
    stop: AtomicBool,
    waker: W,
}

trait Wake: Send + Sync + 'static {
    fn wake(&self);
}

impl Wake for mio::Waker {
    fn wake(&self) {
        mio::Waker::wake(self).unwrap();
    }
}

/// The floor's wakeup: an eventfd write.
struct EventFd(OwnedFd);

impl Wake for EventFd {
    fn wake(&self) {
        rustix::io::write(&self.0, &1u64.to_ne_bytes()).unwrap();
    }
}

impl<W: Wake> Queue<W> {
    fn run_all(&self) {
        loop {
            let job = self.jobs.lock().unwrap().pop_front();
            match job {
                Some(job) => job(),
                None => return,
            }
        }
    }
}

struct QueueS<W>(Arc<Queue<W>>);

impl<W> Clone for QueueS<W> {
    fn clone(&self) -> Self {
        QueueS(self.0.clone())
    }
}

impl<W: Wake> Spawner for QueueS<W> {
    fn spawn<F: FnOnce() + Send + 'static>(&self, f: F) {
        self.0.jobs.lock().unwrap().push_back(Box::new(f));
        self.0.waker.wake();
    }
}

struct Hand<W: Wake> {
    queue: Arc<Queue<W>>,
    thread: Option<JoinHandle<()>>,
}

impl<W: Wake> Hand<W> {
    fn with(waker: W, mut wait: impl FnMut() + Send + 'static) -> Self {
        let queue = Arc::new(Queue {
            jobs: Mutex::new(VecDeque::new()),
            stop: AtomicBool::new(false),
            waker,
        });
        let q = queue.clone();
        let thread = std::thread::spawn(move || {
            while !q.stop.load(Ordering::Acquire) {
                wait();
                q.run_all();
            }
        });
        Hand {
            queue,
            thread: Some(thread),
        }
    }
}

impl<W: Wake> Drop for Hand<W> {
    fn drop(&mut self) {
        self.queue.stop.store(true, Ordering::Release);
        self.queue.waker.wake();
        self.thread.take().unwrap().join().unwrap();
    }
}

type Mio = Hand<mio::Waker>;

impl Loop for Mio {
    type S = QueueS<mio::Waker>;
    fn start() -> Self {
        let mut poll = mio::Poll::new().unwrap();
        let waker = mio::Waker::new(poll.registry(), mio::Token(0)).unwrap();
        let mut events = mio::Events::with_capacity(64);
        Hand::with(waker, move || poll.poll(&mut events, None).unwrap())
    }
    fn spawner(&self) -> Self::S {
        QueueS(self.queue.clone())
    }
}

type Floor = Hand<EventFd>;

/// An epoll set watching a fresh nonblocking eventfd, edge-triggered.
fn epoll_eventfd() -> (OwnedFd, OwnedFd) {
    use rustix::event::{EventfdFlags, epoll, eventfd};
    let ep = epoll::create(epoll::CreateFlags::CLOEXEC).unwrap();
    let efd = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK).unwrap();
    epoll::add(
        &ep,
        efd.as_fd(),
        epoll::EventData::new_u64(0),
        epoll::EventFlags::IN | epoll::EventFlags::ET,
    )
    .unwrap();
    (ep, efd)
}

/// Blocks in `epoll_wait` on `ep`, then drains the eventfd `efd`.
fn wait_eventfd(ep: &OwnedFd, efd: &OwnedFd) {
    let mut events = [std::mem::MaybeUninit::<rustix::event::epoll::Event>::uninit(); 8];
    let _ = rustix::event::epoll::wait(ep, &mut events[..], None);
    let mut buf = [0u8; 8];
    let _ = rustix::io::read(efd, &mut buf);
}

impl Loop for Floor {
    type S = QueueS<EventFd>;
    fn start() -> Self {
        let (ep, efd) = epoll_eventfd();
        let theirs = efd.try_clone().unwrap();
        Hand::with(EventFd(efd), move || wait_eventfd(&ep, &theirs))
    }
    fn spawner(&self) -> Self::S {
        QueueS(self.queue.clone())
    }
}

// ---------------------------------------------------------------------------------------
// Scenarios. Each returns its figure; the cross-thread ones also what reseau's stats say.

#[derive(Clone, Copy, Default)]
struct Xthread {
    tasks_per_s: f64,
    refused: u64,
    wakeups_per_100: Option<f64>,
}

const WARM_UP: u64 = 20_000;

/// `producers` threads schedule `n` tasks in all onto one loop; timed until the last ran.
fn xthread<L: Loop>(n: u64, producers: u64, serialized: bool) -> Xthread {
    let lp = L::start();
    let s = lp.spawner();
    let warm = Done::new(WARM_UP);
    for _ in 0..WARM_UP {
        s.spawn(move || warm.hit());
    }
    warm.wait("warm-up");
    let per = n / producers;
    let done = Done::new(per * producers);
    REFUSED.store(0, Ordering::SeqCst);
    let wakeups = lp.wakeups();
    let t0 = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..producers {
            let s = s.clone();
            scope.spawn(move || {
                for _ in 0..per {
                    if serialized {
                        s.spawn_serialized(move || done.hit());
                    } else {
                        s.spawn(move || done.hit());
                    }
                }
            });
        }
        done.wait("xthread");
    });
    let secs = t0.elapsed().as_secs_f64();
    let out = Xthread {
        tasks_per_s: (per * producers) as f64 / secs,
        refused: REFUSED.load(Ordering::SeqCst),
        wakeups_per_100: lp
            .wakeups()
            .zip(wakeups)
            .map(|(b, a)| (b - a) as f64 * 100.0 / (per * producers) as f64),
    };
    drop(s);
    drop(lp);
    out
}

/// One hop of the ping-pong: runs on `here`, sends the rest to `there`.
fn hop<S: Spawner>(here: S, there: S, left: u64, done: &'static Done) {
    if left == 0 {
        done.hit();
        return;
    }
    let next = there.clone();
    next.spawn(move || hop(there, here, left - 1, done));
}

/// A task bounced between two loops `round_trips` times; round trips per second.
fn pingpong<L: Loop>(round_trips: u64) -> f64 {
    let (a, b) = (L::start(), L::start());
    let (sa, sb) = (a.spawner(), b.spawner());
    let done = Done::new(1);
    let t0 = Instant::now();
    let first = sa.clone();
    first.spawn(move || hop(sa, sb, 2 * round_trips, done));
    done.wait("pingpong");
    let rate = round_trips as f64 / t0.elapsed().as_secs_f64();
    drop((a, b));
    rate
}

/// The floor: two threads blocked in `epoll_wait` on their own eventfd, each writing the
/// other's when woken.
fn pingpong_floor(round_trips: u64) -> f64 {
    let (ep_a, efd_a) = epoll_eventfd();
    let (ep_b, efd_b) = epoll_eventfd();
    let (to_a, to_b) = (efd_a.try_clone().unwrap(), efd_b.try_clone().unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let stop_b = stop.clone();
    let poke = |fd: &OwnedFd| rustix::io::write(fd, &1u64.to_ne_bytes()).unwrap();
    let b = std::thread::spawn(move || {
        loop {
            wait_eventfd(&ep_b, &efd_b);
            if stop_b.load(Ordering::Acquire) {
                return;
            }
            poke(&to_a);
        }
    });
    let t0 = Instant::now();
    let a = std::thread::spawn(move || {
        let mut trips = 0;
        poke(&to_b);
        while trips < round_trips {
            wait_eventfd(&ep_a, &efd_a);
            trips += 1;
            if trips < round_trips {
                poke(&to_b);
            }
        }
        stop.store(true, Ordering::Release);
        poke(&to_b);
        trips
    });
    let trips = a.join().unwrap();
    let rate = round_trips as f64 / t0.elapsed().as_secs_f64();
    b.join().unwrap();
    assert_eq!(trips, round_trips);
    rate
}

fn process_cpu_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// `n` offsets spread at random over 200 ms, after a 2 ms head start (xorshift: the same
/// spread for every loop).
fn offsets(n: u64) -> Vec<u64> {
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            2_000_000 + x % 200_000_000
        })
        .collect()
}

/// `epoll_wait`s in reseau's timer runs: (timers, waits).
static TIMER_WAITS: Mutex<Vec<(u64, f64)>> = Mutex::new(Vec::new());

/// reseau: `n` timers armed from the loop thread; CPU ns per timer.
fn timers_reseau(n: u64) -> f64 {
    let offsets = offsets(n);
    let mut el = EventLoop::new(EventLoopOptions {
        capacity: (n as usize + 1024).min(reseau_linux::MAX_CAPACITY),
        ..Default::default()
    })
    .unwrap();
    el.run().unwrap();
    let done = Done::new(n);
    let cpu0 = process_cpu_ns();
    el.schedule_now(move |h, _| {
        let base = h.now();
        for off in offsets {
            h.schedule_at(base + off, move |_, _| done.hit())
                .map_err(|e| e.kind)
                .unwrap();
        }
    })
    .map_err(|e| e.kind)
    .unwrap();
    done.wait("timers reseau");
    let cpu = process_cpu_ns() - cpu0;
    let stats = el.stats();
    TIMER_WAITS
        .lock()
        .unwrap()
        .push((n, stats.epoll_waits as f64));
    el.destroy().unwrap();
    cpu as f64 / n as f64
}

/// tokio: one spawned task per timer, awaiting `sleep_until`; armed from a task.
fn timers_tokio(n: u64) -> f64 {
    let offsets = offsets(n);
    let rt = Tokio::start();
    let done = Done::new(n);
    let cpu0 = process_cpu_ns();
    rt.handle.spawn(async move {
        let base = tokio::time::Instant::now();
        for off in offsets {
            tokio::spawn(async move {
                tokio::time::sleep_until(base + Duration::from_nanos(off)).await;
                done.hit();
            });
        }
    });
    done.wait("timers tokio");
    let cpu = process_cpu_ns() - cpu0;
    drop(rt);
    cpu as f64 / n as f64
}

/// A std loop: a `BinaryHeap` of (deadline, sequence, boxed callback), sleeping until the
/// earliest deadline.
fn timers_heap(n: u64) -> f64 {
    struct Entry {
        at: Instant,
        seq: u64,
        f: Job,
    }
    impl PartialEq for Entry {
        fn eq(&self, o: &Self) -> bool {
            (self.at, self.seq) == (o.at, o.seq)
        }
    }
    impl Eq for Entry {}
    impl PartialOrd for Entry {
        fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
            Some(self.cmp(o))
        }
    }
    impl Ord for Entry {
        fn cmp(&self, o: &Self) -> std::cmp::Ordering {
            (self.at, self.seq).cmp(&(o.at, o.seq))
        }
    }
    let offsets = offsets(n);
    let done = Done::new(n);
    let cpu0 = process_cpu_ns();
    let thread = std::thread::spawn(move || {
        let base = Instant::now();
        let mut heap = BinaryHeap::new();
        for (seq, off) in offsets.into_iter().enumerate() {
            let f: Job = Box::new(move || done.hit());
            heap.push(Reverse(Entry {
                at: base + Duration::from_nanos(off),
                seq: seq as u64,
                f,
            }));
        }
        while let Some(Reverse(top)) = heap.peek() {
            let now = Instant::now();
            if top.at <= now {
                let Reverse(e) = heap.pop().unwrap();
                (e.f)();
            } else {
                std::thread::sleep(top.at - now);
            }
        }
    });
    done.wait("timers heap");
    let cpu = process_cpu_ns() - cpu0;
    thread.join().unwrap();
    cpu as f64 / n as f64
}

fn socketpair() -> (UnixStream, UnixStream) {
    let (a, b) = UnixStream::pair().unwrap();
    a.set_nonblocking(true).unwrap();
    b.set_nonblocking(true).unwrap();
    (a, b)
}

/// Reads what `sock` has until `WouldBlock` (edge-triggered); the byte count. 0 at EOF.
fn drain(sock: &mut impl Read) -> Option<usize> {
    let mut buf = [0u8; 64];
    let mut got = 0;
    loop {
        match sock.read(&mut buf) {
            Ok(0) => return None,
            Ok(k) => got += k,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Some(got),
            Err(e) => panic!("read: {e}"),
        }
    }
}

/// reseau: end `a` on one loop counts round trips and sends the next byte, end `b` echoes;
/// both on one loop when `one_loop`.
fn io_reseau(round_trips: u64, one_loop: bool) -> f64 {
    let mut la = EventLoop::new(EventLoopOptions::default()).unwrap();
    la.run().unwrap();
    let mut lb = (!one_loop).then(|| {
        let el = EventLoop::new(EventLoopOptions::default()).unwrap();
        el.run().unwrap();
        el
    });
    let (mut a, b) = socketpair();
    let done = Done::new(1);
    let t0 = Instant::now();
    a.write_all(b"x").unwrap();
    let hb = lb.as_ref().map_or_else(|| la.handle(), EventLoop::handle);
    hb.subscribe(b, Interest::READABLE, |_, sock, _| {
        match drain(sock) {
            None => return IoControl::Unsubscribe,
            Some(k) => {
                for _ in 0..k {
                    sock.write_all(b"x").unwrap();
                }
            }
        }
        IoControl::Keep
    })
    .map_err(|e| e.kind)
    .unwrap();
    let mut trips = 0;
    la.handle()
        .subscribe(a, Interest::READABLE, move |_, sock, _| {
            let k = drain(sock).expect("b stays open");
            for _ in 0..k {
                trips += 1;
                if trips == round_trips {
                    done.hit();
                    return IoControl::Unsubscribe;
                }
                sock.write_all(b"x").unwrap();
            }
            IoControl::Keep
        })
        .map_err(|e| e.kind)
        .unwrap();
    done.wait("io reseau");
    let rate = round_trips as f64 / t0.elapsed().as_secs_f64();
    if let Some(lb) = lb.as_mut() {
        lb.destroy().unwrap();
    }
    la.destroy().unwrap();
    rate
}

/// tokio: a task per end (`read_exact` / `write_all` on a `UnixStream`), each on its own
/// current_thread runtime, or both on one.
fn io_tokio(round_trips: u64, one_loop: bool) -> f64 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ra = Tokio::start();
    let rb = (!one_loop).then(Tokio::start);
    let (a, b) = socketpair();
    let done = Done::new(1);
    let t0 = Instant::now();
    rb.as_ref().unwrap_or(&ra).handle.spawn(async move {
        let mut b = tokio::net::UnixStream::from_std(b).unwrap();
        let mut buf = [0u8; 1];
        while b.read_exact(&mut buf).await.is_ok() {
            b.write_all(&buf).await.unwrap();
        }
    });
    ra.handle.spawn(async move {
        let mut a = tokio::net::UnixStream::from_std(a).unwrap();
        let mut buf = [0u8; 1];
        for _ in 0..round_trips {
            a.write_all(b"x").await.unwrap();
            a.read_exact(&mut buf).await.unwrap();
        }
        done.hit();
    });
    done.wait("io tokio");
    let rate = round_trips as f64 / t0.elapsed().as_secs_f64();
    drop((ra, rb));
    rate
}

/// A hand-rolled mio loop serving the ends in `ends` (token = index): end 0 counts round
/// trips and sends the next byte, any other end echoes. Returns when end 0 is done (or,
/// without end 0, at EOF).
fn mio_serve(ends: Vec<(bool, UnixStream)>, round_trips: u64, done: &'static Done) {
    let mut poll = mio::Poll::new().unwrap();
    let mut socks: Vec<(bool, mio::net::UnixStream)> = ends
        .into_iter()
        .map(|(counts, s)| (counts, mio::net::UnixStream::from_std(s)))
        .collect();
    for (i, (_, s)) in socks.iter_mut().enumerate() {
        poll.registry()
            .register(s, mio::Token(i), mio::Interest::READABLE)
            .unwrap();
    }
    let mut events = mio::Events::with_capacity(64);
    let mut trips = 0;
    loop {
        poll.poll(&mut events, None).unwrap();
        for ev in &events {
            let (counts, sock) = &mut socks[ev.token().0];
            let Some(k) = drain(sock) else { return };
            for _ in 0..k {
                if *counts {
                    trips += 1;
                    if trips == round_trips {
                        done.hit();
                        return;
                    }
                }
                sock.write_all(b"x").unwrap();
            }
        }
    }
}

fn io_mio(round_trips: u64, one_loop: bool) -> f64 {
    let (mut a, b) = socketpair();
    let done = Done::new(1);
    let t0 = Instant::now();
    a.write_all(b"x").unwrap();
    if one_loop {
        let t =
            std::thread::spawn(move || mio_serve(vec![(true, a), (false, b)], round_trips, done));
        done.wait("io1 mio");
        t.join().unwrap();
    } else {
        let tb = std::thread::spawn(move || mio_serve(vec![(false, b)], round_trips, done));
        let ta = std::thread::spawn(move || mio_serve(vec![(true, a)], round_trips, done));
        done.wait("io mio");
        ta.join().unwrap(); // drops a: b sees EOF
        tb.join().unwrap();
    }
    round_trips as f64 / t0.elapsed().as_secs_f64()
}

/// The floor: blocking `read` / `write`, no readiness at all; two threads, or one doing
/// both ends in turn.
fn io_floor(round_trips: u64, one_thread: bool) -> f64 {
    let (mut a, mut b) = UnixStream::pair().unwrap();
    let mut buf = [0u8; 1];
    let t0 = Instant::now();
    if one_thread {
        for _ in 0..round_trips {
            a.write_all(b"x").unwrap();
            b.read_exact(&mut buf).unwrap();
            b.write_all(&buf).unwrap();
            a.read_exact(&mut buf).unwrap();
        }
    } else {
        let echo = std::thread::spawn(move || {
            let mut buf = [0u8; 1];
            while b.read_exact(&mut buf).is_ok() {
                b.write_all(&buf).unwrap();
            }
        });
        for _ in 0..round_trips {
            a.write_all(b"x").unwrap();
            a.read_exact(&mut buf).unwrap();
        }
        drop(a);
        echo.join().unwrap();
    }
    round_trips as f64 / t0.elapsed().as_secs_f64()
}

// ---------------------------------------------------------------------------------------
// The table.

/// One row: a figure per column (reseau, tokio, calloop, mio, floor), `None` for "—".
struct Row {
    scenario: String,
    unit: &'static str,
    higher_is_better: bool,
    cells: [Option<f64>; 5],
    digits: usize,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn fmt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "—".into(), |v| format!("{v:.digits$}"))
}

impl Row {
    fn print(&self) {
        let peers: Vec<f64> = self.cells[1..4].iter().flatten().copied().collect();
        let best = if self.higher_is_better {
            peers.iter().copied().reduce(f64::max)
        } else {
            peers.iter().copied().reduce(f64::min)
        };
        let ratio = match (self.cells[0], best) {
            (Some(r), Some(b)) if b > 0.0 && !self.unit.starts_with("allocs") => {
                format!("{:.2}", r / b)
            }
            _ => "—".into(),
        };
        let cells: Vec<String> = self.cells.iter().map(|c| fmt(*c, self.digits)).collect();
        println!(
            "| {} | {} {} | {} | {ratio} |",
            self.scenario,
            self.unit,
            if self.higher_is_better { "↑" } else { "↓" },
            cells.join(" | ")
        );
    }
}

fn env_f64(name: &str, default: f64) -> f64 {
    std::env::var(name)
        .ok()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name}={v}: not a number"))
        })
        .unwrap_or(default)
}

/// Runs `f` `runs` times per column, the columns interleaved; the median of each.
fn measure<const C: usize>(
    runs: usize,
    mut f: [&mut dyn FnMut() -> Option<f64>; C],
) -> [Option<f64>; C] {
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); C];
    for _ in 0..runs {
        for (i, g) in f.iter_mut().enumerate() {
            if let Some(v) = g() {
                samples[i].push(v);
            }
        }
    }
    let mut out = [None; C];
    for (o, s) in out.iter_mut().zip(samples) {
        if !s.is_empty() {
            *o = Some(median(s));
        }
    }
    out
}

/// `summary probe LOOP N`: one producer thread schedules `N` tiny tasks onto `LOOP`
/// (reseau, tokio, calloop, mio or floor), the main thread waits until all ran. For
/// callgrind, as `linux/examples/xthread_probe.rs` for reseau alone: the instructions per
/// task are (I(200k) − I(100k)) / 100k.
fn probe<L: Loop>(n: u64) {
    let lp = L::start();
    let s = lp.spawner();
    let done = Done::new(n);
    std::thread::spawn(move || {
        for _ in 0..n {
            s.spawn(move || done.hit());
        }
    })
    .join()
    .unwrap();
    done.wait("probe");
    drop(lp);
    println!("{n} tasks ran");
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("probe") {
        let n = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(100_000);
        match args.get(2).map(String::as_str) {
            Some("reseau") => probe::<Reseau>(n),
            Some("tokio") => probe::<Tokio>(n),
            Some("calloop") => probe::<Calloop>(n),
            Some("mio") => probe::<Mio>(n),
            Some("floor") => probe::<Floor>(n),
            other => panic!("probe {other:?}: reseau, tokio, calloop, mio or floor"),
        }
        return;
    }
    let scale = env_f64("RESEAU_BENCH_SCALE", 1.0);
    let runs = env_f64("RESEAU_BENCH_RUNS", 3.0) as usize;
    assert!(runs >= 1 && scale > 0.0);
    let n = |base: f64| ((base * scale) as u64).max(100);
    let started = Instant::now();
    let mut rows = Vec::new();
    let progress = |what: &str| eprintln!("[{:>5.1} s] {what}", started.elapsed().as_secs_f64());
    let only = std::env::var("RESEAU_BENCH_ONLY").ok();
    let want = |s: &str| only.as_ref().is_none_or(|o| o.split(',').any(|x| x == s));
    let tasks = n(1_000_000.0);
    let k = |v: f64| Some(v / 1e3);
    let m = |x: Xthread| Some(x.tasks_per_s / 1e6);
    let mut reseau_note = None;

    if want("xthread") {
        // xthread, 1 producer.
        progress("xthread");
        let mut reseau_runs = Vec::new();
        let cells = measure(
            runs,
            [
                &mut || {
                    let x = xthread::<Reseau>(tasks, 1, false);
                    reseau_runs.push(x);
                    m(x)
                },
                &mut || m(xthread::<Tokio>(tasks, 1, false)),
                &mut || m(xthread::<Calloop>(tasks, 1, false)),
                &mut || m(xthread::<Mio>(tasks, 1, false)),
                &mut || m(xthread::<Floor>(tasks, 1, false)),
            ],
        );
        rows.push(Row {
            scenario: format!("`xthread` 1 producer → 1 loop, {tasks} tasks"),
            unit: "M tasks/s",
            higher_is_better: true,
            cells,
            digits: 2,
        });
        let refused = median(reseau_runs.iter().map(|x| x.refused as f64).collect());
        let wakeups = median(
            reseau_runs
                .iter()
                .map(|x| x.wakeups_per_100.unwrap())
                .collect(),
        );
        reseau_note = Some((refused, wakeups));
    }

    if want("xthread4") {
        // xthread4.
        progress("xthread4");
        let cells = measure(
            runs,
            [
                &mut || m(xthread::<Reseau>(tasks, 4, true)),
                &mut || m(xthread::<Tokio>(tasks, 4, true)),
                &mut || m(xthread::<Calloop>(tasks, 4, true)),
                &mut || m(xthread::<Mio>(tasks, 4, true)),
                &mut || m(xthread::<Floor>(tasks, 4, true)),
            ],
        );
        rows.push(Row {
            scenario: format!("`xthread4` 4 producers → 1 loop, {tasks} tasks (reseau serialized)"),
            unit: "M tasks/s",
            higher_is_better: true,
            cells,
            digits: 2,
        });
    }

    if want("pingpong") {
        // pingpong.
        progress("pingpong");
        let trips = n(20_000.0);
        let cells = measure(
            runs,
            [
                &mut || k(pingpong::<Reseau>(trips)),
                &mut || k(pingpong::<Tokio>(trips)),
                &mut || k(pingpong::<Calloop>(trips)),
                &mut || k(pingpong::<Mio>(trips)),
                &mut || k(pingpong_floor(trips)),
            ],
        );
        rows.push(Row {
            scenario: format!("`pingpong` a task between 2 loops, {trips} round trips"),
            unit: "k round trips/s",
            higher_is_better: true,
            cells,
            digits: 1,
        });
    }

    if want("timers") {
        // timers.
        for base in [50_000.0, 1_000_000.0] {
            let timers = n(base);
            progress(&format!("timers {timers}"));
            let cells = measure(
                runs,
                [
                    &mut || Some(timers_reseau(timers)),
                    &mut || Some(timers_tokio(timers)),
                    &mut || None,
                    &mut || None,
                    &mut || Some(timers_heap(timers)),
                ],
            );
            rows.push(Row {
                scenario: format!(
                    "`timers` {timers} over 200 ms (floor column: std `BinaryHeap` loop)"
                ),
                unit: "CPU ns/timer",
                higher_is_better: false,
                cells,
                digits: 0,
            });
        }
    }

    if want("io") {
        // io, io1.
        let io_trips = n(200_000.0);
        for one in [false, true] {
            progress(if one { "io1" } else { "io" });
            let cells = measure(
                runs,
                [
                    &mut || k(io_reseau(io_trips, one)),
                    &mut || k(io_tokio(io_trips, one)),
                    &mut || None,
                    &mut || k(io_mio(io_trips, one)),
                    &mut || k(io_floor(io_trips, one)),
                ],
            );
            rows.push(Row {
                scenario: if one {
                    format!(
                        "`io1` 1-byte ping-pong, one loop owns both ends, {io_trips} round trips"
                    )
                } else {
                    format!(
                        "`io` 1-byte ping-pong over a socketpair, 2 loops, {io_trips} round trips"
                    )
                },
                unit: "k round trips/s",
                higher_is_better: true,
                cells,
                digits: 1,
            });
        }
    }

    if want("allocations") {
        // Allocations, counted in runs of their own.
        progress("allocations");
        let alloc_tasks = n(100_000.0);
        // Counted after the warm-up, until the last task ran.
        fn xt_allocs<L: Loop>(tasks: u64) -> Option<f64> {
            let lp = L::start();
            let s = lp.spawner();
            let warm = Done::new(WARM_UP);
            for _ in 0..WARM_UP {
                s.spawn(move || warm.hit());
            }
            warm.wait("warm-up");
            let done = Done::new(tasks);
            let ((), allocs) = counting(|| {
                for _ in 0..tasks {
                    s.spawn(move || done.hit());
                }
                done.wait("xthread allocations");
            });
            drop(s);
            drop(lp);
            Some(allocs as f64 / tasks as f64)
        }
        let cells = [
            xt_allocs::<Reseau>(alloc_tasks),
            xt_allocs::<Tokio>(alloc_tasks),
            xt_allocs::<Calloop>(alloc_tasks),
            xt_allocs::<Mio>(alloc_tasks),
            xt_allocs::<Floor>(alloc_tasks),
        ];
        rows.push(Row {
            scenario: format!("heap allocations per task (`xthread`, {alloc_tasks} after warm-up)"),
            unit: "allocs/task",
            higher_is_better: false,
            cells,
            digits: 2,
        });
        // Pingpong: the marginal count, (A(2p) - A(p)) / p, so that starting the two loops
        // is left out.
        let pp = n(5_000.0);
        fn marginal(pp: u64, f: fn(u64) -> f64) -> Option<f64> {
            let (_, one) = counting(|| f(pp));
            let (_, two) = counting(|| f(2 * pp));
            Some((two as f64 - one as f64) / pp as f64)
        }
        let cells = [
            marginal(pp, pingpong::<Reseau>),
            marginal(pp, pingpong::<Tokio>),
            marginal(pp, pingpong::<Calloop>),
            marginal(pp, pingpong::<Mio>),
            marginal(pp, pingpong_floor),
        ];
        rows.push(Row {
            scenario: format!("heap allocations per round trip (`pingpong`, marginal over {pp})"),
            unit: "allocs/round trip",
            higher_is_better: false,
            cells,
            digits: 2,
        });
        // io (two loops), the same way.
        let io_pp = n(20_000.0);
        let cells = [
            marginal(io_pp, |t| io_reseau(t, false)),
            marginal(io_pp, |t| io_tokio(t, false)),
            None,
            marginal(io_pp, |t| io_mio(t, false)),
            marginal(io_pp, |t| io_floor(t, false)),
        ];
        rows.push(Row {
            scenario: format!("heap allocations per round trip (`io`, marginal over {io_pp})"),
            unit: "allocs/round trip",
            higher_is_better: false,
            cells,
            digits: 2,
        });
    }

    progress("done");
    println!();
    println!(
        "| scenario | unit | reseau | tokio current_thread | calloop | mio hand-rolled | floor | reseau / best peer |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    for row in &rows {
        row.print();
    }
    println!();
    if let Some((refused, wakeups)) = reseau_note {
        println!(
            "reseau `xthread` (median of {runs}): {refused:.0} schedules refused as full \
             (capacity 4096, each retried), {wakeups:.2} eventfd writes per 100 tasks; \
             the peers wake per push (mio, floor) or as tokio / calloop decide."
        );
    }
    let waits = TIMER_WAITS.lock().unwrap().clone();
    let mut sizes: Vec<u64> = waits.iter().map(|w| w.0).collect();
    sizes.dedup();
    for size in sizes {
        let per = median(waits.iter().filter(|w| w.0 == size).map(|w| w.1).collect());
        println!("reseau `timers` {size}: {per:.0} epoll_waits in all.");
    }
    println!(
        "RESEAU_BENCH_SCALE={scale}, RESEAU_BENCH_RUNS={runs}, {:.0} s in all.",
        started.elapsed().as_secs_f64()
    );
}
