//! Contract items 17-20 (and 26): edge-triggered IO subscriptions.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};

use reseau_linux::{
    Errno, Error, EventLoop, EventLoopOptions, Interest, IoControl, LoopHandle, Readiness,
    SubscribeErrorKind, Subscription, UnsubscribeError,
};
use reseau_tests::util::{Faults, hold_loop, recv};
use rustix::pipe::{PipeFlags, pipe_with};

fn running() -> EventLoop {
    let el = EventLoop::new(EventLoopOptions::default()).unwrap();
    el.run().unwrap();
    el
}

/// A non-blocking, close-on-exec pipe: (read end, write end).
fn pipe() -> (OwnedFd, OwnedFd) {
    pipe_with(PipeFlags::NONBLOCK | PipeFlags::CLOEXEC).unwrap()
}

fn write_byte(fd: impl AsFd) {
    assert_eq!(rustix::io::write(fd, b"x").unwrap(), 1);
}

/// Reads until `EAGAIN`; returns how many bytes.
fn drain(fd: BorrowedFd<'_>) -> usize {
    let mut buf = [0u8; 4096];
    let mut n = 0;
    loop {
        match rustix::io::read(fd, &mut buf) {
            Ok(0) => return n,
            Ok(k) => n += k,
            Err(Errno::AGAIN) => return n,
            Err(e) => panic!("read: {e}"),
        }
    }
}

/// Lets the loop run a few full ticks: each `on_loop` round trip is one wakeup and one
/// tick, so any event the kernel had for us has been dispatched by the time it returns.
fn ticks(h: &LoopHandle, n: usize) {
    for _ in 0..n {
        let (tx, rx) = channel();
        h.schedule_now(move |_, _| tx.send(()).unwrap()).unwrap();
        recv(&rx);
    }
}

/// A callback that reports each readiness on a channel and keeps the subscription.
fn reporter<S>(
    tx: Sender<Readiness>,
) -> impl FnMut(&LoopHandle, &mut S, Readiness) -> IoControl + Send + 'static
where
    S: Send + 'static,
{
    move |_, _, r| {
        tx.send(r).unwrap();
        IoControl::Keep
    }
}

fn count(rx: &Receiver<Readiness>) -> usize {
    rx.try_iter().count()
}

#[test]
fn c17_writable_fires_once_on_subscribe_and_not_in_later_ticks() {
    let mut el = running();
    let h = el.handle();
    let (_r, w) = pipe();
    let (tx, rx) = channel();
    h.subscribe(w, Interest::WRITABLE, reporter(tx)).unwrap();
    let first = recv(&rx);
    assert!(first.is_writable(), "{first:?}");
    ticks(&h, 5);
    assert_eq!(count(&rx), 0, "WRITABLE fired again without a new edge");
    el.destroy().unwrap();
}

#[test]
fn c17_readable_does_not_fire_before_a_write_then_fires_once_while_unread() {
    let mut el = running();
    let h = el.handle();
    let (r, w) = pipe();
    let (tx, rx) = channel();
    h.subscribe(r, Interest::READABLE, reporter(tx)).unwrap();
    ticks(&h, 3);
    assert_eq!(count(&rx), 0, "READABLE before any write");
    write_byte(&w);
    assert!(recv(&rx).is_readable());
    ticks(&h, 5);
    assert_eq!(count(&rx), 0, "READABLE again while the data stays unread");
    el.destroy().unwrap();
}

#[test]
fn c17_readable_fires_on_subscribe_when_data_is_already_there() {
    let mut el = running();
    let h = el.handle();
    let (r, w) = pipe();
    write_byte(&w);
    let (tx, rx) = channel();
    h.subscribe(r, Interest::READABLE, reporter(tx)).unwrap();
    assert!(recv(&rx).is_readable());
    el.destroy().unwrap();
}

#[test]
fn c17_readable_fires_again_the_second_time_after_draining_to_eagain() {
    let mut el = running();
    let h = el.handle();
    let (r, w) = pipe();
    let (tx, rx) = channel();
    h.subscribe(r, Interest::READABLE, move |_, r: &mut OwnedFd, ready| {
        tx.send((ready, drain(r.as_fd()))).unwrap();
        IoControl::Keep
    })
    .unwrap();
    write_byte(&w);
    let (ready, n) = recv(&rx);
    assert!(ready.is_readable());
    assert_eq!(n, 1);
    // One write of two bytes: a single edge (two writes could be two edges).
    assert_eq!(rustix::io::write(&w, b"yz").unwrap(), 2);
    let (ready, n) = recv(&rx);
    assert!(ready.is_readable());
    assert_eq!(n, 2);
    el.destroy().unwrap();
}

