"""lh.switch / temporary_switch / active_adapter against PEFT alone, on the tiny random Mistral.

The property test (``test_random_sequences_match_peft_alone``) drives 40 fixed-seed sequences of 12 operations
each (28 on LoRA models, 6 on IA3, 6 on LoHa) through our model and through a twin that only PEFT touches,
and compares the whole state after every step.
"""
import copy
import random
import warnings

import peft
import pytest
import torch
from peft import IA3Config, LoHaConfig, LoraConfig, PeftModel, get_peft_model
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils.other import AuxiliaryTrainingWrapper

import lora_helpers as lh
import tiny
from lora_helpers import switching
from lora_helpers.errors import AdapterError, AdapterNotFoundError
from lora_helpers.names import BASE

X = torch.tensor([[5, 17, 42, 8, 99, 3], [7, 1, 120, 64, 2, 3]])  # ids 1-3 hit the trainable tokens

# LoRA features an adapter file may carry (tiny.save_lora kwargs); "plain" is the shipped adapters' kind
VARIANTS = {
    "plain": dict(target_modules=["q_proj", "v_proj"]),
    "mts": dict(target_modules=["q_proj"], modules_to_save=["lm_head"]),
    "tokens": dict(target_modules=["v_proj"], trainable_token_indices={"embed_tokens": [1, 2, 3]}),
    "dora": dict(target_modules=["q_proj", "o_proj"], use_dora=True),
    "rslora": dict(target_modules=["gate_proj", "k_proj"], use_rslora=True, r=2),
}
NAMES = ["json", "coding", "support", "extra"]
ADAPTER_MODULES = (BaseTunerLayer, AuxiliaryTrainingWrapper)


@pytest.fixture(scope="module")
def folders(tmp_path_factory, tiny_tokenizer):
    root = tmp_path_factory.mktemp("variants")
    return {v: tiny.save_lora(root / v, tiny_tokenizer, seed=i + 1, **kw) for i, (v, kw) in enumerate(VARIANTS.items())}


def lora_config(variant):
    return LoraConfig(**{"r": 4, "lora_alpha": 8, "init_lora_weights": False, **VARIANTS[variant]})


def other_config(kind):
    if kind == "ia3":
        return IA3Config(target_modules=["k_proj", "down_proj"], feedforward_modules=["down_proj"],
                         init_ia3_weights=False)
    return LoHaConfig(r=2, alpha=4, target_modules=["q_proj", "v_proj"], init_weights=False)


def logits(model):
    with torch.no_grad():
        return model(X).logits


def state(model):
    """Everything that decides what runs and what trains."""
    s = {"peft": isinstance(model, PeftModel), "lh_active": lh.active_adapter(model),
         "grads": {n: p.requires_grad for n, p in model.named_parameters()},
         "training": {n: m.training for n, m in model.named_modules()}}
    if s["peft"]:
        s.update(adapters=list(model.peft_config), top=model.active_adapter,
                 tuner=list(model.base_model.active_adapters),
                 layers=[(n, type(m).__name__, list(m.active_adapters), m.disable_adapters, list(m.merged_adapters))
                         for n, m in model.named_modules() if isinstance(m, ADAPTER_MODULES)])
        table = lh.list_adapters(model)  # must never crash, and agree with the model
        assert [r["name"] for r in table] == s["adapters"] and table.running == s["lh_active"]
    return s


def assert_same(ours, twin, where):
    a, b = state(ours), state(twin)
    for key in a:
        assert a[key] == b[key], f"{where}: {key} differs"
    assert torch.equal(logits(ours), logits(twin)), f"{where}: logits differ"


def peft_switch(model, target):
    """What lh.switch means, in PEFT's own calls: adapters on, set_adapter frozen (inference); "base" = off."""
    if target == BASE:
        model.base_model.disable_adapter_layers()
        return
    names = [target] if isinstance(target, str) else list(target)
    model.base_model.enable_adapter_layers()
    if len(names) == 1:
        model.set_adapter(names[0], inference_mode=True)
    else:
        model.base_model.set_adapter(names, inference_mode=True)


