#!/usr/bin/env bash
# The GPU check (issue #8): phi-tui on llama.cpp's CUDA backend, against raw llama.cpp on the same files, in one go.
#
# It runs on a GPU machine with nvcc, CMake, g++ and python3 (+ numpy) but no Rust and no network, given a phi-tui
# built elsewhere with `--features dynamic-backends` and the llama-cpp-sys-2 crate source, assembled in .gpu/ by
# tests/gpu/prepare.sh. In one call (expected: about 6 minutes on an H200, of which ~220 s build the CUDA module; the
# goals are for H100/H200):
#   1. builds llama.cpp's CUDA backend module (libggml-cuda.so) from the crate source, in the background, while it
#      makes a phi-1-shaped checkpoint (random weights) and converts it with phi-tui to f16, q8_0 and q4_0 GGUFs,
#      converts the tiny-phi fixture, and builds pbench (tests/bench/pbench.cpp, raw llama.h) against the very
#      libllama/libggml that phi-tui uses;
#   2. checks the defaults: `phi-tui bench` without --ngl/--flash-attn offloads every layer to the GPU and llama.cpp
#      turns flash attention on;
#   3. `phi-tui bench` and pbench, alternately, on each file with flash attention on and off (pp512, tg128);
#      goals: engine/raw >= 0.97 with flash attention on, and on faster than off;
#   4. completion latency through `phi-tui lsp` (tests/gpu/lsp_latency.py): p50/p95 time to a single-line
#      suggestion with a warm KV cache; goal: p50 <= 50 ms;
#   5. `phi-tui generate` greedy on the tiny-phi fixture, GPU vs CPU (tests/gpu/compare_generate.py): the same
#      tokens, and transformers' tokens, up to the first fragile step;
# and prints one table (tests/gpu/report.py), also written to $OUT/table.txt with every result under $OUT/results.
#
# How to run it:
#   here (a development machine):  tests/gpu/prepare.sh            (release build with dynamic-backends, then .gpu/)
#   on the GPU machine, from the repository root, with .gpu carried along (the device tool: carry [".gpu"],
#   timeout_s 600):                 bash tests/gpu/gpu-check.sh
#   a dry run of the whole flow on a CPU-only machine (no CUDA: the CPU backend stands in for the GPU, with a small
#   model shape and fewer tokens):  GPU_CHECK_CPU=1 bash tests/gpu/gpu-check.sh
#   with GPU_CHECK_CPU_BUILD=1 the dry run also builds its "GPU" backend module from the crate source exactly as
#   the CUDA module is built (same cmake flags, CPU instead of CUDA; about a minute on 2 cores) and runs on it alone.
#
# Environment: OUT (results; default /tmp/gpu-check-out), GPU_CHECK_WORK (scratch, up to ~16 GB on the GPU; default
# /tmp/gpu-check), GPU_CHECK_CPU=1 (dry run), THREADS (CPU threads for bench and pbench; default 8, or the cores in a
# dry run), ROUNDS (engine/raw alternations; default 2, 1 in a dry run), TYPES (default "f16 q8_0 q4_0"),
# LSP_TYPES (models for the completion latency; default "f16 q8_0").
set -uo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
carried=$root/.gpu
OUT=${OUT:-/tmp/gpu-check-out}
work=${GPU_CHECK_WORK:-/tmp/gpu-check}
results=$OUT/results
cpu_only=${GPU_CHECK_CPU:-0}
started=$(date +%s)
elapsed() { echo $(( $(date +%s) - started )); }
step() { echo "[t+$(elapsed)s] $*"; }
fail() { echo "gpu-check: $*" >&2; exit 1; }

rm -rf "$work" "$results"
mkdir -p "$work" "$results"
bin=$carried/phi-tui
[ -x "$bin" ] || fail "$bin is missing: run tests/gpu/prepare.sh on a development machine first"
crate=$(ls "$carried"/llama-cpp-sys-2-*.crate 2>/dev/null | head -n 1)
[ -n "$crate" ] || fail "no llama-cpp-sys-2 crate file in $carried"
export LD_LIBRARY_PATH=$carried/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
cores=$(nproc)

if [ "$cpu_only" = 1 ]; then
    shape=(--layers 4 --hidden 512 --intermediate 2048 --heads 8)
    n_prompt=64 n_gen=16 reps=2 lsp_requests=12
    threads=${THREADS:-$cores} rounds=${ROUNDS:-1}
else
    shape=(--layers 24 --hidden 2048 --intermediate 8192 --heads 32)
    n_prompt=512 n_gen=128 reps=5 lsp_requests=40
    threads=${THREADS:-$(( cores < 8 ? cores : 8 ))} rounds=${ROUNDS:-2}
fi
types=${TYPES:-f16 q8_0 q4_0}
lsp_types=${LSP_TYPES:-f16 q8_0}

