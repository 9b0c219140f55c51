"""JupyterLab, as a data scientist opens a stage notebook: a real Jupyter server on loopback (with this environment's
server extensions: Ploomber's) injects the paths a pipeline run would, and saving leaves the injected cell out."""
import json
import shutil
import subprocess
import time

import httpx
import pytest
from conftest import BIN, ROOT, free_port

from lab2prod.core import pipeline_products


@pytest.fixture()
def jupyter(tmp_path):
    "A Jupyter server over a copy of the project's pipeline (so saving touches no tracked file)."
    for name in ("pipeline.yaml", "env.yaml", "settings.ini"):
        shutil.copy2(ROOT / name, tmp_path / name)
    shutil.copytree(ROOT / "nbs", tmp_path / "nbs")
    shutil.copytree(ROOT / "prompts", tmp_path / "prompts")
    port, token = free_port(), "lab2prod-test"
    proc = subprocess.Popen([str(BIN / "jupyter"), "server", "--no-browser", "--ServerApp.ip=127.0.0.1",
                             f"--ServerApp.port={port}", f"--IdentityProvider.token={token}",
                             f"--ServerApp.root_dir={tmp_path}", "--allow-root"], cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"token {token}"}
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            if httpx.get(f"{url}/api/status", headers=headers, timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("jupyter server did not start in 90 s")
    yield url, headers, tmp_path
    proc.terminate()
    proc.wait(timeout=30)


def test_opening_a_stage_notebook_injects_the_pipeline_paths(jupyter):
    url, headers, root = jupyter
    model = httpx.get(f"{url}/api/contents/nbs/04_evaluate.ipynb", headers=headers, timeout=120).json()
    cells = model["content"]["cells"]
    injected = [c for c in cells if "injected-parameters" in c["metadata"].get("tags", [])]
    assert len(injected) == 1, "the server injected the paths a pipeline run would"
    src = injected[0]["source"]
    products = pipeline_products(root / "artifacts", root=root)
    assert json.dumps(products["evaluate"]["metrics"]) in src.replace("'", '"'), src
    assert json.dumps(products["engine"]["engine"]) in src.replace("'", '"'), "upstream products too"
    assert 'profile = "default"' in src, "env.yaml's values, not the notebook's smoke defaults"

    # saving from JupyterLab writes the notebook without the injected cell
    r = httpx.put(f"{url}/api/contents/nbs/04_evaluate.ipynb", headers=headers, json=model, timeout=120)
    assert r.status_code == 200, r.text
    saved = json.loads((root / "nbs/04_evaluate.ipynb").read_text())
    assert not any("injected-parameters" in c["metadata"].get("tags", []) for c in saved["cells"])
    assert len(saved["cells"]) == len(cells) - 1
