"""SFT on expert answers: a thin wrapper over TRL's SFTTrainer.

Stage ``init`` trains ``sft.init_steps`` steps from the base model (the shared warm-up); stage
``sft`` trains ``sft.steps`` more from the init. The data are the task's ``sft.jsonl`` rows;
only their ``prompt`` (a chat) and ``completion`` (the assistant answer) reach the trainer, and
TRL's prompt-completion format puts the loss on the completion tokens only (the prompt's labels
are -100). ``sft.loss: dft`` selects TRL's DFT loss (``SFTConfig.loss_type="dft"``).

Outputs and resume
------------------
- ``save_dirs`` maps a step to a declared output folder. At that step the model is written in
  ``model.checkpoint_dtype`` with a ``compute.json`` (the start folder's ledger + 6·N·D for the
  tokens this stage has put through the model, counted by the trainer, padding excluded).
- Trainer checkpoints (optimizer, scheduler, RNG, step) live in ``work_dir`` every
  ``sft.save_every`` steps (two kept), never in the declared outputs. A re-run of a killed job
  resumes from the last one and ends at exactly the configured number of steps.
- Snakemake deletes a failed job's declared outputs, so a save step passed before the kill would
  be lost on resume. Each saved model is therefore written first to ``work_dir/saved/step-<k>``
  and then hard-linked (copied where links are impossible) into its output folder; on resume
  every save step at or below the resume point is re-linked from there. Saving happens at the end
  of step k, before the trainer checkpoint of step k, so a checkpoint at step >= k implies the
  saved copy of k is complete.
- ``work_dir/run_key.json`` records what the work folder belongs to (stage, task, seed, data,
  start model, SFT config); a work folder from a different setup is wiped instead of resumed.
  After success its contents are removed (they hold optimizer states: about 3x the model); only
  what run_sft itself wrote there is ever deleted.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

STAGES = {"init": "init_steps", "sft": "steps"}
SAVED = "saved"
RUN_KEY = "run_key.json"


def read_sft_rows(data_file: str | Path) -> list[dict[str, Any]]:
    rows = []
    with open(data_file) as fh:
        for line in fh:
            if line.strip():
                rows.append(json.loads(line))
    if not rows:
        raise ValueError(f"{data_file}: no SFT rows")
    for i, row in enumerate(rows[:1]):
        if "prompt" not in row or "completion" not in row:
            raise ValueError(f"{data_file}: row {i} lacks 'prompt'/'completion' (keys: {sorted(row)})")
    return rows


def sft_dataset(rows: list[dict[str, Any]]):
    """A datasets.Dataset of prompt/completion only (metadata columns dropped)."""
    from datasets import Dataset

    return Dataset.from_list([{"prompt": r["prompt"], "completion": r["completion"]} for r in rows])


def _check_lengths(rows: list[dict[str, Any]], tokenizer, max_length: int) -> None:
    """Fail clearly when prompts leave no room for the answer (TRL would drop every such row)."""
    sample = rows[:64]
    lengths = []
    for r in sample:
        ids = tokenizer.apply_chat_template(r["prompt"], add_generation_prompt=True, tokenize=True)
        ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
        lengths.append(len(ids))
    too_long = sum(n >= max_length for n in lengths)
    if too_long == len(sample):
        raise ValueError(f"config key sft.max_length={max_length}: every prompt is at least that long "
                         f"(up to {max(lengths)} tokens), so no answer token would be trained")
    if too_long:
        log.warning("%d of %d sampled prompts reach sft.max_length=%d: their answers are truncated away",
                    too_long, len(sample), max_length)


def _file_md5(path: str | Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _run_key(config: dict[str, Any], stage: str, task: str, seed: int, data_file: str | Path,
             start_dir: str | Path) -> dict[str, Any]:
    start_cfg = Path(start_dir, "config.json")
    start_compute = Path(start_dir, "compute.json")
    return {
        "stage": stage,
        "task": task,
        "seed": seed,
        "data_md5": _file_md5(data_file),
        "start": str(Path(start_dir).resolve()),
        "start_config_md5": _file_md5(start_cfg) if start_cfg.exists() else None,
        "start_compute": start_compute.read_text() if start_compute.exists() else None,
        "sft": config["sft"],
        "model_dtype": (config.get("model") or {}).get("dtype", "auto"),
    }


def _clear_work_dir(work_dir: Path) -> None:
    """Remove what run_sft puts in a work folder (trainer checkpoints, saved models, run key), nothing else."""
    if not work_dir.exists():
        return
    for item in list(work_dir.glob("checkpoint-*")) + [work_dir / SAVED]:
        shutil.rmtree(item, ignore_errors=True)
    (work_dir / RUN_KEY).unlink(missing_ok=True)
    (work_dir / "README.md").unlink(missing_ok=True)  # the model card TRL writes beside its checkpoints
    try:
        work_dir.rmdir()  # only when empty
    except OSError:
        pass


def _prepare_work_dir(work_dir: Path, key: dict[str, Any]) -> None:
    key_file = work_dir / RUN_KEY
    if key_file.exists():
        try:
            old = json.loads(key_file.read_text())
        except json.JSONDecodeError:
            old = None
        if old != json.loads(json.dumps(key, default=str)):
            log.warning("work folder %s belongs to another setup: starting over", work_dir)
            _clear_work_dir(work_dir)
    elif any(work_dir.glob("checkpoint-*")):
        log.warning("work folder %s has checkpoints but no %s: starting over", work_dir, RUN_KEY)
        _clear_work_dir(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    key_file.write_text(json.dumps(key, indent=1, default=str))


def _link_tree(src: Path, dst: Path) -> None:
    """Make dst a copy of src: hard links where possible (no extra disk), else copies."""
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    for item in src.rglob("*"):
        target = dst / item.relative_to(src)
        if item.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(item, target)
        except OSError:
            shutil.copy2(item, target)


def _trainer_precision(dtype_name: str) -> dict[str, bool]:
    """bf16 / fp16 mixed precision from the configured dtype and the device; fp32 on a CPU."""
    import torch

    from .models import device_and_dtype

    device, dtype = device_and_dtype(dtype_name)
    if device.type == "cpu":
        # bf16 on this kind of CPU is ~27x slower than fp32; TRL would default to bf16=True
        return {"bf16": False, "fp16": False, "use_cpu": True}
    return {"bf16": dtype == torch.bfloat16, "fp16": dtype == torch.float16 and device.type == "cuda",
            "use_cpu": False}


def build_sft_config(config: dict[str, Any], max_steps: int, seed: int, work_dir: str | Path, **overrides: Any):
    """The SFTConfig of a stage, from the config's `sft` section."""
    import math

    from trl import SFTConfig

    sft = config["sft"]
    precision = _trainer_precision((config.get("model") or {}).get("dtype", "auto"))
    on_gpu = not precision["use_cpu"]
    loss = sft.get("loss", "nll")
    if loss not in ("nll", "dft"):
        raise ValueError(f"config key sft.loss: {loss!r} is not supported (nll, dft)")
    if "dft" not in SFTConfig.__dataclass_fields__["loss_type"].metadata.get("choices", ["dft"]):
        raise ValueError("config key sft.loss: dft needs a TRL whose SFTConfig has loss_type='dft' (TRL >= 0.22)")
    warmup = int(math.ceil(max_steps * float(sft.get("warmup_ratio", 0.0))))
    kwargs = dict(
        output_dir=str(work_dir),
        max_steps=max_steps,
        per_device_train_batch_size=sft.get("batch_size", 8),
        gradient_accumulation_steps=sft.get("grad_accum", 1),
        learning_rate=sft.get("learning_rate", 1e-5),
        lr_scheduler_type=sft.get("lr_scheduler", "cosine"),
        warmup_steps=warmup,
        max_length=sft.get("max_length", 512),
        loss_type=loss,
        seed=seed,
        data_seed=seed,
        logging_steps=1,
        save_strategy="steps",
        save_steps=sft.get("save_every", 50),
        save_total_limit=2,
        report_to=["mlflow"],
        run_name=None,
        include_num_input_tokens_seen="non_padding",
        dataloader_num_workers=0,
        # GPU memory is the constraint there; on a CPU recomputation only costs time
        activation_checkpointing=on_gpu,
        disable_tqdm=True,
        **precision,
    )
    kwargs.update(overrides)
    return SFTConfig(**kwargs)


