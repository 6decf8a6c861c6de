"""RoutedClient never logs or shows credentials, and every call ends (issue #22).

Against a small OpenAI-compatible stand-in on 127.0.0.1 that records what it was sent, and can answer an
error quoting the request's credentials back, never answer, or answer a byte at a time.
"""
import base64
import json
import logging
import time
import traceback
from urllib.parse import parse_qs, urlsplit

import pytest
from http_scaffold import LocalServer, QuietHandler

import lora_helpers as lh
from lora_helpers import client as client_module
from lora_helpers.remote import scrub
from lora_helpers.errors import AdapterError, AdapterNotServedError, ServeError

USER, PASSWORD, QUERY_KEY, API_KEY = "alice", "s3cret-Passw0rd", "q-key-4c5e7a9b", "sk-api-key-never-shown-1234"
BASIC = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
SECRETS = (PASSWORD, QUERY_KEY, API_KEY, BASIC, f"{USER}:")
SLACK = 4.0  # what a busy 2-core machine may add to a limit


class Handler(QuietHandler):
    def do_GET(self):
        self.answer()

    def do_POST(self):
        self.answer(json.loads(self.body()))

    def answer(self, req=None):
        fake = self.owner
        url = urlsplit(self.path)
        fake.seen.append({"path": url.path, "query": parse_qs(url.query), "auth": self.headers.get("Authorization")})
        if fake.mode == "stall":
            return self.stall()
        if fake.mode == "drip":
            return self.drip()
        if fake.mode.startswith("nested:"):  # JSON nested deeper than Python's recursion limit, with that status
            depth = 100_000
            body = ('{"error": ' * depth + "1" + "}" * depth).encode()
            return self.send(int(fake.mode.partition(":")[2]), body, {"Content-Type": "application/json"})
        if fake.mode == "echo":  # an error page that quotes everything it was sent
            return self.send(500, {"error": {"message": f"bad request {self.path} with "
                                                        f"Authorization: {self.headers.get('Authorization')}"}})
        if url.path == "/v1/models":
            return self.send(200, {"object": "list", "data": [{"id": "base", "object": "model", "parent": None}]})
        if req["model"] != "json":
            return self.send(404, {"error": {"message": f"The model `{req['model']}` does not exist "
                                                        f"(Authorization: {self.headers.get('Authorization')})."}})
        self.send(200, {"id": "c1", "object": "chat.completion", "created": 0, "model": "json",
                        "choices": [{"index": 0, "finish_reason": "stop",
                                     "message": {"role": "assistant", "content": "ok"}}]})


class FakeServer(LocalServer):
    Handler = Handler

    def __init__(self, mode="ok"):
        self.mode, self.seen = mode, []
        super().__init__()


def json_route(text):  # a plain function is a router too
    return "json"


def secret_url(server, query=True):
    return server.url.replace("http://", f"http://{USER}:{PASSWORD}@") + (f"/v1?key={QUERY_KEY}" if query else "")


def everything_shown(errors, client, capsys, caplog) -> str:
    out = capsys.readouterr()
    parts = [out.out, out.err, caplog.text, repr(client), client.base_url]
    for e in errors:
        parts += [str(e), repr(e), repr(e.__cause__), repr(e.__context__), "".join(traceback.format_exception(e))]
    return "\n".join(parts)


# ----------------------------------------------------------------------------- credentials

@pytest.mark.parametrize("query", [False, True], ids=["user:password@", "user:password@ and ?key="])
def test_credentials_are_used_but_never_logged_or_shown(capsys, caplog, query):
    caplog.set_level(logging.INFO)
    for name in ("httpx2", "httpx", "openai"):
        caplog.set_level(logging.DEBUG, logger=name)
    errors = []
    with FakeServer() as fake:
        client = lh.RoutedClient(secret_url(fake, query), json_route, api_key=API_KEY, max_retries=0)
        assert client.chat("hi") == ("json", "ok")
        assert fake.seen[-1] == {"path": "/v1/chat/completions", "query": {"key": [QUERY_KEY]} if query else {},
                                 "auth": f"Basic {BASIC}"}  # the credentials still reach the server
        with pytest.raises(AdapterNotServedError) as e:
            client.chat("hi", adapter="legal")
        errors.append(e.value)
        fake.mode = "echo"
        with pytest.raises(ServeError, match="answered 500") as e:
            client.chat("hi")
        errors.append(e.value)
        dead = secret_url(fake, query)
    gone = lh.RoutedClient(dead, json_route, api_key=API_KEY, max_retries=0, timeout=5)
    with pytest.raises(ServeError, match="Cannot reach") as e:
        gone.chat("x")
    errors.append(e.value)
    assert "HTTP Request: POST" in caplog.text  # the request line was logged, without the secrets
    text = everything_shown(errors, client, capsys, caplog)
    assert "127.0.0.1" in text and "***" in text
    for secret in SECRETS:
        assert secret not in text, secret
    assert all(e.__cause__ is None and e.__context__ is None for e in errors)


