"""The HTTP service under load: /retrieve and /ask at 1/8/32 clients with batching on and off, and a soak of mixed traffic.

The service is `bentoml serve` of an artifacts folder (default: ./artifacts, the pipeline's run) on a free loopback port, with the
rate limit lifted and its request log in a temp folder.

Questions: the golden set's, then the training set's (`question_pool`). Every /retrieve query is made new by a
number after the question, so the service's query-vector cache never answers for the embedder; /ask questions repeat,
and the share of prompt tokens the engine served from its prompt cache is recorded (`prompt_cache_hit`).

(a) /retrieve: 32 concurrent clients for `--retrieve-seconds` -> queries/s and p50/p99 latency; the mean batch size
    the micro-batcher formed, from the service's /metrics (lab2prod_retrieve_batch_size_sum / _count over the phase).
    Baseline in the same run: the same number of queries sent one at a time by 1 client -> queries/s; ratio.
    Then paced: the same 32 clients, each sending one query every 32/R s (R = each `--retrieve-paced-share` of the
    closed-loop queries/s), so the service runs below saturation as it would in production -> p50/p99. (With 32
    clients sending back to back, latency is 32 / throughput by Little's law: the closed-loop p99 measures capacity.)
    The floor under those figures: GET /livez (a route that does no work) with the same clients for the same time ->
    the requests/s and p99 of BentoML's HTTP server alone on this machine (`http_floor`); no /retrieve can beat it.
(b) /ask at 1/8/32 clients, each looping over the questions for `--ask-seconds`
    (max_new_tokens `--ask-tokens`): answers/s, completion tokens/s, p50/p99 latency.
(c) soak (`--soak-minutes`): open-loop mixed traffic at `--soak-rate` requests/s, 70% /retrieve, 25% /ask
    (max_new_tokens 32), 5% bad input that must get a 4xx; counts 5xx (must be 0) and other wrong statuses, p50/p99
    per route, and the resident memory of the whole service (bentoml's processes and the llama-server under them,
    VmRSS summed over the process tree) at the start and at the end of the soak -> growth in %, with a trace along
    the way (the engine starts llama-server with its host-memory prompt cache off, which by default would grow up to
    8 GiB with the number of distinct prompts).

(d) batching off, the baseline of (a) and (b): a second service with LAB2PROD_BATCH_MAX_SIZE=1 (each /retrieve query
    embedded alone) and LAB2PROD_ENGINE_PARALLEL=1 (one llama.cpp slot: requests decoded one after another); /retrieve
    at `--retrieve-levels` clients (measured with batching on too) and /ask at the same client counts as (b).

Every phase records how many cores processes outside the benchmark kept busy (`other_cores_busy`); a run with a
warning shared the machine and is not representative.

    .venv/bin/python benchmarks/service_load.py [--quick] [--soak-minutes 10]
"""
from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import random
import sys
import time
from pathlib import Path

import aiohttp
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
    open_client,
    percentiles,
    progress,
    question_pool,
    run_clients,
    shown_path,
)

from lab2prod.core import atomic_write_json

# bad requests of the soak: each must be answered 4xx (never 5xx, never 2xx)
BAD = [("/retrieve", {"query": "", "k": 4}, None), ("/retrieve", {"query": "   ", "k": 4}, None),
       ("/retrieve", {"query": "retry", "k": 0}, None), ("/ask", {"question": "x", "max_new_tokens": 100000}, None),
       ("/ask", {"question": 5}, None), ("/retrieve", None, b"query=retry"),  # not JSON (text/plain)
       ("/ask", None, b'{"question": "unterminated'), ("/retrieve", {"query": "retry", "k": "four"}, None)]


def retrieve_sender(counter: itertools.count, k: int = 4):
    """POST /retrieve from a lean (aiohttp) client; a number after the question makes every query new, so none is
    served from the query cache."""
    async def send(client: aiohttp.ClientSession, query: str) -> Result:
        async with client.post("/retrieve", json={"query": f"{query} ({next(counter)})", "k": k}) as r:
            body = await r.text()
        return Result(0, r.status, extra={} if r.status == 200 else {"error": body[:200]})
    return send


