"""The accelerator path of serving and training, measured where it runs.

What `auto` resolves to on this machine (embedding backend, generation engine, training precision), the served
engine (`load_engine` on the `engine` task's folder, as the service loads it) against the merged transformers model
in fp32 on the CPU (greedy agreement and speed in the same run: one stream, batches of 8/32/64 RAG prompts, time to
first token), the served engine under 1-64 concurrent clients calling `agenerate` as the service does (against the
same model answering one request per `generate` call), and LoRA training steps with `train_lora` in bf16 autocast
and in fp32 (tokens/s, peak memory, loss).
On a machine without a GPU it measures the CPU path the same way, so the figures say which device gave them.

    python benchmarks/gpu_path.py --engine-dir artifacts/engine --train artifacts/data/train.jsonl
"""
from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "pkg"))

from _serving import percentiles  # noqa: E402

from lab2prod.core import (  # noqa: E402
    atomic_write_json,
    choose_embedding_backend,
    choose_generation_backend,
    choose_train_precision,
    detect_hardware,
    get_profile,
    load_model,
    read_jsonl,
)
from lab2prod.engine import TransformersEngine, greedy_agreement, load_engine, read_engine_spec  # noqa: E402
from lab2prod.finetune import TrainConfig, add_lora, train_lora  # noqa: E402
from lab2prod.rag import build_messages  # noqa: E402


def rag_prompts(rows: list[dict], n: int) -> list[list[dict]]:
    "`n` RAG-shaped chat prompts (question and its passage) from the training rows, cycling when there are fewer."
    return [build_messages(rows[i % len(rows)]["question"], [rows[i % len(rows)]["context"]]) for i in range(n)]


def decode_speed(engine, prompts: list[list[dict]], max_new_tokens: int, repeats: int = 2) -> dict:
    "Completion tokens per second for one call over `prompts` (the best of `repeats`, after an identical warm-up call)."
    t0 = time.perf_counter()
    engine.generate(prompts, max_new_tokens)  # the same shapes as the timed calls: kernels tuned, graphs compiled
    warmup = time.perf_counter() - t0
    best = None
    for _ in range(repeats):
        t0 = time.perf_counter()
        gens = engine.generate(prompts, max_new_tokens)
        seconds = time.perf_counter() - t0
        tokens = sum(g.completion_tokens for g in gens)
        if best is None or tokens / seconds > best["tokens_per_s"]:
            best = {"requests": len(prompts), "completion_tokens": tokens, "seconds": round(seconds, 3),
                    "tokens_per_s": round(tokens / seconds, 1), "warmup_seconds": round(warmup, 2)}
    return best


def first_token_seconds(engine, messages: list[dict], max_new_tokens: int = 32) -> float:
    "Time to first token of one streamed request."
    final = [p for p in engine.stream(messages, max_new_tokens) if not isinstance(p, str)][-1]
    return round(final.ttft_s, 4)


def measure_engine(engine, prompts: list[list[dict]], max_new_tokens: int, batches: list[int]) -> dict:
    "One stream, each batch size and time to first token for `engine`."
    described = {k: v for k, v in engine.describe().items() if isinstance(v, (str, int, float, bool, type(None)))}
    if Path(str(described.get("base_model", ""))).is_file():  # a file of this machine: its name says which model it is
        described["base_model"] = Path(described["base_model"]).name
    return {"describe": described,
            "one_stream": decode_speed(engine, prompts[:1], max_new_tokens),
            "batches": [decode_speed(engine, prompts[:b], max_new_tokens, repeats=1) for b in batches],
            "ttft_s": first_token_seconds(engine, prompts[0])}


