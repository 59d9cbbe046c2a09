"""The GRPO adapter of RL with multi-turn verification: TRL's GRPOTrainer driven by our rollout engine.

The paper trains with PPO (value head, GAE, per-attempt rewards). TRL 1.x has no PPO, so this
project runs GRPO with the paper's episodes and rewards: one episode is one GRPO sample, whose
completion is attempt 1 + feedback 1 + attempt 2 + ... (`rollout.run_episodes`); the feedback turns
are context (`env_mask` 0, out of the loss), the attempts are trained. The G samples of a group all
start from the same dataset row (the same hand).

Before editing: the reward of a sample is `rl.reward` (`episode_return`, the default: the sum of the
episode's per-attempt rewards; or `final_success`). TRL hands `rollout_func` only the prompts, so a
lookup from the prompt to its dataset row gives the task what it needs. `rl.steps` counts optimizer
steps; one rollout feeds `num_iterations` of them.

Details: docs/code-notes.md#workflowsftvsrlgrpopy
"""

from __future__ import annotations

import copy
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .checkpoints import per_process, process_state, training_precision
from .model_inputs import cross_attention_images, image_inputs
from .rollout import EpisodeTrace, RolloutStats, run_episodes
from .update_pass import SkippedRows, compact_scoring, supports_compact_scoring

log = logging.getLogger(__name__)

# token budget of one feedback turn for max_completion_length (TRL does not enforce it on
# rollout_func output: it only enters its logging and the dr_grpo normaliser)
FEEDBACK_TOKEN_BUDGET = 64


# --------------------------------------------------------------------------- rewards
def episode_return_reward(prompts, completions, episode_return, **kwargs) -> list[float]:
    """The sum of the episode's per-attempt rewards (the paper's rewards, one scalar per sample)."""
    return [float(r) for r in episode_return]


def final_success_reward(prompts, completions, success, **kwargs) -> list[float]:
    """1 when the episode ended with a correct attempt, else 0."""
    return [1.0 if s else 0.0 for s in success]


REWARDS = {"episode_return": episode_return_reward, "final_success": final_success_reward}


def no_signal_groups(rewards: Sequence[float], group: int) -> list[bool]:
    """Per GRPO group of `group` consecutive episodes: True when all its rewards are equal, so every
    advantage in it is zero and (with beta 0) its loss term and gradient are zero; it still counts in the
    loss normaliser of `dapo` (the trained tokens of the generation batch) unless rl.drop_silent_groups."""
    if group < 2 or len(rewards) % group:
        raise ValueError(f"{len(rewards)} episodes do not split into GRPO groups of {group} (rl.num_generations)")
    return [len(set(rewards[i : i + group])) == 1 for i in range(0, len(rewards), group)]


def without_update_tokens(trace: EpisodeTrace) -> dict[str, list[int]]:
    """What the trainer gets for an episode of a silent group under rl.drop_silent_groups (DAPO's filter): its
    last prompt token and its first sampled token, out of the loss (env_mask 0), so its tokens leave the
    batch and the loss normaliser too."""
    return {"prompt_ids": trace.prompt_ids[-1:], "completion_ids": trace.completion_ids[:1], "env_mask": [0]}


# --------------------------------------------------------------------------- prompt -> row
def prompt_key(prompt: Any) -> str:
    """A canonical text of a prompt: the same for a row's prompt and what TRL hands back (which,
    with images, has every content as a list of parts and the images in the image parts)."""
    if isinstance(prompt, str):
        return prompt
    return json.dumps([[m.get("role"), _content_key(m.get("content"))] for m in prompt], ensure_ascii=False)


def _content_key(content: Any) -> list[str]:
    parts = [{"type": "text", "text": content}] if isinstance(content, str) else content or []
    return [part.get("text", "") if part.get("type") == "text" else f"<{part.get('type')}>" for part in parts]


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


def user_text(prompt: Any) -> str:
    """The last user turn's text (an image part as <image>), for the sample table."""
    return "\n".join(_content_key(prompt[-1]["content"])) if isinstance(prompt, list) and prompt else str(prompt)


