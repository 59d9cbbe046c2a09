"""Rollout throughput: the batched engine vs the plain one-episode-at-a-time loop; one GRPO step.

Same model, hands, VIter, sampling settings and seed for both protocols:
- batched: `rollout.run_episodes` (one `generate` call per round over every running episode,
  in chunks of `--batch-size`);
- sequential: `run_episodes_sequential` of tests/reference_rollout.py (one `generate` call per episode
  per attempt), the reference protocol the rollout tests compare against.
Sampled answers differ between the two (the random draws are consumed in another order), so
compare rates: episodes/s and generated tokens/s.

Then one RL step through `rl.run_rl` (GRPOTrainer) with the default config's `rl` section,
printing its time split (generation / verification / update).

    python benchmarks/bench_rollout.py                      # SmolLM2-135M-Instruct (embedded)
    python benchmarks/bench_rollout.py --model-dir models/base/smollm2-135m-instruct --episodes 32
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # reference_rollout: the sequential protocol


def model_dir(arg: str | None) -> Path:
    if arg:
        return Path(arg)
    from sftvsrl.models import cache_dir, materialise_base_model
    from sftvsrl.study import load_config

    config = load_config(ROOT / "config" / "config.yaml")
    local = ROOT / "models" / "base" / config["model"]["name"]
    if (local / "config.json").exists():
        return local
    target = cache_dir() / "bench" / config["model"]["name"]
    if not (target / "config.json").exists():
        print(f"materialising {config['model']['base']} into {target} ...", flush=True)
        materialise_base_model(config["model"], target)
    return target


def rows_for(n: int, seed: int) -> list[dict]:
    from sftvsrl.study import load_config
    from sftvsrl.tasks import get_task

    config = load_config(ROOT / "config" / "config.yaml")
    rows = get_task("gp_l").generate_splits(config["gp"], seed)["rl"]
    if len(rows) < n:
        raise SystemExit(f"--episodes {n}: the rl split has only {len(rows)} rows")
    return rows[:n]


def bench_rollout(folder: Path, args) -> dict:
    from reference_rollout import run_episodes_sequential
    from sftvsrl.models import load_model_and_tokenizer
    from sftvsrl.rollout import RolloutStats, run_episodes, summarize
    from sftvsrl.tasks import get_task

    task = get_task("gp_l")
    model, tokenizer = load_model_and_tokenizer(folder)
    rows = rows_for(args.episodes, 0)
    kw = {"temperature": args.temperature, "max_new_tokens": args.max_new_tokens, "seed": args.seed}
    # warm-up (first-call allocations), not timed
    run_episodes(model, tokenizer, [task.make_episode(rows[0], 1)], temperature=args.temperature, max_new_tokens=4)

    results = {}
    for name in ("batched", "sequential"):
        episodes = [task.make_episode(r, args.viter) for r in rows]
        stats = RolloutStats()
        t0 = time.perf_counter()
        if name == "batched":
            traces = run_episodes(model, tokenizer, episodes, batch_size=args.batch_size, stats=stats, **kw)
        else:
            traces = run_episodes_sequential(model, tokenizer, episodes, stats=stats, **kw)
        wall = time.perf_counter() - t0
        s = summarize(traces)
        results[name] = {
            "wall_s": round(wall, 2),
            "episodes_per_s": round(len(traces) / wall, 4),
            "generated_tokens": int(s["generated_tokens"]),
            "tokens_per_s": round(s["generated_tokens"] / wall, 2),
            "attempts": int(stats.attempts),
            "generate_calls": stats.generate_calls,
            "generation_s": round(stats.generation_s, 2),
            "verification_s": round(stats.verification_s, 4),
            "bookkeeping_s": round(stats.bookkeeping_s, 4),
            "success_rate": s["success_rate"],
            "unparseable_share": round(s["unparseable_share"], 3),
        }
        print(f"{name:>10}: {json.dumps(results[name])}", flush=True)
    b, q = results["batched"], results["sequential"]
    results["speedup_tokens_per_s"] = round(b["tokens_per_s"] / q["tokens_per_s"], 2)
    results["speedup_episodes_per_s"] = round(b["episodes_per_s"] / q["episodes_per_s"], 2)
    print(
        f"speed-up batched / sequential: {results['speedup_tokens_per_s']}x tokens/s, "
        f"{results['speedup_episodes_per_s']}x episodes/s",
        flush=True,
    )
    return results


def bench_rl_step(folder: Path, args) -> dict:
    from sftvsrl.rl import run_rl
    from sftvsrl.study import load_config
    from sftvsrl.tasks import get_task

    config = load_config(ROOT / "config" / "config.yaml")
    config = copy.deepcopy(config)
    config["study"] = "bench"
    config["rl"].update(steps=1, checkpoint_steps=[1], save_every=1)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        config["mlflow"]["tracking_uri"] = f"sqlite:///{tmp / 'mlflow.db'}"
        rows = get_task("gp_l").generate_splits(config["gp"], 0)["rl"]
        data = tmp / "rl.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in rows))
        t0 = time.perf_counter()
        summary = run_rl(
            config,
            task="gp_l",
            seed=0,
            viter=args.viter,
            run_name=f"rl-v{args.viter}",
            data_file=str(data),
            start_dir=str(folder),
            save_dirs={1: str(tmp / "ckpt-1")},
            work_dir=str(tmp / "work"),
        )
        wall = time.perf_counter() - t0
    m = summary["last_step_metrics"]
    out = {
        "episodes": config["rl"]["prompts_per_step"] * config["rl"]["num_generations"],
        "viter": args.viter,
        "job_wall_s": round(wall, 1),
        "step_s": round(m["time/step_s"], 2),
        "generation_s": round(m["time/generation_s"], 2),
        "verification_s": round(m["time/verification_s"], 4),
        "update_s": round(m["time/update_s"], 2),
        "generated_tokens": int(m["tokens/generated"]),
        "completion_tokens": int(m["tokens/completion"]),
        "attempts_per_episode": m["episode/attempts"],
    }
    print(f"RL step (GRPO, one optimizer step): {json.dumps(out)}", flush=True)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", default=None, help="HF model folder (default: the embedded SmolLM2)")
    p.add_argument("--episodes", type=int, default=16)
    p.add_argument("--viter", type=int, default=2)
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--batch-size", type=int, default=None, help="rows per generate call (default: eval.batch_size)")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--skip-rl", action="store_true", help="only the rollout comparison")
    p.add_argument("--out", default=None, help="write the results as JSON")
    args = p.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.batch_size is None:
        from sftvsrl.study import load_config

        args.batch_size = load_config(ROOT / "config" / "config.yaml")["eval"]["batch_size"]
    folder = model_dir(args.model_dir)
    print(
        f"model {folder}, torch threads {torch.get_num_threads()}, episodes {args.episodes}, VIter {args.viter}, "
        f"max_new_tokens {args.max_new_tokens}, T {args.temperature}, batch {args.batch_size}",
        flush=True,
    )
    results = {"args": vars(args), "rollout": bench_rollout(folder, args)}
    if not args.skip_rl:
        results["rl_step"] = bench_rl_step(folder, args)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
