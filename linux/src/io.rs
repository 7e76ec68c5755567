//! IO readiness subscriptions: edge-triggered by default, level-triggered or one-shot on
//! request.
//!
//! A subscription owns its source (anything `AsFd`): it cannot be closed while registered
//! (io-safety), [`LoopHandle::unsubscribe`](crate::LoopHandle::unsubscribe) hands it back,
//! and destroy drops the ones left. Sources are registered with
//! `EPOLLET | EPOLLRDHUP | EPOLLHUP | EPOLLERR` plus `EPOLLIN` / `EPOLLOUT`: readiness is
//! reported on *edges*, so a callback must read (or write) until `EAGAIN` before it can
//! expect another event, and a blocking descriptor is refused. [`Interest::LEVEL`] drops
//! `EPOLLET` (the callback runs every tick while the source is ready);
//! [`Interest::ONESHOT`] adds `EPOLLONESHOT` (one event, then disabled until `modify`
//! re-arms it). The mode bits ride in the [`Interest`], so `modify` can change them too.
//!
//! The epoll data of a registration is its slab index and the slot's generation, never a
//! pointer: an event for a subscription removed earlier in the same batch (or whose
//! descriptor number was reused since) finds a different generation and is dropped.

use std::any::{Any, TypeId};
use std::fmt;
use std::ops::BitOr;
use std::os::fd::{AsFd, BorrowedFd};

use rustix::event::epoll::EventFlags;

use crate::handle::LoopHandle;
use crate::sys::SysError;

/// What a subscription wants to hear about.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Interest(u8);

impl Interest {
    /// Readable (`EPOLLIN`).
    pub const READABLE: Self = Self(1);
    /// Writable (`EPOLLOUT`).
    pub const WRITABLE: Self = Self(2);
    /// A mode, not a direction: level-triggered (no `EPOLLET`). The callback runs in every
    /// tick while the source stays ready, so it need not drain to `EAGAIN` — and a callback
    /// that neither drains nor unsubscribes keeps the loop from ever sleeping.
    pub const LEVEL: Self = Self(4);
    /// A mode, not a direction: one-shot (`EPOLLONESHOT`). After one event the kernel
    /// disables the registration until [`modify`](crate::LoopHandle::modify) re-arms it
    /// (from the callback itself too: the change applies when it returns); combines with
    /// [`LEVEL`](Self::LEVEL) or the default edge-triggered mode.
    pub const ONESHOT: Self = Self(8);

    const DIRECTIONS: u8 = 1 | 2;

    /// Whether no direction (readable, writable) is set: refused by `subscribe` and
    /// `modify`, whatever the mode bits.
    pub const fn is_empty(self) -> bool {
        self.0 & Self::DIRECTIONS == 0
    }

    /// Whether every interest in `other` is set here.
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    pub(crate) fn epoll_flags(self) -> EventFlags {
        let mut flags = EventFlags::RDHUP | EventFlags::HUP | EventFlags::ERR;
        if !self.contains(Self::LEVEL) {
            flags |= EventFlags::ET;
        }
        if self.contains(Self::ONESHOT) {
            flags |= EventFlags::ONESHOT;
        }
        if self.contains(Self::READABLE) {
            flags |= EventFlags::IN;
        }
        if self.contains(Self::WRITABLE) {
            flags |= EventFlags::OUT;
        }
        flags
    }
}

impl BitOr for Interest {
    type Output = Self;
    fn bitor(self, rhs: Self) -> Self {
        Self(self.0 | rhs.0)
    }
}

impl fmt::Debug for Interest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names = [
            (Self::READABLE, "READABLE"),
            (Self::WRITABLE, "WRITABLE"),
            (Self::LEVEL, "LEVEL"),
            (Self::ONESHOT, "ONESHOT"),
        ];
        write_flags(
            f,
            names
                .iter()
                .filter(|(x, _)| self.contains(*x))
                .map(|(_, n)| *n),
        )
    }
}

