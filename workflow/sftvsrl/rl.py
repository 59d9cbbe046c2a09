"""RL with multi-turn verification: TRL's GRPOTrainer driven by our rollout engine.

The paper trains with PPO (value head, GAE, per-attempt rewards). TRL 1.x has no PPO, so this
project runs GRPO with the paper's episodes and rewards:

- One episode is one GRPO sample. Its completion is attempt 1 + feedback 1 + attempt 2 + ...,
  built token by token by `rollout.run_episodes`; the feedback turns are context (`env_mask` 0,
  out of the loss), the attempts are trained. The G samples of a group all start from the same
  dataset row (the same hand), so the group baseline compares answers to one problem.
- Reward of a sample (`rl.reward`):
  * `episode_return` (default): the sum of the episode's per-attempt rewards (+5 correct,
    -1 / -2 / -3 for wrong / wrong numbers / illegal, ...). The paper gives PPO each attempt's
    reward at that attempt's last token and discounts (gamma 0.9); GRPO has one scalar per
    sample, and the sum keeps both what the paper rewards (being right) and what it punishes
    (every failed attempt before that), so an episode solved at attempt 2 scores below one
    solved at attempt 1 and above one never solved.
  * `final_success`: 1 when the episode ends with a correct attempt, else 0.
  GRPO turns either into advantages within the group (TRL: mean-centred, divided by the group's
  std). A group whose G episodes score alike has no gradient: an SFT init that answers in the
  right format is what gives RL a signal (the rl-nosft ablation shows the opposite).
- TRL does not hand dataset columns to `rollout_func`, only the prompts (conversational, as
  stored, repeated `num_generations` times in a row): a lookup from the prompt to its dataset
  row gives the task what it needs (`task.make_episode(row, viter)`).

Batching: one rollout = `prompts_per_step` x `num_generations` episodes, generated together by
`run_episodes` (in chunks of `rl.generation_batch_size` rows when that key is set); it feeds
`num_iterations` optimizer steps (1: on-policy; more: PPO-style epochs, clipped at epsilon).
`rl.steps` counts optimizer steps.

Checkpoints: trainer checkpoints (for resume) every `rl.save_every` steps in `work_dir`; the
models that evaluation reads are exported at `save_dirs` steps (model + tokenizer in
`model.checkpoint_dtype` + compute.json). The export is written under `work_dir/exports/`
first and then hard-linked into its `save_dirs` folder, so a resumed job restores a folder
that Snakemake deleted after the killed run; a finished job removes the exports (the links in
`save_dirs` stay). A re-run resumes from the last complete trainer checkpoint in `work_dir`
and ends at `rl.steps`; when an output it would have to restore has neither a folder nor an
export any more, it starts over instead.

Compute (compute.json, cumulative from the base model): the start folder's ledger + 6·N·(tokens
passed through a training step: prompt + completion, every iteration) + 2·N·(sampled tokens).
Not counted: prompt prefill during generation, the reference-model pass when beta > 0, and the
old-log-prob pass when num_iterations > 1 (all inference, 2·N·D, small next to the above here).
"""
from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from .compute import ComputeLedger
from .rollout import EpisodeTrace, RolloutStats, run_episodes, summarize
from .tasks import get_task

log = logging.getLogger(__name__)

# token budget of one feedback turn for max_completion_length (TRL does not enforce it on
# rollout_func output: it only enters its logging and the dr_grpo normaliser)
FEEDBACK_TOKEN_BUDGET = 64
STATE_FILE = "rl_state.json"  # in work_dir: ledger and samples after every step (resume)
EXPORTS = "exports"  # in work_dir: the exported models at save steps
SAMPLES_PER_ROLLOUT = 2  # episodes per rollout kept for the sample table


# --------------------------------------------------------------------------- rewards
def episode_return_reward(prompts, completions, episode_return, **kwargs) -> list[float]:
    """The sum of the episode's per-attempt rewards (the paper's rewards, one scalar per sample)."""
    return [float(r) for r in episode_return]


def final_success_reward(prompts, completions, success, **kwargs) -> list[float]:
    """1 when the episode ended with a correct attempt, else 0."""
    return [1.0 if s else 0.0 for s in success]


REWARDS = {"episode_return": episode_return_reward, "final_success": final_success_reward}


# --------------------------------------------------------------------------- prompt -> row
def prompt_key(prompt: Any) -> str:
    """A canonical text of a prompt: the same for a row's prompt and what TRL hands back."""
    if isinstance(prompt, str):
        return prompt
    return json.dumps([[m.get("role"), m.get("content")] for m in prompt], sort_keys=True, ensure_ascii=False)


