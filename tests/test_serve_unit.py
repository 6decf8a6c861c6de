"""lora_helpers.serve without vLLM: the command line, and RoutedClient against a tiny fake
OpenAI-compatible server on 127.0.0.1 (the real vLLM run is in tests_serve/, `make test-serve`)."""
from __future__ import annotations

import json
import shlex
import sys
import time

from types import SimpleNamespace

import pytest
from http_scaffold import LocalServer, QuietHandler

import lora_helpers as lh
import lora_helpers.client
from lora_helpers import serve
from lora_helpers.course import serve_local
from lora_helpers.errors import AdapterError, AdapterNotFoundError, AdapterNotServedError, ServeError


def make_adapter(folder, r=8, **extra):
    folder.mkdir(parents=True)
    cfg = {"peft_type": "LORA", "r": r, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"], **extra}
    (folder / "adapter_config.json").write_text(json.dumps(cfg))
    return folder


# ----------------------------------------------------------------------------- the command
def test_rank_rounds_up_to_what_vllm_accepts():
    assert [serve.max_lora_rank([r]) for r in (1, 2, 8, 9, 16, 17, 33, 300, 512)] == \
        [1, 8, 8, 16, 16, 32, 64, 320, 512]
    assert serve.max_lora_rank([4, 24, 8]) == 32
    with pytest.raises(AdapterError, match="up to 512"):
        serve.max_lora_rank([1024])


def test_adapter_rank_reads_r_and_rank_pattern(tmp_path):
    assert serve.adapter_rank(make_adapter(tmp_path / "a", r=8)) == 8
    assert serve.adapter_rank(make_adapter(tmp_path / "b", r=8, rank_pattern={"q_proj": 48})) == 48
    with pytest.raises(AdapterNotFoundError, match="adapter_config.json"):
        serve.adapter_rank(tmp_path)


def test_vllm_command_for_local_base_and_adapters(tmp_path):
    base = tmp_path / "my base"
    base.mkdir()
    adapters = {"json": make_adapter(tmp_path / "lora_json", r=8), "support": make_adapter(tmp_path / "s", r=12)}
    cmd = serve.vllm_command(base, adapters, port=8123, max_model_len=1024, enforce_eager=True, dtype="float32",
                             skip_me=None, tensor_parallel_size=2)
    assert cmd[:3] == ["vllm", "serve", str(base.resolve())]
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1" and cmd[cmd.index("--port") + 1] == "8123"
    i = cmd.index("--lora-modules")
    assert cmd[i + 1:i + 3] == [f"json={adapters['json'].resolve()}", f"support={adapters['support'].resolve()}"]
    assert "--enable-lora" in cmd
    assert cmd[cmd.index("--max-lora-rank") + 1] == "16"
    assert cmd[cmd.index("--max-loras") + 1] == "2"
    assert cmd[cmd.index("--served-model-name") + 1] == "my base"
    assert cmd[cmd.index("--max-model-len") + 1] == "1024"
    assert cmd[cmd.index("--tensor-parallel-size") + 1] == "2"
    assert "--enforce-eager" in cmd and "--skip-me" not in cmd
    line = serve.shell_line(cmd)
    assert shlex.split(line) == cmd and "'" in line  # the space in the base folder is quoted
    assert serve.served_model_name(cmd) == "my base"


def test_vllm_command_embedded_base_and_overrides(tmp_path, monkeypatch):
    from lora_helpers import base as b
    monkeypatch.setattr(b, "embedded_folder", lambda: tmp_path / "converted")
    monkeypatch.setattr(b, "pick_device", lambda: "cpu")
    a = make_adapter(tmp_path / "a", r=64)
    for name in ("smollm2-135m", "auto", b.EMBEDDED_NAME):
        cmd = serve.vllm_command(name, {"json": a}, program="/x/bin/vllm", max_loras=4)
        assert cmd[:3] == ["/x/bin/vllm", "serve", str(tmp_path / "converted")]
        assert serve.served_model_name(cmd) == b.EMBEDDED_NAME
        assert cmd[cmd.index("--max-lora-rank") + 1] == "64" and cmd[cmd.index("--max-loras") + 1] == "4"
    module = serve.vllm_command("smollm2-135m", {"json": a}, program="/venv/bin/python3")
    assert module[:5] == ["/venv/bin/python3", "-m", "vllm.entrypoints.openai.api_server", "--model",
                          str(tmp_path / "converted")]
    assert serve.served_model_name(module) == b.EMBEDDED_NAME
    assert serve.served_model_name(["vllm", "serve", "x"]) == "x"
    plain = serve.vllm_command("owner/some-model", {})
    assert "--enable-lora" not in plain and "--max-lora-rank" not in plain
    assert serve.served_model_name(plain) == "owner/some-model"


# ----------------------------------------------------------------------------- presets: what vLLM serves
@pytest.fixture
def presets(tmp_path, monkeypatch):
    """The embedded cache faked as a folder, no LORA_HELPERS_BASE: name -> (model, served name, --quantization)."""
    from lora_helpers import base as b
    monkeypatch.setattr(b, "embedded_folder", lambda: tmp_path / "converted")
    monkeypatch.delenv("LORA_HELPERS_BASE", raising=False)

    def answer(name):
        cmd = serve.vllm_command(name, {})
        quantization = cmd[cmd.index("--quantization") + 1] if "--quantization" in cmd else None
        return cmd[2], serve.served_model_name(cmd), quantization

    return answer


def test_the_embedded_preset_serves_the_converted_folder_in_full_precision(presets, tmp_path):
    from lora_helpers import base as b
    assert presets("smollm2-135m") == (str(tmp_path / "converted"), b.EMBEDDED_NAME, None)


def test_the_4bit_embedded_preset_serves_the_converted_folder_quantized_by_bitsandbytes(presets, tmp_path):
    from lora_helpers import base as b
    assert presets("smollm2-135m-4bit") == (str(tmp_path / "converted"), b.EMBEDDED_NAME, "bitsandbytes")


def test_mistral_serves_the_ungated_nf4_build_with_bitsandbytes(presets):
    """Not the gated 14.5 GB repository: the ~4 GB build load_base("mistral-7b") loads, no token needed."""
    assert presets("mistral-7b") == ("unsloth/mistral-7b-instruct-v0.3-bnb-4bit",
                                     "unsloth/mistral-7b-instruct-v0.3-bnb-4bit", "bitsandbytes")


def test_the_official_mistral_serves_the_gated_repository_quantized_as_load_base_does(presets):
    official = "mistralai/Mistral-7B-Instruct-v0.3"
    assert presets("mistral-7b-official") == (official, official, "bitsandbytes")


def test_auto_serves_what_load_base_auto_loads(presets, monkeypatch, tmp_path):
    import torch
    assert presets("auto")[0] == str(tmp_path / "converted")  # this machine has no GPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert presets("auto") == presets("mistral-7b")  # a GPU: the ungated nf4 build
    monkeypatch.setenv("LORA_HELPERS_BASE", "smollm2-135m-4bit")
    assert presets("auto") == presets("smollm2-135m-4bit")
    mine = tmp_path / "my base"
    mine.mkdir()
    monkeypatch.setenv("LORA_HELPERS_BASE", str(mine))
    assert presets("auto") == (str(mine.resolve()), "my base", None)
    monkeypatch.setenv("LORA_HELPERS_BASE", "owner/some-model")
    assert presets("auto") == ("owner/some-model", "owner/some-model", None)
    monkeypatch.setenv("LORA_HELPERS_BASE", "no-such-preset")
    with pytest.raises(lh.BaseModelError, match="LORA_HELPERS_BASE.*smollm2-135m-4bit"):
        presets("auto")


def _what_load_base_loads(name, monkeypatch):
    """(folder or Hub id, nf4?, forced compute dtype) that load_base(name) hands to the loaders, on a faked GPU."""
    import torch
    from lora_helpers import base as b
    seen = []

    def record(source, quantized, compute=None):
        seen.append((str(source), quantized, compute))
        return SimpleNamespace(config=SimpleNamespace()), None

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(b, "_load_embedded", lambda device, dtype, **kw: record(b.embedded_folder(), False))
    monkeypatch.setattr(b, "_load_hub", lambda repo, device, dtype, token, **kw: record(repo, False))
    monkeypatch.setattr(b, "load_4bit", lambda source, device, token=None, compute=None: record(source, True, compute))
    monkeypatch.setattr(b, "load_prequantized_4bit", lambda source, device, token=None: record(source, True))
    b.load_base(name, device="cuda")
    assert len(seen) == 1, seen
    return seen[0]


def test_every_preset_serves_what_load_base_loads(presets, monkeypatch):
    """One table answers both: for each preset, vLLM gets the same folder or repository as load_base, quantized
    by bitsandbytes exactly when load_base loads it in nf4, in the compute dtype the preset fixes (if any)."""
    assert set(lh.PRESETS) >= {"smollm2-135m", "smollm2-135m-4bit", "mistral-7b", "mistral-7b-official"}
    for name in lh.PRESETS:
        source, quantized, compute = _what_load_base_loads(name, monkeypatch)
        model, _, how = presets(name)
        assert model == source and (how == "bitsandbytes") == quantized, name
        dtype = serve.vllm_command(name, {})
        assert (dtype[dtype.index("--dtype") + 1] if "--dtype" in dtype else None) == \
            (compute and str(compute).removeprefix("torch.")), name


def test_a_new_preset_is_one_entry_that_load_base_and_vllm_both_follow(presets, monkeypatch, tmp_path):
    """E.g. the embedded base in nf4 computing in fp16 (what a T4 computes): one entry, both answers follow."""
    import torch
    from lora_helpers import base as b
    monkeypatch.setitem(b.PRESETS, "embedded-nf4-fp16", b.Preset("the embedded base in nf4, fp16 compute",
                                                                  b.EMBEDDED_NAME, nf4="load", compute=torch.float16))
    assert _what_load_base_loads("embedded-nf4-fp16", monkeypatch) == (str(tmp_path / "converted"), True,
                                                                       torch.float16)
    cmd = serve.vllm_command("embedded-nf4-fp16", {})
    assert cmd[2] == str(tmp_path / "converted") and cmd[cmd.index("--dtype") + 1] == "float16"
    assert "embedded-nf4-fp16" in str(pytest.raises(lh.BaseModelError, b.load_base, "nope").value)
    with pytest.raises(ValueError, match="compute"):
        b.Preset("a stored nf4 build cannot change its compute dtype", "owner/x", nf4="stored", compute=torch.float16)


def test_a_loaded_4bit_model_is_served_quantized(tmp_path, monkeypatch):
    from lora_helpers import base as b
    monkeypatch.setattr(b, "embedded_folder", lambda: tmp_path / "converted")
    model = LoadedModel(b.EMBEDDED_NAME)
    assert "--quantization" not in serve.vllm_command(model, {})
    model.is_loaded_in_4bit = True  # what load_base("smollm2-135m-4bit") gives
    cmd = serve.vllm_command(model, {})
    assert cmd[2] == str(tmp_path / "converted") and cmd[cmd.index("--quantization") + 1] == "bitsandbytes"
    assert "--quantization" not in serve.vllm_command(model, {}, quantization=None)  # an option overrides it


def test_vllm_command_bad_input(tmp_path):
    a = make_adapter(tmp_path / "a")
    for bad in ("base", "a=b", "", "two words"):
        with pytest.raises(AdapterError, match="cannot be served"):
            serve.vllm_command(tmp_path, {bad: a})
    with pytest.raises(AdapterNotFoundError, match="max_lora_rank"):
        serve.vllm_command(tmp_path, {"json": "owner/lora_json"})
    cmd = serve.vllm_command(tmp_path, {"json": "owner/lora_json"}, max_lora_rank=16)
    assert "json=owner/lora_json" in cmd and cmd[cmd.index("--max-lora-rank") + 1] == "16"
    with pytest.raises(AdapterError, match="mapping"):
        serve.vllm_command(tmp_path, [a])


def test_public_names():
    assert lh.RoutedClient is serve.RoutedClient is lora_helpers.client.RoutedClient
    assert lh.vllm_command is serve.vllm_command and lh.shell_line is serve.shell_line
    assert issubclass(ServeError, AdapterError) and issubclass(AdapterNotServedError, AdapterNotFoundError)


# ----------------------------------------------------------------------------- a fake OpenAI-compatible server
class VLLMHandler(QuietHandler):
    def do_GET(self):
        fake = self.owner
        if self.path == "/v1/models":
            if fake.models_reply is not None:
                return self.send(200, fake.models_reply)
            data = [{"id": fake.base, "object": "model", "root": "/models/base", "parent": None}]
            data += [{"id": a, "object": "model", "root": f"/adapters/{a}", "parent": fake.base}
                     for a in fake.adapters]
            return self.send(200, {"object": "list", "data": data})
        self.send(404, {"detail": "Not Found"})

    def do_POST(self):
        fake = self.owner
        req = json.loads(self.body())
        with fake.lock:
            fake.requests.append(req)
            fake.active += 1
            fake.peak = max(fake.peak, fake.active)
        try:
            time.sleep(fake.delay)
            model = req.get("model")
            if model == "boom":
                return self.send(500, {"error": {"message": "engine crashed", "type": "InternalServerError",
                                                 "code": 500}})
            if model in MALFORMED:
                return self.send(200, MALFORMED[model])
            if model != fake.base and model not in fake.adapters:
                return self.send(404, {"error": {"message": f"The model `{model}` does not exist.",
                                                 "type": "NotFoundError", "param": "model", "code": 404}})
            text = f"[{model}] {req['messages'][-1]['content']}"
            self.send(200, {"id": "c1", "object": "chat.completion", "created": 0, "model": model,
                            "choices": [{"index": 0, "finish_reason": "stop", "message":
                                         {"role": "assistant", "content": f"  {text}\n"}}],
                            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})
        finally:
            with fake.lock:
                fake.active -= 1


# 200 replies that are not chat completions (a proxy, a wrong server, a broken engine)
MALFORMED = {
    "no-choices": {"id": "c1", "object": "chat.completion"},
    "empty-choices": {"id": "c1", "object": "chat.completion", "choices": []},
    "null-message": {"id": "c1", "object": "chat.completion", "choices": [{"index": 0, "message": None}]},
    "choices-not-list": {"id": "c1", "object": "chat.completion", "choices": "oops"},
    "a-list": [1, 2, 3],
    "html": b"<html>proxy login</html>",
}


class FakeVLLM(LocalServer):
    """Serves /v1/models and /v1/chat/completions like vLLM: one base, some adapters, 404 for others."""

    Handler = VLLMHandler

    def __init__(self, base="HuggingFaceTB/SmolLM2-135M-Instruct", adapters=("json", "coding", "support"),
                 delay=0.0, models_reply=None):
        self.base, self.adapters, self.delay, self.models_reply = base, list(adapters), delay, models_reply
        self.requests: list[dict] = []
        self.active = self.peak = 0
        super().__init__()


class FixedRouter:
    def __init__(self, name):
        self.name = name

    def route(self, text):
        return self.name


def test_routed_client_routes_and_sends_adapter_names():
    with FakeVLLM() as fake, lh.RoutedClient(fake.url, lh.make_router("keyword")) as client:
        prompts = ["Верни JSON: имя и город", "Fix this bug in my code: def f(): return 1/0", "hello there"]
        pairs = client.chat_many(prompts)
        routes = [lh.make_router("keyword").route(p) for p in prompts]
        assert [a for a, _ in pairs] == routes
        sent = {r["messages"][-1]["content"]: r for r in fake.requests}
        for (adapter, reply), p in zip(pairs, prompts):
            model = fake.base if adapter == "base" else adapter
            assert reply == f"[{model}] {p}"  # stripped
            assert sent[p]["model"] == model and sent[p]["temperature"] == 0
        assert client.chat("anything", adapter="support", max_tokens=7)[0] == "support"
        assert fake.requests[-1]["max_tokens"] == 7


def test_base_route_uses_the_served_base_name():
    with FakeVLLM(base="my-base") as fake:
        client = lh.RoutedClient(fake.url + "/v1/", FixedRouter("base"))
        assert client.chat("hi") == ("base", "[my-base] hi")
        named = lh.RoutedClient(fake.url, FixedRouter("base"), base_model_name="other")
        with pytest.raises(AdapterNotServedError, match="`other` does not exist"):
            named.chat("hi")
        assert client.models()[0] == {"id": "my-base", "parent": None, "root": "/models/base"}


def test_chat_many_is_concurrent_and_ordered():
    with FakeVLLM(delay=0.3) as fake:
        client = lh.RoutedClient(fake.url, FixedRouter("json"), max_workers=6)
        t0 = time.perf_counter()
        pairs = client.chat_many([f"p{i}" for i in range(6)], adapters=["json", "coding"] * 3)
        took = time.perf_counter() - t0
    assert [r for _, r in pairs] == [f"[{a}] p{i}" for i, a in enumerate(["json", "coding"] * 3)]
    assert fake.peak >= 3 and took < 6 * 0.3
    with pytest.raises(AdapterError, match="one per prompt"):
        client.chat_many(["a", "b"], adapters=["json"])
    with FakeVLLM() as fake:
        client = lh.RoutedClient(fake.url, FixedRouter("support"))
        assert [a for a, _ in client.chat_many(["x", "y"], adapters=["coding", None])] == ["coding", "support"]


def test_unknown_adapter_is_a_clear_adapter_error():
    with FakeVLLM() as fake:
        client = lh.RoutedClient(fake.url, FixedRouter("legal"))
        with pytest.raises(AdapterNotServedError) as e:
            client.chat("Draft a contract")
    msg = str(e.value)
    assert isinstance(e.value, AdapterError)
    assert "The model `legal` does not exist." in msg  # the server's own words
    assert "coding" in msg and "--lora-modules legal=" in msg  # what is served, and the fix


def test_server_error_and_server_down():
    with FakeVLLM() as fake:
        with pytest.raises(ServeError, match="answered 500: engine crashed"):
            lh.RoutedClient(fake.url, FixedRouter("boom"), max_retries=0).chat("x")
        url = fake.url
    client = lh.RoutedClient(url, FixedRouter("json"), max_retries=0, timeout=5)
    with pytest.raises(ServeError, match="Cannot reach the server") as e:
        client.chat("x")
    assert not isinstance(e.value, AdapterNotServedError)


def test_empty_prompt_is_refused_before_sending():
    with FakeVLLM() as fake:
        client = lh.RoutedClient(fake.url, lh.make_router("keyword"))
        with pytest.raises(lh.PromptError):
            client.chat("   ")
        assert fake.requests == []


def test_start_server_waits_for_health_and_always_stops(tmp_path):
    port = serve_local.free_port()
    script = tmp_path / "srv.py"
    script.write_text(
        "import http.server, sys, time\n"
        "time.sleep(0.5)\n"
        "class H(http.server.BaseHTTPRequestHandler):\n"
        "    def do_GET(self):\n"
        "        self.send_response(200 if self.path == '/health' else 404); self.end_headers()\n"
        "    def log_message(self, *a): print('request', self.path, flush=True)\n"
        "print('starting', flush=True)\n"
        "http.server.HTTPServer(('127.0.0.1', int(sys.argv[sys.argv.index('--port') + 1])), H).serve_forever()\n")
    cmd = [sys.executable, str(script), "--host", "127.0.0.1", "--port", str(port)]
    with pytest.raises(RuntimeError, match="inside"):
        with serve_local.start_server(cmd, timeout=30, log_path=tmp_path / "log") as server:
            assert server.base_url == f"http://127.0.0.1:{port}/v1" and server.start_s >= 0.4
            proc = server.process
            raise RuntimeError("inside")
    assert proc.poll() is not None  # stopped although the block raised
    assert "starting" in (tmp_path / "log").read_text()


def test_start_server_reports_early_exit_and_timeout(tmp_path):
    cmd = [sys.executable, "-c", "print('no model here'); raise SystemExit(3)", "--port", str(serve_local.free_port())]
    with pytest.raises(ServeError, match=r"(?s)exited with code 3.*no model here"):
        with serve_local.start_server(cmd, timeout=30):
            pass
    cmd = [sys.executable, "-c", "import time; print('slow', flush=True); time.sleep(60)",
           "--port", str(serve_local.free_port())]
    t0 = time.perf_counter()
    with pytest.raises(ServeError, match=r"(?s)not healthy after 1 s.*slow"):
        with serve_local.start_server(cmd, timeout=1):
            pass
    assert time.perf_counter() - t0 < 30
    with pytest.raises(ServeError, match="not found"):
        with serve_local.start_server(["/nonexistent/vllm", "serve", "x"], timeout=1):
            pass


def test_missing_openai_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "openai", None)  # as if not installed
    with pytest.raises(ServeError, match="pip install openai"):
        lh.RoutedClient("http://127.0.0.1:1", FixedRouter("json"))


