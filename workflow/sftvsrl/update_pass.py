"""The RL update's model pass, without the work whose result the loss never reads.

TRL's GRPO loss calls the policy as `model(input_ids, attention_mask, labels, fused_lm_head=True)`
(the fused LM head TRL installs with `trl.trainer.utils.add_fused_lm_head`) and reads per-token
`log_probs` and `entropy` of the completion. On a CPU that pass pays for two things the loss
never reads: the whole generation batch padded to its longest episode (a 1-attempt episode beside a
5-attempt one is mostly padding), and the LM head (49k-token vocabulary for SmolLM2) with its
softmax at every position, prompt and padding included (TRL scores only the labelled positions on
Triton devices). `compact_scoring` wraps that forward for text models:

1. each row's tokens (one contiguous run: left-padded prompt, right-padded completion) are moved to
   the start of the row, rows are sorted by length and run through the backbone in groups of
   similar length, so a group is padded only to its own longest row. Rotary positions then count
   from the row's first token instead of the first pad; attention depends only on the distance
   between positions, so scores are unchanged (to float rounding);
2. the LM head, log-softmax and entropy run only at the positions whose label the loss reads, in
   chunks under activation checkpointing (the chunk's logits are recomputed in backward instead of
   kept), and are scattered back into TRL's [batch, width - 1] layout (zeros elsewhere, as TRL's).

Anything else (images, softcapped or scaled logits, a call without `fused_lm_head`) goes to TRL's
own forward unchanged. tests/test_update_pass.py checks log-probs, entropy and the gradient against
TRL's pass.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch.utils.checkpoint import checkpoint

GROUP_TOKENS = 4096  # padded tokens per backbone call: large enough for matmul efficiency
HEAD_CHUNK = 512  # scored positions per LM-head chunk: [512, vocab] logits at once


@dataclass
class ScoredTokens:
    """What TRL reads of its fused forward: per-token log-probs and entropy, [batch, width - 1]."""

    log_probs: torch.Tensor
    entropy: torch.Tensor
    loss: torch.Tensor | None = None
    aux_loss: torch.Tensor | None = None


def supports_compact_scoring(model) -> bool:
    """Text models with plain logits: no logit softcapping or scaling, a backbone at `base_model`."""
    config = model.config
    if config.get_text_config() is not config:
        return False
    scaled = any(
        getattr(config, key, None) not in (None, 1.0)
        for key in (
            "final_logit_softcapping",
            "logit_scale",
            "output_multiplier",
            "lm_head_multiplier",
            "logits_scaling",
        )
    )
    return not scaled and getattr(model, "base_model", model) is not model


def compact_scoring(model, temperature: float) -> None:
    """Wrap the fused forward TRL installed on `model` (call after the trainer is built)."""
    fused_forward = model.forward

    @functools.wraps(fused_forward)
    def forward(*args, fused_lm_head=False, labels=None, **kwargs):
        plain = set(kwargs) <= {"input_ids", "attention_mask"}
        if not fused_lm_head or args or not plain or labels is None or kwargs.get("attention_mask") is None:
            return fused_forward(*args, fused_lm_head=fused_lm_head, labels=labels, **kwargs)
        return score_completions(model, kwargs["input_ids"], kwargs["attention_mask"], labels, temperature)

    model.forward = forward


def _length_groups(lengths: list[int], budget: int) -> list[list[int]]:
    """Row indices sorted by length, longest first, cut so a group's padded size stays within budget."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    groups, current = [], []
    for i in order:
        width = lengths[current[0]] if current else lengths[i]
        if current and (len(current) + 1) * width > budget:
            groups.append(current)
            current = []
        current.append(i)
    if current:
        groups.append(current)
    return groups


def _head(hidden: torch.Tensor, targets: torch.Tensor, weight, bias, temperature: float):
    logits = torch.nn.functional.linear(hidden, weight, bias).float() / temperature
    logp = torch.log_softmax(logits, dim=-1)
    entropy = -(logp.exp() * logp).sum(-1)
    return logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1), entropy


def score_completions(model, input_ids, attention_mask, labels, temperature: float) -> ScoredTokens:
    """Per-token log-probs and entropy at the labelled positions of each row (see the module doc)."""
    batch, width = input_ids.shape
    mask = attention_mask.bool()
    first = mask.float().argmax(-1).tolist()
    lengths = mask.sum(-1).tolist()
    backbone = model.base_model
    head = model.get_output_embeddings()
    hidden_parts, targets, where = [], [], []
    for group in _length_groups(lengths, GROUP_TOKENS):
        longest = max(1, lengths[group[0]])
        ids = input_ids.new_zeros((len(group), longest))
        att = attention_mask.new_zeros((len(group), longest))
        for j, i in enumerate(group):
            ids[j, : lengths[i]] = input_ids[i, first[i] : first[i] + lengths[i]]
            att[j, : lengths[i]] = 1
        hidden = backbone(input_ids=ids, attention_mask=att, use_cache=False).last_hidden_state
        for j, i in enumerate(group):
            # position p of the row predicts the label at p + 1 (TRL's shift), in original columns
            cols = torch.arange(first[i], first[i] + lengths[i] - 1, device=input_ids.device)
            keep = labels[i, cols + 1] != -100
            if keep.any():
                hidden_parts.append(hidden[j, : lengths[i] - 1][keep])
                targets.append(labels[i, cols[keep] + 1])
                where.append((i, cols[keep]))
    log_probs = input_ids.new_zeros((batch, width - 1), dtype=torch.float32)
    entropy = torch.zeros_like(log_probs)
    if not hidden_parts:  # nothing scored: a zero that still depends on the model, as TRL's
        zero = head.weight.sum() * 0.0
        return ScoredTokens(log_probs + zero, entropy + zero, zero)
    hidden = torch.cat(hidden_parts)
    target = torch.cat(targets)
    logp_parts, ent_parts = [], []
    for start in range(0, hidden.shape[0], HEAD_CHUNK):
        h, t = hidden[start : start + HEAD_CHUNK], target[start : start + HEAD_CHUNK]
        lp, ent = checkpoint(_head, h, t, head.weight, head.bias, temperature, use_reentrant=False)
        logp_parts.append(lp)
        ent_parts.append(ent)
    logp, ent = torch.cat(logp_parts), torch.cat(ent_parts)
    rows = torch.cat([torch.full_like(cols, i) for i, cols in where])
    cols = torch.cat([cols for _, cols in where])
    log_probs = log_probs.index_put((rows, cols), logp)
    entropy = entropy.index_put((rows, cols), ent)
    return ScoredTokens(log_probs=log_probs, entropy=entropy, loss=-logp.sum() / max(1, logp.numel()))
