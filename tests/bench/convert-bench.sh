#!/usr/bin/env bash
# Benchmark (not a test): `phi-tui convert` against llama.cpp's convert_hf_to_gguf.py on a phi-1-shaped
# 1.4B-parameter f32 checkpoint with random weights, converting to f16. Reports wall time and peak RSS of each,
# measured in the same run on the same (page-cached) checkpoint.
#
#   tests/bench/convert-bench.sh [WORK_DIR]
#
# Needs: python3 with numpy (for the checkpoint), a release build of phi-tui, and for the baseline
# LLAMA_CONVERTER=/path/to/convert_hf_to_gguf.py with PYTHON=/path/to/python that has torch, transformers, numpy,
# safetensors and llama.cpp's gguf-py (the script is skipped when LLAMA_CONVERTER is unset).
set -euo pipefail
cd "$(dirname "$0")/../.."
work=${1:-${TMPDIR:-/tmp}/phi1-convert-bench}
python=${PYTHON:-python3}
mkdir -p "$work"

[ -f "$work/phi1-f32/model.safetensors" ] || python3 tests/bench/make_phi1_checkpoint.py "$work/phi1-f32"
cargo build --release --quiet
bin=${CARGO_TARGET_DIR:-target}/release/phi-tui
# Read the checkpoint once so both converters start from the page cache.
cat "$work/phi1-f32/model.safetensors" >/dev/null

measure() { # name, command...
    local name=$1; shift
    rm -f "$work/out.gguf"
    # Start each run with no dirty pages of an earlier output still being written back.
    sync
    /usr/bin/time -f "%e %M" -o "$work/$name.time" "$@" >"$work/$name.log" 2>&1
    read -r wall rss_kb <"$work/$name.time"
    printf '%-22s %8.1f s %10.0f MiB\n' "$name" "$wall" "$((rss_kb / 1024))" | tee -a "$work/results.txt"
    rm -f "$work/out.gguf"
}

: >"$work/results.txt"
printf '%-22s %10s %14s\n' converter wall "peak RSS"
measure phi-tui "$bin" convert "$work/phi1-f32" -o "$work/out.gguf" --outtype f16
if [ -n "${LLAMA_CONVERTER:-}" ]; then
    measure convert_hf_to_gguf.py "$python" "$LLAMA_CONVERTER" "$work/phi1-f32" --outtype f16 --outfile "$work/out.gguf"
fi
