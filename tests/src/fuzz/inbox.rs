//! Fuzz target `inbox`: [`Inbox`] under arbitrary single-threaded interleavings of several
//! logical producers and one consumer that drains, prepares to park and parks.
//!
//! The first byte picks the capacity (2, 4 or 8) and how the inbox is built
//! ([`Inbox::new`], or [`Inbox::init_in`] in a `Box::new_uninit()`). The rest is a sequence of [`Op`]s. The
//! harness models what the shim does around the inbox:
//! - a producer whose push returns [`Wake::Needed`] signals the consumer (an eventfd
//!   write): `signal_pending` becomes true;
//! - the consumer may park (block in `epoll_wait`) only when its last
//!   [`prepare_park`](Inbox::prepare_park) returned `true`; parking with a signal pending
//!   returns at once (the eventfd is readable) and consumes the signal; a parked consumer
//!   wakes when a pending signal is delivered.
//!
//! Invariants, after every step:
//! - FIFO, nothing lost, nothing duplicated: each pop returns exactly the model queue's
//!   front (items are `(producer, sequence)`), and every item is alive exactly once (a
//!   shared token's reference count is `1 + queued`), also after the inbox is dropped;
//! - `Full` exactly when `N` items are queued, handing back the very item pushed;
//! - `prepare_park` returns `true` exactly when nothing is queued;
//! - no lost wakeup: a parked consumer with queued items always has a signal pending;
//! - wakes coalesce: at most one push asks for a wake per `prepare_park` (and one before
//!   the first), and after `prepare_park` returned `true` the next successful push does ask.

use std::collections::VecDeque;
use std::rc::Rc;

use arbitrary::{Arbitrary, Unstructured};
use reseau_core::{Full, Inbox, Wake};

/// How many logical producers push.
pub const PRODUCERS: usize = 3;

/// One step of the interleaving.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Op {
    /// Producer `p % PRODUCERS` pushes its next item.
    Push(u8),
    /// Producer `p % PRODUCERS` pushes up to `k % 16` items in a row (stops at `Full`).
    Burst(u8, u8),
    /// The consumer pops once (a no-op while it is parked).
    Pop,
    /// The consumer pops until the inbox is empty (a no-op while it is parked).
    Drain,
    /// The consumer calls `prepare_park` (a no-op while it is parked).
    PreparePark,
    /// The consumer parks, if its last `prepare_park` allowed it.
    Park,
    /// A pending signal wakes the parked consumer.
    Deliver,
}

/// A queued item: who pushed it, its number in that producer's sequence, and a token
/// that counts live items.
#[derive(Debug)]
struct Item {
    producer: usize,
    seq: u32,
    _token: Rc<()>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Consumer {
    Awake,
    Parked,
}

/// Decodes `data` and checks an [`Inbox`] of the capacity its first byte selects.
///
/// # Panics
/// On the first violated invariant.
pub fn run(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let b = u.arbitrary::<u8>().unwrap_or(0);
    let in_place = (b / 3) % 2 == 1;
    match b % 3 {
        0 => run_with::<2>(u, in_place),
        1 => run_with::<4>(u, in_place),
        _ => run_with::<8>(u, in_place),
    }
}

struct Harness<'a, const N: usize> {
    inbox: Box<Inbox<Item, N>>,
    token: &'a Rc<()>,
    /// The reference queue: `(producer, seq)` in push order.
    model: VecDeque<(usize, u32)>,
    next: [u32; PRODUCERS],
    consumer: Consumer,
    /// The last `prepare_park` returned `true` and the consumer has not parked since.
    may_park: bool,
    /// An eventfd write not yet consumed.
    signal_pending: bool,
    /// A push returned `Needed` since the last `prepare_park`.
    needed_since_prepare: bool,
    /// The last `prepare_park` returned `true` and no push has asked for a wake since:
    /// the next successful push must.
    promised: bool,
    wakes: usize,
    pushes: usize,
}

fn new_inbox<const N: usize>(in_place: bool) -> Box<Inbox<Item, N>> {
    if !in_place {
        return Box::new(Inbox::new());
    }
    let mut place = Box::<Inbox<Item, N>>::new_uninit();
    Inbox::init_in(&mut place);
    // SAFETY: `init_in` initialized the whole value.
    unsafe { place.assume_init() }
}