def peft_load(model, name, folder):
    """What lh.load_adapters means, in PEFT's own calls (the previous mode comes back; a new name runs if none did)."""
    if not isinstance(model, PeftModel):
        return PeftModel.from_pretrained(model, str(folder), adapter_name=name)
    before = list(model.base_model.active_adapters)
    off = any(m.disable_adapters for m in model.modules() if isinstance(m, ADAPTER_MODULES))
    if name in model.peft_config:
        model.delete_adapter(name)
    model.load_adapter(str(folder), adapter_name=name)
    peft_switch(model, before if before and all(n in model.peft_config for n in before) else [name])
    if off:
        peft_switch(model, BASE)
    return model


def refused_by_peft(twin, op):
    """True when PEFT alone raises on ``op`` (tried on a copy of the twin)."""
    probe = copy.deepcopy(twin)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            op(probe)
    except Exception:
        return True
    return False


def start(kind, tok):
    """(ours, twin): two identical models; LoRA sequences start from the plain base, IA3/LoHa from a PeftModel."""
    def make():
        base = tiny.make_model(tok)
        if kind == "lora":
            return base
        torch.manual_seed(100)
        model = get_peft_model(base, other_config(kind), adapter_name=NAMES[0])
        torch.manual_seed(101)
        model.add_adapter(NAMES[1], other_config(kind))
        return model
    return make(), make()


def step(rng, kind, ours, twin, folders, i):
    """One random operation on both models; returns (ours, twin, description)."""
    loaded = list(ours.peft_config) if isinstance(ours, PeftModel) else []
    ops = ["load", "load", "switch", "switch", "switch", "peft_set", "peft_multi", "disable", "add", "delete",
           "mode", "temporary"]
    op = "load" if not loaded else rng.choice(ops)
    if op == "load":
        name, variant = rng.choice(NAMES), rng.choice(list(VARIANTS))
        replace = name in loaded and rng.random() < 0.7
        what = f"lh.load_adapters({name}={variant}, replace={replace})"
        # PEFT 0.21 cannot load an adapter without trainable tokens beside one with them (a KeyError inside PEFT):
        # lh must refuse that too, with the model unchanged
        if (kind != "lora" or (name in loaded and not replace)
                or refused_by_peft(twin, lambda m: peft_load(m, name, folders[variant]))):
            before = state(ours)
            with pytest.raises(AdapterError):
                lh.load_adapters(ours, {name: folders[variant]}, replace=replace)
            assert state(ours) == before, f"{what} was refused but changed the model"
            return ours, twin, what + " refused"
        ours = lh.load_adapters(ours, {name: folders[variant]}, replace=replace)
        twin = peft_load(twin, name, folders[variant])
        return ours, twin, what
    if op in ("switch", "temporary"):
        pick = rng.random()
        if pick < 0.2:
            target = BASE
        elif pick < 0.4:
            target = [rng.choice(loaded)]
        elif pick < 0.55 and len(loaded) > 1:
            target = rng.sample(loaded, 2)
        else:
            target = rng.choice(loaded)
        what = f"lh.{'switch' if op == 'switch' else 'temporary_switch'}({target!r})"
        several = isinstance(target, list) and len(target) > 1  # PEFT may refuse only a set of several
        refused = several and refused_by_peft(twin, lambda m: peft_switch(m, target))
        if refused:
            before = state(ours)
            with pytest.raises(AdapterError, match="cannot run together"):
                if op == "switch":
                    lh.switch(ours, target)
                else:
                    with switching.temporary_switch(ours, target):
                        pass
            assert state(ours) == before, f"{what} was refused but changed the model"
            return ours, twin, what + " refused"
        if op == "switch":
            lh.switch(ours, target)
            peft_switch(twin, target)
            return ours, twin, what
        inside = copy.deepcopy(twin)
        peft_switch(inside, target)
        with switching.temporary_switch(ours, target):
            assert_same(ours, inside, f"step {i} inside {what}")
        return ours, twin, what  # the twin did nothing: ours must be back exactly where it was
    if op == "peft_set":
        name = rng.choice(loaded)
        for m in (ours, twin):
            m.set_adapter(name)  # PEFT's default: active and trainable
        return ours, twin, f"set_adapter({name!r})"
    if op == "peft_multi":
        if len(loaded) < 2:
            return ours, twin, "skip"
        names = rng.sample(loaded, 2)
        if refused_by_peft(twin, lambda m: m.base_model.set_adapter(names)):
            return ours, twin, f"base_model.set_adapter({names}) refused by PEFT: skipped"
        for m in (ours, twin):
            m.base_model.set_adapter(names)
        return ours, twin, f"base_model.set_adapter({names})"
    if op == "disable":
        with ours.disable_adapter(), twin.disable_adapter():
            assert_same(ours, twin, f"step {i} inside disable_adapter()")
            assert lh.active_adapter(ours) == BASE
        return ours, twin, "with disable_adapter()"
    if op == "add":
        free = [n for n in NAMES if n not in loaded]
        if not free:
            return ours, twin, "skip"
        name, seed = free[0], rng.randrange(1000)
        cfg = lora_config(rng.choice(list(VARIANTS))) if kind == "lora" else other_config(kind)
        for m in (ours, twin):
            torch.manual_seed(seed)
            m.add_adapter(name, copy.deepcopy(cfg))
        return ours, twin, f"add_adapter({name!r})"
    if op == "delete":
        if len(loaded) < 2:
            return ours, twin, "skip"
        name = rng.choice(loaded)
        probe = copy.deepcopy(twin)
        probe.delete_adapter(name)
        if probe.active_adapter not in probe.peft_config:
            # PEFT can leave PeftModel.active_adapter naming the deleted adapter, and then no forward pass runs
            # (with PEFT alone too): not a state this package has to handle
            return ours, twin, f"delete_adapter({name!r}) breaks PEFT itself: skipped"
        for m in (ours, twin):
            m.delete_adapter(name)
        return ours, twin, f"delete_adapter({name!r})"
    mode = rng.choice(["train", "eval"])
    for m in (ours, twin):
        getattr(m, mode)()
    return ours, twin, f"{mode}()"


