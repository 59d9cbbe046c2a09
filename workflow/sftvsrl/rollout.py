"""Run many multi-turn episodes at once: batched generation, verifier, feedback turns, VIter.

Shared by RL (`rl.py`, inside TRL's `rollout_func`) and evaluation; the hot path. The engine
sees only the `Episode` contract of `tasks/base.py`, never a particular task.

Protocol of `run_episodes` (one *round* = one attempt of every episode still running):
1. take every episode that is not done;
2. generate one answer for each of them with ONE batched, left-padded `model.generate` call
   (or one call per chunk of `batch_size`); finished episodes are no longer in the batch;
3. decode each answer and hand it to `episode.step(answer)` (the task's verifier);
4. repeat until every episode is done. No generation happens after an episode's last scored
   attempt (the reference code spends an extra, unscored one; we do not).

Token bookkeeping (what RL trains on). Per episode:
- `prompt_ids`: the chat template of the initial messages with `add_generation_prompt=True`;
- `completion_ids`: attempt 1's sampled ids + context 1 + attempt 2's sampled ids + ... + the
  last attempt's sampled ids. Sampled ids are kept EXACTLY as sampled (padding stripped,
  truncated after the first end-of-sequence token, which is kept when sampled), because the
  loss re-scores these very tokens. The next round generates from `prompt_ids + completion_ids`,
  so the model conditions on exactly the tokens it will be trained on.
- `env_mask`: 1 on sampled ids, 0 on context ids; same length as `completion_ids`.

How the context after an attempt is computed. The template renders an assistant turn as
`<header>{content}{END}` (ChatML: `END` = `"<|im_end|>\\n"`) and the next user turn plus the
next assistant header after it. The model's own tokens cover `{content}` and, when it stopped
by itself, the end-of-sequence token, which is where `END` begins (`<|im_end|>`). So:
- `END` comes from rendering the conversation through the new assistant turn and cutting
  after its content; `turn` = (conversation with the new user turn and the generation prompt)
  minus (conversation through the assistant turn), both as text;
- context text = `END` without the leading eos text when the eos was sampled (ChatML: `"\\n"`),
  else the whole `END` (a truncated answer is closed by context tokens) + `turn`;
- context ids = that text tokenized right after an eos token (so a tokenizer sees the same
  left context as in a full rendering), the eos itself removed.
When the sampled answer is the canonical tokenization of its text, prompt + completion equal
the tokenization of the full rendered conversation (tests/test_rollout.py checks this).
The conversation must only grow (each render is a prefix of the next); a task that rewrites
earlier turns fails here with an error that says so.
"""
from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from .tasks.base import Attempt, Episode

log = logging.getLogger(__name__)

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

    @property
    def input_ids(self) -> list[int]:
        return self.prompt_ids + self.completion_ids


def _render(tokenizer, messages: Sequence[dict[str, Any]], add_generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=add_generation_prompt)


def _encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def eos_token_ids(model, tokenizer) -> list[int]:
    """Every id that ends an answer: the tokenizer's eos and the model's generation-config eos."""
    ids: list[int] = []
    candidates: list[Any] = [tokenizer.eos_token_id]
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


