"""The study's claims, each a paired comparison of two checkpoints over the same episodes.

Episodes are paired by row id (every checkpoint plays the same rows with the same sampling seed)
and resampled by the task's unit; `stats` gives the interval, the test and the verdict.
"""

from __future__ import annotations

import copy
import csv
import math
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..data import read_jsonl
from ..names import BASE_RUN, INIT_RUN, NOSFT_RUN, SFT_RUN, SFT_VARIED_RUN, episodes_file
from ..stats import NOT_TESTED, PairedResult, cluster_totals, compare_paired, interval_verdict, normal_interval
from ..tasks import EpisodeRatio, get_task
from .results import (
    MAIN_VITER,
    RECOGNITION,
    SPLIT_ID,
    SPLIT_OOD,
    SPLIT_TITLE,
    SPLIT_VISUAL,
    VISUAL_METRIC,
    Point,
    Selection,
    checkpoint_label,
    equal_compute_steps,
    has_run,
    isnan,
    main_rl_run,
    matched_checkpoint,
    metric_of,
    metric_title,
    pct,
    pct_ci,
    pp,
    rl_runs,
    run_start,
    run_viter,
    seed_points,
    sft_start_runs,
    task_diagnostics,
    visual_title,
)

BINARY_METRICS = {"success_rate"}  # one 0/1 outcome per episode: McNemar applies
CLAIMS_COLUMNS = [
    "task",
    "claim",
    "metric",
    "comparison",
    "diff",
    "ci_low",
    "ci_high",
    "p_value",
    "units",
    "episodes",
    "verdict",
    "paper_direction",
    "test",
    "note",
]


# --------------------------------------------------------------------------- episodes, paired
# What the report asks of a task (tasks.base.Task), with what a task that does not say gets.
def task_ratios(task: str) -> dict[str, EpisodeRatio]:
    """The task's rate metrics besides success, as the episode tables record them."""
    return getattr(get_task(task), "episode_ratios", {})


def unit_of(record: dict[str, Any], task: str) -> Hashable:
    """The resampling unit of an episode: the task's (GP: the hand's multiset of ranks), else the row itself."""
    resampling_unit = getattr(get_task(task), "resampling_unit", None)
    unit = resampling_unit(record.get("row") or {}) if resampling_unit is not None else None
    return unit if unit is not None else ("row", str(record.get("id")))


def episode_ratios(record: dict[str, Any], ratios: dict[str, EpisodeRatio]) -> dict[str, tuple[float, float]]:
    """metric -> (numerator, denominator) of one episode, for success and each of the task's `ratios`; a rate over
    episodes is sum(num) / sum(den)."""
    attempts = record.get("attempts") or []
    counts = record.get("metrics") or {}
    n_attempts = float(record.get("num_attempts", len(attempts)) or 0)
    out = {"success_rate": (float(bool(record.get("success"))), 1.0)}
    if n_attempts > 0:
        episode_return = counts.get("return")
        if episode_return is None:
            episode_return = sum(float(a.get("reward") or 0.0) for a in attempts)
        out["mean_reward_per_attempt"] = (float(episode_return), n_attempts)
    for metric, ratio in ratios.items():
        if ratio.attempt_flag is not None:
            flags = [(a.get("info") or {}).get(ratio.attempt_flag) for a in attempts]
            flags = [f for f in flags if f is not None]
            if flags:
                out[metric] = (float(sum(map(bool, flags))), float(len(flags)))
        elif ratio.counts is not None:
            num, den = ratio.counts
            if isinstance(counts.get(num), (int, float)) and isinstance(counts.get(den), (int, float)):
                out[metric] = (float(counts[num]), float(counts[den]))
    share = counts.get(RECOGNITION)
    if RECOGNITION not in out and isinstance(share, (int, float)) and n_attempts > 0:
        # an episode table without attempt flags: the episode's own share of its attempts
        out[RECOGNITION] = (float(share) * n_attempts, n_attempts)
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
    labels: tuple[str, str] = ("", "")  # how the report names a and b

    @property
    def label(self) -> str:
        return f"{self.labels[0]} - {self.labels[1]} on {self.split}"