SEEDS = range(40)
OPS = 12


def kind_of(seed):
    return {3: "ia3", 4: "loha"}.get(seed % 5 if seed < 30 else -1, "lora")


def run_sequence(seed, tok, folders):
    kind = kind_of(seed)
    rng = random.Random(seed)
    ours, twin = start(kind, tok)
    done = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PEFT's notes (deleted active adapter, merged...) are not the point here
        for i in range(OPS):
            ours, twin, what = step(rng, kind, ours, twin, folders, i)
            done.append(what)
            assert_same(ours, twin, f"seed {seed} ({kind}) after {done}")
    return kind


def test_random_sequences_match_peft_alone(tiny_tokenizer, folders):
    kinds = [run_sequence(seed, tiny_tokenizer, folders) for seed in SEEDS]
    assert (kinds.count("lora"), kinds.count("ia3"), kinds.count("loha")) == (28, 6, 6)


@pytest.mark.parametrize("tested", [True, False])
def test_fallback_outside_tested_peft_versions(tiny_tokenizer, folders, monkeypatch, tested):
    """Where the shortcuts are not proven, switching uses PEFT's model-level calls, with the same result (on a
    tested release leaving out a moot enable_adapter_layers, on an untested one making both calls)."""
    monkeypatch.setattr(switching, "SHORTCUTS", False)
    monkeypatch.setattr(switching, "TESTED", tested and switching.TESTED)
    kinds = [run_sequence(seed, tiny_tokenizer, folders) for seed in (0, 3, 4, 7, 8, 9, 32, 39)]
    assert set(kinds) == {"lora", "ia3", "loha"}


def test_tested_range():
    assert all(switching.peft_tested(v) for v in ("0.20.0", "0.21.2", "0.22.0", "0.22.1.post1"))
    assert not any(switching.peft_tested(v) for v in ("0.19.1", "0.23.0", "1.0.0", "1.0.0.dev0", "garbage"))
    assert switching.shortcuts_proven("0.20.0") and switching.shortcuts_proven("0.21.2")
    assert not any(switching.shortcuts_proven(v) for v in ("0.19.1", "0.22.0", "0.23.0", "garbage"))
    assert switching.SHORTCUTS == switching.shortcuts_proven(peft.__version__)
    assert switching.TESTED == switching.peft_tested(peft.__version__)


# ------------------------------------------------------------------------------------------ known defects

