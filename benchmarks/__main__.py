"""Every benchmark from one command, with one report: `python -m benchmarks [--quick] [--only a,b] [--repeat N]`.

Each benchmark script compares lab2prod with a baseline measured in the same run (these machines are shared, so the
ratio is the figure) and writes its JSON under benchmarks/results/. This entry point runs them one at a time (two
heavy processes on two cores slow each other far more than twice), `--repeat` times, and writes one Markdown table
(median, min and max over the repeats) with the machine and the date, plus PNG plots of the concurrency curves and of
the per-task time, to benchmarks/results/; `--readme` copies the table into the README's performance section.

`--quick` runs each benchmark on tiny settings (about 5 minutes in all) to check that the harness works:
`make test-bench` runs it as a test, and no time it measures can fail anything."""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
README_START, README_END = "<!-- benchmarks:start -->", "<!-- benchmarks:end -->"


@dataclass
class Step:
    "One benchmark script: its arguments in full and in quick mode, and the JSON file it writes."
    name: str
    script: str
    full: list[str]
    quick: list[str]
    needs_artifacts: bool = False
    extra: list[str] = field(default_factory=list)

    def result(self, quick: bool, tmp: Path) -> Path:
        return tmp / f"{self.name}.json" if quick else RESULTS / f"{Path(self.script).stem}.json"


STEPS = [
    Step("pipeline", "pipeline_speed.py", [], ["--quick", "--profile", "smoke"]),
    Step("data", "data_speed.py", [], ["--mb", "1"]),
    Step("embedding", "embedding_speed.py", [], ["--repeats", "1", "--max-chunks", "96"]),
    Step("retrieval", "retrieval_quality.py", [], ["--corpora", "sample", "--no-e5"]),
    Step("query", "query_latency.py", [], ["--sizes", "1000"]),
    Step("finetune", "finetune_speed.py", [], ["--steps", "1", "--variants", "fp32"], needs_artifacts=True),
    Step("generation", "generation_speed.py", [], ["--quick", "--no-service"], needs_artifacts=True),
    Step("service", "service_load.py", [], ["--quick", "--ask-clients", "8", "--retrieve-levels", "8"], needs_artifacts=True),
]


