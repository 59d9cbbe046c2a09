"""V-IRL navigation, text variant (task "virl_l").

A route is a start point, a chain of intersections and a destination, held in the shape of the
paper's `route_infos.json` (virl_official.py); the procedural cities below write their routes in
that shape and `build_route` reads both the same way. The agent walks a "rail" of points: the
start, "move forward" points, the intersections and the destination.

Rule "id" uses absolute turns, `turn_direction(<compass point>)`; rule "ood" uses
relative turns, `turn_direction(<left|right|slightly left|slightly right>)`. The rule
reaches the model only through the action space stated in the prompt.

Before editing: SFT rows are the RL/evaluation chat cut at one point, with the expert's answers
as history, so SFT and RL/evaluation see identical contexts. Pure standard library: no torch,
no numpy.

Details (the rail, the chat shape): docs/code-notes.md#workflowsftvsrltasksvirlpy
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import random
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from ..config import section_with_defaults
from .answers import derive_seed, parse_objects
from .base import Attempt, EpisodeRatio
from .virl_official import (
    COMPASS,
    EARTH_RADIUS_M,
    milestone_block_text,
    place_name,
    read_route_infos,
    route_legs,
    stop_geocodes,
)

TASK_NAME = "virl_l"
SECTION = "virl"  # its config section
GENERATOR_VERSION = "virl-gen-2"  # 2: landmarks at the end of each leg, as the reference reads a block
SPLITS = ("sft", "rl", "eval_id", "eval_ood_rule")
SPLIT_RULE = {"sft": "id", "rl": "id", "eval_id": "id", "eval_ood_rule": "ood"}

RELATIVE = ("left", "right", "slightly left", "slightly right")
FORWARD = "forward()"
STOP = "stop()"
NO_LANDMARKS = "No landmarks nearby."
SEE_INTERSECTION = "You observe an intersection."

REWARD_CORRECT = 1.0
REWARD_WRONG = -1.0
REWARD_HALLUCINATION = -1.5  # a wrong action whose observation gets the intersection wrong, either way
FAIL_PREFIX = "You failed this trial because"
# the reference's reasons for a wrong attempt (LeslieTrue/SFTvsRL), in the order it checks them
REASON_NOT_AT_INTERSECTION = "you are not at any intersection"
REASON_AT_INTERSECTION = "you are at an intersection"
REASON_INCORRECT_ACTION = "you make incorrect action"
REASON_FORMAT = 'your answer is not JSON with an "action" key'  # ours (docs/fidelity.md)

LANDMARKS_FILE = Path(__file__).parent / "data" / "landmarks.txt"
METRES_PER_DEGREE = EARTH_RADIUS_M * math.pi / 180  # procedural positions become geocodes near (0, 0)

# The config section "virl" (defaults in workflow/schemas/config.schema.yaml): routes (path to an
# official route_infos.json; null: procedural cities), min/max_intersections, cities {train, eval},
# same_cities (evaluate on the training cities, new routes), sizes {split: rows}, grid (intersections
# per city, east x north), block_m (range of a city's block length), street_removal (share of grid
# streets removed, connectivity kept), forward_step_m (a leg of length L gets ceil(L / step) - 1
# forward points), max_forward_per_leg (cap, so long official legs keep the chat short),
# eval_fraction (official routes only: share held out for evaluation), official_quirks (true: the
# reference's unwrapped heading difference when naming relative turns).


# ---------------------------------------------------------------- headings


def wrap_degrees(d: float) -> float:
    """Wrap an angle difference into [-180, 180)."""
    return (d + 180.0) % 360.0 - 180.0


def relative_turn(from_heading: float, to_heading: float, wrap: bool = True) -> str:
    """Relative word for turning from one heading to another (the OOD rule).

    d < -45 left, d > 45 right, -45 <= d <= 0 slightly left, 0 < d <= 45 slightly right,
    with d wrapped into [-180, 180) so that 350 -> 10 is a slight right turn. `wrap=False`
    is the reference's plain difference (350 -> 10 is d = -340, "left").
    """
    d = to_heading - from_heading
    if wrap:
        d = wrap_degrees(d)
    if d < -45:
        return "left"
    if d > 45:
        return "right"
    return "slightly left" if d <= 0 else "slightly right"


def bearing(p: list[float], q: list[float]) -> float:
    """Heading from p to q in degrees; x east, y north."""
    return math.degrees(math.atan2(q[0] - p[0], q[1] - p[1])) % 360.0


def side_of(heading: float, at: list[float], target: list[float]) -> str:
    """'left' or 'right': where `target` lies for someone at `at` facing `heading`."""
    return "right" if wrap_degrees(bearing(at, target) - heading) > 0 else "left"


# ---------------------------------------------------------------- names


def load_landmark_names(path: Path = LANDMARKS_FILE) -> list[str]:
    """The bundled place names, in file order (comments and blanks skipped)."""
    lines = (line.strip() for line in path.read_text(encoding="utf-8").splitlines())
    return [line for line in lines if line and not line.startswith("#")]


# ---------------------------------------------------------------- city


@dataclass
class City:
    """Street graph (nodes in metres) with named landmarks at nodes and along streets."""

    name: str
    nodes: list[list[float]]
    adjacency: dict[int, list[int]]
    node_landmarks: dict[int, list[dict[str, Any]]]  # node -> [{"name", "xy"}]
    street_landmarks: dict[tuple[int, int], dict[str, Any]]  # (a<b) -> {"name", "xy", "anchor"}


def _adjacency(n: int, edges: Iterable[tuple[int, int]]) -> dict[int, list[int]]:
    """Each of the `n` nodes' neighbours, in the order of `edges`."""
    adj: dict[int, list[int]] = {i: [] for i in range(n)}
    for a, b in edges:
        adj[a].append(b)
        adj[b].append(a)
    return adj


