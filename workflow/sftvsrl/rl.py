"""An RL job: GRPO (`grpo.py`) from a start folder, with its bookkeeping (ledger, exports, state, MLflow).

`run_rl` reads as the job: open the work folder and the start model, the per-step accounting
(`StepAccounting`: what each rollout adds to the ledger, the sample table and the step's metrics), the
rollout function that hands it every rollout, then the trainer, whose step callback (`RLStepCallback`)
adds each step's training tokens, logs the step's metrics and saves the state.

Checkpoints, exports, resume and precision follow `checkpoints` (one policy for SFT and RL):
trainer checkpoints every `rl.save_every` steps in `work_dir`, the models that evaluation reads
exported at the `save_dirs` steps. `rl_state.json` beside the checkpoints holds the ledger and
the sample table after every step, so a resumed run continues both.

Compute (compute.json, cumulative from the base model): the start folder's ledger + 6·N·(tokens
of a training step: prompt + completion, every iteration) + 2·N·(sampled tokens), in two accountings
(`names.ACCOUNTINGS`): the paper's counts every played episode, "computed" what the update pass read.
Not counted: prompt prefill during generation, the reference-model pass when beta > 0, and the
old-log-prob pass when num_iterations > 1 (all inference, 2·N·D, small next to the above here).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from .checkpoints import (
    TrainingWork,
    export_at_step,
    file_md5,
    load_for_training,
    open_training_job,
    start_fingerprint,
)
from .compute import ComputeLedger
from .grpo import (
    EpisodeRollout,
    PlayedRollout,
    PromptLookup,
    build_grpo_trainer,
    check_model_passes,
    no_signal_groups,
    user_text,
)
from .names import START_INIT
from .rollout import EpisodeTrace, RolloutStats, merge_summaries, summarize
from .tasks import get_task
from .update_pass import kl_to_start, supports_compact_scoring

log = logging.getLogger(__name__)

STATE_FILE = "rl_state.json"  # in work_dir: ledger and samples after every step (resume)
SAMPLES_PER_ROLLOUT = 2  # episodes per rollout kept for the sample table


# --------------------------------------------------------------------------- run state
@dataclass
class RunProgress:
    """What the step accounting tells the step callback, and what survives a restart (`rl_state.json`)."""

    ledger: ComputeLedger
    start_flops: float
    rl_generated_tokens: int = 0
    rl_train_tokens: int = 0  # the paper's accounting: every played episode
    rl_read_tokens: int = 0  # what the update pass read (silent groups' episodes skipped)
    buffer_tokens: int = 0  # prompt + completion tokens of the current generation batch
    buffer_read_tokens: int = 0  # the part of them the update pass reads
    step_metrics: dict[str, float] = field(default_factory=dict)  # logged at the next on_log
    samples: list[dict[str, Any]] = field(default_factory=list)
    history: dict[str, Any] = field(default_factory=dict)  # step -> snapshot (for resume)
    silent_steps: int = 0  # steps whose every GRPO group had equal rewards (no gradient)

    def snapshot(self) -> dict[str, Any]:
        return {
            "ledger": self.ledger.to_dict(),
            "rl_generated_tokens": self.rl_generated_tokens,
            "rl_train_tokens": self.rl_train_tokens,
            "rl_read_tokens": self.rl_read_tokens,
        }

    def save(self, work_dir: Path, step: int) -> None:
        """Record the state of `step` (written before the trainer checkpoint of that step)."""
        self.history[str(step)] = self.snapshot()
        path = work_dir / STATE_FILE
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps({"steps": self.history, "samples": self.samples}, indent=1, default=str))
        os.replace(tmp, path)

    def resume(self, work_dir: Path, step: int) -> None:
        """Continue from the state saved at `step` (0: nothing to restore)."""
        if not step:
            return
        path = work_dir / STATE_FILE
        saved = json.loads(path.read_text()) if path.exists() else {}
        snap = saved.get("steps", {}).get(str(step))
        if snap is None:
            raise RuntimeError(f"no RL state for step {step} in {path}: delete {work_dir} to start over")
        self.ledger = ComputeLedger.from_dict(snap["ledger"])
        self.rl_generated_tokens = int(snap["rl_generated_tokens"])
        self.rl_train_tokens = int(snap["rl_train_tokens"])
        self.rl_read_tokens = int(snap.get("rl_read_tokens", snap["rl_train_tokens"]))
        self.history = {k: v for k, v in saved["steps"].items() if int(k) <= step}
        self.samples = [x for x in saved.get("samples", []) if x["step"] <= step]


class StepAccounting:
    """What each rollout adds to the run (`EpisodeRollout` hands it every rollout it plays): sampled tokens
    into the ledger, the generation batch the next optimizer steps train on, the sample table, the step's
    episode metrics and the KL to the start model (`start_model`; None: not measured), all in `progress`."""

    def __init__(self, rl: dict[str, Any], progress: RunProgress, start_model=None):
        self.rl, self.progress, self.start_model = rl, progress, start_model

    def record(self, trainer, played: PlayedRollout) -> None:
        """Ledger and step metrics of the whole rollout: every rank's episodes (gathered), so compute
        and metrics are the job's, however many processes played it."""
        from accelerate.utils import gather_object

        kl = self.kl_to_start(trainer, played.traces)
        seconds = time.perf_counter() - played.started  # the KL probe runs inside the rollout: its time counts
        ranks = gather_object([rank_summary(played)])
        # ranks hold consecutive slices of the step's episodes, so their rewards in rank order form the groups
        silent = no_signal_groups([r for rank in ranks for r in rank["rewards"]], self.rl["num_generations"])
        progress, summary = self.progress, merge_summaries(ranks)
        progress.silent_steps += int(all(silent))
        generated = int(summary["generated_tokens"])
        progress.ledger.add("rl", generated_tokens=generated)
        progress.rl_generated_tokens += generated
        # each optimizer step until the next rollout passes this batch through a training step
        progress.buffer_tokens = sum(int(r["played_tokens"]) for r in ranks)
        progress.buffer_read_tokens = sum(int(r["step_tokens"]) for r in ranks)
        step = trainer.state.global_step + 1
        group = self.rl["num_generations"]
        for i in range(0, min(len(played.traces), SAMPLES_PER_ROLLOUT * group), group):  # a group's first episode
            progress.samples.append(sample_record(step, played.traces[i], played.prompts[i]))
        progress.step_metrics.update(episode_metrics(summary, ranks, played.stats, seconds))
        # groups whose episodes all scored alike: zero advantage, no learning signal
        progress.step_metrics["rl/no_signal_share"] = sum(silent) / len(silent)
        if kl is not None:
            progress.step_metrics["rl/kl_to_start"] = kl
        if all(silent):
            log.info("step %d: every GRPO group has equal rewards (rl/no_signal_share 1): no gradient", step)

    def kl_to_start(self, trainer, traces: list[EpisodeTrace]) -> float | None:
        """KL(policy || start model) on the sampled tokens of the step's first `rl.kl_episodes` episodes."""
        count = self.rl["kl_episodes"]
        if not count or self.start_model is None:
            return None
        policy = trainer.accelerator.unwrap_model(trainer.model)
        return kl_to_start(policy, self.start_model, traces[:count], self.rl["temperature"])


