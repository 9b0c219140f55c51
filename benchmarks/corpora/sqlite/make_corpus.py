"""Build the sqlite evaluation corpus from SQLite's HTML manual.

The manual ships in the Debian package ``sqlite3-doc`` (version pinned in
``VERSION``), which installs its pages under ``/usr/share/doc/sqlite3/``. If
that version is installed and every selected page is present there, the pages
are read from it; otherwise the package is fetched with
``apt-get download sqlite3-doc=VERSION`` into the cache folder
(``$XDG_CACHE_HOME/lab2prod/debs``, default ``~/.cache/lab2prod/debs``) and
unpacked there with ``dpkg-deb -x`` (no root needed).

The selected pages (``PAGES``, see README.md for the rule) are copied into
``OUT_DIR`` byte for byte, keeping their path relative to the manual's root.
Pages are written in sorted order, existing files are overwritten, and only a
final count line is printed.

Usage::

    python make_corpus.py OUT_DIR
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from debian import unpacked_package  # noqa: E402

PACKAGE = "sqlite3-doc"
VERSION = "3.40.1-2+deb12u2"
DOC_ROOT = "usr/share/doc/sqlite3"  # where the package puts the HTML manual

# SQL language reference: every per-statement and per-function page (lang_*.html;
# lang.html itself is the index of these and is not one of them), plus the pages
# on the language's types, constraints and functions.
SQL_LANGUAGE = (
    "lang_aggfunc.html", "lang_altertable.html", "lang_analyze.html", "lang_attach.html",
    "lang_comment.html", "lang_conflict.html", "lang_corefunc.html", "lang_createindex.html",
    "lang_createtable.html", "lang_createtrigger.html", "lang_createview.html",
    "lang_createvtab.html", "lang_datefunc.html", "lang_delete.html", "lang_detach.html",
    "lang_dropindex.html", "lang_droptable.html", "lang_droptrigger.html", "lang_dropview.html",
    "lang_explain.html", "lang_expr.html", "lang_indexedby.html", "lang_insert.html",
    "lang_keywords.html", "lang_mathfunc.html", "lang_naming.html", "lang_reindex.html",
    "lang_replace.html", "lang_returning.html", "lang_savepoint.html", "lang_select.html",
    "lang_transaction.html", "lang_update.html", "lang_upsert.html", "lang_vacuum.html",
    "lang_with.html",
    "windowfunctions.html", "rowvalue.html", "json1.html", "printf.html",
    "datatype3.html", "stricttables.html", "flextypegood.html", "floatingpoint.html",
    "gencol.html", "withoutrowid.html", "rowidtable.html", "autoinc.html", "foreignkeys.html",
    "nulls.html", "partialindex.html", "expridx.html", "schematab.html", "omitted.html",
    "quirks.html",
)
# Transactions, locking, journaling and storage.
TRANSACTIONS_AND_STORAGE = (
    "isolation.html", "atomiccommit.html", "lockingv3.html", "wal.html", "tempfiles.html",
    "inmemorydb.html", "mmap.html", "uri.html", "sharedcache.html", "threadsafe.html",
    "limits.html", "howtocorrupt.html", "useovernet.html",
)
QUERY_PLANNER = ("queryplanner.html", "optoverview.html", "queryplanner-ng.html", "eqp.html")
PRAGMAS = ("pragma.html",)
EXTENSIONS = (
    "fts5.html", "rtree.html", "csv.html", "series.html", "carray.html", "dbstat.html",
    "loadext.html",
)
C_INTERFACE = (
    "quickstart.html", "cintro.html", "rescode.html", "backup.html", "errlog.html",
    "appfunc.html", "deterministic.html", "unlock_notify.html",
)
TOOLS = ("cli.html", "sqldiff.html")
OVERVIEW = ("whentouse.html", "different.html", "faq.html")

PAGES = tuple(sorted(set(SQL_LANGUAGE + TRANSACTIONS_AND_STORAGE + QUERY_PLANNER + PRAGMAS
                         + EXTENSIONS + C_INTERFACE + TOOLS + OVERVIEW)))


def installed_root() -> Path | None:
    """The installed manual's folder, if the pinned version is installed with every page."""
    try:
        version = subprocess.run(["dpkg-query", "-W", "-f=${Version}", PACKAGE],
                                 capture_output=True, text=True, check=False).stdout.strip()
    except FileNotFoundError:
        return None
    if version != VERSION:
        return None
    for candidate in (Path("/usr/share/doc/sqlite3-doc"), Path("/") / DOC_ROOT):
        if all((candidate / page).is_file() for page in PAGES):
            return candidate
    return None


def unpacked_root() -> Path:
    """Download and unpack the pinned package into the cache (once); return the manual's folder."""
    root = unpacked_package(PACKAGE, VERSION, Path(DOC_ROOT) / PAGES[0]) / DOC_ROOT
    missing = [page for page in PAGES if not (root / page).is_file()]
    if missing:
        sys.exit(f"{len(missing)} selected page(s) not in the package, e.g. {missing[0]}")
    return root


def main(out_dir: str | Path) -> int:
    """Copy every selected page to ``out_dir`` and return the number of files written."""
    src = installed_root() or unpacked_root()
    out = Path(out_dir)
    total = 0
    for page in PAGES:
        data = (src / page).read_bytes()
        dest = out / page
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(data)
        total += len(data)
    print(f"wrote {len(PAGES)} pages ({total / 1e6:.1f} MB of HTML) to {out}")
    return len(PAGES)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python make_corpus.py OUT_DIR")
    main(sys.argv[1])
