"""The work folder of a training job: run key, resume point, exports, the policy for lost outputs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from sftvsrl.checkpoints import (
    RUN_KEY,
    TrainingWork,
    check_save_steps,
    checkpoint_step,
    last_complete_checkpoint,
    link_tree,
    training_precision,
)


def fake_checkpoint(work: Path, step: int, complete: bool = True) -> Path:
    folder = work / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    if complete:
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return folder


def fake_export(work: TrainingWork, step: int) -> Path:
    folder = work.export_dir(step)
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"step": step}))
    return folder


def test_work_dir_of_another_setup_is_not_resumed(tmp_path):
    work_dir = tmp_path / "w"
    assert TrainingWork(work_dir, {"a": 1}, {}).open() is None
    fake_checkpoint(work_dir, 2)
    assert TrainingWork(work_dir, {"a": 1}, {}).open() == str(work_dir / "checkpoint-2")
    (work_dir / "unrelated.txt").write_text("not ours")
    work = TrainingWork(work_dir, {"a": 2}, {})
    assert work.open() is None
    assert not (work_dir / "checkpoint-2").exists()
    assert json.loads((work_dir / RUN_KEY).read_text()) == {"a": 2}
    work.clear()
    assert (work_dir / "unrelated.txt").exists() and not (work_dir / RUN_KEY).exists()


def test_checkpoints_of_an_unknown_setup_are_not_resumed(tmp_path):
    fake_checkpoint(tmp_path / "w", 3)  # no run key beside it
    assert TrainingWork(tmp_path / "w", {"a": 1}, {}).open() is None


def test_resume_from_the_newest_complete_checkpoint(tmp_path):
    fake_checkpoint(tmp_path, 2)
    fake_checkpoint(tmp_path, 4, complete=False)  # killed while writing it
    fake_checkpoint(tmp_path, 10, complete=False)
    assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-2")
    assert checkpoint_step(last_complete_checkpoint(tmp_path)) == 2 and checkpoint_step(None) == 0
    assert last_complete_checkpoint(tmp_path / "missing") is None


def test_resume_restores_deleted_outputs_from_their_exports(tmp_path):
    out = {1: str(tmp_path / "out" / "ckpt-1"), 3: str(tmp_path / "out" / "ckpt-3")}
    work = TrainingWork(tmp_path / "w", {"a": 1}, out)
    work.open()
    fake_export(work, 1)
    fake_checkpoint(work.dir, 2)
    resume = TrainingWork(tmp_path / "w", {"a": 1}, out).open()  # Snakemake deleted out/ after the kill
    assert resume == str(work.dir / "checkpoint-2")
    assert json.loads(Path(out[1], "config.json").read_text()) == {"step": 1}
    assert not Path(out[3]).exists()  # step 3 lies beyond the resume point


def test_an_output_with_no_export_makes_the_job_start_over(tmp_path):
    out = {1: str(tmp_path / "out" / "ckpt-1")}
    work = TrainingWork(tmp_path / "w", {"a": 1}, out)
    work.open()
    fake_checkpoint(work.dir, 2)  # step 1's output and export are both gone
    assert TrainingWork(tmp_path / "w", {"a": 1}, out).open() is None
    assert not (work.dir / "checkpoint-2").exists()


def test_finish_needs_every_output_and_clears_the_work_folder(tmp_path):
    out = {1: str(tmp_path / "out" / "ckpt-1"), 2: str(tmp_path / "out" / "ckpt-2")}
    work = TrainingWork(tmp_path / "w", {"a": 1}, out, own_files=("state.json",))
    work.open()
    fake_export(work, 1)
    with pytest.raises(RuntimeError, match=r"save steps \[2\] were never written"):
        work.finish()
    fake_export(work, 2)
    (work.dir / "state.json").write_text("{}")
    fake_checkpoint(work.dir, 2)
    work.finish()
    assert not work.dir.exists()
    assert all(Path(d, "config.json").exists() for d in out.values())


def test_link_tree_links_files_and_replaces_the_target(tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "w.bin").write_bytes(b"123")
    dst = tmp_path / "dst"
    dst.mkdir()
    (dst / "stale.txt").write_text("old")
    link_tree(src, dst)
    assert not (dst / "stale.txt").exists()
    assert os.path.samefile(src / "sub" / "w.bin", dst / "sub" / "w.bin")


def test_save_steps_outside_the_run_name_the_key():
    assert check_save_steps({"2": "a"}, 4, "sft.steps") == {2: "a"}
    with pytest.raises(ValueError, match=r"\[0, 5\] lie outside 1..sft.steps=4"):
        check_save_steps({0: "a", 5: "b"}, 4, "sft.steps")


def test_training_precision_is_fp32_on_a_cpu(monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    for dtype in ("auto", "bfloat16", "float16", "float32"):
        assert training_precision({"dtype": dtype, "rehearse_gpu": False}) == {
            "bf16": False,
            "fp16": False,
            "use_cpu": True,
            "activation_checkpointing": False,
        }


def test_a_gpu_rehearsal_takes_the_gpu_branch_on_a_cpu(monkeypatch):
    """model.rehearse_gpu: bf16 autocast (auto means bf16, as on a GPU with bf16) and activation checkpointing."""
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    flags = training_precision({"dtype": "auto", "rehearse_gpu": True})
    assert flags == {"bf16": True, "fp16": False, "use_cpu": True, "activation_checkpointing": True}
    assert not training_precision({"dtype": "float32", "rehearse_gpu": True})["bf16"]
