"""A study's evaluations as a table and as seed-mean points: names, loading, intervals, equal compute."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import section_with_defaults
from ..names import (
    BASE_RUN,
    EVAL_ID,
    EVAL_OOD_RULE,
    EVAL_OOD_VISUAL,
    INIT_RUN,
    NOSFT_RUN,
    SFT_RUN,
    SFT_VARIED_RUN,
    START_INIT,
    gflops_of,
    sft_start_step,
)
from ..stats import normal_interval, wilson_interval
from ..tasks import Task, get_task, task_section

SPLIT_ID, SPLIT_OOD, SPLIT_VISUAL = EVAL_ID, EVAL_OOD_RULE, EVAL_OOD_VISUAL
SPLIT_TITLE = {SPLIT_ID: "in-distribution (ID)", SPLIT_OOD: "rule OOD", SPLIT_VISUAL: "visual OOD"}
# Splits other than these are a task's extra OOD splits (GP-L's harder ones, arXiv 2510.00237): the task
# names them (`Task.split_titles`), the report draws them in a section of their own.
MAIN_SPLITS = (SPLIT_ID, SPLIT_OOD, SPLIT_VISUAL)
# The score of the visual-OOD claims (Figure 7): `success_rate`, one 0/1 outcome per episode (what it
# means per task: `Task.visual_metric_title`). The ID and rule-OOD score: `Task.primary_metric`.
VISUAL_METRIC = "success_rate"
# Share of attempts whose listed cards are the cards shown (GP-VL; paper Figure 8).
RECOGNITION = "recognition_accuracy"
# Titles of the metrics any task's evaluation may carry; a task titles its own (`Task.metric_titles`, `metric_title`).
METRIC_TITLE = {
    "success_rate": "episode success",
    "recognition_accuracy": "recognition accuracy",
    "format_error_rate": "format error",
    "mean_reward_per_attempt": "reward / attempt",
}
FORMAT_ERRORS, REWARD_PER_ATTEMPT = "format_error_rate", "mean_reward_per_attempt"
MAIN_VITER = 5  # the paper's default number of verification iterations

LEAD_COLUMNS = [
    "task",
    "seed",
    "run",
    "step",
    "split",
    "train_viter",
    "train_start",
    "eval_viter",
    "episodes",
    "gflops",
    "paper_gflops",
    "computed_gflops",
    "n_params",
    "success_rate",
    "success_se",
    "success_ci_low",
    "success_ci_high",
]
# summary.csv's metric columns end with these, after the tasks' own (`metric_columns`); any other metric follows
# them by name.
LAST_METRICS = ("recognition_accuracy", "mean_attempts", REWARD_PER_ATTEMPT)


# --------------------------------------------------------------------------- names
def isnan(x: Any) -> bool:
    try:
        return math.isnan(float(x))
    except (TypeError, ValueError):
        return True


def run_order(run: str, viter: int | None = None, start: str | None = None) -> tuple[int, int, int]:
    """Where a run sorts: base, init, SFT, SFT on varied rules, RL from init by VIter, RL from SFT checkpoints
    by step and VIter, other runs, RL without SFT."""
    fixed = {BASE_RUN: (0, 0, 0), INIT_RUN: (1, 0, 0), SFT_RUN: (2, 0, 0), SFT_VARIED_RUN: (2, 1, 0)}
    if run in fixed:
        return fixed[run]
    if run == NOSFT_RUN:
        return 9, 0, 0
    if viter is None:
        return 8, 0, 0
    step = sft_start_step(start)
    return (3, viter, 0) if step is None else (4, step, viter)


def run_label(run: str, viter: int | None = None, start: str | None = None) -> str:
    """A run as the report names it; `viter` and `start`: the VIter its RL trained with and what it started
    from, as its evaluations record them."""
    if run == SFT_RUN:
        return "SFT"
    if run == SFT_VARIED_RUN:
        return "SFT on varied rules"
    if run == NOSFT_RUN:
        return "RL from base (no SFT)"
    if viter is None:
        return run
    step = sft_start_step(start)
    return f"RL, VIter {viter}" if step is None else f"RL from SFT step {step}, VIter {viter}"


def checkpoint_label(run: str, step: int, viter: int | None = None, start: str | None = None) -> str:
    return f"{run_label(run, viter, start)} step {step}" if step > 0 else run


def run_viter(points, task: str, run: str) -> int | None:
    """The VIter a run's RL trained with, read from its evaluations (`train_viter`, from its compute.json);
    None for a run that is not RL from init or from an SFT checkpoint."""
    if run == NOSFT_RUN:
        return None
    return next((p.train_viter for p in points.values() if p.task == task and p.run == run), None)


def run_start(points, task: str, run: str) -> str | None:
    """What a run's RL started from (`train_start`: init, base, sft-<step>); None when not recorded."""
    return next((p.train_start for p in points.values() if p.task == task and p.run == run), None)


