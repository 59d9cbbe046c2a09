"""One console entry, `sftvsrl <stage> ...`. Snakemake rules call it with `shell:`, so the same
command runs locally, under `accelerate launch`, and inside a SLURM job.

`--config` takes a YAML file (validated against the schema) or the JSON a rule passes (the
stage's part of an already validated config).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any


def _config(text: str) -> dict[str, Any]:
    from .study import load_config, register_plugins

    if text.lstrip().startswith("{"):
        # a rule passes the stage's part of a config the Snakefile has already validated, with its task plugins
        config = json.loads(text)
        register_plugins(config)
        return config
    return load_config(text)


def _steps_dirs(pairs: list[str]) -> dict[int, str]:
    """`10=path/ckpt-10/model` pairs -> {10: path}."""
    out = {}
    for pair in pairs:
        step, _, path = pair.partition("=")
        out[int(step)] = path
    return out


def _stage(sub, name: str, help: str) -> argparse.ArgumentParser:
    """A subcommand with the arguments every stage takes."""
    p = sub.add_parser(name, help=help)
    p.add_argument("--config", required=True, help="YAML config file or JSON string")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    return p


def _training_stage(sub, name: str, help: str, data_help: str, rl: bool = False) -> argparse.ArgumentParser:
    """A training stage (sft-init, sft, rl): what its rule hands it; RL adds its VIter and run name."""
    p = _stage(sub, name, help)
    p.add_argument("--task", required=True)
    p.add_argument("--seed", type=int, required=True)
    if rl:
        p.add_argument("--viter", type=int, required=True, help="scored attempts per episode")
        p.add_argument("--run-name", required=True, help="the run's name in the study (the rule passes it)")
        p.add_argument("--start-name", default="init", help="what --start is in the study: init, base or sft-<step>")
    p.add_argument("--data", required=True, help=data_help)
    p.add_argument("--start", required=True, help="model folder to start from")
    p.add_argument("--save", nargs="+", required=True, metavar="STEP=DIR", help="export the model at step STEP to DIR")
    p.add_argument("--work-dir", required=True, help="trainer checkpoints for resume")
    return p


def _add_setup_stages(sub) -> None:
    """The stages before any training: config check, data, DVC, the study's run, its UI and the start models."""
    _stage(sub, "check-config", "validate a config file and print it with defaults")

    p = _stage(sub, "data", "generate the JSONL splits of a task")
    p.add_argument("--task", required=True)
    p.add_argument("--out-dir", required=True)
    p.add_argument(
        "--splits",
        nargs="+",
        default=None,
        help="the splits to write (default: the task's own, without the extra ones)",
    )

    p = _stage(sub, "dvc-track", "record data/ in data.dvc and push when a remote is configured")
    p.add_argument("--data-dir", required=True, help="the folder DVC tracks (data/)")
    p.add_argument("--out", required=True, help="JSON marker with the data version (md5)")

    p = _stage(sub, "study-run", "create (once) the MLflow parent run of the study")
    p.add_argument("--out", required=True)

    p = _stage(sub, "ui", "serve the MLflow UI on the study's store (localhost) and print the link to its runs")
    p.add_argument("--host", default="127.0.0.1", help="127.0.0.1 keeps the UI to this machine")
    p.add_argument("--port", type=int, default=5000)
    p.add_argument(
        "--auth",
        action="store_true",
        help="MLflow's basic-auth app (needed for any --host but loopback); the admin's password comes from "
        "MLFLOW_AUTH_ADMIN_PASSWORD, jobs sign in with MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD",
    )

    p = _stage(sub, "base-model", "materialise the base model as a plain HF folder")
    p.add_argument("--out-dir", required=True)

    p = _stage(sub, "init-model", "materialise a task's model.init checkpoint as its init model (no SFT warm-up)")
    p.add_argument("--task", required=True)
    p.add_argument("--out-dir", required=True)


