"""The harness's report from stored results: the GPU column reads the files measured on lent GPU machines and puts
each figure on the CPU row it sits beside. Runs in a second: nothing is measured here."""
import json
import sys

from conftest import ROOT

sys.path.insert(0, str(ROOT))
from benchmarks.__main__ import RESULTS, gpu_column  # noqa: E402


def test_gpu_column_puts_closed_loop_clients_on_the_client_rows():
    g = json.loads((RESULTS / "gpu_path.h200.json").read_text())
    col = gpu_column([RESULTS / "gpu_path.h200.json", RESULTS / "no-such-run.json"])
    want = {r["clients"]: r["tokens_per_s"] for r in g["concurrency"]["batched"]}
    assert col["figures"]["8 clients (baseline: llama-server as a user starts it)"] == f"{want[8]:,.0f} tokens/s"
    assert col["figures"]["1 clients (baseline: llama-server as a user starts it)"] == f"{want[1]:,.0f} tokens/s"
    assert col["name"] == "NVIDIA H200: engine, training" and col["date"] == g["date"]  # the missing file is skipped
    auto = g["train_auto"]
    assert col["figures"]["fine-tuning bf16 (baseline: the earlier loop)"].endswith(f"(auto: {auto['precision']})")


def test_gpu_column_leaves_out_training_of_a_few_steps():
    col = gpu_column([RESULTS / "gpu_path.h200.batch64.json"])
    assert not any(k.startswith("fine-tuning") for k in col["figures"]), col["figures"]  # 2 steps checked the path only
    assert gpu_column([RESULTS / "no-such-run.json"]) is None
