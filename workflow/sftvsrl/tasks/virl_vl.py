"""V-IRL navigation with images (task "virl_vl"): the V-IRL-L task, but each observation is a picture.

Facts from SPEC.md "Task 2". Routes, rail, instruction, expert, verifier, episode and metrics are
virl.py's; this module changes what the user turns show: the current observation is an image of 4
views (views_image.py) plus its text, then `A_k:`. Splits: `VL_SPLITS` (eval_ood_visual: other
cities, drawn in the "ood" style).

Before editing: a turn is never rewritten (the chat only grows; the rollout engine must keep the
earlier image parts to splice tokens), and `episode.images` holds the image of every image part, in
order. A row stores no pixels: its "image" holds a render spec, and `row_images(row)` gives the
images of a row's prompt in order. The pickles of the paper's street views are read only with a
restricted unpickler (safe_pickle.py).

Details (turn shapes, render specs, the street-view folder layout and matching):
docs/code-notes.md#workflowsftvsrltasksvirl_vlpy
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from ..config import section_with_defaults
from ..names import EVAL_OOD_VISUAL, VL_SPLITS
from .answers import derive_seed
from .safe_pickle import load_plain
from .views_image import DIRECTIONS, RENDERER_VERSION, check_view_size, compose_views, point_scene, render_observation
from .virl import (
    SPLIT_RULE,
    RoutePools,
    VirlEpisode,
    VirlTask,
    feedback_text,
    instruction_prompt,
    observation_turn,
)
from .virl_city import build_route
from .virl_official import haversine_m, read_route_infos

log = logging.getLogger(__name__)

TASK_NAME = "virl_vl"
SECTION = "virl_vl"  # its config section
GENERATOR_VERSION = "virl-vl-1"  # bump when the rows generate_splits makes change
SPLITS = VL_SPLITS
VL_SPLIT_RULE = {**SPLIT_RULE, EVAL_OOD_VISUAL: "id"}
VIEWS_TEXT = "You observe an image of 4 views"
INTERSECTION_TEXT = "You observe an intersection"
VIEWS_EXPLAINED = (
    "Each observation O_k is an image of 4 views around you: front (top left), right (top right), "
    "back (bottom left) and left (bottom right)."
)
_SEED_RANGE = 2**31

MATCH_M = 15.0  # a route point takes a panorama at most this far away
MAX_HEADING_GAP = 45.0  # a view takes a photo whose heading is at most this far off
PHOTO_DIR = "street_views"
PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png")
_CELL_DEG = 1e-4  # bucket size of the GPS index (about 11 m of latitude)
_PHOTO = re.compile(r"(?P<pano>.+)_(?P<heading>\d+(?:\.\d+)?)", re.IGNORECASE)


# ---------------------------------------------------------------- chat turns


def observation_text(point: dict[str, Any]) -> str:
    """The text of an observation: what it stays as in the history."""
    return f"{VIEWS_TEXT}; {INTERSECTION_TEXT}" if point["kind"] == "intersection" else VIEWS_TEXT


class ImageTurns:
    """The user turns of a V-IRL-VL chat (virl.TextTurns's three methods)."""

    @staticmethod
    def opening(route: dict[str, Any], rule: str) -> list[dict[str, str]]:
        return [
            {"type": "text", "text": f"{instruction_prompt(route, rule)}\n{VIEWS_EXPLAINED}\n"},
            *ImageTurns.observation(1, route["points"][0]),
        ]

    @staticmethod
    def observation(k: int, point: dict[str, Any]) -> list[dict[str, str]]:
        return [{"type": "image"}, {"type": "text", "text": observation_turn(k, observation_text(point))}]

    @staticmethod
    def feedback(reason: str, k: int, point: dict[str, Any]) -> str:
        return feedback_text(reason, k, observation_text(point))


def count_image_parts(messages: Sequence[dict[str, Any]]) -> int:
    return sum(
        1
        for m in messages
        if isinstance(m.get("content"), list)
        for part in m["content"]
        if isinstance(part, dict) and part.get("type") == "image"
    )


# ---------------------------------------------------------------- the paper's street views


class StreetViews:
    """The photos of a street-view folder (layout in the module docstring), indexed for lookup."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise ValueError(f"virl_vl.street_views: {self.folder} is not a folder")
        self.cells = _read_mappings(self.folder)
        self._memo: dict[tuple, list[list[str]] | ValueError] = {}
        self.photos: dict[str, dict[float, str]] = {}  # panorama -> heading -> file name
        photo_dir = self.folder / PHOTO_DIR
        if not photo_dir.is_dir():
            raise ValueError(f"virl_vl.street_views: no {PHOTO_DIR}/ folder of photos in {self.folder}")
        for path in sorted(photo_dir.iterdir()):
            m = _PHOTO.fullmatch(path.stem)
            if path.suffix.lower() in PHOTO_SUFFIXES and m:
                self.photos.setdefault(m.group("pano"), {})[float(m.group("heading")) % 360] = path.name

    def panorama(self, geocode: Sequence[float]) -> str | None:
        """The panorama nearest to a [lat, lng] within MATCH_M metres (None when there is none)."""
        lat, lng = float(geocode[0]), float(geocode[1])
        ci, cj = _cell(lat, lng)
        reach = 1 + math.ceil(MATCH_M / (_CELL_DEG * 111_000 * max(0.05, math.cos(math.radians(lat)))))
        best, best_d = None, MATCH_M
        for i in range(ci - reach, ci + reach + 1):
            for j in range(cj - reach, cj + reach + 1):
                for plat, plng, pano in self.cells.get((i, j), ()):
                    d = haversine_m((lat, lng), (plat, plng))
                    if d <= best_d:
                        best, best_d = pano, d
        return best

    def photo(self, pano: str, heading: float) -> str | None:
        """The file name of the panorama's photo nearest to `heading` within MAX_HEADING_GAP."""
        options = self.photos.get(pano, {})
        if not options:
            return None
        gap, name = min((abs((h - heading + 180) % 360 - 180), name) for h, name in options.items())
        return name if gap <= MAX_HEADING_GAP else None

    def route_views(self, route: dict[str, Any]) -> list[list[str]]:
        """The 4 photo file names of every point of a route; ValueError naming the point or file otherwise."""
        key = tuple((tuple(p.get("geocode") or ()), p["heading"]) for p in route["points"])
        if key not in self._memo:
            try:
                self._memo[key] = self._route_views(route)
            except ValueError as err:
                self._memo[key] = err
        found = self._memo[key]
        if isinstance(found, ValueError):
            raise found
        return [list(names) for names in found]

    def _route_views(self, route: dict[str, Any]) -> list[list[str]]:
        out = []
        for k, point in enumerate(route["points"]):
            if not point.get("geocode"):
                raise ValueError(f"point {k} has no GPS position to find its street view")
            pano = self.panorama(point["geocode"])
            if pano is None:
                raise ValueError(
                    f"point {k} at {point['geocode']} has no panorama within {MATCH_M:g} m "
                    f"in the *.pkl mapping of {self.folder}"
                )
            names = []
            for turn, direction in zip((0, 90, 180, 270), DIRECTIONS):
                heading = (point["heading"] + turn) % 360
                name = self.photo(pano, heading)
                if name is None:
                    wanted = self.folder / PHOTO_DIR / f"{pano}_{round(heading)}.jpg"
                    raise ValueError(
                        f"point {k}: no {direction} view: no file {wanted} (or another heading within "
                        f"{MAX_HEADING_GAP:g} degrees, or .png)"
                    )
                names.append(name)
            out.append(names)
        for names in out:  # every photo opens: a broken file stops the route here, not in training
            for name in names:
                _open_photo(self.folder / PHOTO_DIR / name, check_only=True)
        return out


def _read_mappings(folder: Path) -> dict[tuple[int, int], list[tuple[float, float, str]]]:
    """Grid cell -> the (lat, lng, panorama) of the folder's *.pkl mappings; unreadable files and entries skipped."""
    cells: dict[tuple[int, int], list[tuple[float, float, str]]] = {}
    pickles = sorted(folder.glob("*.pkl"))
    if not pickles:
        raise ValueError(f"virl_vl.street_views: no *.pkl mapping of GPS points to panoramas in {folder}")
    for path in pickles:
        try:
            mapping = load_plain(path)
        except ValueError as err:
            log.warning("street views: skipped %s", err)
            continue
        if not isinstance(mapping, dict):
            log.warning("street views: skipped %s: it holds a %s, not a dict", path, type(mapping).__name__)
            continue
        bad = 0
        for key, value in mapping.items():
            where, pano = _latlng_key(key), _pano_id(value)
            if where is None or pano is None:
                bad += 1
                continue
            cells.setdefault(_cell(*where), []).append((*where, pano))
        if bad:
            log.warning("street views: %s: %d entries are no (GPS point: panorama) pair, ignored", path, bad)
    if not cells:
        raise ValueError(f"virl_vl.street_views: no usable mapping of GPS points to panoramas in {folder}")
    return cells


def _cell(lat: float, lng: float) -> tuple[int, int]:
    return math.floor(lat / _CELL_DEG), math.floor(lng / _CELL_DEG)


def _latlng_key(key: Any) -> tuple[float, float] | None:
    if isinstance(key, str):
        key = key.strip("()[] ").split(",")
    try:
        lat, lng = (float(v) for v in key)
    except (TypeError, ValueError):
        return None
    return (lat, lng) if math.isfinite(lat) and math.isfinite(lng) else None


def _pano_id(value: Any) -> str | None:
    if isinstance(value, dict):
        value = next((value[k] for k in ("pano_id", "panoid", "id") if k in value), None)
    return value if isinstance(value, str) and value else None


@lru_cache(maxsize=4)
def _street_views(folder: str) -> StreetViews:
    return StreetViews(folder)


def _open_photo(path: Path, check_only: bool = False) -> Image.Image | None:
    try:
        with Image.open(path) as image:
            if check_only:
                return None
            return image.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError) as err:
        raise ValueError(f"{path}: cannot read the street view ({err})") from None


