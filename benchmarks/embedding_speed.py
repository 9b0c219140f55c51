"""Embedding throughput: lab2prod's torch-bf16 and onnx-int8 backends against plain SentenceTransformer.encode.

Chunks are the data stage's chunks of the sample corpus and of the pydoc corpus (default profile, ~200 embedding
tokens each). Each backend encodes all chunks three times, alternating, and the median is kept, so a burst of
load on a shared machine hits all of them. Also reports each backend's cosine similarity to the plain vectors.
Retrieval quality of both backends on the golden sets: benchmarks/retrieval_quality.py.

    .venv/bin/python benchmarks/embedding_speed.py
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from lab2prod.core import atomic_write_json, load_model, stage_products
from lab2prod.data import run_data_stage
from lab2prod.index import chunk_embed_texts, embed_texts, load_embedder

ROOT = Path(__file__).resolve().parents[1]


def main(out: Path, repeats: int = 3, max_chunks: int | None = None) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        subprocess.run([sys.executable, str(ROOT / "benchmarks/corpora/pydoc/make_corpus.py"), str(tmp / "pydoc")],
                       check=True, capture_output=True)
        texts = []
        for name, corpus in (("sample", ROOT / "data/corpus"), ("pydoc", tmp / "pydoc")):
            run_data_stage(corpus_dir=str(corpus), artifacts_dir=str(tmp / name), profile="default")
            texts += chunk_embed_texts(pd.read_parquet(stage_products("data", tmp / name)["chunks"]))
        texts = texts[:max_chunks] if max_chunks else texts
        models = {"plain": load_model("embedding"), "torch-bf16": load_embedder("bundled", "torch-bf16"),
                  "onnx-int8": load_embedder("bundled", "onnx-int8", tmp / "embedder")}
        times, vecs = {k: [] for k in models}, {}
        for _ in range(repeats):
            for name, model in models.items():
                t0 = time.perf_counter()
                vecs[name] = embed_texts(model, texts)
                times[name].append(time.perf_counter() - t0)
    speed = {k: len(texts) / statistics.median(v) for k, v in times.items()}
    cos = {k: (vecs[k] * vecs["plain"]).sum(1) for k in models if k != "plain"}
    res = {"chunks": len(texts), "chunks_per_s": {k: round(v, 1) for k, v in speed.items()},
           "speedup": {k: round(speed[k] / speed["plain"], 2) for k in cos},
           "cosine_to_plain": {k: {"mean": round(float(c.mean()), 5), "min": round(float(c.min()), 5)} for k, c in cos.items()},
           "runs_s": {k: [round(x, 1) for x in v] for k, v in times.items()}}
    atomic_write_json(out, res)
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/embedding_speed.json")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--max-chunks", type=int, default=None, help="embed only the first N chunks (a quick check)")
    a = ap.parse_args()
    main(a.out, a.repeats, a.max_chunks)