class PairedEvaluations:
    """The study's episode tables (read on demand) and the paired comparisons made from them."""

    def __init__(self, df, episode_files: dict[Path, Path] | None = None):
        """`episode_files`: eval file -> its episode table (default: beside it, `names.episodes_file`)."""
        self.eval_files = {
            (r["task"], int(r["seed"]), r["run"], int(r["step"]), r["split"]): Path(r["eval_file"])
            for r in (df.to_dict("records") if not df.empty else [])
        }
        tables = {Path(k): Path(v) for k, v in (episode_files or {}).items()}
        self.episode_files = {key: tables.get(f, episodes_file(f)) for key, f in self.eval_files.items()}
        self._episodes: dict[Path, dict[str, tuple[Hashable, dict]] | None] = {}
        self._comparisons: dict[tuple, Comparison] = {}
        self.facts = training_facts(df)

    def label(self, task: str, checkpoint: tuple[str, int]) -> str:
        return checkpoint_label(*checkpoint, *self.facts.get((task, checkpoint[0]), (None, None)))

    def episodes(self, key: tuple) -> dict[str, tuple[Hashable, dict]] | None:
        """row id -> (unit, metric ratios) of one evaluation; None when its episode table is missing."""
        path = self.episode_files[key]
        if path not in self._episodes:
            self._episodes[path] = _read_episodes(path, key[0]) if path.exists() else None
        return self._episodes[path]

    def units(self, task: str, split: str) -> tuple[int, int] | None:
        """(episodes, distinct units) of a split, from the first evaluation with an episode table."""
        for key in sorted(k for k in self.eval_files if k[0] == task and k[4] == split):
            table = self.episodes(key)
            if table:
                return len(table), len({unit for unit, _ in table.values()})
        return None

    def pooled_rate(
        self, task: str, run: str, step: int, split: str, metric: str
    ) -> tuple[float, float, float] | None:
        """(rate, 95% low, 95% high) of one checkpoint over the episodes of every seed that evaluated it:
        sum(num) / sum(den), its interval normal with the ratio estimator's standard error clustered by
        the task's unit. None when an episode table is missing or no episode records the metric."""
        keys = [k for k in self.eval_files if k[0] == task and k[2] == run and k[3] == step and k[4] == split]
        tables = [self.episodes(k) for k in keys]
        if not tables or any(t is None for t in tables):
            return None
        return clustered_ratio(unit_totals(tables, metric))

    def seeds(self, task: str) -> list[int]:
        """The training seeds with evaluations of `task`."""
        return sorted({k[1] for k in self.eval_files if k[0] == task})

    def compare(
        self, task: str, a: tuple[str, int], b: tuple[str, int], split: str, metric: str, seed: int | None = None
    ) -> Comparison:
        """A minus B paired over every seed that evaluated both (`seed`: over that seed's episodes alone)."""
        cache_key = (task, a, b, split, metric, seed)
        if cache_key not in self._comparisons:
            labels = (self.label(task, a), self.label(task, b))
            comparison = Comparison(task, metric, split, a, b, labels=labels)
            seeds = self.seeds(task) if seed is None else [seed]
            self._comparisons[cache_key] = self._compare(comparison, seeds)
        return self._comparisons[cache_key]

    def _compare(self, c: Comparison, seeds: list[int]) -> Comparison:
        keys = [((c.task, s, *c.a, c.split), (c.task, s, *c.b, c.split)) for s in seeds]
        keys = [(ka, kb) for ka, kb in keys if ka in self.eval_files and kb in self.eval_files]
        if not keys:
            c.note = f"no seed evaluated both {c.labels[0]} and {c.labels[1]} on {c.split}"
            return c
        missing = [str(self.episode_files[k]) for pair in keys for k in pair if self.episodes(k) is None]
        if missing:
            c.note = f"no episode table for {len(missing)} evaluation(s), e.g. {missing[0]}: rerun the evaluation"
            return c
        pairs = [p for ka, kb in keys for p in paired_episodes(self.episodes(ka), self.episodes(kb), c.metric)]
        if not pairs:
            c.note = f"no episodes of both checkpoints share a row id and record {c.metric}"
            return c
        c.result = compare_paired(cluster_totals(pairs), binary=c.metric in BINARY_METRICS)
        if isnan(c.result.diff):
            c.note, c.result = f"the episodes record no {c.metric}", None
        return c


def unit_totals(tables: list[dict[str, tuple[Hashable, dict]]], metric: str) -> list[list[float]]:
    """[numerator, denominator] of `metric` summed per resampling unit over the episodes of `tables`."""
    totals: dict[Hashable, list[float]] = {}
    for table in tables:
        for unit, ratios in table.values():
            if metric in ratios:
                acc = totals.setdefault(unit, [0.0, 0.0])
                acc[0] += ratios[metric][0]
                acc[1] += ratios[metric][1]
    return list(totals.values())


