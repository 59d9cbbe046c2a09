"""Routes in the shape of the paper's V-IRL `route_infos.json`, read as the reference environment reads them.

Used directly when `virl.routes` is a path; the procedural cities (virl_city.py) write their routes in
the same shape, so one builder (`virl_city.build_route`) turns both into an instruction and a rail.

Before editing: we follow the reference's reading. Block i of `milestone_info` is leg i of the
walk: its heading is the turn made at the leg's start, its landmarks are what is seen at the leg's
END, its `distance` is the leg's length and `geocode_list[i]` the leg's end point.

Details (file layout, milestone blocks, the start heading):
docs/code-notes.md#workflowsftvsrltasksvirl_officialpy
"""

from __future__ import annotations

import json
import math
import random
import re
from pathlib import Path
from typing import Any

from .answers import derive_seed

COMPASS = ("north", "northeast", "east", "southeast", "south", "southwest", "west", "northwest")
NO_LANDMARK = "No landmark nearby"  # what V-IRL writes in a block without landmarks
EARTH_RADIUS_M = 6_371_000

_KEY = re.compile(r"(?:^|[{,\n])\s*[\"']?(\w+)[\"']?\s*:")
_BLOCK = re.compile(r"\{(.*?)\}", re.DOTALL)
_JSON_TYPES = {dict: "object", list: "array", str: "string", int: "number", float: "number", bool: "boolean"}


