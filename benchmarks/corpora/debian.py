"""A pinned Debian package fetched and unpacked into a per-user cache, without root (the corpora's shared source).

``apt-get download PACKAGE=VERSION`` into ``$XDG_CACHE_HOME/lab2prod/debs`` (default ``~/.cache/lab2prod/debs``),
optionally checked against a SHA-256, then ``dpkg-deb -x`` into ``<cache>/<PACKAGE>_<VERSION>``; both are reused
by later runs.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path


def cache_dir() -> Path:
    """The folder that keeps downloaded packages and their unpacked files."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "lab2prod" / "debs"


def sha256(path: Path) -> str:
    """The hex SHA-256 digest of a file."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def unpacked_package(package: str, version: str, ready: Path, expected_sha256: str | None = None) -> Path:
    """The unpacked tree of ``package`` at ``version``; ``ready`` (relative to it) existing means it is unpacked."""
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    tree = cache / f"{package}_{version}"
    if (tree / ready).exists():
        return tree
    deb = cache / f"{package}_{version.replace(':', '%3a')}_all.deb"
    if not deb.is_file():
        done = subprocess.run(["apt-get", "download", f"{package}={version}"], cwd=cache, capture_output=True, text=True)
        if done.returncode != 0 or not deb.is_file():
            sys.exit(f"apt-get download {package}={version} did not produce {deb.name}:\n{done.stderr}")
    if expected_sha256 and sha256(deb) != expected_sha256:
        sys.exit(f"{deb.name}: SHA-256 mismatch, delete it and run again")
    subprocess.run(["dpkg-deb", "-x", str(deb), str(tree)], check=True)
    return tree
