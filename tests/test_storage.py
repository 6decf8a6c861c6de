"""save_adapter / resolve_adapter: session folder, Drive (stand-in and a fake Colab), and the Hub over HTTP."""
import errno
import hashlib
import importlib.machinery
import json
import os
import struct
import sys
import types
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model

import lora_helpers as lh
import tiny
from hub_server import HubServer
from lora_helpers import folders, hub as hub_module, storage
from lora_helpers.errors import AdapterError, AdapterFileError, AdapterNotFoundError, StorageError

X = torch.tensor([[5, 17, 42, 8, 99, 3]])
TOKEN = "hf_aliceWriteToken1234567890abcdefghij"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    import huggingface_hub.constants as C
    for var in ("LORA_SESSION_DIR", "LORA_DRIVE_DIR", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE",
                "HF_ENDPOINT", "LORA_HUB_TIMEOUT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(C, "HF_TOKEN_PATH", str(tmp_path / "no_hf_login" / "token"))  # not this machine's login
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
    with pytest.raises(AdapterNotFoundError, match="'support' is loaded; loaded: json, coding\\b"):
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
    said = capsys.readouterr().out  # a learner reads this in notebook 01: Russian
    assert said == ("Google Drive есть только в Colab: вместо него используется локальная папка 'drive_standin' "
                    "(другую можно задать в LORA_DRIVE_DIR).\n")
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
    monkeypatch.setattr("lora_helpers.colab.COLAB_DRIVE_MOUNT", str(tmp_path / "content" / "drive"))
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


# ---------------------------------------------------------------- bad targets lose nothing

def tree(folder):
    """Every file under ``folder`` (links not followed) with its bytes: to prove nothing changed."""
    folder = Path(folder)
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() and not p.is_symlink() else "dir")
            for p in sorted(folder.rglob("*"))}


@pytest.fixture
def filled(model, tmp_path):
    """A session and a Drive folder that already hold an adapter and a user's own file."""
    for where in ("session", "drive"):
        lh.save_adapter(model, "coding", where=where)
    for root in (Path("adapters_session"), Path("drive_standin")):
        (root / "notes.txt").write_text("my notes")
    return {r: tree(r) for r in ("adapters_session", "drive_standin")}


@pytest.mark.parametrize("where", ["session", "drive"])
@pytest.mark.parametrize("target", [".", "./", " . ", "coding/..", "./.", "/"])
def test_saving_to_the_root_itself_is_refused(model, filled, where, target):
    with pytest.raises(AdapterError, match="subfolder"):
        lh.save_adapter(model, "json", where=where, path_or_repo=target)
    assert {r: tree(r) for r in filled} == filled


def test_a_users_file_or_folder_at_the_target_is_kept(model, filled):
    session = Path("adapters_session")
    (session / "json").write_text("a plain file of mine")
    (session / "work").mkdir()
    (session / "work" / "train.py").write_text("print('my code')")
    (session / "mixed").mkdir()  # an adapter folder the user added files to
    for f in ("adapter_config.json", "adapter_model.safetensors"):
        (session / "mixed" / f).write_bytes((session / "coding" / f).read_bytes())
    (session / "mixed" / "data.csv").write_text("a,b")
    before = tree(session)
    for target, words in [("json", "is a file"), ("work", "train.py"), ("mixed", "data.csv")]:
        with pytest.raises(StorageError, match=f"(?s){words}.*Nothing was changed"):
            lh.save_adapter(model, "json", path_or_repo=target)
        assert tree(session) == before
    (session / "empty").mkdir()
    assert lh.save_adapter(model, "json", path_or_repo="empty") == str(session / "empty")  # nothing to lose
    (session / "coding" / ".DS_Store").write_bytes(b"\0")  # a synced Drive folder's litter is no user data
    assert lh.save_adapter(model, "json", path_or_repo="coding") == str(session / "coding")  # ours: replaced
    assert digest(session / "coding") == digest(session / "empty")


