//! A TCP echo server over an [`EventLoopGroup`](reseau_linux::EventLoopGroup), and a client
//! that measures it.
//!
//! ```sh
//! cargo run --release -p reseau-linux --example echo -- server 127.0.0.1:7878
//! cargo run --release -p reseau-linux --example echo -- client 127.0.0.1:7878 --connections 8 --seconds 3
//! ```
//!
//! The server accepts on one loop and spreads the connections over the group with
//! `next_loop`; it echoes every byte in order through a bounded per-connection buffer
//! (see `server.rs`), and runs until SIGINT or SIGTERM, then shuts the group down. The
//! signals are blocked in every thread before the group starts and read on the group's
//! first loop (`LoopHandle::subscribe_signals`), so no signal handler is needed.
//!
//! The client opens N connections, ping-pongs messages (1 KiB unless `--size B`) on each for
//! S seconds, checks every echoed byte, and prints the throughput and the round-trip latency
//! percentiles.

mod client;
mod server;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::mpsc::channel;
use std::time::Duration;

use reseau_linux::SignalSet;

const USAGE: &str = "usage:
  echo server ADDR                                         (e.g. 127.0.0.1:7878; until Ctrl-C)
  echo client ADDR --connections N --seconds S [--size B]";

enum Command {
    Server(SocketAddr),
    Client(SocketAddr, client::ClientOptions),
}

fn parse(args: &[String]) -> Result<Command, String> {
    let addr = |s: Option<&String>| -> Result<SocketAddr, String> {
        let s = s.ok_or("missing ADDR")?;
        s.parse().map_err(|e| format!("bad ADDR {s:?}: {e}"))
    };
    match args.first().map(String::as_str) {
        Some("server") if args.len() == 2 => Ok(Command::Server(addr(args.get(1))?)),
        Some("server") => Err("server takes exactly one argument, ADDR".into()),
        Some("client") => {
            let a = addr(args.get(1))?;
            let mut options = client::ClientOptions {
                connections: 0,
                duration: Duration::ZERO,
                size: 1024,
            };
            let mut seen = (false, false);
            let mut rest = args[2..].iter();
            while let Some(flag) = rest.next() {
                let value = rest.next().ok_or(format!("{flag} needs a value"))?;
                let number = |v: &str| -> Result<u64, String> {
                    v.parse()
                        .map_err(|e| format!("bad value for {flag}: {v:?}: {e}"))
                };
                match flag.as_str() {
                    "--connections" => {
                        options.connections = number(value)?.max(1) as usize;
                        seen.0 = true;
                    }
                    "--seconds" => {
                        let s: f64 = value
                            .parse()
                            .map_err(|e| format!("bad value for --seconds: {value:?}: {e}"))?;
                        if !(s.is_finite() && s > 0.0) {
                            return Err("--seconds must be positive".into());
                        }
                        options.duration = Duration::from_secs_f64(s);
                        seen.1 = true;
                    }
                    "--size" => options.size = number(value)?.clamp(1, 64 << 20) as usize,
                    other => return Err(format!("unknown option {other}")),
                }
            }
            if seen != (true, true) {
                return Err("client needs --connections N and --seconds S".into());
            }
            Ok(Command::Client(a, options))
        }
        _ => Err("the first argument is server or client".into()),
    }
}

fn serve(addr: SocketAddr) -> Result<(), Box<dyn std::error::Error>> {
    // Before the group exists, so its threads inherit the blocked mask.
    let set = SignalSet::new().with(libc::SIGINT)?.with(libc::SIGTERM)?;
    reseau_linux::signals::block_on_this_thread(set)?;
    let server = server::Server::start(addr, &server::ServerOptions::default())?;
    let (tx, rx) = channel();
    let _signals = server
        .group()
        .loop_at(0)
        .expect("a group has a loop")
        .subscribe_signals(set, move |_, info| {
            let _ = tx.send(info.signo);
        })?;
    println!(
        "echo server on {} ({} loops); Ctrl-C to stop",
        server.local_addr(),
        server.group().len()
    );
    let signo = rx.recv()?;
    let name = if signo == libc::SIGINT {
        "SIGINT"
    } else {
        "SIGTERM"
    };
    println!("{name}: shutting down");
    let c = server.counters();
    let (accepted, closed, errors, bytes) = (
        c.accepted.load(std::sync::atomic::Ordering::Relaxed),
        c.closed.load(std::sync::atomic::Ordering::Relaxed),
        c.errors.load(std::sync::atomic::Ordering::Relaxed),
        c.bytes.load(std::sync::atomic::Ordering::Relaxed),
    );
    server.shutdown()?;
    println!(
        "done: {accepted} connections accepted, {closed} closed by the server ({errors} on errors), \
         {bytes} bytes echoed"
    );
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command = match parse(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("echo: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match command {
        Command::Server(addr) => match serve(addr) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("echo server: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Client(addr, options) => match client::run(addr, &options) {
            Ok(report) => {
                println!("{report}");
                if report.errors.is_empty() {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                }
            }
            Err(e) => {
                eprintln!("echo client: {e}");
                ExitCode::FAILURE
            }
        },
    }
}
