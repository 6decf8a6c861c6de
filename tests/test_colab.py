"""The Colab runtime guards: Drive only on request and never an exception, resources checked first,
and the demo adapters for a new base trained once and reused."""
import sys
import types

import pytest
import torch

import lora_helpers as lh
from lora_helpers import colab
from lora_helpers.course import demo

import tiny


def _fake_colab(monkeypatch, mount):
    pkg = types.ModuleType("google.colab")
    pkg.drive = types.SimpleNamespace(mount=mount)
    monkeypatch.setitem(sys.modules, "google.colab", pkg)
    monkeypatch.setattr(colab, "in_colab", lambda: True)


def test_no_drive_outside_colab_without_a_stand_in(monkeypatch, capsys):
    monkeypatch.delenv("LORA_DRIVE_DIR", raising=False)
    assert lh.mount_drive() is False
    assert "только в Colab" in capsys.readouterr().out
    monkeypatch.setenv("LORA_DRIVE_DIR", "/tmp/somewhere")
    assert lh.mount_drive() is True


@pytest.mark.parametrize("error", [ValueError("mount failed"), RuntimeError("credential propagation was unsuccessful"),
                                   TimeoutError("no answer")])
def test_a_declined_drive_mount_is_a_message_not_an_exception(monkeypatch, tmp_path, capsys, error):
    def mount(path):
        raise error

    _fake_colab(monkeypatch, mount)
    assert lh.mount_drive(str(tmp_path / "drive")) is False
    out = capsys.readouterr().out
    assert "Google Drive не подключён" in out and str(error) in out


def test_an_accepted_mount(monkeypatch, tmp_path):
    calls = []

    def mount(path):
        calls.append(path)
        (tmp_path / "drive" / "MyDrive").mkdir(parents=True)

    _fake_colab(monkeypatch, mount)
    assert lh.mount_drive(str(tmp_path / "drive")) is True
    assert lh.mount_drive(str(tmp_path / "drive")) is True and len(calls) == 1  # mounted once


def test_require_names_the_numbers(monkeypatch, tmp_path):
    monkeypatch.setattr(colab, "free_ram", lambda: 3 * colab.GIB)
    with pytest.raises(lh.MergeError, match=r"merge.*RAM: needs ~14\.5 GiB, 3\.0 GiB available.*Nothing was started"):
        colab.require("merge", ram=int(14.5 * colab.GIB), error=lh.MergeError)
    colab.require("merge", ram=2 * colab.GIB)  # enough: no error
    with pytest.raises(lh.AdapterError, match="GPU memory: needs ~5.0 GiB, no CUDA GPU"):
        colab.require("load Mistral-7B", gpu=5 * colab.GIB)
    with pytest.raises(lh.AdapterError, match="disk at"):
        colab.require("save", disk=colab.free_disk(tmp_path) * 2, path=tmp_path / "not-yet")
    monkeypatch.setattr(colab, "free_disk", lambda path: 3 * 2**20)  # small sizes in MiB, not "~0.00 GiB"
    with pytest.raises(lh.AdapterError, match=r"disk at .*: needs ~16\.0 MiB, 3\.0 MiB free"):
        colab.require("save an adapter", disk=16 * 2**20)


def test_demo_adapters_for_a_new_base_are_trained_once(monkeypatch, tmp_path, tiny_model, tiny_tokenizer, capsys):
    monkeypatch.setenv("LORA_SESSION_DIR", str(tmp_path / "session"))
    monkeypatch.setenv(demo.TRAIN_STEPS_ENV, "1")
    trained = []
    real = demo._train
    monkeypatch.setattr(demo, "_train", lambda model, tok, names, forced, progress, drive=False:
                        trained.append(list(names)) or real(model, tok, names, forced, progress, drive))
    first = demo.demo_adapters(tiny_model, tiny_tokenizer, progress=False)
    assert trained == [["json", "coding", "support"]] and "обучаю их сейчас" in capsys.readouterr().out
    assert not hasattr(tiny_model, "peft_config")  # the base is left without adapters
    second = demo.demo_adapters(tiny_model, tiny_tokenizer, progress=False)
    assert second == first and trained == [["json", "coding", "support"]]
    assert all(str(lh.resolve_adapter(s)).startswith(str(tmp_path / "session")) for s in second.values())
    model = lh.load_adapters(tiny_model, second)
    assert set(model.peft_config) == {"json", "coding", "support"}


