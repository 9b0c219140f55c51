"Contracts that users and other parts rely on: pipeline task names and products, env.yaml keys, notebook parameters."
import configparser
import json
import shutil
import subprocess

import yaml
from conftest import ROOT, run

from lab2prod.core import lock_pins, pipeline_env, pipeline_products, stage_products, write_environment_yml

TASKS = ["data", "index", "guard", "finetune", "engine", "evaluate", "package", "monitor"]


def pipeline() -> dict:
    return yaml.safe_load((ROOT / "pipeline.yaml").read_text())


def parameters_cell(nb_path) -> str:
    cells = [c for c in json.loads(nb_path.read_text())["cells"] if "parameters" in c["metadata"].get("tags", [])]
    assert len(cells) == 1, f"{nb_path.name}: expected one cell tagged 'parameters', found {len(cells)}"
    return "".join(cells[0]["source"])


def test_task_names_are_the_documented_ones():
    assert [t["name"] for t in pipeline()["tasks"]] == TASKS


def test_pipeline_products_match_the_python_api():
    "stage_io (used when a notebook runs on its own) reads exactly the paths Ploomber itself renders from pipeline.yaml."
    from ploomber.spec import DAGSpec
    spec = DAGSpec(str(ROOT / "pipeline.yaml"), env={**pipeline_env(), "artifacts_dir": "/x"}, lazy_import=True)
    dag = spec.to_dag()
    ours = pipeline_products("/x")
    assert list(ours) == TASKS
    for name in TASKS:
        rendered = {k: str(v) for k, v in dag[name].product.to_json_serializable().items()}
        assert rendered == ours[name] == stage_products(name, "/x"), name


def test_each_notebook_declares_its_upstream_and_parameters():
    env_keys = set(yaml.safe_load((ROOT / "env.yaml").read_text()))
    for task in pipeline()["tasks"]:
        src = parameters_cell(ROOT / task["source"])
        ns: dict = {}
        exec(src, ns)
        assert ns["product"] is None
        assert all(u in TASKS for u in ns["upstream"] or []), task["name"]
        for param in task.get("params", {}):
            assert param in ns, f"{task['source']} lacks parameter {param}"
        assert ns["profile"] == "smoke", "notebooks default to the tiny profile (nbdev_test, JupyterLab)"
        assert {v.strip("{}") for v in task.get("params", {}).values()} <= env_keys


def test_env_yaml_has_the_documented_keys():
    env = yaml.safe_load((ROOT / "env.yaml").read_text())
    assert {"corpus_dir", "artifacts_dir", "base_model", "embedding_model", "profile"} <= set(env)
    assert env["profile"] == "default"


def test_nbdev_clean_keeps_the_parameters_tag(tmp_path):
    "nbdev's cleaner strips cell metadata unless settings.ini allows tags; the tag is what papermill needs."
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "settings.ini")
    assert cfg["DEFAULT"]["lib_path"] == "pkg/lab2prod"
    nb = tmp_path / "01_data.ipynb"
    shutil.copy(ROOT / "nbs" / "01_data.ipynb", nb)
    run(["nbdev_clean", "--fname", str(nb)])
    assert "upstream = None" in parameters_cell(nb)


def test_environment_yml_matches_the_lock(tmp_path):
    "conda users get exactly the pip set: the committed environment.yml is the one the lock generates."
    fresh = write_environment_yml(ROOT / "requirements.lock", tmp_path / "environment.yml")
    assert (ROOT / "environment.yml").read_text() == fresh.read_text(), "run `make environment.yml`"
    pins = {line.strip().removeprefix("- ").strip() for line in (ROOT / "environment.yml").read_text().splitlines() if "==" in line}
    assert set(lock_pins(ROOT / "requirements.lock")) <= pins


def test_installed_versions_are_the_locked_ones():
    frozen = set(subprocess.run([str(ROOT / ".venv/bin/pip"), "freeze", "--exclude-editable"], capture_output=True,
                                text=True).stdout.split())
    missing = set(lock_pins(ROOT / "requirements.lock")) - frozen
    assert not missing, f"installed set differs from requirements.lock: {sorted(missing)[:10]}"
