"""GeneralPoints (GP-L): build a formula equal to the target from the values of the cards.

Cards, the two value rules, the prompt, the expert answer, the verifier and its reward,
the multi-attempt episode and the dataset splits. Facts from SPEC.md "Task 1". Formula
and answer parsing live in gp_formula, the exact solver in gp_solver.
"""

from __future__ import annotations

import copy
import json
import math
from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Sequence
from itertools import combinations_with_replacement
from random import Random
from typing import Any

from ..config import section_with_defaults
from ..names import EVAL_OOD_RULE, SFT_VARIED, TEXT_SPLITS
from . import gp_harder
from .answers import derive_seed
from .base import Attempt, EpisodeRatio
from .gp_cards import (  # noqa: F401 (the cards' names, re-exported: callers know them as gp's)
    BLACK_SUITS,
    FACE_RANKS,
    ID_RULE,
    LARGE_RANKS,
    RANKS,
    RED_SUITS,
    RULES,
    card_value,
    face_values,
    make_hand,
    usual_values,
)
from .gp_formula import FormulaError, parse_answer, parse_formula
from .gp_solver import solutions, solvable

GENERATOR_VERSION = "gp-1"  # bump when the rows generate_splits makes change
TASK_NAME = "gp_l"
SECTION = "gp"  # its config section
SPLITS = TEXT_SPLITS
DEFAULT_TARGET = 24  # the game's own target ("24 points"); a study's comes from its config (gp.target)

REWARDS = {
    "correct": 5.0,
    "wrong_value": -1.0,
    "wrong_numbers": -2.0,  # a number not in the hand, or a card used more than once
    "unused_card": -2.0,
    "wrong_numbers_unused_card": -4.0,  # both of the above
    "illegal": -3.0,  # bad characters or token order, unbalanced parentheses, no formula
    "wrong_cards": -1.5,  # VL only (check_cards=True): recognised cards differ
}

PROMPT_STYLES = ("paper", "short")
TRAIN_SPLITS = ("sft", SFT_VARIED)  # the splits whose rows carry an expert answer


def rule_sentence(hand: dict, rule: str | Sequence[int], style: str) -> str:
    """How the prompt states the rule in force: the face-card mapping ("J, Q and K count as 10."), or,
    for the fake split, the value of each card it shows."""
    quote = "'" if style == "paper" else ""
    if rule == gp_harder.FAKE:
        stated = dict(zip(hand["cards"], hand["values"]))
        listed = ", ".join(f"{quote}{c}{quote} = {quote}{v}{quote}" for c, v in stated.items())
        lead = "The" if style == "short" else "the"
        return f"{lead} cards count as stated, not as usual: {listed}" + ("." if style == "short" else "")
    faces = face_values(rule)
    if style == "short":
        same = len(set(faces)) == 1
        return f"J, Q and K count as {faces[0] if same else '{}, {} and {}'.format(*faces)}."
    if len(set(faces)) == 1:
        return f"'J', 'Q', and 'K' count as '{faces[0]}'"
    return "'J', 'Q', and 'K' count as '{}', '{}', and '{}' respectively".format(*faces)


# ---------------------------------------------------------------- prompt and expert answer