#[test]
fn c17_closing_the_write_end_delivers_closed_on_the_read_end() {
    let mut el = running();
    let h = el.handle();
    let (r, w) = pipe();
    let (tx, rx) = channel();
    h.subscribe(r, Interest::READABLE, reporter(tx)).unwrap();
    drop(w);
    let ready = recv(&rx);
    assert!(ready.is_closed(), "{ready:?}");
    el.destroy().unwrap();
}

/// Blocks the loop thread inside a task until the returned sender fires, so that several
/// descriptors become ready before the next `epoll_wait`: their events share one batch.
fn hold_the_loop(h: &LoopHandle) -> Sender<()> {
    let (release_tx, release_rx) = channel::<()>();
    let (held_tx, held_rx) = channel();
    h.schedule_now(move |_, _| {
        held_tx.send(()).unwrap();
        recv(&release_rx);
    })
    .unwrap();
    recv(&held_rx);
    release_tx
}

#[test]
fn c18_no_callback_after_the_first_of_a_batch_unsubscribes_both_and_closes_all_four_ends() {
    let mut el = running();
    let h = el.handle();
    let (r1, w1) = pipe();
    let (r2, w2) = pipe();
    let writers = Arc::new(Mutex::new(Some((w1, w2))));
    let subs: Arc<Mutex<Vec<Subscription>>> = Arc::new(Mutex::new(Vec::new()));
    let calls = Arc::new(AtomicUsize::new(0));
    let (tx, rx) = channel();
    for r in [r1, r2] {
        let (writers, subs2, calls, tx) =
            (writers.clone(), subs.clone(), calls.clone(), tx.clone());
        let sub = h
            .subscribe(r, Interest::READABLE, move |h, _: &mut OwnedFd, _| {
                calls.fetch_add(1, Ordering::SeqCst);
                // Unsubscribe (and so close) the other read end; close both write ends;
                // return Unsubscribe for our own read end.
                for other in subs2.lock().unwrap().iter() {
                    if let Ok(fd) = h.unsubscribe::<OwnedFd>(*other) {
                        drop(fd);
                    }
                }
                drop(writers.lock().unwrap().take());
                tx.send(()).unwrap();
                IoControl::Unsubscribe
            })
            .unwrap();
        subs.lock().unwrap().push(sub);
    }
    let release = hold_the_loop(&h);
    {
        let w = writers.lock().unwrap();
        let (w1, w2) = w.as_ref().unwrap();
        write_byte(w1);
        write_byte(w2);
    }
    release.send(()).unwrap();
    recv(&rx);
    ticks(&h, 3);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "a callback ran after its unsubscribe"
    );
    assert_eq!(h.subscriptions(), 0);
    el.destroy().unwrap();
}

#[test]
fn c18_a_callback_unsubscribing_another_whose_event_is_in_the_same_batch_drops_that_event() {
    let mut el = running();
    let h = el.handle();
    let (ra, wa) = pipe();
    let (rb, wb) = pipe();
    let log = Arc::new(Mutex::new(Vec::new()));
    let victim: Arc<Mutex<Option<Subscription>>> = Arc::new(Mutex::new(None));
    let keep: Arc<Mutex<Vec<OwnedFd>>> = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = channel();
    let (l, v, k) = (log.clone(), victim.clone(), keep.clone());
    let a = h
        .subscribe(ra, Interest::READABLE, move |h, r: &mut OwnedFd, _| {
            drain(r.as_fd());
            l.lock().unwrap().push("a");
            if let Some(sub) = v.lock().unwrap().take() {
                let back: OwnedFd = h.unsubscribe(sub).unwrap();
                drop(back);
                // A new subscription may reuse the freed slot: the old event must not
                // reach it either.
                let (r3, w3) = pipe();
                write_byte(&w3);
                let l3 = l.clone();
                let _ = h.subscribe(r3, Interest::READABLE, move |_, _: &mut OwnedFd, _| {
                    l3.lock().unwrap().push("new");
                    IoControl::Keep
                });
                k.lock().unwrap().push(w3);
            }
            tx.send(()).unwrap();
            IoControl::Keep
        })
        .unwrap();
    let l = log.clone();
    let b = h
        .subscribe(rb, Interest::READABLE, move |_, _: &mut OwnedFd, _| {
            l.lock().unwrap().push("b");
            IoControl::Keep
        })
        .unwrap();
    // Whichever of a and b the kernel reports first, make a unsubscribe b: report b first
    // by registering a's victim only now, and make both ready in one batch.
    *victim.lock().unwrap() = Some(b);
    let release = hold_the_loop(&h);
    write_byte(&wa);
    write_byte(&wb);
    release.send(()).unwrap();
    recv(&rx);
    ticks(&h, 3);
    let log = log.lock().unwrap().clone();
    // epoll reports in readiness order: a (written first) then b; b was unsubscribed by a.
    assert_eq!(log.iter().filter(|x| **x == "b").count(), 0, "{log:?}");
    assert_eq!(log.first(), Some(&"a"));
    // Exactly one: its own event, never b's stale one (same slot, older generation).
    assert_eq!(log.iter().filter(|x| **x == "new").count(), 1, "{log:?}");
    let _ = a;
    el.destroy().unwrap();
}

