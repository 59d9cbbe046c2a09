"""MLflow conventions: URI resolution, one parent per study, tagged child runs, concurrent writers."""

from __future__ import annotations

import contextlib
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


@contextlib.contextmanager
def _ui(config: dict, *options: str, env: dict | None = None):
    """`sftvsrl ui` in a subprocess on a free loopback port: yields (port, the link it printed) once the
    server answers; the server and its workers stop after."""
    import socket
    import urllib.error
    import urllib.request

    if tracking.mlflow_executable() is None:
        pytest.skip("the full mlflow package (extra 'server') is not installed")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", "sftvsrl.cli", "ui", "--config", json.dumps(config), "--port", str(port)]
    proc = subprocess.Popen(
        [*command, *options],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, **(env or {})},
        start_new_session=True,  # the server's workers go with it
    )
    try:
        link = proc.stdout.readline().strip().split(": ", 1)[1]
        deadline = time.monotonic() + 300  # the server starts in seconds; 300 s only guards a hang
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10).close()
                break
            except urllib.error.HTTPError:  # it answers (an auth app may refuse even /health)
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "mlflow server did not come up"
                time.sleep(1)
        yield port, link
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)


def test_ui_serves_the_study_store_and_links_to_its_runs_table(tiny_config):
    """`sftvsrl ui`: a real `mlflow server` on a loopback port over the study's store; the printed link
    names the study's experiment and opens the chart view of its training runs (not MLflow 3's GenAI pages)."""
    import urllib.request
    from urllib.parse import urlencode

    tracking.ensure_study_run(tiny_config)
    exp_id = tracking.experiment_id(tiny_config)
    if tracking.mlflow_executable() is None:
        with pytest.raises(SystemExit, match=r"pip install -e '\.\[server\]'"):
            tracking.ui_command(tiny_config, "127.0.0.1", 5000)
    with _ui(tiny_config) as (port, link):
        query = urlencode({"workflowType": "machine_learning", "searchFilter": tracking.curves_filter(
            tiny_config["study"]), "compareRunsMode": "CHART", "orderByKey": "tags.`mlflow.runName`",
            "orderByAsc": "true"})  # fmt: skip
        assert link == f"http://127.0.0.1:{port}/#/experiments/{exp_id}/runs?{query}"
        api = f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/get?experiment_id={exp_id}"
        with urllib.request.urlopen(api, timeout=10) as response:
            body = json.loads(response.read())
        assert body["experiment"]["name"] == tiny_config["mlflow"]["experiment"]


def test_ui_without_the_servers_web_framework_stops_before_printing_a_link(tiny_config, monkeypatch, capsys):
    """mlflow-skinny (what the run command installs) has an `mlflow` command but no flask: the server would print
    the link and die. `sftvsrl ui` stops first and names the one command that installs what it needs."""
    import importlib.util

    from sftvsrl import cli

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "flask" else real(name, *a))
    monkeypatch.setattr(tracking, "mlflow_executable", lambda: "/usr/bin/mlflow")  # skinny's command is there
    assert tracking.missing_server_modules() == ["flask"]
    with pytest.raises(SystemExit, match=r"flask missing\): pip install -e '\.\[server\]'"):
        cli.main(["ui", "--config", json.dumps(tiny_config), "--port", "5999"])
    assert "http" not in capsys.readouterr().out


def test_a_ui_others_can_reach_lets_in_only_who_signs_in(tiny_config, monkeypatch):
    """Beyond loopback the UI needs --auth; with it, MLflow's basic-auth app refuses a request without
    credentials or with wrong ones, and a job signed in through the environment logs its run."""
    import urllib.error
    import urllib.request
    from base64 import b64encode

    # a fresh store, as on a cluster where the server starts before the study's first job
    with pytest.raises(SystemExit, match="--auth"):
        tracking.ui_command(tiny_config, "0.0.0.0", 5000)
    monkeypatch.delenv("MLFLOW_AUTH_ADMIN_PASSWORD", raising=False)
    with pytest.raises(SystemExit, match="MLFLOW_AUTH_ADMIN_PASSWORD"):
        tracking.ui_command(tiny_config, "127.0.0.1", 5000, auth=True)
    password = "a-password-made-for-this-test"
    with _ui(tiny_config, "--auth", env={"MLFLOW_AUTH_ADMIN_PASSWORD": password}) as (port, _):
        server = f"http://127.0.0.1:{port}"
        api = f"{server}/api/2.0/mlflow/experiments/search?max_results=5"
        for credentials in (None, "admin:wrong"):
            request = urllib.request.Request(api)
            if credentials:
                request.add_header("Authorization", "Basic " + b64encode(credentials.encode()).decode())
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(request, timeout=10)
            assert refused.value.code == 401
        monkeypatch.setenv("MLFLOW_TRACKING_URI", server)
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
        with tracking.job_run(tiny_config, "data", task="gp_l", seed=0):
            tracking.log_json_artifact({"signed": "in"}, "job.json")
        client = tracking.study_client(tiny_config)
        (run,) = client.search_runs([tracking.experiment_id(tiny_config, client)], "tags.`sftvsrl.stage` = 'data'")
        assert run.info.status == "FINISHED" and [a.path for a in client.list_artifacts(run.info.run_id)]


def test_a_copied_or_moved_study_serves_its_artifacts_from_where_it_is(tiny_config, tmp_path, monkeypatch):
    """MLflow keeps absolute artifact paths: a copy must not write into the original, a move must not break."""
    import copy
    import shutil

    def at(folder: Path) -> dict:
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # mlflow.set_tracking_uri sets it: a new job's view
        config = copy.deepcopy(tiny_config)
        config["mlflow"]["tracking_uri"] = f"sqlite:///{folder}/mlflow.db"
        return config

    def artifact(config: dict, seed: int, name: str) -> dict:
        client = tracking.study_client(config)
        exp_id = tracking.experiment_id(config, client)
        (run,) = client.search_runs([exp_id], filter_string=f"tags.`{tracking.TAG_SEED}` = '{seed}'")
        assert run.info.artifact_uri.startswith(str(config_folder(config)))
        return json.loads(Path(client.download_artifacts(run.info.run_id, name, str(tmp_path))).read_text())

    def config_folder(config: dict) -> Path:
        return tracking.sqlite_path(config["mlflow"]["tracking_uri"]).parent

    first, copied, moved = tmp_path / "first", tmp_path / "copied", tmp_path / "moved"
    first.mkdir()
    with tracking.job_run(at(first), "data", task="gp_l", seed=0):
        tracking.log_json_artifact({"where": "first"}, "job.json")
    shutil.copytree(first, copied)
    with tracking.job_run(at(copied), "data", task="gp_l", seed=1):
        tracking.log_json_artifact({"where": "copied"}, "job.json")
    assert artifact(at(copied), 0, "job.json") == {"where": "first"}
    assert artifact(at(copied), 1, "job.json") == {"where": "copied"}
    assert [p.name for p in first.rglob("job.json")] == ["job.json"]  # the copy wrote nothing into the original
    shutil.move(copied, moved)
    assert artifact(at(moved), 1, "job.json") == {"where": "copied"}
    assert not copied.exists() and artifact(at(first), 0, "job.json") == {"where": "first"}
