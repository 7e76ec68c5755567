//! [`AsyncFd`]: readiness of a subscribed source as futures ([`AsyncFd::readable`],
//! [`AsyncFd::writable`]), for code running in futures.
//!
//! The subscription's callback runs on the loop thread at each edge the kernel reports;
//! it ORs the readiness into the `AsyncFd`'s stored bits and wakes the waiting futures.
//! The bits stay set until an IO attempt through [`AsyncFd::try_io`] reports
//! `WouldBlock` — and only if no edge arrived since that attempt began (a version number
//! counts the edges): an edge delivered between a callback and a poll, or during an IO
//! attempt, is never lost.

use std::fmt;
use std::future::Future;
use std::io;
use std::os::fd::AsFd;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use crate::error::Error;
use crate::handle::LoopHandle;
use crate::io::{Interest, IoControl, Readiness, SubscribeError, Subscription, UnsubscribeError};
use crate::platform::lock;

#[derive(Default)]
struct IoInner {
    /// Readiness seen and not yet cleared by a `WouldBlock`.
    ready: Readiness,
    /// Edges delivered so far.
    version: u64,
    /// The subscription is gone (the loop destroyed, or the callback dropped).
    gone: bool,
    /// The `AsyncFd` was dropped without unsubscribing: the next edge unsubscribes.
    dropped: bool,
    read: Option<Waker>,
    write: Option<Waker>,
}

type IoState = Arc<Mutex<IoInner>>;

/// What the subscription's callback holds: dropped with the subscription (unsubscribe,
/// destroy), it marks the state gone and wakes the waiters.
struct Notify(IoState);

impl Notify {
    fn deliver(&self, r: Readiness) -> IoControl {
        let (read, write, dropped) = {
            let mut st = lock(&self.0);
            st.ready = st.ready | r;
            st.version += 1;
            let read = if r.is_readable() || r.is_closed() || hangup_or_error(r) {
                st.read.take()
            } else {
                None
            };
            let write = if r.is_writable() || r.is_closed() || r.contains(Readiness::ERROR) {
                st.write.take()
            } else {
                None
            };
            (read, write, st.dropped)
        };
        for w in [read, write].into_iter().flatten() {
            w.wake();
        }
        if dropped {
            IoControl::Unsubscribe
        } else {
            IoControl::Keep
        }
    }
}

impl Drop for Notify {
    fn drop(&mut self) {
        let (read, write) = {
            let mut st = lock(&self.0);
            st.gone = true;
            (st.read.take(), st.write.take())
        };
        for w in [read, write].into_iter().flatten() {
            w.wake();
        }
    }
}

fn hangup_or_error(r: Readiness) -> bool {
    r.contains(Readiness::REMOTE_HANG_UP) || r.contains(Readiness::ERROR)
}

/// Whether `ready` answers a wait for `interest`: the interest itself, or a hang-up or an
/// error (which the IO call will report).
fn answers(ready: Readiness, interest: Interest) -> bool {
    let closed = ready.is_closed() || ready.contains(Readiness::ERROR);
    (interest.contains(Interest::READABLE)
        && (ready.is_readable() || closed || ready.contains(Readiness::REMOTE_HANG_UP)))
        || (interest.contains(Interest::WRITABLE) && (ready.is_writable() || closed))
}

/// `ready` without the readable or writable bit of `interest` (hang-up and error stay).
fn without(ready: Readiness, interest: Interest) -> Readiness {
    let mut kept = Readiness::default();
    for bit in [
        Readiness::READABLE,
        Readiness::WRITABLE,
        Readiness::REMOTE_HANG_UP,
        Readiness::CLOSED,
        Readiness::ERROR,
    ] {
        let cleared = (bit == Readiness::READABLE && interest.contains(Interest::READABLE))
            || (bit == Readiness::WRITABLE && interest.contains(Interest::WRITABLE));
        if ready.contains(bit) && !cleared {
            kept = kept | bit;
        }
    }
    kept
}

