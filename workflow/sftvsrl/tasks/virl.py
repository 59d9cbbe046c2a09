"""V-IRL navigation, text variant (task "virl_l").

The routes (procedural cities or the paper's `route_infos.json`, and the rail of points an
agent walks) come from virl_city.py; this module is the task on top of them: the prompt, the
answer's parsing and verification, the episode and the splits.

Rule "id" uses absolute turns, `turn_direction(<compass point>)`; rule "ood" uses
relative turns, `turn_direction(<left|right|slightly left|slightly right>)`. The rule
reaches the model only through the action space stated in the prompt.

Before editing: SFT rows are the RL/evaluation chat cut at one point, with the expert's answers
as history, so SFT and RL/evaluation see identical contexts. Pure standard library: no torch,
no numpy.

Details (the chat shape, the short prompt): docs/code-notes.md#workflowsftvsrltasksvirlpy
"""

from __future__ import annotations

import copy
import json
import math
import re
from typing import Any, ClassVar

from ..config import section_with_defaults
from .answers import parse_objects
from .base import Attempt, EpisodeRatio
from .virl_city import FORWARD, STOP, RoutePools
from .virl_official import COMPASS

TASK_NAME = "virl_l"
SECTION = "virl"  # its config section
GENERATOR_VERSION = "virl-gen-2"  # 2: landmarks at the end of each leg, as the reference reads a block
SPLITS = ("sft", "rl", "eval_id", "eval_ood_rule")
SPLIT_RULE = {"sft": "id", "rl": "id", "eval_id": "id", "eval_ood_rule": "ood"}

RELATIVE = ("left", "right", "slightly left", "slightly right")

REWARD_CORRECT = 1.0
REWARD_WRONG = -1.0
REWARD_HALLUCINATION = -1.5  # a wrong action whose observation gets the intersection wrong, either way
FAIL_PREFIX = "You failed this trial because"
# the reference's reasons for a wrong attempt (LeslieTrue/SFTvsRL), in the order it checks them
REASON_NOT_AT_INTERSECTION = "you are not at any intersection"
REASON_AT_INTERSECTION = "you are at an intersection"
REASON_INCORRECT_ACTION = "you make incorrect action"
REASON_FORMAT = 'your answer is not JSON with an "action" key'  # ours (docs/fidelity.md)


# The config section "virl" (defaults in workflow/schemas/config.schema.yaml): routes (path to an
# official route_infos.json; null: procedural cities), min/max_intersections, cities {train, eval},
# same_cities (evaluate on the training cities, new routes), sizes {split: rows}, grid (intersections
# per city, east x north), block_m (range of a city's block length), street_removal (share of grid
# streets removed, connectivity kept), forward_step_m (a leg of length L gets ceil(L / step) - 1
# forward points), max_forward_per_leg (cap, so long official legs keep the chat short),
# eval_fraction (official routes only: share held out for evaluation), official_quirks (true: the
# reference's unwrapped heading difference when naming relative turns).


# ---------------------------------------------------------------- prompt and expert


def action_space(rule: str) -> list[str]:
    words = COMPASS if rule == "id" else RELATIVE
    return [f"turn_direction({w})" for w in words] + [FORWARD, STOP]


def observation_turn(k: int, observation: str) -> str:
    """The history line awaiting an answer: 'O_k: ...' then 'A_k:' (k is 1-based)."""
    return f"O_{k}: {observation}\nA_{k}:"


PROMPT_STYLES = ("paper", "short")
# The short style's system turn: what every route and both rules share, so the rollout engine reads it
# once for all episodes. The answer names its instruction by number instead of repeating the sentence.
SHORT_SYSTEM = (
    "You walk a route in a city, one point at a time, following the instruction. "
    'Answer each A_k in JSON: {"current observation": "...", "current instruction": <its number>, "action": "..."}'
)


def instruction_prompt(route: dict[str, Any], rule: str, style: str = "paper") -> str:
    """The first user turn without its observation line: the instruction and the action space; the paper's
    style leads with the task and ends with the answer format (the short style's system turn holds those)."""
    words = COMPASS if rule == "id" else RELATIVE
    lines = [] if style == "short" else ["You are walking in a city. Follow the route instruction."]
    lines += ["Instruction:"] + [f"{i}. {s}" for i, s in enumerate(route["instruction"], start=1)]
    actions = "Actions" if style == "short" else "Action space"
    lines.append(f"{actions}: turn_direction(x) with x in {', '.join(words)}; {FORWARD}; {STOP}.")
    if style != "short":
        lines.append(
            'Answer each A_k in JSON: {"current observation": "...", "current instruction": "...", "action": "..."}'
        )
    return "\n".join(lines)


