//! reseau-loom-tests: loom models of reseau-core's concurrent pieces.
//!
//! The models live in `tests/` and exist only when the crate is built with `--cfg loom`
//! (without it every test file compiles to nothing, so `cargo test --workspace` is not
//! slowed down). Built that way, reseau-core's [`sync`](reseau_core::sync) facade hands the
//! core loom's atomics and cells, so loom explores every interleaving of the core's own
//! atomic operations, not of a copy of them.
//!
//! - `tests/inbox.rs`: the inbox's wake protocol (no lost wakeup, no lost or duplicated
//!   item, per-producer order, coalesced signals), serialized FIFO, a full inbox under
//!   contention, and the canary `Inbox::canary_prepare_park_check_then_clear`.
//! - `tests/lifecycle.rs`: racing run / stop / stop / wait / destroy with the loop thread's
//!   own transitions, and the canary `Lifecycle::canary_begin_run_without_cas`.
//! - `tests/claim.rs`: a cross-thread cancel against the loop running the task.
//! - `tests/destroy.rs`: destroy against a late schedule, with a model canary that skips
//!   the wait for in-flight producers.
//!
//! Run them (about 3 minutes on 2 cores) with
//!
//! ```sh
//! RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 CARGO_TARGET_DIR=target-loom \
//!     cargo test -p reseau-loom-tests --release
//! ```
//!
//! `loom-tests/README.md` says what each model covers, assumes and leaves out. This library
//! holds only what the models share: the `harness` module (under `cfg(loom)`).

#[cfg(loom)]
pub mod harness;
