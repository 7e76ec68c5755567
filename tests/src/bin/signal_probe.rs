//! A helper process for `tests/signals.rs`: each scenario (the first argument) blocks
//! signals, sends them to this process and checks what the loop delivers. Signals are
//! process-wide, so each runs here, in a process of its own whose main thread is the
//! subscribing thread, never in the test runner. Prints `ok <scenario>` and exits 0 when
//! every check held; panics (exit status 101) otherwise.

use std::sync::mpsc::{Receiver, channel};

use reseau_linux::signals::{blocked_on_this_thread, unblock_in_child};
use reseau_linux::{
    Errno, EventLoop, EventLoopOptions, LoopHandle, SignalError, SignalInfo, SignalSet, SysError,
};
use reseau_tests::seccomp::{self, Rule};
use reseau_tests::util::{hold_loop, open_fds, recv};
use rustix::process::{Signal, getpid, kill_process};

fn set(signals: &[i32]) -> SignalSet {
    signals
        .iter()
        .fold(SignalSet::new(), |s, &n| s.with(n).unwrap())
}

fn send(sig: Signal) {
    kill_process(getpid(), sig).unwrap();
}

/// One full tick: everything scheduled before this call (a blocking task) has run.
fn round_trip(h: &LoopHandle) {
    let (tx, rx) = channel();
    h.schedule_now(move |_, _| tx.send(()).unwrap()).unwrap();
    recv(&rx);
}

/// The loop thread's blocked signals.
fn loop_thread_mask(h: &LoopHandle) -> SignalSet {
    let (tx, rx) = channel();
    h.schedule_now(move |_, _| tx.send(blocked_on_this_thread().unwrap()).unwrap())
        .unwrap();
    recv(&rx)
}

fn subscribe(el: &EventLoop, s: SignalSet) -> (reseau_linux::Signals, Receiver<SignalInfo>) {
    let (tx, rx) = channel();
    let signals = el
        .subscribe_signals(s, move |h, info| {
            assert!(h.is_on_loop_thread());
            tx.send(info).unwrap();
        })
        .unwrap();
    (signals, rx)
}

fn check_from_us(info: &SignalInfo, signo: i32) {
    assert_eq!(info.signo, signo);
    assert_eq!(info.pid, getpid().as_raw_nonzero().get());
    assert_eq!(info.code, libc::SI_USER, "sent with kill");
    // SAFETY: getuid cannot fail and has no preconditions.
    assert_eq!(info.uid, unsafe { libc::getuid() });
}

/// Subscribed before the loop thread exists (it inherits the mask), then a `kill`.
fn kill_before_thread() {
    let el = EventLoop::new(EventLoopOptions::default()).unwrap();
    let (_signals, rx) = subscribe(&el, set(&[libc::SIGUSR1]));
    el.run().unwrap();
    send(Signal::USR1);
    check_from_us(&recv(&rx), libc::SIGUSR1);
}

/// Subscribed while the loop thread runs: its task blocks the set on the loop thread.
fn kill_running_loop() {
    let el = EventLoop::new(EventLoopOptions::default()).unwrap();
    el.run().unwrap();
    assert!(!loop_thread_mask(&el).contains(libc::SIGUSR1));
    let (_signals, rx) = subscribe(&el, set(&[libc::SIGUSR1]));
    round_trip(&el); // the blocking task ran
    assert!(loop_thread_mask(&el).contains(libc::SIGUSR1));
    send(Signal::USR1);
    check_from_us(&recv(&rx), libc::SIGUSR1);
}

/// Subscribed while the loop thread runs, the signal sent the moment `subscribe_signals`
/// returns (no round trip first): the loop thread has blocked the set by then, so the signal
/// is delivered instead of killing the process. A hundred rounds, each unsubscribing.
fn kill_right_after_subscribe() {
    let el = EventLoop::new(EventLoopOptions::default()).unwrap();
    el.run().unwrap();
    for _ in 0..100 {
        let (signals, rx) = subscribe(&el, set(&[libc::SIGUSR1]));
        send(Signal::USR1);
        check_from_us(&recv(&rx), libc::SIGUSR1);
        drop(signals);
    }
}

