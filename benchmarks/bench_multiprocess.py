"""Training step time with 1 and 2 processes on this machine, through the command the rules run.

    python benchmarks/bench_multiprocess.py --model results/gp_l/seed0/init/model [--steps 3] [--threads 2]

Runs `sftvsrl sft` and `sftvsrl rl` (GP-L rows of the default config, the default's SFT and RL
settings with `--steps` steps) once plainly and once under accelerate's multi-process launcher
with 2 processes (gloo), as `--set-resources <rule>:processes=2` launches them, each with MLflow
in a temporary SQLite store. The job's threads are shared by its processes, as in the rules.
Prints one JSON line per run: seconds per step after the first (SFT: from the trainer's step
times; RL: rollout and update from the step metrics) and the samples per step.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAUNCH_2 = "accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no --dynamo_backend no"


def job_config(steps: int, tracking_uri: str) -> dict:
    from sftvsrl.study import load_config

    config = load_config(ROOT / "config" / "config.yaml")
    config["sft"].update(steps=steps, checkpoint_steps=[steps], save_every=steps, warmup_ratio=0.0)
    config["rl"].update(steps=steps, checkpoint_steps=[steps], save_every=steps)
    config["mlflow"]["tracking_uri"] = tracking_uri
    return config


def run_job(stage: str, processes: int, config: dict, model: str, data: Path, work: Path, threads: int) -> None:
    launcher = LAUNCH_2.split() + ["-m", "sftvsrl.cli"] if processes == 2 else ["sftvsrl"]
    stage_args = ["rl", "--run-name", "rl-v5", "--viter", "5"] if stage == "rl" else ["sft"]
    steps = config[stage]["steps"]
    command = [*launcher, *stage_args, "--config", json.dumps(config), "--threads", str(threads), "--task", "gp_l"]
    command += ["--seed", "0", "--data", str(data), "--start", model, "--work-dir", str(work / "work")]
    command += ["--save", f"{steps}={work / 'out'}"]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if result.returncode != 0:
        sys.exit(f"{stage} with {processes} process(es) failed:\n{result.stderr[-4000:]}")


def step_times(tracking_uri: str, stage: str) -> dict[str, list[float]]:
    from mlflow import MlflowClient

    from sftvsrl.tracking import TAG_STAGE

    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name("sftvsrl")
    (run,) = client.search_runs([exp.experiment_id], filter_string=f"tags.`{TAG_STAGE}` = '{stage}'")
    names = ["time/step_s", "time/rollout_other_s", "time/generation_s", "time/update_s", "episode/count"]
    if stage == "sft":
        names = ["train_runtime", "train_samples_per_second"]
    return {name: [m.value for m in client.get_metric_history(run.info.run_id, name)] for name in names}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="a model folder, e.g. the default study's init")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="the job's threads, shared by its processes")
    args = parser.parse_args()
    from sftvsrl.data import dump_jsonl
    from sftvsrl.tasks import get_task

    for stage in ("sft", "rl"):
        for processes in (1, 2):
            with tempfile.TemporaryDirectory() as tmp:
                work = Path(tmp)
                uri = f"sqlite:///{work / 'mlflow.db'}"
                config = job_config(args.steps, uri)
                rows = get_task("gp_l").generate_splits(config["gp"], config["data_seed"])[stage]
                dump_jsonl(rows, work / f"{stage}.jsonl")
                run_job(stage, processes, config, args.model, work / f"{stage}.jsonl", work, args.threads)
                times = step_times(uri, stage)
            samples = config["sft"]["batch_size"] * config["sft"]["grad_accum"] if stage == "sft" else None
            samples = samples or config["rl"]["prompts_per_step"] * config["rl"]["num_generations"]
            line = {"stage": stage, "processes": processes, "steps": args.steps, "samples_per_step": samples}
            if stage == "sft":
                line["s_per_step"] = times["train_runtime"][-1] / args.steps  # includes the first step
            else:
                later = slice(1, None)  # the first step also builds caches and compiles nothing worth timing
                for name, values in times.items():
                    kept = values[later] or values
                    line[name.replace("time/", "") + ("_mean" if name != "episode/count" else "")] = sum(kept) / len(
                        kept
                    )
            print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
