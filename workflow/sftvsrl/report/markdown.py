"""summary.md: the claims one by one, with our numbers, the paper's, and a verdict."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from ..config import section_with_defaults
from ..names import ACCOUNTINGS, INIT_RUN, SFT_RUN, SFT_VARIED_RUN
from ..stats import CONFIDENCE, NOT_TESTED
from ..tasks import get_task
from .claims import Claim, ClaimBuilder, MetricTest, PairedEvaluations, diff_ci, format_p
from .results import (
    MAIN_VITER,
    SPLIT_ID,
    SPLIT_OOD,
    SPLIT_TITLE,
    SPLIT_VISUAL,
    Point,
    diagnostic_columns,
    extra_splits,
    is_vl,
    isnan,
    label_of,
    metric_of,
    metric_title,
    order_of,
    pct,
    pp,
    split_title,
    task_diagnostics,
    units_phrase,
    units_title,
    visual_title,
)


# --------------------------------------------------------------------------- summary.md
def _diagnostic(name: str, value: float | None) -> str:
    """Rates as percentages; rewards as plain numbers."""
    if name == "mean_reward_per_attempt":
        return "n/a" if value is None or isnan(value) else f"{value:+.2f}"
    return pct(value)


def _cell(p: Point | None) -> str:
    """A rate in points with its 95% interval, for tables: "30.0 [24.5, 36.1]"."""
    if p is None:
        return "n/a"
    if isnan(p.ci_low):
        return f"{100 * p.value:.1f}"
    return f"{100 * p.value:.1f} [{100 * p.ci_low:.1f}, {100 * p.ci_high:.1f}]"


def _p_text(p: float) -> str:
    return "p n/a" if isnan(p) else ("p < 0.001" if p < 0.001 else f"p = {p:.3g}")


def _size(n_params: float) -> str:
    if n_params >= 1e9:
        return f"{n_params / 1e9:.1f}B"
    return f"{n_params / 1e6:.0f}M" if n_params >= 1e6 else f"{n_params / 1e3:.0f}k"  # k: the tiny test models


def scale_note(df, config: dict[str, Any], paper: dict[str, Any]) -> str | None:
    """Model size and episodes per split beside the paper's: facts, not a verdict on the verdicts."""
    parts = []
    if "n_params" in df.columns and df["n_params"].notna().any() and float(df["n_params"].max()) > 0:
        parts.append(f"a {_size(float(df['n_params'].max()))}-parameter model")
    if "episodes" in df.columns and df["episodes"].notna().any():
        lo, hi = int(df["episodes"].min()), int(df["episodes"].max())
        parts.append(f"{lo if lo == hi else f'{lo}-{hi}'} episodes per split")
    if not parts:
        return None
    scale = (
        f"{paper['model']}, {paper['model_params']} parameters; "
        f"{paper['eval_episodes']['gp']} episodes per GeneralPoints split"
    )
    return (
        f"**Scale.** This study (`{config['study']}`) evaluated "
        + " on ".join(parts)
        + f"; the paper: {scale}. The intervals below say how much these evaluations can show."
    )


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


def _test_row(key: str, t: MetricTest, task: str) -> list[str]:
    r = t.comparison.result if t.comparison else None
    return [
        f"({key})",
        t.statement,
        t.metric_title or metric_title(t.metric, task),
        diff_ci(t.comparison),
        format_p(r.p_value) if r else "n/a",
        f"{r.units} {units_title(task)} ({r.episodes})" if r else "n/a",
        f"**{t.verdict}**",
    ]


def _test_sentence(t: MetricTest, task: str) -> str:
    r = t.comparison.result if t.comparison else None
    if r is None:
        return f"not tested ({t.note})"
    return (
        f"paired difference {diff_ci(t.comparison)} points (95% interval), {_p_text(r.p_value)} "
        f"({r.test}; {r.units} {units_title(task)}, {r.episodes} episode pairs)"
    )


