#!/usr/bin/env python3
"""Prints the GPU check's table from the results directory that tests/gpu/gpu-check.sh fills.

    python3 tests/gpu/report.py RESULTS_DIR

Files read: facts.txt (key=value lines), defaults.json + defaults-fa.txt, engine-TYPE-faON|OFF.jsonl (one
`phi-tui bench --json` object per round), raw-TYPE-faON|OFF.txt (one pbench line per round), lsp-TYPE.json,
generate.json. Missing results show as "missing" and fail their goal. Exit status 0 when every goal is met.
"""
import json
import os
import re
import statistics
import sys

ENGINE_RAW_GOAL = 0.97
COMPLETION_P50_GOAL_MS = 50.0


def read_lines(path):
    try:
        with open(path, encoding="utf-8") as f:
            return [line.strip() for line in f if line.strip()]
    except OSError:
        return []


def read_json(path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def engine_speeds(results, model_type, fa):
    """Median over rounds of the engine's (pp, tg) tok/s, or None."""
    runs = []
    for line in read_lines(os.path.join(results, f"engine-{model_type}-fa{fa}.jsonl")):
        try:
            runs.append(json.loads(line))
        except ValueError:
            pass
    if not runs:
        return None
    return statistics.median(r["pp_tok_s"] for r in runs), statistics.median(r["tg_tok_s"] for r in runs)


def raw_speeds(results, model_type, fa):
    """Median over rounds of pbench's (pp, tg) tok/s, or None."""
    pp, tg = [], []
    for line in read_lines(os.path.join(results, f"raw-{model_type}-fa{fa}.txt")):
        match = re.search(r"pp\d+=([\d.]+) tok/s tg\d+=([\d.]+)", line)
        if match:
            pp.append(float(match.group(1)))
            tg.append(float(match.group(2)))
    if not pp:
        return None
    return statistics.median(pp), statistics.median(tg)


def tok_s(value):
    return f"{value:,.0f}" if value >= 100 else f"{value:,.1f}"


def main():
    results = sys.argv[1] if len(sys.argv) > 1 else "."
    facts = dict(line.split("=", 1) for line in read_lines(os.path.join(results, "facts.txt")) if "=" in line)
    cpu_only = facts.get("cpu_only") == "1"
    n_prompt, n_gen = facts.get("n_prompt", "?"), facts.get("n_gen", "?")
    types = [t for t in ("f16", "q8_0", "q4_0", "f32", "bf16", "q4_k_m") if
             os.path.exists(os.path.join(results, f"engine-{t}-faon.jsonl"))]
    rows = []  # (check, model, measured, goal, result)

    def row(check, model, measured, goal="", ok=None, speed=False):
        if ok is None:
            result = ""
        elif speed and cpu_only:
            result = "(dry run)"  # the goals are for the GPU; on a CPU they mean nothing
        else:
            result = "ok" if ok else "FAIL"
        rows.append((check, model, measured, goal, result))

    defaults = read_json(os.path.join(results, "defaults.json"))
    fa_default = (read_lines(os.path.join(results, "defaults-fa.txt")) or ["unknown"])[0]
    if defaults:
        on_gpu = defaults["device"] != "CPU"
        row("defaults: offload, flash attention", "f16",
            f"{defaults['device']}, {defaults['gpu_layers']} layers on GPU; FA {defaults['flash_attention']} → "
            f"{fa_default}", "all layers, FA on", (on_gpu or cpu_only) and fa_default == "enabled")
    else:
        row("defaults: offload, flash attention", "f16", "missing", "all layers, FA on", False)

    for model_type in types:
        speeds = {(who, fa): fetch(results, model_type, fa)
                  for who, fetch in (("engine", engine_speeds), ("raw", raw_speeds)) for fa in ("on", "off")}
        for fa in ("on", "off"):
            engine, raw = speeds[("engine", fa)], speeds[("raw", fa)]
            for i, test in enumerate((f"pp{n_prompt}", f"tg{n_gen}")):
                goal = f"≥ {ENGINE_RAW_GOAL}" if fa == "on" else ""
                if engine is None or raw is None:
                    row(f"engine/raw {test}, FA {fa}", model_type, "missing", goal, False if fa == "on" else None, True)
                    continue
                ratio = engine[i] / raw[i]
                row(f"engine/raw {test}, FA {fa}", model_type,
                    f"{tok_s(engine[i])} / {tok_s(raw[i])} tok/s = {ratio:.3f}", goal,
                    ratio >= ENGINE_RAW_GOAL if fa == "on" else None, True)
        on, off = speeds[("engine", "on")], speeds[("engine", "off")]
        for i, test in enumerate((f"pp{n_prompt}", f"tg{n_gen}")):
            if on is None or off is None:
                row(f"FA on/off, engine {test}", model_type, "missing", "> 1", False, True)
                continue
            row(f"FA on/off, engine {test}", model_type,
                f"{tok_s(on[i])} / {tok_s(off[i])} tok/s = {on[i] / off[i]:.2f}×", "> 1", on[i] > off[i], True)

    for model_type in facts.get("lsp_types", "f16").split():
        lsp = read_json(os.path.join(results, f"lsp-{model_type}.json"))
        goal = f"p50 ≤ {COMPLETION_P50_GOAL_MS:.0f} ms"
        if lsp:
            row("completion via lsp, p50 / p95", model_type,
                f"{lsp['p50_ms']:.1f} / {lsp['p95_ms']:.1f} ms ({lsp['model_requests']} requests, "
                f"≤{lsp['max_line_tokens']}-token lines, {lsp['median_decoded_prompt_tokens']:g} prompt tokens "
                f"decoded)", goal, lsp["p50_ms"] <= COMPLETION_P50_GOAL_MS, True)
        else:
            row("completion via lsp, p50 / p95", model_type, "missing", goal, False, True)
    # Through the shared-session daemon and in GPU memory; a dry run on a CPU has neither.
    lsp = read_json(os.path.join(results, "lsp-daemon-f16.json"))
    if lsp:
        row("completion via lsp + daemon, p50 / p95", "f16",
            f"{lsp['p50_ms']:.1f} / {lsp['p95_ms']:.1f} ms ({lsp['model_requests']} requests)",
            f"p50 ≤ {COMPLETION_P50_GOAL_MS:.0f} ms", lsp["p50_ms"] <= COMPLETION_P50_GOAL_MS)
    vram = read_json(os.path.join(results, "vram.json"))
    if vram:
        row("GPU memory, daemon + 2 editors / 1 standalone", "f16",
            f"{vram['daemon_two_editors_mib']} / {vram['standalone_one_editor_mib']} MiB = {vram['ratio']:.2f} "
            f"({vram['daemon_model_loads']} model load)", "≤ 1.1", vram["ratio"] is not None and vram["ratio"] <= 1.1)

    generate = read_json(os.path.join(results, "generate.json"))
    if generate:
        devices = ", ".join(generate["gpu_devices"])
        row("generate greedy, GPU vs CPU", "tiny-phi f16",
            f"{generate['ok_prompts']}/{generate['prompts']} prompts: GPU = CPU = transformers for all "
            f"{generate['stable_tokens']} stable tokens; {generate['identical_prompts']}/{generate['prompts']} "
            f"identical to the end (GPU: {devices})", "same tokens",
            generate["ok_prompts"] == generate["prompts"])
    else:
        row("generate greedy, GPU vs CPU", "tiny-phi f16", "missing", "same tokens", False)

    header = ("check", "model", "measured", "goal", "result")
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    title = "phi-tui GPU check" + (" — CPU DRY RUN (no GPU: the goals are for H100/H200)" if cpu_only else "")
    built = facts.get("build_s", "?")
    module_build = "no backend module build" if cpu_only and built == "0" else f"backend module build {built} s"
    print(title)
    print(" · ".join(v for v in (facts.get("gpu"), facts.get("nvcc"), facts.get("cpu")) if v))
    print(f"{facts.get('llama_cpp_sys', '')} · model: phi-1 shape ({facts.get('shape', '?')}, random weights) · "
          f"pp{n_prompt} / tg{n_gen}, median of {facts.get('reps', '?')} runs × {facts.get('rounds', '?')} rounds · "
          f"{facts.get('threads', '?')} threads · {module_build} · whole check "
          f"{facts.get('total_s', '?')} s")
    print()
    for r in [header] + rows:
        print("  ".join(str(v).ljust(w) for v, w in zip(r, widths)).rstrip())
    sys.exit(0 if all(r[4] != "FAIL" for r in rows) else 1)


if __name__ == "__main__":
    main()
