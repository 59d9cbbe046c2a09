"""Evaluation throughput: one checkpoint on both GP eval splits, the old way and the new way.

Both ways play the same number of episodes per split (`--episodes`) from the same checkpoint,
with the config's eval VIter, temperature, max tokens and sampling seed, on `--threads` torch
threads (a Snakemake eval job gets one; two run at once on 2 cores):

- before (the evaluation of the first landing): one job per split, each loading the model,
  rows with the paper's prompt (`gp.prompt: paper`), at most `--old-batch-size` episodes per
  `generate` call, and no prompt prefix shared between episodes;
- after: one job per checkpoint, the model loaded once, the episodes of both splits in one
  batched rollout (`eval.batch_size` from the config), rows with the short prompt, and the
  instruction every prompt repeats read once (`generator.MIN_SHARED_PREFIX`).

It prints, per way, episodes per second of the job (load included) and where the time went
(load / generate / verify / bookkeeping), then the speed-up. Answers differ between the two
ways (other prompt, other batch order), so compare rates, not success.

    python benchmarks/bench_eval.py --model results/gp_l/seed0/init/model
    python benchmarks/bench_eval.py --model results/gp_l/seed0/init/model --episodes 50 --json out.json
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "workflow"))


def split_rows(config: dict, prompt: str, episodes: int) -> dict[str, list[dict]]:
    from sftvsrl.tasks import get_task

    gp = copy.deepcopy(config["gp"])
    gp["prompt"] = prompt
    gp["sizes"] = dict(gp["sizes"], eval_id=episodes, eval_ood_rule=episodes)
    rows = get_task("gp_l").generate_splits(gp, config["data_seed"])
    return {split: rows[split][:episodes] for split in config["eval"]["splits"]}


def one_job(model_dir: str, rows: list[dict], config: dict, batch_size: int, share_prefix: bool) -> dict:
    """What one eval job spends: load the model, play the episodes, all in this process."""
    from sftvsrl import generator, rollout
    from sftvsrl.models import load_model_and_tokenizer
    from sftvsrl.tasks import get_task

    ev = config["eval"]
    task = get_task("gp_l")
    t0 = time.perf_counter()
    model, tokenizer = load_model_and_tokenizer(model_dir)
    model.eval()
    load_s = time.perf_counter() - t0
    saved = getattr(generator, "MIN_SHARED_PREFIX", None)  # None: code from before prefix sharing
    if saved is not None:
        generator.MIN_SHARED_PREFIX = saved if share_prefix else 10**9
    try:
        stats = rollout.RolloutStats()
        t0 = time.perf_counter()
        traces = rollout.run_episodes(
            model,
            tokenizer,
            [task.make_episode(r, int(ev["viter"])) for r in rows],
            temperature=float(ev["temperature"]),
            max_new_tokens=int(ev["max_new_tokens"]),
            batch_size=batch_size,
            seed=int(ev["seed"]),
            stats=stats,
        )
        rollout_s = time.perf_counter() - t0
    finally:
        if saved is not None:
            generator.MIN_SHARED_PREFIX = saved
    return {
        "episodes": len(rows),
        "load_s": load_s,
        "generate_s": stats.generation_s,
        "verify_s": stats.verification_s,
        "bookkeeping_s": stats.bookkeeping_s,
        "total_s": load_s + rollout_s,
        "prefill_tokens": stats.prefill_tokens,
        "generated_tokens": stats.generated_tokens,
        "attempts": stats.attempts,
        "success_rate": sum(t.success for t in traces) / len(traces),
    }


def combine(jobs: list[dict]) -> dict:
    out = {k: sum(j[k] for j in jobs) for k in jobs[0] if k != "success_rate"}
    out["jobs"] = len(jobs)
    out["episodes_per_s"] = out["episodes"] / out["total_s"]
    return out


def report(name: str, r: dict) -> None:
    total = r["total_s"]
    shares = ", ".join(
        f"{k[:-2]} {100 * r[k] / total:.0f}%" for k in ("load_s", "generate_s", "verify_s", "bookkeeping_s")
    )
    print(
        f"{name:7s} {r['jobs']} job(s), {r['episodes']} episodes in {total:.1f} s: {r['episodes_per_s']:.2f} episodes/s "
        f"({shares}); {r['prefill_tokens']} tokens read, {r['generated_tokens']} generated, {r['attempts']} attempts"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a checkpoint folder, e.g. results/gp_l/seed0/init/model")
    parser.add_argument("--config", default=str(ROOT / "config" / "config.yaml"))
    parser.add_argument("--episodes", type=int, default=200, help="per split")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (an eval job gets 1)")
    parser.add_argument("--old-batch-size", type=int, default=12, help="the first landing's eval.batch_size")
    parser.add_argument("--ways", default="before,after", help="which ways to measure (before, after or both)")
    parser.add_argument("--json", default=None, help="also write the figures here")
    args = parser.parse_args()

    import torch

    from sftvsrl.study import load_config

    torch.set_num_threads(args.threads)
    config = load_config(args.config)
    ways = args.ways.split(",")
    print(
        f"model {args.model}, {args.episodes} episodes per split, VIter {config['eval']['viter']}, "
        f"{args.threads} thread(s)"
    )
    results = {}
    if "before" in ways:
        results["before"] = combine(
            [
                one_job(args.model, rows, config, args.old_batch_size, share_prefix=False)
                for rows in split_rows(config, "paper", args.episodes).values()
            ]
        )
        report("before", results["before"])
    if "after" in ways:
        rows = [r for split in split_rows(config, "short", args.episodes).values() for r in split]
        results["after"] = combine(
            [one_job(args.model, rows, config, int(config["eval"]["batch_size"]), share_prefix=True)]
        )
        report("after", results["after"])
    if len(results) == 2:
        print(
            f"speed-up: {results['after']['episodes_per_s'] / results['before']['episodes_per_s']:.2f}x "
            "episodes/s per job"
        )
    if args.json:
        Path(args.json).write_text(json.dumps({**results, "args": vars(args)}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