def rank_summary(played: PlayedRollout) -> dict[str, Any]:
    """This rank's part of a rollout, as the step's accounting gathers it from every rank."""
    traces = played.traces
    return {
        **summarize(traces),
        "max_completion": max(len(t.completion_ids) for t in traces),
        "prefill_tokens": played.stats.prefill_tokens,
        "step_tokens": played.read_tokens,
        # the paper's count: every played episode's prompt and completion, read or not
        "played_tokens": sum(len(t.prompt_ids) + len(t.completion_ids) for t in traces),
        "rewards": played.rewards,
    }


def episode_metrics(summary: dict[str, float], ranks: list[dict[str, Any]], stats: RolloutStats, seconds: float):
    """The step's episode, token and rollout-time metrics (`summary`: every rank's episodes merged)."""
    return {
        "episode/count": summary["episodes"],
        "episode/success_rate": summary["success_rate"],
        "episode/return": summary["episode_return"],
        "episode/attempts": summary["attempts_per_episode"],
        "episode/unparseable_share": summary["unparseable_share"],
        "episode/truncated_share": summary["truncated_share"],
        "tokens/generated": summary["generated_tokens"],
        "tokens/completion": summary["completion_tokens"],
        "tokens/max_completion": max(r["max_completion"] for r in ranks),
        "tokens/prefill": sum(r["prefill_tokens"] for r in ranks),  # read, not sampled
        "time/rollout_s": seconds,  # this rank's (rank 0 logs)
        "time/generation_s": stats.generation_s,
        "time/verification_s": stats.verification_s,
    }


def sample_record(step: int, trace: EpisodeTrace, prompt: Any) -> dict[str, Any]:
    """One row of the sample table (`rl_samples.json`): an episode's prompt and attempts."""
    return {
        "step": step,
        "prompt": user_text(prompt)[:2000],
        "episode_return": trace.episode_return,
        "success": trace.success,
        "attempts": [
            {"answer": a.answer, "reward": a.reward, "outcome": a.outcome, "feedback": a.feedback}
            for a in trace.attempts
        ],
    }