def training_facts(df) -> dict[tuple[str, str], tuple[int, str | None]]:
    """(task, run) -> (the VIter its RL trained with, what it started from), as its evaluations record them."""
    return {
        (r["task"], r["run"]): (
            int(r["train_viter"]),
            r.get("train_start") if isinstance(r.get("train_start"), str) else None,
        )
        for r in (df.to_dict("records") if not df.empty and "train_viter" in df.columns else [])
        if r["run"] != NOSFT_RUN and not isnan(r["train_viter"])
    }


def clustered_ratio(totals: list[list[float]]) -> tuple[float, float, float] | None:
    """(rate, 95% low, 95% high) of the ratio estimator sum(num) / sum(den) over units' (num, den) totals,
    its standard error clustered by unit; None when nothing is counted."""
    den = sum(d for _, d in totals)
    if den <= 0:
        return None
    rate = sum(n for n, _ in totals) / den
    units = len(totals)
    if units < 2:
        return rate, float("nan"), float("nan")
    se = math.sqrt(units / (units - 1) * sum((n - rate * d) ** 2 for n, d in totals)) / den
    return (rate, *normal_interval(rate, se))


def paired_episodes(table_a: dict, table_b: dict, metric: str) -> list[tuple]:
    """(unit, num a, den a, num b, den b) of the rows both episode tables share that record `metric`."""
    pairs = []
    for row_id, (unit, ratios_a) in table_a.items():
        ratios_b = table_b.get(row_id, (None, {}))[1]
        if metric in ratios_a and metric in ratios_b:
            pairs.append((unit, *ratios_a[metric], *ratios_b[metric]))
    return pairs


def _read_episodes(path: Path, task: str) -> dict[str, tuple[Hashable, dict]]:
    """row id -> (resampling unit, metric ratios) of an episode table of `task`."""
    ratios = task_ratios(task)
    return {str(r.get("id", r.get("index"))): (unit_of(r, task), episode_ratios(r, ratios)) for r in read_jsonl(path)}


# --------------------------------------------------------------------------- claims
@dataclass
class MetricTest:
    """One paired comparison behind a claim, on one metric, with the paper's direction (+1: A above B)."""

    metric: str
    statement: str
    paper_sign: int
    comparison: Comparison | None = None
    missing: str = ""
    split: str = ""
    metric_title: str = ""  # the metric's name where the task names it its own way (V-IRL-VL: route success)

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


def diff_ci(c: Comparison | None) -> str:
    """ "-25.0 [-31.2, -18.8]": a paired difference in points with its 95% interval."""
    if c is None or c.result is None:
        return "n/a"
    r = c.result
    return f"{pp(r.diff)} [{pp(r.ci_low)}, {pp(r.ci_high)}]"


def format_p(p: float) -> str:
    if isnan(p):
        return "n/a"
    return "< 0.001" if p < 0.001 else f"{p:.3g}"