def test_bench_markdown_and_default_command(tmp_path, capsys):
    rows = [dict(path="PEFT", start_s=1.0, s=2.0, tokens=64, same=None),
            dict(path="vLLM", start_s=None, s=4.0, tokens=64, same=3)]
    table = serve_local.bench_markdown(rows)
    assert "| PEFT | 1.0 | 2.00 | 64 | 32.0 | — |" in table and "| vLLM | — | 4.00 | 64 | 16.0 | 3 |" in table
    for n in ("json", "coding", "support"):
        make_adapter(tmp_path / f"lora_{n}", r=16)
    serve.main(["--adapters", str(tmp_path)])
    line = capsys.readouterr().out.strip()
    assert "--max-lora-rank 16" in line and f"coding={tmp_path / 'lora_coding'}" in line


# ----------------------------------------------------------------------------- bad input and bad replies
@pytest.mark.parametrize("model", sorted(MALFORMED))
def test_malformed_reply_is_a_serve_error(model):
    with FakeVLLM(adapters=[]) as fake:
        client = lh.RoutedClient(fake.url, FixedRouter(model), max_retries=0)
        with pytest.raises(ServeError, match=f"(?s){fake.url}/v1.*not a chat completion.*OpenAI-compatible"):
            client.chat("x")


@pytest.mark.parametrize("reply", [{"object": "list"}, {"data": "nope"}, {"data": [{"no": "id"}]}, [1, 2],
                                   {"data": [None]}])
