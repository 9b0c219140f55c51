"""Build the pydoc evaluation corpus from the standard library.

The Python language reference topics ship with CPython as
``pydoc_data.topics.topics`` (topic name -> plain-text reference section).
This script writes each topic to ``OUT_DIR/<topic>.md`` as Markdown: the first
line is ``# <topic>``, followed by the topic text. Topics are written in sorted
order, existing files are overwritten, and only a final count line is printed.

Usage::

    python make_corpus.py OUT_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path
from pydoc_data.topics import topics


def render(name: str, text: str) -> str:
    """Return the Markdown document for one topic."""
    return f"# {name}\n\n{text.strip()}\n"


def main(out_dir: str | Path) -> int:
    """Write every topic to ``out_dir`` and return the number of files written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = sorted(topics)
    for name in names:
        (out / f"{name}.md").write_text(render(name, topics[name]), encoding="utf-8")
    print(f"wrote {len(names)} topics to {out}")
    return len(names)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python make_corpus.py OUT_DIR")
    main(sys.argv[1])
