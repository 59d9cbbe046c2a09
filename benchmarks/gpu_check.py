"""GPU check in one command: is this card fit for config/gpu.yaml, and how long would that take?

On one GPU (the first visible one; CUDA_VISIBLE_DEVICES picks another), a randomly initialised
model of the chosen size (built in code: no hub access, no download) with the project's tiny BPE
tokenizer (`tiny_model.make_tokenizer`, ChatML template) goes through the project's own paths on
GeneralPoints (GP-L) data from the config:

1. SFT: TRL's SFTTrainer through `sft.build_sft_config` / `sft.build_trainer` / `sft.sft_dataset`
   (the precision `checkpoints.training_precision` picks: bf16 autocast on a GPU that supports
   it, fp32 on a CPU); non-padding tokens/s over the steps after the warm-up, and the model-FLOPs
   utilisation 6·N·tokens/s / the card's peak dense bf16 FLOP/s.
2. Rollout: `rollout.run_episodes` (VIter 1, a fixed max_new_tokens, the model loaded as an
   evaluation loads it) at each `--rollout-batches` number of episodes; generated tokens/s beside
   the decode bound from memory bandwidth (every decode step reads the weights once plus the
   batch's KV cache: tokens/s <= batch x bandwidth / bytes per step).
3. One multi-turn GRPO step (`rl.run_rl`: TRL's GRPOTrainer with our rollout) at `--rl-viter`,
   with its time split: generation / verification / other rollout work / update.
4. Peak memory of each phase: `torch.cuda.max_memory_allocated` on a GPU, the process's peak
   RSS on a CPU.

Then an estimate of config/gpu.yaml's wall time from these rates (every attempt taken to
max_new_tokens and every episode to its last attempt, as a random model does: an upper bound
for a model that learns). The model is random, so success rates mean nothing here, and the
tiny tokenizer cuts GP prompts into other lengths than Qwen's: rates transfer, row lengths
roughly. A phase that fails (out of memory, say) is reported as such; the others still run.

    python benchmarks/gpu_check.py                            # the GPU found, Qwen2.5-1.5B's shape
    python benchmarks/gpu_check.py --size 0.5b --out h100.json
    python benchmarks/gpu_check.py --device cpu --size tiny   # CPU fallback: the same table

On a CPU the check takes the GPU's branches (`model.rehearse_gpu`: bf16 weights and autocast, activation
checkpointing, the GPU's trainer arguments; `--plain-cpu` runs the CPU's own fp32 branch instead), and the
model's generation config carries a hub instruct model's sampling defaults, which the rollouts must not apply
(`tiny_model.HUB_LIKE_SAMPLING`). The GRPO step sends every episode through the update pass (no skipping of
groups whose rewards are all equal, as a random model's are), so its update rate is measured on real rows.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import resource
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "workflow"))

# Model shapes (Qwen2 architecture). vocab_size None: the tokenizer's.
SIZES: dict[str, dict[str, Any]] = {
    "tiny": {  # a few layers, for a CPU
        "hidden_size": 128,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "intermediate_size": 256,
        "vocab_size": None,
    },
    "0.5b": {  # Qwen2.5-0.5B-Instruct
        "hidden_size": 896,
        "num_hidden_layers": 24,
        "num_attention_heads": 14,
        "num_key_value_heads": 2,
        "intermediate_size": 4864,
        "vocab_size": 151936,
    },
    "1.5b": {  # Qwen2.5-1.5B-Instruct, config/gpu.yaml's model
        "hidden_size": 1536,
        "num_hidden_layers": 28,
        "num_attention_heads": 12,
        "num_key_value_heads": 2,
        "intermediate_size": 8960,
        "vocab_size": 151936,
    },
}

# (substring of torch.cuda.get_device_name(), upper case; card; peak dense bf16 FLOP/s; memory
# bandwidth B/s). Spec-sheet figures; the first match wins, so the more specific names come first.
# GeForce cards run fp32-accumulate bf16 matmuls (PyTorch's) at half the figure given here.
CARDS: list[tuple[str, str, float, float]] = [
    ("GH200", "GH200", 989e12, 4.0e12),
    ("H200", "H200", 989e12, 4.8e12),
    ("H100 PCIE", "H100 PCIe", 756e12, 2.0e12),
    ("H100 NVL", "H100 NVL", 835e12, 3.9e12),
    ("H100", "H100 SXM", 989e12, 3.35e12),
    ("H800", "H800 SXM", 989e12, 3.35e12),
    ("B200", "B200", 2250e12, 8.0e12),
    ("A100-SXM4-40GB", "A100-40GB", 312e12, 1.555e12),
    ("A100-PCIE-40GB", "A100-40GB PCIe", 312e12, 1.555e12),
    ("A100 80GB PCIE", "A100-80GB PCIe", 312e12, 1.935e12),
    ("A100", "A100-80GB", 312e12, 2.0e12),
    ("A800", "A800", 312e12, 2.0e12),
    ("L40S", "L40S", 362e12, 0.864e12),
    ("L40", "L40", 181e12, 0.864e12),
    ("L4", "L4", 121e12, 0.3e12),
    ("A10G", "A10G", 125e12, 0.6e12),
    ("A10", "A10", 125e12, 0.6e12),
    ("RTX 6000 ADA", "RTX 6000 Ada", 364e12, 0.96e12),
    ("RTX A6000", "RTX A6000", 155e12, 0.768e12),
    ("RTX 4090", "RTX 4090", 165e12, 1.008e12),
]


# --------------------------------------------------------------------------- arithmetic
def card_specs(device_name: str) -> tuple[str, float, float] | None:
    """(card, peak dense bf16 FLOP/s, memory bandwidth B/s) of a `torch.cuda.get_device_name()`; None if unknown."""
    name = device_name.upper()
    for key, card, peak, bandwidth in CARDS:
        if key in name:
            return card, peak, bandwidth
    return None


def mfu(n_params: int, tokens_per_s: float, peak_flops: float | None) -> float | None:
    """Model-FLOPs utilisation of training: 6·N·tokens/s over the peak FLOP/s (None without a peak)."""
    if not peak_flops:
        return None
    return 6.0 * n_params * tokens_per_s / peak_flops


def kv_bytes_per_token(layers: int, kv_heads: int, head_dim: int, bytes_per_value: int) -> int:
    """KV-cache bytes one token occupies: keys and values of every layer."""
    return 2 * layers * kv_heads * head_dim * bytes_per_value


def decode_bound(
    batch: int, bandwidth: float, weight_bytes: float, kv_bytes_token: float, context_tokens: float
) -> float:
    """Upper bound on decode tokens/s when memory-bound: each step reads the weights once plus the
    batch's KV cache (`context_tokens` per row) and yields `batch` tokens."""
    bytes_per_step = weight_bytes + batch * context_tokens * kv_bytes_token
    return batch * bandwidth / bytes_per_step


