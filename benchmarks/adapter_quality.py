"""Does the fine-tuned adapter help on documentation the project was never tuned on? The golden questions of each
corpus answered through the served chain with the adapter and, by the same engine, with the LoRA scaled to 0 (the
base model); the per-question differences with a bootstrap interval (`paired_difference_ci`).

Corpora as in retrieval_quality.py (each rebuilt offline by its make_corpus.py). Per corpus and recipe: the data
stage (`default` profile, `train_recipe`), the index (the default retrieval settings, env.yaml's), an adapter trained on all the
corpus's training rows with the `default` profile's settings (none of which repeats a golden question), and the
`engine` task's base model of an existing run (`--artifacts`) with that adapter. Answers are decoded in one engine
slot, so they are reproducible (see README, "Fine-tuning"). The guardrails run on their rules only: the trained
prompt detector belongs to the sample corpus.

The `sentences` recipe and its learning rate were chosen on the sample corpus's 93 questions: its rows are the
development set. The other corpora were not looked at before this measurement.

    .venv/bin/python benchmarks/adapter_quality.py [--corpora sample,pydoc,sqlite,flask] [--recipes sentences,topics]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from retrieval_quality import CORPORA, ROOT, make_corpora  # noqa: E402

from lab2prod.core import atomic_write_json, get_profile, load_model, read_jsonl, stage_products  # noqa: E402
from lab2prod.data import run_data_stage  # noqa: E402
from lab2prod.engine import export_lora_gguf  # noqa: E402
from lab2prod.evaluate import answer_recall, paired_difference_ci, rouge_l, token_f1  # noqa: E402
from lab2prod.finetune import TrainConfig, add_lora, save_adapter, train_lora, usable_rows  # noqa: E402
from lab2prod.index import build_index  # noqa: E402

# the learning rate each recipe was measured with: the finetune task's default, and the one `topics` had as default
RECIPE_LR = {"sentences": TrainConfig.model_fields["lr"].default, "topics": 2e-4, "facts": 2e-4}


def train_adapter(train_path: str, out_dir: Path, steps: int, lr: float) -> dict:
    "An adapter trained on every row of `train_path` with the default profile's settings; its loss and time."
    prof = get_profile("default")
    rows = usable_rows(read_jsonl(train_path))
    llm, tok = load_model("llm", "bundled")
    cfg = TrainConfig(steps=steps, batch=prof.train_batch, seq_len=prof.train_seq_len, lr=lr, lora_r=prof.lora_r,
                      lora_layers=prof.lora_layers)
    model = add_lora(llm, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, None, cfg.seed, cfg.lora_layers)
    result = train_lora(model, tok, rows, cfg)
    save_adapter(model, out_dir)
    return {"rows": len(rows), "steps": steps, "lr": lr, "train_s": round(result.seconds, 1),
            "final_loss": round(result.losses[-1], 4)}


def engine_with(adapter_dir: Path, engine_src: Path, dest: Path) -> Path:
    "A copy of the engine folder `engine_src` serving `adapter_dir` (its base model linked, not copied)."
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    spec = json.loads((engine_src / "engine.json").read_text())
    for item in engine_src.iterdir():
        if item.name in (spec["adapter"], spec["adapter_gguf"]):
            continue
        (dest / item.name).symlink_to(item.resolve())
    shutil.copytree(adapter_dir, dest / spec["adapter"])
    export_lora_gguf(adapter_dir, spec.get("base_model", "bundled"), dest / spec["adapter_gguf"])
    return dest


def answer_all(chain, questions: list[str], max_new_tokens: int, batch: int = 8) -> list[dict]:
    return [r for i in range(0, len(questions), batch) for r in chain.ask_many(questions[i:i + batch], 4, max_new_tokens)]


def compare(adapted: list[dict], base: list[dict], references: list[str]) -> dict:
    "Mean scores of both and the adapter's per-question gain with its 95 % interval, per measure."
    out = {}
    for name, fn in (("token_f1", token_f1), ("rouge_l", rouge_l), ("recall", answer_recall)):
        a = [fn(r["answer"], ref) for r, ref in zip(adapted, references)]
        b = [fn(r["answer"], ref) for r, ref in zip(base, references)]
        out[name] = {"adapter": round(float(np.mean(a)), 4), "base": round(float(np.mean(b)), 4),
                     **{k: round(v, 4) for k, v in paired_difference_ci(a, b).items()}}
    out["words"] = {"adapter": round(float(np.mean([len(r["answer"].split()) for r in adapted])), 1),
                    "base": round(float(np.mean([len(r["answer"].split()) for r in base])), 1)}
    out["refused"] = {"adapter": sum(r["refused"] for r in adapted), "base": sum(r["refused"] for r in base)}
    return out


def run_corpus(name: str, corpus: Path, golden_path: Path, work: Path, recipes: list[str], engine_src: Path,
               steps: int, n_questions: int | None) -> dict:
    from lab2prod.rag import RagChain
    golden = read_jsonl(golden_path)[:n_questions]
    questions, references = [g["question"] for g in golden], [g["answer"] for g in golden]
    max_new_tokens = get_profile("default").eval_max_new_tokens
    res, base = {"n_questions": len(golden), "recipes": {}}, None
    for recipe in recipes:
        art = work / f"{name}-{recipe}"
        run_data_stage(corpus_dir=str(corpus), golden_path=str(golden_path), artifacts_dir=str(art), profile="default",
                       train_recipe=recipe)
        data = stage_products("data", art)
        if not (work / f"{name}-index").exists():
            build_index(data["chunks"], work / f"{name}-index")  # the default settings, those of env.yaml
        info = train_adapter(data["train"], art / "adapter", steps, RECIPE_LR[recipe])
        engine = engine_with(art / "adapter", engine_src, art / "engine")
        chain = RagChain.load(work / f"{name}-index", engine, chunks=data["chunks"], parallel=1)
        try:
            t0 = time.perf_counter()
            adapted = answer_all(chain, questions, max_new_tokens)
            info["answer_s"] = round(time.perf_counter() - t0, 1)
            if base is None:
                with chain.engine.without_adapter():
                    base = answer_all(chain, questions, max_new_tokens)
        finally:
            chain.engine.close()
        res["recipes"][recipe] = {**info, **compare(adapted, base, references),
                                  "examples": [{"question": q, "reference": ref, "adapter": a["answer"], "base": b["answer"]}
                                               for q, ref, a, b in list(zip(questions, references, adapted, base))[:5]]}
        t = res["recipes"][recipe]["token_f1"]
        print(f"{name:7s} {recipe:10s} token F1 adapter {t['adapter']:.3f} base {t['base']:.3f} "
              f"gain {t['mean']:+.3f} [{t['low']:+.3f}, {t['high']:+.3f}]", flush=True)
    return res


def main(out: Path, artifacts: Path, names: tuple[str, ...], recipes: list[str], steps: int,
         n_questions: int | None) -> dict:
    engine_src = Path(stage_products("engine", artifacts)["engine"])
    if not (engine_src / "engine.json").exists():
        raise SystemExit(f"no engine in {engine_src}: run the pipeline first (make pipeline) or pass --artifacts")
    results = {"steps": steps, "recipes": recipes, "corpora": {}}
    with tempfile.TemporaryDirectory(prefix="lab2prod-adapter-") as tmp:
        work = Path(tmp)
        for name, (corpus, golden) in make_corpora(work, names).items():
            results["corpora"][name] = run_corpus(name, corpus, golden, work, recipes, engine_src, steps, n_questions)
            atomic_write_json(out, results)  # what is measured so far survives a later failure
    return results


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/adapter_quality.json")
    ap.add_argument("--artifacts", type=Path, default=ROOT / "artifacts", help="a pipeline run whose engine is used")
    ap.add_argument("--corpora", default=",".join(CORPORA), help=f"comma-separated, from: {', '.join(CORPORA)}")
    ap.add_argument("--recipes", default="sentences", help="comma-separated train_recipe values")
    ap.add_argument("--steps", type=int, default=get_profile("default").train_steps)
    ap.add_argument("--questions", type=int, default=None, help="the first N golden questions of each corpus")
    a = ap.parse_args()
    os.environ.setdefault("PLOOMBER_STATS_ENABLED", "false")
    main(a.out, a.artifacts, tuple(a.corpora.split(",")), a.recipes.split(","), a.steps, a.questions)