# Facts for the table's header, one `key=value` a line.
{
    echo "cpu_only=$cpu_only"
    echo "shape=${shape[*]}"
    echo "n_prompt=$n_prompt"
    echo "n_gen=$n_gen"
    echo "reps=$reps"
    echo "threads=$threads"
    echo "rounds=$rounds"
    echo "lsp_types=$lsp_types"
    echo "llama_cpp_sys=$(basename "$crate" .crate)"
    if [ "$cpu_only" != 1 ]; then
        echo "gpu=$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | head -n 1)"
        echo "nvcc=$(nvcc --version | grep -o 'release [0-9.]*' | head -n 1)"
    fi
    echo "cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //') ($cores cores)"
} >"$results/facts.txt"
cat "$results/facts.txt"

# 1. The CUDA backend module, built in the background from the crate's llama.cpp with the flags of phi-tui's
#    dynamic-backends build (GGML_BACKEND_DL, shared libraries), so that it plugs into the carried libggml.
step "unpack $(basename "$crate")"
mkdir -p "$work/src"
tar xzf "$crate" -C "$work/src" || fail "cannot unpack $crate"
llama=$(ls -d "$work"/src/llama-cpp-sys-2-*/llama.cpp | head -n 1)
backends_cpu=$carried/backends
backends_gpu=$work/backends-gpu
mkdir -p "$backends_gpu"
cp "$backends_cpu"/*.so "$backends_gpu"/
if [ "$cpu_only" = 1 ] && [ "${GPU_CHECK_CPU_BUILD:-0}" != 1 ]; then
    module=""
    echo "rc=0 build_s=0" >"$work/cuda.done"
else
    if [ "$cpu_only" = 1 ]; then
        # The dry run's stand-in for the CUDA module: the CPU backend, built the same way from the same source.
        module=libggml-cpu.so module_target=ggml-cpu
        backend_flags="-DGGML_CPU=ON -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"
    else
        arch=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -n 1 | tr -d .)
        module=libggml-cuda.so module_target=ggml-cuda
        backend_flags="-DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=$arch -DGGML_CPU=OFF -DGGML_NATIVE=OFF"
    fi
    generator=$(command -v ninja >/dev/null && echo "-G Ninja")
    step "building $module ($backend_flags) in the background"
    cat >"$work/cuda-build.sh" <<EOF
build_started=\$(date +%s)
cmake -S "$llama" -B "$work/cuda-build" $generator -DGGML_BACKEND_DL=ON -DBUILD_SHARED_LIBS=ON $backend_flags \\
    -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF \\
    -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_BUILD_TOOLS=OFF \\
    -DLLAMA_BUILD_COMMON=OFF >"$OUT/cuda-cmake.log" 2>&1 &&
    timeout 360 cmake --build "$work/cuda-build" -j$cores --target $module_target >"$OUT/cuda-build.log" 2>&1
echo "rc=\$? build_s=\$(( \$(date +%s) - build_started ))" >"$work/cuda.done"
EOF
    # In its own process group, so that an early exit of this script stops the whole build with it.
    setsid bash "$work/cuda-build.sh" </dev/null >/dev/null 2>&1 &
    cuda_build=$!
    trap 'kill -- -$cuda_build 2>/dev/null' EXIT
fi

# Meanwhile: pbench against the carried libraries (the same ones phi-tui loads).
step "build pbench"
g++ -O2 -std=c++17 tests/bench/pbench.cpp tests/gpu/pbench_backends.cpp -I "$llama/include" -I "$llama/ggml/include" \
    "$carried/lib/libllama.so.0" "$carried/lib/libggml.so.0" "$carried/lib/libggml-base.so.0" \
    -o "$work/pbench" >"$OUT/pbench-build.log" 2>&1 || fail "pbench did not build: $(tail -n 5 "$OUT/pbench-build.log")"

# Meanwhile: the models. The converter and llama.cpp's quantizer run on the CPU modules.
step "phi-1-shaped checkpoint (${shape[*]}), random weights"
python3 tests/bench/make_phi1_checkpoint.py "$work/phi-1-shape" "${shape[@]}" | tail -n 1 ||
    fail "make_phi1_checkpoint.py failed (it needs numpy)"
for type in $types; do
    PHI_TUI_BACKENDS_DIR=$backends_cpu "$bin" convert "$work/phi-1-shape" -o "$work/phi1.$type.gguf" --outtype "$type" \
        2>&1 | tail -n 1
    [ -f "$work/phi1.$type.gguf" ] || fail "converting to $type failed"
done
rm -rf "$work/phi-1-shape"
"$bin" convert tests/fixtures/tiny-phi -o "$work/tiny-phi.f16.gguf" 2>&1 | tail -n 1

step "waiting for the backend module build"
while [ ! -f "$work/cuda.done" ]; do sleep 2; done
cat "$work/cuda.done"
tr ' ' '\n' <"$work/cuda.done" >>"$results/facts.txt"
if [ -n "$module" ]; then
    built=$(find "$work/cuda-build" -name "$module" | head -n 1)
    [ -n "$built" ] || fail "no $module was built: $(tail -n 20 "$OUT/cuda-build.log" "$OUT/cuda-cmake.log")"
    # A CPU module built for the dry run replaces the carried CPU variants (ggml would prefer those).
    [ "$cpu_only" = 1 ] && rm -f "$backends_gpu"/libggml-cpu-*.so
    cp "$built" "$backends_gpu"/
fi
ls "$backends_gpu" | tr '\n' ' ' && echo
export PHI_TUI_BACKENDS_DIR=$backends_gpu PBENCH_BACKENDS=$backends_gpu

# 2. The defaults: no --ngl, no --flash-attn. llama.cpp says in its log whether `auto` turned flash attention on.
step "defaults"
PHI_TUI_LOG=info "$bin" bench -m "$work/phi1.f16.gguf" -p 64 -n 16 -r 1 --threads "$threads" --json \
    >"$results/defaults.json" 2>"$OUT/defaults.log"
if grep -q "Flash Attention enabled" "$OUT/defaults.log"; then
    echo "enabled" >"$results/defaults-fa.txt"
elif grep -q "Flash Attention not supported" "$OUT/defaults.log"; then
    echo "disabled" >"$results/defaults-fa.txt"
else
    echo "unknown" >"$results/defaults-fa.txt"
fi
cat "$results/defaults.json" "$results/defaults-fa.txt"

# 3. Engine and raw harness, alternately, so that a slow moment hits both alike. pbench gets every layer (99), as
#    phi-tui offloads all by default.
for round in $(seq "$rounds"); do
    if [ "$round" -gt 1 ] && [ "$(elapsed)" -gt 330 ]; then
        step "skipping round $round: the check must end within 9 minutes"
        break
    fi
    for type in $types; do
        for fa in on off; do
            step "round $round: $type, flash attention $fa"
            raw_fa=$([ $fa = on ] && echo 1 || echo 0)
            "$work/pbench" "$work/phi1.$type.gguf" 99 "$raw_fa" "$n_prompt" "$n_gen" "$reps" "$threads" \
                >>"$results/raw-$type-fa$fa.txt" 2>>"$OUT/pbench.err"
            "$bin" bench -m "$work/phi1.$type.gguf" -p "$n_prompt" -n "$n_gen" -r "$reps" --threads "$threads" \
                --flash-attn "$fa" --json >>"$results/engine-$type-fa$fa.jsonl" 2>>"$OUT/bench.err"
            tail -n 1 "$results/raw-$type-fa$fa.txt"
            tail -n 1 "$results/engine-$type-fa$fa.jsonl"
        done
    done
done

# 4. Completion latency through the language server: each model in a server of its own (--standalone), then f16
#    through the shared-session daemon (the default: one socket hop more), and the GPU memory of two editors on one
#    daemon against one standalone editor. The daemon gets a private runtime directory and is stopped after.
for type in $lsp_types; do
    step "completion latency, $type"
    python3 tests/gpu/lsp_latency.py --bin "$bin" --model "$work/phi1.$type.gguf" --requests "$lsp_requests" \
        --json "$results/lsp-$type.json" --log "$OUT/lsp-$type.log" -- --standalone
done
if [ "$cpu_only" != 1 ]; then
    step "completion latency through the daemon, f16"
    PHI_TUI_RUNTIME_DIR=$work/run PHI_TUI_DATA_DIR=$work/data python3 tests/gpu/lsp_latency.py --bin "$bin" \
        --model "$work/phi1.f16.gguf" --requests "$lsp_requests" --json "$results/lsp-daemon-f16.json" \
        --log "$OUT/lsp-daemon-f16.log"
    PHI_TUI_RUNTIME_DIR=$work/run PHI_TUI_DATA_DIR=$work/data "$bin" serve --stop >/dev/null 2>&1
    step "GPU memory: two editors on one daemon vs one standalone editor, f16"
    python3 tests/gpu/vram_editors.py --bin "$bin" --model "$work/phi1.f16.gguf" --json "$results/vram.json"
fi

# 5. Greedy generation, GPU vs CPU (only the CPU modules), on the converted fixture.
step "generate: GPU vs CPU on tiny-phi f16"
python3 tests/gpu/compare_generate.py --bin "$bin" --model "$work/tiny-phi.f16.gguf" \
    --reference tests/fixtures/tiny-phi/reference/prompts.json --gpu-backends "$backends_gpu" \
    --cpu-backends "$backends_cpu" --json "$results/generate.json"

echo "total_s=$(elapsed)" >>"$results/facts.txt"
step "done"
python3 tests/gpu/report.py "$results" | tee "$OUT/table.txt"
