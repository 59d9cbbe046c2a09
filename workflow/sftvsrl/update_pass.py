"""The RL update's model pass, without the work whose result the loss never reads.

TRL's GRPO loss calls the policy as `model(input_ids, attention_mask, labels, fused_lm_head=True)`
and reads per-token `log_probs` and `entropy` of the completion. `compact_scoring` wraps that forward
for text models: rows are run in groups of similar length instead of padded to the batch's longest,
a prompt that several rows share is read once, and the LM head runs only at the positions whose label
the loss reads.

Before editing: scores are unchanged (to float rounding) and the gradient is the same as TRL's
pass; tests/test_update_pass.py checks log-probs, entropy and the gradient against TRL's pass, with
shared and unshared prompts, activation checkpointing on and off (on, with gradients, the layers drop
any KV cache, so no prefix is shared: `drops_cache`). Anything else (images, softcapped or scaled logits, a call without
`fused_lm_head`) goes to TRL's own forward unchanged.

Details: docs/code-notes.md#workflowsftvsrlupdate_passpy
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch.utils.checkpoint import checkpoint

GROUP_TOKENS = 4096  # padded tokens per backbone call: large enough for matmul efficiency
HEAD_CHUNK = 512  # scored positions per LM-head chunk: [512, vocab] logits at once
MIN_PREFIX = 8  # tokens; a shorter shared prefix is read with each row


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


class SkippedRows:
    """Rows the update pass leaves unread: the episodes of GRPO groups whose rewards are all equal. With no KL
    term their advantage is 0, so their loss term and its gradient are 0 whatever their log-probs; they stay
    in TRL's batch (and in its loss normaliser), with log-probs and entropy 0. Set per rollout by its ids."""

    def __init__(self) -> None:
        self.ids: set[tuple[int, ...]] = set()


def compact_scoring(model, temperature: float, skipped: SkippedRows | None = None) -> None:
    """Wrap the fused forward TRL installed on `model` (call after the trainer is built); rows in `skipped`
    are not read (their scores are 0)."""
    fused_forward = model.forward

    @functools.wraps(fused_forward)
    def forward(*args, fused_lm_head=False, labels=None, **kwargs):
        plain = set(kwargs) <= {"input_ids", "attention_mask"}
        if not fused_lm_head or args or not plain or labels is None or kwargs.get("attention_mask") is None:
            return fused_forward(*args, fused_lm_head=fused_lm_head, labels=labels, **kwargs)
        ids, attention = kwargs["input_ids"], kwargs["attention_mask"]
        unread = _rows_in(skipped, ids, attention) if skipped is not None and skipped.ids else ()
        return score_completions(model, ids, attention, labels, temperature, unread)

    model.forward = forward


def _rows_in(skipped: SkippedRows, input_ids, attention_mask) -> set[int]:
    """Indices of the batch's rows whose tokens (padding dropped) are in `skipped`."""
    rows = (row[m.bool()].tolist() for row, m in zip(input_ids, attention_mask))
    return {i for i, row in enumerate(rows) if tuple(row) in skipped.ids}


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


def score_completions(model, input_ids, attention_mask, labels, temperature: float, unread=()) -> ScoredTokens:
    """Per-token log-probs and entropy at the labelled positions of each row (see the module doc); the rows in
    `unread` are not read (their scores stay 0)."""
    batch = input_ids.shape[0]
    mask = attention_mask.bool()
    first = mask.float().argmax(-1).tolist()
    lengths = mask.sum(-1).tolist()
    scored = labels != -100
    # the hidden state at column c predicts the label at c + 1: a row's own part starts one column
    # before its first scored label; what comes before it is the row's prefix (its prompt)
    own = [
        max(first[i], int(scored[i, first[i] + 1 :].float().argmax()) + first[i]) if scored[i].any() else first[i]
        for i in range(batch)
    ]
    read = [i for i in range(batch) if i not in unread]
    shared = {} if drops_cache(model) else _shared_prefixes(input_ids, first, own, read)
    prefix_cache = _read_prefixes(model, input_ids, first, own, shared)
    hidden_parts, targets, where = [], [], []
    parts = [first[i] + lengths[i] - (own[i] if i in shared else first[i]) for i in read]
    for group in ([read[j] for j in g] for g in _length_groups(parts, GROUP_TOKENS)):
        hidden, starts = _rows_hidden(model, input_ids, first, lengths, own, shared, prefix_cache, group)
        for j, i in enumerate(group):
            end = first[i] + lengths[i]
            cols = torch.arange(starts[j], end - 1, device=input_ids.device)
            keep = labels[i, cols + 1] != -100
            if keep.any():
                hidden_parts.append(hidden[j, : end - 1 - starts[j]][keep])
                targets.append(labels[i, cols[keep] + 1])
                where.append((i, cols[keep]))
    return _scored(model, input_ids, hidden_parts, targets, where, temperature)


