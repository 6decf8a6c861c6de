"""lora_helpers.serve without vLLM: the command line, and RoutedClient against a tiny fake
OpenAI-compatible server on 127.0.0.1 (the real vLLM run is in tests_serve/, `make test-serve`)."""
from __future__ import annotations

import json
import shlex
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import lora_helpers as lh
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
    assert lh.RoutedClient is serve.RoutedClient and lh.vllm_command is serve.vllm_command
    assert issubclass(ServeError, AdapterError) and issubclass(AdapterNotServedError, AdapterNotFoundError)


# ----------------------------------------------------------------------------- a fake OpenAI-compatible server
class FakeVLLM:
    """Serves /v1/models and /v1/chat/completions like vLLM: one base, some adapters, 404 for others."""

    def __init__(self, base="HuggingFaceTB/SmolLM2-135M-Instruct", adapters=("json", "coding", "support"),
                 delay=0.0):
        self.base, self.adapters, self.delay = base, list(adapters), delay
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        self.active = self.peak = 0
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _send(self, code, obj):
                body = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                if self.path == "/v1/models":
                    data = [{"id": fake.base, "object": "model", "root": "/models/base", "parent": None}]
                    data += [{"id": a, "object": "model", "root": f"/adapters/{a}", "parent": fake.base}
                             for a in fake.adapters]
                    return self._send(200, {"object": "list", "data": data})
                self._send(404, {"detail": "Not Found"})

            def do_POST(self):
                req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with fake.lock:
                    fake.requests.append(req)
                    fake.active += 1
                    fake.peak = max(fake.peak, fake.active)
                try:
                    time.sleep(fake.delay)
                    model = req.get("model")
                    if model == "boom":
                        return self._send(500, {"error": {"message": "engine crashed", "type": "InternalServerError",
                                                          "code": 500}})
                    if model != fake.base and model not in fake.adapters:
                        return self._send(404, {"error": {"message": f"The model `{model}` does not exist.",
                                                          "type": "NotFoundError", "param": "model", "code": 404}})
                    text = f"[{model}] {req['messages'][-1]['content']}"
                    self._send(200, {"id": "c1", "object": "chat.completion", "created": 0, "model": model,
                                     "choices": [{"index": 0, "finish_reason": "stop", "message":
                                                  {"role": "assistant", "content": f"  {text}\n"}}],
                                     "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})
                finally:
                    with fake.lock:
                        fake.active -= 1

        return Handler


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
