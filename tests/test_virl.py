"""V-IRL navigation task: headings, generator, prompt, parser, verifier, episode, splits."""

import itertools
import json
import math
import random

import pytest

from sftvsrl.config import section_with_defaults
from sftvsrl.tasks import get_task
from sftvsrl.tasks.answers import derive_seed
from sftvsrl.tasks.virl import (
    COMPASS,
    FAIL_PREFIX,
    RELATIVE,
    REWARD_HALLUCINATION,
    SHORT_SYSTEM,
    VirlEpisode,
    VirlTask,
    action_space,
    claims_intersection,
    expert_answer,
    expert_chat,
    first_prompt,
    normalise_action,
    parse_answer,
    verify_answer,
)
from sftvsrl.tasks.virl_city import (
    METRES_PER_DEGREE,
    NO_LANDMARKS,
    SEE_INTERSECTION,
    build_route,
    count_intersections,
    generate_city,
    load_landmark_names,
    relative_turn,
    sample_route_info,
    wrap_degrees,
)
from sftvsrl.tasks.virl_official import compass_name, milestone_block_text, parse_milestones, route_legs

CFG = {
    "routes": None,
    "min_intersections": 2,
    "max_intersections": 6,
    "cities": {"train": 3, "eval": 2},
    "sizes": {"sft": 60, "rl": 12, "eval_id": 6, "eval_ood_rule": 6},
}


@pytest.fixture(scope="module")
def splits():
    return VirlTask().generate_splits(CFG, seed=7)


def tiny_route():
    """Start facing east; south 250 m to an intersection; west 50 m to the destination (official shape)."""
    info = {
        "start_place": "Blue Door Cafe",
        "dest_place": {"name": "The Dutch"},
        "init_heading": 90,
        "milestone_info": milestone_block_text(1, "Wood Tavern is on your left", 250, 90, 180)
        + milestone_block_text(2, "The Dutch is on your right", 50, 180, 270),
    }
    return build_route(info, section_with_defaults("virl", {}), "tiny", "test")


def answer(action, observation="Something."):
    return json.dumps({"current observation": observation, "current instruction": "x", "action": action})


# ---------------------------------------------------------------- headings


@pytest.mark.parametrize(
    "heading,name",
    [
        (0, "north"),
        (22, "north"),
        (23, "northeast"),
        (45, "northeast"),
        (90, "east"),
        (135, "southeast"),
        (177, "south"),
        (225, "southwest"),
        (270, "west"),
        (316, "northwest"),
        (338, "north"),
        (359.9, "north"),
        (-90, "west"),
        (720, "north"),
    ],
)
def test_compass_name(heading, name):
    assert compass_name(heading) == name


def test_wrap_degrees_range():
    assert wrap_degrees(180) == -180
    assert wrap_degrees(-180) == -180
    assert wrap_degrees(190) == -170
    assert wrap_degrees(-190) == 170
    assert wrap_degrees(20 - 340) == 40


@pytest.mark.parametrize(
    "src,dst,word",
    [
        (350, 10, "slightly right"),  # wrap-around: +20, not -340
        (10, 350, "slightly left"),  # -20, not +340
        (0, 0, "slightly left"),  # d = 0 belongs to "slightly left"
        (0, 45, "slightly right"),
        (0, 46, "right"),
        (0, 315, "slightly left"),  # d = -45
        (0, 314, "left"),  # d = -46
        (90, 180, "right"),
        (90, 0, "left"),
        (0, 180, "left"),  # d = -180 after wrapping into [-180, 180)
        (270, 90, "left"),
        (300, 100, "right"),  # -200 wraps to +160
        (100, 300, "left"),  # +200 wraps to -160
    ],
)
def test_relative_turn(src, dst, word):
    assert relative_turn(src, dst) == word


@pytest.mark.parametrize(
    "src,dst,word",
    [(350, 10, "left"), (10, 350, "right"), (300, 100, "left"), (100, 300, "right"), (90, 180, "right")],
)
def test_relative_turn_without_wrapping_is_the_reference(src, dst, word):
    assert relative_turn(src, dst, wrap=False) == word