class RLStepCallback(TrainerCallback):
    """Per step: training tokens into the ledger, time split, exports at the save steps, state for
    resume; the step's metrics go to MLflow at the trainer's next log (after the step's own)."""

    def __init__(self, work: TrainingWork, tokenizer, progress: RunProgress, dtype: str):
        self.work, self.tokenizer, self.progress, self.dtype = work, tokenizer, progress, dtype
        self.trainer = None  # set once the trainer exists: exports save its model
        self.step_t0 = 0.0
        self.step_logs: list[dict[str, float]] = []

    def on_step_begin(self, args, state, control, **kwargs):
        self.step_t0 = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        progress, step = self.progress, int(state.global_step)
        # the whole generation batch is this step's (the paper's accounting); the update pass reads a part of it
        progress.ledger.add(
            "rl", train_tokens=progress.buffer_tokens, computed_train_tokens=progress.buffer_read_tokens
        )
        progress.rl_train_tokens += progress.buffer_tokens
        progress.rl_read_tokens += progress.buffer_read_tokens
        metrics = progress.step_metrics
        step_s = time.perf_counter() - self.step_t0
        rollout_s = metrics.pop("time/rollout_s", 0.0)
        metrics["time/rollout_other_s"] = (
            rollout_s - metrics.get("time/generation_s", 0.0) - metrics.get("time/verification_s", 0.0)
        )
        metrics["time/update_s"] = step_s - rollout_s
        metrics["time/step_s"] = step_s
        metrics["tokens/generated_total"] = progress.rl_generated_tokens
        metrics["tokens/trained_total"] = progress.rl_train_tokens
        metrics["tokens/read_total"] = progress.rl_read_tokens
        metrics["compute/gflops"] = progress.ledger.flops / 1e9
        metrics["compute/computed_gflops"] = progress.ledger.computed_flops / 1e9
        metrics["compute/rl_gflops"] = (progress.ledger.flops - progress.start_flops) / 1e9
        if step in self.work.save_dirs:
            info = {"stage": "rl", **progress.snapshot()}
            export_at_step(self.trainer, self.work, step, self.tokenizer, self.dtype, progress.ledger, info)
        if state.is_world_process_zero:
            progress.save(self.work.dir, step)
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        from .tracking import log_metrics

        metrics, self.progress.step_metrics = self.progress.step_metrics, {}
        if metrics and state.is_world_process_zero:
            log_metrics({k: float(v) for k, v in metrics.items()}, step=int(state.global_step))
            self.step_logs.append(metrics)
        return control


# --------------------------------------------------------------------------- the stage
def rl_run_key(config: dict[str, Any], task: str, seed: int, viter: int, run_name: str, data_file, start_dir):
    """What an RL work folder belongs to (see `checkpoints.TrainingWork`)."""
    return {
        "stage": "rl",
        "run": run_name,
        "task": task,
        "seed": seed,
        "viter": viter,
        "data_md5": file_md5(data_file),
        **start_fingerprint(start_dir),
        "rl": config["rl"],
        "model_dtype": config["model"]["dtype"],
    }


def load_rl_rows(data_file: str | Path, task: str):
    """The RL rows, the dataset TRL iterates (prompts, and an image task's images: TRL hands them
    to the model beside the rollout's token ids) and the prompt -> row lookup."""
    from .data import read_jsonl, trainer_dataset

    rows = read_jsonl(data_file)
    if not rows:
        raise ValueError(f"{data_file}: no rows")
    return trainer_dataset(rows, get_task(task), ("prompt",)), PromptLookup(rows)