class PromptLookup:
    """Dataset rows by prompt. Rows with the same prompt must be interchangeable (the same hand)."""

    def __init__(self, rows: Sequence[dict[str, Any]]):
        self.rows: dict[str, dict[str, Any]] = {}
        duplicates = 0
        for row in rows:
            key = prompt_key(row["prompt"])
            if key in self.rows:
                duplicates += 1
                continue
            self.rows[key] = row
        if duplicates:
            log.info("%d rows repeat an earlier row's prompt; the first such row is used for all", duplicates)

    def __call__(self, prompt: Any) -> dict[str, Any]:
        try:
            return self.rows[prompt_key(prompt)]
        except KeyError:
            raise KeyError(f"rollout got a prompt that is not in the RL data: {prompt_key(prompt)[:300]}") from None


# --------------------------------------------------------------------------- run state
@dataclass
class _Progress:
    """What the rollout tells the step callback, and what survives a restart."""

    ledger: ComputeLedger
    start_flops: float
    rl_generated_tokens: int = 0
    rl_train_tokens: int = 0
    buffer_tokens: int = 0  # prompt + completion tokens of the current generation batch
    rollout_s_in_step: float = 0.0
    gen_s_in_step: float = 0.0
    verify_s_in_step: float = 0.0
    step_t0: float = 0.0
    samples: list[dict[str, Any]] = field(default_factory=list)
    history: dict[str, Any] = field(default_factory=dict)  # step -> ledger dict (for resume)

    def snapshot(self) -> dict[str, Any]:
        return {
            "ledger": self.ledger.to_dict(),
            "rl_generated_tokens": self.rl_generated_tokens,
            "rl_train_tokens": self.rl_train_tokens,
        }

    def restore(self, snap: dict[str, Any]) -> None:
        raw = snap["ledger"]
        self.ledger = ComputeLedger(
            n_params=raw["n_params"],
            train_tokens=raw["train_tokens"],
            generated_tokens=raw["generated_tokens"],
            stages=dict(raw.get("stages", {})),
        )
        self.rl_generated_tokens = int(snap.get("rl_generated_tokens", 0))
        self.rl_train_tokens = int(snap.get("rl_train_tokens", 0))


def _read_state(work_dir: Path) -> dict[str, Any]:
    path = work_dir / STATE_FILE
    return json.loads(path.read_text()) if path.exists() else {}


def _write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=str))
    os.replace(tmp, path)


def last_complete_checkpoint(work_dir: str | Path) -> str | None:
    """The newest `checkpoint-<step>` in work_dir that was written completely (has trainer_state.json)."""
    work_dir = Path(work_dir)
    if not work_dir.is_dir():
        return None
    found = []
    for p in work_dir.iterdir():
        if p.is_dir() and p.name.startswith("checkpoint-") and p.name[len("checkpoint-"):].isdigit():
            if (p / "trainer_state.json").exists():
                found.append((int(p.name[len("checkpoint-"):]), p))
    return str(max(found)[1]) if found else None


