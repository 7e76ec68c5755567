//! The echo client: N connections, each on a loop of its own group, each sending one
//! message at a time and timing its complete echo (ping-pong), until a deadline.
//!
//! Every echoed byte is checked against what was sent. A connection reads while it writes
//! (a message larger than the socket buffers would otherwise deadlock against the server's
//! backpressure), and tracks readable / writable pending itself, as edge-triggered
//! readiness requires.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc::{Sender, channel};
use std::time::{Duration, Instant};

use reseau_linux::{
    EventLoopGroup, EventLoopGroupOptions, EventLoopOptions, Interest, IoControl, Readiness,
};

/// How to drive the server.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Concurrent connections.
    pub connections: usize,
    /// How long each connection keeps starting new messages.
    pub duration: Duration,
    /// Bytes per message.
    pub size: usize,
}

/// Latencies in nanoseconds, in log-linear buckets: exact below 32 ns, then 16 buckets per
/// power of two (within 1/16, ~6 %, of the true value). Fixed size, however long the run.
#[derive(Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            counts: vec![0; 61 * 16],
            total: 0,
            max: 0,
        }
    }
}

impl Histogram {
    fn index(v: u64) -> usize {
        if v < 32 {
            return v as usize;
        }
        let e = 63 - v.leading_zeros();
        let sub = (v >> (e - 4)) & 15;
        (e as usize - 3) * 16 + sub as usize
    }

    /// The range of values bucket `i` holds, as (low, high exclusive).
    fn bounds(i: usize) -> (u64, u64) {
        if i < 32 {
            return (i as u64, i as u64 + 1);
        }
        let (e, sub) = (i / 16 + 3, (i % 16) as u64);
        let width = 1u64 << (e - 4);
        ((16 + sub) * width, (17 + sub) * width)
    }

    /// Adds one value.
    pub fn record(&mut self, v: u64) {
        self.counts[Self::index(v)] += 1;
        self.total += 1;
        self.max = self.max.max(v);
    }

    /// Adds every value of `other`.
    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.total += other.total;
        self.max = self.max.max(other.max);
    }

    /// The largest value.
    pub fn max(&self) -> u64 {
        self.max
    }

    /// The value at quantile `q` (0..=1): the middle of its bucket, at most the maximum.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                let (lo, hi) = Self::bounds(i);
                return (lo + (hi - lo) / 2).min(self.max);
            }
        }
        self.max
    }
}

/// What the run measured.
pub struct Report {
    /// Connections that were driven.
    pub connections: usize,
    /// Bytes per message.
    pub size: usize,
    /// From the first connection's start to the last connection's end.
    pub elapsed: Duration,
    /// Messages sent and echoed in full.
    pub messages: u64,
    /// Bytes echoed in full.
    pub bytes: u64,
    /// Each message's round trip, in nanoseconds.
    pub latency: Histogram,
    /// What went wrong, per failed connection.
    pub errors: Vec<String>,
}

fn micros(ns: u64) -> String {
    if ns >= 1_000_000 {
        format!("{:.2} ms", ns as f64 / 1e6)
    } else {
        format!("{:.1} µs", ns as f64 / 1e3)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        writeln!(
            f,
            "{} connections, {}-byte messages, {:.2} s",
            self.connections, self.size, secs
        )?;
        writeln!(
            f,
            "  throughput: {} messages ({:.0}/s), {:.1} MiB echoed ({:.1} MiB/s)",
            self.messages,
            self.messages as f64 / secs,
            self.bytes as f64 / (1 << 20) as f64,
            self.bytes as f64 / (1 << 20) as f64 / secs
        )?;
        let l = &self.latency;
        writeln!(
            f,
            "  latency:    p50 {}  p90 {}  p99 {}  max {}",
            micros(l.quantile(0.50)),
            micros(l.quantile(0.90)),
            micros(l.quantile(0.99)),
            micros(l.max())
        )?;
        write!(f, "  errors:     {}", self.errors.len())?;
        for e in self.errors.iter().take(5) {
            write!(f, "\n    {e}")?;
        }
        Ok(())
    }
}

struct Outcome {
    messages: u64,
    bytes: u64,
    latency: Histogram,
    error: Option<String>,
}

/// One connection's ping-pong.
struct Driver {
    id: usize,
    msg: Vec<u8>,
    scratch: Vec<u8>,
    seq: u64,
    sent: usize,
    got: usize,
    started: Instant,
    readable: bool,
    writable: bool,
    deadline: Instant,
    messages: u64,
    bytes: u64,
    latency: Histogram,
    done: Option<Sender<Outcome>>,
}

