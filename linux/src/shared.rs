//! What a loop's handles share: the core engine over the Linux platform, the loop thread's
//! join handle, and the options.

use std::alloc::Layout;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, Weak};
use std::thread::JoinHandle;

use reseau_core::{Engine, LifecycleError, Operation, Slot, State};
use rustix::io::Errno;

use crate::error::Error;
use crate::event_loop::EventLoopOptions;
use crate::handle::LoopHandle;
use crate::platform::LinuxPlatform;
use crate::sys::SysError;
use crate::task::Payload;

/// The engine of a Linux loop: tasks inline in a slot array sized at run time.
pub(crate) type LoopEngine = Engine<LinuxPlatform, Payload, Box<[Slot<Payload>]>>;

pub(crate) struct Shared {
    pub(crate) engine: LoopEngine,
    /// The loop thread of the current (or last) `run`, joined by the next `run`, by
    /// `wait_for_stop_completion` once it has exited, or by `destroy`.
    pub(crate) thread: Mutex<Option<JoinHandle<()>>>,
    pub(crate) options: EventLoopOptions,
    pub(crate) weak: Weak<Shared>,
    /// The fork generation the loop was created in (see [`crate::fork`]).
    pub(crate) fork_generation: u64,
}

impl Shared {
    pub(crate) fn platform(&self) -> &LinuxPlatform {
        self.engine.platform()
    }

    /// Whether this process is a forked child of the one that created the loop: then
    /// nothing may touch the loop's kernel objects (they are the parent's too).
    #[inline]
    pub(crate) fn inherited(&self) -> bool {
        crate::fork::inherited(self.fork_generation)
    }

    pub(crate) fn handle(&self) -> LoopHandle {
        LoopHandle {
            shared: self.weak.clone(),
            id: self.engine.id(),
        }
    }
}

pub(crate) fn destroyed_error(op: Operation) -> LifecycleError {
    LifecycleError {
        op,
        state: State::Destroyed,
        on_loop_thread: false,
        live: false,
    }
}

/// A new loop identity, never 0 and never reused in this process.
pub(crate) fn next_loop_id() -> u64 {
    // Counts from 0 (a zero-initialised static costs no file space), handing out from 1.
    static LAST: AtomicU64 = AtomicU64::new(0);
    LAST.fetch_add(1, Ordering::Relaxed) + 1
}

/// `capacity` empty slots in one zeroed allocation: the pages are the kernel's zero pages
/// until a slot is first used, so a large capacity costs address space, not memory, until
/// it fills.
pub(crate) fn alloc_slots(capacity: usize) -> Result<Box<[Slot<Payload>]>, Error> {
    let layout = Layout::array::<Slot<Payload>>(capacity)
        .map_err(|_| Error::InvalidOption("capacity too large for the address space"))?;
    debug_assert!(
        layout.size() > 0,
        "capacity ≥ 1 and a slot is not zero-sized"
    );
    // SAFETY: the layout has a nonzero size (checked by the caller: capacity ≥ 1).
    let ptr = unsafe { std::alloc::alloc_zeroed(layout) }.cast::<Slot<Payload>>();
    if ptr.is_null() {
        return Err(Error::Sys(SysError {
            call: "alloc (task slots)",
            errno: Errno::NOMEM,
        }));
    }
    // SAFETY: all-zero bytes are a valid empty `Slot` (reseau-core guarantees it: `Slot::new`
    // is all zeros); `ptr` comes from the global allocator with the layout of exactly
    // `capacity` slots, which is what a `Box<[Slot]>` of that length frees with.
    Ok(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(ptr, capacity)) })
}
