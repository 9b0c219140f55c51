"""Candidate CPU inference engines for the chat LLM (SmolLM2-135M-Instruct) against llama.cpp, on this machine's cores.

What it measures, for every engine, with `--threads` (default 2) threads and the same prompts as token ids:
  - one stream: 128 new tokens generated greedily (end of text ignored) from one short chat prompt; one warm-up, then the
    median of 3 runs of the decode rate (tokens after the first / time between the first and the last token, so the
    prompt is left out) and of the end-to-end rate (128 / whole call);
  - 8 prompts x 128 tokens at once (one padded batch, or 8 concurrent requests for llama-server): total generated
    tokens / wall time of the batch (prompts included), one short warm-up then the median of `--batch-repeats` runs;
  - agreement: the first 20 greedy tokens on 5 fixed chat prompts against the merged float32 transformers model (the
    reference): how many of the 5 are identical, and the common prefix length of each;
  - install size (du of the engine's venv, and of the engine's own packages in it), install time (venv + pip, from
    `--install`), and the export time and size of the converted weights.
Engines (each in its own Python 3.11 venv under /tmp, so the project's .venv is never touched):
  transformers   float32, the merged model, `generate` (the project's .venv, used read-only)
  ctranslate2    int8, `ct2-transformers-converter --quantization int8` of the merged folder
  openvino-genai int8 weights, `optimum-cli export openvino --weight-format int8` of the merged folder
  ort-genai      int4, `python -m onnxruntime_genai.models.builder -m <merged> -o <out> -p int4 -e cpu`
  llama.cpp      Q4_1 GGUF: `llama-bench -p 0 -n 128 -t 2` (tg128, the baseline; no adapter) and llama-server with
                 `--lora adapter.gguf` (f32 adapter from llama.cpp's convert_lora_to_gguf.py) through /completion
                 (prompt as token ids, temperature 0, ignore_eos, cache_prompt false, timings.predicted_per_second)
Ratios are to llama-bench's tg128 of the same run.

The model: the bundled Q4_1 GGUF, de-quantized to float32 by transformers (`load_model('llm')`), saved as a plain
Hugging Face folder (`base`); a LoRA adapter as production builds one (peft, r=8, alpha 16, q_proj/v_proj, lora_B drawn
from N(0, 0.05), seed 0) is saved (`adapter`, and as GGUF for llama.cpp) and merged into `merged`, which every
non-llama.cpp engine converts. Everything is made once under --workdir (default /tmp/engbench) and reused.

Re-run (about 15 minutes on 2 idle cores once installed; one engine at a time). The cores may be shared: the load
average is recorded around each engine and llama-bench runs at the start and again at the end.
    # the venvs it expects (or let `--install` make them and time it; the constraint keeps the local CPU torch):
    echo 'torch==2.13.0' > /tmp/engbench/constraints.txt
    python3.11 -m venv /tmp/eng-ct2 && /tmp/eng-ct2/bin/pip install torch==2.13.0 && \
        /tmp/eng-ct2/bin/pip install -c /tmp/engbench/constraints.txt ctranslate2 transformers
    python3.11 -m venv /tmp/eng-ov && /tmp/eng-ov/bin/pip install torch==2.13.0 && \
        /tmp/eng-ov/bin/pip install -c /tmp/engbench/constraints.txt openvino-genai 'optimum-intel[openvino]' && \
        /tmp/eng-ov/bin/pip uninstall -y torchvision  # optimum-intel pulls torchvision 0.28.0, whose ops do not load
                                                      # with the +cpu torch ("operator torchvision::nms does not exist")
                                                      # and so break `import transformers`; the LLM export needs none
    python3.11 -m venv /tmp/eng-ort && /tmp/eng-ort/bin/pip install torch==2.13.0 && \
        /tmp/eng-ort/bin/pip install -c /tmp/engbench/constraints.txt onnxruntime-genai transformers onnx onnx-ir
    .venv/bin/python benchmarks/engine_candidates.py [--install] [--engines transformers,ctranslate2,...] [--threads 2]
Results: benchmarks/results/engine_candidates.json (machine info, every figure, the commands, and per-engine errors).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _serving import ROOT, machine_info

from lab2prod.core import atomic_write_json, resolve_model
from lab2prod.engine import find_llama_tool, llama_cpp_dir, start_llama_server

OUT = ROOT / "benchmarks" / "results" / "engine_candidates.json"
ENGINES = ["transformers", "ctranslate2", "openvino-genai", "ort-genai", "llama.cpp"]
VENVS = {"ctranslate2": "/tmp/eng-ct2", "openvino-genai": "/tmp/eng-ov", "ort-genai": "/tmp/eng-ort"}
PIP = {"ctranslate2": ["ctranslate2", "transformers"],
       "openvino-genai": ["openvino-genai", "optimum-intel[openvino]"],
       "ort-genai": ["onnxruntime-genai", "transformers", "onnx", "onnx-ir"]}
# the engine's own packages in its venv (the rest is torch/transformers for the export, and their dependencies)
RUNTIME_PKGS = {"ctranslate2": ["ctranslate2", "ctranslate2.libs"],
                "openvino-genai": ["openvino", "openvino_genai", "openvino_tokenizers"],
                "ort-genai": ["onnxruntime_genai", "onnxruntime"]}
WEIGHTS = {"transformers": "float32 (merged)", "ctranslate2": "int8 (merged)", "openvino-genai": "int8 weights (merged)",
           "ort-genai": "int4 (merged)", "llama.cpp": "Q4_1 GGUF + f32 LoRA adapter at run time"}
CHATS = ["What is the capital of France?", "Give me three tips for staying focused while studying.",
         "Explain what a hash table is in two sentences.", "Write a haiku about autumn rain.",
         "How do plants turn sunlight into energy?", "What should I pack for a weekend hiking trip?",
         "Summarize the plot of Romeo and Juliet.", "Why is the sky blue?"]
AGREE_CHATS = CHATS[:5]

# --- the model folders --------------------------------------------------------------------------------------------

PREPARE = r"""
import json, sys, time
from pathlib import Path
import torch
from lab2prod.core import load_model
W = Path(sys.argv[1])
m, tok = load_model("llm")
m.hf_quantizer = None  # save_pretrained refuses a model that still names its (GGUF) quantizer
del m.config.quantization_config
m.save_pretrained(W / "base")
tok.save_pretrained(W / "base")
from peft import LoraConfig, get_peft_model
torch.manual_seed(0)
cfg = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
pm = get_peft_model(m, cfg)
for n, p in pm.named_parameters():
    if "lora_B" in n:
        torch.nn.init.normal_(p, std=0.05)
