//! `LoopHandle::modify`: changing a subscription's interest with `EPOLL_CTL_MOD`, from
//! another thread, from the subscription's own callback, and when the kernel refuses it.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, OnceLock};

use reseau_linux::{
    Errno, EventLoop, EventLoopOptions, Interest, IoControl, LoopHandle, ModifyError, Readiness,
    SysError,
};
use reseau_tests::seccomp::{self, Rule};
use reseau_tests::util::{is_child, recv, run_in_child};

const MARKER: &str = "RESEAU_MODIFY_CHILD";

fn running() -> EventLoop {
    let el = EventLoop::new(EventLoopOptions::default()).unwrap();
    el.run().unwrap();
    el
}

/// A connected, non-blocking socket pair: (subscribed end, peer).
fn pair() -> (UnixStream, UnixStream) {
    let (a, b) = UnixStream::pair().unwrap();
    a.set_nonblocking(true).unwrap();
    (a, b)
}

/// Lets the loop run `n` full ticks (one wakeup and one tick per round trip).
fn ticks(h: &LoopHandle, n: usize) {
    for _ in 0..n {
        let (tx, rx) = channel();
        h.schedule_now(move |_, _| tx.send(()).unwrap()).unwrap();
        recv(&rx);
    }
}

/// Reads everything available from a non-blocking stream.
fn drain(s: &mut UnixStream) {
    let mut buf = [0u8; 256];
    while let Ok(n) = std::io::Read::read(s, &mut buf) {
        if n == 0 {
            break;
        }
    }
}

fn reporter(
    tx: Sender<Readiness>,
) -> impl FnMut(&LoopHandle, &mut UnixStream, Readiness) -> IoControl + Send + 'static {
    move |_, s, r| {
        drain(s);
        let _ = tx.send(r);
        IoControl::Keep
    }
}

fn nothing_more(rx: &Receiver<Readiness>) {
    assert_eq!(rx.try_recv().ok(), None, "an unexpected event");
}

#[test]
fn readable_to_writable_switches_which_events_fire() {
    let el = running();
    let (a, mut peer) = pair();
    let (tx, rx) = channel();
    let sub = el
        .subscribe(a, Interest::READABLE, reporter(tx))
        .map_err(|e| e.kind)
        .unwrap();
    ticks(&el, 3);
    nothing_more(&rx); // writable, but only readable was asked for
    el.modify(&sub, Interest::WRITABLE).unwrap(); // from the test thread, loop running
    let r = recv(&rx);
    assert!(r.is_writable() && !r.is_readable(), "{r:?}");
    ticks(&el, 3);
    nothing_more(&rx);
    // Back to readable: a write from the peer fires READABLE, never WRITABLE.
    el.modify(&sub, Interest::READABLE).unwrap();
    ticks(&el, 3);
    nothing_more(&rx);
    peer.write_all(b"x").unwrap();
    let r = recv(&rx);
    assert!(r.is_readable() && !r.is_writable(), "{r:?}");
    drop(el);
}

#[test]
fn modify_from_the_subscriptions_own_callback_applies_when_it_returns() {
    let el = running();
    let (a, mut peer) = pair();
    let (tx, rx) = channel();
    let me: Arc<OnceLock<reseau_linux::Subscription>> = Arc::new(OnceLock::new());
    let me2 = me.clone();
    let sub = el
        .subscribe(a, Interest::READABLE, move |h, s, r| {
            drain(s);
            if r.is_readable() {
                // Our own entry is out for this very call: recorded, applied on return.
                h.modify(me2.get().unwrap(), Interest::WRITABLE).unwrap();
            }
            tx.send(r).unwrap();
            IoControl::Keep
        })
        .map_err(|e| e.kind)
        .unwrap();
    me.set(sub).unwrap();
    peer.write_all(b"x").unwrap();
    let first = recv(&rx);
    assert!(first.is_readable() && !first.is_writable(), "{first:?}");
    let second = recv(&rx);
    assert!(second.is_writable() && !second.is_readable(), "{second:?}");
    ticks(&el, 3);
    nothing_more(&rx);
}