def _connected(n: int, edges: set[tuple[int, int]]) -> bool:
    adj = _adjacency(n, edges)
    seen, todo = {0}, [0]
    while todo:
        for v in adj[todo.pop()]:
            if v not in seen:
                seen.add(v)
                todo.append(v)
    return len(seen) == n


def _offset(p: list[float], heading: float, dist: float) -> list[float]:
    rad = math.radians(heading)
    return [round(p[0] + dist * math.sin(rad), 1), round(p[1] + dist * math.cos(rad), 1)]


def _jittered_nodes(rng: random.Random, grid: tuple[int, int], block_m: tuple[float, float]) -> list[list[float]]:
    """The grid's intersections (row by row), one random block length apart, each moved a little at random."""
    nx, ny = grid
    block = rng.uniform(*block_m)
    jitter = 0.15 * block  # small enough that streets keep roughly their grid direction
    return [
        [round(i * block + rng.uniform(-jitter, jitter), 1), round(j * block + rng.uniform(-jitter, jitter), 1)]
        for j in range(ny)
        for i in range(nx)
    ]


def _grid_streets(nx: int, ny: int) -> set[tuple[int, int]]:
    """Every street of the full grid, as (a, b) with a < b."""
    edges = {(j * nx + i, j * nx + i + 1) for j in range(ny) for i in range(nx - 1)}
    edges |= {(j * nx + i, (j + 1) * nx + i) for j in range(ny - 1) for i in range(nx)}
    return edges


def _remove_streets(rng: random.Random, edges: set[tuple[int, int]], n_nodes: int, removal: float) -> None:
    """Remove (in place) a share `removal` of the streets, tried in random order; a street whose loss
    would cut the city in two stays."""
    candidates = sorted(edges)
    rng.shuffle(candidates)
    to_remove = round(removal * len(candidates))
    for e in candidates:
        if to_remove <= 0:
            break
        if _connected(n_nodes, edges - {e}):
            edges.discard(e)
            to_remove -= 1


def _draw_names(rng: random.Random, city: str, names: list[str] | None, needed: int) -> Iterator[str]:
    """`needed` distinct landmark names from `names` (default: the bundled list), in random order."""
    pool = names if names is not None else load_landmark_names()
    if needed > len(pool):
        raise ValueError(f"city {city} needs {needed} landmark names, the list has {len(pool)}: use a smaller grid")
    return iter(rng.sample(pool, needed))


def _corner_landmarks(
    rng: random.Random, nodes: list[list[float]], per_node: list[int], drawn: Iterator[str]
) -> dict[int, list[dict[str, Any]]]:
    """`per_node[i]` landmarks at distinct corners of node i."""
    node_landmarks: dict[int, list[dict[str, Any]]] = {}
    for i, k in enumerate(per_node):
        # Corner landmarks sit diagonally off the crossing, so they are clearly left or
        # right of anyone arriving along a street.
        corners = rng.sample([45, 135, 225, 315], k)
        node_landmarks[i] = [
            {"name": next(drawn), "xy": _offset(nodes[i], c + rng.uniform(-10, 10), rng.uniform(12, 25))}
            for c in corners
        ]
    return node_landmarks


def _street_landmarks(
    rng: random.Random, nodes: list[list[float]], streets: list[tuple[int, int]], drawn: Iterator[str]
) -> dict[tuple[int, int], dict[str, Any]]:
    """One landmark beside each of `streets`, somewhere near its middle."""
    street_landmarks: dict[tuple[int, int], dict[str, Any]] = {}
    for a, b in streets:
        t = rng.uniform(0.35, 0.65)
        pa, pb = nodes[a], nodes[b]
        anchor = [round(pa[0] + t * (pb[0] - pa[0]), 1), round(pa[1] + t * (pb[1] - pa[1]), 1)]
        side = rng.choice([90, -90])  # which side of the street the building stands on
        street_landmarks[(a, b)] = {
            "name": next(drawn),
            "anchor": anchor,
            "xy": _offset(anchor, bearing(pa, pb) + side, 15),
        }
    return street_landmarks


