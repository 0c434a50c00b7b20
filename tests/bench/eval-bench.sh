#!/usr/bin/env bash
# Benchmark (not a test): wall time of `phi-tui eval humaneval` scoring the 164 canonical solutions (no model: the
# completions come from the dataset), i.e. the cost of the sandbox and the harness alone.
#
#   tests/bench/eval-bench.sh [JOBS] [PROFILE]      defaults: 2, release (or debug); env PHI_TUI=path skips the build
#
# Needs python3 (to write the completions file).
set -euo pipefail
cd "$(dirname "$0")/../.."
jobs=${1:-2}
profile=${2:-release}
if [ -n "${PHI_TUI:-}" ]; then
    bin=$PHI_TUI
else
    if [ "$profile" = release ]; then cargo build --release --quiet; else cargo build --quiet; fi
    bin=target/$profile/phi-tui
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 - "$work/canonical.jsonl" <<'PY'
import gzip, json, sys
with gzip.open("assets/eval/HumanEval.jsonl.gz", "rt") as f, open(sys.argv[1], "w") as out:
    for line in f:
        problem = json.loads(line)
        out.write(json.dumps({"task_id": problem["task_id"], "completion": problem["canonical_solution"]}) + "\n")
PY
start=$(date +%s.%N)
"$bin" eval humaneval --completions "$work/canonical.jsonl" --jobs "$jobs" --out "$work/results.jsonl"
end=$(date +%s.%N)
awk -v s="$start" -v e="$end" -v j="$jobs" -v p="$profile" \
    'BEGIN { printf "scored 164 canonical HumanEval solutions with --jobs %s (%s build): %.2f s wall\n", j, p, e - s }'
