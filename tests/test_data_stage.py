"The data stage on hostile folders: every input file is kept or rejected with a reason, never a bare traceback."
import json
import os
from pathlib import Path

import pandas as pd
import pytest
from conftest import run

from lab2prod.core import read_jsonl
from lab2prod.data import ingest_corpus, run_data_stage

MD = "# {title}\n\n## Section\n\n" + " ".join(f"Sentence {{i}}-{n}: the scheduler handles queue {n} on node {{i}}." for n in range(30))


def make_hostile(root: Path) -> dict[str, str]:
    "A folder with one file of each awkward kind; returns the expected fate of each (kept or a reason fragment)."
    (root / "nested" / "deeper").mkdir(parents=True)
    (root / "a.md").write_text(MD.format(title="A", i=1))
    (root / "nested" / "deeper" / "b.md").write_text(MD.format(title="B", i=2))
    (root / "copy-of-a.md").write_text(MD.format(title="A", i=1))
    (root / "near-a.md").write_text(MD.format(title="A", i=1) + "\n\nUpdated.")
    (root / "latin.txt").write_bytes(("Caf\xe9 notes: " + "r\xe9sum\xe9 of the queue design. " * 20).encode("latin-1"))
    (root / "utf16.txt").write_bytes(("UTF-16 notes. " + "Workers poll every five seconds. " * 20).encode("utf-16"))
    (root / "page.html").write_text("<html><nav>menu</nav><h1>Page</h1><p>" + "HTML body text about workers. " * 20 + "</p></html>")
    (root / "empty.md").write_text("")
    (root / "blank.md").write_text("   \n\n  ")
    (root / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))
    (root / "binary.txt").write_bytes(b"abc\x00\x01\x02" * 50)
    (root / "table.xlsx").write_bytes(b"PK\x03\x04" + bytes(100))
    (root / "broken.pdf").write_bytes(b"%PDF-1.4 not really a pdf")
    os.symlink(root / "nested", root / "nested" / "deeper" / "loop")  # a symlink loop to a folder
    os.symlink(root / "missing.md", root / "dangling.md")
    return {"a.md": "kept", "nested/deeper/b.md": "kept", "latin.txt": "kept", "utf16.txt": "kept", "page.html": "kept",
            "copy-of-a.md": "exact duplicate of a.md", "near-a.md": "near-duplicate of a.md", "empty.md": "empty file",
            "blank.md": "too short", "image.png": "unsupported file type", "binary.txt": "binary content",
            "table.xlsx": "unsupported file type", "broken.pdf": "unreadable PDF", "dangling.md": "broken symbolic link",
            "nested/deeper/loop": "symbolic link to a folder"}


def test_every_file_is_accounted_for(tmp_path):
    expected = make_hostile(tmp_path)
    docs, rejected, info = ingest_corpus(tmp_path)
    kept = {d.source for d in docs}
    reasons = {r.source: r.reason for r in rejected}
    assert kept | set(reasons) == set(expected) and not kept & set(reasons)
    for source, fate in expected.items():
        if fate == "kept":
            assert source in kept, (source, reasons.get(source))
        else:
            assert fate in reasons.get(source, ""), (source, reasons.get(source))
    latin = next(d for d in docs if d.source == "latin.txt")
    assert "Café" in latin.text and latin.encoding in ("cp1252", "latin-1")
    html = next(d for d in docs if d.source == "page.html")
    assert "menu" not in html.text and html.text.startswith("# Page")


def test_pipeline_task_on_a_hostile_folder(tmp_path):
    corpus, out = tmp_path / "corpus", tmp_path / "out"
    corpus.mkdir()
    expected = make_hostile(corpus)
    run(["ploomber", "build", "--partially", "data", "--env--corpus_dir", str(corpus), "--env--artifacts_dir", str(out),
         "--env--profile", "default"])
    chunks = pd.read_parquet(out / "data" / "chunks.parquet")
    rejected = read_jsonl(out / "data" / "rejected.jsonl")
    assert set(chunks.source) | {r["source"] for r in rejected} == set(expected)
    assert all(r["reason"] for r in rejected)
    stats = json.loads((out / "data" / "stats.json").read_text())
    assert stats["files_seen"] == len(expected) and stats["documents"] == 5


@pytest.mark.parametrize("make, message", [
    (lambda p: None, "does not exist"),
    (lambda p: p.mkdir(), "no usable document"),
    (lambda p: (p.mkdir(), (p / "x.bin").write_bytes(bytes(300)), (p / "y.png").write_bytes(bytes(30))),
     "2 file.s. rejected .x.bin: unsupported file type"),
])
def test_nothing_usable_is_a_clear_error(tmp_path, make, message):
    corpus = tmp_path / "corpus"
    make(corpus)
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        run_data_stage(corpus_dir=str(corpus), artifacts_dir=str(tmp_path / "out"), profile="default")
    # a failed run writes no product (the last good run's stay); the reasons are in the error and the log
    assert not (tmp_path / "out" / "data" / "rejected.jsonl").exists()


