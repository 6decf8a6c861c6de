"""A Hub call always ends, never writes outside the cache, and never shows the token (issue #22).

Against the stand-in Hub on 127.0.0.1 (tests/hub_server.py): a server that accepts and never answers, one that
answers a byte at a time, one that quotes the Authorization header back in its errors.
"""
import logging
import os
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model

import lora_helpers as lh
from hub_server import HubServer
from lora_helpers import hub as hub_module
from lora_helpers.errors import AdapterError, StorageError

TOKEN = "hf_aliceWriteToken1234567890abcdefghij"
LIMIT = 2.0  # LORA_HUB_TIMEOUT in the tests that wait for it
SLACK = 4.0  # what a busy 2-core machine may add to it


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    import huggingface_hub.constants as C
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE", "HF_ENDPOINT", "LORA_HUB_TIMEOUT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(C, "HF_TOKEN_PATH", str(tmp_path / "no_hf_login" / "token"))  # not this machine's login
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def hub(monkeypatch, tmp_path):
    import huggingface_hub.constants as C
    with HubServer(tokens={TOKEN: "alice"}) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        monkeypatch.setattr(C, "HF_HUB_OFFLINE", False)  # conftest sets HF_HUB_OFFLINE=1 before import
        monkeypatch.setattr(C, "HF_HUB_CACHE", str(tmp_path / "hf_cache"))
        yield server


@pytest.fixture
def model(tiny_model):
    torch.manual_seed(5)
    return get_peft_model(tiny_model, LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False),
                          adapter_name="json")


@pytest.fixture
def published(hub, model):
    lh.save_adapter(model, "json", where="hub", private=False, token=TOKEN)
    return hub


def hub_threads():
    return [t for t in threading.enumerate() if t.name == "lora_helpers Hub call"]


def files(folder):
    return sorted(str(p.relative_to(folder)) for p in Path(folder).rglob("*"))


# ----------------------------------------------------------------------------- every call ends

@pytest.mark.parametrize("how", ["stall", "drip", "drip-body"])
@pytest.mark.parametrize("route", ["info", "tree", "resolve"])
def test_a_hub_download_always_ends(published, monkeypatch, route, how):
    monkeypatch.setenv("LORA_HUB_TIMEOUT", str(LIMIT))
    published.faults[route] = how
    t0 = time.monotonic()
    with pytest.raises(StorageError, match="(?s)fetch 'hub:alice/json'.*did not answer in time.*LORA_HUB_TIMEOUT"):
        lh.resolve_adapter("hub:alice/json")
    assert time.monotonic() - t0 < LIMIT + SLACK


@pytest.mark.parametrize("how", ["stall", "drip"])
@pytest.mark.parametrize("route", ["create", "preupload", "commit"])
def test_a_hub_upload_always_ends(hub, model, monkeypatch, route, how):
    monkeypatch.setenv("LORA_HUB_TIMEOUT", str(LIMIT))
    hub.faults[route] = how
    t0 = time.monotonic()
    with pytest.raises(StorageError, match="(?s)upload 'json' to the Hub repo 'alice/json'.*did not answer in time"):
        lh.save_adapter(model, "json", where="hub", path_or_repo="alice/json", token=TOKEN)
    assert time.monotonic() - t0 < LIMIT + SLACK


def test_a_drip_is_cut_by_the_total_deadline_not_by_a_read_timeout(published, monkeypatch):
    """Each byte comes well within the per-read wait, so only the call's own deadline can end it."""
    monkeypatch.setenv("LORA_HUB_TIMEOUT", str(LIMIT))
    published.faults["info"] = "drip"
    with pytest.raises(StorageError, match="did not answer in time"):
        lh.resolve_adapter("hub:alice/json")
    assert published.dripped >= 5  # it was still answering, a byte every 0.1 s


def test_a_stalled_call_leaves_no_thread_behind(published, monkeypatch):
    """After the deadline, the request the call was waiting on times out by itself (the hook's wait limit)."""
    monkeypatch.setenv("LORA_HUB_TIMEOUT", str(LIMIT))
    published.faults["info"] = "stall"
    with pytest.raises(StorageError, match="did not answer in time"):
        lh.resolve_adapter("hub:alice/json")
    t0 = time.monotonic()
    while hub_threads() and time.monotonic() - t0 < LIMIT + SLACK:
        time.sleep(0.05)
    assert not hub_threads() and not published.stopping.is_set()  # the server still stalls