@pytest.fixture
def mixed(tiny_model, folders):
    """Adapters with modules_to_save, DoRA and trainable tokens, loaded with plain PEFT (a as trained: trainable).

    The trainable-tokens adapter comes last: PEFT 0.21 cannot load another adapter after it.
    """
    return twin_of(tiny_model, folders)


def twin_of(base, folders):
    model = PeftModel.from_pretrained(base, str(folders["mts"]), adapter_name="b")
    model.load_adapter(str(folders["dora"]), adapter_name="c")
    model.load_adapter(str(folders["tokens"]), adapter_name="a", is_trainable=True)
    return model


def trainable(model):
    return sorted(n for n, p in model.named_parameters() if p.requires_grad)


def test_switch_leaves_modules_to_save_and_trainable_tokens_frozen(mixed, tiny_tokenizer, folders):
    twin = twin_of(tiny.make_model(tiny_tokenizer), folders)
    for name in ("b", "a", "base", "a", "c", "b"):
        lh.switch(mixed, name)
        peft_switch(twin, name)
        assert trainable(mixed) == trainable(twin) == [], name
        assert_same(mixed, twin, name)


def test_switch_one_element_list_moves_active_adapter(mixed):
    lh.switch(mixed, ["b"])
    assert mixed.active_adapter == "b" and lh.active_adapter(mixed) == "b"
    assert [r["name"] for r in lh.list_adapters(mixed) if r["active"]] == ["b"]


def test_several_names_that_peft_refuses(mixed, tiny_tokenizer, folders):
    """b and d both replace lm_head (modules_to_save): PEFT cannot run them together, so switch refuses."""
    mixed.add_adapter("d", lora_config("mts"))
    lh.switch(mixed, "a")
    before = state(mixed)
    with pytest.raises(AdapterError, match=r"\['b', 'd'\].*together"):
        lh.switch(mixed, ["b", "d"])
    assert state(mixed) == before
    lh.switch(mixed, ["a", "b"])
    assert lh.active_adapter(mixed) == ["a", "b"]


def test_temporary_switch_restores_everything(mixed, tiny_tokenizer, folders):
    """Trainable weights, several active adapters and a disabled state all come back exactly."""
    mixed.set_adapter("a")  # PEFT: a active and trainable
    mixed.train()
    start_state, start_logits = state(mixed), logits(mixed)
    assert trainable(mixed)
    for target in ("b", ["c"], BASE, ["a", "c"], "a"):
        with switching.temporary_switch(mixed, target):
            assert lh.active_adapter(mixed) == (target[0] if isinstance(target, list) and len(target) == 1 else target)
            assert not trainable(mixed)
        assert state(mixed) == start_state, target
        assert torch.equal(logits(mixed), start_logits)
    mixed.base_model.set_adapter(["a", "c"])
    several = state(mixed)
    with switching.temporary_switch(mixed, "b"):
        pass
    assert state(mixed) == several
    with mixed.disable_adapter():
        off = state(mixed)
        with switching.temporary_switch(mixed, "c"):
            assert lh.active_adapter(mixed) == "c"
        assert state(mixed) == off and lh.active_adapter(mixed) == BASE


def test_temporary_switch_restores_after_an_error(mixed):
    lh.switch(mixed, "b")
    before = state(mixed)
    with pytest.raises(RuntimeError, match="boom"):
        with switching.temporary_switch(mixed, "c"):
            raise RuntimeError("boom")
    assert state(mixed) == before


def test_temporary_switch_bad_names(mixed, tiny_model):
    before = state(mixed)
    for bad in ("nope", [], ["a", "nope"], 3):
        with pytest.raises(AdapterNotFoundError):
            with switching.temporary_switch(mixed, bad):
                pass
        assert state(mixed) == before
    with switching.temporary_switch(mixed, None):
        assert state(mixed) == before


def test_temporary_switch_on_a_plain_model(tiny_tokenizer):
    model = tiny.make_model(tiny_tokenizer)
    with switching.temporary_switch(model, BASE):
        pass
    with pytest.raises(AdapterNotFoundError, match="no adapters loaded"):
        with switching.temporary_switch(model, "json"):
            pass


def test_public_names_stay_importable():
    from lora_helpers import adapters
    assert adapters.switch is lh.switch is switching.switch
    assert adapters.active_adapter is lh.active_adapter is switching.active_adapter


