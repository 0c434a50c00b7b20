#!/usr/bin/env bash
# Assembles .gpu/ (git-ignored) for tests/gpu/gpu-check.sh, on a development machine (no GPU needed):
#   phi-tui            release build with `--features dynamic-backends` (no backend compiled in)
#   lib/               libllama.so.0, libggml.so.0, libggml-base.so.0 from that build
#   backends/          its CPU backend modules (libggml-cpu-<variant>.so; the GPU machine's CPU picks the best)
#   llama-cpp-sys-2-<version>.crate   the llama.cpp source the build used, for the CUDA module and pbench's headers
# The GPU machine gets the repository's working tree plus what `carry` names: run the check there with
# carry [".gpu"] (at most 64 MiB in all; this script says how much it is) and timeout_s 600:
#   bash tests/gpu/gpu-check.sh
#
#   tests/gpu/prepare.sh          env: CARGO_TARGET_DIR (default target), SKIP_BUILD=1 (use the existing build)
set -euo pipefail
cd "$(dirname "$0")/../.."
target=${CARGO_TARGET_DIR:-target}
dest=.gpu

if [ "${SKIP_BUILD:-0}" != 1 ]; then
    # A cold build compiles llama.cpp's 14 CPU variants: 11-15 minutes on 2 cores, with little output.
    nice -n 19 cargo build --release --features dynamic-backends
fi
bin=$target/release/phi-tui
[ -x "$bin" ] || { echo "no $bin: build with --features dynamic-backends first" >&2; exit 1; }

# The llama-cpp-sys-2 build directory that holds the shared libraries (the newest, if several).
libllama=$(ls -t "$target"/release/build/llama-cpp-sys-2-*/out/build/bin/libllama.so.0 2>/dev/null | head -n 1 || true)
if [ -z "$libllama" ]; then
    echo "no libllama.so.0 under $target/release/build: is this a dynamic-backends build?" >&2
    exit 1
fi
build_out=$(dirname "$(dirname "$(dirname "$libllama")")")
version=$(awk '/^name = "llama-cpp-sys-2"$/ { getline; gsub(/"/, "", $3); print $3 }' Cargo.lock)
crate=$(ls ~/.cargo/registry/cache/*/llama-cpp-sys-2-"$version".crate | head -n 1)

rm -rf "$dest"
mkdir -p "$dest/lib" "$dest/backends"
# Symbols are not needed on the GPU machine; they would take a third of the carry budget.
strip -o "$dest/phi-tui" "$bin"
for lib in libllama.so.0 libggml.so.0 libggml-base.so.0; do
    cp -L "$build_out/build/bin/$lib" "$dest/lib/"
done
cp "$build_out"/backends/libggml-cpu-*.so "$dest/backends/"
cp "$crate" "$dest/"

du -sh "$dest"
size_kib=$(du -sk "$dest" | cut -f1)
if [ "$size_kib" -gt $((64 * 1024)) ]; then
    echo "warning: $dest is over the 64 MiB carry limit" >&2
    exit 1
fi
echo "ready: run 'bash tests/gpu/gpu-check.sh' on the GPU machine with carry [\".gpu\"] (or GPU_CHECK_CPU=1 here)"
