"""The paper's route_infos.json, read as the reference environment reads it (hand-written sample in tests/data).

The sample is in the reference layout `[routes, count]`. Route 0 is written by V-IRL's block
template with geocodes for every stop; route 1 has one-line, single-quoted blocks, a bare start
name, no geocodes (leg lengths from `distance`) and a turn across north (350 -> 10); route 2 has
one leg and no `init_heading`.
"""

import json
import random
from pathlib import Path

import pytest

from sftvsrl.config import section_with_defaults
from sftvsrl.tasks.virl import VirlEpisode, VirlTask, expert_answer, first_prompt
from sftvsrl.tasks.virl_city import (
    NO_LANDMARKS,
    SEE_INTERSECTION,
    build_route,
    generate_city,
    load_official_routes,
    relative_turn,
    sample_route_info,
)
from sftvsrl.tasks.virl_official import (
    compass_name,
    parse_block,
    parse_heading,
    parse_milestones,
    read_route_infos,
)

SAMPLE = Path(__file__).parent / "data" / "route_infos_sample.json"
CFG = section_with_defaults("virl", {})  # forward_step_m 100, max_forward_per_leg 3, official_quirks false


def sample_routes(cfg=CFG, seed=0):
    return load_official_routes(SAMPLE, cfg, seed)


def rail(route, rule):
    """(kind, observation, instruction sentence, expert action) per point."""
    return [
        (p["kind"], p["observation"], route["instruction"][p["instruction"]], p["actions"][rule])
        for p in route["points"]
    ]


# ---------------------------------------------------------------- blocks and headings


def test_parse_heading():
    assert parse_heading("177 (south)") == (177, "south")
    assert parse_heading(" 316 (northwest) ") == (316, "northwest")
    assert parse_heading("90") == (90, "east")
    with pytest.raises(ValueError, match="unreadable heading 'south'"):
        parse_heading("south")
    with pytest.raises(ValueError, match="not one of north"):
        parse_heading("90 (eastward)")


def test_compass_name():
    assert [compass_name(h) for h in (0, 22, 23, 177, 316, 338, -90)] == [
        "north",
        "north",
        "northeast",
        "south",
        "northwest",
        "north",
        "west",
    ]


def test_parse_block_quoted_and_unquoted():
    quoted = '\n"landmarks": "Wood Tavern is on your left",\n"to_next_intersection_heading": "268 (west)",\n'
    assert parse_block(quoted) == {
        "landmarks": "Wood Tavern is on your left",
        "to_next_intersection_heading": "268 (west)",
    }
    bare = "landmarks: A is on your left, B is on your right, to_next_intersection_heading: '177 (south)'"
    assert parse_block(bare) == {
        "landmarks": "A is on your left, B is on your right",
        "to_next_intersection_heading": "177 (south)",
    }


def test_parse_milestones_text_and_list():
    text = "{landmarks: 'X is on your right', to_next_intersection_heading: '10 (north)'}\n{landmarks: 'Y'}"
    assert [b["landmarks"] for b in parse_milestones(text)] == ["X is on your right", "Y"]
    assert parse_milestones([{"landmarks": "Z", "to_next_intersection_heading": 90}]) == [
        {"landmarks": "Z", "to_next_intersection_heading": "90"}
    ]


# ---------------------------------------------------------------- the sample, as the reference reads it