class ClaimBuilder:
    """The comparisons of one task at its equal-compute checkpoints."""

    def __init__(self, points, paired: PairedEvaluations, task: str):
        self.points, self.paired, self.task = points, paired, task
        self.metric = metric_of(task)
        self.rls = rl_runs(points, task)
        self.main = main_rl_run(points, task)
        self.viter_runs = {run_viter(points, task, run): run for run in self.rls}  # VIter -> RL-from-init run
        # SFT against the main RL arm: the budget is theirs, so a cheaper RL arm (VIter 1) does not pull the
        # main arm back to an early checkpoint; the VIter ablation has a budget of its own (`at_viter`)
        self.sel = equal_compute_steps(points, task, ["sft"] + self.rls, ["sft", self.main] if self.main else None)
        self.viter_sel = equal_compute_steps(points, task, self.rls)
        # SFT on varied rules stays out of the selection: it sits beside the SFT checkpoint the claims use
        self.varied = matched_checkpoint(points, task, SFT_VARIED_RUN, self.at(SFT_RUN), self.sel.budget)

    def at(self, run: str | None) -> tuple[str, int] | None:
        """The checkpoint a claim uses: step 0 of init / base; for SFT on varied rules, its checkpoint at the
        step of the SFT checkpoint (`results.matched_checkpoint`); else the run's equal-compute step."""
        if run in (INIT_RUN, BASE_RUN):
            return run, 0
        if run == SFT_VARIED_RUN:
            return self.varied
        if run is None or run not in self.sel.steps:
            return None
        return run, self.sel.steps[run]

    def at_viter(self, run: str) -> tuple[str, int] | None:
        """The checkpoint of an RL-from-init run in the VIter ablation: equal compute among those runs."""
        return (run, self.viter_sel.steps[run]) if run in self.viter_sel.steps else None

    def label(self, checkpoint: tuple[str, int]) -> str:
        run = checkpoint[0]
        return checkpoint_label(
            *checkpoint, run_viter(self.points, self.task, run), run_start(self.points, self.task, run)
        )

    def point(self, checkpoint: tuple[str, int] | None, split: str) -> Point | None:
        return None if checkpoint is None else self.points.get((self.task, *checkpoint, split))

    def steps(self, run: str, split: str) -> set[int]:
        """The steps of `run` evaluated on `split`."""
        return {p.step for p in self.points.values() if (p.task, p.run, p.split) == (self.task, run, split)}

    def on(self, points, metric: str) -> ClaimBuilder:
        """The same checkpoints (equal-compute selection, main RL run), read from other points: another metric."""
        other = copy.copy(self)
        other.points, other.metric = points, metric
        return other

    def test(self, metric: str, statement: str, sign: int, a, b, split: str, missing: str) -> MetricTest:
        if self.point(a, split) is None or self.point(b, split) is None:
            return MetricTest(metric, statement, sign, missing=missing, split=split)
        return MetricTest(metric, statement, sign, self.paired.compare(self.task, a, b, split, metric), split=split)

    def change(self, a, b, split: str) -> str:
        """ "init 30.0% [..] -> SFT step 10 (1.5 GFLOPs) 5.0% [..]"."""
        pa, pb = self.point(a, split), self.point(b, split)
        if pa is None or pb is None:
            return ""
        return f"{self.label(b)} {pct_ci(pb)} -> {self.label(a)} ({pa.gflops:.4g} GFLOPs) {pct_ci(pa)}"


def _raises(subject: str, versus: str):
    """A diagnostic's statement in the paper's direction: "SFT raises OOD rule memorisation vs init"."""
    return lambda sign, title: f"{subject} {'raises' if sign > 0 else 'lowers'} OOD {title} {versus}"


def _rl_versus_sft(sign: int, title: str) -> str:
    return f"RL {'above' if sign > 0 else 'below'} SFT on OOD {title} at equal compute"


NO_PAPER_NUMBER = "no paper number for this task"
PAPER_ARM = {"init": "init", "sft": "SFT", "rl": "RL"}  # the paper's checkpoints, as the claims name them


def _paper_change(numbers: dict | None, x: str, y: str, after: str = "") -> str:
    """The paper's change from checkpoint x to y: "init -> SFT: 30.0% -> 5.0% (-25.0 points)"."""
    if not numbers:
        return NO_PAPER_NUMBER
    change = f"{numbers[x]:.1f}% -> {numbers[y]:.1f}% ({numbers[y] - numbers[x]:+.1f} points)"
    return f"{PAPER_ARM[x]} -> {PAPER_ARM[y]}: {change}{after}"


def _paper_rl_versus_sft(numbers: dict | None) -> str:
    """The paper's RL and SFT scores side by side: "RL 50.0% vs SFT 5.0% (+45.0 points)"."""
    if not numbers:
        return NO_PAPER_NUMBER
    return f"RL {numbers['rl']:.1f}% vs SFT {numbers['sft']:.1f}% ({numbers['rl'] - numbers['sft']:+.1f} points)"


def _one_test_claim(
    b: ClaimBuilder, key: str, statement: str, paper: str, sign: int, a, versus, split: str, missing: str
) -> Claim:
    """A claim tested on the builder's metric alone: checkpoint `a` minus `versus` on `split`, in the
    paper's direction `sign`."""
    c = Claim(key, statement, paper=paper, ours=b.change(a, versus, split))
    c.tests.append(b.test(b.metric, statement, sign, a, versus, split, missing))
    return c


def _with_diagnostics(
    cb: ClaimBuilder, claim: Claim, diagnostics: Iterable[str], sign: int, phrase, a, b, missing: str
) -> Claim:
    """The claim with a rule-OOD test per diagnostic, each in its own direction (the task's rule_ood_diagnostics):
    they show why the OOD score moved."""
    for name in diagnostics:
        d_sign = sign * task_diagnostics(cb.task)[name]
        statement = phrase(d_sign, metric_title(name, cb.task))
        claim.tests.append(cb.test(name, statement, d_sign, a, b, SPLIT_OOD, missing))
    return claim


