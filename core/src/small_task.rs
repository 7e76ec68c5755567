//! Tasks the engine can run, and [`SmallTask`]: a closure stored inline, with no allocation.

use core::fmt;
use core::marker::PhantomData;
use core::mem::{ManuallyDrop, MaybeUninit, align_of, size_of};

use crate::TaskStatus;

/// What the engine stores in a slot and runs once, with the loop's context and a status.
///
/// Implemented for [`SmallTask`] (any small closure), and for plain function pointers, the
/// natural task type on bare metal. An enum of the application's jobs can implement it too.
pub trait Runnable<Cx: ?Sized> {
    /// Runs the task, consuming it.
    fn run(self, cx: &Cx, status: TaskStatus);
}

impl<Cx: ?Sized> Runnable<Cx> for fn(&Cx, TaskStatus) {
    fn run(self, cx: &Cx, status: TaskStatus) {
        self(cx, status)
    }
}

/// How many bytes of captures a [`SmallTask`] stores inline.
pub const INLINE_BYTES: usize = 56;

#[derive(Clone, Copy)]
#[repr(C, align(8))]
struct Buf([MaybeUninit<u64>; INLINE_BYTES / 8]);

/// Runs (`Some`) or drops (`None`) the closure of type `F` stored in `buf`.
///
/// # Safety
/// `buf` must hold an initialized `F` that is not used again afterwards.
type Vtable<Cx> = unsafe fn(buf: *mut Buf, run: Option<(&Cx, TaskStatus)>);

/// A `FnOnce(&Cx, TaskStatus) + Send` closure of at most [`INLINE_BYTES`] bytes (aligned to
/// at most 8), stored inline: making, moving and running one never allocates.
///
/// [`new`](Self::new) hands a closure that does not fit back to the caller, who may box it
/// (a `Box<F>` captured by a small closure always fits) — the Linux shim does exactly that,
/// so only large closures cost an allocation. The size is 64 bytes on every target.
///
/// ```
/// use reseau_core::{Runnable, SmallTask, TaskStatus};
///
/// let greeting = String::from("hello");
/// let task = SmallTask::<u32>::new(move |cx: &u32, status| {
///     assert_eq!(status, TaskStatus::RunReady);
///     assert_eq!(*cx, 7);
///     assert_eq!(greeting, "hello");
/// })
/// .unwrap_or_else(|_| panic!("a String fits inline"));
/// task.run(&7, TaskStatus::RunReady);
/// ```
pub struct SmallTask<Cx: ?Sized> {
    vtable: Vtable<Cx>,
    buf: Buf,
    _not_sync: PhantomData<*mut ()>,
}

// SAFETY: `new` accepts only `Send` closures, and a `SmallTask` gives no shared access to
// the closure (it is only run or dropped, by value or through `&mut`).
unsafe impl<Cx: ?Sized> Send for SmallTask<Cx> {}

/// # Safety
/// As [`Vtable`]: `buf` holds an initialized `F`, read out here exactly once.
unsafe fn vtable<Cx: ?Sized, F: FnOnce(&Cx, TaskStatus)>(
    buf: *mut Buf,
    run: Option<(&Cx, TaskStatus)>,
) {
    // SAFETY: the caller guarantees `buf` holds an initialized `F` used only this once;
    // `new` checked that `F` fits `Buf`'s size and alignment.
    let f = unsafe { buf.cast::<F>().read() };
    match run {
        Some((cx, status)) => f(cx, status),
        None => drop(f),
    }
}

impl<Cx: ?Sized> SmallTask<Cx> {
    /// Stores `f` inline, or hands it back when it is larger than [`INLINE_BYTES`] or
    /// aligned to more than 8 bytes.
    pub fn new<F>(f: F) -> Result<Self, F>
    where
        F: FnOnce(&Cx, TaskStatus) + Send + 'static,
    {
        if size_of::<F>() > INLINE_BYTES || align_of::<F>() > align_of::<Buf>() {
            return Err(f);
        }
        let mut buf = Buf([MaybeUninit::uninit(); INLINE_BYTES / 8]);
        // SAFETY: `F` fits in `buf` (size and alignment checked above); `buf` is ours.
        unsafe { (&raw mut buf).cast::<F>().write(f) };
        Ok(Self {
            vtable: vtable::<Cx, F>,
            buf,
            _not_sync: PhantomData,
        })
    }

    /// Whether a closure of type `F` is stored inline by [`new`](Self::new).
    pub const fn fits<F>() -> bool {
        size_of::<F>() <= INLINE_BYTES && align_of::<F>() <= align_of::<Buf>()
    }
}

impl<Cx: ?Sized> Runnable<Cx> for SmallTask<Cx> {
    fn run(self, cx: &Cx, status: TaskStatus) {
        let mut this = ManuallyDrop::new(self);
        // SAFETY: `buf` holds the closure `vtable` was made for; `ManuallyDrop` keeps our
        // `Drop` from using it again.
        unsafe { (this.vtable)(&raw mut this.buf, Some((cx, status))) }
    }
}

impl<Cx: ?Sized> Drop for SmallTask<Cx> {
    fn drop(&mut self) {
        // SAFETY: a `SmallTask` not run still holds its closure; this is its last use.
        unsafe { (self.vtable)(&raw mut self.buf, None) }
    }
}

impl<Cx: ?Sized> fmt::Debug for SmallTask<Cx> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SmallTask(..)")
    }
}
