"""Every step a learner takes, on the embedded base as a T4 computes it (nf4, fp16 compute, fp16 embeddings,
norms and head), at short lengths: fp16 matmuls on a CPU are ~40x slower than fp32. The ``guard`` fixture
fails any forward pass that gives inf or NaN."""
import math

import pytest
import torch

import lora_helpers as lh
from lora_helpers.base import EMBEDDED_NAME, is_quantized

PRESET = "smollm2-135m-4bit-fp16"
PROMPTS = {"json": "Extract the name and city: Olga lives in Samara.",
           "coding": "Write a Python function that adds two numbers.",
           "support": "I did not get the password reset email."}
SHORT = 6  # new tokens per reply


def _compute_dtypes(model):
    import bitsandbytes as bnb
    return {m.compute_dtype for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)}


@pytest.fixture(scope="module")
def with_adapters():
    """The fp16 base with the three demo adapters, as notebooks 01-03 hold it."""
    model, tok = lh.load_base(PRESET)
    return lh.load_adapters(model, lh.DEMO_ADAPTERS), tok


def test_the_preset_computes_what_a_t4_computes():
    model, tok = lh.load_base(PRESET)
    assert is_quantized(model) and _compute_dtypes(model) == {torch.float16}
    unquantized = {n: p.dtype for n, p in model.named_parameters() if p.dtype != torch.uint8}
    assert unquantized and set(unquantized.values()) == {torch.float16}, unquantized
    assert model.name_or_path == EMBEDDED_NAME  # the shipped demo adapters are for this base
    assert PRESET in lh.base.PRESETS


def test_generate_switch_and_the_mixed_batch(with_adapters, guard):
    model, tok = with_adapters
    assert sorted(model.peft_config) == ["coding", "json", "support"]
    lora = {p.dtype for n, p in model.named_parameters() if "lora_" in n}
    assert lora == {torch.float32}  # PEFT keeps adapter weights in fp32 on an fp16 base, as on a T4
    single = {}
    for name in ["json", "coding", "support", "base"]:
        lh.switch(model, name)
        assert lh.active_adapter(model) == name
        single[name] = lh.generate(model, tok, PROMPTS.get(name, PROMPTS["json"]), max_new_tokens=SHORT)
        assert single[name].strip(), name
    names = ["json", "coding", "support", "base"]
    mixed = lh.generate(model, tok, [PROMPTS.get(n, PROMPTS["json"]) for n in names], adapter=names,
                        max_new_tokens=SHORT)
    assert len(mixed) == 4 and all(r.strip() for r in mixed)
    assert single["json"] != single["base"] or mixed[0] != mixed[3]  # the adapter changes the reply


def test_merge_and_save_passes_its_own_check(with_adapters, tmp_path, guard):
    model, tok = with_adapters
    out = lh.merge_and_save(model, "json", tmp_path / "merged", tokenizer=tok)
    report = lh.MergeReport.read(out)
    assert report.dtype == "float16" and report.verified_by in ("logits", "tensors")
    if report.verified_by == "logits":
        assert math.isfinite(report.max_abs_diff) and report.max_abs_diff <= report.tolerance
    assert sorted(model.peft_config) == ["coding", "json", "support"]  # the live model keeps its adapters