fn write_flags<'a>(
    f: &mut fmt::Formatter<'_>,
    names: impl Iterator<Item = &'a str>,
) -> fmt::Result {
    let mut first = true;
    for n in names {
        if !first {
            f.write_str(" | ")?;
        }
        f.write_str(n)?;
        first = false;
    }
    if first {
        f.write_str("(empty)")?;
    }
    Ok(())
}

/// The readiness an event delivers; several at once when the kernel says so.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Readiness(u8);

impl Readiness {
    /// Readable (`EPOLLIN`): read until `EAGAIN`.
    pub const READABLE: Self = Self(1);
    /// Writable (`EPOLLOUT`).
    pub const WRITABLE: Self = Self(2);
    /// The peer shut down its writing side (`EPOLLRDHUP`).
    pub const REMOTE_HANG_UP: Self = Self(4);
    /// Hung up (`EPOLLHUP`): e.g. every write end of a pipe is closed.
    pub const CLOSED: Self = Self(8);
    /// An error condition (`EPOLLERR`).
    pub const ERROR: Self = Self(16);

    /// Whether every readiness in `other` is set here.
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    /// Whether `READABLE` is set.
    pub const fn is_readable(self) -> bool {
        self.contains(Self::READABLE)
    }

    /// Whether `WRITABLE` is set.
    pub const fn is_writable(self) -> bool {
        self.contains(Self::WRITABLE)
    }

    /// Whether `CLOSED` is set.
    pub const fn is_closed(self) -> bool {
        self.contains(Self::CLOSED)
    }

    pub(crate) fn from_epoll(flags: EventFlags) -> Self {
        // Each epoll bit shifted onto its readiness bit (no table to walk).
        let f = flags.bits();
        let bit = |flag: EventFlags, to: Self| {
            let from = flag.bits().trailing_zeros();
            let to_bit = u32::from(to.0).trailing_zeros();
            ((f >> from) & 1) << to_bit
        };
        Self(
            (bit(EventFlags::IN, Self::READABLE)
                | bit(EventFlags::OUT, Self::WRITABLE)
                | bit(EventFlags::RDHUP, Self::REMOTE_HANG_UP)
                | bit(EventFlags::HUP, Self::CLOSED)
                | bit(EventFlags::ERR, Self::ERROR)) as u8,
        )
    }
}

impl BitOr for Readiness {
    type Output = Self;
    fn bitor(self, rhs: Self) -> Self {
        Self(self.0 | rhs.0)
    }
}

impl fmt::Debug for Readiness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names = [
            (Self::READABLE, "READABLE"),
            (Self::WRITABLE, "WRITABLE"),
            (Self::REMOTE_HANG_UP, "REMOTE_HANG_UP"),
            (Self::CLOSED, "CLOSED"),
            (Self::ERROR, "ERROR"),
        ];
        write_flags(
            f,
            names
                .iter()
                .filter(|(x, _)| self.contains(*x))
                .map(|(_, n)| *n),
        )
    }
}

/// What a subscription callback tells the loop. A callback that panics counts as `Keep`
/// under the default [`PanicPolicy::Catch`](crate::PanicPolicy::Catch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoControl {
    /// Keep the subscription.
    Keep,
    /// Deregister the subscription and drop its source (closing it) once the callback
    /// returns. (A callback cannot `unsubscribe` itself: its source is borrowed.)
    Unsubscribe,
}

/// A handle on a subscription, for `unsubscribe`: the loop's identity, a slab index and
/// the slot's generation. Plain data; a stale handle, or one of another loop, is refused
/// (`NotSubscribed`), never confused with another subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Subscription {
    loop_id: u64,
    index: u32,
    generation: u32,
}

impl Subscription {
    /// The epoll data of the registration (index and generation; the loop is implied).
    pub(crate) fn token(self) -> u64 {
        (u64::from(self.generation) << 32) | u64::from(self.index)
    }