def test_the_default_limit_is_finite_and_at_most_a_minute(published):
    from huggingface_hub import get_session
    assert hub_module.timeout_s() == hub_module.DEFAULT_TIMEOUT_S <= 60
    lh.resolve_adapter("hub:alice/json")  # the first call adds the hook to the client
    sent = []
    client = get_session()
    hooks = client.event_hooks
    client.event_hooks = {**hooks, "response": [*hooks["response"],
                                                lambda r: sent.append(dict(r.request.extensions["timeout"]))]}
    try:
        lh.resolve_adapter("hub:alice/json@main")
    finally:
        client.event_hooks = hooks
    assert sent and all(None not in t.values() and max(t.values()) <= 60 / 3 for t in sent), sent


@pytest.mark.parametrize("value", ["abc", "0", "-5", "inf", "nan"])
def test_a_bad_limit_is_refused_before_asking(published, monkeypatch, value):
    monkeypatch.setenv("LORA_HUB_TIMEOUT", value)
    n = len(published.requests)
    with pytest.raises(AdapterError, match="LORA_HUB_TIMEOUT=.*positive number"):
        lh.resolve_adapter("hub:alice/json")
    assert published.requests[n:] == []


def test_a_client_factory_you_set_is_kept(published, monkeypatch):
    import huggingface_hub
    from huggingface_hub import get_session
    from huggingface_hub.utils._http import default_client_factory
    made = []

    def mine():
        client = default_client_factory()
        client.headers["X-Mine"] = "kept"
        made.append(client)
        return client

    huggingface_hub.set_client_factory(mine)
    try:
        monkeypatch.setenv("LORA_HUB_TIMEOUT", str(LIMIT))
        published.faults["info"] = "stall"
        with pytest.raises(StorageError, match="did not answer in time"):
            lh.resolve_adapter("hub:alice/json")
        published.faults.clear()
        assert lh.resolve_adapter("hub:alice/json").is_dir()
        assert made and get_session() is made[-1] and made[-1].headers["X-Mine"] == "kept"
    finally:
        huggingface_hub.set_client_factory(default_client_factory)


# ----------------------------------------------------------------------------- revisions stay in the cache

@pytest.mark.parametrize("rev", ["../../x", "../../../outside", "main/../../../../outside", "/abs/x", ".hidden",
                                 "a b", "x\\..\\..\\y", "v1..2", "main.lock", "-rf", "a//b", "x" * 300])
def test_a_revision_cannot_lead_out_of_the_cache(published, tmp_path, rev):
    published.any_revision = True  # such a server answers any revision, and the ref file gets its name
    before, n = files(tmp_path), len(published.requests)
    with pytest.raises(AdapterError, match="is not a revision"):
        lh.resolve_adapter(f"hub:alice/json@{rev}")
    assert published.requests[n:] == []
    assert files(tmp_path) == before


@pytest.mark.parametrize("rev", ["v1.0", "refs/pr/1", "release_2+build"])
def test_branch_tag_and_pr_revisions_still_work(published, tmp_path, rev):
    published.any_revision = True
    before = files(tmp_path)
    assert lh.resolve_adapter(f"hub:alice/json@{rev}").is_dir()
    assert all(f.startswith("hf_cache") for f in set(files(tmp_path)) - set(before))
    assert (tmp_path / "hf_cache" / "models--alice--json" / "refs" / rev).is_file()


# ----------------------------------------------------------------------------- the token never shows

def shown(err, capsys, caplog) -> str:
    out = capsys.readouterr()
    return "\n".join([str(err), repr(err), repr(err.__cause__), repr(err.__context__),
                      "".join(traceback.format_exception(err)), out.out, out.err, caplog.text])


@pytest.mark.parametrize("route, status", [("info", 401), ("info", 403), ("info", 404), ("info", 500),
                                           ("tree", 400), ("resolve", 403)])
def test_a_token_the_hub_quotes_back_never_shows_in_a_download(published, monkeypatch, capsys, caplog, route,
                                                               status):
    caplog.set_level(logging.INFO)  # httpcore's own DEBUG trace prints response headers as they came
    caplog.set_level(logging.DEBUG, logger="huggingface_hub")
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    published.faults[route] = f"echo:{status}"
    with pytest.raises(AdapterError) as e:
        lh.resolve_adapter("hub:alice/json")
    text = shown(e.value, capsys, caplog)
    assert TOKEN not in text and TOKEN[3:] not in text, text
    assert e.value.__cause__ is None and e.value.__context__ is None


@pytest.mark.parametrize("route, status", [("create", 401), ("create", 403), ("create", 500), ("preupload", 403),
                                           ("commit", 400), ("commit", 401)])