def _add_evaluate_stage(sub) -> None:
    p = _stage(sub, "evaluate", "evaluate one checkpoint on every eval split (one model load, one batched rollout)")
    p.add_argument("--task", required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--run-name", required=True)
    p.add_argument("--step", type=int, required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--data", nargs="+", required=True, help="one JSONL file per split")
    p.add_argument("--out", nargs="+", required=True, help="one metrics JSON per --data file, in order")
    p.add_argument(
        "--episodes-out",
        nargs="+",
        default=None,
        help="one episode table (JSONL) per --data file, in order; default: beside each --out as .episodes.jsonl",
    )


def _add_report_stage(sub) -> None:
    p = _stage(sub, "report", "aggregate evaluations into tables, figures and the summary")
    p.add_argument("--evals", nargs="+", required=True)
    p.add_argument("--episodes", nargs="+", default=None, help="each eval's episode table, in --evals order")
    p.add_argument("--paper", default=None, help="paper_results.yaml")
    p.add_argument("--out-dir", default=None, help="write in the study's layout here, or name each output:")
    p.add_argument("--summary-csv", default=None)
    p.add_argument("--claims-csv", default=None)
    p.add_argument("--summary-md", default=None)
    p.add_argument("--verdicts-csv", default=None, help="the claims tables of summary.md, for the report's first page")
    p.add_argument("--figures", nargs="+", default=None, help="<figure>.png, one per figure")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sftvsrl", description=__doc__)
    sub = parser.add_subparsers(dest="stage", required=True)
    # in the pipeline's order, which is the order `sftvsrl --help` lists them in
    _add_setup_stages(sub)
    _training_stage(sub, "sft-init", "SFT warm-up from the base model", "the task's sft.jsonl")
    _training_stage(sub, "sft", "continued SFT from init", "the task's sft.jsonl")
    _training_stage(sub, "sft-varied", "continued SFT from init on varied rules", "the task's sft_varied.jsonl")
    _training_stage(sub, "rl", "GRPO with multi-turn verification", "the task's rl.jsonl", rl=True)
    _add_evaluate_stage(sub)
    _add_report_stage(sub)
    return parser


def _check_config(config: dict[str, Any], args: argparse.Namespace) -> None:
    import yaml

    print(yaml.safe_dump(config, sort_keys=False))


def _data(config: dict[str, Any], args: argparse.Namespace) -> None:
    from .data import write_splits

    write_splits(config, args.task, Path(args.out_dir), args.splits)


def _dvc_track(config: dict[str, Any], args: argparse.Namespace) -> None:
    from .dvc import track_data

    track_data(config, Path(args.data_dir), Path(args.out))


def _study_run(config: dict[str, Any], args: argparse.Namespace) -> None:
    from .tracking import ensure_study_run

    run_id = ensure_study_run(config)
    Path(args.out).write_text(json.dumps({"study": config["study"], "run_id": run_id}) + "\n")


def _ui(config: dict[str, Any], args: argparse.Namespace) -> None:
    import os

    from .tracking import ui_command

    command, url, env = ui_command(config, args.host, args.port, auth=args.auth)
    print(f"Study {config['study']}, SFT vs RL as curves (its training runs in the chart view): {url}", flush=True)
    print(
        "The first section, 0_sft_vs_rl, holds each split's score against the training step (..._by_step) and against"
        " training compute (..._by_mflops: the axis says Step, the values are MFLOPs); every other metric is in"
        " sections eval and eval_by_mflops. The study's run (its description: the verdicts) is in the runs table"
        " without the filter",
        flush=True,
    )
    if command is not None:
        os.execve(command[0], command, {**os.environ, **env})


def _base_model(config: dict[str, Any], args: argparse.Namespace) -> None:
    from .models import materialise_base_model

    materialise_base_model(config["model"], Path(args.out_dir))


def _init_model(config: dict[str, Any], args: argparse.Namespace) -> None:
    from .config import init_checkpoint
    from .models import materialise_init_checkpoint

    checkpoint = init_checkpoint(config, args.task)
    if checkpoint is None:
        raise SystemExit(f"init-model: model.init names no checkpoint for task {args.task}")
    materialise_init_checkpoint(config["model"], checkpoint, Path(args.out_dir))


def _training_inputs(args: argparse.Namespace) -> dict[str, Any]:
    """What every training stage is handed by its rule."""
    return {
        "task": args.task,
        "seed": args.seed,
        "data_file": args.data,
        "start_dir": args.start,
        "save_dirs": _steps_dirs(args.save),
        "work_dir": args.work_dir,
    }


SFT_STAGES = {"sft-init": "init", "sft": "sft", "sft-varied": "sft-varied"}  # CLI stage -> run_sft's stage


def _sft(config: dict[str, Any], args: argparse.Namespace) -> None:
    from .sft import run_sft

    run_sft(config, stage=SFT_STAGES[args.stage], **_training_inputs(args))


def _rl(config: dict[str, Any], args: argparse.Namespace) -> None:
    from .rl import run_rl

    run_rl(config, viter=args.viter, run_name=args.run_name, start_name=args.start_name, **_training_inputs(args))


def _evaluate(config: dict[str, Any], args: argparse.Namespace) -> None:
    from .evaluate import run_evaluation

    run_evaluation(
        config,
        task=args.task,
        seed=args.seed,
        run_name=args.run_name,
        step=args.step,
        model_dir=args.model,
        data_files=args.data,
        out_files=args.out,
        episode_files=args.episodes_out,
    )


def _report(config: dict[str, Any], args: argparse.Namespace) -> None:
    from .report import ReportPaths, build_report

    named = [args.summary_csv, args.claims_csv, args.summary_md, args.verdicts_csv, args.figures]
    if args.out_dir is not None:
        out = Path(args.out_dir)
    elif all(x is not None for x in named):
        figures = ReportPaths.figure_paths(args.figures)
        paths = [Path(p) for p in (args.summary_csv, args.claims_csv, args.summary_md, args.verdicts_csv)]
        out = ReportPaths(*paths, figures)
    else:
        raise SystemExit(
            "report: give --out-dir, or all of --summary-csv --claims-csv --summary-md --verdicts-csv --figures"
        )
    build_report(config, args.evals, out, paper_file=args.paper, episode_files=args.episodes)


STAGES = {
    "check-config": _check_config,
    "data": _data,
    "dvc-track": _dvc_track,
    "study-run": _study_run,
    "ui": _ui,
    "base-model": _base_model,
    "init-model": _init_model,
    "sft-init": _sft,
    "sft": _sft,
    "sft-varied": _sft,
    "rl": _rl,
    "evaluate": _evaluate,
    "report": _report,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    config = _config(args.config)
    if args.threads:
        import os

        import torch

        # the job's threads are shared by its processes (accelerate launch sets WORLD_SIZE)
        torch.set_num_threads(max(1, args.threads // int(os.environ.get("WORLD_SIZE", "1"))))
    STAGES[args.stage](config, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