    /// The subscription an event's token names on the loop `loop_id`.
    pub(crate) fn from_token(loop_id: u64, token: u64) -> Self {
        Self {
            loop_id,
            index: token as u32,
            generation: (token >> 32) as u32,
        }
    }

    /// The identity of the loop this subscription belongs to.
    pub fn loop_id(self) -> u64 {
        self.loop_id
    }
}

/// Why a subscribe was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscribeErrorKind {
    /// The descriptor is blocking: edge-triggered readiness needs `O_NONBLOCK`.
    Blocking,
    /// The interest was empty.
    EmptyInterest,
    /// The descriptor is already subscribed on this loop (`EEXIST`); the existing
    /// subscription is untouched.
    AlreadySubscribed,
    /// Destroy has begun.
    Destroyed(reseau_core::LifecycleError),
    /// The loop was inherited through `fork` (see [`Error::Forked`](crate::Error::Forked)).
    Forked,
    /// A syscall failed (`fcntl(F_GETFL)`, `epoll_ctl(ADD)`).
    Sys(SysError),
}

/// A refused subscribe: why, and the source, handed back.
pub struct SubscribeError<S> {
    /// Why.
    pub kind: SubscribeErrorKind,
    /// The source, untouched.
    pub source: S,
}

impl<S> fmt::Debug for SubscribeError<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SubscribeError")
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for SubscribeErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SubscribeErrorKind::Blocking => f.write_str(
                "subscribe refused: the descriptor is blocking (edge-triggered readiness needs O_NONBLOCK)",
            ),
            SubscribeErrorKind::EmptyInterest => f.write_str("subscribe refused: empty interest"),
            SubscribeErrorKind::AlreadySubscribed => f.write_str(
                "subscribe refused: the descriptor is already subscribed on this loop (kept as it was)",
            ),
            SubscribeErrorKind::Destroyed(e) => write!(f, "subscribe refused ({e})"),
            SubscribeErrorKind::Sys(e) => write!(f, "subscribe failed: {e}"),
            SubscribeErrorKind::Forked => f.write_str(
                "subscribe refused: the loop was inherited through fork and belongs to the parent",
            ),
        }
    }
}

impl<S> fmt::Display for SubscribeError<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.kind.fmt(f)
    }
}

impl<S> std::error::Error for SubscribeError<S> {}

impl std::error::Error for SubscribeErrorKind {}

/// Why an unsubscribe was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnsubscribeError {
    /// Not a live subscription of this loop (never was, already removed, or stale).
    NotSubscribed,
    /// The source is not of the type asked for; the subscription is untouched.
    WrongSourceType,
    /// Called from the subscription's own callback (its source is borrowed): return
    /// [`IoControl::Unsubscribe`] instead.
    InOwnCallback,
    /// Called off the loop thread while the loop runs (a callback may be running): call it
    /// from the loop thread (schedule a task) or while the loop is stopped.
    OffLoopThreadWhileRunning,
}

impl fmt::Display for UnsubscribeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            UnsubscribeError::NotSubscribed => "unsubscribe: not subscribed on this loop",
            UnsubscribeError::WrongSourceType => {
                "unsubscribe: the source has another type; the subscription is untouched"
            }
            UnsubscribeError::InOwnCallback => {
                "unsubscribe from the subscription's own callback: return IoControl::Unsubscribe instead"
            }
            UnsubscribeError::OffLoopThreadWhileRunning => {
                "unsubscribe off the loop thread while the loop runs: schedule it on the loop, or stop the loop first"
            }
        })
    }
}

impl std::error::Error for UnsubscribeError {}

/// Why [`LoopHandle::modify`](crate::LoopHandle::modify) was refused; the subscription's
/// interest is unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ModifyError {
    /// Not a live subscription of this loop (never was, already removed, stale, or of
    /// another loop).
    NotSubscribed,
    /// The new interest was empty.
    EmptyInterest,
    /// The loop is gone (destroyed and dropped).
    Destroyed,
    /// The loop was inherited through `fork` (see [`Error::Forked`](crate::Error::Forked)).
    Forked,
    /// `epoll_ctl(MOD)` failed; the registration keeps its previous interest.
    Sys(SysError),
}

