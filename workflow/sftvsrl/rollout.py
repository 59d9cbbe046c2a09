"""Run many multi-turn episodes at once: batched generation, verifier, feedback turns, VIter.

Shared by RL (`rl.py`, inside TRL's `rollout_func`) and evaluation; the hot path. The engine
sees only the `Episode` contract of `tasks/base.py`, never a particular task.

`run_episodes` works in rounds (one round = one attempt of every episode still running): one batched,
left-padded `model.generate` call (or one per chunk of `batch_size`) for the episodes not done, then
each answer to `episode.step(answer)` (the task's verifier), until every episode is done.

Before editing: per episode, `prompt_ids`, `completion_ids` (sampled ids kept EXACTLY as sampled, with
the context ids of the feedback turns between them) and `env_mask` (1 on sampled ids, 0 on context ids)
are what RL trains on, and the next round generates from `prompt_ids + completion_ids`. The
conversation must only grow (each render is a prefix of the next). `tokenizer` may be a processor
(GP-VL, V-IRL-VL), and `CachedGenerator` keeps each episode's KV cache between rounds where
`reuses_cache` allows it.

Details: docs/code-notes.md#workflowsftvsrlrolloutpy
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .tasks.base import Attempt, Episode, with_images

log = logging.getLogger(__name__)

MIN_SHARED_PREFIX = 8  # tokens; a shorter common prefix is not worth a forward pass of its own

# generate_fn(list of input id lists) -> list of sampled id lists (raw: may hold pads/eos)
GenerateFn = Callable[[list[list[int]]], list[list[int]]]


@dataclass
class EpisodeTrace:
    """One finished episode as token ids (for RL) and as scored attempts (for metrics)."""

    prompt_ids: list[int]
    completion_ids: list[int]
    env_mask: list[int]  # 1 = the model's sampled token (trained), 0 = context (feedback turn markup)
    rewards: list[float]  # per attempt
    attempts: list[Attempt]
    episode_return: float  # sum of the per-attempt rewards
    success: bool
    generated_tokens: int  # sampled tokens over all attempts (= sum(env_mask))
    episode: Episode
    truncated_attempts: int = 0  # attempts that hit max_new_tokens without an end-of-sequence token
    images: list[Any] = field(default_factory=list)  # the images whose tokens are in prompt + completion, in order
    prompt_images: int = 0  # how many of them the prompt holds

    @property
    def num_attempts(self) -> int:
        return len(self.attempts)


@dataclass
class RolloutStats:
    """Where rollout time goes. Accumulates over calls when the same object is passed again."""

    generation_s: float = 0.0  # model.generate (incl. padding the batch)
    verification_s: float = 0.0  # decoding answers + episode.step (the task's verifier)
    bookkeeping_s: float = 0.0  # chat templates and tokenizing context turns
    rounds: int = 0
    generate_calls: int = 0
    prefill_tokens: int = 0  # input tokens the model had to read (not sampled ones)
    episodes: int = 0
    attempts: int = 0
    generated_tokens: int = 0

    def as_dict(self) -> dict[str, float]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass
class _State:
    """Token bookkeeping of one running episode."""

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

    @property
    def input_ids(self) -> list[int]:
        return self.prompt_ids + self.completion_ids


def text_tokenizer(processing_class):
    """The tokenizer of a processing class: a processor's own, or the tokenizer itself."""
    return getattr(processing_class, "tokenizer", processing_class)


def episode_images(episode: Episode) -> list[Any]:
    """The images of the episode's image parts, in order (none for a text episode)."""
    return list(getattr(episode, "images", None) or [])


def _render(tokenizer, messages: Sequence[dict[str, Any]], add_generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=add_generation_prompt)


def _encode(tokenizer, text: str, images: Sequence[Any] = ()) -> list[int]:
    """Token ids of `text`; with images, the processor's, with every image placeholder expanded."""
    if images:
        ids = list(tokenizer(text=[text], images=[list(images)], add_special_tokens=False)["input_ids"][0])
        # mllama's processor writes a bos in front of any text without one (add_special_tokens aside):
        # a text with no bos of its own, such as a context turn, gets it removed again
        tok = text_tokenizer(tokenizer)
        if tok.bos_token and tok.bos_token not in text and tok.bos_token_id in ids:
            ids.remove(tok.bos_token_id)
        return ids
    return list(text_tokenizer(tokenizer)(text, add_special_tokens=False)["input_ids"])


