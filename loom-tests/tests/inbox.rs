//! Loom models of `reseau_core::Inbox`: the wake protocol, serialized FIFO, and a full
//! inbox under contention. See `loom-tests/README.md`.
#![cfg(loom)]

use loom::sync::atomic::{AtomicUsize, Ordering};
use loom::sync::{Arc, Mutex};
use loom::thread;
use reseau_core::{Full, Inbox, Wake};
use reseau_loom_tests::harness::{Wakeup, check, cover};

/// An item: (producer, that producer's sequence number).
type Item = (usize, usize);

/// Capacity of the wake-protocol inboxes: larger than any model's total, so a push never
/// fails there (the full case has its own model).
const CAP: usize = 4;

/// Which `prepare_park` the consumer calls.
#[derive(Clone, Copy)]
enum Park {
    /// The real one.
    Correct,
    /// The canary: looks for work, then clears the wake flag.
    CheckThenClear,
}

impl Park {
    fn prepare(self, inbox: &Inbox<Item, CAP>) -> bool {
        match self {
            Park::Correct => inbox.prepare_park(),
            Park::CheckThenClear => inbox.canary_prepare_park_check_then_clear(),
        }
    }
}

/// When the consumer drains.
///
/// loom 0.7's DPOR remembers only the last access to each atomic, so it never reorders a
/// consumer's read that came first with a producer's later read-then-write of the same
/// cell (see "loom's own limits" in the README). Each model therefore runs twice: once
/// with a consumer that drains at once, once with one that yields before each drain (as
/// the loop does IO dispatch before draining), which lets loom put pushes first.
#[derive(Clone, Copy)]
enum Drain {
    Eager,
    AfterYield,
}

/// What the consumer saw.
struct Consumed {
    order: Vec<Item>,
    prepare_calls: usize,
    parks: usize,
}

/// The loop thread's side of the wake protocol, as the shim runs it: drain, and when
/// nothing is left, `prepare_park` and park on the wakeup unless work showed up. Returns
/// once `total` items have been received; a lost wakeup leaves it parked forever, which
/// loom reports as a deadlock.
fn consume(
    inbox: &Inbox<Item, CAP>,
    wakeup: &Wakeup,
    total: usize,
    park: Park,
    drain: Drain,
) -> Consumed {
    let mut order = Vec::with_capacity(total);
    let (mut prepare_calls, mut parks) = (0, 0);
    loop {
        if let Drain::AfterYield = drain {
            thread::yield_now();
        }
        while let Some(item) = inbox.pop() {
            order.push(item);
        }
        if order.len() == total {
            return Consumed {
                order,
                prepare_calls,
                parks,
            };
        }
        prepare_calls += 1;
        if park.prepare(inbox) {
            wakeup.park();
            parks += 1;
        }
    }
}

/// Pushes `item`; signals the wakeup when told to. Returns whether it signaled.
fn push_and_wake(inbox: &Inbox<Item, CAP>, wakeup: &Wakeup, item: Item) -> bool {
    match inbox.push(item) {
        Ok(Wake::Needed) => {
            wakeup.signal();
            true
        }
        Ok(Wake::Coalesced) => false,
        Err(Full(_)) => panic!("inbox model: capacity {CAP} cannot be full here"),
    }
}

/// `producers` threads push `per_producer` items each while the consumer (the model's main
/// thread) drains and parks.
fn wake_protocol(producers: usize, per_producer: usize, park: Park, drain: Drain) {
    let inbox = Arc::new(Inbox::<Item, CAP>::new());
    let wakeup = Arc::new(Wakeup::new());
    let handles: Vec<_> = (0..producers)
        .map(|p| {
            let inbox = inbox.clone();
            let wakeup = wakeup.clone();
            thread::spawn(move || {
                (0..per_producer)
                    .filter(|&i| push_and_wake(&inbox, &wakeup, (p, i)))
                    .count()
            })
        })
        .collect();

    let total = producers * per_producer;
    let consumed = consume(&inbox, &wakeup, total, park, drain);
    let signals: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();

    // Every item exactly once, each producer's items in its push order.
    let mut next = vec![0; producers];
    for &(p, i) in &consumed.order {
        assert_eq!(
            next[p], i,
            "inbox model: producer {p}'s items out of order or duplicated"
        );
        next[p] += 1;
    }
    assert!(
        next.iter().all(|&n| n == per_producer),
        "inbox model: items lost: {next:?}"
    );
    assert_eq!(inbox.pop(), None, "inbox model: an item was left behind");
    // Signals are coalesced: never more than pushes, and at most one per clearing of the
    // flag (the initial state counts as one).
    assert!(
        signals <= total,
        "inbox model: {signals} signals for {total} pushes"
    );
    assert!(
        signals <= consumed.prepare_calls + 1,
        "inbox model: {signals} signals for {} prepare_park calls",
        consumed.prepare_calls
    );
    if consumed.parks > 0 {
        cover("consumer parked and was woken");
    }
    if consumed.prepare_calls > consumed.parks {
        cover("prepare_park found work: no park");
    }
    if signals < total {
        cover("a push was coalesced");
    }
    if signals > 1 {
        cover("several signals");
    }
}

/// What the wake-protocol models must reach, or they prove little.
const WAKE_SITUATIONS: [&str; 4] = [
    "consumer parked and was woken",
    "prepare_park found work: no park",
    "a push was coalesced",
    "several signals",
];

