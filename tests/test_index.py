"The index outside the notebook: a real Chroma server on loopback, incremental updates, the skew guard, bad input."
import json
import os
import shutil
import signal
import socket
import subprocess
import time

import httpx
import pandas as pd
import pytest
from conftest import BIN

from lab2prod.data import run_data_stage
from lab2prod.index import IndexError_, Retriever, build_index, check_skew


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    art = tmp_path_factory.mktemp("art")
    run_data_stage(artifacts_dir=str(art), profile="smoke")
    return art / "data"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def chroma_server(tmp_path):
    port = free_port()
    proc = subprocess.Popen([str(BIN / "chroma"), "run", "--path", str(tmp_path / "srv"), "--host", "127.0.0.1",
                             "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, env={**os.environ, "ANONYMIZED_TELEMETRY": "False"})
    for _ in range(60):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/v2/heartbeat", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.5)
    else:
        os.killpg(proc.pid, signal.SIGTERM)
        pytest.fail("chroma server did not start")
    yield port
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(20)


def test_build_and_search_through_a_chroma_server(data_dir, tmp_path, chroma_server, monkeypatch):
    monkeypatch.setenv("CHROMA_HOST", "127.0.0.1")
    monkeypatch.setenv("CHROMA_PORT", str(chroma_server))
    manifest = build_index(data_dir / "chunks.parquet", tmp_path / "index")
    assert manifest["chroma"] == "127.0.0.1" and not (tmp_path / "index" / "chroma").exists(), "no embedded store"
    hits = Retriever.load(tmp_path / "index").search("How do I retry a failed job?", k=3)
    assert len(hits) == 3 and hits[0].source.endswith(".md")


def test_incremental_update_embeds_only_changes(data_dir, tmp_path):
    df = pd.read_parquet(data_dir / "chunks.parquet")
    first = build_index(data_dir / "chunks.parquet", tmp_path / "index")
    assert first["sync"]["embedded"] == len(df)
    changed = df.copy()
    changed.loc[0, "text"] += " Changed."
    changed.loc[0, "chunk_id"] = "changed-0"
    changed = changed.drop(index=1)
    changed.to_parquet(tmp_path / "changed.parquet")
    second = build_index(tmp_path / "changed.parquet", tmp_path / "index")
    assert second["sync"] == second["sync"] | {"embedded": 1, "deleted": 2}
    r = Retriever.load(tmp_path / "index")
    assert len(r) == len(df) - 1 and r.collection.count() == len(df) - 1


def test_skew_guard(data_dir, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(data_dir, data)
    build_index(data / "chunks.parquet", tmp_path / "index")
    assert check_skew(tmp_path / "index", data / "chunks.parquet")["in_step"]
    df = pd.read_parquet(data / "chunks.parquet")
    df.loc[0, "text"] = "outdated fact"
    df.to_parquet(data / "chunks.parquet")
    assert check_skew(tmp_path / "index", data / "chunks.parquet")["in_step"] is False


def test_bad_index_folders_and_arguments(data_dir, tmp_path):
    with pytest.raises(IndexError_, match="does not exist"):
        Retriever.load(tmp_path / "nope")
    build_index(data_dir / "chunks.parquet", tmp_path / "index")
    r = Retriever.load(tmp_path / "index")
    with pytest.raises(ValueError, match="positive integer"):
        r.search("ports", k=0)
    with pytest.raises(ValueError, match="larger than the collection"):
        r.search("ports", k=len(r) + 1)
    with pytest.raises(ValueError, match="non-empty"):
        r.search("  ", k=1)
    manifest = json.loads((tmp_path / "index" / "manifest.json").read_text())
    (tmp_path / "index" / "manifest.json").write_text(json.dumps(manifest | {"n_chunks": manifest["n_chunks"] + 5}))
    with pytest.raises(IndexError_, match="does not match its manifest"):
        Retriever.load(tmp_path / "index")
    (tmp_path / "index" / "manifest.json").write_text("{half-writ")
    with pytest.raises(IndexError_, match="corrupted"):
        Retriever.load(tmp_path / "index")
    (tmp_path / "index" / "manifest.json").unlink()
    with pytest.raises(IndexError_, match="never completed"):
        Retriever.load(tmp_path / "index")


def test_empty_chunks_and_missing_model(tmp_path, data_dir):
    pd.read_parquet(data_dir / "chunks.parquet").head(0).to_parquet(tmp_path / "empty.parquet")
    with pytest.raises(ValueError, match="no chunks"):
        build_index(tmp_path / "empty.parquet", tmp_path / "i1")
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        build_index(data_dir / "chunks.parquet", tmp_path / "i2", embedding_model="./models/missing-model")


def test_every_backend_agrees_with_the_plain_model_and_a_switch_reembeds(data_dir, tmp_path):
    "Each backend's vectors stay close to plain fp32 ones; changing the backend re-embeds the whole collection."
    from lab2prod.core import load_model
    from lab2prod.index import BACKENDS, chunk_embed_texts, embed_texts, load_embedder
    texts = chunk_embed_texts(pd.read_parquet(data_dir / "chunks.parquet").head(24))
    plain = embed_texts(load_model("embedding"), texts)
    floor = {"torch": 0.99999, "torch-bf16": 0.999, "onnx-int8": 0.95}  # measured: 1.0, 0.9999+, 0.97+
    for backend in BACKENDS:
        vecs = embed_texts(load_embedder("bundled", backend, tmp_path / "onnx"), texts)
        assert vecs.shape == plain.shape and vecs.dtype == plain.dtype, backend
        assert (vecs * plain).sum(1).min() > floor[backend], backend
    with pytest.raises(ValueError, match="unknown"):
        load_embedder("bundled", "fp8")
    n = len(pd.read_parquet(data_dir / "chunks.parquet"))
    build_index(data_dir / "chunks.parquet", tmp_path / "index", embedding_backend="torch-bf16")
    again = build_index(data_dir / "chunks.parquet", tmp_path / "index", embedding_backend="torch-bf16")
    switched = build_index(data_dir / "chunks.parquet", tmp_path / "index", embedding_backend="onnx-int8")
    assert again["sync"]["embedded"] == 0 and switched["sync"]["embedded"] == n


def test_fast_backends_load_a_hub_id_from_the_local_cache_only(tmp_path):
    "A Hugging Face id found in the local cache loads on torch-bf16; an id not there fails naming it, offline."
    import sys

    from lab2prod.core import resolve_model
    snap = tmp_path / "hub" / "models--acme--mini-embedder" / "snapshots" / ("a" * 40)
    shutil.copytree(resolve_model("embedding").location, snap)
    (snap.parents[1] / "refs").mkdir()
    (snap.parents[1] / "refs" / "main").write_text("a" * 40)
    code = ("from lab2prod.index import load_embedder\n"
            "import sys\n"
            "e = load_embedder(sys.argv[1], 'torch-bf16')\n"
            "print(e.encode(['a query']).shape)")
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    ok = subprocess.run([sys.executable, "-c", code, "acme/mini-embedder"], env=env, capture_output=True, text=True)
    assert ok.returncode == 0 and "(1, 384)" in ok.stdout, ok.stderr[-2000:]
    missing = subprocess.run([sys.executable, "-c", code, "acme/not-cached"], env=env, capture_output=True, text=True)
    assert missing.returncode != 0 and "'acme/not-cached' is neither a local folder nor in the Hugging Face cache" \
        in missing.stderr, missing.stderr[-2000:]
