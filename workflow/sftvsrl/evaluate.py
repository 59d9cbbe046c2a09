"""Evaluate one checkpoint on one split: the same episodes, the same sampling seed, every time.

Every checkpoint of a study sees the first `eval.episodes` rows of the split file, in file
order, each with `eval.viter` scored attempts, sampled at `eval.temperature` from the fixed
`eval.seed`. So two checkpoints differ only by their weights, and their success rates can
be compared hand by hand.

Outputs (`out_file` and the episode table the caller names; by default beside it):
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
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .compute import COMPUTE_FILE, ComputeLedger
from .data import read_jsonl
from .models import count_parameters, run_dtype
from .names import episodes_file, gflops_of

log = logging.getLogger(__name__)

# Row fields that are never worth copying into the episode table (prompts, images).
_BULKY_KEYS = {"prompt", "completion", "messages", "image", "images", "chosen", "rejected"}
_MAX_FIELD_CHARS = 400


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
    """The model folder's compute.json (cumulative FLOPs from the base model); zeros and `n_params`
    for a folder without one (a base model)."""
    has_ledger = Path(model_dir, COMPUTE_FILE).exists()
    return ComputeLedger.load(model_dir, None if has_ledger else n_params).to_dict()


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


# what a task's own code raises when it has a bug (a missing key, a division by zero, a wrong type)
_TASK_BUGS = (ArithmeticError, AttributeError, LookupError, TypeError, ValueError)


def episode_records(task: str, rows: list[dict[str, Any]], traces: list[Any]) -> list[dict[str, Any]]:
    """The episode table's records of `task`'s finished episodes, one per row."""
    records = []
    for index, (row, trace) in enumerate(zip(rows, traces)):
        episode = getattr(trace, "episode", trace)
        attempts = list(getattr(trace, "attempts", None) or episode.attempts)
        try:
            ep_metrics = _jsonable(episode.metrics())
        except _TASK_BUGS as err:
            # an episode's metrics feed the split's score (V-IRL's per-step accuracy): a failure is a task's bug
            where = f"task {task!r}: the metrics of episode {index} (row {row_id(row, index)!r})"
            raise RuntimeError(f"{where} failed: {err!r}") from err
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


def _device_of(model: Any) -> str:
    try:
        return str(next(model.parameters()).device)
    except (StopIteration, AttributeError, TypeError):
        return "unknown"


@dataclass
class EvalJob:
    """What the splits of one evaluation job share: the checkpoint, its compute, the rollout's timing."""

    config: dict[str, Any]
    task: str
    seed: int
    run_name: str
    step: int
    model_dir: str
    compute: dict[str, Any] = field(default_factory=dict)
    timing: dict[str, Any] = field(default_factory=dict)
    sampling: dict[str, Any] = field(default_factory=dict)  # sampling.sampling_settings: how the answers were sampled
    weights_dtype: str = ""  # the dtype the model ran in (bf16 on a GPU, or under model.rehearse_gpu)
    started_ms: int = field(default_factory=lambda: int(time.time() * 1000))  # the MLflow runs' start: the work's
    rollout_started: float = 0.0  # wall-clock time (time.time) at which the rollout of every split began

    @property
    def label(self) -> str:
        return f"{self.task} seed{self.seed} {self.run_name} ckpt-{self.step}"


def run_evaluation(
    config: dict[str, Any],
    task: str,
    seed: int,
    run_name: str,
    step: int,
    model_dir: str | Path,
    data_files: Sequence[str | Path],
    out_files: Sequence[str | Path],
    episode_files: Sequence[str | Path] | None = None,
) -> list[dict[str, Any]]:
    """Evaluate `model_dir` on the first `eval.episodes` rows of each split in `data_files`.

    The model is loaded once and the episodes of every split are played together (one batched
    rollout; the rows of a `generate` call are capped by `eval.batch_size`), since on a CPU the
    per-call overhead, not the arithmetic, bounds decoding. Each split still gets its own
    `out_files[i]`, episode table `episode_files[i]` (default: beside it, `episodes_file`) and
    MLflow child run. Returns the split results, in order.
    """
    from .config import eval_episodes

    if episode_files is None:
        episode_files = [episodes_file(f) for f in out_files]
    if not len(data_files) == len(out_files) == len(episode_files):
        raise ValueError(
            f"{len(data_files)} data files but {len(out_files)} output and {len(episode_files)} episode files"
        )
    job = EvalJob(config, task, int(seed), run_name, int(step), str(model_dir))
    splits = [_split_rows(f, eval_episodes(config, task)) for f in data_files]
    t0 = time.perf_counter()
    model, tokenizer = _load_for_eval(config, model_dir)
    load_s = time.perf_counter() - t0
    job.compute = model_compute(model_dir, count_parameters(model))
    traces, stats = _play(job, model, tokenizer, [row for rows, _ in splits for row in rows])
    job.timing = _timing(_device_of(model), load_s, stats, len(traces))
    results, start = [], 0
    for (rows, split), data_file, out_file, ep_file in zip(splits, data_files, out_files, episode_files):
        split_traces = traces[start : start + len(rows)]
        start += len(rows)
        results.append(_write_split(job, str(data_file), split, rows, split_traces, Path(out_file), Path(ep_file)))
    return results


