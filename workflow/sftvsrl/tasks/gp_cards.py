"""GeneralPoints cards and the rules that value them.

A rule is a face-card mapping: the values J, Q and K count as (SPEC.md "Task 1"). The study's two
are "id" (10, 10, 10: training) and "ood" (11, 12, 13: the paper's rule OOD); "all12" (12, 12, 12) is
one of the harder OOD splits of arXiv 2510.00237, and a varied-rule SFT row names its own mapping
(a tuple of three values). Cards shown as numbers from 14 to 19 (the "large numbers" split) count
as their number under every rule.
"""

from __future__ import annotations

from collections.abc import Sequence

RANKS = ("A", "2", "3", "4", "5", "6", "7", "8", "9", "10", "J", "Q", "K")
FACE_RANKS = ("J", "Q", "K")
LARGE_RANKS = tuple(str(v) for v in range(14, 20))  # never on a real card: values training never shows
BLACK_SUITS = ("S", "C")  # visual ID
RED_SUITS = ("H", "D")  # visual OOD (GP-VL)
FACE_VALUES = {"id": (10, 10, 10), "ood": (11, 12, 13), "all12": (12, 12, 12)}  # rule -> J, Q, K
RULES = tuple(FACE_VALUES)
ID_RULE = "id"

FaceValues = tuple[int, int, int]


def face_values(rule: str | Sequence[int]) -> FaceValues:
    """The values of J, Q and K under a named rule, or a mapping given as three values."""
    if isinstance(rule, str):
        if rule not in FACE_VALUES:
            raise ValueError(f"unknown rule {rule!r}; expected one of {RULES} or three face values")
        return FACE_VALUES[rule]
    faces = tuple(int(v) for v in rule)
    if len(faces) != len(FACE_RANKS):
        raise ValueError(f"a face-card mapping gives J, Q and K a value each; got {rule!r}")
    return faces  # type: ignore[return-value]


def card_value(rank: str, rule: str | Sequence[int]) -> int:
    """The value of a rank under a rule (a name of FACE_VALUES, or J, Q, K's values)."""
    faces = face_values(rule)
    if rank == "A":
        return 1
    if rank in FACE_RANKS:
        return faces[FACE_RANKS.index(rank)]
    if rank in RANKS or rank in LARGE_RANKS:
        return int(rank)
    raise ValueError(f"unknown rank {rank!r}")


def usual_values(cards: Sequence[str]) -> list[int]:
    """The cards' values under the training rule: what a model that memorised it would use."""
    return [card_value(c, ID_RULE) for c in cards]


def make_hand(
    ranks: Sequence[str], suits: Sequence[str], rule: str | Sequence[int], values: dict[str, int] | None = None
) -> dict[str, list]:
    """The row's "hand": card names, suits and values in hand order, under `rule` or, for the ranks
    `values` names, the values it states (the "fake" split)."""
    values = values or {}
    return {
        "cards": list(ranks),
        "suits": list(suits),
        "values": [values[r] if r in values else card_value(r, rule) for r in ranks],
    }
