"""benchmarks/gpu_check.py: its arithmetic against hand-computed values, and the CPU fallback end to end."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


@pytest.fixture(scope="module")
def gc():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# config/gpu.yaml's figures that the estimate reads, written out so the hand sums below stay fixed
CONFIG = {
    "tasks": ["gp_l"],
    "seeds": [0],
    "sft": {
        "init_steps": 100,
        "steps": 300,
        "batch_size": 16,
        "grad_accum": 2,
        "checkpoint_steps": [50, 100, 200, 300],
    },
    "rl": {
        "viters": [1, 3, 5],
        "nosft": True,
        "nosft_viter": None,
        "steps": 60,
        "checkpoint_steps": [15, 30, 45, 60],
        "prompts_per_step": 16,
        "num_generations": 8,
        "max_new_tokens": 128,
    },
    "eval": {"viter": 5, "episodes": 234, "max_new_tokens": 128, "splits": ["eval_id", "eval_ood_rule"], "base": True},
}
RATES = {
    "sft_tokens_per_s": 10_000.0,
    "sft_row_tokens": 250.0,
    "rl_generation_tokens_per_s": 5_000.0,
    "rl_update_tokens_per_s": 20_000.0,
    "rl_prompt_tokens": 200.0,
    "rl_feedback_tokens": 30.0,
    "eval_tokens_per_s": 10_000.0,
}


def test_mfu(gc):
    # 6 * 1e9 params * 1000 tokens/s = 6e12 FLOP/s of an H100 SXM's 989e12
    assert gc.mfu(1_000_000_000, 1000.0, 989e12) == pytest.approx(0.0060667, rel=1e-4)
    assert gc.mfu(1_000_000_000, 1000.0, None) is None  # a CPU: no peak


def test_decode_bound(gc):
    # Qwen2.5-1.5B's KV cache in bf16: 2 (K, V) x 28 layers x 2 KV heads x 128 dims x 2 bytes
    assert gc.kv_bytes_per_token(28, 2, 128, 2) == 28_672
    # batch 1, no cache: a 1B-parameter bf16 model (2e9 bytes) at 2 TB/s reads its weights 1000 times a second
    assert gc.decode_bound(1, 2e12, 2e9, 0, 0) == pytest.approx(1000.0)
    # batch 64, 200 tokens of context each: 3e9 + 64 * 200 * 28672 = 3,367,001,600 bytes a step
    assert gc.decode_bound(64, 4.8e12, 3e9, 28_672, 200) == pytest.approx(64 * 4.8e12 / 3_367_001_600)
    assert gc.decode_bound(64, 4.8e12, 3e9, 28_672, 200) == pytest.approx(91_238.4, rel=1e-6)


def test_card_specs(gc):
    assert gc.card_specs("NVIDIA H100 80GB HBM3") == ("H100 SXM", 989e12, 3.35e12)
    assert gc.card_specs("NVIDIA H100 PCIe")[1:] == (756e12, 2.0e12)
    assert gc.card_specs("NVIDIA H200") == ("H200", 989e12, 4.8e12)
    assert gc.card_specs("NVIDIA A100-SXM4-80GB") == ("A100-80GB", 312e12, 2.0e12)
    assert gc.card_specs("NVIDIA L40S")[0] == "L40S"
    assert gc.card_specs("NVIDIA L4")[0] == "L4"
    assert gc.card_specs("NVIDIA A10G")[1] == 125e12
    assert gc.card_specs("NVIDIA GeForce RTX 4090")[1] == 165e12
    assert gc.card_specs("Tesla V100-SXM2-16GB") is None  # no bf16: not in the table


def test_eval_checkpoints(gc):
    # base + init + 4 SFT checkpoints + 4 RL runs (VIter 1, 3, 5, no-SFT) x 4 checkpoints
    assert gc.eval_checkpoints(CONFIG) == 22
    quiet = {**CONFIG, "eval": {**CONFIG["eval"], "base": False}, "rl": {**CONFIG["rl"], "nosft": False}}
    assert gc.eval_checkpoints(quiet) == 1 + 4 + 3 * 4


def test_estimate_study(gc):
    est = gc.estimate_study(CONFIG, RATES)
    # SFT: (100 + 300) steps x 16 x 2 rows x 250 tokens = 3.2M tokens at 10k/s
    assert est["sft"]["tokens"] == 3_200_000
    assert est["sft"]["s"] == pytest.approx(320.0)
    # RL: runs at VIter 1, 3, 5 and no-SFT at 5; 60 steps x 128 episodes x 128 tokens x (1 + 3 + 5 + 5)
    assert est["rl"]["runs"] == 4
    assert est["rl"]["generated_tokens"] == 13_762_560
    assert est["rl"]["generation_s"] == pytest.approx(2752.512)
    # trained per episode: 200 + V x 128 + (V - 1) x 30 -> 328 + 644 + 960 + 960 = 2892
    assert est["rl"]["trained_tokens"] == 60 * 128 * 2892
    assert est["rl"]["update_s"] == pytest.approx(1110.528)
    assert est["rl"]["s"] == pytest.approx(3863.04)
    # eval: 22 checkpoints x 234 episodes x 2 splits x 5 attempts x 128 tokens at 10k/s
    assert est["eval"]["generated_tokens"] == 6_589_440
    assert est["eval"]["s"] == pytest.approx(658.944)
    assert est["total_s"] == pytest.approx(320.0 + 3863.04 + 658.944)


def test_estimate_without_a_rate(gc):
    est = gc.estimate_study(CONFIG, {**RATES, "rl_update_tokens_per_s": None})
    assert est["rl"]["s"] is None and est["total_s"] is None
    assert est["sft"]["s"] == pytest.approx(320.0)


def test_cpu_fallback_end_to_end(tmp_path):
    """The smallest CPU run: every phase, the table and the JSON (about 30 s on one core)."""
    out = tmp_path / "check.json"
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path / 'exported.db'}"  # the check keeps to its own store
    flags = "--steps 1 --sft-batch-size 2 --grad-accum 1 --rollout-batches 2,4 --max-new-tokens 8"
    flags += " --rl-prompts 2 --rl-generations 2 --threads 1"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "cpu", "--size", "tiny", *flags.split(), "--out", str(out)],
        check=False,
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert {"device", "model", "sft", "rollout", "grpo_step", "peak_memory", "estimate"} <= set(result)
    assert result["device"]["type"] == "cpu" and result["device"]["peak_tflops"] is None
    # the GPU's branch, rehearsed: bf16 autocast and activation checkpointing in SFT and in the GRPO update (whose
    # micro-batch holds groups that share a prompt), bf16 rollouts that ignore the hub-like sampling defaults
    assert result["device"]["branch"] == "GPU rehearsed on a CPU"
    assert result["sft"]["precision"] == "bf16" and result["sft"]["activation_checkpointing"]
    assert result["sft"]["tokens_per_s"] > 0
    training_pass = result["grpo_step"]["training_pass"]
    assert training_pass["autocast"] == "bfloat16" and training_pass["activation_checkpointing"] == "True"
    assert all(r["dtype"] == "bfloat16" for r in result["rollout"])
    assert all(
        r["sampling"]["ignored_model_generation_config"]["repetition_penalty"] == 1.05 for r in result["rollout"]
    )
    assert result["sft"]["mfu"] is None  # no peak on a CPU
    assert [r["batch"] for r in result["rollout"]] == [2, 4]
    for r in result["rollout"]:
        assert r["tokens_per_s"] > 0 and r["bound_tokens_per_s"] is None
    step = result["grpo_step"]
    assert step["episodes"] == 4 and step["viter"] == 2
    for key in ("generation_s", "verification_s", "update_s", "step_s"):
        assert step[key] >= 0
    assert set(result["peak_memory"]["bytes"]) == {"build", "sft", "rollout b2", "rollout b4", "grpo step"}
    assert result["estimate"]["total_s"] > 0
    assert "| GRPO step | update |" in proc.stdout and "| estimate | gpu.yaml total |" in proc.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["check.json"]  # nothing else left behind
