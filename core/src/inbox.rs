//! The cross-thread inbox: a bounded multi-producer queue with a wake protocol.
//!
//! # Queue
//! A fixed ring of `N` cells (N a power of two), each with a sequence number (the bounded
//! queue design of D. Vyukov): a producer claims a position with one CAS on `tail` — that
//! CAS is the push's linearization point, so items leave in exactly the order their pushes
//! linearized ("serialized scheduling") — writes the item, then publishes it by storing the
//! cell's sequence. Popping is the mirror image on `head`. When the ring is full the item
//! comes back as [`Full`]. Nothing allocates; every atomic comes from [`crate::sync`].
//!
//! # Wake protocol
//! The consumer (the loop thread) sleeps in the kernel (`epoll_wait` in the shim) and is
//! woken by a signal the producer sends (an eventfd write). One flag, `notified`, decides who
//! sends it:
//! - a producer, after publishing its item, swaps `notified` to set; if it was clear, the
//!   push returns [`Wake::Needed`] and that producer must signal the consumer;
//!   otherwise [`Wake::Coalesced`]: a signal is already on its way or the consumer is awake
//!   and has not yet declared it wants to sleep;
//! - the consumer, before sleeping, calls [`prepare_park`](Inbox::prepare_park), which swaps
//!   `notified` to clear and *then* looks for a published item; it may sleep only when it
//!   finds none.
//!
//! Both sides use read-modify-writes on the one flag, so their order is total: either the
//! producer's swap comes first, and the consumer's clearing swap acquires the producer's
//! item and sees it (no sleep), or the consumer's comes first, and the producer finds the
//! flag clear and signals. No wakeup is lost. While the consumer stays awake the flag stays
//! set, so a burst of pushes costs one signal per sleep, not one per push. The loom model
//! `reseau-loom-tests` checks this, with a canary that swaps the consumer's two steps.

use core::mem::MaybeUninit;

use crate::Full;
use crate::sync::{AtomicU8, AtomicUsize, Ordering, UnsafeCell};

/// What a producer must do after a successful push.
#[must_use = "a producer told Wake::Needed must signal the consumer or it may sleep forever"]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// The consumer may be asleep and nobody has signaled it yet: signal it now.
    Needed,
    /// A signal is already pending, or the consumer is awake: do nothing.
    Coalesced,
}

struct Cell<T> {
    seq: AtomicUsize,
    value: UnsafeCell<MaybeUninit<T>>,
}

#[repr(align(64))]
struct CachePadded<T>(T);

/// A bounded MPSC queue, FIFO in the order pushes linearize, with the wake protocol
/// described in the [module docs](self).
///
/// Any thread may [`push`](Self::push). [`pop`](Self::pop) is safe from any thread too
/// (the ring is in fact multi-consumer), but the wake protocol assumes one consumer: the
/// loop thread. `N` must be a power of two and at least 2 (checked at compile time).
///
/// ```
/// use reseau_core::{Inbox, Wake};
///
/// let inbox: Inbox<u32, 2> = Inbox::new();
/// // The first push after the consumer parked must signal it; the next one need not.
/// assert_eq!(inbox.push(1).unwrap(), Wake::Needed);
/// assert_eq!(inbox.push(2).unwrap(), Wake::Coalesced);
/// // Full: the item comes back, nothing is lost.
/// assert_eq!(inbox.push(3).unwrap_err().into_inner(), 3);
/// assert!(!inbox.prepare_park(), "items are waiting: drain before sleeping");
/// assert_eq!((inbox.pop(), inbox.pop(), inbox.pop()), (Some(1), Some(2), None));
/// assert!(inbox.prepare_park(), "empty: the consumer may sleep");
/// assert_eq!(inbox.push(4).unwrap(), Wake::Needed, "and the next push wakes it");
/// ```
pub struct Inbox<T, const N: usize> {
    head: CachePadded<AtomicUsize>,
    tail: CachePadded<AtomicUsize>,
    notified: CachePadded<AtomicU8>,
    cells: [Cell<T>; N],
}

