"""Playing cards drawn by the project (GP-VL): a hand side by side in one RGB image.

Only PIL: ranks are text in PIL's bundled default font, suits are shapes built from
polygons and circles. No third-party card art or fonts. A hand renders to the same
pixels for the same (cards, suits, seed, card size); the seed only moves each card's
contents by a pixel or two, so a model cannot key on exact positions.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from random import Random

from PIL import Image, ImageDraw, ImageFont

from .answers import derive_seed
from .gp import BLACK_SUITS, RANKS, RED_SUITS

RENDERER_VERSION = "cards-1"  # bump when the pixels of a rendered hand change
CARD_SIZE = (80, 112)  # width, height in pixels
GAP = 8  # pixels of table between cards and around the hand
MAX_JITTER = 2  # pixels a card's contents may move, drawn from the seed

TABLE = (34, 110, 60)  # green felt: neither black nor red
CARD_FACE = (250, 250, 245)
CARD_EDGE = (150, 150, 150)
INK = {**dict.fromkeys(BLACK_SUITS, (20, 20, 20)), **dict.fromkeys(RED_SUITS, (200, 20, 30))}


@cache
def default_font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """PIL's bundled default font at `size` px (a fixed small bitmap font without FreeType)."""
    try:
        return ImageFont.load_default(size=size)
    except (ImportError, TypeError, ValueError):  # Pillow without FreeType
        return ImageFont.load_default()


def hand_size(num_cards: int, card_size: Sequence[int] = CARD_SIZE) -> tuple[int, int]:
    """Width and height of the image of a hand of `num_cards`."""
    width, height = card_size
    return num_cards * width + (num_cards + 1) * GAP, height + 2 * GAP


def card_boxes(num_cards: int, card_size: Sequence[int] = CARD_SIZE) -> list[tuple[int, int, int, int]]:
    """(left, top, right, bottom) of each card in the hand's image, left to right."""
    width, height = card_size
    return [(GAP + i * (width + GAP), GAP, GAP + i * (width + GAP) + width, GAP + height) for i in range(num_cards)]


def render_hand(
    cards: Sequence[str], suits: Sequence[str], seed: int, card_size: Sequence[int] = CARD_SIZE
) -> Image.Image:
    """The hand's cards side by side on a table, as an RGB image."""
    if len(cards) != len(suits) or not cards:
        raise ValueError(f"a hand needs one suit per card and at least one card, got {list(cards)}, {list(suits)}")
    rng = Random(derive_seed("cards-image", RENDERER_VERSION, seed))
    image = Image.new("RGB", hand_size(len(cards), card_size), TABLE)
    for (left, top, _, _), rank, suit in zip(card_boxes(len(cards), card_size), cards, suits):
        jitter = (rng.randint(-MAX_JITTER, MAX_JITTER), rng.randint(-MAX_JITTER, MAX_JITTER))
        image.paste(render_card(rank, suit, card_size, jitter), (left, top))
    return image


def render_card(
    rank: str, suit: str, card_size: Sequence[int] = CARD_SIZE, jitter: tuple[int, int] = (0, 0)
) -> Image.Image:
    """One card: the rank in a corner and large in the upper half, the suit's shape below it."""
    if rank not in RANKS:
        raise ValueError(f"unknown rank {rank!r}; expected one of {RANKS}")
    if suit not in INK:
        raise ValueError(f"unknown suit {suit!r}; expected one of {tuple(INK)}")
    width, height = card_size
    dx, dy = jitter
    card = Image.new("RGB", (width, height), TABLE)
    draw = ImageDraw.Draw(card)
    draw.rounded_rectangle(
        (0, 0, width - 1, height - 1), radius=max(2, width // 12), fill=CARD_FACE, outline=CARD_EDGE
    )
    ink = INK[suit]
    margin = max(3, width // 16)
    draw.text((margin + dx, margin + dy), rank, fill=ink, font=default_font(max(8, height // 7)))
    draw.text(
        (width / 2 + dx, height * 0.36 + dy), rank, fill=ink, font=default_font(max(10, height // 4)), anchor="mm"
    )
    _draw_suit(draw, suit, (width / 2 + dx, height * 0.72 + dy), min(width, height) * 0.36, ink)
    return card


def _draw_suit(draw: ImageDraw.ImageDraw, suit: str, centre: tuple[float, float], size: float, ink) -> None:
    """The suit's shape in a `size` x `size` box around `centre`."""
    cx, cy = centre
    half = size / 2
    if suit == "D":
        draw.polygon([(cx, cy - half), (cx + 0.75 * half, cy), (cx, cy + half), (cx - 0.75 * half, cy)], fill=ink)
    elif suit == "H":
        _lobes(draw, [(cx - half / 2, cy - half / 3), (cx + half / 2, cy - half / 3)], half / 2, ink)
        draw.polygon([(cx - half, cy - half / 4), (cx + half, cy - half / 4), (cx, cy + half)], fill=ink)
    elif suit == "S":
        _lobes(draw, [(cx - half / 2, cy + half / 6), (cx + half / 2, cy + half / 6)], half / 2, ink)
        draw.polygon([(cx - half, cy + half / 12), (cx + half, cy + half / 12), (cx, cy - half)], fill=ink)
        _stem(draw, cx, cy, half, ink)
    else:  # "C"
        r = 0.42 * half
        _lobes(draw, [(cx, cy - half + r), (cx - half + r, cy + r / 3), (cx + half - r, cy + r / 3)], r, ink)
        draw.ellipse((cx - r / 2, cy - r / 2, cx + r / 2, cy + r / 2), fill=ink)
        _stem(draw, cx, cy, half, ink)


def _lobes(draw: ImageDraw.ImageDraw, centres: list[tuple[float, float]], radius: float, ink) -> None:
    for x, y in centres:
        draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=ink)


def _stem(draw: ImageDraw.ImageDraw, cx: float, cy: float, half: float, ink) -> None:
    """The flared foot of spades and clubs."""
    draw.polygon([(cx, cy), (cx - half / 3, cy + half), (cx + half / 3, cy + half)], fill=ink)
