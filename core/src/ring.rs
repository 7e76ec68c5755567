//! A bounded ring of slot indices whose cells live inside the engine's slots.
//!
//! The engine keeps two of these over its one slot array: the *free ring* (indices of free
//! slots; the loop pushes, any thread pops) and the *inbox* (indices of tasks scheduled
//! from other threads; any thread pushes, the loop pops). Cell `k` of each ring is a field
//! of slot `k`, so a ring costs no memory of its own beyond its head and tail, and the
//! capacity is any number chosen at run time.
//!
//! The algorithm is D. Vyukov's bounded queue with crossbeam's lap stamps: a position is
//! `lap | index` with `one_lap = (capacity + 1).next_power_of_two()`, so the capacity need
//! not be a power of two. A push claims its position with one CAS on `tail` — the push's
//! linearization point, which is what makes the inbox FIFO in the order schedules
//! linearized — writes the value and publishes it by storing the cell's stamp. A pop is
//! the mirror image on `head`.
//!
//! A cell stores its stamp *relative to its index* (`stamp - index`), so an all-zero cell
//! is a valid empty cell of lap 0: slot arrays can be zero-initialized (a `const`
//! constructor, or `calloc`'s untouched pages) with no pass over the cells.

use crate::sync::{AtomicU32, AtomicUsize, CachePadded, Ordering, fence};

/// One cell of a ring: a stamp and a value (a slot index).
#[derive(Debug)]
pub(crate) struct RingCell {
    /// The cell's stamp minus its index (0 when never used).
    stamp: AtomicUsize,
    value: AtomicU32,
}

impl RingCell {
    #[cfg(not(loom))]
    pub(crate) const fn new() -> Self {
        Self {
            stamp: AtomicUsize::new(0),
            value: AtomicU32::new(0),
        }
    }

    #[cfg(loom)]
    pub(crate) fn new() -> Self {
        Self {
            stamp: AtomicUsize::new(0),
            value: AtomicU32::new(0),
        }
    }

    #[inline(always)]
    fn load_stamp(&self, index: usize) -> usize {
        self.stamp.load(Ordering::Acquire).wrapping_add(index)
    }

    #[inline(always)]
    fn store_stamp(&self, index: usize, stamp: usize) {
        self.stamp
            .store(stamp.wrapping_sub(index), Ordering::Release);
    }
}

/// The position after `pos` in a ring of `cap` cells: the next index of the same lap, or
/// index 0 of the next lap after the last cell.
#[inline(always)]
fn next_position(pos: usize, cap: usize, one_lap: usize) -> usize {
    if (pos & (one_lap - 1)) + 1 < cap {
        pos.wrapping_add(1)
    } else {
        (pos & !(one_lap - 1)).wrapping_add(one_lap)
    }
}

/// The head and tail of a ring; the cells are handed in by the caller.
#[derive(Debug)]
pub(crate) struct Ring {
    head: CachePadded<AtomicUsize>,
    tail: CachePadded<AtomicUsize>,
}

/// What a pop found when it found no value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Empty {
    /// Nothing was pushed.
    Empty,
    /// A push has claimed the head position but not yet published it.
    Unpublished,
}

impl Ring {
    #[cfg(not(loom))]
    pub(crate) const fn new() -> Self {
        Self {
            head: CachePadded(AtomicUsize::new(0)),
            tail: CachePadded(AtomicUsize::new(0)),
        }
    }

    #[cfg(loom)]
    pub(crate) fn new() -> Self {
        Self {
            head: CachePadded(AtomicUsize::new(0)),
            tail: CachePadded(AtomicUsize::new(0)),
        }
    }