def test_no_module_level_state():
    """The PeftModel is the only record of which adapter runs: no tables in the modules that switch."""
    import inspect

    from lora_helpers import adapters, generate
    for module in (switching, adapters, generate):
        src = inspect.getsource(module)
        assert "__dict__" not in src and "WeakKeyDictionary" not in src, module.__name__
        assert "._disable_adapters" not in src and "._active_adapter" not in src, module.__name__


def test_after_base_peft_set_adapter_alone_keeps_adapters_off(tiny_model):
    """What switch's docstring and notebook 01 warn about: PEFT's set_adapter does not undo "base"."""
    torch.manual_seed(0)
    model = get_peft_model(tiny_model, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False),
                           adapter_name="json").eval()
    with_adapter = logits(model)
    lh.switch(model, BASE)
    without = logits(model)
    assert not torch.equal(with_adapter, without)
    model.set_adapter("json")
    assert torch.equal(logits(model), without)        # silently still the base
    lh.switch(model, "json")
    assert torch.equal(logits(model), with_adapter)


# ------------------------------------------------------------------------------------------ switch's cost

def walks_during(model, fn):
    """How many times ``fn`` walks the whole model: ``modules()`` called on the PeftModel, its tuner or the base."""
    tops = {id(model), id(model.base_model), id(model.base_model.model)}
    real, count = torch.nn.Module.modules, []

    def counting(self):
        if id(self) in tops:
            count.append(type(self).__name__)
        return real(self)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.nn.Module, "modules", counting)
        fn()
    return len(count)


def two_lora(tiny_model):
    torch.manual_seed(0)
    cfg = dict(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    model = get_peft_model(tiny_model, LoraConfig(**cfg), adapter_name="json")
    model.add_adapter("coding", LoraConfig(**cfg))
    return model.eval()


MODES = sorted({False, switching.SHORTCUTS})  # the shortcuts run only where they are proven (PEFT 0.20-0.21)


@pytest.mark.parametrize("shortcuts", MODES)
def test_switch_walks_the_modules_once(tiny_model, tiny_tokenizer, monkeypatch, shortcuts):
    """With the shortcuts, switch (enable_adapter_layers + set_adapter) walks the model once; without, at most
    once more than PEFT's own calls (a read-only walk of its own)."""
    monkeypatch.setattr(switching, "SHORTCUTS", shortcuts)
    model = two_lora(tiny_model)
    twin = two_lora(tiny.make_model(tiny_tokenizer))
    for name in ("coding", "json", BASE, "coding"):
        peft_walks = walks_during(twin, lambda: peft_switch(twin, name))
        walks = walks_during(model, lambda: lh.switch(model, name))
        assert walks == 1 if shortcuts else walks <= peft_walks + 1, (name, walks, peft_walks)
        assert_same(model, twin, name)


@pytest.mark.parametrize("shortcuts", MODES)
def test_switch_to_what_runs_already_changes_nothing(tiny_model, monkeypatch, shortcuts):
    """No warning repeats when the adapter asked for runs already, frozen; with the shortcuts no layer is touched
    either (without them PEFT's own calls run and change nothing)."""
    monkeypatch.setattr(switching, "SHORTCUTS", shortcuts)
    model = two_lora(tiny_model)
    model.add_adapter("blank", LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))  # lora_B = 0
    for first in ("json", BASE):  # a switch that changes what runs warns, every time
        lh.switch(model, first)
        with pytest.warns(lh.UntrainedAdapterWarning, match="'blank' has all lora_B"):
            lh.switch(model, "blank")
    from peft.tuners.lora import LoraLayer
    calls = []
    real = LoraLayer.set_adapter
    monkeypatch.setattr(LoraLayer, "set_adapter", lambda self, *a, **k: calls.append(a) or real(self, *a, **k))
    before = state(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lh.switch(model, "blank")
    assert state(model) == before and (calls == []) == shortcuts
    calls.clear()
    next(p for n, p in model.named_parameters() if ".lora_A.blank." in n).requires_grad_(True)  # one layer trains
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # what runs is the same: no warning
        lh.switch(model, "blank")  # ...so that layer is set again (only it, with the shortcuts), its weight frozen
    assert (len(calls) == 1) == shortcuts and not any(p.requires_grad for p in model.parameters())
