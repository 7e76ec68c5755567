//! Stable replay of the fuzz targets: every committed corpus file, plus a few thousand
//! inputs generated from a fixed seed, through the same target bodies libFuzzer runs.
//!
//! CI needs no nightly for this: a regression that a corpus entry (or a crash found by a
//! campaign and committed to the corpus) exercises fails `cargo test`.

use std::fs;
use std::path::{Path, PathBuf};

use reseau_tests::fuzz::{self, Target};

/// Seeded inputs per target.
const GENERATED: usize = 4_000;
/// Longest seeded input, in bytes.
const MAX_GENERATED_LEN: usize = 1024;

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target)
}

/// Runs every file of `fuzz/corpus/<target>/`; fails when there is none.
fn replay_corpus(target: &str, run: Target) -> usize {
    let dir = corpus_dir(target);
    let entries = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus directory {} missing: {e}", dir.display()));
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("reading the corpus directory").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(
        !files.is_empty(),
        "corpus directory {} is empty: the replay would test nothing",
        dir.display()
    );
    for path in &files {
        let data = fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let outcome = std::panic::catch_unwind(|| run(&data));
        if let Err(panic) = outcome {
            eprintln!("corpus file {} fails", path.display());
            std::panic::resume_unwind(panic);
        }
    }
    files.len()
}

/// xorshift64*: a fixed, dependency-free byte source.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// Runs `GENERATED` inputs from a seed fixed per target.
fn replay_generated(target: &str, run: Target) {
    let seed = target.bytes().fold(0x9E37_79B9_7F4A_7C15_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01B3)
    });
    let mut rng = XorShift(seed | 1);
    let mut data = Vec::with_capacity(MAX_GENERATED_LEN);
    for i in 0..GENERATED {
        // Mostly short inputs, some long ones.
        let len = if i % 8 == 0 {
            rng.next() as usize % MAX_GENERATED_LEN
        } else {
            rng.next() as usize % 128
        };
        data.clear();
        data.extend((0..len).map(|_| rng.next() as u8));
        let outcome = std::panic::catch_unwind(|| run(&data));
        if let Err(panic) = outcome {
            eprintln!("generated input {i} of {target} fails: {data:02x?}");
            std::panic::resume_unwind(panic);
        }
    }
}

/// The `event_loop` target counts the process's descriptors: replays run one at a time so
/// another replay's file reads cannot look like a leak.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn replay(name: &str) {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let &(_, run) = fuzz::TARGETS
        .iter()
        .find(|(n, _)| *n == name)
        .unwrap_or_else(|| panic!("no fuzz target named {name}"));
    let files = replay_corpus(name, run);
    replay_generated(name, run);
    println!("{name}: {files} corpus files and {GENERATED} generated inputs");
}

#[test]
fn fuzz_replay_scheduler() {
    replay("scheduler");
}

#[test]
fn fuzz_replay_inbox() {
    replay("inbox");
}

#[test]
fn fuzz_replay_lifecycle() {
    replay("lifecycle");
}

#[test]
fn fuzz_replay_event_loop() {
    replay("event_loop");
}

#[test]
fn fuzz_replay_engine() {
    replay("engine");
}

/// Every target in the registry has a replay test above and a corpus directory.
#[test]
fn fuzz_replay_covers_every_target() {
    let tested = ["scheduler", "inbox", "lifecycle", "event_loop", "engine"];
    for (name, _) in fuzz::TARGETS {
        assert!(
            tested.contains(name),
            "fuzz target {name} has no replay test in fuzz_replay.rs"
        );
        assert!(corpus_dir(name).is_dir(), "no corpus directory for {name}");
    }
}