def kl_to_start(policy, start_model, episodes, temperature: float) -> float:
    """KL(policy || start model) on the sampled tokens of `episodes` (each with `prompt_ids`, `completion_ids`
    and `env_mask`): the mean over those tokens of log pi(x) - log pi_start(x), both scored as the update
    pass scores them, at the sampling temperature (tokens drawn from the policy make this an unbiased estimate)."""
    width = max(len(e.prompt_ids) + len(e.completion_ids) for e in episodes)
    ids = torch.zeros((len(episodes), width), dtype=torch.long)
    labels = torch.full_like(ids, -100)
    for i, e in enumerate(episodes):
        seq = e.prompt_ids + e.completion_ids
        ids[i, : len(seq)] = torch.tensor(seq)
        trained = torch.tensor([0] * len(e.prompt_ids) + e.env_mask, dtype=torch.bool)
        labels[i, : len(seq)][trained] = torch.tensor(seq)[trained]
    attention = (
        torch.arange(width) < torch.tensor([len(e.prompt_ids) + len(e.completion_ids) for e in episodes])[:, None]
    ).long()
    mask = labels[:, 1:] != -100
    scores = []
    with torch.no_grad():
        for model in (policy, start_model):
            device = next(model.parameters()).device
            out = score_completions(model, ids.to(device), attention.to(device), labels.to(device), temperature)
            scores.append(out.log_probs.cpu())
    return float(((scores[0] - scores[1]) * mask).sum() / mask.sum().clamp(min=1))


def drops_cache(model) -> bool:
    """True when this pass runs under activation checkpointing: transformers' checkpointed layers drop
    the KV cache in a training forward with gradients, so a prefix read once could not be handed to
    its rows. Every row is then read whole (the same scores; only the prefix reuse is lost)."""
    return bool(model.training and torch.is_grad_enabled() and getattr(model, "is_activation_checkpointing", False))


def _shared_prefixes(input_ids, first: list[int], own: list[int], rows=None) -> dict[int, int]:
    """Row -> index of its prefix among the distinct prefixes read once (rows whose prefix no other
    row shares, or shorter than MIN_PREFIX, are read whole). `rows`: the rows to read (default: all)."""
    rows_by_prefix: dict[tuple[int, ...], list[int]] = {}
    for i in range(input_ids.shape[0]) if rows is None else rows:
        if own[i] - first[i] >= MIN_PREFIX:
            rows_by_prefix.setdefault(tuple(input_ids[i, first[i] : own[i]].tolist()), []).append(i)
    kept = [rows for rows in rows_by_prefix.values() if len(rows) > 1]
    return {i: u for u, rows in enumerate(kept) for i in rows}


def _read_prefixes(model, input_ids, first, own, shared):
    """One backbone pass over the distinct shared prefixes (left-padded): their keys and values per
    layer, their attention mask and lengths. Gradients reach them through every row that reads them."""
    if not shared:
        return None
    rep = {u: i for i, u in shared.items()}
    prefixes = [input_ids[rep[u], first[rep[u]] : own[rep[u]]] for u in range(len(rep))]
    width = max(len(p) for p in prefixes)
    ids = input_ids.new_zeros((len(prefixes), width))
    att = input_ids.new_zeros((len(prefixes), width))
    for u, p in enumerate(prefixes):
        ids[u, width - len(p) :] = p
        att[u, width - len(p) :] = 1
    from transformers.cache_utils import DynamicCache

    pos = (att.cumsum(-1) - 1).clamp(min=0)
    out = model.base_model(
        input_ids=ids,
        attention_mask=att,
        position_ids=pos,
        cache=DynamicCache(config=model.config),
        use_cache=True,
    )
    read = out.cache if getattr(out, "cache", None) is not None else out.past_key_values
    layers = [(layer.keys, layer.values) for layer in read.layers]
    return layers, att, [len(p) for p in prefixes]


def _rows_hidden(model, input_ids, first, lengths, own, shared, prefix_cache, group):
    """Backbone hidden states of a length group's rows, each from its own part (after a shared prefix,
    read from the prefix cache) or from its first token; and the original column each row starts at."""
    from transformers.cache_utils import DynamicCache

    starts = [own[i] if i in shared else first[i] for i in group]
    sizes = [first[i] + lengths[i] - s for i, s in zip(group, starts)]
    longest = max(1, max(sizes))
    ids = input_ids.new_zeros((len(group), longest))
    att = input_ids.new_zeros((len(group), longest))
    for j, (i, s, n) in enumerate(zip(group, starts, sizes)):
        ids[j, :n] = input_ids[i, s : s + n]
        att[j, :n] = 1
    if not any(i in shared for i in group):
        return model.base_model(input_ids=ids, attention_mask=att, use_cache=False).last_hidden_state, starts
    layers, prefix_att, prefix_len = prefix_cache
    # rows without a shared prefix read an all-masked prefix (any one; the mask hides it)
    index = torch.tensor([shared.get(i, 0) for i in group], device=input_ids.device)
    read = torch.tensor([i in shared for i in group], device=input_ids.device)
    cache = DynamicCache(config=model.config)
    for layer, (k, v) in enumerate(layers):
        cache.update(k.index_select(0, index), v.index_select(0, index), layer)
    past_att = prefix_att.index_select(0, index) * read[:, None]
    offset = torch.tensor([prefix_len[shared[i]] if i in shared else 0 for i in group], device=input_ids.device)
    pos = offset[:, None] + torch.arange(longest, device=input_ids.device)[None, :]
    out = model.base_model(
        input_ids=ids,
        attention_mask=torch.cat([past_att, att], dim=1),
        position_ids=pos,
        cache=cache,
        use_cache=True,
    )
    return out.last_hidden_state, starts


def _scored(model, input_ids, hidden_parts, targets, where, temperature: float) -> ScoredTokens:
    """LM head, log-softmax and entropy at the scored positions, scattered into TRL's layout."""
    batch, width = input_ids.shape
    head = model.get_output_embeddings()
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