def test_links_out_of_the_session_are_not_followed(model, tmp_path, monkeypatch):
    monkeypatch.setenv("LORA_SESSION_DIR", str(tmp_path / "sess"))
    outside = tmp_path / "outside"
    lh.save_adapter(model, "json", path_or_repo="seed")
    (tmp_path / "sess" / "seed").rename(outside)  # an adapter folder outside the session
    (outside / "keep.txt").write_text("mine")
    (tmp_path / "sess" / "json").symlink_to(outside)
    (tmp_path / "sess" / "zoo").symlink_to(outside, target_is_directory=True)
    before = tree(outside)
    for target in ("json", "zoo/coding", "zoo"):
        with pytest.raises(StorageError, match="not a folder inside the session folder"):
            lh.save_adapter(model, "coding", path_or_repo=target)
    assert tree(outside) == before and (tmp_path / "sess" / "json").is_symlink()
    real = tmp_path / "real_sess"
    real.mkdir()
    monkeypatch.setenv("LORA_SESSION_DIR", str(tmp_path / "linked_sess"))
    (tmp_path / "linked_sess").symlink_to(real)  # the session folder itself may be a link
    assert lh.save_adapter(model, "json") == str(tmp_path / "linked_sess" / "json")
    assert (real / "json" / "adapter_model.safetensors").is_file()


@pytest.mark.parametrize("bad", ["sub/json", "ABS", "json "])
def test_adapter_names_that_are_paths_move_nothing(tiny_model, tmp_path, bad):
    outside = tmp_path / "victim"
    outside.mkdir()
    (outside / "precious.txt").write_text("mine")
    name = str(outside) if bad == "ABS" else bad
    m = get_peft_model(tiny_model, LoraConfig(r=2, target_modules=["q_proj"]), adapter_name="json")
    m.add_adapter(name, LoraConfig(r=2, target_modules=["q_proj"]))
    with pytest.raises(AdapterError, match="cannot name a saved adapter"):
        lh.save_adapter(m, name)
    with pytest.raises(AdapterError, match="cannot name a saved adapter"):
        lh.save_adapter(m, name, path_or_repo="elsewhere")
    assert tree(outside) == {"precious.txt": b"mine"}
    assert not Path("adapters_session").exists() or tree("adapters_session") == {}


def test_an_adapter_named_default_does_not_pile_up_copies(tiny_model, tiny_tokenizer):
    torch.manual_seed(3)
    m = get_peft_model(tiny_model, LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False))
    assert list(m.peft_config) == ["default"]
    for _ in range(3):
        out = lh.save_adapter(m, "default")
    assert sorted(p.name for p in Path(out).iterdir()) == ["README.md", "adapter_config.json",
                                                           "adapter_model.safetensors"]
    assert [p.name for p in Path("adapters_session").iterdir()] == ["default"]
    loads_in_plain_peft(out, tiny_tokenizer, logits(m))


# ---------------------------------------------------------------- Ctrl-C at any point keeps a complete copy

class Interrupts:
    """Raise KeyboardInterrupt at the k-th file-system step (before it runs, or right after it did)."""

    def __init__(self, monkeypatch, k, when, repeat=False):
        self.k, self.when, self.repeat, self.n = k, when, repeat, 0
        for mod, fname in [(folders.os, "rename"), (folders.os, "replace"), (folders.shutil, "rmtree"),
                           (folders.os, "unlink")]:
            monkeypatch.setattr(mod, fname, self.wrap(getattr(mod, fname)))

    def wrap(self, real):
        def step(*a, **kw):
            self.n += 1
            hit = self.n == self.k or (self.repeat and self.n > self.k)
            if hit and self.when == "before":
                raise KeyboardInterrupt
            out = real(*a, **kw)
            if hit:
                raise KeyboardInterrupt
            return out
        return step


def copies(folder="adapters_session"):
    """The entries of the session folder, less staging folders a Ctrl-C kept from being removed."""
    return sorted(p.name for p in Path(folder).iterdir() if ".tmp-" not in p.name)


