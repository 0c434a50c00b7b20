#!/usr/bin/env bash
# Benchmark (not a test) of the shared session daemon:
#  1. memory (PSS) of daemon + TUI + 2 editors against one standalone `phi-tui lsp --standalone`, on a random-weight
#     GGUF of phi-1-small's shape (SHAPE="24 2048 8192" for phi-1's), made with make_phi1_checkpoint.py and our
#     converter (python3 + numpy; tmux for the TUI);
#  2. the latency the socket hop adds to a completion, p50/p95, against the same completion in-process.
#
#   tests/bench/session-bench.sh [WORK_DIR]      env: THREADS (2), SHAPE ("20 1024 4096"), ROUNDS (300),
#                                                PROFILE (release; "debug" measures the test build)
set -euo pipefail
cd "$(dirname "$0")/../.."
work=${1:-${TMPDIR:-/tmp}/phi-session-bench}
threads=${THREADS:-2}
read -r layers hidden intermediate <<<"${SHAPE:-20 1024 4096}"
mkdir -p "$work"

profile=${PROFILE:-release}
flag=$([ "$profile" = release ] && echo --release || true)
cargo build $flag --quiet
bin=$(pwd)/${CARGO_TARGET_DIR:-target}/$profile/phi-tui
checkpoint="$work/phi-$layers-$hidden"
model="$checkpoint.f16.gguf"
[ -f "$checkpoint/model.safetensors" ] || python3 tests/bench/make_phi1_checkpoint.py "$checkpoint" \
    --layers "$layers" --hidden "$hidden" --intermediate "$intermediate" --heads $((hidden / 64))
[ -f "$model" ] || "$bin" convert "$checkpoint" -o "$model" --outtype f16 2>/dev/null

echo "== memory"
python3 tests/bench/session_memory.py "$bin" "$model" "$work" "$threads"
echo "== socket hop (tiny fixture model: the engine's own time is small, so the overhead shows)"
ROUNDS=${ROUNDS:-300} cargo test $flag --quiet --test daemon socket_hop -- --ignored --nocapture 2>/dev/null \
    | grep -v '^running\|^test \|^$\|test result'