def test_a_bearer_key_quoted_back_is_not_shown(capsys, caplog):
    caplog.set_level(logging.INFO)
    with FakeServer(mode="echo") as fake:
        client = lh.RoutedClient(fake.url, json_route, api_key=API_KEY, max_retries=0)
        with pytest.raises(ServeError, match=r"Authorization: Bearer \*\*\*") as e:
            client.chat("x")
    assert API_KEY not in everything_shown([e.value], client, capsys, caplog)


@pytest.mark.parametrize("text, clean", [
    ("GET http://bob:pw123@host:8/v1/x?token=abc&page=2", "GET http://***@host:8/v1/x?token=***&page=2"),
    ("https://h/v1?api_key=K1&key=K2;access_token=T", "https://h/v1?api_key=***&key=***;access_token=***"),
    ("Authorization: Basic Ym9iOnB3MTIz", "Authorization: Basic ***"),
    ("authorization: bearer sk-abc.def", "authorization: bearer ***"),
    ("nothing secret at http://127.0.0.1:8000/v1?page=2", "nothing secret at http://127.0.0.1:8000/v1?page=2"),
    ("token hf_abcdefghijklmnopqrstuvwxyz0123 quoted", "token hf_*** quoted"),
])
def test_scrub(text, clean):
    assert scrub(text) == clean


def test_scrub_takes_out_the_secrets_given_longest_first():
    assert scrub("a=pass1234 b=pass12345678", ["pass1234", "pass12345678", ""]) == "a=*** b=***"


def test_base_url_shows_no_credentials_or_query_values():
    client = lh.RoutedClient("https://u:p4ss@example.org/api/?key=abc123&v=2", json_route)
    assert client.base_url == "https://***@example.org/api/v1?key=***&v=***"
    assert client.client.base_url.host == "example.org" and "p4ss" not in str(client.client.base_url)


# ----------------------------------------------------------------------------- every call ends

@pytest.mark.parametrize("mode", ["stall", "drip"])
def test_a_call_always_ends(mode):
    with FakeServer(mode=mode) as fake:
        client = lh.RoutedClient(fake.url, json_route, timeout=1)
        for call in (lambda: client.chat("x"), client.models, lambda: client.chat_many(["a", "b"])):
            t0 = time.monotonic()
            with pytest.raises(ServeError, match="did not answer within 1 s.*timeout="):
                call()
            assert time.monotonic() - t0 < 1 + SLACK


def test_the_default_timeout_is_finite_and_at_most_a_minute():
    client = lh.RoutedClient("http://127.0.0.1:1", json_route)
    assert client.timeout == client_module.DEFAULT_TIMEOUT_S <= 60
    assert 0 < client.client.timeout <= 60  # also each wait of the HTTP client


@pytest.mark.parametrize("bad", [0, -1, float("inf"), float("nan"), "60", None, True])
def test_a_bad_timeout_is_refused(bad):
    with pytest.raises(AdapterError, match="not a number of seconds"):
        lh.RoutedClient("http://127.0.0.1:1", json_route, timeout=bad)


# ----------------------------------------------------------------------------- what a server or a caller may send

def test_json_nested_deeper_than_python_can_read_is_a_serve_error():
    with FakeServer(mode="nested:200") as fake:
        client = lh.RoutedClient(fake.url, json_route, max_retries=0, timeout=10)
        for call in (lambda: client.chat("x"), client.models):
            with pytest.raises(ServeError, match="127.0.0.1.*not a .* in OpenAI's format") as e:
                call()
            assert "RecursionError" not in "".join(traceback.format_exception(e.value))


@pytest.mark.parametrize("url", ["http://[::1", "http://h:99999/v1", "http://u:pw-9876@[::1/v1", "ftp://h/v1",
                                 "127.0.0.1:8000/v1", "http:///v1", ""])
def test_a_base_url_that_is_no_url_is_refused_in_words(url):
    with pytest.raises(AdapterError, match="(?s)base_url.*is not an http.s. URL.*http://127.0.0.1:8000/v1") as e:
        lh.RoutedClient(url, json_route)
    assert "pw-9876" not in str(e.value) and e.value.__cause__ is None and e.value.__context__ is None


def test_the_extra_that_brings_openai_is_declared_and_named(monkeypatch):
    import sys
    import tomllib
    from pathlib import Path

    from packaging.requirements import Requirement
    extras = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    assert "openai" in {Requirement(r).name for r in extras["client"]}
    monkeypatch.setitem(sys.modules, "openai", None)  # not installed
    with pytest.raises(ServeError, match=r"pip install .lora-helpers\[client\]."):
        lh.RoutedClient("http://127.0.0.1:1", json_route)