def count_steps(monkeypatch, fn):
    with monkeypatch.context() as m:
        counter = Interrupts(m, k=10**9, when="before")
        fn()
    return counter.n


@pytest.mark.parametrize("when", ["before", "after"])
def test_ctrl_c_at_any_step_of_a_save_keeps_a_complete_copy(model, monkeypatch, tiny_tokenizer, when):
    folder = Path(lh.save_adapter(model, "json"))
    lora_b = model.base_model.model.model.layers[0].self_attn.q_proj.lora_B["json"].weight
    versions = {}
    for v in ("old", "new"):
        with torch.no_grad():
            lora_b.fill_(0.1 if v == "old" else 0.2)
        versions[v] = (adapter_logits(model, "json"), digest(lh.save_adapter(model, "json")))
    steps = count_steps(monkeypatch, lambda: lh.save_adapter(model, "json"))
    assert steps >= 3, steps  # old aside, new in, old removed
    for k in range(1, steps + 1):
        with torch.no_grad():
            lora_b.fill_(0.1)
        lh.save_adapter(model, "json")  # the old copy
        with torch.no_grad():
            lora_b.fill_(0.2)
        with monkeypatch.context() as m:
            Interrupts(m, k, when)
            with pytest.raises(KeyboardInterrupt):
                lh.save_adapter(model, "json")
        found = [v for v, (_, d) in versions.items() if digest(folder) == d]
        assert found, f"step {k} {when}: no complete copy at {folder}"
        loads_in_plain_peft(folder, tiny_tokenizer, versions[found[0]][0])
        assert lh.save_adapter(model, "json") == str(folder)  # the next save cleans up
        assert digest(folder) == versions["new"][1]
        assert copies() == ["json"]


def test_a_second_ctrl_c_during_the_rollback_is_recovered_later(model, monkeypatch, tiny_tokenizer):
    folder = Path(lh.save_adapter(model, "json"))
    old, old_logits = digest(folder), adapter_logits(model, "json")
    with torch.no_grad():
        model.base_model.model.model.layers[0].self_attn.q_proj.lora_B["json"].weight.add_(1.0)
    with monkeypatch.context() as m:
        Interrupts(m, 1, "after", repeat=True)  # old copy moved aside, then every step interrupted
        with pytest.raises(KeyboardInterrupt):
            lh.save_adapter(model, "json")
    assert lh.resolve_adapter("session:json") == folder  # put back on the next look
    assert digest(folder) == old
    loads_in_plain_peft(folder, tiny_tokenizer, old_logits)
    lh.save_adapter(model, "json")
    assert copies() == ["json"]


def test_replace_folder_refuses_and_keeps_both(tmp_path):
    target, src = tmp_path / "t", tmp_path / "s"
    target.mkdir()
    (target / "a").write_text("old")
    src.mkdir()
    (src / "a").write_text("new")

    def refuse(old):
        raise StorageError("no")

    with pytest.raises(StorageError):
        folders.replace_folder(src, target, check_old=refuse)
    assert (target / "a").read_text() == "old" and (src / "a").read_text() == "new"
    assert folders.replace_folder(src, target) == target
    assert (target / "a").read_text() == "new" and not src.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t"]


def test_the_folder_write_and_the_hub_are_still_importable_from_storage():
    """merge, train and older code import these from storage; they are the split-out modules' own objects."""
    for name in ("staging_folder", "replace_folder", "recover_folder", "check_ours"):
        assert getattr(storage, name) is getattr(folders, name)
    assert storage.find_token is hub_module.find_token is lh.find_token


def test_folders_is_a_leaf():
    """The atomic write is used by storage, merge and train: it may import nothing of the package but errors."""
    import ast
    tree = ast.parse(Path(folders.__file__).read_text())
    relative = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level}
    assert relative == {"errors"}


# ---------------------------------------------------------------- disks and folders that refuse

