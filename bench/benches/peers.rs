//! reseau beside the loops a user would pick instead, on the scheduling paths.
//!
//! Every peer runs one loop thread and accepts boxed jobs (`Box<dyn FnOnce() + Send>`) from
//! other threads, so all pay the same allocation; what differs is the queue and the wakeup:
//! - `reseau`: `LoopHandle::schedule_now` (bounded MPSC inbox, coalesced eventfd wakeups);
//! - `tokio_current_thread`: `Handle::spawn` on a current-thread runtime with the IO driver;
//! - `calloop`: a `calloop::channel` source;
//! - `mio_hand_rolled`: a `Mutex<VecDeque>` plus `mio::Waker::wake` on every push;
//! - `raw_epoll_eventfd`: the floor — `Mutex<VecDeque>` plus an eventfd write on every push,
//!   read by a thread blocked in `epoll_wait`.
//!
//! Benchmarks: `round_trip` (one job to the loop and a reply back: wakeup latency),
//! `burst_10k` (10,000 jobs from one thread, timed until the last has run: throughput) and
//! `burst_4x2500` (the same 10,000 jobs from four threads at once).
//! Run with `cd bench && cargo bench --bench peers`.

use std::collections::VecDeque;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};

type Job = Box<dyn FnOnce() + Send>;

/// One loop thread that runs submitted jobs.
trait Peer: Sync {
    fn name(&self) -> &'static str;
    fn submit(&self, job: Job);
}

struct Reseau(reseau_linux::EventLoop);

impl Peer for Reseau {
    fn name(&self) -> &'static str {
        "reseau"
    }
    fn submit(&self, job: Job) {
        let mut attempt = self.0.schedule_now(move |_, _| job());
        // A full loop hands the task back; give the same task back until it fits.
        while let Err(e) = attempt {
            std::thread::yield_now();
            attempt = self.0.schedule_task(e.task, e.when);
        }
    }
}

struct Tokio {
    handle: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Tokio {
    fn new() -> Self {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .unwrap();
        let handle = rt.handle().clone();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let _ = rt.block_on(rx);
        });
        Self {
            handle,
            stop: Some(tx),
            thread: Some(thread),
        }
    }
}

impl Peer for Tokio {
    fn name(&self) -> &'static str {
        "tokio_current_thread"
    }
    fn submit(&self, job: Job) {
        self.handle.spawn(async move { job() });
    }
}

impl Drop for Tokio {
    fn drop(&mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.thread.take().unwrap().join().unwrap();
    }
}

struct Calloop {
    tx: Option<calloop::channel::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
}

impl Calloop {
    fn new() -> Self {
        let (tx, rx) = calloop::channel::channel::<Job>();
        let thread = std::thread::spawn(move || {
            let mut event_loop: calloop::EventLoop<bool> = calloop::EventLoop::try_new().unwrap();
            event_loop
                .handle()
                .insert_source(rx, |event, _, done: &mut bool| match event {
                    calloop::channel::Event::Msg(job) => job(),
                    calloop::channel::Event::Closed => *done = true,
                })
                .unwrap();
            let mut done = false;
            while !done {
                event_loop.dispatch(None, &mut done).unwrap();
            }
        });
        Self {
            tx: Some(tx),
            thread: Some(thread),
        }
    }
}

impl Peer for Calloop {
    fn name(&self) -> &'static str {
        "calloop"
    }
    fn submit(&self, job: Job) {
        self.tx.as_ref().unwrap().send(job).unwrap();
    }
}

impl Drop for Calloop {
    fn drop(&mut self) {
        drop(self.tx.take());
        self.thread.take().unwrap().join().unwrap();
    }
}

/// The queue both hand-rolled peers share.
#[derive(Default)]
struct Queue {
    jobs: Mutex<VecDeque<Job>>,
    stop: AtomicBool,
}

impl Queue {
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

struct Mio {
    queue: Arc<Queue>,
    waker: Arc<mio::Waker>,
    thread: Option<JoinHandle<()>>,
}

impl Mio {
    fn new() -> Self {
        let mut poll = mio::Poll::new().unwrap();
        let waker = Arc::new(mio::Waker::new(poll.registry(), mio::Token(0)).unwrap());
        let queue = Arc::new(Queue::default());
        let q = queue.clone();
        let thread = std::thread::spawn(move || {
            let mut events = mio::Events::with_capacity(64);
            while !q.stop.load(Ordering::Acquire) {
                poll.poll(&mut events, None).unwrap();
                q.run_all();
            }
        });
        Self {
            queue,
            waker,
            thread: Some(thread),
        }
    }
}

impl Peer for Mio {
    fn name(&self) -> &'static str {
        "mio_hand_rolled"
    }
    fn submit(&self, job: Job) {
        self.queue.jobs.lock().unwrap().push_back(job);
        self.waker.wake().unwrap();
    }
}

impl Drop for Mio {
    fn drop(&mut self) {
        self.queue.stop.store(true, Ordering::Release);
        self.waker.wake().unwrap();
        self.thread.take().unwrap().join().unwrap();
    }
}

