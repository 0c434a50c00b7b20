#!/usr/bin/env bash
# Benchmark (not a test): time per LoRA training step, `phi-tui finetune` (candle, CPU) against PEFT on PyTorch
# (CPU), on the same model shape, batch and sequence length, with the same threads, LoRA (r=8, alpha=16, q/k/v/dense/
# fc1/fc2), AdamW and gradient clipping. Shapes: the tiny-phi fixture (2 layers x 64) and a random 8 x 512 phi.
#
#   tests/bench/finetune-bench.sh [WORK_DIR]     env: PYTHON (/tmp/convenv/bin/python), THREADS (nproc),
#                                                     BATCH (4), SEQ (128), STEPS (10), ROUNDS (3), SHAPES ("tiny medium")
#
# PYTHON needs torch, transformers and peft. phi-tui's time per step is (wall time of a run of WARMUP+STEPS steps
# minus that of WARMUP steps) / STEPS, so model loading and tokenizer setup cancel out; PEFT's is timed in-process.
# The two alternate for ROUNDS rounds, so background load hits both alike; the table shows medians.
set -euo pipefail
cd "$(dirname "$0")/../.."
work=${1:-${TMPDIR:-/tmp}/phi-finetune-bench}
python=${PYTHON:-/tmp/convenv/bin/python}
threads=${THREADS:-$(nproc)} batch=${BATCH:-4} seq=${SEQ:-128} steps=${STEPS:-10} rounds=${ROUNDS:-3} warmup=2
mkdir -p "$work"

cargo build --release --quiet
phi=target/release/phi-tui
"$python" tests/bench/finetune-bench.py make-data "$work/data.jsonl" --sequences $((batch * (warmup + steps))) --seq-len "$seq"

median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

run_phi() { # model_dir, steps → seconds
    local start end
    start=$(date +%s.%N)
    RAYON_NUM_THREADS=$threads "$phi" finetune --base "$1" --data "$work/data.jsonl" --out "$work/bench.gguf" \
        --checkpoint-dir "$work/ckpt" --steps "$2" --batch "$batch" --seq-len "$seq" --rank 8 --alpha 16 \
        --lr 2e-4 --val-fraction 0 --no-shuffle >"$work/phi.log" 2>&1
    end=$(date +%s.%N)
    rm -rf "$work/ckpt"
    echo "$end - $start" | bc -l
}

printf '%-8s %-22s %14s %14s %8s\n' shape "layers x hidden" "phi-tui ms" "PEFT ms" ratio | tee "$work/results.txt"
for shape in ${SHAPES:-tiny medium}; do
    case $shape in
        tiny) model=tests/fixtures/tiny-phi desc="2 x 64" ;;
        medium) model=$work/medium desc="8 x 512"
            [ -f "$model/model.safetensors" ] ||
                "$python" tests/bench/finetune-bench.py make-model "$model" --hidden 512 --layers 8 --heads 16 2>/dev/null ;;
        *) echo "unknown shape $shape" >&2; exit 2 ;;
    esac
    phi_times=() peft_times=()
    for _ in $(seq "$rounds"); do
        short=$(run_phi "$model" "$warmup")
        long=$(run_phi "$model" $((warmup + steps)))
        phi_times+=("$(echo "($long - $short) * 1000 / $steps" | bc -l)")
        peft_times+=("$("$python" tests/bench/finetune-bench.py peft "$model" "$work/data.jsonl" --batch "$batch" \
            --steps "$steps" --warmup "$warmup" --threads "$threads" 2>/dev/null |
            "$python" -c 'import json,sys; print(json.load(sys.stdin)["ms_per_step"])')")
    done
    phi_ms=$(printf '%s\n' "${phi_times[@]}" | median)
    peft_ms=$(printf '%s\n' "${peft_times[@]}" | median)
    printf '%-8s %-22s %14.1f %14.1f %8.2f\n' "$shape" "$desc (b$batch x t$seq)" "$phi_ms" "$peft_ms" \
        "$(echo "$phi_ms / $peft_ms" | bc -l)" | tee -a "$work/results.txt"
done
