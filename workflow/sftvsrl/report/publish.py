"""The study's answer in MLflow, where a researcher opens it (the report stage calls `publish`).

- The parent run: the report's files as artifacts; every checkpoint's score as the metric
  `score/<task>/<run>/<split>` with the training step as its step (so the parent's charts are the
  curves too); every claim's paired difference and interval (points) and p-value as metrics
  `claim/<task>/<key>/<metric>/...`, its verdict as the tag `sftvsrl.claim.<task>.<key>.<metric>`;
  and summary.md's claims tables as the run's description (`mlflow.note.content`, rendered as Markdown).
- Every training run (SFT, RL, the init's warm-up): its evaluations as metric histories,
  `eval/<split>/<metric>` against the training step and `eval_by_mflops/<split>/<metric>` against
  training compute (step = MFLOPs, rounded), so MLflow's chart view draws SFT and RL as curves in one
  chart per metric. An arm's curve starts at the checkpoint it started from (step 0). The task's score on
  each split is also `0_sft_vs_rl/<split>_<metric>_by_step` and `..._by_mflops`: one chart section, named
  first, that holds SFT against RL on every split, against the step and against compute, on one screen.
- The experiment's description points to the summary.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any

from ..names import SFT_RUN, SFT_VARIED_RUN, sft_start_step
from ..tracking import (
    TAG_ROLE,
    TAG_RUN,
    TAG_SEED,
    TAG_STAGE,
    TAG_STUDY,
    TAG_TASK,
    close_study_run,
    ensure_study_run,
    experiment_id,
    retry,
    study_client,
)
from .results import metric_of, task_diagnostics

NOTE_TAG = "mlflow.note.content"
CLAIM_TAG = "sftvsrl.claim"
# the report's run names -> the training stage that made them ("rl-*": stage rl, tagged with the run); SFT on
# varied rules is an SFT job that logs its own stage
TRAINING_STAGES = {"init": "init", "sft": "sft", SFT_VARIED_RUN: "sft-varied"}
GENERIC_CURVES = ("success_rate", "first_attempt_success_rate")  # besides each task's score and diagnostics
# MLflow's chart view groups metrics into sections by the key before its last "/", sorted by name: a leading digit
# puts this one ahead of the trainers' own (clip_ratio/..., completions/...)
CURVES_SECTION = "0_sft_vs_rl"
BATCH = 900  # MLflow takes at most 1000 metrics per log_batch call


def publish(
    config: dict[str, Any], df, points: dict, rows: list[dict[str, Any]], outputs: dict[str, Path], description: str
) -> str:
    """Log the report to the study's MLflow runs (see module docstring), `description` as the parent run's;
    returns the parent run's id."""
    from mlflow.entities import Metric, RunTag

    client = study_client(config)
    run_id = ensure_study_run(config)
    for path in outputs.values():
        retry(
            client.log_artifact,
            run_id,
            str(path),
            artifact_path="report/figures" if path.suffix == ".png" else "report",
        )
    metrics = [m for p in points.values() for m in _point_metrics(p, Metric)] + _claim_metrics(rows, Metric)
    tags = [RunTag(key, str(r["verdict"])) for key, r in zip(claim_keys(rows, CLAIM_TAG + "."), rows)]
    tags.append(RunTag(NOTE_TAG, description))
    _log(client, run_id, metrics, tags)
    for run, history in _training_histories(df).items():
        target = _training_run(client, config, *run)
        if target is not None:
            _log(client, target, [Metric(k, v, 0, s) for k, v, s in history], [])
    close_study_run(config)  # the study's run spans the study: open since the first job, closed by its report
    retry(
        client.set_experiment_tag,
        experiment_id(config, client),
        NOTE_TAG,
        "SFT vs RL studies (Chu et al. 2025). Each study is a parent run; its description holds the claims and "
        "verdicts, results/summary.md the full summary. Training runs carry their evaluations as curves: the "
        "task's score in the chart section `0_sft_vs_rl` (`<split>_<score>_by_step`, `..._by_mflops`: MLflow's axis "
        "says Step, the values are MFLOPs), every metric as `eval/<split>/<metric>` against the step and "
        "`eval_by_mflops/<split>/<metric>` against compute.",
    )
    return run_id


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def claim_keys(rows: list[dict[str, Any]], prefix: str) -> list[str]:
    """A key per claims row, `<prefix><task>.<claim>.<metric>`; a claim's later test of the same metric (claim (v)
    at equal steps, after equal compute) is numbered from 2, so no verdict overwrites another."""
    seen: Counter[str] = Counter()
    keys = []
    for row in rows:
        key = f"{prefix}{row['task']}.{row['claim']}.{row['metric']}".replace(" ", "_")
        seen[key] += 1
        keys.append(key if seen[key] == 1 else f"{key}.{seen[key]}")
    return keys


