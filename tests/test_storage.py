"""save_adapter / resolve_adapter: session folder, Drive (stand-in and a fake Colab), and the Hub over HTTP."""
import hashlib
import importlib.machinery
import sys
import types
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model

import lora_helpers as lh
import tiny
from hub_server import HubServer
from lora_helpers import storage
from lora_helpers.errors import AdapterError, AdapterFileError, AdapterNotFoundError, StorageError

X = torch.tensor([[5, 17, 42, 8, 99, 3]])
TOKEN = "hf_aliceWriteToken1234567890abcdefghij"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    for var in ("LORA_SESSION_DIR", "LORA_DRIVE_DIR", "HF_TOKEN", "HF_ENDPOINT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(storage, "_announced", set())
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def model(tiny_model):
    torch.manual_seed(11)
    m = get_peft_model(tiny_model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
                       adapter_name="json")
    m.add_adapter("coding", LoraConfig(r=2, target_modules=["o_proj"], init_lora_weights=False))
    return m


def logits(m):
    with torch.no_grad():
        return m(X).logits


def adapter_logits(m, name):
    lh.switch(m, name)
    return logits(m)


def loads_in_plain_peft(folder, tok, expected):
    """The saved folder works with PEFT alone, and gives the same logits."""
    ref = PeftModel.from_pretrained(tiny.make_model(tok), str(folder))
    assert torch.equal(logits(ref), expected)


def digest(folder):
    return hashlib.sha256((Path(folder) / "adapter_model.safetensors").read_bytes()).hexdigest()


# ---------------------------------------------------------------- session

def test_session_save_and_resolve(model, tmp_path, monkeypatch, tiny_tokenizer):
    monkeypatch.setenv("LORA_SESSION_DIR", str(tmp_path / "sess"))
    out = lh.save_adapter(model, "coding")
    assert out == str(tmp_path / "sess" / "coding")
    assert sorted(p.name for p in Path(out).iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    assert lh.resolve_adapter("session:coding") == Path(out)
    loads_in_plain_peft(out, tiny_tokenizer, adapter_logits(model, "coding"))
    assert [p.name for p in (tmp_path / "sess").iterdir()] == ["coding"]  # no temp folders left


def test_session_default_folder(model):
    assert lh.save_adapter(model, "json", path_or_repo="v1") == str(Path("adapters_session") / "v1")
    assert (Path("adapters_session") / "v1" / "adapter_model.safetensors").is_file()


def test_overwrite_is_atomic(model, monkeypatch, tiny_tokenizer):
    first = lh.save_adapter(model, "json")
    old = digest(first)

    def half_save(self, save_directory, **kw):
        d = Path(save_directory) / "json"
        d.mkdir(parents=True)
        (d / "adapter_model.safetensors").write_bytes(b"partial")
        raise OSError("No space left on device")

    with monkeypatch.context() as m:
        m.setattr(PeftModel, "save_pretrained", half_save)
        with pytest.raises(StorageError, match="No space left.*previous copy there is untouched"):
            lh.save_adapter(model, "json")
    assert digest(first) == old
    loads_in_plain_peft(first, tiny_tokenizer, adapter_logits(model, "json"))
    assert [p.name for p in Path("adapters_session").iterdir()] == ["json"]
    with torch.no_grad():  # a retrained adapter replaces the old copy
        model.base_model.model.model.layers[0].self_attn.q_proj.lora_B["json"].weight.add_(1.0)
    assert lh.save_adapter(model, "json") == first
    assert digest(first) != old
    loads_in_plain_peft(first, tiny_tokenizer, adapter_logits(model, "json"))


def test_corrupt_result_is_not_installed(model, monkeypatch):
    first = lh.save_adapter(model, "json")
    old = digest(first)
    real = PeftModel.save_pretrained

    def truncating(self, save_directory, **kw):
        real(self, save_directory, **kw)
        w = Path(save_directory) / "json" / "adapter_model.safetensors"
        w.write_bytes(w.read_bytes()[:-10])

    monkeypatch.setattr(PeftModel, "save_pretrained", truncating)
    with pytest.raises(AdapterFileError, match="truncated"):
        lh.save_adapter(model, "json")
    assert digest(first) == old


def test_pickle_only_on_request(model, tiny_tokenizer, tiny_model):
    out = Path(lh.save_adapter(model, "json", path_or_repo="legacy", allow_pickle=True))
    assert (out / "adapter_model.bin").is_file() and not (out / "adapter_model.safetensors").exists()
    with pytest.raises(AdapterFileError, match="pickle"):
        lh.load_adapters(tiny.make_model(tiny_tokenizer), {"json": "session:legacy"})
    loaded = lh.load_adapters(tiny.make_model(tiny_tokenizer), {"json": "session:legacy"}, allow_pickle=True)
    assert torch.equal(logits(loaded), adapter_logits(model, "json"))


def test_save_bad_input(model, tiny_model):
    with pytest.raises(AdapterNotFoundError, match="'support'.*loaded: \\['json', 'coding'\\]"):
        lh.save_adapter(model, "support")
    with pytest.raises(AdapterNotFoundError, match="none"):
        lh.save_adapter(tiny.make_model(tiny.make_tokenizer()), "json")
    with pytest.raises(AdapterError, match="session, drive, hub"):
        lh.save_adapter(model, "json", where="dropbox")
    with pytest.raises(AdapterError, match="relative path"):
        lh.save_adapter(model, "json", path_or_repo="../escape")
    assert not Path("adapters_session").exists() or not any(Path("adapters_session").iterdir())


# ---------------------------------------------------------------- resolve

def test_resolve_sources(tmp_path, model, monkeypatch):
    folder = Path(lh.save_adapter(model, "json"))
    assert lh.resolve_adapter(folder) == folder
    assert lh.resolve_adapter(str(folder)) == folder
    with pytest.raises(AdapterNotFoundError, match="hub:me/lora_json"):
        lh.resolve_adapter("me/lora_json")
    with pytest.raises(AdapterNotFoundError, match="No adapter folder"):
        lh.resolve_adapter("session:missing")
    for bad in ("session:", "drive:../x", "session:/etc"):
        with pytest.raises(AdapterError, match="relative path"):
            lh.resolve_adapter(bad)
    with pytest.raises(AdapterError, match="hub:owner/repo"):
        lh.resolve_adapter("hub:lonely")
    with pytest.raises(AdapterError, match="got NoneType"):
        lh.resolve_adapter(None)


# ---------------------------------------------------------------- drive

def test_drive_standin_outside_colab(model, capsys, monkeypatch, tmp_path, tiny_tokenizer):
    out = lh.save_adapter(model, "json", where="drive")
    assert out == str(Path("drive_standin") / "json")
    said = capsys.readouterr().out
    assert "only available in Colab" in said and "drive_standin" in said
    lh.save_adapter(model, "coding", where="drive")
    assert lh.resolve_adapter("drive:coding") == Path("drive_standin") / "coding"
    assert capsys.readouterr().out == ""  # said once
    monkeypatch.setenv("LORA_DRIVE_DIR", str(tmp_path / "mydrive"))
    out = lh.save_adapter(model, "json", where="drive", path_or_repo="course/json")
    assert out == str(tmp_path / "mydrive" / "course" / "json")
    loaded = lh.load_adapters(tiny.make_model(tiny_tokenizer), {"j": "drive:course/json"})
    assert torch.equal(logits(loaded), adapter_logits(model, "json"))


@pytest.fixture
def fake_colab(monkeypatch, tmp_path):
    """A stand-in google.colab with drive.mount and userdata.get."""
    google, colab = types.ModuleType("google"), types.ModuleType("google.colab")
    drive, userdata = types.ModuleType("google.colab.drive"), types.ModuleType("google.colab.userdata")
    mounts, secrets = [], {}

    def mount(path):
        mounts.append(path)
        (Path(path) / "MyDrive").mkdir(parents=True)

    def get(key):
        if key not in secrets:
            raise KeyError(f"Secret {key} does not exist.")
        return secrets[key]

    drive.mount, userdata.get = mount, get
    google.colab, colab.drive, colab.userdata = colab, drive, userdata
    for name, mod in [("google", google), ("google.colab", colab), ("google.colab.drive", drive),
                      ("google.colab.userdata", userdata)]:
        mod.__spec__ = importlib.machinery.ModuleSpec(name, None)
        monkeypatch.setitem(sys.modules, name, mod)
    monkeypatch.setattr(storage, "COLAB_DRIVE_MOUNT", str(tmp_path / "content" / "drive"))
    return types.SimpleNamespace(mounts=mounts, secrets=secrets, root=tmp_path / "content" / "drive")


def test_drive_in_colab_mounts_once(fake_colab, model, capsys, tiny_tokenizer):
    out = lh.save_adapter(model, "json", where="drive")
    assert out == str(fake_colab.root / "MyDrive" / "adapters" / "json")
    lh.save_adapter(model, "coding", where="drive")
    assert lh.resolve_adapter("drive:coding") == fake_colab.root / "MyDrive" / "adapters" / "coding"
    assert fake_colab.mounts == [str(fake_colab.root)]
    assert "stand-in" not in capsys.readouterr().out
    loads_in_plain_peft(out, tiny_tokenizer, adapter_logits(model, "json"))


def test_session_dir_in_colab(fake_colab, monkeypatch):
    assert storage.session_dir() == Path("/content/adapters")
    monkeypatch.setenv("LORA_SESSION_DIR", "elsewhere")
    assert storage.session_dir() == Path("elsewhere")


# ---------------------------------------------------------------- hub

@pytest.fixture
def hub(monkeypatch, tmp_path):
    import huggingface_hub.constants as C
    with HubServer(tokens={TOKEN: "alice", "hf_bobToken": "bob"}) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        monkeypatch.setattr(C, "HF_HUB_OFFLINE", False)  # conftest sets HF_HUB_OFFLINE=1 before import
        monkeypatch.setattr(C, "HF_HUB_CACHE", str(tmp_path / "hf_cache"))
        yield server


def test_hub_round_trip(hub, model, monkeypatch, tiny_tokenizer, capsys):
    assert lh.save_adapter(model, "json", where="hub", path_or_repo="lora_json", token=TOKEN) == "alice/lora_json"
    repo = hub.repos["alice/lora_json"]
    assert repo.private
    assert sorted(repo.commits[repo.branches["main"]]) == ["adapter_config.json", "adapter_model.safetensors"]
    assert ("POST", "/api/models/alice/lora_json/preupload/main") in hub.requests
    monkeypatch.setenv("HF_TOKEN", TOKEN)  # private repo: reading needs the token too
    folder = lh.resolve_adapter("hub:alice/lora_json")
    loads_in_plain_peft(folder, tiny_tokenizer, adapter_logits(model, "json"))
    loaded = lh.load_adapters(tiny.make_model(tiny_tokenizer), {"json": "hub:alice/lora_json"})
    assert torch.equal(logits(loaded), adapter_logits(model, "json"))
    out = capsys.readouterr()
    assert TOKEN not in out.out + out.err


def test_hub_subfolder_revision_and_public(hub, model, tiny_tokenizer):
    assert lh.save_adapter(model, "coding", where="hub", path_or_repo="alice/zoo/coding", private=False,
                           token=TOKEN) == "alice/zoo/coding"
    first = hub.repos["alice/zoo"].branches["main"]
    lh.save_adapter(model, "json", where="hub", path_or_repo="alice/zoo/json", token=TOKEN)
    assert not hub.repos["alice/zoo"].private
    assert set(hub.repos["alice/zoo"].commits[hub.repos["alice/zoo"].branches["main"]]) == {
        "coding/adapter_config.json", "coding/adapter_model.safetensors",
        "json/adapter_config.json", "json/adapter_model.safetensors"}
    folder = lh.resolve_adapter("hub:alice/zoo/coding@main")  # public: no token needed
    assert folder.name == "coding"
    loads_in_plain_peft(folder, tiny_tokenizer, adapter_logits(model, "coding"))
    assert lh.resolve_adapter(f"hub:alice/zoo/coding@{first}").is_dir()
    with pytest.raises(AdapterNotFoundError, match="@"):
        lh.resolve_adapter(f"hub:alice/zoo/json@{first}")  # json came in a later commit
    with pytest.raises(AdapterNotFoundError, match="no revision 'v9'"):
        lh.resolve_adapter("hub:alice/zoo/coding@v9")


def test_hub_token_from_env_and_colab_secret(hub, model, monkeypatch, fake_colab):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    assert lh.save_adapter(model, "json", where="hub") == "alice/json"
    monkeypatch.delenv("HF_TOKEN")
    fake_colab.secrets["HF_TOKEN"] = "hf_bobToken"
    assert lh.save_adapter(model, "json", where="hub") == "bob/json"
    assert hub.auth_seen[-1] == "hf_bobToken"


def test_hub_token_problems(hub, model, capsys):
    with pytest.raises(StorageError, match="No Hugging Face token"):
        lh.save_adapter(model, "json", where="hub")
    bad = "hf_notARealTokenAtAll0123456789abcdef"
    with pytest.raises(StorageError, match="HTTP 401.*write access") as e:
        lh.save_adapter(model, "json", where="hub", token=bad)
    assert bad not in str(e.value)
    hub.fail_commits = True
    with pytest.raises(StorageError, match="HTTP 400") as e:
        lh.save_adapter(model, "json", where="hub", token=TOKEN)
    out = capsys.readouterr()
    assert TOKEN not in str(e.value) + out.out + out.err and bad not in out.out + out.err


def test_hub_missing_and_private(hub, model):
    with pytest.raises(AdapterNotFoundError, match="'alice/nothing' was not found"):
        lh.resolve_adapter("hub:alice/nothing")
    lh.save_adapter(model, "json", where="hub", token=TOKEN)
    with pytest.raises(AdapterNotFoundError, match="private"):
        lh.resolve_adapter("hub:alice/json")  # private and no token


def test_hub_offline_uses_cache(hub, model, monkeypatch):
    import huggingface_hub.constants as C
    lh.save_adapter(model, "json", where="hub", private=False, token=TOKEN)
    online = lh.resolve_adapter("hub:alice/json")
    n = len(hub.requests)
    monkeypatch.setattr(C, "HF_HUB_OFFLINE", True)
    assert lh.resolve_adapter("hub:alice/json") == online
    assert len(hub.requests) == n  # served from the cache, no HTTP
    with pytest.raises(AdapterNotFoundError, match="not in the local cache"):
        lh.resolve_adapter("hub:alice/other")