def eval_checkpoints(config: dict[str, Any]) -> int:
    """Evaluated checkpoints per task and seed (workflow/rules/common.smk: all_runs x run_steps)."""
    rl = config["rl"]
    rl_runs = len(rl["viters"]) + (1 if rl["nosft"] else 0)
    return (
        (1 if config["eval"]["base"] else 0)  # the base model
        + 1  # init
        + len(config["sft"]["checkpoint_steps"])
        + rl_runs * len(rl["checkpoint_steps"])
    )


def estimate_study(config: dict[str, Any], rates: dict[str, float | None]) -> dict[str, Any]:
    """Seconds the config's study would take at the measured `rates` (an estimate, not a measurement).

    rates: sft_tokens_per_s, sft_row_tokens (non-padding tokens of an SFT row); rl_generation_tokens_per_s,
    rl_update_tokens_per_s (tokens trained per second of update), rl_prompt_tokens and
    rl_feedback_tokens (per episode / per feedback turn); eval_tokens_per_s. A missing rate (None)
    leaves its part None. Token counts are upper bounds: every attempt runs to max_new_tokens and
    every episode uses all VIter attempts.
    """
    runs = len(config["tasks"]) * len(config["seeds"])
    sft, rl, ev = config["sft"], config["rl"], config["eval"]

    def seconds(tokens: float, rate: float | None) -> float | None:
        return tokens / rate if rate else None

    sft_steps = (int(sft["init_steps"]) + int(sft["steps"])) * runs
    sft_tokens = sft_steps * int(sft["batch_size"]) * int(sft["grad_accum"]) * float(rates["sft_row_tokens"] or 0)
    out: dict[str, Any] = {
        "sft": {"steps": sft_steps, "tokens": sft_tokens, "s": seconds(sft_tokens, rates["sft_tokens_per_s"])}
    }

    viters = [int(v) for v in rl["viters"]]
    if rl["nosft"]:
        viters.append(int(rl["nosft_viter"] or max(rl["viters"])))
    episodes = int(rl["prompts_per_step"]) * int(rl["num_generations"])
    new = int(rl["max_new_tokens"])
    generated = trained = 0.0
    for v in viters:
        generated += int(rl["steps"]) * episodes * v * new
        per_episode = (rates["rl_prompt_tokens"] or 0) + v * new + (v - 1) * (rates["rl_feedback_tokens"] or 0)
        trained += int(rl["steps"]) * episodes * per_episode
    generated, trained = generated * runs, trained * runs
    gen_s = seconds(generated, rates["rl_generation_tokens_per_s"])
    upd_s = seconds(trained, rates["rl_update_tokens_per_s"])
    out["rl"] = {
        "runs": len(viters) * runs,
        "steps": int(rl["steps"]) * len(viters) * runs,
        "generated_tokens": generated,
        "trained_tokens": trained,
        "generation_s": gen_s,
        "update_s": upd_s,
        "s": gen_s + upd_s if gen_s is not None and upd_s is not None else None,
    }

    checkpoints = eval_checkpoints(config) * runs
    eval_tokens = checkpoints * int(ev["episodes"]) * len(ev["splits"]) * int(ev["viter"]) * int(ev["max_new_tokens"])
    out["eval"] = {
        "checkpoints": checkpoints,
        "episodes": checkpoints * int(ev["episodes"]) * len(ev["splits"]),
        "generated_tokens": eval_tokens,
        "s": seconds(eval_tokens, rates["eval_tokens_per_s"]),
    }
    parts = [out[k]["s"] for k in ("sft", "rl", "eval")]
    out["total_s"] = sum(parts) if all(p is not None for p in parts) else None
    return out