// SAFETY: the inbox moves `T`s between threads (so `T: Send`) and never hands out
// references to them; each cell's value is accessed only by the one thread that won the
// CAS for its position, and the cell's sequence (Release/Acquire) orders those accesses.
unsafe impl<T: Send, const N: usize> Send for Inbox<T, N> {}
// SAFETY: as above; shared access only moves values in and out under the cell protocol.
unsafe impl<T: Send, const N: usize> Sync for Inbox<T, N> {}

impl<T, const N: usize> Default for Inbox<T, N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T, const N: usize> core::fmt::Debug for Inbox<T, N> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Inbox")
            .field("capacity", &N)
            .field("len", &self.len())
            .finish()
    }
}

impl<T, const N: usize> Inbox<T, N> {
    const VALID: () = assert!(
        N.is_power_of_two() && N >= 2,
        "Inbox capacity must be a power of two, at least 2"
    );

    /// An empty inbox; `const`, so an inbox can be a `static` on a target without an
    /// allocator.
    ///
    /// ```
    /// use reseau_core::Inbox;
    /// static INBOX: Inbox<u32, 8> = Inbox::new();
    /// INBOX.push(7).unwrap();
    /// assert_eq!(INBOX.len(), 1);
    /// ```
    #[cfg(not(loom))]
    pub const fn new() -> Self {
        #[allow(clippy::let_unit_value)]
        let () = Self::VALID;
        let mut cells = [const { MaybeUninit::<Cell<T>>::uninit() }; N];
        let mut i = 0;
        while i < N {
            cells[i] = MaybeUninit::new(Cell {
                seq: AtomicUsize::new(i),
                value: UnsafeCell::new(MaybeUninit::uninit()),
            });
            i += 1;
        }
        // SAFETY: the loop initialized every element, and `[MaybeUninit<Cell<T>>; N]` has
        // the layout of `[Cell<T>; N]`; the source array has no drop glue to run twice.
        let cells = unsafe { (&raw const cells).cast::<[Cell<T>; N]>().read() };
        Self {
            head: CachePadded(AtomicUsize::new(0)),
            tail: CachePadded(AtomicUsize::new(0)),
            notified: CachePadded(AtomicU8::new(0)),
            cells,
        }
    }

    /// An empty inbox (loom builds: loom's atomics are not `const`).
    #[cfg(loom)]
    pub fn new() -> Self {
        #[allow(clippy::let_unit_value)]
        let () = Self::VALID;
        Self {
            head: CachePadded(AtomicUsize::new(0)),
            tail: CachePadded(AtomicUsize::new(0)),
            notified: CachePadded(AtomicU8::new(0)),
            cells: core::array::from_fn(|i| Cell {
                seq: AtomicUsize::new(i),
                value: UnsafeCell::new(MaybeUninit::uninit()),
            }),
        }
    }

    /// Initializes an empty inbox in place and returns it; equivalent to writing
    /// [`new`](Self::new) into `place`, but cell by cell, so a large inbox can be built
    /// directly on the heap (`Box::new_uninit()`), never as a temporary on the stack.
    pub fn init_in(place: &mut MaybeUninit<Self>) -> &mut Self {
        #[allow(clippy::let_unit_value)]
        let () = Self::VALID;
        let p = place.as_mut_ptr();
        // SAFETY: `p` comes from a `&mut MaybeUninit<Self>`, so it is valid and aligned for
        // writes of `Self` and of each field. Every field is written exactly once (the cells
        // one by one, through pointers derived with `&raw mut`, never through a reference to
        // uninitialized memory); afterwards the value is fully initialized.
        unsafe {
            (&raw mut (*p).head).write(CachePadded(AtomicUsize::new(0)));
            (&raw mut (*p).tail).write(CachePadded(AtomicUsize::new(0)));
            (&raw mut (*p).notified).write(CachePadded(AtomicU8::new(0)));
            let cells = (&raw mut (*p).cells).cast::<Cell<T>>();
            for i in 0..N {
                cells.add(i).write(Cell {
                    seq: AtomicUsize::new(i),
                    value: UnsafeCell::new(MaybeUninit::uninit()),
                });
            }
            place.assume_init_mut()
        }
    }

    /// The fixed capacity `N`.
    pub const fn capacity(&self) -> usize {
        N
    }

    /// How many items are queued; a snapshot, exact only when no push or pop races it.
    pub fn len(&self) -> usize {
        let tail = self.tail.0.load(Ordering::Acquire);
        let head = self.head.0.load(Ordering::Acquire);
        tail.wrapping_sub(head).min(N)
    }