def generate_city(
    name: str,
    seed: int,
    grid: tuple[int, int] = (6, 6),
    block_m: tuple[float, float] = (80, 140),
    removal: float = 0.15,
    names: list[str] | None = None,
) -> City:
    """A jittered grid with some streets removed and landmarks from the bundled list."""
    # One generator for the whole city, drawn from in a fixed order: a seed always gives the same city.
    rng = random.Random(seed)
    nodes = _jittered_nodes(rng, grid, block_m)
    edges = _grid_streets(*grid)
    _remove_streets(rng, edges, len(nodes), removal)
    adjacency = _adjacency(len(nodes), sorted(edges))

    # Decide how many landmarks go where, then draw that many distinct names.
    per_node = [rng.randint(1, 2) for _ in nodes]
    streets = [e for e in sorted(edges) if rng.random() < 0.5]
    drawn = _draw_names(rng, name, names, sum(per_node) + len(streets))
    node_landmarks = _corner_landmarks(rng, nodes, per_node, drawn)
    street_landmarks = _street_landmarks(rng, nodes, streets, drawn)
    return City(name, nodes, adjacency, node_landmarks, street_landmarks)


def _street(a: int, b: int) -> tuple[int, int]:
    return (a, b) if a < b else (b, a)


def _geocode(xy: list[float]) -> list[float]:
    """A city position in metres (x east, y north) as [lat, lng] near (0, 0)."""
    return [round(xy[1] / METRES_PER_DEGREE, 7), round(xy[0] / METRES_PER_DEGREE, 7)]


def _heading_ok(city: City, heading: float, a: int, b: int) -> bool:
    """No U-turns: the next street leaves within 135 degrees of the current heading."""
    return abs(wrap_degrees(bearing(city.nodes[a], city.nodes[b]) - heading)) <= 135


def _random_walk(city: City, rng: random.Random, n_intersections: int) -> tuple[list[int], tuple, tuple] | None:
    """Self-avoiding walk between two street landmarks: (intersections, start street, final street)."""
    a, b = rng.choice(sorted(city.street_landmarks))
    if rng.random() < 0.5:
        a, b = b, a
    path, visited = [b], {a, b}
    heading = bearing(city.street_landmarks[_street(a, b)]["anchor"], city.nodes[b])
    for _ in range(n_intersections - 1):
        options = [v for v in city.adjacency[path[-1]] if v not in visited and _heading_ok(city, heading, path[-1], v)]
        if not options:
            return None
        v = rng.choice(options)
        heading = bearing(city.nodes[path[-1]], city.nodes[v])
        path.append(v)
        visited.add(v)
    cur = path[-1]
    finals = [
        v
        for v in city.adjacency[cur]
        if v not in visited and _street(cur, v) in city.street_landmarks and _heading_ok(city, heading, cur, v)
    ]
    if not finals:
        return None
    return path, _street(a, b), _street(cur, rng.choice(finals))


def sample_route_info(city: City, rng: random.Random, n_intersections: int) -> dict[str, Any] | None:
    """A random route in the official shape (`route_infos.json`), or None when the walk got stuck.

    Start and destination are street landmarks. Milestone block i is leg i: the heading of the
    street walked, and the landmarks seen at the leg's end (facing along it), as V-IRL writes them.
    """
    walk = _random_walk(city, rng, n_intersections)
    if walk is None:
        return None
    path, start_street, dest_street = walk
    start, dest = city.street_landmarks[start_street], city.street_landmarks[dest_street]
    xy = [start["anchor"], *(city.nodes[v] for v in path), dest["anchor"]]
    seen_at_end = [city.node_landmarks[v] for v in path] + [[dest]]
    init_heading = rng.randrange(1, 360)  # not 0: the reference reads init_heading 0 as "draw one"
    facing, blocks = init_heading, []
    for i, (p, q) in enumerate(itertools.pairwise(xy)):
        heading = round(bearing(p, q)) % 360
        marks = ", ".join(f"{m['name']} is on your {side_of(heading, q, m['xy'])}" for m in seen_at_end[i])
        blocks.append(milestone_block_text(i + 1, marks, math.dist(p, q), facing, heading))
        facing = heading
    seen = [m for marks in seen_at_end for m in marks]
    return {
        "start_place": {"name": start["name"], "geocode": _geocode(start["xy"]), "relocated_geocode": _geocode(xy[0])},
        "dest_place": {"name": dest["name"], "geocode": _geocode(dest["xy"])},
        "init_heading": init_heading,
        "route_results": {
            "landmark_list": [{"name": m["name"], "geocode": _geocode(m["xy"])} for m in seen],
            "geocode_list": [_geocode(p) for p in xy[1:]],
        },
        "milestone_info": "\n".join(blocks),
    }


# ---------------------------------------------------------------- route (rail + instruction)


def forward_points(length_m: float, step_m: float, cap: int | None = None) -> int:
    """Forward points on a leg: one per `step_m` beyond the first, at most `cap`."""
    if not step_m or step_m <= 0 or length_m <= 0:
        return 0
    n = max(0, math.ceil(length_m / step_m) - 1)
    return n if cap is None else min(n, int(cap))


