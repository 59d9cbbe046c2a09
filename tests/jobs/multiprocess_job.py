"""One training job as `accelerate launch` runs it, with two test probes (tests/test_multiprocess.py).

    accelerate launch --multi_gpu --num_processes 2 --num_machines 1 tests/jobs/multiprocess_job.py \
        --stage rl --config cfg.json --task gp_l --data rl.jsonl --start MODEL --save 1=DIR ... \
        --work-dir WORK --out OUT [--kill-at STEP]

Each rank writes OUT/rank<r>.json: the job's summary, the world size, the per-process batch and,
after every optimizer step, a digest of the rank's weights (so the test can compare the ranks).
`--kill-at` raises at the end of that step, after its export and before its trainer checkpoint,
as a job killed there would stop.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import torch
from transformers import TrainerCallback


class WeightDigest(TrainerCallback):
    def __init__(self):
        self.digests: dict[int, str] = {}
        self.batch: dict[str, int] = {}

    def on_train_begin(self, args, state, control, **kwargs):
        self.batch = {"per_process": args.per_device_train_batch_size, "grad_accum": args.gradient_accumulation_steps}

    def on_step_end(self, args, state, control, model=None, **kwargs):
        digest = hashlib.sha256()
        for name, tensor in sorted(getattr(model, "module", model).state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
        self.digests[int(state.global_step)] = digest.hexdigest()


class KillAt(TrainerCallback):
    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise RuntimeError(f"simulated kill at step {self.step}")


def main() -> None:
    p = argparse.ArgumentParser()
    for name in ("--stage", "--config", "--task", "--data", "--start", "--work-dir", "--out"):
        p.add_argument(name, required=True)
    p.add_argument("--save", nargs="+", required=True)
    p.add_argument("--kill-at", type=int, default=None)
    args = p.parse_args()
    config = json.loads(Path(args.config).read_text())
    save_dirs = {int(k): v for k, v in (item.split("=", 1) for item in args.save)}
    digest = WeightDigest()
    callbacks = [digest] + ([KillAt(args.kill_at)] if args.kill_at else [])
    common = {"task": args.task, "seed": 0, "data_file": args.data, "start_dir": args.start, "save_dirs": save_dirs}
    from accelerate import PartialState

    out = Path(args.out)
    rank = PartialState(cpu=True).process_index
    try:
        if args.stage == "rl":
            from sftvsrl.rl import run_rl

            summary = run_rl(config, viter=2, run_name="rl-v2", work_dir=args.work_dir, callbacks=callbacks, **common)
        else:
            from sftvsrl.sft import run_sft

            summary = run_sft(config, stage="sft", work_dir=args.work_dir, callbacks=callbacks, **common)
    finally:
        state = PartialState()
        result = {"rank": rank, "world_size": state.num_processes, "digests": digest.digests, "batch": digest.batch}
        out.mkdir(parents=True, exist_ok=True)
        (out / f"rank{rank}.json").write_text(json.dumps(result, indent=1))
    result["summary"] = summary
    (out / f"rank{rank}.json").write_text(json.dumps(result, indent=1, default=str))


if __name__ == "__main__":
    main()
