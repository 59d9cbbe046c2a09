"""Rollouts without the production generator, for tests and benchmarks: the plain reference protocol
(one `generate` call per episode per attempt, each reading the whole conversation so far) and episodes
played with a scripted stand-in for the model.

benchmarks/bench_rollout.py imports this module too (it puts tests/ on sys.path).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from sftvsrl.generator import left_padded
from sftvsrl.rollout import RolloutStats, _seeded, play_episodes
from sftvsrl.sampling import generation_config, only_generation_config
from sftvsrl.turns import eos_token_ids, text_tokenizer

# input id lists -> sampled id lists (raw: may hold pads after an eos)
GenerateFn = Callable[[list[list[int]]], list[list[int]]]


def make_generate_fn(model, tokenizer, *, temperature: float, max_new_tokens: int) -> GenerateFn:
    """One left-padded batched `model.generate` call over a list of input id lists."""
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        pad_id = tokenizer.eos_token_id
    config = generation_config(
        model,
        temperature,
        max_new_tokens=max_new_tokens,
        pad_token_id=pad_id,
        eos_token_id=eos_token_ids(model, tokenizer),
    )

    def generate(batch: list[list[int]]) -> list[list[int]]:
        device = next(model.parameters()).device
        input_ids, attention = left_padded(batch, pad_id)
        width = input_ids.shape[1]
        with only_generation_config(model, config):
            out = model.generate(
                input_ids=input_ids.to(device), attention_mask=attention.to(device), generation_config=config
            )
        return out[:, width:].tolist()

    return generate


def run_episodes_sequential(
    model, tokenizer, episodes: Sequence, *, temperature: float, max_new_tokens: int, seed=None, stats=None
):
    """The plain reference protocol: each episode played to its end before the next, one `generate` call
    per attempt (batch 1) reading the whole conversation so far. Same bookkeeping and outputs as
    `run_episodes`."""
    stats = stats if stats is not None else RolloutStats()
    plain = make_generate_fn(model, tokenizer, temperature=temperature, max_new_tokens=max_new_tokens)
    eos = eos_token_ids(model, tokenizer)

    def generate(chunk):
        stats.prefill_tokens += sum(len(s.input_ids) for s in chunk)
        return plain([s.input_ids for s in chunk])

    with _seeded(seed):  # one seed for the whole call, as run_episodes
        return [play_episodes([ep], tokenizer, generate, eos, batch_size=1, stats=stats)[0] for ep in episodes]


def run_scripted(tokenizer, episodes: Sequence, generate_fn: GenerateFn, *, batch_size=None, stats=None):
    """`run_episodes` with `generate_fn` in place of the model (input id lists -> sampled id lists,
    padding allowed after an eos); the tokenizer's eos ends an answer."""
    eos = [text_tokenizer(tokenizer).eos_token_id]
    return play_episodes(
        episodes,
        tokenizer,
        lambda chunk: generate_fn([s.input_ids for s in chunk]),
        eos,
        batch_size=batch_size,
        stats=stats,
    )