def build_trainer(config: dict[str, Any], model, tokenizer, dataset, args, callbacks: list | None = None):
    """SFTTrainer over a prompt/completion dataset; per-step metrics go to the active MLflow run."""
    from trl import SFTTrainer

    from . import tracking

    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                         callbacks=list(callbacks or []))
    if "mlflow" in (args.report_to or []):
        tracking.use_step_callback(trainer)
    return trainer


def _make_save_callback(trainer, tokenizer, save_dirs: dict[int, str], saved_root: Path, ledger_base,
                        stage: str, checkpoint_dtype: str):
    from transformers import TrainerCallback

    from .models import save_model

    class SaveAtSteps(TrainerCallback):
        """At each step of `save_dirs`: write the model + compute.json to work_dir/saved/step-k, link it out."""

        def on_step_end(self, args, state, control, **kwargs):
            step = state.global_step
            if step not in save_dirs:
                return control
            state_dict = trainer.accelerator.get_state_dict(trainer.model_wrapped)  # gathers sharded weights
            if state.is_world_process_zero:
                write_saved(step, state, state_dict)
            trainer.accelerator.wait_for_everyone()
            return control

    def write_saved(step: int, state, state_dict) -> None:
        tmp = saved_root / f"step-{step}.tmp"
        final = saved_root / f"step-{step}"
        shutil.rmtree(tmp, ignore_errors=True)
        model = trainer.accelerator.unwrap_model(trainer.model)
        save_model(model, tokenizer, tmp, dtype=checkpoint_dtype, state_dict=state_dict)
        ledger = ledger_base()
        ledger.add(stage, train_tokens=int(state.num_input_tokens_seen))
        ledger.save(tmp)
        (tmp / "train_state.json").write_text(json.dumps(
            {"stage": stage, "step": step, "num_input_tokens_seen": int(state.num_input_tokens_seen),
             # on_step_end runs before step k's own log entry: this is the loss of step k-1
             "last_logged_loss": next((h["loss"] for h in reversed(state.log_history) if "loss" in h), None)},
            indent=1))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        _link_tree(final, Path(save_dirs[step]))
        log.info("step %d: model saved to %s (%s)", step, save_dirs[step], checkpoint_dtype)

    return SaveAtSteps()