def test_derive_seed_is_stable():
    assert derive_seed(1, "route", "rl", 0) == derive_seed(1, "route", "rl", 0)
    assert derive_seed(1, "route", "rl", 0) != derive_seed(1, "route", "rl", 1)
    # A fixed value guards against anyone swapping in the salted hash().
    assert derive_seed("a") == int.from_bytes(
        bytes.fromhex("ca978112ca1bbdcafac231b39a23dc4da786eff8147c4e72b9807785afee48bb")[:8], "big"
    )


# ---------------------------------------------------------------- city and routes


def test_landmark_list_is_bundled_and_unique():
    names = load_landmark_names()
    assert len(names) >= 250
    assert len(set(names)) == len(names)


def test_city_is_deterministic_connected_and_named():
    a = generate_city("c", 123)
    b = generate_city("c", 123)
    assert a == b
    assert generate_city("c", 124).nodes != a.nodes
    # connected: a walk over adjacency reaches every node
    seen, todo = {0}, [0]
    while todo:
        for v in a.adjacency[todo.pop()]:
            if v not in seen:
                seen.add(v)
                todo.append(v)
    assert len(seen) == len(a.nodes)
    n_edges = sum(len(v) for v in a.adjacency.values()) // 2
    assert n_edges < 2 * 6 * 5  # some streets of the 6x6 grid were removed
    names = [m["name"] for ms in a.node_landmarks.values() for m in ms]
    names += [m["name"] for m in a.street_landmarks.values()]
    assert len(names) == len(set(names))
    assert all(ms for ms in a.node_landmarks.values())


def test_generate_splits_is_deterministic(splits):
    again = VirlTask().generate_splits(CFG, seed=7)
    assert json.dumps(again, sort_keys=True) == json.dumps(splits, sort_keys=True)
    other = VirlTask().generate_splits(CFG, seed=8)
    assert json.dumps(other["rl"]) != json.dumps(splits["rl"])


def test_split_sizes_and_row_shape(splits):
    assert {k: len(v) for k, v in splits.items()} == {"sft": 60, "rl": 12, "eval_id": 6, "eval_ood_rule": 6}
    for split, rows in splits.items():
        for row in rows:
            assert row["task"] == "virl_l" and row["split"] == split
            assert row["rule"] == ("ood" if split == "eval_ood_rule" else "id")
            assert row["seed"] == 7 and row["generator_version"]
            assert row["prompt"][-1]["role"] == "user"
    assert len({r["id"] for rows in splits.values() for r in rows}) == sum(len(v) for v in splits.values())
    json.dumps(splits)  # JSON-serialisable


def test_routes_respect_intersection_range(splits):
    for rows in splits.values():
        for row in rows:
            route = row["route"]
            assert 2 <= count_intersections(route) <= 6
            kinds = [p["kind"] for p in route["points"]]
            assert kinds[0] == "start" and kinds[-1] == "destination"
            assert kinds.count("start") == 1 and kinds.count("destination") == 1


def test_train_and_eval_cities_are_distinct(splits):
    train = {r["route"]["city"] for s in ("sft", "rl") for r in splits[s]}
    evals = {r["route"]["city"] for s in ("eval_id", "eval_ood_rule") for r in splits[s]}
    assert train and evals and not train & evals
    assert all(c.startswith("train-") for c in train) and all(c.startswith("eval-") for c in evals)


def test_same_cities_option():
    cfg = dict(CFG, same_cities=True)
    s = VirlTask().generate_splits(cfg, seed=7)
    assert {r["route"]["city"] for r in s["eval_id"]} <= {"train-0", "train-1", "train-2"}


def test_eval_splits_share_routes_and_differ_in_rule(splits):
    for a, b in zip(splits["eval_id"], splits["eval_ood_rule"]):
        assert a["route"] == b["route"]
    ood_prompt = splits["eval_ood_rule"][0]["prompt"][0]["content"]
    id_prompt = splits["eval_id"][0]["prompt"][0]["content"]
    assert "slightly left" in ood_prompt and "northeast" not in ood_prompt.split("Action space:")[1]
    assert "northeast" in id_prompt.split("Action space:")[1]


