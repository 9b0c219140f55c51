"""The LLM-judge plumbing against a real OpenAI-compatible server on loopback: llama.cpp's server with the bundled
model, asked through the `openai` client with the rubric file and the JSON schema of `JudgeScore`."""
from pathlib import Path

import pytest

from lab2prod.core import resolve_model
from lab2prod.engine import find_llama_tool, start_llama_server
from lab2prod.evaluate import JudgeScore, judge_agreement, judge_answer, open_judge
from lab2prod.rag import load_prompt

pytestmark = pytest.mark.skipif(find_llama_tool("llama-server") is None,
                                reason="llama.cpp's server is not installed (make install builds it)")

ROWS = [("Which port does the web UI listen on?", "The web UI listens on port 8470 by default.",
         "It listens on port 8470.", "8470"),
        ("Which port does the web UI listen on?", "The web UI listens on port 8470 by default.",
         "Bananas are yellow.", "8470"),
        ("How many retries does a job get by default?", "A failed job is retried 3 times by default.",
         "3 times.", "Three retries.")]


def test_judge_scores_through_an_openai_compatible_server():
    spec = resolve_model("llm")
    server = start_llama_server(Path(spec.location) / spec.gguf_file, parallel=1, ctx_per_slot=2048)
    try:
        client, started = open_judge(f"{server.url}/v1")
        assert started is None  # a URL: nothing is started for it
        rubric = load_prompt("judge_rubric")
        scores = [judge_answer(client, "judge", rubric.text, q, c, a, r) for q, c, a, r in ROWS]
    finally:
        server.close()
    # the server constrains its reply to the schema, so every answer parses into a valid score
    assert all(isinstance(s, JudgeScore) for s in scores), scores
    assert all(1 <= s.relevance <= 5 and 1 <= s.faithfulness <= 5 for s in scores)
    # agreement is computed (or None when the judge gave one score to all), never an error
    value = judge_agreement([s.relevance for s in scores], [1.0, 0.0, 1.0])
    assert value is None or -1.0 <= value <= 1.0


def test_a_judge_that_is_neither_url_nor_file_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither an http"):
        open_judge(str(tmp_path / "missing.gguf"))
