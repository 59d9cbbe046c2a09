"""GeneralPoints with card images (GP-VL): the GP-L game, but the cards are shown, not named.

Facts from SPEC.md "Task 1". The game, the expert answer, the verifier and the episode are
gp.py's; this module adds what differs: the image prompt, suits as the visual split (ID:
black spades and clubs; visual OOD: red hearts and diamonds, a split `eval_ood_visual`
under the ID rule), and the recognition check, on for every episode: an answer whose
"cards" differ from the hand scores -1.5 before the formula is looked at.

How the image travels: a row stores no pixels. Its "hand" holds ranks and suits, its
"image" the renderer version, a render seed and the card size, and `row_image` draws the
picture again when a row is read. Rows stay small JSON, every split is byte-identical for
a (config, seed) as DVC expects (PNG bytes could change with the Pillow/zlib version), and
no side folder of image files can fall out of step with the JSONL. Drawing a hand takes
about 10 ms, little beside a model's forward pass.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from random import Random
from typing import Any, ClassVar

from PIL import Image

from ..config import section_with_defaults
from ..names import EVAL_ID, EVAL_OOD_VISUAL, VL_SPLITS
from .answers import derive_seed
from .base import EpisodeRatio
from .cards_image import RENDERER_VERSION, render_hand
from .gp import (
    BLACK_SUITS,
    DIAGNOSTIC_COLUMNS,
    EPISODE_RATIOS,
    METRIC_TITLES,
    RED_SUITS,
    RULE_OOD_DIAGNOSTICS,
    GeneralPointsEpisode,
    aggregate,
    check_pools,
    draw_hands,
    game_title,
    hand_pools,
    hand_unit,
    make_row,
)
from .gp import split_sizes as gp_sizes

GENERATOR_VERSION = "gp-vl-1"  # bump when the rows generate_splits makes change
TASK_NAME = "gp_vl"
SECTION = "gp_vl"  # its config section
SPLITS = VL_SPLITS
_SEED_RANGE = 2**31  # render seeds: any int works; keep them readable in the JSONL


# ---------------------------------------------------------------- the image of a row


def row_image(row: dict[str, Any]) -> Image.Image:
    """The hand's picture, drawn again from the row (see the module docstring)."""
    where = f"row {row.get('id', '<no id>')}"
    try:
        spec, hand = row["image"], row["hand"]
        renderer = spec["renderer"]
    except (KeyError, TypeError) as err:
        raise ValueError(f"{where}: no image spec and hand to draw the cards from (missing {err})") from None
    if renderer != RENDERER_VERSION:
        raise ValueError(
            f"{where}: drawn by card renderer {renderer!r}, this code draws {RENDERER_VERSION!r}; regenerate the data"
        )
    try:
        return render_hand(hand["cards"], hand["suits"], int(spec["seed"]), tuple(spec["card_size"]))
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{where}: cannot draw its cards: {err}") from None


def prompt_images(row: dict[str, Any]) -> list[Image.Image]:
    """The images of the row's prompt, in the order of its image parts (GP-VL: one)."""
    return [row_image(row)]


# ---------------------------------------------------------------- dataset


def _with_defaults(cfg: dict) -> dict:
    return section_with_defaults(SECTION, cfg)


def _rng(seed: int, *parts: Any) -> Random:
    return Random(derive_seed(TASK_NAME, GENERATOR_VERSION, seed, *parts))


def _vl_pools(cfg: dict, seed: int) -> dict[str, list[tuple[str, ...]]]:
    """gp's pools (the same held-out hands as GP-L for a seed) plus visual OOD: held-out hands
    solvable under the ID rule, the same puzzles as eval_id in another colour."""
    pools = hand_pools(cfg, seed)
    return {**pools, EVAL_OOD_VISUAL: pools[EVAL_ID]}


def split_sizes(cfg: dict) -> dict[str, int]:
    return gp_sizes(cfg, SPLITS, TASK_NAME)


