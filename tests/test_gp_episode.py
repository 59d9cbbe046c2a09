"""GeneralPoints episodes: attempts, feedback turns, metrics and aggregation."""

import json
import math

import pytest

from sftvsrl.tasks import get_task
from sftvsrl.tasks.gp import build_prompt, make_hand

WRONG = json.dumps({"cards": ["A", "3", "K", "6"], "number": [1, 3, 10, 6], "formula": "(1+6)*3+10=24"})
RIGHT = json.dumps({"cards": ["A", "3", "K", "6"], "number": [1, 3, 10, 6], "formula": "10*3-6*1=24"})


def row(rule="id"):
    hand = make_hand(["A", "3", "K", "6"], ["S", "C", "S", "S"], rule)
    return {
        "id": "gp_l-rl-000000",
        "task": "gp_l",
        "split": "rl",
        "rule": rule,
        "seed": 0,
        "hand": hand,
        "target": 24,
        "prompt": build_prompt(hand, rule, 24),
    }


def test_viter_wrong_answers_make_exactly_viter_attempts():
    r = row()
    ep = get_task("gp_l").make_episode(r, viter=3)
    for _ in range(3):
        assert not ep.done and ep.messages[-1]["role"] == "user"
        a = ep.step(WRONG)
        assert a.reward == -1.0
    assert ep.done and not ep.success and len(ep.attempts) == 3
    roles = [m["role"] for m in ep.messages]
    assert roles == ["user", "assistant", "user", "assistant", "user", "assistant"]
    assert ep.messages[0] == r["prompt"][0]
    for m in ep.messages[2::2]:
        assert m["content"] == "You failed this trial because your formula evaluates to 31, not 24."
    assert [a.feedback != "" for a in ep.attempts] == [True, True, False]  # no turn after the last
    with pytest.raises(RuntimeError):
        ep.step(RIGHT)
    assert r["prompt"] == build_prompt(r["hand"], "id", 24)  # the row is not mutated


def test_success_on_second_attempt_stops():
    ep = get_task("gp_l").make_episode(row(), viter=5)
    ep.step(WRONG)
    a = ep.step(RIGHT)
    assert a.correct and ep.done and ep.success and len(ep.attempts) == 2
    assert [m["role"] for m in ep.messages] == ["user", "assistant", "user", "assistant"]
    m = ep.metrics()
    assert m["success"] == 1.0 and m["attempts"] == 2.0 and m["return"] == 4.0
    assert m["first_attempt_success"] == 0.0 and m["first_attempt_parsed"] == 1.0
    assert m["parse_rate"] == 1.0 and m["value_use_rate"] == 1.0


def test_viter_one():
    ep = get_task("gp_l").make_episode(row(), viter=1)
    ep.step("nonsense")
    assert ep.done and [m["role"] for m in ep.messages] == ["user", "assistant"]
    with pytest.raises(ValueError):
        get_task("gp_l").make_episode(row(), viter=0)


def test_metrics_on_ood_report_rule_memorisation():
    r = row("ood")  # K = 13
    ep = get_task("gp_l").make_episode(r, viter=2)
    ep.step(RIGHT)  # uses K = 10: the training rule
    ep.step("no answer")
    m = ep.metrics()
    assert m["success"] == 0.0 and m["return"] == -4.0 + -3.0  # 10 is foreign and K unused, then no formula
    assert m["rule_memorisation_rate"] == 0.5 and m["number_accuracy"] == 0.0
    assert "rule_memorisation_rate" not in get_task("gp_l").make_episode(row(), 1).metrics()


def test_aggregate():
    task = get_task("gp_l")
    eps = []
    for answers in ([RIGHT], [WRONG, RIGHT], [WRONG, "junk", WRONG], ["junk", "junk", "junk"]):
        ep = task.make_episode(row(), viter=3)
        for a in answers:
            ep.step(a)
        eps.append(ep)
    agg = task.aggregate(eps)
    assert agg["episodes"] == 4 and agg["success_rate"] == 0.5
    assert math.isclose(agg["success_se"], math.sqrt(0.25 / 4))
    assert agg["first_attempt_success_rate"] == 0.25
    assert agg["mean_attempts"] == 9 / 4
    rewards = [5, -1, 5, -1, -3, -1, -3, -3, -3]
    assert math.isclose(agg["mean_reward_per_attempt"], sum(rewards) / 9)
    assert math.isclose(agg["format_error_rate"], 4 / 9)
    assert math.isclose(agg["value_use_rate"], 5 / 9)
    assert math.isclose(agg["number_accuracy"], 5 / 9)
    assert math.isclose(agg["recognition_accuracy"], 5 / 9)
    assert "rule_memorisation_rate" not in agg
    assert task.aggregate([])["episodes"] == 0


def test_generated_rows_make_episodes():
    task = get_task("gp_l")
    cfg = {"sizes": {"rl": 3, "eval_ood_rule": 3}}
    data = task.generate_splits(cfg, 0)
    for split in ("rl", "eval_ood_rule"):
        for r in data[split]:
            ep = task.make_episode(r, viter=2)
            ep.step("x")
            ep.step("y")
            assert ep.done and len(ep.messages) == 4
    ood = task.aggregate([task.make_episode(r, 1) for r in data["eval_ood_rule"]])
    assert ood["episodes"] == 3
