//! The size baseline (issue: size budgets): a std program with one thread and one UDP
//! socket echoing one datagram — what any small network service pays before an event loop.
//! `.ci/run` builds it and `size_echo` in the `min-size` profile for static musl: the
//! difference is what reseau costs, and CI fails past its ceiling (the target is
//! 24 KiB; README "Size and bare metal" has the figures).
//!
//! `cargo build --profile min-size --target x86_64-unknown-linux-musl -p reseau-linux --example size_hello`

use std::net::UdpSocket;

fn main() -> std::io::Result<()> {
    let server = UdpSocket::bind("127.0.0.1:0")?;
    let addr = server.local_addr()?;
    let echo = std::thread::spawn(move || -> std::io::Result<()> {
        let mut buf = [0u8; 64];
        let (n, from) = server.recv_from(&mut buf)?;
        server.send_to(&buf[..n], from)?;
        Ok(())
    });
    let client = UdpSocket::bind("127.0.0.1:0")?;
    client.send_to(b"hello", addr)?;
    let mut buf = [0u8; 64];
    let n = client.recv(&mut buf)?;
    echo.join().expect("the echo thread panicked")?;
    assert_eq!(&buf[..n], b"hello");
    Ok(())
}