def build_prompt(
    hand: dict, rule: str | Sequence[int], target: int = DEFAULT_TARGET, variant: str = "text", style: str = "paper"
) -> list[dict]:
    """The chat that opens an episode: one user turn.

    style "paper": a paraphrase of the paper's prompt. "short": the same facts (the face-card
    rule in force, each card once, the operators, the cards, the answer's shape) in about a
    third of the tokens; the prompt is most of every training sequence, so on a CPU it sets
    the cost of SFT, RL and evaluation.

    variant "text" (GP-L) names the cards; "image" (GP-VL) leads the last user turn with an
    image part and names no card (the image itself travels beside the chat: tasks/gp_vl.py).
    """
    if variant not in ("text", "image"):
        raise ValueError(f"unknown prompt variant {variant!r}")
    if style not in PROMPT_STYLES:
        raise ValueError(f"unknown prompt style {style!r}; expected one of {PROMPT_STYLES}")
    cards = hand["cards"]
    n = len(cards)
    listed = ", ".join(f"'{c}'" for c in cards)
    # The image variant (GP-VL) shows the cards instead of naming them: the model must read them.
    cards_line = f"Cards: [{listed}]" if variant == "text" else "Cards: shown in the image."
    if style == "short":
        # The instruction is the same for every hand and both rules, so it goes first (a system
        # turn, which also replaces the chat template's default one): the rollout engine reads a
        # prefix shared by every episode once. The rule and the cards follow in the user turn.
        instruction = (
            f"Make {target} from the values of the cards, each card used once, with + - * / ( ). "
            'Answer as JSON: {"cards": [...], "number": [their values], "formula": "...='
            f'{target}"}}'
        )
        chat = [
            {"role": "system", "content": instruction},
            {"role": "user", "content": f"{rule_sentence(hand, rule, style)}\n{cards_line}"},
        ]
        return _show_image(chat) if variant == "image" else chat
    text = (
        f"You are an expert {target} points card game player. You receive {n} cards. "
        f"Note that {rule_sentence(hand, rule, style)}, and each card must be used once. "
        f"Your goal is to write a formula that equals {target}, using the numbers of the "
        f"cards and the operators '+', '-', '*', '/', '(', ')' and '='.\n"
        f"{cards_line}\n"
        "Answer with a JSON object of this form:\n"
        '{"cards": [x, y, ...], "number": [a, b, ...], "formula": "an equation"}\n'
        '"cards" lists the cards, "number" gives their values under the rule above, and '
        f'"formula" is your equation, ending in "={target}".'
    )
    chat = [{"role": "user", "content": text}]
    return _show_image(chat) if variant == "image" else chat


def _show_image(chat: list[dict]) -> list[dict]:
    """The chat with its last user turn led by an image part: the content shape (a list of
    {"type": "image"} and {"type": "text"} parts) that multimodal chat templates and processors read."""
    *head, last = chat
    return [*head, {"role": last["role"], "content": [{"type": "image"}, {"type": "text", "text": last["content"]}]}]


def expert_answer(hand: dict, target: int = DEFAULT_TARGET, rng: Random | None = None) -> str:
    """A correct answer as JSON: the cards, their values and one solution "...=target".

    The solution is `rng.choice` among the distinct solutions, or the first in the
    solver's canonical order when no rng is given. Raises ValueError if unsolvable.
    """
    found = solutions(hand["values"], target)
    if not found:
        raise ValueError(f"hand {hand['cards']} has no solution for {target}")
    formula = rng.choice(found) if rng is not None else found[0]
    return json.dumps({"cards": list(hand["cards"]), "number": list(hand["values"]), "formula": f"{formula}={target}"})


# ---------------------------------------------------------------- verifier


def verify_answer(
    answer: str, hand: dict, rule: str, target: int = DEFAULT_TARGET, check_cards: bool = False
) -> Attempt:
    """Score one answer (SPEC's reward table) and collect its diagnostics.

    `check_cards` (GP-VL) first checks the recognised cards: a mismatch gives
    "wrong_cards" (-1.5). The Attempt's feedback is the message a retry would get.
    """
    fields = parse_answer(answer)
    values = list(hand["values"])
    info: dict[str, Any] = {
        "parsed": isinstance(fields.get("formula"), str),
        "cards_correct": _cards_match(fields.get("cards"), hand["cards"]),
        "number_correct": _ints(fields.get("number")) == values,
    }
    formula, error = None, "your answer contains no formula"
    if info["parsed"]:
        try:
            formula = parse_formula(fields["formula"])
        except FormulaError as exc:
            error = f"your formula is illegal: {exc}"
    used = Counter(formula.numbers) if formula else Counter()
    info["legal"] = formula is not None
    info["value_use"] = formula is not None and used == Counter(values)
    usual = usual_values(hand["cards"])
    if rule != ID_RULE and usual != values:  # the rule in force changes some card's value
        info["rule_memorised"] = _rule_memorised(fields.get("number"), used, values, usual)

    if check_cards and not info["cards_correct"]:
        outcome, reasons = "wrong_cards", ["the cards you listed are not the cards you were given"]
    elif formula is None:
        outcome, reasons = "illegal", [error]
    else:
        outcome, reasons = _judge(formula.value, used, values, target)
    info["outcome"] = outcome
    correct = outcome == "correct"
    feedback = "" if correct else f"You failed this trial because {_join(reasons)}."
    return Attempt(
        answer=answer, reward=REWARDS[outcome], correct=correct, outcome=outcome, feedback=feedback, info=info
    )