def compass_name(heading: float) -> str:
    """Nearest of the 8 compass points (0 = north, clockwise)."""
    return COMPASS[int(((heading % 360.0) + 22.5) // 45.0) % 8]


# ---------------------------------------------------------------- milestone blocks


def parse_block(text: str) -> dict[str, str]:
    """`key: value` pairs of one milestone block; a value runs to the next key."""
    keys = list(_KEY.finditer(text))
    out = {}
    for m, nxt in zip(keys, keys[1:] + [None]):
        value = text[m.end() : nxt.start() if nxt else len(text)].strip().rstrip(",").strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        out[m.group(1).lower()] = value.strip()
    return out


def parse_milestones(info: Any) -> list[dict[str, str]]:
    """The milestone blocks, from the text form or an already-decoded list of dicts."""
    if isinstance(info, list):
        return [{str(k).lower(): str(v) for k, v in block.items()} for block in info]
    return [parse_block(b) for b in _BLOCK.findall(str(info))]


def parse_heading(value: str) -> tuple[int, str]:
    """'177 (south)' -> (177, 'south'); a bare number gets its compass name.

    The name in parentheses is the one the reference acts on (`turn_direction(south)`), so it
    must be one of the 8 compass points.
    """
    m = re.fullmatch(r"\s*(-?\d+(?:\.\d+)?)\s*(?:\(\s*([a-z ]+?)\s*\))?\s*", str(value), re.IGNORECASE)
    if not m:
        raise ValueError(f"unreadable heading {value!r}; expected degrees and a compass point, e.g. '177 (south)'")
    degrees = round(float(m.group(1))) % 360
    name = m.group(2).lower() if m.group(2) else compass_name(degrees)
    if name not in COMPASS:
        raise ValueError(f"heading {value!r} names {name!r}, not one of {', '.join(COMPASS)}")
    return degrees, name


def landmark_phrase(text: str | None) -> str:
    """A block's landmarks as a phrase for 'where ...' ('' when the block has none)."""
    text = (text or "").strip().rstrip(".").strip()
    return "" if text.lower().startswith("no landmark") else text


def milestone_block_text(idx: int, landmarks: str, distance_m: float, human_heading: int, heading: int) -> str:
    """One block as V-IRL's template writes it (the procedural cities use it)."""
    return (
        "{\n"
        f'"intersection_idx": "{idx}",\n'
        f'"landmarks": "{landmarks or NO_LANDMARK}",\n'
        f'"distance": "{round(distance_m)} meters",\n'
        f'"human_heading": "{human_heading}",\n'
        f'"to_next_intersection_heading": "{heading} ({compass_name(heading)})",\n'
        "}\n"
    )


# ---------------------------------------------------------------- positions


def _latlng(g: Any) -> tuple[float, float] | None:
    if isinstance(g, dict):
        g = (g.get("lat"), g.get("lng", g.get("lon")))
    try:
        return float(g[0]), float(g[1])
    except (TypeError, ValueError, IndexError, KeyError):
        return None


def haversine_m(a: tuple[float, float], b: tuple[float, float]) -> float:
    lat1, lon1, lat2, lon2 = map(math.radians, (*a, *b))
    h = math.sin((lat2 - lat1) / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(math.sqrt(h))


def _metres(value: str | None) -> float:
    m = re.match(r"\s*(\d+(?:\.\d+)?)", value or "")
    return float(m.group(1)) if m else 0.0


def place_name(place: Any) -> str:
    return str(place.get("name", "")) if isinstance(place, dict) else str(place or "")


def stop_geocodes(info: dict[str, Any], n_legs: int) -> list[tuple[float, float] | None]:
    """Start position, then each leg's end point; None where the file has no usable position."""
    start = info.get("start_place")
    start = (start.get("relocated_geocode") or start.get("geocode")) if isinstance(start, dict) else None
    ends = (info.get("route_results") or {}).get("geocode_list") or []
    ends = [_latlng(g) for g in ends] if len(ends) == n_legs else [None] * n_legs
    return [_latlng(start) if start is not None else None, *ends]


# ---------------------------------------------------------------- one route


def _what(info: Any) -> str:
    """What a route entry holds, for an error message."""
    if isinstance(info, dict):
        return f"an object with keys {', '.join(map(str, info)) or 'none'}"
    return f"a JSON {_JSON_TYPES.get(type(info), type(info).__name__)}"


def route_legs(info: dict[str, Any]) -> list[dict[str, Any]]:
    """One leg per milestone block: heading, direction, landmarks at its end ('' for none), length.

    The length comes from the leg's two geocodes, else from the block's `distance`.
    """
    if "milestone_info" not in (info if isinstance(info, dict) else {}):
        raise ValueError(f"no milestone_info: expected a route object with it, got {_what(info)}")
    blocks = parse_milestones(info["milestone_info"])
    if not blocks:
        raise ValueError("milestone_info holds no {...} block")
    geocodes = stop_geocodes(info, len(blocks))
    legs = []
    for i, block in enumerate(blocks):
        if not block.get("to_next_intersection_heading"):
            raise ValueError(f"milestone block {i} has no to_next_intersection_heading")
        try:
            heading, direction = parse_heading(block["to_next_intersection_heading"])
        except ValueError as err:
            raise ValueError(f"milestone block {i}: {err}") from None
        ends = geocodes[i], geocodes[i + 1]
        length = haversine_m(*ends) if all(ends) else _metres(block.get("distance"))
        legs.append(
            {
                "heading": heading,
                "direction": direction,
                "landmarks": landmark_phrase(block.get("landmarks")),
                "length_m": round(length, 1),
            }
        )
    return legs


def _init_heading(info: dict[str, Any], seed: int, index: int) -> int:
    value = info.get("init_heading")
    if value:
        try:
            return round(float(value)) % 360
        except (TypeError, ValueError):
            raise ValueError(f"init_heading {value!r} is not a number of degrees") from None
    # The reference draws a random heading when init_heading is missing or 0.
    return random.Random(derive_seed(seed, "official-init-heading", index)).randrange(360)


def _route_list(data: Any) -> list[Any]:
    if isinstance(data, list) and len(data) == 2 and isinstance(data[0], list) and isinstance(data[1], int):
        return data[0]  # the reference layout: [routes, count]
    if isinstance(data, list) and data and not isinstance(data[0], list):
        return data
    shape = f"an array of {len(data)}" if isinstance(data, list) else _what(data)
    raise ValueError(f"expected the reference layout [routes, count] or a list of routes, got {shape}")


def read_route_infos(path: str | Path, seed: int) -> list[dict[str, Any]]:
    """The routes of a route_infos.json in file order, each checked, with its initial heading fixed."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except ValueError as err:  # also a file that is not UTF-8 text
        raise ValueError(f"{path}: not a JSON file ({err}); expected the reference layout [routes, count]") from None
    try:
        routes = _route_list(data)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    if not routes:
        raise ValueError(f"{path}: the file holds no routes")
    out = []
    for i, info in enumerate(routes):
        try:
            route_legs(info)
            out.append({**info, "init_heading": _init_heading(info, seed, i)})
        except ValueError as err:
            raise ValueError(f"{path}: route {i}: {err}") from None
    return out