def check_setting(cfg: dict, seed: int) -> None:
    """Raise ValueError naming the keys when a split with rows has no solvable hand to draw from."""
    cfg = _with_defaults(cfg)
    check_pools(cfg, _vl_pools(cfg, seed), SPLITS, TASK_NAME)


def _make_row(split: str, index: int, ranks: tuple[str, ...], cfg: dict, seed: int, rng: Random) -> dict:
    """gp's row with the cards drawn: black suits, red on the visual-OOD split, and the image spec."""
    visual = "ood" if split == EVAL_OOD_VISUAL else "id"

    def image(rng: Random) -> dict:
        return {"renderer": RENDERER_VERSION, "seed": rng.randrange(_SEED_RANGE), "card_size": list(cfg["card_size"])}

    suits = RED_SUITS if visual == "ood" else BLACK_SUITS
    row = make_row(
        split, index, ranks, cfg, seed, rng, task=TASK_NAME, version=GENERATOR_VERSION, suits=suits, image=image
    )
    return {**row, "visual": visual}


def generate_splits(cfg: dict, seed: int) -> dict[str, list[dict]]:
    """Rows of every split, deterministic in (cfg, seed)."""
    cfg = _with_defaults(cfg)
    check_setting(cfg, seed)
    pools = _vl_pools(cfg, seed)
    out = {}
    for split, size in split_sizes(cfg).items():
        rng = _rng(seed, split)  # one stream per split: one split's size leaves the others alone
        out[split] = [
            _make_row(split, i, ms, cfg, seed, rng) for i, ms in enumerate(draw_hands(pools[split], size, rng))
        ]
    return out


# ---------------------------------------------------------------- task


class GeneralPointsVisionTask:
    """The GP-VL task (see base.Task). cfg: config section "gp_vl" (gp's game keys, card_size,
    sizes with eval_ood_visual). Episodes always check the recognised cards."""

    name = TASK_NAME
    section = SECTION
    splits = SPLITS
    label = "GP-VL"
    unit = "hand"  # what the paired statistics resample: a hand's multiset of ranks, which a split can repeat
    primary_metric = "success_rate"
    visual_metric_title = "episode success"
    visual_ood_look = "cards in red suits"
    # recognition accuracy (Figure 8): the attempts whose listed cards are the cards shown
    episode_ratios: ClassVar[dict[str, EpisodeRatio]] = {
        **EPISODE_RATIOS,
        "recognition_accuracy": EpisodeRatio(attempt_flag="cards_correct"),
    }
    rule_ood_diagnostics: ClassVar[dict[str, int]] = RULE_OOD_DIAGNOSTICS
    metric_titles: ClassVar[dict[str, str]] = METRIC_TITLES
    diagnostic_columns = DIAGNOSTIC_COLUMNS

    def resampling_unit(self, row: dict[str, Any]) -> Hashable | None:
        return hand_unit(row)

    def title(self, cfg: dict[str, Any]) -> str:
        return game_title(cfg, self.label)

    def generate_splits(self, cfg: dict[str, Any], seed: int) -> dict[str, list[dict[str, Any]]]:
        return generate_splits(cfg, seed)

    def check_config(self, cfg: dict[str, Any], seed: int) -> None:
        check_setting(cfg, seed)

    def make_episode(self, row: dict[str, Any], viter: int) -> GeneralPointsEpisode:
        episode = GeneralPointsEpisode(row, viter, check_cards=True)
        episode.images = prompt_images(row)  # feedback turns are text: the hand's image is the only one
        return episode

    def row_images(self, row: dict[str, Any]) -> list[Image.Image]:
        """The hand's image: the prompt's one image part (expert answers are text)."""
        return prompt_images(row)

    def aggregate(self, episodes: Sequence[GeneralPointsEpisode]) -> dict[str, float]:
        """gp's metrics; recognition_accuracy is the share of attempts whose cards match."""
        return aggregate(episodes)