def label_of(points, task: str, run: str) -> str:
    return run_label(run, run_viter(points, task, run), run_start(points, task, run))


def order_of(points, task: str, run: str) -> tuple[int, int, int]:
    return run_order(run, run_viter(points, task, run), run_start(points, task, run))


def task_title(task: str, config: dict[str, Any]) -> str:
    """The task and its setting, e.g. "GeneralPoints, 3 cards, target 24 (GP-L)"."""
    section = task_section(task)
    return get_task(task).title(config.get(section) or section_with_defaults(section, {}))


def metric_of(task: str) -> str:
    return get_task(task).primary_metric


def is_vl(task: str) -> bool:
    """An image task (GP-VL, V-IRL-VL): it has the visual-OOD split and the visual claims."""
    return EVAL_OOD_VISUAL in get_task(task).splits


def visual_title(task: str) -> str:
    return get_task(task).visual_metric_title or metric_title(VISUAL_METRIC, task)


def known_task(task: str) -> Task | None:
    """The registry's task, or None for one it does not know: its evaluations still load, under their names."""
    try:
        return get_task(task)
    except KeyError:
        return None


def split_title(task: str, split: str) -> str:
    """A split as the report names it: the task's own title (`Task.split_titles`, e.g. its extra OOD splits),
    else SPLIT_TITLE's, else the split's name."""
    titles = getattr(known_task(task), "split_titles", None) or {}
    return titles.get(split) or SPLIT_TITLE.get(split, split)


def units_title(task: str) -> str:
    """What the task's paired statistics resample, in the plural (`Task.unit`: GP's hands, V-IRL's routes; rows
    for a task the registry does not know, whose rows are their own units)."""
    return f"{getattr(known_task(task), 'unit', 'row')}s"


def units_phrase(tasks: Iterable[str]) -> str:
    """The study's units as the methods text names them: "hands" when every task resamples hands, else each
    task's, e.g. "hands (gp_l), routes (virl_l)"."""
    named = {task: units_title(task) for task in tasks}
    if len(set(named.values())) <= 1:
        return next(iter(named.values()), "rows")
    return ", ".join(f"{units} ({task})" for task, units in named.items())


def task_metric_titles(task: str) -> dict[str, str]:
    """The task's own metrics and their titles (`Task.metric_titles`), in its column order."""
    return dict(getattr(known_task(task), "metric_titles", None) or {})


def metric_title(name: str, task: str) -> str:
    """A metric as the report names it: the task's title, else METRIC_TITLE's, else the metric's name."""
    return task_metric_titles(task).get(name) or METRIC_TITLE.get(name, name)


def diagnostic_columns(task: str) -> list[str]:
    """The metrics of the task's rule-OOD diagnostics table: format errors, the task's own
    (`Task.diagnostic_columns`), reward per attempt."""
    return [FORMAT_ERRORS, *getattr(known_task(task), "diagnostic_columns", ()), REWARD_PER_ATTEMPT]


def task_diagnostics(task: str) -> dict[str, int]:
    """The task's rule-OOD diagnostics, each with its direction relative to the rule-OOD score."""
    return getattr(known_task(task), "rule_ood_diagnostics", {})


def metric_columns(tasks: Iterable[str]) -> list[str]:
    """summary.csv's metric columns in order: each task's titled metrics outside its diagnostics table (its
    scores, each followed by its standard error), format errors, the tasks' diagnostics, then LAST_METRICS."""
    scores, diagnostics = [], []
    for task in tasks:
        shown = diagnostic_columns(task)
        for name in task_metric_titles(task):
            (diagnostics if name in shown else scores).extend((name, f"{name}_se"))
    return list(dict.fromkeys([*scores, FORMAT_ERRORS, *diagnostics, *LAST_METRICS]))