pm.save_pretrained(W / "adapter")
merged = pm.merge_and_unload()
merged.save_pretrained(W / "merged")
tok.save_pretrained(W / "merged")
"""


def prepare_models(work: Path) -> dict:
    "base / adapter / merged HF folders and adapter.gguf under work/models (made once)."
    models = work / "models"
    t0 = time.perf_counter()
    if not (models / "merged" / "model.safetensors").exists():
        models.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-c", PREPARE, str(models)], check=True)
    if not (models / "adapter.gguf").exists():
        src = llama_cpp_dir()
        env = {**os.environ, "PYTHONPATH": str(src / "gguf-py")}
        subprocess.run([sys.executable, str(src / "convert_lora_to_gguf.py"), str(models / "adapter"), "--base",
                        str(models / "base"), "--outfile", str(models / "adapter.gguf"), "--outtype", "f32"],
                       check=True, env=env, capture_output=True)
    config = json.loads((models / "merged" / "config.json").read_text())
    assert "quantization_config" not in config and config.get("architectures"), config
    return {"seconds": round(time.perf_counter() - t0, 1), "dir": str(models)}


def chat_ids(models: Path) -> dict:
    "The prompts as token ids (the chat template, generation prompt added), and the tokens' strings for CTranslate2."
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(models / "merged")
    ids = [tok.apply_chat_template([{"role": "user", "content": c}], add_generation_prompt=True, tokenize=True,
                                   return_dict=True)["input_ids"] for c in CHATS]
    return {"ids": ids, "texts": [tok.decode(i) for i in ids], "strs": [tok.convert_ids_to_tokens(i) for i in ids],
            "pad_id": tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
            "eos_id": tok.eos_token_id}

# --- install and export -------------------------------------------------------------------------------------------


def du(path: str | Path) -> int:
    return int(subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True).stdout.split()[0] or 0)


def site_packages(venv: str) -> Path:
    return next(Path(venv).glob("lib/python3*/site-packages"))


def install(engine: str, work: Path) -> dict:
    "Make the engine's venv from scratch and time it (torch from the local CPU wheel first, then the engine)."
    venv, cons = VENVS[engine], work / "constraints.txt"
    cons.write_text("torch==2.13.0\n")
    shutil.rmtree(venv, ignore_errors=True)
    t0 = time.perf_counter()
    steps = [["python3.11", "-m", "venv", venv], [f"{venv}/bin/pip", "install", "-q", "torch==2.13.0"],
             [f"{venv}/bin/pip", "install", "-q", "-c", str(cons), *PIP[engine]]]
    if engine == "openvino-genai":  # see the docstring: a torchvision that cannot load breaks transformers' imports
        steps.append([f"{venv}/bin/pip", "uninstall", "-y", "-q", "torchvision"])
    for cmd in steps:
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode:
            rec = {"rc": p.returncode, "seconds": time.perf_counter() - t0, "error": p.stderr[-2000:]}
            break
    else:
        rec = {"rc": 0, "seconds": round(time.perf_counter() - t0, 1)}
    rec["commands"] = [" ".join(c) for c in steps]
    Path(venv, ".install.json").write_text(json.dumps(rec))
    return rec


def install_info(engine: str) -> dict:
    if engine == "transformers":
        sp = Path(sys.prefix) / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
        return {"venv": str(Path(sys.prefix)), "install_seconds": None, "note": "the project's .venv (already installed)",
                "runtime_bytes": sum(du(sp / p) for p in ("torch", "transformers", "tokenizers", "safetensors"))}
    if engine == "llama.cpp":
        tools = [find_llama_tool("llama-server"), find_llama_tool("llama-bench")]
        return {"install_seconds": None, "note": "built by `make install` (cmake, minutes); statically linked binaries",
                "runtime_bytes": du(tools[0]), "bench_tool_bytes": du(tools[1])}
    venv = VENVS[engine]
    rec_file = Path(venv, ".install.json")
    rec = json.loads(rec_file.read_text()) if rec_file.exists() else {}
    sp = site_packages(venv)
    pkgs = {d.name.removesuffix(".dist-info").split("-")[0].lower(): d.name.removesuffix(".dist-info").split("-")[1]
            for d in sp.glob("*.dist-info")}
    keep = ("ctranslate2", "openvino", "openvino_genai", "openvino_tokenizers", "optimum", "optimum_intel", "nncf",
            "onnxruntime", "onnxruntime_genai", "onnx", "onnx_ir", "torch", "torchvision", "transformers")
    return {"venv": venv, "venv_bytes": du(venv), "install_seconds": rec.get("seconds"), "install_rc": rec.get("rc"),
            "runtime_bytes": sum(du(sp / p) for p in RUNTIME_PKGS[engine] if (sp / p).exists()),
            "runtime_packages": RUNTIME_PKGS[engine], "versions": {k: v for k, v in pkgs.items() if k in keep}}


def export(engine: str, models: Path, work: Path) -> dict:
    "Convert the merged folder for the engine (once); returns the command, its time and the output's size."
    out, merged, venv = work / "export" / engine, models / "merged", VENVS.get(engine)
    cmd = None
    if engine == "ctranslate2":
        cmd = [f"{venv}/bin/ct2-transformers-converter", "--model", str(merged), "--output_dir", str(out),
               "--quantization", "int8", "--force"]
    elif engine == "openvino-genai":
        cmd = [f"{venv}/bin/optimum-cli", "export", "openvino", "--model", str(merged), "--task",
               "text-generation-with-past", "--weight-format", "int8", str(out)]
    elif engine == "ort-genai":
        cmd = [f"{venv}/bin/python", "-m", "onnxruntime_genai.models.builder", "-m", str(merged), "-o", str(out),
               "-p", "int4", "-e", "cpu", "-c", str(work / "export" / "ort-cache")]
    rec: dict = {"command": " ".join(cmd) if cmd else None, "dir": str(out)}
    if cmd and not (out / ".done").exists():
        shutil.rmtree(out, ignore_errors=True)
        t0 = time.perf_counter()
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        rec["export_seconds"] = round(time.perf_counter() - t0, 1)
        if p.returncode:
            raise RuntimeError(f"export failed ({p.returncode}):\n{(p.stdout + p.stderr)[-3000:]}")
        (out / ".done").write_text(json.dumps({"export_seconds": rec["export_seconds"]}))
    elif cmd:
        rec |= json.loads((out / ".done").read_text())
    if cmd:
        rec["weights_bytes"] = du(out) - du(out / ".done")
    return rec

# --- the per-engine measurement, run in the engine's own Python ---------------------------------------------------

HARNESS = r"""
import json, statistics, sys, time
cfg = json.load(sys.stdin)
N, T = cfg["n_new"], cfg["threads"]
perf = time.perf_counter