def _judge(value: Any, used: Counter, values: list[int], target: int) -> tuple[str, list[str]]:
    """Outcome and reasons for a legal formula."""
    have = Counter(values)
    extra, unused = used - have, have - used
    reasons = []
    for v in sorted(extra):
        if v in have:
            reasons.append(f"you used {v} more often than there are cards with that value")
        else:
            reasons.append(f"you used {v}, which is not among the card values")
    if unused:
        left = ", ".join(str(v) for v in sorted(unused.elements()))
        reasons.append(f"you did not use every card (unused: {left})")
    if extra and unused:
        return "wrong_numbers_unused_card", reasons
    if extra:
        return "wrong_numbers", reasons
    if unused:
        return "unused_card", reasons
    if value == target:
        return "correct", []
    return "wrong_value", [f"your formula evaluates to {value}, not {target}"]


def _join(reasons: list[str]) -> str:
    return reasons[0] if len(reasons) == 1 else ", ".join(reasons[:-1]) + ", and " + reasons[-1]


def _ints(items: Any) -> list[int] | None:
    """A list of ints from a model's list (ints, whole floats or digit strings), else None."""
    if not isinstance(items, list):
        return None
    out = []
    for x in items:
        if isinstance(x, bool):
            return None
        if isinstance(x, int):
            out.append(x)
        elif isinstance(x, float) and x.is_integer():
            out.append(int(x))
        elif isinstance(x, str) and x.strip().isascii() and x.strip().isdigit() and len(x.strip()) <= 6:
            out.append(int(x.strip()))
        else:
            return None
    return out


def _cards_match(items: Any, cards: Sequence[str]) -> bool:
    """The answer's "cards" equal the hand's as a multiset, in any order, as the reference compares them
    (sorted lists); case-insensitive, 3 == "3"."""
    if not isinstance(items, list) or len(items) != len(cards):
        return False
    if any(isinstance(x, bool) or not isinstance(x, (str, int)) for x in items):
        return False
    return Counter(str(x).strip().upper() for x in items) == Counter(cards)


def _rule_memorised(numbers: Any, used: Counter, values: list[int], usual: list[int]) -> bool:
    """The answer gives a card its value under the training rule where the rule in force gives another
    (rule OOD: a face card counted 10): in the "number" field at that card's position, or as the formula's
    multiset of numbers matching the hand's usual values."""
    changed = [i for i, (v, u) in enumerate(zip(values, usual)) if v != u]
    given = _ints(numbers)
    if given is not None and len(given) == len(values) and any(given[i] == usual[i] for i in changed):
        return True
    return bool(changed) and used == Counter(usual) != Counter(values)


# ---------------------------------------------------------------- episode


