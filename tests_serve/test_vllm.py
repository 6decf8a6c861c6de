"""Serve the embedded base and the three demo adapters with vLLM (CPU build), route held-out prompts
through RoutedClient, and check each adapter's behaviour with the same checks as `make evaluate`.

Held-out prompts are picked where the router chooses the right adapter and the in-process PEFT model
passes the check, so a failure here points at serving, not at the adapters. Set LORA_SERVE_ADAPTERS to a
folder with lora_json/, lora_coding/, lora_support/ to serve other adapters.
"""
from __future__ import annotations

import gc
import os
import time
from pathlib import Path

import pytest
import torch

import lora_helpers as lh
from lora_helpers import serve
from lora_helpers.demo_data import BEHAVIOURS, load_examples
from lora_helpers.errors import AdapterNotServedError
from lora_helpers.evaluate import CHECKS, MAX_NEW_TOKENS

CANDIDATES = 3        # held-out prompts per adapter tried in-process
PER_ADAPTER = 2       # of those, how many go to the server
START_TIMEOUT_S = 600  # the CPU build starts in ~30 s on an idle machine, minutes on a busy one
MAX_TOKENS = max(MAX_NEW_TOKENS.values())


def sources() -> dict[str, Path]:
    folder = os.environ.get("LORA_SERVE_ADAPTERS")
    found = {n: Path(folder) / f"lora_{n}" for n in BEHAVIOURS} if folder else dict(lh.DEMO_ADAPTERS)
    missing = [str(p) for p in found.values() if not (p / "adapter_config.json").exists()]
    if missing:
        pytest.fail(f"Adapters missing: {missing}. Train them with `make train` (or set LORA_SERVE_ADAPTERS).")
    return found


@pytest.fixture(scope="module")
def router():
    return lh.make_router("semantic")


@pytest.fixture(scope="module")
def workload(router):
    """[(behaviour, prompt, PEFT's reply)] that the router routes right and PEFT passes, PER_ADAPTER each."""
    lh.setup()
    picked = []
    for name in BEHAVIOURS:
        prompts = [d["prompt"] for d in load_examples(name, "heldout")]
        picked += [(name, p) for p in prompts if router.route(p) == name][:CANDIDATES]
    # One torch thread per core vLLM's worker would bind: on a busy 2-core machine two threads crawl.
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, (os.cpu_count() or 1) - 1))
    try:
        model, tok = lh.load_base("smollm2-135m")
        model = lh.load_adapters(model, sources())
        replies = lh.generate(model, tok, [p for _, p in picked], adapter=[n for n, _ in picked],
                              max_new_tokens=MAX_TOKENS)
    finally:
        torch.set_num_threads(threads)
    del model
    gc.collect()
    chosen = []
    for name in BEHAVIOURS:
        ok = [(n, p, r) for (n, p), r in zip(picked, replies) if n == name and CHECKS[n](r)]
        if not ok:
            pytest.fail(f"In-process PEFT passes none of the {name} prompts tried; the adapter, not serving, "
                        f"is the problem (see `make evaluate`). Replies: {[r for (n, _), r in zip(picked, replies) if n == name]}")
        chosen += ok[:PER_ADAPTER]
    return chosen


@pytest.fixture(scope="module")
def server(workload, tmp_path_factory):
    """vLLM on a free 127.0.0.1 port with the three adapters; started after the PEFT run, stopped at the end."""
    cmd = serve.vllm_command("smollm2-135m", sources(), port=serve.free_port(), program=serve.vllm_program(),
                             dtype="float32", max_model_len=1024)
    log = tmp_path_factory.mktemp("vllm") / "server.log"
    with serve.start_server(cmd, timeout=START_TIMEOUT_S, log_path=log) as s:
        print(f"\nvLLM healthy after {s.start_s:.1f} s: {serve.shell_line(cmd)}")
        yield s


@pytest.fixture(scope="module")
def client(server, router):
    with lh.RoutedClient(server.base_url, router) as c:
        yield c


def test_serves_base_and_adapters(client):
    served = {m["id"]: m["parent"] for m in client.models()}
    base = "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert served == {base: None, **{n: base for n in BEHAVIOURS}}


def test_routed_replies_have_each_adapters_behaviour(client, workload, server):
    t0 = time.perf_counter()
    pairs = client.chat_many([p for _, p, _ in workload], max_tokens=MAX_TOKENS)
    took = time.perf_counter() - t0
    print(f"\n{len(pairs)} routed requests answered in {took:.1f} s")
    failures = []
    for (name, prompt, peft_reply), (adapter, reply) in zip(workload, pairs):
        verdict = CHECKS[name](reply)
        if adapter != name or not verdict:
            failures.append(f"[{name}] {prompt!r} -> routed to {adapter!r}; {verdict.reason or 'ok'}\n"
                            f"vLLM: {reply!r}\nPEFT: {peft_reply!r}")
    assert not failures, "\n\n".join(failures) + f"\n\nServer log tail:\n{server.log_tail()}"


def test_base_route_goes_to_the_base_model(client, workload):
    name, prompt, _ = workload[0]
    adapter, reply = client.chat(prompt, adapter="base", max_tokens=48)
    assert adapter == "base" and reply and client.base_model_name == "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_unknown_adapter_is_a_clear_error(server):
    class Legal:
        def route(self, text):
            return "legal"

    with lh.RoutedClient(server.base_url, Legal()) as c, pytest.raises(AdapterNotServedError) as e:
        c.chat("Draft a rental contract")
    assert isinstance(e.value, lh.AdapterError)
    msg = str(e.value)
    assert "`legal` does not exist" in msg and "json" in msg and "--lora-modules legal=" in msg
