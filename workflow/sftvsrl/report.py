"""Aggregate the evaluations of a study into tables, four figures and a claim-by-claim summary.

Inputs are the eval JSON files written by `sftvsrl.evaluate` (one per task x seed x run x
checkpoint x split) and, beside each, its episode table `<split>.episodes.jsonl`. Outputs, in
`out_dir` (the study's `results/`):

- `summary.csv`   one row per (task, seed, run, step, split): compute, every metric, and the
                  Wilson 95% interval of the success rate.
- `claims.csv`    one row per claim x metric: the paired difference, its 95% interval, p-value,
                  hands and episodes resampled, and the verdict.
- `figures/id_ood_vs_compute.png`  ID and OOD score vs training compute (paper Figure 5).
- `figures/ood_change.png`         OOD change from init at equal compute, beside the paper (Figure 6).
- `figures/viter_ablation.png`     OOD gain vs VIter at equal compute, beside the paper (Figure 10).
- `figures/rl_nosft.png`           RL from the base model vs RL from init (Figure 9).
- `summary.md`    the study's claims one by one, with our numbers, the paper's, and a verdict.

Conventions, stated once:
- Score: GP-L episode success rate; V-IRL-L per-step accuracy (the paper's rule-variant metric).
- A single rate gets a 95% interval: Wilson for a success rate (with several seeds, the mean
  across seeds and the Wilson interval of the pooled episodes); for per-step accuracy, the
  normal interval of the evaluation's ratio-estimator standard error.
- Two checkpoints are compared paired: every checkpoint is evaluated on the same rows with the
  same sampling seed, so episodes are paired by row id. The resampling unit is the hand (GP: the
  multiset of card ranks; other tasks: the row), since a split can repeat a hand; with several
  seeds each seed's episode pairs join their hand. The difference is rate(A) - rate(B) over the
  pooled episodes; its 95% interval is a paired cluster bootstrap over hands, its p-value exact
  McNemar (binary metric, no hand repeated) or a paired permutation test over hands (`stats`).
- Verdict: "held" when the 95% paired interval excludes 0 in the paper's direction (and the
  test agrees, p < 0.05), "did not hold" when it excludes 0 in the opposite direction (p < 0.05),
  "inconclusive" otherwise; "not tested" when the evaluations or episode tables are missing.
- Compute: the cumulative training FLOPs of the checkpoint (its `compute.json`, from the
  base model), in GFLOPs. SFT and RL curves both start from the shared init point;
  RL without SFT starts from the base model (0 FLOPs).
- Equal compute: per task, the budget is the smallest of the largest compute reached by
  the continued-SFT run and each RL-from-init run; each run contributes its checkpoint whose
  compute is closest to that budget. When no checkpoint records compute, the last
  checkpoints are compared instead. The chosen checkpoints are named in summary.md.
- The RL run for the claims is `rl-v5` (the paper's VIter) when present, else the largest VIter.
"""
from __future__ import annotations

import csv
import json
import logging
import math
import re
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .evaluate import episodes_file
from .stats import (
    CONFIDENCE,
    NOT_TESTED,
    PairedResult,
    compare_paired,
    hand_totals,
    interval_verdict,
    normal_interval,
    wilson_interval,
)

log = logging.getLogger(__name__)

SPLIT_ID, SPLIT_OOD = "eval_id", "eval_ood_rule"
SPLIT_TITLE = {SPLIT_ID: "in-distribution (ID)", SPLIT_OOD: "rule OOD"}
PRIMARY_METRIC = {"gp_l": "success_rate", "virl_l": "per_step_accuracy"}
METRIC_TITLE = {
    "success_rate": "episode success", "per_step_accuracy": "per-step accuracy",
    "rule_memorisation_rate": "rule memorisation", "absolute_turn_rate": "absolute turns (rule memorisation)",
    "number_accuracy": "number accuracy", "mean_reward_per_attempt": "reward / attempt",
}
BINARY_METRICS = {"success_rate"}  # one 0/1 outcome per episode: McNemar applies
TASK_LABEL = {"gp_l": "GP-L", "gp_vl": "GP-VL", "virl_l": "V-IRL-L", "virl_vl": "V-IRL-VL"}
MAIN_VITER = 5  # the paper's default number of verification iterations
PAPER_SCALE = "Llama-3.2-11B-Vision, 11B parameters; 234 episodes per GeneralPoints split"

# The diagnostics that make claims (ii)-(iv) visible on the rule-OOD split, with their direction
# relative to OOD success: applying the training rule moves against it, reading values right with it.
DIAGNOSTIC_DIRECTION = {"rule_memorisation_rate": -1, "absolute_turn_rate": -1, "number_accuracy": +1}

# The paper's numbers (percent), used when no paper_results.yaml is given or found.
PAPER_DEFAULT: dict[str, Any] = {
    "source": "Chu et al., SFT Memorizes, RL Generalizes, ICML 2025 (arXiv 2501.17161)",
    "rule_ood": {
        "gp_l": {"metric": "episode_success", "init": 11.5, "sft": 3.4, "rl": 15.0},
        "gp_vl": {"metric": "episode_success", "init": 11.2, "sft": 5.6, "rl": 14.2},
        "virl_l": {"metric": "per_step_accuracy", "init": 80.8, "sft": 1.3, "rl": 91.8},
        "virl_vl": {"metric": "per_step_accuracy", "init": 35.7, "sft": 2.5, "rl": 45.0},
    },
    "verification_ablation": {"gp_l": {"viter_1": 0.48, "viter_3": 2.15, "viter_5": 2.99, "viter_10": 5.99}},
    "rl_without_sft": {"gp_l": {"episode_success_max": 0.4}},
}

LEAD_COLUMNS = [
    "task", "seed", "run", "step", "split", "train_viter", "eval_viter", "episodes",
    "gflops", "n_params", "success_rate", "success_se", "success_ci_low", "success_ci_high",
]
PREFERRED_METRICS = [
    "per_step_accuracy", "per_step_accuracy_se", "route_success_rate", "route_success_rate_se",
    "format_error_rate", "rule_memorisation_rate", "absolute_turn_rate", "value_use_rate",
    "number_accuracy", "recognition_accuracy", "mean_attempts", "mean_reward_per_attempt",
]
DIAGNOSTICS = [
    ("format_error_rate", "format error"),
    ("rule_memorisation_rate", "rule memorisation"),
    ("absolute_turn_rate", "absolute turns (rule memorisation)"),
    ("value_use_rate", "value use"),
    ("number_accuracy", "number accuracy"),
    ("intersection_hallucination_rate", "intersection hallucination"),
    ("mean_reward_per_attempt", "reward / attempt"),
]
CLAIMS_COLUMNS = [
    "task", "claim", "metric", "comparison", "diff", "ci_low", "ci_high", "p_value", "hands", "episodes",
    "verdict", "paper_direction", "test", "note",
]


# --------------------------------------------------------------------------- names
def _isnan(x: Any) -> bool:
    try:
        return math.isnan(float(x))
    except (TypeError, ValueError):
        return True


def _viter_of(run: str) -> int | None:
    match = re.fullmatch(r"rl-v(\d+)", str(run))
    return int(match.group(1)) if match else None


def run_order(run: str) -> tuple[int, int]:
    fixed = {"base": 0, "init": 1, "sft": 2, "rl-nosft": 9}
    if run in fixed:
        return fixed[run], 0
    v = _viter_of(run)
    return (3, v) if v is not None else (8, 0)


