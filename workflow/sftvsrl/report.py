"""Aggregate the evaluations of a study into a table, four figures and a plain-words summary.

Inputs are the eval JSON files written by `sftvsrl.evaluate` (one per task x seed x run x
checkpoint x split). Outputs, in `out_dir` (the study's `results/`):

- `summary.csv`   one row per (task, seed, run, step, split): compute and every metric.
- `figures/id_ood_vs_compute.png`  ID and OOD score vs training compute (paper Figure 5).
- `figures/ood_change.png`         OOD change from init at equal compute, beside the paper (Figure 6).
- `figures/viter_ablation.png`     OOD gain vs VIter at equal compute, beside the paper (Figure 10).
- `figures/rl_nosft.png`           RL from the base model vs RL from init (Figure 9).
- `summary.md`    the study's claims one by one, with our numbers, the paper's, and a verdict.

Conventions, stated once:
- Score: GP-L episode success rate; V-IRL-L per-step accuracy (the paper's rule-variant
  metric). Error bars: the binomial standard error of one seed's evaluation (the task's own
  SE when it reports one); with several seeds, the mean across seeds and the across-seed
  standard error, floored at the evaluation noise of the mean, sqrt(mean(se_i^2) / k), since
  two or three seeds can agree by chance.
- Compute: the cumulative training FLOPs of the checkpoint (its `compute.json`, from the
  base model), in GFLOPs. SFT and RL curves both start from the shared init point;
  RL without SFT starts from the base model (0 FLOPs).
- Equal compute: per task, the budget is the smallest of the largest compute reached by
  the continued-SFT run and each RL-from-init run; each run contributes its checkpoint whose
  compute is closest to that budget. When no checkpoint records compute, the last
  checkpoints are compared instead. The chosen checkpoints are named in summary.md.
- The RL run for the claims is `rl-v5` (the paper's VIter) when present, else the largest VIter.
- Verdict: a claim is a signed difference d with standard error s = sqrt(s1^2 + s2^2).
  "held" if d has the paper's sign and |d| >= s; "did not hold" if d has the opposite sign
  and |d| >= s; otherwise "inconclusive (within 1 SE)".
"""
from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

log = logging.getLogger(__name__)

SPLIT_ID, SPLIT_OOD = "eval_id", "eval_ood_rule"
SPLIT_TITLE = {SPLIT_ID: "in-distribution (ID)", SPLIT_OOD: "rule OOD"}
PRIMARY_METRIC = {"gp_l": "success_rate", "virl_l": "per_step_accuracy"}
METRIC_TITLE = {"success_rate": "episode success", "per_step_accuracy": "per-step accuracy"}
TASK_TITLE = {"gp_l": "GeneralPoints, text (GP-L)", "virl_l": "V-IRL navigation, text (V-IRL-L)"}
MAIN_VITER = 5  # the paper's default number of verification iterations
NEAR_ZERO = 0.01  # "about 0%" for RL without SFT (the paper's maximum is 0.4%)
TOY_PARAMS = 1e9  # below this many parameters a run is a toy run, not a test of the claims
TOY_EPISODES = 100

HELD, NOT_HELD, INCONCLUSIVE, NOT_TESTED = "held", "did not hold", "inconclusive (within 1 SE)", "not tested"

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
    "gflops", "n_params", "success_rate", "success_se",
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


# --------------------------------------------------------------------------- statistics
def binomial_se(p: float, n: float) -> float:
    """Standard error of a proportion p from n trials: sqrt(p (1 - p) / n)."""
    if p is None or n is None or n <= 0 or _isnan(p):
        return float("nan")
    return math.sqrt(max(p * (1.0 - p), 0.0) / n)


def combined_se(*ses: float) -> float:
    """sqrt(se1^2 + se2^2 + ...): the SE of a difference of independent estimates."""
    return math.sqrt(sum(float(s) ** 2 for s in ses))


def verdict(diff: float, se: float, paper_sign: int) -> str:
    """held / did not hold / inconclusive, by the 1-SE rule of the module docstring."""
    if diff is None or se is None or _isnan(diff) or _isnan(se):
        return NOT_TESTED
    if diff == 0 or abs(diff) < se:
        return INCONCLUSIVE
    return HELD if math.copysign(1, diff) == paper_sign else NOT_HELD


