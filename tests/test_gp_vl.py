"""GP-VL without a model: card images, the visual splits, the recognition check, JSON rows."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import yaml

from conftest import CONFIG_FILE
from sftvsrl.config import ConfigError, section_with_defaults
from sftvsrl.names import EVAL_OOD_VISUAL, TEXT_SPLITS
from sftvsrl.study import validate_config
from sftvsrl.tasks import get_task, task_section
from sftvsrl.tasks.base import with_images
from sftvsrl.tasks.cards_image import CARD_SIZE, RENDERER_VERSION, card_boxes, hand_size, render_card, render_hand
from sftvsrl.tasks.gp import BLACK_SUITS, FACE_RANKS, RED_SUITS, make_hand
from sftvsrl.tasks.gp_vl import prompt_images, row_image

SIZES = {"sft": 6, "rl": 6, "eval_id": 8, "eval_ood_rule": 8, "eval_ood_visual": 8}
# 3 cards, target 24: the solver's hand space is small, so generating splits takes well under a second.
CFG = {"num_cards": 3, "target": 24, "sizes": SIZES}


@pytest.fixture(scope="module")
def splits():
    return get_task("gp_vl").generate_splits(CFG, 0)


def _red_mask(pixels: np.ndarray) -> np.ndarray:
    r, g, b = (pixels[..., i].astype(int) for i in range(3))
    return (r > 150) & (g < 90) & (b < 90)


def _black_mask(pixels: np.ndarray) -> np.ndarray:
    return pixels.max(axis=-1) < 70


def _card_pixels(image, index: int, num_cards: int) -> np.ndarray:
    return np.asarray(image.crop(card_boxes(num_cards, CARD_SIZE)[index]))


def _answer(cards, numbers, formula) -> str:
    return json.dumps({"cards": cards, "number": numbers, "formula": formula})


# ---------------------------------------------------------------- rendering


def test_rendering_is_deterministic_and_differs_across_hands():
    a = render_hand(["A", "10", "Q", "7"], ["S", "C", "S", "C"], seed=3)
    again = render_hand(["A", "10", "Q", "7"], ["S", "C", "S", "C"], seed=3)
    other_rank = render_hand(["A", "10", "K", "7"], ["S", "C", "S", "C"], seed=3)
    other_suit = render_hand(["A", "10", "Q", "7"], ["S", "C", "C", "C"], seed=3)
    assert a.mode == "RGB" and a.size == hand_size(4) == (4 * 80 + 5 * 8, 112 + 16)
    assert a.tobytes() == again.tobytes()
    assert a.tobytes() != other_rank.tobytes()
    assert a.tobytes() != other_suit.tobytes()
    # only the third card changed: the other three are pixel-identical
    for i in (0, 1, 3):
        assert np.array_equal(_card_pixels(a, i, 4), _card_pixels(other_rank, i, 4))


def test_seed_only_jitters_and_every_rank_draws_differently():
    seeds = {render_hand(["5"], ["H"], seed=s).tobytes() for s in range(8)}
    assert len(seeds) > 1  # the seed moves the contents
    drawn = {
        render_card(rank, "S").tobytes() for rank in ("A", "2", "3", "4", "5", "6", "7", "8", "9", "10", "J", "Q", "K")
    }
    assert len(drawn) == 13
    assert len({render_card("7", suit).tobytes() for suit in ("S", "C", "H", "D")}) == 4


@pytest.mark.parametrize("suit", BLACK_SUITS + RED_SUITS)
def test_suit_colour_in_pixels(suit):
    pixels = np.asarray(render_card("8", suit))
    red, black = _red_mask(pixels).sum(), _black_mask(pixels).sum()
    if suit in RED_SUITS:
        assert red > 200 and black == 0
    else:
        assert black > 200 and red == 0


def test_bad_card_is_refused_with_its_name():
    with pytest.raises(ValueError, match="'X'"):
        render_hand(["A", "X"], ["S", "S"], seed=0)
    with pytest.raises(ValueError, match="'Z'"):
        render_hand(["A", "2"], ["S", "Z"], seed=0)
    with pytest.raises(ValueError, match="one suit per card"):
        render_hand(["A", "2"], ["S"], seed=0)


# ---------------------------------------------------------------- splits


def test_splits_and_section():
    task = get_task("gp_vl")
    assert task_section("gp_vl") == "gp_vl"
    assert task.splits == (*TEXT_SPLITS, EVAL_OOD_VISUAL)
    assert section_with_defaults("gp_vl", {"sizes": SIZES})["card_size"] == [80, 112]


def test_config_schema_holds_the_gp_vl_section():
    config = yaml.safe_load(CONFIG_FILE.read_text())
    config["gp_vl"] = {"sizes": SIZES, "num_cards": 3}
    assert validate_config(config)["gp_vl"]["card_size"] == [80, 112]
    config["gp_vl"] = {"sizes": {k: v for k, v in SIZES.items() if k != EVAL_OOD_VISUAL}}
    with pytest.raises(ConfigError, match="eval_ood_visual"):
        validate_config(config)


def test_suits_land_in_their_splits(splits):
    for split, rows in splits.items():
        assert len(rows) == SIZES[split]
        for row in rows:
            suits = row["hand"]["suits"]
            if split == EVAL_OOD_VISUAL:
                assert set(suits) <= set(RED_SUITS) and row["visual"] == "ood" and row["rule"] == "id"
            else:
                assert set(suits) <= set(BLACK_SUITS) and row["visual"] == "id"
    assert all(row["rule"] == "ood" for row in splits["eval_ood_rule"])
    assert all(any(c in FACE_RANKS for c in row["hand"]["cards"]) for row in splits["eval_ood_rule"])


def test_rendered_rows_show_their_colour(splits):
    for split in ("eval_id", EVAL_OOD_VISUAL):
        for row in splits[split]:
            image = row_image(row)
            n = len(row["hand"]["cards"])
            for i in range(n):
                pixels = _card_pixels(image, i, n)
                red, black = _red_mask(pixels).sum(), _black_mask(pixels).sum()
                if split == EVAL_OOD_VISUAL:
                    assert red > 100 and black == 0, (row["id"], i)
                else:
                    assert black > 100 and red == 0, (row["id"], i)


def test_visual_ood_holds_held_out_hands(splits):
    train = {tuple(sorted(r["hand"]["values"])) for s in ("sft", "rl") for r in splits[s]}
    visual = {tuple(sorted(r["hand"]["values"])) for r in splits[EVAL_OOD_VISUAL]}
    assert visual and not visual & train


def test_generation_is_deterministic_and_rows_round_trip_json(splits):
    again = get_task("gp_vl").generate_splits(CFG, 0)
    assert json.dumps(again, sort_keys=True) == json.dumps(splits, sort_keys=True)
    for rows in splits.values():
        for row in rows:
            back = json.loads(json.dumps(row))
            assert back == row
            assert row_image(back).tobytes() == row_image(row).tobytes()


def test_prompt_shows_the_image_and_names_no_card(splits):
    for row in splits["eval_id"]:
        user = row["prompt"][-1]
        assert user["role"] == "user"
        parts = user["content"]
        assert [p["type"] for p in parts] == ["image", "text"]
        assert "Cards: shown in the image." in parts[1]["text"]
        assert str(row["hand"]["cards"]).replace('"', "'") not in parts[1]["text"]
        filled = with_images(row["prompt"], prompt_images(row))
        assert filled[-1]["content"][0]["image"].size == hand_size(3)
        assert "image" not in row["prompt"][-1]["content"][0]  # the row itself stays JSON


def test_with_images_counts_parts(splits):
    row = splits["eval_id"][0]
    with pytest.raises(ValueError, match="more image parts"):
        with_images(row["prompt"], [])
    with pytest.raises(ValueError, match="left over"):
        with_images(row["prompt"], prompt_images(row) * 2)


def test_unreadable_image_spec_names_the_row(splits):
    row = json.loads(json.dumps(splits["eval_id"][0]))
    row["image"]["renderer"] = "cards-0"
    with pytest.raises(ValueError, match=row["id"]):
        row_image(row)
    row = json.loads(json.dumps(splits["eval_id"][0]))
    row["hand"]["suits"][0] = "X"
    with pytest.raises(ValueError, match=f"{row['id']}.*'X'"):
        row_image(row)
    del row["image"]
    with pytest.raises(ValueError, match=f"{row['id']}: no image spec"):
        row_image(row)


def test_expert_answers_are_correct_under_the_recognition_check(splits):
    task = get_task("gp_vl")
    for row in splits["sft"]:
        ep = task.make_episode(row, viter=1)
        assert ep.step(row["completion"][0]["content"]).correct


def test_unknown_split_and_empty_pool_rejected():
    with pytest.raises(ValueError, match="unknown gp_vl split"):
        get_task("gp_vl").generate_splits({"sizes": {**SIZES, "train": 2}}, 0)
    with pytest.raises(ValueError, match="gp_vl.num_cards=2"):
        get_task("gp_vl").check_config({"num_cards": 2, "target": 24, "sizes": SIZES}, 0)


# ---------------------------------------------------------------- recognition and reward


def _row(cards=("A", "3", "K", "6"), suits=("H", "D", "H", "D")) -> dict:
    hand = make_hand(list(cards), list(suits), "id")
    image = {"renderer": RENDERER_VERSION, "seed": 7, "card_size": list(CARD_SIZE)}
    return {"id": "t", "hand": hand, "rule": "id", "target": 24, "prompt": [], "image": image}


def test_wrong_cards_score_minus_1_5_with_the_papers_feedback():
    ep = get_task("gp_vl").make_episode(_row(), viter=2)
    attempt = ep.step(
        _answer(["A", "3", "Q", "6"], [1, 3, 10, 6], "10*3-6*1=24")
    )  # Q for K, with a formula right for the true hand
    assert (attempt.outcome, attempt.reward, attempt.correct) == ("wrong_cards", -1.5, False)
    assert attempt.feedback == "You failed this trial because the cards you listed are not the cards you were given."
    assert ep.messages[-1] == {"role": "user", "content": attempt.feedback}


def test_right_cards_go_on_to_the_formula():
    task = get_task("gp_vl")
    right = ["a", 3, "K", "6"]  # case and ints are read as the card names
    wrong_value = task.make_episode(_row(), viter=1).step(_answer(right, [1, 3, 10, 6], "1+3+10+6=24"))
    assert (wrong_value.outcome, wrong_value.reward) == ("wrong_value", -1.0)
    illegal = task.make_episode(_row(), viter=1).step(_answer(right, [1, 3, 10, 6], "1+3+10+6+=24"))
    assert (illegal.outcome, illegal.reward) == ("illegal", -3.0)
    correct = task.make_episode(_row(), viter=1).step(_answer(right, [1, 3, 10, 6], "10*3-6*1=24"))
    assert (correct.outcome, correct.reward, correct.correct) == ("correct", 5.0, True)


def test_cards_listed_in_another_order_are_recognised():
    """The reference compares the recognised cards with the true ones as sorted lists: a multiset."""
    task = get_task("gp_vl")
    shuffled = task.make_episode(_row(), viter=1).step(_answer(["6", "K", "a", 3], [6, 10, 1, 3], "10*3-6*1=24"))
    assert (shuffled.outcome, shuffled.reward, shuffled.info["cards_correct"]) == ("correct", 5.0, True)
    twice = task.make_episode(_row(), viter=1).step(_answer(["6", "K", "A", "A"], [6, 10, 1, 1], "10*3-6*1=24"))
    assert (twice.outcome, twice.reward) == ("wrong_cards", -1.5)  # the same set, another multiset


@pytest.mark.parametrize("text", ["", "I cannot see the cards", "{", '{"formula": "10*3-6*1=24"}', "[1, 2]", "null"])
def test_malformed_answer_gets_the_recognition_penalty(text):
    ep = get_task("gp_vl").make_episode(_row(), viter=1)
    attempt = ep.step(text)
    # the recognition check comes first (SPEC): no cards field is a mismatch
    assert (attempt.outcome, attempt.reward, attempt.correct) == ("wrong_cards", -1.5, False)
    assert ep.done and ep.metrics()["recognition_accuracy"] == 0.0


def test_recognition_accuracy_per_episode_and_aggregate():
    task = get_task("gp_vl")
    row = _row()
    right, wrong = ["A", "3", "K", "6"], ["A", "3", "J", "6"]
    first = task.make_episode(row, viter=3)  # wrong cards, right cards but wrong value, then correct
    first.step(_answer(wrong, [1, 3, 10, 6], "10*3-6*1=24"))
    first.step(_answer(right, [1, 3, 10, 6], "1+3+10+6=24"))
    first.step(_answer(right, [1, 3, 10, 6], "10*3-6*1=24"))
    second = task.make_episode(row, viter=2)  # never reads the cards
    second.step(_answer(wrong, [1, 3, 10, 6], "10*3-6*1=24"))
    second.step("no idea")
    m1, m2 = first.metrics(), second.metrics()
    assert (m1["success"], m2["success"]) == (1.0, 0.0)
    assert math.isclose(m1["recognition_accuracy"], 2 / 3) and m2["recognition_accuracy"] == 0.0
    assert m1["return"] == -1.5 - 1.0 + 5.0 and m2["return"] == -3.0
    agg = task.aggregate([first, second])
    assert agg["success_rate"] == 0.5
    assert math.isclose(agg["recognition_accuracy"], 2 / 5)  # pooled over the 5 attempts


@pytest.mark.parametrize("card_size", [CARD_SIZE, (40, 56)])  # the default and the tiny test study's
def test_every_card_is_legible_at_the_configured_size(card_size):
    """Cut each card out of a drawn hand and read it back by template matching against every
    rank and suit drawn alone (at every jitter the renderer may apply): the nearest template is
    the true card, with a clear margin to the next one."""
    from sftvsrl.tasks.cards_image import MAX_JITTER
    from sftvsrl.tasks.gp import RANKS

    shifts = [(dx, dy) for dx in range(-MAX_JITTER, MAX_JITTER + 1) for dy in range(-MAX_JITTER, MAX_JITTER + 1)]
    templates = {
        (rank, suit): [np.asarray(render_card(rank, suit, card_size, shift), dtype=float) for shift in shifts]
        for rank in RANKS
        for suit in BLACK_SUITS + RED_SUITS
    }
    ranks = list(RANKS)
    for start in range(0, len(ranks), 4):
        cards = (ranks[start:] + ranks)[:4]
        suits = [(BLACK_SUITS + RED_SUITS)[(start + i) % 4] for i in range(4)]
        image = np.asarray(render_hand(cards, suits, seed=start, card_size=card_size), dtype=float)
        for (left, top, right, bottom), rank, suit in zip(card_boxes(4, card_size), cards, suits):
            crop = image[top:bottom, left:right]
            distance = {key: min(np.abs(crop - t).mean() for t in shifted) for key, shifted in templates.items()}
            best, second = sorted(distance, key=distance.get)[:2]
            assert best == (rank, suit) and distance[best] == 0
            # the nearest other card differs in at least 10 pixels by more than a quarter of the range
            differing = min(int((np.abs(crop - t).max(axis=-1) > 64).sum()) for t in templates[second])
            assert differing >= 10, (rank, suit, second, differing)