def encode_prompt(tokenizer, messages: Sequence[dict[str, Any]], images: Sequence[Any] = ()) -> list[int]:
    """The prompt's ids with the generation prompt: the processor's own rendering when there are images."""
    if not images:
        return _encode(tokenizer, _render(tokenizer, messages, add_generation_prompt=True))
    rendered = tokenizer.apply_chat_template(
        with_images(messages, images), add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    return rendered["input_ids"][0].tolist()


def image_token_id(model) -> int | None:
    """The id of the model's image placeholder token (None for a text model)."""
    config = getattr(model, "config", None)
    for key in ("image_token_id", "image_token_index"):
        value = getattr(config, key, None)
        if value is not None:
            return int(value)
    return None


def multimodal_positions(model) -> bool:
    """True for models whose rotary positions depend on the images (Qwen2-VL's M-RoPE): their
    positions cannot be derived from the attention mask."""
    inner = getattr(model, "model", None)
    return hasattr(model, "get_rope_index") or hasattr(inner, "get_rope_index")


def cross_attention_images(model) -> bool:
    """True for models whose text cross-attends to the images (Llama-3.2-Vision / mllama): each image
    is one placeholder token, and the model reads the pixels beside the text with a per-token
    `cross_attention_mask` [batch, tokens, images, tiles] (which images each token sees)."""
    config = getattr(model, "config", None)
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    return bool(getattr(text_config, "cross_attention_layers", None))


def reuses_cache(model, images: bool = True) -> bool:
    """Whether `CachedGenerator` may carry the model's KV cache from one round to the next (`images`:
    whether the episodes show images).

    The carried cache holds one key/value per token of the conversation in every layer, and the next
    round's positions are counted from the attention mask. That holds for plain 1-D positions (Llama,
    LLaVA, Idefics3/SmolVLM). It does not for:
    - multimodal rotary positions (Qwen2-VL's M-RoPE) once there are images: a token's position after an
      image depends on the image's grid, not on the mask;
    - cross-attention to the images (mllama): its cross-attention layers cache the vision states of the
      call's images (images x tiles x patches long, not the text's length, and only the images fed in that
      call), so a carried cache would be misread, and a round that feeds only its new tokens would lose
      the earlier images.
    Those models re-read the whole conversation, with all its images, every round.
    """
    if cross_attention_images(model):
        return False
    return not (images and multimodal_positions(model))


def image_inputs(tokenizer, model, input_ids, images_per_row: Sequence[Sequence[Any]]) -> dict[str, Any]:
    """The model's image inputs for a batch (`input_ids`: the batch as fed, left-padded), in the
    model's own layout, batched by the processor.

    Models that merge image features into the image tokens (LLaVA, Idefics3, Qwen2-VL) read the
    images of all rows as one sequence: rows without images are skipped (their image tokens are in
    the cache or absent); Idefics3 pads a row's images to the batch's most, with all-zero images that
    the model drops. Per-token image markers (`mm_token_type_ids`) are derived from `input_ids`.
    Cross-attention models (mllama) read pixels per row: every row must bring the images of all its
    `<|image|>` tokens, and the `cross_attention_mask` is computed for `input_ids` as the processor
    computes it for its own tokens."""
    if cross_attention_images(model):
        return _cross_attention_image_inputs(tokenizer, model, input_ids, images_per_row)
    rows = [list(images) for images in images_per_row if images]
    if not rows:
        return {}
    chats = [[{"role": "user", "content": [{"type": "image", "image": im} for im in images]}] for images in rows]
    batch = tokenizer.apply_chat_template(
        chats, tokenize=True, return_dict=True, return_tensors="pt", processor_kwargs={"padding": True}
    )
    per_token = ("input_ids", "attention_mask", "token_type_ids", "mm_token_type_ids")
    out = {k: v for k, v in batch.items() if k not in per_token}
    for key in ("mm_token_type_ids", "token_type_ids"):
        if key in batch:  # per-token markers for the ids as fed, not the processor's own tokens
            out[key] = (input_ids == image_token_id(model)).long()
    return out


def _cross_attention_image_inputs(processor, model, input_ids, images_per_row) -> dict[str, Any]:
    """mllama's image inputs: pixels [batch, images, tiles, 3, H, W], `aspect_ratio_ids`,
    `aspect_ratio_mask` from the image processor, and the `cross_attention_mask` of `input_ids`
    from transformers' own mllama helpers (each `<|image|>` token's image is seen by the tokens from
    it to the next image token, or to the end)."""
    from transformers.models.mllama.processing_mllama import (
        convert_sparse_cross_attention_mask_to_dense,
        get_cross_attention_token_mask,
    )

    rows = [list(images) for images in images_per_row]
    if not any(rows):
        return {}
    if not all(rows):
        raise ValueError(
            "a cross-attention model (mllama) reads the images of every row of a batch: "
            "a batch mixing rows with and without images cannot be fed"
        )
    image_id = image_token_id(model)
    spans = [get_cross_attention_token_mask(row, image_id) for row in input_ids.tolist()]
    for i, (row_spans, images) in enumerate(zip(spans, rows)):
        if len(row_spans) != len(images):
            raise ValueError(f"row {i} holds {len(row_spans)} image tokens for {len(images)} images")
    pixels = dict(processor.image_processor(images=rows, return_tensors="pt"))
    num_tiles = pixels.pop("num_tiles")
    mask = convert_sparse_cross_attention_mask_to_dense(
        spans, num_tiles=num_tiles, max_num_tiles=processor.image_processor.max_image_tiles, length=input_ids.shape[1]
    )
    return {**pixels, "cross_attention_mask": torch.from_numpy(mask)}


def eos_token_ids(model, tokenizer) -> list[int]:
    """Every id that ends an answer: the tokenizer's eos and the model's generation-config eos."""
    ids: list[int] = []
    candidates: list[Any] = [text_tokenizer(tokenizer).eos_token_id]
    gen_cfg = getattr(model, "generation_config", None)
    if gen_cfg is not None:
        candidates.append(gen_cfg.eos_token_id)
    for c in candidates:
        for i in c if isinstance(c, (list, tuple)) else [c]:
            if i is not None and int(i) not in ids:
                ids.append(int(i))
    if not ids:
        raise ValueError("the tokenizer has no eos token: answers could never end")
    return ids


def _cut_at_eos(ids: Sequence[int], eos_ids: set[int]) -> tuple[list[int], bool]:
    """The sampled ids up to and including the first eos (padding after it dropped)."""
    out = []
    for t in ids:
        out.append(int(t))
        if int(t) in eos_ids:
            return out, True
    return out, False


_SENTINEL = "SFTVSRLxSENTINELx7f3a"


def context_ids_after_attempt(
    tokenizer,
    before: Sequence[dict[str, Any]],
    after: Sequence[dict[str, Any]],
    ended_with_eos: bool,
    eos_id: int | None,
    images: Sequence[Any] = (),
) -> list[int]:
    """Token ids the chat template adds after the model's sampled answer (see the module doc).

    `before`: the conversation the answer was generated for (ends with a user turn);
    `after`: it plus the assistant turn and the new user turn(s) appended by `episode.step`;
    `images`: the images of the image parts those new turns brought (expanded by the processor).
    """
    n = len(before)
    if list(after[:n]) != list(before) or len(after) < n + 2 or after[n].get("role") != "assistant":
        raise ValueError(
            "episode.step must append the assistant answer and then the next user turn to episode.messages, "
            "leaving earlier turns unchanged (the token-level splice depends on it)"
        )
    prev = _render(tokenizer, before, add_generation_prompt=True)
    closed = _render(tokenizer, after[: n + 1], add_generation_prompt=False)
    full = _render(tokenizer, after, add_generation_prompt=True)
    if not closed.startswith(prev) or not full.startswith(closed):
        raise ValueError(
            "the chat template does not render the conversation as a growing prefix; cannot splice "
            f"feedback turns at the token level (prefix of {prev[-80:]!r} vs {closed[len(prev) - 80 : len(prev) + 80]!r})"
        )
    # END: what the template writes after an assistant turn's content, read off a turn whose
    # content is a sentinel no template rewrites (the real content may be trimmed, empty, ...)
    probe = _render(tokenizer, [*before, {"role": "assistant", "content": _SENTINEL}], add_generation_prompt=False)
    end = probe[probe.rfind(_SENTINEL) + len(_SENTINEL) :] if _SENTINEL in probe else ""
    if not end or not closed.endswith(end):
        raise ValueError(f"cannot find the end of an assistant turn in the chat template (got {end!r})")
    turn = full[len(closed) :]
    text_tok = text_tokenizer(tokenizer)
    eos_text = text_tok.decode([eos_id]) if eos_id is not None else None
    if ended_with_eos and eos_text and end.startswith(eos_text):
        end = end[len(eos_text) :]
    text = end + turn
    if not text:
        return []
    anchor_id = eos_id if eos_id is not None else text_tok.eos_token_id
    anchor = text_tok.decode([anchor_id])
    ids = _encode(tokenizer, anchor + text, images)
    if ids and ids[0] == anchor_id:
        return ids[1:]
    return _encode(tokenizer, text, images)  # the anchor did not tokenize to itself: plain encoding


def make_generate_fn(
    model,
    tokenizer,
    *,
    temperature: float,
    max_new_tokens: int,
) -> GenerateFn:
    """One left-padded batched `model.generate` call over a list of input id lists."""
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        pad_id = tokenizer.eos_token_id
    config = _generation_config(
        model,
        temperature,
        max_new_tokens=max_new_tokens,
        pad_token_id=pad_id,
        eos_token_id=eos_token_ids(model, tokenizer),
    )

    def generate(batch: list[list[int]]) -> list[list[int]]:
        device = next(model.parameters()).device
        width = max(len(ids) for ids in batch)
        input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        for i, ids in enumerate(batch):
            input_ids[i, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
            attention[i, width - len(ids) :] = 1
        with _only_generation_config(model, config):
            out = model.generate(
                input_ids=input_ids.to(device), attention_mask=attention.to(device), generation_config=config
            )
        return out[:, width:].tolist()

    return generate


# What `generate` may keep of the model's own generation config: the special token ids (they decide
# nothing about the distribution). Everything else is set by `_generation_config` below or left at
# transformers' neutral defaults.
_KEPT_TOKEN_IDS = ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id")
# Set explicitly (not left to transformers' defaults): the neutral value of every field with which a hub
# generation_config.json shapes the next-token distribution. None-valued ones (min_p, top_h, bad_words_ids,
# sequence_bias, forced_*_token_id, suppress_tokens, guidance_scale, watermarking_config, ...) stay None.
_NEUTRAL = {
    "num_beams": 1,
    "repetition_penalty": 1.0,
    "encoder_repetition_penalty": 1.0,
    "no_repeat_ngram_size": 0,
    "encoder_no_repeat_ngram_size": 0,
    "typical_p": 1.0,
    "epsilon_cutoff": 0.0,
    "eta_cutoff": 0.0,
    "min_length": 0,
    "renormalize_logits": False,
    "remove_invalid_values": False,
}
# Fields of the model's generation config that `sampling_settings` does not list as ignored: they
# change where or how fast generation runs or stops, or what it returns, never the distribution.
_NOT_SAMPLING = {
    *_KEPT_TOKEN_IDS,
    "max_length",
    "max_new_tokens",
    "max_time",
    "stop_strings",
    "use_cache",
    "cache_implementation",
    "cache_config",
    "max_cache_len",
    "compile_config",
    "disable_compile",
    "prefill_chunk_size",
    "continuous_batching_config",
    "low_memory",
    "num_return_sequences",
    "return_dict_in_generate",
    "output_attentions",
    "output_hidden_states",
    "output_scores",
    "output_logits",
    "transformers_version",
}


def _generation_config(model, temperature: float, **fields: Any):
    """The only generation config our `generate` calls see (`fields`: their other settings: max_new_tokens,
    eos_token_id, suppress_tokens, ...).

    temperature > 0: sampling from exactly softmax(logits / T), the distribution the GRPO loss re-scores
    (no top-k, top-p, min-p, repetition penalty, ...); 0: greedy, argmax of the raw logits. Of the model's
    own `generation_config` only the special token ids are kept: an instruct model's hub file
    (Qwen2.5-Instruct: repetition_penalty 1.05, top_k 20, top_p 0.8, temperature 0.7) changes nothing.
    Use it with `_only_generation_config` around the call: `generate` fills every field the config
    leaves None from `model.generation_config`.
    """
    from transformers import GenerationConfig

    own = getattr(model, "generation_config", None)
    ids = {k: getattr(own, k) for k in _KEPT_TOKEN_IDS if getattr(own, k, None) is not None}
    if temperature and temperature > 0:
        sampling = {"do_sample": True, "temperature": float(temperature), "top_k": 0, "top_p": 1.0}
    else:  # greedy: temperature, top-k and top-p are not read
        sampling = {"do_sample": False, "temperature": None, "top_k": None, "top_p": None}
    return GenerationConfig(**{**ids, **_NEUTRAL, **sampling, **fields})


@contextlib.contextmanager
def _only_generation_config(model, config):
    """Make `config` the model's generation config for the block (restored after it, even on an error):
    `generate` fills the fields a call leaves None from `model.generation_config`, so none of the
    model's own values (repetition penalty, top-k, a field a future hub file adds) can reach the sampling."""
    own = model.generation_config
    model.generation_config = config
    try:
        yield config
    finally:
        model.generation_config = own


def sampling_settings(model, temperature: float) -> dict[str, Any]:
    """How rollouts and evaluation at `temperature` sample from `model`, as plain values (for the metrics
    JSON): temperature, do_sample, top_k, top_p and repetition_penalty as used (greedy: temperature 0,
    top_k / top_p None), and `ignored_model_generation_config`: the values of the model's own
    generation config that would shape the distribution and are not applied (e.g. an instruct model's
    repetition_penalty, top_k, top_p and temperature)."""
    used = _generation_config(model, temperature)
    own = getattr(model, "generation_config", None)
    own_values = own.to_diff_dict() if own is not None else {}
    ignored = {
        k: v
        for k, v in sorted(own_values.items())
        if k not in _NOT_SAMPLING and not k.startswith("_") and v is not None and v != getattr(used, k, None)
    }
    return {
        "temperature": float(temperature) if used.do_sample else 0.0,
        "do_sample": bool(used.do_sample),
        "top_k": used.top_k,
        "top_p": used.top_p,
        "repetition_penalty": used.repetition_penalty,
        "ignored_model_generation_config": ignored,
    }


def _plain_dynamic_cache(cache) -> bool:
    """True for a cache whose every layer is a full-attention DynamicLayer or StaticLayer."""
    try:
        from transformers.cache_utils import DynamicLayer, StaticLayer
    except ImportError:  # pragma: no cover - older transformers
        return False
    layers = getattr(cache, "layers", None)
    return bool(layers) and all(type(layer) in (DynamicLayer, StaticLayer) for layer in layers)


def _output_cache(out):
    cache = getattr(out, "cache", None)
    return cache if cache is not None else getattr(out, "past_key_values", None)


class CachedGenerator:
    """Batched generation that keeps every episode's KV cache from one round to the next.

    Without it, round k re-reads (prefills) the prompt and all earlier attempts and feedback
    of every episode; on a CPU that prefill costs more than the decoding. Here each episode
    keeps the keys/values of the tokens it has already been through, and a round only feeds
    what is new (the last sampled token and the feedback turn). Episodes whose first-round
    input is identical (a GRPO group: G episodes of one hand) share one prefill.

    Layout of a round's batch (row i, `c_i` cached tokens, `n_i` new ones):
    `[pad * (Tc - c_i), cached_i, pad * (Nn - n_i), new_i]`, with the attention mask 0 on the
    pads; transformers derives positions from the mask (cumsum), so every token keeps the
    position it had when it was cached. Only models whose cache is a plain `DynamicCache`
    (every layer a full-attention `DynamicLayer`) take this path; others (sliding-window,
    hybrid, recurrent) fall back to re-reading everything each round, detected on the first call.
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

    def _device(self):
        return next(self.model.parameters()).device

    def _prefill_shared(self, states: list[_State]) -> None:
        """Read once what several episodes share before their first round: the whole input of
        episodes with identical prompts (a GRPO group), and the longest prefix common to all the
        others (the instruction every prompt of a task repeats)."""
        from transformers.cache_utils import DynamicCache

        groups: dict[tuple[int, ...], list[_State]] = {}
        for st in states:
            groups.setdefault(tuple(st.input_ids[:-1]), []).append(st)
        shared = {k: v for k, v in groups.items() if len(v) > 1 and k}
        rest = [st for k, v in groups.items() if k not in shared for st in v]
        prefix = _common_prefix([st.input_ids[:-1] for st in rest]) if len(rest) > 1 else ()
        if len(prefix) >= MIN_SHARED_PREFIX:
            shared.setdefault(prefix, []).extend(rest)
        if not shared:
            return
        device = self._device()
        keys = list(shared)
        width = max(len(k) for k in keys)
        ids = torch.full((len(keys), width), self.pad_id, dtype=torch.long)
        att = torch.zeros((len(keys), width), dtype=torch.long)
        for i, k in enumerate(keys):
            ids[i, width - len(k) :] = torch.tensor(k, dtype=torch.long)
            att[i, width - len(k) :] = 1
        pos = (att.cumsum(-1) - 1).clamp(min=0)
        out = self.model(
            input_ids=ids.to(device),
            attention_mask=att.to(device),
            position_ids=pos.to(device),
            cache=DynamicCache(config=self.model.config),
            use_cache=True,
            logits_to_keep=1,
        )
        cache = _output_cache(out)
        if not _plain_dynamic_cache(cache):
            self.reuse = False
            return
        self.prefill_tokens += int(att.sum())
        for i, k in enumerate(keys):
            idx = att[i].nonzero().squeeze(-1).to(device)
            kv = _row_kv(cache, i, idx)
            for st in shared[k]:
                st.kv, st.kv_len = kv, len(k)

    def _prepare_caches(self, states: list[_State]) -> None:
        """Decide whether this round reads the kept caches; if so, prefill once what new episodes share,
        otherwise forget every cache (the round re-reads each conversation)."""
        if self.reuse and not reuses_cache(self.model, images=any(st.images for st in states)):
            self.reuse = False
        if self.reuse:
            fresh = [st for st in states if st.kv is None and not st.images]  # images: read by generate below
            if len(fresh) > 1:
                self._prefill_shared(fresh)
        if not self.reuse:
            for st in states:
                st.kv, st.kv_len = None, 0

    def _image_kwargs(self, states: list[_State], input_ids: torch.Tensor, device) -> dict[str, Any]:
        """The model inputs of the images whose tokens this round reads (none when no episode has images)."""
        if not any(st.images for st in states):
            return {}
        fed = [st.images[st.images_cached :] if st.kv is not None else st.images for st in states]
        return {k: v.to(device) for k, v in image_inputs(self.processor, self.model, input_ids, fed).items()}

    def _static_cache(self, states: list[_State], cached: list[int], width: int):
        """A StaticCache for the whole call, holding each row's kept keys/values right-aligned before its new tokens."""
        from transformers.cache_utils import StaticCache

        # A cache sized for the whole call: a growing DynamicCache copies every layer's keys
        # and values at each new token, which on a CPU costs more than the model itself.
        cache = StaticCache(config=self.model.config, max_cache_len=width + self.max_new_tokens)
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

    def _keep_caches(self, states: list[_State], cache, rows: list[list[int]], attention: torch.Tensor, device):
        """Keep each row's keys/values of its real tokens (pads dropped) for the next round, or forget them
        when the model's cache turned out not to be a plain one."""
        if self.reuse and not _plain_dynamic_cache(cache):
            self.reuse = False
        width = attention.shape[1]
        for i, st in enumerate(states):
            st.images_cached = len(st.images) if self.reuse else 0
            if not self.reuse:
                st.kv, st.kv_len = None, 0
                continue
            sampled, _ = _cut_at_eos(rows[i], self.eos_set)
            keep = min(len(sampled), len(rows[i]) - 1)  # the last generated token was never fed
            idx = torch.cat([attention[i].nonzero().squeeze(-1), torch.arange(width, width + keep)]).to(device)
            st.kv = _row_kv(cache, i, idx)
            st.kv_len = len(st.input_ids) + keep

    def __call__(self, states: list[_State]) -> list[list[int]]:
        """One attempt for each episode of the chunk: sampled ids per row (padding after eos)."""
        device = self._device()
        self._prepare_caches(states)
        ids = [st.input_ids for st in states]
        cached = [st.kv_len if st.kv is not None else 0 for st in states]
        new = [len(x) - c for x, c in zip(ids, cached)]
        if min(new) < 1:
            raise RuntimeError("an episode has no new token to feed the model")
        input_ids, attention = _round_batch(ids, cached, new, self.pad_id)
        width = input_ids.shape[1]
        kwargs = self._image_kwargs(states, input_ids, device)
        config = _generation_config(
            self.model,
            self.temperature,
            max_new_tokens=self.max_new_tokens,
            disable_compile=True,  # a StaticCache would otherwise trigger torch.compile on GPUs, per new shape
            pad_token_id=self.pad_id,
            eos_token_id=self.eos,
            return_dict_in_generate=True,
            # a sampled image placeholder would have no image
            suppress_tokens=[self.image_token] if any(st.images for st in states) else None,
        )
        if self.reuse:
            kwargs["cache"] = self._static_cache(states, cached, width)
        self.prefill_tokens += sum(new)
        with _only_generation_config(self.model, config):
            out = self.model.generate(
                input_ids=input_ids.to(device), attention_mask=attention.to(device), generation_config=config, **kwargs
            )
        rows = out.sequences[:, width:].tolist()
        self._keep_caches(states, _output_cache(out), rows, attention, device)
        return rows


def _round_batch(
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


@contextlib.contextmanager
def _seeded(seed: int | None):
    """Seed torch's RNG for the block without disturbing the caller's RNG state."""
    if seed is None:
        yield
        return
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def _run_rounds(
    states: list[_State],
    tokenizer,
    generate_fn: Callable[[list[_State]], list[list[int]]],
    eos_ids: list[int],
    batch_size: int | None,
    stats: RolloutStats,
) -> None:
    eos_set = set(eos_ids)
    while True:
        active = [s for s in states if not s.episode.done]
        if not active:
            return
        stats.rounds += 1
        if batch_size and len(active) > batch_size:
            # similar lengths together: less left padding per chunk (order is deterministic)
            active = sorted(active, key=lambda s: len(s.prompt_ids) + len(s.completion_ids))
            chunks = [active[i : i + batch_size] for i in range(0, len(active), batch_size)]
        else:
            chunks = [active]
        for chunk in chunks:
            t0 = time.perf_counter()
            raw = generate_fn(chunk)
            stats.generation_s += time.perf_counter() - t0
            stats.generate_calls += 1
            if len(raw) != len(chunk):
                raise RuntimeError(f"generation returned {len(raw)} answers for {len(chunk)} episodes")
            for state, row in zip(chunk, raw):
                t0 = time.perf_counter()
                sampled, ended = _cut_at_eos(row, eos_set)
                answer_ids = sampled[:-1] if ended else sampled
                answer = text_tokenizer(tokenizer).decode(answer_ids, skip_special_tokens=True)
                before = list(state.episode.messages)
                state.episode.step(answer)
                t1 = time.perf_counter()
                stats.verification_s += t1 - t0
                stats.attempts += 1
                stats.generated_tokens += len(sampled)
                state.completion_ids += sampled
                state.env_mask += [1] * len(sampled)
                state.truncated += int(not ended)
                if state.episode.done:
                    state.kv = None  # free the cache of a finished episode
                else:
                    new_images = episode_images(state.episode)[len(state.images) :]
                    ctx = context_ids_after_attempt(
                        tokenizer, before, state.episode.messages, ended, sampled[-1] if ended else None, new_images
                    )
                    state.images += new_images
                    state.completion_ids += ctx
                    state.env_mask += [0] * len(ctx)
                stats.bookkeeping_s += time.perf_counter() - t1


def _start(episodes: Sequence[Episode], tokenizer, stats: RolloutStats) -> list[_State]:
    t0 = time.perf_counter()
    states = []
    for ep in episodes:
        if ep.done:
            raise ValueError("run_episodes got an episode that is already done")
        images = episode_images(ep)
        states.append(
            _State(ep, encode_prompt(tokenizer, ep.messages, images), images=images, prompt_images=len(images))
        )
    stats.bookkeeping_s += time.perf_counter() - t0
    stats.episodes += len(states)
    return states


def _traces(states: list[_State]) -> list[EpisodeTrace]:
    out = []
    for s in states:
        assert len(s.completion_ids) == len(s.env_mask), "env_mask must cover the completion exactly"
        rewards = [float(a.reward) for a in s.episode.attempts]
        out.append(
            EpisodeTrace(
                prompt_ids=s.prompt_ids,
                completion_ids=s.completion_ids,
                env_mask=s.env_mask,
                rewards=rewards,
                attempts=list(s.episode.attempts),
                episode_return=float(sum(rewards)),
                success=bool(s.episode.success),
                generated_tokens=int(sum(s.env_mask)),
                episode=s.episode,
                truncated_attempts=s.truncated,
                images=list(s.images),
                prompt_images=s.prompt_images,
            )
        )
    return out


def run_episodes(
    model,
    tokenizer,
    episodes: Sequence[Episode],
    *,
    temperature: float,
    max_new_tokens: int,
    batch_size: int | None = None,
    seed: int | None = None,
    stats: RolloutStats | None = None,
    reuse_cache: bool = True,
    generate_fn: GenerateFn | None = None,
) -> list[EpisodeTrace]:
    """Play `episodes` to the end, all at once; one trace per episode, in order.

    temperature 0: greedy; > 0: plain temperature sampling (no top-k/top-p; the model's own generation
    config shapes nothing either: `sampling_settings`). `seed` seeds the
    sampling for this call only (same episodes + seed + batch size -> same answers); None uses
    torch's current RNG. `batch_size` caps the rows of one `generate` call (None: all running
    episodes in one call). `stats` accumulates timings and token counts. `reuse_cache` keeps
    each episode's KV cache between rounds (`CachedGenerator`; False re-reads the whole
    conversation every round). `generate_fn` replaces the model's generation (a test seam:
    input id lists -> sampled id lists, padding allowed after an eos); `model` may then be None.
    """
    stats = stats if stats is not None else RolloutStats()
    if generate_fn is None:
        gen = CachedGenerator(
            model, tokenizer, temperature=temperature, max_new_tokens=max_new_tokens, reuse_cache=reuse_cache
        )
        eos = eos_token_ids(model, tokenizer)
        step = gen
    else:
        gen, eos = None, [text_tokenizer(tokenizer).eos_token_id]

        def step(chunk: list[_State]) -> list[list[int]]:
            return generate_fn([s.input_ids for s in chunk])

    states = _start(episodes, tokenizer, stats)
    try:
        with _seeded(seed), torch.no_grad():
            _run_rounds(states, tokenizer, step, eos, batch_size, stats)
    finally:
        for s in states:
            s.kv = None
    if gen is not None:
        stats.prefill_tokens += gen.prefill_tokens
    return _traces(states)


def run_episodes_sequential(
    model,
    tokenizer,
    episodes: Sequence[Episode],
    *,
    temperature: float,
    max_new_tokens: int,
    seed: int | None = None,
    stats: RolloutStats | None = None,
) -> list[EpisodeTrace]:
    """The plain reference protocol: one `generate` call per episode per attempt (batch 1),
    each reading the whole conversation so far.

    Same bookkeeping and outputs as `run_episodes`; used by benchmarks/bench_rollout.py only.
    """
    stats = stats if stats is not None else RolloutStats()
    plain = make_generate_fn(model, tokenizer, temperature=temperature, max_new_tokens=max_new_tokens)
    eos = eos_token_ids(model, tokenizer)

    def step(chunk: list[_State]) -> list[list[int]]:
        stats.prefill_tokens += sum(len(s.input_ids) for s in chunk)
        return plain([s.input_ids for s in chunk])

    states = _start(episodes, tokenizer, stats)
    with _seeded(seed), torch.no_grad():
        for state in states:
            _run_rounds([state], tokenizer, step, eos, 1, stats)
    return _traces(states)


def summarize(traces: Sequence[EpisodeTrace]) -> dict[str, float]:
    """Task-independent numbers of a set of finished episodes (RL logging, benchmarks)."""
    n = max(len(traces), 1)
    attempts = [a for t in traces for a in t.attempts]
    unparsed = [a for a in attempts if a.info.get("parsed") is False]
    return {
        "episodes": float(len(traces)),
        "success_rate": sum(t.success for t in traces) / n,
        "episode_return": sum(t.episode_return for t in traces) / n,
        "attempts_per_episode": len(attempts) / n,
        "unparseable_share": len(unparsed) / max(len(attempts), 1),
        "truncated_share": sum(t.truncated_attempts for t in traces) / max(len(attempts), 1),
        "generated_tokens": float(sum(t.generated_tokens for t in traces)),
        "completion_tokens": float(sum(len(t.completion_ids) for t in traces)),
    }


def merge_summaries(summaries: Sequence[dict[str, float]]) -> dict[str, float]:
    """One `summarize` of several sets of episodes (e.g. each rank's) from their summaries."""
    episodes = sum(x["episodes"] for x in summaries)
    attempts = [x["attempts_per_episode"] * x["episodes"] for x in summaries]

    def mean(key: str, weights: list[float]) -> float:
        return sum(x[key] * w for x, w in zip(summaries, weights)) / max(sum(weights), 1)

    counts = [x["episodes"] for x in summaries]
    return {
        "episodes": float(episodes),
        "success_rate": mean("success_rate", counts),
        "episode_return": mean("episode_return", counts),
        "attempts_per_episode": sum(attempts) / max(episodes, 1),
        "unparseable_share": mean("unparseable_share", attempts),
        "truncated_share": mean("truncated_share", attempts),
        "generated_tokens": float(sum(x["generated_tokens"] for x in summaries)),
        "completion_tokens": float(sum(x["completion_tokens"] for x in summaries)),
    }