def first_prompt(route: dict[str, Any], rule: str, style: str = "paper") -> str:
    return f"{instruction_prompt(route, rule, style)}\n{observation_turn(1, route['points'][0]['observation'])}"


def expert_answer(route: dict[str, Any], index: int, rule: str, style: str = "paper") -> str:
    """The optimal answer at point `index` (0-based), as valid JSON (the short style numbers the instruction)."""
    point = route["points"][index]
    instruction = point["instruction"] + 1 if style == "short" else route["instruction"][point["instruction"]]
    return json.dumps(
        {
            "current observation": point["observation"],
            "current instruction": instruction,
            "action": point["actions"][rule],
        }
    )


def expert_chat(
    route: dict[str, Any], rule: str, index: int, turns: type[TextTurns] | None = None, style: str = "paper"
) -> list[dict]:
    """The chat awaiting the answer at point `index`, with the expert's answers as history.

    `turns` words the user turns (default: the text variant's, `TextTurns`). style "paper": the
    paper's prompt in one user turn; "short" (text only): the shared part in a system turn, the
    route's instruction and the rule's action space in the user turn, instructions named by number.
    """
    if style not in PROMPT_STYLES:
        raise ValueError(f"unknown prompt style {style!r}; expected one of {PROMPT_STYLES}")
    turns = turns or TextTurns
    if style == "short":
        if turns is not TextTurns:
            raise ValueError("the short prompt style is for text observations only")
        messages = [
            {"role": "system", "content": SHORT_SYSTEM},
            {"role": "user", "content": first_prompt(route, rule, style)},
        ]
    else:
        messages = [{"role": "user", "content": turns.opening(route, rule)}]
    for i in range(index):
        messages.append({"role": "assistant", "content": expert_answer(route, i, rule, style)})
        messages.append({"role": "user", "content": turns.observation(i + 2, route["points"][i + 1])})
    return messages


# ---------------------------------------------------------------- parsing answers


def _normalise_keys(obj: dict[str, Any]) -> dict[str, str]:
    """Keys lower-cased with runs of spaces and "_" made one space; values as text (JSON for non-strings)."""
    out = {}
    for k, v in obj.items():
        key = re.sub(r"[\s_]+", " ", k).strip().lower()
        out[key] = v if isinstance(v, str) else json.dumps(v)
    return out


def parse_answer(text: Any) -> dict[str, str] | None:
    """The fields of the answer's first object that has an "action", or None if none has.

    The answer is read by `answers.parse_objects`, which tolerates code fences, prose
    around the object, single quotes, unquoted keys and values, trailing commas and
    truncation, and never evaluates the text.
    """
    for obj in parse_objects(text):
        fields = _normalise_keys(obj)
        if "action" in fields:
            return fields
    return None


def normalise_action(action: str) -> str:
    """Case and whitespace normalisation: ' Turn_Direction( North ) ' -> 'turn_direction(north)'."""
    s = re.sub(r"\s+", " ", action.strip().strip("`").strip().lower())
    s = re.sub(r"\s*([(),])\s*", r"\1", s)
    return s.rstrip(".")


def claims_intersection(observation: str) -> bool:
    """Does an answer's observation say an intersection is seen (negations excluded)?"""
    text = observation.lower()
    if "intersection" not in text:
        return False
    return not re.search(r"\b(no|not|without|don't|do not)\b[^.;]*\bintersection", text)


_ABSOLUTE_TURN = {f"turn_direction({w})" for w in COMPASS}


