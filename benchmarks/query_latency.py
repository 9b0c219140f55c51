"""Index build time, memory and query latency of lab2prod's Retriever at 10k and 100k chunks.

Chunks are synthetic (texts drawn from the sample corpus's vocabulary, random unit vectors for the dense index),
which is what scale needs and quality does not. Queries are real questions from the golden set, embedded by the
real default (torch-bf16) embedder with its query cache cleared before every query, so the latency is end to end:
query embedding, Chroma HNSW search, BM25, fusion. Each size
runs in its own process so its peak memory (max RSS) is its own. Baseline in the same run: exact brute-force
cosine search over the same vectors (one matrix product and top-k).

    .venv/bin/python benchmarks/query_latency.py [--sizes 10000 100000]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


class SyntheticEmbedder:
    "Deterministic random unit vectors (by text hash): builds a large index without hours of embedding."

    def __init__(self, dim: int = 384):
        self.dim = dim

    def get_sentence_embedding_dimension(self) -> int:
        return self.dim

    def encode(self, texts, **_):
        out = np.stack([np.random.default_rng(int(hashlib.md5(t.encode()).hexdigest()[:8], 16)).standard_normal(self.dim)
                        for t in texts]).astype(np.float32)
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def synthetic_chunks(n: int, seed: int = 0) -> pd.DataFrame:
    "n chunks of 60-160 words drawn from the sample corpus's vocabulary."
    words = sorted(set(re.findall(r"[A-Za-z_][A-Za-z0-9_.-]+", " ".join(p.read_text() for p in (ROOT / "data/corpus").rglob("*.md")))))
    rng = np.random.default_rng(seed)
    texts = [" ".join(rng.choice(words, rng.integers(60, 160))) for _ in range(n)]
    return pd.DataFrame({"chunk_id": [f"c{i:07d}" for i in range(n)], "source": [f"doc{i // 20}.md" for i in range(n)],
                         "heading": [f"Section {i % 20}" for i in range(n)], "text": texts, "n_tokens": 150,
                         "position": [i % 20 for i in range(n)]})


def one_size(n: int, work: Path) -> dict:
    from lab2prod.core import read_jsonl
    from lab2prod.index import Retriever, build_index, load_embedder
    df = synthetic_chunks(n)
    chunks = work / "chunks.parquet"
    df.to_parquet(chunks)
    t0 = time.perf_counter()
    build_index(chunks, work / "index", embedding_backend="torch-bf16", embedder=SyntheticEmbedder())
    build_s = time.perf_counter() - t0
    real = load_embedder("bundled", "torch-bf16")  # the query side uses the real default embedder
    questions = [g["question"] for g in read_jsonl(ROOT / "data/golden.jsonl")]
    out = {"chunks": n, "build_s": round(build_s, 1)}
    for mode in ("dense", "lexical", "hybrid"):
        r = Retriever.load(work / "index", mode=mode, embedder=real)
        for q in questions[:5]:
            r.search(q, 5)  # warm-up
        lat = []
        for q in questions * 3:
            r.clear_query_cache()  # a repeated question must not skip its embedding
            t = time.perf_counter()
            r.search(q, 5)
            lat.append((time.perf_counter() - t) * 1000)
        out[mode] = {"p50_ms": round(float(np.percentile(lat, 50)), 2), "p99_ms": round(float(np.percentile(lat, 99)), 2),
                     "queries": len(lat)}
    import torch  # the baseline multiplies in torch too: NumPy's BLAS threads would fight torch's for the 2 cores
    vecs = torch.from_numpy(np.asarray(SyntheticEmbedder().encode(df.text.tolist()), dtype=np.float32))

    def brute_force(q: str) -> list[int]:
        return torch.topk(vecs @ torch.from_numpy(real.encode([q])[0]), 5).indices.tolist()

    for q in questions[:5]:
        brute_force(q)  # the same warm-up as above
    lat = []
    for q in questions * 3:
        t = time.perf_counter()
        brute_force(q)
        lat.append((time.perf_counter() - t) * 1000)
    out["baseline_bruteforce"] = {"p50_ms": round(float(np.percentile(lat, 50)), 2),
                                        "p99_ms": round(float(np.percentile(lat, 99)), 2)}
    out["max_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    out["index_disk_mb"] = round(sum(p.stat().st_size for p in (work / "index").rglob("*") if p.is_file()) / 2**20, 1)
    return out


def main(sizes: list[int], out: Path) -> dict:
    results = {}
    for n in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            p = subprocess.run([sys.executable, __file__, "--one", str(n), "--work", tmp], capture_output=True, text=True)
            if p.returncode:
                raise SystemExit(f"size {n} failed:\n{p.stderr[-3000:]}")
            results[str(n)] = json.loads(p.stdout.strip().splitlines()[-1])
            print(json.dumps(results[str(n)]), flush=True)
    from lab2prod.core import atomic_write_json
    atomic_write_json(out, results)
    return results


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/query_latency.json")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        print(json.dumps(one_size(a.one, a.work)))
    else:
        main(a.sizes, a.out)