def evaluate_claims(
    points,
    paired: PairedEvaluations,
    task: str,
    paper: dict[str, Any],
    diagnostics: Iterable[str] = (),
    visual_points=None,
    recognition_points=None,
) -> tuple[list[Claim], Selection, dict[str, Any]]:
    """The claims of the study for one task, each a paired comparison (plus rule-OOD diagnostics for
    (ii)-(iv)): (i)-(vii), then (viii) where RL started from SFT checkpoints (`_restore_claim`) and (ix)-(x)
    where the study has SFT on varied rules (`_varied_claims`); for an image task given `visual_points` (the
    visual-OOD score of every checkpoint) also the visual claims (v1)-(v5), see `visual_claims`. Returns also
    the equal-compute selection and what the tables and figures reuse."""
    rule = (paper.get("rule_ood") or {}).get(task)
    ablation = (paper.get("verification_ablation") or {}).get(task)
    nosft_paper = (paper.get("rl_without_sft") or {}).get(task)
    cb = ClaimBuilder(points, paired, task)
    init, rl = cb.at(INIT_RUN), cb.at(cb.main)
    claims = [_id_gain_claim(cb, "i", "SFT", cb.at(SFT_RUN), init, "shown in the paper's Figure 5 (ID curves)")]
    claims += _rule_ood_claims(cb, rule, diagnostics)
    # each RL run's OOD gain over init, by VIter: claim (v) and Figure 10
    gains = {
        run_viter(points, task, run): cb.test(cb.metric, "", +1, cb.at_viter(run), init, SPLIT_OOD, "")
        for run in cb.rls
        if cb.point(cb.at_viter(run), SPLIT_OOD) is not None
    }
    claims.append(_viter_claim(cb, gains, ablation))
    claims.append(_nosft_claim(cb, metric_title(cb.metric, cb.task), nosft_paper))
    paper_rl_id = "shown in the paper's Figure 5: RL's ID curves rise as well as its OOD ones"
    claims.append(_id_gain_claim(cb, "vii", "RL", rl, init, paper_rl_id))
    claims += _restore_claim(cb, diagnostics)
    claims += _varied_claims(cb, diagnostics)
    context = {"main_rl": cb.main, "gains": gains, "rule": rule, "ablation": ablation, "builder": cb}
    if visual_points is not None:
        vb = cb.on(visual_points, VISUAL_METRIC)
        rb = cb.on(recognition_points, RECOGNITION) if recognition_points is not None else None
        claims += visual_claims(vb, rb, paper)
        context.update(visual=(paper.get("visual_ood") or {}).get(task), visual_builder=vb, recognition_builder=rb)
    return claims, cb.sel, context


PAPER_RESTORE = (
    "arXiv 2509.12235 (GeneralPoints, Llama-3.2-11B and Qwen2.5-7B): OOD accuracy peaks early in SFT and "
    "declines; RL started from a window of SFT checkpoints restores what SFT lost"
)


def _restore_claim(cb: ClaimBuilder, diagnostics: Iterable[str]) -> list[Claim]:
    """(viii), when the study runs RL from SFT checkpoints (rl.starts): RL from the latest such checkpoint
    (its last evaluated step; the paper's VIter where there is a choice) minus that checkpoint, rule OOD."""
    starts = sft_start_runs(cb.points, cb.task)
    if not starts:
        return []
    step = max(starts.values())
    viters = {run: run_viter(cb.points, cb.task, run) or 0 for run, k in starts.items() if k == step}
    run = next((r for r, v in viters.items() if v == MAIN_VITER), max(viters, key=viters.get))
    steps = cb.steps(run, SPLIT_OOD)
    rl, sft = ((run, max(steps)) if steps else None), (SFT_RUN, step)
    title = metric_title(cb.metric, cb.task)
    missing = "needs rule-OOD evaluations of an RL run from an SFT checkpoint and of that checkpoint"
    c = _one_test_claim(
        cb, "viii", f"RL restores rule-OOD {title} lost by SFT", PAPER_RESTORE, +1, rl, sft, SPLIT_OOD, missing
    )
    return [_with_diagnostics(cb, c, diagnostics, +1, _raises("RL from SFT", "vs its SFT start"), rl, sft, missing)]


PAPER_VARIED = (
    "arXiv 2510.00237 (GeneralPoints and Sokoban): SFT on varied prompts and rule mappings matches or beats RL "
    "out of distribution"
)


