#!/usr/bin/env bash
# The long run of the GGUF fuzzer (not a test): tests/gguf_fuzz.rs's seeded fuzzer with many more cases, in a
# release build, over several seeds. Every case must load and decode one token, or be refused with a named error;
# an abort kills the run, a panic or a hang fails it with the case that caused it.
#
#   tests/bench/gguf-fuzz.sh [CASES_PER_SEED] [SEED...]      (default: 20000 cases, seeds 1 2 3)
#
# PROFILE=dev uses the debug build the test suite already has (slower per case, no release build of llama.cpp).
# CI runs 300 cases of one fixed seed (`cargo test --test gguf_fuzz`).
set -euo pipefail
cd "$(dirname "$0")/../.."
cases=${1:-20000}
shift || true
seeds=("$@")
[ ${#seeds[@]} -gt 0 ] || seeds=(1 2 3)
for seed in "${seeds[@]}"; do
    PHI_TUI_FUZZ_CASES=$cases PHI_TUI_FUZZ_SEED=$seed \
        cargo test --profile "${PROFILE:-release}" --quiet --test gguf_fuzz seeded_fuzz_load_and_decode -- --nocapture 2>&1 |
        grep -E "cases \(seed|panicked|test result"
done