impl Driver {
    fn fill(&mut self) {
        let salt = (self.id as u64).wrapping_mul(31).wrapping_add(self.seq) as u8;
        for (i, b) in self.msg.iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(7).wrapping_add(salt);
        }
        self.sent = 0;
        self.got = 0;
        self.started = Instant::now();
    }

    fn finish(&mut self, error: Option<String>) -> IoControl {
        if let Some(tx) = self.done.take() {
            let _ = tx.send(Outcome {
                messages: self.messages,
                bytes: self.bytes,
                latency: std::mem::take(&mut self.latency),
                error,
            });
        }
        IoControl::Unsubscribe
    }

    fn on_ready(&mut self, stream: &mut TcpStream, r: Readiness) -> IoControl {
        let trouble = r.contains(Readiness::ERROR) || r.is_closed();
        if r.is_readable() || r.contains(Readiness::REMOTE_HANG_UP) || trouble {
            self.readable = true;
        }
        if r.is_writable() || trouble {
            self.writable = true;
        }
        match self.pump(stream) {
            Ok(true) => IoControl::Keep,
            Ok(false) => self.finish(None),
            Err(e) => {
                let e = format!("connection {}: {e}", self.id);
                self.finish(Some(e))
            }
        }
    }

    /// Moves bytes until nothing can move; false once the deadline has passed at a message
    /// boundary.
    fn pump(&mut self, mut s: &TcpStream) -> io::Result<bool> {
        loop {
            let mut progress = false;
            while self.writable && self.sent < self.msg.len() {
                match s.write(&self.msg[self.sent..]) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(n) => {
                        self.sent += n;
                        progress = true;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.writable = false,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            while self.readable && self.got < self.sent {
                let want = (self.msg.len() - self.got).min(self.scratch.len());
                match s.read(&mut self.scratch[..want]) {
                    Ok(0) => {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "the server closed the connection mid-message",
                        ));
                    }
                    Ok(n) => {
                        if self.scratch[..n] != self.msg[self.got..self.got + n] {
                            return Err(io::Error::other(format!(
                                "echo mismatch in message {} at byte {}",
                                self.seq, self.got
                            )));
                        }
                        self.got += n;
                        progress = true;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.readable = false,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            if self.got == self.msg.len() {
                let rtt = self.started.elapsed();
                self.latency.record(rtt.as_nanos() as u64);
                self.messages += 1;
                self.bytes += self.msg.len() as u64;
                if Instant::now() >= self.deadline {
                    return Ok(false);
                }
                self.seq += 1;
                self.fill();
                progress = true;
            }
            if !progress {
                return Ok(true);
            }
        }
    }
}

/// Connects `options.connections` times to `addr` and drives every connection until
/// `options.duration` has passed; then reports.
///
/// # Errors
/// A connection could not be made, or the client's group could not start. Failures of
/// established connections are in [`Report::errors`].
pub fn run(addr: SocketAddr, options: &ClientOptions) -> io::Result<Report> {
    let n = options.connections.max(1);
    let cpus = std::thread::available_parallelism().map_or(1, |c| c.get());
    let group = EventLoopGroup::new(EventLoopGroupOptions {
        loops: n.min(cpus),
        loop_options: EventLoopOptions {
            thread_name: "echo-client".into(),
            ..EventLoopOptions::default()
        },
        ..EventLoopGroupOptions::default()
    })
    .map_err(io::Error::other)?;
    let mut streams = Vec::with_capacity(n);
    for _ in 0..n {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        s.set_nodelay(true)?;
        s.set_nonblocking(true)?;
        streams.push(s);
    }
    let (tx, rx) = channel();
    let start = Instant::now();
    let deadline = start + options.duration;
    let size = options.size.max(1);
    let mut errors = Vec::new();
    for (id, stream) in streams.into_iter().enumerate() {
        let mut d = Driver {
            id,
            msg: vec![0; size],
            scratch: vec![0; size.min(64 * 1024)],
            seq: 0,
            sent: 0,
            got: 0,
            started: start,
            readable: false,
            writable: true,
            deadline,
            messages: 0,
            bytes: 0,
            latency: Histogram::default(),
            done: Some(tx.clone()),
        };
        d.fill();
        let subscribed = group.next_loop().subscribe(
            stream,
            Interest::READABLE | Interest::WRITABLE,
            move |_, s, r| d.on_ready(s, r),
        );
        if let Err(e) = subscribed {
            errors.push(format!("connection {id}: {e}"));
        }
    }
    drop(tx);
    let mut report = Report {
        connections: n,
        size,
        elapsed: Duration::ZERO,
        messages: 0,
        bytes: 0,
        latency: Histogram::default(),
        errors,
    };
    // A failure guard: a connection whose echo never completes would wait forever.
    let guard = deadline + Duration::from_secs(10);
    let expected = n - report.errors.len();
    let mut finished = 0;
    while finished < expected {
        let left = guard.saturating_duration_since(Instant::now());
        let Ok(o) = rx.recv_timeout(left) else {
            let missing = expected - finished;
            report.errors.push(format!(
                "{missing} connections did not finish within 10 s of the deadline"
            ));
            break;
        };
        finished += 1;
        report.messages += o.messages;
        report.bytes += o.bytes;
        report.latency.merge(&o.latency);
        report.errors.extend(o.error);
    }
    report.elapsed = start.elapsed();
    group.shutdown(None).map_err(io::Error::other)?;
    Ok(report)
}
