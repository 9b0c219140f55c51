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

import os
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from debian import unpacked_package  # noqa: E402

PACKAGE = "python-flask-doc"
VERSION = "2.2.2-3"
DEB_SHA256 = "0659f6a04b15fe3f907150cadc0399fe987c790e722e001b73f7e49fa5ecca15"
HTML_SUBDIR = Path("usr/share/doc") / PACKAGE / "html"
INSTALLED_HTML = Path("/") / HTML_SUBDIR
ASSET_DIRS = {"_static", "_sources", "_images", "css", "js", "images"}
GENERATED_PAGES = {"genindex.html", "search.html", "py-modindex.html", "404.html"}


def unpacked_html() -> Path:
    """Download and unpack the package into the cache if needed; return its HTML folder."""
    return unpacked_package(PACKAGE, VERSION, HTML_SUBDIR / "index.html", DEB_SHA256) / HTML_SUBDIR


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