def _publish(src: Path, dst: Path) -> None:
    """Make `dst` a copy of the export `src` (hard links where possible), replacing what is there."""
    dst = Path(dst)
    tmp = dst.with_name(dst.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    dst.parent.mkdir(parents=True, exist_ok=True)

    def link_or_copy(s: str, d: str) -> None:
        try:
            os.link(s, d)
        except OSError:
            shutil.copy2(s, d)

    shutil.copytree(src, tmp, copy_function=link_or_copy)
    if dst.exists():
        shutil.rmtree(dst)
    os.replace(tmp, dst)


def _sample_record(step: int, trace: EpisodeTrace, prompt: Any) -> dict[str, Any]:
    user = prompt[-1]["content"] if isinstance(prompt, list) and prompt else str(prompt)
    return {
        "step": step,
        "prompt": user if isinstance(user, str) else json.dumps(user)[:2000],
        "episode_return": trace.episode_return,
        "success": trace.success,
        "attempts": [
            {"answer": a.answer, "reward": a.reward, "outcome": a.outcome, "feedback": a.feedback}
            for a in trace.attempts
        ],
    }


# --------------------------------------------------------------------------- the stage
def grpo_args(config: dict[str, Any], seed: int, viter: int, work_dir: str | Path, run_name: str,
              device_type: str, mixed: str | None):
    """GRPOConfig from config["rl"]: one optimizer step per rollout of prompts_per_step x G episodes."""
    from trl import GRPOConfig

    rl = config["rl"]
    G = int(rl["num_generations"])
    batch = int(rl["prompts_per_step"]) * G
    return GRPOConfig(
        output_dir=str(work_dir),
        run_name=run_name,
        learning_rate=float(rl["learning_rate"]),
        lr_scheduler_type="constant",
        warmup_steps=0,
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=1,
        steps_per_generation=1,  # generation batch = one optimizer step's batch
        num_generations=G,
        max_steps=int(rl["steps"]),
        temperature=float(rl["temperature"]),  # the loss scores logits / T: the same T as sampling
        top_p=1.0,
        beta=float(rl.get("beta", 0.0)),
        epsilon=float(rl.get("epsilon", 0.2)),
        num_iterations=int(rl.get("num_iterations", 1)),
        max_completion_length=viter * (int(rl["max_new_tokens"]) + FEEDBACK_TOKEN_BUDGET),
        logging_steps=1,
        save_strategy="steps",
        save_steps=int(rl.get("save_every", 1)),
        save_total_limit=1,
        report_to=["mlflow"],
        seed=int(seed),
        data_seed=int(seed),
        bf16=mixed == "bf16",
        fp16=mixed == "fp16",
        use_cpu=device_type == "cpu",
        activation_checkpointing=device_type != "cpu",  # CPU: memory is plenty, time is not
        remove_unused_columns=False,
        shuffle_dataset=True,
        log_completions=False,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )


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
) -> dict[str, Any]:
    """GRPO from `start_dir` on the rows of `data_file`; export models at `save_dirs` steps.

    `callbacks`: extra transformers TrainerCallbacks (tests use one to simulate a killed job).
    Returns a summary (final step, ledger, checkpoint folders).
    """
    import torch
    from transformers import TrainerCallback
    from trl import GRPOTrainer
    from trl.models import unwrap_model_for_generation

    from .evaluate import read_rows
    from .models import count_parameters, device_and_dtype, load_model_and_tokenizer, save_model
    from .tracking import job_run, log_json_artifact, log_metrics, use_step_callback

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    rl = config["rl"]
    steps = int(rl["steps"])
    save_dirs = {int(k): str(v) for k, v in save_dirs.items()}
    late = [k for k in save_dirs if k > steps or k < 1]
    if late:
        raise ValueError(f"rl: save steps {sorted(late)} lie outside 1..rl.steps={steps}")
    if rl.get("reward", "episode_return") not in REWARDS:
        raise ValueError(f"rl.reward={rl.get('reward')!r}; known: {', '.join(REWARDS)}")
    reward_fn = REWARDS[rl.get("reward", "episode_return")]
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    task_obj = get_task(task)

    rows = read_rows(data_file)
    if not rows:
        raise ValueError(f"{data_file}: no rows")
    lookup = PromptLookup(rows)
    from datasets import Dataset

    dataset = Dataset.from_list([{"prompt": r["prompt"]} for r in rows])

    model_cfg = config.get("model", {})
    dtype_name = model_cfg.get("dtype", "auto")
    device, auto_dtype = device_and_dtype(dtype_name)
    # train fp32 master weights under bf16/fp16 autocast where the device supports it (an lr of
    # 1e-6 vanishes in bf16 weights); an explicit dtype loads the weights in it
    mixed = None
    if dtype_name == "auto":
        mixed = "bf16" if auto_dtype == torch.bfloat16 else None
        load_dtype = "float32"
    else:
        load_dtype = dtype_name
    model, tokenizer = load_model_and_tokenizer(
        start_dir, dtype=load_dtype, for_training=True, attn_implementation=model_cfg.get("attn_implementation")
    )
    n_params = count_parameters(model)
    progress = _Progress(ledger=ComputeLedger.load(start_dir, n_params), start_flops=0.0)
    progress.start_flops = progress.ledger.flops

    resume = last_complete_checkpoint(work_dir)
    if resume:
        done_step = int(Path(resume).name.split("-")[1])
        lost = [k for k, d in save_dirs.items() if k <= done_step
                and not (Path(d) / "config.json").exists() and not (work_dir / EXPORTS / f"step-{k}").exists()]
        if lost:
            log.warning("outputs of steps %s are gone and cannot be restored: RL starts over", sorted(lost))
            for p in work_dir.iterdir():
                if p.name.startswith("checkpoint-") or p.name in (STATE_FILE, EXPORTS):
                    shutil.rmtree(p) if p.is_dir() else p.unlink()
            resume = None
    resumed_step = 0
    if resume:
        resumed_step = int(Path(resume).name.split("-")[1])
        saved = _read_state(work_dir)
        snap = saved.get("steps", {}).get(str(resumed_step))
        if snap is None:
            raise RuntimeError(f"{resume}: no RL state for step {resumed_step} in {work_dir / STATE_FILE}")
        progress.restore(snap)
        progress.history = {k: v for k, v in saved.get("steps", {}).items() if int(k) <= resumed_step}
        progress.samples = [x for x in saved.get("samples", []) if x["step"] <= resumed_step]
        log.info("resuming RL from %s (step %d of %d)", resume, resumed_step, steps)

    args = grpo_args(config, seed, viter, work_dir, run_name, device.type, mixed)
    trainer_ref: dict[str, Any] = {}
    temperature = float(rl["temperature"])
    max_new_tokens = int(rl["max_new_tokens"])

    def rollout_func(prompts: list, trainer) -> dict[str, list]:
        t0 = time.perf_counter()
        episodes = [task_obj.make_episode(copy.deepcopy(lookup(p)), viter) for p in prompts]
        stats = RolloutStats()
        with unwrap_model_for_generation(
            trainer.model_wrapped,
            trainer.accelerator,
            gather_deepspeed3_params=trainer.args.ds3_gather_for_generation,
            gradient_checkpointing_kwargs=trainer.args.gradient_checkpointing_kwargs,
        ) as unwrapped, torch.no_grad():
            was_training = unwrapped.training
            unwrapped.eval()
            try:
                with trainer.accelerator.autocast():
                    traces = run_episodes(
                        unwrapped,
                        tokenizer,
                        episodes,
                        temperature=temperature,
                        max_new_tokens=max_new_tokens,
                        batch_size=rl.get("generation_batch_size"),  # None: every episode in one call
                        stats=stats,
                    )
            finally:
                unwrapped.train(was_training)
        if len(traces) != len(prompts):
            raise RuntimeError(f"rollout returned {len(traces)} episodes for {len(prompts)} prompts")

        generated = sum(t.generated_tokens for t in traces)
        progress.ledger.add("rl", generated_tokens=generated)
        progress.rl_generated_tokens += generated
        # each optimizer step until the next rollout passes this batch through a training step
        progress.buffer_tokens = sum(len(t.prompt_ids) + len(t.completion_ids) for t in traces)
        progress.rollout_s_in_step += time.perf_counter() - t0
        progress.gen_s_in_step += stats.generation_s
        progress.verify_s_in_step += stats.verification_s
        step = trainer.state.global_step + 1
        G = int(rl["num_generations"])
        for i in range(0, min(len(traces), SAMPLES_PER_ROLLOUT * G), G):  # first episode of the first groups
            progress.samples.append(_sample_record(step, traces[i], prompts[i]))

        summary = summarize(traces)
        metrics = trainer._metrics["train"]
        for name, key in (
            ("episode/success_rate", "success_rate"),
            ("episode/return", "episode_return"),
            ("episode/attempts", "attempts_per_episode"),
            ("episode/unparseable_share", "unparseable_share"),
            ("episode/truncated_share", "truncated_share"),
            ("tokens/generated", "generated_tokens"),
            ("tokens/completion", "completion_tokens"),
        ):
            metrics[name].append(float(summary[key]))
        metrics["tokens/max_completion"].append(float(max(len(t.completion_ids) for t in traces)))
        metrics["tokens/prefill"].append(float(stats.prefill_tokens))  # read, not sampled, during the rollout
        return {
            "prompt_ids": [t.prompt_ids for t in traces],
            "completion_ids": [t.completion_ids for t in traces],
            "env_mask": [t.env_mask for t in traces],
            "logprobs": None,
            "episode_return": [t.episode_return for t in traces],
            "success": [bool(t.success) for t in traces],
            "num_attempts": [t.num_attempts for t in traces],
        }

    def export(step: int, model_to_save) -> Path:
        target = work_dir / EXPORTS / f"step-{step}"
        tmp = target.with_name(target.name + ".partial")
        if tmp.exists():
            shutil.rmtree(tmp)
        save_model(model_to_save, tokenizer, tmp, dtype=model_cfg.get("checkpoint_dtype", "float32"))
        progress.ledger.save(tmp)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
        return target

    class StepCallback(TrainerCallback):
        """Per-step time split, compute ledger, RL state for resume, model exports."""

        def on_step_begin(self, args, state, control, **kwargs):
            progress.step_t0 = time.perf_counter()
            progress.rollout_s_in_step = progress.gen_s_in_step = progress.verify_s_in_step = 0.0

        def on_step_end(self, args, state, control, **kwargs):
            trainer = trainer_ref["trainer"]
            step_s = time.perf_counter() - progress.step_t0
            trained = progress.buffer_tokens  # steps_per_generation=1: the whole batch, once per step
            progress.ledger.add("rl", train_tokens=trained)
            progress.rl_train_tokens += trained
            metrics = trainer._metrics["train"]
            metrics["time/generation_s"].append(progress.gen_s_in_step)
            metrics["time/verification_s"].append(progress.verify_s_in_step)
            metrics["time/rollout_other_s"].append(
                progress.rollout_s_in_step - progress.gen_s_in_step - progress.verify_s_in_step
            )
            metrics["time/update_s"].append(step_s - progress.rollout_s_in_step)
            metrics["time/step_s"].append(step_s)
            metrics["tokens/generated_total"].append(float(progress.rl_generated_tokens))
            metrics["tokens/trained_total"].append(float(progress.rl_train_tokens))
            metrics["compute/gflops"].append(progress.ledger.flops / 1e9)
            metrics["compute/rl_gflops"].append((progress.ledger.flops - progress.start_flops) / 1e9)
            step = int(state.global_step)
            if step in save_dirs:
                export(step, trainer.accelerator.unwrap_model(trainer.model))
                _publish(work_dir / EXPORTS / f"step-{step}", Path(save_dirs[step]))
                log.info("step %d: model exported to %s", step, save_dirs[step])
            # state of this step, written before the trainer checkpoint of this step
            progress.history[str(step)] = progress.snapshot()
            _write_json_atomic(work_dir / STATE_FILE, {"steps": progress.history, "samples": progress.samples})

    with job_run(config, stage="rl", task=task, seed=seed, viter=viter, run_name=run_name,
                 extra_tags={"run": run_name, "start_dir": str(start_dir)}) as active:
        import mlflow

        mlflow.log_params({"rl_viter": viter, "rl_start_dir": str(start_dir), "n_params": n_params,
                           "resumed_from_step": resumed_step})
        step_logs: list[dict[str, Any]] = []
        train_s = 0.0
        final_step = resumed_step
        if resumed_step >= steps:  # a finished job run again: nothing to train
            log.info("RL already at step %d of %d in %s", resumed_step, steps, work_dir)
        else:
            trainer = GRPOTrainer(
                model=model,
                reward_funcs=[reward_fn],
                args=args,
                train_dataset=dataset,
                processing_class=tokenizer,
                rollout_func=rollout_func,
                callbacks=[StepCallback(), *(callbacks or [])],
            )
            trainer_ref["trainer"] = trainer
            use_step_callback(trainer)
            t0 = time.perf_counter()
            trainer.train(resume_from_checkpoint=resume)
            train_s = time.perf_counter() - t0
            final_step = int(trainer.state.global_step)
            step_logs = [h for h in trainer.state.log_history if "time/step_s" in h]
            if final_step != steps:
                raise RuntimeError(f"RL ended at step {final_step}, expected rl.steps={steps}")

        # restore exports whose folders are missing (Snakemake deletes outputs of a failed job)
        for step, target in sorted(save_dirs.items()):
            src = work_dir / EXPORTS / f"step-{step}"
            if not (Path(target) / "config.json").exists():
                if not src.exists():
                    raise RuntimeError(f"no export of step {step} in {work_dir / EXPORTS} to restore {target}")
                _publish(src, Path(target))
                log.info("step %d: restored %s from %s", step, target, src)

        shutil.rmtree(work_dir / EXPORTS, ignore_errors=True)  # every output folder exists now
        log_json_artifact(progress.samples, "rl_samples.json")
        log_json_artifact(progress.ledger.to_dict(), "compute.json")
        log_metrics({"train_seconds": train_s, "final_gflops": progress.ledger.flops / 1e9}, step=final_step)
        summary = {
            "run_id": active.info.run_id,
            "last_step_metrics": step_logs[-1] if step_logs else {},
            "final_step": final_step,
            "resumed_from_step": resumed_step,
            "ledger": progress.ledger.to_dict(),
            "save_dirs": save_dirs,
        }
    return summary
