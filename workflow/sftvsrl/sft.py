"""SFT on expert answers: a thin wrapper over TRL's SFTTrainer.

Stage ``init`` trains ``sft.init_steps`` steps from the base model (the shared warm-up); stage
``sft`` trains ``sft.steps`` more from the init. The data are the task's ``sft.jsonl`` rows;
only their ``prompt`` (a chat) and ``completion`` (the assistant answer) reach the trainer, and
TRL's prompt-completion format puts the loss on the completion tokens only (the prompt's labels
are -100). ``sft.loss: dft`` selects TRL's DFT loss (``SFTConfig.loss_type="dft"``).

``save_dirs`` maps a step to a declared output folder: at that step the model is exported with
a ``compute.json`` (the start folder's ledger + 6·N·D for the tokens this stage has put through
the model, counted by the trainer, padding excluded). Trainer checkpoints, exports, resume and
precision follow `checkpoints` (one policy for SFT and RL).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from .checkpoints import (
    TrainingWork,
    checkpoint_step,
    export_at_step,
    file_md5,
    open_training_job,
    per_process,
    process_state,
    start_fingerprint,
    training_precision,
)
from .compute import ComputeLedger
from .tasks import get_task
from .tasks.base import row_images

log = logging.getLogger(__name__)

STAGES = {"init": "init_steps", "sft": "steps", "sft-varied": "steps"}  # stage -> its sft.<key> of steps


def read_sft_rows(data_file: str | Path) -> list[dict[str, Any]]:
    """The SFT rows of a JSONL file; each must hold a `prompt` and a `completion`."""
    from .data import read_jsonl

    rows = read_jsonl(data_file)
    if not rows:
        raise ValueError(f"{data_file}: no SFT rows")
    for i, row in enumerate(rows):
        if "prompt" not in row or "completion" not in row:
            raise ValueError(f"{data_file}: row {i} lacks 'prompt'/'completion' (keys: {sorted(row)})")
    return rows


def sft_dataset(rows: list[dict[str, Any]], task: str | None = None):
    """A datasets.Dataset of prompt/completion (metadata columns dropped; an image task's images
    added: TRL's vision collator puts them into the image parts and through the processor)."""
    from .data import trainer_dataset

    return trainer_dataset(rows, get_task(task) if task else None, ("prompt", "completion"))


def _check_lengths(rows: list[dict[str, Any]], task: str, tokenizer, max_length: int) -> None:
    """Fail clearly when prompts leave no room for the answer (TRL would drop every such row)."""
    from .turns import encode_prompt

    sample = rows[:64]
    lengths = [len(encode_prompt(tokenizer, r["prompt"], row_images(get_task(task), r))) for r in sample]
    too_long = sum(n >= max_length for n in lengths)
    if too_long == len(sample):
        raise ValueError(
            f"config key sft.max_length={max_length}: every prompt is at least that long "
            f"(up to {max(lengths)} tokens), so no answer token would be trained"
        )
    if too_long:
        log.warning(
            "%d of %d sampled prompts reach sft.max_length=%d: their answers are truncated away",
            too_long,
            len(sample),
            max_length,
        )


def build_sft_config(config: dict[str, Any], max_steps: int, seed: int, work_dir: str | Path, **overrides: Any):
    """The SFTConfig of a stage, from the config's `sft` section."""
    import math

    from trl import SFTConfig

    sft = config["sft"]
    precision = training_precision(config["model"])  # its autocast and activation checkpointing
    processes = process_state(config)
    loss = sft["loss"]
    warmup = math.ceil(max_steps * sft["warmup_ratio"])
    kwargs = dict(
        output_dir=str(work_dir),
        max_steps=max_steps,
        per_device_train_batch_size=per_process(sft["batch_size"], processes, "sft.batch_size"),
        gradient_accumulation_steps=sft["grad_accum"],
        learning_rate=sft["learning_rate"],
        lr_scheduler_type=sft["lr_scheduler"],
        warmup_steps=warmup,
        max_length=sft["max_length"],
        loss_type=loss,
        seed=seed,
        data_seed=seed,
        logging_steps=1,
        save_strategy="steps",
        save_steps=sft["save_every"],
        save_total_limit=2,
        report_to=[],  # MLflow through our callback (build_trainer); TRL's profiling timers follow report_to
        run_name=None,
        include_num_input_tokens_seen="non_padding",
        dataloader_num_workers=0,
        disable_tqdm=True,
        **precision,
    )
    kwargs.update(overrides)
    return SFTConfig(**kwargs)


def build_trainer(config: dict[str, Any], model, tokenizer, dataset, args, callbacks: list | None = None):
    """SFTTrainer over a prompt/completion dataset; per-step metrics go to the active MLflow run."""
    from trl import SFTTrainer

    from .mlflow_callback import use_step_callback
    from .model_inputs import cross_attention_images

    trainer = SFTTrainer(
        model=model, args=args, train_dataset=dataset, processing_class=tokenizer, callbacks=list(callbacks or [])
    )
    if cross_attention_images(model) and "images" in dataset.column_names:
        trainer.data_collator = CrossAttentionCollator(trainer.data_collator, tokenizer, model)
    use_step_callback(trainer)
    return trainer


class CrossAttentionCollator:
    """TRL 1.16's vision collator, made right for a cross-attention VLM (Llama-3.2-Vision / mllama).

    TRL processes prompts and completions apart, so with mllama (a) the processor puts a second bos
    before every completion (it adds one to any text that lacks it) and (b) the `cross_attention_mask`
    covers the prompt's tokens only, fewer than the batch's (the model then fails). Here the stray bos
    leaves each row and the image inputs are made for the final ids as the rollout makes them
    (`model_inputs.image_inputs`): each `<|image|>` token's image seen from it to the end, as at sampling."""

    def __init__(self, collator, processor, model):
        self.collator, self.processor, self.model = collator, processor, model
        self.bos = processor.tokenizer.bos_token_id

    def __call__(self, examples):
        import torch

        from .model_inputs import image_inputs

        batch = self.collator(examples)
        ids, attention, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
        keep = attention.bool() & ~((labels != -100) & (ids == self.bos))
        rows = [(ids[i][keep[i]], labels[i][keep[i]]) for i in range(len(ids))]
        width = max(len(row) for row, _ in rows)
        pad = self.processor.tokenizer.pad_token_id
        new_ids = ids.new_full((len(rows), width), pad if pad is not None else 0)
        new_attention, new_labels = torch.zeros_like(new_ids), new_ids.new_full(new_ids.shape, -100)
        for i, (row, row_labels) in enumerate(rows):  # flushed left, as TRL lays a batch out
            new_ids[i, : len(row)], new_attention[i, : len(row)], new_labels[i, : len(row)] = row, 1, row_labels
        images = [example["images"] for example in examples]
        batch.update(input_ids=new_ids, attention_mask=new_attention, labels=new_labels)
        batch.update(image_inputs(self.processor, self.model, new_ids, images))
        return batch


def last_logged_loss(state) -> float | None:
    return next((h["loss"] for h in reversed(state.log_history) if "loss" in h), None)


class SFTExports(TrainerCallback):
    """Exports the model at the save steps, with the compute ledger; counts the tokens of this session."""

    def __init__(self, trainer, work: TrainingWork, tokenizer, stage: str, start_ledger: ComputeLedger, dtype: str):
        self.trainer, self.work, self.tokenizer = trainer, work, tokenizer
        self.stage, self.start_ledger, self.dtype = stage, start_ledger, dtype
        self.tokens_at_start = 0

    def ledger(self, tokens_seen: int) -> ComputeLedger:
        """The start folder's ledger plus this stage's `tokens_seen` (cumulative over sessions)."""
        ledger = ComputeLedger.from_dict(self.start_ledger.to_dict())
        ledger.add(self.stage, train_tokens=tokens_seen)
        return ledger

    def on_train_begin(self, args, state, control, **kwargs):
        self.tokens_at_start = int(state.num_input_tokens_seen)  # > 0 after a resume

    def on_step_end(self, args, state, control, **kwargs):
        step = state.global_step
        if step in self.work.save_dirs:
            tokens = int(state.num_input_tokens_seen)
            # on_step_end runs before step k's own log entry: the loss logged last is step k-1's
            info = {"stage": self.stage, "num_input_tokens_seen": tokens, "last_logged_loss": last_logged_loss(state)}
            export_at_step(self.trainer, self.work, step, self.tokenizer, self.dtype, self.ledger(tokens), info)
        return control


def run_sft(
    config: dict[str, Any],
    stage: str,
    task: str,
    seed: int,
    data_file: str | Path,
    start_dir: str | Path,
    save_dirs: dict[int, str],
    work_dir: str | Path,
    callbacks: list | None = None,
    keep_work_dir: bool = False,
) -> dict[str, Any]:
    """Train one SFT stage (see the module docstring); returns a summary dict.

    `callbacks` are extra transformers TrainerCallbacks (tests use one to simulate a kill);
    `keep_work_dir` keeps the trainer checkpoints after success.
    """
    from transformers import set_seed

    from . import tracking

    if stage not in STAGES:
        raise ValueError(f"unknown SFT stage {stage!r}; use one of {sorted(STAGES)}")
    max_steps = config["sft"][STAGES[stage]]
    set_seed(seed)
    rows = read_sft_rows(data_file)
    job = open_training_job(
        config,
        start_dir=start_dir,
        save_dirs=save_dirs,
        last_step=max_steps,
        steps_key=f"sft.{STAGES[stage]}",
        work_dir=work_dir,
        run_key=sft_run_key(config, stage, task, seed, data_file, start_dir),
        train_viter=None,  # the last training of what this run saves is SFT
    )
    _check_lengths(rows, task, job.tokenizer, config["sft"]["max_length"])
    args = build_sft_config(config, max_steps=max_steps, seed=seed, work_dir=job.work.dir)
    extra_tags = {"sftvsrl.resumed_from_step": job.resumed_step} if job.resume else None
    with tracking.job_run(config, stage=stage, task=task, seed=seed, extra_tags=extra_tags) as run:
        trainer = build_trainer(config, job.model, job.tokenizer, sft_dataset(rows, task), args, callbacks)
        dtype = config["model"]["checkpoint_dtype"]
        exports = SFTExports(trainer, job.work, job.tokenizer, stage, job.ledger, dtype)
        trainer.add_callback(exports)
        log_sample_rows(rows, job.tokenizer)
        t0 = time.time()
        result = trainer.train(resume_from_checkpoint=job.resume)
        summary = sft_summary(trainer, exports, result, stage, max_steps, job.resume, time.time() - t0)
        summary["run_id"] = run.info.run_id if run else None  # ranks > 0 log nothing
        log_summary(summary)
        job.finish(keep_work_dir)
    log.info("%s done: %s", stage, {k: summary[k] for k in ("global_step", "train_loss", "tokens_per_s")})
    return summary


def sft_run_key(config: dict[str, Any], stage: str, task: str, seed: int, data_file, start_dir) -> dict[str, Any]:
    """What an SFT work folder belongs to (see `checkpoints.TrainingWork`)."""
    return {
        "stage": stage,
        "task": task,
        "seed": seed,
        "data_md5": file_md5(data_file),
        **start_fingerprint(start_dir),
        "sft": config["sft"],
        "model_dtype": config["model"]["dtype"],
    }


def log_sample_rows(rows: list[dict[str, Any]], tokenizer) -> None:
    """The first rows as data and as the model reads them (chat template applied), for MLflow."""
    from . import tracking

    rendered = [tokenizer.apply_chat_template(r["prompt"] + r["completion"], tokenize=False) for r in rows[:4]]
    tracking.log_json_artifact(
        {"n_rows": len(rows), "rendered": rendered, "rows": rows[:4]}, "samples/train_rows.json"
    )


def sft_summary(trainer, exports: SFTExports, result, stage: str, max_steps: int, resume, wall: float) -> dict:
    import torch

    state = trainer.state
    tokens = int(state.num_input_tokens_seen)
    session_tokens = tokens - exports.tokens_at_start
    ledger = exports.ledger(tokens)
    return {
        "stage": stage,
        "global_step": int(state.global_step),
        "max_steps": max_steps,
        "resumed_from_step": checkpoint_step(resume),
        "train_loss": float(result.training_loss),
        "final_loss": last_logged_loss(state),
        "train_tokens": tokens,
        "session_tokens": session_tokens,
        "wall_s": wall,
        "tokens_per_s": session_tokens / wall if wall > 0 else 0.0,
        "n_params": ledger.n_params,
        "stage_flops": ledger.stages.get(stage, 0.0),
        "total_flops": ledger.flops,
        "device": str(trainer.args.device),
        "torch_threads": torch.get_num_threads(),
    }


def log_summary(summary: dict[str, Any]) -> None:
    from . import tracking

    metrics = {
        "final/train_loss": summary["train_loss"],
        "final/tokens_per_s": summary["tokens_per_s"],
        "final/wall_s": summary["wall_s"],
        "final/train_tokens": summary["train_tokens"],
        "compute/stage_flops": summary["stage_flops"],
        "compute/total_flops": summary["total_flops"],
        "compute/n_params": summary["n_params"],
    }
    tracking.log_metrics(metrics, step=summary["global_step"])
    tracking.log_json_artifact(summary, "summary.json")
