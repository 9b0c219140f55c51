"""Fine-tuning across processes: a two-process `accelerate launch` (gloo), determinism, kill-and-resume with SIGKILL,
bad input through `lab2prod train`, and the stage against a real `mlflow server` on loopback."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lab2prod.core import read_jsonl
from lab2prod.engine import free_port

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1", "MLFLOW_DISABLE_TELEMETRY": "true",
       "PYTHONWARNINGS": "ignore"}
SMALL = ["--steps", "6", "--batch", "2", "--seq-len", "96", "--lora-r", "4", "--lr", "1e-3"]
TINY: list[Path] = []  # the tiny model's folder, once the fixture made it


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """A two-layer Llama with random weights and the bundled tokenizer, in a local folder: what these tests check
    (processes, determinism, checkpoints) does not depend on the model's size, and it loads in a blink. The bundled
    model itself is trained by the stage test below."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from lab2prod.core import load_model
    _, tok = load_model("llm")
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024)).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def train_file(tmp_path_factory, tiny_model) -> Path:
    "A few rows in the data stage's format."
    TINY[:] = [tiny_model]
    rows = [{"id": f"r{i}", "question": f"What does section {i} of the handbook say about retries?",
             "context": f"Section {i}: a failed job is retried up to {i + 2} times, waiting {i * 10} seconds between tries.",
             "answer": f"Up to {i + 2} retries, {i * 10} seconds apart.", "source": f"doc{i % 3}.md"} for i in range(12)]
    path = tmp_path_factory.mktemp("data") / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def lab2prod_train(*args, launcher: list[str] | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    cmd = [*(launcher or []), str(BIN / "lab2prod"), "train", *map(str, args)]
    if "--base-model" not in cmd:
        cmd += ["--base-model", str(TINY[0])]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=ENV, cwd=ROOT)


def results(proc: subprocess.CompletedProcess) -> list[dict]:
    "The JSON result line each process printed."
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def test_two_process_launch_agrees(train_file, tmp_path):
    """`accelerate launch` with deploy/accelerate's two-process configuration (gloo on this CPU): each trains on its half of every batch, gradients
    are averaged, and both end with the same adapter and loss curve; the saved adapter is that adapter."""
    launcher = [str(BIN / "accelerate"), "launch", "--config_file", str(ROOT / "deploy" / "accelerate" / "cpu_ddp_2proc.yaml")]
    proc = lab2prod_train("--train", train_file, "--out", tmp_path / "adapter", *SMALL, "--precision", "fp32",
                          launcher=launcher)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = sorted(results(proc), key=lambda r: r["rank"])
    assert [r["rank"] for r in lines] == [0, 1] and all(r["world_size"] == 2 for r in lines), proc.stdout
    assert lines[0]["adapter_sha256"] == lines[1]["adapter_sha256"]
    assert lines[0]["losses"] == lines[1]["losses"] and len(lines[0]["losses"]) == 6

    from lab2prod.finetune import adapter_file_hash
    assert adapter_file_hash(tmp_path / "adapter") == lines[0]["adapter_sha256"]


def test_same_seed_same_adapter(train_file, tmp_path):
    """Two runs with the same data, settings and seed give the same loss curve and adapter hash (the notebook checks
    that another seed gives another adapter)."""
    runs = [results(lab2prod_train("--train", train_file, "--out", tmp_path / f"a{i}", *SMALL, "--seed", 3))[0]
            for i in range(2)]
    assert runs[0]["losses"] == runs[1]["losses"]
    assert runs[0]["adapter_sha256"] == runs[1]["adapter_sha256"]


def test_killed_run_resumes_from_its_last_checkpoint(train_file, tmp_path):
    """SIGKILL in the middle of training, then the same command again: it continues from the newest complete
    checkpoint (not from the start) and ends with the adapter of an uninterrupted run; a damaged checkpoint stops
    the next run with its name."""
    args = ["--train", train_file, *SMALL[:1], "100", *SMALL[2:], "--checkpoint-every", "5"]
    whole = results(lab2prod_train(*args, "--out", tmp_path / "whole"))[0]
    ck = tmp_path / "ck"
    cmd = [str(BIN / "lab2prod"), "train", *map(str, args), "--out", str(tmp_path / "resumed"), "--checkpoint-dir", str(ck),
           "--base-model", str(TINY[0])]
    child = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV, cwd=ROOT)
    deadline = time.monotonic() + 300
    while not list(ck.glob("*/step-00002*")) and time.monotonic() < deadline and child.poll() is None:
        time.sleep(0.05)
    assert child.poll() is None, "training finished before it could be killed; make the run longer"
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert child.returncode == -signal.SIGKILL and not (tmp_path / "resumed").exists()
    done = sorted(p.name for p in next(ck.iterdir()).glob("step-*"))
    assert done and done[-1] < "step-000100", done

    proc = lab2prod_train(*args, "--out", tmp_path / "resumed", "--checkpoint-dir", ck)
    assert proc.returncode == 0, proc.stderr[-3000:]
    resumed = results(proc)[0]
    assert resumed["resumed_from"] == int(done[-1].split("-")[1]) > 0
    assert resumed["adapter_sha256"] == whole["adapter_sha256"]
    assert resumed["losses"] == pytest.approx(whole["losses"], abs=0)

    newest = sorted(next(ck.iterdir()).glob("step-*"))[-1]
    (newest / "adapter.safetensors").write_bytes(b"\0" * 100)
    proc = lab2prod_train(*args, "--out", tmp_path / "again", "--checkpoint-dir", ck)
    assert proc.returncode == 1 and "adapter.safetensors does not match its hash" in proc.stderr, proc.stderr[-2000:]


