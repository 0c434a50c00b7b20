#!/usr/bin/env bash
# Benchmark (not a test): full-training throughput, tokens/s per optimizer step, `phi-tui train` (candle, CPU)
# against transformers + torch AdamW (CPU) on the same shape, batch, sequence length and threads (every parameter
# trained, float32, AdamW, gradient clipping). Shapes: the tiny-phi fixture (2 x 64, from its checkpoint), and
# random models of the `small` (4 x 128) and `base` (8 x 512) presets.
#
#   tests/bench/train-bench.sh [WORK_DIR]     env: PYTHON (/work/venv-torch/bin/python), THREADS (nproc),
#                                                  BATCH (4), SEQ (256), STEPS (8), ROUNDS (2), SHAPES ("tiny small base")
#
# PYTHON needs torch and transformers. Both sides report the median time of the STEPS steps after 2 warmup steps
# (phi-tui's from its --log, so loading and tokenizing do not count); the two alternate for ROUNDS rounds, so
# background load hits both alike; the table shows the medians over rounds.
set -euo pipefail
cd "$(dirname "$0")/../.."
work=${1:-${TMPDIR:-/tmp}/phi-train-bench}
python=${PYTHON:-/work/venv-torch/bin/python}
threads=${THREADS:-$(nproc)} batch=${BATCH:-4} seq=${SEQ:-256} steps=${STEPS:-8} rounds=${ROUNDS:-2} warmup=2
mkdir -p "$work"

cargo build --release --quiet
phi=target/release/phi-tui
"$python" tests/bench/train-bench.py make-data "$work/data.jsonl" --sequences $((batch * (warmup + steps))) --seq-len "$seq"

median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

run_phi() { # model arguments... → tokens/s (median over the steps after the warmup)
    rm -rf "$work/out" "$work/out.ckpt"
    RAYON_NUM_THREADS=$threads "$phi" train "$@" --data "$work/data.jsonl" -o "$work/out" --log "$work/log.jsonl" \
        --steps $((warmup + steps)) --batch "$batch" --seq-len "$seq" --lr 1e-4 --weight-decay 0.01 \
        --val-fraction 0 --no-shuffle --no-pack >"$work/phi.log" 2>&1
    tail -n "$steps" "$work/log.jsonl" | "$python" -c '
import json, sys
rows = [json.loads(l) for l in sys.stdin]
print(sorted(r["tokens"] / r["seconds"] for r in rows)[len(rows) // 2])'
}

printf '%-6s %-10s %-12s %16s %16s %8s\n' shape "L x width" "batch" "phi-tui tok/s" "torch tok/s" ratio |
    tee "$work/results.txt"
for shape in ${SHAPES:-tiny small base}; do
    case $shape in
        tiny) phi_model=(--init tests/fixtures/tiny-phi) torch_model=tests/fixtures/tiny-phi desc="2 x 64" ;;
        small) phi_model=(--preset small) torch_model=small desc="4 x 128" ;;
        base) phi_model=(--preset base) torch_model=base desc="8 x 512" ;;
        *) echo "unknown shape $shape" >&2; exit 2 ;;
    esac
    phi_rates=() torch_rates=()
    for _ in $(seq "$rounds"); do
        phi_rates+=("$(run_phi "${phi_model[@]}")")
        torch_rates+=("$("$python" tests/bench/train-bench.py torch "$torch_model" "$work/data.jsonl" --batch "$batch" \
            --steps "$steps" --warmup "$warmup" --threads "$threads" 2>/dev/null |
            "$python" -c 'import json,sys; print(json.load(sys.stdin)["tokens_per_second"])')")
    done
    phi_rate=$(printf '%s\n' "${phi_rates[@]}" | median)
    torch_rate=$(printf '%s\n' "${torch_rates[@]}" | median)
    printf '%-6s %-10s %-12s %16.0f %16.0f %8.2f\n' "$shape" "$desc" "b$batch x t$seq" "$phi_rate" "$torch_rate" \
        "$(echo "$phi_rate / $torch_rate" | bc -l)" | tee -a "$work/results.txt"
done