def pad_left(batch):
    L = max(map(len, batch))
    return [[cfg["pad_id"]] * (L - len(b)) + b for b in batch], [[0] * (L - len(b)) + [1] * len(b) for b in batch]

def measure(stream, batch):
    out = {}
    prompt = cfg["ids"][0]
    toks, t_first, t_last, t0 = stream(0, N)  # warm-up
    assert len(toks) == N, (len(toks), N)
    dec, e2e = [], []
    for _ in range(3):
        t0 = perf()
        toks, t_first, t_last, t0 = stream(0, N)
        t_end = perf()
        dec.append((N - 1) / (t_last - t_first))
        e2e.append(N / (t_end - t0))
    out["one_stream"] = {"decode_tokens_per_s": round(statistics.median(dec), 2), "runs": [round(x, 2) for x in dec],
                         "end_to_end_tokens_per_s": round(statistics.median(e2e), 2), "prompt_tokens": len(prompt)}
    if batch is not None:
        batch(list(range(len(cfg["ids"]))), 8)  # warm-up
        tps, counts = [], []
        for _ in range(cfg["batch_repeats"]):
            t0 = perf()
            n = batch(list(range(len(cfg["ids"]))), N)
            tps.append(n / (perf() - t0))
            counts.append(n)
        out["batch8"] = {"total_tokens_per_s": round(statistics.median(tps), 2), "runs": [round(x, 2) for x in tps],
                         "generated_tokens": counts}
    agree = []
    for i in range(len(cfg["agree"])):
        agree.append([int(t) for t in stream(cfg["agree"][i], 20)[0]])
    out["agree_tokens"] = agree
    print("@@RESULT " + json.dumps(out), flush=True)
    import os
    os._exit(0)  # CTranslate2 aborts in its thread pool's teardown ("terminate called without an active exception")
