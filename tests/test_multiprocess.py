"""Training with 2 processes on this CPU, launched as the training rules launch it (accelerate's
multi-process launcher, gloo): each rank rolls out its share, only rank 0 saves and writes MLflow,
the ranks keep identical weights, a killed job resumes on every rank from the same checkpoint, and
a step trains on as many samples as in one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import write_jsonl

pytestmark = pytest.mark.multiprocess
JOB = Path(__file__).parent / "jobs" / "multiprocess_job.py"
LAUNCH = ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1"]
LAUNCH += ["--mixed_precision", "no", "--dynamo_backend", "no"]


def launch(tmp_path: Path, config: dict, stage: str, data, start, save: dict, out: Path, kill_at=None, processes=2):
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(config))
    job = [str(JOB), "--stage", stage, "--config", str(cfg), "--task", "gp_l", "--data", str(data)]
    job += ["--start", str(start), "--work-dir", str(tmp_path / "work" / stage), "--out", str(out)]
    job += ["--save", *(f"{k}={v}" for k, v in save.items())]
    job += ["--kill-at", str(kill_at)] if kill_at else []
    command = [sys.executable, *(LAUNCH if processes == 2 else []), *job]
    if processes == 2:
        command[command.index("2")] = str(processes)
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.run(command, capture_output=True, text=True, timeout=900, env=env, check=False)


def results(out: Path) -> list[dict]:
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


def child_runs(config: dict, stage: str) -> list:
    from mlflow import MlflowClient

    from sftvsrl.tracking import TAG_STAGE

    client = MlflowClient(tracking_uri=config["mlflow"]["tracking_uri"])
    exp = client.get_experiment_by_name(config["mlflow"]["experiment"])
    return client.search_runs([exp.experiment_id], filter_string=f"tags.`{TAG_STAGE}` = '{stage}'")


@pytest.fixture
def gp_rows(tiny_config):
    from sftvsrl.tasks import get_task

    sizes = {"sft": 16, "rl": 8, "eval_id": 2, "eval_ood_rule": 2}
    return get_task("gp_l").generate_splits({**tiny_config["gp"], "sizes": sizes}, 0)


def test_two_process_rl_keeps_ranks_equal_and_resumes_after_a_kill(tiny_config, tiny_model_dir, tmp_path, gp_rows):
    tiny_config["rl"].update(
        steps=3, checkpoint_steps=[1, 3], save_every=1, prompts_per_step=2, num_generations=2, grad_accum=2
    )
    data = write_jsonl(gp_rows["rl"], tmp_path / "data" / "rl.jsonl")
    save = {1: tmp_path / "out" / "ckpt-1" / "model", 3: tmp_path / "out" / "ckpt-3" / "model"}
    killed = launch(tmp_path, tiny_config, "rl", data, tiny_model_dir, save, tmp_path / "killed", kill_at=2)
    assert killed.returncode != 0 and "simulated kill at step 2" in killed.stdout + killed.stderr
    first = results(tmp_path / "killed")
    assert [r["world_size"] for r in first] == [2, 2]
    # each rank plays half of the step's 2 x 2 episodes, in 2 micro-batches of 1; both ranks hold
    # the same weights after every step
    assert [r["batch"] for r in first] == [{"per_process": 1, "grad_accum": 2}] * 2
    assert first[0]["digests"] == first[1]["digests"] and set(first[0]["digests"]) == {"1", "2"}
    assert (save[1] / "model.safetensors").exists() and not save[3].exists()

    done = launch(tmp_path, tiny_config, "rl", data, tiny_model_dir, save, tmp_path / "resumed")
    assert done.returncode == 0, done.stderr[-4000:]
    second = results(tmp_path / "resumed")
    for rank in second:
        assert rank["summary"]["resumed_from_step"] == 1 and rank["summary"]["final_step"] == 3
    assert second[0]["digests"] == second[1]["digests"] and set(second[0]["digests"]) == {"2", "3"}
    assert (save[3] / "model.safetensors").exists() and not (tmp_path / "work" / "rl").exists()
    assert second[0]["summary"]["run_id"] and second[1]["summary"]["run_id"] is None  # rank 0 logs
    runs = child_runs(tiny_config, "rl")
    assert sorted(r.info.status for r in runs) == ["FAILED", "FINISHED"]  # one child run per job
    from mlflow import MlflowClient

    finished = next(r for r in runs if r.info.status == "FINISHED")
    history = MlflowClient(tiny_config["mlflow"]["tracking_uri"]).get_metric_history(
        finished.info.run_id, "episode/count"
    )
    assert [(m.step, m.value) for m in history] == [(2, 4.0), (3, 4.0)]  # both ranks' episodes, gathered


def test_two_process_sft_trains_the_same_samples_per_step_as_one_process(
    tiny_config, tiny_model_dir, tmp_path, gp_rows
):
    tiny_config["sft"].update(steps=2, checkpoint_steps=[2], save_every=2, batch_size=4)
    data = write_jsonl(gp_rows["sft"], tmp_path / "data" / "sft.jsonl")
    outs = {}
    for processes in (1, 2):
        save = {2: tmp_path / f"p{processes}" / "ckpt-2" / "model"}
        out = tmp_path / f"result-{processes}"
        job = launch(tmp_path, tiny_config, "sft", data, tiny_model_dir, save, out, processes=processes)
        assert job.returncode == 0, job.stderr[-4000:]
        outs[processes] = [json.loads(f.read_text()) for f in sorted(out.glob("rank*.json"))]
        assert (save[2] / "model.safetensors").exists()
    (single,), pair = outs[1], outs[2]
    assert single["batch"]["per_process"] == 4 and [r["batch"]["per_process"] for r in pair] == [2, 2]
    assert pair[0]["digests"] == pair[1]["digests"] and set(pair[0]["digests"]) == {"1", "2"}
    for result in (single, *pair):
        assert result["summary"]["global_step"] == 2
    # the same rows in a step: the tokens the job trained on match, however many processes shared it
    assert pair[0]["summary"]["train_tokens"] == single["summary"]["train_tokens"]
    assert len(child_runs(tiny_config, "sft")) == 2  # one per job, none from rank 1