def instruction_sentences(legs: list[dict[str, Any]], turns: list[str]) -> list[str]:
    """Two sentences per leg, as the reference words them: the turn, then where the leg ends."""
    last = len(legs) - 1
    sentences = []
    for i, (leg, turn) in enumerate(zip(legs, turns)):
        opening = "First, turn" if i == 0 and i != last else "Turn"  # the reference's wording
        sentences.append(f"{opening} {turn} to face {leg['direction']}.")
        target = "destination" if i == last else "next intersection"
        where = f" where {leg['landmarks']}" if leg["landmarks"] else ""
        sentences.append(f"Move forward until you reach {target}{where}.")
    return sentences


def _observation(landmarks: str, at_intersection: bool) -> str:
    text = f"{landmarks}." if landmarks else NO_LANDMARKS
    return f"{text} {SEE_INTERSECTION}" if at_intersection else text


def _between(p: Any, q: Any, t: float) -> list[float] | None:
    return [round(p[0] + (q[0] - p[0]) * t, 7), round(p[1] + (q[1] - p[1]) * t, 7)] if p and q else None


def _point(kind: str, geocode: Any, heading: int, observation: str, instruction: int, actions: dict) -> dict:
    geocode = list(geocode) if geocode else None
    return {
        "kind": kind,
        "geocode": geocode,
        "heading": heading,
        "observation": observation,
        "instruction": instruction,
        "actions": actions,
    }


def rail_points(
    legs: list[dict[str, Any]], turns: list[str], init_heading: int, geocodes: list, cfg: dict[str, Any]
) -> list[dict[str, Any]]:
    """The reference's rail: start, forward points, stop k (k >= 1) at the end of leg k - 1.

    Stop k shows leg k - 1's landmarks (plus the intersection, except at the destination) and
    asks for the turn onto leg k; the destination asks for stop(). Sentence 2k is leg k's turn,
    2k + 1 its "move forward", which the forward points and the destination share.
    """

    def turn_onto(k: int) -> dict[str, str]:
        return {"id": f"turn_direction({legs[k]['direction']})", "ood": f"turn_direction({turns[k]})"}

    points = [_point("start", geocodes[0], init_heading, NO_LANDMARKS, 0, turn_onto(0))]
    for k, leg in enumerate(legs, start=1):
        n = forward_points(leg["length_m"], cfg["forward_step_m"], cfg["max_forward_per_leg"])
        for j in range(1, n + 1):
            between = _between(geocodes[k - 1], geocodes[k], j / (n + 1))
            points.append(
                _point("forward", between, leg["heading"], NO_LANDMARKS, 2 * k - 1, {"id": FORWARD, "ood": FORWARD})
            )
        if k < len(legs):
            seen = _observation(leg["landmarks"], at_intersection=True)
            points.append(_point("intersection", geocodes[k], leg["heading"], seen, 2 * k, turn_onto(k)))
        else:
            seen = _observation(leg["landmarks"], at_intersection=False)
            points.append(
                _point("destination", geocodes[k], leg["heading"], seen, 2 * k - 1, {"id": STOP, "ood": STOP})
            )
    return points


def build_route(info: dict[str, Any], cfg: dict[str, Any], route_id: str, city: str) -> dict[str, Any]:
    """The instruction and the rail of one route in the official shape, with `init_heading` set.

    `cfg` is the "virl" section (forward_step_m, max_forward_per_leg, official_quirks).
    """
    legs = route_legs(info)
    init = int(info["init_heading"])
    wrap = not cfg["official_quirks"]
    faced = [init] + [leg["heading"] for leg in legs]  # heading before each leg
    turns = [relative_turn(before, leg["heading"], wrap) for before, leg in zip(faced, legs)]
    return {
        "id": route_id,
        "city": city,
        "start_place": place_name(info.get("start_place")),
        "dest_place": place_name(info.get("dest_place")),
        "init_heading": init,
        "legs": [{k: leg[k] for k in ("heading", "direction", "landmarks", "length_m")} for leg in legs],
        "instruction": instruction_sentences(legs, turns),
        "points": rail_points(legs, turns, init, stop_geocodes(info, len(legs)), cfg),
    }


def load_official_routes(path: str | Path, cfg: dict[str, Any], seed: int) -> list[dict[str, Any]]:
    """Every route of a route_infos.json, in file order, built as the reference reads it."""
    return [build_route(info, cfg, f"official-{i}", "official") for i, info in enumerate(read_route_infos(path, seed))]


def count_intersections(route: dict[str, Any]) -> int:
    return sum(p["kind"] == "intersection" for p in route["points"])


# ---------------------------------------------------------------- prompt and expert


def action_space(rule: str) -> list[str]:
    words = COMPASS if rule == "id" else RELATIVE
    return [f"turn_direction({w})" for w in words] + [FORWARD, STOP]


def observation_turn(k: int, observation: str) -> str:
    """The history line awaiting an answer: 'O_k: ...' then 'A_k:' (k is 1-based)."""
    return f"O_{k}: {observation}\nA_{k}:"