# --------------------------------------------------------------------------- memory
class PeakMemory:
    """Peak memory of a phase: CUDA's allocator on a GPU, the process's peak RSS elsewhere
    (reset per phase through /proc/self/clear_refs where Linux allows; else the peak so far)."""

    def __init__(self, cuda: bool):
        self.cuda = cuda
        self.resettable = False

    def reset(self) -> None:
        import torch

        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            return
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.resettable = True
        except OSError:
            self.resettable = False

    def peak_bytes(self) -> int:
        import torch

        if self.cuda:
            return int(torch.cuda.max_memory_allocated())
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux: KiB

    @property
    def kind(self) -> str:
        if self.cuda:
            return "torch.cuda.max_memory_allocated"
        return "peak RSS of the phase" if self.resettable else "peak RSS of the process so far"


# --------------------------------------------------------------------------- the model
def build_model_folder(size: str, folder: Path, seed: int, model_cfg: dict[str, Any]) -> dict[str, Any]:
    """A random Qwen2 of `size` and the project's tiny tokenizer, saved to `folder` (bf16 on a GPU or under
    model.rehearse_gpu), with a hub instruct model's sampling defaults in its generation config."""
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    from sftvsrl.models import count_parameters, device_and_dtype, run_dtype, save_model
    from sftvsrl.tiny_model import corpus, make_tokenizer, with_hub_sampling

    tokenizer = make_tokenizer(corpus())
    shape = dict(SIZES[size])
    shape["vocab_size"] = shape["vocab_size"] or len(tokenizer)
    config = Qwen2Config(
        **shape,
        max_position_embeddings=32768,
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 1e6},
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    device, dtype = device_and_dtype(run_dtype(model_cfg))
    torch.manual_seed(seed)
    with torch.device(device):  # initialise where it will run: a 1.5B init on a CPU takes a while
        model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    with_hub_sampling(model)
    n_params = count_parameters(model)
    save_model(model, tokenizer, folder, dtype="bfloat16" if dtype == torch.bfloat16 else "float32")
    del model
    return {
        "size": size,
        "n_params": n_params,
        "tokenizer_vocab": len(tokenizer),
        **shape,
        "head_dim": shape["hidden_size"] // shape["num_attention_heads"],
    }


