"""RL with images through TRL's GRPOTrainer and the tiny LLaVA: the prompt's image (GP-VL) and
images shown in later turns (V-IRL-VL's views at each point reached) both reach the loss."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import write_jsonl
from vl_toys import PictureTask, picture_row


@pytest.fixture(scope="module")
def tiny_vlm_dir(tmp_path_factory) -> Path:
    from sftvsrl.tiny_model import build_tiny_vlm

    return build_tiny_vlm(tmp_path_factory.mktemp("tiny-vlm") / "model")


def test_images_of_later_turns_reach_the_loss_and_training_moves_the_weights(
    tiny_config, tiny_vlm_dir, tmp_path, monkeypatch
):
    from safetensors.torch import load_file

    from sftvsrl import grpo, rl

    monkeypatch.setattr(rl, "get_task", lambda name: PictureTask())
    # two PPO-style iterations and a KL term: the old-log-prob and reference passes need the images too
    tiny_config["rl"].update(
        learning_rate=1e-3, steps=2, checkpoint_steps=[2], save_every=1, num_iterations=2, beta=0.04, grad_accum=1
    )
    rows = [picture_row(i) for i in range(4)]
    out = tmp_path / "results" / "ckpt-2" / "model"
    swapped = []  # (TRL's images, the episodes' images) per model pass that needed them
    original = grpo.EpisodeImages._swap_images

    def spy(self, model, args, kwargs):
        new = original(self, model, args, kwargs)
        if new is not None:
            swapped.append((kwargs["pixel_values"].shape[0], new[1]["pixel_values"].shape[0]))
        return new

    monkeypatch.setattr(grpo.EpisodeImages, "_swap_images", spy)
    summary = rl.run_rl(
        tiny_config,
        task="pictures",
        seed=0,
        viter=3,
        run_name="rl-v3",
        data_file=str(write_jsonl(rows, tmp_path / "data" / "rl.jsonl")),
        start_dir=str(tiny_vlm_dir),
        save_dirs={2: str(out)},
        work_dir=str(tmp_path / "work"),
    )
    assert summary["final_step"] == 2
    # TRL handed each pass one image per episode (the row's); the episodes showed more. One rollout
    # feeds both steps (num_iterations 2): old log-probs, reference, and the loss of each step
    assert len(swapped) == 4
    for given, used in swapped:
        assert used > given
    start, trained = load_file(str(tiny_vlm_dir / "model.safetensors")), load_file(str(out / "model.safetensors"))
    moved = [k for k in start if not (start[k] == trained[k]).all()]
    assert any("vision" in k for k in moved), "the vision tower got no gradient"
    assert (out / "processor_config.json").exists()
