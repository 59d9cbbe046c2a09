"""The rollout engine: token bookkeeping (what RL trains on), VIter, batching, the real model path."""

from __future__ import annotations

import json

import pytest

from reference_rollout import run_episodes_sequential, run_scripted
from sftvsrl.rollout import run_episodes, summarize
from sftvsrl.turns import context_ids_after_attempt

GP_CFG = {"target": 24, "num_cards": 4, "sizes": {"sft": 2, "rl": 12, "eval_id": 2, "eval_ood_rule": 2}}


@pytest.fixture(scope="module")
def gp_rows():
    from sftvsrl.tasks import get_task

    return get_task("gp_l").generate_splits(GP_CFG, 0)["rl"]


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from sftvsrl.models import load_tokenizer

    return load_tokenizer(tiny_model_dir)


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    from sftvsrl.models import load_model_and_tokenizer

    m, _ = load_model_and_tokenizer(tiny_model_dir, dtype="float32")
    return m


def episode(row, viter):
    from sftvsrl.tasks import get_task

    return get_task("gp_l").make_episode(row, viter)


def wrong_sum(row) -> tuple[str, int]:
    """A legal formula over all card values that misses 24: (formula, its value)."""
    vals = row["hand"]["values"]
    for op in "+*-":
        value = {
            "+": sum(vals),
            "*": vals[0] * vals[1] * vals[2] * vals[3],
            "-": vals[0] - vals[1] - vals[2] - vals[3],
        }[op]
        if value != 24:
            return op.join(str(v) for v in vals), value
    raise AssertionError("no wrong formula")


def wrong_answer(row, formula=None):
    hand = row["hand"]
    formula = formula or wrong_sum(row)[0] + "=24"
    return json.dumps({"cards": hand["cards"], "number": hand["values"], "formula": formula})


def right_answer(row):
    from sftvsrl.tasks.gp import expert_answer

    return expert_answer(row["hand"], row["target"])


class Scripted:
    """A stand-in for model.generate: per episode (found by its prompt ids) a list of answer texts.

    Returns each answer's canonical token ids + eos (or, with `truncate`, only the first
    `truncate` ids and no eos), padded after the eos like a real batched generate.
    """

    def __init__(self, tokenizer, scripts: dict[tuple, list[str]], truncate: int | None = None):
        self.tok = tokenizer
        self.scripts = {k: list(v) for k, v in scripts.items()}
        self.truncate = truncate
        self.batch_sizes: list[int] = []

    def __call__(self, batch: list[list[int]]) -> list[list[int]]:
        self.batch_sizes.append(len(batch))
        out = []
        for ids in batch:
            key = next(k for k in self.scripts if tuple(ids[: len(k)]) == k)
            text = self.scripts[key].pop(0)
            sampled = self.tok(text, add_special_tokens=False)["input_ids"]
            sampled = sampled[: self.truncate] if self.truncate else sampled + [self.tok.eos_token_id]
            out.append(sampled)
        # like model.generate: rows that ended early are padded after their eos
        width = max(len(s) for s in out) + (0 if self.truncate else 3)
        return [s + [self.tok.pad_token_id] * (width - len(s)) for s in out]


def prompt_ids(tokenizer, row):
    text = tokenizer.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)
    return tuple(tokenizer(text, add_special_tokens=False)["input_ids"])


def spans(ids, mask):
    """Contiguous runs of (mask value, ids)."""
    out = []
    for t, m in zip(ids, mask):
        if out and out[-1][0] == m:
            out[-1][1].append(t)
        else:
            out.append((m, [t]))
    return out


def markup(feedback: str) -> str:
    return f"\n<|im_start|>user\n{feedback}<|im_end|>\n<|im_start|>assistant\n"


