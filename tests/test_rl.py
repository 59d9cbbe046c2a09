"""RL over TRL's GRPOTrainer with the tiny model: end to end, weights move, resume, MLflow metrics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import write_jsonl
from sftvsrl.checkpoints import last_complete_checkpoint
from sftvsrl.grpo import (
    PromptLookup,
    episode_return_reward,
    final_success_reward,
    prompt_key,
)
from sftvsrl.tasks.base import Attempt


# --------------------------------------------------------------------------- units
def test_reward_functions_read_the_rollout_fields():
    kw = {"prompts": [None] * 3, "completions": [None] * 3}
    assert episode_return_reward(episode_return=[4.0, -15.0, 5.0], success=[True, False, True], **kw) == [
        4.0,
        -15.0,
        5.0,
    ]
    assert final_success_reward(episode_return=[4.0, -15.0, 5.0], success=[True, False, True], **kw) == [1.0, 0.0, 1.0]


def test_prompt_lookup_finds_rows_from_what_the_dataset_hands_back():
    from datasets import Dataset

    rows = [
        {"id": i, "prompt": [{"role": "user", "content": f"hand {i}"}], "hand": {"cards": [str(i)]}} for i in range(5)
    ]
    lookup = PromptLookup(rows)
    ds = Dataset.from_list([{"prompt": r["prompt"]} for r in rows])
    assert [lookup(ds[i]["prompt"])["id"] for i in range(5)] == list(range(5))
    with pytest.raises(KeyError, match="not in the RL data"):
        lookup([{"role": "user", "content": "unknown"}])
    assert prompt_key(rows[0]["prompt"]) != prompt_key(rows[1]["prompt"])


# --------------------------------------------------------------------------- a toy task
class CountEpisode:
    """Reward = how often the answer contains the letter "a" (varies between samples, so GRPO
    has a gradient even for a random model); solved at 3 or more."""

    def __init__(self, row, viter):
        self.messages = [dict(m) for m in row["prompt"]]
        self.attempts, self.done, self.success, self.viter = [], False, False, viter

    def step(self, answer):
        n = answer.count("a")
        ok = n >= 3
        feedback = "" if ok else f"You failed this trial because you wrote {n} a."
        attempt = Attempt(
            answer, 5.0 if ok else float(n) - 1, ok, "correct" if ok else "few", feedback, {"parsed": n > 0}
        )
        self.attempts.append(attempt)
        self.messages.append({"role": "assistant", "content": answer})
        self.success = ok
        self.done = ok or len(self.attempts) >= self.viter
        if not self.done:
            self.messages.append({"role": "user", "content": feedback})
        return attempt

    def metrics(self):
        return {"success": float(self.success)}


class CountTask:
    name = "count"
    splits = ("rl",)

    def make_episode(self, row, viter):
        return CountEpisode(row, viter)

    def aggregate(self, episodes):
        return {}


class KillAt:
    """Raise at the end of `step`, after its export but before its trainer checkpoint."""

    def __new__(cls, step):
        from transformers import TrainerCallback

        class _Kill(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                if state.global_step == step:
                    raise RuntimeError(f"simulated kill at step {step}")

        return _Kill()


def state_dict(folder):
    from safetensors.torch import load_file

    return load_file(str(Path(folder) / "model.safetensors"))


def rl_kwargs(tmp_path, tiny_model_dir, rows, run_name="rl-v3", viter=3):
    data = write_jsonl(rows, tmp_path / "data" / "rl.jsonl")
    out = tmp_path / "results"
    return {
        "seed": 0,
        "viter": viter,
        "run_name": run_name,
        "data_file": str(data),
        "start_dir": str(tiny_model_dir),
        "save_dirs": {1: str(out / "ckpt-1" / "model"), 2: str(out / "ckpt-2" / "model")},
        "work_dir": str(tmp_path / "work"),
    }


# --------------------------------------------------------------------------- end to end
def test_rl_steps_change_the_weights_and_count_compute(tiny_config, tiny_model_dir, tmp_path, monkeypatch):
    from sftvsrl import rl

    monkeypatch.setattr(rl, "get_task", lambda name: CountTask())
    tiny_config["rl"].update(learning_rate=1e-3)
    rows = [
        {"id": i, "prompt": [{"role": "user", "content": f"write the letter a many times ({i})"}]} for i in range(8)
    ]
    kw = rl_kwargs(tmp_path, tiny_model_dir, rows)

    # what reaches the loss: TRL's tool_mask is our env_mask (context tokens out of the loss)
    from trl import GRPOTrainer

    masks = []
    original = GRPOTrainer._generate_and_score_completions

    def spy(self, inputs):
        out = original(self, inputs)
        masks.append((out["completion_mask"].clone(), out.get("tool_mask")))
        return out

    monkeypatch.setattr(GRPOTrainer, "_generate_and_score_completions", spy)
    summary = rl.run_rl(tiny_config, task="count", **kw)
    assert len(masks) == 2
    for completion_mask, tool_mask in masks:
        assert tool_mask is not None
        trained, tokens = int((completion_mask * tool_mask).sum()), int(completion_mask.sum())
        assert 0 < trained < tokens  # feedback turns are in the completion but not in the loss
    assert summary["last_step_metrics"]["time/step_s"] > 0

    assert summary["final_step"] == 2
    start = state_dict(tiny_model_dir)
    after = state_dict(kw["save_dirs"][2])
    moved = [k for k in start if not (start[k] == after[k]).all()]
    assert moved, "two GRPO steps left every weight unchanged"
    c1 = json.loads((Path(kw["save_dirs"][1]) / "compute.json").read_text())
    c2 = json.loads((Path(kw["save_dirs"][2]) / "compute.json").read_text())
    assert 0 < c1["flops"] < c2["flops"]
    assert c2["generated_tokens"] > 0 and c2["train_tokens"] > c2["generated_tokens"]
    assert c1["train_viter"] == c2["train_viter"] == 3  # the training fact the evaluations read
    n = c2["n_params"]
    assert c2["flops"] == pytest.approx(6 * n * c2["train_tokens"] + 2 * n * c2["generated_tokens"])
    assert (Path(kw["save_dirs"][2]) / "tokenizer_config.json").exists()


def test_rl_gp_resumes_after_a_kill_and_logs_per_step_metrics(tiny_config, tiny_model_dir, tmp_path):
    from mlflow import MlflowClient

    from sftvsrl.rl import run_rl
    from sftvsrl.tasks import get_task
    from sftvsrl.tracking import TAG_STAGE

    rows = get_task("gp_l").generate_splits(
        {**tiny_config["gp"], "sizes": {"sft": 2, "rl": 8, "eval_id": 2, "eval_ood_rule": 2}}, 0
    )["rl"]
    kw = rl_kwargs(tmp_path, tiny_model_dir, rows, run_name="rl-v2", viter=2)

    with pytest.raises(RuntimeError, match="simulated kill"):
        run_rl(tiny_config, task="gp_l", callbacks=[KillAt(2)], **kw)
    work = Path(kw["work_dir"])
    assert last_complete_checkpoint(work) == str(work / "checkpoint-1")
    # Snakemake deletes the outputs of a failed job: the rerun must restore ckpt-1 too
    import shutil

    shutil.rmtree(Path(kw["save_dirs"][1]).parent)

    summary = run_rl(tiny_config, task="gp_l", **kw)
    assert summary["resumed_from_step"] == 1 and summary["final_step"] == tiny_config["rl"]["steps"] == 2
    state = json.loads((Path(kw["save_dirs"][2]) / "train_state.json").read_text())
    assert state["step"] == 2 and state["stage"] == "rl"
    for step in (1, 2):
        assert (Path(kw["save_dirs"][step]) / "model.safetensors").exists()
    c1 = json.loads((Path(kw["save_dirs"][1]) / "compute.json").read_text())
    c2 = json.loads((Path(kw["save_dirs"][2]) / "compute.json").read_text())
    assert 0 < c1["flops"] < c2["flops"]
    assert not work.exists()  # a finished job keeps only its outputs (checkpoints.TrainingWork.finish)

    client = MlflowClient(tracking_uri=tiny_config["mlflow"]["tracking_uri"])
    exp = client.get_experiment_by_name(tiny_config["mlflow"]["experiment"])
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`{TAG_STAGE}` = 'rl'")
    by_status = {}
    for r in sorted(runs, key=lambda r: r.info.start_time):
        by_status.setdefault(r.info.status, r)  # the first finished run is the resumed one
    assert set(by_status) == {"FAILED", "FINISHED"} and len(runs) == 2
    done = by_status["FINISHED"]
    for name in (
        "reward",
        "episode/success_rate",
        "episode/attempts",
        "episode/unparseable_share",
        "tokens/generated",
        "compute/gflops",
        "time/generation_s",
        "time/verification_s",
        "time/update_s",
    ):
        history = client.get_metric_history(done.info.run_id, name)
        assert [m.step for m in history] == [2], name
    attempts = client.get_metric_history(done.info.run_id, "episode/attempts")[0].value
    assert attempts == 2.0  # a random model fails every hand: VIter attempts each
    unparsed = client.get_metric_history(done.info.run_id, "episode/unparseable_share")[0].value
    assert unparsed == 1.0
    failed = by_status["FAILED"]
    assert [m.step for m in client.get_metric_history(failed.info.run_id, "episode/success_rate")] == [1]
    gflops = client.get_metric_history(done.info.run_id, "compute/gflops")[0].value
    assert "loss" in done.data.metrics and not [k for k in done.data.metrics if k.startswith("profiling")]
    assert gflops == pytest.approx(c2["gflops"])
    artifacts = [a.path for a in client.list_artifacts(done.info.run_id)]
    assert "rl_samples.json" in artifacts
    samples = json.loads(
        Path(client.download_artifacts(done.info.run_id, "rl_samples.json", str(tmp_path))).read_text()
    )
    assert samples and samples[0]["attempts"][0]["feedback"].startswith("You failed this trial because")


# --------------------------------------------------------------------------- learning signal
def test_no_signal_groups_on_constructed_rewards():
    from sftvsrl.grpo import no_signal_groups

    rewards = [5.0, 5.0, 5.0, 5.0, -3.0, 5.0, -3.0, -3.0, -1.5, -1.5, -1.5, -1.5]
    assert no_signal_groups(rewards, 4) == [True, False, True]
    assert no_signal_groups(rewards, 2) == [True, True, False, True, True, True]
    with pytest.raises(ValueError, match="rl.num_generations"):
        no_signal_groups(rewards, 5)
    with pytest.raises(ValueError, match="rl.num_generations"):
        no_signal_groups(rewards, 1)


class HalfSilentTask(CountTask):
    """Rows whose id is even score 0 whatever the answer (a group without signal); odd rows count "a"."""

    def make_episode(self, row, viter):
        episode = CountEpisode(row, viter)
        if row["id"] % 2 == 0:
            step = episode.step

            def constant(answer):
                attempt = step(answer)
                attempt.reward = 0.0
                return attempt

            episode.step = constant
        return episode


def test_groups_without_signal_skip_the_update_and_the_rest_trains_what_was_sampled(
    tiny_config, tiny_model_dir, tmp_path, monkeypatch
):
    """The trainer gets each signal episode's sampled ids exactly (prompt + completion = the chat
    template of its conversation; env_mask 1 on the answers only) and a 2-token stub for the others;
    the step logs the share of groups without signal and the KL to the start model (0 before the
    first update, > 0 after)."""
    from mlflow import MlflowClient
    from transformers import AutoTokenizer
    from trl import GRPOTrainer

    from sftvsrl import grpo, rl

    task = HalfSilentTask()
    monkeypatch.setattr(rl, "get_task", lambda name: task)
    # every step plays all four rows: two groups without signal, two that count "a"
    tiny_config["rl"].update(learning_rate=1e-3, prompts_per_step=4, num_generations=4, kl_episodes=8)
    tiny_config["rl"].update(drop_silent_groups=True)  # DAPO's filter: 2-token stubs for silent groups
    rows = [{"id": i, "prompt": [{"role": "user", "content": f"write the letter a ({i})"}]} for i in range(4)]
    kw = rl_kwargs(tmp_path, tiny_model_dir, rows, viter=2)
    played, seen = [], []
    original_call = grpo.EpisodeRollout.__call__

    def spy_rollout(self, prompts, trainer):
        out = original_call(self, prompts, trainer)
        played.append((prompts, out))
        return out

    original = GRPOTrainer._generate_and_score_completions

    def spy(self, inputs):
        out = original(self, inputs)
        seen.append(out)
        return out

    monkeypatch.setattr(grpo.EpisodeRollout, "__call__", spy_rollout)
    monkeypatch.setattr(GRPOTrainer, "_generate_and_score_completions", spy)
    rl.run_rl(tiny_config, task="count", **kw)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    lookup = rl.PromptLookup(rows)
    assert len(played) == 2 and len(seen) == 2
    for prompts, out in played:
        for i, prompt in enumerate(prompts):
            ids, mask = out["prompt_ids"][i] + out["completion_ids"][i], out["env_mask"][i]
            assert len(mask) == len(out["completion_ids"][i])
            if lookup(prompt)["id"] % 2 == 0:  # constant reward: not passed through the update
                assert len(out["prompt_ids"][i]) == 1 and mask == [0]
                continue
            full = tok.decode(ids)  # the conversation as sampled, then rendered again by the template
            assert full.startswith(tok.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True))
            assert sum(mask) > 0 and len(out["prompt_ids"][i]) > 1
    for out in seen:
        assert out["completion_ids"].shape[0] == 16

    client = MlflowClient(tiny_config["mlflow"]["tracking_uri"])
    (run,) = client.search_runs(
        [client.get_experiment_by_name("sftvsrl").experiment_id], "tags.`sftvsrl.stage` = 'rl'"
    )

    def history(name):
        return [m.value for m in sorted(client.get_metric_history(run.info.run_id, name), key=lambda m: m.step)]

    shares = history("rl/no_signal_share")
    assert len(shares) == 2 and all(0.5 <= s < 1 for s in shares)  # the even rows' groups, not the others
    kl = history("rl/kl_to_start")
    assert abs(kl[0]) < 1e-4 and kl[1] > 1e-4


def _first_step(tiny_config, tiny_model_dir, tmp_path, monkeypatch, **rl_keys):
    """One RL step of HalfSilentTask (two silent groups of four, two with signal): its metrics, every
    parameter's gradient, read just before the optimizer step, and its compute ledger."""
    from transformers import TrainerCallback

    from sftvsrl import rl

    monkeypatch.setattr(rl, "get_task", lambda name: HalfSilentTask())
    tiny_config["rl"].update(prompts_per_step=4, num_generations=4, grad_accum=1, steps=1, checkpoint_steps=[1])
    tiny_config["rl"].update(rl_keys)
    rows = [{"id": i, "prompt": [{"role": "user", "content": f"write the letter a ({i})"}]} for i in range(4)]
    kw = rl_kwargs(tmp_path, tiny_model_dir, rows, viter=2)
    kw["save_dirs"] = {1: kw["save_dirs"][1]}
    grads: dict[str, torch.Tensor] = {}

    class Grads(TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
            grads.update({n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None})

    summary = rl.run_rl(tiny_config, task="count", callbacks=[Grads()], **kw)
    return summary["last_step_metrics"], grads, summary["ledger"]


def test_skipping_silent_groups_leaves_the_loss_and_gradient_unchanged(
    tiny_config, tiny_model_dir, tmp_path, monkeypatch
):
    """rl.skip_no_signal is a pure speed-up: the same episodes (the rollout is seeded), the same loss and every
    parameter's gradient as reading every episode, under the dapo loss; rl.drop_silent_groups (DAPO's filter)
    instead takes the silent groups out of the normaliser, so the gradient grows by all / signal tokens.
    The ledger counts every played episode in the paper's accounting, and what was read beside it."""
    import copy

    runs = {}
    for name, keys in {
        "read all": {"skip_no_signal": False, "drop_silent_groups": False},
        "skip": {"skip_no_signal": True, "drop_silent_groups": False},
        "drop": {"skip_no_signal": True, "drop_silent_groups": True},
    }.items():
        runs[name] = _first_step(
            copy.deepcopy(tiny_config), tiny_model_dir, tmp_path / name.replace(" ", "-"), monkeypatch, **keys
        )
    (full_metrics, full, full_ledger), (skip_metrics, skip, skip_ledger) = runs["read all"], runs["skip"]
    _, drop, drop_ledger = runs["drop"]
    assert (
        0.5 <= skip_metrics["rl/no_signal_share"] < 1
        and full_metrics["rl/no_signal_share"] == skip_metrics["rl/no_signal_share"]
    )
    # the paper's count: every played episode, read or not; what was read: fewer tokens when skipping
    played = full_metrics["tokens/trained_total"]
    assert full_metrics["tokens/read_total"] == played == skip_metrics["tokens/trained_total"]
    assert skip_metrics["tokens/read_total"] < played
    n = full_ledger["n_params"]
    for ledger in (full_ledger, skip_ledger, drop_ledger):
        assert ledger["train_tokens"] == played  # the same seeded episodes in each run
        assert ledger["flops"] == pytest.approx(6 * n * played + 2 * n * ledger["generated_tokens"])
    assert full_ledger["computed_flops"] == full_ledger["flops"]
    assert max(drop_ledger["computed_train_tokens"], skip_ledger["computed_train_tokens"]) < played
    assert skip_ledger["computed_flops"] == pytest.approx(
        6 * n * skip_ledger["computed_train_tokens"] + 2 * n * skip_ledger["generated_tokens"]
    )
    assert full.keys() == skip.keys() and any(g.abs().sum() > 0 for g in full.values())
    for name in full:
        torch.testing.assert_close(skip[name], full[name], atol=1e-7, rtol=1e-5, msg=name)
    ratios = [
        (drop[n].norm() / full[n].norm()).item() for n in full if full[n].norm() > 1e-6 * max(1.0, drop[n].norm())
    ]
    assert min(ratios) > 1.05  # the rest's gradient scaled up: the silent groups left the normaliser


def test_a_run_without_any_signal_ends_with_a_warning(tiny_config, tiny_model_dir, tmp_path, caplog):
    """A random model fails every GeneralPoints hand alike: no group has signal at any step."""
    from sftvsrl.rl import run_rl
    from sftvsrl.tasks import get_task

    rows = get_task("gp_l").generate_splits(
        {**tiny_config["gp"], "sizes": {"sft": 2, "rl": 8, "eval_id": 2, "eval_ood_rule": 2}}, 0
    )["rl"]
    kw = rl_kwargs(tmp_path, tiny_model_dir, rows, run_name="rl-v1", viter=1)
    with caplog.at_level("WARNING", logger="sftvsrl.rl"):
        run_rl(tiny_config, task="gp_l", **kw)
    assert any("rl/no_signal_share" in r.getMessage() for r in caplog.records)


def test_the_sampler_plays_with_the_weights_of_the_current_step(tiny_config, tiny_model_dir, tmp_path):
    """The rollout samples from the trainer's own model: same step seed and weights, same samples;
    changed weights, other samples."""
    import torch
    from trl import GRPOTrainer

    from sftvsrl import grpo, rl
    from sftvsrl.checkpoints import load_for_training
    from sftvsrl.compute import ComputeLedger

    rows = [{"id": i, "prompt": [{"role": "user", "content": f"write the letter a ({i})"}]} for i in range(2)]
    dataset, lookup = rl.load_rl_rows(write_jsonl(rows, tmp_path / "rl.jsonl"), "gp_l")
    model, tokenizer = load_for_training(tiny_config, tiny_model_dir)
    progress = rl.RunProgress(ledger=ComputeLedger(n_params=1), start_flops=0.0)
    accounting = rl.StepAccounting(tiny_config["rl"], progress)
    rollout = grpo.EpisodeRollout(
        CountTask(), lookup, tokenizer, 1, tiny_config["rl"], accounting.record, skips_rows=False
    )
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=[grpo.episode_return_reward],
        args=grpo.grpo_args(tiny_config, 0, 1, tmp_path / "work", "rl-v1"),
        train_dataset=dataset,
        processing_class=tokenizer,
        rollout_func=rollout,
    )
    prompts = [rows[0]["prompt"]] * 2 + [rows[1]["prompt"]] * 2
    first = rollout(prompts, trainer)["completion_ids"]
    assert rollout(prompts, trainer)["completion_ids"] == first
    saved = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    with torch.no_grad():
        for p in trainer.model.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    assert rollout(prompts, trainer)["completion_ids"] != first
    trainer.model.load_state_dict(saved)
    assert rollout(prompts, trainer)["completion_ids"] == first