fn run_with<const N: usize>(mut u: Unstructured<'_>, in_place: bool) {
    let token = Rc::new(());
    let mut h = Harness::<N> {
        inbox: new_inbox(in_place),
        token: &token,
        model: VecDeque::new(),
        next: [0; PRODUCERS],
        consumer: Consumer::Awake,
        may_park: false,
        signal_pending: false,
        needed_since_prepare: false,
        // A new inbox behaves as if the consumer had just prepared to park.
        promised: true,
        wakes: 0,
        pushes: 0,
    };
    let mut step = 0usize;
    while !u.is_empty() {
        let Ok(op) = Op::arbitrary(&mut u) else { break };
        h.apply(op);
        h.check(step, op);
        step += 1;
    }
    assert!(
        h.wakes <= h.pushes,
        "more wakes than pushes: {} > {}",
        h.wakes,
        h.pushes
    );
    let queued = h.model.len();
    assert_eq!(Rc::strong_count(&token), 1 + queued);
    drop(h);
    assert_eq!(
        Rc::strong_count(&token),
        1,
        "dropping the inbox did not drop its {queued} queued items exactly once"
    );
}

impl<const N: usize> Harness<'_, N> {
    fn apply(&mut self, op: Op) {
        match op {
            Op::Push(p) => {
                self.push(p as usize % PRODUCERS);
            }
            Op::Burst(p, k) => {
                for _ in 0..k % 16 {
                    if !self.push(p as usize % PRODUCERS) {
                        break;
                    }
                }
            }
            Op::Pop => {
                if self.consumer == Consumer::Awake {
                    self.pop();
                }
            }
            Op::Drain => {
                if self.consumer == Consumer::Awake {
                    while self.pop() {}
                }
            }
            Op::PreparePark => {
                if self.consumer == Consumer::Awake {
                    let may = self.inbox.prepare_park();
                    assert_eq!(
                        may,
                        self.model.is_empty(),
                        "prepare_park said may-sleep={may} with {} queued",
                        self.model.len()
                    );
                    self.may_park = may;
                    self.promised = may;
                    self.needed_since_prepare = false;
                }
            }
            Op::Park => {
                if self.consumer == Consumer::Awake && self.may_park {
                    self.may_park = false;
                    if self.signal_pending {
                        // epoll_wait returns at once; the consumer reads the eventfd.
                        self.signal_pending = false;
                    } else {
                        self.consumer = Consumer::Parked;
                    }
                }
            }
            Op::Deliver => {
                if self.consumer == Consumer::Parked && self.signal_pending {
                    self.signal_pending = false;
                    self.consumer = Consumer::Awake;
                }
            }
        }
    }

    /// Producer `p` pushes its next item; returns whether it was accepted.
    fn push(&mut self, p: usize) -> bool {
        let seq = self.next[p];
        let item = Item {
            producer: p,
            seq,
            _token: self.token.clone(),
        };
        match self.inbox.push(item) {
            Err(Full(back)) => {
                assert_eq!(
                    self.model.len(),
                    N,
                    "Full with only {} of {N} queued",
                    self.model.len()
                );
                assert_eq!(
                    (back.producer, back.seq),
                    (p, seq),
                    "Full handed back another item"
                );
                // The producer keeps the item to retry later with the same number; here
                // it gives up and drops it.
                false
            }
            Ok(wake) => {
                assert!(self.model.len() < N, "push accepted beyond capacity {N}");
                self.model.push_back((p, seq));
                self.next[p] += 1;
                self.pushes += 1;
                match wake {
                    Wake::Needed => {
                        assert!(
                            !self.needed_since_prepare,
                            "a second wake requested without a prepare_park in between"
                        );
                        self.needed_since_prepare = true;
                        self.promised = false;
                        self.signal_pending = true;
                        self.wakes += 1;
                    }
                    Wake::Coalesced => assert!(
                        !self.promised,
                        "prepare_park allowed sleeping, yet the next push did not ask for a wake"
                    ),
                }
                true
            }
        }
    }

    /// The consumer pops once; returns whether it got an item.
    fn pop(&mut self) -> bool {
        let got = self.inbox.pop().map(|i| (i.producer, i.seq));
        let want = self.model.pop_front();
        assert_eq!(got, want, "pop order (producer, seq)");
        got.is_some()
    }

    fn check(&self, step: usize, op: Op) {
        assert_eq!(
            self.inbox.len(),
            self.model.len(),
            "len after step {step} ({op:?})"
        );
        assert_eq!(self.inbox.is_empty(), self.model.is_empty());
        assert_eq!(
            Rc::strong_count(self.token),
            1 + self.model.len(),
            "items lost or duplicated after step {step} ({op:?})"
        );
        assert!(
            !(self.consumer == Consumer::Parked && !self.model.is_empty() && !self.signal_pending),
            "lost wakeup after step {step} ({op:?}): the consumer sleeps with {} queued and no signal pending",
            self.model.len()
        );
    }
}
