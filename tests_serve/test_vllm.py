"""Serve the embedded base and the three demo adapters with vLLM (CPU build), route held-out prompts
through RoutedClient, and check each adapter's behaviour with the same checks as `make evaluate`.

Held-out prompts are picked where the in-process PEFT model passes the check (and, first, where the
router chooses the right adapter), so a failure here points at serving, not at the adapters.
Set LORA_SERVE_ADAPTERS to a folder with lora_json/, lora_coding/, lora_support/ to serve other adapters.
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
from lora_helpers.course import serve_local
from lora_helpers.shipped import BEHAVIOURS, demo_sources, load_examples
from lora_helpers.errors import AdapterNotServedError
from lora_helpers.course.evaluate import CHECKS, MAX_NEW_TOKENS

PER_ADAPTER = 2        # held-out prompts per adapter sent to the server
CHUNK = 4              # in-process candidates generated at a time, until PER_ADAPTER pass
START_TIMEOUT_S = 600  # the CPU build starts in ~30-60 s on an idle machine, minutes on a busy one
MAX_TOKENS = max(MAX_NEW_TOKENS.values())


def sources() -> dict[str, Path]:
    found = demo_sources(os.environ.get("LORA_SERVE_ADAPTERS"))
    missing = [str(p) for p in found.values() if not (p / "adapter_config.json").exists()]
    if missing:
        pytest.fail(f"Adapters missing: {missing}. Train them with `make train` (or set LORA_SERVE_ADAPTERS).")
    return found


@pytest.fixture(scope="module")
def router():
    return lh.make_router("semantic")


@pytest.fixture(scope="module")
def workload(router):
    """{adapter: [(prompt, routed, PEFT's reply)]}: held-out prompts the in-process PEFT model passes.

    Prompts the router sends to the right adapter come first (``routed``: the client routes them); when
    too few of those pass in-process, the others follow and are sent with ``adapters=`` explicitly.
    """
    lh.setup()
    # One torch thread per core vLLM's worker would bind: on a busy 2-core machine two threads crawl.
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, (os.cpu_count() or 1) - 1))
    chosen = {}
    try:
        model, tok = lh.load_base("smollm2-135m")
        model = lh.load_adapters(model, sources())
        for name in BEHAVIOURS:
            prompts = [d["prompt"] for d in load_examples(name, "heldout")]
            order = [(p, True) for p in prompts if router.route(p) == name]
            order += [(p, False) for p in prompts if router.route(p) != name]
            chosen[name] = []
            for i in range(0, len(order), CHUNK):
                chunk = order[i:i + CHUNK]
                replies = lh.generate(model, tok, [p for p, _ in chunk], adapter=name, max_new_tokens=MAX_TOKENS)
                chosen[name] += [(p, routed, r) for (p, routed), r in zip(chunk, replies) if CHECKS[name](r)]
                if len(chosen[name]) >= PER_ADAPTER:
                    break
            chosen[name] = chosen[name][:PER_ADAPTER]
    finally:
        torch.set_num_threads(threads)
    del model
    gc.collect()
    return chosen


@pytest.fixture(scope="module")
def server(workload, tmp_path_factory):
    """vLLM on a free 127.0.0.1 port with the three adapters; started after the PEFT run, stopped at the end."""
    cmd = serve.vllm_command("smollm2-135m", sources(), port=serve_local.free_port(), program=serve_local.vllm_program(),
                             dtype="float32", max_model_len=1024)
    log = tmp_path_factory.mktemp("vllm") / "server.log"
    with serve_local.start_server(cmd, timeout=START_TIMEOUT_S, log_path=log) as s:
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
    items = [(name, *item) for name, picked in workload.items() for item in picked]
    t0 = time.perf_counter()
    pairs = client.chat_many([p for _, p, _, _ in items],
                             adapters=[None if routed else n for n, _, routed, _ in items], max_tokens=MAX_TOKENS)
    took = time.perf_counter() - t0
    same = sum(reply == peft for (*_, peft), (_, reply) in zip(items, pairs))
    print(f"\n{len(pairs)} requests ({sum(i[2] for i in items)} routed) answered in {took:.1f} s; "
          f"{same} replies identical to in-process PEFT")
    failures = [f"[{name}] in-process PEFT passes none of the {len(load_examples(name, 'heldout'))} held-out "
                "prompts, so its serving cannot be checked (see `make evaluate`)"
                for name, picked in workload.items() if not picked]
    for (name, prompt, routed, peft_reply), (adapter, reply) in zip(items, pairs):
        verdict = CHECKS[name](reply)
        if adapter != name or not verdict:
            failures.append(f"[{name}] {prompt!r} -> {'routed' if routed else 'sent'} to {adapter!r}; "
                            f"{verdict.reason or 'ok'}\nvLLM: {reply!r}\nPEFT: {peft_reply!r}")
    assert not failures, "\n\n".join(failures) + f"\n\nServer log tail:\n{server.log_tail()}"


def test_base_route_goes_to_the_base_model(client):
    adapter, reply = client.chat(load_examples("json", "heldout")[0]["prompt"], adapter="base", max_tokens=48)
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