CLAIMS_HEADER = [
    "#",
    "paper's finding",
    "metric",
    "ours: difference, points [95% CI]",
    "p",
    "units (episodes)",
    "verdict",
]


def verdict_rows(results: dict[str, tuple], tasks: list[str], titles: dict[str, str]) -> list[list[str]]:
    """The claims tables of summary.md, every task's, as rows led by the task's title (`VERDICTS_HEADER`)."""
    return [[titles.get(t, t), *_test_row(c.key, test, t)] for t in tasks for c in results[t][0] for test in c.tests]


VERDICTS_HEADER = ["task", *CLAIMS_HEADER]


def write_table_csv(header: list[str], rows: list[list[str]], path: Path) -> Path:
    """A table of display strings as CSV for rst's csv-table (the report's first page): a cell that rst would
    read as a list's enumerator, a claim's "(i)", is escaped so it shows as written."""
    import csv
    import re

    def cell(text: str) -> str:
        return "\\" + text if re.fullmatch(r"\(\w+\)", text) else text

    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows([[cell(c) for c in row] for row in rows])
    return path


def verdicts_markdown(study: str, rows: list[list[str]]) -> str:
    """The claims tables as one Markdown table, for the study's MLflow run description."""
    return "\n".join(
        [
            f"# Study {study}: the paper's claims in this run",
            "",
            (
                "Each claim is a paired comparison of two checkpoints on the same rows (A - B in points, 95% "
                "interval from a cluster bootstrap over each task's units, p-value). The full summary is "
                "`results/summary.md` (this run's artifact `report/summary.md`)."
            ),
            "",
            *_table(VERDICTS_HEADER, rows),
        ]
    )


def claim_lines(claims: list[Claim], task: str) -> list[str]:
    """The task's claims table (one row per claim x metric) and one paragraph per claim."""
    rows = [_test_row(c.key, t, task) for c in claims for t in c.tests]
    lines = _table(CLAIMS_HEADER, rows) + [""]
    for c in claims:
        head, *diagnostics = c.tests
        text = f"- **({c.key}) {c.statement}.** Paper: {c.paper}. "
        if head.verdict == NOT_TESTED:
            text += f"Ours: {c.ours + '; ' if c.ours else ''}not tested ({head.note})."
        else:
            text += (
                f"Ours: {c.ours}; {_test_sentence(head, task)}; the paper's direction is "
                f"{'+' if head.paper_sign > 0 else '-'}. The paper's finding **{head.verdict}** in this run."
            )
        if diagnostics:
            splits = {t.split for t in diagnostics}
            where = "Diagnostics" if any(t.metric != head.metric for t in diagnostics) else "Also"
            only = splits.pop() if len(splits) == 1 else None
            where += f" on the {SPLIT_TITLE.get(only, only)} split" if only else " tested"
            text += (
                f" {where}: "
                + "; ".join(
                    f"{t.statement}: {_test_sentence(t, task)}, **{t.verdict}**"
                    if t.verdict != NOT_TESTED
                    else f"{t.statement}: not tested ({t.note})"
                    for t in diagnostics
                )
                + "."
            )
        lines.append(text)
    return lines + [""]


SEEDS_TEXT = (
    "Each seed alone: the claim's paired difference over that seed's episodes (points, 95% interval, its own "
    "verdict), beside the pooled one above; the last column is the standard deviation of the seeds' differences."
)


def seed_lines(claims: list[Claim], paired: PairedEvaluations, task: str) -> list[str]:
    """The claims table seed by seed, for a study with more than one seed: the tests of each claim's own metric."""
    seeds = paired.seeds(task)
    tested = [(c, t) for c in claims for t in c.tests if t.metric == c.tests[0].metric and t.comparison is not None]
    if len(seeds) < 2 or not tested:
        return []
    rows = []
    for c, t in tested:
        k = t.comparison
        per_seed = [paired.compare(task, k.a, k.b, k.split, k.metric, seed=s) for s in seeds]
        cells = [f"{diff_ci(one)} {MetricTest(k.metric, t.statement, t.paper_sign, one).verdict}" for one in per_seed]
        diffs = [100 * one.result.diff for one in per_seed if one.result is not None]
        spread = f"{statistics.stdev(diffs):.1f}" if len(diffs) > 1 else "n/a"
        rows.append([f"({c.key})", t.statement, f"{diff_ci(k)} **{t.verdict}**", *cells, spread])
    header = ["#", "paper's finding", "all seeds", *(f"seed {s}" for s in seeds), "SD of the seeds (points)"]
    return ["### Seed by seed", "", SEEDS_TEXT, "", *_table(header, rows), ""]


