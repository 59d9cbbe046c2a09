"""Street views drawn by the project (V-IRL-VL): the 4 views of a route point in one image.

Facts from SPEC.md "Task 2": the observation is an image of 4 views, a 2x2 grid (front top
left, right top right, back bottom left, left bottom right, relative to the agent's heading),
separated by 10-pixel black lines. The grid has no outer border: it is `2 * width + 10` by
`2 * height + 10` pixels and only the two separator lines are black. Every landmark named in
the point's text observation (virl_city.py's rail) is a sign with its name, in the view of its side.
Two styles: "id" (the training look) and "ood" (the visual-OOD look, never shown in training).

Before editing: a view renders to the same pixels for the same (scene, direction, style, seed,
view size); the buildings are drawn from the seed alone, so a view with a sign differs from the
same view without one only inside `sign_boxes`. Only PIL: shapes and PIL's bundled default font.

Details: docs/code-notes.md#workflowsftvsrltasksviews_imagepy
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from random import Random
from typing import Any

from PIL import Image, ImageDraw

from .answers import derive_seed
from .cards_image import default_font

RENDERER_VERSION = "views-1"  # bump when the pixels of a rendered observation change
VIEW_SIZE = (128, 128)  # width, height of one view in pixels
MIN_VIEW_SIDE = 48  # smaller views cannot hold a legible sign
SEPARATOR = 10  # pixels of the black lines between the views
SEPARATOR_COLOUR = (0, 0, 0)
DIRECTIONS = ("front", "right", "back", "left")  # the grid in reading order
GRID_CELL = {"front": (0, 0), "right": (1, 0), "back": (0, 1), "left": (1, 1)}  # (column, row)
STYLES = ("id", "ood")
MAX_SIGNS_PER_VIEW = 4  # more landmarks on one side share the last sign

NO_LANDMARKS = "No landmarks nearby."  # virl_city.py's texts, repeated to keep this module free of the task
SEE_INTERSECTION = "You observe an intersection."


# ---------------------------------------------------------------- what a point shows


@dataclass(frozen=True)
class Scene:
    """What the 4 views of a point show: an intersection or not, and the signs in each direction."""

    intersection: bool = False
    signs: tuple[tuple[str, tuple[str, ...]], ...] = field(default_factory=tuple)  # (direction, names)

    def names(self, direction: str) -> tuple[str, ...]:
        return dict(self.signs).get(direction, ())


_SIDE = r"(?P<side>front left|front right|left|right|front|ahead|behind|back|straight ahead)"  # longest first
_LANDMARK = re.compile(
    r"\s*(?:(?:,|;|\band\b)\s*)*(?P<name>.+?)\s+is\s+(?:(?:on|to|at|in)\s+)?(?:(?:your|the)\s+)?" + _SIDE + r"\b",
    re.IGNORECASE,
)


def _direction(side: str) -> str:
    side = side.lower()
    if "left" in side:
        return "left"
    if "right" in side:
        return "right"
    return "back" if side in ("behind", "back") else "front"


def parse_landmarks(text: str) -> list[tuple[str, str]]:
    """(name, direction) of each landmark in a phrase like 'A is on your left, B is on your right'.

    Text that names no side becomes one sign in the front view.
    """
    text = text.strip().rstrip(".").strip()
    if not text:
        return []
    found = [(m.group("name").strip(), _direction(m.group("side"))) for m in _LANDMARK.finditer(text)]
    return found or [(text, "front")]


def make_scene(landmarks: Sequence[tuple[str, str]], intersection: bool) -> Scene:
    """A scene from (name, direction) pairs, directions among DIRECTIONS."""
    by_direction: dict[str, list[str]] = {d: [] for d in DIRECTIONS}
    for name, direction in landmarks:
        if direction not in by_direction:
            raise ValueError(f"unknown direction {direction!r}; expected one of {DIRECTIONS}")
        by_direction[direction].append(name)
    return Scene(bool(intersection), tuple((d, tuple(n)) for d, n in by_direction.items() if n))


def point_scene(point: Mapping[str, Any]) -> Scene:
    """The scene of a V-IRL route point (virl_city.py's rail): its kind and its text observation."""
    text = str(point.get("observation", "")).strip()
    if text.endswith(SEE_INTERSECTION):
        text = text[: -len(SEE_INTERSECTION)].strip()
    if text == NO_LANDMARKS.rstrip(".") or text == NO_LANDMARKS:
        text = ""
    return make_scene(parse_landmarks(text), point.get("kind") == "intersection")


# ---------------------------------------------------------------- geometry


def check_view_size(view_size: Sequence[int]) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in view_size)
    except (TypeError, ValueError):
        raise ValueError(f"view size {view_size!r} is not [width, height]") from None
    if min(width, height) < MIN_VIEW_SIDE:
        raise ValueError(f"view size {width}x{height} is below the {MIN_VIEW_SIDE}-pixel minimum per side")
    return width, height


