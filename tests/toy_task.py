"""A task defined outside the package (issue 23): a one-turn arithmetic game with its own verifier.

It joins a study through the config alone (`task_plugins: {toy_l: toy_task:ToySumTask}`, this folder on
PYTHONPATH), which is what the README promises a researcher adding a task. ID hands ask for the sum of
two numbers, rule-OOD hands for their product; an OOD answer that gives the sum is rule memorisation.
"""

from __future__ import annotations

import math
import random
from typing import Any, ClassVar

from sftvsrl.tasks import Attempt, EpisodeRatio

RULES = {"id": ("add", lambda a, b: a + b), "ood": ("multiply", lambda a, b: a * b)}
SYSTEM = "Answer with one number."


class ToySumTask:
    name = "toy_l"
    section = "toy"
    splits = ("sft", "rl", "eval_id", "eval_ood_rule")
    label = "Toy-L"
    unit = "question"  # what the paired statistics resample: every row is its own unit
    primary_metric = "success_rate"
    visual_metric_title = None
    visual_ood_look = None
    # what the report pairs episode by episode: an OOD answer that gives the sum applies the training rule
    episode_ratios: ClassVar[dict[str, EpisodeRatio]] = {
        "rule_memorisation_rate": EpisodeRatio(attempt_flag="rule_memorised")
    }
    rule_ood_diagnostics: ClassVar[dict[str, int]] = {"rule_memorisation_rate": -1}
    metric_titles: ClassVar[dict[str, str]] = {"rule_memorisation_rate": "sums given for products"}
    diagnostic_columns = ("rule_memorisation_rate",)
    config_schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "additionalProperties": False,
        "description": "the toy task of tests/toy_task.py",
        "properties": {
            "max_number": {"type": "integer", "minimum": 2, "default": 9, "description": "largest number shown"},
            "sizes": {
                "type": "object",
                "description": "rows per split",
                "additionalProperties": {"type": "integer", "minimum": 1},
                "default": {"sft": 16, "rl": 8, "eval_id": 4, "eval_ood_rule": 4},
            },
        },
    }

    def title(self, cfg: dict[str, Any]) -> str:
        return f"Toy sums up to {cfg.get('max_number', 9)} ({self.label})"

    def check_config(self, cfg: dict[str, Any], seed: int) -> None:
        if cfg["max_number"] < 2:
            raise ValueError("toy.max_number must be at least 2")

    def generate_splits(self, cfg: dict[str, Any], seed: int) -> dict[str, list[dict[str, Any]]]:
        rng = random.Random(seed)
        return {split: [self._row(split, i, cfg, rng) for i in range(n)] for split, n in cfg["sizes"].items()}

    def _row(self, split: str, index: int, cfg: dict[str, Any], rng: random.Random) -> dict[str, Any]:
        a, b = rng.randint(1, cfg["max_number"]), rng.randint(1, cfg["max_number"])
        rule = "ood" if split == "eval_ood_rule" else "id"
        word, apply = RULES[rule]
        prompt = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": f"{word} {a} {b}"}]
        completion = [{"role": "assistant", "content": str(apply(a, b))}]
        return {"id": f"toy-{split}-{index}", "task": self.name, "split": split, "rule": rule, "numbers": [a, b],
                "prompt": prompt, "completion": completion}  # fmt: skip

    def make_episode(self, row: dict[str, Any], viter: int) -> ToyEpisode:
        return ToyEpisode(row, viter)

    def aggregate(self, episodes: list[ToyEpisode]) -> dict[str, float]:
        n = len(episodes)
        p = sum(ep.success for ep in episodes) / n if n else 0.0
        attempts = [a for ep in episodes for a in ep.attempts]
        ood = [a for a in attempts if "rule_memorised" in a.info]
        out = {"episodes": float(n), "success_rate": p, "success_se": math.sqrt(p * (1 - p) / n) if n else 0.0}
        out["format_error_rate"] = sum(not a.info["parsed"] for a in attempts) / len(attempts) if attempts else 0.0
        if ood:
            out["rule_memorisation_rate"] = sum(a.info["rule_memorised"] for a in ood) / len(ood)
        return out


def verify(answer: str, row: dict[str, Any]) -> Attempt:
    """+1 for the rule's value, -1 for another number, -2 for no number (the paper's format penalty)."""
    a, b = row["numbers"]
    try:
        value = int(answer.strip())
    except ValueError:
        return Attempt(answer, -2.0, False, "unparsed", "Answer with one number.", {"parsed": False})
    info: dict[str, Any] = {"parsed": True}
    if row["rule"] == "ood":
        info["rule_memorised"] = value == RULES["id"][1](a, b)
    correct = value == RULES[row["rule"]][1](a, b)
    return Attempt(answer, 1.0 if correct else -1.0, correct, "correct" if correct else "wrong", "Wrong.", info)


class ToyEpisode:
    def __init__(self, row: dict[str, Any], viter: int):
        self.row, self.viter = row, viter
        self.messages = [dict(m) for m in row["prompt"]]
        self.attempts: list[Attempt] = []
        self.done = self.success = False

    def step(self, answer: str) -> Attempt:
        attempt = verify(answer, self.row)
        self.attempts.append(attempt)
        self.messages.append({"role": "assistant", "content": answer})
        self.success = attempt.correct
        self.done = attempt.correct or len(self.attempts) >= self.viter
        if self.done:
            attempt.feedback = ""
        else:
            self.messages.append({"role": "user", "content": attempt.feedback})
        return attempt

    def metrics(self) -> dict[str, float]:
        return {"success": float(self.success), "attempts": float(len(self.attempts)),
                "return": float(sum(a.reward for a in self.attempts))}  # fmt: skip


class BrokenMetricsEpisode(ToyEpisode):
    """An episode whose metrics have a task's bug (a key it never set)."""

    def metrics(self) -> dict[str, float]:
        return {"steps": float(self.row["steps"])}


class BrokenMetricsToyTask(ToySumTask):
    """The toy task with a bug in its episode metrics: the evaluation must stop, not drop the episode."""

    def make_episode(self, row: dict[str, Any], viter: int) -> BrokenMetricsEpisode:
        return BrokenMetricsEpisode(row, viter)
