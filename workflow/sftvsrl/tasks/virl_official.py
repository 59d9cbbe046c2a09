"""Reader for the paper's V-IRL `route_infos.json` (used when `virl.routes` is a path).

The file is a list of routes. Each has `start_place`, `dest_place{name, geocode}`,
`route_results{landmark_list, geocode_list}`, optional `init_heading`, and
`milestone_info`: a text of blocks such as

    {"intersection_idx": "1", "landmarks": "Starbucks is on your right",
     "distance": "72 meters", "human_heading": "90",
     "to_next_intersection_heading": "177 (south)",}

(keys and values may also be unquoted or single-quoted). How we read it, since the file
itself documents nothing:
- block i describes route stop i: block 0 is the start, block i >= 1 intersection i;
  its `landmarks` is what is visible there, its `to_next_intersection_heading` the
  heading of the street leaving it. A final block without that heading is the destination.
- the initial heading is `init_heading`, else block 0's `human_heading`, else the
  first street's heading.
- leg lengths (for the forward points) come from `route_results.geocode_list` when it
  holds one [lat, lng] per stop; otherwise from the blocks' `distance` (distance from
  the previous stop); otherwise a leg has no forward points.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from .virl import build_route, compass_name

_KEY = re.compile(r"(?:^|[{,\n])\s*[\"']?(\w+)[\"']?\s*:")
_BLOCK = re.compile(r"\{(.*?)\}", re.S)
_LANDMARK = re.compile(r"\s*(?:,|;|\band\b)?\s*(.+?)\s+is\s+on\s+your\s+"
                       r"((?:left|right|front|back)(?:\s+(?:front|back|side))?)\b", re.I)


def parse_block(text: str) -> dict[str, str]:
    """`key: value` pairs of one milestone block; a value runs to the next key."""
    keys = list(_KEY.finditer(text))
    out = {}
    for m, nxt in zip(keys, keys[1:] + [None]):
        value = text[m.end():nxt.start() if nxt else len(text)].strip().rstrip(",").strip()
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
    """'177 (south)' -> (177, 'south'); a bare number gets its compass name."""
    m = re.match(r"\s*(-?\d+(?:\.\d+)?)\s*(?:\(\s*([a-z ]+?)\s*\))?", str(value), re.I)
    if not m:
        raise ValueError(f"unreadable heading {value!r}")
    deg = round(float(m.group(1))) % 360
    return deg, (m.group(2).lower() if m.group(2) else compass_name(deg))


def parse_landmarks(text: str | None) -> list[dict[str, str]]:
    """'A is on your left, B is on your right front' -> [{name, side}, ...]; [] for none."""
    text = (text or "").strip().rstrip(".")
    if not text or text.lower().startswith("no landmark"):
        return []
    marks = [{"name": m.group(1).strip(), "side": m.group(2).lower()} for m in _LANDMARK.finditer(text)]
    return marks or [{"name": text, "side": "", "text": text}]  # keep unknown phrasing verbatim


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
    return 2 * 6_371_000 * math.asin(math.sqrt(h))


def _metres(value: str | None) -> float:
    m = re.match(r"\s*(\d+(?:\.\d+)?)", value or "")
    return float(m.group(1)) if m else 0.0


def _name(place: Any) -> str:
    return str(place.get("name", "")) if isinstance(place, dict) else str(place or "")


def skeleton_from_official(info: dict[str, Any], index: int = 0) -> dict[str, Any]:
    """One official route as the stops + legs that `build_route` expects."""
    blocks = parse_milestones(info.get("milestone_info", ""))
    turns = [b for b in blocks if b.get("to_next_intersection_heading")]
    if not turns:
        raise ValueError(f"route {index}: no milestone with to_next_intersection_heading")
    dest_block = blocks[-1] if not blocks[-1].get("to_next_intersection_heading") else None
    dest_name = _name(info.get("dest_place")) or "the destination"
    headings = [parse_heading(b["to_next_intersection_heading"]) for b in turns]
    if info.get("init_heading") is not None:
        init = parse_heading(str(info["init_heading"]))[0]
    elif turns[0].get("human_heading"):
        init = parse_heading(turns[0]["human_heading"])[0]
    else:
        init = headings[0][0]

    stops = [{"kind": "start" if i == 0 else "intersection", "xy": None,
              "landmarks": parse_landmarks(b.get("landmarks"))} for i, b in enumerate(turns)]
    dest_marks = parse_landmarks(dest_block.get("landmarks")) if dest_block else []
    stops.append({"kind": "destination", "xy": None,
                  "landmarks": dest_marks or [{"name": dest_name, "side": ""}]})

    geos = [_latlng(g) for g in (info.get("route_results") or {}).get("geocode_list") or []]
    if len(geos) == len(stops) and all(geos):
        lengths = [haversine_m(p, q) for p, q in zip(geos, geos[1:])]
    else:
        later = turns[1:] + ([dest_block] if dest_block else [])
        lengths = [_metres(b.get("distance")) for b in later] + [0.0] * (len(turns) - len(later))
    legs = [{"heading": h, "direction": d, "length_m": round(length, 1)}
            for (h, d), length in zip(headings, lengths)]
    return {"id": f"official-{index}", "city": "official", "start_place": _name(info.get("start_place")),
            "dest_place": dest_name, "init_heading": init, "stops": stops, "legs": legs}


def load_routes(path: str | Path, step_m: float = 100, max_forward: int | None = 3) -> list[dict[str, Any]]:
    """All routes of a route_infos.json, in file order, as `build_route` routes."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if isinstance(data, dict):  # tolerate {"routes": [...]} or {id: route, ...}
        data = data.get("routes", list(data.values()))
    return [build_route(skeleton_from_official(info, i), step_m, max_forward) for i, info in enumerate(data)]
