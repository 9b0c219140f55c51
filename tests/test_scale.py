"""Scale-out across processes: the smoke pipeline tracked by an MLflow server whose store is PostgreSQL and whose
artifacts are in S3 (SeaweedFS), and the corpus and artifacts pushed to an S3 DVC remote and pulled into a fresh clone."""
import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import BIN, ROOT, run
from stack import S3_KEYS, missing_parts

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def live_stack(stack):
    if stack is None:
        pytest.skip(f"the scale-out stack needs {', '.join(missing_parts())}; .ci/run installs both")
    return stack


def sql(db_uri: str, query: str) -> list[tuple]:
    import psycopg
    with psycopg.connect(db_uri.replace("postgresql+psycopg://", "postgresql://")) as conn:
        return conn.execute(query).fetchall()


def s3_keys(stack: dict, prefix: str) -> list[str]:
    import boto3
    s3 = boto3.client("s3", endpoint_url=stack["s3"], region_name="us-east-1",
                      aws_access_key_id=S3_KEYS["AWS_ACCESS_KEY_ID"], aws_secret_access_key=S3_KEYS["AWS_SECRET_ACCESS_KEY"])
    keys = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=stack["bucket"], Prefix=prefix):
        keys += [o["Key"] for o in page.get("Contents", [])]
    return keys


def test_pipeline_runs_registry_prompts_and_artifacts_land_in_postgres_and_s3(smoke_run, live_stack):
    """Pointed at the server by `MLFLOW_TRACKING_URI` alone, the whole smoke pipeline keeps nothing in a local SQLite
    file: its stage runs, the registered adapter with its `champion` alias and the prompt are rows in PostgreSQL, and
    the adapter and the archived reports are objects in the S3 bucket."""
    db = live_stack["db_uri"]
    assert not (smoke_run["artifacts"] / "mlflow.db").exists(), "a task fell back to the local SQLite store"
    names = {r[0] for r in sql(db, "SELECT name FROM runs")}
    assert {"index", "finetune", "evaluate", "pipeline-run"} <= names, names
    models = {r[0] for r in sql(db, "SELECT name FROM registered_models")}
    assert {"lab2prod-adapter", "lab2prod-rag-system"} <= models, models
    prompts = sql(db, "SELECT name FROM registered_model_tags WHERE key = 'mlflow.prompt.is_prompt' AND value = 'true'")
    assert ("lab2prod-rag-system",) in prompts, prompts
    aliases = dict(sql(db, "SELECT alias, version FROM registered_model_aliases WHERE name = 'lab2prod-adapter'"))
    assert aliases.get("champion") == 1, aliases
    keys = s3_keys(live_stack, "mlartifacts/")
    assert any(k.endswith("adapter/adapter_model.safetensors") for k in keys), keys[:20]
    assert any("/archive/" in k and k.endswith(".html") for k in keys), keys[:20]


def file_hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_dvc_s3_remote_round_trip(smoke_run, live_stack, tmp_path):
    """`lab2prod remote` points DVC at an S3 bucket in one command; the pipeline's products (and the corpus they were
    built from) are pushed there, and a fresh clone pulls the same bytes."""
    env = {**S3_KEYS, "DVC_NO_ANALYTICS": "1"}
    work = tmp_path / "work"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(work)], check=True)
    for out in ("data", "index", "guard", "model", "eval", "reports", "runs"):  # the stage outs dvc.yaml declares
        shutil.copytree(smoke_run["artifacts"] / out, work / "artifacts" / out)
    url = f"s3://{live_stack['bucket']}/dvc"
    run(["lab2prod", "remote", url, "--endpoint-url", live_stack["s3"], "--root", str(work)], env=env)
    git = ["git", "-C", str(work), "-c", "user.name=ci", "-c", "user.email=ci@localhost"]
    subprocess.run([str(BIN / "dvc"), "commit", "-f", "-q", "pipeline"], cwd=work, check=True, env=env_of(env))
    push = subprocess.run([str(BIN / "dvc"), "push", "-q"], cwd=work, env=env_of(env), capture_output=True, text=True)
    assert push.returncode == 0, push.stderr[-3000:]
    subprocess.run([*git, "add", "dvc.lock", ".dvc/config"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "products of the smoke run"], check=True)
    assert s3_keys(live_stack, "dvc/"), "nothing reached the bucket"

    fresh = tmp_path / "fresh"
    subprocess.run(["git", "clone", "-q", str(work), str(fresh)], check=True)
    pull = subprocess.run([str(BIN / "dvc"), "pull", "-q"], cwd=fresh, env=env_of(env), capture_output=True, text=True)
    assert pull.returncode == 0, pull.stderr[-3000:]
    for out in ("data", "model", "index"):
        assert file_hashes(fresh / "artifacts" / out) == file_hashes(work / "artifacts" / out), out