#[test]
fn c19_256_pipes_ready_at_once_are_all_dispatched_from_a_smaller_event_buffer() {
    let mut el = EventLoop::new(EventLoopOptions {
        initial_events: 16,
        ..EventLoopOptions::default()
    })
    .unwrap();
    el.run().unwrap();
    let h = el.handle();
    let fired = Arc::new(Mutex::new(vec![0u32; 256]));
    let (tx, rx) = channel();
    let mut writers = Vec::new();
    for i in 0..256 {
        let (r, w) = pipe();
        writers.push(w);
        let (fired, tx) = (fired.clone(), tx.clone());
        h.subscribe(r, Interest::READABLE, move |_, _: &mut OwnedFd, _| {
            let mut f = fired.lock().unwrap();
            f[i] += 1;
            if f.iter().all(|&n| n >= 1) {
                let _ = tx.send(());
            }
            IoControl::Keep
        })
        .unwrap();
    }
    let release = hold_the_loop(&h);
    for w in &writers {
        write_byte(w);
    }
    release.send(()).unwrap();
    recv(&rx);
    ticks(&h, 2);
    assert!(fired.lock().unwrap().iter().all(|&n| n == 1));
    el.destroy().unwrap();
}

#[test]
fn c19_bad_inputs_are_clear_errors_and_hand_the_source_back() {
    let mut el = running();
    let h = el.handle();
    // A blocking descriptor.
    let (r, _w) = pipe_with(PipeFlags::CLOEXEC).unwrap();
    let e = h
        .subscribe(r, Interest::READABLE, |_, _, _| IoControl::Keep)
        .unwrap_err();
    assert_eq!(e.kind, SubscribeErrorKind::Blocking);
    assert!(e.to_string().contains("blocking"), "{e}");
    let _r: OwnedFd = e.source;
    // An empty interest.
    let (r, _w2) = pipe();
    let e = h
        .subscribe(r, Interest::default(), |_, _, _| IoControl::Keep)
        .unwrap_err();
    assert_eq!(e.kind, SubscribeErrorKind::EmptyInterest);
    // Unsubscribing something not subscribed (and stale handles).
    let (r, w) = pipe();
    let (tx, rx) = channel();
    let sub = h
        .subscribe(
            Arc::new(r),
            Interest::READABLE,
            move |_, _: &mut Arc<OwnedFd>, r| {
                tx.send(r).unwrap();
                IoControl::Keep
            },
        )
        .unwrap();
    // Off the loop thread while it runs: refused, subscription intact.
    assert!(matches!(
        h.unsubscribe::<Arc<OwnedFd>>(sub),
        Err(Error::Unsubscribe(
            UnsubscribeError::OffLoopThreadWhileRunning
        ))
    ));
    el.stop().unwrap();
    el.wait_for_stop_completion().unwrap();
    // Stopped: unsubscribe works from here; the wrong type is refused first.
    assert!(matches!(
        h.unsubscribe::<OwnedFd>(sub),
        Err(Error::Unsubscribe(UnsubscribeError::WrongSourceType))
    ));
    let back: Arc<OwnedFd> = h.unsubscribe(sub).unwrap();
    assert!(matches!(
        h.unsubscribe::<Arc<OwnedFd>>(sub),
        Err(Error::Unsubscribe(UnsubscribeError::NotSubscribed))
    ));
    // A double subscribe of the same descriptor is refused; the first keeps delivering.
    let (tx2, rx2) = channel();
    let first = h
        .subscribe(back.clone(), Interest::READABLE, reporter(tx2))
        .unwrap();
    let e = h
        .subscribe(
            back.clone(),
            Interest::READABLE | Interest::WRITABLE,
            |_, _, _| panic!("the refused subscription must never run"),
        )
        .unwrap_err();
    assert_eq!(e.kind, SubscribeErrorKind::AlreadySubscribed);
    el.run().unwrap();
    write_byte(&w);
    assert!(
        recv(&rx2).is_readable(),
        "the first subscription stopped delivering"
    );
    assert!(rx.try_recv().is_err());
    let _ = first;
    el.destroy().unwrap();
}