def _play(job: EvalJob, model, tokenizer, rows: list[dict[str, Any]]):
    """Every episode of the job in one batched rollout, with the config's eval VIter and sampling seed."""
    from .rollout import RolloutStats, run_episodes
    from .sampling import sampling_settings
    from .tasks import get_task

    ev = job.config["eval"]
    job.sampling = sampling_settings(model, ev["temperature"])
    job.weights_dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    task = get_task(job.task)
    episodes = [task.make_episode(row, ev["viter"]) for row in rows]
    log.info("%s: %d episodes, VIter %d, T=%.2f on %s", job.label, len(episodes), ev["viter"],
             ev["temperature"], _device_of(model))  # fmt: skip
    stats = RolloutStats()
    job.rollout_started = time.time()
    traces = run_episodes(
        model,
        tokenizer,
        episodes,
        temperature=ev["temperature"],
        max_new_tokens=ev["max_new_tokens"],
        batch_size=ev["batch_size"],
        seed=ev["seed"],
        stats=stats,
    )
    if len(traces) != len(episodes):
        raise RuntimeError(f"{job.label}: run_episodes returned {len(traces)} traces for {len(episodes)} episodes")
    return traces, stats


def _timing(device: str, load_s: float, stats, episodes: int) -> dict[str, Any]:
    rollout_s = stats.generation_s + stats.verification_s + stats.bookkeeping_s
    return {
        "device": device,
        "load_s": round(load_s, 3),
        "rollout_s": round(rollout_s, 3),
        "episodes_all_splits": episodes,
        "rollout": {k: round(v, 3) if isinstance(v, float) else v for k, v in stats.as_dict().items()},
    }


def _split_rows(data_file: str | Path, episodes: int) -> tuple[list[dict[str, Any]], str]:
    """The first `episodes` rows of a split and its name; a split with fewer rows is an error."""
    rows = read_jsonl(data_file, episodes)
    if len(rows) < episodes:
        raise ValueError(
            f"{data_file} has {len(rows)} rows but config key eval.episodes asks for {episodes}: "
            "raise the split's size or lower eval.episodes"
        )
    return rows, split_name(rows, data_file)


def _load_for_eval(config: dict[str, Any], model_dir: str | Path):
    from .models import load_model_and_processor

    model_cfg = config["model"]
    model, tokenizer = load_model_and_processor(
        str(model_dir), dtype=run_dtype(model_cfg), attn_implementation=model_cfg["attn_implementation"]
    )
    model.eval()
    return model, tokenizer


def _write_split(job: EvalJob, data_file: str, split: str, rows, traces, out_file: Path, ep_file: Path) -> dict:
    """One split's result JSON, episode table and MLflow child run."""
    from .tasks import get_task

    finished = [t.episode for t in traces]
    metrics = generic_metrics(finished)
    metrics.update(get_task(job.task).aggregate(finished))
    records = episode_records(job.task, rows, traces)
    result = _split_result(job, data_file, split, rows, metrics, sum(r["generated_tokens"] for r in records))
    # the splits were played together: each one's own time is until its last episode ended
    finished_at = max(t.finished_at for t in traces)
    result["timing"]["split_finished_s"] = round(finished_at - job.rollout_started, 3)
    for path in (out_file, ep_file):
        path.parent.mkdir(parents=True, exist_ok=True)
    ep_file.write_text("".join(json.dumps(r) + "\n" for r in records))
    out_file.write_text(json.dumps(result, indent=2) + "\n")
    _log_split(job, result, ep_file, int(finished_at * 1000))
    log.info("%s %s: success %.3f over %d episodes", job.label, split, metrics["success_rate"], len(rows))
    return result