class GeneralPointsEpisode:
    """A GP episode: up to `viter` scored attempts, verifier feedback between them."""

    def __init__(self, row: dict, viter: int, check_cards: bool = False):
        if viter < 1:
            raise ValueError(f"viter must be >= 1, got {viter}")
        self.row = row
        self.viter = viter
        self.check_cards = check_cards
        self.messages: list[dict[str, Any]] = copy.deepcopy(row["prompt"])
        self.attempts: list[Attempt] = []
        self.done = False
        self.success = False

    def step(self, answer: str) -> Attempt:
        if self.done:
            raise RuntimeError("step() on a finished episode")
        row = self.row
        attempt = verify_answer(answer, row["hand"], row["rule"], row["target"], self.check_cards)
        self.attempts.append(attempt)
        self.messages.append({"role": "assistant", "content": answer})
        self.success = attempt.correct
        self.done = attempt.correct or len(self.attempts) >= self.viter
        if self.done:
            attempt.feedback = ""  # no further user turn is appended
        else:
            self.messages.append({"role": "user", "content": attempt.feedback})
        return attempt

    def metrics(self) -> dict[str, float]:
        atts = self.attempts
        first = atts[0] if atts else None
        out = {
            "success": float(self.success),
            "attempts": float(len(atts)),
            "return": float(sum(a.reward for a in atts)),
            "first_attempt_success": float(bool(first and first.correct)),
            "first_attempt_parsed": float(bool(first and first.info.get("parsed"))),
        }
        out.update(_diagnostic_rates(atts))
        return out


def _mean(flags: Iterable[bool]) -> float:
    flags = list(flags)
    return sum(map(bool, flags)) / len(flags) if flags else 0.0


def _diagnostic_rates(attempts: list[Attempt]) -> dict[str, float]:
    """Per-attempt diagnostic shares; rule_memorisation_rate only where the rule is OOD."""
    out = {
        "parse_rate": _mean(a.info.get("parsed") for a in attempts),
        "value_use_rate": _mean(a.info.get("value_use") for a in attempts),
        "number_accuracy": _mean(a.info.get("number_correct") for a in attempts),
        "recognition_accuracy": _mean(a.info.get("cards_correct") for a in attempts),
    }
    ood = [a for a in attempts if "rule_memorised" in a.info]
    if ood:
        out["rule_memorisation_rate"] = _mean(a.info["rule_memorised"] for a in ood)
    return out


# ---------------------------------------------------------------- dataset


def _rng(seed: int, *parts: Any) -> Random:
    """A Random seeded by derive_seed. Its one part is the repr of the whole tuple: the
    digest text of GENERATOR_VERSION gp-1, kept so the data stay as they are."""
    return Random(derive_seed(repr((TASK_NAME, GENERATOR_VERSION, seed) + parts)))


def hand_pools(cfg: dict, seed: int) -> dict[str, list[tuple[str, ...]]]:
    """Rank multisets each split draws from, solvable under the split's rule.

    Train and eval are disjoint unless cfg["eval_overlaps_train"]: the partition is by
    multiset of ID-rule values, a little stricter than by ranks, since under the ID
    rule {J,2,3,4} and {K,2,3,4} are the same puzzle.
    """
    target, num_cards = cfg["target"], cfg["num_cards"]
    multisets = list(combinations_with_replacement(RANKS, num_cards))

    def id_key(ms):
        return tuple(sorted(card_value(r, "id") for r in ms))

    groups = sorted({id_key(ms) for ms in multisets})
    _rng(seed, "pools").shuffle(groups)
    eval_groups = set(groups[: max(1, round(cfg["eval_pool_fraction"] * len(groups)))])

    def ok(ms, rule):
        return solvable([card_value(r, rule) for r in ms], target)

    overlap = cfg["eval_overlaps_train"]
    train = [ms for ms in multisets if (overlap or id_key(ms) not in eval_groups) and ok(ms, "id")]
    held = [ms for ms in multisets if overlap or id_key(ms) in eval_groups]
    return {
        "sft": train,
        "rl": train,
        "eval_id": [ms for ms in held if ok(ms, "id")],
        "eval_ood_rule": [ms for ms in held if any(r in FACE_RANKS for r in ms) and ok(ms, "ood")],
        "held": held,  # what any eval split may draw from (the harder splits too)
    }


