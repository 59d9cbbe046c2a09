"""The GPU path rehearsed on a CPU: the studies of config/test/gpu-rehearsal*.yaml (tiny random models of the GPU
configs' families, Qwen2, SmolVLM / Idefics3 and mllama, with hub-like sampling defaults in their generation
configs) run every rule through Snakemake with `model.rehearse_gpu` and the GPU command's cap on the `gpu`
resource. What the jobs did is read back from what they record (MLflow params of the first training forward,
the evaluations' JSON), not from the config."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import yaml

from sftvsrl.tiny_model import HUB_LIKE_SAMPLING

ROOT = Path(__file__).resolve().parents[1]

# config -> (extra Snakemake arguments, the cap on `gpu`, GPUs per job by rule). The text study also takes the
# multi-GPU launch line: its RL arms run under `accelerate launch --config_file workflow/accelerate/ddp.yaml`
# with 2 processes (over gloo on a CPU). --cores 4 leaves room for two training jobs even on 2 cores: only the
# cap keeps GPU jobs apart.
STUDIES = {
    "gpu-rehearsal": (["--resources", "gpu=2", "--set-resources", "rl:gpu=2"], 2, {"rl": 2}),
    "gpu-rehearsal-smolvlm": (["--resources", "gpu=1"], 1, {}),
    "gpu-rehearsal-mllama": (["--resources", "gpu=1"], 1, {}),
}
TRAINING_STAGES = ("init", "sft", "rl")


@pytest.fixture(scope="module", params=list(STUDIES))
def rehearsal(request, tmp_path_factory):
    name = request.param
    workdir = tmp_path_factory.mktemp(name)
    shutil.copytree(ROOT / "config", workdir / "config")
    config_file = workdir / "config" / "test" / f"{name}.yaml"
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--directory", str(workdir)]
        + ["--configfile", str(config_file), "--cores", "4", *STUDIES[name][0]],
        capture_output=True,
        text=True,
        timeout=3600,  # a hang guard only (a study takes 2-3 minutes)
        env=env,
        check=False,
    )
    if result.returncode != 0:
        logs = "\n".join(f"== {p}\n{p.read_text()[-2000:]}" for p in (workdir / "logs").rglob("*.log"))
        pytest.fail(f"snakemake failed:\n{result.stderr[-4000:]}\n{logs[-8000:]}")
    mlflow.set_tracking_uri(f"sqlite:///{workdir / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["sftvsrl"], output_format="list")
    return {"name": name, "dir": workdir, "config": yaml.safe_load(config_file.read_text()), "runs": runs}


def stage(run) -> str | None:
    return run.data.tags.get("sftvsrl.stage")


def test_every_rule_ran_and_the_report_holds_every_checkpoint(rehearsal):
    config, workdir = rehearsal["config"], rehearsal["dir"]
    rows = list(csv.DictReader((workdir / "results" / "summary.csv").open()))
    runs = {(r["run"], int(r["step"])) for r in rows}
    expected = {("init", 0), ("rl-nosft", 1)} | {("sft", s) for s in config["sft"]["checkpoint_steps"]}
    expected |= {(f"rl-v{v}", 1) for v in config["rl"]["viters"]}
    expected |= {("base", 0)} if config["eval"]["base"] else set()
    assert runs == expected
    assert {r["task"] for r in rows} == set(config["tasks"])
    assert (workdir / "results" / "summary.md").is_file() and (workdir / "data.dvc").is_file()


def test_training_jobs_ran_bf16_autocast_and_activation_checkpointing(rehearsal):
    """Read inside each job's first training forward (`mlflow_callback.pass_facts`)."""
    training = [r for r in rehearsal["runs"] if stage(r) in TRAINING_STAGES]
    expected_jobs = len(rehearsal["config"]["tasks"]) * (2 + len(rehearsal["config"]["rl"]["viters"]) + 1)
    assert len(training) == expected_jobs
    per_job_gpus = STUDIES[rehearsal["name"]][2]
    for run in training:
        params = run.data.params
        assert params["pass.autocast"] == "bfloat16", run.info.run_name
        assert params["pass.activation_checkpointing"] == "True", run.info.run_name
        assert params["pass.weights_dtype"] == "float32"  # fp32 master weights under autocast, as on a GPU
        assert params["bf16"] == "True" and params["activation_checkpointing"] == "True"
        arm = run.data.tags.get("sftvsrl.run", "")
        processes = per_job_gpus.get("rl", 1) if arm.startswith("rl-v") else 1
        assert params["pass.processes"] == str(processes), run.info.run_name


def test_evaluations_ran_in_bf16_and_sampled_from_softmax_over_t(rehearsal):
    results = list((rehearsal["dir"] / "results").rglob("eval/*/ckpt-*/eval_*.json"))
    assert results
    for path in results:
        result = json.loads(path.read_text())
        assert result["weights_dtype"] == "bfloat16", path
        sampling = result["sampling"]
        assert sampling["temperature"] == result["temperature"] and sampling["repetition_penalty"] == 1.0
        assert sampling["top_k"] in (0, None) and sampling["top_p"] == 1.0
        # the model's hub-like defaults were there, and not applied
        ignored = sampling["ignored_model_generation_config"]
        assert ignored["repetition_penalty"] == HUB_LIKE_SAMPLING["repetition_penalty"]
        assert ignored["top_k"] == HUB_LIKE_SAMPLING["top_k"]


def test_gpu_jobs_together_never_exceed_the_cap(rehearsal):
    """Each training or evaluation job's span, from its MLflow runs (an evaluation job's splits share one
    job), weighted by the GPUs it declares: at no moment do running jobs hold more than the cap."""
    cap, per_job_gpus = STUDIES[rehearsal["name"]][1:]
    jobs: dict[tuple, list[int]] = {}
    for run in rehearsal["runs"]:
        if stage(run) not in (*TRAINING_STAGES, "evaluate"):
            continue
        tags = run.data.tags
        key = (stage(run), tags.get("sftvsrl.task"), tags.get("sftvsrl.run"), tags.get("sftvsrl.step"))
        span = jobs.setdefault(key, [run.info.start_time, run.info.end_time])
        span[0], span[1] = min(span[0], run.info.start_time), max(span[1], run.info.end_time)
    assert len(jobs) >= 8  # training jobs and one evaluation job per checkpoint

    def gpus(key) -> int:
        return per_job_gpus.get("rl", 1) if key[0] == "rl" and key[2].startswith("rl-v") else 1

    for key, (start, _) in jobs.items():
        held = sum(gpus(other) for other, (s, e) in jobs.items() if s <= start < e)
        assert held <= cap, f"{held} GPUs held at the start of {key}"
