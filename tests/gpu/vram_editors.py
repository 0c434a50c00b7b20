#!/usr/bin/env python3
"""GPU memory held by editors: one `phi-tui lsp --standalone` (its own engine) against two `phi-tui lsp` attached to
one shared-session daemon (the default), on the same model.

    python3 tests/gpu/vram_editors.py --bin PHI_TUI --model MODEL.gguf [--json OUT.json]

Each editor opens the same module and gets one completion from the model before memory is read, so every engine has
its weights and KV cache on the GPU. Memory is nvidia-smi's `memory.used` for the whole GPU minus what was used
before the first server started (the GPU machine runs nothing else). The daemon runs in a private runtime directory
and is stopped at the end.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lsp_latency  # noqa: E402  (the JSON-RPC client and the document live there)


def used_mib():
    out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                         check=True, capture_output=True, text=True).stdout
    return int(out.split()[0])


def start_editor(binary, model, env, log_path, extra):
    """A language server that has answered one completion from the model."""
    server = lsp_latency.Server([binary, "lsp", "-m", model, "--log-file", log_path, *extra], env)
    lsp_latency.open_and_warm_up(server, {"debounceMs": 0, "mode": "singleLine"}, log_path)
    return server


def settle():
    """Memory after the servers' allocations are done (CUDA frees and allocates lazily)."""
    time.sleep(1.0)
    return used_mib()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bin", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--json")
    args = parser.parse_args()

    scratch = tempfile.mkdtemp(prefix="phi-vram-")
    env = dict(os.environ)
    env["PHI_TUI_LOG"] = "info,llama-cpp-2=warn"
    env["PHI_TUI_RUNTIME_DIR"] = os.path.join(scratch, "run")
    env["PHI_TUI_DATA_DIR"] = os.path.join(scratch, "data")

    baseline = settle()
    standalone = start_editor(args.bin, args.model, env, os.path.join(scratch, "standalone.log"), ["--standalone"])
    standalone_mib = settle() - baseline
    standalone.close()
    time.sleep(1.0)

    baseline_shared = settle()
    editors = [start_editor(args.bin, args.model, env, os.path.join(scratch, f"editor{i}.log"), [])
               for i in range(2)]
    shared_mib = settle() - baseline_shared
    status = subprocess.run([args.bin, "status", "--json"], env=env, capture_output=True, text=True).stdout
    for editor in editors:
        editor.close()
    subprocess.run([args.bin, "serve", "--stop"], env=env, capture_output=True)

    try:
        daemon = json.loads(status)
    except json.JSONDecodeError:
        daemon = {}
    result = {
        "model": args.model,
        "standalone_one_editor_mib": standalone_mib,
        "daemon_two_editors_mib": shared_mib,
        "ratio": shared_mib / standalone_mib if standalone_mib else None,
        "daemon_model_loads": daemon.get("model_loads"),
        "daemon_clients": len(daemon.get("clients") or []),
    }
    print(f"{os.path.basename(args.model)}: one standalone editor {standalone_mib} MiB; daemon + two editors "
          f"{shared_mib} MiB (×{result['ratio'] or 0:.2f}); daemon status: {status.strip()[:300]}")
    if args.json:
        with open(args.json, "w") as out:
            json.dump(result, out, indent=1)


if __name__ == "__main__":
    main()
