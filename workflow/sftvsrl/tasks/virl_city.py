"""V-IRL's routes: procedural cities, the routes drawn in them, and the rail and instruction of a route.

A route is a start point, a chain of intersections and a destination, held in the shape of the
paper's `route_infos.json` (virl_official.py); the procedural cities below write their routes in
that shape and `build_route` reads both the same way. The agent walks a "rail" of points: the
start, "move forward" points, the intersections and the destination. `RoutePools` says where each
split's routes come from. Pure standard library.

Details (the rail): docs/code-notes.md#workflowsftvsrltasksvirl_citypy
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .answers import derive_seed
from .virl_official import (
    EARTH_RADIUS_M,
    milestone_block_text,
    place_name,
    read_route_infos,
    route_legs,
    stop_geocodes,
)

FORWARD = "forward()"
STOP = "stop()"
NO_LANDMARKS = "No landmarks nearby."
SEE_INTERSECTION = "You observe an intersection."

LANDMARKS_FILE = Path(__file__).parent / "data" / "landmarks.txt"
METRES_PER_DEGREE = EARTH_RADIUS_M * math.pi / 180  # procedural positions become geocodes near (0, 0)


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


class RoutePools:
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