impl fmt::Display for ModifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModifyError::NotSubscribed => f.write_str("modify: not subscribed on this loop"),
            ModifyError::EmptyInterest => f.write_str("modify refused: empty interest"),
            ModifyError::Destroyed => f.write_str("modify refused: the loop is destroyed"),
            ModifyError::Forked => f.write_str(
                "modify refused: the loop was inherited through fork and belongs to the parent",
            ),
            ModifyError::Sys(e) => {
                write!(f, "modify failed: {e}; the previous interest is kept")
            }
        }
    }
}

impl std::error::Error for ModifyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ModifyError::Sys(e) => Some(e),
            _ => None,
        }
    }
}

/// The type-erased subscription: its source and callback.
pub(crate) trait Source: Send {
    fn fd(&self) -> BorrowedFd<'_>;
    fn dispatch(&mut self, handle: &LoopHandle, readiness: Readiness) -> IoControl;
    fn source_type(&self) -> TypeId;
    fn into_source(self: Box<Self>) -> Box<dyn Any + Send>;
}

pub(crate) struct Entry<S, F> {
    pub(crate) source: S,
    pub(crate) callback: F,
}

impl<S, F> Source for Entry<S, F>
where
    S: AsFd + Send + 'static,
    F: FnMut(&LoopHandle, &mut S, Readiness) -> IoControl + Send + 'static,
{
    fn fd(&self) -> BorrowedFd<'_> {
        self.source.as_fd()
    }
    fn dispatch(&mut self, handle: &LoopHandle, readiness: Readiness) -> IoControl {
        (self.callback)(handle, &mut self.source, readiness)
    }
    fn source_type(&self) -> TypeId {
        TypeId::of::<S>()
    }
    fn into_source(self: Box<Self>) -> Box<dyn Any + Send> {
        Box::new(self.source)
    }
}

const NIL: u32 = u32::MAX;

enum SlotState {
    Free { next: u32 },
    Active(Box<dyn Source>),
    InCallback,
}

struct Slot {
    generation: u32,
    state: SlotState,
    /// An interest change asked for while the entry was out for its callback, applied
    /// (`EPOLL_CTL_MOD`) when the callback returns.
    pending: Option<Interest>,
}

/// The subscriptions of one loop, indexed by [`Subscription`].
pub(crate) struct Slab {
    loop_id: u64,
    slots: Vec<Slot>,
    free: u32,
    len: usize,
}

/// What a lookup found.
pub(crate) enum Found<'a> {
    Active(&'a dyn Source),
    InCallback,
    Missing,
}

impl Slab {
    pub(crate) fn new(loop_id: u64) -> Self {
        Self {
            loop_id,
            slots: Vec::new(),
            free: NIL,
            len: 0,
        }
    }

    /// How many subscriptions are live.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The subscription the next [`insert`](Self::insert) returns.
    pub(crate) fn next_subscription(&self) -> Subscription {
        let (index, generation) = if self.free != NIL {
            (self.free, self.slots[self.free as usize].generation)
        } else {
            let index = self.slots.len() as u32;
            assert!(index < NIL, "more than u32::MAX - 1 subscriptions");
            (index, 0)
        };
        Subscription {
            loop_id: self.loop_id,
            index,
            generation,
        }
    }

    /// Stores `entry` under [`next_subscription`](Self::next_subscription).
    pub(crate) fn insert(&mut self, entry: Box<dyn Source>) -> Subscription {
        let sub = self.next_subscription();
        self.len += 1;
        let slot = Slot {
            generation: sub.generation,
            state: SlotState::Active(entry),
            pending: None,
        };
        if self.free != NIL {
            let SlotState::Free { next } = self.slots[sub.index as usize].state else {
                unreachable!("free list holds a live slot")
            };
            self.free = next;
            self.slots[sub.index as usize] = slot;
        } else {
            self.slots.push(slot);
        }
        sub
    }

