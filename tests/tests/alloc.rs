//! Contract 33 (zero heap allocations per small task after warm-up) and the capacity the
//! engine makes possible (one million live timers in one loop), measured with a counting
//! global allocator — the reason these tests have a binary of their own.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::channel;
use std::time::Instant;

use reseau_linux::{Clock, EventLoop, EventLoopOptions, INLINE_BYTES, LoopHandle, TaskStatus};
use reseau_tests::util::{GUARD, recv};

/// Counts every allocation (any thread) and passes it on to the system allocator.
struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every method forwards to `System` with the caller's arguments unchanged; the
// counter is a relaxed atomic, touched by no allocation of its own.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded as is; the caller upholds `GlobalAlloc::alloc`'s contract.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: as in `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator, hence from `System`, with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: as in `dealloc`, and `new_size` is the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Waits until `count` reaches `n`, bounded by the failure guard. Spinning on the very atomic
/// the tasks increment is the synchronisation; a channel would allocate inside the window
/// being measured.
fn wait_for(count: &AtomicUsize, n: usize) {
    let deadline = Instant::now() + GUARD;
    while count.load(Ordering::SeqCst) < n {
        assert!(Instant::now() < deadline, "timed out waiting for {n} tasks");
        std::thread::yield_now();
    }
}

/// Schedules `n` counting tasks from the calling thread, retrying refused ones as they are
/// (a full loop hands the task back; retrying allocates nothing).
fn schedule_counting(h: &LoopHandle, count: &Arc<AtomicUsize>, n: usize) {
    for _ in 0..n {
        let count = count.clone();
        let mut attempt = h.schedule_now(move |_, status| {
            assert_eq!(status, TaskStatus::RunReady);
            count.fetch_add(1, Ordering::SeqCst);
        });
        while let Err(e) = attempt {
            std::thread::yield_now();
            attempt = h.schedule_task(e.task, e.when);
        }
    }
}

#[test]
fn c33_zero_allocations_per_small_task_after_warm_up() {
    const N: usize = 100_000;
    let mut el = EventLoop::new(EventLoopOptions::default()).unwrap();
    el.run().unwrap();
    let h = el.handle();
    let count = Arc::new(AtomicUsize::new(0));
    // Warm-up: the loop thread's first ticks, thread-locals, the event buffer.
    schedule_counting(&h, &count, 10_000);
    wait_for(&count, 10_000);

    // From another thread: the cross-thread path (free ring, inbox, wake protocol).
    let before = ALLOCATIONS.load(Ordering::SeqCst);
    schedule_counting(&h, &count, N);
    wait_for(&count, 10_000 + N);
    let cross_thread = ALLOCATIONS.load(Ordering::SeqCst) - before;

    // From the loop thread: a task that schedules the next one, N times (the direct path).
    let done = Arc::new(AtomicUsize::new(0));
    let first = done.clone();
    let before = ALLOCATIONS.load(Ordering::SeqCst);
    fn chain(h: &LoopHandle, left: usize, done: Arc<AtomicUsize>) {
        let next = move |h: &LoopHandle, status: TaskStatus| {
            assert_eq!(status, TaskStatus::RunReady);
            done.fetch_add(1, Ordering::SeqCst);
            if left > 1 {
                chain(h, left - 1, done);
            }
        };
        h.schedule_now(next).map_err(|e| e.kind).unwrap();
    }
    h.schedule_now(move |h, _| chain(h, N, first))
        .map_err(|e| e.kind)
        .unwrap();
    wait_for(&done, N);
    let on_loop = ALLOCATIONS.load(Ordering::SeqCst) - before;
    eprintln!(
        "allocations for {N} small tasks: {cross_thread} from another thread, {on_loop} on the loop thread"
    );
    assert_eq!(cross_thread, 0, "allocations from another thread");
    assert_eq!(on_loop, 0, "allocations on the loop thread");
    el.destroy().unwrap();
}

#[test]
fn c33_a_closure_over_the_inline_size_is_boxed_and_still_runs_once() {
    let mut el = EventLoop::new(EventLoopOptions::default()).unwrap();
    el.run().unwrap();
    let (tx, rx) = channel();
    let big = [7u8; 4 * INLINE_BYTES];
    let before = ALLOCATIONS.load(Ordering::SeqCst);
    el.schedule_now(move |_, status| {
        tx.send((status, big.iter().map(|&b| b as u32).sum::<u32>()))
            .unwrap()
    })
    .map_err(|e| e.kind)
    .unwrap();
    let (status, sum) = recv(&rx);
    assert!(
        ALLOCATIONS.load(Ordering::SeqCst) > before,
        "a large closure is boxed"
    );
    assert_eq!(status, TaskStatus::RunReady);
    assert_eq!(sum, 7 * 4 * INLINE_BYTES as u32);
    el.destroy().unwrap();
}

#[test]
fn c12_a_million_live_timers_fire_in_deadline_then_submission_order() {
    const TIMERS: usize = 1_000_000;
    const DISTINCT_DEADLINES: u64 = 1_000;
    let now = Arc::new(AtomicU64::new(0));
    let clock = now.clone();
    let mut el = EventLoop::new(EventLoopOptions {
        capacity: 1 << 20,
        clock: Clock::Custom(Arc::new(move || clock.load(Ordering::SeqCst))),
        ..EventLoopOptions::default()
    })
    .unwrap();
    el.run().unwrap();
    let h = el.handle();
    // Every timer records (deadline, submission number) into one log, on the loop thread.
    let log = Arc::new(std::sync::Mutex::new(Vec::with_capacity(TIMERS)));
    let (tx, rx) = channel();
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    for i in 0..TIMERS {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let deadline = 1 + state % DISTINCT_DEADLINES;
        let (log, tx) = (log.clone(), tx.clone());
        h.schedule_at(deadline, move |_, status| {
            assert_eq!(status, TaskStatus::RunReady);
            let mut log = log.lock().unwrap();
            log.push((deadline, i));
            if log.len() == TIMERS {
                tx.send(()).unwrap();
            }
        })
        .map_err(|e| e.kind)
        .unwrap();
    }
    drop(tx);
    // All of them live at once: none is due yet (the clock reads 0).
    let (seen_tx, seen_rx) = channel();
    h.schedule_now(move |h, _| seen_tx.send(h.stats().tasks_run).unwrap())
        .map_err(|e| e.kind)
        .unwrap();
    assert_eq!(
        recv(&seen_rx),
        1,
        "no timer fired before its deadline (the one task run is this one)"
    );
    assert_eq!(el.pending(), TIMERS);
    // Time moves past every deadline; a task wakes the loop to look at the clock again.
    now.store(DISTINCT_DEADLINES + 1, Ordering::SeqCst);
    h.schedule_now(|_, _| {}).map_err(|e| e.kind).unwrap();
    recv(&rx);
    let log = log.lock().unwrap();
    assert_eq!(log.len(), TIMERS);
    assert!(
        log.windows(2).all(|w| w[0] < w[1]),
        "timers fired out of (deadline, submission) order"
    );
    drop(log);
    el.destroy().unwrap();
}
