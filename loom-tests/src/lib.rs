//! reseau-loom-tests: loom models of reseau-core's concurrent pieces.
//!
//! The models live in `tests/` and exist only when the crate is built with `--cfg loom`
//! (without it every test file compiles to nothing, so `cargo test --workspace` is not
//! slowed down). Built that way, reseau-core's [`sync`](reseau_core::sync) facade hands the
//! core loom's atomics and cells, so loom explores every interleaving of the core's own
//! atomic operations, not of a copy of them.
//!
//! - `tests/engine.rs`: the shipped `reseau_core::Engine` itself, driven through the loom
//!   `platform` module: the wake protocol with 2 producers, serialized FIFO, a full engine
//!   handing tasks back, run / stop / wait / destroy racing, a failed start racing a
//!   waiter, wait racing run, cancel against run (exactly once), stale and foreign handles
//!   with slot reuse, destroy against an in-flight producer on the normal and the abandoned
//!   path, and a task scheduled by a task canceled during destroy; with one canary per
//!   protocol (wake, cancel, destroy, lifecycle: `reseau_core::Canary`).
//! - `tests/inbox.rs`: the `Inbox` building block's wake protocol (no lost wakeup, no lost
//!   or duplicated item, per-producer order, coalesced signals), serialized FIFO, a full
//!   inbox under contention, and the canary `Inbox::canary_prepare_park_check_then_clear`.
//! - `tests/claim.rs`: the `Claim` building block, a cross-thread cancel against the run.
//!
//! Run them (about 3 minutes on 2 cores) with
//!
//! ```sh
//! RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target-loom \
//!     cargo test -p reseau-loom-tests --release
//! ```
//!
//! `loom-tests/README.md` says what each model covers, assumes and leaves out. This library
//! holds only what the models share: the `harness` and `platform` modules (under
//! `cfg(loom)`).

#[cfg(loom)]
pub mod harness;
#[cfg(loom)]
pub mod platform;
