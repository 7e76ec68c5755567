//! The loop thread's task queue: an ASAP FIFO plus timed tasks, in fixed capacity.
//!
//! # Shape
//! Tasks live in `N` slots. A slot is free, on the *ready list* (an intrusive doubly linked
//! FIFO of tasks to run now) or in the *timer heap* (a binary min-heap of slot indices keyed
//! by `(deadline, submission sequence)`, each slot remembering its heap position). So
//! scheduling, canceling and popping cost O(1) (ready list) or O(log N) (heap), and nothing
//! allocates.
//!
//! # Batches
//! [`begin`](Scheduler::begin) moves every timed task whose deadline has passed to the end
//! of the ready list, in deadline order, and returns a [`Batch`] marker: the sequence number
//! the next submission will get. [`pop_due`](Scheduler::pop_due) pops the ready list's head
//! only while it is older than the marker. Hence:
//! - a batch runs what was due when it began: ASAP tasks first, then the due timed tasks by
//!   `(deadline, submission order)` — equal deadlines are stable, unlike aws-c-common's heap;
//! - a task scheduled while the batch runs (even ASAP, even at a past deadline) waits for
//!   the next batch;
//! - a task canceled while the batch runs is simply gone from the list.
//!
//! Between two pops no borrow is held, so the code running a task may schedule or cancel on
//! this same scheduler ([`run_due`](Scheduler::run_due) passes `&mut Self` to its callback).

use core::mem::MaybeUninit;

use crate::{Full, TaskId, TaskStatus};

const NIL: u32 = u32::MAX;

#[derive(Debug, Clone, Copy)]
enum Link {
    Free { next: u32 },
    Ready { prev: u32, next: u32 },
    Timed { pos: u32 },
}

#[derive(Debug)]
struct Slot<T> {
    generation: u32,
    link: Link,
    deadline: u64,
    seq: u64,
    payload: Option<T>,
}

/// A marker of what was due when a batch began; see [`Scheduler::begin`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batch {
    end_seq: u64,
}

/// A fixed-capacity task scheduler owned by one thread (the loop thread).
///
/// `T` is the task payload (a boxed closure in the Linux shim, a function pointer or an enum
/// on bare metal); `N` the capacity (at most `u32::MAX - 1`). Deadlines are plain `u64`
/// ticks of the caller's clock (nanoseconds in the shim); `u64::MAX` is a valid deadline.
///
/// Memory: `N` slots of `size_of::<T>() + 32` bytes (about; `T` is stored as `Option<T>`)
/// plus `4 * N` bytes of heap indices, all inline. [`new`](Self::new) is `const`, so a
/// scheduler can live in a `static`; [`init_in`](Self::init_in) builds one in place (in a
/// `Box::new_uninit()`, say) without a full-size temporary on the stack.
///
/// ```
/// use reseau_core::{Scheduler, TaskStatus};
///
/// // Tasks are plain values here; a full scheduler hands the task back.
/// let mut s: Scheduler<&str, 4> = Scheduler::new();
/// s.schedule_at("late", 20).unwrap();
/// s.schedule_at("early", 10).unwrap();
/// let dropped = s.schedule_now("dropped").unwrap();
/// s.schedule_now("now").unwrap();
/// assert_eq!(s.schedule_now("fifth").unwrap_err().into_inner(), "fifth");
/// assert_eq!(s.cancel(dropped), Some("dropped"));
/// assert_eq!(s.next_deadline(), Some(0), "a ready task is due at once");
///
/// let mut ran = Vec::new();
/// s.run_due(15, |_, task, status| {
///     assert_eq!(status, TaskStatus::RunReady);
///     ran.push(task);
/// });
/// assert_eq!(ran, ["now", "early"], "ready tasks first, then timers by deadline");
/// assert_eq!(s.next_deadline(), Some(20));
/// ```
#[derive(Debug)]
pub struct Scheduler<T, const N: usize> {
    /// Slots `0..used` have been handed out at least once; the rest were never used.
    used: u32,
    free: u32,
    heap_len: u32,
    ready_head: u32,
    ready_tail: u32,
    ready_len: usize,
    next_seq: u64,
    heap: [u32; N],
    slots: [Slot<T>; N],
}

