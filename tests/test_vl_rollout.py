"""The rollout engine with images (GP-VL): the processor's tokens, pixels in every generate call
that reads image tokens, the KV cache kept between rounds, and the same answers either way."""

from __future__ import annotations

import json

import pytest

from reference_rollout import run_scripted
from sftvsrl.rollout import RolloutStats, run_episodes
from sftvsrl.tasks import get_task
from sftvsrl.tasks.base import with_images
from sftvsrl.turns import encode_prompt
from vl_toys import GP_VL_CFG


@pytest.fixture(scope="module")
def rows():
    return get_task("gp_vl").generate_splits(GP_VL_CFG, 0)["rl"]


@pytest.fixture(scope="module")
def llava():
    from sftvsrl.tiny_model import make_tiny_vlm

    model, processor = make_tiny_vlm()
    return model.eval(), processor


def episodes(rows, viter, repeat=1):
    task = get_task("gp_vl")
    return [task.make_episode(row, viter) for row in rows for _ in range(repeat)]


def test_prompt_ids_are_the_processors_own_rendering_with_the_image_expanded(llava, rows):
    model, processor = llava
    (ep,) = episodes(rows[:1], 2)
    ids = encode_prompt(processor, ep.messages, ep.images)
    image_id = model.config.image_token_id
    expanded = processor(
        text=[processor.apply_chat_template(ep.messages, tokenize=False, add_generation_prompt=True)],
        images=[ep.images],
    )["input_ids"][0]
    assert ids == list(expanded)
    assert ids.count(image_id) > 1  # one placeholder became the vision tower's patch tokens


def test_scripted_episode_splices_to_the_full_multimodal_conversation(llava, rows):
    """Two attempts with feedback between: prompt + completion are the processor's tokens of the
    whole conversation with its image, and only the answers are in the loss mask."""
    _model, processor = llava
    tok = processor.tokenizer
    row = rows[0]
    hand = row["hand"]
    wrong = json.dumps({"cards": hand["cards"], "number": hand["values"], "formula": "1+1=24"})
    right = json.dumps({"cards": ["K", "K", "K"], "number": [10, 10, 10], "formula": "10+10+10=24"})
    answers = [wrong, right]

    def scripted(batch):
        text = answers.pop(0)
        return [tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]] * len(batch)

    (ep,) = episodes([row], 2)
    (trace,) = run_scripted(processor, [ep], scripted)
    assert len(trace.attempts) == 2 and not trace.success
    full = processor.apply_chat_template(
        with_images(ep.messages, ep.images), tokenize=True, return_dict=True, return_tensors="pt"
    )["input_ids"][0].tolist()
    seq = trace.prompt_ids + trace.completion_ids
    assert full[: len(seq)] == seq
    assert tok.decode(full[len(seq) :]) == "\n"  # the template's newline after the last turn
    answer_ids = [t for t, m in zip(trace.completion_ids, trace.env_mask) if m]
    assert tok.decode(answer_ids) == wrong + tok.eos_token + right + tok.eos_token


def test_greedy_answers_are_the_same_with_and_without_the_cache_and_one_by_one(llava, rows):
    model, processor = llava
    kw = {"temperature": 0.0, "max_new_tokens": 8}
    cached, plain = RolloutStats(), RolloutStats()
    batched = run_episodes(model, processor, episodes(rows[:3], 3, repeat=2), stats=cached, **kw)
    uncached = run_episodes(model, processor, episodes(rows[:3], 3, repeat=2), reuse_cache=False, stats=plain, **kw)
    single = [run_episodes(model, processor, episodes([row], 3), **kw)[0] for row in rows[:3]]
    assert [t.completion_ids for t in batched] == [t.completion_ids for t in uncached]
    assert [t.completion_ids for t in batched[::2]] == [t.completion_ids for t in single]
    assert all(len(t.attempts) == 3 for t in batched)  # a random model never solves a hand
    # later rounds read only the new tokens: the image is read once per episode
    assert cached.prefill_tokens < plain.prefill_tokens / 2


def test_sampled_answers_never_hold_an_image_token(llava, rows):
    model, processor = llava
    traces = run_episodes(model, processor, episodes(rows[:4], 2), temperature=1.5, max_new_tokens=12, seed=5)
    image_id = model.config.image_token_id
    for trace in traces:
        sampled = [t for t, m in zip(trace.completion_ids, trace.env_mask) if m]
        assert image_id not in sampled
        assert trace.prompt_ids.count(image_id) > 1