PROMPT_STYLES = ("paper", "short")
# The short style's system turn: what every route and both rules share, so the rollout engine reads it
# once for all episodes. The answer names its instruction by number instead of repeating the sentence.
SHORT_SYSTEM = (
    "You walk a route in a city, one point at a time, following the instruction. "
    'Answer each A_k in JSON: {"current observation": "...", "current instruction": <its number>, "action": "..."}'
)


def instruction_prompt(route: dict[str, Any], rule: str) -> str:
    """The first user turn without its observation line: instruction, action space, answer format."""
    words = COMPASS if rule == "id" else RELATIVE
    lines = ["You are walking in a city. Follow the route instruction.", "Instruction:"]
    lines += [f"{i}. {s}" for i, s in enumerate(route["instruction"], start=1)]
    lines.append(f"Action space: turn_direction(x) with x in {', '.join(words)}; {FORWARD}; {STOP}.")
    lines.append(
        'Answer each A_k in JSON: {"current observation": "...", "current instruction": "...", "action": "..."}'
    )
    return "\n".join(lines)


def short_instruction_prompt(route: dict[str, Any], rule: str) -> str:
    """The short style's first user turn without its observation line: the instruction and the action space."""
    words = COMPASS if rule == "id" else RELATIVE
    lines = ["Instruction:"] + [f"{i}. {s}" for i, s in enumerate(route["instruction"], start=1)]
    lines.append(f"Actions: turn_direction(x) with x in {', '.join(words)}; {FORWARD}; {STOP}.")
    return "\n".join(lines)


def first_prompt(route: dict[str, Any], rule: str, style: str = "paper") -> str:
    lead = short_instruction_prompt(route, rule) if style == "short" else instruction_prompt(route, rule)
    return f"{lead}\n{observation_turn(1, route['points'][0]['observation'])}"


def expert_answer(route: dict[str, Any], index: int, rule: str, style: str = "paper") -> str:
    """The optimal answer at point `index` (0-based), as valid JSON (the short style numbers the instruction)."""
    point = route["points"][index]
    instruction = point["instruction"] + 1 if style == "short" else route["instruction"][point["instruction"]]
    return json.dumps(
        {
            "current observation": point["observation"],
            "current instruction": instruction,
            "action": point["actions"][rule],
        }
    )


def expert_chat(
    route: dict[str, Any], rule: str, index: int, turns: type[TextTurns] | None = None, style: str = "paper"
) -> list[dict]:
    """The chat awaiting the answer at point `index`, with the expert's answers as history.

    `turns` words the user turns (default: the text variant's, `TextTurns`). style "paper": the
    paper's prompt in one user turn; "short" (text only): the shared part in a system turn, the
    route's instruction and the rule's action space in the user turn, instructions named by number.
    """
    if style not in PROMPT_STYLES:
        raise ValueError(f"unknown prompt style {style!r}; expected one of {PROMPT_STYLES}")
    turns = turns or TextTurns
    if style == "short":
        if turns is not TextTurns:
            raise ValueError("the short prompt style is for text observations only")
        messages = [
            {"role": "system", "content": SHORT_SYSTEM},
            {"role": "user", "content": first_prompt(route, rule, style)},
        ]
    else:
        messages = [{"role": "user", "content": turns.opening(route, rule)}]
    for i in range(index):
        messages.append({"role": "assistant", "content": expert_answer(route, i, rule, style)})
        messages.append({"role": "user", "content": turns.observation(i + 2, route["points"][i + 1])})
    return messages


# ---------------------------------------------------------------- parsing answers


def _normalise_keys(obj: dict[str, Any]) -> dict[str, str]:
    """Keys lower-cased with runs of spaces and "_" made one space; values as text (JSON for non-strings)."""
    out = {}
    for k, v in obj.items():
        key = re.sub(r"[\s_]+", " ", k).strip().lower()
        out[key] = v if isinstance(v, str) else json.dumps(v)
    return out


def parse_answer(text: Any) -> dict[str, str] | None:
    """The fields of the answer's first object that has an "action", or None if none has.

    The answer is read by `answers.parse_objects`, which tolerates code fences, prose
    around the object, single quotes, unquoted keys and values, trailing commas and
    truncation, and never evaluates the text.
    """
    for obj in parse_objects(text):
        fields = _normalise_keys(obj)
        if "action" in fields:
            return fields
    return None


def normalise_action(action: str) -> str:
    """Case and whitespace normalisation: ' Turn_Direction( North ) ' -> 'turn_direction(north)'."""
    s = re.sub(r"\s+", " ", action.strip().strip("`").strip().lower())
    s = re.sub(r"\s*([(),])\s*", r"\1", s)
    return s.rstrip(".")


def claims_intersection(observation: str) -> bool:
    """Does an answer's observation say an intersection is seen (negations excluded)?"""
    text = observation.lower()
    if "intersection" not in text:
        return False
    return not re.search(r"\b(no|not|without|don't|do not)\b[^.;]*\bintersection", text)


