"""Rollouts and evaluation sample from exactly softmax(logits / T), and greedy decoding is the argmax of the
raw logits, whatever the model's own generation_config says (an instruct model's hub file carries a
repetition penalty, top-k, top-p and a temperature of its own, which `generate` would otherwise apply)."""

from __future__ import annotations

import copy
import json
import math
import shutil

import pytest
import torch
from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

from reference_rollout import make_generate_fn
from sftvsrl.generator import CachedGenerator, EpisodeState
from sftvsrl.sampling import sampling_settings
from sftvsrl.tiny_model import make_tiny_model

# a hub-like generation_config.json (Qwen2.5-Instruct's shape, stronger values)
HUB_LIKE = {"do_sample": True, "temperature": 1.5, "top_k": 3, "top_p": 0.8, "repetition_penalty": 1.3}
T = 0.7
N = 6000  # samples of the first token
PROMPT = [100, 200] * 3  # repeated ids: the random tied head favours them, and a repetition penalty hits them
SHARPEN = 8.0  # the random model's logits times 8: a peaked distribution, so that N samples resolve it
PATHS = ("cached", "plain")


@pytest.fixture(scope="module")
def model_and_tokenizer():
    model, tokenizer = make_tiny_model()
    model.eval()
    model.generation_config.update(**HUB_LIKE)
    return model, tokenizer


@pytest.fixture(scope="module")
def sharp_model(model_and_tokenizer):
    model = copy.deepcopy(model_and_tokenizer[0])
    with torch.no_grad():
        model.model.norm.weight.mul_(SHARPEN)  # tied embeddings: every logit times SHARPEN
    return model


def first_tokens(model, tokenizer, path: str, prompts: list[list[int]], temperature: float) -> torch.Tensor:
    """The first sampled token of each prompt, through CachedGenerator ("cached") or make_generate_fn ("plain")."""
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(0)
        if path == "cached":
            gen = CachedGenerator(model, tokenizer, temperature=temperature, max_new_tokens=1)
            rows = gen([EpisodeState(None, list(p)) for p in prompts])
        else:
            rows = make_generate_fn(model, tokenizer, temperature=temperature, max_new_tokens=1)(prompts)
    return torch.tensor([r[0] for r in rows])


def tv(p: torch.Tensor, q: torch.Tensor) -> float:
    return 0.5 * float((p.double() - q.double()).abs().sum())


@pytest.mark.parametrize("path", PATHS)
def test_sampling_follows_softmax_of_logits_over_t_whatever_the_generation_config(
    model_and_tokenizer, sharp_model, path
):
    _, tokenizer = model_and_tokenizer
    with torch.no_grad():
        logits = sharp_model(torch.tensor([PROMPT])).logits[0, -1]
    target = torch.softmax(logits / T, -1)
    # E[TV(empirical, target)] <= 1/2 sum_i sqrt(p_i (1 - p_i) / N); TV moves by at most 1/N per sample, so
    # (McDiarmid) it exceeds that by more than sqrt(ln(1e6) / 2N) with probability below 1e-6
    bound = 0.5 * float(torch.sqrt(target * (1 - target) / N).sum()) + math.sqrt(math.log(1e6) / (2 * N))
    # what the old kwargs sampled from: their own T, top-k 0 and top-p 1, but the model's repetition penalty
    penalised = RepetitionPenaltyLogitsProcessor(HUB_LIKE["repetition_penalty"])(
        torch.tensor([PROMPT]), logits[None].clone()
    )
    assert tv(torch.softmax(penalised[0] / T, -1), target) > 3 * bound  # the test resolves the old behaviour
    top3 = torch.zeros_like(target).scatter(0, target.topk(3).indices, target.topk(3).values)
    assert tv(top3 / top3.sum(), target) > 2 * bound  # and the model's top_k=3, had it applied

    got = first_tokens(sharp_model, tokenizer, path, [PROMPT] * N, T)
    empirical = torch.bincount(got, minlength=target.numel()) / N
    assert tv(empirical, target) < bound, (tv(empirical, target), bound)


