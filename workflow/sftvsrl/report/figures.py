"""The report's figures (cf. the paper's Figures 5, 6, 8, 9 and 10, and score vs training step), drawn with matplotlib (Agg)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..names import BASE_RUN, INIT_RUN, NOSFT_RUN, SFT_RUN, SFT_VARIED_RUN
from .claims import ClaimBuilder, Comparison
from .results import (
    MAIN_VITER,
    RECOGNITION,
    SPLIT_ID,
    SPLIT_OOD,
    SPLIT_TITLE,
    SPLIT_VISUAL,
    Point,
    curve,
    is_vl,
    isnan,
    label_of,
    main_rl_run,
    metric_of,
    metric_title,
    pct_ci,
    rl_runs,
    run_viter,
    sft_runs,
    sft_start_runs,
    task_diagnostics,
    tasks_for,
    units_title,
)


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
    below = [0.0 if isnan(p.ci_low) else 100 * (p.value - p.ci_low) for p in pts]
    above = [0.0 if isnan(p.ci_high) else 100 * (p.ci_high - p.value) for p in pts]
    return [below, above]


def _change_bar(c: Comparison, a: Point, b: Point) -> tuple[float, float, float, str | None]:
    """(change, error below, error above) in points from a paired comparison; without episode
    tables, the difference of the two rates and no error bar, with a note saying so."""
    if c.result is None:
        return 100 * (a.value - b.value), 0.0, 0.0, f"{c.labels[0]}: no paired interval ({c.note})"
    r = c.result
    return 100 * r.diff, 100 * (r.diff - r.ci_low), 100 * (r.ci_high - r.diff), None


def _empty(ax, text: str) -> None:
    ax.text(
        0.5,
        0.5,
        text,
        transform=ax.transAxes,
        ha="center",
        va="center",
        fontsize=10,
        wrap=True,
        bbox={"boxstyle": "round", "fc": "#fde2e2", "ec": "#c0392b"},
    )
    ax.set_xticks([])
    ax.set_yticks([])


def _colour(run: str, viter: int | None = None):
    plt = _plt()
    if run == "sft":
        return "#d95f02"
    if run == SFT_VARIED_RUN:
        return "#e7298a"
    if run == NOSFT_RUN:
        return "#7570b3"
    v = viter or 1
    cmap = plt.get_cmap("Blues")
    return cmap(0.45 + 0.5 * min(v, 10) / 10)


# single checkpoints drawn beside the curves: marker, colour, size, legend
INIT_MARK = ("*", "black", 12, "init (shared start)")
BASE_MARK = ("X", "grey", 8, "base model")


def _plot_seeds(ax, pts: list[Point], colour, xs: list[float] | None = None) -> None:
    """Each seed's score as a small open marker behind the seed mean, where a point pools several seeds."""
    xs = [p.gflops for p in pts] if xs is None else xs
    seeds = [(x, v) for x, p in zip(xs, pts) if len(p.seed_values) > 1 for v in p.seed_values]
    if seeds:
        ax.scatter(*zip(*((x, 100 * v) for x, v in seeds)), s=14, facecolors="none", edgecolors=[colour], alpha=0.7)


def _plot_point(ax, point, mark) -> None:
    """One checkpoint's rate with its interval (init: the shared start of the SFT and RL curves)."""
    fmt, colour, size, label = mark
    _plot_seeds(ax, [point], colour)
    ax.errorbar(
        [point.gflops],
        [100 * point.value],
        yerr=_rate_errors([point]),
        fmt=fmt,
        color=colour,
        ms=size,
        label=label,
        zorder=5,
    )


def _plot_curve(ax, pts: list[Point], label: str, colour, style: str = "-o", xs: list[float] | None = None) -> None:
    """Rates with their 95% intervals, against compute (or against `xs`), and each seed's rate where there
    are several."""
    _plot_seeds(ax, pts, colour, xs)
    ax.errorbar(
        [p.gflops for p in pts] if xs is None else xs,
        [100 * p.value for p in pts],
        yerr=_rate_errors(pts),
        fmt=style,
        color=colour,
        label=label,
        capsize=3,
        ms=4,
        lw=1.5,
    )