impl<T> Slot<T> {
    const EMPTY: Self = Slot {
        generation: 0,
        link: Link::Free { next: NIL },
        deadline: 0,
        seq: 0,
        payload: None,
    };
}

impl<T, const N: usize> Default for Scheduler<T, N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T, const N: usize> Scheduler<T, N> {
    const CAPACITY_FITS: () = assert!(
        N < NIL as usize,
        "Scheduler capacity must be below u32::MAX"
    );

    /// An empty scheduler.
    pub const fn new() -> Self {
        #[allow(clippy::let_unit_value)]
        let () = Self::CAPACITY_FITS;
        Self {
            used: 0,
            free: NIL,
            heap_len: 0,
            ready_head: NIL,
            ready_tail: NIL,
            ready_len: 0,
            next_seq: 0,
            heap: [0; N],
            slots: [const { Slot::EMPTY }; N],
        }
    }

    /// Initializes an empty scheduler in place and returns it; equivalent to writing
    /// [`new`](Self::new) into `place`, but element by element, so a large scheduler can be
    /// built directly on the heap (`Box::new_uninit()`), never as a temporary on the stack.
    pub fn init_in(place: &mut MaybeUninit<Self>) -> &mut Self {
        #[allow(clippy::let_unit_value)]
        let () = Self::CAPACITY_FITS;
        let p = place.as_mut_ptr();
        // SAFETY: `p` comes from a `&mut MaybeUninit<Self>`, so it is valid and aligned for
        // writes of `Self` and of each of its fields. Every field is written exactly once
        // (the arrays element by element, through pointers derived with `&raw mut`, which
        // never creates a reference to uninitialized memory), so after the writes the whole
        // value is initialized and `assume_init_mut` is sound.
        unsafe {
            (&raw mut (*p).used).write(0);
            (&raw mut (*p).free).write(NIL);
            (&raw mut (*p).heap_len).write(0);
            (&raw mut (*p).ready_head).write(NIL);
            (&raw mut (*p).ready_tail).write(NIL);
            (&raw mut (*p).ready_len).write(0);
            (&raw mut (*p).next_seq).write(0);
            (&raw mut (*p).heap).cast::<u32>().write_bytes(0, N);
            let slots = (&raw mut (*p).slots).cast::<Slot<T>>();
            for i in 0..N {
                slots.add(i).write(Slot::EMPTY);
            }
            place.assume_init_mut()
        }
    }

    /// The fixed capacity `N`.
    pub const fn capacity(&self) -> usize {
        N
    }

    /// How many tasks are scheduled (ASAP and timed).
    pub fn len(&self) -> usize {
        self.ready_len + self.heap_len as usize
    }

    /// Whether no task is scheduled.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether `id` names a task still scheduled here.
    pub fn contains(&self, id: TaskId) -> bool {
        self.live_slot(id).is_some()
    }

    /// Schedules `task` to run in the next batch, after the ASAP tasks already scheduled.
    ///
    /// # Errors
    /// [`Full`] with the task when all `N` slots are in use.
    pub fn schedule_now(&mut self, task: T) -> Result<TaskId, Full<T>> {
        let (idx, id) = self.alloc(task, 0)?;
        self.ready_push_back(idx);
        Ok(id)
    }

    /// Schedules `task` to run in the first batch that begins at or after `deadline`.
    ///
    /// A deadline in the past is fine: the task runs in the next batch (after that batch's
    /// ASAP tasks). Tasks with equal deadlines run in the order they were scheduled.
    ///
    /// # Errors
    /// [`Full`] with the task when all `N` slots are in use.
    pub fn schedule_at(&mut self, task: T, deadline: u64) -> Result<TaskId, Full<T>> {
        let (idx, id) = self.alloc(task, deadline)?;
        self.heap_push(idx);
        Ok(id)
    }