def run_sft(config: dict[str, Any], stage: str, task: str, seed: int, data_file: str | Path,
            start_dir: str | Path, save_dirs: dict[int, str], work_dir: str | Path,
            callbacks: list | None = None, keep_work_dir: bool = False) -> dict[str, Any]:
    """Train one SFT stage (see the module docstring); returns a summary dict.

    `callbacks` are extra transformers TrainerCallbacks (tests use one to simulate a kill);
    `keep_work_dir` keeps the trainer checkpoints after success.
    """
    import torch
    from transformers import set_seed
    from transformers.trainer_utils import get_last_checkpoint

    from . import tracking
    from .compute import ComputeLedger
    from .models import count_parameters, load_model_and_tokenizer

    if stage not in STAGES:
        raise ValueError(f"unknown SFT stage {stage!r}; use one of {sorted(STAGES)}")
    max_steps = int(config["sft"][STAGES[stage]])
    save_dirs = {int(k): str(v) for k, v in save_dirs.items()}
    bad = [k for k in save_dirs if not 1 <= k <= max_steps]
    if bad:
        raise ValueError(f"save steps {bad} outside 1..{max_steps} (sft.{STAGES[stage]})")
    work = Path(work_dir)
    _prepare_work_dir(work, _run_key(config, stage, task, seed, data_file, start_dir))
    saved_root = work / SAVED
    saved_root.mkdir(exist_ok=True)

    set_seed(seed)
    rows = read_sft_rows(data_file)
    dataset = sft_dataset(rows)
    # Training weights stay fp32; bf16/fp16 come in as autocast (mixed precision) where the GPU has it.
    model, tokenizer = load_model_and_tokenizer(start_dir, dtype="float32", for_training=True,
                                                attn_implementation=(config.get("model") or {}).get("attn_implementation"))
    n_params = count_parameters(model)
    _check_lengths(rows, tokenizer, int(config["sft"].get("max_length", 512)))

    def ledger_base() -> ComputeLedger:
        return ComputeLedger.load(start_dir, n_params=n_params)

    args = build_sft_config(config, max_steps=max_steps, seed=seed, work_dir=work)
    last = get_last_checkpoint(str(work)) if any(work.glob("checkpoint-*")) else None
    resumed_step = int(Path(last).name.split("-")[-1]) if last else 0

    # transformers' MLflowCallback starts its own run when these are set; it must use ours.
    saved_env = {k: os.environ.pop(k) for k in ("MLFLOW_NESTED_RUN", "MLFLOW_RUN_ID") if k in os.environ}
    extra_tags = {"sftvsrl.resumed_from_step": resumed_step} if last else None
    try:
        with tracking.job_run(config, stage=stage, task=task, seed=seed, extra_tags=extra_tags) as run:
            trainer = build_trainer(config, model, tokenizer, dataset, args, callbacks)
            checkpoint_dtype = (config.get("model") or {}).get("checkpoint_dtype", "float32")
            trainer.add_callback(_make_save_callback(trainer, tokenizer, save_dirs, saved_root, ledger_base,
                                                     stage, checkpoint_dtype))
            # Save steps passed before the resume point: their outputs may have been deleted.
            for step in sorted(k for k in save_dirs if k <= resumed_step):
                src = saved_root / f"step-{step}"
                if not src.exists():
                    raise RuntimeError(f"resuming at step {resumed_step} but {src} is missing: "
                                       f"delete {work} to start this stage over")
                _link_tree(src, Path(save_dirs[step]))
            if last:
                log.info("resuming %s from %s (step %d of %d)", stage, last, resumed_step, max_steps)
            tracking.log_json_artifact(
                {"n_rows": len(rows), "rendered": [
                    tokenizer.apply_chat_template(r["prompt"] + r["completion"], tokenize=False) for r in rows[:4]],
                 "rows": rows[:4]},
                "samples/train_rows.json",
            )
            t0 = time.time()
            result = trainer.train(resume_from_checkpoint=last)
            wall = time.time() - t0
            state = trainer.state
            session_tokens = int(state.num_input_tokens_seen) - int(trainer._initial_num_input_tokens_seen or 0) \
                if hasattr(trainer, "_initial_num_input_tokens_seen") else int(state.num_input_tokens_seen)
            ledger = ledger_base()
            ledger.add(stage, train_tokens=int(state.num_input_tokens_seen))
            summary = {
                "stage": stage,
                "global_step": int(state.global_step),
                "max_steps": max_steps,
                "resumed_from_step": resumed_step,
                "train_loss": float(result.training_loss),
                "final_loss": next((h["loss"] for h in reversed(state.log_history) if "loss" in h), None),
                "train_tokens": int(state.num_input_tokens_seen),
                "session_tokens": session_tokens,
                "wall_s": wall,
                "tokens_per_s": session_tokens / wall if wall > 0 else 0.0,
                "n_params": n_params,
                "stage_flops": ledger.stages.get(stage, 0.0),
                "total_flops": ledger.flops,
                "device": str(trainer.args.device),
                "torch_threads": torch.get_num_threads(),
                "run_id": run.info.run_id,
            }
            tracking.log_metrics({
                "final/train_loss": summary["train_loss"],
                "final/tokens_per_s": summary["tokens_per_s"],
                "final/wall_s": wall,
                "final/train_tokens": summary["train_tokens"],
                "compute/stage_flops": summary["stage_flops"],
                "compute/total_flops": summary["total_flops"],
                "compute/n_params": n_params,
            }, step=int(state.global_step))
            tracking.log_json_artifact(summary, "summary.json")
            missing = [k for k in save_dirs if not Path(save_dirs[k], "config.json").exists()]
            if missing:
                raise RuntimeError(f"save steps {missing} were never written")
    finally:
        os.environ.update(saved_env)
    if not keep_work_dir:
        _clear_work_dir(work)
    log.info("%s done: %s", stage, {k: summary[k] for k in ("global_step", "train_loss", "tokens_per_s")})
    return summary