# --------------------------------------------------------------------------- rollout
@dataclass
class PlayedRollout:
    """What one rollout played, handed to the run's per-step accounting (`rl.StepAccounting`)."""

    prompts: list
    traces: list[EpisodeTrace]
    stats: RolloutStats
    rewards: list[float]
    read_tokens: int  # what the update's model pass reads (skipped episodes: none; dropped: 2 tokens)
    started: float  # time.perf_counter() when the rollout began


class EpisodeRollout:
    """TRL's `rollout_func`: the prompts' multi-turn episodes, played by `run_episodes` in one batch.

    Returns the token ids, the env mask (feedback turns out of the loss) and the reward fields, and
    hands what it played to `account` (the run's per-step accounting). `skips_rows`: the update pass can
    leave rows unread (`update_pass.compact_scoring`), so silent groups need not be read.
    """

    def __init__(
        self, task, lookup: PromptLookup, tokenizer, viter: int, rl: dict[str, Any], account, *, skips_rows: bool
    ):
        self.task, self.lookup, self.tokenizer, self.viter = task, lookup, tokenizer, viter
        self.rl, self.account = rl, account
        # text tasks have no images to hand the model passes: no record, no hook
        self.images = EpisodeImages(tokenizer) if getattr(task, "row_images", None) is not None else None
        self.reward = REWARDS[rl["reward"]]
        # skipping needs whole groups in this process and no KL term (whose gradient does not vanish)
        skip = rl["skip_no_signal"] or rl["drop_silent_groups"]
        self.skip_no_signal = skip and self.images is None and rl["beta"] == 0.0
        self.drop_silent = rl["drop_silent_groups"] and self.skip_no_signal
        # the update pass's rows to leave unread (silent groups kept in the batch)
        self.skipped = SkippedRows() if skips_rows and self.skip_no_signal and not self.drop_silent else None

    def __call__(self, prompts: list, trainer) -> dict[str, list]:
        t0 = time.perf_counter()
        episodes = [self.task.make_episode(copy.deepcopy(self.lookup(p)), self.viter) for p in prompts]
        stats = RolloutStats()
        traces = play_on_policy(trainer, self.tokenizer, episodes, self.rl, stats)
        if len(traces) != len(prompts):
            raise RuntimeError(f"rollout returned {len(traces)} episodes for {len(prompts)} prompts")
        rewards = self.reward(
            None, None, episode_return=[t.episode_return for t in traces], success=[t.success for t in traces]
        )
        silent = self.silent_episodes(trainer, rewards)
        if self.drop_silent:  # DAPO's filter: silent groups leave the batch and the loss normaliser
            sent = [without_update_tokens(t) if skip else vars(t) for t, skip in zip(traces, silent)]
        else:  # silent groups stay in both; the update pass leaves them unread where it can (self.skipped)
            sent = [vars(t) for t in traces]
        unread = silent if self.skipped is not None else [False] * len(traces)
        if self.skipped is not None:
            self.skipped.ids = {tuple(t.prompt_ids + t.completion_ids) for t, skip in zip(traces, unread) if skip}
        read = sum(len(t["prompt_ids"]) + len(t["completion_ids"]) for t, skip in zip(sent, unread) if not skip)
        self.account(trainer, PlayedRollout(prompts, traces, stats, list(rewards), read, t0))
        if self.images is not None:
            self.images.record(traces)
        return {
            "prompt_ids": [t["prompt_ids"] for t in sent],
            "completion_ids": [t["completion_ids"] for t in sent],
            "env_mask": [t["env_mask"] for t in sent],
            "logprobs": None,
            "episode_return": [t.episode_return for t in traces],
            "success": [bool(t.success) for t in traces],
            "num_attempts": [t.num_attempts for t in traces],
        }

    def silent_episodes(self, trainer, rewards: list[float]) -> list[bool]:
        """Per episode: skip it in the update (its group has no signal). Only when this process holds
        whole groups, i.e. in a one-process job."""
        group = self.rl["num_generations"]
        if not self.skip_no_signal or trainer.accelerator.num_processes != 1:
            return [False] * len(rewards)
        return [silent for silent in no_signal_groups(rewards, group) for _ in range(group)]