    /// Removes the task `id` and hands it back, so the caller can run it with
    /// [`TaskStatus::Canceled`].
    ///
    /// Returns `None`, and changes nothing, when `id` is stale (the task already ran or was
    /// canceled, even if its slot now holds another task) or unknown.
    pub fn cancel(&mut self, id: TaskId) -> Option<T> {
        let idx = self.live_slot(id)?;
        match self.slots[idx as usize].link {
            Link::Ready { .. } => self.ready_unlink(idx),
            Link::Timed { pos } => self.heap_remove(pos as usize),
            Link::Free { .. } => return None,
        }
        Some(self.release(idx))
    }

    /// When the next task is due: `Some(0)` when ASAP tasks are waiting, `Some(deadline)` of
    /// the earliest timed task otherwise, `None` when nothing is scheduled.
    pub fn next_deadline(&self) -> Option<u64> {
        if self.ready_len > 0 {
            return Some(0);
        }
        self.heap_top().map(|i| self.slots[i as usize].deadline)
    }

    /// Begins a batch at time `now`: moves every timed task due at `now` (deadline ≤ now) to
    /// the end of the ready list in `(deadline, submission)` order, and returns the marker
    /// that bounds the batch. Pop the batch with [`pop_due`](Self::pop_due).
    pub fn begin(&mut self, now: u64) -> Batch {
        while let Some(top) = self.heap_top() {
            if self.slots[top as usize].deadline > now {
                break;
            }
            self.heap_remove(0);
            let seq = self.take_seq();
            self.slots[top as usize].seq = seq;
            self.ready_push_back(top);
        }
        Batch {
            end_seq: self.next_seq,
        }
    }

    /// Pops the next task of `batch`, or `None` when the batch is done. Tasks scheduled
    /// after the batch began are not part of it.
    pub fn pop_due(&mut self, batch: &Batch) -> Option<T> {
        let head = self.ready_head;
        if head == NIL || self.slots[head as usize].seq >= batch.end_seq {
            return None;
        }
        self.ready_unlink(head);
        Some(self.release(head))
    }

    /// Runs one batch at time `now`: every task due when the call began, each passed to `f`
    /// with [`TaskStatus::RunReady`] and with this scheduler, so `f` may schedule or cancel.
    /// Returns how many tasks ran.
    pub fn run_due<F>(&mut self, now: u64, mut f: F) -> usize
    where
        F: FnMut(&mut Self, T, TaskStatus),
    {
        let batch = self.begin(now);
        let mut ran = 0;
        while let Some(task) = self.pop_due(&batch) {
            f(self, task, TaskStatus::RunReady);
            ran += 1;
        }
        ran
    }

    /// Pops any task, due or not: the ready list's head first, then the earliest timer.
    pub fn pop_any(&mut self) -> Option<T> {
        let idx = if self.ready_head != NIL {
            let head = self.ready_head;
            self.ready_unlink(head);
            head
        } else {
            let top = self.heap_top()?;
            self.heap_remove(0);
            top
        };
        Some(self.release(idx))
    }

    /// Cancels everything: passes each task to `f` with [`TaskStatus::Canceled`] until the
    /// scheduler is empty, so tasks scheduled by canceled tasks are canceled too. Returns how
    /// many tasks were canceled.
    pub fn cancel_all<F>(&mut self, mut f: F) -> usize
    where
        F: FnMut(&mut Self, T, TaskStatus),
    {
        let mut canceled = 0;
        while let Some(task) = self.pop_any() {
            f(self, task, TaskStatus::Canceled);
            canceled += 1;
        }
        canceled
    }

    // ---- slots ----