def _with_defaults(cfg: dict) -> dict:
    """The task's config section completed by the schema's defaults (callers may pass a bare section)."""
    return section_with_defaults(SECTION, cfg)


def split_sizes(cfg: dict, splits: tuple[str, ...] = SPLITS, section: str = "gp") -> dict[str, int]:
    """Rows per split; a split that `sizes` does not name (possible only in a bare section) gets none."""
    sizes = cfg["sizes"]
    unknown = set(sizes) - set(splits)
    if unknown:
        raise ValueError(f"unknown {section} split(s) {sorted(unknown)}; expected {splits}")
    return {split: int(sizes.get(split, 0)) for split in splits}


def check_pools(cfg: dict, pools: dict[str, list], splits: tuple[str, ...] = SPLITS, section: str = "gp") -> None:
    """Raise ValueError, naming the config keys, when a split with rows has no hand to draw from
    (e.g. 2 cards: almost no hand is solvable; a target no OOD hand with a face card reaches)."""
    empty = [split for split, size in split_sizes(cfg, splits, section).items() if size and not pools[split]]
    if empty:
        setting = (
            f"{section}.num_cards={cfg['num_cards']}, {section}.target={cfg['target']}, "
            f"{section}.eval_overlaps_train={cfg['eval_overlaps_train']}"
        )
        raise ValueError(
            f"{setting}: no solvable hand for split(s) {', '.join(empty)} ({section}.sizes asks for rows); "
            f"change the target or the number of cards, or set {section}.eval_overlaps_train: true"
        )


def check_setting(cfg: dict, seed: int) -> None:
    """`check_pools` for GP-L's splits."""
    cfg = _with_defaults(cfg)
    pools = hand_pools(cfg, seed)
    check_pools(cfg, pools)
    _extra_pools(cfg, pools)


def draw_hands(pool: list, size: int, rng: Random) -> list:
    """`size` items: passes over the pool in fresh shuffled orders (even coverage)."""
    out: list = []
    while len(out) < size:
        order = list(pool)
        rng.shuffle(order)
        out.extend(order[: size - len(out)])
    return out


def make_row(
    split: str,
    index: int,
    ranks: tuple[str, ...],
    cfg: dict,
    seed: int,
    rng: Random,
    *,
    task: str = TASK_NAME,
    version: str = GENERATOR_VERSION,
    suits: Sequence[str] = BLACK_SUITS,
    image: Callable[[Random], dict] | None = None,
    draw: gp_harder.Draw | None = None,
) -> dict:
    """One dataset row: the hand (ranks shuffled, suits drawn from `suits`), the prompt and, for
    SFT, the expert answer. GP-VL passes its task name, version, suits and `image` (the drawing's
    spec from `rng`, drawn before the answer), which makes the prompt show the cards. An extra split
    (gp_harder) passes its `draw`: the rule in force and any values the prompt states."""
    rule = draw.rule if draw else "ood" if split == EVAL_OOD_RULE else "id"
    target = cfg["target"]
    order = list(ranks)
    rng.shuffle(order)
    hand = make_hand(order, [rng.choice(suits) for _ in order], rule, dict(draw.values) if draw else None)
    row = {
        "id": f"{task}-{split}-{index:06d}",
        "task": task,
        "split": split,
        "rule": rule if isinstance(rule, str) else gp_harder.VARIED,
        "seed": seed,
        "generator_version": version,
        "hand": hand,
        "target": target,
    }
    if not isinstance(rule, str):
        row["faces"] = list(rule)  # a varied-rule row's own mapping of J, Q, K
    if image is not None:
        row["image"] = image(rng)
    variant = "text" if image is None else "image"
    row["prompt"] = build_prompt(hand, rule, target, variant=variant, style=cfg["prompt"])
    if split in TRAIN_SPLITS:
        row["completion"] = [{"role": "assistant", "content": expert_answer(hand, target, rng)}]
    return row


