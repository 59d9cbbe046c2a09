"""GP-L's conditions from arXiv 2510.00237: harder OOD eval splits and SFT rows under varied face-card rules.

What each extra split draws, and how large its hand space is (SPEC.md "The harder GeneralPoints test
splits"); gp.py turns the draws into rows. Each split is chosen by its config key: `gp.ood_splits` names
the eval splits (each as many rows as `gp.sizes.eval_ood_rule`), `gp.varied_rules.rows` > 0 makes the
`sft_varied` split.

- all12: J, Q and K all count 12; hands with a face card, solvable under that rule.
- cards: one card more than the game's, the training rule.
- large: at least one card shown as a number from 14 to 19, the training rule.
- fake: the prompt states a value for each card that differs from its usual one, the same for every
  copy of a rank; only the stated values score.
- sft_varied: each row a face-card mapping (each of J, Q, K a value in `gp.varied_rules.face_values`) and
  a hand with a face card it values other than 10, solvable under it; the ID, rule-OOD and all-12
  mappings are held out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations_with_replacement, product
from random import Random

from ..names import SFT_VARIED
from .gp_cards import FACE_RANKS, FACE_VALUES, LARGE_RANKS, RANKS, card_value, face_values
from .gp_solver import solvable

# gp.ood_splits name -> the split it makes
OOD_SPLITS = {"all12": "eval_ood_all12", "cards": "eval_ood_cards", "large": "eval_ood_large", "fake": "eval_ood_fake"}
SPLIT_TITLES = {
    "eval_ood_all12": "OOD: J, Q and K count 12",
    "eval_ood_cards": "OOD: one card more",
    "eval_ood_large": "OOD: a card from 14 to 19",
    "eval_ood_fake": "OOD: stated card values",
}
EXTRA_KEYS = ("ood_splits", "varied_rules")  # the gp keys only these splits read
FAKE = "fake"  # the rule of the fake split's rows: the prompt states every card's value
VARIED = "varied"  # the rule of varied-rule SFT rows: the row's own face-card mapping (`faces`)
HELD_OUT_MAPPINGS = tuple(FACE_VALUES.values())  # the mappings the eval splits test
MAX_TRIES = 1000  # draws per row before a sampled split gives up (it then names its config key)


@dataclass(frozen=True)
class Draw:
    """What one row shows: its ranks, the rule in force and, for fake and varied rows, the values stated."""

    ranks: tuple[str, ...]
    rule: str | tuple[int, int, int]  # a name of FACE_VALUES, FAKE, or a varied row's mapping
    values: tuple[tuple[str, int], ...] = ()  # fake rows: rank -> stated value


def extra_splits(cfg: dict) -> tuple[str, ...]:
    """The splits `cfg` (a gp section with defaults) adds to GP-L's own, in file order."""
    varied = (SFT_VARIED,) if cfg["varied_rules"]["rows"] else ()
    return varied + tuple(OOD_SPLITS[name] for name in cfg["ood_splits"])


def extra_sizes(cfg: dict) -> dict[str, int]:
    """Rows per extra split: gp.varied_rules.rows for sft_varied, the rule-OOD split's size for the others."""
    size = cfg["sizes"].get("eval_ood_rule", 0)
    return {split: cfg["varied_rules"]["rows"] if split == SFT_VARIED else size for split in extra_splits(cfg)}


def _has_face(ranks: Sequence[str]) -> bool:
    return any(r in FACE_RANKS for r in ranks)


def rank_pools(cfg: dict, held: list[tuple[str, ...]]) -> dict[str, list[tuple[str, ...]]]:
    """Rank multisets of the enumerated splits (all12, cards, large), solvable under their rule; `held`: the
    multisets evaluation may use (all of them when eval overlaps train)."""
    target, n = cfg["target"], cfg["num_cards"]

    def ok(ms, rule="id"):
        return solvable([card_value(r, rule) for r in ms], target)

    pools = {}
    if "all12" in cfg["ood_splits"]:
        pools[OOD_SPLITS["all12"]] = [ms for ms in held if _has_face(ms) and ok(ms, "all12")]
    if "cards" in cfg["ood_splits"]:
        pools[OOD_SPLITS["cards"]] = [ms for ms in combinations_with_replacement(RANKS, n + 1) if ok(ms)]
    if "large" in cfg["ood_splits"]:
        shown = combinations_with_replacement(RANKS + LARGE_RANKS, n)
        pools[OOD_SPLITS["large"]] = [ms for ms in shown if any(r in LARGE_RANKS for r in ms) and ok(ms)]
    return pools