    fn take_seq(&mut self) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        seq
    }

    fn live_slot(&self, id: TaskId) -> Option<u32> {
        if id.slot >= self.used {
            return None;
        }
        let slot = &self.slots[id.slot as usize];
        match slot.link {
            Link::Free { .. } => None,
            _ if slot.generation != id.generation => None,
            _ => Some(id.slot),
        }
    }

    fn alloc(&mut self, task: T, deadline: u64) -> Result<(u32, TaskId), Full<T>> {
        let idx = if self.free != NIL {
            let idx = self.free;
            let Link::Free { next } = self.slots[idx as usize].link else {
                unreachable!("free list holds a slot in use")
            };
            self.free = next;
            idx
        } else if (self.used as usize) < N {
            self.used += 1;
            self.used - 1
        } else {
            return Err(Full(task));
        };
        let seq = self.take_seq();
        let slot = &mut self.slots[idx as usize];
        slot.deadline = deadline;
        slot.seq = seq;
        slot.payload = Some(task);
        let id = TaskId {
            slot: idx,
            generation: slot.generation,
        };
        Ok((idx, id))
    }

    fn release(&mut self, idx: u32) -> T {
        let slot = &mut self.slots[idx as usize];
        slot.generation = slot.generation.wrapping_add(1);
        slot.link = Link::Free { next: self.free };
        self.free = idx;
        slot.payload.take().expect("a live slot holds its task")
    }

    // ---- ready list ----

    fn ready_push_back(&mut self, idx: u32) {
        let tail = self.ready_tail;
        self.slots[idx as usize].link = Link::Ready {
            prev: tail,
            next: NIL,
        };
        if tail == NIL {
            self.ready_head = idx;
        } else if let Link::Ready { next, .. } = &mut self.slots[tail as usize].link {
            *next = idx;
        }
        self.ready_tail = idx;
        self.ready_len += 1;
    }

    fn ready_unlink(&mut self, idx: u32) {
        let Link::Ready { prev, next } = self.slots[idx as usize].link else {
            unreachable!("unlinking a slot that is not on the ready list")
        };
        if prev == NIL {
            self.ready_head = next;
        } else if let Link::Ready { next: n, .. } = &mut self.slots[prev as usize].link {
            *n = next;
        }
        if next == NIL {
            self.ready_tail = prev;
        } else if let Link::Ready { prev: p, .. } = &mut self.slots[next as usize].link {
            *p = prev;
        }
        self.ready_len -= 1;
    }

    // ---- timer heap ----

    fn key(&self, idx: u32) -> (u64, u64) {
        let s = &self.slots[idx as usize];
        (s.deadline, s.seq)
    }

    fn heap_set(&mut self, pos: usize, idx: u32) {
        self.heap[pos] = idx;
        self.slots[idx as usize].link = Link::Timed { pos: pos as u32 };
    }

    fn heap_top(&self) -> Option<u32> {
        (self.heap_len > 0).then(|| self.heap[0])
    }

    fn heap_push(&mut self, idx: u32) {
        // Cannot overflow: the heap holds at most as many entries as there are slots.
        let pos = self.heap_len as usize;
        self.heap_len += 1;
        self.heap_set(pos, idx);
        self.sift_up(pos);
    }

    fn heap_remove(&mut self, pos: usize) {
        let last = self.heap_len as usize - 1;
        if pos != last {
            let moved = self.heap[last];
            self.heap_set(pos, moved);
        }
        self.heap_len -= 1;
        if pos < last {
            self.sift_up(pos);
            self.sift_down(pos);
        }
    }

    fn sift_up(&mut self, mut pos: usize) {
        let idx = self.heap[pos];
        let key = self.key(idx);
        while pos > 0 {
            let parent = (pos - 1) / 2;
            let p = self.heap[parent];
            if self.key(p) <= key {
                break;
            }
            self.heap_set(pos, p);
            pos = parent;
        }
        self.heap_set(pos, idx);
    }

    fn sift_down(&mut self, mut pos: usize) {
        let idx = self.heap[pos];
        let key = self.key(idx);
        let len = self.heap_len as usize;
        loop {
            let left = 2 * pos + 1;
            if left >= len {
                break;
            }
            let right = left + 1;
            let child = if right < len && self.key(self.heap[right]) < self.key(self.heap[left]) {
                right
            } else {
                left
            };
            let c = self.heap[child];
            if key <= self.key(c) {
                break;
            }
            self.heap_set(pos, c);
            pos = child;
        }
        self.heap_set(pos, idx);
    }

    #[cfg(all(test, not(loom)))]
    fn set_generation(&mut self, slot: u32, generation: u32) {
        self.slots[slot as usize].generation = generation;
    }
}

#[cfg(all(test, not(loom)))]
mod tests;
