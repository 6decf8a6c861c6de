"""An adapter file must agree with its adapter_config.json and name no adapter: load_adapters refuses it before
anything changes (the other adapters and the base stay bit-identical)."""
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

import lora_helpers as lh
import tiny
from lora_helpers.errors import AdapterError, AdapterFileError

X = torch.tensor([[5, 17, 42, 8, 99, 3]])
PRE = "base_model.model.model.layers.0.self_attn."


@pytest.fixture(scope="module")
def src(tmp_path_factory, tiny_tokenizer):
    root = tmp_path_factory.mktemp("files")
    t = tiny_tokenizer
    return {
        "json": tiny.save_lora(root / "json", t, seed=1, target_modules=["q_proj", "v_proj"]),
        "coding": tiny.save_lora(root / "coding", t, seed=2, target_modules=["q_proj", "o_proj"]),
        "mts": tiny.save_lora(root / "mts", t, seed=3, target_modules=["q_proj"], modules_to_save=["lm_head"]),
        "dora": tiny.save_lora(root / "dora", t, seed=4, target_modules=["q_proj"], use_dora=True),
    }


def edited(tmp_path, folder, tensors=None, config=None):
    """A copy of ``folder`` with its tensors and/or its config changed by the given functions."""
    d = tmp_path / f"edited_{folder.name}"
    shutil.copytree(folder, d)
    if tensors:
        w = d / "adapter_model.safetensors"
        save_file(tensors(load_file(w)), w)
    if config:
        c = d / "adapter_config.json"
        cfg = json.loads(c.read_text())
        config(cfg)
        c.write_text(json.dumps(cfg))
    return d


def watch_peft_loads(monkeypatch):
    """Record every PEFT load call from now on (the checks must refuse a file before PEFT sees it)."""
    from peft import PeftModel

    calls = []
    for what in ("from_pretrained", "load_adapter"):
        real = getattr(PeftModel, what)
        monkeypatch.setattr(PeftModel, what, (lambda real: lambda *a, **k: calls.append(a) or real(*a, **k))(real))
    return calls


def snapshot(model):
    with torch.no_grad():
        out = model(X).logits.clone()
    return (list(getattr(model, "peft_config", {})), lh.active_adapter(model), out,
            {k: t.clone() for k, t in model.state_dict().items()},
            {n: p.requires_grad for n, p in model.named_parameters()})


def assert_unchanged(model, before):
    after = snapshot(model)
    assert after[0] == before[0] and after[1] == before[1] and after[4] == before[4]
    assert torch.equal(after[2], before[2])
    assert after[3].keys() == before[3].keys()
    assert all(torch.equal(t, before[3][k]) for k, t in after[3].items()), "a tensor changed"


def renamed(tag):
    """Tensor keys with an adapter name in them, as PEFT holds them in memory (``lora_A.<tag>.weight``)."""
    def edit(ts):
        return {k.replace(".lora_A.", f".lora_A.{tag}.").replace(".lora_B.", f".lora_B.{tag}."): v * 3
                for k, v in ts.items()}
    return edit


# ---------------------------------------------------------------- keys that name an adapter (probe defect)

@pytest.mark.parametrize("tag", ["coding", "json", "other"])
def test_keys_naming_an_adapter_are_refused_before_anything_changes(tmp_path, tiny_model, src, tag, monkeypatch):
    """Keys '...lora_A.coding.weight' loaded as "json" would rewrite the loaded "coding" adapter in place."""
    model = lh.load_adapters(tiny_model, {"coding": src["coding"]})
    coding = {k: t.clone() for k, t in model.state_dict().items() if ".coding." in k}
    evil = edited(tmp_path, src["coding"], tensors=renamed(tag))
    before, calls = snapshot(model), watch_peft_loads(monkeypatch)
    with pytest.raises(AdapterFileError, match=rf"lora_A\.{tag}\.weight.*names? .*{tag}"):
        lh.load_adapters(model, {"json": evil})
    assert calls == []
    assert_unchanged(model, before)
    assert all(torch.equal(model.state_dict()[k], t) for k, t in coding.items())


def test_keys_naming_an_adapter_are_refused_on_a_plain_base(tmp_path, tiny_model, src):
    evil = edited(tmp_path, src["json"], tensors=renamed("json"))
    before = snapshot(tiny_model)
    with pytest.raises(AdapterFileError, match=r"lora_B\.json\.weight"):
        lh.load_adapters(tiny_model, {"json": evil})
    assert_unchanged(tiny_model, before)
    assert not hasattr(tiny_model, "peft_config")


def test_keys_into_another_adapters_modules_to_save_copy_are_refused(tmp_path, tiny_model, src):
    """Even with allow_base_weights=True: 'lm_head.modules_to_save.coding.weight' is PEFT's copy for "coding"."""
    shape = tuple(tiny_model.lm_head.weight.shape)
    model = lh.load_adapters(tiny_model, {"coding": src["mts"]})
    key = "base_model.model.lm_head.modules_to_save.coding.weight"
    evil = edited(tmp_path, src["json"], tensors=lambda ts: {**ts, key: torch.zeros(shape)})
    before = snapshot(model)
    with pytest.raises(AdapterFileError, match=r"lm_head\.modules_to_save\.coding\.weight"):
        lh.load_adapters(model, {"json": evil}, allow_base_weights=True)
    assert_unchanged(model, before)