    fn slot(&self, sub: Subscription) -> Option<&Slot> {
        if sub.loop_id != self.loop_id {
            return None;
        }
        self.slots
            .get(sub.index as usize)
            .filter(|s| s.generation == sub.generation)
    }

    pub(crate) fn find(&self, sub: Subscription) -> Found<'_> {
        match self.slot(sub).map(|s| &s.state) {
            Some(SlotState::Active(e)) => Found::Active(&**e),
            Some(SlotState::InCallback) => Found::InCallback,
            _ => Found::Missing,
        }
    }

    /// Removes a live, idle subscription and returns its entry.
    pub(crate) fn remove(&mut self, sub: Subscription) -> Option<Box<dyn Source>> {
        if sub.loop_id != self.loop_id {
            return None;
        }
        self.slots
            .get(sub.index as usize)
            .filter(|s| s.generation == sub.generation)?;
        self.take_active(sub.index)
    }

    /// Frees slot `index` and returns its entry if it holds a live, idle one; leaves it
    /// untouched otherwise.
    fn take_active(&mut self, index: u32) -> Option<Box<dyn Source>> {
        let slot = self.slots.get_mut(index as usize)?;
        match std::mem::replace(&mut slot.state, SlotState::Free { next: self.free }) {
            SlotState::Active(e) => {
                slot.generation = slot.generation.wrapping_add(1);
                self.free = index;
                self.len -= 1;
                Some(e)
            }
            other => {
                slot.state = other;
                None
            }
        }
    }

    /// Takes a live subscription's entry out for its callback (the slot stays reserved).
    pub(crate) fn take_for_callback(&mut self, sub: Subscription) -> Option<Box<dyn Source>> {
        let slot = self
            .slots
            .get_mut(sub.index as usize)
            .filter(|s| s.generation == sub.generation)?;
        match std::mem::replace(&mut slot.state, SlotState::InCallback) {
            SlotState::Active(e) => Some(e),
            other => {
                slot.state = other;
                None
            }
        }
    }

    /// Puts an entry back after its callback; returns the interest change recorded while
    /// it was out (see [`Slab::defer_modify`]), if any.
    pub(crate) fn put_back(
        &mut self,
        sub: Subscription,
        entry: Box<dyn Source>,
    ) -> Option<Interest> {
        let slot = self.slots.get_mut(sub.index as usize)?;
        slot.state = SlotState::Active(entry);
        slot.pending.take()
    }

    /// Records an interest change for a subscription whose entry is out for its callback;
    /// the last one recorded wins. False if `sub` is not in its callback.
    pub(crate) fn defer_modify(&mut self, sub: Subscription, interest: Interest) -> bool {
        if sub.loop_id != self.loop_id {
            return false;
        }
        match self
            .slots
            .get_mut(sub.index as usize)
            .filter(|s| s.generation == sub.generation)
        {
            Some(slot) if matches!(slot.state, SlotState::InCallback) => {
                slot.pending = Some(interest);
                true
            }
            _ => false,
        }
    }

    /// Frees a slot whose entry is out for a callback (the callback said Unsubscribe).
    pub(crate) fn release_in_callback(&mut self, sub: Subscription) {
        if let Some(slot) = self.slots.get_mut(sub.index as usize) {
            slot.state = SlotState::Free { next: self.free };
            slot.pending = None;
            slot.generation = slot.generation.wrapping_add(1);
            self.free = sub.index;
            self.len -= 1;
        }
    }

    /// Removes every live subscription.
    pub(crate) fn drain(&mut self) -> Vec<Box<dyn Source>> {
        let mut entries = Vec::with_capacity(self.len);
        for index in 0..self.slots.len() as u32 {
            entries.extend(self.take_active(index));
        }
        entries
    }
}
