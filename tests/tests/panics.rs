//! `PanicPolicy`: `Catch` (the default) keeps the loop and a panicking callback's
//! subscription; `Abort` prints the message and aborts the process (checked in child
//! processes).

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt;
use std::sync::mpsc::channel;

use reseau_linux::{EventLoop, EventLoopOptions, Interest, IoControl, PanicPolicy};
use reseau_tests::util::{GUARD, is_child, recv};

const MARKER: &str = "RESEAU_PANICS_CHILD";

/// A connected, non-blocking socket pair: (subscribed end, peer).
fn pair() -> (UnixStream, UnixStream) {
    let (a, b) = UnixStream::pair().unwrap();
    a.set_nonblocking(true).unwrap();
    (a, b)
}

fn drain(s: &mut UnixStream) {
    let mut buf = [0u8; 64];
    while let Ok(n) = std::io::Read::read(s, &mut buf) {
        if n == 0 {
            break;
        }
    }
}

#[test]
fn under_catch_a_panicking_io_callback_keeps_its_subscription_and_is_called_again() {
    let el = EventLoop::new(EventLoopOptions::default()).unwrap();
    el.run().unwrap();
    let (a, mut peer) = pair();
    let (tx, rx) = channel();
    let mut calls = 0;
    el.subscribe(a, Interest::READABLE, move |_, s, _| {
        drain(s);
        calls += 1;
        tx.send(calls).unwrap();
        if calls == 1 {
            panic!("boom in an IO callback");
        }
        IoControl::Keep
    })
    .map_err(|e| e.kind)
    .unwrap();
    peer.write_all(b"1").unwrap();
    assert_eq!(recv(&rx), 1);
    // The loop goes on: a task runs after the panic (and the panic was counted).
    let (ttx, trx) = channel();
    el.schedule_now(move |h, _| ttx.send(h.stats().panics_caught).unwrap())
        .unwrap();
    assert_eq!(recv(&trx), 1);
    assert_eq!(el.subscriptions(), 1, "the subscription is kept");
    // Called again on the next edge, with the state it had (calls went on counting).
    peer.write_all(b"2").unwrap();
    assert_eq!(recv(&rx), 2);
}

/// Runs test `name` of this binary in a child and checks that it aborted (`SIGABRT`) with
/// `expected` on stderr. In the child, returns true.
fn aborts_in_child(name: &str, expected: &str) -> bool {
    if is_child(MARKER) {
        return true;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env(MARKER, "1")
        .output()
        .unwrap();
    let stderr = assert_aborted(&out, expected);
    assert!(stderr.contains("PanicPolicy::Abort"), "stderr: {stderr}");
    false
}

/// Checks that the child ended with `SIGABRT` and `expected` on its stderr; returns stderr.
fn assert_aborted(out: &std::process::Output, expected: &str) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGABRT),
        "the child did not abort ({}): {stderr}",
        out.status
    );
    assert!(stderr.contains(expected), "stderr: {stderr}");
    stderr
}

fn aborting_loop() -> EventLoop {
    let el = EventLoop::new(EventLoopOptions::default().on_panic(PanicPolicy::Abort)).unwrap();
    el.run().unwrap();
    el
}

#[test]
fn under_abort_a_panicking_task_aborts_the_process_with_the_message() {
    let name = "under_abort_a_panicking_task_aborts_the_process_with_the_message";
    if aborts_in_child(name, "a task panicked: boom in a task") {
        let el = aborting_loop();
        el.schedule_now(|_, _| panic!("boom in a task")).unwrap();
        std::thread::sleep(GUARD); // failure guard only: the abort ends the process first
        panic!("the loop did not abort");
    }
}

#[test]
fn under_abort_a_panicking_io_callback_aborts_the_process_with_the_message() {
    let name = "under_abort_a_panicking_io_callback_aborts_the_process_with_the_message";
    if aborts_in_child(name, "an IO callback panicked: boom in a callback") {
        let el = aborting_loop();
        let (a, mut peer) = pair();
        el.subscribe(a, Interest::READABLE, |_, _, _| {
            panic!("boom in a callback")
        })
        .map_err(|e| e.kind)
        .unwrap();
        peer.write_all(b"x").unwrap();
        std::thread::sleep(GUARD); // failure guard only
        panic!("the loop did not abort");
    }
}

#[test]
fn under_abort_a_panicking_signal_callback_aborts_the_process_with_the_message() {
    // A process-directed signal needs a process of its own (see tests/signals.rs).
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_signal_probe"))
        .arg("abort_in_signal_callback")
        .output()
        .unwrap();
    assert_aborted(&out, "an IO callback panicked: boom in a signal callback");
}
