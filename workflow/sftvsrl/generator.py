"""One attempt for each running episode of a batch, with every episode's KV cache kept from one round to
the next (`CachedGenerator`), so a round reads only what is new.

Without it, round k re-reads (prefills) the prompt and all earlier attempts and feedback of every
episode; on a CPU that prefill costs more than the decoding. Here each episode keeps the keys/values of
the tokens it has already been through, and a round feeds only the last sampled token and the feedback
turn. Episodes whose first-round input is identical (a GRPO group: G episodes of one hand) share one
prefill, and other episodes share one of the prefix common to all their prompts.

Layout of a round's batch (row i, `c_i` cached tokens, `n_i` new ones):
`[pad * (Tc - c_i), cached_i, pad * (Nn - n_i), new_i]`, with the attention mask 0 on the pads;
transformers derives positions from the mask (cumsum), so every token keeps the position it had when it
was cached. Only models whose cache is a plain `DynamicCache` (every layer a full-attention
`DynamicLayer`) and that `reuses_cache` allows take this path; others (sliding-window, hybrid,
recurrent, M-RoPE with images, cross-attention) re-read everything each round, detected on the first call.

Details: docs/code-notes.md#workflowsftvsrlgeneratorpy
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from .model_inputs import image_inputs, image_token_id, reuses_cache
from .sampling import generation_config, only_generation_config
from .tasks.base import Episode
from .turns import cut_at_eos, eos_token_ids, text_tokenizer

MIN_SHARED_PREFIX = 8  # tokens; a shorter common prefix is not worth a forward pass of its own


@dataclass
class EpisodeState:
    """Token bookkeeping of one running episode: what the next round reads, and its kept KV cache."""

    episode: Episode
    prompt_ids: list[int]
    completion_ids: list[int] = field(default_factory=list)
    env_mask: list[int] = field(default_factory=list)
    truncated: int = 0
    kv: list[tuple[Any, Any]] | None = None  # per layer (keys, values) [heads, kv_len, dim] of input_ids[:kv_len]
    kv_len: int = 0
    images: list[Any] = field(default_factory=list)  # the images whose tokens are in input_ids, in order
    images_cached: int = 0  # how many of them the KV cache has already read
    prompt_images: int = 0  # how many of them the prompt holds
    finished_at: float = 0.0  # wall-clock time (time.time) at which the episode ended

    @property
    def input_ids(self) -> list[int]:
        return self.prompt_ids + self.completion_ids


class CachedGenerator:
    """Batched generation that keeps every episode's KV cache from one round to the next (see the module doc).

    Called with a chunk of running episodes: one attempt for each, sampled ids per row (padding after eos).
    `reuse` turns False, for good, once the model turns out not to allow a carried cache.
    """

    def __init__(self, model, tokenizer, *, temperature: float, max_new_tokens: int, reuse_cache: bool = True):
        self.model = model
        self.processor = tokenizer  # a tokenizer, or a processor for a vision-language model
        self.max_new_tokens = max_new_tokens
        text_tok = text_tokenizer(tokenizer)
        self.pad_id = text_tok.pad_token_id if text_tok.pad_token_id is not None else text_tok.eos_token_id
        self.eos = eos_token_ids(model, tokenizer)
        self.image_token = image_token_id(model)
        self.eos_set = set(self.eos)
        self.temperature = temperature
        self.reuse = reuse_cache
        self.prefill_tokens = 0  # input tokens run through the model (not sampled ones), for stats

    def __call__(self, states: list[EpisodeState]) -> list[list[int]]:
        """One attempt for each episode of the chunk: sampled ids per row (padding after eos)."""
        device = next(self.model.parameters()).device
        self._prepare_caches(states)
        ids = [st.input_ids for st in states]
        cached = [st.kv_len if st.kv is not None else 0 for st in states]
        new = [len(x) - c for x, c in zip(ids, cached)]
        if min(new) < 1:
            raise RuntimeError("an episode has no new token to feed the model")
        input_ids, attention = round_batch(ids, cached, new, self.pad_id)
        width = input_ids.shape[1]
        kwargs = round_image_inputs(self.processor, self.model, states, input_ids, device)
        config = self._round_config(images=any(st.images for st in states))
        if self.reuse:
            kwargs["cache"] = static_cache(self.model, states, cached, width + self.max_new_tokens)
        self.prefill_tokens += sum(new)
        with only_generation_config(self.model, config):
            out = self.model.generate(
                input_ids=input_ids.to(device), attention_mask=attention.to(device), generation_config=config, **kwargs
            )
        rows = out.sequences[:, width:].tolist()
        cache = output_cache(out)
        self.reuse = self.reuse and plain_dynamic_cache(cache)
        keep_caches(states, cache if self.reuse else None, rows, attention, self.eos_set, device)
        return rows

    def _prepare_caches(self, states: list[EpisodeState]) -> None:
        """Decide whether this round reads the kept caches; if so, prefill once what new episodes share,
        otherwise forget every cache (the round re-reads each conversation)."""
        if self.reuse and not reuses_cache(self.model, images=any(st.images for st in states)):
            self.reuse = False
        if self.reuse:
            fresh = [st for st in states if st.kv is None and not st.images]  # images: read by generate below
            if len(fresh) > 1:
                read = prefill_shared(self.model, fresh, self.pad_id)
                self.reuse = read is not None
                self.prefill_tokens += read or 0
        if not self.reuse:
            for st in states:
                st.kv, st.kv_len = None, 0

    def _round_config(self, images: bool):
        return generation_config(
            self.model,
            self.temperature,
            max_new_tokens=self.max_new_tokens,
            disable_compile=True,  # a StaticCache would otherwise trigger torch.compile on GPUs, per new shape
            pad_token_id=self.pad_id,
            eos_token_id=self.eos,
            return_dict_in_generate=True,
            suppress_tokens=[self.image_token] if images else None,  # a sampled image placeholder would have no image
        )


def prefill_shared(model, states: list[EpisodeState], pad_id: int) -> int | None:
    """Read once what several episodes share before their first round: the whole input of episodes with
    identical prompts (a GRPO group), and the longest prefix common to all the others (the instruction
    every prompt of a task repeats). Returns the tokens read, or None when the model's cache is not a
    plain one (nothing kept)."""
    from transformers.cache_utils import DynamicCache

    groups: dict[tuple[int, ...], list[EpisodeState]] = {}
    for st in states:
        groups.setdefault(tuple(st.input_ids[:-1]), []).append(st)
    shared = {k: v for k, v in groups.items() if len(v) > 1 and k}
    rest = [st for k, v in groups.items() if k not in shared for st in v]
    prefix = _common_prefix([st.input_ids[:-1] for st in rest]) if len(rest) > 1 else ()
    if len(prefix) >= MIN_SHARED_PREFIX:
        shared.setdefault(prefix, []).extend(rest)
    if not shared:
        return 0
    device = next(model.parameters()).device
    keys = list(shared)
    ids, att = left_padded(keys, pad_id)
    pos = (att.cumsum(-1) - 1).clamp(min=0)
    out = model(
        input_ids=ids.to(device),
        attention_mask=att.to(device),
        position_ids=pos.to(device),
        cache=DynamicCache(config=model.config),
        use_cache=True,
        logits_to_keep=1,
    )
    cache = output_cache(out)
    if not plain_dynamic_cache(cache):
        return None
    for i, k in enumerate(keys):
        idx = att[i].nonzero().squeeze(-1).to(device)
        kv = _row_kv(cache, i, idx)
        for st in shared[k]:
            st.kv, st.kv_len = kv, len(k)
    return int(att.sum())


def round_image_inputs(processor, model, states: list[EpisodeState], input_ids: torch.Tensor, device):
    """The model inputs of the images whose tokens this round reads (none when no episode has images)."""
    if not any(st.images for st in states):
        return {}
    fed = [st.images[st.images_cached :] if st.kv is not None else st.images for st in states]
    return {k: v.to(device) for k, v in image_inputs(processor, model, input_ids, fed).items()}


def static_cache(model, states: list[EpisodeState], cached: list[int], max_cache_len: int):
    """A StaticCache for the whole call, holding each row's kept keys/values right-aligned before its new tokens."""
    from transformers.cache_utils import StaticCache

    # A cache sized for the whole call: a growing DynamicCache copies every layer's keys
    # and values at each new token, which on a CPU costs more than the model itself.
    cache = StaticCache(config=model.config, max_cache_len=max_cache_len)
    tc = max(cached)
    if tc:
        ref = next(st.kv for st in states if st.kv is not None)
        for layer, (k0, v0) in enumerate(ref):
            k = k0.new_zeros((len(states), k0.shape[0], tc, k0.shape[-1]))
            v = v0.new_zeros((len(states), v0.shape[0], tc, v0.shape[-1]))
            for i, (st, c) in enumerate(zip(states, cached)):
                if c:
                    k[i, :, tc - c :] = st.kv[layer][0]
                    v[i, :, tc - c :] = st.kv[layer][1]
            cache.update(k, v, layer)
    return cache