def compute_label(accounting: str) -> str:
    """The compute axis: which accounting (`names.ACCOUNTINGS`) its GFLOPs are in."""
    return f"training compute from the base model\n(GFLOPs, {accounting} accounting)"  # two lines: panels sit side by side


def _finish_compute_axes(ax, metric: str, notes: list[str], accounting: str) -> None:
    """Labels, grid, legend and notes of a score-vs-compute panel."""
    ax.set_xlabel(compute_label(accounting))
    ax.set_ylabel(f"{metric} (%), 95% interval")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    _note(ax, notes)


def figure_id_ood_vs_compute(
    points, tasks: list[str], titles: dict[str, str], path: Path, accounting: str = "paper"
) -> Path:
    plt = _plt()
    tasks = tasks_for(points, tasks)
    fig, axes = plt.subplots(len(tasks), 2, figsize=(11, 4.2 * len(tasks)), squeeze=False)
    for row, task in enumerate(tasks):
        metric = metric_title(metric_of(task), task)
        runs = sft_runs(points, task) + rl_runs(points, task)
        for col, split in enumerate((SPLIT_ID, SPLIT_OOD)):
            ax = axes[row][col]
            ax.set_title(f"{titles.get(task, task)}: {SPLIT_TITLE[split]}", fontsize=10)
            missing, drawn = [], False
            init = points.get((task, INIT_RUN, 0, split))
            for run in runs:
                pts, has = curve(points, task, run, split)
                if not has:
                    missing.append(f"no {label_of(points, task, run)} checkpoints on this split")
                    continue
                style = "-^" if run == SFT_VARIED_RUN else "-o"
                _plot_curve(ax, pts, label_of(points, task, run), _colour(run, run_viter(points, task, run)), style)
                drawn = True
            if init is None:
                missing.append("no init evaluation: curves lack their start")
            else:
                _plot_point(ax, init, INIT_MARK)
                drawn = True
            base = points.get((task, BASE_RUN, 0, split))
            if base is not None:
                _plot_point(ax, base, BASE_MARK)
                drawn = True
            if not drawn:
                _empty(ax, f"no evaluations of {task} on {split}")
                continue
            _finish_compute_axes(ax, metric, missing, accounting)
    return _save(
        plt, fig, "ID and OOD score vs training compute: SFT and RL from the shared init (cf. paper Figure 5)", path
    )


def figure_success_vs_step(points, tasks: list[str], titles: dict[str, str], path: Path) -> Path:
    """ID and rule-OOD score against the training step from init: the SFT run and every RL run,
    each from its own checkpoints (an SFT step is one batch of expert rows, an RL step one rollout
    of GRPO groups, so the x-axis counts updates, not compute: the compute figure compares cost)."""
    plt = _plt()
    tasks = tasks_for(points, tasks)
    fig, axes = plt.subplots(len(tasks), 2, figsize=(11, 4.2 * len(tasks)), squeeze=False)
    for row, task in enumerate(tasks):
        metric = metric_title(metric_of(task), task)
        for col, split in enumerate((SPLIT_ID, SPLIT_OOD)):
            ax = axes[row][col]
            ax.set_title(f"{titles.get(task, task)}: {SPLIT_TITLE[split]}", fontsize=10)
            drawn = False
            for run in sft_runs(points, task) + rl_runs(points, task):
                pts, has = curve(points, task, run, split)
                if has:
                    colour, style = _colour(run, run_viter(points, task, run)), "-^" if run == SFT_VARIED_RUN else "-o"
                    _plot_curve(ax, pts, label_of(points, task, run), colour, style, xs=[p.step for p in pts])
                    drawn = True
            if not drawn:
                _empty(ax, f"no SFT or RL checkpoints of {task} on {split}")
                continue
            ax.set_xlabel(
                "training step from init\n(SFT: one batch of rows; RL: one rollout of GRPO groups)", fontsize=9
            )
            ax.set_ylabel(f"{metric} (%), 95% interval")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7, loc="upper left")
    return _save(plt, fig, "ID and OOD score vs training step from the shared init (step 0)", path)