_ABSOLUTE_TURN = {f"turn_direction({w})" for w in COMPASS}


def judge(answer: str, point: dict[str, Any], rule: str) -> tuple[str, float, str, dict[str, Any]]:
    """Score one answer at one point: (outcome, reward, reason for feedback, info), in the reference's order.

    Unparseable: -1. Then the action first: the right one scores +1 whatever the answer's observation
    says. A wrong action is checked against the observation in both directions: an intersection claimed
    where there is none, or not claimed where there is one, scores -1.5; otherwise -1 (an action outside
    the action space included).
    """
    fields = parse_answer(answer)
    expected = point["actions"][rule]
    info: dict[str, Any] = {
        "parsed": fields is not None,
        "action": None,
        "expected": expected,
        "intersection_hallucination": False,
        "missed_intersection": False,
        "in_action_space": False,
        "absolute_turn": False,
        "turn_point": point["kind"] in ("start", "intersection"),
    }
    if fields is None:
        return "format_error", REWARD_WRONG, REASON_FORMAT, info
    action = normalise_action(fields["action"])
    info["action"] = action
    info["in_action_space"] = action in action_space(rule)
    info["absolute_turn"] = action in _ABSOLUTE_TURN
    if action == expected:
        return "correct", REWARD_CORRECT, "", info
    at_intersection = point["kind"] == "intersection"
    claimed = claims_intersection(fields.get("current observation", ""))
    if claimed and not at_intersection:
        info["intersection_hallucination"] = True
        return "intersection_hallucination", REWARD_HALLUCINATION, REASON_NOT_AT_INTERSECTION, info
    if at_intersection and not claimed:
        info["missed_intersection"] = True
        return "missed_intersection", REWARD_HALLUCINATION, REASON_AT_INTERSECTION, info
    return (
        ("wrong_action" if info["in_action_space"] else "invalid_action"),
        REWARD_WRONG,
        REASON_INCORRECT_ACTION,
        info,
    )


def feedback_text(reason: str, k: int, observation: str) -> str:
    """The user turn after a wrong attempt; it repeats the point so the model retries it."""
    return f"{FAIL_PREFIX} {reason}. Try again.\n{observation_turn(k, observation)}"


class TextTurns:
    """How the user turns of a route's chat read: the text variant. The image variant (virl_vl.py)
    swaps in its own class with the same three methods; the episode and the expert chat take either."""

    @staticmethod
    def opening(route: dict[str, Any], rule: str) -> Any:
        """The first user turn's content."""
        return first_prompt(route, rule)

    @staticmethod
    def observation(k: int, point: dict[str, Any]) -> Any:
        """The content of the user turn showing point `point` as observation k (1-based)."""
        return observation_turn(k, point["observation"])

    @staticmethod
    def feedback(reason: str, k: int, point: dict[str, Any]) -> str:
        """The user turn after a wrong attempt at observation k."""
        return feedback_text(reason, k, point["observation"])


# ---------------------------------------------------------------- episode


class VirlEpisode:
    """One route as one growing chat; VIter attempts per point."""

    turns: type[TextTurns] = TextTurns  # the wording of the user turns (the image variant swaps it)

    def __init__(
        self,
        route: dict[str, Any],
        rule: str = "id",
        viter: int = 2,
        messages: list[dict[str, Any]] | None = None,
        start_index: int = 0,
    ):
        if rule not in ("id", "ood"):
            raise ValueError(f"unknown rule {rule!r}")
        self.route, self.rule, self.viter = route, rule, max(1, int(viter))
        self.index = start_index  # the point awaiting an answer (0-based)
        self.messages = (
            copy.deepcopy(messages) if messages is not None else expert_chat(route, rule, start_index, self.turns)
        )
        self.attempts: list[Attempt] = []
        self.done = False
        self.success = False
        self._tries_here = 0

    @property
    def point(self) -> dict[str, Any]:
        return self.route["points"][self.index]

    def step(self, answer: str) -> Attempt:
        if self.done:
            raise RuntimeError("step() on a finished episode")
        outcome, reward, reason, info = judge(answer, self.point, self.rule)
        info["step_index"] = self.index
        self.messages.append({"role": "assistant", "content": answer})
        feedback = ""
        if outcome == "correct":
            self._tries_here = 0
            if self.index == len(self.route["points"]) - 1:
                self.done = self.success = True
            else:
                self.index += 1
                self.messages.append({"role": "user", "content": self.turns.observation(self.index + 1, self.point)})
        else:
            self._tries_here += 1
            if self._tries_here >= self.viter:
                self.done = True  # VIter spent at this point: the route fails
            else:
                feedback = self.turns.feedback(reason, self.index + 1, self.point)
                self.messages.append({"role": "user", "content": feedback})
        attempt = Attempt(
            answer=answer, reward=reward, correct=outcome == "correct", outcome=outcome, feedback=feedback, info=info
        )
        self.attempts.append(attempt)
        return attempt

    def metrics(self) -> dict[str, float]:
        n = len(self.attempts)
        correct = sum(a.correct for a in self.attempts)
        return {
            "success": float(self.success),
            "attempts": float(n),
            "correct_actions": float(correct),
            "per_step_accuracy": correct / n if n else 0.0,
            "return": float(sum(a.reward for a in self.attempts)),
            "points": float(len(self.route["points"])),
            "points_completed": float(correct),
            "format_errors": float(sum(not a.info.get("parsed", False) for a in self.attempts)),
            "intersection_hallucinations": float(
                sum(a.info.get("intersection_hallucination", False) for a in self.attempts)
            ),
            "missed_intersections": float(sum(a.info.get("missed_intersection", False) for a in self.attempts)),
            "turn_attempts": float(sum(a.info.get("turn_point", False) for a in self.attempts)),
            "absolute_turns": float(
                sum(a.info.get("turn_point", False) and a.info.get("absolute_turn", False) for a in self.attempts)
            ),
        }


