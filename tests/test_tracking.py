"""MLflow conventions: URI resolution, one parent per study, tagged child runs, concurrent writers."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sftvsrl import tracking
from sftvsrl.config import config_hash, section_with_defaults


def _client(uri: str):
    import mlflow

    mlflow.set_tracking_uri(uri)
    return mlflow.MlflowClient(tracking_uri=uri)


def _runs(config: dict):
    import mlflow

    mlflow.set_tracking_uri(tracking.tracking_uri(config))
    return mlflow.search_runs(experiment_names=[config["mlflow"]["experiment"]], output_format="list")


def test_tracking_uri_env_overrides_and_relative_sqlite_is_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    config = {"mlflow": {"tracking_uri": "sqlite:///sub/mlflow.db"}}
    assert tracking.tracking_uri(config) == f"sqlite:///{tmp_path.resolve()}/sub/mlflow.db"
    defaults = {"mlflow": section_with_defaults("mlflow", {})}  # what validation fills in when the config names none
    assert tracking.tracking_uri(defaults) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert tracking.tracking_uri({"mlflow": {"tracking_uri": "sqlite:////abs/x.db"}}) == "sqlite:////abs/x.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    assert tracking.tracking_uri(config) == "http://mlflow.example:5000"


def test_study_run_created_once(tiny_config):
    first = tracking.ensure_study_run(tiny_config)
    second = tracking.ensure_study_run(tiny_config)
    assert first == second
    parents = [r for r in _runs(tiny_config) if r.data.tags.get(tracking.TAG_ROLE) == "study"]
    assert [r.info.run_id for r in parents] == [first]
    assert parents[0].data.tags[tracking.TAG_STUDY] == "pytest"
    # another study gets its own parent
    other = dict(tiny_config, study="other")
    assert tracking.ensure_study_run(other) != first


def test_job_run_tree_tags_params_artifacts(tiny_config, tmp_path, monkeypatch):
    import mlflow

    monkeypatch.chdir(tmp_path)  # not a git repo; data.dvc present
    (tmp_path / "data.dvc").write_text("outs:\n- md5: 0123456789abcdef0123456789abcdef.dir\n  path: data\n")
    with tracking.job_run(tiny_config, stage="sft", task="gp_l", seed=3, viter=5) as run:
        for step in range(1, 4):
            mlflow.log_metrics({"loss": 1.0 / step}, step=step)
        tracking.log_json_artifact({"a": [1, 2]}, "extra/a.json")
        run_id = run.info.run_id

    parent = tracking.ensure_study_run(tiny_config)
    client = _client(tracking.tracking_uri(tiny_config))
    child = client.get_run(run_id)
    tags = child.data.tags
    assert tags["mlflow.parentRunId"] == parent
    assert tags[tracking.TAG_STAGE] == "sft"
    assert tags[tracking.TAG_TASK] == "gp_l"
    assert tags[tracking.TAG_SEED] == "3"
    assert tags[tracking.TAG_VITER] == "5"
    assert tags[tracking.TAG_CONFIG_HASH] == config_hash(tiny_config)
    assert tags[tracking.TAG_GIT] == "unknown"
    assert tags[tracking.TAG_DATA] == "0123456789abcdef0123456789abcdef.dir"
    assert child.info.status == "FINISHED"
    assert child.data.params["config.sft.batch_size"] == str(tiny_config["sft"]["batch_size"])
    assert child.data.params["config.rl.viters"] == json.dumps(tiny_config["rl"]["viters"])
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "loss")] == [(1, 1.0), (2, 0.5), (3, 1 / 3)]
    # artifacts land next to the SQLite file
    db = tracking.sqlite_path(tracking.tracking_uri(tiny_config))
    art = Path(child.info.artifact_uri.replace("file://", ""))
    assert str(art).startswith(str(db.parent / "mlartifacts"))
    assert json.loads((art / "config.json").read_text())["study"] == "pytest"
    assert json.loads((art / "extra" / "a.json").read_text()) == {"a": [1, 2]}


def test_job_run_marks_failure(tiny_config):
    with (
        pytest.raises(RuntimeError, match="boom"),
        tracking.job_run(tiny_config, stage="rl", task="gp_l", seed=0) as run,
    ):
        run_id = run.info.run_id
        raise RuntimeError("boom")
    assert _client(tracking.tracking_uri(tiny_config)).get_run(run_id).info.status == "FAILED"


def test_step_callback_logs_params_and_metrics_into_the_job_run(tiny_config):
    """The trainers' callback writes into the run job_run made active, at the trainer's step."""
    from types import SimpleNamespace

    from transformers import TrainingArguments

    from sftvsrl.mlflow_callback import MlflowStepCallback

    args = TrainingArguments(output_dir="/tmp/unused", use_cpu=True, learning_rate=0.001, run_name="x" * 7000)
    model = SimpleNamespace(config=SimpleNamespace(model_type="llama", to_dict=lambda: {"hidden_size": 64}))
    callback = MlflowStepCallback()
    with tracking.job_run(tiny_config, stage="sft", task="gp_l", seed=0) as run:
        for step in (1, 2):
            state = SimpleNamespace(is_world_process_zero=True, global_step=step)
            callback.on_train_begin(args, state, None, model=model)
            logs = {"loss": 1.0 / step, "note": "text", "grad norm(x)": 0.5, "profiling/Time taken: x": 0.1}
            callback.on_log(args, state, None, logs=logs)
        run_id = run.info.run_id
    client = _client(tracking.tracking_uri(tiny_config))
    params = client.get_run(run_id).data.params
    # the recipe (non-default arguments) and the model's type; not the model's config, defaults or long values
    assert params["learning_rate"] == "0.001" and params["model_type"] == "llama" and params["use_cpu"] == "True"
    assert "hidden_size" not in params and "run_name" not in params and "weight_decay" not in params
    trainer = sorted(k for k in params if not k.startswith(tracking.CONFIG_PARAM_PREFIX))
    assert len(trainer) < 20, trainer
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "loss")] == [(1, 1.0), (2, 0.5)]
    assert len(client.get_metric_history(run_id, "grad norm_x_")) == 2
    assert not any(k.startswith("profiling") for k in client.get_run(run_id).data.metrics)


def test_git_commit_and_data_version(tmp_path):
    assert tracking.git_commit(tmp_path) == "unknown"
    assert tracking.data_version(tmp_path) == "none"
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "f").write_text("x")
    subprocess.run(git + ["-C", str(tmp_path), "add", "f"], check=True)
    subprocess.run(git + ["-C", str(tmp_path), "commit", "-qm", "x"], check=True)
    head = subprocess.run(
        ["git", "-C", str(tmp_path), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout
    assert tracking.git_commit(tmp_path) == head.strip()


def test_flatten_truncates():
    flat = tracking.flatten({"a": {"b": 1, "c": [1, 2]}, "d": "x" * 2000, "e": {}})
    assert flat["a.b"] == "1" and flat["a.c"] == "[1, 2]" and flat["e"] == "{}"
    assert len(flat["d"]) == tracking.MAX_PARAM_CHARS


def _worker(config: dict, index: int) -> None:
    import mlflow

    with tracking.job_run(config, stage="evaluate", task="gp_l", seed=index, run_name=f"worker-{index}"):
        for step in range(25):
            mlflow.log_metric("value", float(index * 100 + step), step=step)
        mlflow.log_params({f"p{i}": i for i in range(20)})
        tracking.log_json_artifact({"index": index}, "worker.json")


def test_concurrent_processes_share_one_sqlite_store(tiny_config, tmp_path):
    """4 processes start at once on a store that does not exist yet: all runs land under one parent."""
    tiny_config["mlflow"]["tracking_uri"] = f"sqlite:///{tmp_path / 'fresh' / 'mlflow.db'}"
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_worker, args=(tiny_config, i)) for i in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]

    runs = _runs(tiny_config)
    parents = [r for r in runs if r.data.tags.get(tracking.TAG_ROLE) == "study"]
    assert len(parents) == 1, "concurrent creators must converge on one parent run"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert sorted(r.data.tags[tracking.TAG_SEED] for r in children) == ["0", "1", "2", "3"]
    client = _client(tracking.tracking_uri(tiny_config))
    for r in children:
        assert r.info.status == "FINISHED"
        assert len(client.get_metric_history(r.info.run_id, "value")) == 25


def test_sigterm_ends_the_job_run_as_killed(tiny_config, tmp_path):
    """Snakemake / SLURM stop a job with SIGTERM: the run must not stay RUNNING."""
    import signal
    import sys
    import time

    marker = tmp_path / "started"
    script = (
        "import json, sys, time, mlflow\n"
        "from sftvsrl import tracking\n"
        "config = json.loads(sys.argv[1])\n"
        "with tracking.job_run(config, stage='sft', task='gp_l', seed=0) as run:\n"
        "    open(sys.argv[2], 'w').write(run.info.run_id)\n"
        "    time.sleep(120)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script, json.dumps(tiny_config), str(marker)])
    deadline = time.time() + 90
    while not marker.exists() or not marker.read_text():
        assert proc.poll() is None and time.time() < deadline, "job did not start"
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) != 0
    run = _client(tracking.tracking_uri(tiny_config)).get_run(marker.read_text())
    assert run.info.status == "KILLED"


def test_ui_serves_the_study_store_and_links_to_its_runs_table(tiny_config, tmp_path):
    """`sftvsrl ui`: a real `mlflow server` on a loopback port over the study's store; the printed link
    names the study's experiment and opens the runs table (not MLflow 3's GenAI pages)."""
    import shutil
    import socket
    import urllib.request

    tracking.ensure_study_run(tiny_config)
    exp_id = tracking.experiment_id(tiny_config)
    if shutil.which("mlflow") is None:
        with pytest.raises(SystemExit, match=r"pip install -e '\.\[server\]'"):
            tracking.ui_command(tiny_config, "127.0.0.1", 5000)
        pytest.skip("the full mlflow package (extra 'server') is not installed")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config_file = tmp_path / "config.json"
    config_file.write_text(json.dumps(tiny_config))
    proc = subprocess.Popen(
        [sys.executable, "-m", "sftvsrl.cli", "ui", "--config", config_file.read_text(), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,  # the server's workers go with it
    )
    try:
        link = proc.stdout.readline().strip().split(": ", 1)[1]
        assert link == f"http://127.0.0.1:{port}/#/experiments/{exp_id}?workflowType=machine_learning"
        api = f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/get?experiment_id={exp_id}"
        deadline = time.monotonic() + 300  # the server starts in seconds; 300 s only guards a hang
        while True:
            try:
                with urllib.request.urlopen(api, timeout=10) as response:
                    body = json.loads(response.read())
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "mlflow server did not come up"
                time.sleep(1)
        assert body["experiment"]["name"] == tiny_config["mlflow"]["experiment"]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
