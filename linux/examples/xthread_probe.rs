//! The instruction-count probe for cross-thread scheduling (README "Performance"): one
//! producer thread schedules N tiny tasks onto a running loop, retrying the refused ones
//! as they come back; the main thread waits until all N ran.
//!
//! Run under callgrind at two sizes and take the marginal cost, which repeats exactly:
//!
//! ```sh
//! cargo build --release -p reseau-linux --example xthread_probe
//! for n in 100000 200000; do
//!     valgrind --tool=callgrind --callgrind-out-file=/dev/null \
//!         target/release/examples/xthread_probe $n 2>&1 | grep refs
//! done   # (I(200k) - I(100k)) / 100k = instructions per task, both threads
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::channel;

use reseau_linux::{EventLoop, EventLoopOptions};

/// What the tiny tasks do: count. A capture-free closure, so the probe measures the
/// loop, not an `Arc` or a channel per task.
static RAN: AtomicU64 = AtomicU64::new(0);

fn main() -> Result<(), reseau_linux::Error> {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(100_000);
    let mut el = EventLoop::new(EventLoopOptions::default())?;
    el.run()?;
    let h = el.handle();
    let producer = std::thread::spawn(move || {
        let mut refused = 0u64;
        for _ in 0..n {
            let mut r = h.schedule_now(|_, _| {
                RAN.fetch_add(1, Ordering::Relaxed);
            });
            while let Err(e) = r {
                refused += 1;
                std::thread::yield_now();
                r = h.schedule_task(e.task, e.when);
            }
        }
        refused
    });
    let refused = producer.join().expect("producer");
    // FIFO: once this runs, every task before it has.
    let (tx, done) = channel();
    el.schedule_now(move |_, _| tx.send(()).expect("main waits"))
        .map_err(|e| reseau_linux::Error::Schedule(e.kind))?;
    done.recv().expect("the loop runs");
    assert_eq!(RAN.load(Ordering::Relaxed), n);
    let stats = el.stats();
    el.destroy()?;
    println!(
        "{n} tasks, {refused} refusals, {} wakeups written, {} epoll_waits",
        stats.wakeups_written, stats.epoll_waits
    );
    Ok(())
}