# --------------------------------------------------------------------------- the phases
def check_config(path: str, args) -> dict[str, Any]:
    """The config to measure with (its gp, sft, rl and eval sections), adjusted to a short check."""
    import torch

    from sftvsrl.study import load_config

    config = copy.deepcopy(load_config(path))
    config["study"] = "gpu-check"
    # a CPU rehearses the GPU's branches unless asked not to
    config["model"]["rehearse_gpu"] = not torch.cuda.is_available() and not args.plain_cpu
    if args.sft_batch_size:
        config["sft"]["batch_size"] = args.sft_batch_size
    if args.grad_accum:
        config["sft"]["grad_accum"] = args.grad_accum
    return config


def measure_sft(config: dict[str, Any], folder: Path, rows: list[dict], args) -> dict[str, Any]:
    from transformers import TrainerCallback

    from sftvsrl import sft
    from sftvsrl.checkpoints import load_for_training

    cfg = copy.deepcopy(config)
    cfg["sft"]["warmup_ratio"] = 0.0
    total = args.warmup_steps + args.steps
    per_step_rows = int(cfg["sft"]["batch_size"]) * int(cfg["sft"]["grad_accum"])
    marks: list[tuple[float, int]] = []

    class Clock(TrainerCallback):
        def on_step_end(self, a, state, control, **kw):
            marks.append((time.perf_counter(), int(state.num_input_tokens_seen)))

    model, tokenizer = load_for_training(cfg, folder)
    with tempfile.TemporaryDirectory() as work:
        targs = sft.build_sft_config(
            cfg, max_steps=total, seed=0, work_dir=work, report_to=[], save_strategy="no", logging_steps=total
        )
        dataset = sft.sft_dataset(rows[: per_step_rows * total])
        trainer = sft.build_trainer(cfg, model, tokenizer, dataset, targs, callbacks=[Clock()])
        start = time.perf_counter()
        trainer.train()
    warm = min(args.warmup_steps, len(marks) - 1)
    (t0, n0) = marks[warm - 1] if warm > 0 else (start, 0)
    tn, nn = marks[-1]
    tokens_per_s = (nn - n0) / (tn - t0)
    precision = "bf16" if targs.bf16 else "fp16" if targs.fp16 else "fp32"
    out = {
        "precision": precision,
        "activation_checkpointing": bool(targs.activation_checkpointing),
        "batch_size": int(cfg["sft"]["batch_size"]),
        "grad_accum": int(cfg["sft"]["grad_accum"]),
        "steps_measured": len(marks) - warm,
        "warmup_steps": warm,
        "row_tokens": nn / (per_step_rows * len(marks)),
        "s_per_step": (tn - t0) / (len(marks) - warm),
        "tokens_per_s": tokens_per_s,
    }
    del trainer, model
    return out


def measure_rollout(config: dict, folder: Path, rows: list[dict], batch: int, args, temperature: float, seed: int):
    import torch

    from sftvsrl.models import load_model_and_tokenizer, run_dtype
    from sftvsrl.rollout import RolloutStats, run_episodes, summarize
    from sftvsrl.sampling import sampling_settings
    from sftvsrl.tasks import get_task

    task = get_task("gp_l")
    model, tokenizer = load_model_and_tokenizer(folder, dtype=run_dtype(config["model"]))  # as an evaluation does
    # warm-up at the same batch (allocations, kernels), not timed
    warm = [task.make_episode(r, 1) for r in rows[:batch]]
    run_episodes(model, tokenizer, warm, temperature=temperature, max_new_tokens=4, seed=seed)
    episodes = [task.make_episode(r, 1) for r in rows[:batch]]
    stats = RolloutStats()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    traces = run_episodes(
        model, tokenizer, episodes, temperature=temperature, max_new_tokens=args.max_new_tokens, seed=seed, stats=stats
    )
    wall = time.perf_counter() - t0
    s = summarize(traces)
    prompt = sum(len(t.prompt_ids) for t in traces) / len(traces)
    generated = s["generated_tokens"]
    dtype = next(model.parameters()).dtype
    sampling = sampling_settings(model, temperature)
    del model
    return {
        "batch": batch,
        "sampling": sampling,
        "dtype": str(dtype).split(".")[-1],
        "bytes_per_param": dtype.itemsize,
        "max_new_tokens": args.max_new_tokens,
        "prompt_tokens": prompt,
        "generated_tokens": int(generated),
        "generation_s": stats.generation_s,
        "wall_s": wall,
        "tokens_per_s": generated / stats.generation_s,
        # mean context a decode step reads: the prompt and half the answer
        "context_tokens": prompt + generated / len(traces) / 2,
    }