def ask_sender(max_new_tokens: int):
    async def send(client: httpx.AsyncClient, question: str) -> Result:
        r = await client.post("/ask", json={"question": question, "k": 4, "max_new_tokens": max_new_tokens})
        if r.status_code != 200:
            return Result(0, r.status_code, extra={"error": r.text[:200]})
        return Result(0, 200, r.json()["usage"]["completion_tokens"])
    return send


def latency_ms(run) -> dict:
    return {k: round(v * 1000, 1) if v is not None else None for k, v in percentiles([r.latency_s for r in run.ok]).items()}


def retrieve_phase(svc: Service, queries: list[str], clients: int, seconds: float) -> dict:
    "32 clients for `seconds`, then the same number of queries one at a time."
    counter = itertools.count()
    run_clients(4, queries[:8], retrieve_sender(counter), svc.url, lean=True)  # warm-up (the embedder's first batches)
    s0, n0 = svc.metric("lab2prod_retrieve_batch_size_sum"), svc.metric("lab2prod_retrieve_batch_size_count")
    conc = run_clients(clients, queries, retrieve_sender(counter), svc.url, duration_s=seconds, lean=True)
    s1, n1 = svc.metric("lab2prod_retrieve_batch_size_sum"), svc.metric("lab2prod_retrieve_batch_size_count")
    n = len(conc.results)
    seq_list = (queries * (n // len(queries) + 1))[:n]
    seq = run_clients(1, seq_list, retrieve_sender(counter), svc.url, rotate=False, lean=True)
    c, q = conc.summary(), seq.summary()
    return {"concurrent": {"clients": clients, "queries": n, "errors": c["errors"], "wall_s": c["wall_s"],
                           "queries_per_s": c["requests_per_s"], "latency_ms": latency_ms(conc),
                           "mean_batch_size": round((s1 - s0) / (n1 - n0), 2) if n1 > n0 else None,
                           "batches": int(n1 - n0)},
            "one_at_a_time": {"clients": 1, "queries": n, "errors": q["errors"], "wall_s": q["wall_s"],
                              "queries_per_s": q["requests_per_s"], "latency_ms": latency_ms(seq)},
            "throughput_ratio": round(c["requests_per_s"] / q["requests_per_s"], 2) if q["requests_per_s"] else None}


async def _livez(client: aiohttp.ClientSession, _) -> Result:
    async with client.get("/livez") as r:
        await r.read()
    return Result(0, r.status)


def http_floor(svc: Service, clients: int, seconds: float) -> dict:
    "GET /livez by `clients` clients for `seconds`: what the HTTP server alone serves, the ceiling of every route."
    run = run_clients(clients, list(range(64)), _livez, svc.url, duration_s=seconds, lean=True)
    s = run.summary()
    return {"route": "/livez", "clients": clients, "requests": len(run.results), "errors": s["errors"],
            "requests_per_s": s["requests_per_s"], "latency_ms": latency_ms(run)}


def retrieve_levels(svc: Service, queries: list[str], levels: list[int], seconds: float, counter) -> dict:
    "/retrieve with each number of concurrent clients in `levels`, `seconds` each: queries/s, latency, mean batch."
    out = {}
    for c in levels:
        s0, n0 = svc.metric("lab2prod_retrieve_batch_size_sum"), svc.metric("lab2prod_retrieve_batch_size_count")
        run = run_clients(c, queries, retrieve_sender(counter), svc.url, duration_s=seconds, lean=True)
        s1, n1 = svc.metric("lab2prod_retrieve_batch_size_sum"), svc.metric("lab2prod_retrieve_batch_size_count")
        s = run.summary()
        out[str(c)] = {"queries": len(run.results), "errors": s["errors"], "queries_per_s": s["requests_per_s"],
                       "latency_ms": latency_ms(run), "mean_batch_size": round((s1 - s0) / (n1 - n0), 2) if n1 > n0 else None}
        progress(f"  /retrieve {c:>2} clients: {s['requests_per_s']} q/s, p50 {out[str(c)]['latency_ms']['p50']} ms, "
                 f"p99 {out[str(c)]['latency_ms']['p99']} ms, mean batch {out[str(c)]['mean_batch_size']}")
    return out


async def _paced(url: str, queries: list[str], clients: int, rate: float, seconds: float, counter) -> list:
    "`clients` clients, each sending a query every clients/rate s (staggered starts): (latency_s, status) of each."
    period, rows = clients / rate, []
    send = retrieve_sender(counter)

    async def client_loop(client: aiohttp.ClientSession, i: int, t0: float) -> None:
        n = 0
        while (at := t0 + (i / clients + n) * period) < t0 + seconds:
            await asyncio.sleep(max(0.0, at - time.perf_counter()))
            t = time.perf_counter()
            r = await send(client, queries[(i + n * clients) % len(queries)])
            rows.append((time.perf_counter() - t, r.status))
            n += 1

    async with open_client(url, clients, 60, lean=True) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*(client_loop(client, i, t0) for i in range(clients)))
    return rows


def paced_retrieve(svc: Service, queries: list[str], clients: int, rate: float, seconds: float) -> dict:
    "/retrieve latency with `clients` clients sending at `rate` queries/s in total."
    rows = asyncio.run(_paced(svc.url, queries, clients, rate, seconds, itertools.count(10**6)))
    ok = [t for t, s in rows if s == 200]
    return {"clients": clients, "rate_per_s": round(rate, 1), "queries": len(rows), "errors": len(rows) - len(ok),
            "latency_ms": {k: round(v * 1000, 1) if v is not None else None for k, v in percentiles(ok).items()}}


def ask_phase(svc: Service, questions: list[str], clients: list[int], seconds: float, tokens: int) -> dict:
    run_clients(1, questions[:1], ask_sender(8), svc.url)  # warm-up
    out = {}
    for c in clients:
        before = svc.engine_prompt_tokens()
        run = run_clients(c, questions, ask_sender(tokens), svc.url, duration_s=seconds)
        s = run.summary()
        out[str(c)] = {"answers": s["ok"], "errors": s["errors"], "statuses": s["statuses"], "wall_s": s["wall_s"],
                       "answers_per_s": s["requests_per_s"], "tokens_per_s": s["tokens_per_s"],
                       "mean_completion_tokens": s["mean_completion_tokens"], "latency_ms": latency_ms(run),
                       "prompt_cache_hit": cache_share(before, svc.engine_prompt_tokens()),
                       "error_examples": [r.extra["error"] for r in run.results if r.extra.get("error")][:3]}
        progress(f"  /ask {c:>2} clients: {s['requests_per_s']} answers/s, {s['tokens_per_s']} tok/s, "
                 f"p50 {out[str(c)]['latency_ms']['p50']} ms, p99 {out[str(c)]['latency_ms']['p99']} ms, {s['errors']} errors, "
                 f"prompt cache hit {out[str(c)]['prompt_cache_hit']}")
    return out


async def _soak(svc: Service, questions: list[str], seconds: float, rate: float, tokens: int, seed: int = 0) -> dict:
    "Open loop: a request every 1/rate s on average (Poisson arrivals), whatever the answers' speed."
    rng, counter = random.Random(seed), itertools.count()
    results: dict[str, list] = {"retrieve": [], "ask": [], "bad": []}
    tasks = []

    async def one(client: httpx.AsyncClient, route: str) -> None:
        t0 = time.perf_counter()
        try:
            if route == "bad":
                path, body, raw = BAD[rng.randrange(len(BAD))]
                r = await (client.post(path, json=body) if raw is None else
                           client.post(path, content=raw, headers={"content-type": "text/plain" if path == "/retrieve"
                                                                    else "application/json"}))
            elif route == "ask":
                r = await client.post("/ask", json={"question": rng.choice(questions), "k": 4, "max_new_tokens": tokens})
            else:
                r = await client.post("/retrieve", json={"query": f"{rng.choice(questions)} ({next(counter)})", "k": 4})
            status = r.status_code
        except httpx.HTTPError as e:
            status = f"{type(e).__name__}"
        results[route].append((time.perf_counter() - t0, status))

    trace, every = [], max(5.0, seconds / 20)

    async def sample_rss(t0: float) -> None:  # the service's memory along the way, not only at both ends
        while True:
            rss = svc.rss_mb()
            engine = sum(v for k, v in rss["processes"].items() if k.endswith(":llama-server"))
            trace.append([round(time.perf_counter() - t0, 1), rss["total_mb"], round(engine, 1)])
            await asyncio.sleep(every)

    limits = httpx.Limits(max_connections=512, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=svc.url, timeout=300, limits=limits) as client:
        t0 = time.perf_counter()
        sampler = asyncio.create_task(sample_rss(t0))
        next_at = t0
        while (now := time.perf_counter()) < t0 + seconds:
            if now < next_at:
                await asyncio.sleep(next_at - now)
            x = rng.random()
            route = "retrieve" if x < 0.70 else "ask" if x < 0.95 else "bad"
            tasks.append(asyncio.create_task(one(client, route)))
            next_at += rng.expovariate(rate)
        sent_s = time.perf_counter() - t0
        await asyncio.gather(*tasks)
        drain_s = time.perf_counter() - t0 - sent_s
        sampler.cancel()
    out = {"requests": sum(map(len, results.values())), "send_s": round(sent_s, 1), "drain_s": round(drain_s, 1),
           "rss_trace_mb": {"columns": ["s", "service_total", "llama_server"], "rows": trace}}
    for route, rows in results.items():
        statuses: dict[str, int] = {}
        for _, s in rows:
            statuses[str(s)] = statuses.get(str(s), 0) + 1
        expected = (lambda s: isinstance(s, int) and 400 <= s < 500) if route == "bad" else (lambda s: s == 200)
        out[route] = {"requests": len(rows), "statuses": statuses, "unexpected": sum(not expected(s) for _, s in rows),
                      "latency_ms": {k: round(v * 1000, 1) if v is not None else None
                                     for k, v in percentiles([t for t, s in rows if expected(s)]).items()}}
    out["5xx"] = sum(isinstance(s, int) and s >= 500 for rows in results.values() for _, s in rows)
    out["transport_errors"] = sum(not isinstance(s, int) for rows in results.values() for _, s in rows)
    return out


def soak_phase(svc: Service, questions: list[str], minutes: float, rate: float, tokens: int) -> dict:
    run_clients(2, questions[:2], ask_sender(8), svc.url)  # warm-up, so the start's memory is a served state
    rss0, before = svc.rss_mb(), svc.engine_prompt_tokens()
    out = asyncio.run(_soak(svc, questions, minutes * 60, rate, tokens))
    rss1 = svc.rss_mb()
    out["ask_prompt_cache_hit"] = cache_share(before, svc.engine_prompt_tokens())
    out |= {"minutes": minutes, "rate_per_s": rate, "ask_max_new_tokens": tokens,
            "rss_start_mb": rss0["total_mb"], "rss_end_mb": rss1["total_mb"],
            "rss_growth_pct": round(100 * (rss1["total_mb"] - rss0["total_mb"]) / rss0["total_mb"], 2),
            "rss_processes_start": rss0["processes"], "rss_processes_end": rss1["processes"]}
    return out


UNBATCHED = {"LAB2PROD_BATCH_MAX_SIZE": "1", "LAB2PROD_ENGINE_PARALLEL": "1"}


def unbatched_phase(art: Path, questions: list[str], a: argparse.Namespace) -> dict:
    """The baseline of the batching: the same service with each /retrieve query embedded alone (batch size 1) and the
    engine decoding one request at a time (one llama.cpp slot), at the same client counts."""
    progress("batching off: " + " ".join(f"{k}={v}" for k, v in UNBATCHED.items()))
    with Service(art, env=UNBATCHED) as svc:
        load = OtherLoad().start()
        out = {"settings": UNBATCHED, "service_startup_s": svc.startup_s,
               "retrieve": retrieve_levels(svc, questions, a.retrieve_levels, a.retrieve_seconds, itertools.count(3 * 10**6)),
               "ask": ask_phase(svc, questions, a.ask_clients, a.ask_seconds, a.ask_tokens)}
        out["other_cores_busy"] = load.stop()
        out["service_log_errors"] = log_errors(svc.log_file.read_text(errors="replace"))
    return out


def log_errors(log: str, keep: int = 10) -> dict:
    "The service log's [ERROR] records: how many, and the first `keep` with the last lines of their tracebacks."
    records, current = [], None
    for line in log.splitlines():
        if " [ERROR] " in line or " [WARNING] " in line or " [INFO] " in line:
            current = [line] if " [ERROR] " in line else None
            if current is not None:
                records.append(current)
        elif current is not None:
            current.append(line)
    first = [r[0][:300] + (" ... " + " | ".join(x.strip() for x in r[-3:]) if len(r) > 1 else "") for r in records[:keep]]
    return {"count": len(records), "first": [x.replace(f"{ROOT}/", "") for x in first]}  # tracebacks: project paths


def serving_description(svc: Service) -> dict:
    "What the service says it runs on (`/lineage`'s serving block: device, engine, precision, adapter) and its start-up line."
    import httpx
    serving = httpx.get(f"{svc.url}/lineage", timeout=30).json().get("serving") or {}
    line = next((x for x in svc.log_file.read_text(errors="replace").splitlines() if "lab2prod serving on" in x), "")
    return serving | {"startup_line": line[line.find("lab2prod serving on"):]}


def main(a: argparse.Namespace) -> dict:
    art = Path(a.artifacts)
    questions = question_pool(art)
    info = machine_info() | {"load_avg_before": os.getloadavg()}
    t0 = time.perf_counter()
    res: dict = {"quick": a.quick, "artifacts": shown_path(art),
                 "settings": {k: v for k, v in vars(a).items() if k not in ("out", "artifacts")}}
    with Service(art) as svc:
        res["service_startup_s"] = svc.startup_s
        res["serving"] = serving_description(svc)
        progress(res["serving"]["startup_line"] or "no start-up line in the service log")
        whole = OtherLoad().start()
        progress(f"service ready in {svc.startup_s} s; {svc.rss_mb()['total_mb']} MB resident")
        load = OtherLoad().start()
        res["retrieve"] = retrieve_phase(svc, questions, a.retrieve_clients, a.retrieve_seconds)
        r = res["retrieve"]
        r["paced"] = [paced_retrieve(svc, questions, a.retrieve_clients, share * r["concurrent"]["queries_per_s"],
                                     a.retrieve_seconds) | {"share_of_capacity": share} for share in a.retrieve_paced_share]
        r["http_floor"] = http_floor(svc, a.retrieve_clients, a.retrieve_seconds)
        r["other_cores_busy"] = load.stop()
        progress(f"  /retrieve {a.retrieve_clients} clients: {r['concurrent']['queries_per_s']} q/s, p50 "
                 f"{r['concurrent']['latency_ms']['p50']} ms, p99 {r['concurrent']['latency_ms']['p99']} ms, mean batch "
                 f"{r['concurrent']['mean_batch_size']} | 1 client: {r['one_at_a_time']['queries_per_s']} q/s | "
                 f"{r['throughput_ratio']}x | paced: " + ", ".join(
                     f"{p['rate_per_s']} q/s p50 {p['latency_ms']['p50']} ms p99 {p['latency_ms']['p99']} ms" for p in r["paced"])
                 + f" | GET /livez: {r['http_floor']['requests_per_s']} req/s, p99 {r['http_floor']['latency_ms']['p99']} ms")
        r["levels"] = retrieve_levels(svc, questions, a.retrieve_levels, a.retrieve_seconds, itertools.count(2 * 10**6))
        load = OtherLoad().start()
        res["ask"] = ask_phase(svc, questions, a.ask_clients, a.ask_seconds, a.ask_tokens)
        res["ask_other_cores_busy"] = load.stop()
        if a.soak_minutes > 0:
            load = OtherLoad().start()
            res["soak"] = soak_phase(svc, questions, a.soak_minutes, a.soak_rate, 32)
            res["soak"]["other_cores_busy"] = load.stop()
            s = res["soak"]
            progress(f"  soak {a.soak_minutes * 60:.0f} s at {a.soak_rate:g}/s: {s['requests']} requests, 5xx {s['5xx']}, "
                     f"RSS {s['rss_start_mb']} -> {s['rss_end_mb']} MB ({s['rss_growth_pct']:+}%)")
        res["service_log_errors"] = log_errors(svc.log_file.read_text(errors="replace"))
        res["other_cores_busy"] = whole.stop()
        res["warning"] = contention_note(res["other_cores_busy"], info["cores"])
    if a.unbatched:
        res["unbatched"] = unbatched_phase(art, questions, a)
    res["machine"] = info | {"load_avg_after": os.getloadavg()}
    res["seconds"] = round(time.perf_counter() - t0, 1)
    atomic_write_json(a.out, res)
    print_table(res)
    return res


def print_table(res: dict) -> None:
    r = res["retrieve"]
    print("\n| phase | clients | req/s | tok/s | p50 ms | p99 ms | errors | prompt cache hit |\n|---|---|---|---|---|---|---|---|")
    for name, clients, v in (("/retrieve", r["concurrent"]["clients"], r["concurrent"]),
                             ("/retrieve one at a time", 1, r["one_at_a_time"])):
        print(f"| {name} | {clients} | {v['queries_per_s']} | | {v['latency_ms']['p50']} | {v['latency_ms']['p99']} | {v['errors']} | |")
    if f := r.get("http_floor"):
        print(f"| GET /livez (no work: the HTTP floor) | {f['clients']} | {f['requests_per_s']} | | {f['latency_ms']['p50']} | "
              f"{f['latency_ms']['p99']} | {f['errors']} | |")
    for v in r["paced"]:
        print(f"| /retrieve paced at {v['share_of_capacity']:.0%} of capacity | {v['clients']} | {v['rate_per_s']} | | "
              f"{v['latency_ms']['p50']} | {v['latency_ms']['p99']} | {v['errors']} | |")
    for c, v in res["ask"].items():
        print(f"| /ask | {c} | {v['answers_per_s']} | {v['tokens_per_s']} | {v['latency_ms']['p50']} | "
              f"{v['latency_ms']['p99']} | {v['errors']} | {v['prompt_cache_hit']} |")
    print(f"/retrieve batching: {r['throughput_ratio']}x the one-at-a-time throughput, mean batch {r['concurrent']['mean_batch_size']}")
    if off := res.get("unbatched"):
        print("| batching | route | clients | per s | p50 ms | p99 ms |\n|---|---|---|---|---|---|")
        for label, part in (("on", {"retrieve": r.get("levels", {}), "ask": res["ask"]}), ("off", off)):
            for route in ("retrieve", "ask"):
                for c, v in part[route].items():
                    rate = v.get("queries_per_s", v.get("answers_per_s"))
                    print(f"| {label} | /{route} | {c} | {rate} | {v['latency_ms']['p50']} | {v['latency_ms']['p99']} |")
    if s := res.get("soak"):
        print("| soak route | requests | unexpected status | p50 ms | p99 ms |\n|---|---|---|---|---|")
        for route in ("retrieve", "ask", "bad"):
            v = s[route]
            print(f"| {route} | {v['requests']} | {v['unexpected']} | {v['latency_ms']['p50']} | {v['latency_ms']['p99']} |")
        print(f"soak: 5xx {s['5xx']} (must be 0), transport errors {s['transport_errors']}, RSS {s['rss_start_mb']} -> "
              f"{s['rss_end_mb']} MB ({s['rss_growth_pct']:+}%)")
    if res["warning"]:
        print("WARNING:", res["warning"])
    print(f"({res['seconds']} s; [ERROR] records in the service log: {res['service_log_errors']['count']})")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--artifacts", type=Path, default=SMOKE_ARTIFACTS)
    ap.add_argument("--quick", action="store_true", help="short phases and a 20 s soak: a smoke check")
    ap.add_argument("--retrieve-clients", type=int, default=32)
    ap.add_argument("--retrieve-seconds", type=float, default=20)
    ap.add_argument("--retrieve-paced-share", type=float, nargs="+", default=[0.25, 0.5],
                    help="paced /retrieve phases: these shares of the closed-loop throughput, spread over the clients")
    ap.add_argument("--retrieve-levels", type=int, nargs="+", default=[1, 8, 32],
                    help="/retrieve client counts measured with batching on and off")
    ap.add_argument("--ask-clients", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--no-unbatched", dest="unbatched", action="store_false",
                    help="skip the baseline service with batching off (/retrieve batch size 1, one engine slot)")
    ap.add_argument("--ask-seconds", type=float, default=60, help="each /ask level runs this long (requests in flight finish)")
    ap.add_argument("--ask-tokens", type=int, default=64, help="max_new_tokens of the /ask phase")
    ap.add_argument("--soak-minutes", type=float, default=10)
    ap.add_argument("--soak-rate", type=float, default=4.0, help="requests per second in the soak")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    exit_on_sigterm()
    if a.quick:
        a.retrieve_seconds, a.ask_seconds, a.ask_tokens, a.soak_minutes = 3, 4, 16, 10 / 60
        a.retrieve_paced_share = a.retrieve_paced_share[-1:]
    a.out = a.out or ROOT / f"benchmarks/results/service_load{'.quick' if a.quick else ''}.json"
    main(a)
