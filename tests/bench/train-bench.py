#!/usr/bin/env python3
"""Helper of tests/bench/train-bench.sh: the PyTorch side of the full-training throughput comparison.

    train-bench.py make-data OUT.jsonl --sequences N --seq-len T        random token ids, one {"ids"} per line
    train-bench.py torch MODEL_DIR|PRESET DATA.jsonl --batch B --steps S --warmup W --threads N

`torch` trains every parameter of PhiForCausalLM (float32, eager attention) with torch.optim.AdamW
(weight_decay 0.01) and clip_grad_norm_(1.0) on the batches of DATA in order, and prints
{"tokens_per_second", "ms_per_step"} over the S steps after W warmup steps. MODEL_DIR is a Hugging Face checkpoint;
a PRESET (tiny, small, base) builds a random model of `phi-tui train --preset`'s shape.
Tested with torch 2.15.0 (CPU), transformers 5.25.0.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time

PRESETS = {"tiny": (2, 64, 4, 512), "small": (4, 128, 4, 1024), "base": (8, 512, 8, 2048)}


def make_data(a: argparse.Namespace) -> None:
    rng = random.Random(0)
    with open(a.out, "w") as f:
        for _ in range(a.sequences):
            f.write(json.dumps({"ids": [rng.randrange(50000) for _ in range(a.seq_len)]}) + "\n")


def torch_run(a: argparse.Namespace) -> None:
    import torch
    from transformers import PhiConfig, PhiForCausalLM

    torch.set_num_threads(a.threads)
    if a.model in PRESETS:
        layers, hidden, heads, context = PRESETS[a.model]
        config = PhiConfig(vocab_size=51200, hidden_size=hidden, intermediate_size=4 * hidden,
                           num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                           max_position_embeddings=context, partial_rotary_factor=0.5, layer_norm_eps=1e-5)
        config._attn_implementation = "eager"
        model = PhiForCausalLM(config)
    else:
        model = PhiForCausalLM.from_pretrained(a.model, dtype=torch.float32, attn_implementation="eager")
    model.train()
    rows = [json.loads(line)["ids"] for line in open(a.data)]
    batches = [torch.tensor(rows[i:i + a.batch]) for i in range(0, len(rows), a.batch)]
    params = list(model.parameters())
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01)
    times = []
    for step in range(a.warmup + a.steps):
        x = batches[step % len(batches)]
        start = time.perf_counter()
        opt.zero_grad()
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        times.append(time.perf_counter() - start)
    measured = times[a.warmup:]
    tokens = a.batch * batches[0].shape[1]
    seconds = sorted(measured)[len(measured) // 2]
    json.dump({"tokens_per_second": tokens / seconds, "ms_per_step": seconds * 1000}, sys.stdout)
    print()


def main() -> None:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("make-data")
    d.add_argument("out")
    d.add_argument("--sequences", type=int, required=True)
    d.add_argument("--seq-len", type=int, required=True)
    t = sub.add_parser("torch")
    t.add_argument("model")
    t.add_argument("data")
    t.add_argument("--batch", type=int, required=True)
    t.add_argument("--steps", type=int, required=True)
    t.add_argument("--warmup", type=int, default=2)
    t.add_argument("--threads", type=int, required=True)
    a = p.parse_args()
    {"make-data": make_data, "torch": torch_run}[a.cmd](a)


if __name__ == "__main__":
    main()
