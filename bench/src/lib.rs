//! The scenarios of `examples/summary.rs` (README "Benchmarks"), shared with the criterion
//! bench `benches/scenarios.rs`: reseau and its peers behind one small interface ([`Loop`],
//! [`Spawner`]), and one function per scenario that asserts every task, timer or round trip
//! ran and returns the time the measured part took (wall time; CPU time for the timers).
//!
//! The peers use their ordinary cross-thread APIs: tokio current_thread `Handle::spawn` of
//! an `async` block, a `calloop::channel` of boxed jobs, a hand-rolled mio loop
//! (`Mutex<VecDeque<Box<dyn FnOnce>>>` + `Waker::wake` per push, as in `benches/peers.rs`);
//! the floor ([`Floor`]) is the same queue with an eventfd write per push, read in
//! `epoll_wait`.

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
// Completion: a leaked counter that wakes the waiting thread when it reaches its target.

pub struct Done {
    count: AtomicU64,
    target: u64,
    flag: Mutex<bool>,
    cv: Condvar,
}

impl Done {
    /// A fresh one, `'static` so that a task captures it as one plain reference (8 bytes,
    /// no reference count). Leaks a few bytes per run.
    pub fn new(target: u64) -> &'static Done {
        Box::leak(Box::new(Done {
            count: AtomicU64::new(0),
            target,
            flag: Mutex::new(false),
            cv: Condvar::new(),
        }))
    }

    pub fn hit(&self) {
        if self.count.fetch_add(1, Ordering::AcqRel) + 1 == self.target {
            *self.flag.lock().unwrap() = true;
            self.cv.notify_all();
        }
    }

    /// Waits until the target is reached (a minute at most), then checks that nothing
    /// more ran.
    pub fn wait(&self, what: &str) {
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

pub trait Spawner: Clone + Send + Sync + 'static {
    fn spawn<F: FnOnce() + Send + 'static>(&self, f: F);
    /// One global FIFO with the other producers' (reseau's `schedule_now_serialized`).
    fn spawn_serialized<F: FnOnce() + Send + 'static>(&self, f: F) {
        self.spawn(f)
    }
}

pub trait Loop {
    type S: Spawner;
    fn start() -> Self;
    fn spawner(&self) -> Self::S;
    /// Eventfd writes so far (reseau only).
    fn wakeups(&self) -> Option<u64> {
        None
    }
}

pub type Job = Box<dyn FnOnce() + Send>;

/// Schedules refused as full, summed over reseau's spawners (each retried as it came back).
pub static REFUSED: AtomicU64 = AtomicU64::new(0);

pub struct Reseau(EventLoop);

#[derive(Clone)]
pub struct ReseauS(LoopHandle);

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

/// reseau with `spin_before_park` (opt-in, off by default): 50 µs.
pub struct ReseauSpin(EventLoop);

impl Loop for ReseauSpin {
    type S = ReseauS;
    fn start() -> Self {
        let el = EventLoop::new(EventLoopOptions {
            spin_before_park: Some(std::time::Duration::from_micros(50)),
            ..Default::default()
        })
        .unwrap();
        el.run().unwrap();
        ReseauSpin(el)
    }
    fn spawner(&self) -> ReseauS {
        ReseauS(self.0.handle())
    }
    fn wakeups(&self) -> Option<u64> {
        Some(self.0.handle().stats().wakeups_written)
    }
}

pub struct Tokio {
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
pub struct Calloop {
    tx: calloop::channel::Sender<Option<Job>>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Clone)]
pub struct CalloopS(calloop::channel::Sender<Option<Job>>);

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
pub struct Queue<W> {
    jobs: Mutex<VecDeque<Job>>,
    stop: AtomicBool,
    waker: W,
}

pub trait Wake: Send + Sync + 'static {
    fn wake(&self);
}

impl Wake for mio::Waker {
    fn wake(&self) {
        mio::Waker::wake(self).unwrap();
    }
}

/// The floor's wakeup: an eventfd write.
pub struct EventFd(OwnedFd);

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

pub struct QueueS<W>(Arc<Queue<W>>);

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