def test_route_with_geocodes_reads_as_the_reference():
    route = sample_routes()[0]
    assert (route["start_place"], route["dest_place"], route["init_heading"]) == (
        "Grand Hotel",
        "Little Fig Market",
        90,
    )
    assert route["instruction"] == [
        "First, turn right to face south.",  # 90 -> 177
        "Move forward until you reach next intersection.",  # block 0 has no landmark
        "Turn right to face west.",  # 177 -> 268
        "Move forward until you reach next intersection where Wood Tavern is on your left.",
        "Turn slightly left to face southwest.",  # 268 -> 225
        "Move forward until you reach destination where Little Fig Market is on your right.",
    ]
    assert rail(route, "id") == [
        ("start", NO_LANDMARKS, "First, turn right to face south.", "turn_direction(south)"),
        ("forward", NO_LANDMARKS, "Move forward until you reach next intersection.", "forward()"),
        ("forward", NO_LANDMARKS, "Move forward until you reach next intersection.", "forward()"),
        (
            "intersection",
            "No landmarks nearby. You observe an intersection.",
            "Turn right to face west.",
            "turn_direction(west)",
        ),
        (
            "intersection",
            "Wood Tavern is on your left. You observe an intersection.",
            "Turn slightly left to face southwest.",
            "turn_direction(southwest)",
        ),
        (
            "destination",
            "Little Fig Market is on your right.",
            "Move forward until you reach destination where Little Fig Market is on your right.",
            "stop()",
        ),
    ]
    assert [p["actions"]["ood"] for p in route["points"]] == [
        "turn_direction(right)",
        "forward()",
        "forward()",
        "turn_direction(right)",
        "turn_direction(slightly left)",
        "stop()",
    ]
    # Positions: the walk starts at start_place.relocated_geocode; leg lengths are haversine distances.
    assert route["points"][0]["geocode"] == [40.73002, -73.99003]
    assert [p["geocode"] for p in route["points"][3:]] == [
        [40.7279, -73.9899],
        [40.7279, -73.9909],
        [40.7273, -73.9917],
    ]
    assert [leg["length_m"] for leg in route["legs"]] == pytest.approx([236.0, 84.3, 94.8], abs=0.1)
    assert [p["heading"] for p in route["points"]] == [90, 177, 177, 177, 268, 225]


def test_first_prompt_of_the_sample_route():
    text = first_prompt(sample_routes()[0], "ood")
    assert text.split("Instruction:\n")[1].split("\nAction space:")[0].splitlines() == [
        "1. First, turn right to face south.",
        "2. Move forward until you reach next intersection.",
        "3. Turn right to face west.",
        "4. Move forward until you reach next intersection where Wood Tavern is on your left.",
        "5. Turn slightly left to face southwest.",
        "6. Move forward until you reach destination where Little Fig Market is on your right.",
    ]
    assert text.endswith("O_1: No landmarks nearby.\nA_1:")


def test_route_with_distances_and_a_turn_across_north():
    route = sample_routes()[1]
    assert route["start_place"] == "Blue Door Cafe" and route["init_heading"] == 350
    assert route["instruction"] == [
        "First, turn slightly right to face north.",  # 350 -> 10 wraps to +20
        "Move forward until you reach next intersection.",
        "Turn right to face east.",
        "Move forward until you reach destination where The Dutch is on your right.",
    ]
    assert rail(route, "ood") == [
        ("start", NO_LANDMARKS, "First, turn slightly right to face north.", "turn_direction(slightly right)"),
        ("forward", NO_LANDMARKS, "Move forward until you reach next intersection.", "forward()"),  # 150 m
        (
            "intersection",
            f"No landmarks nearby. {SEE_INTERSECTION}",
            "Turn right to face east.",
            "turn_direction(right)",
        ),
        (
            "destination",
            "The Dutch is on your right.",
            "Move forward until you reach destination where The Dutch is on your right.",
            "stop()",
        ),
    ]
    assert [p["geocode"] for p in route["points"]] == [None] * 4


def test_official_quirks_switch_gives_the_unwrapped_turn():
    route = sample_routes(section_with_defaults("virl", {"official_quirks": True}))[1]
    assert route["instruction"][0] == "First, turn left to face north."  # the reference: 10 - 350 = -340
    assert route["points"][0]["actions"] == {"id": "turn_direction(north)", "ood": "turn_direction(left)"}


def test_one_leg_route_without_init_heading():
    by_seed = {seed: sample_routes(seed=seed)[2] for seed in range(6)}
    route = by_seed[0]
    assert route["init_heading"] == sample_routes(seed=0)[2]["init_heading"]  # drawn from the data seed
    assert len({r["init_heading"] for r in by_seed.values()}) > 1
    turn = relative_turn(route["init_heading"], 45)
    assert route["instruction"] == [
        f"Turn {turn} to face northeast.",  # the reference opens a one-leg route with "Turn"
        "Move forward until you reach destination where Joe's Pizza is on your left.",
    ]
    assert rail(route, "ood") == [
        ("start", NO_LANDMARKS, f"Turn {turn} to face northeast.", f"turn_direction({turn})"),
        (
            "destination",
            "Joe's Pizza is on your left.",
            "Move forward until you reach destination where Joe's Pizza is on your left.",
            "stop()",
        ),
    ]


def test_bare_list_of_routes_is_read_too(tmp_path):
    routes, _count = json.loads(SAMPLE.read_text())
    bare = tmp_path / "bare.json"
    bare.write_text(json.dumps(routes))
    assert load_official_routes(bare, CFG, 0) == sample_routes()


