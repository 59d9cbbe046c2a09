"""The RL update's compact model pass gives TRL's log-probs, entropy and gradient (sftvsrl.update_pass)."""

import copy

import pytest
import torch
from transformers import AutoModelForCausalLM
from trl.trainer.utils import add_fused_lm_head

from sftvsrl import update_pass

TEMPERATURE = 0.7


def padded_batch(vocab: int, prompt_lengths, completion_lengths, seed=0, same_prompt=()):
    """TRL's layout: prompts left-padded, completions right-padded; labels only on completions.
    `same_prompt`: (row, earlier row) pairs whose prompts are equal (a GRPO group)."""
    g = torch.Generator().manual_seed(seed)
    p_w, c_w = max(prompt_lengths), max(completion_lengths)
    ids = torch.zeros((len(prompt_lengths), p_w + c_w), dtype=torch.long)
    att = torch.zeros_like(ids)
    for i, (p, c) in enumerate(zip(prompt_lengths, completion_lengths)):
        ids[i, p_w - p : p_w + c] = torch.randint(3, vocab, (p + c,), generator=g)
        att[i, p_w - p : p_w + c] = 1
    for row, earlier in same_prompt:
        ids[row, :p_w] = ids[earlier, :p_w]
    labels = ids.masked_fill(att == 0, -100)
    labels[:, :p_w] = -100
    return ids, att, labels, c_w


@pytest.fixture
def two_models(tiny_model_dir):
    reference = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    compact = copy.deepcopy(reference)
    for model in (reference, compact):
        add_fused_lm_head(model, temperature=TEMPERATURE, outputs=("log_probs", "entropy"))
    update_pass.compact_scoring(compact, TEMPERATURE)
    return reference, compact


@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "activation-checkpointing"])
@pytest.mark.parametrize("budget", [10_000, 40])  # one group; many groups of similar length
def test_compact_pass_equals_trl_fused_pass(two_models, monkeypatch, budget, checkpointing):
    monkeypatch.setattr(update_pass, "GROUP_TOKENS", budget)
    monkeypatch.setattr(update_pass, "HEAD_CHUNK", 7)  # several LM-head chunks
    reference, compact = two_models
    if checkpointing:  # what a GPU run's trainer turns on: the layers then drop any KV cache
        for model in (reference, compact):
            model.activation_checkpointing_enable({"use_reentrant": False})
            model.train()
        assert update_pass.drops_cache(compact)
    # rows 1, 3 and 5 share a 12-token prompt (read once), row 4 repeats row 2's 5-token one (too short to share)
    ids, att, labels, keep = padded_batch(
        reference.config.vocab_size, [9, 12, 5, 12, 5, 12], [3, 17, 1, 8, 2, 5], same_prompt=[(3, 1), (5, 1), (4, 2)]
    )
    outs = []
    for model in (reference, compact):
        model.zero_grad()
        out = model(input_ids=ids, attention_mask=att, labels=labels, fused_lm_head=True)
        lp, ent = out.log_probs[:, -keep:], out.entropy[:, -keep:]
        loss = (lp * torch.linspace(-1, 1, lp.numel()).view_as(lp)).sum() + 0.1 * ent.sum()
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        outs.append((lp.detach(), ent.detach(), grads))
    (lp0, ent0, g0), (lp1, ent1, g1) = outs
    scored = labels[:, 1:][:, -keep:] != -100
    first = att.float().argmax(-1).tolist()
    own = [first[i] + (12 if i in (1, 3, 5) else [9, 0, 5, 0, 5][i]) - 1 for i in range(6)]
    assert update_pass._shared_prefixes(ids, first, own) == {1: 0, 3: 0, 5: 0}  # the prompt read once
    assert scored.sum() == 36
    torch.testing.assert_close(lp1, lp0, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(ent1, ent0, atol=1e-5, rtol=1e-4)
    assert (lp1[~scored] == 0).all() and (lp1[scored] < 0).all()
    assert g0.keys() == g1.keys()
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], atol=1e-5, rtol=1e-3, msg=name)


def test_groups_are_sorted_by_length_within_the_budget():
    groups = update_pass._length_groups([5, 30, 6, 29, 7], budget=60)
    assert groups == [[1, 3], [4, 2, 0]]
    assert sorted(i for g in groups for i in g) == list(range(5))


def test_other_calls_reach_trls_forward(two_models):
    reference, compact = two_models
    ids = torch.randint(3, reference.config.vocab_size, (2, 6))
    plain = compact(input_ids=ids).logits  # generation and plain calls keep the model's own forward
    torch.testing.assert_close(plain, reference(input_ids=ids).logits)


def test_prefixes_are_shared_without_gradients_under_checkpointing(two_models):
    """The KL probe scores under no_grad: the cache is kept, so a shared prompt is still read once."""
    _, compact = two_models
    compact.activation_checkpointing_enable({"use_reentrant": False})
    compact.train()
    assert update_pass.drops_cache(compact)
    with torch.no_grad():
        assert not update_pass.drops_cache(compact)
        ids, att, labels, keep = padded_batch(compact.config.vocab_size, [12, 12], [4, 6], same_prompt=[(1, 0)])
        out = compact(input_ids=ids, attention_mask=att, labels=labels, fused_lm_head=True)
    assert (out.log_probs[:, -keep:][labels[:, 1:][:, -keep:] != -100] < 0).all()
