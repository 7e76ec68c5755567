//! Contract item 21: a group's loops run on distinct named threads, optionally pinned;
//! `next_loop` spreads load and avoids a busy loop; shutdown works from one of the group's
//! own loop tasks, from several threads at once, twice, and on drop.

use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::channel;
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use reseau_linux::sys::Syscalls;
use reseau_linux::{
    Errno, Error, EventLoopGroup, EventLoopGroupOptions, EventLoopOptions, ScheduleErrorKind,
    ShutdownOutcome, TaskStatus,
};
use reseau_tests::util::{open_fds, recv};

/// The tests of this file run one at a time: the descriptor check must not see another
/// test's loops open or close descriptors.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

fn group(loops: usize) -> EventLoopGroup {
    EventLoopGroup::new(EventLoopGroupOptions {
        loops,
        ..EventLoopGroupOptions::default()
    })
    .unwrap()
}

/// Whether every loop of the group refuses schedules as destroyed.
fn all_destroyed(g: &EventLoopGroup) -> bool {
    (0..g.len()).all(|i| {
        matches!(
            g.loop_at(i)
                .unwrap()
                .schedule_now(|_, _| ())
                .map_err(|e| e.kind),
            Err(ScheduleErrorKind::Destroyed(_))
        )
    })
}

#[test]
fn c21_group_loops_run_on_distinct_named_threads() {
    let _serial = serial();
    let g = Arc::new(group(4));
    assert_eq!(g.len(), 4);
    assert!(!g.is_empty());
    assert!(g.loop_at(4).is_none());
    assert!(!g.is_on_loop_thread());
    let (tx, rx) = channel();
    for i in 0..4 {
        let (tx, g2) = (tx.clone(), g.clone());
        g.loop_at(i)
            .unwrap()
            .schedule_now(move |h, st| {
                let t = std::thread::current();
                tx.send((
                    i,
                    t.name().map(str::to_owned),
                    t.id(),
                    st,
                    h.is_on_loop_thread(),
                    g2.is_on_loop_thread(),
                ))
                .unwrap();
            })
            .map_err(|e| e.kind)
            .unwrap();
    }
    let mut ids = BTreeSet::new();
    for _ in 0..4 {
        let (i, name, id, st, on_loop, on_group) = recv(&rx);
        assert_eq!(
            name.as_deref(),
            Some(format!("reseau-el-{}", i + 1).as_str())
        );
        assert_eq!(st, TaskStatus::RunReady);
        assert!(on_loop && on_group);
        assert_ne!(id, std::thread::current().id());
        ids.insert(format!("{id:?}"));
    }
    assert_eq!(ids.len(), 4, "each loop has its own thread");
    assert_eq!(g.shutdown(None).unwrap(), ShutdownOutcome::Done);
}

#[test]
fn c21_group_thread_names_follow_the_base_options() {
    let _serial = serial();
    let g = EventLoopGroup::new(EventLoopGroupOptions {
        loops: 2,
        loop_options: EventLoopOptions {
            thread_name: "echo".into(),
            ..EventLoopOptions::default()
        },
        ..EventLoopGroupOptions::default()
    })
    .unwrap();
    let (tx, rx) = channel();
    for i in 0..2 {
        let tx = tx.clone();
        g.loop_at(i)
            .unwrap()
            .schedule_now(move |_, _| {
                tx.send(std::thread::current().name().map(str::to_owned))
                    .unwrap()
            })
            .map_err(|e| e.kind)
            .unwrap();
    }
    let names: BTreeSet<_> = (0..2).map(|_| recv(&rx).unwrap()).collect();
    assert_eq!(names, BTreeSet::from(["echo-1".into(), "echo-2".into()]));
}

#[test]
fn c21_group_of_zero_loops_has_available_parallelism() {
    let _serial = serial();
    let g = group(0);
    let expected = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert_eq!(g.len(), expected);
    // Every loop runs.
    let (tx, rx) = channel();
    for i in 0..g.len() {
        let tx = tx.clone();
        g.loop_at(i)
            .unwrap()
            .schedule_now(move |_, st| tx.send(st).unwrap())
            .map_err(|e| e.kind)
            .unwrap();
    }
    for _ in 0..g.len() {
        assert_eq!(recv(&rx), TaskStatus::RunReady);
    }
}