def _change(b: ClaimBuilder, run: str | None, split: str) -> str:
    """The paired change of `run`'s equal-compute checkpoint from init on `split`, in points."""
    a, init = b.at(run), b.at(INIT_RUN)
    if b.point(a, split) is None or b.point(init, split) is None:
        return "n/a"
    c = b.paired.compare(b.task, a, init, split, b.metric)
    return diff_ci(c) if c.result else f"{pp(b.point(a, split).value - b.point(init, split).value)} (unpaired)"


def _paper_lines(b: ClaimBuilder, rule: dict | None, paper: dict[str, Any]) -> list[str]:
    """Init, SFT and RL on rule OOD (and ID) beside the paper, with paired changes from init."""

    def change(run: str | None, split: str) -> str:
        return _change(b, run, split)

    rows = []
    if rule:
        rows.append(
            [
                f"paper ({paper['model_params']})",
                "OOD",
                f"{rule['init']:.1f}",
                f"{rule['sft']:.1f}",
                f"{rule['rl']:.1f}",
                f"{rule['sft'] - rule['init']:+.1f}",
                f"{rule['rl'] - rule['init']:+.1f}",
            ]
        )
    for split in (SPLIT_OOD, SPLIT_ID):
        cells = [_cell(b.point(b.at(run), split)) for run in (INIT_RUN, SFT_RUN, b.main)]
        rows.append(
            [
                f"ours ({label_of(b.points, b.task, b.main) if b.main else 'no RL'})",
                "OOD" if split == SPLIT_OOD else "ID",
                *cells,
                change("sft", split),
                change(b.main, split),
            ]
        )
    lines = [
        "### Beside the paper: rule OOD (Figure 6)",
        "",
        "Ours: rate [95% interval] in percent; changes are paired differences in points [95% interval].",
        "",
    ]
    lines += _table(["", "split", "init", "SFT", "RL", "SFT - init", "RL - init"], rows)
    if not rule:
        lines += ["", f"The paper reports no rule-OOD numbers for `{b.task}`."]
    return lines + [""]


def _visual_lines(vb: ClaimBuilder, vis: dict | None, paper: dict[str, Any]) -> list[str]:
    """Init, SFT and RL on visual OOD beside the paper (Figure 7), with paired changes from init."""
    title = visual_title(vb.task)
    rows = []
    if vis:
        rows.append(
            [
                f"paper ({paper['model_params']})",
                f"{vis['init']:.1f}",
                f"{vis['sft']:.1f}",
                f"{vis['rl']:.1f}",
                f"{vis['sft'] - vis['init']:+.1f}",
                f"{vis['rl'] - vis['init']:+.1f}",
            ]
        )
    cells = [_cell(vb.point(vb.at(run), SPLIT_VISUAL)) for run in (INIT_RUN, SFT_RUN, vb.main)]
    rows.append(
        [
            f"ours ({label_of(vb.points, vb.task, vb.main) if vb.main else 'no RL'})",
            *cells,
            _change(vb, SFT_RUN, SPLIT_VISUAL),
            _change(vb, vb.main, SPLIT_VISUAL),
        ]
    )
    lines = [
        f"### Beside the paper: visual OOD (Figure 7), {title}",
        "",
        VISUAL_TEXT.format(
            split=SPLIT_VISUAL, example=f" ({look})" if (look := get_task(vb.task).visual_ood_look) else ""
        ),
        "",
    ]
    lines += _table(["", "init", "SFT", "RL", "SFT - init", "RL - init"], rows)
    if vis and "previous_best" in vis:
        lines += ["", f"The paper's previous best on this benchmark: {vis['previous_best']:.1f}%."]
    if not vis:
        lines += ["", f"The paper reports no visual-OOD numbers for `{vb.task}`."]
    return lines + [""]


