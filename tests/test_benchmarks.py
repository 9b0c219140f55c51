"""The benchmark harness in quick mode: every benchmark runs on tiny settings against the smoke run's artifacts and
the report (one table, the machine, plots) is written. Nothing here checks a time: the figures are noisy by nature."""
import json
import sys

import pytest
from conftest import ROOT, run

pytestmark = [pytest.mark.slow, pytest.mark.bench]  # not in the default run: `make test-bench`


def test_quick_harness_writes_the_table_and_plots(smoke_run, tmp_path):
    out = tmp_path / "bench"
    p = run(["lab2prod", "bench", "--quick", "--artifacts", str(smoke_run["artifacts"]), "--out", str(out)],
            env=smoke_run["env"], timeout=900, check=False)
    summary = json.loads((out / "summary.json").read_text())
    assert p.returncode == 0 and not summary["errors"], summary["errors"] or p.stderr[-3000:]
    table = (out / "summary.md").read_text()
    sys.path.insert(0, str(ROOT))
    from benchmarks.__main__ import STEPS
    benchmarks = {row["benchmark"] for row in summary["rows"]}
    assert benchmarks == {s.name for s in STEPS}, benchmarks
    assert "| benchmark | figure | lab2prod (median) |" in table and summary["machine"]["cpu"] in table
    ratios = [r for r in summary["rows"] if r["ratio"] is not None]
    assert len(ratios) >= 10 and all(r["ratio"] > 0 for r in ratios), ratios  # each compared with its baseline
    off = [r for r in ratios if r["benchmark"] == "service" and "batching off" in r["what"]]
    assert {r["what"].split(" (")[0] for r in off} >= {"/retrieve, 8 clients", "/ask, 8 clients"}, off  # on against off
    assert (out / "concurrency.png").stat().st_size > 5000 and (out / "pipeline_tasks.png").stat().st_size > 5000
    assert "quick mode" in table and "README" not in p.stdout  # quick never touches the README
    assert (ROOT / "README.md").read_text().count("<!-- benchmarks:start -->") == 1
