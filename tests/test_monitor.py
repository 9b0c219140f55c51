"""Monitoring across processes and statistics: drift tests flag a known injected shift and stay quiet without one
(false-positive rate measured over 20 seeds on real question embeddings), the scheduled run files are valid, and a
scheduled run is archived, reports an empty window as such, and fails non-zero naming the failing cell."""
import configparser
import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import ROOT, run

from lab2prod.core import read_jsonl, stage_products
from lab2prod.monitor import as_matrix, language_drift, length_drift, mmd_drift, retrieval_drift
from lab2prod.runs import hook_args, load_runs

SEEDS = range(20)
CRON_FIELD = re.compile(r"^(\*|\d+(-\d+)?)(/\d+)?(,\d+(-\d+)?)*$")


@pytest.fixture(scope="module")
def questions():
    "The golden questions (in scope) and the red team's out-of-scope ones, embedded once by the bundled model."
    from lab2prod.index import embed_texts, load_embedder
    golden = [g["question"] for g in read_jsonl(ROOT / "data/golden.jsonl")]
    off = [r["prompt"] for r in read_jsonl(ROOT / "data/redteam.jsonl") if r["category"] == "out_of_scope"]
    emb = load_embedder("bundled", "torch")
    return {"golden": golden, "off": off, "g": as_matrix(embed_texts(emb, golden)), "o": as_matrix(embed_texts(emb, off))}


def window(questions, seed: int, shifted: bool):
    "A reference half of the golden questions and a current window: the other half, or half of it replaced by off-topic ones."
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(questions["golden"]))
    ref, cur = order[: len(order) // 2], order[len(order) // 2:]
    cur_q = [questions["golden"][i] for i in cur]
    cur_e = questions["g"][cur]
    if shifted:
        k = len(cur) // 2
        pick = rng.choice(len(questions["off"]), k, replace=False)
        cur_q = cur_q[:k] + [questions["off"][i] for i in pick]
        cur_e = np.vstack([cur_e[:k], questions["o"][pick]])
    return [questions["golden"][i] for i in ref], questions["g"][ref], cur_q, cur_e, rng


def any_drift(questions, seed: int, shifted: bool) -> tuple[bool, bool]:
    ref_q, ref_e, cur_q, cur_e, rng = window(questions, seed, shifted)
    top_ref, top_cur = rng.normal(0.6, 0.08, len(ref_q)), rng.normal(0.6, 0.08, len(cur_q))
    tests = [mmd_drift(cur_e, ref_e, seed=seed), length_drift(cur_q, ref_q), language_drift(cur_q, ref_q),
             retrieval_drift(list(top_cur), list(top_ref))]
    return any(t.drifted for t in tests), tests[0].drifted


def test_no_shift_is_rarely_flagged(questions):
    "Windows drawn from the reference's own distribution: at most 10 % of 20 seeds flagged by any of the tests."
    flagged = [any_drift(questions, s, shifted=False)[0] for s in SEEDS]
    rate = sum(flagged) / len(flagged)
    print(f"false-positive rate over {len(flagged)} seeds: {rate:.0%}")
    assert rate <= 0.10, flagged


def test_an_injected_shift_is_flagged(questions):
    "Half of the window's questions replaced by off-topic ones: the embedding test flags it at least 18 times in 20."
    flagged = [any_drift(questions, s, shifted=True)[1] for s in SEEDS]
    assert sum(flagged) >= 18, flagged


def test_falling_retrieval_scores_are_flagged():
    rng = np.random.default_rng(1)
    assert retrieval_drift(list(rng.normal(0.45, 0.08, 60)), list(rng.normal(0.6, 0.08, 60))).drifted


def test_schedule_files_are_valid():
    for line in (ROOT / "deploy/schedule/lab2prod.cron").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            fields = line.split()
            assert all(CRON_FIELD.match(f) for f in fields[:5]), line
            assert "lab2prod schedule monitor" in line or "lab2prod retrain" in line
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.read(ROOT / "deploy/schedule/lab2prod-monitor.service")
    assert unit["Service"]["Type"] == "oneshot" and "lab2prod schedule monitor" in unit["Service"]["ExecStart"]
    timer = configparser.ConfigParser(strict=False, interpolation=None)
    timer.read(ROOT / "deploy/schedule/lab2prod-monitor.timer")
    assert timer["Timer"]["OnCalendar"] and timer["Install"]["WantedBy"] == "timers.target"
    flow = yaml.safe_load((ROOT / ".github/workflows/scheduled.yml").read_text())
    crons = [s["cron"] for s in flow[True]["schedule"]]  # YAML 1.1 reads the key `on` as true
    assert crons and all(len(c.split()) == 5 and all(CRON_FIELD.match(f) for f in c.split()) for c in crons)
    steps = " ".join(s.get("run", "") for s in flow["jobs"]["monitor"]["steps"])
    assert "lab2prod schedule monitor" in steps and "lab2prod retrain" in steps


def test_a_scheduled_run_is_archived_and_a_failing_one_names_its_cell(smoke_run):
    art, env = smoke_run["artifacts"], smoke_run["env"]
    runs_dir = hook_args(art)["runs_dir"]
    before = {r.run_id for r in load_runs(runs_dir)}
    ok = run(["lab2prod", "schedule", "monitor", "--artifacts", str(art), "--env", "monitor_window=1d",
              "--env", "monitor_end=2001-01-01T00:00"], env=env)
    report = json.loads(Path(stage_products("monitor", art)["report"]).read_text())
    assert report["requests"] == 0 and report["note"] == "no traffic in this window", report
    assert report["retrain"] is False and report["window"]["end"].startswith("2001-01-01"), report
    new = [r for r in load_runs(runs_dir) if r.run_id not in before]
    assert len(new) == 1 and new[0].ran() == ["monitor"] and new[0].status == "passed", ok.stdout
    bad = run(["lab2prod", "schedule", "monitor", "--artifacts", str(art), "--env", "monitor_window=lastweek"], env=env,
              check=False)
    assert bad.returncode != 0
    assert "task monitor failed in cell [" in bad.stderr and "window bound 'lastweek'" in bad.stderr, bad.stderr
    failed = [r for r in load_runs(runs_dir) if r.run_id not in before and r.status == "failed"]
    assert len(failed) == 1 and (Path(runs_dir) / failed[0].run_id / "monitor.ipynb").exists()


def test_retrain_acts_on_the_verdict(smoke_run):
    art = smoke_run["artifacts"]
    out = run(["lab2prod", "retrain", "--artifacts", str(art)]).stdout
    assert "no retraining needed" in out
    dry = run(["lab2prod", "retrain", "--artifacts", str(art), "--force", "--dry-run"]).stdout
    assert "ploomber build --force --env--artifacts_dir" in dry