def _task_row(points, tasks: list[str], width: tuple[float, float], height: float):
    """(plt, fig, [(task, axis)]): one axis per task, side by side; width = (least, per task)."""
    plt = _plt()
    tasks = tasks_for(points, tasks)
    fig, axes = plt.subplots(1, len(tasks), figsize=(max(width[0], width[1] * len(tasks)), height), squeeze=False)
    return plt, fig, list(zip(tasks, axes[0]))


@dataclass
class _Bar:
    label: str
    value: float
    below: float
    above: float
    colour: Any
    hatch: str = ""  # "//": the paper's number


def _our_change_bars(b: ClaimBuilder | None, runs: list[str], init: Point | None, notes: list[str]) -> list[_Bar]:
    """Per run, the paired OOD change from init at the run's equal-compute checkpoint."""
    bars = []
    for run in runs:
        p = b.point(b.at(run), SPLIT_OOD) if b else None
        label = label_of(b.points, b.task, run) if b else run
        if p is None or init is None:
            notes.append(f"no OOD data for {label}" + ("" if init else " (no init evaluation)"))
            continue
        change = b.paired.compare(b.task, b.at(run), (INIT_RUN, 0), SPLIT_OOD, b.metric)
        value, low, high, note = _change_bar(change, p, init)
        notes += [note] if note else []
        colour = _colour(run, run_viter(b.points, b.task, run))
        bars.append(_Bar(f"{label}\nours, step {p.step}", value, low, high, colour))
    return bars


def _paper_change_bars(rule: dict | None) -> list[_Bar]:
    """The paper's SFT and RL changes from init (no interval published)."""
    if not rule:
        return []
    return [
        _Bar(f"{name}\npaper", rule[name.lower()] - rule["init"], 0.0, 0.0, _colour(run, viter), "//")
        for name, run, viter in (("SFT", SFT_RUN, None), ("RL", "rl", MAIN_VITER))
    ]


def _draw_bars(ax, bars: list[_Bar]) -> None:
    """Bars with their error bars, each annotated with its value; the paper's hatched and paler."""
    x = list(range(len(bars)))
    drawn = ax.bar(
        x,
        [b.value for b in bars],
        yerr=[[b.below for b in bars], [b.above for b in bars]],
        color=[b.colour for b in bars],
        capsize=4,
        edgecolor="black",
        linewidth=0.6,
    )
    for patch, b in zip(drawn, bars):
        patch.set_hatch(b.hatch)
        if b.hatch:
            patch.set_alpha(0.6)
        up = b.value >= 0
        end = b.value + b.above if up else b.value - b.below
        ax.annotate(
            f"{b.value:+.1f}",
            (patch.get_x() + patch.get_width() / 2, end),
            ha="center",
            va="bottom" if up else "top",
            fontsize=7,
            xytext=(0, 2 if up else -2),
            textcoords="offset points",
        )
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(x)
    ax.set_xticklabels([b.label for b in bars], fontsize=7)


def figure_ood_change(
    points, contexts: dict[str, dict], tasks: list[str], paper: dict[str, Any], titles: dict[str, str], path: Path
) -> Path:
    plt, fig, axes = _task_row(points, tasks, (7, 6.5), 4.8)
    for task, ax in axes:
        b: ClaimBuilder | None = contexts.get(task, {}).get("builder")
        init = points.get((task, "init", 0, SPLIT_OOD))
        notes: list[str] = []
        bars = _our_change_bars(b, sft_runs(points, task) + rl_runs(points, task), init, notes)
        if not rl_runs(points, task):
            notes.append("no RL-from-init run evaluated")
        rule = (paper.get("rule_ood") or {}).get(task)
        bars += _paper_change_bars(rule)
        if not rule:
            notes.append("paper: no rule-OOD numbers for this task")
        ax.set_title(f"{titles.get(task, task)}: rule-OOD change from init", fontsize=10)
        if not bars:
            _empty(ax, "no OOD evaluations of init, SFT or RL\nand no paper numbers for this task")
            continue
        _draw_bars(ax, bars)
        ax.set_ylabel(f"OOD {metric_title(metric_of(task), task)}: change from init (points)")
        ax.grid(axis="y", alpha=0.3)
        notes.insert(0, f"equal compute: {b.sel.how}" if b and b.sel.steps else "no checkpoints to compare")
        notes.insert(1, f"error bars: paired 95% interval (cluster bootstrap over {units_title(task)})")
        if init is not None:
            notes.insert(2, f"our init: {pct_ci(init)}" + (f"; paper init: {rule['init']:.1f}%" if rule else ""))
        ax.margins(y=0.15)
        _note(ax, notes)
    return _save(plt, fig, "OOD change from init at equal compute, ours beside the paper (cf. paper Figure 6)", path)