@pytest.mark.parametrize("rule", ["id", "ood"])
def test_expert_completes_official_routes(rule):
    for route in sample_routes():
        ep = VirlEpisode(route, rule, viter=2)
        while not ep.done:
            ep.step(expert_answer(route, ep.index, rule))
        assert ep.success and ep.metrics()["per_step_accuracy"] == 1.0


# ---------------------------------------------------------------- errors name what was expected


def _write(tmp_path, data, name="routes.json"):
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def _route(milestone_info):
    return {"start_place": "A", "dest_place": {"name": "B"}, "init_heading": 90, "milestone_info": milestone_info}


GOOD = "{landmarks: 'X is on your left', to_next_intersection_heading: '180 (south)'}"


@pytest.mark.parametrize(
    "data,message",
    [
        ("not json {", r"not a JSON file .*expected the reference layout \[routes, count\]"),
        (
            {"routes": []},
            r"expected the reference layout \[routes, count\] or a list .*, got an object with keys routes",
        ),
        ([[], 0], "holds no routes"),
        (
            [[_route(GOOD), {"start_place": "A"}], 2],
            "route 1: no milestone_info: .* got an object with keys start_place",
        ),
        ([[_route(GOOD), "a route"], 2], "route 1: no milestone_info: .* got a JSON string"),
        ([[_route("no blocks here")], 1], r"route 0: milestone_info holds no \{...\} block"),
        (
            [[_route(GOOD + "{landmarks: 'Y', to_next_intersection_heading: 'south'}")], 1],
            "route 0: milestone block 1: unreadable heading 'south'",
        ),
        ([[_route(GOOD + "{landmarks: 'Y is on your right'}")], 1], "route 0: milestone block 1 has no to_next"),
        ([[dict(_route(GOOD), init_heading="east")], 1], "route 0: init_heading 'east' is not a number"),
    ],
)
def test_unreadable_files_say_what_was_expected(tmp_path, data, message):
    path = _write(tmp_path, data)
    with pytest.raises(ValueError, match=message) as err:
        read_route_infos(path, 0)
    assert str(path) in str(err.value)


# ---------------------------------------------------------------- one builder for both sources


def test_procedural_routes_survive_a_route_infos_file(tmp_path):
    """A procedural route written in the reference layout reads back to the same route."""
    city, rng = generate_city("c", 11), random.Random(2)
    infos = [i for i in (sample_route_info(city, rng, 2) for _ in range(10)) if i is not None][:3]
    path = _write(tmp_path, [infos, len(infos)])
    read = load_official_routes(path, CFG, 0)
    built = [build_route(info, CFG, f"official-{i}", "official") for i, info in enumerate(infos)]
    assert read == built
    assert all(r["points"][0]["observation"] == NO_LANDMARKS for r in read)


def test_generate_splits_from_official_file():
    cfg = {"routes": str(SAMPLE), "sizes": {"sft": None, "rl": None, "eval_id": None, "eval_ood_rule": None}}
    a = VirlTask().generate_splits(cfg, seed=1)
    b = VirlTask().generate_splits(cfg, seed=1)
    assert json.dumps(a) == json.dumps(b)
    train = {r["route"]["id"] for s in ("sft", "rl") for r in a[s]}
    evals = {r["route"]["id"] for s in ("eval_id", "eval_ood_rule") for r in a[s]}
    assert len(train) == 2 and len(evals) == 1 and not train & evals  # eval_fraction 0.2 of 3 routes: one
    assert len(a["rl"]) == 2 and len(a["eval_ood_rule"]) == 1
    assert len(a["sft"]) == sum(len(r["route"]["points"]) for r in a["rl"])  # every step of the training routes
    assert a["eval_ood_rule"][0]["rule"] == "ood"
    # Fixed sizes cycle through the pool.
    c = VirlTask().generate_splits({"routes": str(SAMPLE), "sizes": {"sft": 10, "rl": 5}}, seed=1)
    assert len(c["sft"]) == 10 and len(c["rl"]) == 5
    assert len({json.dumps(r["route"]) for r in c["rl"]}) == 2


def test_seeded_split_of_official_routes_varies_with_seed():
    cfg = {"routes": str(SAMPLE), "sizes": {"sft": 5, "rl": 1, "eval_id": 1, "eval_ood_rule": 1}}
    evals = {VirlTask().generate_splits(cfg, seed=s)["eval_id"][0]["route"]["id"] for s in range(12)}
    assert evals == {"official-0", "official-1", "official-2"}
