//! Cross-thread scheduling throughput of reseau's own API: small closures (no boxing by the
//! caller), from one producer and from four (serialized), until every task has run.
//!
//! Written against the API that both the engine and the shim before it (9fc6ebc) offer, so
//! the same file measures either. Run with `cd bench && cargo bench --bench xthread`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::channel;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use reseau_linux::{EventLoop, EventLoopOptions, LoopHandle};

const TASKS: usize = 100_000;

/// Schedules `n` tasks that count into `count` and signal `done` at `total`, retrying a
/// refused task as it is.
fn produce(
    h: &LoopHandle,
    n: usize,
    serialized: bool,
    count: &Arc<AtomicUsize>,
    total: usize,
    done: &std::sync::mpsc::Sender<()>,
) {
    for _ in 0..n {
        let (count, done) = (count.clone(), done.clone());
        let task = move |_: &LoopHandle, _| {
            if count.fetch_add(1, Ordering::Relaxed) + 1 == total {
                let _ = done.send(());
            }
        };
        let mut attempt = if serialized {
            h.schedule_now_serialized(task)
        } else {
            h.schedule_now(task)
        };
        while let Err(e) = attempt {
            std::thread::yield_now();
            attempt = h.schedule_task(e.task, e.when);
        }
    }
}

fn run(el: &EventLoop, producers: usize) {
    let count = Arc::new(AtomicUsize::new(0));
    let (tx, rx) = channel();
    let per = TASKS / producers;
    std::thread::scope(|s| {
        for _ in 0..producers {
            let (h, count, tx) = (el.handle(), count.clone(), tx.clone());
            s.spawn(move || produce(&h, per, producers > 1, &count, per * producers, &tx));
        }
    });
    rx.recv().unwrap();
}

fn xthread(c: &mut Criterion) {
    let mut group = c.benchmark_group("xthread");
    group.throughput(Throughput::Elements(TASKS as u64));
    group.sample_size(20);
    let mut el = EventLoop::new(EventLoopOptions::default()).unwrap();
    el.run().unwrap();
    for producers in [1, 4] {
        group.bench_function(format!("{producers}_producer"), |b| {
            b.iter(|| run(&el, producers))
        });
    }
    group.finish();
    el.destroy().unwrap();
}

criterion_group!(benches, xthread);
criterion_main!(benches);
