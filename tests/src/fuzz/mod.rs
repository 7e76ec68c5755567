//! Fuzz target bodies, shared by the cargo-fuzz project in `fuzz/` (nightly, libFuzzer) and
//! the stable replay in `tests/tests/fuzz_replay.rs`.
//!
//! Each target is a module with `pub fn run(data: &[u8])`: it decodes `data` with
//! [`arbitrary::Unstructured`] into an operation script, drives the real reseau-core
//! structure and a plain reference model side by side, and panics on the first invariant
//! violated. Any byte string is a valid input (a short one is simply a short script), so
//! the same functions serve libFuzzer, the committed corpora and seeded random inputs.
//!
//! Targets:
//! - [`scheduler`]: [`reseau_core::Scheduler`] against a `Vec`-based reference scheduler.
//! - [`inbox`]: [`reseau_core::Inbox`] with several logical producers and a consumer that
//!   parks, checking FIFO, loss, duplication and the wake protocol (no lost wakeup).
//! - [`lifecycle`]: [`reseau_core::Lifecycle`] against an explicit transition table, and
//!   under the shim's protocol (a loop thread that may fail to start).
//! - [`event_loop`]: a real [`reseau_linux::EventLoop`] driven by a script from three
//!   threads: every task runs exactly once, in order, never early; nothing leaks.
//! - [`engine`]: the real [`reseau_core::Engine`] on the deterministic simulated platform
//!   (virtual clock, scripted readiness, interrupted and failing waits, panicking tasks),
//!   single-threaded, against a reference model of its documented semantics.
//!
//! To add a target: a module here with the same `run` signature, a one-line file in
//! `fuzz/fuzz_targets/` plus a `[[bin]]` in `fuzz/Cargo.toml`, a seed directory in
//! `fuzz/corpus/`, and an entry in [`TARGETS`] (the replay test reads it).

pub mod engine;
pub mod event_loop;
pub mod inbox;
pub mod lifecycle;
pub mod scheduler;

/// A fuzz target body: decodes `data` and panics on an invariant violation.
pub type Target = fn(&[u8]);

/// Every target, by its name in `fuzz/fuzz_targets/` and `fuzz/corpus/`.
pub const TARGETS: &[(&str, Target)] = &[
    ("scheduler", scheduler::run),
    ("inbox", inbox::run),
    ("lifecycle", lifecycle::run),
    ("event_loop", event_loop::run),
    ("engine", engine::run),
];