# ---------------------------------------------------------------- the images of a row


def point_image(route: dict[str, Any], spec: dict[str, Any], index: int) -> Image.Image:
    """The observation image of point `index` of a route, from a row's render spec."""
    if spec.get("renderer") != RENDERER_VERSION:
        raise ValueError(
            f"route {route.get('id')}: drawn by view renderer {spec.get('renderer')!r}, this code draws "
            f"{RENDERER_VERSION!r}; regenerate the data"
        )
    view_size = check_view_size(spec["view_size"])
    if spec.get("source") == "street_views":
        folder = Path(spec["folder"]) / PHOTO_DIR
        return compose_views([_open_photo(folder / name) for name in spec["views"][index]], view_size)
    scene = point_scene(route["points"][index])
    return render_observation(scene, spec["style"], derive_seed(spec["seed"], index), view_size)


def row_images(row: dict[str, Any]) -> list[Image.Image]:
    """The images of a row's prompt, in the order of its image parts: points 0 .. step_index."""
    where = f"row {row.get('id', '<no id>')}"
    try:
        spec, route, index = row["image"], row["route"], int(row.get("step_index", 0))
    except (KeyError, TypeError) as err:
        raise ValueError(f"{where}: no image spec and route to draw the views from (missing {err})") from None
    parts = count_image_parts(row.get("prompt", []))
    if parts != index + 1:
        raise ValueError(f"{where}: its prompt has {parts} image parts, expected {index + 1} (points 0..{index})")
    try:
        return [point_image(route, spec, k) for k in range(index + 1)]
    except (KeyError, TypeError, IndexError) as err:
        raise ValueError(f"{where}: cannot draw its views: {err!r}") from None