def test_procedural_route_is_in_the_official_shape():
    """Block i: the street walked on leg i, and the landmarks seen at its end (an intersection
    whose landmarks the city placed there, then the destination)."""
    city = generate_city("c", 5)
    rng = random.Random(3)
    info = next(i for i in (sample_route_info(city, rng, 3) for _ in range(50)) if i is not None)
    assert set(info) == {"start_place", "dest_place", "init_heading", "route_results", "milestone_info"}
    blocks = parse_milestones(info["milestone_info"])
    assert len(blocks) == 4 == len(info["route_results"]["geocode_list"])  # 3 intersections + destination
    assert [b["intersection_idx"] for b in blocks] == ["1", "2", "3", "4"]
    assert blocks[0]["human_heading"] == str(info["init_heading"])
    for before, block in itertools.pairwise(blocks):
        assert block["human_heading"] == before["to_next_intersection_heading"].split(" ")[0]
    assert blocks[-1]["landmarks"].startswith(info["dest_place"]["name"] + " is on your ")
    node_at = {
        (round(y / METRES_PER_DEGREE, 7), round(x / METRES_PER_DEGREE, 7)): n for n, (x, y) in enumerate(city.nodes)
    }
    for block, geocode in zip(blocks[:-1], info["route_results"]["geocode_list"]):
        names = {m["name"] for m in city.node_landmarks[node_at[tuple(geocode)]]}
        assert {part.split(" is on your ")[0] for part in block["landmarks"].split(", ")} == names


def test_landmark_sides_match_geometry():
    """Sides follow the cross product of the walking direction and the landmark offset, at the leg's end."""
    city = generate_city("c", 5)
    rng = random.Random(0)
    where = {m["name"]: m["xy"] for ms in city.node_landmarks.values() for m in ms}
    checked = 0
    for _ in range(20):
        info = sample_route_info(city, rng, 3)
        if info is None:
            continue
        for leg, (lat, lng) in zip(route_legs(info)[:-1], info["route_results"]["geocode_list"]):
            at = (lng * METRES_PER_DEGREE, lat * METRES_PER_DEGREE)
            h = math.radians(leg["heading"])
            fx, fy = math.sin(h), math.cos(h)  # unit vector of the arrival heading
            for part in leg["landmarks"].split(", "):
                name, side = part.split(" is on your ")
                dx, dy = (where[name][0] - at[0], where[name][1] - at[1])
                cross = fx * dy - fy * dx  # > 0: the landmark lies counter-clockwise, i.e. left
                assert side == ("left" if cross > 0 else "right")
                checked += 1
    assert checked > 10


def test_procedural_routes_start_without_landmarks_and_end_at_the_destination(splits):
    for row in splits["rl"]:
        route = row["route"]
        assert route["points"][0]["observation"] == NO_LANDMARKS
        assert route["points"][-1]["observation"].startswith(route["dest_place"] + " is on your ")
        assert route["instruction"][-1].startswith(
            f"Move forward until you reach destination where {route['dest_place']}"
        )


# ---------------------------------------------------------------- rail, instruction, prompt


def test_tiny_route_rail_and_instruction():
    route = tiny_route()
    kinds = [p["kind"] for p in route["points"]]
    assert kinds == ["start", "forward", "forward", "intersection", "destination"]
    assert route["instruction"] == [
        "First, turn right to face south.",
        "Move forward until you reach next intersection where Wood Tavern is on your left.",
        "Turn right to face west.",
        "Move forward until you reach destination where The Dutch is on your right.",
    ]
    assert [p["actions"]["id"] for p in route["points"]] == [
        "turn_direction(south)",
        "forward()",
        "forward()",
        "turn_direction(west)",
        "stop()",
    ]
    assert [p["actions"]["ood"] for p in route["points"]] == [
        "turn_direction(right)",
        "forward()",
        "forward()",
        "turn_direction(right)",
        "stop()",
    ]
    assert [p["observation"] for p in route["points"]] == [
        NO_LANDMARKS,  # the start: block 0's landmarks are seen at the end of leg 0
        NO_LANDMARKS,
        NO_LANDMARKS,
        "Wood Tavern is on your left. " + SEE_INTERSECTION,
        "The Dutch is on your right.",
    ]
    assert [p["instruction"] for p in route["points"]] == [0, 1, 1, 2, 3]