fn two_signals() {
    let el = EventLoop::new(EventLoopOptions::default()).unwrap();
    el.run().unwrap();
    let (_signals, rx) = subscribe(&el, set(&[libc::SIGUSR1, libc::SIGUSR2]));
    round_trip(&el);
    send(Signal::USR2);
    check_from_us(&recv(&rx), libc::SIGUSR2);
    send(Signal::USR1);
    check_from_us(&recv(&rx), libc::SIGUSR1);
    send(Signal::USR1);
    send(Signal::USR2);
    let mut got = [recv(&rx).signo, recv(&rx).signo];
    got.sort_unstable();
    assert_eq!(got, [libc::SIGUSR1, libc::SIGUSR2]);
}

fn raised_before_run() {
    let el = EventLoop::new(EventLoopOptions::default()).unwrap();
    let (_signals, rx) = subscribe(&el, set(&[libc::SIGUSR1, libc::SIGUSR2]));
    send(Signal::USR1);
    send(Signal::USR2);
    el.run().unwrap();
    let mut got = [recv(&rx).signo, recv(&rx).signo];
    got.sort_unstable();
    assert_eq!(got, [libc::SIGUSR1, libc::SIGUSR2]);
}

fn unsubscribe_restores() {
    let el = EventLoop::new(EventLoopOptions::default()).unwrap();
    el.run().unwrap();
    // SIGUSR2 blocked here beforehand: the subscription did not block it, so it stays.
    let pre = set(&[libc::SIGUSR2]);
    let none = blocked_on_this_thread().unwrap();
    assert!(none.is_empty(), "{none:?}");
    let usr2 = sigset_of(libc::SIGUSR2);
    // SAFETY: `usr2` is an initialised sigset_t; the old mask is not asked for.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &usr2, std::ptr::null_mut()) };
    assert_eq!(rc, 0);
    assert_eq!(blocked_on_this_thread().unwrap(), pre);
    let loop_before = loop_thread_mask(&el);
    let (signals, _rx) = subscribe(&el, set(&[libc::SIGUSR1, libc::SIGUSR2]));
    round_trip(&el);
    assert_eq!(
        blocked_on_this_thread().unwrap(),
        set(&[libc::SIGUSR1, libc::SIGUSR2])
    );
    assert!(loop_thread_mask(&el).contains(libc::SIGUSR1));
    assert_eq!(el.subscriptions(), 1);
    signals.unsubscribe();
    assert_eq!(
        blocked_on_this_thread().unwrap(),
        pre,
        "this thread restored"
    );
    round_trip(&el); // the loop's unsubscribe task ran
    assert_eq!(
        loop_thread_mask(&el),
        loop_before,
        "the loop thread restored"
    );
    assert_eq!(el.subscriptions(), 0);
}

fn sigset_of(signo: i32) -> libc::sigset_t {
    // SAFETY: an all-zero sigset_t is a plain value that sigemptyset initialises; the
    // signal number is valid.
    unsafe {
        let mut m: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut m);
        libc::sigaddset(&mut m, signo);
        m
    }
}

fn sig_blk(mut cmd: std::process::Command) -> u64 {
    let out = cmd.args(["/proc/self/status"]).output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("SigBlk:"))
        .expect("a SigBlk line");
    u64::from_str_radix(line.trim(), 16).unwrap()
}

fn child_mask() {
    let el = EventLoop::new(EventLoopOptions::default()).unwrap();
    let (_signals, _rx) = subscribe(&el, set(&[libc::SIGUSR1]));
    let bit = 1u64 << (libc::SIGUSR1 - 1);
    let plain = sig_blk(std::process::Command::new("cat"));
    assert_eq!(
        plain & bit,
        bit,
        "a child inherits the blocked mask: {plain:x}"
    );
    let mut cmd = std::process::Command::new("cat");
    unblock_in_child(&mut cmd);
    assert_eq!(sig_blk(cmd), 0, "unblock_in_child empties the mask");
}

