"""The quality gate and the registry across processes: a failing gate stops the pipeline and leaves `champion` where it
was, a passing one promotes, and `lab2prod rollback` moves it back and rebuilds the engine the service loads."""
import json
from pathlib import Path

import mlflow
from conftest import run

from lab2prod.core import tracking_uri_for
from lab2prod.evaluate import registry_state
from lab2prod.finetune import REGISTERED_MODEL
from lab2prod.rag import served_manifest_for


def registry(smoke_run: dict) -> dict:
    uri = tracking_uri_for(smoke_run["artifacts"], smoke_run["tracking_uri"])  # the stack's server where it runs
    client = mlflow.MlflowClient(uri)  # not mlflow.set_tracking_uri: it exports the URI to children
    state = registry_state(client, REGISTERED_MODEL)
    state["versions"] = sorted(int(v.version) for v in client.search_model_versions(f"name='{REGISTERED_MODEL}'"))
    return state


def task(smoke_run: dict, name: str, *extra: str, check: bool = True):
    return run(["ploomber", "task", name, "--force", "--env--profile", "smoke", "--env--artifacts_dir",
                str(smoke_run["artifacts"]), *extra], env=smoke_run["env"], check=check)


def test_gate_fail_promote_and_rollback(smoke_run):
    """On the session's smoke run, which the conftest orders this test after every other one to use: the versions it
    registers and the champion it moves touch no other test, and it saves a build of its own."""
    art = smoke_run["artifacts"]
    before = registry(smoke_run)
    gate_before = json.loads((art / "eval" / "gate.json").read_text())
    champion = before["champion"]
    assert champion and before["history"] == [champion], before  # the run's first build promoted its adapter, once
    assert gate_before["passed"] is True, gate_before
    new = max(before["versions"]) + 1

    # a new adapter version, evaluated against thresholds nothing can meet: the task fails and says why
    task(smoke_run, "finetune")
    task(smoke_run, "engine")
    failed = task(smoke_run, "evaluate", "--env--gate_override",
                  '{"retrieval/hit_at_5": 1.01, "answer/token_f1": 0.99}', check=False)
    assert failed.returncode != 0
    out = failed.stdout + failed.stderr
    assert "quality gate failed" in out and "threshold retrieval/hit_at_5" in out and "threshold answer/token_f1" in out
    gate = json.loads((art / "eval" / "gate.json").read_text())
    assert gate == gate_before, "the last good evaluation's gate file is not replaced by a failed one"
    after_fail = registry(smoke_run)
    assert after_fail["versions"] == [*before["versions"], new] and after_fail["champion"] == champion, after_fail

    # the same candidate with the profile's thresholds (and room for the smoke run's noise against the champion)
    task(smoke_run, "evaluate", "--env--gate_tolerance", "1.0")
    promoted = registry(smoke_run)
    assert (promoted["champion"], promoted["previous"], promoted["history"]) == (str(new), champion, [champion, str(new)])
    assert json.loads((art / "engine" / "engine.json").read_text())["adapter_version"].endswith(f"/{new}")
    assert json.loads((art / "eval" / "gate.json").read_text())["candidate_version"] == new

    # one command moves it back and rebuilds the engine the service loads (the run is packaged: the Bento's snapshot)
    rb = run(["lab2prod", "rollback", "--artifacts", str(art)], env=smoke_run["env"])
    served = Path(served_manifest_for(art).engine_dir)
    assert f"champion: version {new} -> version {champion}" in rb.stdout and f"the service loads {served}" in rb.stdout
    back = registry(smoke_run)
    assert (back["champion"], back["previous"], back["history"]) == (champion, None, [champion]), back
    spec = json.loads((served / "engine.json").read_text())
    assert spec["adapter_version"].endswith(f"/{champion}") and (served / spec["adapter_gguf"]).exists()
    assert not list(served.parent.glob("engine.*")), "no staging or replaced engine folder is left behind"

    # nothing further back: a clear error and a failing exit status
    again = run(["lab2prod", "rollback", "--artifacts", str(art), "--no-engine"], env=smoke_run["env"], check=False)
    assert again.returncode == 1 and "no previous version" in again.stderr