def test_a_large_text_file_is_ingested(tmp_path):
    line = "Workers lease jobs from the queue and renew the lease every ten seconds while they run.\n"
    (tmp_path / "big.txt").write_text(line * (50 * 2**20 // len(line)))  # 50 MB
    docs, rejected, _ = ingest_corpus(tmp_path)
    assert [d.source for d in docs] == ["big.txt"] and not rejected


def test_chunk_ids_are_stable_and_local(tmp_path):
    "Editing one document changes only that document's chunk ids; the corpus hash follows the content."
    corpus = tmp_path / "c"
    corpus.mkdir()
    for i in range(3):
        (corpus / f"d{i}.md").write_text(MD.format(title=f"D{i}", i=i))
    run_data_stage(corpus_dir=str(corpus), artifacts_dir=str(tmp_path / "o1"), profile="default")
    run_data_stage(corpus_dir=str(corpus), artifacts_dir=str(tmp_path / "o2"), profile="default")
    (corpus / "d1.md").write_text(MD.format(title="D1 changed", i=1))
    run_data_stage(corpus_dir=str(corpus), artifacts_dir=str(tmp_path / "o3"), profile="default")
    ids = {k: pd.read_parquet(tmp_path / k / "data" / "chunks.parquet").groupby("source").chunk_id.apply(list).to_dict()
           for k in ("o1", "o2", "o3")}
    lin = {k: json.loads((tmp_path / k / "data" / "lineage.json").read_text())["inputs"]["corpus"]["sha256"] for k in ids}
    assert ids["o1"] == ids["o2"] and lin["o1"] == lin["o2"]
    assert ids["o3"]["d0.md"] == ids["o1"]["d0.md"] and ids["o3"]["d1.md"] != ids["o1"]["d1.md"]
    assert lin["o3"] != lin["o1"]


def minimal_pdf(lines: list[str]) -> bytes:
    "A one-page PDF with a real text layer (Helvetica), built by hand so the test needs no PDF library."
    stream = "BT /F1 12 Tf 72 720 Td 14 TL " + " ".join(f"({line}) '" for line in lines) + " ET"
    objs = ["<< /Type /Catalog /Pages 2 0 R >>", "<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
            "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R /Resources << /Font << /F1 5 0 R >> >> >>",
            f"<< /Length {len(stream)} >>\nstream\n{stream}\nendstream", "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
    out, offsets = "%PDF-1.4\n", []
    for i, o in enumerate(objs, 1):
        offsets.append(len(out))
        out += f"{i} 0 obj\n{o}\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objs) + 1}\n0000000000 65535 f \n" + "".join(f"{o:010d} 00000 n \n" for o in offsets)
    out += f"trailer\n<< /Size {len(objs) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n"
    return out.encode("latin-1")


def test_pdf_text_layer_is_ingested(tmp_path):
    (tmp_path / "manual.pdf").write_bytes(minimal_pdf(["Halyard operations manual.", "Backups run nightly at 02:00 UTC."]))
    docs, rejected, _ = ingest_corpus(tmp_path)
    assert not rejected and docs[0].format == "pdf" and "Backups run nightly at 02:00 UTC." in docs[0].text


def test_a_file_that_vanishes_while_read_is_rejected(tmp_path, monkeypatch):
    import lab2prod.data as data
    (tmp_path / "stays.md").write_text(MD.format(title="Stays", i=1))
    real = data.list_files
    monkeypatch.setattr(data, "list_files", lambda d: real(d) + [d / "gone.md"])  # listed, then deleted
    docs, rejected, _ = data.ingest_corpus(tmp_path)
    assert [d.source for d in docs] == ["stays.md"]
    assert rejected[0].source == "gone.md" and rejected[0].reason.startswith("unreadable")


def test_boilerplate_and_unicode_are_cleaned(tmp_path):
    for i in range(6):
        (tmp_path / f"d{i}.md").write_text(MD.format(title=f"D{i}", i=i) + "\n\nＣｏｐｙｒｉｇｈｔ 2026 Example Corp. All rights reserved.\n")
    docs, _, info = ingest_corpus(tmp_path)
    assert info["boilerplate_lines"] == ["Copyright 2026 Example Corp. All rights reserved."]
    assert all("Copyright" not in d.text and "Ｃ" not in d.text for d in docs)


def test_contract_violations_name_file_record_and_field(tmp_path):
    golden = tmp_path / "golden.jsonl"
    golden.write_text('{"id": "g1", "question": "ok?", "answer": "yes", "source": "a.md"}\n{"id": "g2", "question": "q?", "source": "a.md"}\n')
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "a.md").write_text(MD.format(title="A", i=1))
    with pytest.raises(ValueError, match=r"golden.jsonl: record 2 \(g2\): field 'answer': Field required"):
        run_data_stage(corpus_dir=str(tmp_path / "c"), golden_path=str(golden), artifacts_dir=str(tmp_path / "o"))


def test_chunks_respect_headings_and_the_token_budget(tmp_path):
    from lab2prod.data import TokenCounter
    (tmp_path / "guide.md").write_text("# Guide\n\n## Install\n\n" + "Install it. " * 300 + "\n\n### Linux\n\nUse apt.\n")
    run_data_stage(corpus_dir=str(tmp_path), artifacts_dir=str(tmp_path / "o"), profile="default")
    df = pd.read_parquet(tmp_path / "o" / "data" / "chunks.parquet")
    assert set(df.heading) == {"Guide > Install", "Guide > Install > Linux"}
    counter = TokenCounter.for_model()
    assert all(counter.count(f"{h}\n{t}") == n <= 200 for h, t, n in zip(df.heading, df.text, df.n_tokens))
