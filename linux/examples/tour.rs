//! A tour of reseau's event loop: the backend and descriptor flags, scheduling now / at /
//! serialized from several threads, cancellation, stop and restart, an IO subscription, a
//! signal source, destroy with tasks pending, and the counters at the end.
//!
//! `cargo run --release -p reseau-linux --example tour`

use std::sync::mpsc::channel;
use std::sync::{Arc, Mutex};

use reseau_linux::{EventLoop, EventLoopOptions, Interest, IoControl};

type Log = Arc<Mutex<Vec<String>>>;

fn note(log: &Log, what: impl Into<String>) {
    log.lock().unwrap().push(what.into());
}

fn flags(fd: std::os::fd::BorrowedFd<'_>) -> String {
    let cloexec = rustix::io::fcntl_getfd(fd)
        .map(|f| f.contains(rustix::io::FdFlags::CLOEXEC))
        .unwrap_or(false);
    let nonblock = rustix::fs::fcntl_getfl(fd)
        .map(|f| f.contains(rustix::fs::OFlags::NONBLOCK))
        .unwrap_or(false);
    format!(
        "{}{}",
        if cloexec {
            "FD_CLOEXEC"
        } else {
            "no FD_CLOEXEC"
        },
        if nonblock { " O_NONBLOCK" } else { "" }
    )
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let started = std::time::Instant::now();
    let mut el = EventLoop::new(EventLoopOptions::default())?;
    println!(
        "backend: {}",
        el.backend().expect("a live loop has a backend")
    );
    for (name, fd) in el.descriptors() {
        println!(
            "  {name:<10} fd {:>3}: {}",
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            flags(fd)
        );
    }

    let log: Log = Arc::new(Mutex::new(Vec::new()));
    el.run()?;
    println!("\nrunning; scheduling from 3 threads (now, at +2 ms, serialized)");
    let (done_tx, done_rx) = channel();
    let threads: Vec<_> = (0..3)
        .map(|t| {
            let (h, log, done_tx) = (el.handle(), log.clone(), done_tx.clone());
            std::thread::spawn(move || {
                let l = log.clone();
                h.schedule_now(move |h, st| {
                    note(
                        &l,
                        format!(
                            "thread {t}: now        -> {st:?} (on loop thread: {})",
                            h.is_on_loop_thread()
                        ),
                    )
                })
                .map_err(|e| e.kind)
                .unwrap();
                let (l, d) = (log.clone(), done_tx.clone());
                let at = h.now() + 2_000_000;
                h.schedule_at(at, move |h, st| {
                    note(
                        &l,
                        format!(
                            "thread {t}: at +2 ms   -> {st:?} (late by {} µs)",
                            (h.now() - at) / 1000
                        ),
                    );
                    d.send(()).unwrap();
                })
                .map_err(|e| e.kind)
                .unwrap();
                let l = log.clone();
                h.schedule_now_serialized(move |_, st| {
                    note(&l, format!("thread {t}: serialized -> {st:?}"))
                })
                .map_err(|e| e.kind)
                .unwrap();
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    for _ in 0..3 {
        done_rx.recv()?;
    }

    println!("cancel: one task from here, one from the loop thread");
    let l = log.clone();
    let far = el.now() + 60_000_000_000;
    let victim = el
        .schedule_at(far, move |_, st| {
            note(&l, format!("far timer (canceled from main) -> {st:?}"))
        })
        .map_err(|e| e.kind)
        .unwrap();
    el.cancel(&victim);
    let (tx, rx) = channel();
    let l = log.clone();
    el.schedule_now(move |h, _| {
        let l2 = l.clone();
        let t = h
            .schedule_at(far, move |_, st| {
                note(&l2, format!("far timer (canceled on loop) -> {st:?}"))
            })
            .map_err(|e| e.kind)
            .unwrap();
        h.cancel(&t);
        tx.send(()).unwrap();
    })
    .map_err(|e| e.kind)
    .unwrap();
    rx.recv()?;

    println!("stop, wait, restart");
    el.stop()?;
    el.wait_for_stop_completion()?;
    let l = log.clone();
    el.schedule_now(move |_, st| note(&l, format!("queued while stopped -> {st:?}")))
        .map_err(|e| e.kind)
        .unwrap();
    el.run()?;
    let (tx, rx) = channel();
    el.schedule_now(move |_, _| tx.send(()).unwrap())
        .map_err(|e| e.kind)
        .unwrap();
    rx.recv()?;

    println!("IO: a pipe's read end subscribed, one byte written from another thread");
    // Made by the loop's own fallback chain, so the tour runs on kernels (and under
    // sandboxes) without pipe2 too.
    let (read_end, write_end) = reseau_linux::sys::nonblocking_pipe()?;
    let (tx, rx) = channel();
    let sub = el.subscribe(read_end, Interest::READABLE, move |h, fd, readiness| {
        // Edge-triggered: read until EAGAIN.
        let mut got = Vec::new();
        let mut buf = [0u8; 64];
        while let Ok(n @ 1..) = rustix::io::read(&*fd, &mut buf) {
            got.extend_from_slice(&buf[..n]);
        }
        let _ = tx.send((readiness, got, h.is_on_loop_thread()));
        IoControl::Keep
    })?;
    std::thread::scope(|s| {
        s.spawn(|| rustix::io::write(&write_end, b"!").expect("write to the pipe"));
    });
    let (readiness, got, on_loop) = rx.recv()?;
    println!(
        "  delivered {readiness:?} with {:?} (on loop thread: {on_loop})",
        String::from_utf8_lossy(&got)
    );
    let (tx, rx) = channel();
    el.schedule_now(move |h, _| {
        let _ = tx.send(h.unsubscribe::<std::os::fd::OwnedFd>(sub));
    })
    .map_err(|e| e.kind)
    .unwrap();
    let read_end = rx.recv()??;
    println!(
        "  unsubscribed from a task on the loop thread: the read end (fd {}) is ours again",
        std::os::fd::AsRawFd::as_raw_fd(&read_end)
    );
    drop((read_end, write_end));

    println!("signals: SIGUSR1 as a source, sent to this process");
    // Blocks SIGUSR1 on this thread and (by a task) on the running loop thread; every other
    // thread of the tour has exited, so the signal waits in the signalfd for the loop.
    let (tx, rx) = channel();
    let set = reseau_linux::SignalSet::new().with(rustix::process::Signal::USR1.as_raw())?;
    let signals = el.subscribe_signals(set, move |h, info| {
        let _ = tx.send((info.signo, info.pid, h.is_on_loop_thread()));
    })?;
    rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::USR1)?;
    let (signo, pid, on_loop) = rx.recv()?;
    println!("  delivered signal {signo} from pid {pid} (on loop thread: {on_loop})");
    drop(signals); // unsubscribes and unblocks SIGUSR1 again

    println!("destroy with 3 timers pending (one schedules another when canceled)");
    for i in 0..3 {
        let l = log.clone();
        el.schedule_at(far, move |h, st| {
            note(
                &l,
                format!(
                    "pending timer {i} at destroy -> {st:?} (on loop thread: {})",
                    h.is_on_loop_thread()
                ),
            );
            if i == 0 {
                let l2 = l.clone();
                let _ = h.schedule_now(move |_, st| {
                    note(&l2, format!("scheduled by a canceled task -> {st:?}"))
                });
            }
        })
        .map_err(|e| e.kind)
        .unwrap();
    }
    let handle = el.handle();
    let stats = handle.stats();
    el.destroy()?;

    println!("\nwhat ran, in order:");
    for line in log.lock().unwrap().iter() {
        println!("  {line}");
    }
    let canceled = log
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.ends_with("Canceled") || l.contains("Canceled ("))
        .count();
    println!("\nstats before destroy: {stats:?}");
    println!(
        "canceled in all: {canceled}; total time {:?}",
        started.elapsed()
    );
    let late = handle.schedule_now(|_, _| ());
    println!(
        "schedule after destroy: {}",
        late.map(|_| "accepted?!".to_string())
            .unwrap_or_else(|e| e.to_string())
    );
    Ok(())
}
