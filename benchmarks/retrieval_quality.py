"""Retrieval quality of lab2prod's index against a naive floor, on the bundled corpus and an unrelated real one.

Corpora: the sample product docs (data/corpus, golden.jsonl) and the Python language reference topics that ship
with CPython (benchmarks/corpora/pydoc, regenerated offline). Configurations:
- floor: 800-character splitter, dense only, plain sentence-transformers (the naive baseline);
- lab2prod dense / lexical / hybrid, with the torch (fp32), torch-bf16 and onnx-int8 embedding backends.
A question is found at rank r when a chunk of its source document is the r-th hit.

    .venv/bin/python benchmarks/retrieval_quality.py [--out benchmarks/results/retrieval_quality.json]
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from lab2prod.core import atomic_write_json, load_model, read_jsonl, stage_products
from lab2prod.data import run_data_stage
from lab2prod.index import Retriever, build_index, embed_texts, evaluate_retrieval

ROOT = Path(__file__).resolve().parents[1]


def corpora(work: Path) -> dict[str, tuple[Path, Path]]:
    "`name -> (corpus_dir, golden_path)` for the two corpora."
    pydoc = work / "pydoc-corpus"
    subprocess.run([sys.executable, str(ROOT / "benchmarks/corpora/pydoc/make_corpus.py"), str(pydoc)], check=True,
                   capture_output=True)
    return {"sample": (ROOT / "data/corpus", ROOT / "data/golden.jsonl"),
            "pydoc": (pydoc, ROOT / "benchmarks/corpora/pydoc/golden.jsonl")}


def naive_floor(corpus: Path, golden: list[dict], model, size: int = 800, k: int = 10) -> dict:
    "800-character chunks, one dense model, cosine top-k: the floor any design must beat."
    rows = []
    for f in sorted(corpus.rglob("*.md")):
        text = f.read_text(encoding="utf-8")
        rows += [(f.relative_to(corpus).as_posix(), text[i:i + size]) for i in range(0, len(text), size)]
    vecs = embed_texts(model, [t for _, t in rows])
    sources = [s for s, _ in rows]
    ranks = []
    for g in golden:
        order = np.argsort(-(vecs @ embed_texts(model, [g["question"]])[0]))[:k]
        found = [sources[i] for i in order]
        ranks.append(found.index(g["source"]) + 1 if g["source"] in found else np.inf)
    r = np.array(ranks)
    return {"hit_at_1": float((r == 1).mean()), "hit_at_5": float((r <= 5).mean()), "mrr": float((1 / r).mean()),
            "n_questions": len(r), "n_chunks": len(rows)}


def main(out: Path, only: tuple[str, ...] = ("sample", "pydoc"), backends: tuple[str, ...] = ("torch", "torch-bf16", "onnx-int8")) -> dict:
    results = {}
    torch_model = load_model("embedding")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name, (corpus, golden_path) in corpora(work).items():
            if name not in only:
                continue
            art = work / name
            run_data_stage(corpus_dir=str(corpus), golden_path=str(golden_path), artifacts_dir=str(art), profile="default")
            data = stage_products("data", art)
            golden = read_jsonl(data["golden"])
            results[f"{name}/floor"] = naive_floor(corpus, golden, torch_model)
            for backend in backends:
                idx = work / f"{name}-{backend}"
                t0 = time.perf_counter()
                build_index(data["chunks"], idx, embedding_backend=backend)
                build_s = time.perf_counter() - t0
                for mode in ("dense", "lexical", "hybrid"):
                    if mode == "lexical" and backend != "torch":
                        continue
                    metrics, _ = evaluate_retrieval(Retriever.load(idx, mode=mode), golden)
                    results[f"{name}/{mode}/{backend}"] = metrics | {"index_build_s": round(build_s, 1)}
                    print(f"{name:7s} {mode:8s} {backend:9s} " + " ".join(f"{k}={v:.3f}" for k, v in metrics.items()
                                                                        if k != "n_questions"), flush=True)
            print(f"{name:7s} floor    torch     " + " ".join(f"{k}={v:.3f}" for k, v in results[f"{name}/floor"].items()
                                                         if k.startswith(("hit", "mrr"))), flush=True)
    atomic_write_json(out, results)
    return results


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/retrieval_quality.json")
    ap.add_argument("--corpora", default="sample,pydoc", help="comma-separated: sample, pydoc")
    ap.add_argument("--backends", default="torch,torch-bf16,onnx-int8", help="comma-separated embedding backends")
    a = ap.parse_args()
    main(a.out, tuple(a.corpora.split(",")), tuple(a.backends.split(",")))