def run_label(run: str) -> str:
    if run == "sft":
        return "SFT"
    if run == "rl-nosft":
        return "RL from base (no SFT)"
    v = _viter_of(run)
    return f"RL, VIter {v}" if v is not None else run


def checkpoint_label(run: str, step: int) -> str:
    return f"{run_label(run)} step {step}" if step > 0 else run


def task_title(task: str, config: dict[str, Any]) -> str:
    """The task and its setting, e.g. "GeneralPoints, 3 cards, target 24 (GP-L)"."""
    label = TASK_LABEL.get(task, task)
    if task.startswith("gp"):
        gp = config.get("gp") or {}
        return f"GeneralPoints, {gp.get('num_cards', 4)} cards, target {gp.get('target', 24)} ({label})"
    if task.startswith("virl"):
        return f"V-IRL navigation, {'image' if task.endswith('vl') else 'text'} ({label})"
    return task


def metric_of(task: str) -> str:
    return PRIMARY_METRIC.get(task, "success_rate")


# --------------------------------------------------------------------------- loading
def load_evals(eval_files: Iterable[str | Path]):
    """One row per eval JSON: identifiers, compute (GFLOPs), every numeric metric, the success interval."""
    import pandas as pd

    records = []
    for path in eval_files:
        data = json.loads(Path(path).read_text())
        metrics = data.get("metrics", {}) or {}
        compute = data.get("compute", {}) or {}
        gflops = compute.get("gflops")
        if gflops is None:
            gflops = float(compute.get("flops", 0.0) or 0.0) / 1e9
        episodes = data.get("episodes", metrics.get("episodes"))
        rec: dict[str, Any] = {
            "task": data["task"],
            "seed": int(data["seed"]),
            "run": data["run"],
            "step": int(data["step"]),
            "split": data["split"],
            "train_viter": _viter_of(data["run"]),
            "eval_viter": data.get("viter"),
            "episodes": int(episodes) if episodes is not None else None,
            "gflops": float(gflops),
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
    df["_order"] = df["run"].map(run_order)
    df = df.sort_values(["task", "seed", "_order", "step", "split"]).drop(columns="_order").reset_index(drop=True)
    metric_cols = [c for c in df.columns if c not in LEAD_COLUMNS and c != "eval_file"]
    ordered = [c for c in PREFERRED_METRICS if c in metric_cols] + sorted(
        c for c in metric_cols if c not in PREFERRED_METRICS)
    return df[[c for c in LEAD_COLUMNS if c in df.columns] + ordered + ["eval_file"]]


def _successes(rec: dict[str, Any]) -> tuple[int, int]:
    """(successes, episodes) of one evaluation: the count the JSON gives, else rate x episodes."""
    n = int(rec.get("episodes") or 0)
    rate = rec.get("success_rate")
    if n <= 0 or _isnan(rate):
        return 0, 0
    k = rec.get("successes")
    return round(float(k) if not _isnan(k) else float(rate) * n), n


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


def seed_points(df, metric_of_task: dict[str, str] | None = None) -> dict[tuple[str, str, int, str], Point]:
    """(task, run, step, split) -> Point with the seed mean and its 95% interval."""
    metric_of_task = metric_of_task or PRIMARY_METRIC
    points: dict[tuple[str, str, int, str], Point] = {}
    if df.empty:
        return points
    for (task, run, step, split), g in df.groupby(["task", "run", "step", "split"], sort=False):
        metric = metric_of_task.get(task, "success_rate")
        if metric not in g.columns or g[metric].isna().all():
            metric = "success_rate"
        g = g[g[metric].notna()]
        if g.empty:
            continue
        value = float(g[metric].astype(float).mean())
        low, high = point_interval(g, metric, value)
        extra = {name: float(g[name].mean()) for name, _ in DIAGNOSTICS if name in g.columns and g[name].notna().any()}
        points[(task, run, int(step), split)] = Point(
            task=task, run=run, step=int(step), split=split, value=value, ci_low=low, ci_high=high,
            gflops=float(g["gflops"].mean()), n_seeds=len(g), episodes=int(g["episodes"].fillna(0).sum()), extra=extra,
        )
    return points


def runs_of(points, task: str) -> list[str]:
    return sorted({p.run for p in points.values() if p.task == task}, key=run_order)


def rl_runs(points, task: str) -> list[str]:
    return [r for r in runs_of(points, task) if _viter_of(r) is not None]


def main_rl_run(points, task: str) -> str | None:
    runs = rl_runs(points, task)
    if not runs:
        return None
    preferred = f"rl-v{MAIN_VITER}"
    return preferred if preferred in runs else max(runs, key=_viter_of)


def curve(points, task: str, run: str, split: str) -> tuple[list[Point], bool]:
    """The run's points from its start (init, or base for rl-nosft), and whether the run itself has data."""
    start = "base" if run == "rl-nosft" else "init"
    own = sorted((p for p in points.values() if p.task == task and p.run == run and p.split == split and p.step > 0),
                 key=lambda p: p.step)
    first = points.get((task, start, 0, split))
    return ([first] if first else []) + own, bool(own)


@dataclass
class Selection:
    budget: float | None
    steps: dict[str, int]
    how: str


def equal_compute_steps(points, task: str, runs: list[str]) -> Selection:
    """Per run, the checkpoint whose compute is closest to the common budget (see module docstring)."""
    compute: dict[str, dict[int, float]] = {}
    for p in points.values():
        if p.task == task and p.run in runs and p.step > 0:
            compute.setdefault(p.run, {})[p.step] = p.gflops
    if not compute:
        return Selection(None, {}, "no checkpoints evaluated")
    if all(g <= 0 for steps in compute.values() for g in steps.values()):
        return Selection(None, {r: max(s) for r, s in compute.items()}, "last checkpoints (no compute recorded)")
    budget = min(max(s.values()) for s in compute.values())
    steps = {r: min(sorted(s), key=lambda k: abs(s[k] - budget)) for r, s in compute.items()}
    return Selection(budget, steps, f"checkpoints closest to {budget:.4g} GFLOPs")


# --------------------------------------------------------------------------- episodes, paired
# Episode-level counts behind a ratio metric: (numerator, denominator) from the episode's own metrics.
EPISODE_COUNTS = {
    "per_step_accuracy": ("correct_actions", "attempts"),
    "absolute_turn_rate": ("absolute_turns", "turn_attempts"),
}
# Attempt-level flags behind a share of attempts (the attempts that carry the flag are the denominator).
ATTEMPT_FLAGS = {"rule_memorisation_rate": "rule_memorised", "number_accuracy": "number_correct"}


def hand_of(record: dict[str, Any]) -> Hashable:
    """The resampling unit of an episode: GP's multiset of card ranks, else the row itself."""
    hand = (record.get("row") or {}).get("hand")
    if isinstance(hand, dict) and hand.get("cards"):
        return ("hand",) + tuple(sorted(str(c) for c in hand["cards"]))
    return ("row", str(record.get("id")))


def episode_ratios(record: dict[str, Any]) -> dict[str, tuple[float, float]]:
    """metric -> (numerator, denominator) of one episode; a rate over episodes is sum(num) / sum(den)."""
    attempts = record.get("attempts") or []
    counts = record.get("metrics") or {}
    n_attempts = float(record.get("num_attempts", len(attempts)) or 0)
    out = {"success_rate": (float(bool(record.get("success"))), 1.0)}
    if n_attempts > 0:
        episode_return = counts.get("return")
        if episode_return is None:
            episode_return = sum(float(a.get("reward") or 0.0) for a in attempts)
        out["mean_reward_per_attempt"] = (float(episode_return), n_attempts)
    for metric, flag in ATTEMPT_FLAGS.items():
        flags = [(a.get("info") or {}).get(flag) for a in attempts]
        flags = [f for f in flags if f is not None]
        if flags:
            out[metric] = (float(sum(map(bool, flags))), float(len(flags)))
    for metric, (num, den) in EPISODE_COUNTS.items():
        if isinstance(counts.get(num), (int, float)) and isinstance(counts.get(den), (int, float)):
            out[metric] = (float(counts[num]), float(counts[den]))
    return out


@dataclass
class Comparison:
    """Checkpoint A minus checkpoint B on one split and metric, paired over the seeds they share."""

    task: str
    metric: str
    split: str
    a: tuple[str, int]
    b: tuple[str, int]
    result: PairedResult | None = None
    note: str = ""

    @property
    def label(self) -> str:
        return f"{checkpoint_label(*self.a)} - {checkpoint_label(*self.b)} on {self.split}"


class PairedEvaluations:
    """The study's episode tables (read on demand) and the paired comparisons made from them."""

    def __init__(self, df):
        self.eval_files = {
            (r["task"], int(r["seed"]), r["run"], int(r["step"]), r["split"]): Path(r["eval_file"])
            for r in (df.to_dict("records") if not df.empty else [])
        }
        self._episodes: dict[Path, dict[str, tuple[Hashable, dict]] | None] = {}
        self._comparisons: dict[tuple, Comparison] = {}

    def episodes(self, key: tuple) -> dict[str, tuple[Hashable, dict]] | None:
        """row id -> (hand, metric ratios) of one evaluation; None when its episode table is missing."""
        path = episodes_file(self.eval_files[key])
        if path not in self._episodes:
            self._episodes[path] = _read_episodes(path) if path.exists() else None
        return self._episodes[path]

    def hands(self, task: str, split: str) -> tuple[int, int] | None:
        """(episodes, distinct hands) of a split, from the first evaluation with an episode table."""
        for key in sorted(k for k in self.eval_files if k[0] == task and k[4] == split):
            table = self.episodes(key)
            if table:
                return len(table), len({hand for hand, _ in table.values()})
        return None

    def compare(self, task: str, a: tuple[str, int], b: tuple[str, int], split: str, metric: str) -> Comparison:
        cache_key = (task, a, b, split, metric)
        if cache_key not in self._comparisons:
            self._comparisons[cache_key] = self._compare(Comparison(task, metric, split, a, b))
        return self._comparisons[cache_key]

    def _compare(self, c: Comparison) -> Comparison:
        seeds = sorted({k[1] for k in self.eval_files if k[0] == c.task})
        keys = [((c.task, s, *c.a, c.split), (c.task, s, *c.b, c.split)) for s in seeds]
        keys = [(ka, kb) for ka, kb in keys if ka in self.eval_files and kb in self.eval_files]
        if not keys:
            c.note = f"no seed evaluated both {checkpoint_label(*c.a)} and {checkpoint_label(*c.b)} on {c.split}"
            return c
        missing = [str(episodes_file(self.eval_files[k])) for pair in keys for k in pair if self.episodes(k) is None]
        if missing:
            c.note = f"no episode table for {len(missing)} evaluation(s), e.g. {missing[0]}: rerun the evaluation"
            return c
        pairs = []
        for ka, kb in keys:
            table_a, table_b = self.episodes(ka), self.episodes(kb)
            for row_id, (hand, ratios_a) in table_a.items():
                ratios_b = table_b.get(row_id, (None, {}))[1]
                if c.metric in ratios_a and c.metric in ratios_b:
                    pairs.append((hand, *ratios_a[c.metric], *ratios_b[c.metric]))
        if not pairs:
            c.note = f"no episodes of both checkpoints share a row id and record {c.metric}"
            return c
        c.result = compare_paired(hand_totals(pairs), binary=c.metric in BINARY_METRICS)
        if _isnan(c.result.diff):
            c.note, c.result = f"the episodes record no {c.metric}", None
        return c


def _read_episodes(path: Path) -> dict[str, tuple[Hashable, dict]]:
    table = {}
    for line in path.read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            table[str(record.get("id", record.get("index")))] = (hand_of(record), episode_ratios(record))
    return table


# --------------------------------------------------------------------------- claims
@dataclass
class MetricTest:
    """One paired comparison behind a claim, on one metric, with the paper's direction (+1: A above B)."""

    metric: str
    statement: str
    paper_sign: int
    comparison: Comparison | None = None
    missing: str = ""

    @property
    def verdict(self) -> str:
        result = self.comparison.result if self.comparison else None
        if result is None:
            return NOT_TESTED
        return interval_verdict(result.ci_low, result.ci_high, self.paper_sign, result.p_value)

    @property
    def note(self) -> str:
        return self.missing or (self.comparison.note if self.comparison else "")


@dataclass
class Claim:
    key: str
    statement: str
    paper: str = ""
    ours: str = ""
    tests: list[MetricTest] = field(default_factory=list)  # the first is the claim's own metric

    @property
    def result(self) -> str:
        return self.tests[0].verdict if self.tests else NOT_TESTED


def _pct(x: float | None, digits: int = 1) -> str:
    return "n/a" if x is None or _isnan(x) else f"{100 * x:.{digits}f}%"


def _pct_ci(p: Point | None) -> str:
    """"30.0% [24.5, 36.1]": a rate and its 95% interval, in percent."""
    if p is None:
        return "n/a"
    if _isnan(p.ci_low):
        return _pct(p.value)
    return f"{_pct(p.value)} [{100 * p.ci_low:.1f}, {100 * p.ci_high:.1f}]"


def _pp(x: float, digits: int = 1) -> str:
    return "n/a" if _isnan(x) else f"{100 * x:+.{digits}f}"


def _diff_ci(c: Comparison | None) -> str:
    """"-25.0 [-31.2, -18.8]": a paired difference in points with its 95% interval."""
    if c is None or c.result is None:
        return "n/a"
    r = c.result
    return f"{_pp(r.diff)} [{_pp(r.ci_low)}, {_pp(r.ci_high)}]"


def _p(p: float) -> str:
    if _isnan(p):
        return "n/a"
    return "< 0.001" if p < 0.001 else f"{p:.3g}"


class ClaimBuilder:
    """The comparisons of one task at its equal-compute checkpoints."""

    def __init__(self, points, paired: PairedEvaluations, task: str):
        self.points, self.paired, self.task = points, paired, task
        self.metric = metric_of(task)
        self.rls = rl_runs(points, task)
        self.main = main_rl_run(points, task)
        self.sel = equal_compute_steps(points, task, ["sft"] + self.rls)

    def at(self, run: str | None) -> tuple[str, int] | None:
        """The checkpoint a claim uses: step 0 of init / base, else the run's equal-compute step."""
        if run in ("init", "base"):
            return run, 0
        if run is None or run not in self.sel.steps:
            return None
        return run, self.sel.steps[run]

    def point(self, checkpoint: tuple[str, int] | None, split: str) -> Point | None:
        return None if checkpoint is None else self.points.get((self.task, *checkpoint, split))

    def test(self, metric: str, statement: str, sign: int, a, b, split: str, missing: str) -> MetricTest:
        if self.point(a, split) is None or self.point(b, split) is None:
            return MetricTest(metric, statement, sign, missing=missing)
        return MetricTest(metric, statement, sign, self.paired.compare(self.task, a, b, split, metric))

    def change(self, a, b, split: str) -> str:
        """"init 30.0% [..] -> SFT step 10 (1.5 GFLOPs) 5.0% [..]"."""
        pa, pb = self.point(a, split), self.point(b, split)
        if pa is None or pb is None:
            return ""
        return f"{checkpoint_label(*b)} {_pct_ci(pb)} -> {checkpoint_label(*a)} ({pa.gflops:.4g} GFLOPs) {_pct_ci(pa)}"


def _raises(subject: str, versus: str):
    """A diagnostic's statement in the paper's direction: "SFT raises OOD rule memorisation vs init"."""
    return lambda sign, title: f"{subject} {'raises' if sign > 0 else 'lowers'} OOD {title} {versus}"


def _rl_versus_sft(sign: int, title: str) -> str:
    return f"RL {'above' if sign > 0 else 'below'} SFT on OOD {title} at equal compute"


def evaluate_claims(points, paired: PairedEvaluations, task: str, paper: dict[str, Any],
                    diagnostics: Iterable[str] = ()) -> tuple[list[Claim], Selection, dict[str, Any]]:
    """The six claims of the study for one task, each a paired comparison (plus rule-OOD diagnostics
    for (ii)-(iv)); also the equal-compute selection and what the tables and figures reuse."""
    rule = (paper.get("rule_ood") or {}).get(task)
    ablation = (paper.get("verification_ablation") or {}).get(task)
    nosft_paper = (paper.get("rl_without_sft") or {}).get(task)
    cb = ClaimBuilder(points, paired, task)
    metric, title = cb.metric, METRIC_TITLE.get(cb.metric, cb.metric)
    init, sft, rl = cb.at("init"), cb.at("sft"), cb.at(cb.main)
    paper_rule = (lambda x, y: f"{rule[x]:.1f}% -> {rule[y]:.1f}% ({rule[y] - rule[x]:+.1f} points)") if rule else None
    no_number = "no paper number for this task"

    def with_diagnostics(claim: Claim, sign: int, phrase, a, b, missing: str) -> Claim:
        for name in diagnostics:
            d_sign = sign * DIAGNOSTIC_DIRECTION[name]
            statement = phrase(d_sign, METRIC_TITLE.get(name, name))
            claim.tests.append(cb.test(name, statement, d_sign, a, b, SPLIT_OOD, missing))
        return claim

    claims = []
    c = Claim("i", f"SFT raises ID {title} over init", paper="shown in the paper's Figure 5 (ID curves)",
              ours=cb.change(sft, init, SPLIT_ID))
    c.tests.append(cb.test(metric, c.statement, +1, sft, init, SPLIT_ID, "needs init and SFT evaluations on eval_id"))
    claims.append(c)

    missing = "needs init and SFT evaluations on eval_ood_rule"
    c = Claim("ii", f"SFT lowers OOD {title} vs init", paper=f"init -> SFT: {paper_rule('init', 'sft')}" if rule
              else no_number, ours=cb.change(sft, init, SPLIT_OOD))
    c.tests.append(cb.test(metric, c.statement, -1, sft, init, SPLIT_OOD, missing))
    claims.append(with_diagnostics(c, -1, _raises("SFT", "vs init"), sft, init, missing))

    missing = "needs init and RL evaluations on eval_ood_rule"
    c = Claim("iii", f"RL raises OOD {title} vs init", paper=f"init -> RL: {paper_rule('init', 'rl')}" if rule
              else no_number, ours=cb.change(rl, init, SPLIT_OOD))
    c.tests.append(cb.test(metric, c.statement, +1, rl, init, SPLIT_OOD, missing))
    claims.append(with_diagnostics(c, +1, _raises("RL", "vs init"), rl, init, missing))

    missing = "needs SFT and RL evaluations on eval_ood_rule"
    c = Claim("iv", f"RL beats SFT on OOD {title} at equal compute",
              paper=f"RL {rule['rl']:.1f}% vs SFT {rule['sft']:.1f}% ({rule['rl'] - rule['sft']:+.1f} points)"
              if rule else no_number, ours=cb.change(rl, sft, SPLIT_OOD))
    c.tests.append(cb.test(metric, c.statement, +1, rl, sft, SPLIT_OOD, missing))
    claims.append(with_diagnostics(c, +1, _rl_versus_sft, rl, sft, missing))

    gains = {_viter_of(run): cb.test(metric, "", +1, cb.at(run), init, SPLIT_OOD, "")
             for run in cb.rls if cb.point(cb.at(run), SPLIT_OOD) is not None}
    claims.append(_viter_claim(cb, gains, ablation))
    claims.append(_nosft_claim(cb, title, nosft_paper))
    context = {"main_rl": cb.main, "gains": gains, "rule": rule, "ablation": ablation, "builder": cb}
    return claims, cb.sel, context


def _viter_claim(b: ClaimBuilder, gains: dict[int, MetricTest], ablation: dict | None) -> Claim:
    """(v) the largest VIter's OOD score minus the smallest's, paired: their common init cancels."""
    c = Claim("v", "more verification iterations (VIter) give more OOD gain",
              paper=("OOD gain " + ", ".join(f"VIter {k.split('_')[1]}: {v:+.2f}" for k, v in ablation.items())
                     + " points") if ablation else "no paper ablation for this task")
    tested = sorted(gains)
    if len(tested) < 2:
        c.tests.append(MetricTest(b.metric, c.statement, +1,
                            missing="needs OOD evaluations of at least two RL runs with different VIter"))
        return c
    lo, hi = b.at(f"rl-v{tested[0]}"), b.at(f"rl-v{tested[-1]}")
    c.tests.append(b.test(b.metric, c.statement, +1, hi, lo, SPLIT_OOD, ""))
    c.ours = "paired OOD gain over init: " + ", ".join(
        f"VIter {v}: {_diff_ci(gains[v].comparison)}" for v in tested
    ) + f" points; compared: {checkpoint_label(*hi)} - {checkpoint_label(*lo)}"
    return c


def _nosft_claim(b: ClaimBuilder, title: str, nosft_paper: dict | None) -> Claim:
    """(vi) the best rl-nosft checkpoint on ID, paired against the main RL-from-init checkpoint."""
    c = Claim("vi", f"RL without SFT fails: its best ID {title} stays below RL from init",
              paper=(f"at most {nosft_paper['episode_success_max']:.1f}% episode success throughout (GP-L)"
                     if nosft_paper else "about 0% throughout (shown for GP-L)"))
    nosft = [p for p in b.points.values() if p.task == b.task and p.run == "rl-nosft" and p.step > 0]
    best = max((p for p in nosft if p.split == SPLIT_ID), key=lambda p: p.value, default=None)
    main = b.at(b.main)
    missing = "needs ID evaluations of the rl-nosft run and of the main RL-from-init run"
    a = ("rl-nosft", best.step) if best else None
    c.tests.append(b.test(b.metric, c.statement, -1, a, main, SPLIT_ID, missing))
    if best is not None:
        fmt = [p.extra["format_error_rate"] for p in nosft if "format_error_rate" in p.extra]
        c.ours = (f"best checkpoint ({checkpoint_label(*a)}, ID): {_pct_ci(best)}"
                  + (f"; {checkpoint_label(*main)}: {_pct_ci(b.point(main, SPLIT_ID))}" if main else "")
                  + (f"; format error rate {_pct(min(fmt))}-{_pct(max(fmt))} across its checkpoints" if fmt else ""))
    return c


def claims_rows(task: str, claims: list[Claim]) -> list[dict[str, Any]]:
    """claims.csv rows: one per claim x metric."""
    rows = []
    for claim in claims:
        for t in claim.tests:
            r = t.comparison.result if t.comparison else None
            rows.append({
                "task": task, "claim": claim.key, "metric": t.metric,
                "comparison": t.comparison.label if t.comparison else "",
                "diff": r.diff if r else None, "ci_low": r.ci_low if r else None, "ci_high": r.ci_high if r else None,
                "p_value": r.p_value if r else None, "hands": r.hands if r else None,
                "episodes": r.episodes if r else None, "verdict": t.verdict,
                "paper_direction": "+" if t.paper_sign > 0 else "-", "test": r.test if r else "", "note": t.note,
            })
    return rows


def write_claims_csv(rows: list[dict[str, Any]], path: Path) -> Path:
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=CLAIMS_COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    return path


# --------------------------------------------------------------------------- figures
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _note(ax, lines: list[str]) -> None:
    """Notes (missing curves, how points were chosen) under the axes, where they hide no data."""
    if not lines:
        return
    label = ax.get_xlabel()
    ax.set_xlabel((label + "\n" if label else "") + "\n".join(f"NOTE: {line}" for line in lines), fontsize=8)


def _save(plt, fig, title: str, path: Path) -> Path:
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _rate_errors(pts: list[Point]) -> list[list[float]]:
    """Asymmetric error bars (percent) from the points' 95% intervals; 0 where an interval is unknown."""
    below = [0.0 if _isnan(p.ci_low) else 100 * (p.value - p.ci_low) for p in pts]
    above = [0.0 if _isnan(p.ci_high) else 100 * (p.ci_high - p.value) for p in pts]
    return [below, above]


def _change_bar(c: Comparison, a: Point, b: Point) -> tuple[float, float, float, str | None]:
    """(change, error below, error above) in points from a paired comparison; without episode
    tables, the difference of the two rates and no error bar, with a note saying so."""
    if c.result is None:
        return 100 * (a.value - b.value), 0.0, 0.0, f"{checkpoint_label(*c.a)}: no paired interval ({c.note})"
    r = c.result
    return 100 * r.diff, 100 * (r.diff - r.ci_low), 100 * (r.ci_high - r.diff), None


def _empty(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", fontsize=10, wrap=True,
            bbox={"boxstyle": "round", "fc": "#fde2e2", "ec": "#c0392b"})
    ax.set_xticks([])
    ax.set_yticks([])


def _colour(run: str):
    plt = _plt()
    if run == "sft":
        return "#d95f02"
    if run == "rl-nosft":
        return "#7570b3"
    v = _viter_of(run) or 1
    cmap = plt.get_cmap("Blues")
    return cmap(0.45 + 0.5 * min(v, 10) / 10)


def _tasks_for(points, tasks: list[str] | None) -> list[str]:
    found = sorted({p.task for p in points.values()})
    return list(dict.fromkeys((tasks or []) + found)) or ["(no task)"]


def _plot_curve(ax, pts: list[Point], label: str, colour, style: str = "-o") -> None:
    ax.errorbar([p.gflops for p in pts], [100 * p.value for p in pts], yerr=_rate_errors(pts), fmt=style,
                color=colour, label=label, capsize=3, ms=4, lw=1.5)


def figure_id_ood_vs_compute(points, tasks: list[str], titles: dict[str, str], path: Path) -> Path:
    plt = _plt()
    tasks = _tasks_for(points, tasks)
    fig, axes = plt.subplots(len(tasks), 2, figsize=(11, 4.2 * len(tasks)), squeeze=False)
    for row, task in enumerate(tasks):
        metric = METRIC_TITLE.get(metric_of(task))
        runs = ["sft"] + rl_runs(points, task)
        for col, split in enumerate((SPLIT_ID, SPLIT_OOD)):
            ax = axes[row][col]
            ax.set_title(f"{titles.get(task, task)}: {SPLIT_TITLE[split]}", fontsize=10)
            missing, drawn = [], False
            init = points.get((task, "init", 0, split))
            for run in runs:
                pts, has = curve(points, task, run, split)
                if not has:
                    missing.append(f"no {run_label(run)} checkpoints on this split")
                    continue
                _plot_curve(ax, pts, run_label(run), _colour(run))
                drawn = True
            if init is None:
                missing.append("no init evaluation: curves lack their start")
            else:
                ax.errorbar([init.gflops], [100 * init.value], yerr=_rate_errors([init]),
                            fmt="*", color="black", ms=12, label="init (shared start)", zorder=5)
                drawn = True
            base = points.get((task, "base", 0, split))
            if base is not None:
                ax.errorbar([base.gflops], [100 * base.value], yerr=_rate_errors([base]),
                            fmt="X", color="grey", ms=8, label="base model", zorder=5)
                drawn = True
            if not drawn:
                _empty(ax, f"no evaluations of {task} on {split}")
                continue
            ax.set_xlabel("training compute (GFLOPs, cumulative from the base model)")
            ax.set_ylabel(f"{metric} (%), 95% interval")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7, loc="upper left")
            _note(ax, missing)
    return _save(plt, fig, "ID and OOD score vs training compute: SFT and RL from the shared init (cf. paper Figure 5)", path)