"""

ENGINE_CODE = {
    "transformers": r"""
import torch
torch.set_num_threads(T)
from transformers import AutoModelForCausalLM
from transformers.generation.streamers import BaseStreamer
m = AutoModelForCausalLM.from_pretrained(cfg["model"], dtype=torch.float32).eval()

class Clock(BaseStreamer):
    def __init__(self):
        self.t = []
    def put(self, value):
        self.t.append(perf())
    def end(self):
        pass

def stream(i, n):
    ids = cfg["ids"][i]
    clock = Clock()
    t0 = perf()
    with torch.inference_mode():
        out = m.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long), do_sample=False,
                         max_new_tokens=n, min_new_tokens=n, streamer=clock, pad_token_id=cfg["pad_id"])
    return out[0, len(ids):].tolist(), clock.t[1], clock.t[-1], t0  # the streamer's first put is the prompt

def batch(idx, n):
    ids, mask = pad_left([cfg["ids"][i] for i in idx])
    with torch.inference_mode():
        out = m.generate(torch.tensor(ids), attention_mask=torch.tensor(mask), do_sample=False, max_new_tokens=n,
                         min_new_tokens=n, pad_token_id=cfg["pad_id"])
    return (out.shape[1] - len(ids[0])) * len(idx)

measure(stream, batch)
""",
    "ctranslate2": r"""
import ctranslate2
g = ctranslate2.Generator(cfg["model"], device="cpu", compute_type="int8", intra_threads=T, inter_threads=1)