def figure_viter_ablation(
    points, contexts: dict[str, dict], tasks: list[str], paper: dict[str, Any], titles: dict[str, str], path: Path
) -> Path:
    plt, fig, axes = _task_row(points, tasks, (6.5, 6), 4.5)
    for task, ax in axes:
        metric = metric_title(metric_of(task), task)
        ax.set_title(f"{titles.get(task, task)}: OOD gain vs VIter", fontsize=10)
        ctx = contexts.get(task, {})
        b: ClaimBuilder | None = ctx.get("builder")
        init = points.get((task, "init", 0, SPLIT_OOD))
        notes, drawn = [], False
        xs, ys, below, above = [], [], [], []
        for viter, gain in sorted((ctx.get("gains") or {}).items()):
            p = b.point(b.at_viter(b.viter_runs[viter]), SPLIT_OOD)
            if gain.comparison is None or p is None or init is None:
                continue
            value, low, high, note = _change_bar(gain.comparison, p, init)
            notes += [note] if note else []
            xs.append(viter)
            ys.append(value)
            below.append(low)
            above.append(high)
        if xs:
            ours = "ours (equal compute, paired 95% interval)"
            ax.errorbar(xs, ys, yerr=[below, above], fmt="-o", color="#1f78b4", capsize=4, label=ours)
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
        ticks = sorted(set(xs) | ({int(k.split("_")[1]) for k in ablation} if ablation else set()))
        ax.set_xticks(ticks)
        ax.set_xlabel("VIter (scored attempts per episode during RL)")
        ax.set_ylabel(f"OOD {metric}: gain over init (points)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
        how = b.viter_sel.how if b and b.viter_sel.steps else None
        notes.insert(0, f"equal compute among the RL arms: {how}" if how else "no checkpoints to compare")
        _note(ax, notes)
    return _save(plt, fig, "Verification iterations: OOD gain at equal compute (cf. paper Figure 10)", path)


def figure_rl_nosft(
    points, df, tasks: list[str], titles: dict[str, str], path: Path, accounting: str = "paper"
) -> Path:
    plt = _plt()
    tasks = tasks_for(points, tasks)
    fig, axes = plt.subplots(len(tasks), 3, figsize=(15, 4.2 * len(tasks)), squeeze=False)
    for row, task in enumerate(tasks):
        metric = metric_title(metric_of(task), task)
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
                    notes.append(f"no {label_of(points, task, run)} checkpoints on this split")
                    continue
                _plot_curve(
                    ax,
                    pts,
                    label_of(points, task, run) + ("" if run == "rl-nosft" else " (from init)"),
                    _colour(run, run_viter(points, task, run)),
                    "-o" if run == "rl-nosft" else "--s",
                )
                drawn = True
            if not drawn:
                _empty(ax, f"no RL evaluations of {task} on {split}")
                continue
            ax.set_ylim(bottom=-2)
            _finish_compute_axes(ax, metric, notes, accounting)
        _draw_format_errors(axes[row][2], points, df, task, runs, titles, accounting)
    return _save(plt, fig, "RL straight from the base model vs RL from the SFT init (cf. paper Figure 9)", path)


def _draw_format_errors(ax, points, df, task: str, runs: list[str], titles: dict[str, str], accounting: str) -> None:
    """Figure 9's third panel: each run's rule-OOD format error rate vs training compute."""
    ax.set_title(f"{titles.get(task, task)}: format errors (rule OOD)", fontsize=10)
    notes, drawn = [], False
    if "format_error_rate" not in df.columns:
        _empty(ax, "format_error_rate is not reported by this task")
        return
    for run in runs:
        pts, has = curve(points, task, run, SPLIT_OOD)
        pts = [p for p in pts if "format_error_rate" in p.extra]
        if not has or not pts:
            notes.append(f"no {label_of(points, task, run)} format-error data")
            continue
        ax.plot(
            [p.gflops for p in pts],
            [100 * p.extra["format_error_rate"] for p in pts],
            "-o" if run == "rl-nosft" else "--s",
            color=_colour(run, run_viter(points, task, run)),
            label=label_of(points, task, run),
        )
        drawn = True
    if not drawn:
        _empty(ax, "no format-error data for RL runs")
        return
    ax.set_xlabel(compute_label(accounting))
    ax.set_ylabel("format error rate (% of attempts)")
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center right")
    _note(ax, notes)


# The splits of Figure 8: the cards as trained on (black suits) and in colours training never showed (red).
# The rule-OOD split shows black cards like ID, so its recognition adds nothing to see here (summary.csv has it).
RECOGNITION_SPLITS = (SPLIT_ID, SPLIT_VISUAL)
NO_VL_TASK = "no vision-language task in this study"


def figure_recognition_vs_compute(
    points, contexts: dict[str, dict], tasks: list[str], titles: dict[str, str], path: Path, accounting: str = "paper"
) -> Path:
    """Recognition accuracy vs training compute of SFT and the main RL run from init (cf. paper Figure 8).

    `points`: recognition accuracy per checkpoint (`claims.recognition_points`). One row per image
    task, one panel per split of RECOGNITION_SPLITS; a study without an image task gets one panel
    saying so, an image task without recognition accuracy (V-IRL-VL) a panel saying that."""
    plt = _plt()
    vl_tasks = [t for t in tasks_for(points, tasks) if is_vl(t)]
    title = "Recognition accuracy vs training compute: SFT and RL from the shared init (cf. paper Figure 8)"
    if not vl_tasks:
        fig, ax = plt.subplots(1, 1, figsize=(8, 4))
        ax.set_title("recognition accuracy of the cards shown", fontsize=10)
        _empty(ax, f"{NO_VL_TASK}\n(tasks: {', '.join(tasks) or 'none'})")
        return _save(plt, fig, title, path)
    fig, axes = plt.subplots(len(vl_tasks), 2, figsize=(11, 4.2 * len(vl_tasks)), squeeze=False)
    for row, task in enumerate(vl_tasks):
        main = contexts.get(task, {}).get("main_rl") or main_rl_run(points, task)
        runs = ["sft"] + ([main] if main else [])
        has_task = any(p.task == task for p in points.values())
        for col, split in enumerate(RECOGNITION_SPLITS):
            ax = axes[row][col]
            ax.set_title(f"{titles.get(task, task)}: {SPLIT_TITLE[split]}", fontsize=10)
            if not has_task:
                _empty(ax, f"no evaluation of {task} records {RECOGNITION}\n(the paper's Figure 8 is GP-VL's)")
                continue
            notes, drawn = [], False
            if not main:
                notes.append("no RL-from-init run evaluated")
            for run in runs:
                pts, has = curve(points, task, run, split)
                if not has:
                    notes.append(f"no {label_of(points, task, run)} checkpoints on this split")
                    continue
                _plot_curve(ax, pts, label_of(points, task, run), _colour(run, run_viter(points, task, run)))
                drawn = True
            init = points.get((task, INIT_RUN, 0, split))
            if init is None:
                notes.append("no init evaluation: curves lack their start")
            else:
                _plot_point(ax, init, INIT_MARK)
                drawn = True
            if not drawn:
                _empty(ax, f"no evaluations of {task} on {split} with {RECOGNITION}")
                continue
            if any(isnan(p.ci_low) for p in points.values() if p.task == task and p.split == split):
                notes.append("a point without an error bar had no episode table (or one hand)")
            ax.set_ylim(-2, 102)
            _finish_compute_axes(ax, metric_title(RECOGNITION, task), notes, accounting)
            ax.set_ylabel("recognition accuracy (% of attempts), 95% interval")
    return _save(plt, fig, title, path)


def figure_rl_from_sft(points, tasks: list[str], titles: dict[str, str], path: Path) -> Path:
    """Rule-OOD score, ID score and the task's first rule-OOD diagnostic (GP: rule memorisation) against the SFT
    step RL started from (0: init), before RL (the start checkpoint) and after it (the run's last evaluated
    checkpoint); arXiv 2509.12235."""
    plt = _plt()
    tasks = tasks_for(points, tasks)
    fig, axes = plt.subplots(len(tasks), 3, figsize=(15, 4.2 * len(tasks)), squeeze=False)
    for row, task in enumerate(tasks):
        pairs = _start_pairs(points, task)
        first_diagnostic = next(iter(task_diagnostics(task)), None)
        panels = ((SPLIT_OOD, None), (SPLIT_ID, None), (SPLIT_OOD, first_diagnostic))
        for col, (split, diagnostic) in enumerate(panels):
            ax = axes[row][col]
            if col == 2 and first_diagnostic is None:
                _empty(ax, "the task names no rule-OOD diagnostic")
                continue
            what = metric_title(diagnostic or metric_of(task), task)
            ax.set_title(f"{titles.get(task, task)}: {SPLIT_TITLE[split]}, {what}", fontsize=10)
            if not pairs:
                _empty(ax, "no RL from SFT checkpoints in this study (rl.starts: [init, sft-<step>, ...])")
                continue
            _draw_start_pairs(ax, points, task, pairs, split, diagnostic)
            ax.set_xlabel("SFT step RL started from (0: init)")
            ax.set_ylabel(f"{what} (%)" + ("" if diagnostic else ", 95% interval"))
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7, loc="best")
    return _save(plt, fig, "RL from SFT checkpoints: before and after RL (cf. arXiv 2509.12235)", path)


