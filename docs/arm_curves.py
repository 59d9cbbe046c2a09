"""Print each RL arm's curve from a finished study folder: every checkpoint's success on ID and rule OOD, paired
against its seed's init, seed by seed and pooled over the seeds (the report's pairing: same rows, cluster
bootstrap over the task's units).

    python docs/arm_curves.py STUDY_DIR [--task gp_l]

docs/small-scale.md's per-seed curves of config/laptop-viter.yaml are its output.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sftvsrl.names import INIT_RUN
from sftvsrl.report.claims import PairedEvaluations
from sftvsrl.report.results import load_evals, rl_runs, seed_points

SPLITS = ("eval_id", "eval_ood_rule")


def difference(paired: PairedEvaluations, task: str, checkpoint: tuple[str, int], split: str, seed) -> str:
    r = paired.compare(task, checkpoint, (INIT_RUN, 0), split, "success_rate", seed=seed).result
    p = f", p = {r.p_value:.2g}" if r.p_value >= 0.05 else ""
    return f"{100 * r.diff:+.1f} [{100 * r.ci_low:+.1f}, {100 * r.ci_high:+.1f}]{p}"


def rate(df, task: str, run: str, step: int, split: str, seed) -> str:
    rows = df[(df.task == task) & (df.run == run) & (df.step == step) & (df.split == split)]
    rows = rows if seed is None else rows[rows.seed == seed]
    return f"{100 * (rows.success_rate * rows.episodes).sum() / rows.episodes.sum():.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("study_dir", type=Path)
    parser.add_argument("--task", default="gp_l")
    args = parser.parse_args()
    evals = sorted(args.study_dir.glob(f"results/{args.task}/seed*/eval/*/*/eval_*.json"))
    df = load_evals(evals)
    paired = PairedEvaluations(df, {p: p.with_name(f"{p.stem}.episodes.jsonl") for p in evals})
    print("| seed | run | step | ID % | ID - init, points | rule-OOD % | OOD - init, points |")
    print("|---|---|---|---|---|---|---|")
    runs = rl_runs(seed_points(df), args.task)
    checkpoints = [(INIT_RUN, 0)] + [(r, s) for r in runs for s in sorted(set(df[df.run == r].step))]
    for seed in [*paired.seeds(args.task), None]:
        for run, step in checkpoints:
            cells = [f"{seed}" if seed is not None else "all", run, f"{step}"]
            for split in SPLITS:
                cells.append(rate(df, args.task, run, step, split, seed))
                cells.append("" if run == INIT_RUN else difference(paired, args.task, (run, step), split, seed))
            print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