def test_every_turn_sentence_names_relative_word_and_compass(splits):
    for row in splits["rl"]:
        sentences = row["route"]["instruction"]
        assert sentences[0].startswith("First, turn ")
        assert sentences[-1].startswith("Move forward until you reach destination")
        for s in sentences[0::2]:
            rel = s.split(" turn " if s.startswith("First") else "Turn ")[1].split(" to face ")[0]
            assert rel in ("left", "right", "slightly left", "slightly right")
            assert s.rstrip(".").split(" to face ")[1] in COMPASS


def test_prompt_shape():
    route = tiny_route()
    text = first_prompt(route, "id")
    assert "1. First, turn right to face south." in text
    assert "4. Move forward until you reach destination where The Dutch is on your right." in text
    assert "turn_direction(x) with x in north, northeast, east" in text
    assert '"current observation"' in text and '"current instruction"' in text and '"action"' in text
    assert text.endswith("O_1: No landmarks nearby.\nA_1:")
    assert len(text) < 1200  # compact for a small model


def test_expert_answer_is_json_with_the_three_keys():
    route = tiny_route()
    obj = json.loads(expert_answer(route, 3, "ood"))
    assert obj == {
        "current observation": route["points"][3]["observation"],
        "current instruction": "Turn right to face west.",
        "action": "turn_direction(right)",
    }


def test_action_space():
    assert action_space("id") == [f"turn_direction({c})" for c in COMPASS] + ["forward()", "stop()"]
    assert "turn_direction(slightly right)" in action_space("ood")
    assert len(action_space("ood")) == 6


# ---------------------------------------------------------------- parser


@pytest.mark.parametrize(
    "text",
    [
        '{"current observation": "a", "current instruction": "b", "action": "forward()"}',
        '```json\n{"current observation": "a", "current instruction": "b", "action": "forward()"}\n```',
        'Sure! Here is my answer: {"current observation": "a", "action": "forward()"} Hope it helps.',
        "{'current observation': 'a', 'current instruction': 'b', 'action': 'forward()'}",
        '{"current observation": "a", "action": "forward()",}',
        "{'current observation': 'Joe's Pizza is on your left', 'action': 'forward()',}",
        '{"current observation": "a", "current instruction": "b", "action": "forward()"',  # truncated
        "{current observation: a, action: forward()}",
        '{"Current_Observation": "a", "Action": "forward()"}',
    ],
)
def test_parser_tolerates_messy_json(text):
    fields = parse_answer(text)
    assert fields is not None
    assert normalise_action(fields["action"]) == "forward()"


@pytest.mark.parametrize("text", ["", "forward()", "I would go forward.", "{}", '{"observation": "x"}', None, 42])
def test_parser_rejects_answers_without_action(text):
    assert parse_answer(text) is None


def test_parser_keeps_braces_and_quotes_inside_strings():
    fields = parse_answer('{"current observation": "Joe\'s {Bar} is on your left", "action": "stop()"}')
    assert fields["current observation"] == "Joe's {Bar} is on your left"
    assert fields["action"] == "stop()"


def test_normalise_action():
    assert normalise_action("  Turn_Direction( North ) ") == "turn_direction(north)"
    assert normalise_action("turn_direction(Slightly   LEFT)") == "turn_direction(slightly left)"
    assert normalise_action("`stop()`") == "stop()"
    assert normalise_action("forward ( )") == "forward()"


def test_claims_intersection():
    assert claims_intersection("You observe an intersection.")
    assert claims_intersection("Wood Tavern is on your left. Intersection ahead")
    assert not claims_intersection("No landmarks nearby.")
    assert not claims_intersection("There is no intersection here.")


# ---------------------------------------------------------------- verifier