#[test]
fn wake_protocol_two_producers() {
    check("wake_protocol_two_producers (2x2 items)", || {
        wake_protocol(2, 2, Park::Correct, Drain::Eager)
    })
    .assert_covered(&WAKE_SITUATIONS);
}

#[test]
fn wake_protocol_two_producers_yielding_consumer() {
    check(
        "wake_protocol_two_producers_yielding_consumer (2x2 items)",
        || wake_protocol(2, 2, Park::Correct, Drain::AfterYield),
    )
    .assert_covered(&WAKE_SITUATIONS);
}

/// Canary: with `prepare_park` checking for work before clearing the flag, a push that
/// lands between the two steps is coalesced (the flag was still set) and the consumer
/// parks with that item queued and no signal coming: loom reports the deadlock.
#[test]
#[should_panic(expected = "deadlock")]
fn canary_wake_protocol_check_then_clear_loses_a_wakeup() {
    check("canary_wake_protocol_check_then_clear", || {
        wake_protocol(2, 2, Park::CheckThenClear, Drain::Eager)
    });
}

/// Serialized scheduling: each producer records its item and pushes it under one shared
/// lock; the consumer's order must equal the recorded order.
fn serialized_fifo(drain: Drain) {
    const PRODUCERS: usize = 2;
    const PER: usize = 2;
    let inbox = Arc::new(Inbox::<Item, CAP>::new());
    let wakeup = Arc::new(Wakeup::new());
    let recorded = Arc::new(Mutex::new(Vec::new()));
    let handles: Vec<_> = (0..PRODUCERS)
        .map(|p| {
            let (inbox, wakeup, recorded) = (inbox.clone(), wakeup.clone(), recorded.clone());
            thread::spawn(move || {
                for i in 0..PER {
                    let mut log = recorded.lock().unwrap();
                    log.push((p, i));
                    push_and_wake(&inbox, &wakeup, (p, i));
                }
            })
        })
        .collect();
    let consumed = consume(&inbox, &wakeup, PRODUCERS * PER, Park::Correct, drain);
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(
        consumed.order,
        *recorded.lock().unwrap(),
        "inbox model: consumer order differs from the linearization order"
    );
    if consumed.order[0].0 == 1 {
        cover("producer 1 pushed first");
    }
    if consumed
        .order
        .windows(2)
        .filter(|w| w[0].0 != w[1].0)
        .count()
        > 1
    {
        cover("producers interleaved");
    }
}

#[test]
fn serialized_fifo_eager_consumer() {
    check("serialized_fifo_eager_consumer (2x2 items)", || {
        serialized_fifo(Drain::Eager)
    })
    .assert_covered(&["producer 1 pushed first", "producers interleaved"]);
}

#[test]
fn serialized_fifo_yielding_consumer() {
    check("serialized_fifo_yielding_consumer (2x2 items)", || {
        serialized_fifo(Drain::AfterYield)
    })
    .assert_covered(&["producer 1 pushed first", "producers interleaved"]);
}

/// A capacity-2 inbox, three producers racing one push each while the consumer pops once:
/// a push that finds the inbox full gets its own item back; pushed + handed back = all,
/// and what was pushed comes out exactly once.
#[test]
fn full_inbox_hands_the_item_back() {
    check("full_inbox_hands_the_item_back (cap 2, 3 pushes)", || {
        let inbox = Arc::new(Inbox::<usize, 2>::new());
        let pushed = Arc::new(AtomicUsize::new(0));
        let handles: Vec<_> = (0..3)
            .map(|p| {
                let (inbox, pushed) = (inbox.clone(), pushed.clone());
                thread::spawn(move || match inbox.push(p) {
                    Ok(_) => {
                        pushed.fetch_add(1, Ordering::Relaxed);
                        None
                    }
                    Err(Full(back)) => Some(back),
                })
            })
            .collect();
        // Yield first, or loom never lets a push precede this pop (see `Drain`).
        thread::yield_now();
        let early = inbox.pop();
        let mut seen = [0usize; 3];
        let mut handed_back = 0;
        for (p, h) in handles.into_iter().enumerate() {
            if let Some(back) = h.join().unwrap() {
                assert_eq!(
                    back, p,
                    "inbox model: Full handed back another producer's item"
                );
                seen[back] += 1;
                handed_back += 1;
            }
        }
        let mut popped = 0;
        for item in early.into_iter().chain(core::iter::from_fn(|| inbox.pop())) {
            seen[item] += 1;
            popped += 1;
        }
        assert_eq!(
            seen,
            [1, 1, 1],
            "inbox model: an item was lost or duplicated"
        );
        assert_eq!(popped, pushed.load(Ordering::Relaxed));
        if early.is_none() {
            assert_eq!(
                handed_back, 1,
                "inbox model: 3 pushes into 2 slots, none popped"
            );
        }
        assert!(
            handed_back <= 1,
            "inbox model: Full with a free slot for sure"
        );
        match (early.is_some(), handed_back) {
            (true, 0) => cover("popped early, all three fit (the ring wrapped)"),
            (true, _) => cover("popped early, one handed back"),
            (false, _) => cover("nothing popped early, one handed back"),
        }
    })
    .assert_covered(&[
        "popped early, all three fit (the ring wrapped)",
        "popped early, one handed back",
        "nothing popped early, one handed back",
    ]);
}
