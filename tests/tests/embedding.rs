//! Contract 34: the caller-driven mode. `turn` and `run_here` run the same tick as the
//! loop's own thread, on the caller's thread, and the loop's epoll descriptor nests in
//! another poller.

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::mpsc::channel;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reseau_linux::{Error, EventLoop, EventLoopOptions, Interest, IoControl, State, TaskStatus};
use reseau_tests::util::{GUARD, recv, threads_named};
use rustix::event::epoll;

fn fresh() -> EventLoop {
    EventLoop::new(EventLoopOptions {
        thread_name: "reseau-embed".into(),
        ..EventLoopOptions::default()
    })
    .unwrap()
}

/// Turns `el` until `done()` holds, failing after the guard.
fn turn_until(el: &EventLoop, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + GUARD;
    while !done() {
        assert!(Instant::now() < deadline, "the loop did not get there");
        el.turn(Some(Duration::from_millis(50))).unwrap();
    }
}

#[test]
fn c34_a_single_threaded_program_drives_sockets_timers_and_tasks_with_turn() {
    let mut el = fresh();
    let h = el.handle();
    let (ours, mut theirs) = UnixStream::pair().unwrap();
    ours.set_nonblocking(true).unwrap();
    let log = Arc::new(Mutex::new(Vec::<String>::new()));
    let l = log.clone();
    h.subscribe(ours, Interest::READABLE, move |h, s: &mut UnixStream, _| {
        assert!(h.is_on_loop_thread());
        let mut buf = [0u8; 64];
        while let Ok(n) = s.read(&mut buf) {
            if n == 0 {
                l.lock().unwrap().push("eof".into());
                return IoControl::Unsubscribe;
            }
            l.lock()
                .unwrap()
                .push(String::from_utf8_lossy(&buf[..n]).into_owned());
            s.write_all(b"pong").unwrap();
        }
        IoControl::Keep
    })
    .unwrap();
    let l = log.clone();
    h.schedule_now(move |h, status| {
        assert!(h.is_on_loop_thread());
        assert_eq!(status, TaskStatus::RunReady);
        l.lock().unwrap().push("task".into());
    })
    .unwrap();
    let l = log.clone();
    h.schedule_at(h.now() + 2_000_000, move |h, _| {
        assert!(h.is_on_loop_thread());
        l.lock().unwrap().push("timer".into());
    })
    .unwrap();
    theirs.write_all(b"ping").unwrap();
    turn_until(&el, || log.lock().unwrap().len() >= 3);
    let mut reply = [0u8; 4];
    theirs.read_exact(&mut reply).unwrap();
    assert_eq!(&reply, b"pong");
    drop(theirs);
    turn_until(&el, || log.lock().unwrap().iter().any(|e| e == "eof"));
    let log = log.lock().unwrap().clone();
    // The task and the ping may come in either order (the first turn dispatches IO before
    // it runs the task); the 2 ms timer comes after both; the EOF last.
    let pos = |what: &str| log.iter().position(|e| e == what).unwrap();
    assert!(
        pos("timer") > pos("task") && pos("timer") > pos("ping"),
        "{log:?}"
    );
    assert_eq!(log.last().unwrap(), "eof");
    assert_eq!(h.subscriptions(), 0);
    assert_eq!(
        threads_named("reseau-embed"),
        0,
        "no loop thread was started"
    );
    assert!(
        !h.is_on_loop_thread(),
        "the driver identity ends with the turn"
    );
    el.destroy().unwrap();
}

