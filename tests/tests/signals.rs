//! Signals as a source (`LoopHandle::subscribe_signals`). Blocking a signal and sending it
//! to the process are process-wide acts, so each scenario runs in a helper process of its
//! own (`src/bin/signal_probe.rs`, main thread = subscribing thread), never in this runner.

use reseau_linux::{SignalError, SignalSet};

fn probe(scenario: &str) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_signal_probe"))
        .arg(scenario)
        .output()
        .expect("spawn signal_probe");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains(&format!("ok {scenario}")),
        "signal_probe {scenario} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_kill_to_the_process_is_delivered_with_its_signo_and_pid() {
    probe("kill_before_thread");
}

#[test]
fn subscribing_while_the_loop_runs_blocks_the_set_on_the_loop_thread_too() {
    probe("kill_running_loop");
}

#[test]
fn a_signal_sent_as_soon_as_subscribe_returns_on_a_running_loop_is_delivered_not_fatal() {
    probe("kill_right_after_subscribe");
}

#[test]
fn sigusr1_and_sigusr2_in_one_set_are_each_delivered() {
    probe("two_signals");
}

#[test]
fn signals_raised_before_the_loop_runs_are_delivered_once_it_runs() {
    probe("raised_before_run");
}

#[test]
fn unsubscribing_restores_both_threads_masks_and_keeps_what_was_blocked_before() {
    probe("unsubscribe_restores");
}

#[test]
fn a_child_spawned_with_unblock_in_child_has_an_empty_mask_and_one_without_inherits_it() {
    probe("child_mask");
}

#[test]
fn signalfd4_refused_names_the_call_and_errno_leaks_nothing_and_keeps_the_mask() {
    probe("signalfd_refused");
}

#[test]
fn a_forked_child_is_refused_before_its_mask_changes() {
    probe("forked");
}

#[test]
fn a_signal_pending_when_signals_is_dropped_off_the_running_loop_is_discarded_not_fatal() {
    probe("drop_with_a_pending_signal");
}

#[test]
fn dropping_signals_restores_the_mask_of_a_caller_driven_loops_driving_thread() {
    probe("caller_driven_driver_mask_restored");
}

#[test]
fn an_unsubscribe_running_on_a_restarted_loops_new_thread_keeps_the_mask_it_inherited() {
    probe("restarted_loop_keeps_what_it_inherited");
}

#[test]
fn subscribe_signals_refused_by_a_full_running_loop_leaves_no_subscription_or_descriptor() {
    probe("full_loop_leaves_nothing");
}

#[test]
fn a_signal_callback_panicking_on_one_of_two_pending_signals_still_gets_the_other() {
    probe("panic_in_callback_keeps_the_rest");
}

#[test]
fn subscribe_signals_while_destroy_runs_is_refused_as_a_destroyed_loop() {
    probe("during_destroy_is_refused_as_destroyed");
}

#[test]
fn invalid_signals_are_rejected_with_the_reason() {
    for signo in [0, -1, 65, libc::SIGRTMAX() + 1] {
        let e = SignalSet::new().with(signo).unwrap_err();
        assert!(matches!(e, SignalError::Invalid { signo: s, .. } if s == signo));
        assert!(e.to_string().contains("not a signal number"), "{e}");
    }
    for signo in [libc::SIGKILL, libc::SIGSTOP] {
        let e = SignalSet::new().with(signo).unwrap_err();
        assert!(e.to_string().contains("SIGKILL and SIGSTOP"), "{e}");
    }
    let mut s = SignalSet::new();
    s.add(libc::SIGINT).unwrap();
    assert!(s.add(libc::SIGKILL).is_err());
    assert_eq!(s.iter().collect::<Vec<_>>(), [libc::SIGINT], "unchanged");
    assert!(s.contains(libc::SIGINT) && !s.contains(libc::SIGTERM) && !s.contains(0));
    assert_eq!(s.into_iter().count(), 1);
    let el = reseau_linux::EventLoop::new(reseau_linux::EventLoopOptions::default()).unwrap();
    let e = el
        .subscribe_signals(SignalSet::new(), |_, _| {})
        .unwrap_err();
    assert_eq!(e, SignalError::EmptySet);
    assert!(!e.to_string().is_empty());
}