@pytest.mark.parametrize("extra, message", [
    (["--base-model", "no-such-org/no-such-model"], "nor in the local Hugging Face cache"),
    (["--base-model", "./no-such-folder/model.gguf"], "no such file or folder"),
    (["--target-modules", "c_attn"], "are not linear layers"),
    (["--lr", "1e9", "--steps", "4"], "the training loss became"),
])
def test_bad_input_stops_with_the_reason_and_keeps_the_last_adapter(train_file, tmp_path, extra, message):
    "Each stops with exit status 1 and a message naming the problem; the adapter already in --out stays as it was."
    out = tmp_path / "adapter"
    out.mkdir()
    (out / "adapter_model.safetensors").write_bytes(b"the last good adapter")
    proc = lab2prod_train("--train", train_file, "--out", out, *SMALL, *extra)
    assert proc.returncode == 1 and message in proc.stderr, proc.stderr[-2000:]
    assert (out / "adapter_model.safetensors").read_bytes() == b"the last good adapter"


@pytest.fixture()
def mlflow_server(tmp_path):
    "A real MLflow tracking server (SQLite store, local artifact store) on loopback."
    port = free_port()
    store = tmp_path / "mlflow"
    store.mkdir()
    proc = subprocess.Popen([str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                             "--backend-store-uri", f"sqlite:///{store}/mlflow.db", "--artifacts-destination",
                             str(store / "artifacts")], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ENV)
    url = f"http://127.0.0.1:{port}"
    import urllib.request
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"{url}/health", timeout=2)
            break
        except OSError:
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            time.sleep(0.5)
    else:
        pytest.fail("mlflow server did not answer /health in 120 s")
    yield url
    proc.terminate()
    proc.wait(timeout=30)


def test_finetune_stage_against_an_mlflow_server(mlflow_server, tmp_path):
    """The finetune notebook (smoke profile) logs to a real tracking server: every parameter, the per-step loss,
    system metrics, the data hash, git commit and prompt version as tags, the adapter (not the base weights) as an
    artifact, registered as a new version naming its base model; a model card and lineage.json sit by the adapter."""
    import mlflow
    art = tmp_path / "art"
    subprocess.run([str(BIN / "papermill"), "nbs/03_finetune.ipynb", str(tmp_path / "out.ipynb"), "-p", "artifacts_dir",
                    str(art), "-p", "profile", "smoke", "-p", "tracking_uri", mlflow_server, "--log-level", "ERROR"],
                   check=True, cwd=ROOT, env=ENV, timeout=900)
    client = mlflow.MlflowClient(tracking_uri=mlflow_server)
    metrics = json.loads((art / "model" / "train_metrics.json").read_text())
    run = client.get_run(metrics["mlflow_run_id"])
    for key in ("steps", "batch", "lr", "seed", "lora_r", "grad_accum", "seq_len", "base_model", "target_modules",
                "train_precision"):
        assert key in run.data.params, key
    lineage = json.loads((art / "model" / "lineage.json").read_text())
    assert run.data.tags["lab2prod.data_sha256"] == lineage["data_sha256"] and len(lineage["data_sha256"]) == 64
    assert run.data.tags["lab2prod.prompt_version"] and run.data.tags.get("git_commit")
    assert len(client.get_metric_history(run.info.run_id, "train/loss")) == metrics["steps"]
    assert any(k.startswith("system/") for k in run.data.metrics), sorted(run.data.metrics)
    assert {"heldout/loss_before", "heldout/loss_after"} <= set(run.data.metrics)
    files = {f.path: f.file_size for f in client.list_artifacts(run.info.run_id, "adapter")}
    assert "adapter/adapter_model.safetensors" in files and files["adapter/adapter_model.safetensors"] < 20 * 2**20
    assert not any(p.endswith((".gguf", "model.safetensors")) and "adapter_model" not in p for p in files)
    version = client.get_model_version("lab2prod-adapter", str(metrics["version"]))
    assert version.tags["base_model"] == "bundled" and version.run_id == run.info.run_id
    card = (art / "model" / "adapter" / "README.md").read_text()
    assert "base_model: bundled" in card and "Intended use" in card
    assert lineage["adapter_sha256"] == metrics["adapter_sha256"] and lineage["prompt_version"]
    assert read_jsonl(art / "data" / "train.jsonl")


def test_another_architecture_from_a_local_folder(train_file, tmp_path):
    """Any causal LM in a local folder trains: a GPT-2-architecture model (random weights, the bundled tokenizer and
    chat template) gets its LoRA targets from its own layers (`c_attn`), not from a list written for Llama."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from lab2prod.core import load_model
    _, tok = load_model("llm")
    folder = tmp_path / "gpt2-tiny"
    GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=64, n_head=2, vocab_size=len(tok), n_positions=1024)).save_pretrained(folder)
    tok.save_pretrained(folder)
    proc = lab2prod_train("--train", train_file, "--out", tmp_path / "adapter", *SMALL, "--base-model", folder)
    assert proc.returncode == 0, proc.stderr[-3000:]
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["target_modules"] == ["c_attn"] or set(config["target_modules"]) == {"c_attn"}
    assert results(proc)[0]["steps"] == 6