def generate_splits(cfg: dict, seed: int) -> dict[str, list[dict]]:
    """Rows of every split, deterministic in (cfg, seed); see GeneralPointsTask."""
    cfg = _with_defaults(cfg)
    sizes = split_sizes(cfg)
    pools = hand_pools(cfg, seed)
    out = {}
    for split, size in sizes.items():
        if size and not pools[split]:
            raise ValueError(f"no solvable hand for split {split!r} with {cfg}")
        rng = _rng(seed, split)  # one stream per split: one split's size leaves the others alone
        out[split] = [
            make_row(split, i, ms, cfg, seed, rng) for i, ms in enumerate(draw_hands(pools[split], size, rng))
        ]
    return out | generate_extra_splits(cfg, seed, pools)


def generate_extra_splits(cfg: dict, seed: int, pools: dict[str, list]) -> dict[str, list[dict]]:
    """Rows of the splits the config adds (gp_harder: harder OOD splits, varied-rule SFT)."""
    extra_pools, mappings = _extra_pools(cfg, pools)
    out = {}
    for split, size in gp_harder.extra_sizes(cfg).items():
        rng = _rng(seed, split)
        if split == SFT_VARIED:
            draws = gp_harder.varied_draws(cfg, mappings, size, rng)
        elif split == gp_harder.OOD_SPLITS["fake"]:
            draws = gp_harder.fake_draws(cfg, pools["held"], size, rng)
        else:
            rule = "all12" if split == gp_harder.OOD_SPLITS["all12"] else ID_RULE
            draws = [gp_harder.Draw(ms, rule) for ms in draw_hands(extra_pools[split], size, rng)]
        out[split] = [make_row(split, i, d.ranks, cfg, seed, rng, draw=d) for i, d in enumerate(draws)]
    return out


def _extra_pools(cfg: dict, pools: dict[str, list]) -> tuple[dict[str, list], list]:
    """The extra splits' rank pools and the varied-rule mappings, checked (errors name the config key)."""
    gp_harder.check_keys(cfg)
    extra = gp_harder.rank_pools(cfg, pools["held"])
    mappings = gp_harder.varied_mappings(cfg) if SFT_VARIED in gp_harder.extra_splits(cfg) else []
    gp_harder.check_pools(cfg, extra, mappings)
    return extra, mappings


def hand_space(cfg: dict, seed: int) -> dict[str, dict]:
    """The distinct hands each split draws from (the generator's record, logged by the data job)."""
    cfg = _with_defaults(cfg)
    pools = hand_pools(cfg, seed)
    extra, mappings = _extra_pools(cfg, pools)
    own = {split: {"rank multisets": len(pools[split])} for split in SPLITS}
    return own | gp_harder.hand_space(cfg, extra, mappings)


# ---------------------------------------------------------------- task


def game_title(cfg: dict[str, Any], label: str) -> str:
    """GP-L's and GP-VL's title from their section, e.g. "GeneralPoints, 3 cards, target 24 (GP-L)"."""
    return f"GeneralPoints, {cfg['num_cards']} cards, target {cfg['target']} ({label})"


# What the report pairs episode by episode (besides success), and the rule-OOD diagnostics among them: an answer
# that counts a face card as 10 under the OOD rule applies the training rule (against OOD success); one whose
# numbers are the cards' values under the split's rule reads the cards right (with it).
EPISODE_RATIOS = {
    "rule_memorisation_rate": EpisodeRatio(attempt_flag="rule_memorised"),
    "number_accuracy": EpisodeRatio(attempt_flag="number_correct"),
}
RULE_OOD_DIAGNOSTICS = {"rule_memorisation_rate": -1, "number_accuracy": +1}
# The report's titles of GP's own metrics, all of them in its rule-OOD diagnostics table
METRIC_TITLES = {
    "rule_memorisation_rate": "rule memorisation",
    "value_use_rate": "value use",
    "number_accuracy": "number accuracy",
}
DIAGNOSTIC_COLUMNS = tuple(METRIC_TITLES)