def _split_result(job: EvalJob, data_file: str, split: str, rows, metrics: dict, gen_tokens: int) -> dict:
    ev, timing = job.config["eval"], job.timing
    rollout_s = timing["rollout_s"]
    share = len(rows) / timing["episodes_all_splits"]
    return {
        "task": job.task,
        "seed": job.seed,
        "run": job.run_name,
        "step": job.step,
        "split": split,
        "model_dir": job.model_dir,
        "data_file": data_file,
        "train_viter": job.compute.get("train_viter"),  # recorded by the training run (compute.json)
        "viter": ev["viter"],
        "temperature": ev["temperature"],
        "sampling": _jsonable(job.sampling),  # what was sampled from: softmax(logits / T), model's settings ignored
        "weights_dtype": job.weights_dtype,
        "max_new_tokens": ev["max_new_tokens"],
        "sample_seed": ev["seed"],
        "episodes": len(rows),
        "row_ids": [_jsonable(row_id(r, i)) for i, r in enumerate(rows)],
        "compute": _jsonable(job.compute),
        "metrics": _jsonable(metrics),
        "timing": {
            **timing,
            # this split's share of the job's rollout, by episodes (they were played together)
            "generation_s": round(rollout_s * share, 3),
            "generated_tokens": gen_tokens,
            "tokens_per_s": round(timing["rollout"]["generated_tokens"] / rollout_s, 3) if rollout_s else None,
            "episodes_per_s": round(timing["episodes_all_splits"] / rollout_s, 4) if rollout_s else None,
        },
    }


def _log_split(job: EvalJob, result: dict[str, Any], ep_file: Path, finished_ms: int) -> None:
    """The split's MLflow child run: numeric metrics at the checkpoint's step, the result and the episodes. It
    spans the split's work: from the job's start to the end of the split's last episode (`finished_ms`)."""
    import mlflow

    from .tracking import (
        TAG_DATA_FILE,
        TAG_MODEL_DIR,
        TAG_RUN,
        TAG_SPLIT,
        TAG_STEP,
        job_run,
        log_json_artifact,
        log_metrics,
        retry,
    )

    split, metrics = result["split"], result["metrics"]
    tags = {TAG_RUN: job.run_name, TAG_STEP: job.step, TAG_SPLIT: split, TAG_MODEL_DIR: job.model_dir,
            TAG_DATA_FILE: result["data_file"]}  # fmt: skip
    # what tells the runs apart first (the UI shows about 18 characters): the split without its "eval_", then
    # which checkpoint (run@step), then task and seed
    name = f"{split.removeprefix('eval_')} {job.run_name}@{job.step} {job.task}-s{job.seed}"
    with job_run(job.config, "evaluate", task=job.task, seed=job.seed, viter=result["viter"], run_name=name,
                 extra_tags=tags, start_time_ms=job.started_ms, end_time_ms=finished_ms):  # fmt: skip
        numeric = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        numeric = {k: v for k, v in numeric.items() if math.isfinite(v)}
        numeric.update(
            {
                "gflops": gflops_of(job.compute, "paper"),
                "computed_gflops": gflops_of(job.compute, "computed"),
                "generation_s": result["timing"]["generation_s"],
                "split_finished_s": result["timing"]["split_finished_s"],
                "generated_tokens": float(result["timing"]["generated_tokens"]),
                "episodes_per_s": float(result["timing"]["episodes_per_s"] or 0.0),
            }
        )
        log_metrics(numeric, step=job.step)
        log_json_artifact(result, f"{split}.json")
        retry(mlflow.log_artifact, str(ep_file))
        retry(mlflow.log_table, episodes_table(ep_file), artifact_file=f"{split}.episodes_table.json")


def episodes_table(ep_file: Path) -> dict[str, list]:
    """The episode table as MLflow shows it (a browsable, filterable table): one row per episode, the
    first and last attempt's answer and outcome, rewards as text."""
    columns: dict[str, list] = {k: [] for k in ("id", "success", "attempts", "generated_tokens", "first_answer",
                                                "first_outcome", "last_outcome", "rewards")}  # fmt: skip
    with open(ep_file) as fh:
        for line in fh:
            ep = json.loads(line)
            attempts = ep.get("attempts") or [{}]
            columns["id"].append(ep["id"])
            columns["success"].append(bool(ep["success"]))
            columns["attempts"].append(int(ep["num_attempts"]))
            columns["generated_tokens"].append(int(ep["generated_tokens"]))
            columns["first_answer"].append(str(attempts[0].get("answer", "")))
            columns["first_outcome"].append(str(attempts[0].get("outcome", "")))
            columns["last_outcome"].append(str(attempts[-1].get("outcome", "")))
            columns["rewards"].append(json.dumps([a.get("reward") for a in attempts]))
    return columns
