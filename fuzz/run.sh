#!/usr/bin/env bash
# Runs one fuzz campaign, then minimizes the target's corpus.
#
#   fuzz/run.sh TARGET SECONDS
#
# TARGET is a file name in fuzz/fuzz_targets/ (scheduler, inbox, lifecycle, event_loop,
# engine); its corpus is fuzz/corpus/TARGET/ (new inputs are added there, then
# `cargo fuzz cmin` minimizes it on edge coverage).
# A crash stops the script with the input in fuzz/artifacts/TARGET/: fix the bug, then copy
# the input into fuzz/corpus/TARGET/ as regress-<what> (cmin keeps those) so the stable
# replay (tests/tests/fuzz_replay.rs) keeps it as a regression test.
#
# Environment:
#   FUZZ_NO_CMIN=1   fuzz a temporary copy of the corpus and leave fuzz/corpus untouched
#                    (what CI does); no minimization
#   FUZZ_MAX_LEN     longest input in bytes (default 4096)
#   FUZZ_TIMEOUT     seconds one input may take before it counts as a hang (default 10)
#   FUZZ_RSS_MB      memory limit in MB (default 2048)
set -euo pipefail

NIGHTLY=nightly-2026-05-20

if [ $# -ne 2 ]; then
    echo "usage: $0 TARGET SECONDS" >&2
    exit 2
fi
target=$1
seconds=$2
cd "$(dirname "$0")/.."

if [ ! -f "fuzz/fuzz_targets/$target.rs" ]; then
    echo "no fuzz target $target (fuzz/fuzz_targets/$target.rs)" >&2
    exit 2
fi
corpus=fuzz/corpus/$target
mkdir -p "$corpus"

work=$corpus
if [ "${FUZZ_NO_CMIN:-0}" = 1 ]; then
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    cp -R "$corpus/." "$work/"
fi

# Release build with debug assertions and overflow checks, AddressSanitizer (cargo-fuzz's
# defaults, spelled out); one process, one job.
cargo +"$NIGHTLY" fuzz run --debug-assertions "$target" "$work" -- \
    -max_total_time="$seconds" \
    -max_len="${FUZZ_MAX_LEN:-4096}" \
    -timeout="${FUZZ_TIMEOUT:-10}" \
    -rss_limit_mb="${FUZZ_RSS_MB:-2048}" \
    -print_final_stats=1

# Minimize on edge coverage alone (-use_counters=0): the smallest set of inputs that keeps
# every edge reached, which keeps the committed corpus to a few hundred files at most.
# Files named regress-* (inputs that once found a bug) are kept as they are.
if [ "${FUZZ_NO_CMIN:-0}" != 1 ]; then
    keep=$(mktemp -d)
    find "$corpus" -maxdepth 1 -type f -name 'regress-*' -exec mv -t "$keep" {} +
    cargo +"$NIGHTLY" fuzz cmin --debug-assertions "$target" "$corpus" -- \
        -use_counters=0 \
        -max_len="${FUZZ_MAX_LEN:-4096}" \
        -timeout="${FUZZ_TIMEOUT:-10}"
    find "$keep" -maxdepth 1 -type f -exec mv -t "$corpus" {} +
    rmdir "$keep"
    count=$(find "$corpus" -type f | wc -l)
    echo "== $target: $count corpus files after cmin"
    if [ "$count" -gt 200 ]; then
        echo "warning: $corpus holds $count files; keep the committed corpus under ~200" >&2
    fi
fi