#[test]
fn modify_of_a_removed_foreign_or_stale_subscription_is_not_subscribed() {
    let el = EventLoop::new(EventLoopOptions::default()).unwrap(); // not running
    let other = EventLoop::new(EventLoopOptions::default()).unwrap();
    let (a, _peer) = pair();
    let sub = el
        .subscribe(a, Interest::READABLE, |_, _, _| IoControl::Keep)
        .map_err(|e| e.kind)
        .unwrap();
    assert_eq!(
        other.modify(&sub, Interest::WRITABLE),
        Err(ModifyError::NotSubscribed),
        "a subscription of another loop"
    );
    assert_eq!(
        el.modify(&sub, Interest::default()),
        Err(ModifyError::EmptyInterest)
    );
    el.modify(&sub, Interest::WRITABLE).unwrap();
    let _a: UnixStream = el.unsubscribe(sub).unwrap();
    assert_eq!(
        el.modify(&sub, Interest::WRITABLE),
        Err(ModifyError::NotSubscribed),
        "an unsubscribed (stale) subscription"
    );
    // A new subscription reusing the slot is not reachable through the stale handle.
    let (b, _peer_b) = pair();
    let fresh = el
        .subscribe(b, Interest::READABLE, |_, _, _| IoControl::Keep)
        .map_err(|e| e.kind)
        .unwrap();
    assert_ne!(fresh, sub);
    assert_eq!(
        el.modify(&sub, Interest::WRITABLE),
        Err(ModifyError::NotSubscribed)
    );
    let h = el.handle();
    drop(el);
    assert_eq!(
        h.modify(&fresh, Interest::WRITABLE),
        Err(ModifyError::Destroyed)
    );
    assert!(!ModifyError::NotSubscribed.to_string().is_empty());
}

#[test]
fn epoll_ctl_mod_refused_surfaces_the_errno_and_the_old_interest_still_works() {
    let name = "epoll_ctl_mod_refused_surfaces_the_errno_and_the_old_interest_still_works";
    if !is_child(MARKER) {
        return run_in_child(MARKER, name);
    }
    // The loop thread exists before the filter: only this thread's epoll_ctl(MOD) fails.
    let el = running();
    let (a, mut peer) = pair();
    let (tx, rx) = channel();
    let sub = el
        .subscribe(a, Interest::READABLE, reporter(tx))
        .map_err(|e| e.kind)
        .unwrap();
    seccomp::install(&[Rule::epoll_ctl(libc::EPOLL_CTL_MOD, libc::EPERM)]);
    let err = el.modify(&sub, Interest::WRITABLE).unwrap_err();
    assert_eq!(
        err,
        ModifyError::Sys(SysError {
            call: "epoll_ctl(MOD)",
            errno: Errno::PERM
        })
    );
    let text = err.to_string();
    assert!(
        text.contains("epoll_ctl(MOD)") && text.contains(&Errno::PERM.to_string()),
        "{text}"
    );
    ticks(&el, 3);
    nothing_more(&rx); // not switched to writable
    peer.write_all(b"x").unwrap();
    let r = recv(&rx);
    assert!(r.is_readable(), "{r:?}");
}

#[test]
fn modify_from_another_thread_during_the_callback_is_applied_when_it_returns() {
    let el = running();
    let (a, mut peer) = pair();
    let (entered_tx, entered_rx) = channel();
    let (release_tx, release_rx) = channel::<()>();
    let (tx, rx) = channel();
    let sub = el
        .subscribe(a, Interest::READABLE, move |_, s, r| {
            drain(s);
            if r.is_readable() {
                entered_tx.send(()).unwrap();
                recv(&release_rx); // held until the test thread has called modify
            }
            tx.send(r).unwrap();
            IoControl::Keep
        })
        .map_err(|e| e.kind)
        .unwrap();
    peer.write_all(b"x").unwrap();
    recv(&entered_rx);
    // The entry is out for its callback: recorded, not applied yet.
    el.modify(&sub, Interest::WRITABLE).unwrap();
    release_tx.send(()).unwrap();
    let first = recv(&rx);
    assert!(first.is_readable(), "{first:?}");
    let second = recv(&rx);
    assert!(second.is_writable() && !second.is_readable(), "{second:?}");
}