def test_full_disk_says_how_much_space_and_where(model, monkeypatch):
    first = lh.save_adapter(model, "json")
    old = digest(first)

    def full(self, save_directory, **kw):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(PeftModel, "save_pretrained", full)
    need = sum(t.numel() * 4 for n, t in model.named_parameters() if ".json." in n) / 1024
    with pytest.raises(StorageError, match=rf"(?s)needs about {need:.0f} KiB in '.*adapters_session'.*[KMG]iB are "
                                           "free.*previous copy there is untouched"):
        lh.save_adapter(model, "json")
    assert digest(first) == old


def test_read_only_place_is_a_storage_error(model, monkeypatch, tmp_path):
    monkeypatch.setenv("LORA_SESSION_DIR", str(tmp_path / "ro" / "sess"))
    real_mkdir = folders.os.mkdir

    def read_only(path, *a, **kw):
        if str(tmp_path / "ro") in str(path):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_mkdir(path, *a, **kw)

    monkeypatch.setattr(folders.os, "mkdir", read_only)
    with pytest.raises(StorageError, match="(?s)read-only.*LORA_SESSION_DIR"):
        lh.save_adapter(model, "json")


@pytest.mark.parametrize("var, where", [("LORA_SESSION_DIR", "session"), ("LORA_DRIVE_DIR", "drive")])
def test_a_place_variable_that_names_a_file(model, monkeypatch, tmp_path, var, where):
    f = tmp_path / "a_file"
    f.write_text("not a folder")
    for value in (f, f / "below"):
        monkeypatch.setenv(var, str(value))
        with pytest.raises(StorageError, match=f"(?s)is a file.*Point {var} at a folder"):
            lh.save_adapter(model, "json", where=where)
        with pytest.raises(StorageError, match=f"Point {var} at a folder"):
            lh.resolve_adapter(f"{where}:json")
    assert f.read_text() == "not a folder"


def test_colab_drive_that_will_not_mount(fake_colab, model, monkeypatch, capsys):
    def declined(path):
        raise ValueError("mount failed")

    monkeypatch.setattr(sys.modules["google.colab.drive"], "mount", declined)
    with pytest.raises(StorageError, match="(?s)not mounted.*where='session'"):
        lh.save_adapter(model, "json", where="drive")
    assert "mount failed" in capsys.readouterr().out


