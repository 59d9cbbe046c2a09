"""RL with images through TRL's GRPOTrainer and the tiny LLaVA: the prompt's image (GP-VL) and
images shown in later turns (V-IRL-VL's views at each point reached) both reach the loss."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from conftest import write_jsonl
from sftvsrl.tasks.base import Attempt


def _picture(index: int, shade: int) -> Image.Image:
    return Image.new("RGB", (40, 40), ((37 * index + shade) % 256, shade, 255 - shade))


class LookAgainEpisode:
    """Reward = how often the answer holds the letter "a"; every failed attempt is answered by a
    turn that shows a new picture (as V-IRL-VL shows the next view)."""

    def __init__(self, row, viter):
        self.messages = [dict(m) for m in row["prompt"]]
        self.images = [_picture(row["id"], 0)]
        self.attempts, self.done, self.success, self.viter = [], False, False, viter

    def step(self, answer):
        n = answer.count("a")
        ok = n >= 3
        attempt = Attempt(answer, 5.0 if ok else float(n) - 1, ok, "correct" if ok else "few", "", {"parsed": n > 0})
        self.attempts.append(attempt)
        self.messages.append({"role": "assistant", "content": answer})
        self.success = ok
        self.done = ok or len(self.attempts) >= self.viter
        if not self.done:
            self.images.append(_picture(len(self.attempts), 120))
            text = f"You wrote {n} a. Look again."
            self.messages.append({"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]})
        return attempt

    def metrics(self):
        return {"success": float(self.success)}


class LookAgainTask:
    name = "look_again"
    splits = ("rl",)

    def make_episode(self, row, viter):
        return LookAgainEpisode(row, viter)

    def row_images(self, row):
        return [_picture(row["id"], 0)]

    def aggregate(self, episodes):
        return {}


@pytest.fixture(scope="module")
def tiny_vlm_dir(tmp_path_factory) -> Path:
    from sftvsrl.tiny_model import build_tiny_vlm

    return build_tiny_vlm(tmp_path_factory.mktemp("tiny-vlm") / "model")


def test_images_of_later_turns_reach_the_loss_and_training_moves_the_weights(
    tiny_config, tiny_vlm_dir, tmp_path, monkeypatch
):
    from safetensors.torch import load_file

    from sftvsrl import rl

    monkeypatch.setattr(rl, "get_task", lambda name: LookAgainTask())
    # two PPO-style iterations and a KL term: the old-log-prob and reference passes need the images too
    tiny_config["rl"].update(
        learning_rate=1e-3, steps=2, checkpoint_steps=[2], save_every=1, num_iterations=2, beta=0.04
    )
    prompt = [{"type": "image"}, {"type": "text", "text": "write the letter a many times"}]
    rows = [
        {"id": i, "prompt": [{"role": "user", "content": prompt + [{"type": "text", "text": f"({i})"}]}]}
        for i in range(4)
    ]
    out = tmp_path / "results" / "ckpt-2" / "model"
    swapped = []  # (TRL's images, the episodes' images) per model pass that needed them
    original = rl.EpisodeImages._swap_images

    def spy(self, model, args, kwargs):
        new = original(self, model, args, kwargs)
        if new is not None:
            swapped.append((kwargs["pixel_values"].shape[0], new[1]["pixel_values"].shape[0]))
        return new

    monkeypatch.setattr(rl.EpisodeImages, "_swap_images", spy)
    summary = rl.run_rl(
        tiny_config,
        task="look_again",
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
