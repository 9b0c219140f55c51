"Nothing phones home: every tool's usage reporting is off in every entry point."
import configparser
import os
import subprocess
import sys

from conftest import ROOT

KEYS = {"PLOOMBER_STATS_ENABLED": "false", "ANONYMIZED_TELEMETRY": "False", "BENTOML_DO_NOT_TRACK": "True",
        "DVC_NO_ANALYTICS": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}


def test_importing_lab2prod_switches_telemetry_off():
    code = "import os, lab2prod.core; print({k: os.environ.get(k) for k in %r})" % list(KEYS)
    env = {k: v for k, v in os.environ.items() if k not in KEYS}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert eval(out) == KEYS


def test_makefile_exports_the_switches_for_command_line_tools():
    text = (ROOT / "Makefile").read_text()
    for k, v in KEYS.items():
        assert f"export {k} := {v}" in text, k


def test_bentofile_and_dvc_config_disable_tracking():
    assert "BENTOML_DO_NOT_TRACK" in (ROOT / "bentofile.yaml").read_text()
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / ".dvc" / "config")
    assert cfg["core"]["analytics"] == "false"


def test_libraries_report_tracking_disabled():
    from bentoml._internal.utils.analytics.usage_stats import do_not_track
    from chromadb.config import Settings
    from ploomber_core.telemetry.telemetry import check_telemetry_enabled

    import lab2prod.core  # noqa: F401
    assert do_not_track() is True
    assert check_telemetry_enabled() is False
    assert Settings().anonymized_telemetry is False


def test_every_python_of_the_venv_starts_with_telemetry_off():
    "The .pth guard written by `make install` covers tools started without the Makefile's environment."
    env = {k: v for k, v in os.environ.items() if k not in KEYS}
    out = subprocess.run([sys.executable, "-c", "import os; print(os.environ.get('PLOOMBER_STATS_ENABLED'))"],
                         env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert out == "false", "run `make install` (it writes lab2prod_telemetry_off.pth)"
