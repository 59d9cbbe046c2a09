"""SFT over TRL: completion-only loss, learning, outputs + compute, MLflow, kill-and-resume."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from transformers import TrainerCallback

from conftest import sft_rows, write_jsonl
from sftvsrl import sft, tracking
from sftvsrl.compute import ComputeLedger
from sftvsrl.config import config_hash
from sftvsrl.models import load_model_and_tokenizer


@pytest.fixture
def data_file(tiny_config, tmp_path) -> Path:
    return write_jsonl(sft_rows(tiny_config, 64), tmp_path / "data" / "sft.jsonl")


@pytest.fixture
def start_dir(tiny_model_dir, tmp_path) -> Path:
    """A copy of the tiny model standing for an init checkpoint that already holds some compute."""
    out = tmp_path / "start"
    shutil.copytree(tiny_model_dir, out)
    model, _ = load_model_and_tokenizer(out)
    ledger = ComputeLedger(n_params=sum(p.numel() for p in model.parameters()))
    ledger.add("init", train_tokens=1000)
    ledger.save(out)
    return out


def _state(folder) -> dict[str, torch.Tensor]:
    model, _ = load_model_and_tokenizer(folder)
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_only_answer_tokens_carry_loss(tiny_config, tiny_model_dir, data_file, tmp_path):
    rows = sft.read_sft_rows(data_file)
    assert any(set(r) - {"prompt", "completion"} for r in rows), "rows carry metadata columns"
    model, tok = load_model_and_tokenizer(tiny_model_dir, dtype="float32", for_training=True)
    args = sft.build_sft_config(tiny_config, max_steps=1, seed=0, work_dir=tmp_path / "w", report_to=[])
    trainer = sft.build_trainer(tiny_config, model, tok, sft.sft_dataset(rows), args)
    cols = set(trainer.train_dataset.column_names)
    assert {"input_ids", "labels"} <= cols <= {"input_ids", "labels", "prompt", "completion"}
    for i in range(4):
        ex = trainer.train_dataset[i]
        ids, labels = ex["input_ids"], ex["labels"]
        n_prompt = len(
            tok.apply_chat_template(rows[i]["prompt"], add_generation_prompt=True, tokenize=True)["input_ids"]
        )
        assert n_prompt > 20
        assert all(lab == -100 for lab in labels[:n_prompt]), "prompt tokens must not carry loss"
        assert labels[n_prompt:] == ids[n_prompt:], "every answer token carries loss"
        answer = tok.decode(ids[n_prompt:])
        assert answer.startswith(rows[i]["completion"][0]["content"])
        assert answer.rstrip().endswith("<|im_end|>")
    # the collator pads; padding never carries loss either
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    assert batch["labels"].shape == batch["input_ids"].shape
    assert (batch["labels"][batch["attention_mask"] == 0] == -100).all()
    carried = (batch["labels"] != -100).sum().item()
    n_answer = sum(
        len(trainer.train_dataset[i]["input_ids"])
        - len(tok.apply_chat_template(rows[i]["prompt"], add_generation_prompt=True)["input_ids"])
        for i in range(4)
    )
    assert carried == n_answer


def test_dft_loss_is_selected(tiny_config, tmp_path):
    tiny_config["sft"]["loss"] = "dft"
    args = sft.build_sft_config(tiny_config, max_steps=1, seed=0, work_dir=tmp_path / "w")
    assert args.loss_type == "dft"
    assert args.bf16 is False or torch.cuda.is_available()


def test_sft_learns_saves_compute_and_logs_to_mlflow(tiny_config, start_dir, data_file, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tiny_config["sft"].update(
        init_steps=10, learning_rate=3e-3, lr_scheduler="constant", warmup_ratio=0.0, batch_size=4
    )
    saves = {5: str(tmp_path / "out" / "ckpt-5"), 10: str(tmp_path / "out" / "init")}
    before = _state(start_dir)
    summary = sft.run_sft(
        tiny_config,
        stage="init",
        task="gp_l",
        seed=0,
        data_file=data_file,
        start_dir=start_dir,
        save_dirs=saves,
        work_dir=tmp_path / "work",
    )
    assert summary["global_step"] == 10 and summary["resumed_from_step"] == 0
    assert not (tmp_path / "work").exists(), "work folder removed after success"

    # outputs: model + tokenizer + compute that adds to the start's
    start = ComputeLedger.load(start_dir)
    c5, c10 = ComputeLedger.load(saves[5]), ComputeLedger.load(saves[10])
    assert start.flops < c5.flops < c10.flops
    assert c10.train_tokens - start.train_tokens == summary["train_tokens"] > 0
    assert c10.stages["init"] == pytest.approx(start.stages["init"] + 6 * c10.n_params * summary["train_tokens"])
    after = _state(saves[10])
    assert any(not torch.equal(before[k], after[k]) for k in before)

    # MLflow: parent + child with tags, params and per-step loss
    import mlflow

    mlflow.set_tracking_uri(tracking.tracking_uri(tiny_config))
    runs = mlflow.search_runs(experiment_names=["sftvsrl"], output_format="list")
    parent = [r for r in runs if r.data.tags.get(tracking.TAG_ROLE) == "study"]
    children = [r for r in runs if r.data.tags.get(tracking.TAG_ROLE) == "job"]
    assert len(parent) == 1 and len(children) == 1
    child = children[0]
    tags = child.data.tags
    assert tags["mlflow.parentRunId"] == parent[0].info.run_id
    assert (tags[tracking.TAG_STAGE], tags[tracking.TAG_TASK], tags[tracking.TAG_SEED]) == ("init", "gp_l", "0")
    assert tags[tracking.TAG_CONFIG_HASH] == config_hash(tiny_config)
    assert tags[tracking.TAG_GIT] and tags[tracking.TAG_DATA] == "none"
    assert child.info.status == "FINISHED"
    assert child.data.params["config.sft.learning_rate"] == "0.003"
    history = mlflow.MlflowClient().get_metric_history(child.info.run_id, "loss")
    losses = [m.value for m in sorted(history, key=lambda m: m.step)]
    assert [m.step for m in sorted(history, key=lambda m: m.step)] == list(range(1, 11))
    # the loss falls
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.5, losses
    assert child.data.metrics["compute/total_flops"] == pytest.approx(c10.flops)
    assert not [k for k in child.data.metrics if k.startswith("profiling")]  # TRL's timers stay out


class _Kill(TrainerCallback):
    """Simulates a job killed right after the trainer checkpoint of `step` was written."""

    def __init__(self, step: int):
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt(f"killed after checkpoint {self.step}")
        return control


def test_kill_and_resume(tiny_config, start_dir, data_file, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tiny_config["sft"].update(steps=6, checkpoint_steps=[2, 6], save_every=3, learning_rate=1e-3)
    saves = {2: str(tmp_path / "out" / "ckpt-2"), 6: str(tmp_path / "out" / "ckpt-6")}
    work = tmp_path / "work"
    kw = {"task": "gp_l", "seed": 1, "data_file": data_file, "start_dir": start_dir}

    # reference: one uninterrupted run
    ref = sft.run_sft(tiny_config, stage="sft", save_dirs={6: str(tmp_path / "ref")}, work_dir=tmp_path / "rw", **kw)
    assert ref["global_step"] == 6

    with pytest.raises(KeyboardInterrupt):
        sft.run_sft(tiny_config, stage="sft", save_dirs=saves, work_dir=work, callbacks=[_Kill(3)], **kw)
    assert (work / "checkpoint-3").is_dir() and Path(saves[2], "config.json").exists()
    assert not Path(saves[6]).exists()
    shutil.rmtree(tmp_path / "out")  # Snakemake deletes the outputs of a failed job

    summary = sft.run_sft(tiny_config, stage="sft", save_dirs=saves, work_dir=work, **kw)
    assert summary["resumed_from_step"] == 3
    assert summary["global_step"] == 6
    for step in (2, 6):
        assert Path(saves[step], "model.safetensors").exists()
    assert (
        ComputeLedger.load(start_dir).flops < ComputeLedger.load(saves[2]).flops < ComputeLedger.load(saves[6]).flops
    )
    # the same tokens and the same weights as the uninterrupted run
    assert summary["train_tokens"] == ref["train_tokens"]
    a, b = _state(tmp_path / "ref"), _state(saves[6])
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)

    import mlflow

    mlflow.set_tracking_uri(tracking.tracking_uri(tiny_config))
    jobs = [
        r
        for r in mlflow.search_runs(experiment_names=["sftvsrl"], output_format="list")
        if r.data.tags.get(tracking.TAG_ROLE) == "job"
    ]
    assert sorted(r.info.status for r in jobs) == ["FINISHED", "FINISHED", "KILLED"]
    assert [r.data.tags.get("sftvsrl.resumed_from_step") for r in jobs if r.info.status == "FINISHED"].count("3") == 1


def test_prompts_longer_than_max_length_fail_clearly(tiny_config, tiny_model_dir, data_file, tmp_path):
    tiny_config["sft"]["max_length"] = 16
    with pytest.raises(ValueError, match="sft.max_length"):
        sft.run_sft(
            tiny_config,
            stage="init",
            task="gp_l",
            seed=0,
            data_file=data_file,
            start_dir=tiny_model_dir,
            save_dirs={4: str(tmp_path / "o")},
            work_dir=tmp_path / "w",
        )