def stream(i, n):
    t = []
    t0 = perf()
    res = g.generate_batch([cfg["strs"][i]], max_length=n, min_length=n, beam_size=1, sampling_topk=1,
                           include_prompt_in_result=False, callback=lambda step: t.append(perf()))
    return res[0].sequences_ids[0], t[0], t[-1], t0

def batch(idx, n):
    res = g.generate_batch([cfg["strs"][i] for i in idx], max_length=n, min_length=n, beam_size=1, sampling_topk=1,
                           include_prompt_in_result=False, max_batch_size=len(idx))
    return sum(len(r.sequences_ids[0]) for r in res)

measure(stream, batch)
""",
    "openvino-genai": r"""
import numpy as np, openvino as ov, openvino_genai as og
pipe = og.LLMPipeline(cfg["model"], "CPU", INFERENCE_NUM_THREADS=T)

class Clock(og.StreamerBase):
    def __init__(self):
        super().__init__()
        self.t = []
    def write(self, token):
        self.t.extend([perf()] * (len(token) if isinstance(token, list) else 1))
        return og.StreamingStatus.RUNNING
    def put(self, token):
        self.t.append(perf())
        return False
    def end(self):
        pass

def gcfg(n):
    c = og.GenerationConfig()
    c.max_new_tokens = n
    c.min_new_tokens = n
    c.do_sample = False
    return c

def stream(i, n):
    ids = np.array([cfg["ids"][i]], dtype=np.int64)
    inp = og.TokenizedInputs(ov.Tensor(ids), ov.Tensor(np.ones_like(ids)))
    clock = Clock()
    t0 = perf()
    res = pipe.generate(inp, gcfg(n), clock)
    return list(res.tokens[0]), clock.t[0], clock.t[-1], t0

def batch(idx, n):
    c = gcfg(n)
    c.apply_chat_template = False  # the texts are already templated
    res = pipe.generate([cfg["texts"][i] for i in idx], c)
    return res.perf_metrics.get_num_generated_tokens()

tk = pipe.get_tokenizer()
check = [list(np.array(tk.encode(cfg["texts"][i], add_special_tokens=False).input_ids.data)[0]) == cfg["ids"][i]
         for i in range(len(cfg["ids"]))]
print("text round trip gives the same ids:", check, flush=True)
measure(stream, batch)
""",
    "ort-genai": r"""
import numpy as np, onnxruntime_genai as og
model = og.Model(cfg["model"])
def stream(i, n):
    ids = cfg["ids"][i]
    p = og.GeneratorParams(model)
    p.set_search_options(max_length=len(ids) + n, min_length=len(ids) + n, do_sample=False)
    t, toks = [], []
    t0 = perf()
    gen = og.Generator(model, p)
    gen.append_tokens([ids])
    while not gen.is_done():
        gen.generate_next_token()
        toks.append(int(gen.get_next_tokens()[0]))
        t.append(perf())
    return toks, t[0], t[-1], t0

def batch(idx, n):
    ids, _ = pad_left([cfg["ids"][i] for i in idx])
    p = og.GeneratorParams(model)
    p.set_search_options(max_length=len(ids[0]) + n, min_length=len(ids[0]) + n, do_sample=False, batch_size=len(idx))
    gen = og.Generator(model, p)
    gen.append_tokens(np.array(ids, dtype=np.int32))
    k = 0
    while not gen.is_done():
        gen.generate_next_token()
        k += 1
    return k * len(idx)