# --------------------------------------------------------------------------- bookkeeping
def test_two_attempt_episode_mask_covers_exactly_the_answers(tokenizer, gp_rows):
    row = gp_rows[0]
    answers = [wrong_answer(row), right_answer(row)]
    gen = Scripted(tokenizer, {prompt_ids(tokenizer, row): answers})
    ep = episode(row, viter=5)
    (trace,) = run_scripted(tokenizer, [ep], gen)

    assert [a.correct for a in trace.attempts] == [False, True] and trace.success
    assert trace.rewards == [-1.0, 5.0] and trace.episode_return == 4.0
    assert len(trace.env_mask) == len(trace.completion_ids)
    runs = spans(trace.completion_ids, trace.env_mask)
    assert [m for m, _ in runs] == [1, 0, 1]
    eos = "<|im_end|>"
    assert tokenizer.decode(runs[0][1]) == answers[0] + eos
    assert tokenizer.decode(runs[2][1]) == answers[1] + eos
    feedback = f"You failed this trial because your formula evaluates to {wrong_sum(row)[1]}, not 24."
    assert trace.attempts[0].feedback == feedback
    assert tokenizer.decode(runs[1][1]) == markup(feedback)
    assert trace.generated_tokens == len(runs[0][1]) + len(runs[2][1])
    assert [a.answer for a in trace.attempts] == answers  # the verifier saw the text without eos

    # prompt + completion is exactly the tokenization of the whole rendered conversation
    # (up to the template's newline after the final <|im_end|>, which nobody generates)
    full_text = tokenizer.apply_chat_template(ep.messages, tokenize=False)
    full = tokenizer(full_text, add_special_tokens=False)["input_ids"]
    seq = list(trace.prompt_ids) + trace.completion_ids
    assert full[: len(seq)] == seq
    assert tokenizer.decode(full[len(seq) :]) == "\n"


def test_truncated_attempt_is_closed_by_context_tokens(tokenizer, gp_rows):
    row = gp_rows[1]
    gen = Scripted(tokenizer, {prompt_ids(tokenizer, row): [wrong_answer(row)] * 2}, truncate=5)
    (trace,) = run_scripted(tokenizer, [episode(row, 2)], gen)
    runs = spans(trace.completion_ids, trace.env_mask)
    assert [m for m, _ in runs] == [1, 0, 1]
    assert len(runs[0][1]) == 5 and len(runs[2][1]) == 5
    assert tokenizer.eos_token_id not in runs[0][1]
    # the template's end of the assistant turn is context when the model did not sample it
    assert tokenizer.decode(runs[1][1]).startswith("<|im_end|>\n<|im_start|>user\nYou failed this trial because")
    assert trace.truncated_attempts == 2
    assert trace.attempts[0].outcome == "illegal"


def test_viter3_always_wrong_has_three_attempts_and_exact_feedback(tokenizer, gp_rows):
    row = gp_rows[2]
    formulas = ["1+1=24", "2*2=24", "(1+1)*1=24"]
    gen = Scripted(tokenizer, {prompt_ids(tokenizer, row): [wrong_answer(row, f) for f in formulas] + ["unused"]})
    ep = episode(row, viter=3)
    (trace,) = run_scripted(tokenizer, [ep], gen)

    assert len(trace.attempts) == 3 and not trace.success
    assert gen.batch_sizes == [1, 1, 1]  # no unscored fourth generation
    assert gen.scripts[prompt_ids(tokenizer, row)] == ["unused"]
    # every attempt is scored; feedback only between attempts (the last one has none)
    assert all(not a.correct and a.reward < 0 for a in trace.attempts)
    assert trace.attempts[-1].feedback == ""
    user_turns = [m["content"] for m in ep.messages if m["role"] == "user"][1:]
    assert len(user_turns) == 2
    assert user_turns == [trace.attempts[0].feedback, trace.attempts[1].feedback]
    assert all(f.startswith("You failed this trial because ") and f.endswith(".") for f in user_turns)
    runs = spans(trace.completion_ids, trace.env_mask)
    assert [m for m, _ in runs] == [1, 0, 1, 0, 1]
    assert tokenizer.decode(runs[1][1]) == markup(user_turns[0])
    assert tokenizer.decode(runs[3][1]) == markup(user_turns[1])
    assert trace.completion_ids[-1] == tokenizer.eos_token_id


def test_success_at_attempt_2_stops_and_finished_episodes_leave_the_batch(tokenizer, gp_rows):
    a, b, c = gp_rows[3], gp_rows[4], gp_rows[5]
    scripts = {
        prompt_ids(tokenizer, a): [right_answer(a)],
        prompt_ids(tokenizer, b): [wrong_answer(b), right_answer(b), "never used"],
        prompt_ids(tokenizer, c): [wrong_answer(c)] * 3 + ["never used"],
    }
    gen = Scripted(tokenizer, scripts)
    traces = run_scripted(tokenizer, [episode(r, 3) for r in (a, b, c)], gen)
    assert [len(t.attempts) for t in traces] == [1, 2, 3]
    assert [t.success for t in traces] == [True, True, False]
    assert gen.batch_sizes == [3, 2, 1]  # one generate call per round, done episodes drop out
    assert traces[1].rewards == [-1.0, 5.0]
    assert sum(traces[0].env_mask) == len(traces[0].completion_ids)  # one attempt: no context at all
    s = summarize(traces)
    assert s["success_rate"] == pytest.approx(2 / 3) and s["attempts_per_episode"] == 2.0


