"""Training checkpoints, model exports and resume: one policy for every training job (SFT and RL).

A training job owns a work folder (`work/<task>/seed<s>/<run>`, outside Snakemake's outputs) holding the
trainer's own checkpoints (`checkpoint-<step>/`), the model exported at each declared step
(`exports/step-<k>/`, hard-linked into its output folder) and `run_key.json` (what the folder belongs
to; a folder from another setup is cleared instead of resumed). A re-run resumes from the newest complete
checkpoint and ends at exactly the configured number of steps.

Before editing: an export of step k is written before the trainer checkpoint of step k, so a checkpoint
at step >= k implies a complete export of k; Snakemake deletes the declared outputs of a failed job, so a
resumed job re-publishes every export at or below its resume step. SFT and RL share one skeleton
(`open_training_job` / `TrainingJob.finish`) and one training-precision rule (`training_precision`).

Details: docs/code-notes.md#workflowsftvsrlcheckpointspy
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

RUN_KEY = "run_key.json"
EXPORTS = "exports"
TRAIN_STATE = "train_state.json"
CHECKPOINT_PREFIX = "checkpoint-"
TRAINER_README = "README.md"  # the model card TRL writes beside its checkpoints


# --------------------------------------------------------------------------- small pieces
def file_md5(path: str | Path) -> str | None:
    """md5 of a file, None when it does not exist."""
    path = Path(path)
    if not path.exists():
        return None
    digest = hashlib.md5()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def start_fingerprint(start_dir: str | Path) -> dict[str, Any]:
    """What identifies a start model in a run key: its folder, config and compute ledger."""
    compute = Path(start_dir, "compute.json")
    return {
        "start": str(Path(start_dir).resolve()),
        "start_config_md5": file_md5(Path(start_dir, "config.json")),
        "start_compute": compute.read_text() if compute.exists() else None,
    }


def checkpoint_step(checkpoint: str | Path | None) -> int:
    """The step of a `checkpoint-<step>` folder; 0 for None (a fresh start)."""
    return int(Path(checkpoint).name[len(CHECKPOINT_PREFIX) :]) if checkpoint else 0


def last_complete_checkpoint(work_dir: str | Path) -> str | None:
    """The newest `checkpoint-<step>` in work_dir that was written completely (has trainer_state.json)."""
    work_dir = Path(work_dir)
    if not work_dir.is_dir():
        return None
    found = [
        (checkpoint_step(p), p)
        for p in work_dir.iterdir()
        if p.is_dir()
        and p.name.startswith(CHECKPOINT_PREFIX)
        and p.name[len(CHECKPOINT_PREFIX) :].isdigit()
        and (p / "trainer_state.json").exists()
    ]
    return str(max(found)[1]) if found else None


def link_tree(src: str | Path, dst: str | Path) -> None:
    """Make `dst` a copy of `src` (hard links where possible: no extra disk), replacing what is there."""
    dst = Path(dst)
    partial = dst.with_name(dst.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    dst.parent.mkdir(parents=True, exist_ok=True)

    def link_or_copy(source: str, target: str) -> None:
        try:
            os.link(source, target)
        except OSError:
            shutil.copy2(source, target)

    shutil.copytree(src, partial, copy_function=link_or_copy)
    if dst.exists():
        shutil.rmtree(dst)
    os.replace(partial, dst)


def check_save_steps(save_dirs: dict[Any, str], last_step: int, key: str) -> dict[int, str]:
    """`save_dirs` with int steps; every step must lie in 1..last_step (`key` names the config key)."""
    save_dirs = {int(k): str(v) for k, v in save_dirs.items()}
    outside = sorted(k for k in save_dirs if not 1 <= k <= last_step)
    if outside:
        raise ValueError(f"save steps {outside} lie outside 1..{key}={last_step}")
    return save_dirs


def training_precision(model_cfg: dict[str, Any]) -> dict[str, bool]:
    """Trainer arguments that follow the device: bf16 / fp16 autocast, use_cpu, activation checkpointing.

    A GPU autocasts to `run_dtype` over fp32 master weights and checkpoints activations (memory is the
    constraint there); a CPU trains plain fp32 (bf16 is ~27x slower there) without checkpointing (time
    is). `model.rehearse_gpu` makes a CPU take the GPU's branch, so CI runs it."""
    import torch

    from .models import device_and_dtype, run_dtype

    device, dtype = device_and_dtype(run_dtype(model_cfg))
    on_cpu = device.type == "cpu"
    if on_cpu and not model_cfg["rehearse_gpu"]:
        return {"bf16": False, "fp16": False, "use_cpu": True, "activation_checkpointing": False}
    return {
        "bf16": dtype == torch.bfloat16,
        "fp16": dtype == torch.float16,
        "use_cpu": on_cpu,
        "activation_checkpointing": True,
    }