class EpisodeImages:
    """Every image of the last rollout's episodes, found by their token ids, for the model passes
    of the update.

    TRL hands the model the images of the dataset row only, which are the prompt's. An episode
    that shows a new image in a later turn (V-IRL-VL: the views at each point reached) holds that
    image's tokens in its completion, so every pass over it (the loss, old log-probs when
    rl.num_iterations > 1, the reference model when rl.beta > 0) needs the episode's images. A
    forward pre-hook on the model (torch's public hook API; no trainer internals) swaps them in
    for a batch that holds such an episode; other batches pass untouched.

    Cross-attention models (mllama) need more in every pass: TRL's model passes drop their
    `aspect_ratio_ids` / `aspect_ratio_mask`, and its processor's `cross_attention_mask` would cover
    the prompt only; so a pass that comes without a cross-attention mask gets all three (and the
    episode's images) for its prompt + completion ids. TRL 1.16 cannot run their old-log-prob and
    reference passes at all (it hands those extra processor outputs to a function that takes none
    of them): mllama trains with rl.num_iterations 1 and rl.beta 0.
    """

    def __init__(self, processor):
        self.processor = processor
        self.by_ids: dict[tuple[int, ...], list[Any]] = {}
        self.later: set[tuple[int, ...]] = set()  # episodes with images after the prompt

    def record(self, traces: list[EpisodeTrace]) -> None:
        # equal ids mean the same row played the same way, hence the same images
        keys = [tuple(t.prompt_ids + t.completion_ids) for t in traces]
        self.by_ids = {key: t.images for key, t in zip(keys, traces)}
        self.later = {key for key, t in zip(keys, traces) if len(t.images) > t.prompt_images}

    def attach(self, model) -> None:
        model.register_forward_pre_hook(self._swap_images, with_kwargs=True)

    def _swap_images(self, model, args, kwargs):
        ids, mask = kwargs.get("input_ids"), kwargs.get("attention_mask")
        if not self.by_ids or ids is None or mask is None or kwargs.get("pixel_values") is None:
            return None
        # generate's own calls (the rollout) bring their cross-attention mask; TRL's passes do not
        every_pass = cross_attention_images(model) and kwargs.get("cross_attention_mask") is None
        keys = [tuple(row[m.bool()].tolist()) for row, m in zip(ids, mask)]
        if not every_pass and not self.later.intersection(keys):
            return None
        missing = [i for i, key in enumerate(keys) if key not in self.by_ids]
        if missing:
            raise RuntimeError(
                f"rows {missing} of a batch that needs the episodes' images are not episodes of the last rollout"
            )
        fields = image_inputs(self.processor, model, ids, [self.by_ids[key] for key in keys])
        return args, {**kwargs, **{k: v.to(ids.device) for k, v in fields.items()}}


def play_on_policy(trainer, tokenizer, episodes: list, rl: dict[str, Any], stats: RolloutStats) -> list[EpisodeTrace]:
    """The episodes played to the end by the trainer's current policy (in eval mode, without gradients)."""
    from trl.models import unwrap_model_for_generation

    with (
        unwrap_model_for_generation(
            trainer.model_wrapped,
            trainer.accelerator,
            gather_deepspeed3_params=trainer.args.ds3_gather_for_generation,
            gradient_checkpointing_kwargs=trainer.args.gradient_checkpointing_kwargs,
        ) as unwrapped,
        torch.no_grad(),
    ):
        was_training = unwrapped.training
        unwrapped.eval()
        try:
            with trainer.accelerator.autocast():
                return run_episodes(
                    unwrapped,
                    tokenizer,
                    episodes,
                    temperature=rl["temperature"],
                    max_new_tokens=rl["max_new_tokens"],
                    batch_size=rl["generation_batch_size"],  # None: every episode in one call
                    seed=rollout_seed(trainer),
                    stats=stats,
                )
        finally:
            unwrapped.train(was_training)