prompt_images = row_images  # the name gp_vl uses


# ---------------------------------------------------------------- episode


class VirlVisionEpisode(VirlEpisode):
    """virl's episode with image observations; `images` holds the image of every image part, in order."""

    turns = ImageTurns

    def __init__(
        self,
        route: dict[str, Any],
        spec: dict[str, Any],
        rule: str = "id",
        viter: int = 2,
        messages: list[dict[str, Any]] | None = None,
        start_index: int = 0,
    ):
        super().__init__(route, rule, viter, messages, start_index)
        self.spec = spec
        parts = count_image_parts(self.messages)
        if parts != start_index + 1:
            raise ValueError(f"the chat has {parts} image parts, expected {start_index + 1} (points 0..{start_index})")
        self.images: list[Image.Image] = [point_image(route, spec, k) for k in range(start_index + 1)]

    def step(self, answer: str):
        before = len(self.messages)
        attempt = super().step(answer)
        # Only an observation turn carries an image, and it shows the point now awaiting an answer.
        self.images += [point_image(self.route, self.spec, self.index)] * count_image_parts(self.messages[before:])
        return attempt


# ---------------------------------------------------------------- splits


class _VisionRoutePools(RoutePools):
    """virl's pools plus the visual-OOD group, and the street-view photos of official routes."""

    def __init__(self, cfg: dict[str, Any], seed: int):
        super().__init__(cfg, seed)
        if self.official is None:
            self.cities["visual"] = self._cities("visual", cfg["cities"]["visual"])
            return
        routes = read_route_infos(cfg["visual_routes"], seed)
        self.official["visual"] = [build_route(info, cfg, f"visual-{i}", "visual") for i, info in enumerate(routes)]
        if cfg["street_views"]:
            self._keep_routes_with_views(_street_views(str(cfg["street_views"])))

    def _keep_routes_with_views(self, views: StreetViews) -> None:
        for group, routes in self.official.items():
            kept = []
            for route in routes:
                try:
                    views.route_views(route)
                except ValueError as err:
                    log.warning("virl_vl: skipped route %s: %s", route["id"], err)
                    continue
                kept.append(route)
            if not kept:
                raise ValueError(f"virl_vl.street_views: no {group} route has all its views in {views.folder}")
            self.official[group] = kept