# ---------------------------------------------------------------- splits


def _with_defaults(cfg: dict[str, Any] | None, section: str = SECTION) -> dict[str, Any]:
    """The task's config section completed by the schema's defaults (callers may pass a bare section)."""
    return section_with_defaults(section, cfg)


class _RoutePools:
    """Where each split's routes come from: procedural cities or official routes."""

    def __init__(self, cfg: dict[str, Any], seed: int):
        self.cfg, self.seed = cfg, seed
        self.official: dict[str, list[dict[str, Any]]] | None = None
        if cfg["routes"]:
            self._load_official(cfg["routes"])
        else:
            self.cities = {"train": self._cities("train", cfg["cities"]["train"])}
            self.cities["eval"] = (
                self.cities["train"] if cfg["same_cities"] else self._cities("eval", cfg["cities"]["eval"])
            )

    def _cities(self, group: str, n: int) -> list[City]:
        c = self.cfg
        return [
            generate_city(
                f"{group}-{i}",
                derive_seed(self.seed, "city", group, i),
                tuple(c["grid"]),
                tuple(c["block_m"]),
                c["street_removal"],
            )
            for i in range(max(1, int(n)))
        ]

    def _load_official(self, path: str) -> None:
        routes = load_official_routes(path, self.cfg, self.seed)
        random.Random(derive_seed(self.seed, "official-split")).shuffle(routes)
        n_eval = 0 if len(routes) < 2 else min(len(routes) - 1, max(1, round(self.cfg["eval_fraction"] * len(routes))))
        self.official = {"eval": routes[:n_eval] or routes, "train": routes[n_eval:]}

    def size(self, group: str, requested: int | None) -> int:
        if requested is not None:
            return int(requested)
        if self.official is None:
            raise ValueError("sizes must be given for procedural cities")
        return len(self.official[group])

    def route(self, stream: str, group: str, i: int) -> dict[str, Any]:
        """Route i of a stream ("sft", "rl" or "eval") from the train or eval group."""
        if self.official is not None:
            pool = self.official[group]
            return pool[i % len(pool)]
        rng = random.Random(derive_seed(self.seed, "route", stream, i))
        cities = self.cities[group]
        city = cities[rng.randrange(len(cities))]
        lo, hi = int(self.cfg["min_intersections"]), int(self.cfg["max_intersections"])
        n = rng.randint(lo, hi)  # drawn once: retrying with a fresh n would favour short routes
        for _ in range(500):
            info = sample_route_info(city, rng, n)
            if info is not None:
                return build_route(info, self.cfg, f"{city.name}-{stream}-{i}", city.name)
        raise RuntimeError(f"no route with {n} intersections in city {city.name}; enlarge the grid")


