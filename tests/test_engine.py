"The generation engines: the served engine keeps the adapter and agrees with the merged reference, each backend can be forced, the llama.cpp server survives a crash."
import asyncio
import os
import signal
import time

import pytest

from lab2prod.core import run_sync
from lab2prod.engine import (
    AGREEMENT_PROMPTS,
    TRANSFORMERS_MAX_BATCH,
    EngineError,
    PromptTooLong,
    TransformersEngine,
    common_prefix,
    load_engine,
    prepare_engine,
)

N_TOKENS = 16


@pytest.fixture(scope="module")
def strong_adapter(tmp_path_factory):
    "A LoRA adapter on the bundled model whose effect is visible: B initialised randomly (training starts it at zero)."
    import torch
    from peft import LoraConfig, get_peft_model

    from lab2prod.core import load_model
    model, _ = load_model("llm")
    torch.manual_seed(0)
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], lora_dropout=0.0))
    for name, p in peft_model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.05)
    out = tmp_path_factory.mktemp("adapter")
    peft_model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def engine_dir(strong_adapter, tmp_path_factory):
    d = tmp_path_factory.mktemp("engine")
    prepare_engine(d, "bundled", strong_adapter, adapter_version="test/1")
    return d


def greedy_tokens(engine, tok, prompts=AGREEMENT_PROMPTS, n=N_TOKENS) -> list[list[int]]:
    gens = engine.generate([[{"role": "user", "content": p}] for p in prompts], n)
    return [tok(g.text)["input_ids"][:n] for g in gens]


def test_served_engine_keeps_the_adapter_and_agrees_with_the_merged_model(engine_dir, strong_adapter):
    """llama.cpp (the base in 8-bit Q8_0, the adapter applied at run time) against transformers with the adapter merged
    (fp32, from the same bundled 4-bit file): measured here, 4 of 6 prompts identical over 16 greedy tokens, shared
    prefixes 16/10/16/16/13/7 (a 4-bit file served as is gave 5 of 6, in F16 6 of 6: Q8_0 re-rounds the weights and
    llama.cpp quantizes activations to 8 bits, so an exact match is not guaranteed; Q8_0 is served for its speed,
    benchmarks/README.md). The adapter must matter: the reference with it differs from the one without."""
    served = load_engine(engine_dir)
    try:
        assert served.name == "llama.cpp" and served.describe()["lora"] is True
        merged = TransformersEngine.load("bundled", strong_adapter, device="cpu")
        base = TransformersEngine.load("bundled", None, device="cpu")
        tok = merged.tokenizer
        ours, ref, without = greedy_tokens(served, tok), greedy_tokens(merged, tok), greedy_tokens(base, tok)
        with served.without_adapter():  # the evaluation's base-model comparison: LoRA scaled to 0 per request
            off = greedy_tokens(served, tok)
        assert greedy_tokens(served, tok) == ours  # and the adapter is back after the block
    finally:
        served.close()
    changed = [i for i, (a, b) in enumerate(zip(ref, without)) if a != b]
    assert len(changed) >= 2, "the test adapter must change the model's answers"
    identical = sum(a == b for a, b in zip(ours, ref))
    print(f"identical over {N_TOKENS} tokens: {identical}/{len(ref)}; adapter changed {len(changed)} prompts")
    shared = [common_prefix(a, b) for a, b in zip(ours, ref)]
    # one prompt of slack below what was measured: another CPU's int8 kernels sum in another order
    assert identical >= 3 and sum(shared) / len(shared) >= 12, (identical, shared)
    # on the prompts the adapter changes, the served engine follows the adapted model, not the base one
    assert sum(common_prefix(ours[i], ref[i]) > common_prefix(ours[i], without[i]) for i in changed) >= len(changed) - 1
    # without the adapter, the same server answers as the base model does
    assert sum(a == b for a, b in zip(off, without)) >= 4, [common_prefix(a, b) for a, b in zip(off, without)]
    assert sum(common_prefix(off[i], without[i]) > common_prefix(off[i], ref[i]) for i in changed) >= len(changed) - 1