#[test]
fn c19_unsubscribe_from_its_own_callback_is_refused_with_the_way_out() {
    let mut el = running();
    let h = el.handle();
    let (r, w) = pipe();
    let me: Arc<Mutex<Option<Subscription>>> = Arc::new(Mutex::new(None));
    let (tx, rx) = channel();
    let m = me.clone();
    let sub = h
        .subscribe(r, Interest::READABLE, move |h, _: &mut OwnedFd, _| {
            let sub = m.lock().unwrap().unwrap();
            let err = h.unsubscribe::<OwnedFd>(sub).unwrap_err();
            tx.send(err.to_string()).unwrap();
            IoControl::Unsubscribe
        })
        .unwrap();
    *me.lock().unwrap() = Some(sub);
    write_byte(&w);
    let msg = recv(&rx);
    assert!(msg.contains("IoControl::Unsubscribe"), "{msg}");
    ticks(&h, 2);
    assert_eq!(h.subscriptions(), 0);
    el.destroy().unwrap();
}

#[test]
fn c19_epoll_ctl_del_answering_enoent_counts_as_done() {
    let faults = Arc::new(Faults {
        epoll_del: Some(Errno::NOENT),
        ..Faults::default()
    });
    let mut el = EventLoop::new(faults.options()).unwrap();
    let h = el.handle();
    let (r, _w) = pipe();
    let sub = h
        .subscribe(r, Interest::READABLE, |_, _, _| IoControl::Keep)
        .unwrap();
    let back: OwnedFd = h.unsubscribe(sub).unwrap();
    drop(back);
    assert_eq!(h.subscriptions(), 0);
    el.destroy().unwrap();
}

/// A source that counts its drops.
struct Tracked {
    fd: OwnedFd,
    drops: Arc<AtomicUsize>,
}

