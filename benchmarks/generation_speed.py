"""Decode speed of the served engine (llama-server with the LoRA adapter) against plain llama.cpp on the bundled weights.

The baseline runs the bundled GGUF file (SmolLM2-135M-Instruct, 4-bit Q4_1) as a user would; ours is what the engine
folder of an artifacts folder serves (default: ./artifacts, the pipeline's run): the same model rewritten in the
engine's weight format (engine.json `quant`, 8-bit Q8_0 by default) with the LoRA adapter applied at run time.
llama-bench also runs on the served file, so the share of the difference that is the weight format shows.

(a) Baseline, one stream: `llama-bench -m <gguf> -t <cores> -p 64 -n 128 -r 3 -o json` -> tg128 tokens/s.
(b) Ours, one stream: `start_llama_server(gguf, lora_file=<engine>/adapter.gguf)` with the engine's slots and context,
    POST /completion of one chat prompt as token ids (128 tokens, temperature 0, ignore_eos), timings.predicted_per_second,
    median of the repeats; the same server without the adapter shows what the adapter costs.
(c) Concurrency at 1/4/8/16 clients, each client sending the same list of RAG prompts (questions with the 4 passages
    the index retrieves, through lab2prod.rag.build_messages and the engine's chat template), streamed, so the time
    to the first token is measured at the client: total completion tokens/s and mean time to first token of
      - ours: the server of (b), with the body the service sends (its `_completion_body`) plus ignore_eos;
      - baseline: llama-server started as a user would (`-np 16 -c 8192 -t <cores>`, no adapter), the same bodies.
        Its 8192 tokens are split into 16 slots of 512, too small for a RAG prompt and its answer (llama-server refuses
        a prompt longer than a slot with 400, and stops an answer where the slot is full): that is recorded, with a
        probe of the longest prompt, and the baseline is started again with 16 slots of our per-slot context;
      - the HTTP service, POST /ask with the same questions only (it retrieves and builds the same prompts itself; its
        answers carry no time to first token and stop at the end-of-answer token, so compare requests/s too);
      - the HTTP service, streamed POST /v1/chat/completions: the client's time to the first answer text, retrieval and
        HTTP included (on a list of other questions, see below).
    Each level runs the targets one after another, `--repeats` times, and keeps medians; ratios are x / baseline.
    Prompt caching: llama-server keeps every prompt it has seen (slots and an 8 GiB RAM cache), and the service's
    engine always asks for it. So every repeat of every level takes a list of questions none of the servers has seen
    (golden questions first, then the training set's questions), /ask and the streamed chat get different lists, and
    ours and the baseline send `cache_prompt: true` like the service (--no-cache-prompt: every request pays its whole
    prompt). Within a run the clients share the list, so repeats hit the cache in every target alike; the share of
    prompt tokens served from the cache is recorded for each target (`prompt_cache_hit`).

All servers are up together (an idle llama-server uses no CPU). Every result records how many cores processes
outside the benchmark kept busy (`other_cores_busy`): llama.cpp with a thread per core slows down many times over
when another process takes a core, so a run with a warning is not representative.

    .venv/bin/python benchmarks/generation_speed.py [--quick] [--artifacts artifacts]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _serving import (
    ROOT,
    SMOKE_ARTIFACTS,
    OtherLoad,
    Result,
    Service,
    cache_share,
    contention_note,
    exit_on_sigterm,
    machine_info,
    mean,
    progress,
    question_pool,
    run_clients,
    shown_path,
    sse_event,
)

from lab2prod.core import atomic_write_json, resolve_model
from lab2prod.engine import (
    EngineServer,
    _completion_body,
    find_llama_tool,
    free_port,
    read_engine_spec,
    start_llama_server,
)
from lab2prod.rag import served_manifest_for


def bundled_gguf() -> Path:
    s = resolve_model("llm")
    return Path(s.location) / s.gguf_file


def build_prompts(questions: list[str], art: Path, tokenizer_dir: Path) -> tuple[dict[str, list[int]], list[int]]:
    "RAG prompts of `questions` as token ids (k=4, as the service builds them), and a short chat prompt."
    from transformers import AutoTokenizer

    from lab2prod.engine import Engine
    from lab2prod.index import Retriever
    from lab2prod.rag import build_messages
    engine = Engine(AutoTokenizer.from_pretrained(tokenizer_dir))
    retriever = Retriever.load(served_manifest_for(art).index_dir)
    rag = {q: engine.prompt_ids(build_messages(q, [h.text for h in retriever.search(q, 4)])) for q in questions}
    short = engine.prompt_ids([{"role": "user", "content": questions[0]}])
    return rag, short


def llama_bench(gguf: Path, cores: int, n_prompt: int, n_gen: int, reps: int) -> dict:
    exe = find_llama_tool("llama-bench")
    cmd = [str(exe), "-m", str(gguf), "-t", str(cores), "-p", str(n_prompt), "-n", str(n_gen), "-r", str(reps), "-o", "json"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if p.returncode:
        raise SystemExit(f"llama-bench failed:\n{p.stderr[-2000:]}")
    rows = json.loads(p.stdout)
    tg = next(r for r in rows if r["n_gen"] == n_gen and r["n_prompt"] == 0)
    pp = next((r for r in rows if r["n_prompt"] == n_prompt and r["n_gen"] == 0), None)
    return {"command": " ".join(["llama-bench", *cmd[1:]]).replace(str(gguf), gguf.name),
            f"tg{n_gen}_tokens_per_s": round(tg["avg_ts"], 2), "tg_stddev": round(tg["stddev_ts"], 2),
            "tg_samples": [round(x, 2) for x in tg.get("samples_ts", [])],
            f"pp{n_prompt}_tokens_per_s": round(pp["avg_ts"], 2) if pp else None}


def one_stream(url: str, ids: list[int], n_predict: int) -> float:
    "Decode tokens/s of one greedy completion the server reports (timings.predicted_per_second)."
    body = _completion_body(ids, n_predict, False) | {"ignore_eos": True, "cache_prompt": False}
    r = httpx.post(f"{url}/completion", json=body, timeout=600)
    r.raise_for_status()
    t = r.json()["timings"]
    assert t["predicted_n"] == n_predict, t
    return t["predicted_per_second"]

# --- the senders of run_clients ---------------------------------------------------------------------------------


def completion_sender(n_predict: int, cache_prompt: bool):
    "Streamed POST /completion of a prompt (token ids): client-side time to first token, tokens from the last event."
    async def send(client: httpx.AsyncClient, ids: list[int]) -> Result:
        t0, ttft, tokens, extra = time.perf_counter(), None, 0, {}
        body = _completion_body(ids, n_predict, True) | {"ignore_eos": True, "cache_prompt": cache_prompt}
        async with client.stream("POST", "/completion", json=body) as r:
            if r.status_code != 200:
                return Result(0, r.status_code, extra={"error": (await r.aread()).decode(errors="replace")[:300]})
            async for line in r.aiter_lines():
                ev = sse_event(line)
                if ev is None:
                    continue
                if ev.get("content") and ttft is None:
                    ttft = time.perf_counter() - t0
                if ev.get("stop"):
                    tokens = int(ev.get("tokens_predicted", 0))
                    extra = {"cache_n": (ev.get("timings") or {}).get("cache_n", 0), "prompt_n": len(ids)}
        return Result(0, r.status_code, tokens, ttft, extra)
    return send


def ask_sender(max_new_tokens: int):
    "POST /ask of a question: completion tokens from usage (the answer does not say when its first token came)."
    async def send(client: httpx.AsyncClient, question: str) -> Result:
        r = await client.post("/ask", json={"question": question, "k": 4, "max_new_tokens": max_new_tokens})
        if r.status_code != 200:
            return Result(0, r.status_code, extra={"error": r.text[:300]})
        out = r.json()
        return Result(0, 200, out["usage"]["completion_tokens"], None,
                      {"refused": out["refused"], "prompt_n": out["usage"]["prompt_tokens"]})
    return send


def chat_stream_sender(max_new_tokens: int):
    "Streamed POST /v1/chat/completions: the client's time to the first answer text, tokens from the usage event."
    async def send(client: httpx.AsyncClient, question: str) -> Result:
        t0, ttft, tokens, prompt_n = time.perf_counter(), None, 0, None
        body = {"model": "lab2prod-rag", "messages": [{"role": "user", "content": question}], "max_tokens": max_new_tokens,
                "stream": True, "stream_options": {"include_usage": True}}
        async with client.stream("POST", "/v1/chat/completions", json=body) as r:
            if r.status_code != 200:
                return Result(0, r.status_code, extra={"error": (await r.aread()).decode(errors="replace")[:300]})
            async for line in r.aiter_lines():
                ev = sse_event(line)
                if ev is None:
                    continue
                for choice in ev.get("choices") or []:
                    if (choice.get("delta") or {}).get("content") and ttft is None:
                        ttft = time.perf_counter() - t0
                if ev.get("usage"):
                    tokens, prompt_n = ev["usage"]["completion_tokens"], ev["usage"]["prompt_tokens"]
        return Result(0, r.status_code, tokens, ttft, {"prompt_n": prompt_n})
    return send


def summarize(runs: list, cache_hits: list[float] | None = None) -> dict:
    "Median over repeats of each run's numbers, and the repeats themselves."
    sums = [r.summary() for r in runs]
    if cache_hits is None:  # from the streams' own timings
        cache_hits = [x.extra["cache_n"] / x.extra["prompt_n"] for r in runs for x in r.ok if "cache_n" in x.extra]
    refused = sum(bool(x.extra.get("refused")) for r in runs for x in r.ok)
    med = lambda key: (round(statistics.median(v), 4) if (v := [s[key] for s in sums if s[key] is not None]) else None)
    return {"tokens_per_s": med("tokens_per_s"), "requests_per_s": med("requests_per_s"), "mean_ttft_s": med("mean_ttft_s"),
            "mean_completion_tokens": med("mean_completion_tokens"), "errors": sum(s["errors"] for s in sums),
            "prompt_cache_hit": mean(cache_hits, 3), "refused": refused,
            "mean_prompt_tokens": mean([x.extra.get("prompt_n") for r in runs for x in r.ok], 1),
            "error_examples": [x.extra.get("error") for r in runs for x in r.results if x.extra.get("error")][:3],
            "runs": [{k: s[k] for k in ("requests", "ok", "wall_s", "tokens_per_s", "mean_ttft_s", "completion_tokens")}
                     for s in sums]}


def ratio(a, b) -> float | None:
    return round(a / b, 3) if a is not None and b else None

# --- the run ----------------------------------------------------------------------------------------------------


def main(a: argparse.Namespace) -> dict:
    art = Path(a.artifacts)
    engine_dir = Path(served_manifest_for(art).engine_dir)  # what the service serves
    spec = read_engine_spec(engine_dir)
    # the baseline runs the bundled GGUF file as a user would; ours serves the engine folder's file (the base model in
    # the engine's weight format, spec.quant) with the adapter, as the service does
    gguf, lora, cores = bundled_gguf(), engine_dir / spec.adapter_gguf, len(os.sched_getaffinity(0))
    served = engine_dir / spec.base_gguf if spec.base_gguf else gguf
    info = machine_info() | {"load_avg_before": os.getloadavg()}
    t_start = time.perf_counter()
    service = None if a.no_service else Service(art).start()  # it loads while the prompts are built
    servers: list[EngineServer] = []
    try:
        # every repeat of every level: a fresh list for ours, the baseline and /ask, and another for the streamed chat
        pool, n = question_pool(art), a.requests_per_client
        need = len(a.clients) * a.repeats * 2 * n
        lists = [[pool[(i * n + j) % len(pool)] for j in range(n)] for i in range(len(a.clients) * a.repeats * 2)]
        rag, short = build_prompts(list(dict.fromkeys(q for lst in lists for q in lst)), art, engine_dir / spec.tokenizer)
        lens = [len(ids) for ids in rag.values()]
        progress(f"{len(rag)} RAG prompts of {min(lens)}-{max(lens)} tokens (mean {sum(lens) / len(lens):.0f}) from a pool of "
                 f"{len(pool)} questions{'' if need <= len(pool) else f' (reused: the runs need {need})'}; "
                 f"short prompt {len(short)} tokens")
        ours = start_llama_server(served, lora, parallel=spec.parallel, ctx_per_slot=spec.ctx_per_slot)
        plain = start_llama_server(served, None, parallel=spec.parallel, ctx_per_slot=spec.ctx_per_slot)
        servers += [ours, plain]
        # the baseline as a user would start it; then, if the RAG prompts do not fit its slots, with room for them
        exe = find_llama_tool("llama-server")
        user_args = ["-m", str(gguf), "-np", str(a.baseline_slots), "-c", str(a.baseline_ctx), "-t", str(cores)]
        port = free_port()
        user = EngineServer([str(exe), *user_args, "--host", "127.0.0.1", "--port", str(port)], port)
        servers.append(user)
        n_ctx_slot = httpx.get(f"{user.url}/props").json()["default_generation_settings"]["n_ctx"]
        too_long = [q for q, ids in rag.items() if len(ids) + a.tokens > n_ctx_slot]
        as_user = {"command": "llama-server " + " ".join(user_args).replace(str(gguf), Path(gguf).name),
                   "n_ctx_per_slot": n_ctx_slot, "prompts_that_do_not_fit": f"{len(too_long)}/{len(rag)}",
                   "prompts_longer_than_a_slot": sum(len(ids) > n_ctx_slot for ids in rag.values())}
        if too_long:  # what a user sees: the longest prompt is refused (400) or its answer cut where the slot is full
            longest = max(too_long, key=lambda q: len(rag[q]))
            body = _completion_body(rag[longest], a.tokens, False) | {"ignore_eos": True}
            r = httpx.post(f"{user.url}/completion", json=body, timeout=600)
            out = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
            as_user["probe"] = {"prompt_tokens": len(rag[longest]), "n_predict": a.tokens, "status": r.status_code,
                                "tokens_predicted": out.get("tokens_predicted"),
                                "error": (out.get("error") or {}).get("message") if r.status_code != 200 else None}
        if too_long:
            user.close()
            user.log_file.unlink(missing_ok=True)
            servers.remove(user)
            fit_args = ["-m", str(gguf), "-np", str(a.baseline_slots), "-c", str(a.baseline_slots * spec.ctx_per_slot),
                        "-t", str(cores)]
            port = free_port()
            user = EngineServer([str(exe), *fit_args, "--host", "127.0.0.1", "--port", str(port)], port)
            servers.append(user)
            as_user["measured_with"] = "llama-server " + " ".join(fit_args).replace(str(gguf), Path(gguf).name)
        baseline = user
        progress(f"baseline as a user starts it: {as_user['prompts_that_do_not_fit']} prompts + answers do not fit its "
                 f"{n_ctx_slot}-token slots ({as_user['prompts_longer_than_a_slot']} prompts alone); probe "
                 f"{as_user.get('probe')}{'; measured with ' + as_user['measured_with'] if too_long else ''}")
        if service:
            service.wait_ready()
            progress(f"service ready in {service.startup_s} s")

        # (a) llama-bench and (b) one stream, alternating
        whole, load = OtherLoad().start(), OtherLoad().start()
        bench = llama_bench(gguf, cores, a.bench_prompt, a.tokens, a.repeats)
        served_bench = bench if served == gguf else llama_bench(served, cores, a.bench_prompt, a.tokens, a.repeats)
        lora_tps, plain_tps = [], []
        for url in (ours.url, plain.url):  # warm-up
            one_stream(url, short, 8)
        for _ in range(a.repeats):
            lora_tps.append(one_stream(ours.url, short, a.tokens))
            plain_tps.append(one_stream(plain.url, short, a.tokens))
        tg = bench[f"tg{a.tokens}_tokens_per_s"]
        single = {"llama_bench": bench, "llama_bench_served_file": served_bench, "prompt_tokens": len(short), "n_predict": a.tokens,
                  "ours_lora_tokens_per_s": round(statistics.median(lora_tps), 2),
                  "ours_no_lora_tokens_per_s": round(statistics.median(plain_tps), 2),
                  "runs": {"lora": [round(x, 2) for x in lora_tps], "no_lora": [round(x, 2) for x in plain_tps]},
                  "other_cores_busy": load.stop()}
        single["ratio_lora_vs_llama_bench"] = ratio(single["ours_lora_tokens_per_s"], tg)
        single["ratio_no_lora_vs_llama_bench"] = ratio(single["ours_no_lora_tokens_per_s"], tg)
        single["adapter_cost"] = ratio(single["ours_lora_tokens_per_s"], single["ours_no_lora_tokens_per_s"])
        progress(f"one stream: llama-bench tg{a.tokens} {tg} tok/s | ours+lora {single['ours_lora_tokens_per_s']} | "
                 f"ours no lora {single['ours_no_lora_tokens_per_s']}")

        # (c) concurrency
        cache = not a.no_cache_prompt
        targets = {"ours": (ours.url, completion_sender(a.tokens, cache)),
                   "baseline": (baseline.url, completion_sender(a.tokens, cache))}
        if service:
            targets["service_ask"] = (service.url, ask_sender(a.tokens))
            if not a.no_chat_stream:
                targets["service_chat_stream"] = (service.url, chat_stream_sender(a.tokens))
            run_clients(1, ["What is a job?"], ask_sender(8), service.url)  # warm-up of the service's first request
        conc, fresh = {}, iter(lists)
        for c in a.clients:
            runs, hits = {name: [] for name in targets}, {"service_ask": [], "service_chat_stream": []}
            load = OtherLoad().start()
            for _ in range(a.repeats):
                questions, chat_questions = next(fresh), next(fresh)
                for name, (url, send) in targets.items():
                    reqs = ([rag[q] for q in questions] if name in ("ours", "baseline") else
                            chat_questions if name == "service_chat_stream" else questions)
                    before = service.engine_prompt_tokens() if service and name.startswith("service") else None
                    runs[name].append(run_clients(c, reqs, send, url))
                    if before is not None:
                        hits[name].append(cache_share(before, service.engine_prompt_tokens()))
            level = {name: summarize(r, hits.get(name)) for name, r in runs.items()}
            level["other_cores_busy"] = load.stop()
            base = level["baseline"]
            for name in targets:
                if name != "baseline":
                    level[name]["tokens_per_s_vs_baseline"] = ratio(level[name]["tokens_per_s"], base["tokens_per_s"])
                    level[name]["ttft_vs_baseline"] = ratio(level[name]["mean_ttft_s"], base["mean_ttft_s"])
            conc[str(c)] = level
            progress(f"{c:>2} clients: " + " | ".join(f"{t} {level[t]['tokens_per_s']} tok/s, ttft {level[t]['mean_ttft_s']} s"
                                                     f"{' (' + str(level[t]['errors']) + ' errors)' if level[t]['errors'] else ''}"
                                                     for t in targets) + f" | other processes: {level['other_cores_busy']} cores")
        other = whole.stop()
    finally:
        for s in servers:
            s.close()
            s.log_file.unlink(missing_ok=True)  # EngineServer's log lives in /tmp and is not removed by close()
        if service:
            service.close()
    res = {"machine": info | {"load_avg_after": os.getloadavg()}, "quick": a.quick, "artifacts": shown_path(art),
           "model": gguf.name, "served_model": f"{served.name} ({spec.quant})", "adapter": lora.name, "engine": {"parallel": spec.parallel, "ctx_per_slot": spec.ctx_per_slot},
           "settings": {k: v for k, v in vars(a).items() if k not in ("out", "artifacts")},
           "service_startup_s": service.startup_s if service else None, "one_stream": single, "baseline_as_user": as_user,
           "concurrency": conc, "other_cores_busy": other, "warning": contention_note(other, cores),
           "seconds": round(time.perf_counter() - t_start, 1)}
    atomic_write_json(a.out, res)
    print_table(res)
    return res


def print_table(res: dict) -> None:
    s = res["one_stream"]
    print(f"\none stream, {s['n_predict']} tokens (tokens/s): llama-bench {s['llama_bench'][next(k for k in s['llama_bench'] if k.startswith('tg'))]}"
          f" | ours+adapter {s['ours_lora_tokens_per_s']} ({s['ratio_lora_vs_llama_bench']}x)"
          f" | ours, no adapter {s['ours_no_lora_tokens_per_s']} ({s['ratio_no_lora_vs_llama_bench']}x); adapter cost {s['adapter_cost']}x")
    served = s.get("llama_bench_served_file") or {}
    print(f"llama-bench on the served file ({res.get('served_model')}): "
          + ", ".join(f"{k} {v}" for k, v in served.items() if k.endswith("tokens_per_s")))
    print("\n| clients | target | tokens/s | vs baseline | requests/s | mean ttft s | ttft vs baseline | prompt tokens | "
          "cache hit | errors |\n|---|---|---|---|---|---|---|---|---|---|")
    for c, level in res["concurrency"].items():
        for n, v in level.items():
            if n != "other_cores_busy":
                print(f"| {c} | {n} | {v['tokens_per_s']} | {v.get('tokens_per_s_vs_baseline', '')} | {v['requests_per_s']} | "
                      f"{v['mean_ttft_s'] if v['mean_ttft_s'] is not None else '-'} | {v.get('ttft_vs_baseline') or ''} | "
                      f"{v['mean_prompt_tokens']} | {v['prompt_cache_hit']} | {v['errors']} |")
    if res["warning"]:
        print("WARNING:", res["warning"])
    print(f"({res['seconds']} s; results in the JSON file)")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--artifacts", type=Path, default=SMOKE_ARTIFACTS)
    ap.add_argument("--quick", action="store_true", help="tiny settings (1 repeat, 32 tokens, 1 and 4 clients): a smoke check")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=128, help="tokens generated per request")
    ap.add_argument("--bench-prompt", type=int, default=64, help="llama-bench -p")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 4, 8, 16])
    ap.add_argument("--requests-per-client", type=int, default=2, help="length of the list of prompts each client sends")
    ap.add_argument("--baseline-slots", type=int, default=16)
    ap.add_argument("--baseline-ctx", type=int, default=8192)
    ap.add_argument("--no-chat-stream", action="store_true", help="skip the streamed /v1/chat/completions runs")
    ap.add_argument("--no-service", action="store_true", help="the engines only, not the HTTP service (service_load.py has it)")
    ap.add_argument("--no-cache-prompt", action="store_true",
                    help="ours and the baseline compute every prompt in full (the service's engine always uses its cache)")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    exit_on_sigterm()
    if a.quick:
        a.repeats, a.tokens, a.clients, a.requests_per_client = 1, 32, [1, 4], 1
    a.out = a.out or ROOT / f"benchmarks/results/generation_speed{'.quick' if a.quick else ''}.json"
    main(a)
