"""GeneralPoints dataset splits: determinism, rules, solvability, train/eval disjointness."""

import json
from collections import Counter

import pytest

from sftvsrl.tasks import get_task
from sftvsrl.tasks.gp import (
    FACE_RANKS,
    GENERATOR_VERSION,
    build_prompt,
    card_value,
    expert_answer,
    make_hand,
    verify_answer,
)
from sftvsrl.tasks.gp_solver import solvable

CFG = {
    "target": 24,
    "num_cards": 4,
    "sizes": {"sft": 300, "rl": 100, "eval_id": 60, "eval_ood_rule": 60},
    "eval_overlaps_train": False,
}


@pytest.fixture(scope="module")
def data():
    return get_task("gp_l").generate_splits(CFG, 0)


def _multiset(row):
    return tuple(sorted(row["hand"]["cards"]))


def _id_values(row):
    return tuple(sorted(card_value(c, "id") for c in row["hand"]["cards"]))


def test_task_identity():
    task = get_task("gp_l")
    assert task.name == "gp_l" and task.splits == ("sft", "rl", "eval_id", "eval_ood_rule")


def test_sizes_and_row_shape(data):
    assert {k: len(v) for k, v in data.items()} == CFG["sizes"]
    for split, rows in data.items():
        for i, row in enumerate(rows):
            assert row["id"] == f"gp_l-{split}-{i:06d}"
            assert (row["task"], row["split"], row["seed"], row["target"]) == ("gp_l", split, 0, 24)
            assert row["generator_version"] == GENERATOR_VERSION
            hand = row["hand"]
            assert len(hand["cards"]) == len(hand["suits"]) == len(hand["values"]) == 4
            assert set(hand["suits"]) <= {"S", "C"}  # visual ID: black suits
            assert hand["values"] == [card_value(c, row["rule"]) for c in hand["cards"]]
            assert row["prompt"] == build_prompt(hand, row["rule"], 24)
            assert ("completion" in row) == (split == "sft")
            json.dumps(row)  # serialisable


def test_rules_and_solvability(data):
    for split, rows in data.items():
        for row in rows:
            assert row["rule"] == ("ood" if split == "eval_ood_rule" else "id")
            assert solvable(row["hand"]["values"], 24)
    for row in data["eval_ood_rule"]:
        assert any(c in FACE_RANKS for c in row["hand"]["cards"])
        assert "'11', '12', and '13'" in row["prompt"][0]["content"]


def test_expert_completions_are_correct(data):
    for row in data["sft"]:
        content = row["completion"][0]["content"]
        parsed = json.loads(content)  # valid JSON
        assert parsed["cards"] == row["hand"]["cards"] and parsed["number"] == row["hand"]["values"]
        assert parsed["formula"].endswith("=24")
        assert verify_answer(content, row["hand"], "id").correct


def test_deterministic_in_seed():
    task = get_task("gp_l")
    a, b, c = task.generate_splits(CFG, 7), task.generate_splits(CFG, 7), task.generate_splits(CFG, 8)
    assert json.dumps(a) == json.dumps(b)
    for split in a:
        assert [r["hand"] for r in a[split]] != [r["hand"] for r in c[split]]


def test_one_split_size_leaves_others_alone():
    task = get_task("gp_l")
    small = dict(CFG, sizes=dict(CFG["sizes"], sft=10))
    a, b = task.generate_splits(CFG, 3), task.generate_splits(small, 3)
    assert a["rl"] == b["rl"] and a["eval_ood_rule"] == b["eval_ood_rule"]
    assert a["sft"][:10] == b["sft"]


def test_eval_disjoint_from_train_by_default(data):
    train = {_id_values(r) for s in ("sft", "rl") for r in data[s]}
    train_ranks = {_multiset(r) for s in ("sft", "rl") for r in data[s]}
    for split in ("eval_id", "eval_ood_rule"):
        for row in data[split]:
            assert _id_values(row) not in train
            assert _multiset(row) not in train_ranks


def test_overlap_switch():
    cfg = dict(CFG, eval_overlaps_train=True, sizes={"sft": 2000, "rl": 0, "eval_id": 200, "eval_ood_rule": 0})
    data = get_task("gp_l").generate_splits(cfg, 0)
    train = {_multiset(r) for r in data["sft"]}
    shared = sum(_multiset(r) in train for r in data["eval_id"])
    assert shared > 100  # the train pool covers every solvable hand


def test_sizes_beyond_the_pool_repeat_evenly():
    cfg = dict(CFG, sizes={"eval_id": 1000})
    rows = get_task("gp_l").generate_splits(cfg, 0)["eval_id"]
    counts = Counter(_multiset(r) for r in rows)
    assert len(rows) == 1000 and max(counts.values()) - min(counts.values()) <= 1