class VirlTask:
    """Task "virl_l": V-IRL navigation with text observations."""

    name = TASK_NAME
    section = SECTION
    splits = SPLITS
    label = "V-IRL-L"
    primary_metric = "per_step_accuracy"
    visual_metric_title = None
    visual_ood_look = None
    # per-step accuracy over a route's attempts; absolute turns where relative ones are asked (the training rule,
    # against rule-OOD accuracy) over the attempts at turn points
    episode_ratios: ClassVar[dict[str, EpisodeRatio]] = {
        "per_step_accuracy": EpisodeRatio(counts=("correct_actions", "attempts")),
        "absolute_turn_rate": EpisodeRatio(counts=("absolute_turns", "turn_attempts")),
    }
    rule_ood_diagnostics: ClassVar[dict[str, int]] = {"absolute_turn_rate": -1}

    def resampling_unit(self, row: dict[str, Any]) -> None:
        return None  # every route is its own unit

    # What the image variant (virl_vl.py) changes by subclassing: row wording and versions, and
    # the whole-route splits as (split, route stream, city group).
    generator_version = GENERATOR_VERSION
    split_rule = SPLIT_RULE
    turns: type[TextTurns] = TextTurns
    route_splits = (("rl", "rl", "train"), ("eval_id", "eval", "eval"), ("eval_ood_rule", "eval", "eval"))

    def title(self, cfg: dict[str, Any]) -> str:
        return f"V-IRL navigation, {'image' if self.visual_metric_title else 'text'} ({self.label})"

    def check_config(self, cfg: dict[str, Any], seed: int) -> None:
        cfg = _with_defaults(cfg, self.section)
        if cfg["min_intersections"] > cfg["max_intersections"]:
            section = self.section
            raise ValueError(f"{section}.min_intersections exceeds {section}.max_intersections")

    def _pools(self, cfg: dict[str, Any], seed: int) -> _RoutePools:
        return _RoutePools(cfg, seed)

    def generate_splits(self, cfg: dict[str, Any], seed: int) -> dict[str, list[dict[str, Any]]]:
        """All rows, deterministic in (cfg, seed).

        sft: one row per (route, point), sizes["sft"] rows. rl: whole routes from the
        training cities. eval_id / eval_ood_rule: the same routes from the eval cities
        under the two rules, so the pair isolates the rule change.
        """
        c = _with_defaults(cfg, self.section)
        pools = self._pools(c, seed)
        sizes = c["sizes"]
        style = c.get("prompt", "paper")
        out: dict[str, list[dict[str, Any]]] = {"sft": self._sft_rows(pools, sizes.get("sft"), seed, style)}
        for split, stream, group in self.route_splits:
            n = pools.size(group, sizes.get(split))
            out[split] = [self._row(split, i, pools.route(stream, group, i), seed, style=style) for i in range(n)]
        return out

    def _row(
        self, split: str, i: int, route: dict[str, Any], seed: int, index: int = 0, style: str = "paper"
    ) -> dict[str, Any]:
        rule = self.split_rule[split]
        return {
            "id": f"{self.name}-{split}-{i:05d}" + (f"-{index:02d}" if split == "sft" else ""),
            "task": self.name,
            "split": split,
            "rule": rule,
            "seed": seed,
            "generator_version": self.generator_version,
            "step_index": index,
            "route": route,
            "prompt": expert_chat(route, rule, index, self.turns, style),
        }

    def _sft_rows(
        self, pools: _RoutePools, requested: int | None, seed: int, style: str = "paper"
    ) -> list[dict[str, Any]]:
        total = None if requested is None else int(requested)
        if total is None:  # official data without a size: every step of every training route
            routes = [pools.route("sft", "train", i) for i in range(pools.size("train", None))]
            total = sum(len(r["points"]) for r in routes)
        rows: list[dict[str, Any]] = []
        i = 0
        while len(rows) < total:
            route = pools.route("sft", "train", i)
            for k in range(len(route["points"])):
                if len(rows) == total:
                    break
                row = self._row("sft", i, route, seed, k, style)
                row["completion"] = [{"role": "assistant", "content": expert_answer(route, k, "id", style)}]
                rows.append(row)
            i += 1
        return rows

    def make_episode(self, row: dict[str, Any], viter: int) -> VirlEpisode:
        return VirlEpisode(
            row["route"],
            row.get("rule", "id"),
            viter,
            messages=row.get("prompt"),
            start_index=int(row.get("step_index", 0)),
        )

    def aggregate(self, episodes: list[Any]) -> dict[str, float]:
        return aggregate_episodes(episodes)


def aggregate_episodes(episodes: list[Any]) -> dict[str, float]:
    """Split-level numbers. Per-step accuracy is pooled over attempts; its standard error
    treats episodes as the independent units (ratio estimator), since attempts within
    one route are correlated."""
    ms = [e.metrics() for e in episodes]
    n = len(ms)
    attempts = [m["attempts"] for m in ms]
    correct = [m["correct_actions"] for m in ms]
    total = sum(attempts)
    acc = sum(correct) / total if total else 0.0
    acc_se = 0.0
    if n > 1 and total:
        resid = sum((c - acc * a) ** 2 for c, a in zip(correct, attempts))
        acc_se = math.sqrt(n / (n - 1) * resid) / total
    p = sum(m["success"] for m in ms) / n if n else 0.0
    p_se = math.sqrt(p * (1 - p) / n) if n else 0.0
    turns = sum(m["turn_attempts"] for m in ms)
    return {
        "episodes": float(n),
        "per_step_accuracy": acc,
        "per_step_accuracy_se": acc_se,
        "route_success_rate": p,
        "route_success_rate_se": p_se,
        "success_rate": p,
        "success_rate_se": p_se,
        "mean_attempts": total / n if n else 0.0,
        "mean_return": sum(m["return"] for m in ms) / n if n else 0.0,
        "format_error_rate": sum(m["format_errors"] for m in ms) / total if total else 0.0,
        "intersection_hallucination_rate": (
            sum(m["intersection_hallucinations"] for m in ms) / total if total else 0.0
        ),
        "missed_intersection_rate": sum(m.get("missed_intersections", 0.0) for m in ms) / total if total else 0.0,
        # On the OOD split this is rule memorisation: absolute turns where relative ones are asked.
        "absolute_turn_rate": sum(m["absolute_turns"] for m in ms) / turns if turns else 0.0,
    }