def n_se(diff: float, se: float) -> float:
    """|diff| in units of se (inf when se is 0 and diff is not)."""
    if se and se > 0:
        return abs(diff) / se
    return 0.0 if diff == 0 else math.inf


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


# --------------------------------------------------------------------------- loading
def load_evals(eval_files: Iterable[str | Path]):
    """One row per eval JSON: identifiers, compute (GFLOPs) and every numeric metric."""
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
        if "success_se" not in rec or _isnan(rec["success_se"]):
            rec["success_se"] = rec.get("success_rate_se", binomial_se(rec.get("success_rate", float("nan")), rec["episodes"]))
        if "per_step_accuracy" in rec and _isnan(rec.get("per_step_accuracy_se", float("nan"))):
            rec["per_step_accuracy_se"] = binomial_se(rec["per_step_accuracy"], rec.get("attempts") or rec["episodes"])
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
    ordered = [c for c in PREFERRED_METRICS if c in metric_cols] + sorted(c for c in metric_cols if c not in PREFERRED_METRICS)
    return df[[c for c in LEAD_COLUMNS if c in df.columns] + ordered + ["eval_file"]]


def se_column(df, metric: str) -> str | None:
    for name in (f"{metric}_se", "success_se" if metric == "success_rate" else None):
        if name and name in df.columns:
            return name
    return None


@dataclass
class Point:
    """A run's checkpoint on one split, averaged over seeds."""

    task: str
    run: str
    step: int
    split: str
    value: float
    se: float
    gflops: float
    n_seeds: int
    episodes: int
    extra: dict[str, float] = field(default_factory=dict)  # seed means of the diagnostics


