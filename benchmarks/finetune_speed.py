"""Fine-tuning speed and memory: the stage's loop against the loop it replaced, in the same run.

Each variant trains the bundled model's LoRA adapter for the default profile's steps on the data stage's training
rows, in its own process (so peak resident memory is its own), and reports trained tokens/s, seconds, peak memory
and the answers' loss on held-out rows after training (faster must not mean worse):

- `previous`: the loop before (examples drawn at random, so batches mix short and long rows; fp32; no accelerate
  state reset, no checkpoints), kept here as the baseline;
- `fp32`: `train_lora` with length-grouped batches and the LM head at the answer positions only, in fp32;
- `bf16`: the same with bf16 autocast (fast only where the CPU computes bf16 natively: AVX512-BF16 or AMX);
- `bf16-all-logits`: `bf16` with the LM head over every position, as before: what the answer positions save;
- `top-half`: the same in the precision `auto` picks, with adapters in the top half of the layers only
  (`lora_layers: 0.5`): the backward pass stops below them.

    python benchmarks/finetune_speed.py --train artifacts/data/train.jsonl
"""
from __future__ import annotations

import argparse
import json
import platform
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "pkg"))

VARIANTS = ("previous", "fp32", "bf16", "bf16-all-logits", "top-half")


def previous_loop(model, tokenizer, rows, steps: int, batch: int, max_len: int, lr: float = 2e-4, seed: int = 0):
    "The training loop the stage used before: random examples per batch, fp32, right padding to the batch's longest."
    import torch

    from lab2prod.finetune import collate, encode_example
    random.seed(seed)
    torch.manual_seed(seed)
    examples = [encode_example(tokenizer, r, max_len) for r in rows]
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    tokens, order = 0, []
    for _ in range(steps):
        if len(order) < batch:
            order += random.sample(range(len(examples)), len(examples))
        b = collate([examples[order.pop()] for _ in range(batch)], tokenizer.pad_token_id)
        tokens += int(b["attention_mask"].sum())
        loss = model(**b).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    return tokens


def run_variant(variant: str, train: str, steps: int) -> dict:
    "Train one variant in this process; its speed, peak memory and held-out loss."
    from lab2prod.core import detect_hardware, get_profile, load_model, read_jsonl
    from lab2prod.finetune import TrainConfig, add_lora, answer_loss, split_rows, train_lora, usable_rows
    prof = get_profile("default")
    train_rows, held = split_rows(usable_rows(read_jsonl(train)), 0.1, seed=0)
    model, tok = load_model("llm")
    layers = 0.5 if variant == "top-half" else 1.0 if variant == "previous" else prof.lora_layers
    model = add_lora(model, prof.lora_r, seed=0, layers=layers)
    t0 = time.perf_counter()
    if variant == "previous":
        tokens = previous_loop(model, tok, train_rows, steps, prof.train_batch, prof.train_seq_len)
        precision = "fp32"
    else:
        if variant == "bf16-all-logits":  # the loop as it was: logits at every position
            import lab2prod.finetune
            lab2prod.finetune.keeps_logits = lambda model: False
        cfg = TrainConfig(steps=steps, batch=prof.train_batch, seq_len=prof.train_seq_len, lora_layers=layers,
                          precision={"top-half": "auto", "bf16-all-logits": "bf16"}.get(variant, variant))
        result = train_lora(model, tok, train_rows, cfg)
        tokens, precision = result.trained_tokens, result.precision
    seconds = time.perf_counter() - t0
    after = answer_loss(model, tok, held[:48], prof.train_seq_len)
    return {"variant": variant, "precision": precision, "lora_layers": layers, "steps": steps, "batch": prof.train_batch,
            "seq_len": prof.train_seq_len, "seconds": round(seconds, 2), "trained_tokens": tokens,
            "trained_tokens_per_s": round(tokens / seconds, 1), "heldout_loss_after": after["loss"],
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "cpu": detect_hardware().cpu}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", default=None, help="training rows (default: the data task's of --artifacts)")
    ap.add_argument("--artifacts", default=str(ROOT / "artifacts"), help="a pipeline run's artifacts folder")
    ap.add_argument("--steps", type=int, default=None, help="default: the default profile's train_steps")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--variant", help=argparse.SUPPRESS)  # one variant, in a child process
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/finetune_speed.json"))
    a = ap.parse_args(argv)
    from lab2prod.core import atomic_write_json, detect_hardware, get_profile, stage_products
    a.train = a.train or stage_products("data", a.artifacts)["train"]
    if not Path(a.train).exists():
        raise SystemExit(f"{a.train} is missing: run the pipeline first (make pipeline) or pass --train / --artifacts")
    steps = a.steps or get_profile("default").train_steps
    if a.variant:
        print(json.dumps(run_variant(a.variant, a.train, steps)))
        return {}
    runs = []
    for v in a.variants.split(","):
        proc = subprocess.run([sys.executable, __file__, "--variant", v, "--train", a.train, "--steps", str(steps)],
                              capture_output=True, text=True, cwd=ROOT)
        if proc.returncode:
            raise SystemExit(f"variant {v} failed:\n{proc.stderr[-3000:]}")
        runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(json.dumps(runs[-1]), flush=True)
    base = next((r for r in runs if r["variant"] == "previous"), runs[0])
    out = {"date": time.strftime("%Y-%m-%d"), "machine": detect_hardware().model_dump(), "python": platform.python_version(),
           "runs": runs, "speedup_vs_previous": {r["variant"]: round(r["trained_tokens_per_s"] / base["trained_tokens_per_s"], 2)
                                                 for r in runs},
           "seconds_vs_previous": {r["variant"]: round(base["seconds"] / r["seconds"], 2) for r in runs}}
    atomic_write_json(a.out, out)
    print(json.dumps({k: out[k] for k in ("speedup_vs_previous", "seconds_vs_previous")}))
    return out


if __name__ == "__main__":
    main()