def extra_splits(points, task: str) -> list[str]:
    """The task's evaluated splits beyond ID, rule OOD and visual OOD (e.g. GP-L's harder OOD splits), in the
    order the task names them (`split_titles`, then `splits`), others by name."""
    found = {p.split for p in points.values() if p.task == task} - set(MAIN_SPLITS)
    task_obj = known_task(task)
    known = [*(getattr(task_obj, "split_titles", None) or {}), *getattr(task_obj, "splits", ())]
    return sorted(found, key=lambda s: (known.index(s) if s in known else len(known), s))


# --------------------------------------------------------------------------- loading
def load_evals(eval_files: Iterable[str | Path], accounting: str = "paper"):
    """One row per eval JSON: identifiers, compute (GFLOPs), every numeric metric, the success interval.

    `gflops`, which the equal-compute rule and the figures read, is in `accounting` (`names.ACCOUNTINGS`);
    both accountings are kept beside it (`paper_gflops`, `computed_gflops`)."""
    import pandas as pd

    records = []
    for path in eval_files:
        data = json.loads(Path(path).read_text())
        metrics = data.get("metrics", {}) or {}
        compute = data.get("compute", {}) or {}
        episodes = data.get("episodes", metrics.get("episodes"))
        rec: dict[str, Any] = {
            "task": data["task"],
            "seed": int(data["seed"]),
            "run": data["run"],
            "step": int(data["step"]),
            "split": data["split"],
            "train_viter": data.get("train_viter"),
            "train_start": compute.get("train_start"),
            "eval_viter": data.get("viter"),
            "episodes": int(episodes) if episodes is not None else None,
            "gflops": gflops_of(compute, accounting),
            "paper_gflops": gflops_of(compute, "paper"),
            "computed_gflops": gflops_of(compute, "computed"),
            "n_params": compute.get("n_params"),
        }
        for key, value in metrics.items():
            if key in rec or isinstance(value, bool) or not isinstance(value, (int, float)) and value is not None:
                continue
            rec[key] = float("nan") if value is None else float(value)
        rec["success_ci_low"], rec["success_ci_high"] = wilson_interval(*_successes(rec))
        rec["eval_file"] = str(path)
        records.append(rec)
    df = pd.DataFrame.from_records(records)
    if df.empty:
        return pd.DataFrame(columns=LEAD_COLUMNS)
    keys = ["task", "seed", "run", "step", "split"]
    dup = df[df.duplicated(keys, keep=False)]
    if not dup.empty:
        raise ValueError(f"two evaluations of the same (task, seed, run, step, split): {sorted(dup.eval_file)}")
    df["_order"] = [
        run_order(run, _viter(v) if run != NOSFT_RUN else None, start if isinstance(start, str) else None)
        for run, v, start in zip(df.run, df.train_viter, df.train_start)
    ]
    df = df.sort_values(["task", "seed", "_order", "step", "split"]).drop(columns="_order").reset_index(drop=True)
    metric_cols = [c for c in df.columns if c not in LEAD_COLUMNS and c != "eval_file"]
    preferred = metric_columns(df["task"].unique())
    ordered = [c for c in preferred if c in metric_cols] + sorted(c for c in metric_cols if c not in preferred)
    return df[[c for c in LEAD_COLUMNS if c in df.columns] + ordered + ["eval_file"]]


def _viter(value: Any) -> int | None:
    """A recorded train_viter (None, or NaN in a pandas column, when the run was not RL)."""
    return None if value is None or isnan(value) else int(value)


