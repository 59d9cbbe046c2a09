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
    from .config import load_config

    if text.lstrip().startswith("{"):
        # a rule passes the stage's part of a config the Snakefile has already validated
        return json.loads(text)
    return load_config(text)


def _steps_dirs(pairs: list[str]) -> dict[int, str]:
    """`10=path/ckpt-10/model` pairs -> {10: path}."""
    out = {}
    for pair in pairs:
        step, _, path = pair.partition("=")
        out[int(step)] = path
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sftvsrl", description=__doc__)
    sub = parser.add_subparsers(dest="stage", required=True)

    def stage(name: str, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help)
        p.add_argument("--config", required=True, help="YAML config file or JSON string")
        p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
        return p

    p = stage("check-config", "validate a config file and print it with defaults")

    p = stage("data", "generate the JSONL splits of a task")
    p.add_argument("--task", required=True)
    p.add_argument("--out-dir", required=True)

    p = stage("dvc-track", "record data/ in data.dvc and push when a remote is configured")
    p.add_argument("--data-dir", default="data")
    p.add_argument("--out", required=True, help="JSON marker with the data version (md5)")

    p = stage("study-run", "create (once) the MLflow parent run of the study")
    p.add_argument("--out", required=True)

    p = stage("base-model", "materialise the base model as a plain HF folder")
    p.add_argument("--out-dir", required=True)

    for name in ("sft-init", "sft"):
        p = stage(name, "SFT warm-up from the base model" if name == "sft-init" else "continued SFT from init")
        p.add_argument("--task", required=True)
        p.add_argument("--seed", type=int, required=True)
        p.add_argument("--data", required=True, help="the task's sft.jsonl")
        p.add_argument("--start", required=True, help="model folder to start from")
        p.add_argument("--save", nargs="+", required=True, metavar="STEP=DIR")
        p.add_argument("--work-dir", required=True, help="trainer checkpoints for resume")

    p = stage("rl", "GRPO with multi-turn verification")
    p.add_argument("--task", required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--viter", type=int, required=True)
    p.add_argument("--run-name", required=True, help="e.g. rl-v5 or rl-nosft")
    p.add_argument("--data", required=True, help="the task's rl.jsonl")
    p.add_argument("--start", required=True, help="model folder to start from")
    p.add_argument("--save", nargs="+", required=True, metavar="STEP=DIR")
    p.add_argument("--work-dir", required=True)

    p = stage("evaluate", "evaluate one checkpoint on every eval split (one model load, one batched rollout)")
    p.add_argument("--task", required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--run-name", required=True)
    p.add_argument("--step", type=int, required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--data", nargs="+", required=True, help="one JSONL file per split")
    p.add_argument("--out", nargs="+", required=True,
                   help="one metrics JSON per --data file, in order; episodes go beside each as .episodes.jsonl")

    p = stage("report", "aggregate evaluations into tables, figures and the summary")
    p.add_argument("--evals", nargs="+", required=True)
    p.add_argument("--paper", default=None, help="paper_results.yaml")
    p.add_argument("--out-dir", required=True)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    config = _config(args.config)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    if args.stage == "check-config":
        import yaml

        print(yaml.safe_dump(config, sort_keys=False))
    elif args.stage == "data":
        from .data import write_splits

        write_splits(config, args.task, Path(args.out_dir))
    elif args.stage == "dvc-track":
        from .dvc import track_data

        track_data(config, Path(args.data_dir), Path(args.out))
    elif args.stage == "study-run":
        from .tracking import ensure_study_run

        run_id = ensure_study_run(config)
        Path(args.out).write_text(json.dumps({"study": config["study"], "run_id": run_id}) + "\n")
    elif args.stage == "base-model":
        from .models import materialise_base_model

        materialise_base_model(config["model"], Path(args.out_dir))
    elif args.stage in ("sft-init", "sft"):
        from .sft import run_sft

        run_sft(
            config,
            stage="init" if args.stage == "sft-init" else "sft",
            task=args.task,
            seed=args.seed,
            data_file=args.data,
            start_dir=args.start,
            save_dirs=_steps_dirs(args.save),
            work_dir=args.work_dir,
        )
    elif args.stage == "rl":
        from .rl import run_rl

        run_rl(
            config,
            task=args.task,
            seed=args.seed,
            viter=args.viter,
            run_name=args.run_name,
            data_file=args.data,
            start_dir=args.start,
            save_dirs=_steps_dirs(args.save),
            work_dir=args.work_dir,
        )
    elif args.stage == "evaluate":
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
        )
    elif args.stage == "report":
        from .report import build_report

        build_report(config, args.evals, Path(args.out_dir), paper_file=args.paper)
    return 0


if __name__ == "__main__":
    sys.exit(main())
