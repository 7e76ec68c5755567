//! The echo example's server (and client), driven over loopback: every byte echoed in order
//! for messages of 1 B to 1 MiB on concurrent connections; half-close; a resetting and a
//! stalling client do not stop the others; a clean shutdown.
//!
//! The server and client code is the example's own, included by path.

#[allow(dead_code)]
#[path = "../../linux/examples/echo/client.rs"]
mod client;
#[allow(dead_code)]
#[path = "../../linux/examples/echo/server.rs"]
mod server;

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::Mutex;
use std::sync::mpsc::channel;
use std::time::Duration;

use reseau_linux::ScheduleErrorKind;
use reseau_tests::util::{GUARD, open_fds, recv};
use server::{Server, ServerOptions};

/// One test at a time: they move megabytes over loopback on a small machine, and the
/// shutdown test checks the process's descriptors.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

fn start(options: ServerOptions) -> Server {
    Server::start("127.0.0.1:0".parse().unwrap(), &options).unwrap()
}

fn two_loops() -> ServerOptions {
    ServerOptions {
        loops: 2,
        ..ServerOptions::default()
    }
}

/// A connection with the failure guard as its read and write timeouts.
fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(GUARD)).unwrap();
    s.set_write_timeout(Some(GUARD)).unwrap();
    s
}

/// `len` bytes of a pattern that differs per `salt` and does not repeat every 256 bytes.
fn pattern(salt: u64, len: usize) -> Vec<u8> {
    let mut x = salt.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Sends `data` on a new connection (from a writer thread, while this thread reads), then
/// half-closes; returns everything read until the server's EOF.
fn echo(addr: SocketAddr, data: Vec<u8>) -> Vec<u8> {
    let s = connect(addr);
    let mut w = s.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        w.write_all(&data).unwrap();
        w.shutdown(Shutdown::Write).unwrap();
    });
    let mut got = Vec::new();
    (&s).read_to_end(&mut got)
        .expect("read until the server's EOF (failure guard: 20 s)");
    writer.join().unwrap();
    got
}

/// 1 B to 1 MiB, and the sizes around the buffer and segment boundaries.
const SIZES: &[usize] = &[
    1,
    2,
    3,
    7,
    64,
    1000,
    1460,
    4096,
    65535,
    65536,
    65537,
    100_000,
    1 << 20,
];