#[test]
fn c21_group_of_one_loop_always_returns_it() {
    let _serial = serial();
    let g = group(1);
    for _ in 0..100 {
        assert_eq!(g.next_index(), 0);
    }
    let (tx, rx) = channel();
    g.next_loop()
        .schedule_now(move |_, _| {
            tx.send(std::thread::current().name().map(str::to_owned))
                .unwrap()
        })
        .map_err(|e| e.kind)
        .unwrap();
    assert_eq!(recv(&rx).as_deref(), Some("reseau-el-1"));
}

#[test]
fn c21_next_loop_spreads_load_across_idle_loops() {
    let _serial = serial();
    // Fresh loops have never ticked: every load is 0, every draw is a tie, and the ties go
    // to a uniformly random loop (expected 250 of 1000 each; 150 is 7 standard deviations
    // below).
    let g = group(4);
    let mut hits = [0usize; 4];
    for _ in 0..1000 {
        hits[g.next_index()] += 1;
    }
    assert!(hits.iter().all(|&h| h >= 150), "picks per loop: {hits:?}");

    // And the handles it returns reach every loop.
    let (tx, rx) = channel();
    for _ in 0..200 {
        let tx = tx.clone();
        g.next_loop()
            .schedule_now(move |_, _| {
                tx.send(std::thread::current().name().map(str::to_owned))
                    .unwrap()
            })
            .map_err(|e| e.kind)
            .unwrap();
    }
    let mut seen = BTreeMap::new();
    for _ in 0..200 {
        *seen.entry(recv(&rx).unwrap()).or_insert(0usize) += 1;
    }
    assert_eq!(seen.len(), 4, "tasks per thread: {seen:?}");
}

#[test]
fn c21_next_loop_avoids_a_busy_loop() {
    let _serial = serial();
    // Loop 0 is busy for 50 ms in one task; loops 1-3 never tick, so their load stays 0.
    // While loop 0's window is current (its load reads > 0 before and after the draws),
    // the power of two choices never picks it. If the machine stalls for over a second in
    // between, the window expires and the round is retried.
    let g = group(4);
    let busy = g.loop_at(0).unwrap();
    for round in 0..5 {
        let (tx, rx) = channel();
        busy.schedule_now(move |h, _| {
            let start = Instant::now();
            while start.elapsed() < Duration::from_millis(50) {
                std::hint::spin_loop();
            }
            // The busy tick is accounted when it ends: report from the next one.
            h.schedule_now(move |_, _| tx.send(()).unwrap())
                .map_err(|e| e.kind)
                .unwrap();
        })
        .map_err(|e| e.kind)
        .unwrap();
        recv(&rx);
        let before = busy.load_factor();
        let mut hits = [0usize; 4];
        for _ in 0..1000 {
            hits[g.next_index()] += 1;
        }
        let after = busy.load_factor();
        let others: Vec<u64> = (1..4)
            .map(|i| g.loop_at(i).unwrap().load_factor())
            .collect();
        assert!(others.iter().all(|&l| l == 0), "idle loops: {others:?}");
        if before == 0 || after == 0 {
            eprintln!("round {round}: loop 0's window expired during the draws; retrying");
            continue;
        }
        assert!(before >= 50_000_000, "busy loop load {before} ns");
        assert_eq!(hits[0], 0, "the busy loop was picked: {hits:?}");
        assert!(hits[1..].iter().all(|&h| h >= 200), "picks: {hits:?}");
        return;
    }
    panic!("loop 0's load window expired in every round");
}