def machine() -> dict:
    "What the figures were measured on."
    sys.path.insert(0, str(ROOT / "pkg"))
    from lab2prod.core import detect_hardware
    hw = detect_hardware()
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {"cpu": hw.cpu, "cores": hw.cores, "memory_gib": round(mem, 1), "native_bf16": hw.native_bf16,
            "gpu": hw.gpu or "none", "python": platform.python_version(),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def missing_run(artifacts: Path | None) -> str | None:
    "Why the benchmarks that measure a pipeline run (fine-tuning, generation, service) cannot run, or None."
    from lab2prod.core import stage_products
    folder = artifacts or ROOT / "artifacts"
    if Path(stage_products("package", folder)["served"]).exists():
        return None
    return f"no packaged pipeline run in {folder}: run `make pipeline` first (`make benchmarks` does), or pass --artifacts"


def run_step(step: Step, quick: bool, artifacts: Path | None, out: Path) -> dict:
    "Run one benchmark in its own process; its JSON, with the seconds it took (an error is recorded, not raised)."
    if step.needs_artifacts and (why := missing_run(artifacts)):
        return {"error": why, "seconds": 0.0}
    args = [sys.executable, str(ROOT / "benchmarks" / step.script), *(step.quick if quick else step.full), "--out", str(out)]
    if step.needs_artifacts and artifacts:
        args += ["--artifacts", str(artifacts)]
    t0 = time.perf_counter()
    p = subprocess.run(args, cwd=ROOT, capture_output=True, text=True)
    seconds = round(time.perf_counter() - t0, 1)
    if p.returncode or not out.exists():
        return {"error": (p.stderr or p.stdout)[-1500:], "seconds": seconds}
    return {**json.loads(out.read_text()), "harness_seconds": seconds}


def _dig(d: dict, *keys):
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def figures(name: str, r: dict) -> list[tuple[str, float | None, float | None, str]]:
    "The figures of one benchmark's result: (what, lab2prod, baseline, unit); the ratio is lab2prod / baseline."
    rows = []
    if name == "pipeline":
        first = r.get("first_build", {})
        for task, t in first.get("tasks", {}).items():
            rows.append((f"task {task}: wall", t["seconds"], None, "s"))
            rows.append((f"task {task}: peak RSS", t["peak_rss_mb"], None, "MB"))
        rows.append(("no-op rebuild (baseline: first build)", _dig(r, "noop_rebuild", "wall_s"), first.get("wall_s"), "s"))
        sync = _dig(r, "one_document_rebuild", "index_sync")
        rows.append(("rebuild after one document changed (baseline: first build)"
                     + (f"; re-embedded {sync['embedded']} of {sync['chunks']} chunks" if sync else ""),
                     _dig(r, "one_document_rebuild", "wall_s"), first.get("wall_s"), "s"))
        rows.append(("data stage as a papermill notebook (baseline: its exported function)",
                     _dig(r, "papermill_vs_function", "notebook_s"), _dig(r, "papermill_vs_function", "function_s"), "s"))
    elif name == "data":
        rows.append(("ingest + chunk (baseline: read and cut 800-char pieces)", r.get("ingest_and_chunk_s"),
                     r.get("naive_read_and_split_s"), "s"))
        rows.append(("data MB/min", r.get("mb_per_minute"), None, "MB/min"))
    elif name == "embedding":
        for backend in ("torch-bf16", "onnx-int8"):
            rows.append((f"embedding {backend} (baseline: plain fp32)", _dig(r, "chunks_per_s", backend),
                         _dig(r, "chunks_per_s", "plain"), "chunks/s"))
    elif name == "retrieval":
        for corpus, res in (r.get("corpora") or {}).items():
            ours = _dig(res, "configs", "lab2prod (default)", "heldout") or {}
            for label in ("floor", "hybrid (previous default)", "bundled fusion (MiniLM + e5 + BM25)"):
                base = _dig(res, "configs", label, "heldout") or {}
                for metric in ("hit_at_1", "mrr"):
                    if ours and base:
                        rows.append((f"{corpus} held-out {metric} (baseline: {label})", ours[metric], base[metric], ""))
            build = res.get("build_s") or {}
            if build:
                rows.append((f"{corpus} index build (baseline: plain MiniLM fp32)", build.get("default_auto"),
                             build.get("plain_minilm_torch_fp32"), "s"))
    elif name == "query":
        for size, v in r.items():
            if isinstance(v, dict) and "hybrid" in v:
                rows.append((f"query p50 at {int(size):,} chunks, hybrid (baseline: brute force)", v["hybrid"]["p50_ms"],
                             v["baseline_bruteforce"]["p50_ms"], "ms"))
                rows.append((f"query p99 at {int(size):,} chunks, hybrid (baseline: brute force)", v["hybrid"]["p99_ms"],
                             v["baseline_bruteforce"]["p99_ms"], "ms"))
    elif name == "finetune":
        runs = {x["variant"]: x for x in r.get("runs", [])}
        base = runs.get("previous")
        for variant in ("fp32", "bf16"):
            if variant in runs:
                rows.append((f"fine-tuning {variant} (baseline: the earlier loop)", runs[variant]["trained_tokens_per_s"],
                             base["trained_tokens_per_s"] if base else None, "tokens/s"))
                rows.append((f"fine-tuning {variant}: peak RSS", runs[variant]["peak_rss_mb"], None, "MB"))
    elif name == "generation":
        rows.append(("one stream with the adapter (baseline: llama-bench)", _dig(r, "one_stream", "ours_lora_tokens_per_s"),
                     _dig(r, "one_stream", "llama_bench", f"tg{_dig(r, 'one_stream', 'n_predict')}_tokens_per_s")
                     or _dig(r, "one_stream", "llama_bench", "tg128_tokens_per_s"), "tokens/s"))
        for n, v in sorted(r.get("concurrency", {}).items(), key=lambda kv: int(kv[0])):
            rows.append((f"{n} clients (baseline: llama-server as a user starts it)", _dig(v, "ours", "tokens_per_s"),
                         _dig(v, "baseline", "tokens_per_s"), "tokens/s"))
    elif name == "service":
        rows.append(("/retrieve, 32 clients, batched (baseline: one at a time)",
                     _dig(r, "retrieve", "concurrent", "queries_per_s"), _dig(r, "retrieve", "one_at_a_time", "queries_per_s"),
                     "queries/s"))
        floor = _dig(r, "retrieve", "http_floor") or {}
        if floor:
            rows.append((f"/retrieve, {floor['clients']} clients (baseline: GET /livez, no work, same clients)",
                         _dig(r, "retrieve", "concurrent", "queries_per_s"), floor.get("requests_per_s"), "queries/s"))
            rows.append((f"/retrieve, {floor['clients']} clients: p99 (baseline: GET /livez, no work, same clients)",
                         _dig(r, "retrieve", "concurrent", "latency_ms", "p99"), _dig(floor, "latency_ms", "p99"), "ms"))
        off = r.get("unbatched") or {}
        for n, v in sorted((_dig(r, "retrieve", "levels") or {}).items(), key=lambda kv: int(kv[0])):
            base = _dig(off, "retrieve", n) or {}
            rows.append((f"/retrieve, {n} clients (baseline: batching off)", v.get("queries_per_s"),
                         base.get("queries_per_s"), "queries/s"))
            rows.append((f"/retrieve, {n} clients: p99 (baseline: batching off)", _dig(v, "latency_ms", "p99"),
                         _dig(base, "latency_ms", "p99"), "ms"))
        for n, v in sorted(r.get("ask", {}).items(), key=lambda kv: int(kv[0])):
            base = _dig(off, "ask", n) or {}
            rows.append((f"/ask, {n} clients (baseline: batching off)", v.get("answers_per_s"), base.get("answers_per_s"),
                         "answers/s"))
            rows.append((f"/ask, {n} clients: p99 (baseline: batching off)", _dig(v, "latency_ms", "p99"),
                         _dig(base, "latency_ms", "p99"), "ms"))
        procs = _dig(r, "soak", "rss_processes_end") or {}
        if procs:
            rows.append(("serving: resident memory of the worker and its engine", round(sum(procs.values())), None, "MB"))
    return rows


def measured_on(r: dict, path: Path | None = None) -> str:
    "The date a result was measured: its own record, else the date git committed its file."
    date = r.get("date") or _dig(r, "machine", "date")
    if date:
        return str(date)[:10]
    if path is not None:
        p = subprocess.run(["git", "log", "-1", "--format=%cs", "--", str(path)], cwd=ROOT, capture_output=True, text=True)
        return p.stdout.strip() or "?"
    return datetime.now(timezone.utc).date().isoformat()


def aggregate(name: str, repeats: list[dict]) -> list[dict]:
    "Median, min and max of each figure (and of its ratio to the baseline) over the repeats."
    per = {}
    for r in repeats:
        for what, ours, base, unit in figures(name, r):
            per.setdefault((what, unit), []).append((ours, base))
    rows = []
    for (what, unit), vals in per.items():
        ours = [o for o, _ in vals if o is not None]
        ratios = [o / b for o, b in vals if o is not None and b]
        bases = [b for _, b in vals if b is not None]
        rows.append({"benchmark": name, "what": what, "unit": unit,
                     "median": statistics.median(ours) if ours else None, "min": min(ours) if ours else None,
                     "max": max(ours) if ours else None, "baseline": statistics.median(bases) if bases else None,
                     "ratio": statistics.median(ratios) if ratios else None, "n": len(ours),
                     "date": max((r.get("_measured", "") for r in repeats), default="")})
    return rows


def _fmt(x) -> str:
    if x is None:
        return "—"
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}"