def _point_metrics(p, Metric) -> list:
    if not _finite(p.value):
        return []
    return [Metric(f"score/{p.task}/{p.run}/{p.split}", p.value, 0, p.step)]


def _claim_metrics(rows: list[dict[str, Any]], Metric) -> list:
    out = []
    for key, r in zip(claim_keys(rows, "claim/"), rows):
        key = key.replace(".", "/")
        for name, value, scale in (("diff_points", r["diff"], 100), ("ci_low_points", r["ci_low"], 100),
                                   ("ci_high_points", r["ci_high"], 100), ("p_value", r["p_value"], 1)):  # fmt: skip
            if _finite(value):  # rounded: 100 * 0.44 would show as 44.00000000000001
                out.append(Metric(f"{key}/{name}", round(scale * value, 6), 0, 0))
    return out


def _training_histories(df) -> dict[tuple[str, int, str], list[tuple[str, float, int]]]:
    """(task, seed, run) -> (metric, value, step) of its evaluations, against the step and against MFLOPs;
    an arm from init also gets init's evaluation at step 0 (RL without SFT: the base model's, if evaluated;
    RL from an SFT checkpoint: that checkpoint's)."""
    if df.empty:
        return {}
    out = {}
    for (task, seed, run), g in df.groupby(["task", "seed", "run"]):
        if run in ("init", "base"):
            continue
        start = "base" if run.endswith("nosft") else "init"
        same = (df.task == task) & (df.seed == seed)
        sft_step = sft_start_step(g["train_start"].iloc[0]) if "train_start" in g.columns else None
        first = same & (df.run == start) if sft_step is None else same & (df.run == SFT_RUN) & (df.step == sft_step)
        rows = [dict(r, step=0) for r in df[first].to_dict("records")]
        metrics = tuple(dict.fromkeys([*GENERIC_CURVES, metric_of(task), *task_diagnostics(task)]))
        points = [p for r in rows + g.to_dict("records") for p in _curve_points(r, metrics, metric_of(task))]
        out[(task, int(seed), run)] = points
    return out


def _curve_points(row: dict[str, Any], metrics: tuple[str, ...], score: str) -> list[tuple[str, float, int]]:
    """One evaluation's points: each metric against the step and, where compute is known, against MFLOPs
    (MLflow steps are integers; MFLOPs keep a tiny test model's checkpoints apart); the task's `score` also
    in the first chart section (`CURVES_SECTION`)."""
    points = []
    by_mflops = round(row["gflops"] * 1000) if _finite(row.get("gflops")) else None
    for metric in metrics:
        if metric not in row or not _finite(row[metric]):
            continue
        value = float(row[metric])
        keys = [
            (f"eval/{row['split']}/{metric}", int(row["step"])),
            (f"eval_by_mflops/{row['split']}/{metric}", by_mflops),
        ]
        if metric == score:
            curve = f"{CURVES_SECTION}/{row['split'].removeprefix('eval_')}_{metric}"
            keys += [(f"{curve}_by_step", int(row["step"])), (f"{curve}_by_mflops", by_mflops)]
        points += [(key, value, step) for key, step in keys if step is not None]
    return points


def _training_run(client, config: dict[str, Any], task: str, seed: int, run: str) -> str | None:
    """The newest training run of the study that made `run` (a resumed job made a new one)."""
    stage = TRAINING_STAGES.get(run, "rl")
    flt = (
        f"tags.`{TAG_STUDY}` = '{config['study']}' and tags.`{TAG_ROLE}` = 'job' and tags.`{TAG_STAGE}` = '{stage}' "
        f"and tags.`{TAG_TASK}` = '{task}' and tags.`{TAG_SEED}` = '{seed}'"
    )
    if stage == "rl":
        flt += f" and tags.`{TAG_RUN}` = '{run}'"
    runs = retry(client.search_runs, [experiment_id(config, client)], filter_string=flt, max_results=50)
    return max(runs, key=lambda r: r.info.start_time or 0).info.run_id if runs else None


def _log(client, run_id: str, metrics: list, tags: list) -> None:
    for i in range(0, max(len(metrics), 1), BATCH):
        retry(client.log_batch, run_id, metrics=metrics[i : i + BATCH], tags=tags if i == 0 else [])
