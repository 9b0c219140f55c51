"""Shared helpers of the serving benchmarks (generation_speed.py, service_load.py); not a benchmark itself.

- `Service`: `bentoml serve` of an artifacts folder on a free loopback port, in a session of its own, logging to a
  temp file; ready when GET /readyz answers 200; stopped (the whole process tree, llama-server included) on exit,
  and sent SIGTERM by Linux if the benchmark's process dies first.
- `machine_info()`: CPU model, cores, memory, GPU, date: what every result file records next to its numbers.
- `OtherLoad`: how many cores other processes kept busy during a measurement (the machines are shared).
- `run_clients()`: N concurrent clients (asyncio + httpx), each sending the same list of requests (or looping over
  it until a deadline); total wall time, per-request latency, completion tokens, time to first token, status codes.
- `percentiles()`, `tree_pids()`, `tree_rss_mb()`, `kill_tree()`, `llama_prompt_counters()`, `question_pool()`.
"""
from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from lab2prod.engine import free_port

ROOT = Path(__file__).resolve().parents[1]
SMOKE_ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"  # a pipeline run of this checkout


_T0 = time.perf_counter()


def progress(msg: str) -> None:
    "A progress line, stamped with the seconds since the benchmark started."
    print(f"[{time.perf_counter() - _T0:6.1f} s] {msg}", flush=True)


def shown_path(path: str | os.PathLike) -> str:
    "A path as a result file records it: relative to the project, never a path of the measuring machine."
    try:
        return Path(path).resolve().relative_to(ROOT).as_posix()
    except ValueError:
        return "<outside the project>"


def machine_info() -> dict:
    "CPU model, cores usable here, memory, GPU (none or its name), date: recorded with every result."
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or "unknown")
    mem_kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal"))
    gpu = "none"
    if shutil.which("nvidia-smi"):
        with contextlib.suppress(Exception):
            out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10).stdout.strip()
            gpu = out.splitlines()[0] if out else "none"
    return {"cpu": cpu, "cores": len(os.sched_getaffinity(0)), "cpu_count": os.cpu_count(),
            "memory_gb": round(mem_kb / 2**20, 1), "gpu": gpu, "python": platform.python_version(),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def percentiles(values, ps=(50, 99), digits: int = 4) -> dict:
    "{'p50': .., 'p99': ..} of `values` (None when there are none)."
    v = [x for x in values if x is not None]
    return {f"p{p}": (round(float(np.percentile(v, p)), digits) if v else None) for p in ps}


def mean(values, digits: int = 4) -> float | None:
    v = [x for x in values if x is not None]
    return round(float(np.mean(v)), digits) if v else None

# --- process trees --------------------------------------------------------------------------------------------------


def _children_map() -> dict[int, list[int]]:
    "parent pid -> child pids, from /proc/<pid>/stat."
    kids: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])  # the name in parentheses may hold spaces
        kids.setdefault(ppid, []).append(int(d.name))
    return kids


def tree_pids(pid: int) -> list[int]:
    "`pid` and all its descendants."
    kids, out, todo = _children_map(), [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += kids.get(p, [])
    return out


def tree_rss_mb(pid: int) -> dict:
    "Resident memory (VmRSS) of every process of the tree under `pid`, and their sum, in MB."
    per = {}
    for p in tree_pids(pid):
        with contextlib.suppress(OSError):
            status = Path(f"/proc/{p}/status").read_text()
            name = next(line.split(":", 1)[1].strip() for line in status.splitlines() if line.startswith("Name:"))
            rss = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0)
            per[f"{p}:{name}"] = round(rss / 1024, 1)
    return {"total_mb": round(sum(per.values()), 1), "processes": per}


def _tree_cpu_s(pid: int) -> float:
    "CPU seconds of the tree under `pid`: each living process's own, plus what its reaped children used."
    total, tick = 0.0, os.sysconf("SC_CLK_TCK")
    for p in tree_pids(pid):
        with contextlib.suppress(OSError, IndexError, ValueError):
            f = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += sum(int(x) for x in f[11:15]) / tick  # utime stime cutime cstime
    return total