def _varied_claims(cb: ClaimBuilder, diagnostics: Iterable[str]) -> list[Claim]:
    """(ix) and (x), when the study has evaluations of SFT on varied rules (the sft-varied run), on rule OOD
    with the rule-OOD diagnostics: (ix) its checkpoint at the SFT checkpoint's step (`ClaimBuilder.at`) minus
    that SFT checkpoint; (x) the same checkpoint minus the main RL arm's claim checkpoint.

    Both are tested in the + direction with `interval_verdict`: held when the paired interval lies above 0,
    did not hold when below. A "reaches RL" claim whose interval spans 0 is reported inconclusive, not held:
    an interval around 0 does not show the two equal."""
    if not has_run(cb.points, cb.task, SFT_VARIED_RUN):
        return []
    varied, sft, rl = cb.at(SFT_VARIED_RUN), cb.at(SFT_RUN), cb.at(cb.main)
    title = metric_title(cb.metric, cb.task)

    def versus_rl(sign: int, what: str) -> str:
        return f"varied-rule SFT {'above' if sign > 0 else 'below'} RL on OOD {what} at equal compute"

    comparisons = (
        ("ix", f"varied-rule SFT raises rule-OOD {title} over SFT", sft, _raises("varied-rule SFT", "vs SFT"), "SFT"),
        ("x", f"varied-rule SFT reaches RL on rule-OOD {title} at equal compute", rl, versus_rl, "RL"),
    )
    claims = []
    for key, statement, b, phrase, needs in comparisons:
        missing = f"needs varied-rule SFT and {needs} evaluations on {SPLIT_OOD}"
        c = _one_test_claim(cb, key, statement, PAPER_VARIED, +1, varied, b, SPLIT_OOD, missing)
        claims.append(_with_diagnostics(cb, c, diagnostics, +1, phrase, varied, b, missing))
    return claims


def _id_gain_claim(cb: ClaimBuilder, key: str, arm: str, checkpoint, init, paper: str) -> Claim:
    """ "<arm> raises ID <metric> over init", paired on eval_id."""
    statement = f"{arm} raises ID {metric_title(cb.metric, cb.task)} over init"
    missing = f"needs init and {arm} evaluations on {SPLIT_ID}"
    return _one_test_claim(cb, key, statement, paper, +1, checkpoint, init, SPLIT_ID, missing)


def _rule_ood_claims(cb: ClaimBuilder, rule: dict | None, diagnostics: Iterable[str]) -> list[Claim]:
    """(ii) SFT lowers the rule-OOD score vs init, (iii) RL raises it, (iv) RL beats SFT on it at equal
    compute; each with the rule-OOD diagnostics the task records (`diagnostics_of`)."""
    init, sft, rl = cb.at(INIT_RUN), cb.at(SFT_RUN), cb.at(cb.main)
    score = f"OOD {metric_title(cb.metric, cb.task)}"
    # key, statement, the paper's numbers, direction, checkpoint a - b, whose evaluations it needs
    comparisons = (
        ("ii", f"SFT lowers {score} vs init", _paper_change(rule, "init", "sft"), -1, sft, init, "init and SFT"),
        ("iii", f"RL raises {score} vs init", _paper_change(rule, "init", "rl"), +1, rl, init, "init and RL"),
        ("iv", f"RL beats SFT on {score} at equal compute", _paper_rl_versus_sft(rule), +1, rl, sft, "SFT and RL"),
    )
    phrases = (_raises("SFT", "vs init"), _raises("RL", "vs init"), _rl_versus_sft)  # the diagnostics' statements
    claims = []
    for (key, statement, paper, sign, a, b, needs), phrase in zip(comparisons, phrases):
        missing = f"needs {needs} evaluations on {SPLIT_OOD}"
        claim = _one_test_claim(cb, key, statement, paper, sign, a, b, SPLIT_OOD, missing)
        claims.append(_with_diagnostics(cb, claim, diagnostics, sign, phrase, a, b, missing))
    return claims


