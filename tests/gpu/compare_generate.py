#!/usr/bin/env python3
"""Greedy `phi-tui generate` on a converted fixture model, on the GPU and on the CPU, against the reference tokens.

    python3 tests/gpu/compare_generate.py --bin PHI_TUI --model tiny-phi.f16.gguf \\
        --reference tests/fixtures/tiny-phi/reference/prompts.json \\
        --gpu-backends DIR_WITH_CUDA --cpu-backends DIR_CPU_ONLY [--json OUT.json]

For each of the fixture's prompts it generates as many tokens as transformers did (never stopping at end-of-text,
as the reference did not), once with the CUDA backend module loaded and the default offload (all layers), once with
only the CPU modules. A one-ulp difference may legitimately flip the argmax where the reference's top-1/top-2 logit
gap is small, so tokens are compared up to the first step whose gap is below 0.05 (as tests/reference_models.rs
does): GPU and CPU must agree there, and both must equal transformers' tokens. Agreement beyond that is reported, not
required. Only the standard library is used.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

FRAGILE_GAP = 0.05


def generate(binary, model, prompt_text, n_tokens, backends, extra):
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False, encoding="utf-8") as prompt_file:
        prompt_file.write(prompt_text)
    env = dict(os.environ, PHI_TUI_BACKENDS_DIR=backends)
    command = [binary, "generate", "-m", model, "--prompt-file", prompt_file.name, "-n", str(n_tokens),
               "--ignore-eos", "--json", *extra]
    try:
        result = subprocess.run(command, env=env, capture_output=True, timeout=300)
    finally:
        os.remove(prompt_file.name)
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{result.stderr.decode(errors='replace')}")
    return json.loads(result.stdout)


def common_prefix(a, b):
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bin", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--reference", required=True, help="a fixture's reference/prompts.json")
    parser.add_argument("--gpu-backends", required=True)
    parser.add_argument("--cpu-backends", required=True)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()

    with open(args.reference, encoding="utf-8") as f:
        prompts = json.load(f)["prompts"]
    rows, devices = [], set()
    for prompt in prompts:
        reference = prompt["greedy"]["new_ids"]
        gaps = prompt["greedy"]["gaps"]
        stable = next((i for i, gap in enumerate(gaps) if gap < FRAGILE_GAP), len(gaps))
        gpu = generate(args.bin, args.model, prompt["text"], len(reference), args.gpu_backends, [])
        cpu = generate(args.bin, args.model, prompt["text"], len(reference), args.cpu_backends, ["--ngl", "0"])
        devices.add(gpu.get("device", "?"))
        row = {
            "prompt": prompt["name"],
            "prompt_tokens_match": gpu["prompt_tokens"] == cpu["prompt_tokens"] == prompt["ids"],
            "stable_steps": stable,
            "gpu_eq_cpu_stable": gpu["tokens"][:stable] == cpu["tokens"][:stable],
            "gpu_eq_reference_stable": gpu["tokens"][:stable] == reference[:stable],
            "cpu_eq_reference_stable": cpu["tokens"][:stable] == reference[:stable],
            "gpu_eq_cpu_steps": common_prefix(gpu["tokens"], cpu["tokens"]),
            "steps": len(reference),
            "gpu_device": gpu.get("device"),
            "cpu_device": cpu.get("device"),
        }
        row["ok"] = (row["prompt_tokens_match"] and row["gpu_eq_cpu_stable"] and row["gpu_eq_reference_stable"]
                     and row["cpu_eq_reference_stable"])
        rows.append(row)
        print(f"{row['prompt']:<16} stable steps {stable:>2}: GPU=CPU {row['gpu_eq_cpu_stable']}, "
              f"GPU=reference {row['gpu_eq_reference_stable']}, CPU=reference {row['cpu_eq_reference_stable']}; "
              f"GPU and CPU agree for {row['gpu_eq_cpu_steps']}/{row['steps']} steps")
    result = {
        "model": args.model,
        "gpu_devices": sorted(devices),
        "prompts": len(rows),
        "ok_prompts": sum(r["ok"] for r in rows),
        "stable_tokens": sum(r["stable_steps"] for r in rows),
        "identical_prompts": sum(r["gpu_eq_cpu_steps"] == r["steps"] for r in rows),
        "rows": rows,
    }
    if args.json:
        with open(args.json, "w") as out:
            json.dump(result, out, indent=1)
    sys.exit(0 if result["ok_prompts"] == result["prompts"] else 1)


if __name__ == "__main__":
    main()
