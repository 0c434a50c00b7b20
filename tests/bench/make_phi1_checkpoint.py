#!/usr/bin/env python3
"""Writes a random-weight checkpoint with phi-1's shape (or phi-1-small's) in the transformers layout, as f32.

Speed and memory of a converter do not depend on the weight values, so this stands in for microsoft/phi-1 without
downloading it. Tensors are streamed into model.safetensors one at a time, so the script needs little memory.

    python3 make_phi1_checkpoint.py OUT_DIR [--layers 24 --hidden 2048 --intermediate 8192 --heads 32] [--init hf]

--init flat (the default) draws every tensor from N(0, 0.02): the model then repeats one token whatever its prompt.
--init hf initialises as transformers does (matrices N(0, 0.02), biases 0, LayerNorm weights 1): the output then
depends on the prompt and rarely repeats, which is what a benchmark of drafting on text without repetition needs.
"""
import argparse
import json
import shutil
import struct
from pathlib import Path

import numpy as np


def tensors(layers, hidden, intermediate, vocab):
    yield "model.embed_tokens.weight", (vocab, hidden)
    for i in range(layers):
        p = f"model.layers.{i}"
        yield f"{p}.input_layernorm.weight", (hidden,)
        yield f"{p}.input_layernorm.bias", (hidden,)
        for proj in ("q_proj", "k_proj", "v_proj", "dense"):
            yield f"{p}.self_attn.{proj}.weight", (hidden, hidden)
            yield f"{p}.self_attn.{proj}.bias", (hidden,)
        yield f"{p}.mlp.fc1.weight", (intermediate, hidden)
        yield f"{p}.mlp.fc1.bias", (intermediate,)
        yield f"{p}.mlp.fc2.weight", (hidden, intermediate)
        yield f"{p}.mlp.fc2.bias", (hidden,)
    yield "model.final_layernorm.weight", (hidden,)
    yield "model.final_layernorm.bias", (hidden,)
    yield "lm_head.weight", (vocab, hidden)
    yield "lm_head.bias", (vocab,)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--intermediate", type=int, default=8192)
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--vocab", type=int, default=51200)
    parser.add_argument("--init", choices=("flat", "hf"), default="flat")
    parser.add_argument("--std", type=float, default=0.02, help="standard deviation of the random weights")
    parser.add_argument("--tokenizer-dir", default=str(Path(__file__).resolve().parents[2] / "assets" / "tokenizer"))
    args = parser.parse_args()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    specs = sorted(tensors(args.layers, args.hidden, args.intermediate, args.vocab))
    header, offset = {}, 0
    for name, shape in specs:
        size = int(np.prod(shape)) * 4
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    header_bytes = json.dumps(header, separators=(",", ":")).encode()
    header_bytes += b" " * (-len(header_bytes) % 8)
    rng = np.random.default_rng(1234)
    with open(out / "model.safetensors", "wb") as f:
        f.write(struct.pack("<Q", len(header_bytes)))
        f.write(header_bytes)
        for name, shape in specs:
            if args.init == "hf" and len(shape) == 1:
                data = np.ones(shape, np.float32) if "layernorm.weight" in name else np.zeros(shape, np.float32)
            else:
                data = rng.standard_normal(shape, dtype=np.float32)
                data *= args.std
            f.write(data.tobytes())
    config = {
        "architectures": ["PhiForCausalLM"],
        "model_type": "phi",
        "hidden_size": args.hidden,
        "intermediate_size": args.intermediate,
        "num_hidden_layers": args.layers,
        "num_attention_heads": args.heads,
        "num_key_value_heads": None,
        "partial_rotary_factor": 0.5,
        "rope_theta": 10000.0,
        "layer_norm_eps": 1e-5,
        "hidden_act": "gelu_new",
        "max_position_embeddings": 2048,
        "vocab_size": args.vocab,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "transformers_version": "4.37.0",
    }
    (out / "config.json").write_text(json.dumps(config, indent=2))
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "added_tokens.json",
                 "special_tokens_map.json"):
        shutil.copy(Path(args.tokenizer_dir) / name, out / name)
    params = sum(int(np.prod(s)) for _, s in specs)
    print(f"{out}: {params:,} parameters, {offset / 2**30:.2f} GiB of f32")


if __name__ == "__main__":
    main()