def test_peft_merge_and_unload_on_the_4bit_base(tmp_path, guard):
    """02's PEFT deploy path: merge_and_unload requantizes into nf4; the saved model loads and runs in fp16."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base, tok = lh.load_base(PRESET)
    peft = PeftModel.from_pretrained(base, lh.DEMO_ADAPTERS["json"], adapter_name="json")
    probe = tok.apply_chat_template([{"role": "user", "content": PROMPTS["json"]}], add_generation_prompt=True,
                                    return_tensors="pt", return_dict=True)
    with torch.no_grad():
        unmerged = peft(**probe).logits.float()
        with peft.disable_adapter():
            shift = (unmerged - peft(**probe).logits.float()).abs().max().item()
    with pytest.warns(UserWarning, match="rounding errors"):  # PEFT's own warning about requantizing
        merged = peft.merge_and_unload()
    merged.save_pretrained(tmp_path / "peft")
    tok.save_pretrained(tmp_path / "peft")
    deployed = AutoModelForCausalLM.from_pretrained(tmp_path / "peft", device_map="cpu")
    assert _compute_dtypes(deployed) == {torch.float16}
    with torch.no_grad():
        delta = (deployed(**probe).logits.float() - unmerged).abs().max().item()
    assert shift > 0 and math.isfinite(delta)
    assert lh.generate(deployed, tok, PROMPTS["json"], max_new_tokens=SHORT).strip()


def test_demo_qlora_training(guard):
    """train_adapter's QLoRA path (prepare_model_for_kbit_training, fp32 adapter weights and loss) at fp16: the
    reply loss on its two examples (one batch, so each step sees it) falls."""
    from lora_helpers.train import reply_loss

    base, tok = lh.load_base(PRESET)
    pairs = [{"prompt": "Name?", "reply": '{"name": "Ivan"}'}, {"prompt": "City?", "reply": '{"city": "Omsk"}'}]
    before = reply_loss(base, tok, pairs)
    model = lh.train_adapter(base, tok, pairs, "t4", steps=2, batch_size=2, progress=False)
    after = reply_loss(model, tok, pairs)
    assert math.isfinite(before) and after < before
    assert {p.dtype for n, p in model.named_parameters() if ".t4." in n} == {torch.float32}
    assert lh.active_adapter(model) == "t4"
    assert lh.generate(model, tok, "Name?", max_new_tokens=SHORT).strip()


def _04s_training_cells(tmp_path) -> list[str]:
    """Notebook 04's own training code as it holds it (a copy with TRAIN_STEPS=3): the cells tagged
    `train-setup` (fresh_adapter; encode, batch_loss, heldout_loss) and the loop tagged `train-loop`."""
    import json

    from run_notebooks import prepare  # tools/notebooks_for_base.py, on the path run_notebooks sets

    [copy] = prepare(tmp_path, {"TRAIN_STEPS": 3}, names=("04_own_router_project.ipynb",))
    cells = json.loads(copy.read_text())["cells"]
    picked = [(tag, "".join(c["source"])) for c in cells for tag in ("train-setup", "train-loop")
              if tag in c["metadata"].get("tags", [])]
    assert [tag for tag, _ in picked] == ["train-setup", "train-setup", "train-loop"]
    return [src for _, src in picked]


def test_04s_own_loop_learns_at_fp16(tmp_path, guard):
    """04's own PEFT loop, run from the notebook's cells on the fp16 base: 3 steps on two short pairs (one batch,
    so each step sees both) give finite loss that falls, on the pairs and on the held-out check between steps
    (evaluations in eval mode, as in 04, must not stop the learning); the LoRA weights are fp32."""
    base, tok = lh.load_base(PRESET)
    pairs = [{"prompt": "Name?", "reply": '{"name": "Ivan"}'}, {"prompt": "City?", "reply": '{"city": "Omsk"}'}]
    ns = {"model": base, "tok": tok, "lh": lh, "MY_ROUTE": "mine", "MY_TRAIN_PAIRS": pairs,
          "MY_TEST_PAIRS": pairs[:1]}
    for src in _04s_training_cells(tmp_path):
        exec(compile(src, "<04>", "exec"), ns)
    losses, heldout = ns["losses"], [loss for _, loss in ns["heldout_losses"]]
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses + heldout)
    assert losses[-1] < losses[0] and heldout[-1] < heldout[0], (losses, heldout)
    model = ns["model"]
    assert {p.dtype for n, p in model.named_parameters() if ".mine." in n} == {torch.float32}
    assert lh.active_adapter(model) == "mine"


def test_vllm_serves_the_fp16_preset_as_load_base_loads_it():
    from lora_helpers.embedded import embedded_folder
    from lora_helpers.serve import vllm_command

    cmd = vllm_command(PRESET, lh.DEMO_ADAPTERS)
    assert str(embedded_folder()) in cmd
    assert cmd[cmd.index("--quantization") + 1] == "bitsandbytes" and cmd[cmd.index("--dtype") + 1] == "float16"