def load_for_training(config: dict[str, Any], start_dir: str | Path):
    """Model (fp32 master weights, see `training_precision`) and its tokenizer, or processor for a
    vision-language model, of a training job."""
    from .models import load_model_and_processor

    return load_model_and_processor(
        start_dir, dtype="float32", for_training=True, attn_implementation=config["model"]["attn_implementation"]
    )


# --------------------------------------------------------------------------- the work folder
class TrainingWork:
    """A training job's work folder: run key, trainer checkpoints, exports (see the module docstring).

    `save_dirs` maps a step to its declared output folder; `own_files` are further names the job
    writes in the folder (removed with the rest after success).
    """

    def __init__(self, work_dir: str | Path, key: dict[str, Any], save_dirs: dict[int, str], own_files=()):
        self.dir = Path(work_dir)
        self.key = json.loads(json.dumps(key, default=str))
        self.save_dirs = dict(save_dirs)
        self.own_files = tuple(own_files)

    def export_dir(self, step: int) -> Path:
        return self.dir / EXPORTS / f"step-{step}"

    def open(self) -> str | None:
        """Prepare the folder; return the checkpoint to resume from (None: start from step 0)."""
        if belongs_elsewhere(self.dir, self.key):
            log.warning("work folder %s belongs to another setup: starting over", self.dir)
            self.clear()
        resume = last_complete_checkpoint(self.dir)
        lost = self._lost_outputs(checkpoint_step(resume))
        if resume and lost:
            log.warning("outputs of steps %s are gone and have no export in %s: starting over", lost, self.dir)
            self.clear()
            resume = None
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / RUN_KEY).write_text(json.dumps(self.key, indent=1))
        self.publish(up_to=checkpoint_step(resume))
        if resume:
            log.info("resuming from %s", resume)
        return resume

    def write_export(self, step: int, model, tokenizer, dtype: str, ledger, info: dict[str, Any], state_dict=None):
        """Write the model of `step` to its export folder, then publish it into its output folder."""
        from .models import save_model

        final = self.export_dir(step)
        partial = final.with_name(final.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        save_model(model, tokenizer, partial, dtype=dtype, state_dict=state_dict)
        ledger.save(partial)
        (partial / TRAIN_STATE).write_text(json.dumps({"step": step, **info}, indent=1, default=str))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(partial, final)
        link_tree(final, self.save_dirs[step])
        log.info("step %d: model saved to %s (%s)", step, self.save_dirs[step], dtype)

    def publish(self, up_to: int) -> None:
        """Re-link every export at or below `up_to` into its output folder (restores deleted outputs)."""
        for step in sorted(k for k in self.save_dirs if k <= up_to):
            if self.export_dir(step).exists():
                link_tree(self.export_dir(step), self.save_dirs[step])

    def finish(self, keep: bool = False) -> None:
        """Check that every output exists; then remove what the job wrote here (unless `keep`)."""
        self.publish(up_to=max(self.save_dirs, default=0))
        missing = sorted(k for k, d in self.save_dirs.items() if not Path(d, "config.json").exists())
        if missing:
            raise RuntimeError(f"save steps {missing} were never written (work folder {self.dir})")
        if not keep:
            self.clear()

    def clear(self) -> None:
        """Remove what a training job writes in the folder (checkpoints, exports, run key, own files), nothing else."""
        clear_work_folder(self.dir, self.own_files)

    def _lost_outputs(self, done_step: int) -> list[int]:
        return sorted(
            k
            for k, d in self.save_dirs.items()
            if k <= done_step and not Path(d, "config.json").exists() and not self.export_dir(k).exists()
        )


def belongs_elsewhere(work_dir: Path, key: dict[str, Any]) -> bool:
    """True when the work folder holds another setup's run key, or checkpoints of an unknown setup."""
    key_file = work_dir / RUN_KEY
    if key_file.exists():
        try:
            return json.loads(key_file.read_text()) != key
        except json.JSONDecodeError:
            return True
    return any(work_dir.glob(CHECKPOINT_PREFIX + "*"))


def clear_work_folder(work_dir: Path, own_files: tuple[str, ...] = ()) -> None:
    """Remove what a training job writes in `work_dir` (checkpoints, exports, run key, `own_files`), nothing else."""
    if not work_dir.exists():
        return
    for item in [*work_dir.glob(CHECKPOINT_PREFIX + "*"), work_dir / EXPORTS]:
        shutil.rmtree(item, ignore_errors=True)
    for name in (RUN_KEY, TRAINER_README, *own_files):
        (work_dir / name).unlink(missing_ok=True)
    try:
        work_dir.rmdir()  # only when empty
    except OSError:
        pass


def process_state(config: dict[str, Any]):
    """accelerate's view of this job's processes (one, or one per rank under `accelerate launch`).

    Creating it joins the process group (gloo on CPUs, NCCL on GPUs) before the trainer does, so the
    work folder can be opened rank 0 first; the trainer then shares the same state."""
    from accelerate import PartialState

    return PartialState(cpu=training_precision(config["model"])["use_cpu"])


def open_work(work: TrainingWork, state) -> str | None:
    """Open the work folder in every process of a job: rank 0 prepares it (clears a stale one,
    re-publishes outputs), then the other ranks read the same resume point."""
    with state.main_process_first():
        return work.open() if state.is_main_process else last_complete_checkpoint(work.dir)


def per_process(total: int, state, key: str, micro_batches: int = 1) -> int:
    """`total` samples of one optimizer step split evenly over the job's processes (and into
    `micro_batches` accumulated passes), so a step trains on the same samples however it is split."""
    parts = state.num_processes * micro_batches
    if total % parts:
        raise ValueError(
            f"config key {key}: {total} samples a step do not split into {state.num_processes} processes x "
            f"{micro_batches} micro-batches"
        )
    return total // parts


def export_at_step(trainer, work: TrainingWork, step: int, tokenizer, dtype: str, ledger, info: dict[str, Any]):
    """Export the trainer's model at `step`: every rank gathers the weights, rank 0 writes."""
    accelerator = trainer.accelerator
    state_dict = accelerator.get_state_dict(trainer.model_wrapped)  # gathers sharded weights
    if accelerator.is_main_process:
        work.write_export(step, accelerator.unwrap_model(trainer.model), tokenizer, dtype, ledger, info, state_dict)
    accelerator.wait_for_everyone()


# --------------------------------------------------------------------------- the job skeleton
@dataclass
class TrainingJob:
    """What every training job opens before its trainer runs (see `open_training_job`)."""

    model: Any
    tokenizer: Any  # or the processor of a vision-language model
    ledger: Any  # compute.ComputeLedger of the start model, this run's training fact set
    processes: Any  # accelerate's PartialState
    work: TrainingWork
    resume: str | None  # the trainer checkpoint to resume from
    save_dirs: dict[int, str]

    @property
    def resumed_step(self) -> int:
        return checkpoint_step(self.resume)

    def finish(self, keep_work_dir: bool = False) -> None:
        """Every process done; rank 0 removes the work folder's checkpoints (the outputs stay)."""
        self.processes.wait_for_everyone()
        if self.processes.is_main_process:
            self.work.finish(keep=keep_work_dir)


def open_training_job(
    config: dict[str, Any],
    *,
    start_dir: str | Path,
    save_dirs: dict[Any, str],
    last_step: int,
    steps_key: str,
    work_dir: str | Path,
    run_key: dict[str, Any],
    train_viter: int | None,
    train_start: str | None = None,
    own_files: tuple[str, ...] = (),
) -> TrainingJob:
    """The shared opening of SFT and RL jobs. `steps_key` names the config key of `last_step` in errors;
    `train_viter` and `train_start` are the training facts the saved models record (the RL's VIter and what
    it started from; None for SFT)."""
    from .compute import ComputeLedger
    from .models import count_parameters

    save_dirs = check_save_steps(save_dirs, last_step, steps_key)
    model, tokenizer = load_for_training(config, start_dir)
    ledger = ComputeLedger.load(start_dir, count_parameters(model))
    ledger.train_viter, ledger.train_start = train_viter, train_start
    processes = process_state(config)
    work = TrainingWork(work_dir, run_key, save_dirs, own_files=own_files)
    resume = open_work(work, processes)
    return TrainingJob(model, tokenizer, ledger, processes, work, resume, save_dirs)