pub struct Hand<W: Wake> {
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

pub type Mio = Hand<mio::Waker>;

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

pub type Floor = Hand<EventFd>;

/// An epoll set watching a fresh nonblocking eventfd, edge-triggered.
pub fn epoll_eventfd() -> (OwnedFd, OwnedFd) {
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
pub fn wait_eventfd(ep: &OwnedFd, efd: &OwnedFd) {
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
pub struct Xthread {
    /// From the first schedule until the last task ran.
    pub elapsed: Duration,
    /// Schedules refused as full (reseau; each retried).
    pub refused: u64,
    /// Eventfd writes per 100 tasks (reseau).
    pub wakeups_per_100: Option<f64>,
}

pub const WARM_UP: u64 = 20_000;

/// `producers` threads schedule `n` tasks in all onto one loop; timed until the last ran.
pub fn xthread<L: Loop>(n: u64, producers: u64, serialized: bool) -> Xthread {
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
    let elapsed = t0.elapsed();
    let out = Xthread {
        elapsed,
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
pub fn hop<S: Spawner>(here: S, there: S, left: u64, done: &'static Done) {
    if left == 0 {
        done.hit();
        return;
    }
    let next = there.clone();
    next.spawn(move || hop(there, here, left - 1, done));
}

/// A task bounced between two loops `round_trips` times; round trips per second.
pub fn pingpong<L: Loop>(round_trips: u64) -> Duration {
    let (a, b) = (L::start(), L::start());
    let (sa, sb) = (a.spawner(), b.spawner());
    let done = Done::new(1);
    let t0 = Instant::now();
    let first = sa.clone();
    first.spawn(move || hop(sa, sb, 2 * round_trips, done));
    done.wait("pingpong");
    let took = t0.elapsed();
    drop((a, b));
    took
}

/// The floor: two threads blocked in `epoll_wait` on their own eventfd, each writing the
/// other's when woken.
pub fn pingpong_floor(round_trips: u64) -> Duration {
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
    let took = t0.elapsed();
    b.join().unwrap();
    assert_eq!(trips, round_trips);
    took
}

pub fn process_cpu_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// `n` offsets spread at random over 200 ms, after a 2 ms head start (xorshift: the same
/// spread for every loop).
pub fn offsets(n: u64) -> Vec<u64> {
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
pub static TIMER_WAITS: Mutex<Vec<(u64, f64)>> = Mutex::new(Vec::new());

/// reseau: `n` timers armed from the loop thread; CPU ns per timer.
pub fn timers_reseau(n: u64) -> Duration {
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
    Duration::from_nanos(cpu)
}

/// tokio: one spawned task per timer, awaiting `sleep_until`; armed from a task.
pub fn timers_tokio(n: u64) -> Duration {
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
    Duration::from_nanos(cpu)
}

/// A std loop: a `BinaryHeap` of (deadline, sequence, boxed callback), sleeping until the
/// earliest deadline.
pub fn timers_heap(n: u64) -> Duration {
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
    Duration::from_nanos(cpu)
}

pub fn socketpair() -> (UnixStream, UnixStream) {
    let (a, b) = UnixStream::pair().unwrap();
    a.set_nonblocking(true).unwrap();
    b.set_nonblocking(true).unwrap();
    (a, b)
}

/// Reads what `sock` has until `WouldBlock` (edge-triggered); the byte count. 0 at EOF.
pub fn drain(sock: &mut impl Read) -> Option<usize> {
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
pub fn io_reseau(round_trips: u64, one_loop: bool) -> Duration {
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
    let took = t0.elapsed();
    if let Some(lb) = lb.as_mut() {
        lb.destroy().unwrap();
    }
    la.destroy().unwrap();
    took
}

/// tokio: a task per end (`read_exact` / `write_all` on a `UnixStream`), each on its own
/// current_thread runtime, or both on one.
pub fn io_tokio(round_trips: u64, one_loop: bool) -> Duration {
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
    let took = t0.elapsed();
    drop((ra, rb));
    took
}

/// A hand-rolled mio loop serving the ends in `ends` (token = index): end 0 counts round
/// trips and sends the next byte, any other end echoes. Returns when end 0 is done (or,
/// without end 0, at EOF).
pub fn mio_serve(ends: Vec<(bool, UnixStream)>, round_trips: u64, done: &'static Done) {
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

pub fn io_mio(round_trips: u64, one_loop: bool) -> Duration {
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
    t0.elapsed()
}

/// The floor: blocking `read` / `write`, no readiness at all; two threads, or one doing
/// both ends in turn.
pub fn io_floor(round_trips: u64, one_thread: bool) -> Duration {
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
    t0.elapsed()
}