def context_ids_after_attempt(
    tokenizer,
    before: Sequence[dict[str, Any]],
    after: Sequence[dict[str, Any]],
    ended_with_eos: bool,
    eos_id: int | None,
) -> list[int]:
    """Token ids the chat template adds after the model's sampled answer (see the module doc).

    `before`: the conversation the answer was generated for (ends with a user turn);
    `after`: it plus the assistant turn and the new user turn(s) appended by `episode.step`.
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
            f"feedback turns at the token level (prefix of {prev[-80:]!r} vs {closed[len(prev) - 80:len(prev) + 80]!r})"
        )
    body = closed[len(prev):]  # "{content}{END}" (ChatML: "answer<|im_end|>\n")
    content = after[n].get("content") or ""
    if isinstance(content, list):  # typed content blocks: join the text parts
        content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
    pos = body.rfind(content) if content else 0
    if content and pos < 0:  # the template rewrote the content (e.g. trim): cut after the stripped text
        stripped = content.strip()
        pos = body.rfind(stripped) if stripped else 0
        content = stripped if pos >= 0 else ""
        pos = max(pos, 0)
    end = body[pos + len(content):]
    turn = full[len(closed):]
    eos_text = tokenizer.decode([eos_id]) if eos_id is not None else None
    if ended_with_eos and eos_text and end.startswith(eos_text):
        end = end[len(eos_text):]
    text = end + turn
    if not text:
        return []
    anchor_id = eos_id if eos_id is not None else tokenizer.eos_token_id
    anchor = tokenizer.decode([anchor_id])
    ids = _encode(tokenizer, anchor + text)
    if ids and ids[0] == anchor_id:
        return ids[1:]
    return _encode(tokenizer, text)  # the anchor did not tokenize to itself: plain encoding


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
    eos = eos_token_ids(model, tokenizer)
    sampling: dict[str, Any]
    if temperature and temperature > 0:
        # plain temperature sampling: the distribution the GRPO loss re-scores (logits / T)
        sampling = {"do_sample": True, "temperature": float(temperature), "top_p": 1.0, "top_k": 0}
    else:
        sampling = {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}

    def generate(batch: list[list[int]]) -> list[list[int]]:
        device = next(model.parameters()).device
        width = max(len(ids) for ids in batch)
        input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        for i, ids in enumerate(batch):
            input_ids[i, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
            attention[i, width - len(ids):] = 1
        out = model.generate(
            input_ids=input_ids.to(device),
            attention_mask=attention.to(device),
            max_new_tokens=max_new_tokens,
            pad_token_id=pad_id,
            eos_token_id=eos,
            **sampling,
        )
        return out[:, width:].tolist()

    return generate


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
    generate_fn: GenerateFn,
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
            chunks = [active[i:i + batch_size] for i in range(0, len(active), batch_size)]
        else:
            chunks = [active]
        for chunk in chunks:
            t0 = time.perf_counter()
            raw = generate_fn([s.input_ids for s in chunk])
            stats.generation_s += time.perf_counter() - t0
            stats.generate_calls += 1
            if len(raw) != len(chunk):
                raise RuntimeError(f"generation returned {len(raw)} answers for {len(chunk)} episodes")
            for state, row in zip(chunk, raw):
                t0 = time.perf_counter()
                sampled, ended = _cut_at_eos(row, eos_set)
                answer_ids = sampled[:-1] if ended else sampled
                answer = tokenizer.decode(answer_ids, skip_special_tokens=True)
                before = list(state.episode.messages)
                state.episode.step(answer)
                t1 = time.perf_counter()
                stats.verification_s += t1 - t0
                stats.attempts += 1
                stats.generated_tokens += len(sampled)
                state.completion_ids += sampled
                state.env_mask += [1] * len(sampled)
                state.truncated += int(not ended)
                if not state.episode.done:
                    ctx = context_ids_after_attempt(
                        tokenizer, before, state.episode.messages, ended, sampled[-1] if ended else None
                    )
                    state.completion_ids += ctx
                    state.env_mask += [0] * len(ctx)
                stats.bookkeeping_s += time.perf_counter() - t1


def _start(episodes: Sequence[Episode], tokenizer, stats: RolloutStats) -> list[_State]:
    t0 = time.perf_counter()
    states = []
    for ep in episodes:
        if ep.done:
            raise ValueError("run_episodes got an episode that is already done")
        states.append(_State(ep, _encode(tokenizer, _render(tokenizer, ep.messages, add_generation_prompt=True))))
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
    generate_fn: GenerateFn | None = None,
) -> list[EpisodeTrace]:
    """Play `episodes` to the end, all at once; one trace per episode, in order.

    temperature 0: greedy; > 0: plain temperature sampling (no top-k/top-p). `seed` seeds the
    sampling for this call only (same episodes + seed + batch size -> same answers); None uses
    torch's current RNG. `batch_size` caps the rows of one `generate` call (None: all running
    episodes in one call). `stats` accumulates timings. `generate_fn` replaces the model's
    generation (a test seam: input id lists -> sampled id lists); `model` may then be None.
    """
    stats = stats if stats is not None else RolloutStats()
    if generate_fn is None:
        generate_fn = make_generate_fn(model, tokenizer, temperature=temperature, max_new_tokens=max_new_tokens)
        eos = eos_token_ids(model, tokenizer)
    else:
        eos = [tokenizer.eos_token_id]
    states = _start(episodes, tokenizer, stats)
    with _seeded(seed), torch.no_grad():
        _run_rounds(states, tokenizer, generate_fn, eos, batch_size, stats)
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
    """The plain reference protocol: one `generate` call per episode per attempt (batch 1).

    Same bookkeeping and outputs as `run_episodes`; used by benchmarks/bench_rollout.py only.
    """
    stats = stats if stats is not None else RolloutStats()
    generate_fn = make_generate_fn(model, tokenizer, temperature=temperature, max_new_tokens=max_new_tokens)
    eos = eos_token_ids(model, tokenizer)
    states = _start(episodes, tokenizer, stats)
    with _seeded(seed), torch.no_grad():
        for state in states:
            _run_rounds([state], tokenizer, generate_fn, eos, 1, stats)
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