def grid_size(view_size: Sequence[int] = VIEW_SIZE) -> tuple[int, int]:
    """Width and height of the 2x2 observation image."""
    width, height = view_size
    return 2 * width + SEPARATOR, 2 * height + SEPARATOR


def view_boxes(view_size: Sequence[int] = VIEW_SIZE) -> dict[str, tuple[int, int, int, int]]:
    """(left, top, right, bottom) of each direction's view in the observation image."""
    width, height = view_size
    return {
        d: (
            c * (width + SEPARATOR),
            r * (height + SEPARATOR),
            c * (width + SEPARATOR) + width,
            r * (height + SEPARATOR) + height,
        )
        for d, (c, r) in GRID_CELL.items()
    }


def sign_boxes(view_size: Sequence[int], count: int) -> list[tuple[int, int, int, int]]:
    """(left, top, right, bottom) of each sign in a view holding `count` signs, top to bottom.

    The signs hang in the upper part of the view, over the facades; a seed may nudge a sign's
    contents by a pixel inside its box, never out of it.
    """
    width, height = view_size
    count = min(int(count), MAX_SIGNS_PER_VIEW)
    if count <= 0:
        return []
    gap = max(2, height // 32)
    top, bottom = round(0.06 * height), round(0.66 * height)
    sign_h = min(round(0.26 * height), (bottom - top - (count - 1) * gap) // count)
    left, right = round(0.06 * width), width - round(0.06 * width)
    return [(left, top + i * (sign_h + gap), right, top + i * (sign_h + gap) + sign_h) for i in range(count)]


# ---------------------------------------------------------------- styles


@dataclass(frozen=True)
class Style:
    sky: tuple[tuple[int, int, int], tuple[int, int, int]]  # top and horizon colour
    facades: tuple[tuple[int, int, int], ...]
    window: tuple[int, int, int]
    trim: tuple[int, int, int]  # roofs, doors, facade edges
    road: tuple[int, int, int]
    sidewalk: tuple[int, int, int]
    marking: tuple[int, int, int]
    sign: tuple[int, int, int]
    sign_edge: tuple[int, int, int]
    ink: tuple[int, int, int]
    gabled: bool  # roof shape: gabled (ood) or flat (id)
    round_windows: bool
    rounded_sign: bool


# No colour is pure black: the separators are the only black in the image.
STYLE = {
    "id": Style(
        sky=((120, 175, 230), (200, 225, 245)),
        facades=((176, 92, 68), (198, 162, 120), (158, 118, 92), (212, 188, 152), (146, 84, 62), (188, 140, 104)),
        window=(74, 96, 128),
        trim=(96, 70, 56),
        road=(112, 112, 118),
        sidewalk=(178, 172, 160),
        marking=(236, 236, 230),
        sign=(246, 240, 222),
        sign_edge=(70, 54, 40),
        ink=(32, 26, 22),
        gabled=False,
        round_windows=False,
        rounded_sign=False,
    ),
    "ood": Style(
        sky=((24, 18, 64), (70, 40, 110)),
        facades=((78, 196, 186), (226, 118, 198), (118, 214, 118), (236, 196, 78), (146, 128, 236), (240, 140, 96)),
        window=(255, 232, 120),
        trim=(40, 30, 70),
        road=(56, 52, 74),
        sidewalk=(92, 86, 120),
        marking=(250, 214, 56),
        sign=(26, 24, 44),
        sign_edge=(0, 246, 200),
        ink=(255, 238, 92),
        gabled=True,
        round_windows=True,
        rounded_sign=True,
    ),
}


def _style(style: str) -> Style:
    if style not in STYLE:
        raise ValueError(f"unknown view style {style!r}; expected one of {STYLES}")
    return STYLE[style]


# ---------------------------------------------------------------- drawing


def _sky(draw: ImageDraw.ImageDraw, s: Style, width: int, horizon: int) -> None:
    (r0, g0, b0), (r1, g1, b1) = s.sky
    for y in range(horizon + 1):
        t = y / max(1, horizon)
        draw.line(
            (0, y, width, y), fill=(round(r0 + t * (r1 - r0)), round(g0 + t * (g1 - g0)), round(b0 + t * (b1 - b0)))
        )


def _window(draw: ImageDraw.ImageDraw, s: Style, box: tuple[float, float, float, float]) -> None:
    if s.round_windows:
        draw.ellipse(box, fill=s.window)
    else:
        draw.rectangle(box, fill=s.window, outline=s.trim)


def _building(draw: ImageDraw.ImageDraw, s: Style, rng: Random, left: float, right: float, top: float, base: float):
    """One building seen straight on: facade, roof, windows, door."""
    colour = rng.choice(s.facades)
    draw.rectangle((left, top, right, base), fill=colour, outline=s.trim)
    w = right - left
    if s.gabled:
        draw.polygon([(left - 1, top), (right + 1, top), ((left + right) / 2, top - 0.35 * w)], fill=s.trim)
    else:
        draw.rectangle((left - 1, top - 3, right + 1, top), fill=s.trim)
    cols = max(1, round(w / 14))
    rows = max(1, round((base - top) / 16) - 1)
    cell_w, cell_h = w / cols, (base - top - 10) / (rows + 1)
    lit = rng.random()
    for r in range(rows):
        for c in range(cols):
            if rng.random() > 0.15 + 0.7 * lit:
                continue
            x, y = left + c * cell_w, top + 4 + r * cell_h
            _window(draw, s, (x + cell_w * 0.25, y + cell_h * 0.25, x + cell_w * 0.75, y + cell_h * 0.8))
    door = min(8, w / 4)
    draw.rectangle(((left + right) / 2 - door / 2, base - 2 * door, (left + right) / 2 + door / 2, base), fill=s.trim)


def _facade_view(draw: ImageDraw.ImageDraw, s: Style, rng: Random, width: int, height: int) -> None:
    """Facing a row of buildings across a sidewalk."""
    base = round(0.8 * height)
    _sky(draw, s, width, base)
    n = rng.randint(1, 3)
    edges = [width * (i / n + rng.uniform(-0.08, 0.08)) for i in range(1, n)]  # buildings stay 1/6 wide or more
    xs = [-2.0, *edges, width + 2.0]
    for left, right in itertools.pairwise(xs):
        _building(draw, s, rng, left + 1, right - 1, rng.uniform(0.08, 0.3) * height, base)
    draw.rectangle((0, base, width, round(0.88 * height)), fill=s.sidewalk)
    draw.rectangle((0, round(0.88 * height), width, height), fill=s.road)


def _street_view(draw: ImageDraw.ImageDraw, s: Style, rng: Random, width: int, height: int, crossing: bool) -> None:
    """Looking along a street: road to the horizon between two walls of facades."""
    w, h = width, height
    horizon = round(0.5 * h)
    vx = w / 2 + rng.uniform(-0.03, 0.03) * w
    _sky(draw, s, w, horizon)
    far = 0.04 * w  # half the width of the street at the horizon
    draw.rectangle(
        (vx - far - 0.1 * w, rng.uniform(0.3, 0.4) * h, vx + far + 0.1 * w, horizon), fill=rng.choice(s.facades)
    )
    for side in (-1, 1):
        edge = 0 if side < 0 else w
        inner = vx + side * far
        top_near, top_far = rng.uniform(0.0, 0.12) * h, rng.uniform(0.3, 0.38) * h
        draw.polygon(
            [(edge, top_near), (inner, top_far), (inner, horizon), (edge, 0.84 * h)], fill=rng.choice(s.facades)
        )
        for t in (0.2, 0.45, 0.7):  # window columns, shrinking with distance
            x = edge + (inner - edge) * t
            y0 = top_near + (top_far - top_near) * t + 4
            y1 = 0.84 * h + (horizon - 0.84 * h) * t - 6
            half = 0.06 * w * (1 - t) + 1
            for y in range(round(y0), round(y1 - 2 * half), max(3, round(3.5 * half))):
                _window(draw, s, (x - half, y, x + half, y + 2 * half))
        draw.polygon(
            [
                (edge, 0.84 * h),
                (inner, horizon),
                (vx + side * 0.01 * w, horizon),
                (edge + side * -0.12 * w, h),
                (edge, h),
            ],
            fill=s.sidewalk,
        )
    draw.polygon([(0.12 * w, h), (vx - 0.01 * w, horizon), (vx + 0.01 * w, horizon), (0.88 * w, h)], fill=s.road)
    for t0 in (0.1, 0.35, 0.6, 0.85):  # dashed centre line
        t1 = t0 + 0.12
        y0, y1 = horizon + (h - horizon) * t0, horizon + (h - horizon) * t1
        draw.polygon(
            [(vx - 0.3 * t0, y0), (vx + 0.3 * t0, y0), (vx + 1.5 * t1, y1), (vx - 1.5 * t1, y1)], fill=s.marking
        )
    if crossing:
        top, bottom = round(0.56 * h), round(0.7 * h)
        draw.rectangle((0, top, w, bottom), fill=s.road)
        for x in range(round(0.2 * w), round(0.8 * w), max(4, w // 16)):  # zebra crossing before it
            draw.rectangle((x, bottom + 2, x + max(2, w // 32), bottom + max(4, h // 14)), fill=s.marking)
        draw.line((0, (top + bottom) / 2, w, (top + bottom) / 2), fill=s.marking, width=1)


def _wrap(text: str, font, max_width: float) -> list[str]:
    lines: list[str] = []
    for word in text.split():
        if lines and font.getlength(f"{lines[-1]} {word}") <= max_width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines


def _fit(text: str, box_w: float, box_h: float) -> tuple[Any, list[str], int]:
    """The largest font size (and the lines) at which `text` fits the box; truncated at the smallest."""
    for size in range(max(7, round(box_h * 0.42)), 6, -1):
        font = default_font(size)
        lines = _wrap(text, font, box_w)
        line_h = size + 1
        if len(lines) * line_h <= box_h and all(font.getlength(line) <= box_w for line in lines):
            return font, lines, line_h
    font = default_font(7)
    lines = _wrap(text, font, box_w)[: max(1, int(box_h // 8))]
    lines = [line if font.getlength(line) <= box_w else line[: max(1, int(box_w // 5))] for line in lines]
    return font, lines, 8


def _sign(draw: ImageDraw.ImageDraw, s: Style, rng: Random, box: tuple[int, int, int, int], name: str) -> None:
    left, top, right, bottom = box
    board = (left, top, right - 1, bottom - 1)  # PIL's shapes include their right and bottom edges
    if s.rounded_sign:
        draw.rounded_rectangle(board, radius=max(3, (bottom - top) // 3), fill=s.sign, outline=s.sign_edge, width=2)
    else:
        draw.rectangle(board, fill=s.sign, outline=s.sign_edge, width=2)
    pad = 4
    font, lines, line_h = _fit(name, right - left - 2 * pad, bottom - top - 2 * pad + 2)
    dx, dy = rng.randint(-1, 1), rng.randint(-1, 1)
    cy = (top + bottom) / 2 - (len(lines) - 1) * line_h / 2 + dy
    for i, line in enumerate(lines):
        draw.text(((left + right) / 2 + dx, cy + i * line_h), line, fill=s.ink, font=font, anchor="mm")


def render_view(
    scene: Scene, direction: str, style: str = "id", seed: int = 0, view_size: Sequence[int] = VIEW_SIZE
) -> Image.Image:
    """One view of the scene, as an RGB image of `view_size`."""
    if direction not in GRID_CELL:
        raise ValueError(f"unknown direction {direction!r}; expected one of {DIRECTIONS}")
    s = _style(style)
    width, height = check_view_size(view_size)
    rng = Random(derive_seed("virl-views", RENDERER_VERSION, style, seed, direction))
    image = Image.new("RGB", (width, height), s.sky[1])
    draw = ImageDraw.Draw(image)
    along_street = direction in ("front", "back") or scene.intersection
    if along_street:
        _street_view(draw, s, rng, width, height, crossing=scene.intersection and direction == "front")
    else:
        _facade_view(draw, s, rng, width, height)
    names = list(scene.names(direction))
    if len(names) > MAX_SIGNS_PER_VIEW:
        names = [*names[: MAX_SIGNS_PER_VIEW - 1], ", ".join(names[MAX_SIGNS_PER_VIEW - 1 :])]
    sign_rng = Random(derive_seed("virl-signs", RENDERER_VERSION, style, seed, direction))
    for box, name in zip(sign_boxes((width, height), len(names)), names):
        _sign(draw, s, sign_rng, box, name)
    return image


def compose_views(views: Sequence[Image.Image], view_size: Sequence[int] = VIEW_SIZE) -> Image.Image:
    """The 2x2 observation from 4 views in DIRECTIONS order (front, right, back, left); each view is
    resized to `view_size` when it has another size (photos)."""
    if len(views) != len(DIRECTIONS):
        raise ValueError(f"an observation has {len(DIRECTIONS)} views ({', '.join(DIRECTIONS)}), got {len(views)}")
    size = check_view_size(view_size)
    image = Image.new("RGB", grid_size(size), SEPARATOR_COLOUR)
    for direction, view in zip(DIRECTIONS, views):
        view = view.convert("RGB")
        if view.size != size:
            view = view.resize(size, Image.Resampling.BILINEAR)
        image.paste(view, view_boxes(size)[direction][:2])
    return image


@lru_cache(maxsize=2048)
def _observation(scene: Scene, style: str, seed: int, view_size: tuple[int, int]) -> Image.Image:
    return compose_views([render_view(scene, d, style, seed, view_size) for d in DIRECTIONS], view_size)


# The scene of the sample images in docs/images: virl_vl_observation_<style>.png is
# render_observation(SAMPLE_SCENE, style, seed=0) saved as PNG.
SAMPLE_SCENE = Scene(True, (("right", ("Blue Door Cafe",)), ("left", ("Wood Tavern", "Harbor Bank"))))


def render_observation(
    scene: Scene, style: str = "id", seed: int = 0, view_size: Sequence[int] = VIEW_SIZE
) -> Image.Image:
    """The 2x2 image of the 4 views of a scene (a fresh copy: callers may draw on it)."""
    _style(style)
    return _observation(scene, style, int(seed), check_view_size(view_size)).copy()