def env_of(extra: dict) -> dict:
    import os
    return {**os.environ, **extra}


def test_a_task_pod_pulls_its_upstream_and_pushes_its_products_through_s3(live_stack, tmp_path):
    """`lab2prod pod data` in one empty artifacts folder runs the data task and pushes its products to the S3 store;
    another empty folder (the index task's pod) pulls the same bytes; the guard task's pod stops before running,
    naming the task that has not pushed."""
    from lab2prod.core import dir_hash, pipeline_products
    store = f"s3://{live_stack['bucket']}/pods"
    env = {**S3_KEYS, "AWS_ENDPOINT_URL": live_stack["s3"], "LAB2PROD_OBJECT_STORE": store}
    a, b = tmp_path / "pod-a", tmp_path / "pod-b"
    out = run(["lab2prod", "pod", "data", "--artifacts", str(a), "--env", "profile=smoke"], env=env).stdout
    assert "pushed" in out and s3_keys(live_stack, "pods/data/"), out
    code = f"from lab2prod.scale import pull_upstream; print(len(pull_upstream('index', {str(b)!r}, {store!r})))"
    run(["python", "-c", code], env=env)
    for path in pipeline_products(a)["data"].values():
        rel = Path(path).relative_to(a)
        assert dir_hash(b / rel) == dir_hash(path), rel
    refused = run(["lab2prod", "pod", "guard", "--artifacts", str(b)], env=env, check=False)
    assert refused.returncode == 1 and "'index' (upstream of 'guard') has not pushed it" in refused.stderr, refused.stderr


def test_exported_workflows_are_current_and_valid(tmp_path):
    """`lab2prod export` regenerates what deploy/ holds (so the committed specs follow the pipeline); the Argo Workflow
    passes Argo's schema (hera's models), with one task per notebook and Ploomber's dependencies; the Airflow DAG
    compiles and lists the same tasks."""
    import ast
    import json

    import yaml
    from hera.workflows.models import Workflow

    from lab2prod.scale import task_upstream
    upstream = task_upstream()
    for target in ("argo", "airflow"):
        run(["lab2prod", "export", target, "--image", "lab2prod:latest", "--out", str(tmp_path / target)])
        for f in (tmp_path / target).iterdir():
            assert f.read_text() == (ROOT / "deploy" / target / f.name).read_text(), f"deploy/{target}/{f.name} is stale"
    argo = yaml.safe_load((tmp_path / "argo" / "workflow.yaml").read_text())
    Workflow.model_validate(argo)
    tasks = {t["name"]: t for t in argo["spec"]["templates"][-1]["dag"]["tasks"]}
    assert {n: t.get("dependencies", []) for n, t in tasks.items()} == upstream
    gpu = {t["name"] for t in tasks.values() if t["template"] == "run-task-gpu"}
    assert gpu == {"finetune", "engine", "evaluate"}, gpu
    ast.parse((tmp_path / "airflow" / "lab2prod_dag.py").read_text())
    listed = json.loads((tmp_path / "airflow" / "lab2prod.json").read_text())["tasks"]
    assert {t["name"]: t["upstream"] for t in listed} == upstream


