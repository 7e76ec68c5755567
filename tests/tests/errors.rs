//! Every error converts into `reseau_linux::Error` with `?`, and every error's text is
//! non-empty and names the operation.

use std::os::unix::net::UnixStream;

use reseau_linux::{
    Error, EventLoop, EventLoopOptions, Interest, IoControl, ModifyError, SignalError, SignalSet,
    SubscribeErrorKind, UnsubscribeError,
};

fn subscribe_blocking(el: &EventLoop) -> Result<(), Error> {
    let (a, _b) = UnixStream::pair().unwrap(); // blocking: refused
    el.subscribe(a, Interest::READABLE, |_, _, _| IoControl::Keep)?;
    Ok(())
}

fn unsubscribe_stale(el: &EventLoop) -> Result<(), Error> {
    let (a, _b) = UnixStream::pair().unwrap();
    a.set_nonblocking(true).unwrap();
    let sub = el.subscribe(a, Interest::READABLE, |_, _, _| IoControl::Keep)?;
    let _a: UnixStream = el.unsubscribe(sub)?;
    let _a: UnixStream = el.unsubscribe(sub)?; // stale now
    Ok(())
}

fn modify_stale(el: &EventLoop) -> Result<(), Error> {
    let (a, _b) = UnixStream::pair().unwrap();
    a.set_nonblocking(true).unwrap();
    let sub = el.subscribe(a, Interest::READABLE, |_, _, _| IoControl::Keep)?;
    let _a: UnixStream = el.unsubscribe(sub)?;
    el.modify(&sub, Interest::WRITABLE)?;
    Ok(())
}

fn signal_invalid() -> Result<(), Error> {
    SignalSet::new().with(libc::SIGKILL)?;
    Ok(())
}

fn spawn_on_destroyed(h: &reseau_linux::LoopHandle) -> Result<(), Error> {
    h.spawn(async {})?;
    Ok(())
}

fn spawn_local_off_the_loop_thread(el: &EventLoop) -> Result<(), Error> {
    el.spawn_local(async {})?;
    Ok(())
}

fn schedule_on_destroyed(el: EventLoop) -> Result<(), Error> {
    let h = el.handle();
    drop(el);
    h.schedule_now(|_, _| {})?;
    Ok(())
}

#[test]
fn each_error_type_converts_into_error_with_question_mark_keeping_its_kind() {
    let el = EventLoop::new(EventLoopOptions::default()).unwrap();
    let e = subscribe_blocking(&el).unwrap_err();
    assert!(
        matches!(e, Error::Subscribe(SubscribeErrorKind::Blocking)),
        "{e:?}"
    );
    let e = unsubscribe_stale(&el).unwrap_err();
    assert!(
        matches!(e, Error::Unsubscribe(UnsubscribeError::NotSubscribed)),
        "{e:?}"
    );
    let e = modify_stale(&el).unwrap_err();
    assert!(
        matches!(e, Error::Modify(ModifyError::NotSubscribed)),
        "{e:?}"
    );
    let e = signal_invalid().unwrap_err();
    assert!(
        matches!(e, Error::Signal(SignalError::Invalid { signo, .. }) if signo == libc::SIGKILL),
        "{e:?}"
    );
    let e = spawn_local_off_the_loop_thread(&el).unwrap_err();
    assert!(
        matches!(
            e,
            Error::LocalSpawn(reseau_linux::LocalSpawnErrorKind::NotOnLoopThread)
        ),
        "{e:?}"
    );
    let h = el.handle();
    let e = schedule_on_destroyed(el).unwrap_err();
    assert!(
        matches!(
            e,
            Error::Schedule(reseau_linux::ScheduleErrorKind::Destroyed(_))
        ),
        "{e:?}"
    );
    let e = spawn_on_destroyed(&h).unwrap_err();
    assert!(
        matches!(
            e,
            Error::Schedule(reseau_linux::ScheduleErrorKind::Destroyed(_))
        ),
        "{e:?}"
    );
    // The std::error::Error chain reaches the original error.
    let e = Error::from(ModifyError::NotSubscribed);
    assert!(std::error::Error::source(&e).is_some());
}

fn check_text(text: String, names: &str) {
    assert!(!text.is_empty());
    assert!(text.contains(names), "{text:?} should name {names:?}");
}

#[test]
fn every_error_text_is_non_empty_and_names_the_operation() {
    use reseau_core::{DestroyError, DriveError, StartError};
    use reseau_linux::{Errno, LifecycleError, Operation, State, SysError};
    let sys = SysError {
        call: "epoll_ctl(MOD)",
        errno: Errno::PERM,
    };
    check_text(ModifyError::NotSubscribed.to_string(), "modify");
    check_text(ModifyError::EmptyInterest.to_string(), "modify");
    check_text(ModifyError::Destroyed.to_string(), "modify");
    check_text(ModifyError::Forked.to_string(), "modify");
    check_text(ModifyError::Sys(sys).to_string(), "epoll_ctl(MOD)");
    for kind in [
        SubscribeErrorKind::Blocking,
        SubscribeErrorKind::EmptyInterest,
        SubscribeErrorKind::AlreadySubscribed,
        SubscribeErrorKind::Forked,
        SubscribeErrorKind::Sys(sys),
    ] {
        check_text(kind.to_string(), "subscribe");
        check_text(
            Error::from(reseau_linux::SubscribeError { kind, source: () }).to_string(),
            "subscribe",
        );
    }
    for e in [
        UnsubscribeError::NotSubscribed,
        UnsubscribeError::WrongSourceType,
        UnsubscribeError::InOwnCallback,
        UnsubscribeError::OffLoopThreadWhileRunning,
    ] {
        check_text(e.to_string(), "unsubscribe");
        check_text(Error::from(e).to_string(), "unsubscribe");
    }
    check_text(SignalError::EmptySet.to_string(), "subscribe_signals");
    check_text(
        SignalError::Sys(SysError {
            call: "signalfd4",
            errno: Errno::PERM,
        })
        .to_string(),
        "signalfd4",
    );
    check_text(
        SignalError::Subscribe(SubscribeErrorKind::Forked).to_string(),
        "subscribe_signals",
    );
    check_text(
        Error::from(SignalError::EmptySet).to_string(),
        "subscribe_signals",
    );
    // reseau-core's errors.
    let lifecycle = LifecycleError {
        op: Operation::Destroy,
        state: State::Destroyed,
        on_loop_thread: false,
        live: false,
    };
    check_text(DestroyError::Abandoned.to_string(), "destroy");
    check_text(DestroyError::Lifecycle(lifecycle).to_string(), "destroy");
    check_text(
        DriveError::<SysError>::Platform(sys).to_string(),
        "epoll_ctl(MOD)",
    );
    check_text(DriveError::<SysError>::NotStarted.to_string(), "drive");
    check_text(DriveError::<SysError>::Panicked.to_string(), "panicked");
    check_text(StartError::<SysError>::Spawn(sys).to_string(), "run");
    check_text(
        StartError::<SysError>::Lifecycle(lifecycle).to_string(),
        "destroy",
    );
}
