"""How rollouts and evaluation sample: exactly softmax(logits / T), the distribution the GRPO loss scores,
whatever the model's own generation config says (`generation_config`, `only_generation_config`), and
`sampling_settings`, what was used and what of the model's was ignored.

Details: docs/code-notes.md#workflowsftvsrlsamplingpy
"""

from __future__ import annotations

import contextlib
from typing import Any

# What `generate` may keep of the model's own generation config: the special token ids (they decide
# nothing about the distribution). Everything else is set by `generation_config` below or left at
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


def generation_config(model, temperature: float, **fields: Any):
    """The only generation config our `generate` calls see (`fields`: their other settings: max_new_tokens,
    eos_token_id, suppress_tokens, ...).

    temperature > 0: sampling from exactly softmax(logits / T), the distribution the GRPO loss re-scores
    (no top-k, top-p, min-p, repetition penalty, ...); 0: greedy, argmax of the raw logits. Of the model's
    own `generation_config` only the special token ids are kept: an instruct model's hub file
    (Qwen2.5-Instruct: repetition_penalty 1.05, top_k 20, top_p 0.8, temperature 0.7) changes nothing.
    Use it with `only_generation_config` around the call: `generate` fills every field the config
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
def only_generation_config(model, config):
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
    used = generation_config(model, temperature)
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
