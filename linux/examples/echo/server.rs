//! The echo server: a listener on loop 0 of an [`EventLoopGroup`], every accepted
//! connection handed to [`EventLoopGroup::next_loop`] and served there.
//!
//! Each connection echoes through a bounded ring buffer (64 KiB by default), with
//! backpressure both ways: it stops reading while the ring is full and resumes when writes
//! drain it, so a client that sends without reading costs the server one ring and a stalled
//! socket, never unbounded memory, and never blocks the loop.
//!
//! Readiness is edge-triggered: an event says "something changed", once. The connection
//! therefore keeps its own two flags — *readable pending* (no `EAGAIN` read since the last
//! readable edge) and *writable pending* (no `EAGAIN` write since the last writable edge) —
//! and moves bytes until neither can make progress. To stay fair to the other connections
//! of its loop it moves at most a budget of bytes per turn; when the budget runs out with
//! work left, it schedules a continuation task on its loop (which runs after this tick's
//! other IO callbacks) instead of waiting for an edge that would never come.
//!
//! A half-close (the peer's FIN) is honoured: what was received is echoed, then the
//! server shuts its write side down and closes. A reset or any other socket error closes
//! the connection; the others are untouched.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use reseau_linux::{
    EventLoopGroup, EventLoopGroupOptions, EventLoopOptions, Interest, IoControl, LoopHandle,
    Readiness, TaskStatus,
};

/// How to run the server.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// How many loops (0: one per CPU).
    pub loops: usize,
    /// Each connection's ring buffer, in bytes (at least 1).
    pub buffer: usize,
    /// The most bytes one connection reads per turn before it yields to the other
    /// connections of its loop.
    pub budget: usize,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            loops: 0,
            buffer: 64 * 1024,
            budget: 256 * 1024,
        }
    }
}

/// What the server has done so far.
#[derive(Debug, Default)]
pub struct Counters {
    /// Connections accepted.
    pub accepted: AtomicU64,
    /// Connections closed by the server: after a half-close was echoed, or on an error.
    pub closed: AtomicU64,
    /// Of those, closed on a socket error (a reset, say).
    pub errors: AtomicU64,
    /// Bytes echoed (written back), over all connections.
    pub bytes: AtomicU64,
}