    /// Whether no item is queued; a snapshot, like [`len`](Self::len).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Pushes `item` at the back; on success says whether this producer must wake the
    /// consumer.
    ///
    /// # Errors
    /// [`Full`] with the item when `N` items are queued.
    pub fn push(&self, item: T) -> Result<Wake, Full<T>> {
        self.enqueue(item)?;
        Ok(self.after_push())
    }

    fn after_push(&self) -> Wake {
        if self.notified.0.swap(1, Ordering::AcqRel) == 0 {
            Wake::Needed
        } else {
            Wake::Coalesced
        }
    }

    fn enqueue(&self, item: T) -> Result<(), Full<T>> {
        let mut pos = self.tail.0.load(Ordering::Relaxed);
        loop {
            let cell = &self.cells[pos % N];
            let seq = cell.seq.load(Ordering::Acquire);
            let diff = seq.wrapping_sub(pos) as isize;
            if diff == 0 {
                match self.tail.0.compare_exchange(
                    pos,
                    pos.wrapping_add(1),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => {
                        // SAFETY: winning the CAS for `pos` while the cell's sequence equals
                        // `pos` gives this thread exclusive access to the cell until it
                        // publishes `pos + 1` below; the cell is empty (its last value, if
                        // any, was moved out before its sequence became `pos`).
                        cell.value.with_mut(|p| unsafe { (*p).write(item) });
                        cell.seq.store(pos.wrapping_add(1), Ordering::Release);
                        return Ok(());
                    }
                    Err(current) => pos = current,
                }
            } else if diff < 0 {
                return Err(Full(item));
            } else {
                pos = self.tail.0.load(Ordering::Relaxed);
            }
        }
    }

    /// Pops the oldest published item, or `None` when there is none.
    ///
    /// An item whose producer has claimed its position but not yet published it blocks the
    /// items behind it (FIFO); that producer's own push will then ask for a wake if needed.
    pub fn pop(&self) -> Option<T> {
        let mut pos = self.head.0.load(Ordering::Relaxed);
        loop {
            let cell = &self.cells[pos % N];
            let seq = cell.seq.load(Ordering::Acquire);
            let diff = seq.wrapping_sub(pos.wrapping_add(1)) as isize;
            if diff == 0 {
                match self.head.0.compare_exchange(
                    pos,
                    pos.wrapping_add(1),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => {
                        // SAFETY: the sequence `pos + 1` (acquired above) says a producer
                        // wrote and published this cell; winning the CAS on `head` makes
                        // this thread the only one to read it before releasing the cell.
                        let item = cell.value.with(|p| unsafe { (*p).assume_init_read() });
                        cell.seq.store(pos.wrapping_add(N), Ordering::Release);
                        return Some(item);
                    }
                    Err(current) => pos = current,
                }
            } else if diff < 0 {
                return None;
            } else {
                pos = self.head.0.load(Ordering::Relaxed);
            }
        }
    }

    /// Whether the item at the head is published (the next `pop` would return it).
    fn head_ready(&self) -> bool {
        let pos = self.head.0.load(Ordering::Relaxed);
        let seq = self.cells[pos % N].seq.load(Ordering::Acquire);
        seq == pos.wrapping_add(1)
    }

    /// The consumer's last step before sleeping: clears the wake flag, then looks for work.
    ///
    /// Returns `true` when the consumer may sleep: every push published after this call
    /// will return [`Wake::Needed`] to one producer, which will signal. Returns `false` when
    /// an item is waiting: drain again instead of sleeping.
    pub fn prepare_park(&self) -> bool {
        self.notified.0.swap(0, Ordering::AcqRel);
        !self.head_ready()
    }

    /// **Deliberately broken** `prepare_park` (checks for work *before* clearing the flag),
    /// compiled only for loom builds: the canary proving the loom model can catch a lost
    /// wakeup. Never use it.
    #[cfg(loom)]
    #[doc(hidden)]
    pub fn canary_prepare_park_check_then_clear(&self) -> bool {
        let empty = !self.head_ready();
        self.notified.0.store(0, Ordering::Release);
        empty
    }
}