def test_kubernetes_manifests_validate_against_the_official_schemas():
    """deploy/k8s passes the Kubernetes 1.37 JSON schemas in strict mode (no unknown field); the Deployment asks for a
    GPU, probes /readyz and /livez, limits memory; the autoscaler targets it on the service's own in-flight metric."""
    import kubernetes_validate
    import yaml
    docs = [d for f in sorted((ROOT / "deploy" / "k8s").glob("*.yaml")) for d in yaml.safe_load_all(f.read_text())]
    for d in docs:
        kubernetes_validate.validate(d, "1.37.0", strict=True)
    kinds = {d["kind"]: d for d in docs}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PersistentVolumeClaim"} <= set(kinds)
    pod = kinds["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    assert pod["resources"]["limits"]["nvidia.com/gpu"] == "1" and pod["resources"]["limits"]["memory"]
    assert pod["readinessProbe"]["httpGet"]["path"] == "/readyz" and pod["livenessProbe"]["httpGet"]["path"] == "/livez"
    hpa = kinds["HorizontalPodAutoscaler"]["spec"]
    assert hpa["scaleTargetRef"]["name"] == kinds["Deployment"]["metadata"]["name"]
    assert hpa["metrics"][0]["pods"]["metric"]["name"] == "lab2prod_generations_in_flight"  # test_serving checks it exists
    bad = {**kinds["Deployment"], "spec": {**kinds["Deployment"]["spec"], "replica": 2}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, "1.37.0", strict=True)


def test_accelerate_configs_launch_as_accelerate_reads_them(monkeypatch):
    """Each deploy/accelerate configuration loads with accelerate's own config class, and its launcher turns it into
    the environment a DDP or FSDP run reads: the FSDP one builds FSDP2's plugin with per-layer wrapping."""
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_multi_gpu_env
    configs = sorted((ROOT / "deploy" / "accelerate").glob("*.yaml"))
    assert {c.name for c in configs} >= {"cpu_ddp_2proc.yaml", "gpu_ddp_1node.yaml", "gpu_ddp_multinode.yaml",
                                         "gpu_fsdp_multinode.yaml"}
    for path in configs:
        cfg = load_config_from_file(str(path))
        assert cfg.num_processes >= 2, path.name
        if cfg.distributed_type.value in ("MULTI_GPU", "FSDP"):
            args, _, _ = _validate_launch_command(launch_command_parser().parse_args(["--config_file", str(path), "x.py"]))
            env = prepare_multi_gpu_env(args)
            assert env.get("ACCELERATE_USE_FSDP") == ("true" if cfg.distributed_type.value == "FSDP" else None), path.name
            assert env["ACCELERATE_MIXED_PRECISION"] == cfg.mixed_precision, path.name
            if cfg.distributed_type.value == "FSDP":
                for k, v in env.items():
                    monkeypatch.setenv(k, v)
                from accelerate.utils import FullyShardedDataParallelPlugin
                plugin = FullyShardedDataParallelPlugin()
                assert plugin.fsdp_version == 2 and plugin.auto_wrap_policy.__name__ == "transformer_auto_wrap_policy"


def test_the_bento_image_starts_from_cuda(smoke_run):
    "The Bento the package task built carries a Dockerfile on NVIDIA's CUDA runtime (bentofile.yaml's cuda_version)."
    import json

    from lab2prod.core import stage_products
    bento = json.loads(Path(stage_products("package", smoke_run["artifacts"])["bento"]).read_text())
    dockerfile = (Path(bento["path"]) / "env" / "docker" / "Dockerfile").read_text()
    assert "FROM nvidia/cuda:12.6" in dockerfile, dockerfile[:600]