measure(stream, batch)
""",
}


def run_engine(engine: str, model_dir: str, prompts: dict, a: argparse.Namespace) -> dict:
    python = sys.executable if engine == "transformers" else f"{VENVS[engine]}/bin/python"
    cfg = {"model": model_dir, "ids": prompts["ids"], "texts": prompts["texts"], "strs": prompts["strs"],
           "pad_id": prompts["pad_id"], "n_new": a.tokens, "threads": a.threads, "batch_repeats": a.batch_repeats,
           "agree": list(range(len(AGREE_CHATS)))}
    env = {**os.environ, "OMP_NUM_THREADS": str(a.threads), "TOKENIZERS_PARALLELISM": "false"}
    if engine == "ort-genai":  # the builder writes no thread count: pin onnxruntime's threads in genai_config.json
        gc_file = Path(model_dir) / "genai_config.json"
        gc = json.loads(gc_file.read_text())
        gc["model"]["decoder"].setdefault("session_options", {}).update(
            {"intra_op_num_threads": a.threads, "inter_op_num_threads": 1})
        gc_file.write_text(json.dumps(gc, indent=2))
    t0 = time.perf_counter()
    p = subprocess.run([python, "-c", HARNESS + ENGINE_CODE[engine]], input=json.dumps(cfg), capture_output=True,
                       text=True, env=env, timeout=1800)
    line = next((x for x in p.stdout.splitlines() if x.startswith("@@RESULT ")), None)
    if p.returncode or line is None:
        raise RuntimeError(f"{engine} failed ({p.returncode}):\n{(p.stdout + p.stderr)[-3000:]}")
    notes = [x for x in p.stdout.splitlines() if x and not x.startswith("@@RESULT ")]
    return json.loads(line.removeprefix("@@RESULT ")) | {"notes": notes[-5:], "seconds": round(time.perf_counter() - t0, 1)}

# --- llama.cpp ----------------------------------------------------------------------------------------------------


def llama_bench(gguf: Path, a: argparse.Namespace) -> dict:
    cmd = [str(find_llama_tool("llama-bench")), "-m", str(gguf), "-t", str(a.threads), "-p", "0", "-n", str(a.tokens),
           "-r", "3", "-o", "json"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=True)
    row = next(r for r in json.loads(p.stdout) if r["n_gen"] == a.tokens)
    return {"command": " ".join(["llama-bench", *cmd[1:]]), f"tg{a.tokens}_tokens_per_s": round(row["avg_ts"], 2),
            "stddev": round(row["stddev_ts"], 2), "samples": [round(x, 2) for x in row.get("samples_ts", [])]}


def completion(url: str, ids: list[int], n: int) -> dict:
    body = {"prompt": ids, "n_predict": n, "temperature": 0.0, "top_k": 1, "ignore_eos": True, "cache_prompt": False,
            "return_tokens": True, "stream": False}
    r = httpx.post(f"{url}/completion", json=body, timeout=600)
    r.raise_for_status()
    return r.json()


def llama_server(gguf: Path, lora: Path, prompts: dict, a: argparse.Namespace) -> dict:
    server = start_llama_server(gguf, lora, parallel=8, ctx_per_slot=1024, threads=a.threads)
    try:
        ids = prompts["ids"]
        completion(server.url, ids[0], a.tokens)  # warm-up
        runs = []
        for _ in range(3):
            t = completion(server.url, ids[0], a.tokens)["timings"]
            assert t["predicted_n"] == a.tokens, t
            runs.append(t["predicted_per_second"])
        out = {"command": " ".join(["llama-server", *server.args[1:]]) if hasattr(server, "args") else None,
               "one_stream": {"decode_tokens_per_s": round(statistics.median(runs), 2), "runs": [round(x, 2) for x in runs],
                              "prompt_tokens": len(ids[0])}}

        def burst(n: int) -> tuple[int, float]:
            done: list[int] = []
            def one(i):  # noqa: E306
                done.append(completion(server.url, ids[i], n)["timings"]["predicted_n"])
            threads = [threading.Thread(target=one, args=(i,)) for i in range(len(ids))]
            t0 = time.perf_counter()
            for th in threads:
                th.start()
            for th in threads:
                th.join()
            return sum(done), time.perf_counter() - t0

        burst(8)  # warm-up
        tps, counts = [], []
        for _ in range(a.batch_repeats):
            n, s = burst(a.tokens)
            tps.append(n / s)
            counts.append(n)
        out["batch8"] = {"total_tokens_per_s": round(statistics.median(tps), 2), "runs": [round(x, 2) for x in tps],
                         "generated_tokens": counts, "how": "8 concurrent /completion requests, 8 slots"}
        out["agree_tokens"] = [completion(server.url, ids[i], 20)["tokens"] for i in range(len(AGREE_CHATS))]
        return out
    finally:
        server.close()

# --- the run ------------------------------------------------------------------------------------------------------


def agreement(ref: list[list[int]], got: list[list[int]]) -> dict:
    def prefix(x, y):
        k = 0
        while k < min(len(x), len(y)) and x[k] == y[k]:
            k += 1
        return k
    lens = [prefix(r, g) for r, g in zip(ref, got)]
    return {"identical": sum(n == len(r) for n, r in zip(lens, ref)), "of": len(ref), "prefix_lengths": lens}


def main(a: argparse.Namespace) -> dict:
    work = Path(a.workdir)
    work.mkdir(parents=True, exist_ok=True)
    engines = a.engines.split(",")
    res: dict = {"machine": machine_info() | {"load_avg_before": os.getloadavg()}, "threads": a.threads,
                 "new_tokens": a.tokens, "batch_repeats": a.batch_repeats, "prompts": CHATS, "agreement_prompts": AGREE_CHATS, "engines": {}}
    if a.install:
        for e in engines:
            if e in VENVS:
                print(f"installing {e}", flush=True)
                print(install(e, work), flush=True)
    res["prepare"] = prepare_models(work)
    models = work / "models"
    prompts = chat_ids(models)
    spec = resolve_model("llm")
    gguf = Path(spec.location) / spec.gguf_file
    res["baseline"] = llama_bench(gguf, a)
    base = res["baseline"][f"tg{a.tokens}_tokens_per_s"]
    print("baseline", res["baseline"], flush=True)
    ref = None
    for e in sorted(engines, key=lambda x: x != "transformers"):  # the reference first
        rec: dict = {"weights": WEIGHTS[e], "load_avg_before": os.getloadavg()}
        res["engines"][e] = rec
        try:
            rec["install"] = install_info(e)
            if e == "llama.cpp":
                rec["export"] = {"weights_bytes": du(gguf) + du(models / "adapter.gguf"), "gguf": gguf.name}
                rec |= llama_server(gguf, models / "adapter.gguf", prompts, a)
            else:
                rec["export"] = export(e, models, work) if e != "transformers" else {"dir": str(models / "merged")}
                rec |= run_engine(e, rec["export"]["dir"], prompts, a)
        except Exception as ex:  # one engine failing must not lose the others' figures
            rec["error"] = str(ex)[-3000:]
            print(f"{e}: {rec['error']}", flush=True)
            continue
        rec["load_avg_after"] = os.getloadavg()
        if e == "transformers":
            ref = rec["agree_tokens"]
        if ref is not None:
            rec["agreement"] = agreement(ref, rec["agree_tokens"])
        one = rec["one_stream"]["decode_tokens_per_s"]
        rec["ratio_to_llama_bench_tg"] = round(one / base, 3)
        if "batch8" in rec:
            rec["batch8"]["ratio_to_llama_bench_tg"] = round(rec["batch8"]["total_tokens_per_s"] / base, 3)
        print(e, {k: rec.get(k) for k in ("one_stream", "batch8", "agreement", "ratio_to_llama_bench_tg")}, flush=True)
    res["baseline_again"] = llama_bench(gguf, a)  # the machine is shared: the spread of the two shows the noise
    print("baseline again", res["baseline_again"], flush=True)
    res["machine"]["load_avg_after"] = os.getloadavg()
    res["table"] = [{"engine": e, "weights": r["weights"],
                     "one_stream_tok_s": (r.get("one_stream") or {}).get("decode_tokens_per_s"),
                     "batch8_total_tok_s": (r.get("batch8") or {}).get("total_tokens_per_s"),
                     "ratio_to_tg": r.get("ratio_to_llama_bench_tg"),
                     "agreement": f"{r['agreement']['identical']}/{r['agreement']['of']}" if "agreement" in r else None,
                     "install_mb": round((r.get("install") or {}).get("venv_bytes", (r.get("install") or {}).get(
                         "runtime_bytes", 0)) / 2**20), "install_s": (r.get("install") or {}).get("install_seconds"),
                     "error": r.get("error", "")[:200] or None}
                    for e, r in res["engines"].items()]
    return res


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--engines", default=",".join(ENGINES))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--batch-repeats", type=int, default=3)
    ap.add_argument("--workdir", default="/tmp/engbench")
    ap.add_argument("--install", action="store_true", help="make the candidates' venvs anew and time the installs")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    result = main(args)
    atomic_write_json(Path(args.out), result)
    print(json.dumps(result["table"], indent=1))
