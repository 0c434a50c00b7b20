#!/usr/bin/env bash
# Benchmark (not a test): prompt-lookup drafting. `phi-tui bench --draft lookup` generates greedily from each workload
# (a class whose next method mirrors the others, a refactor of repeated lines, prose that does not repeat) with and
# without drafting, alternately, in one run; the table shows both speeds, the speed-up, the draft tokens accepted of
# those drafted, and whether the tokens were identical. Random weights make the text noise, but the speed real, and
# how much noise repeats decides what drafting can do, so three models:
#   phi1-SHAPE        phi-1's shape, initialised as transformers does (as /work/shared/bench/mkgguf.py does): its
#                     output falls into loops after a few tokens, like a real model copying code — drafts are taken;
#   phi1-SHAPE-noise  the same with weights 5x larger (std 0.1): its output never repeats — drafts are rejected, the
#                     worst case for drafting;
#   tiny-phi          the tiny test fixture (too small for a batch to cost less than its tokens one by one);
#   stdlib-phi        the trained fixture (tests/fixtures/stdlib-phi: as small, but it writes Python, so its drafts
#                     are accepted or rejected for the reasons a real model's are); its context is 256 tokens, so it
#                     runs the short workloads of tests/bench/short_workloads and generates NG_SHORT (96) tokens.
#
#   tests/bench/draft-bench.sh [WORK_DIR]    env: THREADS (2), NG (128), REPS (3), SHAPE (small: phi-1-small's
#                                            20 layers x 1024; full: phi-1's 24 x 2048), TYPE (f16), NGRAM, NGRAM_MIN,
#                                            DRAFT_MAX
#
# Makes the checkpoint with make_phi1_checkpoint.py (python3 + numpy) and converts it with phi-tui itself.
set -euo pipefail
cd "$(dirname "$0")/../.."
work=${1:-${TMPDIR:-/tmp}/phi1-draft-bench}
threads=${THREADS:-2} ng=${NG:-128} reps=${REPS:-3} type=${TYPE:-f16} shape=${SHAPE:-small}
mkdir -p "$work"

cargo build --release --quiet
bin=${CARGO_TARGET_DIR:-target}/release/phi-tui
case $shape in
    small) dims=(--layers 20 --hidden 1024 --intermediate 4096 --heads 16) ;;
    full) dims=(--layers 24 --hidden 2048 --intermediate 8192 --heads 32) ;;
    *) echo "SHAPE is small or full" >&2; exit 2 ;;
esac
models=()
for variant in "" -noise; do
    model="$work/phi1-$shape$variant.$type.gguf"
    if [ ! -f "$model" ]; then
        std=$([ "$variant" = -noise ] && echo 0.1 || echo 0.02)
        python3 tests/bench/make_phi1_checkpoint.py "$work/checkpoint" "${dims[@]}" --init hf --std "$std" >/dev/null
        "$bin" convert "$work/checkpoint" -o "$model" --outtype "$type" 2>/dev/null
        rm -rf "$work/checkpoint"
    fi
    models+=("$model")
done
tiny="$work/tiny-phi.f16.gguf"
[ -f "$tiny" ] || "$bin" convert tests/fixtures/tiny-phi -o "$tiny" --outtype f16 2>/dev/null
trained="$work/stdlib-phi.f16.gguf"
[ -f "$trained" ] || "$bin" convert tests/fixtures/stdlib-phi -o "$trained" --outtype f16 2>/dev/null
short_workloads=()
for file in tests/bench/short_workloads/*; do short_workloads+=(--workload "$file"); done

lookup=()
[ -n "${NGRAM:-}" ] && lookup+=(--draft-ngram "$NGRAM")
[ -n "${NGRAM_MIN:-}" ] && lookup+=(--draft-ngram-min "$NGRAM_MIN")
[ -n "${DRAFT_MAX:-}" ] && lookup+=(--draft-max "$DRAFT_MAX")

printf '%-22s %-10s %7s %12s %12s %8s %15s %9s\n' model workload prompt "plain tok/s" "lookup tok/s" speedup \
    "accepted/draft" identical
for model in "${models[@]}" "$tiny" "$trained"; do
    if [ "$model" = "$trained" ]; then
        workload_args=(-n "${NG_SHORT:-96}" "${short_workloads[@]}")
    else
        workload_args=(-n "$ng")
    fi
    "$bin" bench -m "$model" -p 16 "${workload_args[@]}" -r "$reps" --threads "$threads" --ngl 0 --draft lookup \
        "${lookup[@]}" --json | python3 -c '
import json, os, sys
report = json.load(sys.stdin)
name = os.path.basename(sys.argv[1]).removesuffix(".gguf")
for row in report["draft"]:
    print("%-22s %-10s %7d %12.2f %12.2f %7.2fx %7d/%-7d %9s" % (name, row["workload"], row["prompt_tokens"],
          row["plain_tok_s"], row["lookup_tok_s"], row["speedup"], row["accepted"], row["drafted"],
          "yes" if row["identical"] else "NO (at %d, gap %.1e)" % (row["first_difference"],
                                                                 row.get("difference_logit_gap", float("nan")))))
' "$model"
done
