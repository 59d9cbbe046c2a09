"""Run many multi-turn episodes at once: batched generation, verifier, feedback turns, VIter.

Shared by RL (`grpo.py`, inside TRL's `rollout_func`) and evaluation; the hot path. The engine
sees only the `Episode` contract of `tasks/base.py`, never a particular task.

`run_episodes` works in rounds (one round = one attempt of every episode still running): one batched,
left-padded `model.generate` call (or one per chunk of `batch_size`) for the episodes not done, then
each answer to `episode.step(answer)` (the task's verifier), until every episode is done.

Before editing: per episode, `prompt_ids`, `completion_ids` (sampled ids kept EXACTLY as sampled, with
the context ids of the feedback turns between them: `turns.py`) and `env_mask` (1 on sampled ids, 0 on
context ids) are what RL trains on, and the next round generates from `prompt_ids + completion_ids`.
`tokenizer` may be a processor (GP-VL, V-IRL-VL); the generation of a round is `generator.CachedGenerator`,
which keeps each episode's KV cache between rounds where the model allows it.

Details: docs/code-notes.md#workflowsftvsrlrolloutpy
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .generator import CachedGenerator, EpisodeState
from .tasks.base import Attempt, Episode
from .turns import context_ids_after_attempt, cut_at_eos, encode_prompt, text_tokenizer

# one attempt for each episode of a chunk: sampled id lists (raw: may hold pads after an eos)
Generate = Callable[[list[EpisodeState]], list[list[int]]]


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
    finished_at: float = 0.0  # wall-clock time (time.time) at which the episode ended

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


def episode_images(episode: Episode) -> list[Any]:
    """The images of the episode's image parts, in order (none for a text episode)."""
    return list(getattr(episode, "images", None) or [])


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
    states: list[EpisodeState],
    tokenizer,
    generate: Generate,
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
            raw = generate(chunk)
            stats.generation_s += time.perf_counter() - t0
            stats.generate_calls += 1
            if len(raw) != len(chunk):
                raise RuntimeError(f"generation returned {len(raw)} answers for {len(chunk)} episodes")
            for state, row in zip(chunk, raw):
                t0 = time.perf_counter()
                sampled, ended = cut_at_eos(row, eos_set)
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
                    state.finished_at = time.time()
                else:
                    new_images = episode_images(state.episode)[len(state.images) :]
                    ctx = context_ids_after_attempt(
                        tokenizer, before, state.episode.messages, ended, sampled[-1] if ended else None, new_images
                    )
                    state.images += new_images
                    state.completion_ids += ctx
                    state.env_mask += [0] * len(ctx)
                stats.bookkeeping_s += time.perf_counter() - t1


def _start(episodes: Sequence[Episode], tokenizer, stats: RolloutStats) -> list[EpisodeState]:
    t0 = time.perf_counter()
    states = []
    for ep in episodes:
        if ep.done:
            raise ValueError("run_episodes got an episode that is already done")
        images = episode_images(ep)
        states.append(
            EpisodeState(ep, encode_prompt(tokenizer, ep.messages, images), images=images, prompt_images=len(images))
        )
    stats.bookkeeping_s += time.perf_counter() - t0
    stats.episodes += len(states)
    return states


def _traces(states: list[EpisodeState]) -> list[EpisodeTrace]:
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
                finished_at=s.finished_at,
            )
        )
    return out


def play_episodes(
    episodes: Sequence[Episode],
    tokenizer,
    generate: Generate,
    eos_ids: list[int],
    *,
    batch_size: int | None = None,
    seed: int | None = None,
    stats: RolloutStats | None = None,
) -> list[EpisodeTrace]:
    """Play `episodes` to the end in rounds, each attempt from `generate`; one trace per episode, in order.
    `eos_ids`: the ids that end an answer. See `run_episodes` for the rest."""
    stats = stats if stats is not None else RolloutStats()
    states = _start(episodes, tokenizer, stats)
    try:
        with _seeded(seed), torch.no_grad():
            _run_rounds(states, tokenizer, generate, eos_ids, batch_size, stats)
    finally:
        for s in states:
            s.kv = None
    return _traces(states)


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
) -> list[EpisodeTrace]:
    """Play `episodes` to the end, all at once; one trace per episode, in order.

    temperature 0: greedy; > 0: plain temperature sampling (no top-k/top-p; the model's own generation
    config shapes nothing either: `sampling.sampling_settings`). `seed` seeds the
    sampling for this call only (same episodes + seed + batch size -> same answers); None uses
    torch's current RNG. `batch_size` caps the rows of one `generate` call (None: all running
    episodes in one call). `stats` accumulates timings and token counts. `reuse_cache` keeps
    each episode's KV cache between rounds (`CachedGenerator`; False re-reads the whole
    conversation every round).
    """
    stats = stats if stats is not None else RolloutStats()
    generator = CachedGenerator(
        model, tokenizer, temperature=temperature, max_new_tokens=max_new_tokens, reuse_cache=reuse_cache
    )
    traces = play_episodes(
        episodes, tokenizer, generator, generator.eos, batch_size=batch_size, seed=seed, stats=stats
    )
    stats.prefill_tokens += generator.prefill_tokens
    return traces


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
