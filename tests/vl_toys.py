"""A toy image task for the RL and rollout tests: pictures in the prompt and, after a failed
attempt, in the next turn (as V-IRL-VL shows the next view), scored by the letters "a" written."""

from __future__ import annotations

from PIL import Image

from sftvsrl.tasks.base import Attempt

# a small GP-VL setting for the VL tests: 3 cards, small cards, a few rows per split
GP_VL_CFG = {
    "target": 24,
    "num_cards": 3,
    "eval_overlaps_train": True,
    "prompt": "short",
    "card_size": [40, 56],
    "sizes": {"sft": 4, "rl": 6, "eval_id": 4, "eval_ood_rule": 4, "eval_ood_visual": 4},
}


def picture(index: int) -> Image.Image:
    """Pictures far apart (black, white, red, blue, ...), so that even a random model answers each differently."""
    colors = [(0, 0, 0), (255, 255, 255), (255, 0, 0), (0, 0, 255), (0, 200, 0), (255, 255, 0)]
    return Image.new("RGB", (40, 40), colors[index % len(colors)])


class PictureEpisode:
    """Reward = how often the answer holds the letter "a" (solved at 3). A failed attempt is answered by a
    turn that shows a new picture when `show_more` (as V-IRL-VL shows the next view), else by text only."""

    def __init__(self, row, viter, show_more=True):
        self.messages = [dict(m) for m in row["prompt"]]
        self.images = [picture(row["id"])]
        self.attempts, self.done, self.success, self.viter, self.show_more = [], False, False, viter, show_more
        self.row_id = row["id"]

    def step(self, answer):
        n = answer.count("a")
        ok = n >= 3
        attempt = Attempt(answer, 5.0 if ok else float(n) - 1, ok, "correct" if ok else "few", "", {"parsed": n > 0})
        self.attempts.append(attempt)
        self.messages.append({"role": "assistant", "content": answer})
        self.success = ok
        self.done = ok or len(self.attempts) >= self.viter
        if not self.done:
            text = f"You wrote {n} a. Look again."
            if self.show_more:
                self.images.append(picture(self.row_id + len(self.attempts)))
                self.messages.append({"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]})
            else:
                self.messages.append({"role": "user", "content": text})
        return attempt

    def metrics(self):
        return {"success": float(self.success)}


class PictureTask:
    name = "pictures"
    splits = ("rl",)

    def make_episode(self, row, viter):
        return PictureEpisode(row, viter)

    def row_images(self, row):
        return [picture(row["id"])]

    def aggregate(self, episodes):
        return {}


def picture_row(i: int) -> dict:
    prompt = [{"type": "image"}, {"type": "text", "text": f"write the letter a many times ({i})"}]
    return {"id": i, "prompt": [{"role": "user", "content": prompt}]}
