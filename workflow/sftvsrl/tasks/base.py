"""The contract between a task (GeneralPoints, V-IRL, ...) and the shared machinery.

The rollout engine, RL and evaluation only ever see `Task` and `Episode`; they hold no
task-specific code. A task is pure Python (no torch): it makes dataset rows, turns a row
into an `Episode`, and scores answers.

An episode is a chat that grows. `episode.messages` always ends with a user turn that
awaits an answer while `episode.done` is False. `episode.step(answer)` scores the
answer, appends it as an assistant turn and, unless the episode is over, appends the
next user turn (the verifier's feedback, or the next observation). Only the assistant
turns are the model's own tokens; everything else is context.

Image tasks (GP-VL, V-IRL-VL): a user turn's content may be a list of parts
(`{"type": "image"}` and `{"type": "text", "text": ...}`), the shape multimodal chat
templates read. The parts hold no pixels; `episode.images` holds the images of every image
part of `messages`, in order (it grows when `step` appends a turn with an image). Text
episodes have no such attribute, or an empty list.
"""

from __future__ import annotations

import copy
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass
class Attempt:
    """One scored answer of the model."""

    answer: str
    reward: float
    correct: bool
    outcome: str  # short label of the verifier's verdict, e.g. "correct", "wrong_value"
    feedback: str = ""  # the user turn appended after a wrong attempt ("" when none)
    info: dict[str, Any] = field(default_factory=dict)  # diagnostics (parse ok, value use, ...)


@dataclass(frozen=True)
class EpisodeRatio:
    """How the report reads one rate metric from an episode, so two checkpoints are paired episode by episode:
    the attempts whose `info` carries `attempt_flag` true among those that carry it, or the episode's
    `metrics()[counts[0]]` over `metrics()[counts[1]]`."""

    attempt_flag: str | None = None
    counts: tuple[str, str] | None = None


class Episode(Protocol):
    messages: list[dict[str, Any]]
    attempts: list[Attempt]
    done: bool
    success: bool

    def step(self, answer: str) -> Attempt:
        """Score `answer`, extend `messages`, update `done`/`success`."""

    def metrics(self) -> dict[str, float]:
        """Episode-level numbers for evaluation (success, attempts, diagnostics)."""


class Task(Protocol):
    name: str  # config name, e.g. "gp_l"
    splits: tuple[str, ...]  # e.g. ("sft", "rl", "eval_id", "eval_ood_rule"); with eval_ood_visual: an image task
    # What the report says of the task, asked of the task rather than decided by its name elsewhere:
    section: str  # its config section, e.g. "gp"
    label: str  # short, e.g. "GP-L"
    primary_metric: str  # the score of the ID and rule-OOD claims, e.g. "success_rate" or "per_step_accuracy"
    visual_metric_title: str | None  # image tasks: what `success_rate` means on visual OOD; None for text
    visual_ood_look: str | None  # image tasks: what the visual-OOD split shows that training never did
    # What the report's paired statistics read of the episode tables (absent: none; the row is the unit):
    unit: str  # what `resampling_unit` returns one of, as the report names it (plural + "s"): "hand", "route"
    episode_ratios: dict[str, EpisodeRatio]  # rate metrics besides success, paired episode by episode
    rule_ood_diagnostics: dict[str, int]  # rate metrics that show why the rule-OOD score moved: +1 with it, -1 against
    # How the report titles and orders the task's own metrics (absent: by their names, none in the diagnostics table):
    metric_titles: dict[str, str]  # metric -> title, in summary.csv's column order, e.g. {"number_accuracy": ...}
    diagnostic_columns: tuple[str, ...]  # those in the rule-OOD diagnostics table; the others lead summary.csv

    def resampling_unit(self, row: dict[str, Any]) -> Hashable | None:
        """The unit a paired bootstrap resamples, from an episode table's row summary (GP: the hand's multiset of
        ranks, which a split can repeat); None: the row itself."""

    def title(self, cfg: dict[str, Any]) -> str:
        """The task and its setting from its config section, e.g. "GeneralPoints, 3 cards, target 24 (GP-L)"."""

    def generate_splits(self, cfg: dict[str, Any], seed: int) -> dict[str, list[dict[str, Any]]]:
        """All dataset rows of every split, deterministic in (cfg, seed)."""

    def check_config(self, cfg: dict[str, Any], seed: int) -> None:
        """Raise ValueError naming the keys when the task's section cannot make its splits."""

    def make_episode(self, row: dict[str, Any], viter: int) -> Episode:
        """A fresh episode for a row of the `rl` or `eval_*` splits."""

    def aggregate(self, episodes: list[Episode]) -> dict[str, float]:
        """Split-level metrics of finished episodes (success rate, diagnostics...)."""

    # Image tasks also define `row_images(row) -> list[PIL.Image]`: the images of the image parts
    # of the row's prompt and completion, in order (SFT and RL hand them to the trainer).
    # A task whose config can add splits defines `extra_splits(cfg) -> tuple[str, ...]` (see below).


def extra_splits(task: Task, cfg: dict[str, Any]) -> tuple[str, ...]:
    """The splits a task's config section adds to its own `splits`, in file order (GP-L: gp.varied_rules
    makes `sft_varied`, gp.ood_splits the harder OOD eval splits); none for a task without `extra_splits`.
    The workflow evaluates every checkpoint on each extra split whose name starts with "eval_"."""
    extra = getattr(task, "extra_splits", None)
    return tuple(extra(cfg)) if extra is not None else ()


def row_images(task: Task, row: dict[str, Any]) -> list[Any]:
    """The images of a dataset row of `task` (none for a text task)."""
    images = getattr(task, "row_images", None)
    return list(images(row)) if images is not None else []


def with_images(messages: Sequence[dict[str, Any]], images: Sequence[Any]) -> list[dict[str, Any]]:
    """A copy of the chat whose image parts carry their images ({"type": "image", "image": ...}),
    the form a processor's `apply_chat_template` reads the pixels from."""
    out = copy.deepcopy(list(messages))
    pending = list(images)
    for message in out:
        if not isinstance(message.get("content"), list):
            continue
        for part in message["content"]:
            if part.get("type") == "image":
                if not pending:
                    raise ValueError("the chat has more image parts than images")
                part["image"] = pending.pop(0)
    if pending:
        raise ValueError(f"{len(pending)} image(s) left over: the chat has fewer image parts")
    return out