def test_malformed_model_list_is_a_serve_error(reply):
    with FakeVLLM(models_reply=reply) as fake:
        client = lh.RoutedClient(fake.url, FixedRouter("base"), max_retries=0)
        with pytest.raises(ServeError, match="model list"):
            client.models()
        with pytest.raises(ServeError, match="model list"):
            client.chat("x")  # the base route asks the model list


def test_credentials_in_the_url_never_show(capsys):
    secret, key = "s3cretPassw0rd", "sk-key-never-shown-123456"
    with FakeVLLM() as fake:
        url = fake.url.replace("http://", f"http://alice:{secret}@")
        client = lh.RoutedClient(url, FixedRouter("legal"), api_key=key, max_retries=0)
        assert client.chat("hi", adapter="json")[0] == "json"  # the URL still works
        errors = []
        for router in ("legal", "boom", "html"):
            client.router = FixedRouter(router)
            with pytest.raises(ServeError) as e:
                client.chat("x")
            errors.append(str(e.value))
        dead = fake.url
    client = lh.RoutedClient(dead.replace("http://", f"http://alice:{secret}@"), FixedRouter("json"),
                             api_key=key, max_retries=0, timeout=5)
    with pytest.raises(ServeError, match="Cannot reach") as e:
        client.chat("x")
    errors.append(str(e.value))
    shown = "\n".join(errors) + repr(client) + client.base_url + "".join(capsys.readouterr())
    assert "127.0.0.1" in shown
    assert secret not in shown and "alice:" not in shown and key not in shown


