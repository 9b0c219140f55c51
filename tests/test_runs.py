"""The audit trail across processes: every `ploomber build` archived with its reports, lineage and the reasons each
task ran; a failed build archived too and leaving the last good products; secrets kept out; the index page, MLflow
and the registry linked; `lab2prod reproduce` re-creating a run from its commit."""
import json
import re
import subprocess
from pathlib import Path

import mlflow
import pytest
from conftest import PLANTED_SECRETS, ROOT, run

from lab2prod.core import dir_hash, read_jsonl, stage_products, tracking_uri_for
from lab2prod.runs import hook_args, load_runs

TASKS = ["data", "index", "guard", "finetune", "engine", "evaluate", "package", "monitor"]


@pytest.fixture(scope="module")
def history(smoke_run, tmp_path_factory):
    """After the smoke run's two builds: one with another parameter, one that fails, and the build after the fix."""
    art, env = smoke_run["artifacts"], smoke_run["env"]
    runs_dir = Path(hook_args(art)["runs_dir"])
    before = {r.run_id for r in load_runs(runs_dir)}

    def build(*extra, check=True):
        return run(["ploomber", "build", "--env--profile", "smoke", "--env--artifacts_dir", str(art), *extra], env=env,
                   check=check)
    build("--env--monitor_window", "30d")  # only the monitor task reads it
    data = stage_products("data", art)
    good = {k: dir_hash(p) for k, p in data.items()}
    missing = tmp_path_factory.mktemp("nocorpus") / "missing"
    failed = build("--env--monitor_window", "30d", "--env--corpus_dir", str(missing), check=False)
    after = {k: dir_hash(p) for k, p in data.items()}
    fixed = build("--env--monitor_window", "30d")
    runs = load_runs(runs_dir)
    return {"art": art, "tracking_uri": smoke_run["tracking_uri"], "runs_dir": runs_dir, "runs": runs, "new": [r for r in runs if r.run_id not in before],
            "good": good, "after_failure": after, "failed": failed, "fixed": fixed.stdout}


def test_every_build_is_archived(history):
    runs, new = history["runs"], history["new"]
    assert [r.status for r in new] == ["passed", "failed", "passed"], [r.run_id for r in new]
    first = runs[-1]  # the smoke run's first build, then its second
    assert first.status == runs[-2].status == "passed"
    assert sorted(t.name for t in first.tasks) == sorted(TASKS) and all(t.status == "ran" for t in first.tasks)
    assert len(first.git_commit) == 40 and first.packages["ploomber"] and first.params["profile"] == "smoke"
    assert first.inputs and all(len(h) == 64 for h in first.inputs.values()), first.inputs
    assert {"index", "finetune", "evaluate"} <= set(first.mlflow_runs), first.mlflow_runs
    run_dir = history["runs_dir"] / first.run_id
    for t in first.tasks:
        nb = json.loads((run_dir / t.report).read_text())
        tags = [c["metadata"].get("tags", []) for c in nb["cells"]]
        assert ["injected-parameters"] in tags, f"{t.name}: papermill's injected parameters are in the report"
        assert "<html" in (run_dir / t.html).read_text()[:2000]
    assert all(t.status == "skipped" for t in runs[-2].tasks), "the second build had nothing to do"
    index_report = (run_dir / "index.ipynb").read_text()
    assert "embedding chunks: " in index_report and "it/s]" not in index_report, "plain progress lines, not bars"
    assert "training steps: 2/2 (100%)" in (run_dir / "finetune.ipynb").read_text()
    # widgets are shown as static HTML in reports (a widget view without its state would show nothing)
    for report, code, text in (("evaluate.ipynb", "playground = prompt_playground(", "mean over"),
                               ("index.ipynb", "explorer = retrieval_explorer(retriever)", "<table>")):
        cell = next(c for c in json.loads((run_dir / report).read_text())["cells"] if code in "".join(c["source"]))
        shown = [o.get("data", {}) for o in cell["outputs"] if o["output_type"] == "display_data"]
        assert shown and all("text/html" in d and "application/vnd.jupyter.widget-view+json" not in d for d in shown)
        assert text in "".join(shown[0]["text/html"]), report


def test_why_each_task_ran(history):
    changed = history["new"][-1]  # the build with another monitoring window
    why = {t.name: (t.status, t.why) for t in changed.tasks}
    assert why["data"] == ("skipped", []) and why["evaluate"] == ("skipped", [])
    assert why["monitor"][0] == "ran" and any(w.startswith("parameter monitor_window: ") and w.endswith("-> '30d'")
                                              for w in why["monitor"][1]), why
    assert changed.ran() == ["monitor"]
    first = history["runs"][-1]
    assert all(t.why and t.why[0].startswith("product missing") for t in first.tasks), first.tasks