# ---------------------------------------------------------------- config and tensors disagree (probe defect)

def drop(*parts):
    return lambda ts: {k: v for k, v in ts.items() if not any(p in k for p in parts)}


def add_k_proj(ts):
    extra = {k.replace("q_proj", "k_proj"): v.clone() for k, v in ts.items() if "q_proj" in k}
    extra = {k: (v[:16].clone() if ".lora_B." in k else v) for k, v in extra.items()}  # k_proj: 16 outputs
    return {**ts, **extra}


CASES = {
    # config says r=8, the tensors have rank 4
    "rank": (None, lambda c: c.update(r=8), "rank 8.*has rank 4|rank 4.*r=8"),
    # rank_pattern gives q_proj rank 8: the q_proj tensors (rank 4) disagree
    "rank_pattern": (None, lambda c: c.update(rank_pattern={"q_proj": 8}), r"q_proj\.lora_A\.weight"),
    # config targets v_proj, the file has no v_proj weights
    "missing module": (drop("v_proj"), None, r"v_proj\.lora_A\.weight"),
    # only lora_B of v_proj is missing
    "missing B": (drop("layers.1.self_attn.v_proj.lora_B"), None, r"layers\.1\.self_attn\.v_proj\.lora_B\.weight"),
    # the file has k_proj weights the config does not target
    "untargeted module": (add_k_proj, None, r"k_proj\.lora_A\.weight"),
}


CASES.update({
    # target_modules null: PEFT picks its default for Mistral (q_proj, v_proj) and leaves them fresh, while the
    # o_proj tensors are ignored
    "target_modules null": (lambda ts: {k.replace("q_proj", "o_proj"): v for k, v in ts.items() if "v_proj" not in k},
                            lambda c: c.update(target_modules=None), r"(?s)target_modules.*null.*q_proj.*v_proj"),
    "target_modules 5": (None, lambda c: c.update(target_modules=5), r"target_modules.*5.*list of module names"),
    "target_modules [5]": (None, lambda c: c.update(target_modules=[5]), r"target_modules.*list of module names"),
})


@pytest.mark.parametrize("start", ["plain", "peft"])
@pytest.mark.parametrize("case", list(CASES))
def test_config_and_tensors_must_agree(tmp_path, tiny_model, src, case, start, monkeypatch):
    tensors, config, words = CASES[case]
    bad = edited(tmp_path, src["json"], tensors=tensors, config=config)
    model = tiny_model if start == "plain" else lh.load_adapters(tiny_model, {"coding": src["coding"]})
    before, calls = snapshot(model), watch_peft_loads(monkeypatch)
    with pytest.raises(AdapterFileError, match=words) as e:
        lh.load_adapters(model, {"support": src["dora"], "json": bad})  # the good one loads neither
    assert "adapter_config.json" in str(e.value) and calls == []
    assert_unchanged(model, before)
    assert not hasattr(model, "peft_config") or list(model.peft_config) == ["coding"]


@pytest.mark.parametrize("case", ["no magnitudes", "stray magnitudes"])
def test_dora_magnitudes_must_agree_with_use_dora(tmp_path, tiny_model, src, case):
    bad = (edited(tmp_path, src["dora"], tensors=drop("lora_magnitude_vector")) if case == "no magnitudes"
           else edited(tmp_path, src["dora"], config=lambda c: c.update(use_dora=False)))
    before = snapshot(tiny_model)
    with pytest.raises(AdapterFileError, match="lora_magnitude_vector.*use_dora"):
        lh.load_adapters(tiny_model, {"json": bad})
    assert_unchanged(tiny_model, before)


def test_agreeing_files_still_load(tiny_model, src):
    """The checks refuse nothing PEFT itself saved (modules_to_save, DoRA, several adapters)."""
    model = lh.load_adapters(tiny_model, dict(src))
    assert list(model.peft_config) == list(src)
    assert isinstance(AdapterFileError("x"), AdapterError)


# ---------------------------------------------------------------- probe findings: odd configs, non-finite weights

def test_target_modules_null_with_the_default_tensors_loads(tmp_path, tiny_model, src):
    """null means PEFT's default for the architecture (q_proj, v_proj for Mistral): "json" has exactly those."""
    ok = edited(tmp_path, src["json"], config=lambda c: c.update(target_modules=None))
    model = lh.load_adapters(tiny_model, {"json": ok})
    assert list(model.peft_config) == ["json"]


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("start", ["plain", "peft"])
def test_non_finite_weights_are_refused_before_anything_changes(tmp_path, tiny_model, src, value, start, monkeypatch):
    def poison(ts):
        k = next(k for k in ts if ".lora_B." in k)
        ts[k] = ts[k].clone()
        ts[k][0, 0] = value
        return ts
    bad = edited(tmp_path, src["json"], tensors=poison)
    model = tiny_model if start == "plain" else lh.load_adapters(tiny_model, {"coding": src["coding"]})
    before, calls = snapshot(model), watch_peft_loads(monkeypatch)
    with pytest.raises(AdapterFileError, match=r"(?s)'json'.*lora_B.*(NaN|infinite).*not a number") as e:
        lh.load_adapters(model, {"json": bad})
    assert isinstance(e.value, ValueError) and calls == []
    assert_unchanged(model, before)