#[test]
fn c21_shutdown_from_a_loop_task_completes_after_the_task_returns() {
    let _serial = serial();
    struct OnDrop(Arc<Mutex<Vec<&'static str>>>);
    impl Drop for OnDrop {
        fn drop(&mut self) {
            self.0.lock().unwrap().push("task returned");
        }
    }
    let g = Arc::new(group(3));
    let log = Arc::new(Mutex::new(Vec::new()));
    let (done_tx, done_rx) = channel();
    let (outcome_tx, outcome_rx) = channel();
    // A far timer on every loop: each runs canceled at shutdown.
    let canceled = Arc::new(AtomicUsize::new(0));
    for i in 0..3 {
        let c = canceled.clone();
        let h = g.loop_at(i).unwrap();
        h.schedule_at(h.now() + 3_600_000_000_000, move |_, st| {
            assert_eq!(st, TaskStatus::Canceled);
            c.fetch_add(1, Ordering::SeqCst);
        })
        .map_err(|e| e.kind)
        .unwrap();
    }
    let (g2, log2, log3) = (g.clone(), log.clone(), log.clone());
    g.loop_at(1)
        .unwrap()
        .schedule_now(move |_, _| {
            let guard = OnDrop(log2.clone());
            let first = g2.shutdown(Some(Box::new(move || {
                log3.lock().unwrap().push("complete");
                done_tx
                    .send(std::thread::current().name().map(str::to_owned))
                    .unwrap();
            })));
            let second = g2.shutdown(Some(Box::new(|| panic!("a second callback ran"))));
            log2.lock().unwrap().push("shutdown called");
            outcome_tx.send((first.unwrap(), second.unwrap())).unwrap();
            drop(g2);
            drop(guard);
        })
        .map_err(|e| e.kind)
        .unwrap();
    assert_eq!(
        recv(&outcome_rx),
        (ShutdownOutcome::Started, ShutdownOutcome::AlreadyShutDown)
    );
    let thread = recv(&done_rx);
    assert_eq!(thread.as_deref(), Some("reseau-group-shutdown"));
    assert_eq!(
        *log.lock().unwrap(),
        ["shutdown called", "task returned", "complete"]
    );
    assert_eq!(canceled.load(Ordering::SeqCst), 3);
    assert!(all_destroyed(&g));
    assert_eq!(g.shutdown(None).unwrap(), ShutdownOutcome::AlreadyShutDown);
    // Dropping the group joins the shutdown thread.
    drop(g);
}

#[test]
fn c21_shutdown_twice_is_fine() {
    let _serial = serial();
    let g = group(2);
    let ran = Arc::new(AtomicUsize::new(0));
    let r = ran.clone();
    let on = std::thread::current().id();
    let first = g
        .shutdown(Some(Box::new(move || {
            assert_eq!(
                std::thread::current().id(),
                on,
                "the callback runs on the caller"
            );
            r.fetch_add(1, Ordering::SeqCst);
        })))
        .unwrap();
    assert_eq!(first, ShutdownOutcome::Done);
    assert_eq!(
        ran.load(Ordering::SeqCst),
        1,
        "the callback ran before shutdown returned"
    );
    assert!(all_destroyed(&g));
    let r = ran.clone();
    let second = g
        .shutdown(Some(Box::new(move || {
            r.fetch_add(1, Ordering::SeqCst);
        })))
        .unwrap();
    assert_eq!(second, ShutdownOutcome::AlreadyShutDown);
    assert_eq!(
        ran.load(Ordering::SeqCst),
        1,
        "the second callback is dropped uncalled"
    );
    // Handles outlive the loops and refuse work.
    assert!(g.next_loop().stop().is_err());
    drop(g);
}

#[test]
fn c21_shutdown_from_several_threads_at_once_destroys_once() {
    let _serial = serial();
    let g = Arc::new(group(2));
    let barrier = Arc::new(Barrier::new(8));
    let callbacks = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let (g, b, c) = (g.clone(), barrier.clone(), callbacks.clone());
            std::thread::spawn(move || {
                b.wait();
                g.shutdown(Some(Box::new(move || {
                    c.fetch_add(1, Ordering::SeqCst);
                })))
                .unwrap()
            })
        })
        .collect();
    let outcomes: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let done = outcomes
        .iter()
        .filter(|&&o| o == ShutdownOutcome::Done)
        .count();
    assert_eq!(done, 1, "{outcomes:?}");
    assert!(
        outcomes
            .iter()
            .all(|&o| matches!(o, ShutdownOutcome::Done | ShutdownOutcome::AlreadyShutDown))
    );
    assert_eq!(callbacks.load(Ordering::SeqCst), 1);
    assert!(all_destroyed(&g));
}