def test_each_backend_can_be_forced(engine_dir):
    "Whatever `auto` picks on this machine, the transformers reference and llama.cpp both run from the same folder."
    for backend in ("transformers", "llama.cpp"):
        eng = load_engine(engine_dir, backend=backend)
        try:
            assert eng.describe()["backend"] == backend
            g = eng.generate([[{"role": "user", "content": "Name one primary colour."}]], 8)[0]
            assert g.text and 0 < g.completion_tokens <= 8 and g.prompt_tokens > 5
            pieces = list(eng.stream([{"role": "user", "content": "Name one primary colour."}], 8))
            assert "".join(p for p in pieces if isinstance(p, str)).strip() == g.text, backend
            if backend == "transformers":  # concurrent requests are decoded as one batch, with the same answers
                msgs = [[{"role": "user", "content": q}] for q in ("Name one primary colour.", "Name one prime number.")]

                async def both():
                    return await asyncio.gather(*[eng.agenerate(m, 8) for m in msgs])

                assert [x.text for x in run_sync(both())] == [x.text for x in eng.generate(msgs, 8)]
                assert eng.describe()["max_batch_size"] == TRANSFORMERS_MAX_BATCH
        finally:
            eng.close()


def test_llama_server_comes_back_after_a_crash_and_long_prompts_are_refused(engine_dir):
    eng = load_engine(engine_dir, backend="llama.cpp")
    try:
        msgs = [{"role": "user", "content": "Say hello."}]
        first = eng.generate([msgs], 4)[0]
        os.kill(eng.server.proc.pid, signal.SIGKILL)
        eng.server.proc.wait(10)
        again = eng.generate([msgs], 4)[0]  # restarted on the next request (from a worker thread), same answer
        time.sleep(1.5)  # the thread that asked for the restart is gone by now: the server must outlive it
        assert again.text == first.text and eng.server.alive()
        with pytest.raises(PromptTooLong, match="lower k or max_new_tokens"):
            eng.generate([[{"role": "user", "content": "word " * 5000}]], 16)
        eng.server.args[0] = "/nonexistent/llama-server"  # a server that cannot come back fails clearly, not with a hang
        os.kill(eng.server.proc.pid, signal.SIGKILL)
        eng.server.proc.wait(10)
        with pytest.raises(EngineError, match="could not be restarted"):
            eng.generate([msgs], 4)
    finally:
        eng.close()


def test_server_dies_with_its_parent(engine_dir, tmp_path):
    "A worker killed with SIGKILL leaves no llama-server behind (PR_SET_PDEATHSIG)."
    import subprocess
    import sys
    code = ("import sys, time\nfrom lab2prod.engine import load_engine\n"
            "e = load_engine(sys.argv[1], backend='llama.cpp')\nprint(e.server.proc.pid, flush=True)\ntime.sleep(600)")
    p = subprocess.Popen([sys.executable, "-c", code, str(engine_dir)], stdout=subprocess.PIPE, text=True)
    child = int(p.stdout.readline())
    p.kill()
    p.wait(10)
    for _ in range(50):
        if not os.path.exists(f"/proc/{child}") or "zombie" in open(f"/proc/{child}/status").read():
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"llama-server {child} outlived its parent")


def test_bf16_training_precision_can_be_forced_on_a_cpu():
    "auto keeps fp32 on a CPU; bf16 can still be asked for and trains (a finite loss) on any CPU."
    import math

    from lab2prod.core import load_model
    from lab2prod.finetune import TrainConfig, add_lora, train_lora
    model, tok = load_model("llm")
    rows = [{"question": "What port does the UI use?", "context": "The UI listens on port 8470.", "answer": "Port 8470."}] * 2
    result = train_lora(add_lora(model, 4), tok, rows, TrainConfig(steps=1, batch=2, seq_len=64, precision="bf16"))
    assert result.precision == "bf16" and len(result.losses) == 1 and math.isfinite(result.losses[0])
