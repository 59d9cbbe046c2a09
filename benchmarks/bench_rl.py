"""RL step cost of the default study's settings: episodes per second and where the time goes.

    python benchmarks/bench_rl.py --model results/gp_l/seed0/init/model [--viters 1 5] [--steps 3]
        [--threads 2] [--set rl.prompts_per_step=8 ...] [--label after]

Runs `sftvsrl rl` (the command the rules run) from `--model` on GP-L rows of `--config` (default
config/config.yaml, `--set` overrides keys) for `--steps` steps at each VIter, with MLflow in a
temporary SQLite store, and reads the step metrics back. In the same process it measures the fp32
matmul rate of these cores (1024 x 1024, the job's threads) and a plain causal-LM training step
(forward, backward, AdamW) of the same model on as many tokens as an RL step trained, in rows of
the same mean length. Prints one JSON line per VIter (steps after the first, which also builds
caches):

- `episodes_per_s`: episodes / step time;
- `generation_s`, `update_s`, `other_s`: the step's split (other: chat templates, verifier, ...);
- `decode_tok_s` and `decode_share_of_matmul`: sampled tokens per second of generation, and
  2·N·(sampled tokens) / generation time as a share of the matmul rate;
- `update_tok_s` and `update_share_of_plain`: trained tokens (prompt + completion, no padding) per
  second of update, beside the plain training step's tokens per second on the same cores.

Before/after: run it from a worktree of the old commit (copy this file there) and from this one,
one after the other on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SFTVSRL = [sys.executable, "-m", "sftvsrl.cli"]  # this environment's, activated or not


def matmul_gflops(threads: int, size: int = 1024, reps: int = 30) -> float:
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(size, size), torch.randn(size, size)
    for _ in range(3):
        a @ b
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * size**3 * reps / (time.perf_counter() - t0) / 1e9


def plain_train_tok_s(
    model_dir: str, tokens: int, rows: int, micro_batches: int, threads: int, reps: int = 2
) -> float:
    """Tokens per second of a plain causal-LM step (forward, backward, AdamW) on `rows` rows of
    `tokens / rows` tokens in `micro_batches` micro-batches (the RL update's `rl.grad_accum`): what
    the RL update would reach with no overhead of its own."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(threads)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
    length = max(2, round(tokens / rows))
    ids = torch.randint(100, model.config.vocab_size - 100, (rows, length), generator=torch.Generator().manual_seed(0))
    times = []
    for _ in range(reps + 1):  # the first step allocates the optimizer state
        t0 = time.perf_counter()
        for chunk in ids.chunk(micro_batches):
            (model(input_ids=chunk, labels=chunk).loss / micro_batches).backward()
        opt.step()
        opt.zero_grad()
        times.append(time.perf_counter() - t0)
    return rows * length / min(times[1:])


def rl_config(config_file: Path, steps: int, sets: list[str], tracking_uri: str) -> dict:
    from sftvsrl.study import load_config

    config = load_config(config_file)
    for item in sets:
        key, value = item.split("=", 1)
        section, name = key.split(".", 1)
        config[section][name] = yaml.safe_load(value)
    config["rl"].update(steps=steps, checkpoint_steps=[steps], save_every=steps)
    config["mlflow"]["tracking_uri"] = tracking_uri
    return config


def run_rl_job(config: dict, viter: int, model: str, data: Path, work: Path, threads: int) -> None:
    steps = config["rl"]["steps"]
    command = [*SFTVSRL, "rl", "--run-name", f"rl-v{viter}", "--viter", str(viter), "--config", json.dumps(config)]
    command += ["--threads", str(threads), "--task", "gp_l", "--seed", "0", "--data", str(data), "--start", model]
    command += ["--work-dir", str(work / "work"), "--save", f"{steps}={work / 'out'}"]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if result.returncode != 0:
        sys.exit(f"RL at VIter {viter} failed:\n{result.stderr[-4000:]}")


def step_metrics(tracking_uri: str) -> dict[str, list[float]]:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name("sftvsrl")
    runs = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("sftvsrl.stage") == "rl"]
    (run,) = runs
    names = ["time/step_s", "time/generation_s", "time/update_s", "episode/count", "tokens/generated"]
    names += ["tokens/read_total"]  # what the update pass read (silent groups' episodes skipped)
    out = {}
    for name in names:
        history = sorted(client.get_metric_history(run.info.run_id, name), key=lambda m: m.step)
        out[name] = [m.value for m in history]
    return out


def summarise(metrics: dict[str, list[float]], n_params: int, matmul: float) -> dict:
    trained_total = metrics["tokens/read_total"]
    trained = [b - a for a, b in zip([0.0, *trained_total], trained_total)]
    later = slice(1, None) if len(trained) > 1 else slice(None)

    def total(name: str, values=None) -> float:
        return sum((values if values is not None else metrics[name])[later])

    step_s, gen_s, upd_s = total("time/step_s"), total("time/generation_s"), total("time/update_s")
    episodes, generated, trained_tok = total("episode/count"), total("tokens/generated"), total("", trained)
    return {
        "steps_timed": len(trained[later]),
        "episodes_per_step": episodes / len(trained[later]),
        "episodes_per_s": episodes / step_s,
        "step_s": step_s / len(trained[later]),
        "generation_s": gen_s / len(trained[later]),
        "update_s": upd_s / len(trained[later]),
        "other_s": (step_s - gen_s - upd_s) / len(trained[later]),
        "decode_tok_s": generated / gen_s,
        "decode_share_of_matmul": 2 * n_params * generated / gen_s / (matmul * 1e9),
        "update_tok_s": trained_tok / upd_s,
        "trained_tokens_per_step": trained_tok / len(trained[later]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="a model folder, e.g. the default study's init")
    parser.add_argument("--config", default=str(ROOT / "config" / "config.yaml"))
    parser.add_argument("--viters", type=int, nargs="+", default=[1, 5])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--set", nargs="*", default=[], metavar="SECTION.KEY=VALUE", help="config overrides")
    parser.add_argument("--label", default="", help="a name for this measurement (before / after)")
    args = parser.parse_args()
    from sftvsrl.data import dump_jsonl
    from sftvsrl.models import count_parameters
    from sftvsrl.tasks import get_task

    matmul = matmul_gflops(args.threads)
    for viter in args.viters:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            uri = f"sqlite:///{work / 'mlflow.db'}"
            config = rl_config(Path(args.config), args.steps, args.set, uri)
            rows = get_task("gp_l").generate_splits(config["gp"], config["data_seed"])["rl"]
            dump_jsonl(rows, work / "rl.jsonl")
            run_rl_job(config, viter, args.model, work / "rl.jsonl", work, args.threads)
            metrics = step_metrics(uri)
        from transformers import AutoConfig, AutoModelForCausalLM

        n_params = count_parameters(AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(args.model)))
        line = {"label": args.label, "viter": viter, "matmul_gflops": round(matmul, 1)}
        line.update(summarise(metrics, n_params, matmul))
        print(json.dumps({"rl_only": line}), file=sys.stderr, flush=True)  # kept if the plain step fails
        micro_batches = int(config["rl"].get("grad_accum", 1))
        plain = plain_train_tok_s(
            args.model,
            int(line["trained_tokens_per_step"]),
            int(line["episodes_per_step"]),
            micro_batches,
            args.threads,
        )
        line["plain_train_tok_s"] = plain
        line["update_share_of_plain"] = line["update_tok_s"] / plain
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in line.items()}), flush=True)


if __name__ == "__main__":
    main()
