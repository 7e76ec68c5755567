//! Criterion runs of the summary's scenarios that `peers.rs` and `xthread.rs` do not cover:
//! `pingpong` (1,000 round trips of a task between two loops), `io` and `io1` (10,000 1-byte
//! round trips over a socketpair, two loops or one) and `timers_50k` (50,000 timers over
//! 200 ms, timed in process CPU time, not wall time). Each iteration starts its loops
//! afresh and asserts that everything ran; the time is the measured part only.
//! Run with `cd bench && cargo bench --bench scenarios`.

use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use reseau_bench::{
    Calloop, Mio, Reseau, Tokio, io_floor, io_mio, io_reseau, io_tokio, pingpong, pingpong_floor,
    timers_heap, timers_reseau, timers_tokio,
};

/// A named run of a scenario: its count in, the measured part's time out.
type Case = (&'static str, fn(u64) -> Duration);
/// The same for the io scenarios (the flag: one loop owns both ends).
type IoCase = (&'static str, fn(u64, bool) -> Duration);

/// The sum of `iters` runs of `f`, each timing its own measured part.
fn summed(iters: u64, f: impl Fn() -> Duration) -> Duration {
    (0..iters).map(|_| f()).sum()
}

fn pingpong_1k(c: &mut Criterion) {
    const TRIPS: u64 = 1_000;
    let mut group = c.benchmark_group("pingpong_1k");
    group.throughput(Throughput::Elements(TRIPS));
    group.sample_size(20);
    let cases: [Case; 5] = [
        ("reseau", pingpong::<Reseau>),
        ("tokio_current_thread", pingpong::<Tokio>),
        ("calloop", pingpong::<Calloop>),
        ("mio_hand_rolled", pingpong::<Mio>),
        ("floor_epoll_eventfd", pingpong_floor),
    ];
    for (name, f) in cases {
        group.bench_function(name, |b| b.iter_custom(|iters| summed(iters, || f(TRIPS))));
    }
    group.finish();
}

fn io_10k(c: &mut Criterion) {
    const TRIPS: u64 = 10_000;
    for (group_name, one) in [("io_10k", false), ("io1_10k", true)] {
        let mut group = c.benchmark_group(group_name);
        group.throughput(Throughput::Elements(TRIPS));
        group.sample_size(10);
        let cases: [IoCase; 4] = [
            ("reseau", io_reseau),
            ("tokio_current_thread", io_tokio),
            ("mio_hand_rolled", io_mio),
            ("floor_blocking", io_floor),
        ];
        for (name, f) in cases {
            group.bench_function(name, |b| {
                b.iter_custom(|iters| summed(iters, || f(TRIPS, one)))
            });
        }
        group.finish();
    }
}

fn timers_50k(c: &mut Criterion) {
    const TIMERS: u64 = 50_000;
    let mut group = c.benchmark_group("timers_50k_cpu");
    group.throughput(Throughput::Elements(TIMERS));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(5));
    let cases: [Case; 3] = [
        ("reseau", timers_reseau),
        ("tokio_current_thread", timers_tokio),
        ("std_binary_heap", timers_heap),
    ];
    for (name, f) in cases {
        group.bench_function(name, |b| b.iter_custom(|iters| summed(iters, || f(TIMERS))));
    }
    group.finish();
}

criterion_group!(benches, pingpong_1k, io_10k, timers_50k);
criterion_main!(benches);
