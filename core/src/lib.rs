//! reseau-core: the reseau event loop itself, with no operating system underneath.
//!
//! `#![no_std]`, no allocator. The [`Engine`] is the whole loop — task slots, the
//! cross-thread inbox, the scheduler, the lifecycle and the tick — generic over a small
//! [`Platform`] (wait with a timeout and dispatch events, wake from another thread, read a
//! clock, guard user code, block a waiter) and over its slot storage. The same engine runs
//! on Linux (`reseau-linux` is a platform under it: epoll, an eventfd, a thread), on bare
//! metal, under loom's platform and under the deterministic [`sim`] platform the tests and
//! fuzzers use. Every structure here has a fixed capacity, never allocates, and hands an
//! item back instead of dropping it when it is full.
//!
//! - [`Engine`], [`Slot`], [`TaskRef`], [`When`]: the loop; see [`engine`] for the path of
//!   a task, the wake protocol and the lifecycle.
//! - [`SmallTask`]: a closure of up to [`INLINE_BYTES`] bytes stored inline (no
//!   allocation); [`Runnable`] for function pointers and the application's own enums.
//! - [`Platform`]: what the engine asks of the system; [`sim::SimPlatform`] is a complete
//!   one with a virtual clock and a script of events.
//! - Building blocks, public on their own: [`Scheduler`] (ASAP FIFO plus timed tasks by
//!   `(deadline, submission)`), [`Inbox`] (bounded MPSC queue with the wake protocol),
//!   [`Lifecycle`] (the state machine in one atomic word), [`Claim`] (run-or-cancel,
//!   exactly once).
//! - [`sync`]: the facade through which all concurrent code reaches its atomics, so that
//!   `--cfg loom` model-checks every one of them.
//!
//! # Memory
//! An engine's memory is its slot array plus under 1 KiB of cache-padded atomics; nothing
//! else, ever. `size_of::<Slot<T>>()` is 80 bytes plus the payload `T` rounded to 8:
//!
//! | payload `T` | bytes per slot | 4,096 slots | 1,048,576 slots |
//! | --- | --- | --- | --- |
//! | `fn(&Cx, TaskStatus)` (8 bytes) | 104 | 416 KiB | 104 MiB |
//! | [`SmallTask`] (64 bytes: 56 inline + a vtable) | 160 | 640 KiB | 160 MiB |
//!
//! A slot array is valid when zeroed, so a large one can come from zeroed pages (the Linux
//! shim allocates with `alloc_zeroed`): a slot's memory is touched only when it is first
//! used.
//!
//! # Where heapless fits, and where it does not
//! The simulated platform's event script is a `heapless::Deque`: a plain fixed-capacity
//! container used by one thread. The engine's own storage is not a heapless type, for
//! three reasons: its slots are shared between threads through per-slot atomics, which
//! heapless containers (owned, `&mut`-mutated) do not model; the cross-thread rings are
//! threaded *through* the slots (cell `k` lives in slot `k`), which no separate queue
//! type can do; and heapless's own lock-free queues (`mpmc`, `spsc`) use
//! `core::sync::atomic` directly, invisible to loom through this crate's [`sync`] facade.
//! The engine takes any `AsRef<[Slot<T>]>` instead — a `[Slot<T>; N]`, a `&'static` slice,
//! a `Box<[Slot<T>]>`, or a `heapless::Vec<Slot<T>, N>` — one type over owned arrays and
//! run-time-sized slices, as heapless 0.9's `View` types are.
#![no_std]
#![deny(unsafe_op_in_unsafe_fn)]

#[cfg(any(test, loom))]
extern crate std;

mod claim;
pub mod engine;
mod full;
pub mod inbox;
pub mod lifecycle;
pub mod platform;
mod ring;
pub mod scheduler;
pub mod sim;
mod small_task;
pub mod sync;
mod task;

pub use claim::{Claim, ClaimOutcome};
#[cfg(loom)]
#[doc(hidden)]
pub use engine::Canary;
pub use engine::{
    CapacityError, DestroyError, DriveError, Engine, MAX_CAPACITY, Refused, RefusedKind, Slot,
    StartError, TaskRef, When,
};
pub use full::Full;
pub use inbox::{Inbox, Wake};
pub use lifecycle::{Lifecycle, LifecycleError, Operation, ProducerGuard, State, StopOutcome};
pub use platform::Platform;
pub use scheduler::{Batch, Scheduler};
pub use small_task::{INLINE_BYTES, Runnable, SmallTask};
pub use task::{TaskId, TaskStatus};
