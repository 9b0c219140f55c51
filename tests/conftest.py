"Shared fixtures: a smoke-profile pipeline run in a temporary folder, and helpers to run the project's commands."
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
QUIET_ENV = {"PLOOMBER_STATS_ENABLED": "false", "ANONYMIZED_TELEMETRY": "False", "BENTOML_DO_NOT_TRACK": "True",
             "DVC_NO_ANALYTICS": "1", "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1",
             "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
os.environ.update(QUIET_ENV)


def run(args: list[str], env: dict | None = None, timeout: int = 900, check: bool = True) -> subprocess.CompletedProcess:
    "Run a command of the venv in the project root; on failure show its output."
    p = subprocess.run([str(BIN / args[0]) if (BIN / args[0]).exists() else args[0], *args[1:]], cwd=ROOT,
                       env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=timeout)
    if check and p.returncode: raise AssertionError(f"{' '.join(args)} failed ({p.returncode}):\n{p.stdout[-4000:]}\n{p.stderr[-6000:]}")
    return p


@pytest.fixture(scope="session")
def bentoml_home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("bentoml")


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory, bentoml_home) -> dict:
    "The whole pipeline on the smoke profile into a fresh artifacts folder."
    art = tmp_path_factory.mktemp("artifacts")
    env = {"BENTOML_HOME": str(bentoml_home)}
    first = run(["ploomber", "build", "--env--profile", "smoke", "--env--artifacts_dir", str(art)], env=env)
    second = run(["ploomber", "build", "--env--profile", "smoke", "--env--artifacts_dir", str(art)], env=env)
    return {"artifacts": art, "first": first.stdout, "second": second.stdout, "env": env}