def _start(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _successes(rec: dict[str, Any]) -> tuple[int, int]:
    """(successes, episodes) of one evaluation: the count the JSON gives, else rate x episodes."""
    n = int(rec.get("episodes") or 0)
    rate = rec.get("success_rate")
    if n <= 0 or isnan(rate):
        return 0, 0
    k = rec.get("successes")
    return round(float(k) if not isnan(k) else float(rate) * n), n


@dataclass
class Point:
    """A run's checkpoint on one split, averaged over seeds, with a 95% interval."""

    task: str
    run: str
    step: int
    split: str
    value: float
    ci_low: float
    ci_high: float
    gflops: float
    n_seeds: int
    episodes: int
    extra: dict[str, float] = field(default_factory=dict)  # seed means of the diagnostics
    train_viter: int | None = None  # the VIter the run's RL trained with (None: not RL)
    train_start: str | None = None  # what that RL started from (init, base, sft-<step>)
    seed_values: tuple[float, ...] = ()  # each seed's score, in seed order (the figures show the spread)


def point_interval(g, metric: str, value: float) -> tuple[float, float]:
    """95% interval of a seed mean: Wilson on the pooled episodes for success; else the normal interval
    of the seeds' standard errors, sqrt(sum se_i^2) / k."""
    if metric == "success_rate":
        counts = [_successes(rec) for rec in g.to_dict("records")]
        return wilson_interval(sum(k for k, _ in counts), sum(n for _, n in counts))
    col = f"{metric}_se"
    if col not in g.columns or g[col].isna().any():
        return float("nan"), float("nan")
    se = math.sqrt(float((g[col].astype(float) ** 2).sum())) / len(g)
    return normal_interval(value, se)


def seed_points(
    df, metric_of_task: dict[str, str] | None = None, fallback: bool = True
) -> dict[tuple[str, str, int, str], Point]:
    """(task, run, step, split) -> Point with the seed mean and its 95% interval.

    `metric_of_task`: the metric per task (default: each task's primary metric). A checkpoint
    without that metric gets its success rate (`fallback`), or no point."""
    points: dict[tuple[str, str, int, str], Point] = {}
    if df.empty:
        return points
    # what a point carries besides its score: the diagnostics table's and the task's rule-OOD diagnostics
    diagnostic_names = {
        task: [c for c in dict.fromkeys([*diagnostic_columns(task), *task_diagnostics(task)]) if c in df.columns]
        for task in df["task"].unique()
    }
    for (task, run, step, split), g in df.groupby(["task", "run", "step", "split"], sort=False):
        metric = metric_of(task) if metric_of_task is None else metric_of_task.get(task, "success_rate")
        if metric not in g.columns or g[metric].isna().all():
            if not fallback:
                continue
            metric = "success_rate"
        g = g[g[metric].notna()]
        if g.empty:
            continue
        value = float(g[metric].astype(float).mean())
        low, high = point_interval(g, metric, value)
        extra = {name: float(g[name].mean()) for name in diagnostic_names[task] if g[name].notna().any()}
        points[(task, run, int(step), split)] = Point(
            task=task,
            run=run,
            step=int(step),
            split=split,
            value=value,
            ci_low=low,
            ci_high=high,
            gflops=float(g["gflops"].mean()),
            n_seeds=len(g),
            episodes=int(g["episodes"].fillna(0).sum()),
            extra=extra,
            train_viter=_viter(g["train_viter"].iloc[0]) if "train_viter" in g.columns else None,
            train_start=_start(g["train_start"].iloc[0]) if "train_start" in g.columns else None,
            seed_values=tuple(float(v) for v in g.sort_values("seed")[metric].astype(float)),
        )
    return points


def rl_runs(points, task: str) -> list[str]:
    """The runs of RL from init: those whose evaluations record a training VIter and start at init (or no
    start: studies from before starts were recorded)."""
    return sorted(
        {
            p.run
            for p in points.values()
            if p.task == task
            and p.train_viter is not None
            and p.run != NOSFT_RUN
            and p.train_start in (None, START_INIT)
        },
        key=lambda run: order_of(points, task, run),
    )


def sft_start_runs(points, task: str) -> dict[str, int]:
    """RL runs from a checkpoint of the SFT arm (rl.starts): run -> the SFT step it started from."""
    starts = {p.run: sft_start_step(p.train_start) for p in points.values() if p.task == task}
    return {run: step for run, step in sorted(starts.items()) if step is not None}


def sft_runs(points, task: str) -> list[str]:
    """The SFT arms drawn beside RL: continued SFT, and SFT on varied rules where the study has it."""
    return [SFT_RUN] + ([SFT_VARIED_RUN] if has_run(points, task, SFT_VARIED_RUN) else [])


def has_run(points, task: str, run: str) -> bool:
    return any(p.task == task and p.run == run for p in points.values())


def matched_checkpoint(
    points, task: str, run: str, target: tuple[str, int] | None, budget: float | None
) -> tuple[str, int] | None:
    """The checkpoint of `run` beside `target` (another run's checkpoint): the same step where `run` has it, else
    its step closest in compute (then in steps); without a target, its step closest to `budget` (else its last).
    None when `run` has no checkpoint past step 0."""
    compute = {p.step: p.gflops for p in points.values() if p.task == task and p.run == run and p.step > 0}
    if not compute:
        return None
    steps = sorted(compute)
    if target is None:
        return run, (max(steps) if budget is None else min(steps, key=lambda k: abs(compute[k] - budget)))
    if target[1] in compute:
        return run, target[1]
    gflops = next((p.gflops for p in points.values() if (p.task, p.run, p.step) == (task, *target)), 0.0)
    return run, min(steps, key=lambda k: (abs(compute[k] - gflops), abs(k - target[1])))


def main_rl_run(points, task: str) -> str | None:
    """The RL arm the claims use: the paper's VIter when the study has it, else the largest."""
    viters = {run: run_viter(points, task, run) for run in rl_runs(points, task)}
    if not viters:
        return None
    preferred = [run for run, v in viters.items() if v == MAIN_VITER]
    return preferred[0] if preferred else max(viters, key=viters.get)


def curve(points, task: str, run: str, split: str) -> tuple[list[Point], bool]:
    """The run's points from its start (init, base for rl-nosft, the SFT checkpoint of RL from one), and
    whether the run itself has data."""
    sft_step = sft_start_step(run_start(points, task, run))
    start = BASE_RUN if run == NOSFT_RUN else INIT_RUN if sft_step is None else SFT_RUN
    own = sorted(
        (p for p in points.values() if p.task == task and p.run == run and p.split == split and p.step > 0),
        key=lambda p: p.step,
    )
    first = points.get((task, start, sft_step or 0, split))
    return ([first] if first else []) + own, bool(own)


@dataclass
class Selection:
    budget: float | None
    steps: dict[str, int]
    how: str


def equal_compute_steps(points, task: str, runs: list[str], budget_runs: list[str] | None = None) -> Selection:
    """Per run, the checkpoint whose compute is closest to the common budget: the smallest of the largest
    compute reached by each of `budget_runs` (default: every run) that has checkpoints."""
    compute: dict[str, dict[int, float]] = {}
    for p in points.values():
        if p.task == task and p.run in runs and p.step > 0:
            compute.setdefault(p.run, {})[p.step] = p.gflops
    if not compute:
        return Selection(None, {}, "no checkpoints evaluated")
    if all(g <= 0 for steps in compute.values() for g in steps.values()):
        return Selection(None, {r: max(s) for r, s in compute.items()}, "last checkpoints (no compute recorded)")
    setting = [compute[r] for r in (budget_runs or runs) if r in compute] or list(compute.values())
    budget = min(max(s.values()) for s in setting)
    steps = {r: min(sorted(s), key=lambda k: abs(s[k] - budget)) for r, s in compute.items()}
    return Selection(budget, steps, f"checkpoints closest to {budget:.4g} GFLOPs")


def tasks_for(points, tasks: list[str] | None) -> list[str]:
    """The study's tasks, then any other task the evaluations name (a placeholder when there is none)."""
    found = sorted({p.task for p in points.values()})
    return list(dict.fromkeys((tasks or []) + found)) or ["(no task)"]


# --------------------------------------------------------------------------- formatting
def pct(x: float | None, digits: int = 1) -> str:
    return "n/a" if x is None or isnan(x) else f"{100 * x:.{digits}f}%"


def pct_ci(p: Point | None) -> str:
    """ "30.0% [24.5, 36.1]": a rate and its 95% interval, in percent."""
    if p is None:
        return "n/a"
    if isnan(p.ci_low):
        return pct(p.value)
    return f"{pct(p.value)} [{100 * p.ci_low:.1f}, {100 * p.ci_high:.1f}]"


def pp(x: float, digits: int = 1) -> str:
    return "n/a" if isnan(x) else f"{100 * x:+.{digits}f}"