def measure_grpo_step(config: dict[str, Any], folder: Path, rows: list[dict], args) -> dict[str, Any]:
    from transformers import TrainerCallback

    from sftvsrl.rl import run_rl

    class NoCheckpoint(TrainerCallback):
        """No trainer checkpoint at the last step (for 1.5B: weights and optimizer state, about 18 GB)."""

        def on_step_end(self, a, state, control, **kw):
            control.should_save = False
            return control

    cfg = copy.deepcopy(config)
    rl = cfg["rl"]
    if args.rl_prompts:
        rl["prompts_per_step"] = args.rl_prompts
    if args.rl_generations:
        rl["num_generations"] = args.rl_generations
    rl.update(steps=1, checkpoint_steps=[1], save_every=10**6, max_new_tokens=args.max_new_tokens)
    rl["skip_no_signal"] = False  # a random model's groups are all silent: measure the update on whole episodes
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cfg["mlflow"]["tracking_uri"] = f"sqlite:///{tmp / 'mlflow.db'}"
        exported = os.environ.pop("MLFLOW_TRACKING_URI", None)  # it would override the check's own store
        data = tmp / "rl.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in rows[: 4 * int(rl["prompts_per_step"])]))
        t0 = time.perf_counter()
        try:
            summary = run_rl(
                cfg,
                task="gp_l",
                seed=0,
                viter=args.rl_viter,
                run_name=f"gpu-check-v{args.rl_viter}",
                data_file=str(data),
                start_dir=str(folder),
                save_dirs={},
                work_dir=str(tmp / "work"),
                callbacks=[NoCheckpoint()],
            )
            job_s = time.perf_counter() - t0
            training_pass = recorded_pass(cfg)
        finally:
            if exported is not None:
                os.environ["MLFLOW_TRACKING_URI"] = exported
    m = summary["last_step_metrics"]
    episodes = int(rl["prompts_per_step"]) * int(rl["num_generations"])
    trained = float(m["tokens/trained_total"])  # every played episode's tokens
    read = float(m["tokens/read_total"])  # the part the update pass read
    completion = float(m["tokens/completion"])
    generated = float(m["tokens/generated"])
    attempts = float(m["episode/attempts"])
    return {
        "training_pass": training_pass,
        "episodes": episodes,
        "viter": args.rl_viter,
        "max_new_tokens": args.max_new_tokens,
        "job_s": job_s,
        "step_s": m["time/step_s"],
        "generation_s": m["time/generation_s"],
        "verification_s": m["time/verification_s"],
        "rollout_other_s": m["time/rollout_other_s"],
        "update_s": m["time/update_s"],
        "generated_tokens": generated,
        "trained_tokens": trained,
        "attempts_per_episode": attempts,
        "prompt_tokens": (trained - completion) / episodes,
        # a feedback turn: the completion's tokens that were not sampled, per turn between attempts
        "feedback_tokens": (completion - generated) / max(episodes * (attempts - 1), 1),
        "generation_tokens_per_s": generated / m["time/generation_s"],
        "update_tokens_per_s": read / m["time/update_s"],
    }


def recorded_pass(config: dict[str, Any]) -> dict[str, str]:
    """How the RL job's first training forward ran, as the job recorded it in MLflow (`pass.*` params)."""
    from mlflow import MlflowClient

    client = MlflowClient(config["mlflow"]["tracking_uri"])
    experiment = client.get_experiment_by_name(config["mlflow"]["experiment"])
    runs = client.search_runs([experiment.experiment_id], "tags.`sftvsrl.stage` = 'rl'")
    return {k.removeprefix("pass."): v for k, v in runs[0].data.params.items() if k.startswith("pass.")}