    /// Pushes `value`; `Err(value)` when all `cap` cells hold values.
    pub(crate) fn push<'a>(
        &self,
        cap: usize,
        one_lap: usize,
        cell: impl Fn(usize) -> &'a RingCell,
        value: u32,
    ) -> Result<(), u32> {
        let mut tail = self.tail.load(Ordering::Relaxed);
        loop {
            let index = tail & (one_lap - 1);
            let c = cell(index);
            let stamp = c.load_stamp(index);
            if stamp == tail {
                let next = next_position(tail, cap, one_lap);
                match self.tail.compare_exchange_weak(
                    tail,
                    next,
                    Ordering::SeqCst,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => {
                        c.value.store(value, Ordering::Relaxed);
                        c.store_stamp(index, tail.wrapping_add(1));
                        return Ok(());
                    }
                    Err(t) => tail = t,
                }
            } else if stamp.wrapping_add(one_lap) == tail.wrapping_add(1) {
                fence(Ordering::SeqCst);
                let head = self.head.load(Ordering::Relaxed);
                if head.wrapping_add(one_lap) == tail {
                    return Err(value);
                }
                tail = self.tail.load(Ordering::Relaxed);
            } else {
                crate::sync::spin_hint();
                tail = self.tail.load(Ordering::Relaxed);
            }
        }
    }

    /// Pops the oldest value. A position claimed by a push that has not yet published it
    /// yields [`Empty::Unpublished`] rather than waiting for it.
    pub(crate) fn pop<'a>(
        &self,
        cap: usize,
        one_lap: usize,
        cell: impl Fn(usize) -> &'a RingCell,
    ) -> Result<u32, Empty> {
        let mut head = self.head.load(Ordering::Relaxed);
        loop {
            let index = head & (one_lap - 1);
            let c = cell(index);
            let stamp = c.load_stamp(index);
            if stamp == head.wrapping_add(1) {
                let next = next_position(head, cap, one_lap);
                match self.head.compare_exchange_weak(
                    head,
                    next,
                    Ordering::SeqCst,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => {
                        let value = c.value.load(Ordering::Relaxed);
                        c.store_stamp(index, head.wrapping_add(one_lap));
                        return Ok(value);
                    }
                    Err(h) => head = h,
                }
            } else if stamp == head {
                fence(Ordering::SeqCst);
                let tail = self.tail.load(Ordering::Relaxed);
                if tail == head {
                    return Err(Empty::Empty);
                }
                return Err(Empty::Unpublished);
            } else {
                crate::sync::spin_hint();
                head = self.head.load(Ordering::Relaxed);
            }
        }
    }

    /// [`push`](Self::push) for a ring with one producer (the engine's free ring: only the
    /// driver frees slots). The position is claimed by a store, not a compare-and-swap: no
    /// other push can race for it. Pops on other threads read `tail` only to tell "empty"
    /// from "claimed but unpublished", which the store answers as the CAS did.
    pub(crate) fn push_single<'a>(
        &self,
        cap: usize,
        one_lap: usize,
        cell: impl Fn(usize) -> &'a RingCell,
        value: u32,
    ) -> Result<(), u32> {
        let tail = self.tail.load(Ordering::Relaxed);
        let index = tail & (one_lap - 1);
        let c = cell(index);
        while c.load_stamp(index) != tail {
            // The cell still holds last lap's value: either every cell is full, or a pop
            // has taken it (moved `head`) and not yet released it (stored its stamp).
            fence(Ordering::SeqCst);
            if self.head.load(Ordering::Relaxed).wrapping_add(one_lap) == tail {
                return Err(value);
            }
            crate::sync::spin_hint();
        }
        let next = next_position(tail, cap, one_lap);
        self.tail.store(next, Ordering::Release);
        c.value.store(value, Ordering::Relaxed);
        c.store_stamp(index, tail.wrapping_add(1));
        Ok(())
    }

    /// [`pop`](Self::pop) for a ring with one consumer (the engine's inbox: only the driver
    /// takes from it). The head advances by a store, not a compare-and-swap. A pusher that
    /// reads the old `head` after this store only sees the ring as it was a moment earlier
    /// (the cell is released by its stamp, stored after).
    pub(crate) fn pop_single<'a>(
        &self,
        cap: usize,
        one_lap: usize,
        cell: impl Fn(usize) -> &'a RingCell,
    ) -> Result<u32, Empty> {
        let head = self.head.load(Ordering::Relaxed);
        let index = head & (one_lap - 1);
        let c = cell(index);
        if c.load_stamp(index) != head.wrapping_add(1) {
            // Not published: nothing pushed, or a push that claimed this position has not
            // yet stored its stamp. The SeqCst fence orders our stamp read before the tail
            // read, as in `pop`.
            fence(Ordering::SeqCst);
            return Err(if self.tail.load(Ordering::Relaxed) == head {
                Empty::Empty
            } else {
                Empty::Unpublished
            });
        }
        let next = next_position(head, cap, one_lap);
        self.head.store(next, Ordering::Release);
        let value = c.value.load(Ordering::Relaxed);
        c.store_stamp(index, head.wrapping_add(one_lap));
        Ok(value)
    }

    /// Whether the value at the head is published (the next `pop` returns it). For the
    /// ring's only consumer.
    pub(crate) fn head_ready<'a>(
        &self,
        one_lap: usize,
        cell: impl Fn(usize) -> &'a RingCell,
    ) -> bool {
        let head = self.head.load(Ordering::Relaxed);
        let index = head & (one_lap - 1);
        cell(index).load_stamp(index) == head.wrapping_add(1)
    }

    /// How many values are pushed (a snapshot; exact when nothing races it).
    pub(crate) fn len(&self, cap: usize, one_lap: usize) -> usize {
        let tail = self.tail.load(Ordering::Acquire);
        let head = self.head.load(Ordering::Acquire);
        let pos = |p: usize| {
            (p / one_lap)
                .wrapping_mul(cap)
                .wrapping_add(p & (one_lap - 1))
        };
        pos(tail).wrapping_sub(pos(head)).min(cap)
    }
}