def seed_points(df, metric_of_task: dict[str, str] | None = None) -> dict[tuple[str, str, int, str], Point]:
    """(task, run, step, split) -> Point with the seed mean and its standard error."""
    metric_of_task = metric_of_task or PRIMARY_METRIC
    points: dict[tuple[str, str, int, str], Point] = {}
    if df.empty:
        return points
    for (task, run, step, split), g in df.groupby(["task", "run", "step", "split"], sort=False):
        metric = metric_of_task.get(task, "success_rate")
        if metric not in g.columns:
            metric = "success_rate"
        values = g[metric].astype(float)
        ok = values.notna()
        if not ok.any():
            continue
        values = values[ok]
        k = len(values)
        col = se_column(g, metric)
        seed_ses = [float(x) for x in g.loc[ok, col]] if col else [float("nan")] * k
        seed_ses = [
            binomial_se(float(v), float(n or 0)) if _isnan(s) else s
            for s, v, n in zip(seed_ses, values, g.loc[ok, "episodes"])
        ]
        # the evaluation noise of the mean: sqrt(mean(se_i^2) / k)
        within = math.sqrt(sum(s * s for s in seed_ses) / k / k) if not any(map(_isnan, seed_ses)) else float("nan")
        if k >= 2:
            across = float(values.std(ddof=1) / math.sqrt(k))
            # a few seeds can agree by chance: never claim less noise than one evaluation's
            se = max(across, within) if not _isnan(within) else across
        else:
            se = seed_ses[0]
        extra = {}
        for name, _ in DIAGNOSTICS:
            if name in g.columns and g[name].notna().any():
                extra[name] = float(g[name].mean())
        points[(task, run, int(step), split)] = Point(
            task=task, run=run, step=int(step), split=split, value=float(values.mean()), se=se,
            gflops=float(g["gflops"].mean()), n_seeds=k, episodes=int(g["episodes"].fillna(0).sum()), extra=extra,
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


# --------------------------------------------------------------------------- claims
@dataclass
class Claim:
    key: str
    statement: str
    paper_sign: int
    diff: float = float("nan")
    se: float = float("nan")
    ours: str = ""
    paper: str = ""
    result: str = NOT_TESTED
    note: str = ""

    @property
    def n_se(self) -> float:
        return n_se(self.diff, self.se)


def _pct(x: float | None, digits: int = 1) -> str:
    return "n/a" if x is None or _isnan(x) else f"{100 * x:.{digits}f}%"


def _pp(x: float, digits: int = 1) -> str:
    return "n/a" if _isnan(x) else f"{100 * x:+.{digits}f}"


def _where(p: Point) -> str:
    return f"{run_label(p.run)} step {p.step}" if p.step > 0 else p.run


def _diff_claim(claim: Claim, a: Point | None, b: Point | None, missing: str) -> Claim:
    """claim.diff = a - b."""
    if a is None or b is None:
        claim.note = missing
        return claim
    claim.diff = a.value - b.value
    claim.se = combined_se(a.se, b.se)
    claim.result = verdict(claim.diff, claim.se, claim.paper_sign)
    claim.ours = (
        f"{_where(b)} {_pct(b.value)} ± {_pct(b.se)} -> {_where(a)} ({a.gflops:.4g} GFLOPs) "
        f"{_pct(a.value)} ± {_pct(a.se)}"
    )
    return claim


def evaluate_claims(points, task: str, paper: dict[str, Any]) -> tuple[list[Claim], Selection, dict[str, Any]]:
    """The six claims of the study for one task, with verdicts; also the equal-compute selection."""
    rule = (paper.get("rule_ood") or {}).get(task)
    ablation = (paper.get("verification_ablation") or {}).get(task)
    nosft_paper = (paper.get("rl_without_sft") or {}).get(task)
    metric = METRIC_TITLE.get(PRIMARY_METRIC.get(task, "success_rate"))
    rls = rl_runs(points, task)
    main = main_rl_run(points, task)
    sel = equal_compute_steps(points, task, ["sft"] + rls)

    def at(run: str | None, split: str) -> Point | None:
        if run in ("init", "base"):
            return points.get((task, run, 0, split))
        if run is None or run not in sel.steps:
            return None
        return points.get((task, run, sel.steps[run], split))

    init_id, init_ood = at("init", SPLIT_ID), at("init", SPLIT_OOD)
    sft_id, sft_ood = at("sft", SPLIT_ID), at("sft", SPLIT_OOD)
    rl_ood = at(main, SPLIT_OOD)
    paper_rule = (lambda a, b: f"{rule[a]:.1f}% -> {rule[b]:.1f}% ({rule[b] - rule[a]:+.1f} points)") if rule else None
    claims = []

    c = Claim("i", f"SFT raises ID {metric} over init", +1, paper="shown in the paper's Figure 5 (ID curves)")
    claims.append(_diff_claim(c, sft_id, init_id, "needs init and SFT evaluations on eval_id"))
    c = Claim("ii", f"SFT lowers OOD {metric} vs init", -1,
              paper=f"init -> SFT: {paper_rule('init', 'sft')}" if rule else "no paper number for this task")
    claims.append(_diff_claim(c, sft_ood, init_ood, "needs init and SFT evaluations on eval_ood_rule"))
    c = Claim("iii", f"RL raises OOD {metric} vs init", +1,
              paper=f"init -> RL: {paper_rule('init', 'rl')}" if rule else "no paper number for this task")
    claims.append(_diff_claim(c, rl_ood, init_ood, "needs init and RL evaluations on eval_ood_rule"))
    c = Claim("iv", f"RL beats SFT on OOD {metric} at equal compute", +1,
              paper=f"RL {rule['rl']:.1f}% vs SFT {rule['sft']:.1f}% ({rule['rl'] - rule['sft']:+.1f} points)"
              if rule else "no paper number for this task")
    claims.append(_diff_claim(c, rl_ood, sft_ood, "needs SFT and RL evaluations on eval_ood_rule"))

    # (v) more verification iterations -> more OOD gain
    gains = {}
    for run in rls:
        p = at(run, SPLIT_OOD)
        if p is not None and init_ood is not None:
            gains[_viter_of(run)] = (p.value - init_ood.value, p.se, p)
    c = Claim("v", "more verification iterations (VIter) give more OOD gain", +1,
              paper=("OOD gain " + ", ".join(f"VIter {k.split('_')[1]}: {v:+.2f}" for k, v in ablation.items()) + " points")
              if ablation else "no paper ablation for this task")
    if len(gains) >= 2:
        lo, hi = min(gains), max(gains)
        c.diff = gains[hi][0] - gains[lo][0]
        c.se = combined_se(gains[hi][1], gains[lo][1])
        c.result = verdict(c.diff, c.se, +1)
        c.ours = "OOD gain over init: " + ", ".join(
            f"VIter {v}: {_pp(gains[v][0])} ± {100 * gains[v][1]:.1f} points" for v in sorted(gains)
        ) + f" (difference compared: VIter {hi} - VIter {lo})"
    else:
        c.note = "needs OOD evaluations of at least two RL runs with different VIter (and of init)"
    claims.append(c)

    # (vi) RL without SFT stays near 0%: the best rl-nosft checkpoint vs "near zero"
    c = Claim("vi", f"RL without SFT stays near 0% {metric} (no parseable answers)", -1,
              paper=(f"at most {nosft_paper['episode_success_max']:.1f}% episode success throughout (GP-L)"
                     if nosft_paper else "about 0% throughout (shown for GP-L)"))
    nosft = [p for p in points.values() if p.task == task and p.run == "rl-nosft" and p.step > 0]
    if nosft:
        best = max(nosft, key=lambda p: p.value)
        c.diff = best.value - NEAR_ZERO
        c.se = best.se
        c.result = verdict(c.diff, c.se, -1)
        fmt = [p.extra.get("format_error_rate") for p in nosft if "format_error_rate" in p.extra]
        c.ours = (
            f"best checkpoint ({_where(best)}, {SPLIT_TITLE.get(best.split, best.split)}): {_pct(best.value)} ± "
            f"{_pct(best.se)}, compared with {_pct(NEAR_ZERO, 0)}"
            + (f"; format error rate {_pct(min(fmt))}-{_pct(max(fmt))} across its checkpoints" if fmt else "")
        )
    else:
        c.note = "needs evaluations of the rl-nosft run"
    claims.append(c)
    context = {"main_rl": main, "gains": gains, "rule": rule, "ablation": ablation, "init_ood": init_ood}
    return claims, sel, context


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


def _se(point) -> float:
    """A point's standard error, 0 where it is unknown (error bars need a number)."""
    return 0.0 if _isnan(point.se) else point.se


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
    x = [p.gflops for p in pts]
    y = [100 * p.value for p in pts]
    e = [100 * _se(p) for p in pts]
    ax.errorbar(x, y, yerr=e, fmt=style, color=colour, label=label, capsize=3, ms=4, lw=1.5)


def figure_id_ood_vs_compute(points, tasks: list[str], path: Path) -> Path:
    plt = _plt()
    tasks = _tasks_for(points, tasks)
    fig, axes = plt.subplots(len(tasks), 2, figsize=(11, 4.2 * len(tasks)), squeeze=False)
    for row, task in enumerate(tasks):
        metric = METRIC_TITLE.get(PRIMARY_METRIC.get(task, "success_rate"))
        runs = ["sft"] + rl_runs(points, task)
        for col, split in enumerate((SPLIT_ID, SPLIT_OOD)):
            ax = axes[row][col]
            ax.set_title(f"{TASK_TITLE.get(task, task)}: {SPLIT_TITLE[split]}", fontsize=10)
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
                ax.errorbar([init.gflops], [100 * init.value], yerr=[100 * _se(init)],
                            fmt="*", color="black", ms=12, label="init (shared start)", zorder=5)
                drawn = True
            base = points.get((task, "base", 0, split))
            if base is not None:
                ax.errorbar([base.gflops], [100 * base.value], yerr=[100 * _se(base)],
                            fmt="X", color="grey", ms=8, label="base model", zorder=5)
                drawn = True
            if not drawn:
                _empty(ax, f"no evaluations of {task} on {split}")
                continue
            ax.set_xlabel("training compute (GFLOPs, cumulative from the base model)")
            ax.set_ylabel(f"{metric} (%)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7, loc="upper left")
            _note(ax, missing)
    return _save(plt, fig, "ID and OOD score vs training compute: SFT and RL from the shared init (cf. paper Figure 5)", path)


def figure_ood_change(points, tasks: list[str], paper: dict[str, Any], path: Path) -> Path:
    plt = _plt()
    tasks = _tasks_for(points, tasks)
    fig, axes = plt.subplots(1, len(tasks), figsize=(max(7, 6.5 * len(tasks)), 4.8), squeeze=False)
    for i, task in enumerate(tasks):
        ax = axes[0][i]
        metric = METRIC_TITLE.get(PRIMARY_METRIC.get(task, "success_rate"))
        runs = ["sft"] + rl_runs(points, task)
        sel = equal_compute_steps(points, task, runs)
        init = points.get((task, "init", 0, SPLIT_OOD))
        labels, values, errors, colours, hatches, notes = [], [], [], [], [], []
        for run in runs:
            p = points.get((task, run, sel.steps.get(run, -1), SPLIT_OOD))
            if p is None or init is None:
                notes.append(f"no OOD data for {run_label(run)}" + ("" if init else " (no init evaluation)"))
                continue
            labels.append(f"{run_label(run)}\nours, step {p.step}")
            values.append(100 * (p.value - init.value))
            errors.append(100 * combined_se(_se(p), _se(init)))
            colours.append(_colour(run))
            hatches.append("")
        if not rl_runs(points, task):
            notes.append("no RL-from-init run evaluated")
        rule = (paper.get("rule_ood") or {}).get(task)
        if rule:
            for name, run in (("SFT", "sft"), ("RL", f"rl-v{MAIN_VITER}")):
                labels.append(f"{name}\npaper")
                values.append(rule[name.lower()] - rule["init"])
                errors.append(0.0)
                colours.append(_colour(run))
                hatches.append("//")
        else:
            notes.append("paper: no rule-OOD numbers for this task")
        ax.set_title(f"{TASK_TITLE.get(task, task)}: rule-OOD change from init", fontsize=10)
        if not labels:
            _empty(ax, "no OOD evaluations of init, SFT or RL\nand no paper numbers for this task")
            continue
        x = list(range(len(labels)))
        bars = ax.bar(x, values, yerr=errors, color=colours, capsize=4, edgecolor="black", linewidth=0.6)
        for bar, hatch, v, e in zip(bars, hatches, values, errors):
            bar.set_hatch(hatch)
            if hatch:
                bar.set_alpha(0.6)
            end = v + e if v >= 0 else v - e
            ax.annotate(f"{v:+.1f}", (bar.get_x() + bar.get_width() / 2, end), ha="center",
                        va="bottom" if v >= 0 else "top", fontsize=7, xytext=(0, 2 if v >= 0 else -2),
                        textcoords="offset points")
        ax.axhline(0, color="black", lw=0.8)
        ax.set_xticks(x)
        ax.set_xticklabels(labels, fontsize=7)
        ax.set_ylabel(f"OOD {metric}: change from init (points)")
        ax.grid(axis="y", alpha=0.3)
        budget = f"equal compute: {sel.how}" if sel.steps else "no checkpoints to compare"
        notes.insert(0, budget)
        if init is not None:
            notes.insert(1, f"our init: {_pct(init.value)}" + (f"; paper init: {rule['init']:.1f}%" if rule else ""))
        ax.margins(y=0.15)
        _note(ax, notes)
    return _save(plt, fig, "OOD change from init at equal compute, ours beside the paper (cf. paper Figure 6)", path)


def figure_viter_ablation(points, tasks: list[str], paper: dict[str, Any], path: Path) -> Path:
    plt = _plt()
    tasks = _tasks_for(points, tasks)
    fig, axes = plt.subplots(1, len(tasks), figsize=(max(6.5, 6 * len(tasks)), 4.5), squeeze=False)
    for i, task in enumerate(tasks):
        ax = axes[0][i]
        metric = METRIC_TITLE.get(PRIMARY_METRIC.get(task, "success_rate"))
        ax.set_title(f"{TASK_TITLE.get(task, task)}: OOD gain vs VIter", fontsize=10)
        runs = ["sft"] + rl_runs(points, task)
        sel = equal_compute_steps(points, task, runs)
        init = points.get((task, "init", 0, SPLIT_OOD))
        notes, drawn = [], False
        xs, ys, es = [], [], []
        for run in rl_runs(points, task):
            p = points.get((task, run, sel.steps.get(run, -1), SPLIT_OOD))
            if p is None or init is None:
                continue
            xs.append(_viter_of(run))
            ys.append(100 * (p.value - init.value))
            es.append(100 * combined_se(_se(p), _se(init)))
        if xs:
            ax.errorbar(xs, ys, yerr=es, fmt="-o", color="#1f78b4", capsize=4, label="ours (equal compute)")
            drawn = True
            if len(xs) < 2:
                notes.append("ours: a single VIter value, no trend to show")
        else:
            notes.append("ours: no OOD evaluations of RL runs and init")
        ablation = (paper.get("verification_ablation") or {}).get(task)
        if ablation:
            pv = sorted((int(k.split("_")[1]), v) for k, v in ablation.items())
            ax.plot([a for a, _ in pv], [b for _, b in pv], "--s", color="#888888", label="paper (GP-L, Figure 10)")
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
        notes.insert(0, f"equal compute: {sel.how}" if sel.steps else "no checkpoints to compare")
        _note(ax, notes)
    return _save(plt, fig, "Verification iterations: OOD gain at equal compute (cf. paper Figure 10)", path)


def figure_rl_nosft(points, df, tasks: list[str], path: Path) -> Path:
    plt = _plt()
    tasks = _tasks_for(points, tasks)
    fig, axes = plt.subplots(len(tasks), 3, figsize=(15, 4.2 * len(tasks)), squeeze=False)
    for row, task in enumerate(tasks):
        metric = METRIC_TITLE.get(PRIMARY_METRIC.get(task, "success_rate"))
        main = main_rl_run(points, task)
        runs = ["rl-nosft"] + ([main] if main else [])
        for col, split in enumerate((SPLIT_ID, SPLIT_OOD)):
            ax = axes[row][col]
            ax.set_title(f"{TASK_TITLE.get(task, task)}: {SPLIT_TITLE[split]}", fontsize=10)
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
            ax.set_ylabel(f"{metric} (%)")
            ax.set_ylim(bottom=-2)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7, loc="upper left")
            _note(ax, notes)
        ax = axes[row][2]
        ax.set_title(f"{TASK_TITLE.get(task, task)}: format errors (rule OOD)", fontsize=10)
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


def _fmt_se(x: float) -> str:
    return "n/a" if _isnan(x) else f"{100 * x:.1f}"


def _toy_caveat(df, config: dict[str, Any]) -> str | None:
    n_params = df["n_params"].dropna().max() if "n_params" in df.columns and df["n_params"].notna().any() else None
    episodes = int(df["episodes"].min()) if "episodes" in df.columns and df["episodes"].notna().any() else None
    small_model = n_params is not None and 0 < float(n_params) < TOY_PARAMS
    few = episodes is not None and episodes < TOY_EPISODES
    if not (small_model or few):
        return None
    parts = []
    if small_model:
        parts.append(f"a {float(n_params) / 1e6:.0f}M-parameter model (the paper: 11B)")
    if few:
        parts.append(f"{episodes} episodes per split (the paper: 234 for GP)")
    se5 = binomial_se(0.05, episodes) if episodes else float("nan")
    return (
        f"**Caveat: toy run.** This study (`{config.get('study', '?')}`) used " + " and ".join(parts) + ". "
        f"It tests the machinery, not the paper's claims: at 5% success over {episodes or '?'} episodes the "
        f"standard error alone is {_fmt_se(se5)} points, so most verdicts below are expected to be inconclusive "
        "or to follow noise. Use the GPU configs (config/gpu.yaml, config/paper.yaml) to test the claims."
    )


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


def summary_markdown(df, points, config: dict[str, Any], paper: dict[str, Any], tasks: list[str],
                     figures: dict[str, Path]) -> str:
    lines = [f"# Study `{config.get('study', '?')}`: does SFT memorise and RL generalise?", ""]
    lines += [
        "This page states the claims of Chu et al. (2025), *SFT Memorizes, RL Generalizes* "
        "(arXiv 2501.17161), one by one, with this run's numbers beside the paper's.", "",
    ]
    caveat = _toy_caveat(df, config) if not df.empty else None
    if caveat:
        lines += [caveat, ""]
    lines += [
        "**How to read the verdicts.** Each claim is a signed difference d between two evaluations, "
        "with standard error s = sqrt(s1² + s2²) (binomial SE of each evaluation; with several seeds, "
        "the across-seed SE of the mean, never below the binomial SE of the mean). *held*: d has the paper's sign and |d| ≥ 1 s. *did not hold*: "
        "d has the opposite sign and |d| ≥ 1 s. *inconclusive (within 1 SE)*: |d| < s. *not tested*: the "
        "study has no evaluations for it.",
        "",
        "**Equal compute.** Per task, the budget is the smallest of the largest training compute reached by "
        "continued SFT and by each RL-from-init run; each run contributes its checkpoint whose compute is "
        f"closest to that budget. RL claims use `rl-v{MAIN_VITER}` (the paper's VIter) when present, "
        "else the largest VIter. The shared start point is `init`; RL without SFT starts at the base model.",
        "",
    ]
    if df.empty:
        lines += ["**No evaluations were given to the report**: nothing to compare.", ""]
    seeds = sorted(df["seed"].unique().tolist()) if not df.empty else []
    lines += [f"Seeds: {', '.join(map(str, seeds)) or 'none'}; evaluations: {len(df)}.", ""]

    for task in [t for t in tasks if not df.empty and t in set(df["task"])]:
        metric = PRIMARY_METRIC.get(task, "success_rate")
        mtitle = METRIC_TITLE.get(metric, metric)
        claims, sel, ctx = evaluate_claims(points, task, paper)
        lines += [f"## {TASK_TITLE.get(task, task)}: `{task}`", "", f"Score: {mtitle} (%).", ""]
        if sel.steps:
            picked = ", ".join(
                f"{run_label(r)} step {s} ({points[(task, r, s, SPLIT_OOD)].gflops:.4g} GFLOPs)"
                if (task, r, s, SPLIT_OOD) in points else f"{run_label(r)} step {s}"
                for r, s in sorted(sel.steps.items(), key=lambda kv: run_order(kv[0]))
            )
            lines += [f"Equal compute: {sel.how}. Compared checkpoints: {picked}.", ""]
        else:
            lines += ["Equal compute: no SFT or RL checkpoints were evaluated.", ""]

        lines += ["### Claims", ""]
        rows = []
        for c in claims:
            rows.append([
                f"({c.key})", c.statement,
                "n/a" if _isnan(c.diff) else f"{_pp(c.diff)} ± {_fmt_se(c.se)}",
                "n/a" if _isnan(c.diff) else ("∞" if math.isinf(c.n_se) else f"{c.n_se:.1f}"),
                f"**{c.result}**",
            ])
        lines += _table(["#", "paper's finding", "ours: difference (points) ± SE", "SEs", "verdict"], rows)
        lines += [""]
        for c in claims:
            text = f"- **({c.key}) {c.statement}.** Paper: {c.paper}. "
            if c.result == NOT_TESTED:
                text += f"Ours: not tested ({c.note})."
            else:
                sign = "+" if c.paper_sign > 0 else "-"
                text += (
                    f"Ours: {c.ours}; difference {_pp(c.diff)} ± {_fmt_se(c.se)} points "
                    f"({'∞' if math.isinf(c.n_se) else f'{c.n_se:.1f}'} SE; the paper's sign is {sign}). "
                    f"The paper's finding **{c.result}** in this run."
                )
            lines.append(text)
        lines += [""]

        # Paper side by side (rule OOD)
        rule = ctx["rule"]
        lines += ["### Beside the paper: rule OOD (Figure 6)", ""]
        main = ctx["main_rl"]

        def ours(run: str | None, split: str) -> Point | None:
            if run in ("init", "base"):
                return points.get((task, run, 0, split))
            if run is None or run not in sel.steps:
                return None
            return points.get((task, run, sel.steps[run], split))

        def cell(p: Point | None) -> str:
            return "n/a" if p is None else f"{100 * p.value:.1f} ± {_fmt_se(p.se)}"

        def delta(a: Point | None, b: Point | None) -> str:
            return "n/a" if a is None or b is None else f"{_pp(a.value - b.value)}"

        rows = []
        if rule:
            rows.append(["paper (11B, 234 episodes)", "OOD", f"{rule['init']:.1f}", f"{rule['sft']:.1f}",
                         f"{rule['rl']:.1f}", f"{rule['sft'] - rule['init']:+.1f}", f"{rule['rl'] - rule['init']:+.1f}"])
        for split in (SPLIT_OOD, SPLIT_ID):
            i, s, r = ours("init", split), ours("sft", split), ours(main, split)
            rows.append([f"ours ({run_label(main) if main else 'no RL'})", "OOD" if split == SPLIT_OOD else "ID",
                         cell(i), cell(s), cell(r), delta(s, i), delta(r, i)])
        lines += _table(["", "split", "init", "SFT", "RL", "SFT - init", "RL - init"], rows)
        if not rule:
            lines += ["", f"The paper reports no rule-OOD numbers for `{task}`."]
        lines += [""]

        # Verification ablation
        lines += ["### Verification iterations (Figure 10): OOD gain over init at equal compute (points)", ""]
        ablation = ctx["ablation"] or {}
        paper_v = {int(k.split("_")[1]): v for k, v in ablation.items()}
        viters = sorted(set(paper_v) | set(ctx["gains"]))
        rows = [[str(v),
                 f"{_pp(ctx['gains'][v][0])} ± {_fmt_se(ctx['gains'][v][1])}" if v in ctx["gains"] else "not run",
                 f"{paper_v[v]:+.2f}" if v in paper_v else "n/a"] for v in viters]
        lines += _table(["VIter", "ours", "paper"], rows) if rows else ["No RL runs and no paper ablation."]
        lines += [""]

        # Diagnostics
        lines += ["### Diagnostics on the rule-OOD split", "",
                  "Format error rate: share of attempts without a parseable answer. Rule memorisation: share of "
                  "OOD answers that apply the training rule (GP: a face card counted as 10; V-IRL: absolute turns "
                  "where relative ones are asked). These move long before success does.", ""]
        diag_cols = [(k, t) for k, t in DIAGNOSTICS if k in df.columns and df.loc[df.task == task, k].notna().any()]
        rows = []
        for p in sorted((p for p in points.values() if p.task == task and p.split == SPLIT_OOD),
                        key=lambda p: (run_order(p.run), p.step)):
            rows.append([p.run, str(p.step), f"{p.gflops:.4g}", f"{100 * p.value:.1f} ± {_fmt_se(p.se)}"]
                        + [_diagnostic(k, p.extra.get(k)) for k, _ in diag_cols])
        lines += _table(["run", "step", "GFLOPs", mtitle] + [t for _, t in diag_cols], rows) if rows else [
            "No rule-OOD evaluations."]
        lines += [""]

    lines += ["## Files", ""]
    lines += ["- `summary.csv`: one row per (task, seed, run, step, split) with compute and every metric."]
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


def build_report(config: dict[str, Any], eval_files: list[str], out_dir: Path, paper_file: str | Path | None = None,
                 log_to_mlflow: bool = True) -> dict[str, Path]:
    """Write summary.csv, the figures and summary.md into `out_dir`; log them to the study's MLflow run."""
    out_dir = Path(out_dir)
    fig_dir = out_dir / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    paper = load_paper(paper_file)
    df = load_evals(eval_files)
    tasks = list(dict.fromkeys(list(config.get("tasks", [])) + (sorted(df["task"].unique()) if not df.empty else [])))
    points = seed_points(df)

    outputs: dict[str, Path] = {}
    outputs["summary_csv"] = out_dir / "summary.csv"
    df.drop(columns=["eval_file"], errors="ignore").to_csv(outputs["summary_csv"], index=False, float_format="%.6g")
    figures = {
        "id_ood_vs_compute": figure_id_ood_vs_compute(points, tasks, fig_dir / "id_ood_vs_compute.png"),
        "ood_change": figure_ood_change(points, tasks, paper, fig_dir / "ood_change.png"),
        "viter_ablation": figure_viter_ablation(points, tasks, paper, fig_dir / "viter_ablation.png"),
        "rl_nosft": figure_rl_nosft(points, df, tasks, fig_dir / "rl_nosft.png"),
    }
    outputs.update(figures)
    outputs["summary_md"] = out_dir / "summary.md"
    outputs["summary_md"].write_text(summary_markdown(df, points, config, paper, tasks, figures))
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