def _busy_cpu_s() -> float:
    "CPU seconds the whole machine has been busy (all cores), from /proc/stat."
    f = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(f[:8]) - f[3] - f[4]) / os.sysconf("SC_CLK_TCK")  # everything but idle and iowait


class OtherLoad:
    """How many cores processes outside this benchmark kept busy between `start()` and `stop()`: on a shared machine a
    llama.cpp server with a thread per core slows down many times over when another process takes a core."""

    def start(self) -> "OtherLoad":
        self.t0, self.busy0, self.ours0 = time.perf_counter(), _busy_cpu_s(), _tree_cpu_s(os.getpid())
        return self

    def stop(self) -> float:
        wall = time.perf_counter() - self.t0
        other = (_busy_cpu_s() - self.busy0) - (_tree_cpu_s(os.getpid()) - self.ours0)
        return round(max(0.0, other) / wall, 2) if wall > 0 else 0.0


def contention_note(other_cores: float, cores: int) -> str | None:
    "A warning when other processes used a noticeable share of the cores during a measurement."
    if other_cores >= 0.1 * cores:
        return (f"other processes kept {other_cores:.2f} of {cores} cores busy during the run: numbers are not "
                f"representative (llama.cpp's threads stall when a core is taken)")
    return None


def kill_tree(proc: subprocess.Popen, grace: float = 15) -> None:
    "Stop `proc` (leader of its own session) and every descendant: the group first, then stragglers by pid."
    pids = tree_pids(proc.pid) if proc.poll() is None else []
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)
    deadline = time.monotonic() + 5
    for p in pids:  # a child that left the group (its own session) is found by its pid
        if p == proc.pid:
            continue
        while Path(f"/proc/{p}").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(p, signal.SIGKILL)


def _own_group() -> None:
    "In the child, before exec: a process group of its own, and SIGTERM when this benchmark's process ends."
    os.setsid()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def exit_on_sigterm() -> None:
    "Turn SIGTERM and SIGHUP into SystemExit, so `finally` blocks stop the servers this benchmark started."
    def handler(signum, _frame):
        raise SystemExit(128 + signum)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, handler)

# --- the HTTP service -----------------------------------------------------------------------------------------------