def test_a_failed_build_is_archived_and_leaves_the_last_good_products(history):
    failed = history["new"][1]
    assert history["failed"].returncode != 0 and "does not exist" in history["failed"].stdout + history["failed"].stderr
    assert [t.status for t in failed.tasks] == ["failed"] + ["not run"] * 7
    assert "parameter corpus_dir" in failed.tasks[0].why[0] and "does not exist" in failed.error
    archived = history["runs_dir"] / failed.run_id / "data.ipynb"
    assert "does not exist" in archived.read_text(), "the failing notebook shows the error cell"
    assert history["after_failure"] == history["good"], "products (and the data report) are the last good run's"
    # after the fix, Ploomber finds the products up to date: nothing was half-replaced, so nothing needs redoing
    assert history["new"][0].ran() == [] and "True" not in history["fixed"].split("Percentage")[-1]


def test_no_secret_reaches_any_archived_or_report_file(history):
    files = [p for p in history["art"].rglob("*") if p.is_file() and p.suffix in (".ipynb", ".html", ".json", ".jsonl")]
    assert len(files) > 40
    for p in files:
        text = p.read_text(errors="replace")
        for name, value in PLANTED_SECRETS.items():
            assert value not in text, f"{name}'s value is in {p}"
    assert all(r.redactions == 0 for r in history["runs"]), "nothing printed a secret in the first place"


def test_index_page_mlflow_and_registry_link_the_runs(history):
    runs, runs_dir = history["runs"], history["runs_dir"]
    page = (runs_dir / "index.html").read_text()
    positions = [page.index(r.run_id) for r in runs]
    assert positions == sorted(positions), "newest first"
    for href in re.findall(r'href="([^"#]+)"', page):
        assert (runs_dir / href).exists(), href
    assert "promoted version 1" in page and "What was served when" in page and "failed" in page
    client = mlflow.MlflowClient(tracking_uri_for(history["art"], history["tracking_uri"]))
    first = runs[-1]
    files = [f.path for f in client.list_artifacts(first.archive_mlflow_run, "archive")]
    assert "archive/lineage.json" in files and "archive/evaluate.html" in files, files
    promoter = next(r for r in runs if r.gate and r.gate.get("promoted"))  # the newest run that promoted
    tags = client.get_model_version("lab2prod-adapter", promoter.gate["promoted"]["to"]).tags
    assert tags["lab2prod.pipeline_run"] == promoter.run_id and tags["lab2prod.archive"].endswith(promoter.run_id)
    packaged = [h for h in read_jsonl(stage_products("package", history["art"])["history"]) if h["event"] == "packaged"]
    assert [h["run_id"] for h in packaged] == [runs[-1].run_id], "packaged once, by the first build"


def test_a_mistyped_parameter_is_an_error_naming_it(smoke_run):
    p = run(["ploomber", "build", "--env--artifacts_dir", str(smoke_run["artifacts"]), "--env--trian_recipe", "facts"],
            check=False)
    assert p.returncode != 0 and "--env--trian_recipe" in p.stderr


def test_runs_command_lists_the_archive(history):
    out = run(["lab2prod", "runs", "--artifacts", str(history["art"])]).stdout
    listed = [line.split()[0] for line in out.splitlines()[:-1]]
    assert listed == [r.run_id for r in history["runs"]] and "index: " in out.splitlines()[-1]


@pytest.mark.skipif(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True,
                                   text=True).stdout.strip() != "",
                    reason="uncommitted changes: a checkout of the recorded commit would not be the code that ran")
def test_reproduce_reports_a_match_for_the_first_run(history):
    first = history["runs"][-1]
    p = run(["lab2prod", "reproduce", first.run_id, "--artifacts", str(history["art"])], check=False, timeout=1500)
    assert p.returncode == 0 and "MATCH" in p.stdout, p.stdout + p.stderr
    assert "data.chunks" in p.stdout and "index.data_sha256" in p.stdout and "evaluate.retrieval/hit_at_5" in p.stdout


def test_an_edited_document_reruns_the_data_task_and_reembeds_only_its_chunks(tmp_path):
    """Ploomber alone would skip everything after a document changes (no notebook or parameter changed); the data
    task's recorded input hashes send it, and what follows it, to run again: the archive says why, and the index
    embeds only the chunks whose text changed."""
    import shutil

    corpus, art = tmp_path / "corpus", tmp_path / "art"
    shutil.copytree(ROOT / "data" / "corpus", corpus)

    def build():
        return run(["ploomber", "build", "--partially", "index", "--env--profile", "smoke", "--env--artifacts_dir",
                    str(art), "--env--corpus_dir", str(corpus)]).stdout
    build()
    unchanged = build()
    assert all(row.split()[1] == "False" for row in unchanged.splitlines() if row.split()[:1] in (["data"], ["index"]))
    import pandas as pd
    source = sorted(pd.read_parquet(stage_products("data", art)["chunks"])["source"])[0]  # a document the profile keeps
    (corpus / source).write_text((corpus / source).read_text() + "\n\nOne more sentence, added after the first build.\n")
    rebuilt = build()
    assert all(row.split()[1] == "True" for row in rebuilt.splitlines() if row.split()[:1] in (["data"], ["index"])), rebuilt
    manifest = json.loads(Path(stage_products("index", art)["manifest"]).read_text())
    assert 0 < manifest["sync"]["embedded"] < manifest["n_chunks"], manifest["sync"]
    newest = load_runs(hook_args(art)["runs_dir"])[0]
    why = {t.name: t.why for t in newest.tasks}
    assert "input changed: corpus" in why["data"], why