def verify_answer(answer: str, point: dict[str, Any], rule: str) -> tuple[str, float, str, dict[str, Any]]:
    """Score one answer at one point: (outcome, reward, reason for feedback, info), in the reference's order.

    Unparseable: -1. Then the action first: the right one scores +1 whatever the answer's observation
    says. A wrong action is checked against the observation in both directions: an intersection claimed
    where there is none, or not claimed where there is one, scores -1.5; otherwise -1 (an action outside
    the action space included).
    """
    fields = parse_answer(answer)
    expected = point["actions"][rule]
    info: dict[str, Any] = {
        "parsed": fields is not None,
        "action": None,
        "expected": expected,
        "intersection_hallucination": False,
        "missed_intersection": False,
        "in_action_space": False,
        "absolute_turn": False,
        "turn_point": point["kind"] in ("start", "intersection"),
    }
    if fields is None:
        return "format_error", REWARD_WRONG, REASON_FORMAT, info
    action = normalise_action(fields["action"])
    info["action"] = action
    info["in_action_space"] = action in action_space(rule)
    info["absolute_turn"] = action in _ABSOLUTE_TURN
    if action == expected:
        return "correct", REWARD_CORRECT, "", info
    at_intersection = point["kind"] == "intersection"
    claimed = claims_intersection(fields.get("current observation", ""))
    if claimed and not at_intersection:
        info["intersection_hallucination"] = True
        return "intersection_hallucination", REWARD_HALLUCINATION, REASON_NOT_AT_INTERSECTION, info
    if at_intersection and not claimed:
        info["missed_intersection"] = True
        return "missed_intersection", REWARD_HALLUCINATION, REASON_AT_INTERSECTION, info
    return (
        ("wrong_action" if info["in_action_space"] else "invalid_action"),
        REWARD_WRONG,
        REASON_INCORRECT_ACTION,
        info,
    )


def feedback_text(reason: str, k: int, observation: str) -> str:
    """The user turn after a wrong attempt; it repeats the point so the model retries it."""
    return f"{FAIL_PREFIX} {reason}. Try again.\n{observation_turn(k, observation)}"


class TextTurns:
    """How the user turns of a route's chat read: the text variant. The image variant (virl_vl.py)
    swaps in its own class with the same three methods; the episode and the expert chat take either."""

    @staticmethod
    def opening(route: dict[str, Any], rule: str) -> Any:
        """The first user turn's content."""
        return first_prompt(route, rule)

    @staticmethod
    def observation(k: int, point: dict[str, Any]) -> Any:
        """The content of the user turn showing point `point` as observation k (1-based)."""
        return observation_turn(k, point["observation"])

    @staticmethod
    def feedback(reason: str, k: int, point: dict[str, Any]) -> str:
        """The user turn after a wrong attempt at observation k."""
        return feedback_text(reason, k, point["observation"])


# ---------------------------------------------------------------- episode


class VirlEpisode:
    """One route as one growing chat; VIter attempts per point."""

    turns: type[TextTurns] = TextTurns  # the wording of the user turns (the image variant swaps it)

    def __init__(
        self,
        route: dict[str, Any],
        rule: str = "id",
        viter: int = 2,
        messages: list[dict[str, Any]] | None = None,
        start_index: int = 0,
    ):
        if rule not in ("id", "ood"):
            raise ValueError(f"unknown rule {rule!r}")
        self.route, self.rule, self.viter = route, rule, max(1, int(viter))
        self.index = start_index  # the point awaiting an answer (0-based)
        self.messages = (
            copy.deepcopy(messages) if messages is not None else expert_chat(route, rule, start_index, self.turns)
        )
        self.attempts: list[Attempt] = []
        self.done = False
        self.success = False
        self._tries_here = 0

    @property
    def point(self) -> dict[str, Any]:
        return self.route["points"][self.index]

    def step(self, answer: str) -> Attempt:
        if self.done:
            raise RuntimeError("step() on a finished episode")
        outcome, reward, reason, info = verify_answer(answer, self.point, self.rule)
        info["step_index"] = self.index
        self.messages.append({"role": "assistant", "content": answer})
        feedback = ""
        if outcome == "correct":
            self._tries_here = 0
            if self.index == len(self.route["points"]) - 1:
                self.done = self.success = True
            else:
                self.index += 1
                self.messages.append({"role": "user", "content": self.turns.observation(self.index + 1, self.point)})
        else:
            self._tries_here += 1
            if self._tries_here >= self.viter:
                self.done = True  # VIter spent at this point: the route fails
            else:
                feedback = self.turns.feedback(reason, self.index + 1, self.point)
                self.messages.append({"role": "user", "content": feedback})
        attempt = Attempt(
            answer=answer, reward=reward, correct=outcome == "correct", outcome=outcome, feedback=feedback, info=info
        )
        self.attempts.append(attempt)
        return attempt

    def metrics(self) -> dict[str, float]:
        n = len(self.attempts)
        correct = sum(a.correct for a in self.attempts)
        return {
            "success": float(self.success),
            "attempts": float(n),
            "correct_actions": float(correct),
            "per_step_accuracy": correct / n if n else 0.0,
            "return": float(sum(a.reward for a in self.attempts)),
            "points": float(len(self.route["points"])),
            "points_completed": float(correct),
            "format_errors": float(sum(not a.info.get("parsed", False) for a in self.attempts)),
            "intersection_hallucinations": float(
                sum(a.info.get("intersection_hallucination", False) for a in self.attempts)
            ),
            "missed_intersections": float(sum(a.info.get("missed_intersection", False) for a in self.attempts)),
            "turn_attempts": float(sum(a.info.get("turn_point", False) for a in self.attempts)),
            "absolute_turns": float(
                sum(a.info.get("turn_point", False) and a.info.get("absolute_turn", False) for a in self.attempts)
            ),
        }