fn signalfd_refused() {
    let el = EventLoop::new(EventLoopOptions::default()).unwrap();
    el.run().unwrap();
    let before_fds = open_fds();
    let before_mask = blocked_on_this_thread().unwrap();
    seccomp::install(&[Rule::deny(libc::SYS_signalfd4, libc::EPERM)]);
    let err = el
        .subscribe_signals(set(&[libc::SIGUSR1]), |_, _| {})
        .unwrap_err();
    assert_eq!(
        err,
        SignalError::Sys(SysError {
            call: "signalfd4",
            errno: Errno::PERM
        })
    );
    let text = err.to_string();
    assert!(
        text.contains("signalfd4") && text.contains(&Errno::PERM.to_string()),
        "{text}"
    );
    assert_eq!(open_fds(), before_fds, "no descriptor leaked");
    assert_eq!(
        blocked_on_this_thread().unwrap(),
        before_mask,
        "mask unchanged"
    );
    assert_eq!(el.subscriptions(), 0);
}

fn forked() {
    let el = EventLoop::new(EventLoopOptions::default()).unwrap();
    // SAFETY: this process has no other thread (the loop never ran); the child only calls
    // subscribe_signals, which refuses before touching anything, then `_exit`s.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        let before = blocked_on_this_thread().unwrap();
        let r = el.subscribe_signals(set(&[libc::SIGUSR1]), |_, _| {});
        let ok = matches!(
            r,
            Err(SignalError::Subscribe(
                reseau_linux::SubscribeErrorKind::Forked
            ))
        ) && blocked_on_this_thread().unwrap() == before;
        // SAFETY: `_exit` ends the forked child without running the parent's destructors.
        unsafe { libc::_exit(if ok { 0 } else { 1 }) };
    }
    let mut status = 0;
    // SAFETY: `pid` is our child; `status` is valid for the kernel to write.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "the child was not refused: {status}"
    );
}

/// A signal pending (sent while the loop thread was busy, so never read from the
/// signalfd) when the `Signals` is dropped from the subscribing thread of a running loop:
/// it is discarded, as the module docs promise, not delivered the default way (for
/// SIGUSR1: the end of this process) by the unblock on the dropping thread.
fn drop_with_a_pending_signal() {
    let el = EventLoop::new(EventLoopOptions::default()).unwrap();
    el.run().unwrap();
    let (signals, _rx) = subscribe(&el, set(&[libc::SIGUSR1]));
    let hold = hold_loop(&el, |_| {});
    send(Signal::USR1); // blocked on every thread: pending, unread
    drop(signals);
    assert!(
        !blocked_on_this_thread().unwrap().contains(libc::SIGUSR1),
        "this thread restored"
    );
    hold.release();
    round_trip(&el); // the loop's unsubscribe task ran
    assert_eq!(el.subscriptions(), 0);
    assert!(!loop_thread_mask(&el).contains(libc::SIGUSR1));
}