def figure_ood_change(points, contexts: dict[str, dict], tasks: list[str], paper: dict[str, Any],
                      titles: dict[str, str], path: Path) -> Path:
    plt = _plt()
    tasks = _tasks_for(points, tasks)
    fig, axes = plt.subplots(1, len(tasks), figsize=(max(7, 6.5 * len(tasks)), 4.8), squeeze=False)
    for i, task in enumerate(tasks):
        ax = axes[0][i]
        metric = METRIC_TITLE.get(metric_of(task))
        b: ClaimBuilder | None = contexts.get(task, {}).get("builder")
        runs = ["sft"] + rl_runs(points, task)
        init = points.get((task, "init", 0, SPLIT_OOD))
        labels, values, below, above, colours, hatches, notes = [], [], [], [], [], [], []
        for run in runs:
            p = b.point(b.at(run), SPLIT_OOD) if b else None
            if p is None or init is None:
                notes.append(f"no OOD data for {run_label(run)}" + ("" if init else " (no init evaluation)"))
                continue
            change = b.paired.compare(task, b.at(run), ("init", 0), SPLIT_OOD, metric_of(task))
            value, low, high, note = _change_bar(change, p, init)
            notes += [note] if note else []
            labels.append(f"{run_label(run)}\nours, step {p.step}")
            values.append(value)
            below.append(low)
            above.append(high)
            colours.append(_colour(run))
            hatches.append("")
        if not rl_runs(points, task):
            notes.append("no RL-from-init run evaluated")
        rule = (paper.get("rule_ood") or {}).get(task)
        if rule:
            for name, run in (("SFT", "sft"), ("RL", f"rl-v{MAIN_VITER}")):
                labels.append(f"{name}\npaper")
                values.append(rule[name.lower()] - rule["init"])
                below.append(0.0)
                above.append(0.0)
                colours.append(_colour(run))
                hatches.append("//")
        else:
            notes.append("paper: no rule-OOD numbers for this task")
        ax.set_title(f"{titles.get(task, task)}: rule-OOD change from init", fontsize=10)
        if not labels:
            _empty(ax, "no OOD evaluations of init, SFT or RL\nand no paper numbers for this task")
            continue
        x = list(range(len(labels)))
        bars = ax.bar(x, values, yerr=[below, above], color=colours, capsize=4, edgecolor="black", linewidth=0.6)
        for bar, hatch, v, lo, hi in zip(bars, hatches, values, below, above):
            bar.set_hatch(hatch)
            if hatch:
                bar.set_alpha(0.6)
            end = v + hi if v >= 0 else v - lo
            ax.annotate(f"{v:+.1f}", (bar.get_x() + bar.get_width() / 2, end), ha="center",
                        va="bottom" if v >= 0 else "top", fontsize=7, xytext=(0, 2 if v >= 0 else -2),
                        textcoords="offset points")
        ax.axhline(0, color="black", lw=0.8)
        ax.set_xticks(x)
        ax.set_xticklabels(labels, fontsize=7)
        ax.set_ylabel(f"OOD {metric}: change from init (points)")
        ax.grid(axis="y", alpha=0.3)
        sel = b.sel if b else None
        notes.insert(0, f"equal compute: {sel.how}" if sel and sel.steps else "no checkpoints to compare")
        notes.insert(1, "error bars: paired 95% interval (cluster bootstrap over hands)")
        if init is not None:
            notes.insert(2, f"our init: {_pct_ci(init)}" + (f"; paper init: {rule['init']:.1f}%" if rule else ""))
        ax.margins(y=0.15)
        _note(ax, notes)
    return _save(plt, fig, "OOD change from init at equal compute, ours beside the paper (cf. paper Figure 6)", path)