def test_verifier_rewards():
    route = tiny_route()
    start, fwd, inter = route["points"][0], route["points"][1], route["points"][3]
    assert verify_answer(answer("turn_direction(south)"), start, "id")[:2] == ("correct", 1.0)
    assert verify_answer(answer("turn_direction(north)"), start, "id")[:2] == ("wrong_action", -1.0)
    assert verify_answer(answer("turn_direction(right)"), start, "id")[:2] == ("invalid_action", -1.0)
    assert verify_answer(answer("turn_direction(right)"), start, "ood")[:2] == ("correct", 1.0)
    assert verify_answer(answer("turn_direction(south)"), start, "ood")[:2] == ("invalid_action", -1.0)
    assert verify_answer("no json here", fwd, "id")[:2] == ("format_error", -1.0)
    # The reference's order: the action first. The right action scores +1 and advances whatever the observation says.
    outcome, reward, _, info = verify_answer(answer("forward()", "You observe an intersection."), fwd, "id")
    assert (outcome, reward) == ("correct", 1.0) and not info["intersection_hallucination"]
    assert verify_answer(answer("turn_direction(west)", "No landmarks nearby."), inter, "id")[:2] == ("correct", 1.0)
    # A wrong action is checked against the observation in both directions, with the reference's reasons.
    outcome, reward, reason, info = verify_answer(answer("stop()", "You observe an intersection."), fwd, "id")
    assert (outcome, reward, reason) == (
        "intersection_hallucination",
        REWARD_HALLUCINATION,
        "you are not at any intersection",
    )
    assert reward == -1.5 and info["intersection_hallucination"]
    outcome, reward, reason, info = verify_answer(answer("forward()", "No landmarks nearby."), inter, "id")
    assert (outcome, reward, reason) == ("missed_intersection", -1.5, "you are at an intersection")
    assert info["missed_intersection"]
    outcome, reward, reason, _ = verify_answer(answer("forward()", inter["observation"]), inter, "id")
    assert (outcome, reward, reason) == ("wrong_action", -1.0, "you make incorrect action")
    assert verify_answer(answer("stop()", "No landmarks nearby."), fwd, "id")[2] == "you make incorrect action"


def test_ood_absolute_turn_is_flagged():
    route = tiny_route()
    _, _, _, info = verify_answer(answer("turn_direction(south)"), route["points"][0], "ood")
    assert info["absolute_turn"] and not info["in_action_space"] and info["turn_point"]


# ---------------------------------------------------------------- episode


def run_expert(row, task=None):
    task = task or VirlTask()
    ep = task.make_episode(row, viter=2)
    guard = 0
    while not ep.done:
        ep.step(expert_answer(ep.route, ep.index, ep.rule))
        guard += 1
        assert guard < 200
    return ep


def test_expert_completes_every_route(splits):
    for split in ("rl", "eval_id", "eval_ood_rule"):
        for row in splits[split]:
            ep = run_expert(row)
            m = ep.metrics()
            assert ep.success and m["success"] == 1.0
            assert m["per_step_accuracy"] == 1.0
            assert m["attempts"] == len(row["route"]["points"])
            assert m["return"] == len(row["route"]["points"])


def test_expert_chat_matches_episode_messages(splits):
    """SFT prompts are exactly the chat an expert episode has at that point."""
    row = splits["rl"][0]
    ep = VirlTask().make_episode(row, viter=2)
    for k in range(len(row["route"]["points"])):
        assert ep.messages == expert_chat(row["route"], "id", k)
        ep.step(expert_answer(row["route"], k, "id"))
    assert ep.done and ep.success
    assert ep.messages[-1]["role"] == "assistant"


def test_sft_rows_are_single_steps_with_expert_history(splits):
    rows = splits["sft"]
    for row in rows:
        k = row["step_index"]
        assert row["prompt"] == expert_chat(row["route"], "id", k)
        assert row["completion"] == [{"role": "assistant", "content": expert_answer(row["route"], k, "id")}]
        assert len(row["prompt"]) == 2 * k + 1
    assert any(r["step_index"] > 0 for r in rows)


def test_episode_from_sft_row_starts_at_its_step(splits):
    row = next(r for r in splits["sft"] if r["step_index"] == 2)
    ep = VirlTask().make_episode(row, viter=1)
    assert ep.index == 2
    assert ep.step(row["completion"][0]["content"]).correct


