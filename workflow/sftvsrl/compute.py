"""Compute accounting in the paper's terms: training 6*N*D, inference 2*N*D FLOPs.

Every saved model folder carries a `compute.json`; a run starting from a checkpoint adds
its own FLOPs to the starting checkpoint's, so figures can put total compute on the x-axis
(SFT: 6N(D_init + D_sft); RL: 6N(D_init + D_rl) + 2N*D_buffer).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

COMPUTE_FILE = "compute.json"


def train_flops(n_params: int, tokens: int) -> float:
    return 6.0 * n_params * tokens


def inference_flops(n_params: int, tokens: int) -> float:
    return 2.0 * n_params * tokens


@dataclass
class ComputeLedger:
    """FLOPs and tokens, cumulative from the base model."""

    n_params: int = 0
    train_tokens: int = 0  # tokens passed through a training step (forward + backward)
    generated_tokens: int = 0  # tokens sampled for RL rollouts
    stages: dict[str, float] = field(default_factory=dict)  # stage name -> FLOPs it added
    # the training fact the report needs: the VIter of the RL that made this model (None: its last
    # training was not RL), recorded here so evaluations read it as data, not from the run's name
    train_viter: int | None = None
    # what that RL started from: "init", "base" or "sft-<step>" (rl.starts); None when not RL
    train_start: str | None = None

    @property
    def flops(self) -> float:
        return train_flops(self.n_params, self.train_tokens) + inference_flops(self.n_params, self.generated_tokens)

    def add(self, stage: str, train_tokens: int = 0, generated_tokens: int = 0) -> None:
        self.train_tokens += int(train_tokens)
        self.generated_tokens += int(generated_tokens)
        added = train_flops(self.n_params, train_tokens) + inference_flops(self.n_params, generated_tokens)
        self.stages[stage] = self.stages.get(stage, 0.0) + added

    def to_dict(self) -> dict:
        return {**asdict(self), "flops": self.flops, "gflops": self.flops / 1e9}

    def save(self, model_dir: str | Path) -> None:
        Path(model_dir, COMPUTE_FILE).write_text(json.dumps(self.to_dict(), indent=2))

    @classmethod
    def from_dict(cls, raw: dict) -> ComputeLedger:
        """The ledger `to_dict` wrote (derived fields such as flops are recomputed, not read)."""
        return cls(
            n_params=raw["n_params"],
            train_tokens=raw["train_tokens"],
            generated_tokens=raw["generated_tokens"],
            stages=dict(raw.get("stages", {})),
            train_viter=raw.get("train_viter"),
            train_start=raw.get("train_start"),
        )

    @classmethod
    def load(cls, model_dir: str | Path, n_params: int | None = None) -> ComputeLedger:
        """The ledger of a model folder; a base model without one starts at zero."""
        path = Path(model_dir, COMPUTE_FILE)
        if not path.exists():
            return cls(n_params=n_params or 0)
        ledger = cls.from_dict(json.loads(path.read_text()))
        if n_params:
            ledger.n_params = n_params
        return ledger
