//! reseau-tests: the behavioural suite's shared code: fuzz target bodies (run by the
//! cargo-fuzz project in `fuzz/` and replayed on stable by `tests/fuzz_replay.rs`) and the
//! helpers the integration tests in `tests/` share.

pub mod fuzz;
pub mod seccomp;
pub mod util;