#[test]
fn c21_dropping_the_group_on_its_own_loop_thread_does_not_deadlock() {
    let _serial = serial();
    let g = group(2);
    let (tx, rx) = channel();
    for i in 0..2 {
        let (tx, h) = (tx.clone(), g.loop_at(i).unwrap());
        h.schedule_at(h.now() + 3_600_000_000_000, move |_, st| {
            tx.send(st).unwrap()
        })
        .map_err(|e| e.kind)
        .unwrap();
    }
    let (dropped_tx, dropped_rx) = channel();
    let h = g.loop_at(0).unwrap();
    h.schedule_now(move |_, _| {
        drop(g);
        dropped_tx.send(()).unwrap();
    })
    .map_err(|e| e.kind)
    .unwrap();
    recv(&dropped_rx);
    // The drop handed the destroys to a thread: both far timers run canceled.
    assert_eq!(recv(&rx), TaskStatus::Canceled);
    assert_eq!(recv(&rx), TaskStatus::Canceled);
}

#[test]
fn c21_group_pins_loops_to_cpus() {
    let _serial = serial();
    // The first CPU this process may run on (CPU 0 unless a cpuset excludes it).
    let allowed = rustix::thread::sched_getaffinity(None).unwrap();
    let cpu = (0..rustix::thread::CpuSet::MAX_CPU)
        .find(|&c| allowed.is_set(c))
        .unwrap();
    let g = EventLoopGroup::new(EventLoopGroupOptions {
        loops: 2,
        cpus: Some(vec![cpu]),
        ..EventLoopGroupOptions::default()
    })
    .unwrap();
    let (tx, rx) = channel();
    for i in 0..2 {
        let tx = tx.clone();
        g.loop_at(i)
            .unwrap()
            .schedule_now(move |_, _| {
                let set = rustix::thread::sched_getaffinity(None).unwrap();
                tx.send((set.count(), set.is_set(cpu))).unwrap();
            })
            .map_err(|e| e.kind)
            .unwrap();
    }
    for _ in 0..2 {
        assert_eq!(
            recv(&rx),
            (1, true),
            "the loop thread is pinned to CPU {cpu} only"
        );
    }
    // The caller's own affinity is untouched.
    assert_eq!(
        rustix::thread::sched_getaffinity(None).unwrap().count(),
        allowed.count()
    );
}

#[test]
fn c21_group_refuses_bad_cpu_lists() {
    let _serial = serial();
    for cpus in [vec![], vec![rustix::thread::CpuSet::MAX_CPU]] {
        let e = EventLoopGroup::new(EventLoopGroupOptions {
            loops: 1,
            cpus: Some(cpus.clone()),
            ..EventLoopGroupOptions::default()
        })
        .unwrap_err();
        assert!(matches!(e, Error::InvalidOption(_)), "{cpus:?}: {e:?}");
    }
}

/// Fails `epoll_create1` with EMFILE from its `fail_from`-th call on.
struct FailLater {
    calls: AtomicUsize,
    fail_from: usize,
    failed: AtomicBool,
}

impl Syscalls for FailLater {
    fn epoll_create1(&self) -> rustix::io::Result<OwnedFd> {
        if self.calls.fetch_add(1, Ordering::SeqCst) >= self.fail_from {
            self.failed.store(true, Ordering::SeqCst);
            return Err(Errno::MFILE);
        }
        rustix::event::epoll::create(rustix::event::epoll::CreateFlags::CLOEXEC)
    }
}

#[test]
fn c21_a_failed_group_new_destroys_the_loops_it_created() {
    let _serial = serial();
    let fds_before = open_fds();
    let seam = Arc::new(FailLater {
        calls: AtomicUsize::new(0),
        fail_from: 2,
        failed: AtomicBool::new(false),
    });
    let e = EventLoopGroup::new(EventLoopGroupOptions {
        loops: 4,
        loop_options: EventLoopOptions {
            syscalls: seam.clone(),
            ..EventLoopOptions::default()
        },
        ..EventLoopGroupOptions::default()
    })
    .unwrap_err();
    assert!(seam.failed.load(Ordering::SeqCst));
    match e {
        Error::Sys(e) => assert_eq!(e.errno, Errno::MFILE),
        other => panic!("expected the EMFILE, got {other:?}"),
    }
    // The two loops created first were destroyed: their descriptors are gone. (A subset,
    // not equality: a shutdown thread an earlier test handed off may still be closing.)
    let after = open_fds();
    assert!(
        after.is_subset(&fds_before),
        "leaked: {:?}",
        after.difference(&fds_before)
    );
}