def visual_claims(vb: ClaimBuilder, rb: ClaimBuilder | None, paper: dict[str, Any]) -> list[Claim]:
    """The visual-OOD claims of an image task (paper Figures 7 and 8), at the checkpoints of (i)-(iv):

    (v1) RL raises the visual-OOD score vs init; (v2) SFT lowers it; (v3) RL beats SFT on it at equal
    compute (with recognition accuracy as a diagnostic); and where the task records recognition
    accuracy (`rb`: GP-VL), (v4) RL raises it and (v5) SFT lowers it, on the visual-OOD split and
    then the ID split. `vb`: the visual-OOD score's builder; `rb`: recognition accuracy's."""
    vis = (paper.get("visual_ood") or {}).get(vb.task)
    title = visual_title(vb.task)
    init, sft, rl = vb.at(INIT_RUN), vb.at(SFT_RUN), vb.at(vb.main)
    best = f"; the previous best: {vis['previous_best']:.1f}%" if vis and "previous_best" in vis else ""
    score = f"visual-OOD {title}"
    # key, statement, the paper's numbers, direction, checkpoint a - b, whose evaluations it needs
    comparisons = (
        ("v1", f"RL raises {score} vs init", _paper_change(vis, "init", "rl", best), +1, rl, init, "init and RL"),
        ("v2", f"SFT lowers {score} vs init", _paper_change(vis, "init", "sft"), -1, sft, init, "init and SFT"),
        ("v3", f"RL beats SFT on {score} at equal compute", _paper_rl_versus_sft(vis), +1, rl, sft, "SFT and RL"),
    )
    claims = []
    for key, statement, paper_says, sign, a, b, needs in comparisons:
        missing = f"needs {needs} evaluations on {SPLIT_VISUAL}"
        c = _one_test_claim(vb, key, statement, paper_says, sign, a, b, SPLIT_VISUAL, missing)
        c.tests[0].metric_title = title  # V-IRL-VL names its visual-OOD score its own way (route success)
        claims.append(c)
    if rb is None:
        return claims
    # recognition accuracy: a diagnostic of (v3), then claims (v4)-(v5) of its own
    statement = f"RL above SFT on visual-OOD {metric_title(RECOGNITION, rb.task)} at equal compute"
    missing = f"needs SFT and RL evaluations on {SPLIT_VISUAL}"
    claims[-1].tests.append(rb.test(RECOGNITION, statement, +1, rl, sft, SPLIT_VISUAL, missing))
    return claims + _recognition_claims(rb, init, sft, rl)


def _recognition_claims(rb: ClaimBuilder, init, sft, rl) -> list[Claim]:
    """(v4) RL raises recognition accuracy vs init, (v5) SFT lowers it: on the visual-OOD split, then ID."""
    figure8 = "shown in the paper's Figure 8 (plotted only): recognition rises with RL compute and falls with SFT's"
    recognition = metric_title(RECOGNITION, rb.task)
    claims = []
    for key, subject, verb, sign, run in (("v4", "RL", "raises", +1, rl), ("v5", "SFT", "lowers", -1, sft)):
        c = Claim(
            key,
            f"{subject} {verb} {recognition} vs init (visual OOD, then ID)",
            paper=figure8,
            ours=rb.change(run, init, SPLIT_VISUAL),
        )
        for split in (SPLIT_VISUAL, SPLIT_ID):
            statement = f"{subject} {verb} {SPLIT_TITLE[split]} {recognition} vs init"
            missing = f"needs init and {subject} evaluations on {split} that record {RECOGNITION}"
            c.tests.append(rb.test(RECOGNITION, statement, sign, run, init, split, missing))
        claims.append(c)
    return claims


def _viter_claim(b: ClaimBuilder, gains: dict[int, MetricTest], ablation: dict | None) -> Claim:
    """(v) the largest VIter's OOD score minus the smallest's, paired: their common init cancels."""
    c = Claim(
        "v",
        "more verification iterations (VIter) give more OOD gain",
        paper=("OOD gain " + ", ".join(f"VIter {k.split('_')[1]}: {v:+.2f}" for k, v in ablation.items()) + " points")
        if ablation
        else "no paper ablation for this task",
    )
    tested = sorted(gains)
    if len(tested) < 2:
        c.tests.append(
            MetricTest(
                b.metric, c.statement, +1, missing="needs OOD evaluations of at least two RL runs with different VIter"
            )
        )
        return c
    lo_run, hi_run = b.viter_runs[tested[0]], b.viter_runs[tested[-1]]
    lo, hi = b.at_viter(lo_run), b.at_viter(hi_run)
    c.tests.append(b.test(b.metric, c.statement, +1, hi, lo, SPLIT_OOD, ""))
    c.ours = (
        "paired OOD gain over init: "
        + ", ".join(f"VIter {v}: {diff_ci(gains[v].comparison)}" for v in tested)
        + f" points; compared at equal compute: {b.label(hi)} - {b.label(lo)}"
    )
    # a larger VIter costs more per step, so at equal compute it has taken fewer updates: the same comparison
    # at the last step both arms evaluated separates the updates from their cost
    step = max(b.steps(lo_run, SPLIT_OOD) & b.steps(hi_run, SPLIT_OOD), default=None)
    hi_s, lo_s = (hi_run, step), (lo_run, step)
    if step is not None and (hi_s, lo_s) != (hi, lo):
        c.tests.append(b.test(b.metric, f"{c.statement}, at equal RL steps", +1, hi_s, lo_s, SPLIT_OOD, ""))
        c.ours += f"; at equal steps: {b.label(hi_s)} - {b.label(lo_s)}"
    return c