struct RawEpoll {
    queue: Arc<Queue>,
    eventfd: Arc<std::os::fd::OwnedFd>,
    thread: Option<JoinHandle<()>>,
}

impl RawEpoll {
    fn new() -> Self {
        use rustix::event::{EventfdFlags, epoll, eventfd};
        let ep = epoll::create(epoll::CreateFlags::CLOEXEC).unwrap();
        let efd = Arc::new(eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK).unwrap());
        epoll::add(
            &ep,
            efd.as_fd(),
            epoll::EventData::new_u64(0),
            epoll::EventFlags::IN | epoll::EventFlags::ET,
        )
        .unwrap();
        let queue = Arc::new(Queue::default());
        let (q, e) = (queue.clone(), efd.clone());
        let thread = std::thread::spawn(move || {
            let mut events = Vec::with_capacity(8);
            let mut buf = [0u8; 8];
            while !q.stop.load(Ordering::Acquire) {
                events.clear();
                let _ = epoll::wait(&ep, rustix::buffer::spare_capacity(&mut events), None);
                let _ = rustix::io::read(e.as_fd(), &mut buf);
                q.run_all();
            }
        });
        Self {
            queue,
            eventfd: efd,
            thread: Some(thread),
        }
    }

    fn wake(&self) {
        let _ = rustix::io::write(self.eventfd.as_fd(), &1u64.to_ne_bytes());
    }
}

impl Peer for RawEpoll {
    fn name(&self) -> &'static str {
        "raw_epoll_eventfd"
    }
    fn submit(&self, job: Job) {
        self.queue.jobs.lock().unwrap().push_back(job);
        self.wake();
    }
}

impl Drop for RawEpoll {
    fn drop(&mut self) {
        self.queue.stop.store(true, Ordering::Release);
        self.wake();
        self.thread.take().unwrap().join().unwrap();
    }
}

fn peers() -> Vec<Box<dyn Peer>> {
    let el = reseau_linux::EventLoop::new(reseau_linux::EventLoopOptions {
        capacity: 16384,
        ..Default::default()
    })
    .unwrap();
    el.run().unwrap();
    vec![
        Box::new(Reseau(el)),
        Box::new(Tokio::new()),
        Box::new(Calloop::new()),
        Box::new(Mio::new()),
        Box::new(RawEpoll::new()),
    ]
}

fn wait(rx: &Receiver<()>) {
    rx.recv_timeout(std::time::Duration::from_secs(30))
        .expect("the loop never ran the job");
}

fn round_trip(c: &mut Criterion) {
    let mut group = c.benchmark_group("round_trip");
    for peer in peers() {
        let (tx, rx) = channel();
        group.bench_function(peer.name(), |b| {
            b.iter(|| {
                let tx = tx.clone();
                peer.submit(Box::new(move || tx.send(()).unwrap()));
                wait(&rx);
            })
        });
    }
    group.finish();
}

fn burst_10k(c: &mut Criterion) {
    const JOBS: usize = 10_000;
    let mut group = c.benchmark_group("burst_10k");
    group.throughput(Throughput::Elements(JOBS as u64));
    group.sample_size(20);
    for peer in peers() {
        let (tx, rx) = channel();
        let done = Arc::new(AtomicUsize::new(0));
        group.bench_function(peer.name(), |b| {
            b.iter(|| {
                done.store(0, Ordering::Relaxed);
                for _ in 0..JOBS {
                    let (done, tx) = (done.clone(), tx.clone());
                    peer.submit(Box::new(move || {
                        if done.fetch_add(1, Ordering::Relaxed) + 1 == JOBS {
                            tx.send(()).unwrap();
                        }
                    }));
                }
                wait(&rx);
            })
        });
    }
    group.finish();
}

/// 4 producer threads × 2,500 jobs into one loop, timed until the last has run.
fn burst_4x2500(c: &mut Criterion) {
    const PRODUCERS: usize = 4;
    const JOBS: usize = 10_000;
    let mut group = c.benchmark_group("burst_4x2500");
    group.throughput(Throughput::Elements(JOBS as u64));
    group.sample_size(20);
    for peer in peers() {
        let (tx, rx) = channel();
        let done = Arc::new(AtomicUsize::new(0));
        group.bench_function(peer.name(), |b| {
            b.iter(|| {
                done.store(0, Ordering::Relaxed);
                std::thread::scope(|s| {
                    for _ in 0..PRODUCERS {
                        let (peer, done, tx) = (&peer, done.clone(), tx.clone());
                        s.spawn(move || {
                            for _ in 0..JOBS / PRODUCERS {
                                let (done, tx) = (done.clone(), tx.clone());
                                peer.submit(Box::new(move || {
                                    if done.fetch_add(1, Ordering::Relaxed) + 1 == JOBS {
                                        tx.send(()).unwrap();
                                    }
                                }));
                            }
                        });
                    }
                });
                wait(&rx);
            })
        });
    }
    group.finish();
}

criterion_group!(benches, round_trip, burst_10k, burst_4x2500);
criterion_main!(benches);