def _recognition_lines(rb: ClaimBuilder) -> list[str]:
    """Recognition accuracy of every checkpoint on every split that records it (Figure 8)."""
    pts = [p for p in rb.points.values() if p.task == rb.task]
    splits = [s for s in (SPLIT_ID, SPLIT_OOD, SPLIT_VISUAL) if any(p.split == s for p in pts)]
    splits += extra_splits(rb.points, rb.task)
    checkpoints = sorted({(p.run, p.step) for p in pts}, key=lambda rs: (order_of(rb.points, rb.task, rs[0]), rs[1]))
    rows = []
    for run, step in checkpoints:
        gflops = next(p.gflops for p in pts if (p.run, p.step) == (run, step))
        rows.append(
            [run, str(step), f"{gflops:.4g}"] + [_cell(rb.points.get((rb.task, run, step, s))) for s in splits]
        )
    lines = [
        "### Recognition accuracy (Figure 8)",
        "",
        RECOGNITION_TEXT,
        "",
    ]
    lines += _table(["run", "step", "GFLOPs"] + [split_title(rb.task, s) for s in splits], rows)
    return lines + [""]


def _ablation_lines(ctx: dict[str, Any]) -> list[str]:
    lines = ["### Verification iterations (Figure 10): OOD gain over init at equal compute (points)", ""]
    paper_v = {int(k.split("_")[1]): v for k, v in (ctx["ablation"] or {}).items()}
    gains: dict[int, MetricTest] = ctx["gains"]
    rows = []
    for v in sorted(set(paper_v) | set(gains)):
        c = gains[v].comparison if v in gains else None
        ours = diff_ci(c) if c and c.result else ("not run" if v not in gains else f"n/a ({gains[v].note})")
        p = format_p(c.result.p_value) if c and c.result else "n/a"
        rows.append([str(v), ours, p, f"{paper_v[v]:+.2f}" if v in paper_v else "n/a"])
    lines += (
        _table(["VIter", "ours: paired gain [95% CI]", "p", "paper"], rows)
        if rows
        else ["No RL runs and no paper ablation."]
    )
    return lines + [""]


def _diagnostic_lines(df, points, task: str) -> list[str]:
    lines = ["### Diagnostics on the rule-OOD split", "", diagnostics_text(task), ""]
    diag_cols = [k for k in diagnostic_columns(task) if k in df.columns and df.loc[df.task == task, k].notna().any()]
    rows = [
        [p.run, str(p.step), f"{p.gflops:.4g}", _cell(p)] + [_diagnostic(k, p.extra.get(k)) for k in diag_cols]
        for p in sorted(
            (p for p in points.values() if p.task == task and p.split == SPLIT_OOD),
            key=lambda p: (order_of(points, task, p.run), p.step),
        )
    ]
    mtitle = metric_title(metric_of(task), task)
    lines += (
        _table(["run", "step", "GFLOPs", f"{mtitle} [95% CI]"] + [metric_title(k, task) for k in diag_cols], rows)
        if rows
        else ["No rule-OOD evaluations."]
    )
    return lines + [""]


ARM_TITLE = {INIT_RUN: "init", SFT_RUN: "SFT", SFT_VARIED_RUN: "SFT on varied rules"}  # any other run: the RL arm