def test_batch_size_chunks_one_round(tokenizer, gp_rows):
    rows = gp_rows[:5]
    gen = Scripted(tokenizer, {prompt_ids(tokenizer, r): [wrong_answer(r)] * 2 for r in rows})
    traces = run_scripted(tokenizer, [episode(r, 2) for r in rows], gen, batch_size=2)
    assert gen.batch_sizes == [2, 2, 1, 2, 2, 1]
    assert all(len(t.attempts) == 2 for t in traces)


@pytest.mark.parametrize("answer", ["", "\n", "m", "  spaced answer  "])
@pytest.mark.parametrize("trim", [False, True])
def test_splice_of_short_empty_and_trimmed_answers(tokenizer, answer, trim):
    import copy

    tok = copy.deepcopy(tokenizer)
    if trim:  # a template that rewrites the content (Llama-3 style `| trim`)
        tok.chat_template = tok.chat_template.replace("message['content']", "(message['content'] | trim)")
    before = [{"role": "user", "content": "q"}]
    after = before + [{"role": "assistant", "content": answer}, {"role": "user", "content": "fb"}]
    ids = context_ids_after_attempt(tok, before, after, True, tok.eos_token_id)
    assert tok.decode(ids) == markup("fb")
    ids = context_ids_after_attempt(tok, before, after, False, None)
    assert tok.decode(ids) == "<|im_end|>" + markup("fb")


def test_splice_rejects_a_rewritten_history(tokenizer):
    before = [{"role": "user", "content": "q"}]
    after = [
        {"role": "user", "content": "q (edited)"},
        {"role": "assistant", "content": "a"},
        {"role": "user", "content": "fb"},
    ]
    with pytest.raises(ValueError, match="unchanged"):
        context_ids_after_attempt(tokenizer, before, after, True, tokenizer.eos_token_id)


# --------------------------------------------------------------------------- the real model
def check_trace(tokenizer, trace, max_new_tokens):
    assert len(trace.env_mask) == len(trace.completion_ids)
    runs = spans(trace.completion_ids, trace.env_mask)
    sampled = [ids for m, ids in runs if m == 1]
    context = [ids for m, ids in runs if m == 0]
    assert len(sampled) == len(trace.attempts)
    assert len(context) == len(trace.attempts) - 1
    eos = tokenizer.eos_token_id
    for ids, attempt in zip(sampled, trace.attempts):
        assert len(ids) <= max_new_tokens
        assert ids[-1] == eos or len(ids) == max_new_tokens
        assert eos not in ids[:-1]
        assert tokenizer.pad_token_id not in ids
        body = ids[:-1] if ids[-1] == eos else ids
        assert attempt.answer == tokenizer.decode(body, skip_special_tokens=True)
    for ids, before, attempt in zip(context, sampled, trace.attempts):
        # after a sampled eos only the template's newline is missing; a truncated answer gets its <|im_end|>
        closed = "" if before[-1] == eos else "<|im_end|>"
        assert tokenizer.decode(ids) == closed + markup(attempt.feedback)
    assert trace.generated_tokens == sum(len(s) for s in sampled)


def test_real_model_sampling_bookkeeping_and_seed(model, tokenizer, gp_rows):
    rows = gp_rows[:6]
    kw = {"temperature": 1.0, "max_new_tokens": 12}
    t1 = run_episodes(model, tokenizer, [episode(r, 3) for r in rows], seed=7, **kw)
    for t in t1:
        check_trace(tokenizer, t, 12)
        assert len(t.attempts) == 3  # a random model never solves a hand
    t2 = run_episodes(model, tokenizer, [episode(r, 3) for r in rows], seed=7, **kw)
    assert [t.completion_ids for t in t1] == [t.completion_ids for t in t2]
    t3 = run_episodes(model, tokenizer, [episode(r, 3) for r in rows], seed=8, **kw)
    assert [t.completion_ids for t in t1] != [t.completion_ids for t in t3]
    t4 = run_episodes(model, tokenizer, [episode(r, 3) for r in rows], seed=7, batch_size=4, **kw)
    for t in t4:
        check_trace(tokenizer, t, 12)