fn gone_error() -> io::Error {
    io::Error::new(
        io::ErrorKind::NotConnected,
        "the source's subscription is gone: its loop was destroyed",
    )
}

/// A source subscribed on a loop whose readiness is awaited by futures, as tokio's
/// `AsyncFd`: wait with [`readable`](Self::readable) / [`writable`](Self::writable), do
/// the IO with [`try_io`](Self::try_io), which clears the readiness on `WouldBlock`.
///
/// The source is shared with the subscription (`Arc<S>`), so IO goes through `&S`
/// (`&UnixStream`, `&File`, `&OwnedFd` with rustix…). Dropping the `AsyncFd`
/// unsubscribes (on the loop thread: at once; elsewhere: through a task, or at the next
/// edge if the loop is full); destroying the loop releases the subscription and every
/// waiting future gets a `NotConnected` error.
///
/// ```
/// use std::io::{Read, Write};
/// use std::os::unix::net::UnixStream;
/// use reseau_linux::{EventLoop, EventLoopOptions, Interest};
///
/// let el = EventLoop::new(EventLoopOptions::default())?;
/// el.run()?;
/// let (a, mut b) = UnixStream::pair()?;
/// a.set_nonblocking(true)?;
/// let a = el.async_fd(a, Interest::READABLE)?;
/// let got = el
///     .spawn(async move {
///         let mut buf = [0u8; 5];
///         loop {
///             a.readable().await?;
///             match a.try_io(Interest::READABLE, |mut s| s.read(&mut buf)) {
///                 Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
///                 r => return r.map(|n| buf[..n].to_vec()),
///             }
///         }
///     })?;
/// b.write_all(b"hello")?;
/// assert_eq!(got.join()??, b"hello");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct AsyncFd<S: AsFd + Send + Sync + 'static> {
    handle: LoopHandle,
    sub: Option<Subscription>,
    source: Arc<S>,
    state: IoState,
}

impl<S: AsFd + Send + Sync + 'static> fmt::Debug for AsyncFd<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncFd")
            .field("subscription", &self.sub)
            .field("ready", &lock(&self.state).ready)
            .finish_non_exhaustive()
    }
}

impl<S: AsFd + Send + Sync + 'static> AsyncFd<S> {
    /// The source, for IO (prefer [`try_io`](Self::try_io), which keeps the readiness
    /// right).
    pub fn get_ref(&self) -> &S {
        &self.source
    }

    /// The subscription behind this `AsyncFd`.
    pub fn subscription(&self) -> Option<Subscription> {
        self.sub
    }

    /// Resolves once the source is readable (or hung up, or in error): the readiness seen.
    /// At once if an earlier edge was not cleared yet.
    ///
    /// # Errors
    /// `NotConnected` once the subscription is gone (the loop destroyed).
    pub fn readable(&self) -> ReadyFuture<'_, S> {
        self.ready(Interest::READABLE)
    }

    /// Resolves once the source is writable (or closed, or in error). See
    /// [`readable`](Self::readable).
    pub fn writable(&self) -> ReadyFuture<'_, S> {
        self.ready(Interest::WRITABLE)
    }

    /// Resolves once the source is ready for any of `interest`.
    pub fn ready(&self, interest: Interest) -> ReadyFuture<'_, S> {
        ReadyFuture { fd: self, interest }
    }

    /// Polls for readiness: `Ready` with the readiness seen if it answers `interest`,
    /// otherwise `Pending` with the waker stored (one reader and one writer at a time:
    /// the last poll's waker of each kind is woken).
    pub fn poll_ready(
        &self,
        cx: &mut Context<'_>,
        interest: Interest,
    ) -> Poll<io::Result<Readiness>> {
        let mut st = lock(&self.state);
        if answers(st.ready, interest) {
            return Poll::Ready(Ok(st.ready));
        }
        if st.gone {
            return Poll::Ready(Err(gone_error()));
        }
        let st = &mut *st;
        for (want, slot) in [
            (Interest::READABLE, &mut st.read),
            (Interest::WRITABLE, &mut st.write),
        ] {
            if interest.contains(want) {
                match slot {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    _ => *slot = Some(cx.waker().clone()),
                }
            }
        }
        Poll::Pending
    }

    /// Runs one IO attempt `f` on the source. If it fails with `WouldBlock`, the
    /// readiness of `interest` is cleared — unless an edge arrived while `f` ran — so the
    /// next [`readable`](Self::readable) / [`writable`](Self::writable) waits for a new
    /// edge. Returns what `f` returned.
    ///
    /// # Errors
    /// `f`'s error, as it is.
    pub fn try_io<R>(
        &self,
        interest: Interest,
        f: impl FnOnce(&S) -> io::Result<R>,
    ) -> io::Result<R> {
        let version = lock(&self.state).version;
        let r = f(&self.source);
        if let Err(e) = &r
            && e.kind() == io::ErrorKind::WouldBlock
        {
            let mut st = lock(&self.state);
            if st.version == version {
                st.ready = without(st.ready, interest);
            }
        }
        r
    }
}