def _extra_split_lines(b: ClaimBuilder) -> list[str]:
    """The task's extra OOD splits (GP-L's harder ones, arXiv 2510.00237): init, SFT, SFT on varied rules (where
    the study has it) and the main RL arm at the claims' checkpoints, each arm's paired change from init, then
    the diagnostics of those checkpoints there. Nothing when the task has no extra split."""
    splits = extra_splits(b.points, b.task)
    if not splits:
        return []
    runs = [INIT_RUN, SFT_RUN] + ([SFT_VARIED_RUN] if b.at(SFT_VARIED_RUN) else []) + [b.main]
    heads = [ARM_TITLE.get(run, "RL") for run in runs]
    rows = []
    for split in splits:
        counted = b.paired.units(b.task, split)
        rows.append(
            [split_title(b.task, split), f"{counted[0]} ({counted[1]})" if counted else "n/a"]
            + [_cell(b.point(b.at(run), split)) for run in runs]
            + [_change(b, run, split) for run in runs[1:]]
        )
    checkpoints = ", ".join(b.label(c) for c in map(b.at, runs[1:]) if c) or "none evaluated"
    units = units_title(b.task)
    lines = ["### Harder OOD splits", "", EXTRA_SPLITS_TEXT.format(checkpoints=checkpoints, units=units), ""]
    lines += _table(["split", f"episodes ({units})", *heads, *(f"{h} - init" for h in heads[1:])], rows) + [""]
    return lines + _extra_split_diagnostics(b, splits, runs, heads)


def _extra_split_diagnostics(b: ClaimBuilder, splits: list[str], runs: list, heads: list[str]) -> list[str]:
    """The task's rule-OOD diagnostics (GP: rule memorisation, where a split records it, and number accuracy) of
    the arms' checkpoints on the splits."""
    rows = []
    for split in splits:
        pts = [b.point(b.at(run), split) for run in runs]
        for name in task_diagnostics(b.task):
            if any(p is not None and name in p.extra for p in pts):
                cells = [_diagnostic(name, p.extra.get(name)) if p else "n/a" for p in pts]
                rows.append([split_title(b.task, split), metric_title(name, b.task), *cells])
    if not rows:
        return []
    return [EXTRA_DIAGNOSTICS_TEXT, ""] + _table(["split", "diagnostic", *heads], rows) + [""]


def _units_line(paired: PairedEvaluations, task: str) -> str:
    parts = []
    for split in (SPLIT_ID, SPLIT_OOD) + ((SPLIT_VISUAL,) if is_vl(task) else ()):
        counted = paired.units(task, split)
        if counted:
            parts.append(f"{split} {counted[0]} episodes over {counted[1]} distinct {units_title(task)}")
    return ("Evaluation rows: " + "; ".join(parts) + ".") if parts else "Evaluation rows: no episode tables found."


VISUAL_TEXT = (
    "The `{split}` split: the ID rule, shown in a look training never showed{example}. "
    "Ours: rate [95% interval] in percent; changes are paired differences in points [95% interval]."
)
RECOGNITION_TEXT = (
    "Share of attempts whose listed cards are the cards shown, in percent [95% interval: normal, with the "
    "standard error of the pooled share clustered by hand; none where an episode table is missing]."
)
EXTRA_SPLITS_TEXT = (
    "Splits beyond ID and rule OOD (arXiv 2510.00237), each named by the task. Every checkpoint as the claims "
    "choose it ({checkpoints}): rate [95% interval] in percent; changes are paired differences from init in "
    "points [95% interval]. Episodes ({units}): the split's episodes and distinct {units}."
)
EXTRA_DIAGNOSTICS_TEXT = (
    "Their diagnostics (seed means, % of attempts): the task's rule-OOD diagnostics, on each split that records them."
)
INTRO_TEXT = (
    "This page states the claims of Chu et al. (2025), *SFT Memorizes, RL Generalizes* "
    "(arXiv 2501.17161), one by one, with this run's numbers beside the paper's."
)
EQUAL_COMPUTE_TEXT = (
    "**Equal compute.** Per task, the budget is the smaller of the largest training compute reached by "
    "continued SFT and by the main RL run; each run contributes its checkpoint whose compute is closest to "
    f"that budget. The main RL run is `rl-v{MAIN_VITER}` (the paper's VIter) when present, else the largest "
    "VIter. The VIter ablation (claim (v)) compares the RL-from-init runs at a budget of their own: the "
    "smallest of the largest compute each reached. The shared start point is `init`; RL without SFT starts "
    "at the base model."
)