def varied_mappings(cfg: dict) -> list[tuple[int, int, int]]:
    """Face-card mappings of the varied-rule SFT rows: every (J, Q, K) in the configured range but the
    mappings the eval splits test, keeping those that make at least one solvable hand with a face card."""
    low, high = cfg["varied_rules"]["face_values"]
    faced = _faced(cfg)
    mappings = []
    for faces in product(range(low, high + 1), repeat=3):
        if faces in HELD_OUT_MAPPINGS:
            continue
        if any(solvable([card_value(r, faces) for r in ms], cfg["target"]) for ms in faced):
            mappings.append(faces)
    return mappings


def _faced(cfg: dict) -> list[tuple[str, ...]]:
    return [ms for ms in combinations_with_replacement(RANKS, cfg["num_cards"]) if _has_face(ms)]


def varied_draws(cfg: dict, mappings: list, size: int, rng: Random) -> list[Draw]:
    """Varied-rule rows: each a mapping, then a hand with a face card solvable under it."""
    faced = _faced(cfg)
    return [_sample(lambda: _varied(cfg, mappings, faced, rng), "gp.varied_rules") for _ in range(size)]


def fake_draws(cfg: dict, held: list[tuple[str, ...]], size: int, rng: Random) -> list[Draw]:
    """Fake rows: ranks from `held`, each rank a stated value from 1 to 13 other than its usual one, the
    stated values solvable."""
    return [_sample(lambda: _fake(cfg, held, rng), "gp.ood_splits (fake)") for _ in range(size)]


def _sample(draw, key: str) -> Draw:
    for _ in range(MAX_TRIES):
        found = draw()
        if found is not None:
            return found
    raise ValueError(f"config key {key}: no solvable hand found in {MAX_TRIES} draws")


def _varied(cfg: dict, mappings: list, faced: list, rng: Random) -> Draw | None:
    """A mapping and a hand it values differently from the training rule (a face card not counted 10)."""
    faces, ranks = rng.choice(mappings), rng.choice(faced)
    values = [card_value(r, faces) for r in ranks]
    if values == [card_value(r, "id") for r in ranks] or not solvable(values, cfg["target"]):
        return None
    return Draw(ranks, faces)


def _fake(cfg: dict, held: list, rng: Random) -> Draw | None:
    ranks = rng.choice(held)
    stated = {r: rng.choice([v for v in range(1, 14) if v != card_value(r, "id")]) for r in dict.fromkeys(ranks)}
    return Draw(ranks, FAKE, tuple(stated.items())) if solvable([stated[r] for r in ranks], cfg["target"]) else None


def hand_space(cfg: dict, pools: dict[str, list], mappings: list) -> dict[str, dict]:
    """Each extra split's hand space for the generator's record: the distinct hands it draws from."""
    out = {split: {"rank multisets": len(pool)} for split, pool in pools.items()}
    if SFT_VARIED in extra_splits(cfg):
        out[SFT_VARIED] = {"face-card mappings": len(mappings)}
    if "fake" in cfg["ood_splits"]:
        values = combinations_with_replacement(range(1, 14), cfg["num_cards"])
        out[OOD_SPLITS["fake"]] = {"solvable stated value sets": sum(solvable(v, cfg["target"]) for v in values)}
    return out


def check_keys(cfg: dict) -> None:
    """Raise ValueError naming the config key when a setting cannot define its extra splits (before any pool)."""
    if "cards" in cfg["ood_splits"] and cfg["num_cards"] >= 5:
        raise ValueError("config key gp.ood_splits: 'cards' adds a card and the solver stops at 5 (gp.num_cards <= 4)")
    low, high = cfg["varied_rules"]["face_values"]
    if low > high:
        raise ValueError(f"config key gp.varied_rules.face_values: [{low}, {high}] is no range (low > high)")


def check_pools(cfg: dict, pools: dict[str, list], mappings: list) -> None:
    """Raise ValueError naming the config key when an extra split has no hand to draw."""
    empty = [split for split, pool in pools.items() if not pool]
    if empty:
        raise ValueError(
            f"config key gp.ood_splits: no solvable hand for {', '.join(empty)} "
            f"(gp.num_cards={cfg['num_cards']}, gp.target={cfg['target']})"
        )
    if SFT_VARIED in extra_splits(cfg) and not mappings:
        low, high = cfg["varied_rules"]["face_values"]
        raise ValueError(
            f"config key gp.varied_rules.face_values: no face-card mapping from {low} to {high} other than "
            f"{', '.join(map(str, HELD_OUT_MAPPINGS))} makes a solvable hand (gp.target={cfg['target']})"
        )


def faces_of(draw: Draw) -> tuple[int, int, int] | None:
    """A varied row's mapping (None for the named rules)."""
    return None if isinstance(draw.rule, str) else face_values(draw.rule)