#[test]
fn echo_every_byte_in_order_for_sizes_1b_to_1mib_on_concurrent_connections() {
    let _serial = serial();
    let server = start(two_loops());
    let addr = server.local_addr();
    let clients: Vec<_> = (0..4u64)
        .map(|c| {
            std::thread::spawn(move || {
                let mut sent = Vec::new();
                for (i, &size) in SIZES.iter().enumerate() {
                    sent.extend(pattern(c * 100 + i as u64, size));
                }
                let got = echo(addr, sent.clone());
                assert_eq!(got.len(), sent.len(), "connection {c}: length");
                assert!(got == sent, "connection {c}: bytes differ");
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    server.shutdown().unwrap();
}

#[test]
fn echo_each_message_round_trips_before_the_next_for_sizes_1b_to_1mib() {
    // Ping-pong on one connection: each message is echoed in full before the next is sent,
    // so every size meets an idle connection (no coalescing with the previous message).
    let _serial = serial();
    let server = start(two_loops());
    let s = connect(server.local_addr());
    let mut w = s.try_clone().unwrap();
    for (i, &size) in SIZES.iter().enumerate() {
        let msg = pattern(1000 + i as u64, size);
        let sent = msg.clone();
        let writer = std::thread::spawn(move || w.write_all(&sent).map(|()| w));
        let mut got = vec![0; size];
        (&s).read_exact(&mut got).unwrap();
        w = writer.join().unwrap().unwrap();
        assert!(got == msg, "message of {size} bytes differs");
    }
    server.shutdown().unwrap();
}

#[test]
fn echo_with_a_one_digit_buffer_still_echoes_every_byte() {
    // A 7-byte ring and a 16-byte budget: constant backpressure, ring wrap-around, and a
    // continuation task every few reads.
    let _serial = serial();
    let server = start(ServerOptions {
        loops: 2,
        buffer: 7,
        budget: 16,
    });
    let addr = server.local_addr();
    let clients: Vec<_> = (0..2u64)
        .map(|c| {
            std::thread::spawn(move || {
                let sent = pattern(7 + c, 100_000);
                assert!(echo(addr, sent.clone()) == sent, "connection {c}");
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    server.shutdown().unwrap();
}

#[test]
fn echo_half_close_gets_all_bytes_then_eof() {
    let _serial = serial();
    let server = start(two_loops());
    // Everything sent, then the write side shut, before reading a single byte.
    let s = connect(server.local_addr());
    let sent = pattern(42, 40_000);
    (&s).write_all(&sent).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let mut got = Vec::new();
    (&s).read_to_end(&mut got).unwrap();
    assert!(
        got == sent,
        "{} of {} bytes, or different",
        got.len(),
        sent.len()
    );
    // A half-close with nothing sent: EOF at once.
    let s = connect(server.local_addr());
    s.shutdown(Shutdown::Write).unwrap();
    let mut got = Vec::new();
    (&s).read_to_end(&mut got).unwrap();
    assert!(got.is_empty());
    server.shutdown().unwrap();
}

/// Closes `s` with `SO_LINGER` 0: the kernel sends a reset instead of a FIN.
fn reset(s: TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: `s` is an open socket for the duration of the call; `linger` is a valid
    // `struct linger` the kernel only reads, and the length passed is its size.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(
        rc,
        0,
        "setsockopt(SO_LINGER): {}",
        io::Error::last_os_error()
    );
    drop(s);
}

#[test]
fn echo_survives_a_resetting_client_and_keeps_serving() {
    let _serial = serial();
    let server = start(ServerOptions {
        loops: 1,
        ..ServerOptions::default()
    });
    let addr = server.local_addr();
    // Resets right after connecting, mid-echo with bytes still unread on both sides, and
    // after a complete exchange.
    reset(connect(addr));
    let r = connect(addr);
    (&r).write_all(&pattern(1, 60_000)).unwrap();
    reset(r);
    let r = connect(addr);
    (&r).write_all(b"ping").unwrap();
    let mut four = [0; 4];
    (&r).read_exact(&mut four).unwrap();
    assert_eq!(&four, b"ping");
    reset(r);
    // The one loop goes on serving.
    let sent = pattern(2, 300_000);
    assert!(echo(addr, sent.clone()) == sent);
    server.shutdown().unwrap();
}

#[test]
fn echo_survives_a_stalled_client_and_keeps_serving() {
    let _serial = serial();
    let server = start(ServerOptions {
        loops: 1,
        ..ServerOptions::default()
    });
    let addr = server.local_addr();
    // The staller sends 4 MiB without reading: the server fills its ring and the socket
    // buffers both ways, then stops reading it.
    let stall = connect(addr);
    let mut w = stall.try_clone().unwrap();
    let big = pattern(3, 4 << 20);
    let expected = big.clone();
    let (progress_tx, progress_rx) = channel();
    let writer = std::thread::spawn(move || {
        for chunk in big.chunks(64 * 1024) {
            w.write_all(chunk).unwrap();
            let _ = progress_tx.send(chunk.len());
        }
        w.shutdown(Shutdown::Write).unwrap();
    });
    let mut written = 0;
    while written < 256 * 1024 {
        written += recv(&progress_rx);
    }
    // Meanwhile, on the same (only) loop, another client is served in full.
    for i in 0..3 {
        let sent = pattern(10 + i, 200_000);
        assert!(
            echo(addr, sent.clone()) == sent,
            "client {i} beside the staller"
        );
    }
    // The staller reads at last and gets all of its 4 MiB, in order.
    let mut got = Vec::with_capacity(expected.len());
    (&stall).read_to_end(&mut got).unwrap();
    writer.join().unwrap();
    assert_eq!(got.len(), expected.len());
    assert!(got == expected, "the staller's bytes differ");
    server.shutdown().unwrap();
}

#[test]
fn echo_client_drives_connections_for_a_bounded_time() {
    let _serial = serial();
    let server = start(two_loops());
    let report = client::run(
        server.local_addr(),
        &client::ClientOptions {
            connections: 4,
            duration: Duration::from_millis(300),
            size: 1000,
        },
    )
    .unwrap();
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert!(report.messages >= 4, "{report}");
    assert_eq!(report.bytes, report.messages * 1000);
    assert!(report.latency.quantile(0.5) <= report.latency.max());
    assert!(report.latency.quantile(0.99) <= report.latency.max());
    assert!(report.latency.max() > 0);
    let text = report.to_string();
    assert!(text.contains("p50") && text.contains("p99"), "{text}");
    server.shutdown().unwrap();
}

#[test]
fn echo_server_shuts_down_cleanly() {
    let _serial = serial();
    let before = open_fds();
    let server = start(two_loops());
    let addr = server.local_addr();
    // One idle connection that has exchanged bytes, one with bytes in flight.
    let idle = connect(addr);
    (&idle).write_all(b"hello").unwrap();
    let mut five = [0; 5];
    (&idle).read_exact(&mut five).unwrap();
    assert_eq!(&five, b"hello");
    let busy = connect(addr);
    (&busy).write_all(&pattern(5, 100_000)).unwrap();
    let handles: Vec<_> = (0..server.group().len())
        .map(|i| server.group().loop_at(i).unwrap())
        .collect();
    server.shutdown().unwrap();
    // Every loop is destroyed; the listener and the connections are closed.
    for h in &handles {
        assert!(matches!(
            h.schedule_now(|_, _| ()).map_err(|e| e.kind),
            Err(ScheduleErrorKind::Destroyed(_))
        ));
    }
    let mut rest = Vec::new();
    match (&idle).read_to_end(&mut rest) {
        Ok(_) => assert!(rest.is_empty()),
        Err(e) => assert_eq!(e.kind(), io::ErrorKind::ConnectionReset),
    }
    let mut sink = Vec::new();
    // The busy one sees its echo cut short: an EOF or a reset, never a hang.
    if let Err(e) = (&busy).read_to_end(&mut sink) {
        assert_eq!(e.kind(), io::ErrorKind::ConnectionReset);
    }
    assert_eq!(
        TcpStream::connect(addr).unwrap_err().kind(),
        io::ErrorKind::ConnectionRefused
    );
    drop((idle, busy));
    let after = open_fds();
    assert!(
        after.is_subset(&before),
        "leaked: {:?}",
        after.difference(&before)
    );
}