def run_rl(
    config: dict[str, Any],
    task: str,
    seed: int,
    viter: int,
    run_name: str,
    data_file: str | Path,
    start_dir: str | Path,
    save_dirs: dict[int, str],
    work_dir: str | Path,
    callbacks: Sequence[Any] | None = None,
    start_name: str = START_INIT,
) -> dict[str, Any]:
    """GRPO from `start_dir` on the rows of `data_file`; export models at `save_dirs` steps. `start_name`:
    what `start_dir` is in the study ("init", "base" or "sft-<step>"), recorded with the models.

    `callbacks`: extra transformers TrainerCallbacks (tests use one to simulate a killed job).
    Returns a summary (final step, ledger, checkpoint folders).
    """
    from .tracking import TAG_RUN, TAG_START, TAG_START_DIR, job_run, log_json_artifact, log_metrics, log_params

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    steps = config["rl"]["steps"]
    dataset, lookup = load_rl_rows(data_file, task)
    key = rl_run_key(config, task, seed, viter, run_name, data_file, start_dir)
    job = open_training_job(
        config,
        start_dir=start_dir,
        save_dirs=save_dirs,
        last_step=steps,
        steps_key="rl.steps",
        work_dir=work_dir,
        run_key=key,
        train_viter=viter,
        train_start=start_name,
        own_files=(STATE_FILE, STATE_FILE + ".tmp"),
    )
    accounting = step_accounting(config, job, start_dir)
    rollout, progress = episode_rollout(config, task, job, lookup, viter, accounting), accounting.progress
    tags = {TAG_RUN: run_name, TAG_START_DIR: str(start_dir), TAG_START: start_name}
    name = f"{run_name}-{task}-s{seed}"  # what, then task and seed, as every training run's name
    with job_run(config, stage="rl", task=task, seed=seed, viter=viter, run_name=name, extra_tags=tags) as run:
        params = {"rl_viter": viter, "rl_start_dir": str(start_dir), "n_params": job.ledger.n_params}
        log_params({**params, "resumed_from_step": job.resumed_step})
        t0 = time.perf_counter()
        step_logs = train(config, job, dataset, rollout, progress, seed, viter, run_name, callbacks)
        job.finish()
        log_json_artifact(progress.samples, "rl_samples.json")
        log_json_artifact(progress.ledger.to_dict(), "compute.json")
        ledger = progress.ledger
        final = {"final_gflops": ledger.flops / 1e9, "final_computed_gflops": ledger.computed_flops / 1e9}
        log_metrics({"train_seconds": time.perf_counter() - t0, **final}, step=steps)
        return {
            "run_id": run.info.run_id if run else None,  # ranks > 0 log nothing
            "last_step_metrics": step_logs[-1] if step_logs else {},
            "final_step": steps,
            "resumed_from_step": job.resumed_step,
            "ledger": progress.ledger.to_dict(),
            "save_dirs": job.save_dirs,
        }


def step_accounting(config: dict[str, Any], job, start_dir) -> StepAccounting:
    """The run's per-step accounting, its progress restored when the job resumes; with the start model
    beside it when the KL to the start is measured."""
    progress = RunProgress(ledger=job.ledger, start_flops=job.ledger.flops)
    progress.resume(job.work.dir, job.resumed_step)
    start_model = None
    if config["rl"]["kl_episodes"] and supports_compact_scoring(job.model):
        start_model = load_for_training(config, start_dir)[0].eval()
    return StepAccounting(config["rl"], progress, start_model)


def episode_rollout(config: dict[str, Any], task: str, job, lookup: PromptLookup, viter: int, accounting):
    """The run's rollout function, handing every rollout it plays to `accounting`."""
    check_model_passes(job.model, config["rl"], get_task(task))
    skips_rows = supports_compact_scoring(job.model)  # the update pass can leave silent groups unread
    return EpisodeRollout(
        get_task(task), lookup, job.tokenizer, viter, config["rl"], accounting.record, skips_rows=skips_rows
    )


def train(
    config, job, dataset, rollout, progress: RunProgress, seed: int, viter: int, run_name: str, callbacks
) -> list[dict[str, float]]:
    """The GRPO steps left after a resume; the metrics each logged."""
    steps = config["rl"]["steps"]
    if job.resumed_step >= steps:
        return []
    step_callback = RLStepCallback(job.work, job.tokenizer, progress, config["model"]["checkpoint_dtype"])
    step_callbacks = [step_callback, *(callbacks or [])]
    trainer = build_grpo_trainer(
        config, job.model, job.tokenizer, dataset, rollout, seed, viter, job.work.dir, run_name, step_callbacks
    )
    step_callback.trainer = trainer
    trainer.train(resume_from_checkpoint=job.resume)
    if trainer.state.global_step != steps:
        raise RuntimeError(f"RL ended at step {trainer.state.global_step}, expected rl.steps={steps}")
    warn_if_no_signal(progress.silent_steps, steps - job.resumed_step)
    return step_callback.step_logs


def warn_if_no_signal(silent_steps: int, steps_run: int) -> None:
    """A run in which every step had equal rewards in every group learnt nothing: say so, naming the metric."""
    if steps_run and silent_steps == steps_run:
        log.warning(
            "every RL step had equal rewards in every GRPO group (rl/no_signal_share 1 at each step): "
            "the policy got no gradient; raise rl.temperature or rl.num_generations, or start from a model "
            "that sometimes succeeds"
        )