def figure_viter_ablation(points, contexts: dict[str, dict], tasks: list[str], paper: dict[str, Any],
                          titles: dict[str, str], path: Path) -> Path:
    plt = _plt()
    tasks = _tasks_for(points, tasks)
    fig, axes = plt.subplots(1, len(tasks), figsize=(max(6.5, 6 * len(tasks)), 4.5), squeeze=False)
    for i, task in enumerate(tasks):
        ax = axes[0][i]
        metric = METRIC_TITLE.get(metric_of(task))
        ax.set_title(f"{titles.get(task, task)}: OOD gain vs VIter", fontsize=10)
        ctx = contexts.get(task, {})
        b: ClaimBuilder | None = ctx.get("builder")
        init = points.get((task, "init", 0, SPLIT_OOD))
        notes, drawn = [], False
        xs, ys, below, above = [], [], [], []
        for viter, gain in sorted((ctx.get("gains") or {}).items()):
            p = b.point(b.at(f"rl-v{viter}"), SPLIT_OOD)
            if gain.comparison is None or p is None or init is None:
                continue
            value, low, high, note = _change_bar(gain.comparison, p, init)
            notes += [note] if note else []
            xs.append(viter)
            ys.append(value)
            below.append(low)
            above.append(high)
        if xs:
            ax.errorbar(xs, ys, yerr=[below, above], fmt="-o", color="#1f78b4", capsize=4,
                        label="ours (equal compute, paired 95% interval)")
            drawn = True
            if len(xs) < 2:
                notes.append("ours: a single VIter value, no trend to show")
        else:
            notes.append("ours: no OOD evaluations of RL runs and init")
        ablation = (paper.get("verification_ablation") or {}).get(task)
        if ablation:
            pv = sorted((int(k.split("_")[1]), v) for k, v in ablation.items())
            ax.plot([a for a, _ in pv], [v for _, v in pv], "--s", color="#888888", label="paper (GP-L, Figure 10)")
            drawn = True
        else:
            notes.append("paper: no verification ablation for this task")
        if not drawn:
            _empty(ax, "no data: neither our RL runs nor the paper's ablation")
            continue
        ax.axhline(0, color="black", lw=0.8)
        ticks = sorted(set(xs) | ({int(k.split('_')[1]) for k in ablation} if ablation else set()))
        ax.set_xticks(ticks)
        ax.set_xlabel("VIter (scored attempts per episode during RL)")
        ax.set_ylabel(f"OOD {metric}: gain over init (points)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
        notes.insert(0, f"equal compute: {b.sel.how}" if b and b.sel.steps else "no checkpoints to compare")
        _note(ax, notes)
    return _save(plt, fig, "Verification iterations: OOD gain at equal compute (cf. paper Figure 10)", path)


def figure_rl_nosft(points, df, tasks: list[str], titles: dict[str, str], path: Path) -> Path:
    plt = _plt()
    tasks = _tasks_for(points, tasks)
    fig, axes = plt.subplots(len(tasks), 3, figsize=(15, 4.2 * len(tasks)), squeeze=False)
    for row, task in enumerate(tasks):
        metric = METRIC_TITLE.get(metric_of(task))
        main = main_rl_run(points, task)
        runs = ["rl-nosft"] + ([main] if main else [])
        for col, split in enumerate((SPLIT_ID, SPLIT_OOD)):
            ax = axes[row][col]
            ax.set_title(f"{titles.get(task, task)}: {SPLIT_TITLE[split]}", fontsize=10)
            notes, drawn = [], False
            if not main:
                notes.append("no RL-from-init run to compare with")
            for run in runs:
                pts, has = curve(points, task, run, split)
                if not has:
                    notes.append(f"no {run_label(run)} checkpoints on this split")
                    continue
                _plot_curve(ax, pts, run_label(run) + ("" if run == "rl-nosft" else " (from init)"),
                            _colour(run), "-o" if run == "rl-nosft" else "--s")
                drawn = True
            if not drawn:
                _empty(ax, f"no RL evaluations of {task} on {split}")
                continue
            ax.set_xlabel("training compute (GFLOPs, cumulative from the base model)")
            ax.set_ylabel(f"{metric} (%), 95% interval")
            ax.set_ylim(bottom=-2)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7, loc="upper left")
            _note(ax, notes)
        ax = axes[row][2]
        ax.set_title(f"{titles.get(task, task)}: format errors (rule OOD)", fontsize=10)
        notes, drawn = [], False
        if "format_error_rate" not in df.columns:
            _empty(ax, "format_error_rate is not reported by this task")
            continue
        for run in runs:
            pts, has = curve(points, task, run, SPLIT_OOD)
            pts = [p for p in pts if "format_error_rate" in p.extra]
            if not has or not pts:
                notes.append(f"no {run_label(run)} format-error data")
                continue
            ax.plot([p.gflops for p in pts], [100 * p.extra["format_error_rate"] for p in pts],
                    "-o" if run == "rl-nosft" else "--s", color=_colour(run), label=run_label(run))
            drawn = True
        if not drawn:
            _empty(ax, "no format-error data for RL runs")
            continue
        ax.set_xlabel("training compute (GFLOPs)")
        ax.set_ylabel("format error rate (% of attempts)")
        ax.set_ylim(-2, 102)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="center right")
        _note(ax, notes)
    return _save(plt, fig, "RL straight from the base model vs RL from the SFT init (cf. paper Figure 9)", path)