/// A caller-driven loop (`turn` on this thread) whose subscription came from another
/// thread: the blocking task blocked the set on this, the driving thread. Dropping the
/// `Signals` (on its own thread, while no turn runs) restores this thread's mask by the
/// next turn; the driving thread outlives the subscription, unlike a loop thread.
fn caller_driven_driver_mask_restored() {
    let el = EventLoop::new(EventLoopOptions::default()).unwrap();
    let h = el.handle();
    let (subscribed_tx, subscribed_rx) = channel();
    let (drop_tx, drop_rx) = channel::<()>();
    let (dropped_tx, dropped_rx) = channel();
    let subscriber = std::thread::spawn(move || {
        let signals = h
            .subscribe_signals(set(&[libc::SIGUSR1]), |_, _| {})
            .unwrap();
        subscribed_tx.send(()).unwrap();
        recv(&drop_rx);
        drop(signals);
        dropped_tx.send(()).unwrap();
    });
    recv(&subscribed_rx);
    assert!(!blocked_on_this_thread().unwrap().contains(libc::SIGUSR1));
    el.turn(Some(std::time::Duration::ZERO)).unwrap(); // runs the blocking task here
    assert!(
        blocked_on_this_thread().unwrap().contains(libc::SIGUSR1),
        "the driving thread blocked the set"
    );
    drop_tx.send(()).unwrap();
    recv(&dropped_rx);
    subscriber.join().unwrap();
    for _ in 0..3 {
        el.turn(Some(std::time::Duration::ZERO)).unwrap();
    }
    assert!(
        !blocked_on_this_thread().unwrap().contains(libc::SIGUSR1),
        "the driving thread's mask restored"
    );
    assert_eq!(el.subscriptions(), 0);
}

/// The loop thread that blocked the set is gone (stop, wait, run again) when the
/// `Signals` is dropped; the new loop thread inherited the set blocked from this thread,
/// which blocked it before subscribing. The unsubscribe task runs on the new thread and
/// must leave its mask alone: a `Signals` never unblocks what it did not block.
fn restarted_loop_keeps_what_it_inherited() {
    let el = EventLoop::new(EventLoopOptions::default()).unwrap();
    el.run().unwrap();
    reseau_linux::signals::block_on_this_thread(set(&[libc::SIGUSR1])).unwrap();
    let (signals, _rx) = subscribe(&el, set(&[libc::SIGUSR1]));
    el.stop().unwrap();
    el.wait_for_stop_completion().unwrap();
    el.run().unwrap(); // a new loop thread, with this thread's mask
    assert!(loop_thread_mask(&el).contains(libc::SIGUSR1));
    drop(signals);
    round_trip(&el); // the loop's unsubscribe task ran
    assert_eq!(el.subscriptions(), 0);
    assert!(
        loop_thread_mask(&el).contains(libc::SIGUSR1),
        "the new loop thread keeps the mask it inherited"
    );
    assert!(blocked_on_this_thread().unwrap().contains(libc::SIGUSR1));
}

/// A running loop with every task slot taken: the task that blocks the set on the loop
/// thread cannot be scheduled, so `subscribe_signals` fails — and leaves nothing behind:
/// no subscription, no descriptor, the mask as it was.
fn full_loop_leaves_nothing() {
    let options = EventLoopOptions {
        capacity: 4,
        ..Default::default()
    };
    let el = EventLoop::new(options).unwrap();
    el.run().unwrap();
    while el.schedule_at(u64::MAX, |_, _| {}).is_ok() {}
    let before_fds = open_fds();
    let before_mask = blocked_on_this_thread().unwrap();
    let err = el
        .subscribe_signals(set(&[libc::SIGUSR1]), |_, _| {})
        .unwrap_err();
    assert!(
        matches!(
            err,
            SignalError::Schedule(reseau_linux::ScheduleErrorKind::Full { .. })
        ),
        "{err:?}"
    );
    assert_eq!(el.subscriptions(), 0, "no subscription left behind");
    assert_eq!(open_fds(), before_fds, "no descriptor leaked");
    assert_eq!(
        blocked_on_this_thread().unwrap(),
        before_mask,
        "mask unchanged"
    );
}