class Service:
    "`bentoml serve` of `artifacts` on a free loopback port; use as a context manager."

    def __init__(self, artifacts: str | os.PathLike = SMOKE_ARTIFACTS, ready_timeout: float = 600, env: dict | None = None):
        self.artifacts, self.ready_timeout, self.extra_env = Path(artifacts), ready_timeout, env or {}
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.tmp = Path(tempfile.mkdtemp(prefix="lab2prod-bench-"))
        self.log_file = self.tmp / "bentoml.log"
        self.proc: subprocess.Popen | None = None
        self.startup_s: float | None = None

    def __enter__(self) -> "Service":
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.close()
            raise
        return self

    def start(self) -> "Service":
        "Launch `bentoml serve` (returns at once; `wait_ready` waits for it)."
        env = {**os.environ, "LAB2PROD_ARTIFACTS": str(self.artifacts), "LAB2PROD_RATE_LIMIT": "100000/second",
               "LAB2PROD_LOG_DIR": str(self.tmp / "logs"),  # the benchmark's requests stay out of the artifacts' log
               "BENTOML_HOME": str(self.tmp / "bentoml"), "HF_HUB_OFFLINE": "1", "BENTOML_DO_NOT_TRACK": "True",
               **self.extra_env}
        script = Path(sys.executable).with_name("bentoml")
        # an environment whose packages were installed into a folder of their own has no script beside its Python
        bentoml = [str(script)] if script.exists() else [sys.executable, "-m", "bentoml"]
        self._t0 = time.perf_counter()
        with open(self.log_file, "ab") as log:
            self.proc = subprocess.Popen([*bentoml, "serve", "--host", "127.0.0.1", "--port", str(self.port)],
                                         cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_own_group)
        return self

    def wait_ready(self) -> "Service":
        "Wait until GET /readyz answers 200; `startup_s` is the time from launch to then."
        import httpx
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"bentoml serve exited ({self.proc.returncode}):\n{self.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    self.startup_s = round(time.perf_counter() - self._t0, 1)
                    return self
            time.sleep(0.5)
        raise TimeoutError(f"the service was not ready in {self.ready_timeout:.0f} s:\n{self.log_tail()}")

    def log_tail(self, n: int = 3000) -> str:
        return self.log_file.read_text(errors="replace")[-n:] if self.log_file.exists() else ""

    def rss_mb(self) -> dict:
        "Resident memory of the whole service: bentoml's processes and the llama-server under them."
        return tree_rss_mb(self.proc.pid)

    def engine_url(self) -> str | None:
        "The URL of the llama-server the service started (None when its engine is not one)."
        for p in tree_pids(self.proc.pid):
            with contextlib.suppress(OSError):
                args = Path(f"/proc/{p}/cmdline").read_bytes().decode(errors="replace").split("\0")
                if Path(args[0]).name == "llama-server" and "--port" in args:
                    return f"http://127.0.0.1:{args[args.index('--port') + 1]}"
        return None

    def engine_prompt_tokens(self) -> tuple[float, float]:
        "Prompt tokens the service's llama-server has computed, and those it took from its prompt cache, so far."
        return llama_prompt_counters(self.engine_url()) if self.engine_url() else (0.0, 0.0)

    def metric(self, name: str) -> float:
        "The sum of the samples of metric `name` (all label sets) on /metrics."
        import httpx
        total = 0.0
        for line in httpx.get(f"{self.url}/metrics", timeout=10).text.splitlines():
            if line.startswith(name) and line[len(name):len(name) + 1] in (" ", "{"):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def close(self) -> None:
        if self.proc is not None:
            kill_tree(self.proc)
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __exit__(self, *exc) -> None:
        self.close()

# --- llama-server's counters, questions -----------------------------------------------------------------------------


def llama_prompt_counters(url: str) -> tuple[float, float]:
    "Prompt tokens a llama-server (started with --metrics) has computed, and those it took from its cache."
    import httpx
    m = {}
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith("llamacpp:prompt_tokens"):
            name, value = line.split()
            m[name] = float(value)
    return m.get("llamacpp:prompt_tokens_total", 0.0), m.get("llamacpp:prompt_tokens_cached_total", 0.0)


def cache_share(before: tuple[float, float], after: tuple[float, float]) -> float | None:
    "The share of prompt tokens served from the cache between two `llama_prompt_counters` readings."
    done, cached = after[0] - before[0], after[1] - before[1]
    return round(cached / (done + cached), 3) if done + cached else None


def question_pool(artifacts: str | os.PathLike) -> list[str]:
    "Distinct questions about the corpus of an artifacts folder: the golden set's, then the training set's."
    from lab2prod.core import read_jsonl, stage_products
    data = stage_products("data", artifacts)
    qs = [g["question"] for g in read_jsonl(data["golden"])]
    if Path(data["train"]).exists():
        qs += [t["question"] for t in read_jsonl(data["train"]) if t.get("question")]
    return list(dict.fromkeys(q.strip() for q in qs if q.strip()))

# --- concurrent clients ---------------------------------------------------------------------------------------------


@dataclass
class Result:
    "What one request did: seconds, status, completion tokens, seconds to the first token (streamed requests)."
    latency_s: float
    status: int
    tokens: int = 0
    ttft_s: float | None = None
    extra: dict = field(default_factory=dict)


