"""Ingest-and-chunk throughput of the data stage on at least 20 MB of Markdown.

The corpus is generated (deterministic): 400 documents of ~52 KB with headings, paragraphs, lists, tables and
code blocks, built from the sample corpus's vocabulary so no two documents are near-duplicates. Measured in one
process: lab2prod's ingest (read, decode, clean, boilerplate, exact + MinHash near-dedupe) and structure-aware
chunking in embedding-model tokens, against the naive floor of reading the files and cutting 800-character pieces.
Target: at least 20 MB per minute for ingest + chunk on a 2-core machine.

    .venv/bin/python benchmarks/data_speed.py [--mb 20]
"""
from __future__ import annotations

import argparse
import json
import re
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def make_corpus(folder: Path, mb: float, seed: int = 0) -> int:
    "Write generated Markdown documents until `mb` megabytes; returns the byte count."
    words = sorted(set(re.findall(r"[A-Za-z][A-Za-z0-9_-]+", " ".join(p.read_text() for p in (ROOT / "data/corpus").rglob("*.md")))))
    rng, total, i = np.random.default_rng(seed), 0, 0

    def sentence() -> str:
        return " ".join(rng.choice(words, rng.integers(8, 25))).capitalize() + "."
    while total < mb * 2**20:
        parts = [f"# Document {i}: {' '.join(rng.choice(words, 3))}"]
        for s in range(12):
            parts.append(f"## {' '.join(rng.choice(words, 3))} {s}")
            for _ in range(3):
                parts.append(" ".join(sentence() for _ in range(rng.integers(3, 8))))
            parts.append("\n".join(f"- {sentence()}" for _ in range(4)))
            parts.append("| key | default | meaning |\n|---|---|---|\n" + "\n".join(
                f"| {rng.choice(words)} | {rng.integers(1, 999)} | {sentence()} |" for _ in range(5)))
            parts.append("```yaml\n" + "\n".join(f"{rng.choice(words)}: {rng.integers(0, 100)}" for _ in range(5)) + "\n```")
        text = "\n\n".join(parts) + "\n"
        (folder / f"doc{i:04d}.md").write_text(text)
        total += len(text.encode())
        i += 1
    return total


def main(mb: float, out: Path) -> dict:
    from lab2prod.core import atomic_write_json, get_profile
    from lab2prod.data import TokenCounter, chunk_document, ingest_corpus
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp)
        size = make_corpus(corpus, mb)
        t0 = time.perf_counter()
        pieces = sum(len(range(0, len(f.read_text()), 800)) for f in sorted(corpus.glob("*.md")))
        naive_s = time.perf_counter() - t0
        prof, counter = get_profile("default"), TokenCounter.for_model()
        t0 = time.perf_counter()
        docs, rejected, _ = ingest_corpus(corpus)
        ingest_s = time.perf_counter() - t0
        chunks = [c for d in docs for c in chunk_document(d, counter, prof.chunk_tokens, prof.chunk_overlap)]
        total_s = time.perf_counter() - t0
    res = {"megabytes": round(size / 2**20, 1), "documents": len(docs), "rejected": len(rejected), "chunks": len(chunks),
           "ingest_s": round(ingest_s, 1), "ingest_and_chunk_s": round(total_s, 1),
           "mb_per_minute": round(size / 2**20 / total_s * 60, 1),
           "naive_read_and_split_s": round(naive_s, 2), "naive_pieces": pieces,
           "slowdown_vs_naive": round(total_s / naive_s, 1), "max_chunk_tokens": max(c.n_tokens for c in chunks)}
    atomic_write_json(out, res)
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, default=20)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/data_speed.json")
    a = ap.parse_args()
    main(a.mb, a.out)