#[test]
fn c34_turn_runs_the_same_tick_io_then_inbox_then_due() {
    let mut el = fresh();
    let h = el.handle();
    let order = Arc::new(Mutex::new(Vec::new()));
    let (ours, mut theirs) = UnixStream::pair().unwrap();
    ours.set_nonblocking(true).unwrap();
    let o = order.clone();
    h.subscribe(ours, Interest::READABLE, move |_, s: &mut UnixStream, _| {
        let mut buf = [0u8; 8];
        while s.read(&mut buf).is_ok_and(|n| n > 0) {}
        o.lock().unwrap().push("io");
        IoControl::Keep
    })
    .unwrap();
    // A turn that only registers nothing new: the subscription is quiet.
    el.turn(Some(Duration::ZERO)).unwrap();
    assert!(order.lock().unwrap().is_empty());
    // A timer due now, scheduled on the driving thread during a turn (straight into the
    // scheduler), then a readable socket and a cross-thread task, all before one turn.
    let o = order.clone();
    h.schedule_now(move |h, _| {
        let o = o.clone();
        h.schedule_at(h.now(), move |_, _| o.lock().unwrap().push("due"))
            .unwrap();
    })
    .unwrap();
    turn_until(&el, || h.stats().tasks_run == 1);
    theirs.write_all(b"x").unwrap();
    let o = order.clone();
    std::thread::spawn(move || h.schedule_now(move |_, _| o.lock().unwrap().push("inbox")))
        .join()
        .unwrap()
        .unwrap();
    el.turn(Some(Duration::ZERO)).unwrap();
    assert_eq!(*order.lock().unwrap(), ["io", "inbox", "due"]);
    el.destroy().unwrap();
}

#[test]
fn c34_run_here_runs_until_a_task_stops_it_then_the_loop_runs_again() {
    let mut el = fresh();
    let h = el.handle();
    let (tx, rx) = channel();
    let t = tx.clone();
    h.schedule_now(move |h, _| {
        t.send(("first", h.is_on_loop_thread())).unwrap();
        h.stop().unwrap();
    })
    .unwrap();
    el.run_here().unwrap();
    assert_eq!(rx.try_recv().unwrap(), ("first", true));
    assert_eq!(el.state(), State::Ready);
    // The same loop, now on a thread of its own.
    el.run().unwrap();
    h.schedule_now(move |h, _| tx.send(("second", h.is_on_loop_thread())).unwrap())
        .unwrap();
    assert_eq!(recv(&rx), ("second", true));
    // Turning a loop its own thread runs is refused, never a second driver.
    assert!(matches!(
        el.turn(Some(Duration::ZERO)),
        Err(Error::InvalidState(_))
    ));
    el.destroy().unwrap();
}

#[test]
fn c34_a_loop_nested_in_another_epoll_descriptor() {
    let mut el = fresh();
    let h = el.handle();
    let outer = epoll::create(epoll::CreateFlags::CLOEXEC).unwrap();
    epoll::add(
        &outer,
        el.as_fd(),
        epoll::EventData::new_u64(7),
        epoll::EventFlags::IN,
    )
    .unwrap();
    let wait_outer = |timeout: Option<Duration>| -> usize {
        let mut events = Vec::with_capacity(4);
        let ts = timeout
            .unwrap_or(GUARD)
            .min(GUARD)
            .try_into()
            .expect("a timespec");
        epoll::wait(
            &outer,
            rustix::buffer::spare_capacity(&mut events),
            Some(&ts),
        )
        .unwrap();
        events.len()
    };
    // Nothing scheduled: the turn says there is no deadline to wait for.
    assert_eq!(el.turn(Some(Duration::ZERO)).unwrap(), None);
    // A task from another thread makes the outer poller fire.
    let (tx, rx) = channel();
    let t = tx.clone();
    let h2 = h.clone();
    std::thread::spawn(move || h2.schedule_now(move |_, _| t.send("task").unwrap()))
        .join()
        .unwrap()
        .unwrap();
    assert_eq!(
        wait_outer(None),
        1,
        "the nested loop's descriptor is readable"
    );
    el.turn(Some(Duration::ZERO)).unwrap();
    assert_eq!(rx.try_recv().unwrap(), "task");
    // A timer: the turn's answer is how long the outer poller may wait.
    h.schedule_at(h.now() + 3_000_000, move |_, _| tx.send("timer").unwrap())
        .unwrap();
    let deadline = Instant::now() + GUARD;
    let mut next = el.turn(Some(Duration::ZERO)).unwrap();
    while rx.try_recv().is_err() {
        assert!(Instant::now() < deadline, "the timer never fired");
        let wait = next.expect("a timer is pending: the turn names its deadline");
        assert!(wait <= Duration::from_millis(3), "{wait:?}");
        wait_outer(Some(wait));
        next = el.turn(Some(Duration::ZERO)).unwrap();
    }
    el.destroy().unwrap();
}