class LoadedModel:
    """What a transformers / PEFT model offers vllm_command: ``name_or_path`` (and a huge repr)."""

    def __init__(self, name_or_path):
        self.name_or_path = name_or_path

    def __repr__(self):
        return "MistralForCausalLM(\n" + "  (layer): Linear(in_features=64, out_features=64)\n" * 500 + ")"


def test_vllm_command_accepts_a_loaded_model(tmp_path, monkeypatch, tiny_model):
    from peft import LoraConfig, get_peft_model

    from lora_helpers import base as b
    monkeypatch.setattr(b, "embedded_folder", lambda: tmp_path / "converted")
    a = make_adapter(tmp_path / "a")
    folder = tmp_path / "merged"
    folder.mkdir()
    assert serve.vllm_command(LoadedModel(str(folder)), {"json": a})[2] == str(folder.resolve())
    assert serve.vllm_command(LoadedModel(b.EMBEDDED_NAME), {"json": a})[2] == str(tmp_path / "converted")
    assert serve.vllm_command(LoadedModel("owner/model"), {"json": a})[2] == "owner/model"
    gguf = tmp_path / "model.gguf"  # vLLM also serves a GGUF file
    gguf.write_bytes(b"GGUF")
    assert serve.vllm_command(gguf, {"json": a})[2] == str(gguf.resolve())
    tiny_model.name_or_path = str(folder)
    peft_model = get_peft_model(tiny_model, LoraConfig(r=2, target_modules=["q_proj"]))
    assert serve.vllm_command(peft_model, {"json": a})[2] == str(folder.resolve())  # its base model's folder