# --------------------------------------------------------------------------- summary.md
def _diagnostic(name: str, value: float | None) -> str:
    """Rates as percentages; rewards as plain numbers."""
    if name == "mean_reward_per_attempt":
        return "n/a" if value is None or _isnan(value) else f"{value:+.2f}"
    return _pct(value)


def _cell(p: Point | None) -> str:
    """A rate in points with its 95% interval, for tables: "30.0 [24.5, 36.1]"."""
    if p is None:
        return "n/a"
    if _isnan(p.ci_low):
        return f"{100 * p.value:.1f}"
    return f"{100 * p.value:.1f} [{100 * p.ci_low:.1f}, {100 * p.ci_high:.1f}]"


def _p_text(p: float) -> str:
    return "p n/a" if _isnan(p) else ("p < 0.001" if p < 0.001 else f"p = {p:.3g}")


def _size(n_params: float) -> str:
    return f"{n_params / 1e9:.1f}B" if n_params >= 1e9 else f"{n_params / 1e6:.0f}M"


def scale_note(df, config: dict[str, Any]) -> str | None:
    """Model size and episodes per split beside the paper's: facts, not a verdict on the verdicts."""
    parts = []
    if "n_params" in df.columns and df["n_params"].notna().any() and float(df["n_params"].max()) > 0:
        parts.append(f"a {_size(float(df['n_params'].max()))}-parameter model")
    if "episodes" in df.columns and df["episodes"].notna().any():
        lo, hi = int(df["episodes"].min()), int(df["episodes"].max())
        parts.append(f"{lo if lo == hi else f'{lo}-{hi}'} episodes per split")
    if not parts:
        return None
    return (f"**Scale.** This study (`{config.get('study', '?')}`) evaluated " + " on ".join(parts)
            + f"; the paper: {PAPER_SCALE}. The intervals below say how much these evaluations can show.")


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


