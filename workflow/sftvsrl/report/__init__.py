"""Aggregate the evaluations of a study into tables, figures and a claim-by-claim summary.

Modules: `results` (the eval files as a table, seed-mean points, equal compute), `claims`
(paired comparisons and the claims built from them), `figures`, `markdown` (summary.md);
this one runs them (`build_report`) and reads the paper's numbers (`load_paper`).

Inputs are the eval JSON files written by `sftvsrl.evaluate` (one per task x seed x run x
checkpoint x split) and, beside each, its episode table `<split>.episodes.jsonl`. Outputs, in
`out_dir` (the study's `results/`): `summary.csv`, `claims.csv`, the figures in `figures/` and
`summary.md`. The paper's numbers come from one file, config/paper_results.yaml (the rule passes
its path).

Before editing: the report's conventions (score, intervals, paired comparison, verdict, compute,
equal compute, the RL run for the claims, MLflow) are stated once, in the design notes, beside
what each output file holds.

Details: docs/code-notes.md#workflowsftvsrlreport__init__py
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import section_with_defaults
from ..names import FIGURES, sft_start_step
from .claims import (
    CLAIMS_COLUMNS,
    PairedEvaluations,
    claims_rows,
    diagnostics_of,
    evaluate_claims,
    recognition_points,
    write_claims_csv,
)
from .figures import (
    figure_id_ood_vs_compute,
    figure_ood_change,
    figure_recognition_vs_compute,
    figure_rl_from_sft,
    figure_rl_nosft,
    figure_success_vs_step,
    figure_viter_ablation,
)
from .markdown import VERDICTS_HEADER, summary_markdown, verdict_rows, verdicts_markdown, write_table_csv
from .publish import publish
from .results import VISUAL_METRIC, equal_compute_steps, is_vl, load_evals, seed_points, task_title, tasks_for

log = logging.getLogger(__name__)

# A caller that names no paper file gets this one, relative to the project root (every job's working directory).
DEFAULT_PAPER_FILE = Path("config") / "paper_results.yaml"

__all__ = [
    "CLAIMS_COLUMNS",
    "DEFAULT_PAPER_FILE",
    "build_report",
    "equal_compute_steps",
    "load_evals",
    "load_paper",
    "seed_points",
    "task_title",
]


def load_paper(paper_file: str | Path) -> dict[str, Any]:
    """The paper's numbers (config/paper_results.yaml: its source, model, and numbers per figure)."""
    import yaml

    path = Path(paper_file)
    if not path.exists():
        raise FileNotFoundError(
            f"paper results file not found: {path} (pass its path, e.g. --paper {DEFAULT_PAPER_FILE})"
        )
    return yaml.safe_load(path.read_text())


@dataclass
class ReportPaths:
    """Where the report writes: the tables, summary.md, its claims tables (`verdicts_csv`) and one PNG per figure
    of `names.FIGURES`."""

    summary_csv: Path
    claims_csv: Path
    summary_md: Path
    verdicts_csv: Path
    figures: dict[str, Path]

    @classmethod
    def in_dir(cls, out_dir: str | Path, figures: Iterable[str] = FIGURES) -> ReportPaths:
        """The study's layout: `<out_dir>/{summary.csv,claims.csv,summary.md,verdicts.csv}`,
        `<out_dir>/figures/<name>.png` for each of `figures`."""
        out_dir = Path(out_dir)
        figures = {name: out_dir / "figures" / f"{name}.png" for name in figures}
        tables = [out_dir / name for name in ("summary.csv", "claims.csv", "summary.md", "verdicts.csv")]
        return cls(*tables, figures)

    @classmethod
    def figure_paths(cls, paths: list[str | Path]) -> dict[str, Path]:
        """Figure paths named `<figure>.png` by their figure, each a figure of `names.FIGURES`, once."""
        by_name = {Path(p).stem: Path(p) for p in paths}
        if not set(by_name) <= set(FIGURES) or len(paths) != len(by_name):
            raise ValueError(
                f"figure paths must be <name>.png, once each, for names of {', '.join(FIGURES)}; got {paths}"
            )
        return by_name


