"Shared fixtures: a smoke-profile pipeline run in a temporary folder, and helpers to run the project's commands."
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
QUIET_ENV = {"PLOOMBER_STATS_ENABLED": "false", "PLOOMBER_VERSION_CHECK_DISABLED": "true", "ANONYMIZED_TELEMETRY": "False",
             "BENTOML_DO_NOT_TRACK": "True", "DVC_NO_ANALYTICS": "1", "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1",
             "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
os.environ.update(QUIET_ENV)
# planted in the pipeline runs' environment: no archived report may contain them (tests/test_runs.py)
PLANTED_SECRETS = {"LAB2PROD_JUDGE_API_KEY": "sk-planted-judge-7f3a9c01d2", "DEPLOY_TOKEN": "tok-planted-5be41c77a9"}


def run(args: list[str], env: dict | None = None, timeout: int = 900, check: bool = True) -> subprocess.CompletedProcess:
    "Run a command of the venv in the project root; on failure, or when it runs past `timeout`, show its output."
    try:
        # `mlflow.set_tracking_uri` in a test exports MLFLOW_TRACKING_URI to this process: no command may inherit it
        base = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
        p = subprocess.run([str(BIN / args[0]) if (BIN / args[0]).exists() else args[0], *args[1:]], cwd=ROOT,
                           env={**base, **(env or {})}, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:  # say where it was: a pipeline build prints each task as it starts
        out = [(b or b"").decode(errors="replace") if isinstance(b, bytes) else (b or "") for b in (e.stdout, e.stderr)]
        raise AssertionError(f"{' '.join(args)} ran past {timeout} s:\n{out[0][-4000:]}\n{out[1][-6000:]}") from None
    if check and p.returncode:
        raise AssertionError(f"{' '.join(args)} failed ({p.returncode}):\n{p.stdout[-4000:]}\n{p.stderr[-6000:]}")
    return p


def pytest_addoption(parser):
    parser.addoption("--bench", action="store_true",
                     help="also run the benchmark harness in quick mode (about 5 minutes; `make test-bench`)")


def pytest_collection_modifyitems(config, items):
    """The gate test registers versions and moves the smoke run's champion: it runs after every other test. The
    benchmark harness's check runs only when asked for (`--bench`): it keeps the default run well under 30 minutes."""
    items.sort(key=lambda item: item.module.__name__ == "test_gate")
    if config.getoption("--bench"):
        return
    skip = pytest.mark.skip(reason="the benchmark harness in quick mode takes about 5 minutes: run it with "
                                   "`make test-bench` (pytest --bench)")
    for item in items:
        if item.get_closest_marker("bench"):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def bentoml_home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("bentoml")


@pytest.fixture(scope="session")
def stack(tmp_path_factory):
    """PostgreSQL + S3 (SeaweedFS) + an MLflow server using both, on loopback, for the whole session; None (the
    pipeline then tracks to its SQLite default) where this machine lacks a part: tests/test_scale.py says which."""
    from stack import missing_parts, scale_stack
    if missing_parts():
        yield None
        return
    with scale_stack(tmp_path_factory.mktemp("stack")) as addresses:
        yield addresses


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory, bentoml_home, stack) -> dict:
    "The whole pipeline on the smoke profile into a fresh artifacts folder, tracked by the stack's MLflow server."
    art = tmp_path_factory.mktemp("artifacts")
    env = {"BENTOML_HOME": str(bentoml_home), **PLANTED_SECRETS}  # secrets in the environment must stay out of reports
    if stack:
        env["MLFLOW_TRACKING_URI"] = stack["tracking_uri"]
    first = run(["ploomber", "build", "--env--profile", "smoke", "--env--artifacts_dir", str(art)], env=env, timeout=1500)
    second = run(["ploomber", "build", "--env--profile", "smoke", "--env--artifacts_dir", str(art)], env=env)
    return {"artifacts": art, "first": first.stdout, "second": second.stdout, "env": env,
            "tracking_uri": env.get("MLFLOW_TRACKING_URI", "")}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(proc, url: str, timeout: int, retry_port_clash: bool) -> bool:
    "True once /readyz answers 200; False when the server died of a port clash and may be started again."
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            if retry_port_clash and "Address already in use" in proc.output():
                return False
            pytest.fail(f"bentoml serve exited: {proc.output()[-3000:]}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(1)
    pytest.fail(f"service not ready in {timeout} s")


@contextlib.contextmanager
def serving(env: dict, ready_timeout: int = 240):
    """Run `bentoml serve` from the project root on a free loopback port; yields its URL and the process.

    BentoML's process manager picks its own control port when it starts; on a busy machine another process can take
    that port first ("Address already in use"), and only then is the start tried again, on new ports."""
    for attempt in range(3):
        port, log = free_port(), tempfile.NamedTemporaryFile(prefix="bentoml-serve-", suffix=".log")  # a pipe could fill
        proc = subprocess.Popen([str(BIN / "bentoml"), "serve", "--host", "127.0.0.1", "--port", str(port)], cwd=ROOT,
                                env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        proc.output = lambda name=log.name: open(name, encoding="utf-8", errors="replace").read()
        url = f"http://127.0.0.1:{port}"
        if wait_ready(proc, url, ready_timeout, retry_port_clash=attempt < 2):
            break
    try:
        yield url, proc
    finally:
        import psutil
        with contextlib.suppress(psutil.NoSuchProcess):
            tree = psutil.Process(proc.pid).children(recursive=True)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:  # a loaded machine can take longer to drain: the test's result stands
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
        for child in locals().get("tree", []):  # workers live in sessions of their own: none may outlive the test
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()
        proc.final_output = proc.output()
        log.close()