def test_deeply_nested_config_is_a_file_error(model, tiny_tokenizer):
    folder = Path(lh.save_adapter(model, "json"))
    (folder / "adapter_config.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(AdapterFileError, match="not valid JSON"):
        storage.inspect_adapter(folder)
    with pytest.raises(AdapterFileError, match="not valid JSON"):
        lh.load_adapters(tiny.make_model(tiny_tokenizer), {"json": folder})


# ---------------------------------------------------------------- safetensors headers (read by safetensors)

def _header_file(path, header, data=b""):
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


@pytest.mark.parametrize("make, words", [
    (lambda p, ok: p.write_bytes(b"abc"), "too short"),
    (lambda p, ok: p.write_bytes(ok[:-10]), "truncated"),
    (lambda p, ok: p.write_bytes(ok + b"\0" * 8), "padded"),
    (lambda p, ok: p.write_bytes(os.urandom(4096)), "truncated or not safetensors"),
    (lambda p, ok: p.write_bytes(struct.pack("<Q", 10**12) + b"{}"), "truncated or not safetensors"),
    (lambda p, ok: p.write_bytes(struct.pack("<Q", 16) + b"not json at all!" + ok[24:]), "corrupt"),
    (lambda p, ok: _header_file(p, {"__metadata__": {"a": "b"}}), "no tensors"),
    (lambda p, ok: _header_file(p, {"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8),
     "corrupt"),
    (lambda p, ok: _header_file(p, {"w": {"dtype": "Q9", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8),
     "corrupt"),
    (lambda p, ok: p.write_bytes(struct.pack("<Q", 100_000) + b"[" * 100_000), "corrupt"),
])
def test_bad_safetensors_are_refused_without_loading(tmp_path, make, words, monkeypatch):
    from safetensors.torch import save_file
    ok_file = tmp_path / "ok.safetensors"
    save_file({"a.lora_A.weight": torch.zeros(2, 3), "b": torch.ones(4, dtype=torch.bfloat16)}, ok_file)
    assert storage.read_safetensors_header(ok_file) == {"a.lora_A.weight": ("F32", (2, 3)), "b": ("BF16", (4,))}
    bad = tmp_path / "bad.safetensors"
    make(bad, ok_file.read_bytes())
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("nothing may be unpickled"))
    with pytest.raises(AdapterFileError, match=words):
        storage.read_safetensors_header(bad)


def test_header_read_uses_safetensors_and_no_tensor(tmp_path, monkeypatch):
    import safetensors
    from safetensors.torch import save_file
    f = tmp_path / "w.safetensors"
    save_file({"x": torch.zeros(4, 4)}, f)
    opened = []
    real = safetensors.safe_open

    class Spy:
        def __init__(self, *a, **kw):
            opened.append(kw.get("framework", a[1] if len(a) > 1 else None))
            self.f = real(*a, **kw)

        def __enter__(self):
            inner = self.f.__enter__()
            return types.SimpleNamespace(keys=inner.keys, get_slice=inner.get_slice,
                                         get_tensor=lambda k: pytest.fail("a tensor was loaded"))

        def __exit__(self, *exc):
            return self.f.__exit__(*exc)

    monkeypatch.setattr(safetensors, "safe_open", Spy)
    assert storage.read_safetensors_header(f) == {"x": ("F32", (4, 4))}
    assert opened == ["numpy"]


# ---------------------------------------------------------------- the Hub failing

@pytest.fixture
def published(hub, model):
    lh.save_adapter(model, "json", where="hub", private=False, token=TOKEN)
    return hub


@pytest.fixture
def short_timeouts(monkeypatch):
    """Hub calls limited to 1.5 s in all by the library's own setting (its default is 60 s)."""
    monkeypatch.setenv("LORA_HUB_TIMEOUT", "1.5")


@pytest.mark.parametrize("route, how, words", [
    ("info", "500", "Hub server failed \\(HTTP 500\\).*try again in a few minutes"),
    ("info", "cut", "connection to the Hub at http://127.0.0.1:\\d+ failed or was cut"),
    ("resolve", "cut", "connection to the Hub at http://127.0.0.1:\\d+ failed or was cut"),
    ("info", "stall", "did not answer in time"),
])
def test_hub_download_failures_say_what_happened(published, monkeypatch, short_timeouts, route, how, words,
                                                 capsys):
    published.faults[route] = how
    with pytest.raises(StorageError, match=f"(?s)fetch 'hub:alice/json'.*{words}") as e:
        lh.resolve_adapter("hub:alice/json")
    assert "not in the local cache)" not in str(e.value).replace("(and it is not in the local cache)", "")
    out = capsys.readouterr()
    assert TOKEN not in str(e.value) + out.out + out.err


@pytest.mark.parametrize("route, how, words", [
    ("create", "500", "Hub server failed \\(HTTP 500\\)"),
    ("create", "cut", "failed or was cut"),
    ("create", "stall", "did not answer in time"),
])
def test_hub_upload_failures_say_what_happened(hub, model, short_timeouts, route, how, words, capsys):
    hub.faults[route] = how
    with pytest.raises(StorageError, match=f"(?s)upload 'json' to the Hub repo 'alice/json'.*{words}") as e:
        lh.save_adapter(model, "json", where="hub", path_or_repo="alice/json", token=TOKEN)
    out = capsys.readouterr()
    assert TOKEN not in str(e.value) + out.out + out.err


@pytest.mark.parametrize("spec", ["hub:bad id!/x", "hub:alice/" + "b" * 200, "hub:al--ice/x",
                                  "hub:alice/json/../../etc", "hub:alice/json/../x@main"])
def test_invalid_hub_ids_are_refused_before_asking(hub, spec):
    with pytest.raises(AdapterError, match="not a valid Hub repository|without '.' or '..'"):
        lh.resolve_adapter(spec)
    assert hub.requests == []


@pytest.mark.parametrize("repo", ["bad repo!", "alice/bad repo", "alice/" + "r" * 200, "alice/zoo/../../x"])
def test_invalid_hub_ids_are_refused_before_uploading(hub, model, repo):
    with pytest.raises(AdapterError, match="not a valid Hub repository|without '.' or '..'"):
        lh.save_adapter(model, "json", where="hub", path_or_repo=repo, token=TOKEN)
    assert hub.requests == []


# ---------------------------------------------------------------- plain exceptions, long names, link loops

def test_a_plain_exception_for_a_full_disk_says_how_much_space(model, monkeypatch):
    """tokenizers/safetensors raise ``Exception("No space left on device (os error 28)")``, not an OSError."""
    first = lh.save_adapter(model, "json")
    old = digest(first)

    def full(self, save_directory, **kw):
        (Path(save_directory) / "adapter_model.safetensors").write_bytes(b"\0" * 100)  # half a file
        raise Exception("No space left on device (os error 28)")

    monkeypatch.setattr(PeftModel, "save_pretrained", full)
    with pytest.raises(StorageError, match=r"(?s)Not enough disk space.*needs about \d+ KiB.*free"):
        lh.save_adapter(model, "json")
    assert digest(first) == old and copies() == ["json"]


@pytest.mark.parametrize("case", ["name_300", "name_240", "deep", "adapter_name_300"])
def test_names_too_long_for_the_file_system_are_refused_before_writing(tiny_model, case):
    m = get_peft_model(tiny_model, LoraConfig(r=2, target_modules=["q_proj"]), adapter_name="json")
    name, where = "json", {"name_300": "b" * 300, "name_240": "b" * 240, "deep": "/".join(["c" * 200] * 30),
                           "adapter_name_300": None}[case]
    if case == "adapter_name_300":
        name = "a" * 300
        m.add_adapter(name, LoraConfig(r=2, target_modules=["q_proj"]))
    with pytest.raises(StorageError, match=r"(?s)too long.*at most \d+"):
        lh.save_adapter(m, name, path_or_repo=where)
    assert not Path("adapters_session").exists() or tree("adapters_session") == {}


def test_a_session_folder_that_is_a_link_loop(model, monkeypatch):
    os.symlink("loop", "loop")
    for value in ("loop", "loop/below"):
        monkeypatch.setenv("LORA_SESSION_DIR", value)
        with pytest.raises(StorageError, match="(?s)symbolic link that leads nowhere.*Point LORA_SESSION_DIR"):
            lh.save_adapter(model, "json")
        with pytest.raises(StorageError, match="Point LORA_SESSION_DIR"):
            lh.resolve_adapter("session:json")
    assert os.listdir(".") == ["loop"]


def test_an_adapter_folder_that_is_a_link_loop(model, monkeypatch, tmp_path):
    monkeypatch.setenv("LORA_SESSION_DIR", "sess")
    lh.save_adapter(model, "coding")
    os.symlink("jl", "sess/jl")
    before = tree("sess")
    for target in ("jl", "jl/inner"):
        with pytest.raises(StorageError, match="link loop"):
            lh.save_adapter(model, "json", path_or_repo=target)
    for source in ("session:jl", "sess/jl"):
        with pytest.raises(AdapterNotFoundError, match="(?s)symbolic link.*link loop"):
            lh.resolve_adapter(source)
        with pytest.raises(AdapterNotFoundError, match="link loop"):
            lh.load_adapters(tiny.make_model(tiny.make_tokenizer()), {"x": source})
    assert tree("sess") == before


# ---------------------------------------------------------------- one adapter size, beside trainable tokens

@pytest.fixture
def beside_tokens(tiny_model):
    """A plain LoRA adapter "plain" and a trainable-tokens adapter "tokens" on one model (PEFT's state dict of
    "plain" raises KeyError there: the tokens wrapper looks for its own delta under every adapter's name)."""
    torch.manual_seed(3)
    m = get_peft_model(tiny_model, LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False),
                       adapter_name="plain")
    m.add_adapter("tokens", LoraConfig(r=2, target_modules=["v_proj"], init_lora_weights=False,
                                       trainable_token_indices=[1, 2]))
    return m


def test_adapter_size_is_one_definition_beside_trainable_tokens(beside_tokens, tiny_tokenizer, tmp_path):
    m = beside_tokens
    table = {row["name"]: row["size_bytes"] for row in lh.list_adapters(m)}
    # plain: q_proj (32 -> 32) at r=2 on 2 layers, A and B: 2 * (2*32 + 32*2) fp32 numbers
    assert storage.adapter_bytes(m, "plain") == table["plain"] == 2 * (2 * 32 + 32 * 2) * 4
    assert storage.adapter_bytes(m, "tokens") == table["tokens"] > 0
    path = lh.merge_and_save(m, "plain", tmp_path / "merged", tokenizer=tiny_tokenizer)
    assert json.loads((path / "merge_report.json").read_text())["adapter_bytes"] == table["plain"]
    for name in ("plain", "tokens"):
        expected = adapter_logits(m, name)
        folder = lh.save_adapter(m, name)
        loads_in_plain_peft(folder, tiny_tokenizer, expected)


# ---------------------------------------------------------------- probe findings: the user's README, Ctrl-C in cleanup

def test_saving_over_a_folder_keeps_the_users_readme(model, tiny_tokenizer):
    folder = Path(lh.save_adapter(model, "json"))
    (folder / "README.md").write_text("# My notes\nTrained on my tickets, 2026-12.\n", encoding="utf-8")
    with torch.no_grad():
        model.base_model.model.model.layers[0].self_attn.q_proj.lora_B["json"].weight.add_(1.0)
    assert lh.save_adapter(model, "json") == str(folder)
    assert (folder / "README.md").read_text(encoding="utf-8") == "# My notes\nTrained on my tickets, 2026-12.\n"
    loads_in_plain_peft(folder, tiny_tokenizer, adapter_logits(model, "json"))  # the new weights
    assert copies() == ["json"]


@pytest.mark.parametrize("times", [1, 2])
def test_a_ctrl_c_while_the_staging_folder_is_removed_is_cleaned_up_later(model, monkeypatch, times):
    """The staging folder is removed last; a Ctrl-C there (twice: also during the retry) leaves it behind, and the
    next look at that folder removes it. A staging folder of another live process is left alone."""
    lh.save_adapter(model, "json")
    other = Path("adapters_session") / f".json.tmp-{os.getppid()}-abcdefgh"  # a save in progress elsewhere
    other.mkdir()
    with monkeypatch.context() as m:
        real, hits = folders.shutil.rmtree, []

        def interrupted(path, *a, **kw):
            if ".tmp-" in str(path) and len(hits) < times:
                hits.append(path)
                raise KeyboardInterrupt
            return real(path, *a, **kw)
        m.setattr(folders.shutil, "rmtree", interrupted)
        with pytest.raises(KeyboardInterrupt):
            lh.save_adapter(model, "json")
    left = sorted(p.name for p in Path("adapters_session").iterdir())
    assert len(left) == (3 if times == 2 else 2), left  # json, the other save's folder (and ours when twice)
    assert lh.resolve_adapter("session:json") == Path("adapters_session/json")
    assert sorted(p.name for p in Path("adapters_session").iterdir()) == sorted(["json", other.name])
    other.rmdir()
    lh.save_adapter(model, "json")
    assert sorted(p.name for p in Path("adapters_session").iterdir()) == ["json"]