def test_small_variant():
    cfg = {"target": 10, "num_cards": 3, "sizes": {"sft": 20, "rl": 5, "eval_id": 5, "eval_ood_rule": 5}}
    data = get_task("gp_l").generate_splits(cfg, 0)
    for rows in data.values():
        for row in rows:
            assert row["target"] == 10 and len(row["hand"]["cards"]) == 3
            assert solvable(row["hand"]["values"], 10)
            assert "10 points" in row["prompt"][0]["content"]
    for row in data["sft"]:
        assert verify_answer(row["completion"][0]["content"], row["hand"], "id", target=10).correct


def test_unknown_split_rejected():
    with pytest.raises(ValueError, match="unknown gp split"):
        get_task("gp_l").generate_splits({"sizes": {"train": 3}}, 0)


def test_prompt_text():
    hand = make_hand(["A", "3", "K", "6"], ["S", "C", "S", "S"], "id")
    chat = build_prompt(hand, "id")
    assert len(chat) == 1 and chat[0]["role"] == "user"
    text = chat[0]["content"]
    for part in (
        "expert 24 points",
        "4 cards",
        "'J', 'Q', and 'K' count as '10'",
        "each card must be used once",
        "'+', '-', '*', '/', '(', ')' and '='",
        "'A', '3', 'K', '6'",
        '"cards"',
        '"number"',
        '"formula"',
    ):
        assert part in text
    ood = build_prompt(make_hand(["A", "3", "K", "6"], ["H"] * 4, "ood"), "ood")[0]["content"]
    assert "'J', 'Q', and 'K' count as '11', '12', and '13' respectively" in ood
    image_chat = build_prompt(hand, "id", variant="image")
    parts = image_chat[0]["content"]
    assert [p["type"] for p in parts] == ["image", "text"]
    assert "Cards: shown in the image." in parts[1]["text"] and "'A', '3', 'K', '6'" not in parts[1]["text"]
    assert parts[1]["text"] == text.replace("Cards: ['A', '3', 'K', '6']", "Cards: shown in the image.")


def test_short_prompt_states_the_rule_in_force_and_shares_its_instruction():
    id_chat = build_prompt(make_hand(["A", "3", "K"], ["S"] * 3, "id"), "id", 24, style="short")
    ood_chat = build_prompt(make_hand(["A", "3", "K"], ["S"] * 3, "ood"), "ood", 24, style="short")
    assert [m["role"] for m in id_chat] == ["system", "user"]
    assert id_chat[0] == ood_chat[0]  # one instruction for every hand and both rules
    assert "Make 24" in id_chat[0]["content"] and "each card used once" in id_chat[0]["content"]
    assert '"formula": "...=24"' in id_chat[0]["content"]
    assert id_chat[1]["content"] == "J, Q and K count as 10.\nCards: ['A', '3', 'K']"
    assert ood_chat[1]["content"] == "J, Q and K count as 11, 12 and 13.\nCards: ['A', '3', 'K']"
    with pytest.raises(ValueError, match="prompt style"):
        build_prompt(make_hand(["A"], ["S"], "id"), "id", style="terse")


def test_rows_use_the_configured_prompt_style():
    cfg = {
        "num_cards": 3,
        "target": 24,
        "prompt": "short",
        "eval_overlaps_train": True,
        "sizes": {"sft": 3, "rl": 3, "eval_id": 3, "eval_ood_rule": 3},
    }
    rows = get_task("gp_l").generate_splits(cfg, 0)
    for split_rows in rows.values():
        for row in split_rows:
            assert row["prompt"] == build_prompt(row["hand"], row["rule"], 24, style="short")


def test_expert_answer_format_and_determinism():
    hand = make_hand(["A", "3", "K", "6"], ["S", "C", "S", "S"], "id")
    text = expert_answer(hand)
    assert text == expert_answer(hand)
    assert text.startswith('{"cards": ["A", "3", "K", "6"], "number": [1, 3, 10, 6], "formula": "')
    with pytest.raises(ValueError):
        expert_answer(make_hand(["A", "A", "A", "A"], ["S"] * 4, "id"))


def test_card_values():
    assert [card_value(r, "id") for r in ("A", "2", "10", "J", "Q", "K")] == [1, 2, 10, 10, 10, 10]
    assert [card_value(r, "ood") for r in ("A", "9", "J", "Q", "K")] == [1, 9, 11, 12, 13]
    with pytest.raises(ValueError):
        card_value("Z", "id")
