"""Build the Flask evaluation corpus from Debian's ``python-flask-doc`` package.

The package (version 2.2.2-3, Debian 12) ships Flask's Sphinx-built HTML manual
under ``/usr/share/doc/python-flask-doc/html``. If that folder is installed it
is used as is; otherwise the package is downloaded with ``apt-get download``
into a cache folder (``$XDG_CACHE_HOME/lab2prod/debs``, default
``~/.cache/lab2prod/debs``), its SHA-256 is checked, and it is unpacked there
with ``dpkg-deb -x`` (no root needed).

Every HTML page is then copied byte for byte, keeping its relative sub-path,
to ``OUT_DIR``: the pages keep their Sphinx navigation, sidebars, search box
and footers. Left out are the assets (``_static``, ``_sources``, ``_images``
and any css, js or image file) and the pages Sphinx generates without a source
document (``genindex.html``, ``search.html``, ``py-modindex.html`` and the
theme's ``404.html``). Symbolic links are followed only when their target is present;
dangling ones are skipped and reported. Pages are written in sorted order,
existing files are overwritten, and only a final count line is printed (plus a
note for any skipped link).

Usage::

    python make_corpus.py OUT_DIR
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

PACKAGE = "python-flask-doc"
VERSION = "2.2.2-3"
DEB_SHA256 = "0659f6a04b15fe3f907150cadc0399fe987c790e722e001b73f7e49fa5ecca15"
HTML_SUBDIR = Path("usr/share/doc") / PACKAGE / "html"
INSTALLED_HTML = Path("/") / HTML_SUBDIR
ASSET_DIRS = {"_static", "_sources", "_images", "css", "js", "images"}
GENERATED_PAGES = {"genindex.html", "search.html", "py-modindex.html", "404.html"}


def cache_dir() -> Path:
    """Return the folder that holds the downloaded and unpacked package."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "lab2prod" / "debs"


def sha256(path: Path) -> str:
    """Return the hex SHA-256 digest of a file."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def unpacked_html() -> Path:
    """Download and unpack the package into the cache if needed; return its HTML folder."""
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    deb = cache / f"{PACKAGE}_{VERSION}_all.deb"
    if not deb.is_file():
        done = subprocess.run(
            ["apt-get", "download", f"{PACKAGE}={VERSION}"], cwd=cache, capture_output=True, text=True
        )
        if done.returncode != 0:
            sys.exit(f"apt-get download {PACKAGE}={VERSION} failed:\n{done.stderr}")
    if sha256(deb) != DEB_SHA256:
        sys.exit(f"{deb.name}: SHA-256 mismatch, delete it and run again")
    root = cache / f"{PACKAGE}_{VERSION}"
    html = root / HTML_SUBDIR
    if not (html / "index.html").is_file():
        subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    return html


def source_html() -> Path:
    """Return the package's HTML folder, installed or unpacked from the cache."""
    if (INSTALLED_HTML / "index.html").is_file():
        return INSTALLED_HTML
    return unpacked_html()


def pages(html: Path) -> tuple[list[Path], list[Path]]:
    """Return (document pages, dangling links) under ``html``, as sorted relative paths."""
    found, dangling = [], []
    for dirpath, dirnames, filenames in os.walk(html):
        dirnames[:] = sorted(d for d in dirnames if d not in ASSET_DIRS)
        for name in sorted(filenames):
            path = Path(dirpath) / name
            rel = path.relative_to(html)
            if not name.endswith(".html") or rel.as_posix() in GENERATED_PAGES:
                continue
            if not path.exists():  # a symbolic link into a package that is not here
                dangling.append(rel)
                continue
            found.append(rel)
    return sorted(found), sorted(dangling)


def main(out_dir: str | Path) -> int:
    """Copy every document page to ``out_dir`` and return the number of pages written."""
    out = Path(out_dir)
    html = source_html()
    found, dangling = pages(html)
    total = 0
    for rel in found:
        target = out / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(html / rel, target)  # follows links, copies the bytes unchanged
        total += target.stat().st_size
    for rel in dangling:
        print(f"skipped {rel}: link target not present", file=sys.stderr)
    print(f"wrote {len(found)} pages ({total / 1e6:.2f} MB) from {PACKAGE} {VERSION} to {out}")
    return len(found)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python make_corpus.py OUT_DIR")
    main(sys.argv[1])