def _start_pairs(points, task: str) -> list[tuple[int, tuple[str, int], tuple[str, int]]]:
    """(SFT step, start checkpoint, RL's last checkpoint) per start: init (step 0, the main RL run) and
    every RL run from an SFT checkpoint at the main run's VIter (else its largest)."""
    main = main_rl_run(points, task)
    viter = run_viter(points, task, main) if main else None

    def preference(run: str) -> tuple[bool, int]:
        return run_viter(points, task, run) == viter, run_viter(points, task, run) or 0

    by_step: dict[int, str] = {}
    for run, step in sorted(sft_start_runs(points, task).items(), key=lambda kv: preference(kv[0])):
        by_step[step] = run  # where a step has several runs, the main VIter's (else the largest) is drawn
    starts = ([(0, (INIT_RUN, 0), main)] if main else []) + [
        (step, (SFT_RUN, step), run) for step, run in sorted(by_step.items())
    ]
    out = []
    for step, start, run in starts:
        last = max((p.step for p in points.values() if (p.task, p.run) == (task, run)), default=None)
        if last is not None:
            out.append((step, start, (run, last)))
    return out if len(out) > int(bool(main)) else []


def _draw_start_pairs(ax, points, task: str, pairs, split: str, diagnostic: str | None) -> None:
    """Two lines over the start steps: the start checkpoints (before RL) and the RL runs' last checkpoints."""
    for index, (label, style, colour) in enumerate(
        (("before RL (start)", "-o", "#d95f02"), ("after RL", "--s", "#1b9e77"))
    ):
        xs, pts = [], []
        for step, start, end in pairs:
            p = points.get((task, *(start, end)[index], split))
            if p is not None:
                xs.append(step)
                pts.append(p)
        if diagnostic:
            ys = [100 * p.extra.get(diagnostic, float("nan")) for p in pts]
            ax.plot(xs, ys, style, color=colour, label=label)
        else:
            _plot_curve(ax, pts, label, colour, style, xs=xs)