def test_wrong_action_stays_in_place_then_viter_exhausts():
    route = tiny_route()
    ep = VirlEpisode(route, "id", viter=2)
    assert ep.step(answer("turn_direction(south)", "Blue Door Cafe is on your left.")).correct
    assert ep.index == 1
    n_msgs = len(ep.messages)
    a = ep.step(answer("stop()", NO_LANDMARKS))
    assert not a.correct and a.reward == -1.0 and a.outcome == "wrong_action"
    assert ep.index == 1 and not ep.done
    assert a.feedback.startswith(FAIL_PREFIX)
    assert a.feedback.startswith("You failed this trial because you make incorrect action.")
    assert a.feedback.endswith("O_2: No landmarks nearby.\nA_2:")
    assert ep.messages[n_msgs:] == [
        {"role": "assistant", "content": answer("stop()", NO_LANDMARKS)},
        {"role": "user", "content": a.feedback},
    ]
    b = ep.step(answer("turn_direction(west)", NO_LANDMARKS))
    assert not b.correct and b.feedback == ""
    assert ep.done and not ep.success and ep.index == 1
    assert ep.messages[-1]["role"] == "assistant"
    m = ep.metrics()
    assert m["attempts"] == 3 and m["correct_actions"] == 1 and m["success"] == 0.0
    assert m["per_step_accuracy"] == pytest.approx(1 / 3) and m["return"] == -1.0
    with pytest.raises(RuntimeError):
        ep.step(answer("forward()"))


def test_attempt_counter_resets_after_a_correct_move():
    route = tiny_route()
    ep = VirlEpisode(route, "id", viter=2)
    plan = [
        "turn_direction(north)",
        "turn_direction(south)",  # wrong, then right at the start
        "stop()",
        "forward()",  # wrong, then right at point 2
        "bogus",
        "forward()",  # wrong, then right at point 3
        "turn_direction(west)",
        "stop()",
    ]
    for action in plan:
        ep.step(answer(action, "x"))
    assert ep.done and ep.success
    m = ep.metrics()
    assert m["attempts"] == 8 and m["correct_actions"] == 5 and m["per_step_accuracy"] == pytest.approx(5 / 8)


def test_viter_one_fails_on_first_mistake():
    ep = VirlEpisode(tiny_route(), "ood", viter=1)
    a = ep.step(answer("turn_direction(south)"))
    assert ep.done and not ep.success and a.outcome == "invalid_action"


def test_malformed_answer_never_crashes():
    ep = VirlEpisode(tiny_route(), "id", viter=3)
    for bad in ["", "{{{{", '{"action": 5}', "```json\n{'action': [1, 2]}\n```"]:
        if ep.done:
            break
        a = ep.step(bad)
        assert a.reward == -1.0 and not a.correct
    assert ep.done and not ep.success


def test_hallucination_is_recorded_in_info_and_metrics():
    ep = VirlEpisode(tiny_route(), "id", viter=2)
    ep.step(answer("turn_direction(south)"))
    a = ep.step(answer("stop()", "You observe an intersection."))  # a wrong action that claims an intersection
    assert a.info == {**a.info, "intersection_hallucination": True, "parsed": True, "step_index": 1}
    assert a.feedback.startswith("You failed this trial because you are not at any intersection.") and ep.index == 1
    assert ep.metrics()["intersection_hallucinations"] == 1


def test_the_right_action_with_a_wrong_observation_scores_and_advances():
    """The reference checks the action first: +1, and the agent moves on, whatever the observation claims."""
    ep = VirlEpisode(tiny_route(), "id", viter=2)
    ep.step(answer("turn_direction(south)"))
    a = ep.step(answer("forward()", "You observe an intersection."))
    assert a.correct and a.reward == 1.0 and ep.index == 2 and a.feedback == ""
    assert ep.metrics()["intersection_hallucinations"] == 0


def test_continuation_turns_are_short():
    ep = VirlEpisode(tiny_route(), "id", viter=2)
    ep.step(answer("turn_direction(south)"))
    assert ep.messages[-1] == {"role": "user", "content": "O_2: No landmarks nearby.\nA_2:"}


# ---------------------------------------------------------------- task and aggregate


def test_registry_finds_the_task():
    task = get_task("virl_l")
    assert task.name == "virl_l"
    assert task.splits == ("sft", "rl", "eval_id", "eval_ood_rule")


def test_row_survives_a_json_round_trip(splits):
    row = json.loads(json.dumps(splits["eval_ood_rule"][0]))
    assert run_expert(row).success