impl<T, const N: usize> Drop for Inbox<T, N> {
    fn drop(&mut self) {
        while self.pop().is_some() {}
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::vec::Vec;

    #[test]
    fn inbox_is_fifo() {
        let q = Inbox::<u32, 8>::new();
        for i in 0..8 {
            let _ = q.push(i).unwrap();
        }
        assert_eq!(q.len(), 8);
        let got: Vec<u32> = core::iter::from_fn(|| q.pop()).collect();
        assert_eq!(got, (0..8).collect::<Vec<_>>());
        assert!(q.is_empty());
    }

    #[test]
    fn inbox_full_hands_the_item_back_and_keeps_the_rest() {
        let q = Inbox::<u32, 4>::new();
        for i in 0..4 {
            let _ = q.push(i).unwrap();
        }
        assert_eq!(q.push(99), Err(Full(99)));
        assert_eq!(q.pop(), Some(0));
        let _ = q.push(4).unwrap();
        let got: Vec<u32> = core::iter::from_fn(|| q.pop()).collect();
        assert_eq!(got, [1, 2, 3, 4]);
    }

    #[test]
    fn inbox_init_in_place_equals_new() {
        let mut place = MaybeUninit::<Inbox<u32, 4>>::uninit();
        let q = Inbox::init_in(&mut place);
        assert_eq!(q.push(7).unwrap(), Wake::Needed);
        assert_eq!(q.pop(), Some(7));
        assert_eq!(q.pop(), None);
        // SAFETY: `init_in` initialized it.
        unsafe { place.assume_init_drop() };
    }

    #[test]
    fn inbox_wraps_many_times() {
        let q = Inbox::<u32, 2>::new();
        for i in 0..1000 {
            let _ = q.push(i).unwrap();
            assert_eq!(q.pop(), Some(i));
        }
    }

    #[test]
    fn inbox_wake_is_asked_once_per_park() {
        let q = Inbox::<u32, 16>::new();
        assert_eq!(q.push(1).unwrap(), Wake::Needed);
        assert_eq!(q.push(2).unwrap(), Wake::Coalesced);
        assert_eq!(q.push(3).unwrap(), Wake::Coalesced);
        // The consumer is awake and drains: pushes meanwhile stay coalesced.
        assert_eq!(q.pop(), Some(1));
        assert_eq!(q.push(4).unwrap(), Wake::Coalesced);
        // Work is waiting: may not park.
        assert!(!q.prepare_park());
        while q.pop().is_some() {}
        assert!(q.prepare_park());
        // Parked: the next push must wake, the one after need not.
        assert_eq!(q.push(5).unwrap(), Wake::Needed);
        assert_eq!(q.push(6).unwrap(), Wake::Coalesced);
    }

    #[test]
    fn inbox_drop_drops_queued_items() {
        let item = Arc::new(());
        {
            let q = Inbox::<Arc<()>, 4>::new();
            let _ = q.push(item.clone()).unwrap();
            let _ = q.push(item.clone()).unwrap();
            assert_eq!(Arc::strong_count(&item), 3);
        }
        assert_eq!(Arc::strong_count(&item), 1);
    }

    #[test]
    fn inbox_producers_keep_their_order_and_lose_nothing() {
        const PER: u32 = if cfg!(miri) { 50 } else { 5_000 };
        let q = Arc::new(Inbox::<(u32, u32), 64>::new());
        let producers: Vec<_> = (0..3)
            .map(|p| {
                let q = q.clone();
                std::thread::spawn(move || {
                    for i in 0..PER {
                        let mut item = (p, i);
                        loop {
                            match q.push(item) {
                                Ok(_) => break,
                                Err(Full(back)) => {
                                    item = back;
                                    std::thread::yield_now();
                                }
                            }
                        }
                    }
                })
            })
            .collect();
        let mut next = [0u32; 3];
        let mut got = 0;
        while got < 3 * PER {
            match q.pop() {
                Some((p, i)) => {
                    assert_eq!(next[p as usize], i, "producer {p} out of order");
                    next[p as usize] += 1;
                    got += 1;
                }
                None => std::thread::yield_now(),
            }
        }
        for p in producers {
            p.join().unwrap();
        }
        assert_eq!(q.pop(), None);
    }
}