def keep_caches(states: list[EpisodeState], cache, rows: list[list[int]], attention: torch.Tensor, eos_set, device):
    """Keep each row's keys/values of its real tokens (pads dropped) for the next round, or forget them
    when `cache` is None (the model's cache is not one to carry)."""
    width = attention.shape[1]
    for i, st in enumerate(states):
        st.images_cached = len(st.images) if cache is not None else 0
        if cache is None:
            st.kv, st.kv_len = None, 0
            continue
        sampled, _ = cut_at_eos(rows[i], eos_set)
        keep = min(len(sampled), len(rows[i]) - 1)  # the last generated token was never fed
        idx = torch.cat([attention[i].nonzero().squeeze(-1), torch.arange(width, width + keep)]).to(device)
        st.kv = _row_kv(cache, i, idx)
        st.kv_len = len(st.input_ids) + keep


def round_batch(
    ids: list[list[int]], cached: list[int], new: list[int], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(input ids, attention mask) of a round: row i is `[pad * (Tc - c_i), ids_i[:c_i], pad * (Nn - n_i),
    ids_i[c_i:]]` (CachedGenerator's layout), the mask 0 on the pads."""
    tc, width = max(cached), max(cached) + max(new)
    input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(ids), width), dtype=torch.long)
    for i, (x, c, n) in enumerate(zip(ids, cached, new)):
        if c:
            input_ids[i, tc - c : tc] = torch.tensor(x[:c], dtype=torch.long)
            attention[i, tc - c : tc] = 1
        input_ids[i, width - n :] = torch.tensor(x[c:], dtype=torch.long)
        attention[i, width - n :] = 1
    return input_ids, attention