def markdown(rows: list[dict], info: dict, gpu: dict | None, errors: dict[str, str], quick: bool,
             stored: bool = False) -> str:
    "The report: one table, the machine, and the GPU column (or why it is empty)."
    when = (f"Collected {info['date'][:10]} from each benchmark's last full run (its date in the last column), on"
            if stored else f"Measured {info['date'][:10]} on")
    head = (f"{when} {info['cpu']}, {info['cores']} cores, {info['memory_gib']} GiB, "
            f"native bf16: {'yes' if info['native_bf16'] else 'no'}, GPU: {info['gpu']}"
            + (" — **quick mode: tiny settings, a check of the harness, not figures to quote**" if quick else "") + ".")
    gpu_head = f"GPU ({gpu['name']}, {gpu['date']})" if gpu else "GPU"
    lines = [head, "", f"| benchmark | figure | lab2prod (median) | min–max | baseline | ratio | {gpu_head} | measured |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        spread = f"{_fmt(r['min'])}–{_fmt(r['max'])}" if r["n"] > 1 else "(1 run)"
        ratio = f"{r['ratio']:.2f}×" if r["ratio"] is not None else ""
        g = (gpu or {}).get("figures", {}).get(r["what"], "" if gpu else "no GPU lent to this run")
        lines.append(f"| {r['benchmark']} | {r['what']} | {_fmt(r['median'])} {r['unit']} | {spread} | "
                     f"{_fmt(r['baseline'])} | {ratio} | {g} | {r['date']} |")
    for name, err in errors.items():
        lines.append(f"| {name} | {err.strip().splitlines()[-1][:150] if err.strip() else 'no output'} | | | | | | |")
    return "\n".join(lines) + "\n"


def gpu_column(paths: list[Path] | None) -> dict | None:
    """The figures measured on lent GPU machines, keyed like the CPU rows they sit beside: gpu_path.py's (the engine
    and training) and service_load.py's (the HTTP service), each file naming its own machine."""
    figs, names, dates = {}, [], []
    for path in paths or []:
        if not path.exists():
            continue
        g = json.loads(path.read_text())
        if "retrieve" in g:  # service_load.py, run on the GPU machine
            part = {what: f"{_fmt(ours)} {unit}".strip() for what, ours, _, unit in figures("service", g) if ours is not None}
            name, date, role = _dig(g, "serving", "gpu") or _dig(g, "machine", "gpu"), _dig(g, "machine", "date"), "service"
        else:
            part, name, date, role = _gpu_path_figures(g), _dig(g, "hardware", "gpu"), g.get("date"), "engine, training"
        figs |= part
        names.append(f"{name or 'GPU'}: {role}")
        dates.append(str(date or "")[:10])
    if not figs:
        return None
    return {"name": "; ".join(names), "date": max(dates), "figures": figs}


def _gpu_path_figures(g: dict) -> dict:
    # clients sending through agenerate, as the service does, where the run measured them; else one generate of n
    clients = {r["clients"]: r["tokens_per_s"] for r in _dig(g, "concurrency", "batched") or []}
    served = clients or {b["requests"]: b["tokens_per_s"] for b in _dig(g, "served_engine", "batches") or []}
    one = _dig(g, "served_engine", "one_stream", "tokens_per_s") or _dig(g, "cuda_fp32", "one_stream", "tokens_per_s")
    figs = {"one stream with the adapter (baseline: llama-bench)": f"{one} tokens/s" if one else ""}
    for n in sorted(served):  # the table shows the levels its CPU rows have
        if n > 1 or clients:
            figs[f"{n} clients (baseline: llama-server as a user starts it)"] = f"{served[n]:,.0f} tokens/s"
    if (_dig(g, "train_auto", "steps") or 0) >= 30:  # a run of a few steps only checked that training runs there
        auto = g["train_auto"]  # `auto` resolves per model and device: the figure says what it chose
        figs["fine-tuning bf16 (baseline: the earlier loop)"] = f"30 steps in {auto['seconds']} s (auto: {auto['precision']})"
        figs["fine-tuning fp32 (baseline: the earlier loop)"] = f"30 steps in {g['train_fp32']['seconds']} s"
    return figs


def plots(results: dict[str, list[dict]], out: Path) -> list[Path]:
    "PNG plots: tokens/s against clients (lab2prod and its baseline), /ask answers/s, and the per-task time."
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    made = []
    gen = next((r for r in results.get("generation", []) if "concurrency" in r), None)
    svc = next((r for r in results.get("service", []) if "ask" in r), None)
    if gen or svc:
        fig, axes = plt.subplots(1, 3, figsize=(15, 4))
        if gen:
            levels = sorted(gen["concurrency"], key=int)
            for who, label in (("ours", "lab2prod engine"), ("baseline", "llama-server as started by a user")):
                axes[0].plot([int(n) for n in levels], [_dig(gen["concurrency"][n], who, "tokens_per_s") or 0 for n in levels],
                             marker="o", label=label)
            axes[0].set(xlabel="concurrent clients", ylabel="generated tokens/s", title="generation", ylim=(0, None))
            axes[0].legend()
        if svc:
            off = svc.get("unbatched") or {}
            for ax, route, key, unit in ((axes[1], "ask", "answers_per_s", "answers/s"),
                                         (axes[2], "retrieve", "queries_per_s", "queries/s")):
                on = svc["ask"] if route == "ask" else _dig(svc, "retrieve", "levels") or {}
                for label, part in (("batching on", on), ("batching off", off.get(route) or {})):
                    levels = sorted(part, key=int)
                    if levels:
                        ax.plot([int(n) for n in levels], [part[n][key] for n in levels], marker="o", label=label)
                ax.set(xlabel="concurrent clients", ylabel=unit, title=f"service /{route}", ylim=(0, None))
                ax.legend()
        fig.tight_layout()
        made.append(out / "concurrency.png")
        fig.savefig(made[-1], dpi=110)
        plt.close(fig)
    pipe = next((r for r in results.get("pipeline", []) if "first_build" in r), None)
    if pipe:
        tasks = pipe["first_build"]["tasks"]
        fig, ax = plt.subplots(figsize=(8, 3.5))
        ax.barh(list(tasks), [t["seconds"] for t in tasks.values()])
        ax.invert_yaxis()
        ax.set(xlabel="seconds", title=f"pipeline, {pipe['profile']} profile: time per task")
        fig.tight_layout()
        made.append(out / "pipeline_tasks.png")
        fig.savefig(made[-1], dpi=110)
        plt.close(fig)
    return made


def update_readme(table: str, images: list[Path]) -> None:
    "Replace the README's performance section (between its markers) with the table and the plots."
    readme = ROOT / "README.md"
    text = readme.read_text()
    if README_START not in text or README_END not in text:
        raise ValueError(f"README.md has no {README_START} ... {README_END} markers to write between")
    links = "".join(f"\n![{p.stem}]({p.relative_to(ROOT).as_posix()})\n" for p in images)
    before, rest = text.split(README_START, 1)
    after = rest.split(README_END, 1)[1]
    sys.path.insert(0, str(ROOT / "pkg"))
    from lab2prod.core import atomic_write_text
    atomic_write_text(readme, f"{before}{README_START}\n{table}{links}{README_END}{after}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny settings, under 5 minutes: checks the harness")
    ap.add_argument("--only", default="", help=f"comma-separated subset of {','.join(s.name for s in STEPS)}")
    ap.add_argument("--repeat", type=int, default=1, help="runs of each benchmark (median, min and max over them)")
    ap.add_argument("--artifacts", type=Path, default=None,
                    help="a pipeline run's artifacts folder for the serving benchmarks (default: theirs)")
    ap.add_argument("--gpu-results", type=Path, nargs="*",
                    default=[RESULTS / "gpu_path.h200.json", RESULTS / "service_load.h100.json"],
                    help="gpu_path.py's and service_load.py's JSON from lent GPU machines, for the GPU column")
    ap.add_argument("--readme", action="store_true", help="copy the table and plots into README.md")
    ap.add_argument("--from-results", action="store_true",
                    help="run nothing: report each benchmark's last full run stored in benchmarks/results/")
    ap.add_argument("--out", type=Path, default=None, help="where the report goes (default: benchmarks/results)")
    a = ap.parse_args(argv)
    wanted = [s for s in STEPS if not a.only or s.name in a.only.split(",")]
    unknown = set(filter(None, a.only.split(","))) - {s.name for s in STEPS}
    if unknown:
        print(f"unknown benchmark(s) {sorted(unknown)}; choose from {[s.name for s in STEPS]}", file=sys.stderr)
        return 2
    out = a.out or (RESULTS / "quick" if a.quick else RESULTS)
    out.mkdir(parents=True, exist_ok=True)
    info, results, errors, t0 = machine(), {}, {}, time.perf_counter()
    for step in wanted if a.from_results else []:
        stored = RESULTS / f"{Path(step.script).stem}.json"
        if stored.exists():
            r = json.loads(stored.read_text())
            results[step.name] = [{**r, "_measured": measured_on(r, stored)}]
        else:
            errors[step.name] = f"not run yet: python -m benchmarks --only {step.name}"
    for step in wanted if not a.from_results else []:
        for i in range(a.repeat):
            print(f"[{time.perf_counter() - t0:6.0f} s] {step.name} ({i + 1}/{a.repeat})", flush=True)
            r = run_step(step, a.quick, a.artifacts, out / f"{step.name}.{i}.json")
            if "error" in r:
                errors[step.name] = "failed: " + r["error"]
                break
            results.setdefault(step.name, []).append({**r, "_measured": measured_on(r)})
        if not a.quick and step.name in results:  # the last full run is what `--from-results` reports later
            stored = {k: v for k, v in results[step.name][-1].items() if k != "_measured"}
            target = RESULTS / f"{Path(step.script).stem}.json"
            tmp = target.with_suffix(".json.tmp")  # written aside, then renamed: a killed run leaves the last good file
            tmp.write_text(json.dumps(stored, indent=1) + "\n")
            tmp.replace(target)
    rows = [row for step in wanted for row in aggregate(step.name, results.get(step.name, []))]
    table = markdown(rows, info, gpu_column(a.gpu_results), errors, a.quick, stored=a.from_results)
    images = plots(results, out)
    (out / "summary.md").write_text(table)
    (out / "summary.json").write_text(json.dumps({"machine": info, "rows": rows, "errors": errors,
                                                   "seconds": round(time.perf_counter() - t0, 1)}, indent=1))
    if a.readme:
        update_readme(table, images)
    print(table)
    print(f"wrote {out / 'summary.md'} and {', '.join(p.name for p in images)} in {time.perf_counter() - t0:.0f} s")
    return 1 if errors and not a.from_results else 0  # stored results: a benchmark not run yet is a note


if __name__ == "__main__":
    sys.exit(main())