# ---------------------------------------------------------------- splits


EPISODE_RATIOS = {
    "per_step_accuracy": EpisodeRatio(counts=("correct_actions", "attempts")),
    "absolute_turn_rate": EpisodeRatio(counts=("absolute_turns", "turn_attempts")),
}
METRIC_TITLES = {
    "per_step_accuracy": "per-step accuracy",
    "route_success_rate": "route success",
    "absolute_turn_rate": "absolute turns (rule memorisation)",
    "intersection_hallucination_rate": "intersection hallucination",
}


class VirlTask:
    """Task "virl_l": V-IRL navigation with text observations."""

    name = TASK_NAME
    section = SECTION
    splits = SPLITS
    label = "V-IRL-L"
    unit = "route"  # what the paired statistics resample: every route is its own unit
    primary_metric = "per_step_accuracy"
    visual_metric_title = None
    visual_ood_look = None
    # per-step accuracy over a route's attempts; absolute turns where relative ones are asked (the training rule,
    # against rule-OOD accuracy) over the attempts at turn points
    episode_ratios: ClassVar[dict[str, EpisodeRatio]] = EPISODE_RATIOS
    rule_ood_diagnostics: ClassVar[dict[str, int]] = {"absolute_turn_rate": -1}
    metric_titles: ClassVar[dict[str, str]] = METRIC_TITLES
    diagnostic_columns = ("absolute_turn_rate", "intersection_hallucination_rate")

    def resampling_unit(self, row: dict[str, Any]) -> None:
        return None  # every route is its own unit

    # What the image variant (virl_vl.py) changes by subclassing: row wording and versions, and
    # the whole-route splits as (split, route stream, city group).
    generator_version = GENERATOR_VERSION
    split_rule = SPLIT_RULE
    turns: type[TextTurns] = TextTurns
    route_splits = (("rl", "rl", "train"), ("eval_id", "eval", "eval"), ("eval_ood_rule", "eval", "eval"))

    def title(self, cfg: dict[str, Any]) -> str:
        return f"V-IRL navigation, {'image' if self.visual_metric_title else 'text'} ({self.label})"

    def check_config(self, cfg: dict[str, Any], seed: int) -> None:
        cfg = section_with_defaults(self.section, cfg)
        if cfg["min_intersections"] > cfg["max_intersections"]:
            section = self.section
            raise ValueError(f"{section}.min_intersections exceeds {section}.max_intersections")

    def _pools(self, cfg: dict[str, Any], seed: int) -> RoutePools:
        return RoutePools(cfg, seed)

    def generate_splits(self, cfg: dict[str, Any], seed: int) -> dict[str, list[dict[str, Any]]]:
        """All rows, deterministic in (cfg, seed).

        sft: one row per (route, point), sizes["sft"] rows. rl: whole routes from the
        training cities. eval_id / eval_ood_rule: the same routes from the eval cities
        under the two rules, so the pair isolates the rule change.
        """
        c = section_with_defaults(self.section, cfg)
        pools = self._pools(c, seed)
        sizes = c["sizes"]
        style = c.get("prompt", "paper")
        out: dict[str, list[dict[str, Any]]] = {"sft": self._sft_rows(pools, sizes.get("sft"), seed, style)}
        for split, stream, group in self.route_splits:
            n = pools.size(group, sizes.get(split))
            out[split] = [
                route_row(self, split, i, pools.route(stream, group, i), seed, style=style) for i in range(n)
            ]
        return out

    def _sft_rows(
        self, pools: RoutePools, requested: int | None, seed: int, style: str = "paper"
    ) -> list[dict[str, Any]]:
        rows = []
        for i, route, k in sft_steps(pools, requested):
            row = route_row(self, "sft", i, route, seed, k, style)
            row["completion"] = [{"role": "assistant", "content": expert_answer(route, k, "id", style)}]
            rows.append(row)
        return rows

    def make_episode(self, row: dict[str, Any], viter: int) -> VirlEpisode:
        return VirlEpisode(
            row["route"],
            row.get("rule", "id"),
            viter,
            messages=row.get("prompt"),
            start_index=int(row.get("step_index", 0)),
        )

    def aggregate(self, episodes: list[Any]) -> dict[str, float]:
        return aggregate_episodes(episodes)