impl<S: AsFd + Send + Sync + 'static> Drop for AsyncFd<S> {
    fn drop(&mut self) {
        lock(&self.state).dropped = true;
        let Some(sub) = self.sub.take() else { return };
        if let Err(Error::Unsubscribe(UnsubscribeError::OffLoopThreadWhileRunning)) =
            self.handle.unsubscribe::<Arc<S>>(sub)
        {
            // Unsubscribe on the loop thread; if the loop is full, the next edge
            // unsubscribes (`dropped`), and destroy releases it at the latest.
            let _ = self.handle.schedule_now(move |h, _| {
                let _ = h.unsubscribe::<Arc<S>>(sub);
            });
        }
    }
}

/// The future of [`AsyncFd::readable`], [`AsyncFd::writable`] and [`AsyncFd::ready`]:
/// the readiness seen, or `NotConnected` once the subscription is gone.
#[must_use = "futures do nothing unless polled"]
pub struct ReadyFuture<'a, S: AsFd + Send + Sync + 'static> {
    fd: &'a AsyncFd<S>,
    interest: Interest,
}

impl<S: AsFd + Send + Sync + 'static> fmt::Debug for ReadyFuture<'_, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReadyFuture")
            .field("interest", &self.interest)
            .finish_non_exhaustive()
    }
}

impl<S: AsFd + Send + Sync + 'static> Future for ReadyFuture<'_, S> {
    type Output = io::Result<Readiness>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.fd.poll_ready(cx, self.interest)
    }
}

impl LoopHandle {
    /// Subscribes `source` for `interest` and returns it as an [`AsyncFd`], whose
    /// readiness futures can be awaited from futures (spawned on this loop or anywhere).
    ///
    /// # Errors
    /// As [`subscribe`](Self::subscribe): the source comes back in the error.
    pub fn async_fd<S>(
        &self,
        source: S,
        interest: Interest,
    ) -> Result<AsyncFd<S>, SubscribeError<S>>
    where
        S: AsFd + Send + Sync + 'static,
    {
        let source = Arc::new(source);
        let state: IoState = Arc::default();
        let notify = Notify(state.clone());
        let subscribed = self.subscribe(source.clone(), interest, move |_, _, r| notify.deliver(r));
        match subscribed {
            Ok(sub) => Ok(AsyncFd {
                handle: self.clone(),
                sub: Some(sub),
                source,
                state,
            }),
            Err(e) => {
                drop(source);
                let source = Arc::try_unwrap(e.source).unwrap_or_else(|_| {
                    unreachable!("the refused subscribe held the only other reference")
                });
                Err(SubscribeError {
                    kind: e.kind,
                    source,
                })
            }
        }
    }
}