/// A running echo server.
pub struct Server {
    group: Arc<EventLoopGroup>,
    addr: SocketAddr,
    counters: Arc<Counters>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Server {
    /// Binds `addr`, starts the group and begins accepting.
    ///
    /// # Errors
    /// Binding, the group, or subscribing the listener failed.
    pub fn start(addr: SocketAddr, options: &ServerOptions) -> io::Result<Server> {
        let listener = TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let group = EventLoopGroup::new(EventLoopGroupOptions {
            loops: options.loops,
            loop_options: EventLoopOptions {
                thread_name: "echo".into(),
                ..EventLoopOptions::default()
            },
            ..EventLoopGroupOptions::default()
        })
        .map_err(io::Error::other)?;
        let group = Arc::new(group);
        let counters = Arc::new(Counters::default());
        let acceptor = Acceptor {
            listener: Arc::new(listener),
            group: Arc::downgrade(&group),
            counters: counters.clone(),
            buffer: options.buffer.max(1),
            budget: options.budget.max(1),
        };
        let first = group.loop_at(0).expect("a group has a loop");
        let a = acceptor.clone();
        first
            .subscribe(
                acceptor.listener.clone(),
                Interest::READABLE,
                move |h, _, _| {
                    a.accept_all(h);
                    IoControl::Keep
                },
            )
            .map_err(|e| io::Error::other(e.to_string()))?;
        Ok(Server {
            group,
            addr,
            counters,
        })
    }

    /// The address the server listens on (with the port the kernel chose for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// What the server has done so far.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// The group the server runs on.
    pub fn group(&self) -> &EventLoopGroup {
        &self.group
    }

    /// Shuts the group down: every loop is destroyed, which closes the listener and every
    /// connection still open. Blocks until done (call it off the server's loops).
    ///
    /// # Errors
    /// A loop's destroy failed.
    pub fn shutdown(self) -> Result<(), reseau_linux::Error> {
        self.group.shutdown(None).map(|_| ())
    }
}

/// The listener's side: accepts until `EAGAIN` and hands each connection to a loop.
#[derive(Clone)]
struct Acceptor {
    listener: Arc<TcpListener>,
    // Weak: the group owns the loops that own this acceptor.
    group: Weak<EventLoopGroup>,
    counters: Arc<Counters>,
    buffer: usize,
    budget: usize,
}

impl Acceptor {
    fn accept_all(&self, h: &LoopHandle) {
        let Some(group) = self.group.upgrade() else {
            return;
        };
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => self.hand_off(&group, stream),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // The connection died in the backlog: take the next one.
                Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => {}
                Err(e) => {
                    // EMFILE, ENFILE, ENOBUFS…: the pending connections stay in the backlog,
                    // and edge-triggered readiness will not tell us again until another one
                    // arrives. Retry in 100 ms.
                    eprintln!("echo: accept failed ({e}); retrying in 100 ms");
                    let again = self.clone();
                    let _ = h.schedule_at(h.now() + 100_000_000, move |h, st| {
                        if st == TaskStatus::RunReady {
                            again.accept_all(h);
                        }
                    });
                    return;
                }
            }
        }
    }

    fn hand_off(&self, group: &EventLoopGroup, stream: TcpStream) {
        self.counters.accepted.fetch_add(1, Ordering::Relaxed);
        let ready = stream
            .set_nonblocking(true)
            .and_then(|()| stream.set_nodelay(true));
        if let Err(e) = ready {
            eprintln!("echo: configuring a connection failed: {e}");
            self.counters.closed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let (counters, buffer, budget) = (self.counters.clone(), self.buffer, self.budget);
        // Subscribe on the chosen loop's own thread, so the subscription handle is stored
        // before its first callback can run. A canceled task (the group is shutting down)
        // drops, and so closes, the connection.
        let scheduled = group.next_loop().schedule_now(move |h, st| {
            if st == TaskStatus::RunReady {
                Conn::start(h, stream, counters, buffer, budget);
            }
        });
        if scheduled.is_err() {
            self.counters.closed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A fixed-capacity byte ring.
struct Ring {
    buf: Box<[u8]>,
    start: usize,
    len: usize,
}

impl Ring {
    fn new(capacity: usize) -> Self {
        Self {
            buf: vec![0; capacity].into_boxed_slice(),
            start: 0,
            len: 0,
        }
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn is_full(&self) -> bool {
        self.len == self.buf.len()
    }

    /// The oldest contiguous run of buffered bytes.
    fn data(&self) -> &[u8] {
        let end = (self.start + self.len).min(self.buf.len());
        &self.buf[self.start..end]
    }

    fn consume(&mut self, n: usize) {
        self.start = (self.start + n) % self.buf.len();
        self.len -= n;
        if self.len == 0 {
            self.start = 0;
        }
    }

    /// The first contiguous run of free space after the buffered bytes.
    fn space(&mut self) -> &mut [u8] {
        let cap = self.buf.len();
        let end = self.start + self.len;
        if end < cap {
            &mut self.buf[end..cap]
        } else {
            let start = self.start;
            &mut self.buf[end - cap..start]
        }
    }

    fn fill(&mut self, n: usize) {
        self.len += n;
    }
}

/// What a turn of [`Conn::pump`] left.
enum Pump {
    /// Nothing more can move until an edge: wait for the next event.
    Wait,
    /// The budget ran out with bytes still movable: continue in a task.
    More,
    /// The peer half-closed and everything was echoed: close.
    Done,
}

/// One connection's state, shared by its IO callback and its continuation tasks (both on
/// its loop's thread, so the lock is never contended).
struct Conn {
    ring: Ring,
    /// A readable edge (or hang-up, or error) not yet read to `EAGAIN`.
    readable: bool,
    /// No `EAGAIN` write since the last writable edge.
    writable: bool,
    /// The peer shut its write side down (read returned 0).
    eof: bool,
    closed: bool,
    continuation: bool,
    budget: usize,
    sub: Option<reseau_linux::Subscription>,
    counters: Arc<Counters>,
}

type Shared = Arc<Mutex<Conn>>;

impl Conn {
    fn start(
        h: &LoopHandle,
        stream: TcpStream,
        counters: Arc<Counters>,
        buffer: usize,
        budget: usize,
    ) {
        let conn: Shared = Arc::new(Mutex::new(Conn {
            ring: Ring::new(buffer),
            readable: false,
            // Try at once; an `EAGAIN` clears it.
            writable: true,
            eof: false,
            closed: false,
            continuation: false,
            budget,
            sub: None,
            counters: counters.clone(),
        }));
        let c = conn.clone();
        let subscribed = h.subscribe(
            Arc::new(stream),
            Interest::READABLE | Interest::WRITABLE,
            move |h, stream, readiness| Conn::on_ready(h, &c, stream, readiness),
        );
        match subscribed {
            Ok(sub) => lock(&conn).sub = Some(sub),
            Err(e) => {
                eprintln!("echo: subscribing a connection failed: {e}");
                counters.closed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn on_ready(
        h: &LoopHandle,
        conn: &Shared,
        stream: &mut Arc<TcpStream>,
        readiness: Readiness,
    ) -> IoControl {
        let mut c = lock(conn);
        if c.closed {
            return IoControl::Unsubscribe;
        }
        let trouble = readiness.contains(Readiness::ERROR) || readiness.is_closed();
        if readiness.is_readable() || readiness.contains(Readiness::REMOTE_HANG_UP) || trouble {
            c.readable = true;
        }
        if readiness.is_writable() || trouble {
            c.writable = true;
        }
        if c.turn(h, conn, stream) {
            IoControl::Keep
        } else {
            IoControl::Unsubscribe
        }
    }

    /// Runs one turn; false once the connection is finished (the caller closes it).
    fn turn(&mut self, h: &LoopHandle, conn: &Shared, stream: &Arc<TcpStream>) -> bool {
        let mut pumped = self.pump(stream, self.budget);
        if matches!(pumped, Ok(Pump::More)) && !self.continuation {
            let (conn, stream2) = (conn.clone(), stream.clone());
            let scheduled = h.schedule_now(move |h, st| Conn::resume(h, &conn, &stream2, st));
            match scheduled {
                Ok(_) => self.continuation = true,
                // No room for a task: finish the work now, unfairly but correctly.
                Err(_) => pumped = self.pump(stream, usize::MAX),
            }
        }
        match pumped {
            Ok(Pump::Wait | Pump::More) => true,
            Ok(Pump::Done) => {
                // Everything the peer sent is echoed: send our FIN, then close.
                let _ = stream.shutdown(Shutdown::Write);
                self.finish(false);
                false
            }
            Err(_) => {
                self.finish(true);
                false
            }
        }
    }

    fn finish(&mut self, error: bool) {
        self.closed = true;
        self.counters.closed.fetch_add(1, Ordering::Relaxed);
        if error {
            self.counters.errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The continuation task: another turn, then close the connection if it is finished.
    fn resume(h: &LoopHandle, conn: &Shared, stream: &Arc<TcpStream>, st: TaskStatus) {
        let mut c = lock(conn);
        c.continuation = false;
        if st == TaskStatus::Canceled || c.closed {
            return;
        }
        if !c.turn(h, conn, stream) {
            let sub = c.sub;
            drop(c);
            if let Some(sub) = sub {
                // Hands the source back; dropping it (and this task's clone) closes it.
                let _ = h.unsubscribe::<Arc<TcpStream>>(sub);
            }
        }
    }

    /// Moves bytes socket → ring → socket until nothing can move, or `budget` bytes were
    /// read this turn.
    fn pump(&mut self, stream: &Arc<TcpStream>, budget: usize) -> io::Result<Pump> {
        let mut s: &TcpStream = stream;
        let mut read = 0usize;
        loop {
            let mut progress = false;
            while self.writable && !self.ring.is_empty() {
                match s.write(self.ring.data()) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(n) => {
                        self.ring.consume(n);
                        self.counters.bytes.fetch_add(n as u64, Ordering::Relaxed);
                        progress = true;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.writable = false,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            while self.readable && !self.eof && !self.ring.is_full() {
                if read >= budget {
                    return Ok(Pump::More);
                }
                match s.read(self.ring.space()) {
                    Ok(0) => self.eof = true,
                    Ok(n) => {
                        self.ring.fill(n);
                        read += n;
                        progress = true;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.readable = false,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            if !progress {
                break;
            }
        }
        if self.eof && self.ring.is_empty() {
            return Ok(Pump::Done);
        }
        Ok(Pump::Wait)
    }
}