def test_demo_adapters_on_drive_serve_the_next_notebook(monkeypatch, tmp_path, tiny_model, tiny_tokenizer, capsys):
    """Each Colab notebook has its own runtime: with Drive, 02 and 03 reuse what 01 trained."""
    monkeypatch.setenv("LORA_DRIVE_DIR", str(tmp_path / "drive"))
    monkeypatch.setenv("LORA_SESSION_DIR", str(tmp_path / "session-01"))
    monkeypatch.setenv(demo.TRAIN_STEPS_ENV, "1")
    first = demo.demo_adapters(tiny_model, tiny_tokenizer, where="drive", progress=False)
    out = capsys.readouterr().out
    assert "обучаю их сейчас" in out and "сохранятся на Drive" in out and "отметьте USE_DRIVE" not in out
    assert all(s.startswith("drive:") for s in first.values())
    monkeypatch.setenv("LORA_SESSION_DIR", str(tmp_path / "session-02"))  # the next notebook's runtime
    monkeypatch.setattr(demo, "_train", lambda *a, **k: pytest.fail("trained again although Drive has them"))
    assert demo.demo_adapters(tiny_model, tiny_tokenizer, where="drive", progress=False) == first
    assert not (tmp_path / "session-02").exists()


def test_demo_training_steps_variable_is_checked(monkeypatch, tiny_model, tiny_tokenizer):
    monkeypatch.setenv(demo.TRAIN_STEPS_ENV, "a few")
    with pytest.raises(lh.AdapterError, match="positive number"):
        demo.demo_adapters(tiny_model, tiny_tokenizer)
    with pytest.raises(lh.AdapterError, match="'session' or 'drive'"):
        demo.demo_adapters(tiny_model, tiny_tokenizer, where="hub")


def test_embedded_base_gets_the_shipped_adapters(monkeypatch, tiny_model, tiny_tokenizer):
    monkeypatch.delenv(demo.TRAIN_STEPS_ENV, raising=False)
    tiny_model.name_or_path = lh.base.EMBEDDED_NAME
    assert demo.demo_adapters(tiny_model, tiny_tokenizer) == lh.DEMO_ADAPTERS


def test_demo_training_leaves_a_4bit_base_as_it_was_loaded(monkeypatch, tmp_path, tiny_tokenizer):
    """QLoRA's preparation casts the unquantized layers to fp32 and turns on gradient checkpointing; once the
    demo adapters are trained and taken out, the base is back to what load_base gave."""
    q = tiny.make_4bit(tiny_tokenizer, tmp_path / "tiny", dtype=torch.bfloat16)
    before = {n: p.dtype for n, p in q.named_parameters()}
    assert torch.bfloat16 in before.values()
    monkeypatch.setenv("LORA_SESSION_DIR", str(tmp_path / "session"))
    monkeypatch.setenv(demo.TRAIN_STEPS_ENV, "1")
    seen = {}
    real = demo._train

    def spy(model, *a, **kw):
        trained = real(model, *a, **kw)
        seen["fp32 while training"] = model.get_input_embeddings().weight.dtype == torch.float32
        return trained

    monkeypatch.setattr(demo, "_train", spy)
    demo.demo_adapters(q, tiny_tokenizer, progress=False)
    assert seen == {"fp32 while training": True}  # the preparation did run
    assert {n: p.dtype for n, p in q.named_parameters()} == before
    assert not q.is_gradient_checkpointing and not hasattr(q, "peft_config")
