"""One RL setting's learning curve: RL from a model, checkpoints along the way, each evaluated.

    python benchmarks/rl_curve.py --model results/gp_l/seed0/init/model --out curves/a \\
        --viter 5 --save 10 20 30 --set rl.learning_rate=2e-5 rl.temperature=1.0 [--splits eval_id]

Runs `sftvsrl rl` (the command the rules run) from `--model` on the GP-L RL rows of `--config`
(default config/config.yaml, `--set` overrides keys), exporting the model at each `--save` step,
then `sftvsrl evaluate` on each checkpoint (and on `--model` itself as step 0 unless
`--no-start`) with the config's eval settings. MLflow goes to `<out>/mlflow.db`. Prints one JSON
line per checkpoint and split: success with its Wilson interval, number accuracy, rule
memorisation, GFLOPs, and the RL step metrics of that step (no-signal share, KL to the start).
The rows are also written to `<out>/curve.jsonl`. docs/small-scale.md ("RL that learns") lists
the settings tried with their commands.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SFTVSRL = [sys.executable, "-m", "sftvsrl.cli"]  # this environment's, activated or not


def run(command: list[str], env: dict) -> None:
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if result.returncode != 0:
        sys.exit(f"{' '.join(command[:3])} failed:\n{result.stderr[-4000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--config", default=str(ROOT / "config" / "config.yaml"))
    parser.add_argument("--viter", type=int, default=5)
    parser.add_argument("--save", type=int, nargs="+", required=True, help="steps to export and evaluate")
    parser.add_argument("--set", nargs="*", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--splits", nargs="+", default=["eval_id", "eval_ood_rule"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-start", action="store_true", help="do not evaluate --model itself")
    args = parser.parse_args()
    from sftvsrl.data import dump_jsonl
    from sftvsrl.stats import wilson_interval
    from sftvsrl.study import load_config
    from sftvsrl.tasks import get_task

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    config = load_config(args.config)
    for item in args.set:
        key, value = item.split("=", 1)
        section, name = key.split(".", 1)
        config[section][name] = yaml.safe_load(value)
    steps = max(args.save)
    config["rl"].update(steps=steps, checkpoint_steps=sorted(args.save), save_every=steps)
    config["mlflow"]["tracking_uri"] = f"sqlite:///{out / 'mlflow.db'}"
    config = load_config(config)  # validated with the overrides
    splits = get_task("gp_l").generate_splits(config["gp"], config["data_seed"])
    for split in ["rl", *args.splits]:
        dump_jsonl(splits[split], out / f"{split}.jsonl")
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    common = ["--config", json.dumps(config), "--threads", str(args.threads), "--task", "gp_l", "--seed", "0"]
    saves = {step: out / f"ckpt-{step}" for step in args.save}
    if not all(d.exists() for d in saves.values()):
        command = [*SFTVSRL, "rl", *common, "--run-name", f"rl-v{args.viter}", "--viter", str(args.viter)]
        command += ["--data", str(out / "rl.jsonl"), "--start", args.model, "--work-dir", str(out / "work")]
        command += ["--save", *[f"{k}={d}" for k, d in saves.items()]]
        run(command, env)
    models = {} if args.no_start else {0: Path(args.model)}
    models.update(saves)
    step_metrics = rl_step_metrics(config["mlflow"]["tracking_uri"])
    rows = []
    for step, model in sorted(models.items()):
        results = [out / "eval" / str(step) / f"{split}.json" for split in args.splits]
        if not all(r.exists() for r in results):
            command = [*SFTVSRL, "evaluate", *common, "--run-name", f"rl-v{args.viter}", "--step", str(step)]
            command += ["--model", str(model), "--data", *[str(out / f"{s}.jsonl") for s in args.splits]]
            run(command + ["--out", *map(str, results)], env)
        for split, result in zip(args.splits, results):
            r = json.loads(result.read_text())
            m = r["metrics"]
            n = int(r.get("episodes", 0))
            low, high = wilson_interval(round(m["success_rate"] * n), n)
            row = {"step": step, "split": split, "success": m["success_rate"], "ci": [low, high], "episodes": n}
            row.update(
                {k: m.get(k) for k in ("number_accuracy", "rule_memorisation_rate", "first_attempt_success_rate")}
            )
            row["gflops"] = (r.get("compute") or {}).get("gflops")
            row.update(step_metrics.get(step, {}))
            rows.append(row)
            print(json.dumps(row), flush=True)
    with open(out / "curve.jsonl", "w") as fh:
        fh.writelines(json.dumps(row) + "\n" for row in rows)


def rl_step_metrics(tracking_uri: str) -> dict[int, dict[str, float]]:
    """Per step, the RL run's learning-signal metrics averaged over the steps since the last checkpoint."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name("sftvsrl")
    runs = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("sftvsrl.stage") == "rl"]
    if not runs:
        return {}
    out: dict[int, dict[str, float]] = {}
    for name in ("rl/no_signal_share", "rl/kl_to_start", "episode/success_rate", "time/step_s"):
        for m in client.get_metric_history(runs[0].info.run_id, name):
            out.setdefault(m.step, {})[name] = m.value
    return out


if __name__ == "__main__":
    main()
