"""Reader for the paper's route_infos.json (hand-written sample in tests/data)."""
import json
from pathlib import Path

import pytest

from sftvsrl.tasks.virl import NO_LANDMARKS, VirlEpisode, VirlTask, expert_answer
from sftvsrl.tasks.virl_official import (
    load_routes, parse_block, parse_heading, parse_landmarks, parse_milestones,
)

SAMPLE = Path(__file__).parent / "data" / "route_infos_sample.json"


def test_parse_heading():
    assert parse_heading("177 (south)") == (177, "south")
    assert parse_heading(" 316 (northwest) ") == (316, "northwest")
    assert parse_heading("90") == (90, "east")
    with pytest.raises(ValueError):
        parse_heading("south")


def test_parse_block_quoted_and_unquoted():
    quoted = '\n"landmarks": "Wood Tavern is on your left",\n"to_next_intersection_heading": "268 (west)",\n'
    assert parse_block(quoted) == {"landmarks": "Wood Tavern is on your left",
                                   "to_next_intersection_heading": "268 (west)"}
    bare = "landmarks: A is on your left, B is on your right, to_next_intersection_heading: '177 (south)'"
    assert parse_block(bare) == {"landmarks": "A is on your left, B is on your right",
                                 "to_next_intersection_heading": "177 (south)"}


def test_parse_milestones_text_and_list():
    text = "{landmarks: 'X is on your right', to_next_intersection_heading: '10 (north)'}\n{landmarks: 'Y'}"
    blocks = parse_milestones(text)
    assert [b["landmarks"] for b in blocks] == ["X is on your right", "Y"]
    assert parse_milestones([{"landmarks": "Z", "to_next_intersection_heading": 90}]) == [
        {"landmarks": "Z", "to_next_intersection_heading": "90"}]


def test_parse_landmarks():
    assert parse_landmarks("No landmarks nearby") == []
    assert parse_landmarks("") == []
    assert parse_landmarks("Hearth and Home is on your left and Walmart is on your right front.") == [
        {"name": "Hearth and Home", "side": "left"}, {"name": "Walmart", "side": "right front"}]
    assert parse_landmarks("A is on your left, B is on your right; C is on your back") == [
        {"name": "A", "side": "left"}, {"name": "B", "side": "right"}, {"name": "C", "side": "back"}]
    odd = parse_landmarks("Walmart across the street")
    assert odd == [{"name": "Walmart across the street", "side": "", "text": "Walmart across the street"}]


def test_load_sample_routes():
    first, second = load_routes(SAMPLE, step_m=100)
    # Route 1: JSON-style blocks, geocodes for every stop, init_heading given.
    assert first["init_heading"] == 90 and first["dest_place"] == "Little Fig Market"
    assert [leg["direction"] for leg in first["legs"]] == ["south", "west", "northwest"]
    assert [leg["heading"] for leg in first["legs"]] == [177, 268, 316]
    assert 200 < first["legs"][0]["length_m"] < 260  # haversine of the first two geocodes
    kinds = [p["kind"] for p in first["points"]]
    assert kinds == ["start", "forward", "forward", "intersection", "intersection", "destination"]
    assert first["points"][0]["observation"] == NO_LANDMARKS
    assert first["points"][4]["observation"] == (
        "Corner Bakery is on your right. Harbor Bank is on your left front. You observe an intersection.")
    assert first["instruction"][0] == "First, turn right to face south."
    assert first["instruction"][-1] == "Move forward until you reach destination where Little Fig Market is nearby."
    assert [p["actions"]["id"] for p in first["points"]] == [
        "turn_direction(south)", "forward()", "forward()", "turn_direction(west)",
        "turn_direction(northwest)", "stop()"]
    # Route 2: unquoted keys, single quotes, a destination block, distances, heading from human_heading.
    assert second["init_heading"] == 350 and second["start_place"] == "Blue Door Cafe"
    assert second["instruction"] == [
        "First, turn slightly right to face north.",  # 350 -> 10 wraps to +20
        "Move forward until you reach next intersection.",
        "Turn right to face east.",
        "Move forward until you reach destination where The Dutch is on your right.",
    ]
    assert [p["kind"] for p in second["points"]] == ["start", "forward", "intersection", "destination"]
    assert [p["actions"]["ood"] for p in second["points"]] == [
        "turn_direction(slightly right)", "forward()", "turn_direction(right)", "stop()"]


@pytest.mark.parametrize("rule", ["id", "ood"])
def test_expert_completes_official_routes(rule):
    for route in load_routes(SAMPLE):
        ep = VirlEpisode(route, rule, viter=2)
        while not ep.done:
            ep.step(expert_answer(route, ep.index, rule))
        assert ep.success and ep.metrics()["per_step_accuracy"] == 1.0


def test_generate_splits_from_official_file():
    cfg = {"routes": str(SAMPLE), "sizes": {"sft": None, "rl": None, "eval_id": None, "eval_ood_rule": None}}
    a = VirlTask().generate_splits(cfg, seed=1)
    b = VirlTask().generate_splits(cfg, seed=1)
    assert json.dumps(a) == json.dumps(b)
    train = {r["route"]["id"] for s in ("sft", "rl") for r in a[s]}
    evals = {r["route"]["id"] for s in ("eval_id", "eval_ood_rule") for r in a[s]}
    assert len(train) == 1 and len(evals) == 1 and not train & evals  # two routes: one each way
    assert len(a["rl"]) == 1 and len(a["eval_ood_rule"]) == 1
    (train_route,) = {json.dumps(r["route"]) for r in a["rl"]}
    assert len(a["sft"]) == len(json.loads(train_route)["points"])  # every step of the training route
    assert a["eval_ood_rule"][0]["rule"] == "ood"
    # Fixed sizes cycle through the pool.
    c = VirlTask().generate_splits({"routes": str(SAMPLE), "sizes": {"sft": 10, "rl": 3}}, seed=1)
    assert len(c["sft"]) == 10 and len(c["rl"]) == 3
    assert len({json.dumps(r["route"]) for r in c["rl"]}) == 1


def test_seeded_split_of_official_routes_varies_with_seed():
    cfg = {"routes": str(SAMPLE), "sizes": {"sft": 5, "rl": 1, "eval_id": 1, "eval_ood_rule": 1}}
    evals = {VirlTask().generate_splits(cfg, seed=s)["eval_id"][0]["route"]["id"] for s in range(12)}
    assert evals == {"official-0", "official-1"}