def build_report(
    config: dict[str, Any],
    eval_files: list[str],
    out: str | Path | ReportPaths,
    paper_file: str | Path | None = None,
    log_to_mlflow: bool = True,
    episode_files: list[str] | None = None,
) -> dict[str, Path]:
    """Write summary.csv, claims.csv, the figures and summary.md (`out`: their paths, or a folder for
    the study's layout); log them to the study's MLflow run.

    `paper_file`: the paper's numbers (None: DEFAULT_PAPER_FILE, relative to the working directory).
    `episode_files`: each eval file's episode table, in the order of `eval_files` (None: beside it)."""
    paths = out if isinstance(out, ReportPaths) else ReportPaths.in_dir(out, study_figures(config))
    if episode_files is not None and len(episode_files) != len(eval_files):
        raise ValueError(f"{len(eval_files)} eval files but {len(episode_files)} episode tables")
    for path in [paths.summary_csv, paths.claims_csv, paths.summary_md, paths.verdicts_csv, *paths.figures.values()]:
        path.parent.mkdir(parents=True, exist_ok=True)
    paper = load_paper(DEFAULT_PAPER_FILE if paper_file is None else paper_file)
    accounting = section_with_defaults("report", config.get("report"))["compute_accounting"]
    df = load_evals(eval_files, accounting)
    # the configured tasks first, then any other task the evaluations name
    tasks = list(dict.fromkeys(list(config["tasks"]) + (sorted(df["task"].unique()) if not df.empty else [])))
    points = seed_points(df)
    paired = PairedEvaluations(df, dict(zip(eval_files, episode_files)) if episode_files else None)
    all_tasks = tasks_for(points, tasks)
    titles = {t: task_title(t, config) for t in all_tasks}
    results, recognition = _claims_by_task(df, points, paired, all_tasks, paper)

    outputs: dict[str, Path] = {"summary_csv": paths.summary_csv}
    df.drop(columns=["eval_file"], errors="ignore").to_csv(paths.summary_csv, index=False, float_format="%.6g")
    rows = [row for t in tasks if not df.empty and t in set(df["task"]) for row in claims_rows(t, results[t][0])]
    outputs["claims_csv"] = write_claims_csv(rows, paths.claims_csv)
    figures = _draw_figures(
        paths.figures, points, df, results, recognition, tasks, all_tasks, paper, titles, accounting
    )
    outputs.update(figures)
    outputs["summary_md"] = paths.summary_md
    paths.summary_md.write_text(summary_markdown(df, points, paired, config, paper, tasks, figures, results, titles))
    verdicts = verdict_rows(results, [t for t in tasks if not df.empty and t in set(df["task"])], titles)
    outputs["verdicts_csv"] = write_table_csv(VERDICTS_HEADER, verdicts, paths.verdicts_csv)
    log.info("report: %d evaluations -> %s", len(df), ", ".join(str(p) for p in outputs.values()))
    if log_to_mlflow:
        publish(config, df, points, rows, outputs, verdicts_markdown(config["study"], verdicts))
    return outputs


def _claims_by_task(df, points, paired: PairedEvaluations, tasks: list[str], paper: dict[str, Any]):
    """(task -> `evaluate_claims` result, recognition accuracy points): an image task's claims add the
    visual-OOD score and, where its evaluations record it (GP-VL), recognition accuracy."""
    vl_tasks = [t for t in tasks if is_vl(t)]
    visual_points = seed_points(df, dict.fromkeys(vl_tasks, VISUAL_METRIC))
    recognition = recognition_points(df, paired, vl_tasks)
    recognising = {p.task for p in recognition.values()}
    results = {
        t: evaluate_claims(
            points,
            paired,
            t,
            paper,
            diagnostics_of(df, t),
            visual_points=visual_points if t in vl_tasks else None,
            recognition_points=recognition if t in recognising else None,
        )
        for t in tasks
    }
    return results, recognition


def _draw_figures(fig: dict[str, Path], points, df, results, recognition, tasks, all_tasks, paper, titles, accounting):
    """The figures of `fig` (name -> path; `study_figures` names a study's), each drawn to its path."""
    contexts = {t: r[2] for t, r in results.items()}  # what the claims chose: checkpoints, gains, builders
    draw = {
        "id_ood_vs_compute": lambda path: figure_id_ood_vs_compute(points, tasks, titles, path, accounting),
        "success_vs_step": lambda path: figure_success_vs_step(points, tasks, titles, path),
        "ood_change": lambda path: figure_ood_change(points, contexts, tasks, paper, titles, path),
        "viter_ablation": lambda path: figure_viter_ablation(points, contexts, tasks, paper, titles, path),
        "rl_nosft": lambda path: figure_rl_nosft(points, df, tasks, titles, path, accounting),
        "recognition_vs_compute": lambda path: figure_recognition_vs_compute(
            recognition, contexts, all_tasks, titles, path, accounting
        ),
        "rl_from_sft": lambda path: figure_rl_from_sft(points, tasks, titles, path),
    }
    return {name: draw[name](path) for name, path in fig.items()}


def study_figures(config: dict[str, Any]) -> list[str]:
    """The figures of `names.FIGURES` a study draws: recognition accuracy (Figure 8) needs an image task, and
    RL from the SFT arm's checkpoints needs an `sft-<step>` in `rl.starts`; the others always have something to
    show."""
    left_out = set()
    if not any(is_vl(task) for task in config["tasks"]):
        left_out.add("recognition_vs_compute")
    if all(sft_start_step(start) is None for start in section_with_defaults("rl", config.get("rl"))["starts"]):
        left_out.add("rl_from_sft")
    return [name for name in FIGURES if name not in left_out]