def route_row(
    task: VirlTask, split: str, i: int, route: dict[str, Any], seed: int, index: int = 0, style: str = "paper"
) -> dict[str, Any]:
    """The dataset row of `task` for route `i` of `split`, its chat at point `index` (SFT rows: one per point)."""
    rule = task.split_rule[split]
    return {
        "id": f"{task.name}-{split}-{i:05d}" + (f"-{index:02d}" if split == "sft" else ""),
        "task": task.name,
        "split": split,
        "rule": rule,
        "seed": seed,
        "generator_version": task.generator_version,
        "step_index": index,
        "route": route,
        "prompt": expert_chat(route, rule, index, task.turns, style),
    }


def sft_steps(pools: RoutePools, requested: int | None) -> list[tuple[int, dict[str, Any], int]]:
    """(route index, route, point) of the SFT rows: the first `requested` points of the training routes in
    order; official data without a size (None): every point of every training route."""
    total = None if requested is None else int(requested)
    if total is None:
        routes = [pools.route("sft", "train", i) for i in range(pools.size("train", None))]
        total = sum(len(r["points"]) for r in routes)
    steps: list[tuple[int, dict[str, Any], int]] = []
    i = 0
    while len(steps) < total:
        route = pools.route("sft", "train", i)
        steps.extend((i, route, k) for k in range(len(route["points"])))
        i += 1
    return steps[:total]


def aggregate_episodes(episodes: list[Any]) -> dict[str, float]:
    """Split-level numbers. Per-step accuracy is pooled over attempts; its standard error
    treats episodes as the independent units (ratio estimator), since attempts within
    one route are correlated."""
    ms = [e.metrics() for e in episodes]
    n = len(ms)
    attempts = [m["attempts"] for m in ms]
    correct = [m["correct_actions"] for m in ms]
    total = sum(attempts)
    acc = sum(correct) / total if total else 0.0
    acc_se = 0.0
    if n > 1 and total:
        resid = sum((c - acc * a) ** 2 for c, a in zip(correct, attempts))
        acc_se = math.sqrt(n / (n - 1) * resid) / total
    p = sum(m["success"] for m in ms) / n if n else 0.0
    p_se = math.sqrt(p * (1 - p) / n) if n else 0.0
    turns = sum(m["turn_attempts"] for m in ms)
    return {
        "episodes": float(n),
        "per_step_accuracy": acc,
        "per_step_accuracy_se": acc_se,
        "route_success_rate": p,
        "route_success_rate_se": p_se,
        "success_rate": p,
        "success_rate_se": p_se,
        "mean_attempts": total / n if n else 0.0,
        "mean_return": sum(m["return"] for m in ms) / n if n else 0.0,
        "format_error_rate": sum(m["format_errors"] for m in ms) / total if total else 0.0,
        "intersection_hallucination_rate": (
            sum(m["intersection_hallucinations"] for m in ms) / total if total else 0.0
        ),
        "missed_intersection_rate": sum(m.get("missed_intersections", 0.0) for m in ms) / total if total else 0.0,
        # On the OOD split this is rule memorisation: absolute turns where relative ones are asked.
        "absolute_turn_rate": sum(m["absolute_turns"] for m in ms) / turns if turns else 0.0,
    }
