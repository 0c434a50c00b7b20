#!/usr/bin/env bash
# Benchmark (not a test): `phi-tui bench` (the engine) against pbench, ~50 lines of raw llama.h built from the same
# llama.cpp sources that llama-cpp-sys-2 vendors, on the same phi-1-shaped GGUF with the same threads. The two are
# run alternately, so background load hits both alike; the table shows each one's median and the ratio.
#
#   tests/bench/engine-bench.sh [WORK_DIR]      env: THREADS (2), NP (128), NG (32), REPS (3), ROUNDS (3), TYPES (q8_0 f16)
#
# Makes the checkpoint with make_phi1_checkpoint.py (python3 + numpy) and converts it with phi-tui itself.
set -euo pipefail
cd "$(dirname "$0")/../.."
work=${1:-${TMPDIR:-/tmp}/phi1-engine-bench}
threads=${THREADS:-2} np=${NP:-128} ng=${NG:-32} reps=${REPS:-3} rounds=${ROUNDS:-3}
mkdir -p "$work"

cargo build --release --quiet
bin=${CARGO_TARGET_DIR:-target}/release/phi-tui
llama=$(ls -d ~/.cargo/registry/src/*/llama-cpp-sys-2-0.1.161/llama.cpp | head -n 1)
if [ ! -x "$work/pbench" ]; then
    cmake -S "$llama" -B "$work/llama-build" -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
        -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF \
        -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_COMMON=OFF >/dev/null 2>&1
    cmake --build "$work/llama-build" -j"$(nproc)" --target llama >/dev/null 2>&1
    g++ -O2 -std=c++17 tests/bench/pbench.cpp -I "$llama/include" -I "$llama/ggml/include" -L "$work/llama-build/bin" \
        -lllama -lggml -lggml-base -Wl,-rpath,"$work/llama-build/bin" -o "$work/pbench"
fi
[ -f "$work/phi1-f32/model.safetensors" ] || python3 tests/bench/make_phi1_checkpoint.py "$work/phi1-f32"

median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

printf '%-6s %-4s %12s %12s %7s\n' type test "engine tok/s" "raw tok/s" ratio
for type in ${TYPES:-q8_0 f16}; do
    model="$work/phi1.$type.gguf"
    [ -f "$model" ] || "$bin" convert "$work/phi1-f32" -o "$model" --outtype "$type" 2>/dev/null
    : >"$work/engine.$type" ; : >"$work/raw.$type"
    for _ in $(seq "$rounds"); do
        "$work/pbench" "$model" 0 1 "$np" "$ng" "$reps" "$threads" \
            | sed -E 's/.*pp[0-9]+=([0-9.]+).*tg[0-9]+=([0-9.]+).*/\1 \2/' >>"$work/raw.$type"
        "$bin" bench -m "$model" -p "$np" -n "$ng" -r "$reps" --threads "$threads" --flash-attn on \
            --ngl 0 --json | python3 -c 'import json,sys; j=json.load(sys.stdin); print(j["pp_tok_s"], j["tg_tok_s"])' \
            >>"$work/engine.$type"
    done
    for column in 1 2; do
        test=$([ $column = 1 ] && echo "pp$np" || echo "tg$ng")
        engine=$(cut -d' ' -f$column "$work/engine.$type" | median)
        raw=$(cut -d' ' -f$column "$work/raw.$type" | median)
        printf '%-6s %-4s %12.2f %12.2f %7.3f\n' "$type" "$test" "$engine" "$raw" "$(awk -v a="$engine" -v b="$raw" 'BEGIN { print a / b }')"
    done
done