def check_model_passes(model, rl: dict[str, Any], task) -> None:
    """Stop with the keys to change when TRL cannot run a pass this model needs: TRL 1.16 hands a
    cross-attention VLM's (Llama-3.2-Vision's) image inputs to its old-log-prob and reference
    passes through a function that takes none of them."""
    if not (cross_attention_images(model) and getattr(task, "row_images", None)):
        return
    if rl["num_iterations"] > 1 or rl["beta"] > 0:
        raise ValueError(
            "config keys rl.num_iterations / rl.beta: with a cross-attention vision-language model (Llama-3.2-Vision) "
            "and an image task, TRL 1.16 runs only rl.num_iterations 1 and rl.beta 0"
        )


def rollout_seed(trainer) -> int:
    """The sampling seed of a rollout: from the run's seed, the step and the rank, so ranks that
    share a GRPO group draw different answers and a resumed run draws the same ones again."""
    from .tasks.answers import derive_seed

    return derive_seed("rollout", trainer.args.seed, trainer.state.global_step, trainer.accelerator.process_index)


# --------------------------------------------------------------------------- trainer
def grpo_args(config: dict[str, Any], seed: int, viter: int, work_dir: str | Path, run_name: str):
    """GRPOConfig from config["rl"]: a rollout of prompts_per_step x G episodes feeds one optimizer
    step (`rl.grad_accum` micro-batches), or `rl.num_iterations` steps over the same episodes."""
    from trl import GRPOConfig

    rl = config["rl"]
    precision = training_precision(config["model"])  # its autocast and activation checkpointing
    return GRPOConfig(
        output_dir=str(work_dir),
        run_name=run_name,
        learning_rate=rl["learning_rate"],
        lr_scheduler_type="constant",
        warmup_steps=0,
        # one optimizer step's episodes, split over the processes and then into grad_accum micro-batches
        per_device_train_batch_size=per_process(
            rl["prompts_per_step"] * rl["num_generations"],
            process_state(config),
            "rl.prompts_per_step",
            rl["grad_accum"],
        ),
        gradient_accumulation_steps=rl["grad_accum"],
        steps_per_generation=rl["grad_accum"],  # one rollout feeds the micro-batches of one step
        num_generations=rl["num_generations"],
        max_steps=rl["steps"],
        temperature=rl["temperature"],  # the loss scores logits / T: the same T as sampling
        top_p=1.0,
        beta=rl["beta"],
        epsilon=rl["epsilon"],
        num_iterations=rl["num_iterations"],
        loss_type=rl["loss_type"],  # the objective, stated: TRL's default changes between versions
        scale_rewards=rl["scale_rewards"],
        max_completion_length=viter * (rl["max_new_tokens"] + FEEDBACK_TOKEN_BUDGET),
        logging_steps=1,
        save_strategy="steps",
        save_steps=rl["save_every"],
        save_total_limit=1,
        report_to=[],  # MLflow through our callback (build_grpo_trainer); TRL's profiling timers follow report_to
        seed=int(seed),
        data_seed=int(seed),
        remove_unused_columns=False,
        shuffle_dataset=True,
        log_completions=False,
        dataloader_num_workers=0,
        disable_tqdm=True,
        **precision,
    )


def build_grpo_trainer(config, model, tokenizer, dataset, rollout, seed, viter, work_dir, run_name, callbacks):
    """TRL's GRPOTrainer with our rollout and reward; `callbacks` run in order, then MLflow through ours."""
    from trl import GRPOTrainer

    from .mlflow_callback import use_step_callback

    trainer = GRPOTrainer(
        model=model,
        reward_funcs=[REWARDS[config["rl"]["reward"]]],
        args=grpo_args(config, seed, viter, work_dir, run_name),
        train_dataset=dataset,
        processing_class=tokenizer,
        rollout_func=rollout,
    )
    for model_pass in (trainer.model, getattr(trainer, "ref_model", None)):
        if model_pass is not None and rollout.images is not None:
            rollout.images.attach(model_pass)
    if rollout.images is None and supports_compact_scoring(trainer.model):
        compact_scoring(trainer.model, config["rl"]["temperature"], rollout.skipped)
    for callback in callbacks:
        trainer.add_callback(callback)
    use_step_callback(trainer)
    return trainer
