"""GP-L's conditions from arXiv 2510.00237: the harder OOD splits and the varied-rule SFT rows."""

from __future__ import annotations

import copy
import json
from collections import Counter

import pytest
import yaml

from conftest import ROOT
from sftvsrl.config import ConfigError
from sftvsrl.study import load_config
from sftvsrl.tasks import get_task
from sftvsrl.tasks.gp import (
    FACE_RANKS,
    LARGE_RANKS,
    build_prompt,
    expert_answer,
    generate_splits,
    hand_space,
    make_hand,
    usual_values,
    verify_answer,
)
from sftvsrl.tasks.gp_harder import HELD_OUT_MAPPINGS, OOD_SPLITS
from sftvsrl.tasks.gp_solver import solvable

DEFAULT = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
ALL = list(OOD_SPLITS)


def gp_cfg(**over):
    cfg = copy.deepcopy(DEFAULT["gp"])
    cfg["sizes"] = {"sft": 64, "rl": 8, "eval_id": 40, "eval_ood_rule": 40}
    cfg.update(ood_splits=ALL, varied_rules={"rows": 64})
    cfg.update(over)
    return cfg


@pytest.fixture(scope="module")
def splits():
    return generate_splits(gp_cfg(), 0)


def test_the_extra_splits_are_made_beside_the_study_s_own_and_leave_them_unchanged(splits):
    plain = generate_splits(gp_cfg(ood_splits=[], varied_rules={"rows": 0}), 0)
    assert set(plain) == {"sft", "rl", "eval_id", "eval_ood_rule"}
    for split, rows in plain.items():
        assert splits[split] == rows  # adding splits changes no row of the others
    assert {s: len(splits[s]) for s in OOD_SPLITS.values()} == dict.fromkeys(OOD_SPLITS.values(), 40)
    assert len(splits["sft_varied"]) == 64
    assert get_task("gp_l").extra_splits(gp_cfg()) == ("sft_varied", *OOD_SPLITS.values())
    assert json.dumps(generate_splits(gp_cfg(), 0)) == json.dumps(splits)  # deterministic


def test_every_expert_answer_scores_under_its_split_s_rule_and_fails_under_the_usual_values(splits):
    """The exact solver's answer is correct under the values the row states; where those differ from the
    training rule's, the same formula fails against the usual values and the usual-value answer is flagged."""
    changed = Counter()
    for split in ["sft_varied", *OOD_SPLITS.values()]:
        for row in splits[split]:
            hand, target = row["hand"], row["target"]
            answer = row["completion"][0]["content"] if "completion" in row else expert_answer(hand, target)
            assert verify_answer(answer, hand, row["rule"], target).correct, (split, row["id"])
            usual = usual_values(hand["cards"])
            if usual != hand["values"]:
                changed[split] += 1
                as_usual = {**hand, "values": usual}
                assert not verify_answer(answer, as_usual, "id", target).correct
                if solvable(usual, target):  # a model that applies the training rule
                    memorised = verify_answer(expert_answer(as_usual, target), hand, row["rule"], target)
                    assert not memorised.correct and memorised.info["rule_memorised"], (split, row["id"])
    # the rule differs on every row of all12, fake and varied; never on cards and large
    assert changed == {"sft_varied": 64, "eval_ood_all12": 40, "eval_ood_fake": 40}


def test_each_split_shows_what_it_tests(splits):
    n = DEFAULT["gp"]["num_cards"]
    for row in splits["eval_ood_all12"]:
        assert any(c in FACE_RANKS for c in row["hand"]["cards"]) and "J, Q and K count as 12." in str(row["prompt"])
    assert all(len(r["hand"]["cards"]) == n + 1 and r["rule"] == "id" for r in splits["eval_ood_cards"])
    assert all(any(c in LARGE_RANKS for c in r["hand"]["cards"]) for r in splits["eval_ood_large"])
    for row in splits["eval_ood_fake"]:
        hand = row["hand"]
        assert all(v != u for v, u in zip(hand["values"], usual_values(hand["cards"])))  # every card differs
        stated = dict(zip(hand["cards"], hand["values"]))
        assert len(stated) == len(set(hand["cards"]))  # one value per rank
        text = row["prompt"][-1]["content"]
        assert all(f"{c} = {v}" in text for c, v in stated.items())
    for row in splits["sft_varied"]:
        faces = tuple(row["faces"])
        assert faces not in HELD_OUT_MAPPINGS and all(1 <= v <= 13 for v in faces)
        assert "J, Q and K count as" in row["prompt"][-1]["content"]
        assert json.loads(row["completion"][0]["content"])["number"] == row["hand"]["values"]
    assert len({tuple(r["faces"]) for r in splits["sft_varied"]}) > 40  # the mappings vary across rows


def test_the_study_s_rules_read_as_before():
    hand = make_hand(["A", "K", "5"], ["S"] * 3, "ood")
    assert build_prompt(hand, "ood", style="short")[1]["content"].startswith("J, Q and K count as 11, 12 and 13.\n")
    assert build_prompt(hand, "id", style="short")[1]["content"].startswith("J, Q and K count as 10.\n")
    paper = build_prompt(hand, "ood")[0]["content"]
    assert "'J', 'Q', and 'K' count as '11', '12', and '13' respectively, and each card" in paper


def test_hand_space_is_recorded_per_split():
    space = hand_space(gp_cfg(), 0)
    assert space["eval_ood_rule"] == {"rank multisets": 52}  # SPEC.md: 3 cards, target 24
    assert space["eval_ood_cards"] == {"rank multisets": 1236}  # SPEC.md: 4 cards, target 24, ID-solvable
    assert space["eval_ood_all12"]["rank multisets"] > 0 and space["eval_ood_large"]["rank multisets"] > 0
    assert 0 < space["sft_varied"]["face-card mappings"] <= 13**3 - len(HELD_OUT_MAPPINGS)


@pytest.mark.parametrize(
    "gp, key",
    [
        ({"num_cards": 5, "ood_splits": ["cards"]}, "gp.ood_splits"),
        ({"varied_rules": {"rows": 8, "face_values": [12, 12]}}, "gp.varied_rules.face_values"),  # only all-12
        ({"varied_rules": {"rows": 8, "face_values": [9, 2]}}, "gp.varied_rules.face_values"),
        ({"ood_splits": ["all13"]}, "gp.ood_splits"),
        ({"target": 175, "ood_splits": ["all12"]}, "gp.ood_splits: no solvable hand for eval_ood_all12"),
    ],
)
def test_a_split_that_cannot_be_made_stops_before_any_job_naming_its_key(gp, key):
    config = copy.deepcopy(DEFAULT)
    config["gp"].update(gp)  # target 175: 2 rule-OOD hands, none with J, Q, K = 12
    with pytest.raises(ConfigError) as err:
        load_config(config)
    assert key in str(err.value)
