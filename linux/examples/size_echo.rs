//! The size probe (issue: size budgets): [`size_hello`]'s program, with the echo served by
//! a reseau loop on its own thread instead — one UDP subscription and one timer (a
//! deadline that ends the loop if the datagram never comes). `.ci/run` builds this static
//! musl binary in the `min-size` profile and fails if it outgrows `size_hello` by more
//! than its ceiling (README "Size and bare metal").
//!
//! Written like the hello, with `std::io::Result` (reseau's errors convert with `?`).
//!
//! `cargo build --profile min-size --target x86_64-unknown-linux-musl -p reseau-linux --example size_echo`

use std::net::UdpSocket;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use reseau_linux::{EventLoop, EventLoopOptions, Interest, IoControl, TaskStatus};

fn main() -> std::io::Result<()> {
    let server = UdpSocket::bind("127.0.0.1:0")?;
    server.set_nonblocking(true)?;
    let addr = server.local_addr()?;
    let mut el = EventLoop::new(EventLoopOptions::default())?;
    // The echo stops the loop once it has answered; the timer stops it after 10 s if the
    // datagram never came.
    el.subscribe(server, Interest::READABLE, |h, sock, _| {
        let mut buf = [0u8; 64];
        while let Ok((n, from)) = sock.recv_from(&mut buf) {
            let _ = sock.send_to(&buf[..n], from);
            let _ = h.stop();
        }
        IoControl::Keep
    })?;
    let timed_out = Arc::new(AtomicBool::new(false));
    let flag = timed_out.clone();
    el.schedule_at(el.handle().now() + 10_000_000_000, move |h, status| {
        // Canceled (at destroy) is the expected end; RunReady means the echo never came.
        flag.store(status == TaskStatus::RunReady, Ordering::Relaxed);
        let _ = h.stop();
    })?;
    el.run()?;
    let client = UdpSocket::bind("127.0.0.1:0")?;
    client.send_to(b"hello", addr)?;
    let mut buf = [0u8; 64];
    let n = client.recv(&mut buf)?;
    el.wait_for_stop_completion()?;
    el.destroy()?;
    assert!(!timed_out.load(Ordering::Relaxed), "the timer fired first");
    assert_eq!(&buf[..n], b"hello");
    Ok(())
}
