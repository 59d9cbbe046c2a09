"""Evaluate one checkpoint on one split: the same episodes, the same sampling seed, every time.

Every checkpoint of a study sees the first `eval.episodes` rows of the split file, in file
order, each with `eval.viter` scored attempts, sampled at `eval.temperature` from the fixed
`eval.seed`. So two checkpoints differ only by their weights, and their success rates can
be compared hand by hand.

Outputs (`out_file` and beside it):
- `<split>.json`: what was evaluated (task, seed, run, step, split, model, sampling), the
  model's cumulative training compute (its `compute.json`; zeros for a base model without
  one), the split-level metrics of the task, and generation speed.
- `<split>.episodes.jsonl`: one line per episode: the row's id and a summary of the hand or
  route, every attempt (answer, reward, outcome, feedback, diagnostics) and the success.
Both also go to an MLflow child run of the study (stage `evaluate`).
"""
from __future__ import annotations

import json
import logging
import math
import re
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

from .compute import COMPUTE_FILE

log = logging.getLogger(__name__)

# Row fields that are never worth copying into the episode table (prompts, images).
_BULKY_KEYS = {"prompt", "completion", "messages", "image", "images", "chosen", "rejected"}
_MAX_FIELD_CHARS = 400


def episodes_file(out_file: str | Path) -> Path:
    """`.../eval_id.json` -> `.../eval_id.episodes.jsonl`."""
    out_file = Path(out_file)
    name = out_file.name[: -len(".json")] if out_file.name.endswith(".json") else out_file.name
    return out_file.with_name(name + ".episodes.jsonl")


def read_rows(data_file: str | Path, limit: int | None = None) -> list[dict[str, Any]]:
    """The first `limit` rows of a JSONL split, in file order (all rows when `limit` is None)."""
    rows: list[dict[str, Any]] = []
    with open(data_file) as fh:
        for line in fh:
            if not line.strip():
                continue
            rows.append(json.loads(line))
            if limit is not None and len(rows) >= limit:
                break
    return rows


def split_name(rows: list[dict[str, Any]], data_file: str | Path) -> str:
    """The split of the rows (their `split` field), else the file's stem (`eval_ood_rule.jsonl`)."""
    if rows and isinstance(rows[0].get("split"), str):
        return rows[0]["split"]
    return Path(data_file).name.split(".")[0]


def binomial_se(p: float, n: int) -> float:
    """Standard error of a proportion p estimated from n trials: sqrt(p(1-p)/n)."""
    if n <= 0 or p is None or (isinstance(p, float) and math.isnan(p)):
        return float("nan")
    return math.sqrt(max(p * (1.0 - p), 0.0) / n)


def model_compute(model_dir: str | Path, n_params: int | None = None) -> dict[str, Any]:
    """The model folder's compute.json (cumulative FLOPs from the base model); zeros when absent."""
    path = Path(model_dir, COMPUTE_FILE)
    if path.exists():
        raw = json.loads(path.read_text())
        flops = float(raw.get("flops", 0.0))
        raw.setdefault("gflops", flops / 1e9)
        raw.setdefault("flops", raw["gflops"] * 1e9)
        return raw
    return {
        "n_params": int(n_params or 0),
        "train_tokens": 0,
        "generated_tokens": 0,
        "stages": {},
        "flops": 0.0,
        "gflops": 0.0,
    }