def _test_row(key: str, t: MetricTest) -> list[str]:
    r = t.comparison.result if t.comparison else None
    return [
        f"({key})", t.statement, METRIC_TITLE.get(t.metric, t.metric), _diff_ci(t.comparison),
        _p(r.p_value) if r else "n/a", f"{r.hands} ({r.episodes})" if r else "n/a", f"**{t.verdict}**",
    ]


def _test_sentence(t: MetricTest) -> str:
    r = t.comparison.result if t.comparison else None
    if r is None:
        return f"not tested ({t.note})"
    return (f"paired difference {_diff_ci(t.comparison)} points (95% interval), {_p_text(r.p_value)} "
            f"({r.test}; {r.hands} hands, {r.episodes} episode pairs)")


def claim_lines(claims: list[Claim]) -> list[str]:
    """The claims table (one row per claim x metric) and one paragraph per claim."""
    rows = [_test_row(c.key, t) for c in claims for t in c.tests]
    lines = _table(["#", "paper's finding", "metric", "ours: difference, points [95% CI]", "p",
                    "hands (episodes)", "verdict"], rows) + [""]
    for c in claims:
        head, *diagnostics = c.tests
        text = f"- **({c.key}) {c.statement}.** Paper: {c.paper}. "
        if head.verdict == NOT_TESTED:
            text += f"Ours: {c.ours + '; ' if c.ours else ''}not tested ({head.note})."
        else:
            text += (f"Ours: {c.ours}; {_test_sentence(head)}; the paper's direction is "
                     f"{'+' if head.paper_sign > 0 else '-'}. The paper's finding **{head.verdict}** in this run.")
        if diagnostics:
            text += " Diagnostics on the rule-OOD split: " + "; ".join(
                f"{t.statement}: {_test_sentence(t)}, **{t.verdict}**" if t.verdict != NOT_TESTED
                else f"{t.statement}: not tested ({t.note})" for t in diagnostics) + "."
        lines.append(text)
    return lines + [""]