@pytest.mark.parametrize("path", PATHS)
def test_greedy_is_the_argmax_of_the_raw_logits_despite_a_repetition_penalty(model_and_tokenizer, path):
    model, tokenizer = model_and_tokenizer
    g = torch.Generator().manual_seed(0)
    prompts = torch.randint(3, model.config.vocab_size, (64, 3), generator=g).repeat(1, 2)  # 3 ids, twice
    with torch.no_grad():
        logits = model(prompts).logits[:, -1]
    raw = logits.argmax(-1)
    penalised = RepetitionPenaltyLogitsProcessor(HUB_LIKE["repetition_penalty"])(prompts, logits.clone()).argmax(-1)
    assert int((penalised != raw).sum()) >= 5  # rows where the model's own penalty would change the answer
    top2 = logits.topk(2).values
    clear = (top2[:, 0] - top2[:, 1]) > 1e-4  # no float near-tie between batched and single forward passes
    assert int(clear.sum()) >= 60
    got = first_tokens(model, tokenizer, path, prompts.tolist(), 0.0)
    assert got[clear].tolist() == raw[clear].tolist()


def test_the_models_generation_config_is_restored(model_and_tokenizer, monkeypatch):
    model, tokenizer = model_and_tokenizer
    own = model.generation_config
    before = own.to_dict()
    for path in PATHS:
        for temperature in (T, 0.0):
            first_tokens(model, tokenizer, path, [PROMPT, PROMPT[:4]], temperature)
    assert model.generation_config is own and own.to_dict() == before

    seen = []

    def failing_generate(*args, **kwargs):
        seen.append(model.generation_config)
        raise RuntimeError("generate failed")

    monkeypatch.setattr(model, "generate", failing_generate)
    for path in PATHS:
        with pytest.raises(RuntimeError, match="generate failed"):
            first_tokens(model, tokenizer, path, [PROMPT], T)
        assert model.generation_config is own and own.to_dict() == before
    # during the call the model's config was the clean one: the model's token ids, our sampling, nothing else
    for during in seen:
        assert during is not own
        assert (during.do_sample, during.temperature, during.top_k, during.top_p) == (True, T, 0, 1.0)
        assert during.repetition_penalty == 1.0
        assert (during.bos_token_id, during.pad_token_id) == (own.bos_token_id, own.pad_token_id)


def test_sampling_settings_report_what_is_used_and_what_is_ignored(model_and_tokenizer):
    model, _ = model_and_tokenizer
    ignored = {k: v for k, v in HUB_LIKE.items() if k != "do_sample"}
    assert sampling_settings(model, T) == {
        "temperature": T,
        "do_sample": True,
        "top_k": 0,
        "top_p": 1.0,
        "repetition_penalty": 1.0,
        "ignored_model_generation_config": ignored,
    }
    greedy = sampling_settings(model, 0.0)
    assert greedy["temperature"] == 0.0 and greedy["do_sample"] is False and greedy["repetition_penalty"] == 1.0
    assert greedy["ignored_model_generation_config"] == HUB_LIKE  # do_sample=True is not applied either
    json.dumps(greedy)

    # any other field a hub file sets that would shape the distribution is listed too; token ids and lengths are not
    other = copy.deepcopy(model)
    other.generation_config.update(min_p=0.05, no_repeat_ngram_size=3, max_length=999, pad_token_id=7)
    listed = sampling_settings(other, T)["ignored_model_generation_config"]
    assert listed == {**ignored, "min_p": 0.05, "no_repeat_ngram_size": 3}


def test_evaluation_json_records_the_sampling_settings(tmp_path, tiny_config, tiny_model_dir):
    from sftvsrl.evaluate import run_evaluation
    from test_evaluate import _write_splits

    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model_dir)
    gen_file = model_dir / "generation_config.json"
    gen_file.write_text(json.dumps({**json.loads(gen_file.read_text()), **HUB_LIKE}))
    data = _write_splits(tmp_path, tiny_config)[1:]  # eval_ood_rule
    tiny_config["eval"].update(episodes=2, viter=1, max_new_tokens=6, temperature=T)
    out = tmp_path / "eval" / "eval_ood_rule.json"
    run_evaluation(tiny_config, "gp_l", 0, "base", 0, model_dir, data, [out])
    result = json.loads(out.read_text())
    assert result["temperature"] == T
    assert result["sampling"] == {
        "temperature": T,
        "do_sample": True,
        "top_k": 0,
        "top_p": 1.0,
        "repetition_penalty": 1.0,
        "ignored_model_generation_config": {k: v for k, v in HUB_LIKE.items() if k != "do_sample"},
    }
