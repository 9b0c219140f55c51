"""JupyterLab in a real browser: a headless Chromium (Debian's, driven by Playwright) opens a notebook on a JupyterLab
server on loopback, runs it, picks a value in the chunk browser widget and reads what the widget shows."""
import json
import shutil
import subprocess
import time

import httpx
import pytest
from conftest import BIN, ROOT, free_port

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on this machine (.ci/run installs Debian's chromium)")

CELLS = [
    "import pandas as pd\nfrom lab2prod.data import chunk_browser",
    "chunks = pd.DataFrame({'source': ['a.md', 'b.md'], 'heading': ['Alpha', 'Beta'], 'position': [0, 1],\n"
    "                       'n_tokens': [3, 4], 'chunk_id': ['c1', 'c2'],\n"
    "                       'text': ['the alpha chunk', 'the beta chunk about retries']})",
    "chunk_browser(chunks)",
]


@pytest.fixture()
def lab(tmp_path):
    nb = {"cells": [{"cell_type": "code", "execution_count": None, "id": f"c{i}", "metadata": {}, "outputs": [],
                     "source": src} for i, src in enumerate(CELLS)],
          "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
          "nbformat": 4, "nbformat_minor": 5}
    (tmp_path / "widget.ipynb").write_text(json.dumps(nb))
    port, token = free_port(), "lab2prod-browser"
    proc = subprocess.Popen([str(BIN / "jupyter"), "lab", "--no-browser", "--ServerApp.ip=127.0.0.1",
                             f"--ServerApp.port={port}", f"--IdentityProvider.token={token}",
                             f"--ServerApp.root_dir={tmp_path}", "--allow-root"], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    for _ in range(180):
        try:
            if httpx.get(f"{url}/api/status", headers={"Authorization": f"token {token}"}, timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("jupyter lab did not start in 90 s")
    yield url, token
    proc.terminate()
    proc.wait(timeout=30)


def test_a_widget_runs_and_answers_in_jupyterlab(lab):
    from playwright.sync_api import sync_playwright
    url, token = lab
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        page = browser.new_page()
        page.goto(f"{url}/lab/tree/widget.ipynb?token={token}")
        page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=120_000)
        # the kernel is connected and idle: the status bar says so
        page.wait_for_function("() => document.body.innerText.includes('(ipykernel) | Idle')", timeout=120_000)
        page.locator(".jp-Notebook .jp-Cell").first.click()
        for n in range(1, len(CELLS) + 1):
            page.keyboard.press("Shift+Enter")
            page.wait_for_function(f"() => document.body.innerText.includes('[{n}]:')", timeout=120_000)
        dropdown = page.locator(".jp-OutputArea select")
        dropdown.wait_for(timeout=60_000)
        view = page.locator(".jp-OutputArea .widget-html-content").last
        assert "the alpha chunk" in view.inner_text(timeout=30_000)
        dropdown.select_option("b.md")  # the user picks another source
        page.wait_for_function("() => [...document.querySelectorAll('.widget-html-content')]"
                               ".some(e => e.innerText.includes('the beta chunk about retries'))", timeout=30_000)
        assert "Beta" in view.inner_text()
        browser.close()
