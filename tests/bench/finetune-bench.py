"""Helper of finetune-bench.sh: PEFT's LoRA training step on CPU, timed, and the inputs both sides share.

  finetune-bench.py make-model OUT --hidden H --layers L --heads N   random PhiForCausalLM (float32 safetensors)
  finetune-bench.py make-data OUT --sequences S --seq-len T          random token ids as {"ids": [...]} JSONL
  finetune-bench.py peft MODEL_DIR DATA --batch B --steps N --warmup W --threads T
        prints {"ms_per_step": ...}: LoRA r=8, alpha=16 on q,k,v,dense,fc1,fc2; AdamW lr 2e-4; clip 1.0;
        mean over N steps after W warmup steps, batches taken in file order (the same as phi-tui --no-shuffle).
"""
import argparse
import json
import random
import time


def make_model(args):
    from transformers import PhiConfig, PhiForCausalLM
    import torch

    torch.manual_seed(0)
    config = PhiConfig(
        vocab_size=51200,
        hidden_size=args.hidden,
        intermediate_size=4 * args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        partial_rotary_factor=0.5,
        max_position_embeddings=2048,
    )
    PhiForCausalLM(config).to(torch.float32).save_pretrained(args.out)


def make_data(args):
    rng = random.Random(0)
    with open(args.out, "w") as f:
        for _ in range(args.sequences):
            f.write(json.dumps({"ids": [rng.randrange(50000) for _ in range(args.seq_len)]}) + "\n")


def peft(args):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import PhiForCausalLM

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = PhiForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    config = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, bias="none", task_type="CAUSAL_LM",
                        target_modules=["q_proj", "k_proj", "v_proj", "dense", "fc1", "fc2"])
    model = get_peft_model(model, config)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=2e-4, weight_decay=0.0)
    with open(args.data) as f:
        rows = [json.loads(line)["ids"] for line in f if line.strip()]
    ids = torch.tensor(rows)
    times = []
    for step in range(args.warmup + args.steps):
        batch = ids[(step * args.batch) % len(rows):][: args.batch]
        start = time.perf_counter()
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad()
        if step >= args.warmup:
            times.append(time.perf_counter() - start)
    print(json.dumps({"ms_per_step": 1000 * sum(times) / len(times), "loss": loss.item(),
                      "torch": torch.__version__, "threads": torch.get_num_threads()}))


def main():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("make-model")
    p.add_argument("out")
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--heads", type=int, default=16)
    p = sub.add_parser("make-data")
    p.add_argument("out")
    p.add_argument("--sequences", type=int, required=True)
    p.add_argument("--seq-len", type=int, required=True)
    p = sub.add_parser("peft")
    p.add_argument("model")
    p.add_argument("data")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    {"make-model": make_model, "make-data": make_data, "peft": peft}[args.command](args)


if __name__ == "__main__":
    main()