def diagnostics_text(task: str) -> str:
    """What the rule-OOD diagnostics table shows, from the diagnostics the task declares and their directions."""
    text = "Format error rate: share of attempts without a parseable answer."
    moves = {1: "rise", -1: "fall"}
    named = [
        f"{metric_title(k, task)} ({moves[sign]}s as the score rises)" for k, sign in task_diagnostics(task).items()
    ]
    if named:
        text += f" The task's rule-OOD diagnostics: {'; '.join(named)}. They can move before the score does."
    return text


FILES_TEXT = (
    "- `summary.csv`: one row per (task, seed, run, step, split) with compute, every metric and the "
    "Wilson interval of the success rate.\n"
    "- `claims.csv`: one row per claim and metric: difference, 95% interval, p-value, units (the task's resampling units), episodes, verdict."
)
HOW_TO_READ = (
    "**How to read the verdicts.** Every checkpoint is evaluated on the same rows of each split with the same "
    "sampling seed, so a claim compares two checkpoints episode by episode. Its difference d (checkpoint A minus "
    f"checkpoint B, in percentage points) comes with a {100 * CONFIDENCE:.0f}% interval from a paired cluster "
    "bootstrap over the unit each task resamples ({units}: a split can repeat a unit, and its episodes are not "
    "independent evidence), every seed's episode pairs pooled into their unit, and a two-sided p-value: exact "
    "McNemar on the discordant episodes when no unit repeats, else a paired permutation test over units. *held*: "
    "the interval excludes 0 in the paper's direction and p < 0.05. *did not hold*: the interval excludes 0 in "
    "the opposite direction and p < 0.05. *inconclusive*: otherwise (with few discordant units the bootstrap "
    "interval can exclude 0 while the exact test does not, so both must agree). *not tested*: the study lacks the "
    "evaluations or their episode tables. Single rates carry Wilson 95% intervals. `claims.csv` holds every "
    "comparison."
)


SCALED = {
    "group": "divided by their group's standard deviation",
    "batch": "divided by the batch's standard deviation",
    "none": "not scaled",
}


def objective_text(config: dict[str, Any]) -> str:
    """The RL objective the study trained with and the compute accounting its pairing uses."""
    rl = section_with_defaults("rl", config.get("rl"))
    accounting = section_with_defaults("report", config.get("report"))["compute_accounting"]
    silent = (
        "leave the batch and the loss normaliser (DAPO's filter, `rl.drop_silent_groups`)"
        if rl["drop_silent_groups"]
        else "stay in the loss normaliser with zero advantage, so they add no gradient"
    )
    return (
        f"**Objective and compute.** RL is GRPO (TRL's `GRPOTrainer`) with loss type `{rl['loss_type']}` "
        f"(`rl.loss_type`), advantages {SCALED[rl['scale_rewards']]} (`rl.scale_rewards: {rl['scale_rewards']}`); "
        f"groups whose rewards are all equal {silent}. Compute is counted in "
        f"{ACCOUNTINGS[accounting]} (`report.compute_accounting: {accounting}`); `summary.csv` gives both "
        "accountings per evaluation (`paper_gflops`, `computed_gflops`)."
    )


def _checkpoint_text(points, task: str, run: str, step: int) -> str:
    """ "RL, VIter 5 step 3 (1.6 GFLOPs)": a checkpoint with its compute where its rule-OOD evaluation says it."""
    point = points.get((task, run, step, SPLIT_OOD))
    return f"{label_of(points, task, run)} step {step}" + (f" ({point.gflops:.4g} GFLOPs)" if point else "")