def _jsonable(value: Any) -> Any:
    """A JSON-safe copy (numpy scalars, tuples, sets, dataclasses, NaN -> None)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_jsonable(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    if hasattr(value, "item"):  # numpy / torch scalar
        try:
            return _jsonable(value.item())
        except (ValueError, TypeError):
            pass
    if hasattr(value, "__dataclass_fields__"):
        from dataclasses import asdict

        return _jsonable(asdict(value))
    return str(value)


def row_summary(row: dict[str, Any]) -> dict[str, Any]:
    """The row without prompts or images: the hand (cards, rule, target...) or the route summary."""
    out: dict[str, Any] = {}
    for key, value in row.items():
        if key in _BULKY_KEYS:
            continue
        value = _jsonable(value)
        text = json.dumps(value)
        if len(text) > _MAX_FIELD_CHARS:
            if isinstance(value, list):
                out[f"{key}_len"] = len(value)
            else:
                out[key] = text[: _MAX_FIELD_CHARS - 3] + "..."
            continue
        out[key] = value
    return out


def row_id(row: dict[str, Any], index: int) -> Any:
    for key in ("id", "row_id", "route_id", "uid"):
        if key in row:
            return row[key]
    return index


def _attempt_record(attempt: Any) -> dict[str, Any]:
    return {
        "answer": getattr(attempt, "answer", None),
        "reward": _jsonable(getattr(attempt, "reward", None)),
        "correct": bool(getattr(attempt, "correct", False)),
        "outcome": getattr(attempt, "outcome", None),
        "feedback": getattr(attempt, "feedback", ""),
        "info": _jsonable(getattr(attempt, "info", {}) or {}),
    }


def trace_tokens(trace: Any) -> int:
    """Generated tokens of one episode trace (0 when the trace does not say)."""
    for name in ("generated_tokens", "num_generated_tokens", "completion_tokens", "new_tokens", "tokens_generated"):
        value = getattr(trace, name, None)
        if value is None:
            continue
        if isinstance(value, (list, tuple)):
            return int(sum(int(v) for v in value))
        try:
            return int(value)
        except (TypeError, ValueError):
            continue
    return 0


def generic_metrics(episodes: Iterable[Any]) -> dict[str, float]:
    """Task-independent numbers of finished episodes: success (with its binomial SE), attempts, rewards."""
    episodes = list(episodes)
    n = len(episodes)
    attempts = [a for ep in episodes for a in ep.attempts]
    successes = sum(1 for ep in episodes if ep.success)
    p = successes / n if n else float("nan")
    rewards = [float(a.reward) for a in attempts]
    return {
        "episodes": n,
        "successes": successes,
        "success_rate": p,
        "success_se": binomial_se(p, n),
        "attempts": len(attempts),
        "mean_attempts": len(attempts) / n if n else float("nan"),
        "mean_reward_per_attempt": sum(rewards) / len(rewards) if rewards else float("nan"),
        "mean_episode_return": sum(rewards) / n if n else float("nan"),
        "first_attempt_success_rate": (
            sum(1 for ep in episodes if ep.attempts and ep.attempts[0].correct) / n if n else float("nan")
        ),
    }


def episode_records(rows: list[dict[str, Any]], traces: list[Any]) -> list[dict[str, Any]]:
    records = []
    for index, (row, trace) in enumerate(zip(rows, traces)):
        episode = getattr(trace, "episode", trace)
        attempts = list(getattr(trace, "attempts", None) or episode.attempts)
        try:
            ep_metrics = _jsonable(episode.metrics())
        except Exception as err:  # a diagnostic table must not fail the evaluation
            ep_metrics = {"error": repr(err)}
        records.append(
            {
                "index": index,
                "id": _jsonable(row_id(row, index)),
                "row": row_summary(row),
                "success": bool(getattr(trace, "success", episode.success)),
                "num_attempts": len(attempts),
                "generated_tokens": trace_tokens(trace),
                "attempts": [_attempt_record(a) for a in attempts],
                "metrics": ep_metrics,
            }
        )
    return records


def _train_viter(run_name: str) -> int | None:
    match = re.fullmatch(r"rl-v(\d+)", run_name)
    return int(match.group(1)) if match else None


def _device_of(model: Any) -> str:
    try:
        return str(next(model.parameters()).device)
    except (StopIteration, AttributeError, TypeError):
        return "unknown"


def run_evaluation(
    config: dict[str, Any],
    task: str,
    seed: int,
    run_name: str,
    step: int,
    model_dir: str | Path,
    data_files: Sequence[str | Path],
    out_files: Sequence[str | Path],
) -> list[dict[str, Any]]:
    """Evaluate `model_dir` on the first `eval.episodes` rows of each split in `data_files`.

    The model is loaded once and the episodes of every split are played together (one batched
    rollout; the rows of a `generate` call are capped by `eval.batch_size`), since on a CPU the
    per-call overhead, not the arithmetic, bounds decoding. Each split still gets its own
    `out_files[i]`, episode table and MLflow child run. Returns the split results, in order.
    """
    from .config import eval_episodes
    from .rollout import RolloutStats, run_episodes
    from .tasks import get_task

    if len(data_files) != len(out_files):
        raise ValueError(f"{len(data_files)} data files but {len(out_files)} output files")
    task_obj = get_task(task)
    ev = config["eval"]
    viter = int(ev["viter"])
    splits = [_split_rows(f, eval_episodes(config, task)) for f in data_files]
    label = f"{task} seed{seed} {run_name} ckpt-{step}"

    t0 = time.perf_counter()
    model, tokenizer = _load_for_eval(config, model_dir)
    load_s = time.perf_counter() - t0
    compute = model_compute(model_dir, sum(p.numel() for p in model.parameters()))

    episodes = [task_obj.make_episode(row, viter) for rows, _ in splits for row in rows]
    log.info("%s: %d episodes over %d split(s), VIter %d, T=%.2f on %s", label, len(episodes), len(splits), viter,
             float(ev["temperature"]), _device_of(model))
    stats = RolloutStats()
    traces = run_episodes(model, tokenizer, episodes, temperature=float(ev["temperature"]),
                          max_new_tokens=int(ev["max_new_tokens"]), batch_size=ev.get("batch_size"),
                          seed=int(ev["seed"]), stats=stats)
    if len(traces) != len(episodes):
        raise RuntimeError(f"{label}: run_episodes returned {len(traces)} traces for {len(episodes)} episodes")
    timing = {
        "device": _device_of(model),
        "load_s": round(load_s, 3),
        "rollout_s": round(stats.generation_s + stats.verification_s + stats.bookkeeping_s, 3),
        "episodes_all_splits": len(episodes),
        "rollout": {k: round(v, 3) if isinstance(v, float) else v for k, v in stats.as_dict().items()},
    }

    results, start = [], 0
    for (rows, split), data_file, out_file in zip(splits, data_files, out_files):
        split_traces = traces[start:start + len(rows)]
        start += len(rows)
        results.append(_write_split(config, task_obj, task, seed, run_name, step, model_dir, str(data_file), split,
                                    rows, split_traces, compute, timing, Path(out_file)))
    return results


def _split_rows(data_file: str | Path, episodes: int) -> tuple[list[dict[str, Any]], str]:
    """The first `episodes` rows of a split and its name; a split with fewer rows is an error."""
    rows = read_rows(data_file, episodes)
    if len(rows) < episodes:
        raise ValueError(
            f"{data_file} has {len(rows)} rows but config key eval.episodes asks for {episodes}: "
            "raise the split's size or lower eval.episodes"
        )
    return rows, split_name(rows, data_file)


def _load_for_eval(config: dict[str, Any], model_dir: str | Path):
    from .models import load_model_and_tokenizer

    model_cfg = config["model"]
    model, tokenizer = load_model_and_tokenizer(
        str(model_dir), dtype=model_cfg.get("dtype", "auto"), attn_implementation=model_cfg.get("attn_implementation")
    )
    model.eval()
    return model, tokenizer


def _write_split(config, task_obj, task, seed, run_name, step, model_dir, data_file, split, rows, traces, compute,
                 timing, out_file: Path) -> dict[str, Any]:
    """One split's result JSON, episode table and MLflow child run."""
    from .tracking import job_run, log_json_artifact, log_metrics, retry

    ev = config["eval"]
    viter = int(ev["viter"])
    out_file.parent.mkdir(parents=True, exist_ok=True)
    ep_file = episodes_file(out_file)
    finished = [t.episode for t in traces]
    metrics = generic_metrics(finished)
    metrics.update(task_obj.aggregate(finished))
    records = episode_records(rows, traces)
    gen_tokens = sum(r["generated_tokens"] for r in records)
    share = len(rows) / timing["episodes_all_splits"]
    result = {
        "task": task,
        "seed": int(seed),
        "run": run_name,
        "step": int(step),
        "split": split,
        "model_dir": str(model_dir),
        "data_file": data_file,
        "train_viter": _train_viter(run_name),
        "viter": viter,
        "temperature": float(ev["temperature"]),
        "max_new_tokens": int(ev["max_new_tokens"]),
        "sample_seed": int(ev["seed"]),
        "episodes": len(rows),
        "row_ids": [_jsonable(row_id(r, i)) for i, r in enumerate(rows)],
        "compute": _jsonable(compute),
        "metrics": _jsonable(metrics),
        "timing": {
            **timing,
            # this split's share of the job's rollout, by episodes (they were played together)
            "generation_s": round(timing["rollout_s"] * share, 3),
            "generated_tokens": gen_tokens,
            "tokens_per_s": round(timing["rollout"]["generated_tokens"] / timing["rollout_s"], 3)
            if timing["rollout_s"] else None,
            "episodes_per_s": round(timing["episodes_all_splits"] / timing["rollout_s"], 4)
            if timing["rollout_s"] else None,
        },
    }
    ep_file.write_text("".join(json.dumps(r) + "\n" for r in records))
    out_file.write_text(json.dumps(result, indent=2) + "\n")

    tags = {"run": run_name, "step": step, "split": split, "model_dir": str(model_dir), "data_file": data_file}
    mlflow_name = f"evaluate-{task}-s{seed}-{run_name}-ckpt{step}-{split}"
    with job_run(config, "evaluate", task=task, seed=seed, viter=viter, run_name=mlflow_name, extra_tags=tags):
        import mlflow

        numeric = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        numeric = {k: v for k, v in numeric.items() if math.isfinite(v)}
        numeric.update({
            "gflops": float(compute.get("gflops", 0.0)),
            "generation_s": result["timing"]["generation_s"],
            "generated_tokens": float(gen_tokens),
            "episodes_per_s": float(result["timing"]["episodes_per_s"] or 0.0),
        })
        log_metrics(numeric, step=int(step))
        log_json_artifact(result, f"{split}.json")
        retry(mlflow.log_artifact, str(ep_file))
    log.info("%s ckpt-%s %s: success %.3f over %d episodes", run_name, step, split, metrics["success_rate"], len(rows))
    return result