def test_aggregate(splits):
    task = VirlTask()
    good = [run_expert(r, task) for r in splits["eval_id"][:3]]
    bad = []
    for row in splits["eval_id"][3:5]:
        ep = task.make_episode(row, viter=2)
        ep.step("garbage")
        ep.step(answer("forward()", "You observe an intersection."))
        bad.append(ep)
    agg = task.aggregate(good + bad)
    n_good_attempts = sum(e.metrics()["attempts"] for e in good)
    total = n_good_attempts + 4
    assert agg["episodes"] == 5
    assert agg["route_success_rate"] == agg["success_rate"] == pytest.approx(0.6)
    assert agg["route_success_rate_se"] == pytest.approx(math.sqrt(0.6 * 0.4 / 5))
    assert agg["per_step_accuracy"] == pytest.approx(n_good_attempts / total)
    assert agg["per_step_accuracy_se"] > 0
    assert agg["mean_attempts"] == pytest.approx(total / 5)
    assert agg["format_error_rate"] == pytest.approx(2 / total)
    # the start point is not an intersection, so the claim there is a hallucination
    assert agg["intersection_hallucination_rate"] == pytest.approx(2 / total)
    assert set(agg) >= {
        "episodes",
        "per_step_accuracy",
        "per_step_accuracy_se",
        "route_success_rate",
        "route_success_rate_se",
        "mean_attempts",
        "format_error_rate",
        "intersection_hallucination_rate",
        "success_rate",
    }


def test_aggregate_of_nothing():
    agg = VirlTask().aggregate([])
    assert agg["episodes"] == 0 and agg["success_rate"] == 0.0


# ---------------------------------------------------------------- the short prompt style


@pytest.fixture(scope="module")
def short_splits():
    return VirlTask().generate_splits({**CFG, "prompt": "short"}, seed=7)


def test_short_style_keeps_the_routes_the_rule_and_the_action_spaces(splits, short_splits):
    for split, rows in splits.items():
        for paper, short in zip(rows, short_splits[split]):
            assert paper["route"] == short["route"] and paper["rule"] == short["rule"]
            first = short["prompt"][1]["content"]
            assert short["prompt"][0] == {"role": "system", "content": SHORT_SYSTEM}
            for sentence in short["route"]["instruction"]:
                assert sentence in first
            # the rule's action space, exactly: compass points under ID, relative words only under OOD
            words = ", ".join(COMPASS if short["rule"] == "id" else RELATIVE)
            actions = next(line for line in first.splitlines() if line.startswith("Actions:"))
            assert actions == f"Actions: turn_direction(x) with x in {words}; forward(); stop()."


def test_short_style_expert_answers_reach_the_destination_under_both_rules(short_splits):
    for split in ("rl", "eval_id", "eval_ood_rule"):
        for row in short_splits[split]:
            ep = run_expert(row)
            assert ep.success and ep.metrics()["per_step_accuracy"] == 1.0
            for rule in ("id", "ood"):
                ep = VirlEpisode(
                    row["route"], rule, viter=1, messages=expert_chat(row["route"], rule, 0, style="short")
                )
                for k in range(len(row["route"]["points"])):
                    assert ep.step(expert_answer(row["route"], k, rule, "short")).correct
                assert ep.success


def test_short_style_names_the_instruction_by_number_and_is_shorter(splits, short_splits):
    route = tiny_route()
    obj = json.loads(expert_answer(route, 3, "ood", "short"))
    assert obj == {
        "current observation": route["points"][3]["observation"],
        "current instruction": route["points"][3]["instruction"] + 1,
        "action": "turn_direction(right)",
    }
    for paper, short in zip(splits["sft"], short_splits["sft"]):
        assert short["prompt"] == expert_chat(short["route"], "id", short["step_index"], style="short")
        chars = [sum(len(str(m["content"])) for m in r["prompt"] + r["completion"]) for r in (paper, short)]
        assert chars[1] < chars[0]


def test_short_style_is_for_text_turns_only():
    from sftvsrl.tasks.virl_vl import ImageTurns

    with pytest.raises(ValueError, match="text observations only"):
        expert_chat(tiny_route(), "id", 0, ImageTurns, style="short")
    with pytest.raises(ValueError, match="unknown prompt style"):
        expert_chat(tiny_route(), "id", 0, style="tiny")