@dataclass
class Run:
    "All the requests of one run_clients call."
    clients: int
    wall_s: float
    results: list[Result]

    @property
    def ok(self) -> list[Result]:
        return [r for r in self.results if 200 <= r.status < 300]

    def summary(self) -> dict:
        ok = self.ok
        tokens = sum(r.tokens for r in ok)
        return {"clients": self.clients, "requests": len(self.results), "ok": len(ok),
                "errors": len(self.results) - len(ok), "wall_s": round(self.wall_s, 3),
                "requests_per_s": round(len(ok) / self.wall_s, 3), "completion_tokens": tokens,
                "tokens_per_s": round(tokens / self.wall_s, 2),
                "mean_completion_tokens": mean([r.tokens for r in ok], 1),
                "latency_s": percentiles([r.latency_s for r in ok]) | {"mean": mean([r.latency_s for r in ok])},
                "mean_ttft_s": mean([r.ttft_s for r in ok]),
                "statuses": {str(s): sum(r.status == s for r in self.results) for s in sorted({r.status for r in self.results})}}


def open_client(base_url: str, connections: int, timeout: float, lean: bool = False):
    """An async HTTP client for `connections` concurrent requests: httpx, or with `lean` aiohttp, whose C parser
    costs the load generator a quarter of httpx's CPU per request (32 clients on GET /livez sharing 2 cores with the
    service: httpx 885 requests/s, aiohttp 3,600, wrk 3,400), so that short routes measure the service, not the client."""
    if lean:
        import aiohttp
        return aiohttp.ClientSession(base_url=base_url, connector=aiohttp.TCPConnector(limit=connections),
                                     timeout=aiohttp.ClientTimeout(total=timeout))
    import httpx
    # llama-server closes a keep-alive connection idle for 5 s; one reused as it closes fails the request for nothing
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections, keepalive_expiry=2)
    return httpx.AsyncClient(base_url=base_url, timeout=timeout, limits=limits)


async def _run_clients(n_clients: int, requests: list, send, duration_s: float | None, rotate: bool, base_url: str,
                       timeout: float, lean: bool) -> Run:
    results: list[Result] = []
    async with open_client(base_url, n_clients + 4, timeout, lean) as client:
        t0 = time.perf_counter()
        deadline = t0 + duration_s if duration_s else None

        async def one_client(i: int) -> None:
            mine = requests[i % len(requests):] + requests[:i % len(requests)] if rotate else requests
            j = 0
            while True:
                if deadline is None and j >= len(mine):
                    return
                if deadline is not None and time.perf_counter() >= deadline:
                    return
                req = mine[j % len(mine)]
                j += 1
                start = time.perf_counter()
                try:
                    res = await send(client, req)
                except Exception as e:  # a transport error or an answer that cannot be read: counted, not fatal
                    res = Result(0, 0, extra={"error": f"{type(e).__name__}: {e}"})
                res.latency_s = time.perf_counter() - start
                results.append(res)

        await asyncio.gather(*(one_client(i) for i in range(n_clients)))
        wall = time.perf_counter() - t0
    return Run(n_clients, wall, results)


def run_clients(n_clients: int, requests: list, send, base_url: str, duration_s: float | None = None,
                rotate: bool = True, timeout: float = 600, lean: bool = False) -> Run:
    """`n_clients` concurrent clients on one event loop, each sending `requests` once (or looping over them until
    `duration_s` has passed; requests in flight then are finished and counted). `send(client, request)` is a
    coroutine returning a `Result` (its latency is filled in here); its client is an aiohttp session with `lean`,
    else an httpx client (`open_client`). With `rotate`, client i starts at request i, so concurrent clients do not
    all send the same request at the same moment."""
    return asyncio.run(_run_clients(n_clients, requests, send, duration_s, rotate, base_url, timeout, lean))


def sse_event(line: str) -> dict | None:
    "The JSON payload of one server-sent-event `data:` line, or None."
    if line.startswith("data: ") and line[6:].strip() != "[DONE]":
        return json.loads(line[6:])
    return None