@pytest.mark.parametrize("bad", [LoadedModel(""), LoadedModel(None), LoadedModel("not a repo id!"),
                                 LoadedModel("x" * 5000), "y" * 5000, "a/b/c/d", 42])
def test_vllm_command_says_what_to_pass(bad, tmp_path):
    with pytest.raises(AdapterError, match="(?s)local folder.*Hub repo id.*save_pretrained") as e:
        serve.vllm_command(bad, {"json": make_adapter(tmp_path / "a")})
    assert len(str(e.value)) < 800  # no model repr or 5000-character name in the message


def test_vllm_command_bad_adapter_sources(tmp_path):
    with pytest.raises(AdapterError, match="folder"):
        serve.vllm_command("owner/model", {"json": LoadedModel("x")})
    with pytest.raises(AdapterError, match="max_lora_rank") as e:
        serve.vllm_command("owner/model", {"json": "z" * 5000})
    assert "z" * 300 not in str(e.value)


def test_adapter_rank_deeply_nested_config(tmp_path):
    folder = tmp_path / "deep"
    folder.mkdir()
    (folder / "adapter_config.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(AdapterError, match="adapter_config.json"):
        serve.adapter_rank(folder)
    (folder / "adapter_config.json").write_text("[1, 2]")
    with pytest.raises(AdapterError, match="adapter_config.json"):
        serve.adapter_rank(folder)