/// Two signals pending at once, the callback panicking on the first (under the default
/// `PanicPolicy::Catch`): the second is still delivered, without a third signal to make
/// a new edge on the (edge-triggered) signalfd.
fn panic_in_callback_keeps_the_rest() {
    let el = EventLoop::new(EventLoopOptions::default()).unwrap();
    el.run().unwrap();
    let (tx, rx) = channel();
    let mut first = true;
    let _signals = el
        .subscribe_signals(set(&[libc::SIGUSR1, libc::SIGUSR2]), move |_, info| {
            if std::mem::take(&mut first) {
                panic!("boom on the first signal");
            }
            tx.send(info.signo).unwrap();
        })
        .unwrap();
    let hold = hold_loop(&el, |_| {});
    send(Signal::USR1);
    send(Signal::USR2);
    hold.release();
    let got = recv(&rx);
    assert!(got == libc::SIGUSR1 || got == libc::SIGUSR2, "{got}");
    assert_eq!(el.stats().panics_caught, 1);
}

/// `subscribe_signals` from another thread while destroy runs (held in a canceled task):
/// refused as a subscription to a destroyed loop, the mask unchanged, nothing left open.
fn during_destroy_is_refused_as_destroyed() {
    let mut el = EventLoop::new(EventLoopOptions::default()).unwrap();
    el.run().unwrap();
    let h = el.handle();
    let (in_destroy_tx, in_destroy_rx) = channel();
    let (release_tx, release_rx) = channel::<()>();
    el.schedule_at(u64::MAX, move |_, _| {
        in_destroy_tx.send(()).unwrap();
        recv(&release_rx);
    })
    .unwrap();
    let destroyer = std::thread::spawn(move || el.destroy().unwrap());
    recv(&in_destroy_rx);
    let before_fds = open_fds();
    let before_mask = blocked_on_this_thread().unwrap();
    let err = h
        .subscribe_signals(set(&[libc::SIGUSR1]), |_, _| {})
        .unwrap_err();
    assert!(
        matches!(
            err,
            SignalError::Subscribe(reseau_linux::SubscribeErrorKind::Destroyed(e))
                if e.op == reseau_core::Operation::Subscribe
        ),
        "{err:?}"
    );
    assert_eq!(open_fds(), before_fds, "no descriptor leaked");
    assert_eq!(
        blocked_on_this_thread().unwrap(),
        before_mask,
        "mask unchanged"
    );
    release_tx.send(()).unwrap();
    destroyer.join().unwrap();
}

fn abort_in_signal_callback() {
    let options = EventLoopOptions::default().on_panic(reseau_linux::PanicPolicy::Abort);
    let el = EventLoop::new(options).unwrap();
    let _signals = el
        .subscribe_signals(set(&[libc::SIGUSR1]), |_, _| {
            panic!("boom in a signal callback")
        })
        .unwrap();
    el.run().unwrap();
    send(Signal::USR1);
    std::thread::sleep(reseau_tests::util::GUARD); // failure guard: the abort comes first
    panic!("the loop did not abort");
}

fn main() {
    let scenario = std::env::args().nth(1).expect("a scenario");
    match scenario.as_str() {
        "kill_before_thread" => kill_before_thread(),
        "kill_running_loop" => kill_running_loop(),
        "kill_right_after_subscribe" => kill_right_after_subscribe(),
        "two_signals" => two_signals(),
        "raised_before_run" => raised_before_run(),
        "unsubscribe_restores" => unsubscribe_restores(),
        "child_mask" => child_mask(),
        "signalfd_refused" => signalfd_refused(),
        "forked" => forked(),
        "abort_in_signal_callback" => abort_in_signal_callback(),
        "drop_with_a_pending_signal" => drop_with_a_pending_signal(),
        "caller_driven_driver_mask_restored" => caller_driven_driver_mask_restored(),
        "restarted_loop_keeps_what_it_inherited" => restarted_loop_keeps_what_it_inherited(),
        "full_loop_leaves_nothing" => full_loop_leaves_nothing(),
        "during_destroy_is_refused_as_destroyed" => during_destroy_is_refused_as_destroyed(),
        "panic_in_callback_keeps_the_rest" => panic_in_callback_keeps_the_rest(),
        other => panic!("unknown scenario {other}"),
    }
    println!("ok {scenario}");
}