def measure_training(base_model: str, rows: list[dict], precision: str, steps: int, device: str) -> dict:
    "Seconds per step, trained tokens/s and peak memory of `train_lora` at `precision`; the loss curve."
    import torch
    prof = get_profile("default")
    model, tok = load_model("llm", base_model, device=device)
    model = add_lora(model, prof.lora_r)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    stamps = []
    cfg = TrainConfig(steps=steps, batch=prof.train_batch, seq_len=prof.train_seq_len, precision=precision)
    result = train_lora(model, tok, rows, cfg, on_step=lambda s, loss: stamps.append(time.perf_counter()))
    steady = (stamps[-1] - stamps[0]) / (len(stamps) - 1) if len(stamps) > 1 else result.seconds
    out = {"precision": result.precision, "device": device, "steps": steps, "batch": prof.train_batch,
           "seq_len": prof.train_seq_len, "seconds": result.seconds, "seconds_per_step_steady": round(steady, 4),
           "trained_tokens_per_s": result.tokens_per_s, "loss_first": round(result.losses[0], 4),
           "loss_last": round(result.losses[-1], 4), "losses": [round(x, 4) for x in result.losses],
           "finite": all(math.isfinite(x) for x in result.losses)}
    if device == "cuda":
        out["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    del model
    return out


def closed_loop(engine, prompts: list[list[dict]], max_new_tokens: int, clients: int, seconds: float) -> dict:
    """`clients` callers of `engine.agenerate`, each sending its next request when its last one is answered, as the
    service's handlers do, for `seconds`: total completion tokens/s and per-request latency."""
    async def client(i: int, stop: float, lat: list, toks: list) -> None:
        n = 0
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            gen = await engine.agenerate(prompts[(i + n * clients) % len(prompts)], max_new_tokens)
            lat.append(time.perf_counter() - t0)
            toks.append(gen.completion_tokens)
            n += 1

    async def run() -> dict:
        await asyncio.gather(*(engine.agenerate(prompts[i % len(prompts)], max_new_tokens) for i in range(clients)))
        lat: list[float] = []
        toks: list[int] = []
        t0 = time.perf_counter()
        await asyncio.gather(*(client(i, t0 + seconds, lat, toks) for i in range(clients)))
        wall = time.perf_counter() - t0
        q = percentiles(lat, digits=3)
        return {"clients": clients, "requests": len(lat), "seconds": round(wall, 2),
                "tokens_per_s": round(sum(toks) / wall, 1), "requests_per_s": round(len(lat) / wall, 2),
                "latency_p50_s": q["p50"], "latency_p99_s": q["p99"]}

    return asyncio.run(run())


def concurrency(engine, prompts: list[list[dict]], max_new_tokens: int, clients: list[int], unbatched: list[int],
                seconds: float) -> dict:
    """The served engine under concurrent requests, through `agenerate` as the service calls it: batched (concurrent
    requests share one `generate`) against the same model answering one request per `generate` call."""
    one_by_one = type(engine)(engine.model, engine.tokenizer, dict(engine.info), max_batch_size=1)
    out = {"max_new_tokens": max_new_tokens, "seconds_per_level": seconds,
           "batched": [closed_loop(engine, prompts, max_new_tokens, n, seconds) for n in clients],
           "one_per_generate": [closed_loop(one_by_one, prompts, max_new_tokens, n, seconds) for n in unbatched]}
    base = {r["clients"]: r["tokens_per_s"] for r in out["one_per_generate"]}
    out["ratio_batched_vs_one_per_generate"] = {str(r["clients"]): round(r["tokens_per_s"] / base[r["clients"]], 2)
                                                for r in out["batched"] if r["clients"] in base}
    return out


def gpu_variant(args, state: dict, variant: str, prompts: list[list[dict]], batches: list[int]) -> dict:
    "The transformers engine on the GPU in fp32, or in bf16 with a static KV cache (which transformers compiles)."
    import torch
    spec = read_engine_spec(args.engine_dir)
    adapter = Path(args.engine_dir) / spec.adapter if spec.adapter else None
    eng = TransformersEngine.load(args.base_model or spec.base_model, adapter, device="cuda")
    state[variant] = eng
    if variant == "fp32":
        eng.model = eng.model.to(torch.float32)
        eng.info["precision"] = "float32"
    else:
        eng.model.generation_config.cache_implementation = "static"
        eng.info["cache"] = "static, compiled"
    out = measure_engine(eng, prompts, args.max_new_tokens, [batches[0], batches[-1]])
    if "reference" in state:
        out["greedy_agreement_vs_cpu_fp32"] = {k: v for k, v in greedy_agreement(eng, state["reference"]).items()
                                               if k != "examples"}
    return out


def section(results: dict, name: str, fn, out: Path) -> None:
    "Run one part of the check; a failure is recorded with its traceback and the other parts still run."
    t0 = time.perf_counter()
    try:
        results[name] = fn()
    except Exception as e:  # one failing part must not cost the measurements of the others
        results[name] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-3000:]}
    results.setdefault("section_seconds", {})[name] = round(time.perf_counter() - t0, 1)
    atomic_write_json(out, results)
    print(json.dumps({name: results[name]}, default=str)[:3000], flush=True)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engine-dir", default="artifacts/engine", help="the engine task's folder")
    ap.add_argument("--base-model", default=None, help="the LLM (default: the engine's, e.g. the bundled GGUF)")
    ap.add_argument("--train", default="artifacts/data/train.jsonl", help="training rows (question, context, answer)")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--batches", default="8,32,64", help="batch sizes (concurrent requests) to time")
    ap.add_argument("--train-steps", type=int, default=30)
    ap.add_argument("--skip-reference", action="store_true", help="no CPU fp32 reference (agreement and baseline)")
    ap.add_argument("--clients", default="1,8,32,64", help="concurrent clients for the served engine's closed loop")
    ap.add_argument("--unbatched-clients", default="8,32", help="the same, one request per generate call")
    ap.add_argument("--loop-seconds", type=float, default=6.0, help="how long each closed-loop level runs")
    ap.add_argument("--loop-new-tokens", type=int, default=64, help="new tokens per closed-loop request")
    ap.add_argument("--skip-compiled", action="store_true", help="no bf16 static-cache variant (compiling is slow)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/gpu_path.json"))
    args = ap.parse_args(argv)
    out = Path(args.out)
    import torch
    hw = detect_hardware()
    results: dict = {"date": time.strftime("%Y-%m-%d"), "python": platform.python_version(), "torch": torch.__version__,
                     "hardware": hw.model_dump(),
                     "auto": {"embedding_backend": choose_embedding_backend("auto", hw),
                              "generation_backend": choose_generation_backend("auto", hw),
                              "train_precision": choose_train_precision("auto", hw)}}
    if hw.gpu:
        results["gpu_total_mib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**20)
    rows = read_jsonl(args.train)
    prompts = rag_prompts(rows, max(int(b) for b in args.batches.split(",")))
    batches = [int(b) for b in args.batches.split(",")]
    state: dict = {}

    def served():
        state["engine"] = load_engine(args.engine_dir, backend="auto", base_model=args.base_model)
        return measure_engine(state["engine"], prompts, args.max_new_tokens, batches)

    def reference():
        spec = read_engine_spec(args.engine_dir)
        adapter = Path(args.engine_dir) / spec.adapter if spec.adapter else None
        state["reference"] = TransformersEngine.load(args.base_model or spec.base_model, adapter, device="cpu")
        torch.set_num_threads(os.cpu_count() or 1)
        return measure_engine(state["reference"], prompts, args.max_new_tokens, batches[:1])

    section(results, "served_engine", served, out)
    if not args.skip_reference:
        section(results, "cpu_fp32_reference", reference, out)
        if "engine" in state and "reference" in state:
            section(results, "greedy_agreement", lambda: greedy_agreement(state["engine"], state["reference"]), out)
            s, r = results["served_engine"], results["cpu_fp32_reference"]
            if "one_stream" in s and "one_stream" in r:
                results["ratios_vs_cpu_fp32"] = {
                    "one_stream": round(s["one_stream"]["tokens_per_s"] / r["one_stream"]["tokens_per_s"], 2),
                    f"batch_{batches[0]}": round(s["batches"][0]["tokens_per_s"] / r["batches"][0]["tokens_per_s"], 2)}
    if "engine" in state and hasattr(state["engine"], "model"):  # the in-process engine; a server batches itself
        section(results, "concurrency", lambda: concurrency(
            state["engine"], prompts, args.loop_new_tokens, [int(c) for c in args.clients.split(",")],
            [int(c) for c in args.unbatched_clients.split(",")], args.loop_seconds), out)
    if hw.gpu:
        section(results, "cuda_fp32", lambda: gpu_variant(args, state, "fp32", prompts, batches), out)
    for name in [n for n in state if n != "reference"]:
        state.pop(name).close()
    device = "cuda" if hw.gpu else "cpu"
    base = args.base_model or "bundled"
    train_rows = rows[:256]
    section(results, "train_auto", lambda: measure_training(base, train_rows, "auto", args.train_steps, device), out)
    if results["auto"]["train_precision"] != "fp32":
        section(results, "train_fp32", lambda: measure_training(base, train_rows, "fp32", args.train_steps, device), out)
        a, f = results["train_auto"], results["train_fp32"]
        if "trained_tokens_per_s" in a and "trained_tokens_per_s" in f:
            results["train_ratio_auto_vs_fp32"] = round(a["trained_tokens_per_s"] / f["trained_tokens_per_s"], 2)
    if hw.gpu and not args.skip_compiled:  # last: compiling can be slow, and every figure above is already saved
        section(results, "cuda_bf16_static_compiled", lambda: gpu_variant(args, state, "static", prompts, batches), out)
    atomic_write_json(out, results)
    return results


if __name__ == "__main__":
    main()