def _nosft_claim(b: ClaimBuilder, title: str, nosft_paper: dict | None) -> Claim:
    """(vi) the best rl-nosft checkpoint on ID, paired against the main RL-from-init checkpoint."""
    c = Claim(
        "vi",
        f"RL without SFT fails: its best ID {title} stays below RL from init",
        paper=(
            f"at most {nosft_paper['episode_success_max']:.1f}% episode success throughout (GP-L)"
            if nosft_paper
            else "about 0% throughout (shown for GP-L)"
        ),
    )
    nosft = [p for p in b.points.values() if p.task == b.task and p.run == NOSFT_RUN and p.step > 0]
    best = max((p for p in nosft if p.split == SPLIT_ID), key=lambda p: p.value, default=None)
    main = b.at(b.main)
    missing = "needs ID evaluations of the rl-nosft run and of the main RL-from-init run"
    a = (NOSFT_RUN, best.step) if best else None
    c.tests.append(b.test(b.metric, c.statement, -1, a, main, SPLIT_ID, missing))
    if best is not None:
        fmt = [p.extra["format_error_rate"] for p in nosft if "format_error_rate" in p.extra]
        c.ours = (
            f"best checkpoint ({b.label(a)}, ID): {pct_ci(best)}"
            + (f"; {b.label(main)}: {pct_ci(b.point(main, SPLIT_ID))}" if main else "")
            + (f"; format error rate {pct(min(fmt))}-{pct(max(fmt))} across its checkpoints" if fmt else "")
        )
    return c


def claims_rows(task: str, claims: list[Claim]) -> list[dict[str, Any]]:
    """claims.csv rows: one per claim x metric."""
    rows = []
    for claim in claims:
        for t in claim.tests:
            r = t.comparison.result if t.comparison else None
            rows.append(
                {
                    "task": task,
                    "claim": claim.key,
                    "metric": t.metric,
                    "comparison": t.comparison.label if t.comparison else "",
                    "diff": r.diff if r else None,
                    "ci_low": r.ci_low if r else None,
                    "ci_high": r.ci_high if r else None,
                    "p_value": r.p_value if r else None,
                    "units": r.units if r else None,
                    "episodes": r.episodes if r else None,
                    "verdict": t.verdict,
                    "paper_direction": "+" if t.paper_sign > 0 else "-",
                    "test": r.test if r else "",
                    "note": t.note,
                }
            )
    return rows


def write_claims_csv(rows: list[dict[str, Any]], path: Path) -> Path:
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=CLAIMS_COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    return path


def recognition_points(df, paired: PairedEvaluations, tasks: Iterable[str]) -> dict[tuple[str, str, int, str], Point]:
    """Recognition accuracy of every checkpoint and split of `tasks` that records it (GP-VL): the share of
    attempts pooled over every seed's episodes, with the unit-clustered 95% interval of `pooled_rate`;
    where an episode table is missing, the seed mean of the evaluation files, without an interval."""
    tasks = list(tasks)
    if df.empty or RECOGNITION not in df.columns or not tasks:
        return {}
    points = seed_points(df[df["task"].isin(tasks)], dict.fromkeys(tasks, RECOGNITION), fallback=False)
    for key, p in points.items():
        pooled = paired.pooled_rate(*key, RECOGNITION)
        if pooled is not None:
            p.value, p.ci_low, p.ci_high = pooled
    return points


def diagnostics_of(df, task: str) -> list[str]:
    """The task's rule-OOD diagnostics that its evaluations record (GP: rule memorisation, number accuracy)."""
    if df.empty:
        return []
    ood = df[(df["task"] == task) & (df["split"] == SPLIT_OOD)]
    return [m for m in task_diagnostics(task) if m in ood.columns and ood[m].notna().any()]