def test_real_model_greedy_batched_equals_one_by_one(model, tokenizer, gp_rows):
    """Left padding, attention mask and the KV cache kept between rounds (incl. one shared
    prefill per GRPO group): a batched greedy rollout equals the plain batch-1 protocol."""
    from sftvsrl.rollout import RolloutStats

    rows = [r for r in gp_rows[:3] for _ in range(2)]  # groups of 2 episodes of one hand
    kw = {"temperature": 0.0, "max_new_tokens": 10}
    cached, plain = RolloutStats(), RolloutStats()
    batched = run_episodes(model, tokenizer, [episode(r, 3) for r in rows], stats=cached, **kw)
    uncached = run_episodes(model, tokenizer, [episode(r, 3) for r in rows], reuse_cache=False, stats=plain, **kw)
    single = run_episodes_sequential(model, tokenizer, [episode(r, 3) for r in rows], **kw)
    assert [t.completion_ids for t in batched] == [t.completion_ids for t in single]
    assert [t.completion_ids for t in uncached] == [t.completion_ids for t in single]
    assert [t.prompt_ids for t in batched] == [t.prompt_ids for t in single]
    # the cache saves re-reading: round 1 once per hand, later rounds only the new tokens
    assert cached.prefill_tokens < plain.prefill_tokens / 2
    assert all(len(t.attempts) == 3 for t in batched)


def test_real_model_sampling_with_and_without_cache_agree(model, tokenizer, gp_rows):
    rows = gp_rows[:4]
    kw = {"temperature": 1.0, "max_new_tokens": 10, "seed": 3}
    a = run_episodes(model, tokenizer, [episode(r, 2) for r in rows], **kw)
    b = run_episodes(model, tokenizer, [episode(r, 2) for r in rows], reuse_cache=False, **kw)
    assert [t.completion_ids for t in a] == [t.completion_ids for t in b]


def test_common_prompt_prefix_is_read_once_and_changes_no_answer(model, tokenizer, monkeypatch):
    """Different hands share the instruction at the start of their prompts: the engine reads it
    once for all of them, and greedy answers stay those of the plain batch-1 protocol."""
    from sftvsrl import generator
    from sftvsrl.rollout import RolloutStats
    from sftvsrl.tasks import get_task

    cfg = dict(GP_CFG, prompt="short")
    rows = get_task("gp_l").generate_splits(cfg, 0)["rl"][:5]
    assert len({json.dumps(r["prompt"]) for r in rows}) == 5  # no two prompts alike: no group prefill
    kw = {"temperature": 0.0, "max_new_tokens": 10}
    shared, unshared = RolloutStats(), RolloutStats()
    batched = run_episodes(model, tokenizer, [episode(r, 2) for r in rows], stats=shared, **kw)
    min_prefix = generator.MIN_SHARED_PREFIX
    monkeypatch.setattr(generator, "MIN_SHARED_PREFIX", 10**9)
    plain = run_episodes(model, tokenizer, [episode(r, 2) for r in rows], stats=unshared, **kw)
    single = run_episodes_sequential(model, tokenizer, [episode(r, 2) for r in rows], **kw)
    assert [t.completion_ids for t in batched] == [t.completion_ids for t in single]
    assert [t.completion_ids for t in plain] == [t.completion_ids for t in single]
    prefix = len(generator._common_prefix([t.prompt_ids for t in batched]))
    assert prefix >= min_prefix
    assert unshared.prefill_tokens - shared.prefill_tokens == (len(rows) - 1) * prefix


def test_common_prefix():
    from sftvsrl.generator import _common_prefix

    assert _common_prefix([[1, 2, 3], [1, 2, 4], [1, 2]]) == (1, 2)
    assert _common_prefix([[5, 1], [1, 5]]) == ()
    assert _common_prefix([[7, 8, 9], [7, 8, 9]]) == (7, 8, 9)


def test_merged_summaries_are_the_summary_of_all_episodes(tokenizer, gp_rows):
    """Each rank summarises its own episodes; merging the summaries gives the summary of them all."""
    from sftvsrl.rollout import merge_summaries

    scripts = {prompt_ids(tokenizer, row): [wrong_answer(row), "not json", right_answer(row)] for row in gp_rows[:4]}
    traces = run_scripted(tokenizer, [episode(r, 3) for r in gp_rows[:4]], Scripted(tokenizer, scripts))
    parts = [summarize(traces[:1]), summarize(traces[1:])]
    merged, whole = merge_summaries(parts), summarize(traces)
    assert merged == pytest.approx(whole)
    assert whole["unparseable_share"] == pytest.approx(1 / 3) and whole["episodes"] == 4.0
