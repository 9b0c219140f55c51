"""The quality gate and the registry across processes: a failing gate stops the pipeline and leaves `champion` where it
was, a passing one promotes, and `lab2prod rollback` moves it back and rebuilds the engine the service loads."""
import json

import mlflow
import pytest
from conftest import run

from lab2prod.core import tracking_uri_for
from lab2prod.evaluate import registry_state
from lab2prod.finetune import REGISTERED_MODEL


@pytest.fixture(scope="module")
def art(tmp_path_factory):
    "A smoke-profile run up to the evaluation in its own folder and registry (a copy would be out of date for Ploomber)."
    dst = tmp_path_factory.mktemp("gate") / "artifacts"
    run(["ploomber", "build", "--partially", "evaluate", "--env--profile", "smoke", "--env--artifacts_dir", str(dst)])
    return dst


def registry(art) -> dict:
    client = mlflow.MlflowClient(tracking_uri_for(art))  # not mlflow.set_tracking_uri: it exports the URI to children
    state = registry_state(client, REGISTERED_MODEL)
    state["versions"] = sorted(int(v.version) for v in client.search_model_versions(f"name='{REGISTERED_MODEL}'"))
    return state


def task(art, name: str, *extra: str, check: bool = True):
    return run(["ploomber", "task", name, "--force", "--env--profile", "smoke", "--env--artifacts_dir", str(art), *extra],
               check=check)


def test_gate_fail_promote_and_rollback(art):
    before = registry(art)
    assert before["champion"] == "1" and before["versions"] == [1], before  # the first run promoted its adapter

    # a new adapter version, evaluated against thresholds nothing can meet: the task fails and says why
    task(art, "finetune")
    task(art, "engine")
    failed = task(art, "evaluate", "--env--gate_override", '{"retrieval/hit_at_5": 1.01, "answer/token_f1": 0.99}',
                  check=False)
    assert failed.returncode != 0
    out = failed.stdout + failed.stderr
    assert "quality gate failed" in out and "threshold retrieval/hit_at_5" in out and "threshold answer/token_f1" in out
    gate = json.loads((art / "eval" / "gate.json").read_text())  # the last good evaluation's, not replaced
    assert gate["passed"] is True and gate["promoted"] == {"from": None, "to": "1"} and gate["candidate_version"] == 1
    after_fail = registry(art)
    assert after_fail["versions"] == [1, 2] and after_fail["champion"] == "1", after_fail  # nothing moved

    # the same candidate with the profile's thresholds (and room for the smoke run's noise against the champion)
    task(art, "evaluate", "--env--gate_tolerance", "1.0")
    promoted = registry(art)
    assert (promoted["champion"], promoted["previous"], promoted["history"]) == ("2", "1", ["1", "2"]), promoted
    assert json.loads((art / "engine" / "engine.json").read_text())["adapter_version"].endswith("/2")
    assert json.loads((art / "eval" / "gate.json").read_text())["candidate_version"] == 2

    # one command moves it back and rebuilds the engine folder with version 1's adapter
    rb = run(["lab2prod", "rollback", "--artifacts", str(art)])
    assert "champion: version 2 -> version 1" in rb.stdout and "the service loads" in rb.stdout
    back = registry(art)
    assert (back["champion"], back["previous"], back["history"]) == ("1", None, ["1"]), back
    spec = json.loads((art / "engine" / "engine.json").read_text())
    assert spec["adapter_version"].endswith("/1") and (art / "engine" / spec["adapter_gguf"]).exists()
    assert not list(art.glob("engine.*")), "no staging or replaced engine folder is left behind"

    # nothing further back: a clear error and a failing exit status
    again = run(["lab2prod", "rollback", "--artifacts", str(art), "--no-engine"], check=False)
    assert again.returncode == 1 and "no previous version" in again.stderr