class VirlVisionTask(VirlTask):
    """Task "virl_vl": V-IRL navigation with image observations (config section "virl_vl")."""

    name = TASK_NAME
    section = SECTION
    splits = SPLITS
    label = "V-IRL-VL"
    visual_metric_title = "route success"  # V-IRL-VL's success_rate is the whole route's
    visual_ood_look = "routes in other cities"
    generator_version = GENERATOR_VERSION
    split_rule = VL_SPLIT_RULE
    turns = ImageTurns
    route_splits = (*VirlTask.route_splits, (EVAL_OOD_VISUAL, "eval", "visual"))

    def check_config(self, cfg: dict[str, Any], seed: int) -> None:
        super().check_config(cfg, seed)
        c = self._section(cfg)
        check_view_size(c["view_size"])
        if c["street_views"] and not c["routes"]:
            raise ValueError(
                "virl_vl.street_views needs virl_vl.routes: the photos show the official routes' GPS points"
            )
        if c["routes"] and not c["visual_routes"]:
            raise ValueError(
                "virl_vl.routes is set, so virl_vl.visual_routes must be too: the visual-OOD routes from other "
                "cities (the paper's VLN-mini route_infos.json)"
            )

    def _section(self, cfg: dict[str, Any] | None) -> dict[str, Any]:
        return section_with_defaults(self.section, cfg)

    def _pools(self, cfg: dict[str, Any], seed: int) -> _VisionRoutePools:
        return _VisionRoutePools(cfg, seed)

    def generate_splits(self, cfg: dict[str, Any], seed: int) -> dict[str, list[dict[str, Any]]]:
        """virl_l's rows with image observations, plus eval_ood_visual; every row gets its render spec."""
        self.check_config(cfg, seed)
        c = self._section(cfg)
        out = super().generate_splits(c, seed)
        for split, rows in out.items():
            for row in rows:
                row["visual"] = "ood" if split == EVAL_OOD_VISUAL else "id"
                row["image"] = self._spec(row, c, seed)
        return out

    def _spec(self, row: dict[str, Any], cfg: dict[str, Any], seed: int) -> dict[str, Any]:
        spec: dict[str, Any] = {"renderer": RENDERER_VERSION, "view_size": list(cfg["view_size"])}
        route_id = row["route"]["id"]
        if cfg["street_views"]:
            folder = str(cfg["street_views"])
            return {
                **spec,
                "source": "street_views",
                "folder": folder,
                "views": _street_views(folder).route_views(row["route"]),
            }
        # one seed per route, so every row of a route shows a point the same way
        return {
            **spec,
            "source": "drawn",
            "style": row["visual"],
            "seed": derive_seed(seed, "views", route_id) % _SEED_RANGE,
        }

    def row_images(self, row: dict[str, Any]) -> list[Image.Image]:
        """The images of the row's prompt, in order (its completion, the expert's answer, is text)."""
        return row_images(row)

    def make_episode(self, row: dict[str, Any], viter: int) -> VirlVisionEpisode:
        return VirlVisionEpisode(
            row["route"],
            row["image"],
            row.get("rule", "id"),
            viter,
            messages=row.get("prompt"),
            start_index=int(row.get("step_index", 0)),
        )
