//! The synchronisation facade: every atomic and every shared cell of reseau-core comes
//! from here.
//!
//! Normally these are `core::sync::atomic` and a thin wrapper over `core::cell::UnsafeCell`;
//! built with `--cfg loom` they are loom's instrumented versions, so the loom models in
//! `reseau-loom-tests` see every atomic access and every cell access of the core. Code in
//! this crate must not import `core::sync::atomic` directly.
//!
//! Only 32-bit-wide atomics (`AtomicU8`, `AtomicU32`, `AtomicUsize`) are used so the core
//! builds for targets without 64-bit atomics, such as `thumbv7em-none-eabihf`.

#[cfg(not(loom))]
pub use core::sync::atomic::{AtomicU8, AtomicU32, AtomicUsize, Ordering, fence};

#[cfg(loom)]
pub use loom::sync::atomic::{AtomicU8, AtomicU32, AtomicUsize, Ordering, fence};

/// An `UnsafeCell` with loom's closure-based API.
///
/// `with` gives a `*const T`, `with_mut` a `*mut T`; under `--cfg loom` loom checks that
/// no access through one overlaps a conflicting access through another thread.
#[cfg(not(loom))]
#[derive(Debug)]
pub struct UnsafeCell<T>(core::cell::UnsafeCell<T>);

#[cfg(not(loom))]
impl<T> UnsafeCell<T> {
    /// Wraps `value`.
    pub const fn new(value: T) -> Self {
        Self(core::cell::UnsafeCell::new(value))
    }

    /// Calls `f` with a shared pointer to the contents.
    #[inline(always)]
    pub fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
        f(self.0.get())
    }

    /// Calls `f` with a mutable pointer to the contents.
    #[inline(always)]
    pub fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
        f(self.0.get())
    }
}

#[cfg(loom)]
pub use loom::cell::UnsafeCell;

/// A value alone on its cache line (64 bytes on x86_64, aarch64 and most Cortex-M caches'
/// granule or less), so that a write to it from one core does not invalidate neighbours
/// another core is reading (crossbeam pads its queue's head and tail the same way).
#[derive(Debug, Default)]
#[repr(align(64))]
pub struct CachePadded<T>(pub T);

impl<T> core::ops::Deref for CachePadded<T> {
    type Target = T;
    #[inline(always)]
    fn deref(&self) -> &T {
        &self.0
    }
}

/// A busy-wait hint: a CPU spin hint normally; under loom a yield, so a model that spins
/// on another thread's progress lets loom schedule that thread.
#[inline(always)]
pub fn spin_hint() {
    #[cfg(not(loom))]
    core::hint::spin_loop();
    #[cfg(loom)]
    loom::thread::yield_now();
}
