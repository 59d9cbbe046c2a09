"""SFT throughput on the embedded SmolLM2-135M-Instruct: a few SFTTrainer steps on GP-L expert data.

    python benchmarks/bench_sft.py [--steps 4] [--batch-size 8] [--dtype auto] [--threads N]

Prints one JSON line: tokens/s (non-padding tokens through forward + backward, the D of 6·N·D)
over the steps after the first (warm-up), seconds per step, and the device. No MLflow logging.
The base model is materialised once into $SFTVSRL_CACHE/bench/ (or ~/.cache/sftvsrl/bench/).
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=384)
    parser.add_argument("--dtype", default="auto", help="model.dtype: auto (fp32 on CPU), float32, bfloat16")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--model", default=None, help="a model folder instead of the embedded SmolLM2")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    import torch
    from transformers import TrainerCallback

    from sftvsrl import models, sft
    from sftvsrl.study import load_config
    from sftvsrl.tasks import get_task

    if args.threads:
        torch.set_num_threads(args.threads)
    config = load_config(ROOT / "config" / "config.yaml")
    config["model"]["dtype"] = args.dtype
    config["sft"].update(batch_size=args.batch_size, max_length=args.max_length, warmup_ratio=0.0)

    model_dir = Path(args.model) if args.model else models.cache_dir() / "bench" / "smollm2-135m-instruct"
    if not (model_dir / "config.json").exists():
        t0 = time.time()
        models.materialise_base_model({"base": "embedded", "name": model_dir.name}, model_dir)
        print(f"# materialised the embedded model in {time.time() - t0:.0f}s", flush=True)

    rows = get_task("gp_l").generate_splits(config["gp"], config["data_seed"])["sft"]
    model, tok = models.load_model_and_tokenizer(model_dir, dtype="float32", for_training=True)

    marks: list[tuple[float, int]] = []

    class Clock(TrainerCallback):
        def on_step_end(self, a, state, control, **kw):
            marks.append((time.perf_counter(), int(state.num_input_tokens_seen)))

    with tempfile.TemporaryDirectory() as work:
        targs = sft.build_sft_config(
            config,
            max_steps=args.steps,
            seed=0,
            work_dir=work,
            report_to=[],
            save_strategy="no",
            logging_steps=args.steps,
        )
        trainer = sft.build_trainer(config, model, tok, sft.sft_dataset(rows), targs, callbacks=[Clock()])
        start = time.perf_counter()
        trainer.train()
    (t1, n1), (tn, nn) = marks[0], marks[-1]
    steady = (nn - n1) / (tn - t1) if len(marks) > 1 else n1 / (t1 - start)
    print(
        json.dumps(
            {
                "model": str(model_dir.name),
                "n_params": models.count_parameters(model),
                "device": str(trainer.args.device),
                "precision": "bf16" if targs.bf16 else "fp16" if targs.fp16 else "fp32",
                "threads": torch.get_num_threads(),
                "steps": args.steps,
                "batch_size": args.batch_size,
                "tokens": nn,
                "tokens_per_step": nn / len(marks),
                "first_step_s": round(t1 - start, 2),
                "s_per_step_after_first": round((tn - t1) / max(1, len(marks) - 1), 2),
                "tokens_per_s": round(steady, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