def _paper_lines(b: ClaimBuilder, rule: dict | None) -> list[str]:
    """Init, SFT and RL on rule OOD (and ID) beside the paper, with paired changes from init."""
    def change(run: str | None, split: str) -> str:
        a, init = b.at(run), b.at("init")
        if b.point(a, split) is None or b.point(init, split) is None:
            return "n/a"
        c = b.paired.compare(b.task, a, init, split, b.metric)
        return _diff_ci(c) if c.result else f"{_pp(b.point(a, split).value - b.point(init, split).value)} (unpaired)"

    rows = []
    if rule:
        rows.append(["paper (11B, 234 episodes)", "OOD", f"{rule['init']:.1f}", f"{rule['sft']:.1f}",
                     f"{rule['rl']:.1f}", f"{rule['sft'] - rule['init']:+.1f}", f"{rule['rl'] - rule['init']:+.1f}"])
    for split in (SPLIT_OOD, SPLIT_ID):
        cells = [_cell(b.point(b.at(run), split)) for run in ("init", "sft", b.main)]
        rows.append([f"ours ({run_label(b.main) if b.main else 'no RL'})", "OOD" if split == SPLIT_OOD else "ID",
                     *cells, change("sft", split), change(b.main, split)])
    lines = ["### Beside the paper: rule OOD (Figure 6)", "",
             "Ours: rate [95% interval] in percent; changes are paired differences in points [95% interval].", ""]
    lines += _table(["", "split", "init", "SFT", "RL", "SFT - init", "RL - init"], rows)
    if not rule:
        lines += ["", f"The paper reports no rule-OOD numbers for `{b.task}`."]
    return lines + [""]


def _ablation_lines(ctx: dict[str, Any]) -> list[str]:
    lines = ["### Verification iterations (Figure 10): OOD gain over init at equal compute (points)", ""]
    paper_v = {int(k.split("_")[1]): v for k, v in (ctx["ablation"] or {}).items()}
    gains: dict[int, MetricTest] = ctx["gains"]
    rows = []
    for v in sorted(set(paper_v) | set(gains)):
        c = gains[v].comparison if v in gains else None
        ours = _diff_ci(c) if c and c.result else ("not run" if v not in gains else f"n/a ({gains[v].note})")
        p = _p(c.result.p_value) if c and c.result else "n/a"
        rows.append([str(v), ours, p, f"{paper_v[v]:+.2f}" if v in paper_v else "n/a"])
    lines += _table(["VIter", "ours: paired gain [95% CI]", "p", "paper"], rows) if rows else [
        "No RL runs and no paper ablation."]
    return lines + [""]


def _diagnostic_lines(df, points, task: str) -> list[str]:
    lines = ["### Diagnostics on the rule-OOD split", "", DIAGNOSTICS_TEXT, ""]
    diag_cols = [(k, t) for k, t in DIAGNOSTICS if k in df.columns and df.loc[df.task == task, k].notna().any()]
    rows = [[p.run, str(p.step), f"{p.gflops:.4g}", _cell(p)] + [_diagnostic(k, p.extra.get(k)) for k, _ in diag_cols]
            for p in sorted((p for p in points.values() if p.task == task and p.split == SPLIT_OOD),
                            key=lambda p: (run_order(p.run), p.step))]
    mtitle = METRIC_TITLE.get(metric_of(task), metric_of(task))
    lines += _table(["run", "step", "GFLOPs", f"{mtitle} [95% CI]"] + [t for _, t in diag_cols], rows) if rows else [
        "No rule-OOD evaluations."]
    return lines + [""]


def _hands_line(paired: PairedEvaluations, task: str) -> str:
    parts = []
    for split in (SPLIT_ID, SPLIT_OOD):
        counted = paired.hands(task, split)
        if counted:
            parts.append(f"{split} {counted[0]} episodes over {counted[1]} distinct hands")
    return ("Evaluation rows: " + "; ".join(parts) + ".") if parts else "Evaluation rows: no episode tables found."


