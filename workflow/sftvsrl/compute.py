"""Compute accounting in the paper's terms: training 6*N*D, inference 2*N*D FLOPs.

Every saved model folder carries a `compute.json`; a run starting from a checkpoint adds
its own FLOPs to the starting checkpoint's, so figures can put total compute on the x-axis
(SFT: 6N(D_init + D_sft); RL: 6N(D_init + D_rl) + 2N*D_buffer).

Two accountings, recorded side by side (`names.ACCOUNTINGS`): "paper" counts in D_rl every played
episode's prompt and completion tokens, as the paper does; "computed" counts what the update pass
read, which leaves out the episodes of groups whose rewards are all equal (`rl.skip_no_signal`).
SFT trains on every token it reads, so there the two agree. The report pairs checkpoints at equal
compute on one of them (`report.compute_accounting`, the paper's by default).
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
    train_tokens: int = 0  # tokens of a training step as the paper counts them (RL: every played episode's)
    computed_train_tokens: int = 0  # what the training steps read (RL: silent groups' episodes skipped)
    generated_tokens: int = 0  # tokens sampled for RL rollouts
    stages: dict[str, float] = field(default_factory=dict)  # stage name -> FLOPs it added
    # the training fact the report needs: the VIter of the RL that made this model (None: its last
    # training was not RL), recorded here so evaluations read it as data, not from the run's name
    train_viter: int | None = None
    # what that RL started from: "init", "base" or "sft-<step>" (rl.starts); None when not RL
    train_start: str | None = None

    @property
    def flops(self) -> float:
        """The paper's accounting."""
        return train_flops(self.n_params, self.train_tokens) + inference_flops(self.n_params, self.generated_tokens)

    @property
    def computed_flops(self) -> float:
        """What was computed: training FLOPs on the tokens the update pass read."""
        return train_flops(self.n_params, self.computed_train_tokens) + inference_flops(
            self.n_params, self.generated_tokens
        )

    def add(self, stage: str, train_tokens: int = 0, generated_tokens: int = 0, computed_train_tokens=None) -> None:
        """Add a stage's tokens; `computed_train_tokens` (default: `train_tokens`) is what its training read."""
        computed = train_tokens if computed_train_tokens is None else computed_train_tokens
        self.train_tokens += int(train_tokens)
        self.computed_train_tokens += int(computed)
        self.generated_tokens += int(generated_tokens)
        added = train_flops(self.n_params, train_tokens) + inference_flops(self.n_params, generated_tokens)
        self.stages[stage] = self.stages.get(stage, 0.0) + added  # the paper's accounting

    def to_dict(self) -> dict:
        return {
            **asdict(self),
            "flops": self.flops,
            "gflops": self.flops / 1e9,
            "computed_flops": self.computed_flops,
            "computed_gflops": self.computed_flops / 1e9,
        }

    def save(self, model_dir: str | Path) -> None:
        Path(model_dir, COMPUTE_FILE).write_text(json.dumps(self.to_dict(), indent=2))

    @classmethod
    def from_dict(cls, raw: dict) -> ComputeLedger:
        """The ledger `to_dict` wrote (derived fields such as flops are recomputed, not read)."""
        return cls(
            n_params=raw["n_params"],
            train_tokens=raw["train_tokens"],
            # a ledger from before the two accountings counted what was read in train_tokens
            computed_train_tokens=raw.get("computed_train_tokens", raw["train_tokens"]),
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