def test_a_token_the_hub_quotes_back_never_shows_in_an_upload(hub, model, capsys, caplog, route, status):
    caplog.set_level(logging.INFO)  # httpcore's own DEBUG trace prints response headers as they came
    caplog.set_level(logging.DEBUG, logger="huggingface_hub")
    hub.faults[route] = f"echo:{status}"
    with pytest.raises(StorageError, match=f"HTTP {status}") as e:
        lh.save_adapter(model, "json", where="hub", path_or_repo="alice/json", token=TOKEN)
    text = shown(e.value, capsys, caplog)
    assert TOKEN not in text and TOKEN[3:] not in text, text
    assert e.value.__cause__ is None and e.value.__context__ is None


def test_the_echo_server_does_quote_the_token(published):
    """The two tests above prove something only if the server really sends the token back."""
    from huggingface_hub import get_session  # its HTTP client: httpx2 from huggingface_hub 2, httpx before
    published.faults["info"] = "echo:401"
    reply = get_session().get(f"{published.url}/api/models/alice/json", headers={"Authorization": f"Bearer {TOKEN}"})
    assert TOKEN in reply.text and TOKEN in reply.headers["X-Error-Message"]


def test_refusals_read_alike_in_downloads_and_uploads(published, model, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    published.faults.update(info="echo:403", create="echo:403")
    with pytest.raises(StorageError, match=r"the Hub refused it \(HTTP 403: Invalid credentials.*Bearer \*\*\*\)"):
        lh.resolve_adapter("hub:alice/json")
    with pytest.raises(StorageError, match=r"the Hub refused it \(HTTP 403: Invalid credentials.*Bearer \*\*\*\)"
                                           r".*write access"):
        lh.save_adapter(model, "json", where="hub", path_or_repo="alice/json", token=TOKEN)


# ----------------------------------------------------------------------------- one token lookup

def test_find_token_reads_the_hf_auth_login_file_under_hf_home(tmp_path):
    home = tmp_path / "hf_home"
    home.mkdir()
    (home / "token").write_text(TOKEN + "\n")
    env = {k: v for k, v in os.environ.items()
           if k not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH", "HF_OIDC_RESOURCE")}
    code = "import lora_helpers as lh; print(lh.find_token(), lh.find_token('hf_given'))"
    out = subprocess.run([sys.executable, "-c", code], env={**env, "HF_HOME": str(home)}, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [TOKEN, "hf_given"]


def test_find_token_order_argument_env_file(tmp_path, monkeypatch):
    import huggingface_hub.constants as C
    login = tmp_path / "token"
    login.write_text(" " + TOKEN + "\n")
    monkeypatch.setattr(C, "HF_TOKEN_PATH", str(login))
    assert lh.find_token() == TOKEN
    monkeypatch.setenv("HF_TOKEN", "hf_fromTheEnvironment")
    assert lh.find_token() == "hf_fromTheEnvironment"
    assert lh.find_token("hf_given") == "hf_given"
    login.unlink()
    monkeypatch.delenv("HF_TOKEN")
    assert lh.find_token() is None


def test_a_colab_secret_is_read_here_only_where_huggingface_hub_does_not(monkeypatch):
    """get_token() reads the Colab secret itself where it recognises Colab; asking again would prompt twice."""
    import importlib.machinery
    import types

    import huggingface_hub.utils
    asked = []
    google, colab, userdata = (types.ModuleType(n) for n in ("google", "google.colab", "google.colab.userdata"))
    userdata.get = lambda key: asked.append(key) or "hf_fromTheColabSecret"
    google.colab, colab.userdata = colab, userdata
    for mod in (google, colab, userdata):
        mod.__spec__ = importlib.machinery.ModuleSpec(mod.__name__, None)
        monkeypatch.setitem(sys.modules, mod.__name__, mod)
    assert lh.find_token() == "hf_fromTheColabSecret" and asked == ["HF_TOKEN"]  # a Colab it does not see
    asked.clear()
    monkeypatch.setattr(huggingface_hub.utils, "is_google_colab", lambda: True)  # it sees Colab: it asked already
    assert lh.find_token() is None and asked == []


# ----------------------------------------------------------------------------- a retry after a deadline works

@pytest.mark.parametrize("route, how", [("resolve", "stall"), ("resolve", "drip-body"), ("info", "stall"),
                                        ("tree", "stall")])
def test_a_retry_works_once_the_hub_answers_again(published, monkeypatch, route, how):
    """The call that passed its deadline must not keep the cache's file lock, nor leave its thread running.

    (A head sent a byte at a time is the one case whose thread lives on until the head is complete: no read
    waits, and no byte of the body has come to stop at; it holds no file lock meanwhile.)"""
    monkeypatch.setenv("LORA_HUB_TIMEOUT", str(LIMIT))
    published.faults[route] = how
    with pytest.raises(StorageError, match="did not answer in time"):
        lh.resolve_adapter("hub:alice/json")
    published.faults.clear()  # the server is back (the stalled handler itself still hangs)
    folder = lh.resolve_adapter("hub:alice/json")
    assert (folder / "adapter_config.json").is_file()
    assert not hub_threads() and not published.stopping.is_set()


# ----------------------------------------------------------------------------- bases under the same policy

@pytest.fixture
def hub_base(hub, tiny_model, tiny_tokenizer, tmp_path, monkeypatch):
    """The tiny model as a private Hub model repository 'alice/tiny' (files put in place on the stand-in).

    huggingface_hub's endpoint constants point at the stand-in too, so that code which does not pass
    ``endpoint=`` (transformers' own download, as load_base used) also reaches it."""
    import huggingface_hub.constants as C
    from hub_server import Repo, git_sha
    monkeypatch.setattr(C, "ENDPOINT", hub.url)
    monkeypatch.setattr(C, "HUGGINGFACE_CO_URL_TEMPLATE", hub.url + "/{repo_id}/resolve/{revision}/{filename}")
    folder = tmp_path / "tiny_model"
    tiny_model.save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    repo = hub.repos["alice/tiny"] = Repo(private=True)
    files = {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    files["consolidated.safetensors"] = b"a second copy of the weights, never downloaded"
    sha = git_sha(b"alice/tiny")
    repo.commits[sha], repo.branches["main"] = files, sha
    return hub


def base_files(hub):
    return {path.rpartition("/")[2] for method, path in hub.requests if "/resolve/" in path and method == "GET"}


def test_a_hub_base_loads_with_the_token_find_token_finds(hub_base, monkeypatch):
    found = []
    monkeypatch.setattr(hub_module, "find_token", lambda token=None: found.append(token) or token or TOKEN)
    model, tok = lh.load_base("alice/tiny", device="cpu")
    assert model.name_or_path == "alice/tiny" and tok.padding_side == "left"
    assert found == [None] and set(hub_base.auth_seen) == {TOKEN}
    assert "consolidated.safetensors" not in base_files(hub_base) and "model.safetensors" in base_files(hub_base)


@pytest.mark.parametrize("route", ["info", "resolve"])
def test_a_stalled_base_download_ends_within_the_limit(hub_base, monkeypatch, route):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("LORA_HUB_TIMEOUT", str(LIMIT))
    hub_base.faults[route] = "stall"
    t0 = time.monotonic()
    with pytest.raises(StorageError, match="(?s)download the base model 'alice/tiny'.*sent nothing for 2 s.*"
                                           "LORA_HUB_TIMEOUT") as e:
        lh.load_base("alice/tiny", device="cpu")
    assert time.monotonic() - t0 < LIMIT + SLACK
    assert e.value.__cause__ is None and e.value.__context__ is None


def test_a_base_download_that_keeps_receiving_is_not_cut(hub_base, monkeypatch):
    """For a multi-GB base the limit is a stall limit: bytes that keep coming may take longer than it in all."""
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("LORA_HUB_TIMEOUT", "1")
    hub_base.faults["resolve"] = "slow:3"
    t0 = time.monotonic()
    model, _ = lh.load_base("alice/tiny", device="cpu")
    assert time.monotonic() - t0 > 3 and model.name_or_path == "alice/tiny"


@pytest.mark.parametrize("route, status", [("info", 401), ("info", 403), ("resolve", 401), ("resolve", 403)])
def test_a_token_the_hub_quotes_back_never_shows_in_a_base_download(hub_base, monkeypatch, capsys, caplog, route,
                                                                    status):
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.DEBUG, logger="huggingface_hub")
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    hub_base.faults[route] = f"echo:{status}"
    with pytest.raises(AdapterError) as e:
        lh.load_base("alice/tiny", device="cpu")
    text = shown(e.value, capsys, caplog)
    assert "alice/tiny" in str(e.value)
    assert TOKEN not in text and TOKEN[3:] not in text, text
    assert e.value.__cause__ is None and e.value.__context__ is None


def test_a_gated_official_mistral_says_what_to_do(hub, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    hub.faults["info"] = "code:403:GatedRepo"
    with pytest.raises(lh.BaseModelError, match=r"(?s)gated mistralai/Mistral-7B-Instruct-v0\.3 without a token.*"
                                                r"accept its terms.*HF_TOKEN.*load_base\('mistral-7b'\)") as e:
        lh.load_base("mistral-7b-official")
    assert e.value.__cause__ is None and e.value.__context__ is None
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    with pytest.raises(lh.BaseModelError, match="with the token given"):
        lh.load_base("mistral-7b-official")
    assert hub.auth_seen[-1] == TOKEN