impl AsFd for Tracked {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.drops.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn c20_destroy_releases_every_remaining_subscription_once() {
    let mut el = EventLoop::new(EventLoopOptions::default()).unwrap();
    let h = el.handle();
    let drops = Arc::new(AtomicUsize::new(0));
    let mut writers = Vec::new();
    // Subscribed before run, and while running.
    for i in 0..8 {
        if i == 4 {
            el.run().unwrap();
        }
        let (r, w) = pipe();
        writers.push(w);
        let t = Tracked {
            fd: r,
            drops: drops.clone(),
        };
        h.subscribe(t, Interest::READABLE, |_, _, _| IoControl::Keep)
            .unwrap();
    }
    assert_eq!(h.subscriptions(), 8);
    el.destroy().unwrap();
    assert_eq!(drops.load(Ordering::SeqCst), 8);
    // Every read end is closed: writing to its pipe now fails with EPIPE.
    for w in &writers {
        assert_eq!(rustix::io::write(w, b"x"), Err(Errno::PIPE));
    }
}

#[test]
fn c16_a_panicking_io_callback_is_caught_and_the_loop_goes_on() {
    let mut el = running();
    let h = el.handle();
    let (r, w) = pipe();
    h.subscribe(r, Interest::READABLE, |_, _: &mut OwnedFd, _| {
        panic!("IO callback panics on purpose")
    })
    .unwrap();
    write_byte(&w);
    ticks(&h, 3);
    assert_eq!(h.stats().panics_caught, 1);
    el.destroy().unwrap();
}

/// A source whose drop schedules a task on its loop.
struct SchedulesOnDrop {
    fd: OwnedFd,
    handle: LoopHandle,
    tx: Sender<(reseau_linux::TaskStatus, bool)>,
}

impl AsFd for SchedulesOnDrop {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Drop for SchedulesOnDrop {
    fn drop(&mut self) {
        let tx = self.tx.clone();
        let scheduled = self
            .handle
            .schedule_now(move |h, st| tx.send((st, h.is_on_loop_thread())).unwrap());
        assert!(
            scheduled.is_ok(),
            "destroy's own identity may still schedule"
        );
    }
}

#[test]
fn c20_a_task_scheduled_while_destroy_releases_subscriptions_is_canceled_not_lost() {
    let mut el = running();
    let h = el.handle();
    let (r, _w) = pipe();
    let (tx, rx) = channel();
    let source = SchedulesOnDrop {
        fd: r,
        handle: h.clone(),
        tx,
    };
    h.subscribe(source, Interest::READABLE, |_, _, _| IoControl::Keep)
        .unwrap();
    el.destroy().unwrap();
    // Synchronously inside destroy: the task scheduled by the dropped source ran canceled.
    assert_eq!(
        rx.try_recv(),
        Ok((reseau_linux::TaskStatus::Canceled, true))
    );
}

#[test]
fn c26_a_double_subscribe_is_refused_and_the_first_subscription_stays_intact() {
    let mut el = running();
    let h = el.handle();
    let (r, w) = pipe();
    let r = Arc::new(r);
    let (tx, rx) = channel();
    let first = h
        .subscribe(r.clone(), Interest::READABLE, reporter(tx))
        .unwrap();
    // aws-c-io overwrites the first registration's data here; reseau refuses and keeps it.
    let e = h
        .subscribe(
            r.clone(),
            Interest::WRITABLE,
            |_, _: &mut Arc<OwnedFd>, _| panic!("the refused subscription must never run"),
        )
        .unwrap_err();
    assert_eq!(e.kind, SubscribeErrorKind::AlreadySubscribed);
    assert_eq!(Arc::strong_count(&e.source), 3, "the source came back");
    drop(e);
    assert_eq!(h.subscriptions(), 1);
    write_byte(&w);
    assert!(
        recv(&rx).is_readable(),
        "the first subscription stopped delivering"
    );
    ticks(&h, 2);
    assert_eq!(h.stats().panics_caught, 0);
    el.stop().unwrap();
    el.wait_for_stop_completion().unwrap();
    let back: Arc<OwnedFd> = h.unsubscribe(first).unwrap();
    assert!(Arc::ptr_eq(&back, &r));
    el.destroy().unwrap();
}

#[test]
fn c22_one_tick_dispatches_io_then_drains_the_inbox_then_runs_what_is_due() {
    let mut el = running();
    let h = el.handle();
    let order = Arc::new(Mutex::new(Vec::new()));
    let (r, w) = pipe();
    let o = order.clone();
    h.subscribe(r, Interest::READABLE, move |_, r: &mut OwnedFd, _| {
        drain(r.as_fd());
        o.lock().unwrap().push("io");
        IoControl::Keep
    })
    .unwrap();
    ticks(&h, 2);
    assert!(order.lock().unwrap().is_empty(), "readable before a write");
    // A task holds the loop thread while all three kinds of work arrive, so that they are
    // all there for the same tick: a timer due now (in the scheduler, from the loop
    // thread), a pipe made readable (in epoll), and a cross-thread task (in the inbox).
    let (done_tx, done_rx) = channel();
    let o = order.clone();
    let hold = hold_loop(&h, move |h| {
        let now = h.now();
        h.schedule_at(now, move |_, _| {
            o.lock().unwrap().push("due");
            done_tx.send(()).unwrap();
        })
        .unwrap();
    });
    write_byte(&w);
    let o = order.clone();
    h.schedule_now(move |_, _| o.lock().unwrap().push("inbox"))
        .unwrap();
    hold.release();
    recv(&done_rx);
    // Drained after the due timer ran, the inbox task would come last; dispatched after
    // the tasks, the IO callback would.
    assert_eq!(*order.lock().unwrap(), ["io", "inbox", "due"]);
    el.destroy().unwrap();
}

/// A callback that reads one byte per call (never to `EAGAIN`) and reports the call.
fn one_byte_reader(
    tx: Sender<Readiness>,
) -> impl FnMut(&LoopHandle, &mut OwnedFd, Readiness) -> IoControl + Send + 'static {
    move |_, fd, r| {
        let mut b = [0u8; 1];
        let _ = rustix::io::read(&*fd, &mut b);
        tx.send(r).unwrap();
        IoControl::Keep
    }
}

#[test]
fn level_triggered_fires_every_tick_while_data_is_left_and_edge_fires_once() {
    let mut el = running();
    let h = el.handle();
    for (mode, expected) in [(Interest::LEVEL, 3), (Interest::READABLE, 1)] {
        let (r, w) = pipe();
        let (tx, rx) = channel();
        h.subscribe(r, Interest::READABLE | mode, one_byte_reader(tx))
            .unwrap();
        assert_eq!(rustix::io::write(&w, b"abc").unwrap(), 3);
        for _ in 0..expected {
            assert!(recv(&rx).is_readable());
        }
        ticks(&h, 5);
        assert_eq!(
            count(&rx),
            0,
            "{mode:?}: {expected} calls read the 3 bytes (or the edge was spent)"
        );
    }
    el.destroy().unwrap();
}

#[test]
fn one_shot_fires_once_until_modify_rearms_it_even_from_its_own_callback() {
    let mut el = running();
    let h = el.handle();
    let (r, w) = pipe();
    let (tx, rx) = channel();
    let oneshot = Interest::READABLE | Interest::ONESHOT;
    let sub = h.subscribe(r, oneshot, reporter(tx)).unwrap();
    write_byte(&w);
    assert!(recv(&rx).is_readable());
    write_byte(&w);
    ticks(&h, 5);
    assert_eq!(count(&rx), 0, "disabled after its one event");
    h.modify(&sub, oneshot).unwrap();
    assert!(recv(&rx).is_readable(), "re-armed: the unread data fires");
    ticks(&h, 5);
    assert_eq!(count(&rx), 0, "and it is disabled again");

    // A callback that re-arms itself: one event per write, never more.
    let (r, w) = pipe();
    let (tx, rx) = channel();
    let (sub_tx, sub_rx) = channel::<Subscription>();
    let sub_rx = Mutex::new(sub_rx);
    let mut me = None;
    let sub = h
        .subscribe(r, oneshot, move |h, fd: &mut OwnedFd, ready| {
            drain(fd.as_fd());
            let me = *me.get_or_insert_with(|| sub_rx.lock().unwrap().recv().unwrap());
            h.modify(&me, oneshot).unwrap();
            tx.send(ready).unwrap();
            IoControl::Keep
        })
        .unwrap();
    sub_tx.send(sub).unwrap();
    for _ in 0..3 {
        write_byte(&w);
        assert!(recv(&rx).is_readable());
    }
    ticks(&h, 5);
    assert_eq!(count(&rx), 0);
    el.destroy().unwrap();
}

#[test]
fn mode_bits_alone_are_an_empty_interest() {
    let el = running();
    let (r, _w) = pipe();
    let e = el
        .subscribe(r, Interest::LEVEL | Interest::ONESHOT, |_, _, _| {
            IoControl::Keep
        })
        .unwrap_err();
    assert_eq!(e.kind, SubscribeErrorKind::EmptyInterest);
    let (r, _w) = pipe();
    let sub = el
        .subscribe(r, Interest::READABLE, |_, _, _| IoControl::Keep)
        .unwrap();
    assert!(el.modify(&sub, Interest::LEVEL).is_err());
    assert_eq!(
        format!(
            "{:?}",
            Interest::READABLE | Interest::LEVEL | Interest::ONESHOT
        ),
        "READABLE | LEVEL | ONESHOT"
    );
}

/// The engine's batch bound reuses the clock read taken when the wait returned (one read
/// per tick, not two): a timer that comes due while the IO callbacks of the same tick run
/// must still run never early, and without waiting for another event.
#[test]
fn a_timer_due_during_io_callbacks_runs_never_early_and_without_another_event() {
    let mut el = running();
    let h = el.handle();
    let (r, w) = pipe();
    let (tx, rx) = channel();
    h.subscribe(r, Interest::READABLE, move |h, fd, _| {
        drain(fd.as_fd());
        let deadline = h.now() + 1_000_000;
        let tx = tx.clone();
        h.schedule_at(deadline, move |h, _| tx.send((deadline, h.now())).unwrap())
            .unwrap();
        // The scenario itself, not a wait for another thread: this callback runs across
        // the timer's deadline, so the timer comes due inside this tick's dispatch.
        while h.now() <= deadline + 1_000_000 {
            std::hint::spin_loop();
        }
        IoControl::Keep
    })
    .unwrap();
    write_byte(&w);
    let (deadline, ran_at) = recv(&rx);
    assert!(
        ran_at >= deadline,
        "never early: ran {ran_at}, due {deadline}"
    );
    el.destroy().unwrap();
}