INTRO_TEXT = (
    "This page states the claims of Chu et al. (2025), *SFT Memorizes, RL Generalizes* "
    "(arXiv 2501.17161), one by one, with this run's numbers beside the paper's."
)
EQUAL_COMPUTE_TEXT = (
    "**Equal compute.** Per task, the budget is the smallest of the largest training compute reached by "
    "continued SFT and by each RL-from-init run; each run contributes its checkpoint whose compute is "
    f"closest to that budget. RL claims use `rl-v{MAIN_VITER}` (the paper's VIter) when present, "
    "else the largest VIter. The shared start point is `init`; RL without SFT starts at the base model."
)
DIAGNOSTICS_TEXT = (
    "Format error rate: share of attempts without a parseable answer. Rule memorisation: share of "
    "OOD answers that apply the training rule (GP: a face card counted as 10; V-IRL: absolute turns "
    "where relative ones are asked). These move long before success does."
)
FILES_TEXT = (
    "- `summary.csv`: one row per (task, seed, run, step, split) with compute, every metric and the "
    "Wilson interval of the success rate.\n"
    "- `claims.csv`: one row per claim and metric: difference, 95% interval, p-value, hands, episodes, verdict."
)
HOW_TO_READ = (
    "**How to read the verdicts.** Every checkpoint is evaluated on the same rows of each split with the same "
    "sampling seed, so a claim compares two checkpoints episode by episode. Its difference d (checkpoint A minus "
    f"checkpoint B, in percentage points) comes with a {100 * CONFIDENCE:.0f}% interval from a paired cluster "
    "bootstrap over hands (GeneralPoints: the multiset of card ranks, since a split can repeat a hand; other tasks: "
    "the row), every seed's episode pairs pooled into their hand, and a two-sided p-value: exact McNemar on the "
    "discordant episodes when no hand repeats, else a paired permutation test over hands. *held*: the interval "
    "excludes 0 in the paper's direction and p < 0.05. *did not hold*: the interval excludes 0 in the opposite "
    "direction and p < 0.05. *inconclusive*: otherwise (with few discordant hands the bootstrap interval can "
    "exclude 0 while the exact test does not, so both must agree). *not tested*: the study lacks the evaluations "
    "or their episode tables. Single rates carry Wilson 95% intervals. `claims.csv` holds every comparison."
)


def summary_markdown(df, points, paired: PairedEvaluations, config: dict[str, Any], paper: dict[str, Any],
                     tasks: list[str], figures: dict[str, Path], results: dict[str, tuple],
                     titles: dict[str, str]) -> str:
    lines = [f"# Study `{config.get('study', '?')}`: does SFT memorise and RL generalise?", ""]
    lines += [INTRO_TEXT, ""]
    note = scale_note(df, config) if not df.empty else None
    lines += [note, ""] if note else []
    lines += [
        HOW_TO_READ, "", EQUAL_COMPUTE_TEXT, "",
    ]
    if df.empty:
        lines += ["**No evaluations were given to the report**: nothing to compare.", ""]
    seeds = sorted(df["seed"].unique().tolist()) if not df.empty else []
    lines += [f"Seeds: {', '.join(map(str, seeds)) or 'none'}; evaluations: {len(df)}.", ""]

    for task in [t for t in tasks if not df.empty and t in set(df["task"])]:
        claims, sel, ctx = results[task]
        b: ClaimBuilder = ctx["builder"]
        lines += [f"## {titles.get(task, task)}: `{task}`", "",
                  f"Score: {METRIC_TITLE.get(b.metric, b.metric)} (%). {_hands_line(paired, task)}", ""]
        if sel.steps:
            picked = ", ".join(
                f"{run_label(r)} step {s} ({points[(task, r, s, SPLIT_OOD)].gflops:.4g} GFLOPs)"
                if (task, r, s, SPLIT_OOD) in points else f"{run_label(r)} step {s}"
                for r, s in sorted(sel.steps.items(), key=lambda kv: run_order(kv[0]))
            )
            lines += [f"Equal compute: {sel.how}. Compared checkpoints: {picked}.", ""]
        else:
            lines += ["Equal compute: no SFT or RL checkpoints were evaluated.", ""]
        lines += ["### Claims", ""] + claim_lines(claims)
        lines += _paper_lines(b, ctx["rule"]) + _ablation_lines(ctx) + _diagnostic_lines(df, points, task)

    lines += ["## Files", ""]
    lines += [FILES_TEXT]
    lines += [f"- `figures/{p.name}`" for p in figures.values()]
    lines += ["", f"Paper numbers: {paper.get('source', 'Chu et al. 2025')}.", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------- entry point
def load_paper(paper_file: str | Path | None) -> dict[str, Any]:
    """The paper's numbers: the given YAML, else config/paper_results.yaml of the project, else built-in."""
    import yaml

    candidates = [Path(paper_file)] if paper_file else [Path(__file__).resolve().parents[2] / "config" / "paper_results.yaml"]
    for path in candidates:
        if path.exists():
            return yaml.safe_load(path.read_text()) or {}
    if paper_file:
        raise FileNotFoundError(f"paper results file not found: {paper_file}")
    return PAPER_DEFAULT


def diagnostics_of(df, task: str) -> list[str]:
    """The rule-OOD diagnostics the task's evaluations record (GP: rule memorisation, number accuracy)."""
    if df.empty:
        return []
    ood = df[(df["task"] == task) & (df["split"] == SPLIT_OOD)]
    return [m for m in DIAGNOSTIC_DIRECTION if m in ood.columns and ood[m].notna().any()]


def build_report(config: dict[str, Any], eval_files: list[str], out_dir: Path, paper_file: str | Path | None = None,
                 log_to_mlflow: bool = True) -> dict[str, Path]:
    """Write summary.csv, claims.csv, the figures and summary.md into `out_dir`; log them to the study's MLflow run."""
    out_dir = Path(out_dir)
    fig_dir = out_dir / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    paper = load_paper(paper_file)
    df = load_evals(eval_files)
    tasks = list(dict.fromkeys(list(config.get("tasks", [])) + (sorted(df["task"].unique()) if not df.empty else [])))
    points = seed_points(df)
    paired = PairedEvaluations(df)
    all_tasks = _tasks_for(points, tasks)
    titles = {t: task_title(t, config) for t in all_tasks}
    results = {t: evaluate_claims(points, paired, t, paper, diagnostics_of(df, t)) for t in all_tasks}
    contexts = {t: r[2] for t, r in results.items()}

    outputs: dict[str, Path] = {}
    outputs["summary_csv"] = out_dir / "summary.csv"
    df.drop(columns=["eval_file"], errors="ignore").to_csv(outputs["summary_csv"], index=False, float_format="%.6g")
    rows = [row for t in tasks if not df.empty and t in set(df["task"]) for row in claims_rows(t, results[t][0])]
    outputs["claims_csv"] = write_claims_csv(rows, out_dir / "claims.csv")
    figures = {
        "id_ood_vs_compute": figure_id_ood_vs_compute(points, tasks, titles, fig_dir / "id_ood_vs_compute.png"),
        "ood_change": figure_ood_change(points, contexts, tasks, paper, titles, fig_dir / "ood_change.png"),
        "viter_ablation": figure_viter_ablation(points, contexts, tasks, paper, titles, fig_dir / "viter_ablation.png"),
        "rl_nosft": figure_rl_nosft(points, df, tasks, titles, fig_dir / "rl_nosft.png"),
    }
    outputs.update(figures)
    outputs["summary_md"] = out_dir / "summary.md"
    outputs["summary_md"].write_text(
        summary_markdown(df, points, paired, config, paper, tasks, figures, results, titles))
    log.info("report: %d evaluations -> %s", len(df), ", ".join(str(p) for p in outputs.values()))
    if log_to_mlflow:
        _log_to_study(config, outputs)
    return outputs


def _log_to_study(config: dict[str, Any], outputs: dict[str, Path]) -> None:
    import mlflow

    from .tracking import ensure_study_run, retry

    run_id = ensure_study_run(config)  # also points mlflow at the study's tracking URI
    for path in outputs.values():
        retry(mlflow.log_artifact, str(path), artifact_path="report/figures" if path.suffix == ".png" else "report",
              run_id=run_id)