# --------------------------------------------------------------------------- the table
def _fmt(value: Any, unit: str = "", digits: int = 1) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:,.{digits}f}{unit}"
    return f"{value}{unit}"


def _gib(n: int | None) -> str:
    return "n/a" if n is None else f"{n / 2**30:.2f} GiB"


def _hours(s: float | None) -> str:
    return "n/a" if s is None else f"{s / 3600:.2f} h ({s / 60:.0f} min)"


def table_rows(results: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(check, figure, value) rows of the printed table; the same rows on every device."""
    dev, model = results["device"], results["model"]
    rows = [
        ("device", "name", dev["name"]),
        (
            "device",
            "peak bf16 / bandwidth",
            f"{_fmt(dev['peak_tflops'], ' TFLOP/s')} / {_fmt(dev['bandwidth_gbs'], ' GB/s', 0)}",
        ),
        ("model", "size / parameters", f"{model['size']} / {model['n_params'] / 1e6:,.1f}M"),
        ("device", "branch", dev["branch"]),
    ]
    sft = results["sft"]
    if "error" in sft:
        rows.append(("SFT", "error", sft["error"]))
    else:
        rows += [
            ("SFT", "precision / rows a step", f"{sft['precision']} / {sft['batch_size']} x {sft['grad_accum']}"),
            ("SFT", "s a step", _fmt(sft["s_per_step"], " s", 2)),
            ("SFT", "tokens/s", _fmt(sft["tokens_per_s"], "", 0)),
            ("SFT", "MFU", "n/a" if sft["mfu"] is None else f"{100 * sft['mfu']:.1f}%"),
        ]
    for r in results["rollout"]:
        name = f"rollout b{r['batch']}"
        if "error" in r:
            rows.append((name, "error", r["error"]))
            continue
        share = (
            "n/a" if r["bound_tokens_per_s"] is None else f"{100 * r['tokens_per_s'] / r['bound_tokens_per_s']:.0f}%"
        )
        rows += [
            (name, "tokens/s", _fmt(r["tokens_per_s"], "", 0)),
            (name, "decode bound / share", f"{_fmt(r['bound_tokens_per_s'], '', 0)} / {share}"),
        ]
    g = results["grpo_step"]
    if "error" in g:
        rows.append(("GRPO step", "error", g["error"]))
    else:
        rows += [
            ("GRPO step", "episodes x VIter", f"{g['episodes']} x {g['viter']} ({g['max_new_tokens']} new tokens)"),
            ("GRPO step", "step", _fmt(g["step_s"], " s", 2)),
            (
                "GRPO step",
                "generation / verification / other",
                f"{g['generation_s']:.2f} / {g['verification_s']:.3f} / {g['rollout_other_s']:.2f} s",
            ),
            ("GRPO step", "update", _fmt(g["update_s"], " s", 2)),
            (
                "GRPO step",
                "training pass: autocast / checkpointing",
                f"{g['training_pass'].get('autocast')} / {g['training_pass'].get('activation_checkpointing')}",
            ),
        ]
    rows.append(("peak memory", "measured as", results["peak_memory"]["kind"]))
    for phase, peak in results["peak_memory"]["bytes"].items():
        rows.append(("peak memory", phase, _gib(peak)))
    est = results["estimate"]
    rows += [
        ("estimate", f"{results['estimate_config']} SFT", _hours(est["sft"]["s"])),
        ("estimate", f"{results['estimate_config']} RL", _hours(est["rl"]["s"])),
        ("estimate", f"{results['estimate_config']} eval", _hours(est["eval"]["s"])),
        ("estimate", f"{results['estimate_config']} total", _hours(est["total_s"])),
    ]
    return rows


def print_table(rows: list[tuple[str, str, str]]) -> None:
    print("| check | figure | value |")
    print("|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


# --------------------------------------------------------------------------- main
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto", help="auto: a GPU when one is found")
    p.add_argument(
        "--size", choices=sorted(SIZES), default=None, help="model shape (default: 1.5b on a GPU, tiny on a CPU)"
    )
    p.add_argument(
        "--config", default=str(ROOT / "config" / "gpu.yaml"), help="data, SFT, RL, eval settings; estimated"
    )
    p.add_argument("--steps", type=int, default=4, help="SFT steps measured after the warm-up")
    p.add_argument("--warmup-steps", type=int, default=1, help="SFT steps not timed")
    p.add_argument("--sft-batch-size", type=int, default=None, help="default: the config's sft.batch_size")
    p.add_argument("--grad-accum", type=int, default=None, help="default: the config's sft.grad_accum")
    p.add_argument("--rollout-batches", default="64,256", help="episodes per rollout, comma-separated")
    p.add_argument(
        "--max-new-tokens", type=int, default=None, help="per attempt (default: the config's rl.max_new_tokens)"
    )
    p.add_argument("--rl-viter", type=int, default=2, help="VIter of the GRPO step")
    p.add_argument("--rl-prompts", type=int, default=None, help="default: the config's rl.prompts_per_step")
    p.add_argument("--rl-generations", type=int, default=None, help="default: the config's rl.num_generations")
    p.add_argument("--peak-tflops", type=float, default=None, help="the card's peak dense bf16 TFLOP/s (override)")
    p.add_argument("--bandwidth-gbs", type=float, default=None, help="the card's memory bandwidth in GB/s (override)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (CPU)")
    p.add_argument(
        "--plain-cpu", action="store_true", help="on a CPU, its own fp32 branch rather than a rehearsal of the GPU's"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="gpu_check.json", help="the figures as JSON")
    return p.parse_args(argv)


def device_info(args) -> dict[str, Any]:
    import torch

    from sftvsrl.models import device_and_dtype

    device, dtype = device_and_dtype("auto")
    info: dict[str, Any] = {"type": device.type, "dtype": str(dtype).split(".")[-1], "torch": torch.__version__}
    if device.type == "cuda":
        info["name"] = torch.cuda.get_device_name()
        info["memory_gib"] = torch.cuda.get_device_properties(0).total_memory / 2**30
        specs = card_specs(info["name"])
        info["card"] = specs[0] if specs else None
        peak, bandwidth = (specs[1], specs[2]) if specs else (None, None)
    else:
        info["name"] = f"{device.type} ({torch.get_num_threads()} threads)"
        peak = bandwidth = None  # no table for CPUs: MFU and the decode bound need the overrides
    info["branch"] = (
        "GPU" if device.type == "cuda" else "GPU rehearsed on a CPU" if not args.plain_cpu else "CPU (fp32)"
    )
    if args.peak_tflops:
        peak = args.peak_tflops * 1e12
    if args.bandwidth_gbs:
        bandwidth = args.bandwidth_gbs * 1e9
    info["peak_tflops"] = peak / 1e12 if peak else None
    info["bandwidth_gbs"] = bandwidth / 1e9 if bandwidth else None
    return info


def run_phase(name: str, results: dict, memory: PeakMemory, fn, *a) -> Any:
    """Run one phase; record its peak memory; an exception becomes {"error": ...} and the next phase runs."""
    import torch

    memory.reset()
    t0 = time.perf_counter()
    try:
        out = fn(*a)
    except Exception as err:  # noqa: BLE001 - a check reports what failed and goes on
        traceback.print_exc()
        out = {"error": f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"[:300]}
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    results["peak_memory"]["bytes"][name] = memory.peak_bytes()
    print(f"# {name}: {time.perf_counter() - t0:.1f} s", flush=True)
    gc.collect()
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    # before torch: every project helper then finds the CPU, or one GPU (the Trainer would spread
    # its batches over every visible GPU with DataParallel)
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    else:
        os.environ.setdefault("CUDA_VISIBLE_DEVICES", "0")
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch finds no CUDA device")
    if args.threads:
        torch.set_num_threads(args.threads)
    from sftvsrl.tasks import get_task

    started = time.perf_counter()
    cuda = torch.cuda.is_available()
    args.size = args.size or ("1.5b" if cuda else "tiny")
    config = check_config(args.config, args)
    args.max_new_tokens = args.max_new_tokens or int(config["rl"]["max_new_tokens"])
    batches = [int(b) for b in args.rollout_batches.split(",") if b.strip()]
    dev = device_info(args)
    print(f"# {dev['name']}, {args.size} model, config {args.config}", flush=True)
    splits = get_task("gp_l").generate_splits(config["gp"], config["data_seed"])
    if len(splits["rl"]) < max(batches):
        raise SystemExit(f"--rollout-batches: the rl split has only {len(splits['rl'])} rows")

    memory = PeakMemory(cuda)
    results: dict[str, Any] = {"device": dev, "peak_memory": {"kind": memory.kind, "bytes": {}}}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / f"random-qwen2-{args.size}"
        results["model"] = run_phase(
            "build", results, memory, build_model_folder, args.size, folder, args.seed, config["model"]
        )
        if "error" in results["model"]:
            raise SystemExit(f"could not build the model: {results['model']['error']}")
        n = results["model"]["n_params"]

        sft = run_phase("sft", results, memory, measure_sft, config, folder, splits["sft"], args)
        if "error" not in sft:
            peak = dev["peak_tflops"] * 1e12 if dev["peak_tflops"] else None
            sft["mfu"] = mfu(n, sft["tokens_per_s"], peak if sft["precision"] == "bf16" or args.peak_tflops else None)
        results["sft"] = sft

        temperature = float(config["rl"]["temperature"])
        results["rollout"] = []
        for batch in batches:
            r = run_phase(
                f"rollout b{batch}",
                results,
                memory,
                measure_rollout,
                config,
                folder,
                splits["rl"],
                batch,
                args,
                temperature,
                int(config["eval"]["seed"]),
            )
            if "error" not in r:
                m = results["model"]
                kv = kv_bytes_per_token(
                    m["num_hidden_layers"], m["num_key_value_heads"], m["head_dim"], r["bytes_per_param"]
                )
                bw = dev["bandwidth_gbs"] * 1e9 if dev["bandwidth_gbs"] else None
                r["kv_bytes_per_token"] = kv
                r["bound_tokens_per_s"] = (
                    decode_bound(batch, bw, n * r["bytes_per_param"], kv, r["context_tokens"]) if bw else None
                )
            else:
                r["batch"] = batch
            results["rollout"].append(r)

        results["grpo_step"] = run_phase(
            "grpo step", results, memory, measure_grpo_step, config, folder, splits["rl"], args
        )
        results["peak_memory"]["kind"] = memory.kind

    ok = [r for r in results["rollout"] if "error" not in r]
    eval_rate = None
    if ok:  # the batch nearest eval.batch_size
        nearest = min(ok, key=lambda r: abs(r["batch"] - int(config["eval"]["batch_size"])))
        eval_rate = nearest["tokens_per_s"]
    g, s = results["grpo_step"], results["sft"]
    rates = {
        "sft_tokens_per_s": s.get("tokens_per_s"),
        "sft_row_tokens": s.get("row_tokens"),
        "rl_generation_tokens_per_s": g.get("generation_tokens_per_s"),
        "rl_update_tokens_per_s": g.get("update_tokens_per_s"),
        "rl_prompt_tokens": g.get("prompt_tokens"),
        "rl_feedback_tokens": g.get("feedback_tokens"),
        "eval_tokens_per_s": eval_rate,
    }
    estimate_cfg = check_config(args.config, argparse.Namespace(sft_batch_size=None, grad_accum=None, plain_cpu=True))
    results["estimate"] = estimate_study(estimate_cfg, rates)
    results["estimate"]["rates"] = rates
    results["estimate_config"] = Path(args.config).name
    results["wall_s"] = time.perf_counter() - started
    results["args"] = vars(args)

    print()
    print_table(table_rows(results))
    print(
        f"\nThe estimate is not a measurement: {Path(args.config).name}'s SFT, RL and eval tokens at the rates above "
        "(SFT tokens/s; the GRPO step's generation and update rates; eval at the rollout rate of the batch nearest "
        "eval.batch_size), every attempt at max_new_tokens and every episode at its last attempt (an upper bound); "
        "model loading, data and the report not counted."
    )
    print(f"# {results['wall_s']:.0f} s in all; figures in {args.out}")
    Path(args.out).write_text(json.dumps(results, indent=2, default=str) + "\n")
    failed = [k for k in ("sft", "grpo_step") if "error" in results[k]] + [
        f"rollout b{r['batch']}" for r in results["rollout"] if "error" in r
    ]
    if failed:
        print(f"# failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