def _selection_line(points, task: str, sel, b: ClaimBuilder, accounting: str) -> str:
    """The equal-compute checkpoints the claims compare, and SFT on varied rules beside SFT's."""
    if not sel.steps:
        return "Equal compute: no SFT or RL checkpoints were evaluated."
    picked = ", ".join(
        _checkpoint_text(points, task, r, s)
        for r, s in sorted(sel.steps.items(), key=lambda kv: order_of(points, task, kv[0]))
    )
    varied = b.at(SFT_VARIED_RUN)
    beside = (
        f"; beside SFT: {_checkpoint_text(points, task, *varied)} (the SFT checkpoint's step, else the closest "
        "in compute)"
        if varied
        else ""
    )
    viter = ""
    if len(b.rls) > 1 and b.viter_sel.steps:
        arms = ", ".join(_checkpoint_text(points, task, r, s) for r, s in b.viter_sel.steps.items())
        viter = f" VIter ablation (claim (v), Figure 10), equal compute among the RL arms: {b.viter_sel.how}: {arms}."
    owners = "the SFT arm's and the main RL arm's" if b.at(SFT_RUN) else "the main RL arm's; no SFT arm"
    budget = f" (the budget: {owners})" if sel.budget is not None and b.main else ""
    return (
        f"Equal compute ({accounting} accounting): {sel.how}{budget}. Compared checkpoints: {picked}{beside}.{viter}"
    )


def _task_lines(
    df, points, paired: PairedEvaluations, task: str, result: tuple, title: str, paper, accounting: str
) -> list[str]:
    """One task's section: its score, the checkpoints compared, the claims, and the tables beside them."""
    claims, sel, ctx = result
    b: ClaimBuilder = ctx["builder"]
    visual = f"; visual OOD: {visual_title(task)}" if is_vl(task) else ""
    lines = [
        f"## {title}: `{task}`",
        "",
        f"Score: {metric_title(b.metric, task)}{visual} (%). {_units_line(paired, task)}",
        "",
        _selection_line(points, task, sel, b, accounting),
        "",
    ]
    lines += ["### Claims", ""] + claim_lines(claims, task) + seed_lines(claims, paired, task)
    lines += _paper_lines(b, ctx["rule"], paper)
    if ctx.get("visual_builder") is not None:
        lines += _visual_lines(ctx["visual_builder"], ctx["visual"], paper)
    if ctx.get("recognition_builder") is not None:
        lines += _recognition_lines(ctx["recognition_builder"])
    lines += _extra_split_lines(b)
    return lines + _ablation_lines(ctx) + _diagnostic_lines(df, points, task)


def summary_markdown(
    df,
    points,
    paired: PairedEvaluations,
    config: dict[str, Any],
    paper: dict[str, Any],
    tasks: list[str],
    figures: dict[str, Path],
    results: dict[str, tuple],
    titles: dict[str, str],
) -> str:
    lines = [f"# Study `{config['study']}`: does SFT memorise and RL generalise?", ""]
    accounting = section_with_defaults("report", config.get("report"))["compute_accounting"]
    lines += [INTRO_TEXT, ""]
    note = scale_note(df, config, paper) if not df.empty else None
    lines += [note, ""] if note else []
    lines += [
        HOW_TO_READ.format(units=units_phrase(tasks)),
        "",
        EQUAL_COMPUTE_TEXT,
        "",
        objective_text(config),
        "",
    ]
    if df.empty:
        lines += ["**No evaluations were given to the report**: nothing to compare.", ""]
    seeds = sorted(df["seed"].unique().tolist()) if not df.empty else []
    lines += [f"Seeds: {', '.join(map(str, seeds)) or 'none'}; evaluations: {len(df)}.", ""]

    for task in [t for t in tasks if not df.empty and t in set(df["task"])]:
        lines += _task_lines(df, points, paired, task, results[task], titles.get(task, task), paper, accounting)

    lines += ["## Files", ""]
    lines += [FILES_TEXT]
    lines += [f"- `figures/{p.name}`" for p in figures.values()]
    lines += ["", f"Paper numbers: {paper['source']}.", ""]
    return "\n".join(lines)