def left_padded(seqs: list, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input ids, attention mask) of id sequences, left-padded to the longest, the mask 0 on the pads."""
    width = max(len(x) for x in seqs)
    input_ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, x in enumerate(seqs):
        input_ids[i, width - len(x) :] = torch.tensor(x, dtype=torch.long)
        attention[i, width - len(x) :] = 1
    return input_ids, attention


def plain_dynamic_cache(cache) -> bool:
    """True for a cache whose every layer is a full-attention DynamicLayer or StaticLayer."""
    try:
        from transformers.cache_utils import DynamicLayer, StaticLayer
    except ImportError:  # pragma: no cover - older transformers
        return False
    layers = getattr(cache, "layers", None)
    return bool(layers) and all(type(layer) in (DynamicLayer, StaticLayer) for layer in layers)


def output_cache(out):
    cache = getattr(out, "cache", None)
    return cache if cache is not None else getattr(out, "past_key_values", None)


def _row_kv(cache, i: int, idx: torch.Tensor) -> list[tuple[Any, Any]]:
    """Row i's keys and values at the positions `idx`, per layer."""
    return [(layer.keys[i].index_select(-2, idx), layer.values[i].index_select(-2, idx)) for layer in cache.layers]


def _common_prefix(seqs: list[list[int]]) -> tuple[int, ...]:
    """The longest prefix shared by every sequence (of token ids)."""
    first = seqs[0]
    n = min(len(x) for x in seqs)
    for x in seqs[1:]:
        n = next((i for i in range(n) if x[i] != first[i]), n)
    return tuple(first[:n])