def hand_unit(row: dict[str, Any]) -> Hashable | None:
    """The resampling unit of a GeneralPoints episode: its hand's multiset of ranks (a split can repeat a hand)."""
    hand = row.get("hand")
    if isinstance(hand, dict) and hand.get("cards"):
        return ("hand",) + tuple(sorted(str(c) for c in hand["cards"]))
    return None


class GeneralPointsTask:
    """The GP-L task (see base.Task).

    cfg (config section "gp", defaults from the schema): target, num_cards, sizes {split: rows},
    eval_overlaps_train (False: eval hands never share a value multiset with sft/rl
    hands; True: the paper's setting), eval_pool_fraction (share of value multisets held
    out for eval when disjoint), prompt (paper or short).
    """

    name = TASK_NAME
    section = SECTION
    splits = SPLITS
    label = "GP-L"
    split_titles = gp_harder.SPLIT_TITLES
    extra_keys = gp_harder.EXTRA_KEYS
    unit = "hand"  # what the paired statistics resample: a hand's multiset of ranks, which a split can repeat
    primary_metric = "success_rate"
    visual_metric_title = None
    visual_ood_look = None
    episode_ratios = EPISODE_RATIOS
    rule_ood_diagnostics = RULE_OOD_DIAGNOSTICS
    metric_titles = METRIC_TITLES
    diagnostic_columns = DIAGNOSTIC_COLUMNS

    def resampling_unit(self, row: dict[str, Any]) -> Hashable | None:
        return hand_unit(row)

    def title(self, cfg: dict[str, Any]) -> str:
        return game_title(cfg, self.label)

    def generate_splits(self, cfg: dict[str, Any], seed: int) -> dict[str, list[dict[str, Any]]]:
        return generate_splits(cfg, seed)

    def check_config(self, cfg: dict[str, Any], seed: int) -> None:
        check_setting(cfg, seed)

    def extra_splits(self, cfg: dict[str, Any]) -> tuple[str, ...]:
        """The splits the section adds to `splits`: gp.varied_rules (sft_varied), gp.ood_splits (eval)."""
        return gp_harder.extra_splits(_with_defaults(cfg))

    def hand_space(self, cfg: dict[str, Any], seed: int) -> dict[str, dict]:
        return hand_space(cfg, seed)

    def make_episode(self, row: dict[str, Any], viter: int, check_cards: bool = False) -> GeneralPointsEpisode:
        return GeneralPointsEpisode(row, viter, check_cards)

    def aggregate(self, episodes: Sequence[GeneralPointsEpisode]) -> dict[str, float]:
        return aggregate(episodes)


def aggregate(episodes: Sequence[GeneralPointsEpisode]) -> dict[str, float]:
    """Split-level metrics; attempt-level shares pool the attempts of all episodes.

    rule_memorisation_rate is present only when some episode ran under the OOD rule.
    """
    n = len(episodes)
    attempts = [a for ep in episodes for a in ep.attempts]
    p = _mean(ep.success for ep in episodes)
    out = {
        "episodes": float(n),
        "success_rate": p,
        "success_se": math.sqrt(p * (1 - p) / n) if n else 0.0,
        "first_attempt_success_rate": _mean(bool(ep.attempts and ep.attempts[0].correct) for ep in episodes),
        "mean_attempts": len(attempts) / n if n else 0.0,
        "mean_reward_per_attempt": sum(a.reward for a in attempts) / len(attempts) if attempts else 0.0,
    }
    rates = _diagnostic_rates(attempts)
    parse_rate = rates.pop("parse_rate")
    out["format_error_rate"] = 1.0 - parse_rate if attempts else 0.0
    out.update(rates)
    return out
