//! One table of reseau beside its peers, every scenario (README "Benchmarks"):
//!
//! ```text
//! cd bench && cargo run --release --example summary
//! ```
//!
//! Each scenario runs `RESEAU_BENCH_RUNS` times (default 5) per loop, the loops interleaved,
//! and the median is printed; `RESEAU_BENCH_SCALE` (default 1) multiplies every count
//! (`0.1` for a quick look); `RESEAU_BENCH_ONLY=pingpong,io` runs only those sections
//! (`xthread`, `xthread4`, `pingpong`, `timers`, `io`, `allocations`). Every run asserts
//! that every task, timer or round trip ran. About 2½ minutes on a quiet 2-core machine.
//!
//! `summary probe LOOP N` (LOOP: reseau, tokio, calloop, mio, floor) schedules N tiny tasks
//! from one producer thread and exits: run it under callgrind at 100,000 and 200,000 for
//! the user-space instructions per task, as `linux/examples/xthread_probe.rs` does.
//! `summary io LOOP N one|two` (LOOP: reseau, tokio, mio, floor) runs one `io1` / `io`
//! ping-pong of N round trips, for `strace -c -f` or perf.
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
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use reseau_bench::{
    Calloop, Done, Floor, Loop, Mio, Reseau, ReseauSpin, Spawner, TIMER_WAITS, Tokio, WARM_UP,
    Xthread, io_floor, io_mio, io_reseau, io_tokio, pingpong, pingpong_floor, timers_heap,
    timers_reseau, timers_tokio, xthread,
};

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
    if args.get(1).map(String::as_str) == Some("io") {
        // `summary io LOOP N one|two`: one io run, for strace or perf.
        let n = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(20_000);
        let one = args.get(4).map(String::as_str) == Some("one");
        let took = match args.get(2).map(String::as_str) {
            Some("reseau") => io_reseau(n, one),
            Some("tokio") => io_tokio(n, one),
            Some("mio") => io_mio(n, one),
            Some("floor") => io_floor(n, one),
            other => panic!("io {other:?}: reseau, tokio, mio or floor"),
        };
        println!("{n} round trips in {took:?}");
        return;
    }
    let scale = env_f64("RESEAU_BENCH_SCALE", 1.0);
    let runs = env_f64("RESEAU_BENCH_RUNS", 5.0) as usize;
    assert!(runs >= 1 && scale > 0.0);
    let n = |base: f64| ((base * scale) as u64).max(100);
    let started = Instant::now();
    let mut rows = Vec::new();
    let progress = |what: &str| eprintln!("[{:>5.1} s] {what}", started.elapsed().as_secs_f64());
    let only = std::env::var("RESEAU_BENCH_ONLY").ok();
    let want = |s: &str| only.as_ref().is_none_or(|o| o.split(',').any(|x| x == s));
    let tasks = n(1_000_000.0);
    // Thousands per second.
    let k = |took: Duration, count: u64| Some(count as f64 / took.as_secs_f64() / 1e3);
    let m = |x: Xthread| Some(tasks as f64 / x.elapsed.as_secs_f64() / 1e6);
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
                &mut || k(pingpong::<Reseau>(trips), trips),
                &mut || k(pingpong::<Tokio>(trips), trips),
                &mut || k(pingpong::<Calloop>(trips), trips),
                &mut || k(pingpong::<Mio>(trips), trips),
                &mut || k(pingpong_floor(trips), trips),
            ],
        );
        rows.push(Row {
            scenario: format!("`pingpong` a task between 2 loops, {trips} round trips"),
            unit: "k round trips/s",
            higher_is_better: true,
            cells,
            digits: 1,
        });
        // The opt-in spin before parking (EventLoopOptions::spin_before_park, 50 µs: each
        // loop burns up to 50 µs of a core every time it goes idle) against the same floor.
        let cells = measure(
            runs,
            [
                &mut || k(pingpong::<ReseauSpin>(trips), trips),
                &mut || None,
                &mut || None,
                &mut || None,
                &mut || k(pingpong_floor(trips), trips),
            ],
        );
        rows.push(Row {
            scenario: format!(
                "`pingpong`, reseau with `spin_before_park` 50 µs (opt-in), {trips} round trips"
            ),
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
                    &mut || Some(timers_reseau(timers).as_nanos() as f64 / timers as f64),
                    &mut || Some(timers_tokio(timers).as_nanos() as f64 / timers as f64),
                    &mut || None,
                    &mut || None,
                    &mut || Some(timers_heap(timers).as_nanos() as f64 / timers as f64),
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
                    &mut || k(io_reseau(io_trips, one), io_trips),
                    &mut || k(io_tokio(io_trips, one), io_trips),
                    &mut || None,
                    &mut || k(io_mio(io_trips, one), io_trips),
                    &mut || k(io_floor(io_trips, one), io_trips),
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
        fn marginal(pp: u64, f: fn(u64) -> Duration) -> Option<f64> {
            let (_, one) = counting(|| f(pp));
            let (_, two) = counting(|| f(2 * pp));
            // Never below 0: a stray allocation in the shorter run is not a saving.
            Some(((two as f64 - one as f64) / pp as f64).max(0.0))
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
