"""Notebook 01's Hub cells — PEFT's own `push_to_hub` / `PeftModel.from_pretrained`, then `lh.save_adapter` /
`lh.resolve_adapter` — run as written against the project's local Hub-protocol server, on the tiny model."""
import contextlib
import io
import json
from pathlib import Path

import pytest
from peft import LoraConfig, PeftModel, get_peft_model

import lora_helpers as lh
import tiny
from hub_server import HubServer

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "hf_" + "aliceWrites" * 3


def hub_cells() -> list[str]:
    cells = json.loads((ROOT / "01_load_switch_adapters.ipynb").read_text())["cells"]
    found = ["".join(c["source"]) for c in cells if c["cell_type"] == "code"
             and ("model.push_to_hub(" in "".join(c["source"]) or 'where="hub"' in "".join(c["source"]))]
    assert len(found) == 2 and "push_to_hub" in found[0], "01 has the PEFT cell, then the lh cell"
    return found


@pytest.fixture
def hub(monkeypatch, tmp_path):
    import huggingface_hub.constants as C
    from huggingface_hub import hf_api
    from transformers.utils import hub as transformers_hub
    with HubServer(tokens={TOKEN: "alice"}) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        monkeypatch.setattr(C, "ENDPOINT", server.url)  # PEFT and transformers read the import-time constants
        monkeypatch.setattr(C, "HUGGINGFACE_CO_URL_TEMPLATE", server.url + "/{repo_id}/resolve/{revision}/{filename}")
        monkeypatch.setattr(C, "HF_HUB_OFFLINE", False)  # conftest sets HF_HUB_OFFLINE=1 before import
        monkeypatch.setattr(C, "HF_HUB_CACHE", str(tmp_path / "hf_cache"))
        monkeypatch.setattr(transformers_hub, "_hf_api", None)  # transformers keeps one HfApi with its endpoint
        monkeypatch.setattr(hf_api.api, "endpoint", server.url)  # so does huggingface_hub (file_exists, ...)
        monkeypatch.setenv("LORA_SESSION_DIR", str(tmp_path / "session"))
        yield server


def run_cells(tok, token, monkeypatch):
    base = tiny.make_model(tok)
    cfg = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    model = get_peft_model(base, cfg, adapter_name="json")
    model.add_adapter("coding", LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False))
    if token:
        monkeypatch.setenv("HF_TOKEN", token)
    else:
        monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(lh, "load_base", lambda *a, **k: (tiny.make_model(tok), tok))  # a fresh tiny base
    namespace = {"lh": lh, "PeftModel": PeftModel, "model": model, "tok": tok, "BASE": "auto",
                 "PUBLISH_TO_HUB": True}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        for source in hub_cells():
            exec(compile(source, "01-hub-cell", "exec"), namespace)
    return out.getvalue()


def test_01_hub_cells_publish_with_peft_then_lh_and_load_back(hub, tiny_tokenizer, monkeypatch):
    text = run_cells(tiny_tokenizer, TOKEN, monkeypatch)
    assert "опубликовано: alice/lora_adapters | насадка json с Hub совпадает с локальной: ✔" in text, hub.requests
    assert "опубликовано: alice/lora_json | скачано: ✔ | совпадает с локальной: ✔" in text
    peft_repo = hub.repos["alice/lora_adapters"]
    files = set(peft_repo.commits[peft_repo.branches["main"]])
    assert {"json/adapter_model.safetensors", "coding/adapter_model.safetensors"} <= files  # every adapter
    lh_repo = hub.repos["alice/lora_json"]
    assert sorted(lh_repo.commits[lh_repo.branches["main"]]) == ["adapter_config.json", "adapter_model.safetensors"]
    assert peft_repo.private and lh_repo.private
    assert TOKEN not in text


def test_01_hub_cells_with_a_token_that_cannot_write_go_on(hub, tiny_tokenizer, monkeypatch):
    stranger = "hf_" + "notOnThisHub" * 3
    text = run_cells(tiny_tokenizer, stranger, monkeypatch)
    assert "Hub отказал (HTTP 401) — ноутбук продолжает работу" in text
    assert "Опубликовать не получилось — ноутбук продолжает работу" in text
    assert stranger not in text and not hub.repos


def test_01_hub_cells_without_a_token_say_how_to_add_one(hub, tiny_tokenizer, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))  # no `hf auth login` file either
    text = run_cells(tiny_tokenizer, None, monkeypatch)
    assert text.count("Токена нет: добавьте секрет HF_TOKEN") == 2 and not hub.requests
